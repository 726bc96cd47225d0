//! Reading bundles back: strict validation, strict reindex, and repair of an interrupted bundle.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::bundle::{self, ArtifactIndex, BundleError};
use super::events::RunnerEvent;
use super::files;
use super::ndjson::salvage_lines;

#[derive(Debug, thiserror::Error)]
pub enum BundleProblem {
    #[error("{0} is not a bundle directory")]
    NotADirectory(PathBuf),
    #[error("not committed: {0} is missing (run `vigil reindex --repair` to salvage it)")]
    NoIndex(PathBuf),
    #[error("{path} is not valid JSON: {error}")]
    Parse { path: PathBuf, error: String },
    #[error("run_status.state is \"in_progress\": the run never committed")]
    InProgress,
    #[error("{0} is listed in the index but missing")]
    Missing(String),
    #[error("{path}: sha256 {actual} does not match the index ({expected})")]
    DigestMismatch {
        path: String,
        expected: String,
        actual: String,
    },
    #[error("{path}: {actual} bytes, the index says {expected}")]
    SizeMismatch {
        path: String,
        expected: u64,
        actual: u64,
    },
    #[error("{0} is in the bundle but not in the index")]
    Unindexed(String),
    #[error("the index names run {index} but run-trace.json names {trace}")]
    RunIdMismatch { index: String, trace: String },
    #[error("committed bundle fails verification; repair only salvages interrupted bundles: {0}")]
    TamperedCommitted(String),
    #[error(transparent)]
    Write(#[from] BundleError),
    #[error("reading {path}: {error}")]
    Io { path: PathBuf, error: String },
}

fn read_json(path: &Path) -> Result<Value, BundleProblem> {
    let bytes = fs::read(path).map_err(|e| BundleProblem::Io {
        path: path.to_path_buf(),
        error: e.to_string(),
    })?;
    serde_json::from_slice(&bytes).map_err(|e| BundleProblem::Parse {
        path: path.to_path_buf(),
        error: e.to_string(),
    })
}

/// `vigil validate`: the commit barrier exists, the run is not in progress, every file's digest
/// and size match, and nothing is in the bundle that the index does not list.
pub fn validate(dir: &Path) -> Result<ArtifactIndex, Vec<BundleProblem>> {
    if !dir.is_dir() {
        return Err(vec![BundleProblem::NotADirectory(dir.to_path_buf())]);
    }
    let index_path = dir.join(files::INDEX);
    if !index_path.exists() {
        return Err(vec![BundleProblem::NoIndex(index_path)]);
    }
    let index: ArtifactIndex = match read_json(&index_path).and_then(|v| {
        serde_json::from_value(v).map_err(|e| BundleProblem::Parse {
            path: index_path.clone(),
            error: e.to_string(),
        })
    }) {
        Ok(i) => i,
        Err(p) => return Err(vec![p]),
    };
    let mut problems = compare_digests(dir, &index);
    match read_json(&dir.join(files::RUN_TRACE)) {
        Ok(trace) => {
            if trace.pointer("/run_status/state").and_then(Value::as_str) == Some("in_progress") {
                problems.push(BundleProblem::InProgress);
            }
            let trace_id = trace
                .get("run_id")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if trace_id != index.run_id {
                problems.push(BundleProblem::RunIdMismatch {
                    index: index.run_id.clone(),
                    trace: trace_id.to_string(),
                });
            }
        }
        Err(p) => problems.push(p),
    }
    if problems.is_empty() {
        Ok(index)
    } else {
        Err(problems)
    }
}

fn compare_digests(dir: &Path, index: &ArtifactIndex) -> Vec<BundleProblem> {
    let actual = match bundle::digest_files(dir) {
        Ok(a) => a,
        Err(e) => {
            return vec![BundleProblem::Io {
                path: dir.to_path_buf(),
                error: e.to_string(),
            }];
        }
    };
    let mut problems = Vec::new();
    for want in &index.files {
        match actual.iter().find(|a| a.path == want.path) {
            None => problems.push(BundleProblem::Missing(want.path.clone())),
            Some(got) if got.bytes != want.bytes => problems.push(BundleProblem::SizeMismatch {
                path: want.path.clone(),
                expected: want.bytes,
                actual: got.bytes,
            }),
            Some(got) if got.sha256 != want.sha256 => {
                problems.push(BundleProblem::DigestMismatch {
                    path: want.path.clone(),
                    expected: want.sha256.clone(),
                    actual: got.sha256.clone(),
                })
            }
            Some(_) => {}
        }
    }
    for got in &actual {
        if !index.files.iter().any(|w| w.path == got.path) {
            problems.push(BundleProblem::Unindexed(got.path.clone()));
        }
    }
    problems
}

/// `vigil reindex --strict`: recompute the index and compare; refuse anything that is not a
/// committed, intact bundle. Writes nothing.
pub fn reindex_strict(dir: &Path) -> Result<ArtifactIndex, Vec<BundleProblem>> {
    validate(dir)
}

#[derive(Debug)]
pub struct RepairReport {
    pub already_committed: bool,
    pub torn_lines_dropped: usize,
    pub reason: String,
}

/// `vigil reindex --repair`: salvage an interrupted bundle. Torn NDJSON lines are dropped,
/// missing layer files created empty, run-trace.json marked `repaired` with the reason (its
/// events rebuilt from events.ndjson), and the index recomputed with state `repaired`.
/// A committed bundle that verifies is left alone; one that does not is refused, because
/// re-indexing it would launder an alteration.
pub fn repair(dir: &Path) -> Result<RepairReport, BundleProblem> {
    if !dir.is_dir() {
        return Err(BundleProblem::NotADirectory(dir.to_path_buf()));
    }
    if dir.join(files::INDEX).exists() {
        return match validate(dir) {
            Ok(_) => Ok(RepairReport {
                already_committed: true,
                torn_lines_dropped: 0,
                reason: "already committed".into(),
            }),
            Err(problems) => {
                let only_in_progress = problems
                    .iter()
                    .all(|p| matches!(p, BundleProblem::InProgress));
                if only_in_progress {
                    repair_interrupted(dir)
                } else {
                    Err(BundleProblem::TamperedCommitted(
                        problems
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join("; "),
                    ))
                }
            }
        };
    }
    repair_interrupted(dir)
}

fn repair_interrupted(dir: &Path) -> Result<RepairReport, BundleProblem> {
    let mut dropped = 0;
    for rel in files::NDJSON {
        let path = dir.join(rel);
        match fs::read(&path) {
            Ok(bytes) => {
                let (kept, n) = salvage_lines(&bytes);
                if n > 0 {
                    bundle::write_atomic(&path, &kept)?;
                    dropped += n;
                }
            }
            Err(_) => {
                if let Some(parent) = path.parent() {
                    let _ = fs::create_dir_all(parent);
                }
                bundle::write_atomic(&path, b"")?;
            }
        }
    }
    for rel in [files::STDOUT, files::STDERR] {
        let path = dir.join(rel);
        if !path.exists() {
            // vigil may have died before it created output/ at all.
            if let Some(parent) = path.parent() {
                let _ = fs::create_dir_all(parent);
            }
            bundle::write_atomic(&path, b"")?;
        }
    }
    let events = read_events(&dir.join(files::EVENTS));
    let run_id = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut trace = read_json(&dir.join(files::RUN_TRACE)).unwrap_or_else(|_| {
        serde_json::json!({
            "schema": super::schema::RUN_TRACE, "version": 1, "run_id": run_id,
            "runner_impl": "vigil-rust", "started_at": events.first().map_or_else(|| dir_time(dir), |e| e.ts.clone()),
            "command": "", "args": [], "env_profile": {"hash": "hmac-sha256-128", "key_scope": "run", "variables": {}},
            "spans": [], "summary": {"fail_fast_enabled": true, "first_failure_step": null,
            "aborted_after_step": null, "skipped_step_count": 0, "steps": []}
        })
    });
    let reason = format!(
        "vigil exited before commit; salvaged by reindex --repair ({} events kept, {} torn lines dropped)",
        events.len(),
        dropped
    );
    if let Some(obj) = trace.as_object_mut() {
        let trace_kinds = [
            "heartbeat",
            "stall_warning",
            "watchdog",
            "subprocess_state",
            "checkpoint",
        ];
        let kept: Vec<&RunnerEvent> = events
            .iter()
            .filter(|e| trace_kinds.contains(&e.kind.as_str()))
            .collect();
        obj.insert(
            "events".into(),
            serde_json::to_value(kept).unwrap_or_default(),
        );
        obj.insert("status".into(), "interrupted".into());
        obj.insert("exit_code".into(), Value::Null);
        obj.insert(
            "ended_at".into(),
            events
                .last()
                .map(|e| Value::from(e.ts.clone()))
                .unwrap_or(Value::Null),
        );
        obj.insert(
            "run_status".into(),
            serde_json::json!({"state": "repaired", "reason": reason}),
        );
    }
    let run_id = trace
        .get("run_id")
        .and_then(Value::as_str)
        .unwrap_or(&run_id)
        .to_string();
    let mut bytes = serde_json::to_vec_pretty(&trace).map_err(|e| BundleProblem::Io {
        path: dir.join(files::RUN_TRACE),
        error: e.to_string(),
    })?;
    bytes.push(b'\n');
    bundle::write_atomic(&dir.join(files::RUN_TRACE), &bytes)?;
    if !dir.join(files::HEALTH).exists() {
        let health = serde_json::json!({
            "schema": super::schema::OBSERVATION_HEALTH, "run_id": run_id,
            "kernel_layer": "absent", "cgroup_correlation": "absent", "policy_layer": "absent",
            "policy_mechanisms": [], "sdk_layer": "absent", "process_tree_source": "procfs",
            "process_tree_sample_ms": 0,
            "lost_events": {"kernel_ring_buffer": 0, "kernel_ring_buffer_by_kind": {}, "reader": 0, "queues": 0, "trace_shed": 0},
            "probes": {}, "cgroup": null, "output": {},
            "notes": ["reconstructed by reindex --repair: the run's own health record was never written, so nothing is claimed"]
        });
        let mut b = serde_json::to_vec_pretty(&health).unwrap_or_default();
        b.push(b'\n');
        bundle::write_atomic(&dir.join(files::HEALTH), &b)?;
    }
    bundle::write_index(dir, &run_id, "repaired")?;
    Ok(RepairReport {
        already_committed: false,
        torn_lines_dropped: dropped,
        reason,
    })
}

/// Parse events.ndjson, skipping lines that do not parse.
pub fn read_events(path: &Path) -> Vec<RunnerEvent> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// When the bundle directory was last changed: the best start time a repair can claim when the
/// run died before recording one.
fn dir_time(dir: &Path) -> String {
    let ns = fs::metadata(dir)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(0));
    crate::clock::rfc3339(ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every prefix of bundle creation that a SIGKILL can leave behind must be repairable.
    #[test]
    fn repair_salvages_every_partial_layout() {
        let layouts: [&[&str]; 4] = [&[], &["layers"], &["layers", "output"], &["output"]];
        for (i, subdirs) in layouts.iter().enumerate() {
            let out = tempfile::tempdir().expect("tempdir");
            let dir = out.path().join(format!("r{i}"));
            fs::create_dir(&dir).expect("mkdir");
            for sub in *subdirs {
                fs::create_dir(dir.join(sub)).expect("mkdir sub");
            }
            fs::write(dir.join(files::EVENTS), b"{\"kind\":\"x\"}\n{\"kind\":").expect("events");
            let report = repair(&dir).unwrap_or_else(|e| panic!("layout {subdirs:?}: {e}"));
            assert_eq!(report.torn_lines_dropped, 1);
            validate(&dir)
                .unwrap_or_else(|p| panic!("layout {subdirs:?} not valid after repair: {p:?}"));
            let trace: Value =
                serde_json::from_slice(&fs::read(dir.join(files::RUN_TRACE)).expect("trace"))
                    .expect("json");
            assert_eq!(trace["run_status"]["state"], "repaired");
            assert!(
                trace["started_at"].is_string(),
                "started_at must never be null"
            );
        }
    }
}
