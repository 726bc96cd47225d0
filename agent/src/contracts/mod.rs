//! Run contracts: postconditions over closed spans and time budgets, loaded from YAML.
//! This holds the registry and the clause checker; the `tracing` layer that checks contracts
//! as spans close, and `--contracts`/`--contracts-strict`, build on it (issue 6, in progress).

pub mod clause;
pub mod registry;

pub use clause::{Clause, SpanFacts};
pub use registry::{Contract, Registry, RegistryError};
