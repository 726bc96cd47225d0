//! `vigil emit-promotion`: a compact, verified evidence packet for downstream consumers — an
//! in-toto Statement v1 whose subjects are every file of the committed bundle with its sha256
//! (as `vigil validate` just verified them), and whose predicate (`PREDICATE_TYPE`) says what
//! the run was and did. `promotability` is derived from the bundle alone, never from the caller:
//! committed and not repaired, the run passed, kernel layer observed with nothing lost or
//! downgraded, cgroup correlation full, and — when a policy was in play — enforced, with every
//! denial grounded in a kernel event that was refused (an oracle decision never counts).

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use serde_json::{Value, json};

use super::ops::{self, OpsSummary};
use crate::evidence::beneath::BundleDir;
use crate::evidence::files;
use crate::evidence::reader::{self, BundleProblem};

pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
pub const PREDICATE_TYPE: &str = "https://vigil.dev/promotion/v1";

/// Denials listed in a packet (the rest are counted).
const MAX_DENIALS: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum PromotionError {
    #[error("not committed and intact, so nothing can be promoted from it: {}", .0.first().map(ToString::to_string).unwrap_or_default())]
    Invalid(Vec<BundleProblem>),
    #[error("{0}")]
    Ops(#[from] ops::OpsError),
    #[error("{0}")]
    Bundle(#[from] crate::evidence::beneath::Refused),
}

/// Build the statement for the bundle at `dir`.
pub fn statement(dir: &Path) -> Result<Value, PromotionError> {
    let index = reader::validate(dir).map_err(PromotionError::Invalid)?;
    let b = BundleDir::open(dir)?;
    let trace: Value = b.read_json(files::RUN_TRACE)?;
    let health: Value = b.read_json(files::HEALTH)?;
    let decisions = ops::read_decisions(&b)?;
    let wanted: HashSet<u64> = decisions
        .iter()
        .filter(|d| crate::policy::layer::is_denial(d))
        .filter_map(|d| d["kernel_event_seq"].as_u64())
        .collect();
    // One pass over the kernel layer: the ops summary, and which denials the kernel enforced.
    let (ops, refused) = ops::scan(&b, &wanted)?;
    let policy = policy_verdict(&decisions, &refused);
    let mut reasons = Vec::new();
    if index.state != "committed" {
        reasons.push(format!(
            "bundle_{}: salvaged by reindex --repair, not a run's own commit",
            index.state
        ));
    }
    let status = trace["status"].as_str().unwrap_or("unknown");
    if status != "passed" {
        reasons.push(format!("run_{status}: exit code {}", trace["exit_code"]));
    }
    let kernel = health["kernel_layer"].as_str().unwrap_or("absent");
    if kernel != "observed" {
        reasons.push(format!("kernel_layer_{kernel}"));
    }
    let lost = &health["lost_events"];
    let lost_total: u64 = ["kernel_ring_buffer", "reader", "queues"]
        .iter()
        .filter_map(|k| lost[k].as_u64())
        .sum();
    if lost_total > 0 {
        reasons.push(format!("lost_events: {lost_total}"));
    }
    let downgraded: u64 = health["downgraded_events_by_kind"]
        .as_object()
        .map_or(0, |m| m.values().filter_map(Value::as_u64).sum());
    if downgraded > 0 {
        reasons.push(format!("downgraded_events: {downgraded}"));
    }
    let correlation = health["cgroup_correlation"].as_str().unwrap_or("absent");
    if correlation != "full" {
        reasons.push(format!("cgroup_correlation_{correlation}"));
    }
    let policy_layer = health["policy_layer"].as_str().unwrap_or("absent");
    if policy["decisions"].as_u64().unwrap_or(0) > 0 || policy_layer != "absent" {
        if policy_layer != "enforced" {
            reasons.push(format!(
                "policy_not_enforced: the policy was {policy_layer} (oracle and audit decisions are not enforcement)"
            ));
        }
        let ungrounded = policy["ungrounded_denials"].as_u64().unwrap_or(0);
        if ungrounded > 0 {
            reasons.push(format!(
                "ungrounded_denials: {ungrounded} denials without a refused kernel event"
            ));
        }
    }
    let subject: Vec<Value> = index
        .files
        .iter()
        .map(|f| json!({"name": f.path, "digest": {"sha256": f.sha256}}))
        .collect();
    let steps = &trace["summary"]["steps"];
    let kills: Vec<Value> = trace["events"]
        .as_array()
        .map(|evs| {
            evs.iter()
                .filter(|e| e["kind"] == "watchdog")
                .map(|e| e["reason"].clone())
                .collect()
        })
        .unwrap_or_default();
    Ok(json!({
        "_type": STATEMENT_TYPE,
        "subject": subject,
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "run_id": trace["run_id"],
            "bundle_state": index.state,
            "command": trace["command"],
            "args": trace["args"],
            "status": status,
            "exit_code": trace["exit_code"],
            "started_at": trace["started_at"],
            "ended_at": trace["ended_at"],
            "duration_ms": steps[0]["duration_ms"],
            "stall_detected": steps.as_array().is_some_and(|s| s.iter().any(|x| x["stall_detected"] == true)),
            "stall_phase": steps[0]["stall_phase"],
            "kill_reasons": kills,
            "policy": policy,
            "health": {
                "mode": health["mode"],
                "kernel_layer": kernel,
                "cgroup_correlation": correlation,
                "policy_layer": policy_layer,
                "sdk_layer": health["sdk_layer"],
                "lost_events": health["lost_events"],
                "downgraded_events_by_kind": health["downgraded_events_by_kind"],
            },
            "ops": ops,
            "promotability": {"promotable": reasons.is_empty(), "reasons": reasons},
        }
    }))
}

/// Decisions by verdict, denials with their kernel evidence, and how many denials have none: a
/// deny grounded in a kernel event the kernel refused (EPERM/EACCES) is enforcement evidence.
fn policy_verdict(decisions: &[Value], refused: &HashSet<u64>) -> Value {
    let (mut by_decision, mut by_lane) = (
        BTreeMap::<String, u64>::new(),
        BTreeMap::<String, u64>::new(),
    );
    let (mut denials, mut more, mut ungrounded) = (Vec::new(), 0u64, 0u64);
    for d in decisions {
        let decision = d["decision"].as_str().unwrap_or("").to_string();
        *by_lane
            .entry(d["lane"].as_str().unwrap_or("").to_string())
            .or_default() += 1;
        if decision.starts_with("deny:") {
            let seq = d["kernel_event_seq"].as_u64();
            let grounded = d["mode"] == "enforce" && seq.is_some_and(|s| refused.contains(&s));
            if d["mode"] == "enforce" && !grounded {
                ungrounded += 1;
            }
            if denials.len() < MAX_DENIALS {
                denials.push(json!({"decision": decision, "rule_id": d["rule_id"], "lane": d["lane"],
                    "mode": d["mode"], "subject": d["subject"], "kernel_event_seq": d["kernel_event_seq"],
                    "grounded": grounded}));
            } else {
                more += 1;
            }
        }
        *by_decision.entry(decision).or_default() += 1;
    }
    json!({"decisions": decisions.len(), "by_decision": by_decision, "by_lane": by_lane,
           "denials": denials, "denials_more": more, "ungrounded_denials": ungrounded})
}

/// The ops summary a packet carries (statement or DSSE envelope).
pub fn ops_of_packet(packet: &Value) -> Option<OpsSummary> {
    let statement = super::dsse::statement_of(packet).ok()?;
    serde_json::from_value(statement["predicate"]["ops"].clone()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evidence::bundle::Bundle;

    /// Losses cannot be produced on demand on a real kernel (the reader keeps up with what a
    /// test can generate), so this reason is checked on a committed bundle written here.
    #[test]
    fn lost_events_make_a_passing_run_unpromotable() {
        let out = tempfile::tempdir().expect("tempdir");
        let b = Bundle::create(out.path(), "r").expect("bundle");
        b.write_json(
            files::RUN_TRACE,
            &json!({"run_id": "r", "status": "passed", "exit_code": 0, "events": [],
                    "summary": {"steps": [{"duration_ms": 1, "stall_detected": false}]}}),
        )
        .expect("trace");
        let health = |lost: u64| {
            json!({"run_id": "r", "kernel_layer": "observed", "cgroup_correlation": "full",
                   "policy_layer": "absent", "lost_events": {"kernel_ring_buffer": lost, "reader": 0, "queues": 0},
                   "downgraded_events_by_kind": {}})
        };
        b.write_json(files::HEALTH, &health(3)).expect("health");
        for rel in [files::KERNEL_LAYER, files::POLICY_LAYER] {
            b.write_bytes(rel, b"").expect("layer");
        }
        b.commit(&[]).expect("commit");
        let dir = out.path().join("r");
        let st = statement(&dir).expect("statement");
        let p = &st["predicate"]["promotability"];
        assert_eq!(p["promotable"], false);
        assert_eq!(p["reasons"], json!(["lost_events: 3"]));

        let b2 = Bundle::create(out.path(), "r2").expect("bundle");
        b2.write_json(
            files::RUN_TRACE,
            &json!({"run_id": "r2", "status": "passed", "exit_code": 0,
            "summary": {"steps": []}}),
        )
        .expect("trace");
        b2.write_json(files::HEALTH, &health(0)).expect("health");
        b2.commit(&[]).expect("commit");
        let st = statement(&out.path().join("r2")).expect("statement");
        assert_eq!(
            st["predicate"]["promotability"]["promotable"], true,
            "{st:#}"
        );
    }
}
