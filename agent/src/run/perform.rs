//! The supervisor's hands: performing the run state's actions (events, notes, the fence, the
//! SDK layer, SIGTERM/SIGKILL, triage off the runtime thread, cgroup probes and samples) and
//! turning tee messages into run events.

use std::collections::VecDeque;
use std::time::Instant;

use serde_json::json;

use super::cgroup::RunCgroup;
use super::dispatch::{Action, RunEvent, RunState, Stream};
use super::kill::Escalation;
use super::liveness::reason;
use super::proctree::{ProcInfo, ProcTracker, read_stat};
use super::supervisor::{CPU_WINDOW, Shell, Supervisor};
use super::tee::{TeeMsg, TeeReport};
use super::triage;
use super::waits::Known;
use crate::clock;
use crate::evidence::events::EventKind;

/// Parentage and start times the kernel saw, for the hang explanation.
fn known_of(state: &RunState) -> Known {
    let lives = state.tree().lives();
    let comm: std::collections::HashMap<u32, &str> =
        lives.iter().map(|l| (l.pid, l.comm.as_str())).collect();
    lives
        .iter()
        .map(|l| {
            let parent = comm
                .get(&l.ppid)
                .map_or_else(String::new, |c| c.to_string());
            (l.pid, (l.ppid, parent, l.start_boot_ns))
        })
        .collect()
}

impl Supervisor<'_> {
    /// The main child as vigil spawned it: its `spawned` and `running` records, and the
    /// sampler's first process.
    /// Both are stamped with the spawn's moment, `spawned_ns`.
    pub(super) fn adopt_main(&mut self, tracker: &mut ProcTracker, main_pid: i32, spawned_ns: u64) {
        let argv = self.spec.argv_lossy();
        let stat = read_stat(main_pid);
        let main_info = ProcInfo {
            pid: main_pid,
            ppid: i32::try_from(std::process::id()).unwrap_or(0),
            start_ticks: stat.as_ref().map_or(0, |s| s.start_ticks),
            comm: stat.map(|s| s.comm).unwrap_or_default(),
            argv: argv.clone(),
        };
        for state in ["spawned", "running"] {
            self.rec.events.emit_at(
                EventKind::SubprocessState,
                None,
                json!({"pid": main_pid, "ppid": main_info.ppid, "state": state, "comm": main_info.comm,
                       "argv": self.rec.redactor.redact_argv(&argv), "exit_code": null, "signal": null, "source": "spawn"}),
                spawned_ns,
            );
        }
        tracker.adopt_main(main_info);
    }

    /// Perform the state's actions in order; those that ask a question (probe, sample) feed
    /// their answer back to the state at once.
    pub(super) fn perform(&mut self, state: &mut RunState, shell: &mut Shell, acts: Vec<Action>) {
        let mut queue: VecDeque<Action> = acts.into();
        while let Some(action) = queue.pop_front() {
            match action {
                Action::Emit(kind, why, data) => {
                    self.rec.events.emit(kind, why, data);
                }
                Action::Note(n) => self.notes.push(n),
                Action::Say(s) => self.host.say(&s),
                Action::CloseFence => self.fence.close(),
                Action::AcceptSdk(r) => {
                    if let Some(checkpoint) = self.sdk.as_mut().and_then(|l| l.accept(r)) {
                        self.rec
                            .events
                            .emit(EventKind::Checkpoint, None, checkpoint);
                    }
                }
                Action::Terminate { cause } => self.terminate(cause),
                Action::KillRemaining { watchdog } => self.kill_remaining(watchdog),
                Action::KillComplete => {
                    if let Some(esc) = &self.escalation {
                        let data = json!({"what": "kill_complete", "term_to_empty_ms": esc.elapsed_ms(),
                            "term_sent": esc.term_sent, "escalated": esc.escalated()});
                        self.rec.events.emit(EventKind::Note, None, data);
                    }
                }
                Action::Triage { silent_ms } => {
                    let cg = RunCgroup::clone(self.cg);
                    let redactor = self.rec.redactor.clone();
                    let rate = self.cpu_rate();
                    let known = known_of(state);
                    shell.triage = Some(tokio::task::spawn_blocking(move || {
                        triage::snapshot(&cg, rate, silent_ms, &redactor, &known)
                    }));
                }
                Action::WarnStall(mut data) => {
                    // On this thread: a few procfs reads while the run is stalled anyway.
                    let waits = triage::explain_now(self.cg, &self.rec.redactor, &known_of(state));
                    if !waits.is_empty() {
                        data["waits"] = json!(waits);
                    }
                    let why = Some(reason::NO_PROGRESS);
                    self.rec.events.emit(EventKind::StallWarning, why, data);
                }
                Action::ProbeCgroup => {
                    let processes = self.cg.procs().len();
                    let ev = RunEvent::CgroupProbed { processes };
                    queue.extend(state.handle(ev, clock::mono_ns()));
                }
                Action::Sample => {
                    let pids = self.cg.procs();
                    let changes = if shell.kernel_tree {
                        Vec::new()
                    } else {
                        shell.tracker.update(&pids, &self.rec.redactor)
                    };
                    if let Some(u) = self.cg.cpu_usage_usec() {
                        let now = Instant::now();
                        self.cpu_samples.push_back((now, u));
                        while self
                            .cpu_samples
                            .front()
                            .is_some_and(|(t, _)| now.duration_since(*t) > CPU_WINDOW * 2)
                        {
                            self.cpu_samples.pop_front();
                        }
                    }
                    let now = clock::mono_ns();
                    let processes = pids.len();
                    queue.extend(state.handle(RunEvent::Sampled { changes, processes }, now));
                    if shell.watch_empty && pids.is_empty() {
                        queue.extend(state.handle(RunEvent::CgroupEmpty, now));
                    }
                }
            }
        }
    }

    /// SIGTERM to every process of the run's cgroup (the grace is the state's deadline).
    fn terminate(&mut self, cause: Option<&'static str>) {
        if self.escalation.is_some() {
            return;
        }
        let esc = Escalation::start(self.cg);
        let data = json!({"term_sent": esc.term_sent, "grace_ms": self.spec.liveness.kill_grace.as_millis() as u64, "cause": cause});
        if cause.is_some() {
            self.rec
                .events
                .emit(EventKind::Watchdog, Some(reason::KILL_TERM), data);
        } else {
            self.rec.events.emit(
                EventKind::Note,
                None,
                json!({"what": "kill_term", "detail": data}),
            );
        }
        self.escalation = Some(esc);
    }

    fn kill_remaining(&mut self, watchdog: bool) {
        let cg = self.cg;
        // The state always terminates before it kills: without an escalation there is
        // nothing to escalate.
        let Some(esc) = self.escalation.as_mut().filter(|e| !e.escalated()) else {
            return;
        };
        let remaining = cg.procs().len();
        let result = esc.kill_now(cg);
        let data = json!({"remaining": remaining, "after_ms": esc.elapsed_ms(),
            "mechanism": result.as_ref().map(|m| m.as_str()).unwrap_or("failed"),
            "error": result.as_ref().err().map(ToString::to_string)});
        if watchdog {
            self.rec
                .events
                .emit(EventKind::Watchdog, Some(reason::KILL_KILLED), data);
        } else {
            self.rec.events.emit(
                EventKind::Note,
                None,
                json!({"what": "kill_killed", "detail": data}),
            );
        }
    }

    fn cpu_rate(&self) -> Option<f64> {
        let (t1, u1) = *self.cpu_samples.back()?;
        let (t0, u0) = *self
            .cpu_samples
            .iter()
            .find(|(t, _)| t1.duration_since(*t) <= CPU_WINDOW)?;
        let dt = t1.duration_since(t0).as_secs_f64();
        (dt > 0.0).then(|| (u1.saturating_sub(u0)) as f64 / 1e6 / dt)
    }
}

/// A tee message as a run event; a closed stream's report is kept for health.
pub(super) fn on_tee(msg: TeeMsg, reports: &mut [TeeReport; 2]) -> RunEvent<'static> {
    match msg {
        TeeMsg::Chunks(chunks) => RunEvent::Output { chunks },
        TeeMsg::Closed(stream, report) => {
            let i = match stream {
                Stream::Stdout => 0,
                Stream::Stderr => 1,
            };
            reports[i] = report;
            RunEvent::StreamClosed(stream)
        }
    }
}
