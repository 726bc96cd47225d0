//! Evidence: the bundle's models (events, run trace, health), redaction, the writer that commits
//! a bundle and the reader that validates, repairs and summarises one.

pub mod beneath;
pub mod bundle;
pub mod downgrade;
pub mod durable;
pub mod events;
pub mod health;
pub mod inspect;
pub mod ndjson;
pub mod reader;
pub mod redact;
pub mod space;
pub mod spans;
pub mod trace;

/// Schema ids, exactly as CONTRACT.md §3 names them.
pub mod schema {
    pub const RUN_TRACE: &str = "vigil.run_trace.v1";
    pub const RUNNER_EVENT: &str = "vigil.runner.event.v1";
    pub const KERNEL_EVENT: &str = "vigil.kernel_event.v1";
    pub const POLICY_DECISION: &str = "vigil.policy_decision.v1";
    pub const SDK_EVENT: &str = "vigil.sdk_event.v1";
    pub const OBSERVATION_HEALTH: &str = "vigil.observation_health.v1";
    pub const ARTIFACT_INDEX: &str = "vigil.artifact_index.v1";
}

/// File names inside a bundle.
pub mod files {
    pub const RUN_TRACE: &str = "run-trace.json";
    pub const RUN_TRACE_SUMMARY: &str = "run-trace-summary.md";
    pub const EVENTS: &str = "events.ndjson";
    pub const KERNEL_LAYER: &str = "layers/kernel.ndjson";
    pub const POLICY_LAYER: &str = "layers/policy.ndjson";
    pub const SDK_LAYER: &str = "layers/sdk.ndjson";
    pub const STDOUT: &str = "output/stdout.log";
    pub const STDERR: &str = "output/stderr.log";
    pub const HEALTH: &str = "observation-health.json";
    pub const INDEX: &str = "artifact_index.json";
    /// Every NDJSON file, which repair may have to trim.
    pub const NDJSON: [&str; 4] = [EVENTS, KERNEL_LAYER, POLICY_LAYER, SDK_LAYER];
}
