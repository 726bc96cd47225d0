//! A plan's scheduling as pure logic: whether the next step runs or is skipped (and why, and
//! blocked by what), and what a finished step means for the steps after it — fail-fast, a
//! dependency that failed or was skipped, the chain's time running out, a cancel. No I/O, no
//! clock: the gate tells it whether the chain's deadline has passed.

use super::liveness::reason;
use super::plan_file::Step;
use crate::evidence::trace::{StepRow, StepStatus, Triage};

/// Why a step was skipped (`skip_reason`).
pub mod skip {
    pub const FAIL_FAST: &str = "fail_fast";
    pub const DEPENDENCY_FAILED: &str = "dependency_failed";
    pub const DEPENDENCY_SKIPPED: &str = "dependency_skipped";
    pub const CHAIN_TIMEOUT: &str = "chain_timeout";
    /// vigil was asked to stop (SIGINT/SIGTERM) during an earlier step.
    pub const CANCELLED: &str = "cancelled";
}

/// What to do with the next step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    Run,
    Skip {
        why: &'static str,
        blocked_by: String,
    },
}

/// The gate's schedule: once something stops the chain, every later step is skipped.
#[derive(Debug)]
pub struct Schedule {
    fail_fast: bool,
    /// The step that stops every later one, and the skip reason it gives them.
    stop: Option<(String, &'static str)>,
}

impl Schedule {
    pub fn new(fail_fast: bool) -> Self {
        Schedule {
            fail_fast,
            stop: None,
        }
    }

    /// The decision for `step`, given the rows so far and whether the chain's time is up.
    pub fn next(&mut self, step: &Step, rows: &[StepRow], chain_expired: bool) -> Next {
        if self.stop.is_none() && chain_expired {
            // The chain's time ran out between steps: blocked by the step that used it up.
            let last = rows.last().map(|r| r.name.clone()).unwrap_or_default();
            self.stop = Some((last, skip::CHAIN_TIMEOUT));
        }
        if let Some((by, why)) = &self.stop {
            return Next::Skip {
                why,
                blocked_by: by.clone(),
            };
        }
        let blocked = step.depends_on.iter().find_map(|dep| {
            let row = rows.iter().find(|r| &r.name == dep)?;
            match row.status {
                StepStatus::Passed => None,
                StepStatus::Skipped => Some((dep, skip::DEPENDENCY_SKIPPED)),
                _ => Some((dep, skip::DEPENDENCY_FAILED)),
            }
        });
        match blocked {
            Some((dep, why)) => Next::Skip {
                why,
                blocked_by: dep.clone(),
            },
            None => Next::Run,
        }
    }

    /// What a step that ran (or was skipped) means for the rest of the chain.
    pub fn after(&mut self, row: &StepRow, cancelled: bool) {
        if self.stop.is_some() {
            return;
        }
        let name = row.name.clone();
        if cancelled {
            self.stop = Some((name, skip::CANCELLED));
        } else if row.reason.as_deref() == Some(reason::CASE_CHAIN) {
            self.stop = Some((name, skip::CHAIN_TIMEOUT));
        } else if self.fail_fast && row.status.is_failure() {
            self.stop = Some((name, skip::FAIL_FAST));
        }
    }
}

/// The row of a skipped step.
pub fn skipped(step: &Step, why: &str, blocked_by: Option<&str>) -> StepRow {
    StepRow {
        name: step.name.clone(),
        status: StepStatus::Skipped,
        exit_code: None,
        signal: None,
        duration_ms: 0,
        reason: None,
        skip_reason: Some(why.into()),
        blocked_by: blocked_by.map(String::from),
        stall_detected: Some(false),
        stall_phase: None,
        triage: step.governance.then(Triage::not_run),
        bundle: None,
    }
}

/// The step after which the gate stopped running steps: the first failure when fail-fast
/// skipped later steps, or the step during which the chain timed out or was cancelled.
pub fn aborted_after(steps: &[StepRow]) -> Option<String> {
    let stopped = steps.iter().find(|r| {
        matches!(
            r.skip_reason.as_deref(),
            Some(skip::FAIL_FAST | skip::CHAIN_TIMEOUT | skip::CANCELLED)
        )
    })?;
    stopped.blocked_by.clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::plan_file::StepCommand;

    fn step(name: &str, deps: &[&str]) -> Step {
        Step {
            name: name.into(),
            command: StepCommand::Shell("true".into()),
            cwd: None,
            env: vec![],
            timeout: None,
            governance: false,
            junit: None,
            triage: None,
            depends_on: deps.iter().map(|d| d.to_string()).collect(),
            setup: None,
            teardown: None,
            harness_timeout: None,
        }
    }

    fn ran(name: &str, status: StepStatus) -> StepRow {
        let mut r = skipped(&step(name, &[]), "x", None);
        r.status = status;
        r.skip_reason = None;
        r.blocked_by = None;
        r
    }

    /// Drive a whole chain: `results` says how each step that runs ends.
    fn chain(
        fail_fast: bool,
        steps: &[Step],
        results: &[StepStatus],
        expire_before: Option<usize>,
    ) -> Vec<StepRow> {
        let mut s = Schedule::new(fail_fast);
        let mut rows: Vec<StepRow> = Vec::new();
        let mut results = results.iter();
        for (i, st) in steps.iter().enumerate() {
            let row = match s.next(st, &rows, expire_before == Some(i)) {
                Next::Run => ran(&st.name, *results.next().expect("a result")),
                Next::Skip { why, blocked_by } => skipped(st, why, Some(&blocked_by)),
            };
            s.after(&row, false);
            rows.push(row);
        }
        rows
    }

    #[test]
    fn fail_fast_skips_the_rest_blocked_by_the_first_failure() {
        let steps = [step("a", &[]), step("b", &[]), step("c", &[])];
        let rows = chain(
            true,
            &steps,
            &[StepStatus::Passed, StepStatus::Failed],
            None,
        );
        assert_eq!(rows[2].skip_reason.as_deref(), Some(skip::FAIL_FAST));
        assert_eq!(rows[2].blocked_by.as_deref(), Some("b"));
        assert_eq!(aborted_after(&rows).as_deref(), Some("b"));
    }

    #[test]
    fn continue_on_fail_skips_only_dependents_transitively() {
        let steps = [
            step("a", &[]),
            step("b", &["a"]),
            step("c", &["b"]),
            step("d", &[]),
        ];
        let rows = chain(
            false,
            &steps,
            &[StepStatus::TimedOut, StepStatus::Passed],
            None,
        );
        assert_eq!(
            rows[1].skip_reason.as_deref(),
            Some(skip::DEPENDENCY_FAILED)
        );
        assert_eq!(
            rows[2].skip_reason.as_deref(),
            Some(skip::DEPENDENCY_SKIPPED)
        );
        assert_eq!(rows[2].blocked_by.as_deref(), Some("b"));
        assert_eq!(rows[3].status, StepStatus::Passed);
        assert_eq!(aborted_after(&rows), None, "nothing stopped the chain");
    }

    #[test]
    fn an_expired_chain_skips_what_is_left_blocked_by_the_last_step() {
        let steps = [step("a", &[]), step("b", &[]), step("c", &[])];
        let rows = chain(false, &steps, &[StepStatus::Passed], Some(1));
        assert_eq!(rows[1].skip_reason.as_deref(), Some(skip::CHAIN_TIMEOUT));
        assert_eq!(rows[1].blocked_by.as_deref(), Some("a"));
        assert_eq!(rows[2].skip_reason.as_deref(), Some(skip::CHAIN_TIMEOUT));
    }

    #[test]
    fn a_cancel_or_a_chain_timeout_inside_a_step_stops_even_without_fail_fast() {
        let mut s = Schedule::new(false);
        s.after(&ran("a", StepStatus::Killed), true);
        assert_eq!(
            s.next(&step("b", &[]), &[], false),
            Next::Skip {
                why: skip::CANCELLED,
                blocked_by: "a".into()
            }
        );
        let mut s = Schedule::new(false);
        let mut timed = ran("a", StepStatus::TimedOut);
        timed.reason = Some(reason::CASE_CHAIN.into());
        s.after(&timed, false);
        assert!(matches!(
            s.next(&step("b", &[]), &[], false),
            Next::Skip {
                why: skip::CHAIN_TIMEOUT,
                ..
            }
        ));
    }
}
