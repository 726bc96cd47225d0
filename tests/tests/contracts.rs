//! Run contracts end to end: real runs whose spans close under contracts loaded from YAML.
//! Each test fails when the mechanism is broken — a check that never runs, a count that is
//! never fed, a budget that never becomes a timeout, a malformed file that is skipped.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use vigil_e2e::*;

fn contracts_dir(yaml: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("run.yaml"), yaml).expect("write contracts");
    dir
}

fn violations(trace: &Value) -> Vec<(String, String, Value)> {
    trace["summary"]["contract_violations"]
        .as_array()
        .expect("summary.contract_violations")
        .iter()
        .map(|v| {
            (
                v["contract"].as_str().unwrap_or_default().to_string(),
                v["obligation"].as_str().unwrap_or_default().to_string(),
                v["observed"].clone(),
            )
        })
        .collect()
}

fn run_under(dir: &Path, id: &str, extra: &[&str], cmd: &[&str]) -> (Finished, tempfile::TempDir) {
    VigilRun::new(id)
        .args([std::ffi::OsStr::new("--contracts"), dir.as_os_str()])
        .args(extra)
        .args(["--"])
        .args(cmd)
        .run()
}

#[test]
fn violated_duration_and_exit_code_are_reported_and_strict_fails_the_run() {
    let dir = contracts_dir(
        "contracts:\n  - id: quick\n    span: check.execute\n    postconditions: [\"duration_ms <= 100\"]\n  - id: green\n    span: check.execute\n    postconditions: [\"exit_code == 0\"]\n",
    );
    // Duration: the command takes 400 ms and exits 0.
    let (slow, _o1) = run_under(dir.path(), "c-slow", &[], &["sleep", "0.4"]);
    assert_eq!(slow.code(), 0, "not strict: the run keeps its code");
    let v = violations(&slow.trace());
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!(
        (v[0].0.as_str(), v[0].1.as_str()),
        ("quick", "duration_ms <= 100")
    );
    let observed: u64 = v[0]
        .2
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("observed");
    assert!((400..5000).contains(&observed), "observed {observed} ms");
    let events = slow.events();
    let found = events_of(&events, "contract_violation");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["data"]["span"], "check.execute");
    assert!(
        slow.trace()["events"]
            .as_array()
            .expect("events")
            .iter()
            .any(|e| e["kind"] == "contract_violation"),
        "the violation is in the run trace's events too"
    );
    assert!(
        std::fs::read_to_string(slow.bundle.join("run-trace-summary.md"))
            .expect("summary md")
            .contains("duration_ms <= 100"),
        "the people's summary names the broken obligation"
    );
    assert_valid_bundle(&slow.bundle);
    let inspect = vigil_ok(&["inspect".as_ref(), slow.bundle.as_os_str()]);
    assert!(
        String::from_utf8_lossy(&inspect.stdout)
            .contains("contract violations:\n  quick on check.execute: `duration_ms <= 100`"),
        "{}",
        String::from_utf8_lossy(&inspect.stdout)
    );

    // Exit code, strict: the command's own failure code stands.
    let (failing, _o2) = run_under(
        dir.path(),
        "c-exit",
        &["--contracts-strict"],
        &["sh", "-c", "exit 3"],
    );
    assert_eq!(failing.code(), 3);
    assert_eq!(
        violations(&failing.trace()),
        [(
            "green".to_string(),
            "exit_code == 0".to_string(),
            Value::from("3")
        )]
    );

    // Strict, command succeeded, duration broken: the run fails with exit 3.
    let (strict, _o3) = run_under(
        dir.path(),
        "c-strict",
        &["--contracts-strict"],
        &["sleep", "0.4"],
    );
    assert_eq!(strict.code(), 3, "{}", strict.stderr());
    assert!(
        strict.stderr().contains("--contracts-strict"),
        "{}",
        strict.stderr()
    );
    let t = strict.trace();
    assert_eq!(t["status"], "failed");
    assert_eq!(t["summary"]["steps"][0]["status"], "failed");
    assert_valid_bundle(&strict.bundle);
}

#[test]
fn a_satisfied_contract_produces_no_violation() {
    let dir = contracts_dir(
        "contracts:\n  - id: sane\n    span: check.execute\n    postconditions: [\"exit_code == 0\", \"signal == null\", \"duration_ms <= 60000\", \"process.exec.count >= 1\", \"output_bytes >= 6\", \"lost_events == 0\"]\n  - id: whole-run\n    span: run.total\n    postconditions: [\"status == passed\", \"process.exec.count >= 1\"]\n",
    );
    let (ok, _o) = run_under(
        dir.path(),
        "c-sane",
        &["--contracts-strict"],
        &["echo", "hello"],
    );
    assert_eq!(ok.code(), 0, "{}", ok.stderr());
    assert_eq!(violations(&ok.trace()), []);
    assert!(events_of(&ok.events(), "contract_violation").is_empty());
    let notes = ok.health()["notes"].to_string();
    assert!(notes.contains("contracts: 2 loaded, 0 violated"), "{notes}");
}

#[test]
fn a_budget_from_yaml_becomes_the_step_timeout_and_fires() {
    let dir =
        contracts_dir("contracts:\n  - id: bounded\n    span: check.execute\n    budget_ms: 300\n");
    let (run, _o) = run_under(
        dir.path(),
        "c-budget",
        &["--liveness-kill-grace-ms", "500"],
        &["sleep", "30"],
    );
    assert_eq!(run.code(), 124, "{}", run.stderr());
    assert!(run.elapsed < Duration::from_secs(10), "{:?}", run.elapsed);
    let t = run.trace();
    assert_eq!(
        t["summary"]["steps"][0]["reason"],
        "timeout.subprocess.wait"
    );
    assert_eq!(t["summary"]["steps"][0]["status"], "timed_out");
    let notes = run.health()["notes"].to_string();
    assert!(
        notes.contains("step timeout 300 ms (contract budget for `check.execute`)"),
        "{notes}"
    );
    let v = violations(&t);
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!(
        v[0].1, "duration_ms <= 300",
        "the budget is an obligation too"
    );

    // A --timeout on the command line wins over the budget.
    let (flag, _o2) = run_under(
        dir.path(),
        "c-flag",
        &["--timeout", "5s"],
        &["sleep", "0.6"],
    );
    assert_eq!(flag.code(), 0, "{}", flag.stderr());
    assert!(
        flag.health()["notes"]
            .to_string()
            .contains("step timeout 5000 ms (--timeout)")
    );
}

#[test]
fn a_kernel_count_contract_catches_a_real_forbidden_exec() {
    let dir = contracts_dir(
        "contracts:\n  - id: no-subprocesses\n    span: check.execute\n    postconditions: [\"process.exec.count <= 1\"]\n",
    );
    // Allowed: the command is the only exec.
    let (single, _o1) = run_under(dir.path(), "c-one", &[], &["true"]);
    assert_eq!(single.code(), 0);
    assert_eq!(single.health()["kernel_layer"], "observed");
    assert_eq!(violations(&single.trace()), []);

    // Forbidden: the shell runs two more programs.
    let (shell, _o2) = run_under(
        dir.path(),
        "c-exec",
        &["--contracts-strict"],
        &["sh", "-c", "/bin/true; /bin/true"],
    );
    assert_eq!(shell.code(), 3, "{}", shell.stderr());
    let execs = read_ndjson(&shell.bundle.join("layers/kernel.ndjson"))
        .iter()
        .filter(|e| e["kind"] == "process.exec")
        .count();
    assert_eq!(execs, 3, "sh and two /bin/true");
    assert_eq!(
        violations(&shell.trace()),
        [(
            "no-subprocesses".to_string(),
            "process.exec.count <= 1".to_string(),
            Value::from(execs.to_string())
        )]
    );
}

#[test]
fn a_malformed_contract_is_refused_with_its_location_and_nothing_starts() {
    let dir = contracts_dir(
        "contracts:\n  - id: typo\n    span: check.execute\n    postconditions: [\"exit_code == 0\", \"process.exe.count <= 1\"]\n",
    );
    let marker = dir.path().join("started");
    let (bad, _o) = run_under(
        dir.path(),
        "c-bad",
        &[],
        &["touch", marker.to_str().expect("utf-8 path")],
    );
    assert_eq!(bad.code(), 2);
    let err = bad.stderr();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("run.yaml:4:40: `process.exe.count <= 1`: unknown kernel count"),
        "{err}"
    );
    assert!(!marker.exists(), "the command must not run");
    assert!(
        !bad.bundle.exists(),
        "no bundle for a run that never started"
    );
}

#[test]
fn the_shipped_contracts_load_and_hold_for_a_clean_run() {
    let dir = repo_root().join("policies/contracts");
    let (ok, _o) = run_under(&dir, "c-shipped", &["--contracts-strict"], &["true"]);
    assert_eq!(ok.code(), 0, "{}", ok.stderr());
    assert_eq!(violations(&ok.trace()), []);
    let notes = ok.health()["notes"].to_string();
    assert!(notes.contains("contracts: "), "{notes}");
    assert!(!notes.contains("contracts: 0 loaded"), "{notes}");
}
