//! Kill escalation (CONTRACT.md §2) as a state the supervisor drives: SIGTERM to every process of
//! the run's cgroup now, SIGKILL through cgroup.kill at the grace deadline (or at once on a second
//! Ctrl-C). Processes that left the process group (setsid, double fork) are still in the cgroup,
//! so they are reached too. The supervisor learns that the cgroup emptied from cgroup.events.

use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::time::Instant;

use super::cgroup::{CgroupError, KillMechanism, RunCgroup};

#[derive(Debug)]
pub struct Escalation {
    pub started: Instant,
    pub kill_at: Instant,
    pub term_sent: usize,
    pub mechanism: Option<KillMechanism>,
}

impl Escalation {
    /// Send SIGTERM to every process of the cgroup; SIGKILL is due after `grace`.
    pub fn start(cg: &RunCgroup, grace: Duration) -> Self {
        let started = Instant::now();
        let pids = cg.procs();
        for &pid in &pids {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        Escalation {
            started,
            kill_at: started + grace,
            term_sent: pids.len(),
            mechanism: None,
        }
    }

    pub fn escalated(&self) -> bool {
        self.mechanism.is_some()
    }

    /// SIGKILL whatever is left (idempotent).
    pub fn kill_now(&mut self, cg: &RunCgroup) -> Result<KillMechanism, CgroupError> {
        if let Some(m) = self.mechanism {
            return Ok(m);
        }
        let m = cg.kill_all()?;
        self.mechanism = Some(m);
        Ok(m)
    }

    pub fn elapsed_ms(&self) -> f64 {
        self.started.elapsed().as_secs_f64() * 1000.0
    }
}
