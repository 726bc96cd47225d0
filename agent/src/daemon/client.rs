//! `vigil run` through a daemon: the client resolves its flags (its own environment
//! equivalents), reads what they point at as itself, opens its `--out` and working directory,
//! and sends all of it with its stdio fds. It forwards SIGINT/SIGTERM, writes the profile copies
//! as itself, and exits with the run's code — the same output, exit code and Ctrl-C behaviour
//! as standalone.

use std::io::{IoSlice, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::{OFlag, open};
use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
use nix::sys::stat::Mode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::signal::unix::{SignalKind, signal};

use super::DEFAULT_SOCKET;
use super::protocol::{
    DaemonStatus, Decoder, MAX_REPLY_FRAME, Reply, Request, RunRequest, VERSION, encode, reason,
};
use crate::cli::{ExitCode, RunArgs};
use crate::run::recorder::write_copy;
use crate::run::spec::{RunInputs, RunSpec};

/// Where `vigil run` sends its run: a daemon's socket, or None for standalone.
pub fn route(args: &RunArgs) -> Option<PathBuf> {
    if args.no_daemon {
        return None;
    }
    if args.plan.is_some() {
        if args.daemon.is_some() {
            eprintln!("vigil: --plan runs standalone (a daemon serves single commands)");
        }
        return None;
    }
    if let Some(p) = &args.daemon {
        return Some(p.clone());
    }
    // The default socket is used only when a daemon answers on it.
    UnixStream::connect(DEFAULT_SOCKET)
        .ok()
        .map(|_| PathBuf::from(DEFAULT_SOCKET))
}

fn connect_error(path: &Path, e: &std::io::Error) -> String {
    let hint = match e.raw_os_error() {
        Some(libc::EACCES) => {
            " (the socket is for root and the group the daemon was given, `vigil` by default)"
        }
        Some(libc::ENOENT | libc::ECONNREFUSED) => " (is vigil daemon running?)",
        _ => "",
    };
    format!("cannot reach the daemon at {}: {e}{hint}", path.display())
}

/// Ask a daemon what it is doing.
pub fn status(path: &Path) -> Result<DaemonStatus, String> {
    let mut s = UnixStream::connect(path).map_err(|e| connect_error(path, &e))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    s.write_all(&encode(&Request::Status))
        .map_err(|e| e.to_string())?;
    let mut dec = Decoder::default();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(body) = dec.next_body(MAX_REPLY_FRAME).map_err(|e| e.to_string())? {
            return match serde_json::from_slice(&body) {
                Ok(Reply::Status(st)) => Ok(st),
                Ok(other) => Err(format!("unexpected reply {other:?}")),
                Err(e) => Err(e.to_string()),
            };
        }
        let n = s.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the daemon closed the connection".into());
        }
        dec.push(&buf[..n]);
    }
}

fn open_dir(path: &Path, flags: OFlag) -> std::io::Result<OwnedFd> {
    Ok(open(
        path,
        flags | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?)
}

/// The request to send and its fds (cwd, out), or a usage error (exit 2, nothing started).
fn prepare(args: RunArgs) -> Result<(Vec<u8>, OwnedFd, OwnedFd), (i32, String)> {
    let usage = |m: String| (ExitCode::USAGE, m);
    let inputs = RunInputs::read(&args).map_err(|e| usage(e.to_string()))?;
    // Every check standalone makes before anything starts, made here too.
    RunSpec::from_parts(args.clone(), inputs.clone()).map_err(|e| usage(e.to_string()))?;
    let mut env = Vec::new();
    for (k, v) in std::env::vars_os() {
        match (k.into_string(), v.into_string()) {
            (Ok(k), Ok(v)) => env.push((k, v)),
            (k, _) => {
                return Err(usage(format!(
                    "environment variable {:?} is not UTF-8, which the daemon protocol cannot carry; accepted: --no-daemon",
                    k.unwrap_or_else(|k| k.to_string_lossy().into_owned())
                )));
            }
        }
    }
    let cwd = std::env::current_dir()
        .map_err(|e| (ExitCode::VIGIL_FAILED, format!("working directory: {e}")))?;
    let out = cwd.join(&args.out);
    let failed = |m: String| (ExitCode::VIGIL_FAILED, m);
    std::fs::create_dir_all(&out).map_err(|e| {
        failed(format!(
            "cannot create bundle directory {}: {e}",
            out.display()
        ))
    })?;
    let out_fd = open_dir(&out, OFlag::O_RDONLY)
        .map_err(|e| failed(format!("cannot open {}: {e}", out.display())))?;
    let cwd_fd = open_dir(Path::new("."), OFlag::O_PATH)
        .map_err(|e| failed(format!("cannot open the working directory: {e}")))?;
    let req = Request::Run(Box::new(RunRequest {
        version: VERSION,
        args,
        inputs,
        env,
        cwd,
        out,
    }));
    let bytes = serde_json::to_value(&req)
        .map(|_| encode(&req))
        .map_err(|e| usage(format!("{e}; accepted: --no-daemon")))?;
    Ok((bytes, cwd_fd, out_fd))
}

/// Run `args` through the daemon at `path`; the exit code.
pub fn run(path: &Path, args: RunArgs) -> i32 {
    let (bytes, cwd, out) = match prepare(args) {
        Ok(x) => x,
        Err((code, msg)) => {
            eprintln!("vigil: {msg}");
            return code;
        }
    };
    let stream = match UnixStream::connect(path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("vigil: {}", connect_error(path, &e));
            return ExitCode::VIGIL_FAILED;
        }
    };
    let fds: [RawFd; 5] = [0, 1, 2, cwd.as_raw_fd(), out.as_raw_fd()];
    if let Err(e) = send_with_fds(&stream, &bytes, &fds) {
        eprintln!(
            "vigil: sending the run to the daemon at {}: {e}",
            path.display()
        );
        return ExitCode::VIGIL_FAILED;
    }
    drop((cwd, out));
    let Some(rt) = crate::cli::runtime() else {
        return ExitCode::VIGIL_FAILED;
    };
    rt.block_on(relay(stream, path, None))
}

/// `vigil watch` through the daemon at `path`: checked and read here, as the client; the
/// daemon watches with its sensor and says what it does on this process's stderr.
pub fn watch(path: &Path, args: crate::cli::WatchArgs) -> i32 {
    let usage = |m: String| {
        eprintln!("vigil: {m}");
        ExitCode::USAGE
    };
    let inputs = match RunInputs::read(&args.run) {
        Ok(i) => i,
        Err(e) => return usage(e.to_string()),
    };
    if let Err(e) = crate::run::watch::spec_from_parts(args.clone(), inputs.clone()) {
        return usage(e.to_string());
    }
    let out = match std::env::current_dir() {
        Ok(cwd) => cwd.join(&args.run.out),
        Err(e) => return usage(format!("working directory: {e}")),
    };
    let out_fd = match std::fs::create_dir_all(&out).and_then(|()| open_dir(&out, OFlag::O_RDONLY))
    {
        Ok(fd) => fd,
        Err(e) => {
            eprintln!("vigil: cannot open bundle directory {}: {e}", out.display());
            return ExitCode::VIGIL_FAILED;
        }
    };
    let announce = args.sdk_announce.clone();
    let req = Request::Watch(Box::new(super::protocol::WatchRequest {
        version: VERSION,
        args,
        inputs,
        out,
    }));
    let stream = match UnixStream::connect(path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("vigil: {}", connect_error(path, &e));
            return ExitCode::VIGIL_FAILED;
        }
    };
    if let Err(e) = send_with_fds(&stream, &encode(&req), &[2, out_fd.as_raw_fd()]) {
        eprintln!(
            "vigil: sending the watch to the daemon at {}: {e}",
            path.display()
        );
        return ExitCode::VIGIL_FAILED;
    }
    drop(out_fd);
    let Some(rt) = crate::cli::runtime() else {
        return ExitCode::VIGIL_FAILED;
    };
    rt.block_on(relay(stream, path, announce.as_deref()))
}

/// The request's first bytes carry the fds; the rest follows plainly.
pub(crate) fn send_with_fds(
    stream: &UnixStream,
    bytes: &[u8],
    fds: &[RawFd],
) -> std::io::Result<()> {
    let cmsg = [ControlMessage::ScmRights(fds)];
    let sent = sendmsg::<()>(
        stream.as_raw_fd(),
        &[IoSlice::new(bytes)],
        &cmsg,
        MsgFlags::empty(),
        None,
    )?;
    let mut s = stream;
    s.write_all(&bytes[sent..])
}

/// Relay replies until `finished`; a watch's socket path goes to `announce` (written as the
/// client, never through a symlink).
async fn relay(stream: UnixStream, path: &Path, announce: Option<&Path>) -> i32 {
    let fail = |m: String| {
        eprintln!("vigil: {m}");
        ExitCode::VIGIL_FAILED
    };
    if let Err(e) = stream.set_nonblocking(true) {
        return fail(e.to_string());
    }
    let mut stream = match tokio::net::UnixStream::from_std(stream) {
        Ok(s) => s,
        Err(e) => return fail(e.to_string()),
    };
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return fail("cannot install signal handlers".into());
    };
    let mut dec = Decoder::default();
    let mut buf = vec![0u8; 64 * 1024];
    let mut bundle: Option<PathBuf> = None;
    let mut forwarded: Option<i32> = None;
    loop {
        while let Some(body) = match dec.next_body(MAX_REPLY_FRAME) {
            Ok(b) => b,
            Err(e) => return fail(format!("the daemon sent a bad frame: {e}")),
        } {
            let reply: Reply = match serde_json::from_slice(&body) {
                Ok(r) => r,
                Err(e) => return fail(format!("the daemon sent a bad message: {e}")),
            };
            match reply {
                Reply::Deferred { position } => eprintln!(
                    "vigil: every run slot of the daemon is busy; waiting (position {position})"
                ),
                Reply::Accepted { bundle: b, .. } => bundle = Some(b),
                Reply::Watching { sdk_socket, .. } => {
                    let host = crate::run::host::RunHost::Standalone;
                    if let Err(e) = host.watch_active(announce, sdk_socket.as_deref()) {
                        eprintln!("vigil: --sdk-announce: {e}");
                    }
                }
                Reply::Started { .. } | Reply::Status(_) => {}
                Reply::Finished(f) => {
                    for c in &f.copies {
                        if let Err(e) = write_copy(&c.path, c.content.as_bytes()) {
                            eprintln!("vigil: profile copy not written: {e}");
                        }
                    }
                    if let Some(e) = &f.error {
                        eprintln!("vigil: {e}");
                    }
                    return f.exit_code;
                }
                Reply::Rejected { reason: r, message } => {
                    eprintln!("vigil: the daemon did not run the command ({r}): {message}");
                    return match r.as_str() {
                        // As a run cancelled by that signal exits.
                        reason::CANCELLED => ExitCode::signal(forwarded.unwrap_or(libc::SIGINT)),
                        reason::BAD_REQUEST
                        | reason::NOT_PERMITTED
                        | reason::UNSUPPORTED_VERSION => ExitCode::USAGE,
                        _ => ExitCode::VIGIL_FAILED,
                    };
                }
                Reply::Error { reason: r, message } => {
                    return fail(format!("the daemon refused the request ({r}): {message}"));
                }
            }
        }
        let sig = tokio::select! {
            n = stream.read(&mut buf) => match n {
                Ok(0) | Err(_) => {
                    let what = match &bundle {
                        Some(b) => format!(
                            "; its bundle {} is not committed: recover it with `vigil reindex --repair {}`",
                            b.display(),
                            b.display()
                        ),
                        None => String::new(),
                    };
                    return fail(format!(
                        "the daemon at {} went away before the run finished{what}",
                        path.display()
                    ));
                }
                Ok(n) => {
                    dec.push(&buf[..n]);
                    continue;
                }
            },
            _ = int.recv() => libc::SIGINT,
            _ = term.recv() => libc::SIGTERM,
        };
        // The daemon's run says what it does with it (as standalone vigil would).
        forwarded = Some(sig);
        let _ = stream
            .write_all(&encode(&Request::Signal { signal: sig }))
            .await;
    }
}
