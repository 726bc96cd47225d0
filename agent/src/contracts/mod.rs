//! Run contracts: postconditions over closed spans and time budgets, loaded from YAML
//! (`policies/contracts/` or `--contracts DIR`). The registry parses them; a `tracing` layer
//! checks them as the run's spans close, against run-wide counters snapshotted at open and close.

pub mod clause;
pub mod counts;
pub mod layer;
pub mod registry;

pub use clause::{Clause, SpanFacts};
pub use counts::RunCounters;
pub use layer::{ContractLayer, Violation, Violations};
pub use registry::{Contract, Registry, RegistryError};
