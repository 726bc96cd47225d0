//! `RunState` of a watch (`vigil watch`): no main child, no pipes; it ends when the cgroup
//! empties, on a signal, or after its duration, without killing — unless the watchdog does.

use std::time::Duration;

use super::tests::{MS, T0, at, liveness};
use super::*;
use crate::cli::LivenessLevel;
use crate::run::liveness::reason;
use crate::run::spec::LivenessConfig;
use crate::run::triage::StallSnapshot;

fn watching(l: LivenessConfig, until: Option<Duration>) -> RunState {
    RunState::new(
        DispatchConfig {
            liveness: l,
            profile_stall: Duration::from_secs(30),
            heartbeat: Duration::from_secs(3600),
            sample: Duration::from_secs(3600),
            main_pid: 0,
            kernel_tree: true,
            watch: Some(until),
        },
        T0,
        0,
    )
}

#[test]
fn a_watch_ends_when_its_cgroup_empties_and_on_sigint_without_killing() {
    let mut s = watching(liveness(LivenessLevel::Off), None);
    assert!(!s.is_done());
    assert_eq!(s.live_processes(), 0, "no main child of vigil's own");
    assert_eq!(
        at(&mut s, RunEvent::CgroupEmpty, T0 + MS),
        ["emit:note:watch_ended"]
    );
    assert!(s.is_done());
    assert_eq!(s.conclude(false, false), Outcome::Observed);
    assert_eq!(Outcome::Observed.exit_code(), 0);

    let mut s = watching(liveness(LivenessLevel::Off), None);
    let acts = at(&mut s, RunEvent::Signal(libc::SIGINT), T0 + MS);
    assert_eq!(acts, ["say", "emit:note:watch_ended"], "no term, no fence");
    assert!(s.is_done());
    assert_eq!(s.conclude(false, false), Outcome::Observed);
}

#[test]
fn a_watch_ends_after_its_duration_and_a_stall_still_kills() {
    let mut s = watching(liveness(LivenessLevel::Off), Some(Duration::from_secs(2)));
    assert!(
        at(&mut s, RunEvent::Tick, T0).is_empty(),
        "the first sample only"
    );
    assert_eq!(s.next_deadline(), T0 + 2000 * MS);
    assert!(at(&mut s, RunEvent::Tick, T0 + 1999 * MS).is_empty());
    assert_eq!(
        at(&mut s, RunEvent::Tick, T0 + 2000 * MS),
        ["emit:note:watch_ended"]
    );
    assert!(s.is_done());

    // basic liveness: silence past stall-ms kills the watched processes (TERM, grace, KILL),
    // and the watch ends once the cgroup is empty, with the watchdog's outcome.
    let mut s = watching(liveness(LivenessLevel::Basic), None);
    let acts = at(&mut s, RunEvent::Tick, T0 + 1000 * MS);
    assert_eq!(acts, ["say", "triage"]);
    let snap = StallSnapshot::default();
    let acts = at(&mut s, RunEvent::TriageDone(Box::new(snap)), T0 + 1100 * MS);
    assert_eq!(
        acts,
        [
            format!("emit:watchdog:{}", reason::NO_OUTPUT_NO_EVENT),
            "fence".into(),
            format!("term:{}", reason::NO_OUTPUT_NO_EVENT)
        ]
    );
    // A SIGINT during the kill kills at once rather than ending the watch.
    assert_eq!(
        at(&mut s, RunEvent::Signal(libc::SIGINT), T0 + 1200 * MS),
        ["emit:note:cancel_kill_now", "kill:true"]
    );
    assert!(!s.is_done());
    assert_eq!(
        at(&mut s, RunEvent::CgroupEmpty, T0 + 1300 * MS),
        ["kill_complete"]
    );
    assert!(s.is_done());
    assert_eq!(
        s.conclude(false, false),
        Outcome::Watchdog(reason::NO_OUTPUT_NO_EVENT)
    );
}
