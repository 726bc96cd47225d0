//! The policy layer of one run: every kernel event the policy speaks about goes through the
//! oracle, and each decision is a `vigil.policy_decision.v1` line in layers/policy.ndjson,
//! citing the kernel event's `seq` — lane `oracle`/mode `audit` when nothing was applied, lane
//! `scenario`/mode `enforce` when it was, with the kernel's error as evidence of each enforced
//! denial (or `none`).

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::model::{Action, Mode, Policy};
use super::oracle::{Oracle, Vars, result_of};
use crate::clock;
use crate::evidence::ndjson::{Lane, NdjsonWriter};
use crate::evidence::schema;
use crate::evidence::space::Admit;
use crate::kernel::event::Observed;

/// A policy chosen for a run, as read and checked before anything started.
#[derive(Debug, Clone)]
pub struct PolicySpec {
    pub file: PathBuf,
    pub policy: Policy,
    /// Enforce mode: the Landlock ruleset for the child (built before anything started).
    pub landlock: Option<std::sync::Arc<super::landlock::LandlockPlan>>,
    /// Enforce mode on a watch: only the network rules are held (cgroup hooks); the policy
    /// allows every filesystem access, so there is nothing for Landlock to do.
    pub network_hooks_only: bool,
    pub lane: DecisionLane,
}

/// The lane of CONTRACT.md's policy decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecisionLane {
    /// Audit: the policy judged, not applied.
    Oracle,
    /// `--lane baseline`: not applied, for comparison with a scenario run.
    Baseline,
    /// Applied (enforce).
    Scenario,
}

impl DecisionLane {
    pub fn as_str(self) -> &'static str {
        match self {
            DecisionLane::Oracle => "oracle",
            DecisionLane::Baseline => "baseline",
            DecisionLane::Scenario => "scenario",
        }
    }
}

#[derive(Serialize)]
struct DecisionRecord<'a> {
    schema: &'static str,
    seq: u64,
    ts: String,
    decision: String,
    rule_id: &'a str,
    mode: &'static str,
    lane: &'static str,
    kernel_event_seq: Option<u64>,
    /// For an enforced denial: the error the kernel returned (`EACCES`, `EPERM`), or `none`
    /// when the operation went through (not enforceable by the mechanism that ran).
    #[serde(skip_serializing_if = "Option::is_none")]
    enforcement_evidence: Option<String>,
    policy: &'a str,
    subject: String,
    pid: u32,
    comm: &'a str,
}

pub struct PolicyLayer {
    name: String,
    mode: Mode,
    lane: DecisionLane,
    oracle: Oracle,
    out: NdjsonWriter,
    seq: u64,
    denied: u64,
    /// The bundle's disk budget: allow decisions are data, denials control.
    space: std::sync::Arc<crate::evidence::space::Space>,
    /// Allow decisions not written because the disk ran short.
    dropped_for_space: u64,
    /// Allow decisions past `--evidence-max-bytes`, as counts.
    downgraded: crate::evidence::downgrade::Downgraded,
}

/// What health says about the policy layer.
pub struct PolicyReport {
    pub decisions: u64,
    pub would_deny: u64,
    pub write_error: Option<String>,
    pub name: String,
    /// Decisions not written because the disk ran short.
    pub dropped_for_space: u64,
    /// Allow decisions past the evidence budget.
    pub downgraded: crate::evidence::downgrade::Downgraded,
    /// What the layer's writer wrote (its digest, for the index), when it finished cleanly.
    pub layer_written: Option<crate::evidence::ndjson::Written>,
}

/// Lines the writer may have queued (decisions arrive in kernel drains of ≤ 4,096 events).
const QUEUE: usize = 8;

impl PolicyLayer {
    /// `space`: decisions are data; they yield to control evidence when the disk runs short.
    pub fn start(
        spec: &PolicySpec,
        vars: &Vars,
        layer: &Path,
        space: std::sync::Arc<crate::evidence::space::Space>,
    ) -> std::io::Result<Self> {
        Ok(PolicyLayer {
            name: spec.policy.name.clone(),
            mode: spec.policy.mode,
            lane: spec.lane,
            oracle: Oracle::new(&spec.policy, vars),
            out: NdjsonWriter::spawn(layer, QUEUE)?,
            space,
            dropped_for_space: 0,
            downgraded: Default::default(),
            seq: 0,
            denied: 0,
        })
    }

    /// Judge a batch of kernel events (already redacted and stamped) and write the decisions.
    pub fn observe(&mut self, seen: &[Observed]) {
        let mut batch = Vec::new();
        for o in seen {
            let Some(d) = self.oracle.evaluate(&o.event) else {
                continue;
            };
            let verdict = match d.action {
                Action::Allow => "allow",
                Action::Deny => {
                    self.denied += 1;
                    "deny"
                }
            };
            let h = o.event.header();
            let mode = match self.mode {
                Mode::Audit => "audit",
                Mode::Enforce => "enforce",
            };
            let lane = self.lane.as_str();
            let enforcement_evidence = (self.mode == Mode::Enforce && d.action == Action::Deny)
                .then(|| match result_of(&o.event) {
                    Some(-13) => "EACCES".to_string(),
                    Some(-1) => "EPERM".to_string(),
                    _ => "none".to_string(),
                });
            let rec = DecisionRecord {
                schema: schema::POLICY_DECISION,
                seq: self.seq,
                ts: clock::rfc3339(o.ts_ns),
                decision: format!("{verdict}:{}", d.op.as_str()),
                rule_id: &d.rule_id,
                mode,
                lane,
                kernel_event_seq: Some(o.seq),
                enforcement_evidence,
                policy: &self.name,
                subject: d.subject.clone(),
                pid: h.pid,
                comm: &h.comm,
            };
            let mark = batch.len();
            if serde_json::to_writer(&mut batch, &rec).is_ok() {
                // Denials are control evidence, always written; allows yield to them when the
                // disk runs short (counted, and said in health).
                let n = (batch.len() - mark) as u64 + 1;
                match self.space.admit(n, d.action == Action::Deny) {
                    Admit::Write => batch.push(b'\n'),
                    Admit::OverBudget => {
                        batch.truncate(mark);
                        self.downgraded
                            .count(&format!("policy.allow:{}", d.op.as_str()), &d.subject);
                    }
                    Admit::DiskShort => {
                        batch.truncate(mark);
                        self.dropped_for_space += 1;
                    }
                }
                self.seq += 1;
            }
        }
        if !batch.is_empty() {
            self.out.send(batch, Lane::Control, false);
        }
    }

    pub fn finish(mut self) -> PolicyReport {
        let (write_error, layer_written) = match self.out.finish() {
            Ok(w) => (None, Some(w)),
            Err(e) => (Some(e), None),
        };
        PolicyReport {
            layer_written,
            decisions: self.seq,
            would_deny: self.denied,
            write_error,
            name: self.name,
            dropped_for_space: self.dropped_for_space,
            downgraded: self.downgraded,
        }
    }
}

impl crate::kernel::bus::KernelObserver for PolicyLayer {
    fn observe(&mut self, batch: &[Observed]) {
        PolicyLayer::observe(self, batch);
    }
}

/// Whether a `layers/policy.ndjson` line is a denial (`deny:<op>`).
pub fn is_denial(decision: &serde_json::Value) -> bool {
    decision["decision"]
        .as_str()
        .is_some_and(|x| x.starts_with("deny:"))
}
