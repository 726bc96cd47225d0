//! Kill escalation (CONTRACT.md §2), performed for the run's state, which owns its timing:
//! SIGTERM to every process of the run's cgroup, then SIGKILL through cgroup.kill. Processes that
//! left the process group (setsid, double fork) are still in the cgroup, so they are reached too.
//! SIGTERM goes through pidfds (see `pidfd`), SIGKILL through cgroup.kill (or the same pidfd
//! loop on kernels before 5.14): never a bare pid a recycled process could receive.

use std::time::Instant;

use super::cgroup::{CgroupError, KillMechanism, RunCgroup};

#[derive(Debug)]
pub struct Escalation {
    pub started: Instant,
    pub term_sent: usize,
    pub mechanism: Option<KillMechanism>,
}

impl Escalation {
    /// Send SIGTERM to every process of the cgroup; SIGKILL comes when the state says so.
    pub fn start(cg: &RunCgroup) -> Self {
        let started = Instant::now();
        Escalation {
            started,
            term_sent: cg.signal_all(libc::SIGTERM),
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
