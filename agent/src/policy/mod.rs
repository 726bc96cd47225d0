//! Sandbox policies: the model, reading and linting policy files. Enforcement (Landlock, cgroup
//! sock_addr programs) and the audit oracle build on this model.

pub mod compare;
pub mod landlock;
pub mod layer;
pub mod lint;
pub mod model;
pub mod oracle;
pub mod parse;
pub mod sockaddr;
pub mod suggest;

pub use model::{Action, Mode, Policy};
pub use parse::{Diagnostic, Parsed, Severity, parse};
