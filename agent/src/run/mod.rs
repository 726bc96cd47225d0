//! Supervision of one run: spec, cgroup, spawn, output tee, process tree, liveness, triage, kill.

pub mod cgroup;
pub mod guard;
pub mod kill;
pub mod liveness;
pub mod outcome;
pub mod proctree;
pub mod spawn;
pub mod spec;
pub mod supervisor;
pub mod tee;
pub mod triage;
