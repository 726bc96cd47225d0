//! How a run ended, as status token, step status and exit code (CONTRACT.md §4).

use crate::cli::ExitCode;
use crate::evidence::trace::StepStatus;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The main child exited with this code.
    Exited(i32),
    /// The main child died of this signal, not sent by vigil.
    Signaled(i32),
    /// vigil's watchdog or a timeout ended the run, for this reason token.
    Watchdog(&'static str),
    /// vigil was asked to stop (SIGINT/SIGTERM) and stopped the run.
    Cancelled(i32),
    /// The command could not be started: 126 or 127.
    NotStarted(i32),
    /// vigil itself failed.
    VigilFailed,
    /// The command succeeded but, under `--contracts-strict`, a contract was violated.
    ContractViolated,
    /// A watch ended (the cgroup emptied, SIGINT, `--duration`) without vigil ending any of its
    /// processes: they were observed, not supervised, and their own results are in the tree.
    Observed,
}

impl Outcome {
    /// Top-level `status` of run-trace.json.
    pub fn status(&self) -> &'static str {
        match self {
            Outcome::Exited(0) => "passed",
            Outcome::Exited(_) | Outcome::ContractViolated => "failed",
            Outcome::Signaled(_) => "killed",
            Outcome::Watchdog(_) => "timed_out",
            Outcome::Cancelled(_) => "cancelled",
            Outcome::NotStarted(_) | Outcome::VigilFailed => "error",
            Outcome::Observed => "observed",
        }
    }

    /// A step row's `status` (a cancelled run's step was killed).
    pub fn step_status(&self) -> StepStatus {
        match self {
            Outcome::Exited(0) | Outcome::Observed => StepStatus::Passed,
            Outcome::Exited(_) | Outcome::ContractViolated => StepStatus::Failed,
            Outcome::Signaled(_) | Outcome::Cancelled(_) => StepStatus::Killed,
            Outcome::Watchdog(_) => StepStatus::TimedOut,
            Outcome::NotStarted(_) | Outcome::VigilFailed => StepStatus::Error,
        }
    }

    pub fn exit_code(&self) -> i32 {
        match self {
            Outcome::Exited(c) => *c,
            Outcome::Observed => 0,
            Outcome::Signaled(s) | Outcome::Cancelled(s) => ExitCode::signal(*s),
            Outcome::Watchdog(_) => ExitCode::TIMEOUT,
            Outcome::NotStarted(c) => *c,
            Outcome::VigilFailed => ExitCode::VIGIL_FAILED,
            Outcome::ContractViolated => ExitCode::CONTRACT_VIOLATED,
        }
    }

    pub fn reason(&self) -> Option<&'static str> {
        match self {
            Outcome::Watchdog(r) => Some(r),
            _ => None,
        }
    }

    pub fn is_failure(&self) -> bool {
        !matches!(self, Outcome::Exited(0) | Outcome::Observed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::liveness::reason;

    #[test]
    fn exit_codes_follow_the_contract() {
        assert_eq!(Outcome::Exited(3).exit_code(), 3);
        assert_eq!(Outcome::Signaled(9).exit_code(), 137);
        assert_eq!(Outcome::Watchdog(reason::HARD_CAP).exit_code(), 124);
        assert_eq!(Outcome::Cancelled(2).exit_code(), 130);
        assert_eq!(Outcome::NotStarted(127).exit_code(), 127);
        assert_eq!(Outcome::VigilFailed.exit_code(), 125);
        assert_eq!(Outcome::ContractViolated.exit_code(), 3);
        assert_eq!(Outcome::ContractViolated.step_status(), StepStatus::Failed);
        assert_eq!(Outcome::Cancelled(15).step_status(), StepStatus::Killed);
        assert_eq!(
            Outcome::Watchdog(reason::IO_DRAIN).step_status(),
            StepStatus::TimedOut
        );
    }
}
