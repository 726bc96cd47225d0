//! The cgroup guard: a small helper process (vigil's own binary, hidden subcommand) that holds
//! the read end of a pipe from the supervising vigil. When that pipe reaches EOF — vigil ended,
//! normally or by SIGKILL — the guard kills everything left in the run's owner cgroup and
//! removes it. This is what keeps daemons that escaped the process group (setsid, double fork)
//! from outliving a vigil that was killed; PR_SET_PDEATHSIG only reaches the direct child.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{SigHandler, Signal, signal};

use super::cgroup::{self, CgroupError};

/// The supervising side: the guard child and the write end of its pipe.
pub struct Guard {
    child: Child,
    pipe: Option<OwnedFd>,
}

impl Guard {
    /// Start `vigil __cgroup-guard --cgroup DIR` from our own executable.
    pub fn spawn(owner_dir: &Path) -> std::io::Result<Self> {
        let exe = std::env::current_exe()?;
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let mut cmd = Command::new(exe);
        cmd.arg("__cgroup-guard")
            .arg("--cgroup")
            .arg(owner_dir)
            .stdin(Stdio::from(read))
            .stdout(Stdio::null());
        // Its own process group: a Ctrl-C at the terminal is vigil's to handle, not the guard's.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.spawn()?;
        Ok(Guard {
            child,
            pipe: Some(write),
        })
    }

    /// Close the pipe (the guard then sweeps whatever is left) and reap the guard.
    pub fn release(mut self) {
        self.pipe.take();
        let _ = self.child.wait();
    }
}

/// The guard's main: wait for EOF on stdin, then kill and remove the owner cgroup.
pub fn run_guard(owner_dir: &Path) -> Result<(), CgroupError> {
    // SAFETY: setting dispositions to SIG_IGN installs no handler code; it is sound at any time.
    unsafe {
        for sig in [
            Signal::SIGINT,
            Signal::SIGTERM,
            Signal::SIGHUP,
            Signal::SIGPIPE,
        ] {
            let _ = signal(sig, SigHandler::SigIgn);
        }
    }
    let mut stdin = std::io::stdin().lock();
    let mut buf = [0u8; 64];
    // Read until EOF; vigil never writes, so any return of 0 means it is gone.
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    cgroup::kill_and_remove(owner_dir, Duration::from_secs(10))
}
