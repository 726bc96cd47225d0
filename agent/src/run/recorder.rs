//! What every run and plan records the same way: [`RunRecorder`] (the bundle, the event log, the
//! redactor, the trace and the run's span stream with its run-trace writer and contract checker
//! layers, opened and committed alike by single runs and plans), the profile copies outside the
//! bundle — written whatever became of the commit — and the per-process spans of the detailed
//! profile.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::evidence::beneath::BundleDir;
use crate::evidence::bundle::BundleError;

use serde_json::json;
use tracing_subscriber::layer::SubscriberExt;

use super::spec::{ProfileConfig, RunSpec};
use super::supervisor::SetupError;
use crate::cli::{ProfileLevel, ProfileOnFail};
use crate::clock;
use crate::contracts::{ContractLayer, RunCounters, Violation, Violations};
use crate::evidence::bundle::{self, Bundle, FileDigest};
use crate::evidence::events::{EventKind, EventLog};
use crate::evidence::files;
use crate::evidence::health::{ObservationHealth, ObserverCost};
use crate::evidence::ndjson::Written;
use crate::evidence::redact::Redactor;
use crate::evidence::spans::{RunSpan, SpanTree, SpanWriter};
use crate::evidence::trace::{RunStatus, RunTrace, render_summary_md, span};
use crate::kernel::tree::ProcessLife;

/// One run's (or plan's) evidence while it is recorded.
pub struct RunRecorder {
    pub bundle: Bundle,
    pub events: EventLog,
    pub redactor: Arc<Redactor>,
    pub trace: RunTrace,
    /// The run's spans, on its own `tracing` dispatcher.
    pub tree: SpanTree,
    /// The run-trace writer layer, read when the trace is written.
    writer: SpanWriter,
    /// What the contract layer found as spans closed.
    violations: Arc<Violations>,
    /// What contracts count: kernel operations, output bytes, lost events.
    pub counters: Arc<RunCounters>,
    /// What `events.ndjson`'s writer wrote, or its first write error, once the log is finished.
    events_result: Result<Option<Written>, String>,
    /// vigil's rusage when the run began.
    pub observer_start: ObserverCost,
    /// Set for a daemon's client: the profile copies are handed back (the client writes them
    /// as itself) instead of written by vigil.
    pub copies: Option<Vec<(PathBuf, Vec<u8>)>>,
}

/// The two spans every run opens at its start.
pub struct Opened {
    pub total: RunSpan,
    pub dispatch: RunSpan,
}

impl RunRecorder {
    /// Open `run.total` and `runner.dispatch` at `started_ns`, then create the bundle (an
    /// unwritable `--out` fails here, before anything runs), its empty layers and its event log.
    /// `argv` is what the trace names as the command; `env` the environment the run sees, whose
    /// profile goes into the trace and whose secret values are masked everywhere.
    pub fn create(
        spec: &RunSpec,
        out: Option<BundleDir>,
        started_ns: u64,
        argv: &[String],
        env: &[(String, String)],
    ) -> Result<(Self, Opened), SetupError> {
        let observer_start = ObserverCost::now();
        let run_id = spec.run_id.to_string();
        let counters = Arc::new(RunCounters::default());
        let violations = Arc::new(Violations::default());
        let (tree, writer) = span_tree(&spec.contracts, &counters, &violations);
        let total = tree.open_at(span::RUN_TOTAL, None, started_ns);
        let dispatch = tree.open_at(span::RUNNER_DISPATCH, Some(&total), started_ns);
        let bundle = match out {
            Some(dir) => Bundle::create_beneath(dir, &run_id)?,
            None => Bundle::create(&spec.out_dir, &run_id)?,
        };
        let copies = bundle.is_beneath().then(Vec::new);
        // Setup files are written without fsync: `reindex --repair` recreates any of them, and
        // the first fsync on a fresh directory can cost tens of ms before anything started.
        for rel in [files::KERNEL_LAYER, files::POLICY_LAYER, files::SDK_LAYER] {
            bundle.write_plain(rel, b"")?;
        }
        let path = bundle.path(files::EVENTS);
        let events =
            EventLog::create(&path, &run_id).map_err(|source| SetupError::Io { path, source })?;
        let redactor = Arc::new(Redactor::new(env));
        let trace = RunTrace::start(
            &run_id,
            started_ns,
            &redactor.redact_argv(argv),
            redactor.env_profile(env),
            profile_level_name(spec.profile.level),
            spec.fail_fast,
        );
        let rec = RunRecorder {
            bundle,
            events,
            redactor,
            trace,
            tree,
            writer,
            violations,
            counters,
            events_result: Ok(None),
            observer_start,
            copies,
        };
        Ok((rec, Opened { total, dispatch }))
    }

    /// Once every span has closed: the contracts' verdicts, as events and notes.
    pub fn settle_contracts(&mut self, spec: &RunSpec, notes: &mut Vec<String>) -> Vec<Violation> {
        settle_contracts(&mut self.events, notes, spec, &self.violations)
    }

    /// The run is over: `run_finished`, the trace's status and end, its events. The event log
    /// is finished here, so health can say what it shed.
    pub fn finish(&mut self, status: &str, reason: Option<&'static str>, exit_code: i32) {
        let ended_ns = clock::now_ns();
        self.events.emit(
            EventKind::RunFinished,
            reason,
            json!({"status": status, "exit_code": exit_code}),
        );
        self.events_result = self.events.finish().map(Some);
        self.trace.ended_at = Some(clock::rfc3339(ended_ns));
        self.trace.status = status.into();
        self.trace.exit_code = Some(exit_code);
        self.trace.run_status = RunStatus {
            state: "committed".into(),
            reason: None,
        };
        self.trace.events = self.events.take_trace_events();
    }

    /// Why `events.ndjson` is incomplete, if it is (a write failed: the disk filled). The
    /// bundle still commits — its trace holds the events' copy — and health says so.
    pub fn events_error(&self) -> Option<&str> {
        self.events_result.as_ref().err().map(String::as_str)
    }

    /// Write what `extra` adds, health and the trace, then the index (the commit barrier) over
    /// the files plus `known` digests; then the profile copies outside the bundle, whatever
    /// became of the commit (they are what an operator looks at first when something failed).
    pub fn commit(
        &mut self,
        health: &ObservationHealth,
        known: &[FileDigest],
        profile: &ProfileConfig,
        failed: bool,
        extra: impl FnOnce() -> Option<(&'static str, Vec<u8>)>,
    ) -> Result<(), String> {
        let detailed = spec_detailed(profile.level);
        let commit = (|| -> Result<(), String> {
            self.trace.spans = self.writer.with(|r| r.export(detailed, clock::now_ns()));
            let mut docs = documents(health, &self.trace)?;
            docs.extend(extra());
            self.bundle
                .write_documents(&docs)
                .map_err(|e| e.to_string())?;
            // The event log was hashed as it was written.
            let events = self.events_result.as_ref().ok().and_then(Option::as_ref);
            let known: Vec<FileDigest> = known
                .iter()
                .cloned()
                .chain(events.map(|w| w.digest(files::EVENTS)))
                .collect();
            self.bundle.commit(&known).map_err(|e| e.to_string())?;
            Ok(())
        })();
        let copies = profile_copies(profile, &mut self.trace, &self.writer, failed);
        match self.copies.as_mut() {
            Some(handed) => handed.extend(copies),
            None => {
                for (path, bytes) in copies {
                    if let Err(e) = write_copy(&path, &bytes) {
                        eprintln!("vigil: profile copy not written: {e}");
                    }
                }
            }
        }
        commit
    }
}

/// The run's documents, before the index: the trace (over its in-progress copy, whose inode
/// then holds health), health and the trace's people's version.
fn documents(
    health: &ObservationHealth,
    trace: &RunTrace,
) -> Result<Vec<(&'static str, Vec<u8>)>, String> {
    let said = |e: serde_json::Error| e.to_string();
    Ok(vec![
        (files::RUN_TRACE, bundle::pretty_json(trace).map_err(said)?),
        (files::HEALTH, bundle::pretty_json(health).map_err(said)?),
        (
            files::RUN_TRACE_SUMMARY,
            render_summary_md(trace).into_bytes(),
        ),
    ])
}

/// Once every span has closed: each violation becomes a `contract_violation` event, and the
/// notes say what was checked.
fn settle_contracts(
    events: &mut EventLog,
    notes: &mut Vec<String>,
    spec: &RunSpec,
    violations: &Violations,
) -> Vec<crate::contracts::Violation> {
    let found = violations.take();
    for v in &found {
        events.emit(
            EventKind::ContractViolation,
            None,
            serde_json::to_value(v).unwrap_or_default(),
        );
    }
    if violations.dropped() > 0 {
        notes.push(format!(
            "{} further contract violations were counted but not recorded",
            violations.dropped()
        ));
    }
    if !spec.contracts.is_empty() {
        notes.push(format!(
            "contracts: {} loaded, {} violated obligations{}",
            spec.contracts.len(),
            found.len(),
            if spec.contracts_strict {
                " (--contracts-strict)"
            } else {
                ""
            }
        ));
    }
    found
}

/// The run's spans go to its own dispatcher: the run-trace writer and the contract checker
/// consume the same stream.
fn span_tree(
    contracts: &Arc<crate::contracts::Registry>,
    counters: &Arc<RunCounters>,
    violations: &Arc<Violations>,
) -> (SpanTree, SpanWriter) {
    let writer = SpanWriter::default();
    let tree = SpanTree::new(tracing::Dispatch::new(
        tracing_subscriber::registry()
            .with(writer.clone())
            .with(ContractLayer::new(
                contracts.clone(),
                counters.clone(),
                violations.clone(),
            )),
    ));
    (tree, writer)
}

/// Copies outside the bundle (CONTRACT.md §2): at the profile level, or — for a failing run
/// with profiling off — at the `--profile-on-fail` level.
fn profile_copies(
    p: &ProfileConfig,
    trace: &mut RunTrace,
    spans: &SpanWriter,
    failed: bool,
) -> Vec<(PathBuf, Vec<u8>)> {
    let detailed = match (p.level, p.on_fail) {
        (ProfileLevel::Off, ProfileOnFail::Off) => return Vec::new(),
        (ProfileLevel::Off, on_fail) if failed => on_fail == ProfileOnFail::Detailed,
        (ProfileLevel::Off, _) => return Vec::new(),
        (level, _) => spec_detailed(level),
    };
    trace.spans = spans.with(|r| r.export(detailed, clock::now_ns()));
    let json = serde_json::to_vec_pretty(&*trace).map(|mut v| {
        v.push(b'\n');
        v
    });
    [
        (p.out.clone(), json.ok()),
        (
            p.summary_out.clone(),
            Some(render_summary_md(trace).into_bytes()),
        ),
    ]
    .into_iter()
    .filter_map(|(path, bytes)| Some((path, bytes?)))
    .collect()
}

/// Write one profile copy, creating its directory.
pub fn write_copy(path: &Path, bytes: &[u8]) -> Result<(), BundleError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::create_dir_all(dir);
    }
    bundle::write_atomic(path, bytes)
}

/// Per-process spans of the detailed profile, from the kernel's process lives: for each process
/// a `subprocess.exec` span (fork → first exec) and a `subprocess.wait` span (exec, or fork when
/// it never exec'd → exit), nested under its parent's `subprocess.wait` — the main child's for
/// its own children. `offset` is the sensor's one boot→wall conversion.
pub fn record_process_spans(
    tree: &SpanTree,
    main_wait: &RunSpan,
    lives: &[ProcessLife],
    offset: i128,
) {
    let wall = |boot: u64| clock::boot_to_wall(boot, offset);
    let mut wait_of: HashMap<u32, RunSpan> = HashMap::new();
    for life in lives {
        let parent = wait_of.get(&life.ppid).unwrap_or(main_wait);
        let start = wall(life.start_boot_ns);
        let attrs =
            json!({"pid": life.pid, "ppid": life.ppid, "comm": life.comm, "source": "kernel"});
        let run_from = match life.exec_boot_ns {
            Some(exec) => {
                let mut a = attrs.clone();
                a["exec_chain"] = json!(life.exec_chain);
                a["argv"] = json!(life.argv);
                tree.record_detail(
                    span::SUBPROCESS_EXEC,
                    Some(parent),
                    (start, wall(exec)),
                    "passed",
                    a,
                );
                wall(exec)
            }
            None => start,
        };
        let (end, status) = match (life.end_boot_ns, life.exit_code, life.signal) {
            (None, _, _) => (clock::now_ns(), "unfinished"),
            (Some(e), code, sig) => (wall(e), exit_status(code, sig)),
        };
        let mut a = attrs;
        a["exit_code"] = json!(life.exit_code);
        a["signal"] = json!(life.signal);
        a["oom_killed"] = json!(life.oom_killed);
        let span = tree.record_detail(
            span::SUBPROCESS_WAIT,
            Some(parent),
            (run_from, end),
            status,
            a,
        );
        wait_of.insert(life.pid, span);
    }
}

/// A span's status from an exit: `passed` for code 0, `failed` for another code, `killed` for
/// a signal.
pub fn exit_status(code: Option<i32>, sig: Option<i32>) -> &'static str {
    match (code, sig) {
        (Some(0), _) => "passed",
        (Some(_), _) => "failed",
        (None, Some(_)) => "killed",
        (None, None) => "unfinished",
    }
}

pub(super) fn spec_detailed(level: ProfileLevel) -> bool {
    matches!(level, ProfileLevel::Detailed | ProfileLevel::Debug)
}

fn profile_level_name(level: ProfileLevel) -> &'static str {
    match level {
        ProfileLevel::Off => "off",
        ProfileLevel::Basic => "basic",
        ProfileLevel::Detailed => "detailed",
        ProfileLevel::Debug => "debug",
    }
}
