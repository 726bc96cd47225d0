//! `vigil summarize-ops`: what the run did, per operation of CONTRACT.md §3 (`process.exec`,
//! `filesystem.read_file`, `filesystem.write_file`, `network.connect`, `network.send`), allowed
//! and denied, by lane, with its distinct targets (capped, the rest counted). Streamed from the
//! kernel layer (the ground truth: a call is denied when the kernel answered EPERM/EACCES), with
//! each event's lane taken from the policy decision grounded in it (`unjudged` without one).
//! The same numbers go into a promotion packet, so a packet and its bundle summarize alike.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
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

/// The fields of a kernel record the summary reads, borrowed from the line (the other fields
/// are skipped unparsed: this pass runs once per event of a possibly huge layer).
#[derive(Deserialize, Default)]
pub(crate) struct Line<'a> {
    #[serde(borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(default)]
    pub(crate) seq: Option<u64>,
    #[serde(default)]
    pub(crate) last_seq: Option<u64>,
    #[serde(default)]
    count: Option<u64>,
    #[serde(borrow, default)]
    pub(crate) errno: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    path: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    resolved_path: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    filename: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    access: Option<Cow<'a, str>>,
    #[serde(default)]
    create: Option<bool>,
    #[serde(default)]
    truncate: Option<bool>,
    #[serde(borrow, default)]
    family: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    address: Option<Cow<'a, str>>,
    #[serde(default)]
    port: Option<u64>,
}

impl Line<'_> {
    /// Whether the kernel refused the call (what Landlock and the socket hooks answer).
    pub(crate) fn refused(&self) -> bool {
        matches!(self.errno.as_deref(), Some("EPERM" | "EACCES"))
    }
}

/// The operation a kernel record is, and its target; None for everything else (and for lookups
/// that found nothing: ENOENT/ENOTDIR is a search, not an access — as the policy oracle judges).
fn op_of(rec: &Line<'_>) -> Option<(&'static str, String)> {
    if matches!(rec.errno.as_deref(), Some("ENOENT" | "ENOTDIR")) {
        return None;
    }
    let path = || {
        rec.resolved_path
            .as_deref()
            .or(rec.path.as_deref())
            .unwrap_or("")
            .to_string()
    };
    match rec.kind.as_deref()? {
        "process.exec" => Some((
            "process.exec",
            rec.filename.as_deref().unwrap_or("").to_string(),
        )),
        "process.exec_failed" => Some(("process.exec", path())),
        "file.open" => {
            let writes = matches!(rec.access.as_deref(), Some("write" | "read_write"))
                || rec.create == Some(true)
                || rec.truncate == Some(true);
            let op = if writes {
                "filesystem.write_file"
            } else {
                "filesystem.read_file"
            };
            Some((op, path()))
        }
        kind @ ("network.connect" | "network.send") => {
            let target = match (rec.address.as_deref(), rec.port) {
                (Some(a), Some(p)) => format!("{a}:{p}"),
                (Some(a), None) => a.to_string(),
                _ => rec.family.as_deref().unwrap_or("unknown").to_string(),
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

/// Each non-empty line of `rel` (missing: none), with its 1-based number.
pub(crate) fn each_line(
    b: &BundleDir,
    rel: &'static str,
    mut each: impl FnMut(usize, &str) -> Result<(), OpsError>,
) -> Result<(), OpsError> {
    let f = match b.open_file(rel) {
        Ok(f) => f,
        Err(r) if r.is_missing() => return Ok(()),
        Err(r) => return Err(r.into()),
    };
    let mut reader = std::io::BufReader::with_capacity(1 << 16, f);
    let mut line = String::new();
    let mut n = 0;
    loop {
        line.clear();
        let read = reader.read_line(&mut line).map_err(|e| OpsError::Line {
            file: rel,
            line: n + 1,
            error: e.to_string(),
        })?;
        if read == 0 {
            return Ok(());
        }
        n += 1;
        if !line.trim().is_empty() {
            each(n, line.trim_end())?;
        }
    }
}

/// The policy layer's decisions (few next to kernel events); a line that does not parse is
/// skipped.
pub(crate) fn read_decisions(b: &BundleDir) -> Result<Vec<Value>, OpsError> {
    let mut out = Vec::new();
    each_line(b, files::POLICY_LAYER, |_, line| {
        if let Ok(d) = serde_json::from_str::<Value>(line) {
            out.push(d);
        }
        Ok(())
    })?;
    Ok(out)
}

fn bad_line(file: &'static str, line: usize, e: serde_json::Error) -> OpsError {
    OpsError::Line {
        file,
        line,
        error: e.to_string(),
    }
}

/// Summarize a bundle (read beneath its directory, never through a link).
pub fn summarize(b: &BundleDir) -> Result<OpsSummary, OpsError> {
    Ok(scan(b, &HashSet::new())?.0)
}

/// Summarize, and say which of the kernel events `wanted` (by seq) the kernel refused — one
/// pass over the layer serves both the summary and the policy verdict's grounding.
pub fn scan(b: &BundleDir, wanted: &HashSet<u64>) -> Result<(OpsSummary, HashSet<u64>), OpsError> {
    // The lane of each judged kernel event: decisions are few next to events.
    let mut lane_of: HashMap<u64, String> = HashMap::new();
    each_line(b, files::POLICY_LAYER, |n, line| {
        let d: Value =
            serde_json::from_str(line).map_err(|e| bad_line(files::POLICY_LAYER, n, e))?;
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
    let mut refused = HashSet::new();
    each_line(b, files::KERNEL_LAYER, |n, line| {
        let rec: Line<'_> =
            serde_json::from_str(line).map_err(|e| bad_line(files::KERNEL_LAYER, n, e))?;
        let seq = rec.seq.unwrap_or(u64::MAX);
        if rec.refused() && !wanted.is_empty() {
            let last = rec.last_seq.unwrap_or(seq);
            refused.extend(wanted.iter().filter(|w| (seq..=last).contains(w)));
        }
        let Some((op, target)) = op_of(&rec) else {
            return Ok(());
        };
        let lane = lane_of.get(&seq).map_or("unjudged", String::as_str);
        let n = rec.count.unwrap_or(1);
        out.add(op, lane, target, rec.refused(), n);
        Ok(())
    })?;
    if let Some(m) = health["downgraded_events_by_kind"].as_object() {
        for (k, v) in m {
            out.downgraded_by_kind
                .insert(k.clone(), v.as_u64().unwrap_or(0));
        }
    }
    Ok((out, refused))
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

    fn op(v: Value) -> Option<(&'static str, String)> {
        let text = v.to_string();
        let line: Line<'_> = serde_json::from_str(&text).expect("line");
        op_of(&line)
    }

    #[test]
    fn records_map_to_operations_and_lookups_are_not_accesses() {
        let open = |access: &str, errno: Value| {
            json!({"kind": "file.open", "path": "a", "resolved_path": "/w/a", "access": access,
                   "create": false, "truncate": false, "errno": errno})
        };
        assert_eq!(
            op(open("read", Value::Null)),
            Some(("filesystem.read_file", "/w/a".into()))
        );
        assert_eq!(
            op(open("write", json!("EACCES"))).map(|o| o.0),
            Some("filesystem.write_file")
        );
        assert_eq!(op(open("read", json!("ENOENT"))), None);
        let connect = json!({"kind": "network.connect", "address": "10.0.0.1", "port": 443});
        assert_eq!(
            op(connect),
            Some(("network.connect", "10.0.0.1:443".into()))
        );
        assert_eq!(op(json!({"kind": "process.fork"})), None);
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
