//! Reading bundles back: strict validation, strict reindex, and repair of an interrupted bundle.
//! A bundle is untrusted input: every file is read and written beneath its directory fd
//! ([`BundleDir`]), links are refused, never followed, and what is read is bounded.

use std::path::{Path, PathBuf};

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::beneath::{BundleDir, MAX_DOCUMENT, MAX_FILES, Refused};
use super::bundle::{ArtifactIndex, BundleError, FileDigest, is_temporary};
use super::events::RunnerEvent;
use super::files;
use super::ndjson::salvage_lines;

#[derive(Debug, thiserror::Error)]
pub enum BundleProblem {
    #[error("not committed: {0} is missing (run `vigil reindex --repair` to salvage it)")]
    NoIndex(PathBuf),
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
    #[error("refused: {0}")]
    Refused(#[from] Refused),
    #[error("the index lists {0} files; vigil reads at most {MAX_FILES}")]
    IndexTooLarge(usize),
}

/// `vigil validate`: the commit barrier exists, the run is not in progress, every file's digest
/// and size match, and nothing is in the bundle that the index does not list (links, FIFOs and
/// devices are refused by name, never opened).
pub fn validate(dir: &Path) -> Result<ArtifactIndex, Vec<BundleProblem>> {
    let b = BundleDir::open(dir).map_err(|r| vec![r.into()])?;
    validate_dir(&b)
}

fn validate_dir(b: &BundleDir) -> Result<ArtifactIndex, Vec<BundleProblem>> {
    let index: ArtifactIndex = match b.read_json(files::INDEX) {
        Ok(i) => i,
        Err(r) if r.is_missing() => {
            return Err(vec![BundleProblem::NoIndex(b.path().join(files::INDEX))]);
        }
        Err(r) => return Err(vec![r.into()]),
    };
    if index.files.len() > MAX_FILES {
        return Err(vec![BundleProblem::IndexTooLarge(index.files.len())]);
    }
    let mut problems = compare_digests(b, &index);
    match b.read_json::<Value>(files::RUN_TRACE) {
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
        Err(r) => problems.push(r.into()),
    }
    if problems.is_empty() {
        Ok(index)
    } else {
        Err(problems)
    }
}

/// sha256 and size of one regular file beneath the bundle, streamed.
fn digest(b: &BundleDir, rel: &str) -> Result<FileDigest, Refused> {
    let mut file = b.open_file(rel)?;
    let mut hasher = Sha256::new();
    let bytes = std::io::copy(&mut file, &mut hasher).map_err(|e| Refused::Io {
        path: rel.to_string(),
        error: e.to_string(),
    })?;
    Ok(FileDigest {
        path: rel.to_string(),
        sha256: hex::encode(hasher.finalize()),
        bytes,
    })
}

fn compare_digests(b: &BundleDir, index: &ArtifactIndex) -> Vec<BundleProblem> {
    let (present, refused) = match b.walk() {
        Ok(w) => w,
        Err(r) => return vec![r.into()],
    };
    let mut problems: Vec<BundleProblem> = refused.into_iter().map(Into::into).collect();
    for want in &index.files {
        if !present.contains(&want.path) {
            // Named by the index but not a plain file of the bundle: a bad path (`..`), a
            // link or a FIFO is said as such; a file that is simply gone is missing.
            match b.open_file(&want.path) {
                Err(r) if !r.is_missing() => {
                    if !problems
                        .iter()
                        .any(|p| matches!(p, BundleProblem::Refused(x) if *x == r))
                    {
                        problems.push(r.into());
                    }
                }
                _ => problems.push(BundleProblem::Missing(want.path.clone())),
            }
            continue;
        }
        match digest(b, &want.path) {
            Err(r) => problems.push(r.into()),
            Ok(got) if got.bytes != want.bytes => problems.push(BundleProblem::SizeMismatch {
                path: want.path.clone(),
                expected: want.bytes,
                actual: got.bytes,
            }),
            Ok(got) if got.sha256 != want.sha256 => problems.push(BundleProblem::DigestMismatch {
                path: want.path.clone(),
                expected: want.sha256.clone(),
                actual: got.sha256,
            }),
            Ok(_) => {}
        }
    }
    for got in &present {
        if got != files::INDEX && !is_temporary(got) && !index.files.iter().any(|w| &w.path == got)
        {
            problems.push(BundleProblem::Unindexed(got.clone()));
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
    let b = BundleDir::open(dir)?;
    match b.open_file(files::INDEX) {
        Err(r) if r.is_missing() => repair_interrupted(&b),
        Err(r) => Err(r.into()),
        Ok(_) => match validate_dir(&b) {
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
                    repair_interrupted(&b)
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
        },
    }
}

/// Create `rel` empty beneath the bundle when it is missing (with its directory).
fn ensure_empty(b: &BundleDir, rel: &str) -> Result<(), BundleProblem> {
    match b.open_file(rel) {
        Ok(_) => Ok(()),
        Err(r) if r.is_missing() => {
            if let Some((parent, _)) = rel.rsplit_once('/') {
                b.ensure_dir(parent)?;
            }
            Ok(b.write_atomic(rel, b"")?)
        }
        Err(r) => Err(r.into()),
    }
}

fn json_bytes(b: &BundleDir, rel: &str, v: &Value) -> Result<Vec<u8>, BundleProblem> {
    let mut bytes = serde_json::to_vec_pretty(v).map_err(|e| BundleProblem::Io {
        path: b.path().join(rel),
        error: e.to_string(),
    })?;
    bytes.push(b'\n');
    Ok(bytes)
}

fn repair_interrupted(b: &BundleDir) -> Result<RepairReport, BundleProblem> {
    // A bundle holding links, FIFOs or devices is not salvaged: what it would index is not
    // what vigil wrote.
    let (_, refused) = b.walk()?;
    if let Some(r) = refused.into_iter().next() {
        return Err(r.into());
    }
    // The commit reserve of a run that died before its commit: give the room back.
    b.remove(super::space::RESERVE_NAME)?;
    let mut dropped = 0;
    for rel in files::NDJSON {
        match b.read(rel, MAX_DOCUMENT) {
            Ok(bytes) => {
                let (kept, n) = salvage_lines(&bytes);
                if n > 0 {
                    b.write_atomic(rel, &kept)?;
                    dropped += n;
                }
            }
            Err(r) if r.is_missing() => ensure_empty(b, rel)?,
            Err(r) => return Err(r.into()),
        }
    }
    // vigil may have died before it created output/ at all.
    for rel in [files::STDOUT, files::STDERR] {
        ensure_empty(b, rel)?;
    }
    let events = read_events(b);
    let dir = b.path();
    let run_id = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut trace = b.read_json::<Value>(files::RUN_TRACE).unwrap_or_else(|_| {
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
    b.write_atomic(files::RUN_TRACE, &json_bytes(b, files::RUN_TRACE, &trace)?)?;
    if b.open_file(files::HEALTH).is_err() {
        // Who ran it, as its run_started event said (a bundle of old carries none).
        let mode = events
            .iter()
            .find(|e| e.kind == "run_started")
            .and_then(|e| e.data.get("mode")?.as_str().map(String::from))
            .unwrap_or_else(|| "standalone".into());
        let health = serde_json::json!({
            "schema": super::schema::OBSERVATION_HEALTH, "run_id": run_id, "mode": mode,
            "kernel_layer": "absent", "cgroup_correlation": "absent", "policy_layer": "absent",
            "policy_mechanisms": [], "sdk_layer": "absent", "process_tree_source": "procfs",
            "process_tree_sample_ms": 0,
            "lost_events": {"kernel_ring_buffer": 0, "kernel_ring_buffer_by_kind": {}, "reader": 0, "queues": 0, "trace_shed": 0},
            "probes": {}, "cgroup": null, "output": {},
            "notes": ["reconstructed by reindex --repair: the run's own health record was never written, so nothing is claimed"]
        });
        b.write_atomic(files::HEALTH, &json_bytes(b, files::HEALTH, &health)?)?;
    }
    write_index(b, &run_id)?;
    Ok(RepairReport {
        already_committed: false,
        torn_lines_dropped: dropped,
        reason,
    })
}

/// The index of a repaired bundle, over what is beneath it now.
fn write_index(b: &BundleDir, run_id: &str) -> Result<(), BundleProblem> {
    let (present, refused) = b.walk()?;
    if let Some(r) = refused.into_iter().next() {
        return Err(r.into());
    }
    let files = present
        .iter()
        .filter(|rel| rel.as_str() != files::INDEX && !is_temporary(rel))
        .map(|rel| digest(b, rel))
        .collect::<Result<Vec<_>, _>>()?;
    let index = ArtifactIndex {
        schema: super::schema::ARTIFACT_INDEX.to_string(),
        run_id: run_id.to_string(),
        created_at: crate::clock::rfc3339(crate::clock::now_ns()),
        state: "repaired".into(),
        files,
    };
    let value = serde_json::to_value(&index).map_err(|e| BundleProblem::Io {
        path: b.path().join(files::INDEX),
        error: e.to_string(),
    })?;
    b.write_atomic(files::INDEX, &json_bytes(b, files::INDEX, &value)?)?;
    Ok(())
}

/// Parse events.ndjson (bounded), skipping lines that do not parse.
pub fn read_events(b: &BundleDir) -> Vec<RunnerEvent> {
    b.read(files::EVENTS, MAX_DOCUMENT)
        .map(|bytes| {
            String::from_utf8_lossy(&bytes)
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// When the bundle directory was last changed: the best start time a repair can claim when the
/// run died before recording one.
fn dir_time(dir: &Path) -> String {
    let ns = std::fs::symlink_metadata(dir)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(0));
    crate::clock::rfc3339(ns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

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
