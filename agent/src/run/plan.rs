//! Plans (`vigil run --plan FILE`): a CI gate of ordered steps, each one a supervised run of its
//! own (own cgroup, kernel sensor, SDK socket, complete bundle under `steps/` of the plan's
//! bundle), chained with fail-fast or `--continue-on-fail`, `depends_on`, step, harness and
//! chain timeouts, and triage of failing governance steps.
//!
//! The plan's own bundle holds the gate's trace (spans `run.total` → `case.chain` → per step
//! `case.run` → `case.harness` / `check.execute`), its summary (CONTRACT.md §3), its events and
//! health; its index covers the step bundles too, so `vigil validate` on the plan verifies
//! every byte of the gate.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::junit::{self, FailingCheck};
use super::liveness::reason;
use super::outcome::Outcome;
use super::plan_file::{Plan, Step, StepCommand};
use super::recorder::{Opened, RunRecorder};
use super::schedule::{Next, Schedule, aborted_after, skipped};
use super::spec::{RunId, RunSpec};
use super::supervisor::{self, RunResult, SetupError};
use crate::cli::{ExitCode, ProfileLevel, ProfileOnFail, TriageMode};
use crate::clock;
use crate::contracts::Registry;
use crate::evidence::events::{EventKind, EventLog};
use crate::evidence::health::{Claims, LostEvents, ObservationHealth, ObserverCost};
use crate::evidence::schema;
use crate::evidence::spans::RunSpan;
use crate::evidence::trace::{StepRow, StepStatus, Triage, TriageCheck, span};

/// A plan and the flags it runs under (`base` holds every `vigil run` flag; its command is
/// unused).
pub struct PlanSpec {
    pub file: PathBuf,
    pub plan: Plan,
    pub base: RunSpec,
    pub triage: TriageMode,
}

pub struct PlanResult {
    pub exit_code: i32,
    pub bundle_dir: PathBuf,
    pub commit_error: Option<String>,
}

/// How one supervised command of a step ended.
#[derive(Debug, Clone)]
struct Ran {
    status: StepStatus,
    exit_code: i32,
    code: Option<i32>,
    signal: Option<i32>,
    reason: Option<&'static str>,
    stall_phase: Option<String>,
    duration_ms: u64,
    bundle: String,
    /// vigil was asked to stop during this command: the gate stops too.
    cancelled: bool,
}

impl Ran {
    fn passed(&self) -> bool {
        self.status == StepStatus::Passed
    }

    fn attrs(&self) -> Value {
        json!({"exit_code": self.code, "signal": self.signal, "reason": self.reason,
               "bundle": self.bundle})
    }
}

struct Gate<'a> {
    spec: &'a PlanSpec,
    /// The gate's own bundle, events, trace and span stream.
    rec: RunRecorder,
    notes: Vec<String>,
    /// When the chain's time runs out, on CLOCK_MONOTONIC.
    chain_deadline: Option<u64>,
    /// Every supervised command's health claims, for the plan's health.
    layers: Vec<Claims>,
    /// A command of the current step was cancelled (SIGINT/SIGTERM to vigil).
    cancelled: bool,
}

pub async fn run(spec: PlanSpec) -> Result<PlanResult, SetupError> {
    let started_ns = clock::now_ns();
    let base = &spec.base;
    let run_id = base.run_id.to_string();
    let env: Vec<(String, String)> = std::env::vars().collect();
    let argv = vec![
        "vigil".to_string(),
        "run".into(),
        "--plan".into(),
        spec.file.display().to_string(),
    ];
    let (mut rec, Opened { total, dispatch }) =
        RunRecorder::create(base, None, started_ns, &argv, &env)?;
    let step_names: Vec<&str> = spec.plan.steps.iter().map(|s| s.name.as_str()).collect();
    rec.events.emit(
        EventKind::RunStarted,
        None,
        json!({"plan": spec.file.display().to_string(), "steps": step_names,
               "fail_fast": base.fail_fast, "vigil_pid": std::process::id()}),
    );
    dispatch.close_now("passed", json!({}));

    let chain_timeout = spec.plan.timeout.or(base.liveness.chain_timeout);
    let chain = rec.tree.open(span::CASE_CHAIN, Some(&total));
    let mut gate = Gate {
        spec: &spec,
        rec,
        notes: Vec::new(),
        chain_deadline: chain_timeout.map(|t| clock::mono_ns().saturating_add(nanos(t))),
        layers: Vec::new(),
        cancelled: false,
    };
    if let Some(t) = chain_timeout {
        gate.notes
            .push(format!("chain timeout {} ms", t.as_millis()));
    }
    let rows = gate.run_steps(&chain).await;

    let first_failure = rows.iter().find(|(r, _)| r.status.is_failure());
    let exit_code = first_failure.map_or(0, |(_, code)| *code);
    let status = if first_failure.is_some() {
        "failed"
    } else {
        "passed"
    };
    chain.close_now(status, json!({"exit_code": exit_code}));
    total.close_now(status, json!({"exit_code": exit_code}));

    let Gate {
        mut rec,
        mut notes,
        layers,
        ..
    } = gate;
    let found = rec.settle_contracts(base, &mut notes);
    let mut exit_code = exit_code;
    let mut status = status;
    if base.contracts_strict && !found.is_empty() && exit_code == 0 {
        eprintln!(
            "vigil: {} contract obligation(s) violated; failing the gate (--contracts-strict)",
            found.len()
        );
        exit_code = ExitCode::CONTRACT_VIOLATED;
        status = "failed";
    }
    let summary = &mut rec.trace.summary;
    summary.contract_violations = found;
    let steps: Vec<StepRow> = rows.into_iter().map(|(r, _)| r).collect();
    summary.first_failure_step = steps
        .iter()
        .find(|r| r.status.is_failure())
        .map(|r| r.name.clone());
    summary.skipped_step_count = steps
        .iter()
        .filter(|r| r.status == StepStatus::Skipped)
        .count() as u64;
    summary.aborted_after_step = aborted_after(&steps);
    summary.steps = steps;
    rec.finish(status, None, exit_code);
    notes.extend(rec.bundle.space().notes());
    notes.extend(rec.events_error().map(|e| {
        format!("events.ndjson is incomplete ({e}); run-trace.json holds the trace's copy")
    }));
    let health = plan_health(&run_id, rec.observer_start, &layers, &rec.events, notes);
    let failed = status != "passed";
    let commit = rec.commit(&health, &[], &base.profile, failed, || None);
    if let Err(e) = &commit {
        eprintln!("vigil: plan bundle not committed: {e} (gate {status}, exit {exit_code})");
    }
    if failed {
        eprintln!(
            "vigil: gate {run_id} failed at step {} (exit {exit_code}); bundle {}",
            rec.trace
                .summary
                .first_failure_step
                .as_deref()
                .unwrap_or("-"),
            rec.bundle.shown().display()
        );
    }
    Ok(PlanResult {
        exit_code: if commit.is_err() {
            ExitCode::VIGIL_FAILED
        } else {
            exit_code
        },
        bundle_dir: rec.bundle.shown().to_path_buf(),
        commit_error: commit.err(),
    })
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Gate<'_> {
    /// Run the steps in order; each row with the exit code it contributes.
    async fn run_steps(&mut self, chain: &RunSpan) -> Vec<(StepRow, i32)> {
        let steps = &self.spec.plan.steps;
        let mut rows: Vec<StepRow> = Vec::with_capacity(steps.len());
        let mut codes: Vec<i32> = Vec::with_capacity(steps.len());
        let mut schedule = Schedule::new(self.spec.base.fail_fast);
        for (i, step) in steps.iter().enumerate() {
            let expired = self.chain_deadline.is_some_and(|d| clock::mono_ns() >= d);
            let row = match schedule.next(step, &rows, expired) {
                Next::Skip { why, blocked_by } => (skipped(step, why, Some(&blocked_by)), 0),
                Next::Run => self.run_step(i, step, chain).await,
            };
            let cancelled = std::mem::take(&mut self.cancelled);
            if row.0.status == StepStatus::Skipped {
                let s = self.rec.tree.open(span::CASE_RUN, Some(chain));
                s.close_now(
                    "skipped",
                    json!({"step": step.name, "skip_reason": row.0.skip_reason, "blocked_by": row.0.blocked_by}),
                );
            }
            self.rec.events.emit(
                EventKind::Note,
                row.0.reason.as_deref(),
                json!({"step": step.name, "status": row.0.status, "exit_code": row.0.exit_code,
                       "bundle": row.0.bundle, "skip_reason": row.0.skip_reason}),
            );
            schedule.after(&row.0, cancelled);
            rows.push(row.0);
            codes.push(row.1);
        }
        rows.into_iter().zip(codes).collect()
    }

    /// Setup, the step's command, teardown, and triage when a governance step failed.
    async fn run_step(&mut self, i: usize, step: &Step, chain: &RunSpan) -> (StepRow, i32) {
        let case = self.rec.tree.open(span::CASE_RUN, Some(chain));
        let id = format!("{:02}-{}", i + 1, step.name);
        let harness_timeout = step.harness_timeout.or(self
            .spec
            .base
            .contracts
            .budget_ms(span::CASE_HARNESS)
            .map(Duration::from_millis));
        let step_timeout = step.timeout.or(self.spec.base.liveness.step_timeout);
        let mut ran = None;
        if let Some(setup) = &step.setup {
            let r = self
                .supervised(
                    span::CASE_HARNESS,
                    &case,
                    format!("{id}-setup"),
                    step,
                    setup,
                    (harness_timeout, reason::CASE_HARNESS),
                    json!({"phase": "setup"}),
                )
                .await;
            if !r.passed() {
                ran = Some(r);
            }
        }
        let main = match ran {
            Some(setup_failed) => setup_failed,
            None => {
                self.supervised(
                    span::CHECK_EXECUTE,
                    &case,
                    id.clone(),
                    step,
                    &step.command,
                    (step_timeout, reason::SUBPROCESS_WAIT),
                    json!({}),
                )
                .await
            }
        };
        let mut outcome = main.clone();
        if let Some(teardown) = &step.teardown {
            let r = self
                .supervised(
                    span::CASE_HARNESS,
                    &case,
                    format!("{id}-teardown"),
                    step,
                    teardown,
                    (harness_timeout, reason::CASE_HARNESS),
                    json!({"phase": "teardown"}),
                )
                .await;
            if outcome.passed() && !r.passed() {
                outcome = r;
            }
        }
        let triage = match (step.governance, outcome.passed()) {
            (false, _) => None,
            (true, true) => Some(Triage::not_run()),
            (true, false) => Some(self.triage(&id, step, &case, step_timeout).await),
        };
        case.close_now(outcome.status.as_str(), outcome.attrs());
        let row = StepRow {
            name: step.name.clone(),
            status: outcome.status,
            exit_code: outcome.code,
            signal: outcome.signal,
            duration_ms: outcome.duration_ms,
            reason: outcome.reason.map(String::from),
            skip_reason: None,
            blocked_by: None,
            stall_detected: Some(main.stall_phase.is_some()),
            stall_phase: main.stall_phase.clone(),
            triage,
            bundle: Some(outcome.bundle.clone()),
        };
        (row, outcome.exit_code)
    }

    /// One command of a step as a supervised run of its own, under a span of the plan.
    #[expect(
        clippy::too_many_arguments,
        reason = "one call site per kind of command; a struct would only rename them"
    )]
    async fn supervised(
        &mut self,
        span_name: &str,
        parent: &RunSpan,
        id: String,
        step: &Step,
        command: &StepCommand,
        (timeout, timeout_reason): (Option<Duration>, &'static str),
        attrs: Value,
    ) -> Ran {
        let span = self.rec.tree.open(span_name, Some(parent));
        let spec = self.step_spec(&id, step, command, timeout, timeout_reason);
        let ran = match spec {
            Err(e) => {
                self.notes.push(format!("{id}: not run: {e}"));
                error_ran(&id)
            }
            Ok(spec) => match supervisor::run(spec).await {
                Ok(result) => {
                    let ran = self.absorb(&id, result);
                    self.cancelled |= ran.cancelled;
                    ran
                }
                Err(e) => {
                    eprintln!("vigil: step {id}: {e}");
                    self.notes.push(format!("{id}: {e}"));
                    error_ran(&id)
                }
            },
        };
        let mut a = ran.attrs();
        if let (Some(into), Value::Object(more)) = (a.as_object_mut(), attrs) {
            into.extend(more);
        }
        span.close_now(ran.status.as_str(), a);
        ran
    }

    fn absorb(&mut self, id: &str, r: RunResult) -> Ran {
        self.rec.counters.absorb(&r.counters);
        self.layers.push(r.claims);
        let status = if r.commit_error.is_some() {
            StepStatus::Error
        } else {
            r.outcome.step_status()
        };
        let reason = match &r.outcome {
            Outcome::Watchdog(why) => Some(*why),
            _ => None,
        };
        Ran {
            status,
            exit_code: r.exit_code(),
            code: r.main_exit.0,
            signal: r.main_exit.1,
            reason,
            stall_phase: r.stall_phase,
            duration_ms: r.duration_ms,
            bundle: format!("steps/{id}"),
            cancelled: matches!(r.outcome, Outcome::Cancelled(_)),
        }
    }

    /// The run spec of one command: the plan's flags, the step's directory, environment and
    /// timeouts; its bundle under the plan's `steps/`; no profile copies and no contracts of
    /// its own (the plan's spans carry them).
    fn step_spec(
        &self,
        id: &str,
        step: &Step,
        command: &StepCommand,
        timeout: Option<Duration>,
        timeout_reason: &'static str,
    ) -> Result<RunSpec, String> {
        let base = &self.spec.base;
        let argv = command.argv();
        let (program, args) = argv.split_first().ok_or("empty command")?;
        let mut spec = base.clone();
        spec.run_id = id.parse::<RunId>().map_err(|e| e.to_string())?;
        spec.out_dir = self.rec.bundle.path("steps");
        spec.program = program.into();
        spec.args = args.iter().map(Into::into).collect();
        spec.cwd = step.cwd.clone();
        spec.env = step.env.iter().map(|(k, v)| (k.into(), v.into())).collect();
        spec.profile.level = ProfileLevel::Off;
        spec.profile.on_fail = ProfileOnFail::Off;
        spec.contracts = Arc::new(Registry::default());
        spec.contracts_strict = false;
        spec.liveness.step_timeout = timeout;
        spec.liveness.step_timeout_reason = timeout_reason;
        spec.timeout_source = timeout.map(|_| "the plan".to_string());
        // What is left of the chain's time.
        spec.liveness.chain_timeout = self.chain_deadline.map(|d| {
            Duration::from_nanos(d.saturating_sub(clock::mono_ns())).max(Duration::from_millis(1))
        });
        Ok(spec)
    }

    /// Triage of a failing governance step: its JUnit report names the failing checks; a
    /// targeted rerun runs only them through the step's template, a broad rerun the whole
    /// step. A check that passes on a rerun is flaky (`pass`); one that fails again is real.
    async fn triage(
        &mut self,
        id: &str,
        step: &Step,
        case: &RunSpan,
        timeout: Option<Duration>,
    ) -> Triage {
        let cwd = step
            .cwd
            .clone()
            .or_else(|| std::env::current_dir().ok())
            .unwrap_or_else(|| PathBuf::from("."));
        let report = |gate: &mut Gate<'_>| -> Option<Vec<FailingCheck>> {
            let path = step.junit.as_ref()?;
            match junit::failing_checks(path, &cwd) {
                Ok(c) => Some(c),
                Err(e) => {
                    gate.notes.push(format!("{id}: triage: {e}"));
                    None
                }
            }
        };
        let checks = report(self).unwrap_or_default();
        let ids: Vec<String> = checks.iter().map(|c| c.id.clone()).collect();
        let names: Vec<String> = checks.iter().map(|c| c.name.clone()).collect();
        let targeted_possible = step.triage.is_some() && !ids.is_empty();
        let mut targeted = matches!(self.spec.triage, TriageMode::Targeted | TriageMode::Both);
        let mut broad = matches!(self.spec.triage, TriageMode::Broad | TriageMode::Both);
        if targeted && !targeted_possible {
            self.notes.push(format!(
                "{id}: targeted triage needs a `triage` template and failing checks in `junit`; rerunning the whole step instead"
            ));
            targeted = false;
            broad = true;
        }
        let mut reruns: Vec<Ran> = Vec::new();
        // Checks still failing after the last rerun that rewrote the report.
        let mut still_failing: Option<Vec<String>> = None;
        for (mode, on) in [("targeted", targeted), ("broad", broad)] {
            if !on {
                continue;
            }
            let command = match (mode, &step.triage) {
                ("targeted", Some(t)) => t.expand(&ids, &names),
                _ => step.command.clone(),
            };
            let before = step.junit.as_ref().and_then(|p| modified(p));
            let r = self
                .supervised(
                    span::CHECK_EXECUTE,
                    case,
                    format!("{id}-triage-{mode}"),
                    step,
                    &command,
                    (timeout, reason::SUBPROCESS_WAIT),
                    json!({"triage": mode}),
                )
                .await;
            let rewritten = step.junit.as_ref().and_then(|p| modified(p)) != before;
            if r.passed() {
                still_failing = Some(Vec::new());
            } else if rewritten && let Some(now) = report(self) {
                still_failing = Some(now.into_iter().map(|c| c.id).collect());
            }
            reruns.push(r);
        }
        let result = if reruns.iter().any(|r| r.status == StepStatus::TimedOut) {
            "stalled"
        } else if reruns.iter().all(Ran::passed) {
            "pass"
        } else {
            "fail"
        };
        let triage_checks = ids
            .iter()
            .map(|c| TriageCheck {
                id: c.clone(),
                result: match &still_failing {
                    Some(failing) if !failing.contains(c) => "pass",
                    _ => "fail",
                }
                .into(),
            })
            .collect();
        Triage {
            triage_attempted: true,
            triage_mode: match (targeted, broad) {
                (true, true) => "both",
                (true, false) => "targeted",
                _ => "broad",
            }
            .into(),
            triage_result: result.into(),
            failing_check_prefixes: junit::prefixes(&checks),
            failing_check_ids: ids,
            triage_checks,
        }
    }
}

fn modified(path: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// A command vigil could not run at all (its bundle was never created).
fn error_ran(id: &str) -> Ran {
    Ran {
        status: StepStatus::Error,
        exit_code: ExitCode::VIGIL_FAILED,
        code: None,
        signal: None,
        reason: None,
        stall_phase: None,
        duration_ms: 0,
        bundle: format!("steps/{id}"),
        cancelled: false,
    }
}

/// The gate's health: each layer claims no more than its weakest step (a step without a
/// policy makes the gate's policy layer absent, however enforced the others were). Each step's
/// own claims are in its bundle and listed in the notes.
fn plan_health(
    run_id: &str,
    observer_start: ObserverCost,
    layers: &[Claims],
    events: &EventLog,
    mut notes: Vec<String>,
) -> ObservationHealth {
    let weakest = Claims::weakest(layers);
    notes.insert(
        0,
        "a plan: each step ran as its own supervised run; its bundle (with its layers, output and health) is under steps/; the plan claims, per layer, what its weakest step observed".into(),
    );
    ObservationHealth {
        mode: "standalone".into(),
        schema: schema::OBSERVATION_HEALTH.into(),
        run_id: run_id.to_string(),
        // Each step's bundle says what it downgraded.
        downgraded_events_by_kind: Default::default(),
        downgraded_targets: Vec::new(),
        unfollowed_events_by_kind: Default::default(),
        kernel_layer: weakest.kernel,
        cgroup_correlation: weakest.correlation,
        policy_layer: weakest.policy,
        policy_mechanisms: Vec::new(),
        sdk_layer: weakest.sdk,
        process_tree_source: "steps".into(),
        process_tree_sample_ms: supervisor::PROCESS_SAMPLE.as_millis() as u64,
        lost_events: LostEvents {
            queues: events.shed(),
            trace_shed: events.trace_shed(),
            ..LostEvents::default()
        },
        probes: Default::default(),
        cgroup: None,
        output: Default::default(),
        sdk: None,
        spawned_by_vigil: true,
        watch: None,
        // The gate's vigil process ran every step: its cost is the whole gate's.
        observer: Some(ObserverCost::since(observer_start)),
        notes,
    }
}
