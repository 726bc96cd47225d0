//! `vigil summarize-ops`: what the run did, per operation of CONTRACT.md §3 (`process.exec`,
//! `filesystem.read_file`, `filesystem.write_file`, `network.connect`, `network.send`), allowed
//! and denied, by lane, with its distinct targets (capped, the rest counted). Streamed from the
//! kernel layer (the ground truth: a call is denied when the kernel answered EPERM/EACCES), with
//! each event's lane taken from the policy decision grounded in it (`unjudged` without one).
//! The same numbers go into a promotion packet, so a packet and its bundle summarize alike.

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::evidence::beneath::BundleDir;
use crate::evidence::files;

/// Schema id of the summary.
pub const SCHEMA: &str = "vigil.ops_summary.v1";

/// Distinct targets kept per operation and lane; the rest are counted in `targets_more`.
pub const MAX_TARGETS: usize = 50;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LaneCounts {
    pub allowed: u64,
    pub denied: u64,
    /// Target → calls, for the first MAX_TARGETS distinct targets.
    pub targets: BTreeMap<String, u64>,
    /// Distinct targets past the cap.
    pub targets_more: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct OpsSummary {
    pub schema: String,
    pub run_id: String,
    /// Operation → lane (`baseline`, `scenario`, `oracle`, `unjudged`) → counts.
    pub ops: BTreeMap<String, BTreeMap<String, LaneCounts>>,
    /// Data events the bundle only counted (downgraded), by kind: not in `ops`.
    pub downgraded_by_kind: BTreeMap<String, u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error("{0}")]
    Bundle(#[from] crate::evidence::beneath::Refused),
    #[error("{file}: line {line}: {error}")]
    Line {
        file: &'static str,
        line: usize,
        error: String,
    },
}

/// The operation a kernel record is, and its target; None for everything else (and for lookups
/// that found nothing: ENOENT/ENOTDIR is a search, not an access — as the policy oracle judges).
fn op_of(rec: &Value) -> Option<(&'static str, String)> {
    let s = |k: &str| rec.get(k).and_then(Value::as_str);
    if matches!(s("errno"), Some("ENOENT" | "ENOTDIR")) {
        return None;
    }
    let path = || {
        s("resolved_path")
            .or_else(|| s("path"))
            .unwrap_or("")
            .to_string()
    };
    match s("kind")? {
        "process.exec" => Some(("process.exec", s("filename").unwrap_or("").to_string())),
        "process.exec_failed" => Some(("process.exec", path())),
        "file.open" => {
            let writes = matches!(s("access"), Some("write" | "read_write"))
                || rec.get("create") == Some(&Value::Bool(true))
                || rec.get("truncate") == Some(&Value::Bool(true));
            let op = if writes {
                "filesystem.write_file"
            } else {
                "filesystem.read_file"
            };
            Some((op, path()))
        }
        kind @ ("network.connect" | "network.send") => {
            let target = match (s("address"), rec.get("port").and_then(Value::as_u64)) {
                (Some(a), Some(p)) => format!("{a}:{p}"),
                (Some(a), None) => a.to_string(),
                _ => s("family").unwrap_or("unknown").to_string(),
            };
            Some((
                if kind == "network.connect" {
                    "network.connect"
                } else {
                    "network.send"
                },
                target,
            ))
        }
        _ => None,
    }
}

impl OpsSummary {
    fn add(&mut self, op: &str, lane: &str, target: String, denied: bool, n: u64) {
        let c = self
            .ops
            .entry(op.to_string())
            .or_default()
            .entry(lane.to_string())
            .or_default();
        if denied {
            c.denied += n;
        } else {
            c.allowed += n;
        }
        if let Some(t) = c.targets.get_mut(&target) {
            *t += n;
        } else if c.targets.len() < MAX_TARGETS {
            c.targets.insert(target, n);
        } else {
            c.targets_more += 1;
        }
    }
}

fn lines(
    b: &BundleDir,
    rel: &'static str,
    mut each: impl FnMut(Value) -> Result<(), OpsError>,
) -> Result<(), OpsError> {
    let f = match b.open_file(rel) {
        Ok(f) => f,
        Err(r) if r.is_missing() => return Ok(()),
        Err(r) => return Err(r.into()),
    };
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.map_err(|e| OpsError::Line {
            file: rel,
            line: i + 1,
            error: e.to_string(),
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let v = serde_json::from_str(&line).map_err(|e| OpsError::Line {
            file: rel,
            line: i + 1,
            error: e.to_string(),
        })?;
        each(v)?;
    }
    Ok(())
}

/// Summarize a bundle (read beneath its directory, never through a link).
pub fn summarize(b: &BundleDir) -> Result<OpsSummary, OpsError> {
    // The lane of each judged kernel event: decisions are few next to events.
    let mut lane_of: HashMap<u64, String> = HashMap::new();
    lines(b, files::POLICY_LAYER, |d| {
        if let (Some(seq), Some(lane)) = (
            d.get("kernel_event_seq").and_then(Value::as_u64),
            d.get("lane").and_then(Value::as_str),
        ) {
            lane_of.insert(seq, lane.to_string());
        }
        Ok(())
    })?;
    let health: Value = b.read_json(files::HEALTH).unwrap_or_default();
    let mut out = OpsSummary {
        schema: SCHEMA.into(),
        run_id: health["run_id"].as_str().unwrap_or_default().to_string(),
        ..OpsSummary::default()
    };
    lines(b, files::KERNEL_LAYER, |rec| {
        let Some((op, target)) = op_of(&rec) else {
            return Ok(());
        };
        let seq = rec.get("seq").and_then(Value::as_u64).unwrap_or(u64::MAX);
        let lane = lane_of.get(&seq).map_or("unjudged", String::as_str);
        let denied = matches!(
            rec.get("errno").and_then(Value::as_str),
            Some("EPERM" | "EACCES")
        );
        let n = rec.get("count").and_then(Value::as_u64).unwrap_or(1);
        out.add(op, lane, target, denied, n);
        Ok(())
    })?;
    if let Some(m) = health["downgraded_events_by_kind"].as_object() {
        for (k, v) in m {
            out.downgraded_by_kind
                .insert(k.clone(), v.as_u64().unwrap_or(0));
        }
    }
    Ok(out)
}

/// The summary as people read it.
pub fn render(s: &OpsSummary) -> String {
    let mut out = format!("run {}\n", s.run_id);
    if s.ops.is_empty() {
        out.push_str("no operations observed\n");
    }
    for (op, lanes) in &s.ops {
        for (lane, c) in lanes {
            out.push_str(&format!(
                "{op:<22} {lane:<9} allowed {:>7}  denied {:>7}  targets {}{}\n",
                c.allowed,
                c.denied,
                c.targets.len(),
                if c.targets_more > 0 {
                    format!(" (+{} more)", c.targets_more)
                } else {
                    String::new()
                }
            ));
        }
    }
    for (k, n) in &s.downgraded_by_kind {
        out.push_str(&format!("{k}: {n} downgraded to counts (not above)\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn records_map_to_operations_and_lookups_are_not_accesses() {
        let open = |access: &str, errno: Value| {
            json!({"kind": "file.open", "path": "a", "resolved_path": "/w/a", "access": access,
                   "create": false, "truncate": false, "errno": errno})
        };
        assert_eq!(
            op_of(&open("read", Value::Null)),
            Some(("filesystem.read_file", "/w/a".into()))
        );
        assert_eq!(
            op_of(&open("write", json!("EACCES"))).map(|o| o.0),
            Some("filesystem.write_file")
        );
        assert_eq!(op_of(&open("read", json!("ENOENT"))), None);
        let connect = json!({"kind": "network.connect", "address": "10.0.0.1", "port": 443});
        assert_eq!(
            op_of(&connect),
            Some(("network.connect", "10.0.0.1:443".into()))
        );
        assert_eq!(op_of(&json!({"kind": "process.fork"})), None);
    }

    #[test]
    fn targets_are_capped_and_the_rest_counted() {
        let mut s = OpsSummary::default();
        for i in 0..MAX_TARGETS + 5 {
            s.add(
                "process.exec",
                "unjudged",
                format!("/bin/{i}"),
                i % 2 == 0,
                2,
            );
        }
        let c = &s.ops["process.exec"]["unjudged"];
        assert_eq!(c.targets.len(), MAX_TARGETS);
        assert_eq!(c.targets_more, 5);
        assert_eq!(c.allowed + c.denied, 2 * (MAX_TARGETS as u64 + 5));
    }
}
