//! Per-step attribution of a watched CI job: each step is a direct child of the runner's worker
//! process (GitHub's `Runner.Worker`); its id is `GITHUB_ACTION` in that child's environment at
//! its exec, read once from /proc (only that one value is kept). Every process the step forks is
//! the step's, and its kernel events are counted per step. At the end each step becomes a
//! `case.run` span and a summary step row. A step that is gone before its environment could
//! be read (it ended within milliseconds of its exec) is still a step, named `pid-<pid>`.

use std::collections::HashMap;

use serde_json::json;

use crate::evidence::spans::{RunSpan, SpanTree};
use crate::evidence::trace::{StepRow, StepStatus, span};
use crate::kernel::bus::KernelObserver;
use crate::kernel::event::{KernelEvent, Observed};

/// One step as the kernel saw it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Step {
    pub id: String,
    /// The id is `GITHUB_ACTION` (false: the process was gone before it was read).
    pub named: bool,
    pub pid: u32,
    pub start_boot_ns: u64,
    pub end_boot_ns: Option<u64>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub processes: u64,
    pub execs: u64,
    pub opens: u64,
    pub network: u64,
    pub writes: u64,
    pub write_bytes: u64,
}

/// What a worker's child's environment says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepId {
    /// A step, with this id.
    Step(String),
    /// Not a step (the runner's own helper: no `GITHUB_ACTION`).
    NotAStep,
    /// Gone before its environment could be read: a step, name unknown.
    Gone,
}

/// Reads a process's step id at its exec.
pub type StepIdOf = fn(u32) -> StepId;

/// `GITHUB_ACTION` from /proc/PID/environ.
pub fn github_action(pid: u32) -> StepId {
    let env = i32::try_from(pid)
        .ok()
        .and_then(|p| procfs::process::Process::new(p).ok())
        .and_then(|p| p.environ().ok());
    match env {
        // A zombie's environment reads empty: it is gone too.
        None => StepId::Gone,
        Some(e) if e.is_empty() => StepId::Gone,
        Some(e) => e
            .get(std::ffi::OsStr::new("GITHUB_ACTION"))
            .map(|v| v.to_string_lossy().into_owned())
            .filter(|v| !v.is_empty())
            .map_or(StepId::NotAStep, StepId::Step),
    }
}

pub struct StepTracker {
    parent: u32,
    id_of: StepIdOf,
    steps: Vec<Step>,
    /// Which step each live process belongs to.
    member: HashMap<u32, usize>,
}

impl StepTracker {
    pub fn new(parent: u32, id_of: StepIdOf) -> Self {
        StepTracker {
            parent,
            id_of,
            steps: Vec::new(),
            member: HashMap::new(),
        }
    }

    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    fn apply(&mut self, ev: &KernelEvent) {
        let hdr = ev.header();
        if let KernelEvent::Exec { .. } = ev
            && hdr.ppid == self.parent
            && !self.member.contains_key(&hdr.pid)
        {
            // A step that ended before its environment could be read keeps its pid as name.
            let (id, named) = match (self.id_of)(hdr.pid) {
                StepId::Step(id) => (id, true),
                StepId::Gone => (format!("pid-{}", hdr.pid), false),
                StepId::NotAStep => return,
            };
            self.member.insert(hdr.pid, self.steps.len());
            self.steps.push(Step {
                id,
                named,
                pid: hdr.pid,
                start_boot_ns: hdr.boot_ns,
                processes: 1,
                ..Step::default()
            });
        }
        let Some(&i) = self.member.get(&hdr.pid) else {
            return;
        };
        let step = &mut self.steps[i];
        match ev {
            KernelEvent::Fork {
                child_pid,
                is_thread: false,
                ..
            } => {
                step.processes += 1;
                self.member.insert(*child_pid, i);
            }
            KernelEvent::Exec { .. } => step.execs += 1,
            KernelEvent::Open { .. } => step.opens += 1,
            KernelEvent::Net { .. } => step.network += 1,
            KernelEvent::Write { bytes, .. } => {
                step.writes += 1;
                step.write_bytes += bytes;
            }
            KernelEvent::Exit {
                group_dead: true,
                exit_code,
                signal,
                ..
            } => {
                if hdr.pid == step.pid {
                    step.end_boot_ns = Some(hdr.boot_ns);
                    step.exit_code = *exit_code;
                    step.signal = *signal;
                }
                self.member.remove(&hdr.pid);
            }
            _ => {}
        }
    }

    /// Each step as a `case.run` span under `parent` and as a summary row.
    pub fn record(&self, tree: &SpanTree, parent: &RunSpan, offset: i128) -> Vec<StepRow> {
        let wall = |b: u64| crate::clock::boot_to_wall(b, offset);
        self.steps
            .iter()
            .map(|s| {
                let start = wall(s.start_boot_ns);
                let end = s.end_boot_ns.map_or_else(crate::clock::now_ns, wall);
                let status = match (s.end_boot_ns, s.exit_code, s.signal) {
                    (None, _, _) => StepStatus::Error,
                    (_, Some(0), _) => StepStatus::Passed,
                    (_, Some(_), _) => StepStatus::Failed,
                    (_, None, _) => StepStatus::Killed,
                };
                let attrs = json!({"step_id": s.id, "step_id_read": s.named, "pid": s.pid, "exit_code": s.exit_code,
                    "signal": s.signal, "processes": s.processes, "execs": s.execs, "opens": s.opens,
                    "network": s.network, "writes": s.writes, "write_bytes": s.write_bytes,
                    "finished": s.end_boot_ns.is_some()});
                let sp = tree.open_at(span::CASE_RUN, Some(parent), start);
                sp.close(status.as_str(), attrs, end);
                StepRow {
                    name: s.id.clone(),
                    status,
                    exit_code: s.exit_code,
                    signal: s.signal,
                    duration_ms: end.saturating_sub(start) / 1_000_000,
                    reason: None,
                    skip_reason: None,
                    blocked_by: None,
                    stall_detected: None,
                    stall_phase: None,
                    triage: None,
                    bundle: None,
                }
            })
            .collect()
    }
}

impl KernelObserver for StepTracker {
    fn observe(&mut self, batch: &[Observed]) {
        for o in batch {
            self.apply(&o.event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::event::Header;

    fn h(pid: u32, ppid: u32, t: u64) -> Header {
        Header {
            version: 1,
            pid,
            tid: pid,
            ppid,
            cgroup_id: 1,
            boot_ns: t,
            comm: "x".into(),
        }
    }

    fn exec(pid: u32, ppid: u32, t: u64) -> KernelEvent {
        KernelEvent::Exec {
            hdr: h(pid, ppid, t),
            filename: "/bin/sh".into(),
            argv: vec![],
            argv_truncated: false,
            uid: 0,
            gid: 0,
            cred_changed: false,
        }
    }

    fn exit(pid: u32, ppid: u32, code: i32, t: u64) -> KernelEvent {
        KernelEvent::Exit {
            hdr: h(pid, ppid, t),
            exit_code: Some(code),
            signal: None,
            core_dumped: false,
            group_dead: true,
        }
    }

    #[test]
    fn direct_children_with_a_step_id_are_steps_and_own_their_subtrees() {
        // pid 11 and 13 are named steps; 12's environment was gone before it was read; 14 is
        // the runner's own helper.
        let id_of: StepIdOf = |pid| match pid {
            11 => StepId::Step("build".into()),
            13 => StepId::Step("test".into()),
            12 => StepId::Gone,
            _ => StepId::NotAStep,
        };
        let mut t = StepTracker::new(10, id_of);
        for ev in [
            exec(11, 10, 100),
            KernelEvent::Fork {
                hdr: h(11, 10, 110),
                child_pid: 20,
                child_tid: 20,
                is_thread: false,
            },
            exec(20, 11, 120),
            exec(12, 10, 130),
            exit(20, 11, 0, 140),
            exit(11, 10, 0, 150),
            exec(14, 10, 190),
            exec(13, 10, 200),
            exit(13, 10, 3, 250),
        ] {
            t.apply(&ev);
        }
        let steps = t.steps();
        assert_eq!(steps.len(), 3, "{steps:?}");
        assert_eq!((steps[1].id.as_str(), steps[1].named), ("pid-12", false));
        assert_eq!((steps[0].id.as_str(), steps[0].processes), ("build", 2));
        assert_eq!(steps[0].execs, 2, "its own exec and its child's");
        assert_eq!(steps[0].exit_code, Some(0));
        assert_eq!(steps[0].end_boot_ns, Some(150));
        assert_eq!(
            (steps[2].id.as_str(), steps[2].exit_code),
            ("test", Some(3))
        );
    }
}
