//! What every run and plan writes the same way: the documents before the index (health, the
//! trace and its people's version), the contract verdicts once every span closed, the run's
//! span stream (run-trace writer + contract checker layers), the profile copies outside the
//! bundle, and the per-process spans of the detailed profile.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::json;
use tracing_subscriber::layer::SubscriberExt;

use super::spec::{ProfileConfig, RunSpec};
use crate::cli::{ProfileLevel, ProfileOnFail};
use crate::clock;
use crate::contracts::{ContractLayer, RunCounters, Violations};
use crate::evidence::bundle::{self, Bundle};
use crate::evidence::events::{EventKind, EventLog};
use crate::evidence::files;
use crate::evidence::health::ObservationHealth;
use crate::evidence::spans::{RunSpan, SpanTree, SpanWriter};
use crate::evidence::trace::{RunTrace, render_summary_md, span};
use crate::kernel::tree::ProcessLife;

/// The run's documents, before the index: health, the trace and its people's version.
pub fn write_documents(
    bundle: &Bundle,
    health: &ObservationHealth,
    trace: &RunTrace,
) -> Result<(), String> {
    bundle
        .write_json(files::HEALTH, health)
        .map_err(|e| e.to_string())?;
    bundle
        .write_json(files::RUN_TRACE, trace)
        .map_err(|e| e.to_string())?;
    bundle
        .write_bytes(
            files::RUN_TRACE_SUMMARY,
            render_summary_md(trace).as_bytes(),
        )
        .map_err(|e| e.to_string())
}

/// Once every span has closed: each violation becomes a `contract_violation` event, and the
/// notes say what was checked.
pub fn settle_contracts(
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
pub fn span_tree(
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
pub fn write_profile_copies(
    p: &ProfileConfig,
    trace: &mut RunTrace,
    spans: &SpanWriter,
    failed: bool,
) {
    let detailed = match (p.level, p.on_fail) {
        (ProfileLevel::Off, ProfileOnFail::Off) => return,
        (ProfileLevel::Off, on_fail) if failed => on_fail == ProfileOnFail::Detailed,
        (ProfileLevel::Off, _) => return,
        (level, _) => spec_detailed(level),
    };
    trace.spans = spans.with(|r| r.export(detailed, clock::now_ns()));
    let json = serde_json::to_vec_pretty(&*trace).map(|mut v| {
        v.push(b'\n');
        v
    });
    for (path, bytes) in [
        (&p.out, json.ok()),
        (&p.summary_out, Some(render_summary_md(trace).into_bytes())),
    ] {
        let Some(bytes) = bytes else { continue };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = std::fs::create_dir_all(dir);
        }
        if let Err(e) = bundle::write_atomic(path, &bytes) {
            eprintln!("vigil: profile copy not written: {e}");
        }
    }
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

pub fn spec_detailed(level: ProfileLevel) -> bool {
    matches!(level, ProfileLevel::Detailed | ProfileLevel::Debug)
}

pub fn profile_level_name(level: ProfileLevel) -> &'static str {
    match level {
        ProfileLevel::Off => "off",
        ProfileLevel::Basic => "basic",
        ProfileLevel::Detailed => "detailed",
        ProfileLevel::Debug => "debug",
    }
}
