//! GitHub Actions self-hosted runner job hooks (`ACTIONS_RUNNER_HOOK_JOB_STARTED` /
//! `ACTIONS_RUNNER_HOOK_JOB_COMPLETED`, scripts in `contrib/github/`).
//!
//! `job-started` finds `Runner.Worker` among its ancestors, asks the daemon to move it into a
//! job cgroup and watch it (keyed by `GITHUB_RUN_ID`/`GITHUB_RUN_ATTEMPT`/`GITHUB_JOB`), and
//! exports `VIGIL_SDK_SOCKET` and `VIGIL_RUN_ID` to the job's steps through `$GITHUB_ENV`.
//! `job-completed` ends the watch and appends the job summary to `$GITHUB_STEP_SUMMARY`.
//!
//! Both fail open: no daemon, a refusal, an error or no answer within [`HOOK_DEADLINE`] is one
//! `::warning::` line (an annotation in the job's log) and exit 0. A job never fails because
//! of vigil.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::{Args, FromArgMatches};

use crate::cli::RunArgs;
use crate::daemon::protocol::{
    Decoder, JobStart, MAX_REPLY_FRAME, Reply, Request, VERSION, encode,
};
use crate::run::spec::RunInputs;

/// The longest a hook takes, whatever happens.
pub const HOOK_DEADLINE: Duration = Duration::from_secs(5);

/// The comm of the runner's per-job worker process.
const WORKER: &str = "Runner.Worker";

#[derive(Debug, Clone, clap::Args)]
pub struct HookArgs {
    /// The daemon to ask.
    #[arg(
        long,
        env = "VIGIL_DAEMON_SOCKET",
        default_value = crate::daemon::DEFAULT_SOCKET,
        value_name = "PATH"
    )]
    pub daemon: PathBuf,

    /// Where the job's bundle goes (default: `$HOME/.vigil/runs`).
    #[arg(long, env = "VIGIL_OUT", value_name = "DIR")]
    pub out: Option<PathBuf>,

    /// Audit (or, for network rules, enforce) the job against this policy.
    #[arg(long, env = "VIGIL_POLICY", value_name = "FILE")]
    pub policy: Option<PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
pub enum GithubHook {
    /// ACTIONS_RUNNER_HOOK_JOB_STARTED: put the job under watch.
    JobStarted(HookArgs),
    /// ACTIONS_RUNNER_HOOK_JOB_COMPLETED: end the watch, commit the bundle, write the summary.
    JobCompleted(HookArgs),
}

/// Run a hook; always 0 (a failure is a warning line).
pub fn hook(h: GithubHook) -> i32 {
    let result = match h {
        GithubHook::JobStarted(a) => job_started(&a),
        GithubHook::JobCompleted(a) => job_completed(&a),
    };
    match result {
        Ok(msg) => println!("vigil: {msg}"),
        // A workflow command: GitHub shows it as a warning annotation on the job.
        Err(e) => println!("::warning title=vigil::{}", e.replace(['\n', '\r'], " ")),
    }
    0
}

/// `gh-<run_id>-<attempt>-<job>`, in run-id characters.
pub fn job_key(env: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let run = env("GITHUB_RUN_ID").ok_or("GITHUB_RUN_ID is not set (not a GitHub job?)")?;
    let attempt = env("GITHUB_RUN_ATTEMPT").unwrap_or_else(|| "1".into());
    let job = env("GITHUB_JOB").unwrap_or_else(|| "job".into());
    let raw = format!("gh-{run}-{attempt}-{job}");
    Ok(raw
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '_' | '-' => c,
            _ => '_',
        })
        .take(200)
        .collect())
}

fn env(k: &str) -> Option<String> {
    std::env::var(k).ok().filter(|v| !v.is_empty())
}

/// The nearest ancestor whose comm is `Runner.Worker`.
pub fn find_worker(from: i32) -> Option<i32> {
    let mut at = from;
    for _ in 0..64 {
        let st = procfs::process::Process::new(at).ok()?.stat().ok()?;
        if st.comm == WORKER {
            return Some(at);
        }
        if st.ppid <= 1 {
            return None;
        }
        at = st.ppid;
    }
    None
}

fn out_dir(a: &HookArgs) -> Result<PathBuf, String> {
    match &a.out {
        Some(o) => Ok(o.clone()),
        None => env("HOME")
            .map(|h| Path::new(&h).join(".vigil/runs"))
            .ok_or_else(|| "no --out and no HOME".to_string()),
    }
}

/// The watch's flags: the run flags' defaults and environment equivalents, with the liveness
/// watchdog off unless the environment asks for it (a watch must not fail the job).
fn watch_args(a: &HookArgs, out: &Path) -> Result<RunArgs, String> {
    let mut argv: Vec<String> = vec!["hook".into(), "--out".into(), out.display().to_string()];
    if env("SPEC_RUNNER_LIVENESS_LEVEL").is_none() {
        argv.extend(["--liveness-level".into(), "off".into()]);
    }
    if env("VIGIL_CONTRACTS").is_none() {
        // Not the job's checkout's contracts: none unless asked.
        argv.extend(["--contracts".into(), "/nonexistent/vigil-contracts".into()]);
    }
    if let Some(p) = &a.policy {
        argv.extend(["--policy".into(), p.display().to_string()]);
    }
    let cmd = RunArgs::augment_args(clap::Command::new("hook"));
    let m = cmd.try_get_matches_from(argv).map_err(|e| e.to_string())?;
    RunArgs::from_arg_matches(&m).map_err(|e| e.to_string())
}

/// One request, one reply, within the deadline.
fn ask(socket: &Path, req: &Request, fd: Option<i32>, deadline: Instant) -> Result<Reply, String> {
    let stream = UnixStream::connect(socket)
        .map_err(|e| format!("no daemon at {}: {e}", socket.display()))?;
    let left = || {
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    };
    stream
        .set_write_timeout(Some(left()))
        .map_err(|e| e.to_string())?;
    let bytes = encode(req);
    match fd {
        Some(fd) => crate::daemon::client::send_with_fds(&stream, &bytes, &[fd]),
        None => (&stream).write_all(&bytes),
    }
    .map_err(|e| format!("sending to the daemon: {e}"))?;
    let mut dec = Decoder::default();
    let mut buf = [0u8; 64 * 1024];
    loop {
        if let Some(body) = dec.next_body(MAX_REPLY_FRAME).map_err(|e| e.to_string())? {
            return serde_json::from_slice(&body).map_err(|e| format!("bad reply: {e}"));
        }
        stream
            .set_read_timeout(Some(left()))
            .map_err(|e| e.to_string())?;
        let n = (&stream).read(&mut buf).map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => format!(
                "the daemon did not answer within {} s",
                HOOK_DEADLINE.as_secs()
            ),
            _ => format!("reading the daemon's answer: {e}"),
        })?;
        if n == 0 {
            return Err("the daemon closed the connection".into());
        }
        dec.push(&buf[..n]);
    }
}

/// Append `text` to the file a GitHub variable names (never through a symlink).
fn append(var: &str, text: &str) -> Result<bool, String> {
    let Some(path) = env(var) else {
        return Ok(false);
    };
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .map_err(|e| format!("${var} {path}: {e}"))?;
    f.write_all(text.as_bytes())
        .map_err(|e| format!("${var} {path}: {e}"))?;
    Ok(true)
}

fn job_started(a: &HookArgs) -> Result<String, String> {
    let deadline = Instant::now() + HOOK_DEADLINE;
    let key = job_key(env)?;
    let me = i32::try_from(std::process::id()).unwrap_or(0);
    let worker = find_worker(me).ok_or(format!("no {WORKER} among this hook's ancestors"))?;
    let out = out_dir(a)?;
    std::fs::create_dir_all(&out).map_err(|e| format!("--out {}: {e}", out.display()))?;
    let args = watch_args(a, &out)?;
    let inputs = RunInputs::read(&args).map_err(|e| e.to_string())?;
    let out_fd = std::fs::File::open(&out).map_err(|e| format!("--out {}: {e}", out.display()))?;
    let req = Request::JobStart(Box::new(JobStart {
        version: VERSION,
        key: key.clone(),
        worker_pid: worker,
        args,
        inputs,
        out: out.clone(),
    }));
    match ask(&a.daemon, &req, Some(out_fd.as_raw_fd()), deadline)? {
        Reply::Watching {
            bundle, sdk_socket, ..
        } => {
            let mut exports = format!("VIGIL_RUN_ID={key}\n");
            if let Some(s) = sdk_socket {
                exports.push_str(&format!("VIGIL_SDK_SOCKET={}\n", s.display()));
            }
            append("GITHUB_ENV", &exports)?;
            Ok(format!(
                "watching job {key} ({WORKER} pid {worker}); bundle {}",
                bundle.display()
            ))
        }
        Reply::Rejected { reason, message } | Reply::Error { reason, message } => Err(format!(
            "the job is not watched: the daemon said {reason}: {message}"
        )),
        other => Err(format!("unexpected answer {other:?}")),
    }
}

fn job_completed(a: &HookArgs) -> Result<String, String> {
    let deadline = Instant::now() + HOOK_DEADLINE;
    let key = job_key(env)?;
    let finished = match ask(
        &a.daemon,
        &Request::JobEnd { key: key.clone() },
        None,
        deadline,
    )? {
        Reply::Finished(f) => f,
        Reply::Rejected { reason, message } | Reply::Error { reason, message } => {
            return Err(format!(
                "no bundle for job {key}: the daemon said {reason}: {message}"
            ));
        }
        other => return Err(format!("unexpected answer {other:?}")),
    };
    if let Some(e) = &finished.error {
        return Err(format!("job {key}'s bundle: {e}"));
    }
    // The bundle is the client's now: read it as such (untrusted, beneath its directory).
    let dir = crate::evidence::beneath::BundleDir::open(&finished.bundle)
        .map_err(|e| format!("{}: {e}", finished.bundle.display()))?;
    let timeline = crate::export::timeline::Timeline::read(&dir, true)
        .map_err(|e| format!("{}: {e}", finished.bundle.display()))?;
    let md = crate::export::cli::github_summary(&dir, &timeline);
    if !append("GITHUB_STEP_SUMMARY", &md)? {
        print!("{md}");
    }
    Ok(format!(
        "job {key} {}; bundle {}",
        finished.status,
        finished.bundle.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_keys_are_run_ids() {
        let vars = |k: &str| match k {
            "GITHUB_RUN_ID" => Some("123".to_string()),
            "GITHUB_RUN_ATTEMPT" => Some("2".to_string()),
            "GITHUB_JOB" => Some("build / linux".to_string()),
            _ => None,
        };
        assert_eq!(job_key(vars).as_deref(), Ok("gh-123-2-build___linux"));
        assert!(job_key(|_| None).is_err());
    }
}
