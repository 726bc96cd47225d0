//! `RunState` with a fake clock and no processes: every rule of the run's state machine.

use std::time::Duration;

use super::*;
use crate::cli::LivenessLevel;
use crate::kernel::event::{Header, KernelEvent, Observed};
use crate::run::liveness::reason;
use crate::run::spec::LivenessConfig;
use crate::run::triage::StallSnapshot;
use crate::sdk::Received;
use crate::sdk::event::SdkEvent;

pub(super) const MS: u64 = 1_000_000;
/// Monotonic time of the spawn in these tests (not 0, so wall conversion is exercised).
pub(super) const T0: Mono = 1_000 * MS;

pub(super) fn liveness(level: LivenessLevel) -> LivenessConfig {
    LivenessConfig {
        level,
        stall: Duration::from_millis(1000),
        min_events: 1,
        hard_cap: Duration::from_secs(60),
        kill_grace: Duration::from_millis(500),
        step_timeout: None,
        step_timeout_reason: reason::SUBPROCESS_WAIT,
        chain_timeout: None,
    }
}

fn state_with(l: LivenessConfig) -> RunState {
    RunState::new(
        DispatchConfig {
            liveness: l,
            profile_stall: Duration::from_secs(30),
            heartbeat: Duration::from_secs(3600),
            sample: Duration::from_secs(3600),
            main_pid: 4242,
            kernel_tree: true,
            watch: None,
        },
        T0,
        5_000_000 * MS,
    )
}

fn state(level: LivenessLevel) -> RunState {
    state_with(liveness(level))
}

/// A short label per action, for asserting sequences.
pub(super) fn labels(acts: &[Action]) -> Vec<String> {
    acts.iter()
        .map(|a| match a {
            Action::Emit(kind, why, data) => match (why, data.get("what")) {
                (Some(w), _) => format!("emit:{}:{w}", kind.as_str()),
                (None, Some(what)) => {
                    format!("emit:{}:{}", kind.as_str(), what.as_str().unwrap_or(""))
                }
                (None, None) => format!("emit:{}", kind.as_str()),
            },
            Action::Note(_) => "note".into(),
            Action::Say(_) => "say".into(),
            Action::Terminate { cause } => format!("term:{}", cause.unwrap_or("-")),
            Action::KillRemaining { watchdog } => format!("kill:{watchdog}"),
            Action::KillComplete => "kill_complete".into(),
            Action::Triage { .. } => "triage".into(),
            Action::WarnStall(_) => format!("emit:stall_warning:{}", reason::NO_PROGRESS),
            Action::CloseFence => "fence".into(),
            Action::ProbeCgroup => "probe".into(),
            Action::Sample => "sample".into(),
            Action::AcceptSdk(_) => "sdk".into(),
        })
        .filter(|l| l != "sample")
        .collect()
}

/// Handle `ev` at `t` and return the labels.
pub(super) fn at(s: &mut RunState, ev: RunEvent<'_>, t: Mono) -> Vec<String> {
    labels(&s.handle(ev, t))
}

fn exited(code: i32) -> RunEvent<'static> {
    RunEvent::ChildExited {
        code: Some(code),
        signal: None,
    }
}

fn close_streams(s: &mut RunState, t: Mono) -> Vec<String> {
    let mut out = at(s, RunEvent::StreamClosed(Stream::Stdout), t);
    out.extend(at(s, RunEvent::StreamClosed(Stream::Stderr), t));
    out
}

fn sdk() -> RunEvent<'static> {
    RunEvent::Sdk(Received {
        event: SdkEvent {
            event: "checkpoint",
            fields: serde_json::Map::new(),
            data: None,
            client_ts_ns: None,
        },
        pid: Some(1),
        ts_ns: 0,
    })
}

#[test]
fn a_clean_exit_is_done_once_output_drained_and_the_cgroup_is_empty() {
    let mut s = state(LivenessLevel::Basic);
    assert_eq!(
        at(&mut s, exited(0), T0 + 10 * MS),
        ["emit:subprocess_state"]
    );
    assert!(!s.is_done(), "output still open");
    assert_eq!(close_streams(&mut s, T0 + 11 * MS), ["probe"]);
    assert_eq!(
        at(
            &mut s,
            RunEvent::CgroupProbed { processes: 0 },
            T0 + 12 * MS
        ),
        Vec::<String>::new()
    );
    assert!(s.is_done());
    assert_eq!(s.conclude(false, false), Outcome::Exited(0));
}

#[test]
fn sigint_terms_then_kills_after_the_grace_and_cancels() {
    let mut s = state(LivenessLevel::Basic);
    let t = T0 + 100 * MS;
    assert_eq!(
        at(&mut s, RunEvent::Signal(libc::SIGINT), t),
        ["say", "emit:note:cancel_requested", "fence", "term:-"]
    );
    assert_eq!(
        s.next_deadline(),
        t + 500 * MS,
        "SIGKILL is due at the grace"
    );
    assert_eq!(
        at(&mut s, RunEvent::Tick, t + 499 * MS),
        Vec::<String>::new()
    );
    assert_eq!(at(&mut s, RunEvent::Tick, t + 500 * MS), ["kill:false"]);
    assert_eq!(
        at(&mut s, RunEvent::Tick, t + 900 * MS),
        Vec::<String>::new(),
        "once"
    );
    at(
        &mut s,
        RunEvent::ChildExited {
            code: None,
            signal: Some(9),
        },
        t + 501 * MS,
    );
    close_streams(&mut s, t + 502 * MS);
    assert_eq!(
        at(&mut s, RunEvent::CgroupEmpty, t + 503 * MS),
        ["kill_complete"]
    );
    assert!(s.is_done());
    assert_eq!(
        s.conclude(false, false),
        Outcome::Cancelled(libc::SIGINT),
        "the cancel wins over the child's death"
    );
}

#[test]
fn a_second_sigint_kills_at_once() {
    let mut s = state(LivenessLevel::Basic);
    at(&mut s, RunEvent::Signal(libc::SIGINT), T0 + MS);
    assert_eq!(
        at(&mut s, RunEvent::Signal(libc::SIGTERM), T0 + 2 * MS),
        ["emit:note:cancel_kill_now", "kill:false"]
    );
    assert_eq!(
        s.conclude(false, false),
        Outcome::Cancelled(libc::SIGINT),
        "the first request names the outcome"
    );
}

#[test]
fn a_stall_asks_for_triage_then_kills_with_the_snapshot() {
    let mut s = state(LivenessLevel::Basic);
    at(&mut s, RunEvent::Output { chunks: 1 }, T0 + 100 * MS);
    assert_eq!(
        s.next_deadline(),
        T0 + 1100 * MS,
        "stall deadline from the last progress"
    );
    assert_eq!(
        at(&mut s, RunEvent::Tick, T0 + 1099 * MS),
        Vec::<String>::new()
    );
    assert_eq!(
        at(&mut s, RunEvent::Tick, T0 + 1100 * MS),
        ["say", "triage"]
    );
    // While triage runs, liveness no longer judges, and the fence is not closed yet.
    assert_eq!(
        at(&mut s, RunEvent::Tick, T0 + 1200 * MS),
        Vec::<String>::new()
    );
    let snap = StallSnapshot {
        frozen: true,
        freeze_note: None,
        cpu_rate: Some(0.0),
        processes: vec![],
        stall_phase: "blocked_in_syscall:read".into(),
        waits: vec![],
    };
    let acts = s.handle(RunEvent::TriageDone(Box::new(snap)), T0 + 1300 * MS);
    assert_eq!(
        labels(&acts),
        [
            format!("emit:watchdog:{}", reason::NO_OUTPUT_NO_EVENT),
            "fence".into(),
            format!("term:{}", reason::NO_OUTPUT_NO_EVENT)
        ]
    );
    let Action::Emit(_, _, data) = &acts[0] else {
        panic!("{acts:?}")
    };
    assert_eq!(data["stall_phase"], "blocked_in_syscall:read");
    assert_eq!(
        data["detected_at_ns"],
        5_000_000 * MS + 1100 * MS,
        "wall time from the one anchor"
    );
    assert_eq!(data["last_progress_ns"], 5_000_000 * MS + 100 * MS);
    assert_eq!(s.stall_phase(), Some("blocked_in_syscall:read"));
    assert_eq!(
        at(&mut s, RunEvent::Tick, T0 + 1800 * MS),
        ["kill:true"],
        "a watchdog kill"
    );
    assert_eq!(
        s.conclude(false, false),
        Outcome::Watchdog(reason::NO_OUTPUT_NO_EVENT)
    );
}

#[test]
fn triage_that_never_answers_does_not_hold_the_kill() {
    let mut s = state(LivenessLevel::Basic);
    at(&mut s, RunEvent::Tick, T0 + 1000 * MS);
    assert_eq!(s.next_deadline(), T0 + 1000 * MS + ns(TRIAGE_BUDGET));
    let acts = s.handle(RunEvent::Tick, T0 + 1000 * MS + ns(TRIAGE_BUDGET));
    assert_eq!(
        labels(&acts)[0],
        format!("emit:watchdog:{}", reason::NO_OUTPUT_NO_EVENT)
    );
    let Action::Emit(_, _, data) = &acts[0] else {
        panic!()
    };
    assert!(data["triage_abandoned"].is_string(), "{data}");
    assert!(labels(&acts).contains(&format!("term:{}", reason::NO_OUTPUT_NO_EVENT)));
    assert!(
        s.stall_detected(),
        "the stall was detected, its phase is unknown"
    );
    assert_eq!(s.stall_phase(), None);
}

#[test]
fn a_signal_during_triage_kills_at_once_and_keeps_the_watchdog_outcome() {
    let mut s = state(LivenessLevel::Basic);
    at(&mut s, RunEvent::Tick, T0 + 1000 * MS);
    let l = at(&mut s, RunEvent::Signal(libc::SIGINT), T0 + 1001 * MS);
    assert_eq!(
        l,
        [
            "emit:note:cancel_kill_now".to_string(),
            format!("emit:watchdog:{}", reason::NO_OUTPUT_NO_EVENT),
            "fence".into(),
            format!("term:{}", reason::NO_OUTPUT_NO_EVENT),
            "kill:true".into()
        ]
    );
    assert_eq!(
        s.conclude(false, false),
        Outcome::Watchdog(reason::NO_OUTPUT_NO_EVENT)
    );
}

#[test]
fn the_fence_refuses_output_and_sdk_events_after_a_kill() {
    let mut s = state(LivenessLevel::Basic);
    assert_eq!(at(&mut s, sdk(), T0 + MS), ["sdk"], "accepted before");
    at(&mut s, RunEvent::Signal(libc::SIGTERM), T0 + 2 * MS);
    assert_eq!(
        at(&mut s, sdk(), T0 + 3 * MS),
        Vec::<String>::new(),
        "refused after"
    );
    assert_eq!(s.sdk_fenced(), 1);
    // Output past the fence is not progress either: a chatty dying process cannot hold the run.
    let before = s.progress.snapshot().count;
    at(&mut s, RunEvent::Output { chunks: 5 }, T0 + 4 * MS);
    assert_eq!(s.progress.snapshot().count, before);
}

#[test]
fn hard_cap_kills_even_with_liveness_off_and_progress() {
    let mut l = liveness(LivenessLevel::Off);
    l.hard_cap = Duration::from_millis(5000);
    let mut s = state_with(l);
    for t in (100..5000).step_by(100) {
        assert!(
            !at(&mut s, RunEvent::Output { chunks: 1 }, T0 + t * MS)
                .iter()
                .any(|a| a.starts_with("term"))
        );
    }
    let l = at(&mut s, RunEvent::Tick, T0 + 5000 * MS);
    assert_eq!(
        l,
        [
            "say".to_string(),
            format!("emit:watchdog:{}", reason::HARD_CAP),
            "fence".into(),
            format!("term:{}", reason::HARD_CAP)
        ]
    );
    assert_eq!(s.conclude(false, false).exit_code(), 124);
}

#[test]
fn step_and_chain_timeouts_fire_without_triage() {
    let mut l = liveness(LivenessLevel::Off);
    l.step_timeout = Some(Duration::from_millis(2000));
    l.chain_timeout = Some(Duration::from_millis(1500));
    let mut s = state_with(l);
    at(&mut s, RunEvent::Tick, T0);
    assert_eq!(s.next_deadline(), T0 + 1500 * MS);
    let l = at(&mut s, RunEvent::Tick, T0 + 1500 * MS);
    assert_eq!(l[1], format!("emit:watchdog:{}", reason::CASE_CHAIN));
    assert!(!l.contains(&"triage".to_string()));
    assert_eq!(
        s.conclude(false, false),
        Outcome::Watchdog(reason::CASE_CHAIN)
    );
}

#[test]
fn strict_kills_on_too_few_events_in_a_window() {
    let mut l = liveness(LivenessLevel::Strict);
    l.min_events = 3;
    let mut s = state_with(l);
    // One chunk every 600 ms: never silent for the 1 s stall, but only 2 in any 1 s window.
    let mut fired = None;
    for k in 1..10u64 {
        let t = T0 + k * 600 * MS;
        let due = t.min(s.next_deadline());
        let mut l = at(&mut s, RunEvent::Tick, due);
        l.extend(at(&mut s, RunEvent::Output { chunks: 1 }, t));
        if l.contains(&"triage".to_string()) {
            fired = Some(t);
            break;
        }
    }
    assert!(fired.is_some(), "stall.runner.no_progress fired");
    s.handle(
        RunEvent::TriageDone(Box::new(StallSnapshot {
            frozen: false,
            freeze_note: None,
            cpu_rate: None,
            processes: vec![],
            stall_phase: "sleeping".into(),
            waits: vec![],
        })),
        T0 + 10_000 * MS,
    );
    assert_eq!(
        s.conclude(false, false),
        Outcome::Watchdog(reason::NO_PROGRESS)
    );
}

#[test]
fn io_drain_under_strict_is_a_timeout_and_under_basic_a_cleanup() {
    for (level, expect_kill) in [(LivenessLevel::Strict, true), (LivenessLevel::Basic, false)] {
        let mut s = state(level);
        at(&mut s, exited(0), T0 + 100 * MS);
        at(
            &mut s,
            RunEvent::StreamClosed(Stream::Stderr),
            T0 + 100 * MS,
        );
        assert_eq!(
            s.next_deadline(),
            T0 + 600 * MS,
            "{level:?}: the grace after exit"
        );
        let l = at(&mut s, RunEvent::Tick, T0 + 600 * MS);
        if expect_kill {
            assert!(
                l.contains(&format!("emit:watchdog:{}", reason::IO_DRAIN)),
                "{l:?}"
            );
            assert_eq!(
                s.conclude(false, false),
                Outcome::Watchdog(reason::IO_DRAIN)
            );
        } else {
            assert_eq!(l, ["note", "fence", "term:-"]);
            assert_eq!(
                s.conclude(false, false),
                Outcome::Exited(0),
                "the run keeps the child's result"
            );
        }
    }
}

#[test]
fn leftovers_after_the_main_exit_are_killed_and_the_outcome_kept() {
    let mut s = state(LivenessLevel::Basic);
    at(&mut s, exited(3), T0 + 10 * MS);
    assert_eq!(close_streams(&mut s, T0 + 11 * MS), ["probe"]);
    assert_eq!(
        at(
            &mut s,
            RunEvent::CgroupProbed { processes: 2 },
            T0 + 12 * MS
        ),
        ["note", "fence", "term:-"]
    );
    assert!(!s.is_done());
    assert_eq!(at(&mut s, RunEvent::Tick, T0 + 512 * MS), ["kill:false"]);
    assert_eq!(
        at(&mut s, RunEvent::CgroupEmpty, T0 + 513 * MS),
        ["kill_complete"]
    );
    assert!(s.is_done());
    assert_eq!(s.conclude(false, false), Outcome::Exited(3));
}

#[test]
fn pipes_held_outside_the_run_are_given_up_after_the_grace() {
    let mut s = state(LivenessLevel::Basic);
    at(&mut s, exited(0), T0 + 10 * MS);
    at(&mut s, RunEvent::CgroupEmpty, T0 + 20 * MS);
    // The io-drain rule comes first (exit + grace): nothing is left in the cgroup to kill.
    assert_eq!(s.next_deadline(), T0 + 510 * MS);
    assert_eq!(
        at(&mut s, RunEvent::Tick, T0 + 510 * MS),
        ["note", "fence", "term:-", "kill_complete"]
    );
    assert!(!s.is_done(), "the pipes are still open");
    assert_eq!(
        s.next_deadline(),
        T0 + 20 * MS + 500 * MS,
        "given up a grace after the cgroup emptied"
    );
    assert_eq!(at(&mut s, RunEvent::Tick, T0 + 520 * MS), ["note"]);
    assert!(s.is_done());
    assert_eq!(s.conclude(false, false), Outcome::Exited(0));
}

#[test]
fn contracts_strict_fails_only_a_command_that_succeeded() {
    let mut ok = state(LivenessLevel::Basic);
    at(&mut ok, exited(0), T0);
    assert_eq!(ok.conclude(true, true), Outcome::ContractViolated);
    assert_eq!(ok.conclude(true, false), Outcome::Exited(0));
    let mut bad = state(LivenessLevel::Basic);
    at(&mut bad, exited(7), T0);
    assert_eq!(
        bad.conclude(true, true),
        Outcome::Exited(7),
        "the first failure wins"
    );
}

#[test]
fn heartbeats_keep_their_period_and_count_live_processes() {
    let mut cfg = liveness(LivenessLevel::Off);
    cfg.hard_cap = Duration::from_secs(3600);
    let mut s = RunState::new(
        DispatchConfig {
            liveness: cfg,
            profile_stall: Duration::from_secs(3600),
            heartbeat: Duration::from_millis(200),
            sample: Duration::from_secs(3600),
            main_pid: 10,
            kernel_tree: true,
            watch: None,
        },
        T0,
        0,
    );
    let hdr = |pid: u32| Header {
        version: 1,
        pid,
        tid: pid,
        ppid: 10,
        cgroup_id: 1,
        boot_ns: 1,
        comm: "sh".into(),
    };
    let forks: Vec<Observed> = (0..3)
        .map(|i| Observed {
            seq: i,
            ts_ns: i,
            event: KernelEvent::Fork {
                hdr: hdr(10),
                child_pid: 20 + i as u32,
                child_tid: 20 + i as u32,
                is_thread: false,
            },
        })
        .collect();
    at(&mut s, RunEvent::Kernel(&forks), T0 + MS);
    let mut beats = Vec::new();
    let mut t = T0;
    while beats.len() < 5 {
        t = s.next_deadline();
        for a in s.handle(RunEvent::Tick, t) {
            if let Action::Emit(EventKind::Heartbeat, _, data) = a {
                beats.push((t, data));
            }
        }
    }
    assert!(t <= T0 + 1000 * MS);
    for (i, (t, data)) in beats.iter().enumerate() {
        assert_eq!(*t, T0 + (i as u64 + 1) * 200 * MS, "on the period");
        assert_eq!(data["processes"], 4, "main + 3 forked: {data}");
    }
}
