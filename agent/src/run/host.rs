//! How a run meets the world outside vigil. Standalone, that is this process: its environment,
//! stdio, working directory, signals, its own sensor and cgroup guard. Served by the daemon, it
//! is a client's: the environment it sent, the stdio and directories it passed as fds, its
//! signals as messages, the daemon's shared sensor and guard. The supervisor is the same.

use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc;

use super::spawn::ChildIo;
use crate::evidence::beneath::BundleDir;
use crate::kernel::hub::Hub;

/// Which kind of host the run had (health `mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Standalone,
    Daemon,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Standalone => "standalone",
            Mode::Daemon => "daemon",
        }
    }
}

/// What a daemon client brought.
pub struct Client {
    /// The client's whole environment: the child starts from it.
    pub env: Vec<(OsString, OsString)>,
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    /// The client's working directory (the child enters it with fchdir).
    pub cwd: OwnedFd,
    /// The client's `--out`, opened by the client: the bundle is created beneath it.
    pub out: Option<BundleDir>,
    /// Who the bundle is given to once committed (the client's uid and gid).
    pub owner: (u32, u32),
    /// Signals the client forwarded (Ctrl-C), and a closed channel when it went away.
    pub signals: mpsc::Receiver<i32>,
    /// The daemon's sensor.
    pub hub: Option<Arc<Hub>>,
    /// Told the main child's pid once it runs.
    pub started: Option<mpsc::UnboundedSender<i32>>,
    /// Told a watch's SDK socket path once the watch is active.
    pub sdk_socket: Option<mpsc::UnboundedSender<Option<std::path::PathBuf>>>,
}

pub enum RunHost {
    Standalone,
    Daemon(Box<Client>),
}

impl RunHost {
    pub fn mode(&self) -> Mode {
        match self {
            RunHost::Standalone => Mode::Standalone,
            RunHost::Daemon(_) => Mode::Daemon,
        }
    }

    /// The environment the child starts from (vigil's own, standalone).
    pub fn base_env(&self) -> Vec<(OsString, OsString)> {
        match self {
            RunHost::Standalone => std::env::vars_os().collect(),
            RunHost::Daemon(c) => c.env.clone(),
        }
    }

    pub fn child_io<'a>(&'a self, env: &'a [(OsString, OsString)]) -> ChildIo<'a> {
        match self {
            RunHost::Standalone => ChildIo {
                env,
                stdin: None,
                cwd: None,
            },
            RunHost::Daemon(c) => ChildIo {
                env,
                stdin: Some(c.stdin.as_fd()),
                cwd: Some(c.cwd.as_fd()),
            },
        }
    }

    /// Where the tee relays stream `fd` (1 or 2): vigil's own, or the client's.
    pub fn sink(&self, fd: i32) -> Option<std::fs::File> {
        let borrowed = match self {
            // SAFETY: fd 1 and 2 are open for the life of the process; BorrowedFd only borrows.
            RunHost::Standalone => unsafe { BorrowedFd::borrow_raw(fd) },
            RunHost::Daemon(c) if fd == 1 => c.stdout.as_fd(),
            RunHost::Daemon(c) => c.stderr.as_fd(),
        };
        borrowed.try_clone_to_owned().ok().map(std::fs::File::from)
    }

    /// Whether the tee must never block on its sink for long: a daemon client that stops
    /// reading must not hold the run open after its outcome.
    pub fn bounded_sink(&self) -> bool {
        matches!(self, RunHost::Daemon(_))
    }

    /// The main child runs (exec'd) with `pid`.
    pub fn started(&self, pid: i32) {
        if let RunHost::Daemon(c) = self
            && let Some(tx) = &c.started
        {
            let _ = tx.send(pid);
        }
    }

    /// Tell the person who asked for the run: vigil's stderr, or the client's.
    pub fn say(&self, msg: &str) {
        match self {
            RunHost::Standalone => eprintln!("vigil: {msg}"),
            RunHost::Daemon(c) => {
                let line = format!("vigil: {msg}\n");
                // A client that stopped reading its stderr costs it the message, not the run.
                let waited = std::cell::Cell::new(0);
                let _ = write_bounded(c.stderr.as_fd(), line.as_bytes(), || {
                    waited.set(waited.get() + 1);
                    waited.get() > 10
                });
            }
        }
    }

    /// A watch is active: tell whoever asked, with the SDK socket's path. Standalone, vigil
    /// writes it to `file` (`--sdk-announce`, never through a symlink); a daemon's client is
    /// told the path (a CI hook exports it to the job's steps).
    pub fn watch_active(
        &self,
        file: Option<&std::path::Path>,
        socket: Option<&std::path::Path>,
    ) -> std::io::Result<()> {
        match self {
            RunHost::Standalone => {
                let (Some(file), Some(socket)) = (file, socket) else {
                    return Ok(());
                };
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o644)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                    .open(file)?;
                writeln!(f, "{}", socket.display())
            }
            RunHost::Daemon(c) => {
                if let Some(tx) = &c.sdk_socket {
                    let _ = tx.send(socket.map(std::path::Path::to_path_buf));
                }
                Ok(())
            }
        }
    }

    /// A standalone run keeps its own guard; a daemon's runs share the daemon's.
    pub fn own_guard(&self) -> bool {
        matches!(self, RunHost::Standalone)
    }

    /// The control inputs: this process's SIGINT/SIGTERM, or the client's forwarded signals.
    pub fn controls(&mut self) -> std::io::Result<Controls> {
        match self {
            RunHost::Standalone => Ok(Controls::Process {
                int: signal(SignalKind::interrupt())?,
                term: signal(SignalKind::terminate())?,
            }),
            RunHost::Daemon(c) => {
                let (_, empty) = mpsc::channel(1);
                Ok(Controls::Client {
                    rx: std::mem::replace(&mut c.signals, empty),
                    gone: false,
                })
            }
        }
    }
}

/// Signals to the run, from the process or from a client.
pub enum Controls {
    Process { int: Signal, term: Signal },
    Client { rx: mpsc::Receiver<i32>, gone: bool },
}

impl Controls {
    /// The next signal (cancel-safe). A client that went away is a SIGTERM, once: the run is
    /// cancelled (TERM, grace, KILL) and its bundle committed.
    pub async fn recv(&mut self) -> i32 {
        match self {
            Controls::Process { int, term } => tokio::select! {
                _ = int.recv() => libc::SIGINT,
                _ = term.recv() => libc::SIGTERM,
            },
            Controls::Client { rx, gone } => {
                if *gone {
                    return std::future::pending().await;
                }
                match rx.recv().await {
                    Some(sig) => sig,
                    None => {
                        *gone = true;
                        libc::SIGTERM
                    }
                }
            }
        }
    }
}

/// How long one wait for a sink to take more output lasts before `give_up` is asked.
pub const SINK_WAIT_MS: i32 = 100;

/// Write all of `data` to `fd` (a pipe, terminal, socket or file someone else holds open)
/// without ever blocking for long: wait for room with poll, write at most PIPE_BUF bytes per
/// wakeup (a pipe that polls writable takes that much without blocking), and ask `give_up`
/// after each SINK_WAIT_MS without room. The fd's own flags are not touched: O_NONBLOCK would
/// change them for every holder of the open file description — the client's terminal too.
pub fn write_bounded(
    fd: BorrowedFd<'_>,
    mut data: &[u8],
    give_up: impl Fn() -> bool,
) -> std::io::Result<()> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    while !data.is_empty() {
        let mut fds = [PollFd::new(fd, PollFlags::POLLOUT)];
        match poll(&mut fds, PollTimeout::from(SINK_WAIT_MS as u16)) {
            Ok(0) => {
                if give_up() {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the reader stopped reading",
                    ));
                }
                continue;
            }
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
        let revents = fds[0].revents().unwrap_or(PollFlags::empty());
        if revents.intersects(PollFlags::POLLERR | PollFlags::POLLHUP | PollFlags::POLLNVAL) {
            return Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        }
        let take = data.len().min(libc::PIPE_BUF);
        match nix::unistd::write(fd, &data[..take]) {
            Ok(n) => data = &data[n..],
            Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sink_nobody_reads_gives_up_and_a_read_one_gets_every_byte() {
        let (r, w) = nix::unistd::pipe().expect("pipe");
        // 1 MiB into a 64 KiB pipe nobody reads: gives up after three waits, never blocks.
        let asked = std::cell::Cell::new(0);
        let big = vec![7u8; 1 << 20];
        let err = write_bounded(w.as_fd(), &big, || {
            asked.set(asked.get() + 1);
            asked.get() >= 3
        })
        .expect_err("nobody reads");
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(asked.get(), 3);
        // With a reader, all of it arrives.
        let reader = std::thread::spawn(move || {
            use std::io::Read;
            let mut all = Vec::new();
            std::fs::File::from(r).read_to_end(&mut all).expect("read");
            all.len()
        });
        write_bounded(w.as_fd(), &big, || false).expect("written");
        drop(w);
        assert!(reader.join().expect("reader") >= big.len());
    }
}
