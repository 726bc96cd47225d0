//! run-trace.json (`vigil.run_trace.v1`): spans, events, summary — and its people's version,
//! run-trace-summary.md.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::events::RunnerEvent;
use super::redact::EnvProfile;
use crate::contracts::Violation;

/// Span names of the contract's taxonomy.
pub mod span {
    pub const RUN_TOTAL: &str = "run.total";
    pub const RUNNER_DISPATCH: &str = "runner.dispatch";
    pub const CASE_RUN: &str = "case.run";
    pub const CASE_CHAIN: &str = "case.chain";
    pub const CASE_HARNESS: &str = "case.harness";
    pub const CHECK_EXECUTE: &str = "check.execute";
    pub const SUBPROCESS_EXEC: &str = "subprocess.exec";
    pub const SUBPROCESS_WAIT: &str = "subprocess.wait";

    /// Every name of the taxonomy.
    pub const ALL: [&str; 8] = [
        RUN_TOTAL,
        RUNNER_DISPATCH,
        CASE_RUN,
        CASE_CHAIN,
        CASE_HARNESS,
        CHECK_EXECUTE,
        SUBPROCESS_EXEC,
        SUBPROCESS_WAIT,
    ];

    /// Spans written at `basic`; the others need `detailed` or `debug`.
    pub fn is_basic(name: &str) -> bool {
        matches!(
            name,
            RUN_TOTAL | RUNNER_DISPATCH | CASE_RUN | SUBPROCESS_EXEC | SUBPROCESS_WAIT
        )
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Span {
    pub name: String,
    pub span_id: String,
    pub parent_id: Option<String>,
    pub start_ns: u64,
    pub end_ns: u64,
    pub status: String,
    pub attrs: serde_json::Value,
    /// A span of the detailed profile only, whatever its name (per-process spans from kernel
    /// events reuse the `subprocess.*` names of the taxonomy).
    #[serde(skip)]
    pub detail: bool,
}

impl Span {
    fn kept_at_basic(&self) -> bool {
        !self.detail && span::is_basic(&self.name)
    }
}

/// The spans of a run as they are recorded (fed by the [`super::spans::SpanWriter`] layer); an
/// open span has `end_ns == 0` until closed.
#[derive(Debug, Default)]
pub struct SpanRecorder {
    spans: Vec<Span>,
}

pub type SpanId = usize;

impl SpanRecorder {
    pub fn open_at(&mut self, name: &str, parent: Option<SpanId>, start_ns: u64) -> SpanId {
        let id = self.spans.len();
        self.spans.push(Span {
            name: name.to_string(),
            span_id: format!("{:016x}", id + 1),
            parent_id: parent.map(|p| format!("{:016x}", p + 1)),
            start_ns,
            end_ns: 0,
            status: "in_progress".into(),
            attrs: serde_json::json!({}),
            detail: false,
        });
        id
    }

    /// Mark a span as one of the detailed profile only.
    pub fn mark_detail(&mut self, id: SpanId) {
        if let Some(s) = self.spans.get_mut(id) {
            s.detail = true;
        }
    }

    /// Apply what was recorded on a span: its status, end and attributes (merged).
    pub fn patch(
        &mut self,
        id: SpanId,
        status: Option<&str>,
        end_ns: Option<u64>,
        attrs: Option<serde_json::Value>,
    ) {
        let Some(s) = self.spans.get_mut(id) else {
            return;
        };
        if let Some(status) = status {
            s.status = status.to_string();
        }
        if let Some(end) = end_ns {
            s.end_ns = end.max(s.start_ns);
        }
        if let (Some(into), Some(serde_json::Value::Object(from))) =
            (s.attrs.as_object_mut(), attrs)
        {
            into.extend(from);
        }
    }

    /// A span that closes without an end recorded ends at `now_ns`, `unfinished`.
    pub fn end_if_open(&mut self, id: SpanId, now_ns: u64) {
        if let Some(s) = self.spans.get_mut(id).filter(|s| s.end_ns == 0) {
            s.end_ns = now_ns.max(s.start_ns);
            s.status = "unfinished".into();
        }
    }

    /// Spans for a profile detail level; still-open spans are closed at `now` as `unfinished`.
    pub fn export(&self, detailed: bool, now_ns: u64) -> Vec<Span> {
        self.spans
            .iter()
            .filter(|s| detailed || s.kept_at_basic())
            .map(|s| {
                let mut s = s.clone();
                if s.end_ns == 0 {
                    s.end_ns = now_ns.max(s.start_ns);
                    s.status = "unfinished".into();
                }
                // A detailed span dropped at basic level must not leave dangling parents.
                if !detailed {
                    s.parent_id = self.basic_ancestor(s.parent_id.as_deref());
                }
                s
            })
            .collect()
    }

    fn basic_ancestor<'a>(&'a self, mut parent: Option<&'a str>) -> Option<String> {
        while let Some(pid) = parent {
            let span = self.spans.iter().find(|s| s.span_id == pid)?;
            if span.kept_at_basic() {
                return Some(span.span_id.clone());
            }
            parent = span.parent_id.as_deref();
        }
        None
    }
}

/// A step row's `status` (CONTRACT.md §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Passed,
    Failed,
    TimedOut,
    Killed,
    Skipped,
    Error,
}

impl StepStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Passed => "passed",
            StepStatus::Failed => "failed",
            StepStatus::TimedOut => "timed_out",
            StepStatus::Killed => "killed",
            StepStatus::Skipped => "skipped",
            StepStatus::Error => "error",
        }
    }

    /// Neither passed nor skipped: the step failed the gate.
    pub fn is_failure(self) -> bool {
        !matches!(self, StepStatus::Passed | StepStatus::Skipped)
    }
}

impl std::fmt::Display for StepStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StepRow {
    pub name: String,
    pub status: StepStatus,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub duration_ms: u64,
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub skip_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub blocked_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub stall_detected: Option<bool>,
    /// `null` when no stall was detected or its phase is unknown — present either way.
    #[serde(default)]
    pub stall_phase: Option<String>,
    /// Governance steps only: what triage did with the step's failing checks.
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub triage: Option<Triage>,
    /// The step's own bundle, relative to the plan's (plans only).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub bundle: Option<String>,
}

/// Triage metadata of a governance step (CONTRACT.md §3).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Triage {
    pub triage_attempted: bool,
    /// `broad|targeted|both|not_run`.
    pub triage_mode: String,
    /// `pass` (flaky) | `fail` (real) | `stalled` | `not_run`.
    pub triage_result: String,
    pub failing_check_ids: Vec<String>,
    pub failing_check_prefixes: Vec<String>,
    /// Per failing check: `pass` when it passed on a rerun (flaky), else `fail`.
    #[serde(default)]
    pub triage_checks: Vec<TriageCheck>,
}

impl Triage {
    pub fn not_run() -> Self {
        Triage {
            triage_attempted: false,
            triage_mode: "not_run".into(),
            triage_result: "not_run".into(),
            failing_check_ids: Vec::new(),
            failing_check_prefixes: Vec::new(),
            triage_checks: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TriageCheck {
    pub id: String,
    pub result: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    pub fail_fast_enabled: bool,
    pub first_failure_step: Option<String>,
    pub aborted_after_step: Option<String>,
    pub skipped_step_count: u64,
    pub steps: Vec<StepRow>,
    /// Obligations of `--contracts` that a closed span broke (also `contract_violation` events).
    #[serde(default)]
    pub contract_violations: Vec<Violation>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunStatus {
    /// `in_progress` until commit; `committed`; `repaired` after `reindex --repair`.
    pub state: String,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunTrace {
    pub schema: &'static str,
    pub version: u32,
    pub run_id: String,
    pub runner_impl: &'static str,
    pub started_at: String,
    pub ended_at: Option<String>,
    pub status: String,
    pub exit_code: Option<i32>,
    pub run_status: RunStatus,
    pub command: String,
    pub args: Vec<String>,
    pub env_profile: EnvProfile,
    pub profile_level: String,
    pub cgroup: Option<serde_json::Value>,
    pub spans: Vec<Span>,
    pub events: Vec<RunnerEvent>,
    pub summary: Summary,
}

impl RunTrace {
    /// A trace as it starts: in progress, no spans or events yet.
    pub fn start(
        run_id: &str,
        started_ns: u64,
        argv: &[String],
        env_profile: EnvProfile,
        profile_level: &str,
        fail_fast: bool,
    ) -> Self {
        RunTrace {
            schema: super::schema::RUN_TRACE,
            version: 1,
            run_id: run_id.to_string(),
            runner_impl: "vigil-rust",
            started_at: crate::clock::rfc3339(started_ns),
            ended_at: None,
            status: "in_progress".into(),
            exit_code: None,
            run_status: RunStatus {
                state: "in_progress".into(),
                reason: None,
            },
            command: argv.first().cloned().unwrap_or_default(),
            args: argv.iter().skip(1).cloned().collect(),
            env_profile,
            profile_level: profile_level.into(),
            cgroup: None,
            spans: Vec::new(),
            events: Vec::new(),
            summary: Summary {
                fail_fast_enabled: fail_fast,
                first_failure_step: None,
                aborted_after_step: None,
                skipped_step_count: 0,
                steps: Vec::new(),
                contract_violations: Vec::new(),
            },
        }
    }
}

/// The people's version of a trace, written next to it as run-trace-summary.md.
pub fn render_summary_md(t: &RunTrace) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# vigil run `{}`\n", t.run_id);
    let _ = writeln!(
        md,
        "- status: **{}** (exit code {})",
        t.status,
        opt(t.exit_code)
    );
    let _ = writeln!(md, "- command: `{} {}`", t.command, t.args.join(" "));
    let _ = writeln!(
        md,
        "- started: {}; ended: {}",
        t.started_at,
        t.ended_at.as_deref().unwrap_or("-")
    );
    let _ = writeln!(md, "- bundle state: {}", t.run_status.state);
    let _ = writeln!(
        md,
        "\n## Steps\n\n| step | status | exit | signal | ms | reason |\n|---|---|---|---|---|---|"
    );
    for s in &t.summary.steps {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} |",
            s.name,
            s.status,
            opt(s.exit_code),
            opt(s.signal),
            s.duration_ms,
            s.reason.as_deref().unwrap_or("-")
        );
        if let Some(phase) = &s.stall_phase {
            let _ = writeln!(md, "\nStall phase of `{}`: `{phase}`", s.name);
        }
        if let Some(t) = s.triage.as_ref().filter(|t| t.triage_attempted) {
            let _ = writeln!(
                md,
                "\nTriage of `{}` ({}): **{}**; failing checks: {}",
                s.name,
                t.triage_mode,
                t.triage_result,
                t.triage_checks
                    .iter()
                    .map(|c| format!("`{}` {}", c.id, c.result))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    let _ = writeln!(md, "\n## Spans\n\n| span | status | ms |\n|---|---|---|");
    for s in &t.spans {
        let _ = writeln!(
            md,
            "| {} | {} | {} |",
            s.name,
            s.status,
            (s.end_ns - s.start_ns) / 1_000_000
        );
    }
    if !t.summary.contract_violations.is_empty() {
        let _ = writeln!(
            md,
            "\n## Contract violations\n\n| contract | span | obligation | observed | defined at |\n|---|---|---|---|---|"
        );
        for v in &t.summary.contract_violations {
            let _ = writeln!(
                md,
                "| {} | {} | `{}` | {} | {} |",
                v.contract,
                v.span,
                v.obligation,
                v.observed.as_deref().unwrap_or("-"),
                v.origin
            );
        }
    }
    let notable: Vec<_> = t
        .events
        .iter()
        .filter(|e| e.kind == "watchdog" || e.kind == "stall_warning")
        .collect();
    if !notable.is_empty() {
        let _ = writeln!(md, "\n## Watchdog and stalls\n");
        for e in notable {
            let _ = writeln!(
                md,
                "- {} `{}` {}",
                e.ts,
                e.kind,
                e.reason.as_deref().unwrap_or("")
            );
        }
    }
    md
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_export_reparents_across_detailed_spans() {
        let mut r = SpanRecorder::default();
        let total = r.open_at(span::RUN_TOTAL, None, 10);
        let chain = r.open_at(span::CASE_CHAIN, Some(total), 11);
        let case = r.open_at(span::CASE_RUN, Some(chain), 12);
        r.patch(case, Some("passed"), Some(20), None);
        r.patch(chain, Some("passed"), Some(21), None);
        let basic = r.export(false, 30);
        assert_eq!(basic.len(), 2);
        assert_eq!(
            basic[1].parent_id.as_deref(),
            Some(basic[0].span_id.as_str())
        );
        assert_eq!(basic[0].status, "unfinished");
        assert_eq!(basic[0].end_ns, 30);
        let detailed = r.export(true, 30);
        assert_eq!(detailed.len(), 3);
        assert_eq!(detailed[2].parent_id, Some(detailed[1].span_id.clone()));
    }
}
