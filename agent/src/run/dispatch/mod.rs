//! The run's one owner of state, as nextest's dispatcher: the async shell (`supervisor`) only
//! turns sources — vigil's signals, the child's exit, output chunks, kernel batches, SDK lines,
//! cgroup notifications, triage results and due deadlines — into a [`RunEvent`] stamped with a
//! monotonic instant, hands it to [`RunState::handle`], and performs the [`Action`]s it returns.
//! `handle` is synchronous and does no I/O, so every rule (cancel, TERM → grace → KILL, io
//! drain, timeouts, the fence) is unit-tested with a fake clock and no processes.
//!
//! Time: every deadline here is CLOCK_MONOTONIC nanoseconds ([`Mono`]); a wall-clock step (common
//! on CI VMs right after boot) neither kills a healthy run nor suspends the watchdog. Wall time is
//! derived from one anchor taken at the run's start, for display only.

use std::time::Duration;

use serde_json::{Value, json};

use super::liveness::{Liveness, Progress, Verdict, reason};
use super::outcome::Outcome;
use crate::evidence::events::EventKind;
use crate::kernel::tree::KernelTree;

#[cfg(test)]
mod tests;
mod vocabulary;
#[cfg(test)]
mod watch_tests;

pub use vocabulary::{Action, DispatchConfig, RunEvent, Stream};

/// Nanoseconds on CLOCK_MONOTONIC.
pub type Mono = u64;

/// How long a stall kill waits for its triage snapshot (the freeze alone may take up to 1 s)
/// before killing without it.
pub const TRIAGE_BUDGET: Duration = Duration::from_secs(3);
/// How often the procfs sampler runs (process tree without the kernel layer, CPU rate for
/// triage, emptiness when cgroup.events cannot be watched).
pub const PROCESS_SAMPLE: Duration = Duration::from_millis(50);

/// A stopping run: SIGTERM was sent at `started`, SIGKILL is due at `kill_at`.
#[derive(Debug, Clone, Copy)]
struct Escalation {
    kill_at: Mono,
    escalated: bool,
}

/// A stall kill waiting for its triage snapshot.
#[derive(Debug)]
struct PendingTriage {
    reason: &'static str,
    data: Value,
    deadline: Mono,
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The run's state: outcome, escalation, liveness, streams, the process tree.
pub struct RunState {
    cfg: DispatchConfig,
    /// Wall-clock ns at `spawned`: the one conversion for display.
    wall0: u64,
    spawned: Mono,
    liveness: Liveness,
    progress: Progress,
    /// An outcome vigil decided (watchdog, cancel): the first wins, never replaced.
    decided: Option<Outcome>,
    /// The main child's own result, provisional until its output drained.
    main_result: Option<Outcome>,
    main_exited: Option<Mono>,
    streams_open: [bool; 2],
    cgroup_empty: bool,
    probing: bool,
    escalation: Option<Escalation>,
    triage: Option<PendingTriage>,
    /// A stall verdict ended the run (its phase may stay unknown if triage never answered).
    stalled: bool,
    stall_phase: Option<String>,
    fenced: bool,
    sdk_fenced: u64,
    pipes_give_up: Option<Mono>,
    next_heartbeat: Mono,
    next_sample: Mono,
    /// A watch's `--duration` ends it here.
    watch_until: Option<Mono>,
    tree: KernelTree,
    sampled_processes: usize,
    done: bool,
}

impl RunState {
    /// The state of a run whose main child was spawned at `spawned` (monotonic), when the wall
    /// clock read `wall_at_spawn`.
    pub fn new(cfg: DispatchConfig, spawned: Mono, wall_at_spawn: u64) -> Self {
        let liveness = Liveness::new(cfg.liveness.clone(), cfg.profile_stall, spawned);
        let progress = Progress::new(cfg.liveness.min_events);
        let watching = cfg.watch.is_some();
        let watch_until = cfg.watch.flatten().map(|d| spawned.saturating_add(ns(d)));
        RunState {
            next_heartbeat: spawned.saturating_add(ns(cfg.heartbeat)),
            next_sample: spawned,
            watch_until,
            tree: KernelTree::new(cfg.main_pid.unsigned_abs()),
            cfg,
            wall0: wall_at_spawn,
            spawned,
            liveness,
            progress,
            decided: None,
            main_result: None,
            main_exited: None,
            // A watch has no pipes of its own: the watched processes write where they write.
            streams_open: [!watching; 2],
            cgroup_empty: false,
            probing: false,
            escalation: None,
            triage: None,
            stalled: false,
            stall_phase: None,
            fenced: false,
            sdk_fenced: 0,
            pipes_give_up: None,
            sampled_processes: 1,
            done: false,
        }
    }

    /// Wall-clock ns of a monotonic instant, for display.
    pub fn wall(&self, t: Mono) -> u64 {
        if t >= self.spawned {
            self.wall0.saturating_add(t - self.spawned)
        } else {
            self.wall0.saturating_sub(self.spawned - t)
        }
    }

    /// The run is over: the main child exited, its output drained, its cgroup is empty.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The earliest instant at which `handle(Tick)` could do something.
    pub fn next_deadline(&self) -> Mono {
        let mut next = self.next_heartbeat.min(self.next_sample);
        if let Some(e) = self.escalation.filter(|e| !e.escalated) {
            next = next.min(e.kill_at);
        }
        if let Some(t) = &self.triage {
            next = next.min(t.deadline);
        }
        if let Some(g) = self.pipes_give_up {
            next = next.min(g);
        }
        if let Some(u) = self.watch_until.filter(|_| self.judging()) {
            next = next.min(u);
        }
        if self.judging() {
            let d = self.liveness.next_deadline(
                self.progress.snapshot(),
                self.main_exited,
                self.streams_open(),
            );
            next = next.min(d);
        }
        next
    }

    /// A stall verdict ended the run.
    pub fn stall_detected(&self) -> bool {
        self.stalled
    }

    /// The stall phase triage found (None when no stall was detected, or triage never
    /// answered).
    pub fn stall_phase(&self) -> Option<&str> {
        self.stall_phase.as_deref()
    }

    /// SDK events refused because they arrived after the fence.
    pub fn sdk_fenced(&self) -> u64 {
        self.sdk_fenced
    }

    /// The process tree from kernel events.
    pub fn tree(&self) -> &KernelTree {
        &self.tree
    }

    /// A process a watch found running at attach; its `subprocess_state` record.
    pub fn seed(&mut self, life: crate::kernel::tree::ProcessLife) -> Value {
        self.tree.seed(life)
    }

    /// How many of the run's processes are alive now, as far as vigil knows.
    pub fn live_processes(&self) -> usize {
        if self.cfg.kernel_tree {
            self.tree.live_count()
                + usize::from(self.cfg.watch.is_none() && self.main_exited.is_none())
        } else {
            self.sampled_processes
        }
    }

    /// The run's one terminal outcome: what vigil decided, else the main child's own result;
    /// under `--contracts-strict` a violated contract fails a command that succeeded.
    pub fn conclude(&self, contracts_violated: bool, strict: bool) -> Outcome {
        let outcome = self
            .decided
            .clone()
            .or_else(|| self.main_result.clone())
            .unwrap_or(Outcome::VigilFailed);
        if strict && contracts_violated && outcome == Outcome::Exited(0) {
            Outcome::ContractViolated
        } else {
            outcome
        }
    }

    fn streams_open(&self) -> bool {
        self.streams_open.iter().any(|o| *o)
    }

    /// Liveness judges only while nothing is stopping the run.
    fn judging(&self) -> bool {
        self.decided.is_none() && self.escalation.is_none() && self.triage.is_none()
    }

    /// Handle one event at `now`; return what the shell must do, in order.
    pub fn handle(&mut self, ev: RunEvent<'_>, now: Mono) -> Vec<Action> {
        let mut out = Vec::new();
        match ev {
            RunEvent::Signal(sig) => self.on_signal(sig, now, &mut out),
            RunEvent::ChildExited { code, signal } => {
                self.main_exited = Some(now);
                self.main_result = Some(match (code, signal) {
                    (Some(c), _) => Outcome::Exited(c),
                    (None, Some(s)) => Outcome::Signaled(s),
                    _ => Outcome::VigilFailed,
                });
                out.push(Action::Emit(
                    EventKind::SubprocessState,
                    None,
                    json!({"pid": self.cfg.main_pid, "ppid": std::process::id(), "state": "exited",
                           "exit_code": code, "signal": signal, "source": "waitpid"}),
                ));
            }
            RunEvent::Output { chunks } => {
                // Past the fence the tee no longer captures; nothing it sees is progress.
                if !self.fenced {
                    self.progress.record_n(now, chunks);
                }
            }
            RunEvent::StreamClosed(s) => self.streams_open[s.index()] = false,
            RunEvent::Kernel(seen) => {
                // Kernel events of the run are progress, and control evidence: they are kept
                // after the fence too (the kill's own exits are evidence).
                if !seen.is_empty() {
                    self.progress.record(now);
                }
                for ev in seen.iter().map(|o| &o.event) {
                    for state in self.tree.apply(ev) {
                        out.push(Action::Emit(EventKind::SubprocessState, None, state));
                    }
                }
            }
            RunEvent::Sdk(r) => {
                if self.fenced {
                    self.sdk_fenced += 1;
                } else {
                    self.progress.record(now);
                    out.push(Action::AcceptSdk(r));
                }
            }
            RunEvent::Sampled { changes, processes } => {
                self.sampled_processes = processes;
                for ch in changes {
                    // A process appearing or exec'ing is activity; an exit is not.
                    if !ch.exited {
                        self.progress.record(now);
                    }
                    out.push(Action::Emit(EventKind::SubprocessState, None, ch.data));
                }
            }
            RunEvent::CgroupEmpty => self.on_empty(&mut out),
            RunEvent::CgroupProbed { processes } => {
                self.probing = false;
                if processes == 0 {
                    self.on_empty(&mut out);
                } else if self.escalation.is_none() {
                    out.push(Action::Note(format!(
                        "{processes} process(es) still in the run cgroup after the main child exited; killed"
                    )));
                    self.start_kill(None, now, &mut out);
                }
            }
            RunEvent::TriageDone(snap) => {
                if let Some(mut pending) = self.triage.take() {
                    pending.data["stall_phase"] = json!(snap.stall_phase);
                    self.stall_phase = Some(snap.stall_phase.clone());
                    pending.data["snapshot"] = serde_json::to_value(&*snap).unwrap_or_default();
                    self.watchdog_kill(pending, now, &mut out);
                }
            }
            RunEvent::Tick => {}
        }
        self.on_time(now, &mut out);
        self.settle(now, &mut out);
        out
    }

    fn on_empty(&mut self, out: &mut Vec<Action>) {
        if !self.cgroup_empty {
            self.cgroup_empty = true;
            if self.escalation.is_some() {
                out.push(Action::KillComplete);
            }
        }
    }

    fn on_signal(&mut self, sig: i32, now: Mono, out: &mut Vec<Action>) {
        let name = if sig == libc::SIGINT {
            "SIGINT"
        } else {
            "SIGTERM"
        };
        if self.cfg.watch.is_some() && self.judging() {
            // Ending a watch is not stopping the job: the watched processes keep running.
            out.push(Action::Say(format!(
                "{name} received; ending the watch (the watched processes keep running)"
            )));
            self.end_watch("signal", json!({"signal": name}), out);
            return;
        }
        if self.escalation.is_some() || self.triage.is_some() {
            // A second request (or one during a watchdog kill): kill at once.
            out.push(Action::Emit(
                EventKind::Note,
                None,
                json!({"what": "cancel_kill_now", "signal": name}),
            ));
            if let Some(pending) = self.triage.take() {
                // Do not wait for the snapshot: the user asked to stop now.
                let mut pending = pending;
                pending.data["triage_abandoned"] = json!("cancelled");
                self.watchdog_kill(pending, now, out);
            }
            self.escalate(out);
            return;
        }
        out.push(Action::Say(format!(
            "{name} received; stopping the run (again to kill at once)"
        )));
        out.push(Action::Emit(
            EventKind::Note,
            None,
            json!({"what": "cancel_requested", "signal": name}),
        ));
        self.decided.get_or_insert(Outcome::Cancelled(sig));
        self.start_kill(None, now, out);
    }

    /// SIGTERM → grace → SIGKILL, and the fence: nothing more is accepted into the run's output.
    fn start_kill(&mut self, cause: Option<&'static str>, now: Mono, out: &mut Vec<Action>) {
        if self.escalation.is_some() {
            return;
        }
        if !self.fenced {
            self.fenced = true;
            out.push(Action::CloseFence);
        }
        self.escalation = Some(Escalation {
            kill_at: now.saturating_add(ns(self.cfg.liveness.kill_grace)),
            escalated: false,
        });
        out.push(Action::Terminate { cause });
        if self.cgroup_empty {
            out.push(Action::KillComplete);
        }
    }

    fn escalate(&mut self, out: &mut Vec<Action>) {
        if let Some(e) = self.escalation.as_mut().filter(|e| !e.escalated) {
            e.escalated = true;
            out.push(Action::KillRemaining {
                watchdog: matches!(self.decided, Some(Outcome::Watchdog(_))),
            });
        }
    }

    fn watchdog_kill(&mut self, pending: PendingTriage, now: Mono, out: &mut Vec<Action>) {
        out.push(Action::Emit(
            EventKind::Watchdog,
            Some(pending.reason),
            pending.data,
        ));
        self.start_kill(Some(pending.reason), now, out);
    }

    /// A watch is over without vigil deciding anything about its processes.
    fn end_watch(&mut self, why: &str, mut data: Value, out: &mut Vec<Action>) {
        data["what"] = json!("watch_ended");
        data["why"] = json!(why);
        out.push(Action::Emit(EventKind::Note, None, data));
        self.decided.get_or_insert(Outcome::Observed);
        self.done = true;
    }

    /// Everything that is due at `now`.
    fn on_time(&mut self, now: Mono, out: &mut Vec<Action>) {
        if self.judging() && self.watch_until.is_some_and(|u| now >= u) {
            self.end_watch("duration", json!({}), out);
            return;
        }
        if self
            .escalation
            .is_some_and(|e| !e.escalated && now >= e.kill_at)
        {
            self.escalate(out);
        }
        if self.triage.as_ref().is_some_and(|t| now >= t.deadline)
            && let Some(mut pending) = self.triage.take()
        {
            pending.data["triage_abandoned"] = json!(format!(
                "no snapshot within {} ms",
                TRIAGE_BUDGET.as_millis()
            ));
            self.watchdog_kill(pending, now, out);
        }
        if self.pipes_give_up.is_some_and(|g| now >= g) {
            self.pipes_give_up = None;
            if !self.fenced {
                self.fenced = true;
                out.push(Action::CloseFence);
            }
            out.push(Action::Note(
                "output pipes stayed open after the run's cgroup emptied (held outside the run); fenced".into(),
            ));
            self.streams_open = [false, false];
        }
        if self.judging() {
            let snap = self.progress.snapshot();
            let open = self.streams_open();
            if now >= self.liveness.next_deadline(snap, self.main_exited, open) {
                for v in self.liveness.check(now, snap, self.main_exited, open) {
                    self.on_verdict(v, now, out);
                }
            }
        }
        if now >= self.next_heartbeat {
            let snap = self.progress.snapshot();
            out.push(Action::Emit(
                EventKind::Heartbeat,
                None,
                json!({
                    "elapsed_ms": now.saturating_sub(self.spawned) / 1_000_000,
                    "progress_events": snap.count,
                    "silent_ms": now.saturating_sub(snap.last_ns.unwrap_or(self.spawned).max(self.spawned)) / 1_000_000,
                    "processes": self.live_processes(),
                }),
            ));
            self.next_heartbeat = next_period(self.next_heartbeat, now, ns(self.cfg.heartbeat));
        }
        if now >= self.next_sample {
            out.push(Action::Sample);
            self.next_sample = next_period(self.next_sample, now, ns(self.cfg.sample));
        }
    }

    fn on_verdict(&mut self, v: Verdict, now: Mono, out: &mut Vec<Action>) {
        match v {
            // A stall nobody kills (liveness off, a watched CI job) is still explained.
            Verdict::StallWarning { silent_ms } => out
                .push(Action::WarnStall(json!({"silent_ms": silent_ms,
                       "threshold_ms": self.cfg.profile_stall.as_millis() as u64}))),
            Verdict::DrainCleanup => {
                out.push(Action::Note(format!(
                    "output pipes stayed open {} ms after the main child exited; leftover processes killed (liveness not strict, run outcome unchanged)",
                    self.cfg.liveness.kill_grace.as_millis()
                )));
                self.start_kill(None, now, out);
            }
            Verdict::Kill {
                reason: why,
                silent_ms,
            } => {
                if self.decided.is_some() {
                    return; // already stopping; one terminal outcome
                }
                let l = &self.cfg.liveness;
                let data = json!({
                    "silent_ms": silent_ms,
                    "stall_ms": l.stall.as_millis() as u64,
                    "hard_cap_ms": l.hard_cap.as_millis() as u64,
                    "liveness_level": format!("{:?}", l.level).to_lowercase(),
                    "detected_at_ns": self.wall(now),
                    "last_progress_ns": self.progress.snapshot().last_ns.map(|t| self.wall(t)),
                });
                self.decided = Some(Outcome::Watchdog(why));
                out.push(Action::Say(format!("watchdog: {why}; stopping the run")));
                let pending = PendingTriage {
                    reason: why,
                    data,
                    deadline: now.saturating_add(ns(TRIAGE_BUDGET)),
                };
                if why == reason::NO_OUTPUT_NO_EVENT || why == reason::NO_PROGRESS {
                    self.stalled = true;
                    self.triage = Some(pending);
                    out.push(Action::Triage { silent_ms });
                } else {
                    self.watchdog_kill(pending, now, out);
                }
            }
        }
    }

    /// After the main child exited and its output drained: over once the cgroup is empty,
    /// else what is left is killed; pipes held open outside the run are given up on.
    fn settle(&mut self, now: Mono, out: &mut Vec<Action>) {
        if self.cfg.watch.is_some() && self.cgroup_empty && !self.done {
            // Emptied by itself, or by a watchdog kill (whose outcome was decided first).
            if self.decided.is_none() {
                self.end_watch("cgroup_empty", json!({}), out);
            }
            self.done = true;
            return;
        }
        if self.main_exited.is_none() || self.done {
            return;
        }
        if !self.streams_open() {
            if self.cgroup_empty {
                self.done = true;
            } else if !self.probing && self.escalation.is_none() {
                self.probing = true;
                out.push(Action::ProbeCgroup);
            }
        } else if self.cgroup_empty && self.pipes_give_up.is_none() {
            self.pipes_give_up = Some(now.saturating_add(ns(self.cfg.liveness.kill_grace)));
        }
    }
}

/// The next tick of a period after `scheduled` fired at `now`: one period on, or one period
/// from now when ticks were missed (tokio's `MissedTickBehavior::Delay`).
fn next_period(scheduled: Mono, now: Mono, period: u64) -> Mono {
    let next = scheduled.saturating_add(period);
    if next <= now {
        now.saturating_add(period)
    } else {
        next
    }
}
