//! `vigil compare BASELINE SCENARIO`: did the policy change the outcome? A scenario run's
//! enforced denials are matched against what succeeded in the baseline run (the same workload,
//! policy not applied): an operation denied in the scenario that went through in the baseline
//! is the policy's doing; an outcome that differs without one is the environment's.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

use serde_json::Value;

use super::suggest::variables;

#[derive(Debug, thiserror::Error)]
#[error("{path}: {error}")]
pub struct CompareError {
    path: String,
    error: String,
}

struct Run {
    status: String,
    exit_code: Option<i64>,
    decisions: Vec<Value>,
    /// kernel event seq → result (absent: the event has none, e.g. a successful exec).
    results: BTreeMap<u64, Option<i64>>,
    vars: Vec<(String, &'static str)>,
}

/// A file of an untrusted bundle: beneath its directory, links refused, bounded.
fn read(dir: &Path, rel: &str) -> Result<String, CompareError> {
    let refused = |e: crate::evidence::beneath::Refused| CompareError {
        path: dir.join(rel).display().to_string(),
        error: e.to_string(),
    };
    let b = crate::evidence::beneath::BundleDir::open(dir).map_err(refused)?;
    let bytes = b
        .read(rel, crate::evidence::beneath::MAX_DOCUMENT)
        .map_err(refused)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn lines(text: &str) -> impl Iterator<Item = Value> + '_ {
    text.lines().filter_map(|l| serde_json::from_str(l).ok())
}

fn load(dir: &Path) -> Result<Run, CompareError> {
    let trace: Value =
        serde_json::from_str(&read(dir, "run-trace.json")?).map_err(|e| CompareError {
            path: dir.join("run-trace.json").display().to_string(),
            error: e.to_string(),
        })?;
    // A coalesced line stands for the contiguous seqs `seq..=last_seq`, all with its result.
    let mut results = BTreeMap::new();
    for e in lines(&read(dir, "layers/kernel.ndjson")?) {
        let Some(first) = e["seq"].as_u64() else {
            continue;
        };
        let last = e["last_seq"].as_u64().unwrap_or(first).max(first);
        for seq in first..=last.min(first.saturating_add(1 << 20)) {
            results.insert(seq, e["result"].as_i64());
        }
    }
    Ok(Run {
        status: trace["status"].as_str().unwrap_or("?").to_string(),
        exit_code: trace["exit_code"].as_i64(),
        decisions: lines(&read(dir, "layers/policy.ndjson")?).collect(),
        results,
        vars: variables(&read(dir, "events.ndjson")?),
    })
}

impl Run {
    /// A decision's subject with this run's own directories replaced by their variables, so
    /// two runs in two workspaces compare.
    fn subject(&self, d: &Value) -> String {
        let s = d["subject"].as_str().unwrap_or_default();
        self.vars
            .iter()
            .find(|(v, _)| s == v || s.starts_with(&format!("{v}/")))
            .map_or_else(
                || s.to_string(),
                |(v, name)| format!("${{{name}}}{}", &s[v.len()..]),
            )
    }

    fn op(d: &Value) -> String {
        let decision = d["decision"].as_str().unwrap_or_default();
        decision
            .split_once(':')
            .map_or(decision, |(_, op)| op)
            .to_string()
    }

    /// (op, subject) of every operation that went through.
    fn succeeded(&self) -> BTreeSet<(String, String)> {
        self.decisions
            .iter()
            .filter(|d| {
                let result = d["kernel_event_seq"]
                    .as_u64()
                    .and_then(|seq| self.results.get(&seq).copied().flatten());
                // No result: a successful exec. EINPROGRESS: a connect under way.
                result.is_none_or(|r| r >= 0 || r == -115)
            })
            .map(|d| (Self::op(d), self.subject(d)))
            .collect()
    }

    fn enforced_denials(&self) -> Vec<(String, String, String)> {
        self.decisions
            .iter()
            .filter(|d| {
                d["decision"]
                    .as_str()
                    .is_some_and(|x| x.starts_with("deny:"))
            })
            .filter(|d| matches!(d["enforcement_evidence"].as_str(), Some("EACCES" | "EPERM")))
            .map(|d| {
                (
                    Self::op(d),
                    self.subject(d),
                    d["rule_id"].as_str().unwrap_or("?").to_string(),
                )
            })
            .collect()
    }

    fn outcome(&self) -> String {
        match self.exit_code {
            Some(c) => format!("{} (exit {c})", self.status),
            None => self.status.clone(),
        }
    }
}

/// The comparison, for people.
pub fn compare(baseline: &Path, scenario: &Path) -> Result<String, CompareError> {
    let (b, s) = (load(baseline)?, load(scenario)?);
    let went_through = b.succeeded();
    let mut attributed: Vec<(String, String, String)> = s
        .enforced_denials()
        .into_iter()
        .filter(|(op, subject, _)| went_through.contains(&(op.clone(), subject.clone())))
        .collect();
    attributed.dedup();
    let mut out = String::new();
    let _ = writeln!(out, "baseline: {}  {}", b.outcome(), baseline.display());
    let _ = writeln!(out, "scenario: {}  {}", s.outcome(), scenario.display());
    let same = b.status == s.status && b.exit_code == s.exit_code;
    let verdict = match (same, attributed.is_empty()) {
        (true, true) => "same outcome; the policy denied nothing that succeeded in the baseline",
        (true, false) => {
            "same outcome, although the policy denied operations that succeeded in the baseline"
        }
        (false, false) => "outcome differs: attributed to the policy",
        (false, true) => {
            "outcome differs: not attributable to the policy (nothing the scenario denied succeeded in the baseline): the environment"
        }
    };
    let _ = writeln!(out, "{verdict}");
    for (op, subject, rule) in &attributed {
        let _ = writeln!(
            out,
            "  denied in scenario, succeeded in baseline: {op} {subject} (rule {rule})"
        );
    }
    Ok(out)
}
