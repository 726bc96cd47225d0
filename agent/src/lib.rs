//! vigil: a privileged run-observation agent for Linux CI hosts.
//!
//! The crate is split the way `../DESIGN.md` draws the system: `cli` holds the clap surface and
//! exit codes, `run` the supervisor and everything it owns (cgroup, tee, liveness, kill), and
//! `evidence` the bundle: its models, redaction, writer and reader; `kernel`, `policy`,
//! `contracts` and `sdk` are the layers of evidence and judgement over a run; `daemon` serves
//! runs to clients over a local socket with one sensor loaded for all of them.

pub mod ci;
pub mod cli;
pub mod clock;
pub mod contracts;
pub mod daemon;
pub mod diag;
pub mod evidence;
pub mod export;
pub mod kernel;
pub mod policy;
pub mod run;
pub mod sdk;
pub mod status;
