//! Supervision of one run: spec, cgroup, spawn, output tee, process tree, liveness, triage, kill;
//! and plans (`--plan`): a chain of supervised steps with fail-fast, timeouts and check triage.

pub mod cgroup;
pub mod dispatch;
mod finish;
pub mod guard;
pub mod host;
pub mod junit;
pub mod kill;
mod layers;
pub mod liveness;
pub mod outcome;
mod perform;
pub mod pidfd;
pub mod plan;
pub mod plan_file;
pub mod proctree;
pub mod recorder;
pub mod schedule;
mod setup;
pub mod spawn;
pub mod spec;
pub mod steps;
pub mod supervisor;
pub mod tee;
pub mod triage;
pub mod waits;
pub mod watch;
