//! Supervision of one run: spec, cgroup, spawn, output tee, process tree, liveness, triage, kill;
//! and plans (`--plan`): a chain of supervised steps with fail-fast, timeouts and check triage.

pub mod cgroup;
pub mod guard;
pub mod junit;
pub mod kill;
pub mod liveness;
pub mod outcome;
pub mod plan;
pub mod plan_file;
pub mod proctree;
pub mod spawn;
pub mod spec;
pub mod supervisor;
pub mod tee;
pub mod triage;
