//! observation-health.json (`vigil.observation_health.v1`): what was and was not observed.
//! Every field lowers the claim when something was missing; none may claim more.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct LostEvents {
    pub kernel_ring_buffer: u64,
    /// `kernel_ring_buffer` by event kind (kinds without losses left out).
    #[serde(default)]
    pub kernel_ring_buffer_by_kind: BTreeMap<String, u64>,
    pub reader: u64,
    pub queues: u64,
    /// Telemetry events shed from run-trace.json's in-memory copy (events.ndjson has them all).
    pub trace_shed: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProbeHealth {
    pub status: String,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ObservationHealth {
    pub schema: String,
    pub run_id: String,
    pub kernel_layer: String,
    pub cgroup_correlation: String,
    pub policy_layer: String,
    pub policy_mechanisms: Vec<String>,
    pub sdk_layer: String,
    /// Where subprocess_state events came from: `procfs` (sampled cgroup.procs) or `kernel`.
    pub process_tree_source: String,
    /// Interval of the procfs sampler; processes shorter than this may be missed.
    pub process_tree_sample_ms: u64,
    pub lost_events: LostEvents,
    pub probes: BTreeMap<String, ProbeHealth>,
    pub cgroup: Option<CgroupHealth>,
    pub output: BTreeMap<String, OutputHealth>,
    /// The SDK socket and what it heard (absent when no socket was offered).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub sdk: Option<SdkHealth>,
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct SdkHealth {
    /// `--agent-shim`.
    pub shim: String,
    pub accepted: u64,
    pub tool_calls: u64,
    /// Lines rejected, by reason (`not_json`, `unknown_event`, `missing_field`, …).
    pub rejected: BTreeMap<String, u64>,
    /// Valid events past the per-run cap, counted and not stored.
    pub dropped_over_cap: u64,
    pub connections: u64,
    /// Connections from outside the run's cgroup, or past the connection cap.
    pub refused_connections: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CgroupHealth {
    pub path: String,
    pub id: u64,
    pub kill_mechanism: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct OutputHealth {
    pub bytes_total: u64,
    pub bytes_captured: u64,
    pub truncated: bool,
    /// Bytes that reached the pipe after the run's fence and were not accepted.
    pub bytes_fenced: u64,
    pub tee_error: Option<String>,
}
