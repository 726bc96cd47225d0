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
    /// `reader` (events that did not decode) by the kind their header named.
    #[serde(default)]
    pub reader_by_kind: BTreeMap<String, u64>,
    pub queues: u64,
    /// Telemetry events shed from run-trace.json's in-memory copy (events.ndjson has them all).
    pub trace_shed: u64,
}

/// `kernel_layer`. Variants are declared weakest first, so the weakest of several claims is
/// their `min()` (a plan claims what its weakest step observed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KernelClaim {
    #[default]
    Absent,
    /// Lost events, or a probe failed to attach.
    Partial,
    Observed,
}

/// `cgroup_correlation`, weakest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CorrelationClaim {
    Absent,
    /// pid-tree only.
    Partial,
    /// Own cgroup, kernel filter by cgroup id.
    Full,
}

/// `policy_layer`, weakest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyClaim {
    Absent,
    Audited,
    Enforced,
}

/// `sdk_layer`, weakest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SdkClaim {
    Absent,
    SelfReported,
}

/// The four layer claims of one run, as a plan gathers them from its steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claims {
    pub kernel: KernelClaim,
    pub correlation: CorrelationClaim,
    pub policy: PolicyClaim,
    pub sdk: SdkClaim,
}

impl Claims {
    /// What every one of `runs` can claim: the weakest value of each layer (all absent when
    /// there are none: nothing was observed).
    pub fn weakest(runs: &[Claims]) -> Claims {
        Claims {
            kernel: runs
                .iter()
                .map(|c| c.kernel)
                .min()
                .unwrap_or(KernelClaim::Absent),
            correlation: runs
                .iter()
                .map(|c| c.correlation)
                .min()
                .unwrap_or(CorrelationClaim::Absent),
            policy: runs
                .iter()
                .map(|c| c.policy)
                .min()
                .unwrap_or(PolicyClaim::Absent),
            sdk: runs.iter().map(|c| c.sdk).min().unwrap_or(SdkClaim::Absent),
        }
    }
}

/// A probe's state in health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeState {
    Attached,
    Unavailable,
    Failed,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProbeHealth {
    pub status: ProbeState,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ObservationHealth {
    pub schema: String,
    pub run_id: String,
    /// `standalone` or `daemon` (CONTRACT.md §1).
    #[serde(default = "standalone")]
    pub mode: String,
    pub kernel_layer: KernelClaim,
    pub cgroup_correlation: CorrelationClaim,
    pub policy_layer: PolicyClaim,
    pub policy_mechanisms: Vec<String>,
    pub sdk_layer: SdkClaim,
    /// Where subprocess_state events came from: `procfs` (sampled cgroup.procs) or `kernel`.
    pub process_tree_source: String,
    /// Interval of the procfs sampler; processes shorter than this may be missed.
    pub process_tree_sample_ms: u64,
    pub lost_events: LostEvents,
    /// Data events past `--evidence-max-bytes`, by kind (downgraded to counts, not written).
    #[serde(default)]
    pub downgraded_events_by_kind: BTreeMap<String, u64>,
    /// The same per target (path, endpoint, process), most first; bounded.
    #[serde(default)]
    pub downgraded_targets: Vec<crate::evidence::downgrade::DowngradedTarget>,
    /// What the run did that the kernel layer saw but does not follow, by kind
    /// (`syscall.compat`, `io_uring.submit`): blind spots, named.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub unfollowed_events_by_kind: BTreeMap<String, u64>,
    pub probes: BTreeMap<String, ProbeHealth>,
    pub cgroup: Option<CgroupHealth>,
    pub output: BTreeMap<String, OutputHealth>,
    /// vigil's own cost for this run: the observer's price is evidence too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observer: Option<ObserverCost>,
    /// The SDK socket and what it heard (absent when no socket was offered).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub sdk: Option<SdkHealth>,
    /// false for `vigil watch`: the processes were started by someone else, before vigil looked.
    #[serde(default = "yes")]
    pub spawned_by_vigil: bool,
    /// A watch's attach: what it found, and what it cannot have seen.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub watch: Option<WatchHealth>,
    pub notes: Vec<String>,
}

fn standalone() -> String {
    "standalone".into()
}

fn yes() -> bool {
    true
}

/// `watch` in health: the cgroup a watch attached to and what the attach could not see.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WatchHealth {
    pub cgroup: String,
    /// Processes found running at attach (`seeded: true` in their subprocess_state).
    pub seeded_processes: u64,
    /// Wall-clock ns of the attach: kernel evidence starts here.
    pub attached_at_ns: u64,
    /// From the kernel filter holding the cgroup subtree to the seeded tree being complete.
    pub attach_ms: f64,
    /// What happened before the attach and is not in the bundle.
    pub missed_before_attach: Vec<String>,
}

impl ObservationHealth {
    pub fn claims(&self) -> Claims {
        Claims {
            kernel: self.kernel_layer,
            correlation: self.cgroup_correlation,
            policy: self.policy_layer,
            sdk: self.sdk_layer,
        }
    }
}

/// vigil's own CPU time (its threads, not the run's processes) between the run's start and its
/// end, and the vigil process's peak RSS up to then.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, Default, PartialEq)]
pub struct ObserverCost {
    pub cpu_user_ms: f64,
    pub cpu_system_ms: f64,
    pub peak_rss_kib: u64,
}

impl ObserverCost {
    /// vigil's rusage now (RUSAGE_SELF: the run's processes are children, not counted).
    pub fn now() -> ObserverCost {
        nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF).map_or(
            ObserverCost::default(),
            |u| {
                let ms =
                    |t: nix::sys::time::TimeVal| t.tv_sec() as f64 * 1e3 + t.tv_usec() as f64 / 1e3;
                ObserverCost {
                    cpu_user_ms: ms(u.user_time()),
                    cpu_system_ms: ms(u.system_time()),
                    peak_rss_kib: u64::try_from(u.max_rss()).unwrap_or(0),
                }
            },
        )
    }

    /// The CPU spent since `start` (peak RSS is the process's, as of now).
    pub fn since(start: ObserverCost) -> ObserverCost {
        let now = ObserverCost::now();
        ObserverCost {
            cpu_user_ms: (now.cpu_user_ms - start.cpu_user_ms).max(0.0),
            cpu_system_ms: (now.cpu_system_ms - start.cpu_system_ms).max(0.0),
            peak_rss_kib: now.peak_rss_kib,
        }
    }
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
    /// The controllers the run's cgroup has (memory limits and OOM need `memory`).
    #[serde(default)]
    pub controllers: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct OutputHealth {
    pub bytes_total: u64,
    pub bytes_captured: u64,
    pub truncated: bool,
    /// Bytes that reached the pipe after the run's fence and were not accepted.
    pub bytes_fenced: u64,
    /// Why the capture is shorter than the stream: `cap`, `disk_pressure`, `write_error`.
    #[serde(default)]
    pub truncated_reason: Option<String>,
    pub tee_error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_weakest_claim_of_each_layer_wins() {
        let strong = Claims {
            kernel: KernelClaim::Observed,
            correlation: CorrelationClaim::Full,
            policy: PolicyClaim::Enforced,
            sdk: SdkClaim::SelfReported,
        };
        let weak = Claims {
            kernel: KernelClaim::Partial,
            correlation: CorrelationClaim::Full,
            policy: PolicyClaim::Absent,
            sdk: SdkClaim::Absent,
        };
        assert_eq!(Claims::weakest(&[strong, weak]), weak);
        assert_eq!(Claims::weakest(&[strong]), strong);
        assert_eq!(Claims::weakest(&[]).kernel, KernelClaim::Absent);
        assert_eq!(
            serde_json::to_value(SdkClaim::SelfReported).expect("json"),
            "self_reported"
        );
    }
}
