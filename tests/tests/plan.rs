//! Plans end to end: real gates of real steps — a failing step under fail-fast and under
//! --continue-on-fail, step, harness and chain timeouts, and triage of a real pytest run with a
//! flaky and a really failing test.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use vigil_e2e::*;

fn plan_run(
    id: &str,
    plan: &str,
    extra: &[&str],
) -> (Finished, tempfile::TempDir, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("plan dir");
    let file = dir.path().join("gate.yaml");
    std::fs::write(&file, plan).expect("write plan");
    let (f, out) = VigilRun::new(id)
        .args([std::ffi::OsStr::new("--plan"), file.as_os_str()])
        .args(extra)
        .run();
    (f, out, dir)
}

fn steps(trace: &Value) -> Vec<Value> {
    trace["summary"]["steps"].as_array().expect("steps").clone()
}

fn row<'a>(steps: &'a [Value], name: &str) -> &'a Value {
    steps
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no step {name} in {steps:?}"))
}

const FOUR_STEPS: &str = "steps:\n  - name: lint\n    command: [\"true\"]\n  - name: unit\n    command: \"echo unit-ran; exit 3\"\n  - name: integ\n    command: [\"true\"]\n    depends_on: [unit]\n  - name: docs\n    command: [\"sh\", \"-c\", \"echo docs-ran\"]\n";

#[test]
fn a_four_step_gate_with_a_failing_step_fails_fast() {
    let (gate, out, _dir) = plan_run("gate-ff", FOUR_STEPS, &[]);
    assert_eq!(
        gate.code(),
        3,
        "the first failing step's code: {}",
        gate.stderr()
    );
    let t = gate.trace();
    assert_eq!(t["status"], "failed");
    let s = &t["summary"];
    assert_eq!(s["fail_fast_enabled"], true);
    assert_eq!(s["first_failure_step"], "unit");
    assert_eq!(s["aborted_after_step"], "unit");
    assert_eq!(s["skipped_step_count"], 2);
    let rows = steps(&t);
    assert_eq!(row(&rows, "lint")["status"], "passed");
    assert_eq!(row(&rows, "unit")["status"], "failed");
    assert_eq!(row(&rows, "unit")["exit_code"], 3);
    for later in ["integ", "docs"] {
        assert_eq!(row(&rows, later)["status"], "skipped");
        assert_eq!(row(&rows, later)["skip_reason"], "fail_fast");
        assert_eq!(row(&rows, later)["blocked_by"], "unit");
    }
    // The steps really ran (or did not): their own bundles and output.
    let unit_out = gate.bundle.join("steps/02-unit/output/stdout.log");
    assert_eq!(
        std::fs::read_to_string(unit_out).expect("unit output"),
        "unit-ran\n"
    );
    assert!(
        !gate.bundle.join("steps/04-docs").exists(),
        "docs must not run"
    );
    // Spans: one case.run per step, check.execute for the steps that ran.
    let names: Vec<&str> = t["spans"]
        .as_array()
        .expect("spans")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(
        names.iter().filter(|n| **n == "case.run").count(),
        4,
        "{names:?}"
    );
    assert_valid_bundle(&gate.bundle);
    assert_valid_bundle(&gate.bundle.join("steps/01-lint"));
    // Profile off, --profile-on-fail basic (the default): a failing gate still leaves its trace
    // and summary at the profile paths (relative to vigil's working directory, the out dir).
    let copy = read_json(&out.path().join(".artifacts/run-trace.json"));
    assert_eq!(copy["summary"]["first_failure_step"], "unit");
    assert!(out.path().join(".artifacts/run-trace-summary.md").is_file());
}

#[test]
fn continue_on_fail_runs_the_rest_but_not_what_depends_on_the_failure() {
    let (gate, _out, _dir) = plan_run("gate-cont", FOUR_STEPS, &["--continue-on-fail"]);
    assert_eq!(gate.code(), 3, "{}", gate.stderr());
    let t = gate.trace();
    let s = &t["summary"];
    assert_eq!(s["fail_fast_enabled"], false);
    assert_eq!(s["first_failure_step"], "unit");
    assert_eq!(s["aborted_after_step"], Value::Null);
    assert_eq!(s["skipped_step_count"], 1);
    let rows = steps(&t);
    assert_eq!(row(&rows, "integ")["skip_reason"], "dependency_failed");
    assert_eq!(row(&rows, "integ")["blocked_by"], "unit");
    assert_eq!(row(&rows, "docs")["status"], "passed");
    let docs_out = gate.bundle.join("steps/04-docs/output/stdout.log");
    assert_eq!(
        std::fs::read_to_string(docs_out).expect("docs output"),
        "docs-ran\n"
    );
    assert_valid_bundle(&gate.bundle);

    // Every step passing: exit 0 — the plan written as JSON this time, checked against its
    // schema.
    let green = serde_json::json!({"version": 1, "steps": [
        {"name": "lint", "command": ["true"]},
        {"name": "unit", "command": "echo unit-ran; exit 0", "env": {"A": "1"}},
        {"name": "integ", "command": ["true"], "depends_on": ["unit"], "timeout": "1m"},
    ]});
    assert_matches_schema("plan.v1.json", &green);
    let (ok, ok_out, _d) = plan_run("gate-green", &green.to_string(), &[]);
    assert_eq!(ok.code(), 0, "{}", ok.stderr());
    assert_eq!(ok.trace()["summary"]["first_failure_step"], Value::Null);
    assert!(
        !ok_out.path().join(".artifacts/run-trace.json").exists(),
        "a passing gate with profiling off writes no copies"
    );
}

#[test]
fn a_step_timeout_ends_the_step_and_the_gate_with_124() {
    let plan = "steps:\n  - name: hangs\n    command: [\"sleep\", \"30\"]\n    timeout: 300ms\n  - name: after\n    command: [\"true\"]\n";
    let (gate, _out, _dir) = plan_run("gate-step-to", plan, &["--liveness-kill-grace-ms", "500"]);
    assert_eq!(gate.code(), 124, "{}", gate.stderr());
    assert!(gate.elapsed < Duration::from_secs(15), "{:?}", gate.elapsed);
    let rows = steps(&gate.trace());
    let hang = row(&rows, "hangs");
    assert_eq!(hang["status"], "timed_out");
    assert_eq!(hang["reason"], "timeout.subprocess.wait");
    assert!(hang["duration_ms"].as_u64().expect("ms") < 5_000);
    assert_eq!(row(&rows, "after")["skip_reason"], "fail_fast");
}

#[test]
fn chain_and_harness_timeouts_have_their_own_tokens() {
    let chain = "timeout: 3s\nsteps:\n  - name: quick\n    command: [\"sleep\", \"0.2\"]\n  - name: slow\n    command: [\"sleep\", \"30\"]\n  - name: never\n    command: [\"true\"]\n";
    let (gate, _out, _dir) = plan_run(
        "gate-chain",
        chain,
        &["--continue-on-fail", "--liveness-kill-grace-ms", "500"],
    );
    assert_eq!(gate.code(), 124, "{}", gate.stderr());
    assert!(gate.elapsed < Duration::from_secs(15), "{:?}", gate.elapsed);
    let t = gate.trace();
    let rows = steps(&t);
    assert_eq!(row(&rows, "quick")["status"], "passed");
    assert_eq!(row(&rows, "slow")["status"], "timed_out");
    assert_eq!(row(&rows, "slow")["reason"], "timeout.case.chain");
    let never = row(&rows, "never");
    assert_eq!(
        never["skip_reason"], "chain_timeout",
        "even when continuing"
    );
    assert_eq!(never["blocked_by"], "slow");
    assert_eq!(t["summary"]["aborted_after_step"], "slow");

    let harness = "steps:\n  - name: db\n    command: [\"true\"]\n    setup: \"sleep 30\"\n    harness_timeout: 300ms\n";
    let (h, _o2, _d2) = plan_run(
        "gate-harness",
        harness,
        &["--liveness-kill-grace-ms", "500"],
    );
    assert_eq!(h.code(), 124, "{}", h.stderr());
    let rows = steps(&h.trace());
    assert_eq!(row(&rows, "db")["status"], "timed_out");
    assert_eq!(row(&rows, "db")["reason"], "timeout.case.harness");
    assert!(
        !h.bundle.join("steps/01-db").exists(),
        "the step's command does not run after its setup failed"
    );
    assert!(h.bundle.join("steps/01-db-setup").exists());
}

#[test]
fn a_malformed_plan_is_refused_with_its_location_and_nothing_runs() {
    let (bad, _out, _dir) = plan_run(
        "gate-bad",
        "steps:\n  - name: a\n    command: [\"true\"]\n    timeout: 5 parsecs\n",
        &[],
    );
    assert_eq!(bad.code(), 2);
    let err = bad.stderr();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("gate.yaml:4:14: `timeout` is `5 parsecs`"),
        "{err}"
    );
    assert!(!bad.bundle.exists());
}

/// A pytest project: one test fails on its first run only (flaky), one always fails.
fn pytest_project(dir: &Path, flaky_only: bool) {
    let tests = dir.join("tests");
    std::fs::create_dir_all(&tests).expect("tests dir");
    let mut src = String::from(
        "import os\n\nMARK = os.path.join(os.path.dirname(__file__), '..', 'flaky.mark')\n\n\ndef test_ok():\n    assert True\n\n\ndef test_flaky():\n    if not os.path.exists(MARK):\n        open(MARK, 'w').close()\n        assert False, 'first run fails'\n",
    );
    if !flaky_only {
        src.push_str("\n\nclass TestReal:\n    def test_broken(self):\n        assert 1 == 2\n");
    }
    std::fs::write(tests.join("test_gate.py"), src).expect("test file");
}

fn pytest_plan(extra: &str) -> String {
    format!(
        "steps:\n  - name: unit\n    command: [\"python3\", \"-m\", \"pytest\", \"-q\", \"-p\", \"no:cacheprovider\", \"--junitxml=junit.xml\", \"tests\"]\n    governance: true\n    junit: junit.xml\n    triage: [\"python3\", \"-m\", \"pytest\", \"-q\", \"-p\", \"no:cacheprovider\", \"--junitxml=junit.xml\", \"{{ids}}\"]\n    cwd: .\n{extra}"
    )
}

fn require_pytest() {
    let ok = std::process::Command::new("python3")
        .args(["-m", "pytest", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "pytest is required (.ci/run installs it: python3 -m pip install pytest)"
    );
}

#[test]
fn triage_of_a_real_pytest_run_tells_flaky_from_real_failures() {
    require_pytest();
    let dir = tempfile::tempdir().expect("project");
    pytest_project(dir.path(), false);
    let file = dir.path().join("gate.yaml");
    std::fs::write(&file, pytest_plan("")).expect("plan");
    let (gate, _out) = VigilRun::new("gate-pytest")
        .args([std::ffi::OsStr::new("--plan"), file.as_os_str()])
        .run();
    assert_eq!(gate.code(), 1, "pytest's own code: {}", gate.stderr());
    let rows = steps(&gate.trace());
    let unit = row(&rows, "unit");
    assert_eq!(unit["status"], "failed");
    assert_eq!(unit["triage_attempted"], true);
    assert_eq!(unit["triage_mode"], "targeted");
    assert_eq!(
        unit["failing_check_ids"],
        serde_json::json!([
            "tests/test_gate.py::test_flaky",
            "tests/test_gate.py::TestReal::test_broken"
        ])
    );
    assert_eq!(
        unit["failing_check_prefixes"],
        serde_json::json!(["tests/test_gate.py"])
    );
    assert_eq!(
        unit["triage_checks"],
        serde_json::json!([
            {"id": "tests/test_gate.py::test_flaky", "result": "pass"},
            {"id": "tests/test_gate.py::TestReal::test_broken", "result": "fail"}
        ]),
        "the flaky test passes on the rerun, the real failure fails again"
    );
    assert_eq!(unit["triage_result"], "fail", "a real failure remains");
    assert_eq!(unit["stall_detected"], false);
    // The targeted rerun ran only the failing checks.
    let rerun = gate
        .bundle
        .join("steps/01-unit-triage-targeted/output/stdout.log");
    let text = std::fs::read_to_string(rerun).expect("rerun output");
    assert!(text.contains("1 failed, 1 passed"), "{text}");
    assert_valid_bundle(&gate.bundle);
    let inspect = vigil_ok(&["inspect".as_ref(), gate.bundle.as_os_str()]);
    let shown = String::from_utf8_lossy(&inspect.stdout);
    assert!(
        shown.contains("triage targeted → fail; checks: tests/test_gate.py::test_flaky pass"),
        "{shown}"
    );
}

#[test]
fn triage_of_only_a_flaky_failure_says_pass_in_both_modes() {
    require_pytest();
    for (mode, expect_mode) in [("targeted", "targeted"), ("broad", "broad")] {
        let dir = tempfile::tempdir().expect("project");
        pytest_project(dir.path(), true);
        let file = dir.path().join("gate.yaml");
        std::fs::write(&file, pytest_plan("")).expect("plan");
        let (gate, _out) = VigilRun::new(&format!("gate-flaky-{mode}"))
            .args([std::ffi::OsStr::new("--plan"), file.as_os_str()])
            .args(["--triage", mode])
            .run();
        assert_eq!(gate.code(), 1, "the gate still fails: {}", gate.stderr());
        let rows = steps(&gate.trace());
        let unit = row(&rows, "unit");
        assert_eq!(unit["triage_mode"], expect_mode);
        assert_eq!(unit["triage_result"], "pass", "{mode}: flaky");
        assert_eq!(
            unit["triage_checks"],
            serde_json::json!([{"id": "tests/test_gate.py::test_flaky", "result": "pass"}])
        );
    }
}

#[test]
fn the_example_gate_passes_with_the_agent_reporting_itself() {
    require_pytest();
    let plan = repo_root().join("examples/gate/plan.yaml");
    let (gate, _out) = VigilRun::new("gate-example")
        .args([std::ffi::OsStr::new("--plan"), plan.as_os_str()])
        .run();
    assert_eq!(gate.code(), 0, "{}", gate.stderr());
    let rows = steps(&gate.trace());
    let names: Vec<&str> = rows.iter().filter_map(|r| r["name"].as_str()).collect();
    assert_eq!(names, ["build", "unit", "agent"]);
    assert!(rows.iter().all(|r| r["status"] == "passed"), "{rows:?}");
    assert_eq!(row(&rows, "unit")["triage_result"], "not_run");
    let h = gate.health();
    // The gate claims per layer what its weakest step observed (issue 12): build and unit
    // reported nothing of themselves, so the gate's SDK layer is absent, while the agent
    // step's own health says it reported itself.
    assert_eq!(h["sdk_layer"], "absent", "the weakest step's claim");
    let agent = read_json(&gate.bundle.join("steps/03-agent/observation-health.json"));
    assert_eq!(
        agent["sdk_layer"], "self_reported",
        "the agent step reported itself"
    );
    assert_eq!(agent["sdk"]["tool_calls"], 2);
    assert_valid_bundle(&gate.bundle);
}

#[test]
fn sigint_to_vigil_stops_the_step_and_the_gate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let started = dir.path().join("started");
    let ok = std::process::Command::new("mkfifo")
        .arg(&started)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "mkfifo");
    let plan = format!(
        "steps:\n  - name: long\n    command: \"echo up > {}; exec sleep 30\"\n  - name: next\n    command: [\"true\"]\n",
        started.display()
    );
    let file = dir.path().join("gate.yaml");
    std::fs::write(&file, plan).expect("plan");
    let mut run = VigilRun::new("gate-cancel").args([
        std::ffi::OsStr::new("--continue-on-fail"),
        std::ffi::OsStr::new("--plan"),
        file.as_os_str(),
    ]);
    let mut child = run
        .cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn vigil");
    // Opening the FIFO blocks until the step has it open: the step is running.
    std::fs::read_to_string(&started).expect("step started");
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("SIGINT");
    let status = child.wait().expect("wait vigil");
    assert_eq!(status.code(), Some(130));
    let t = read_json(&run.bundle().join("run-trace.json"));
    let rows = steps(&t);
    assert_eq!(row(&rows, "long")["status"], "killed");
    assert_eq!(
        row(&rows, "next")["skip_reason"],
        "cancelled",
        "even when continuing"
    );
    assert_eq!(t["summary"]["aborted_after_step"], "long");
}

#[test]
fn a_step_secret_never_reaches_the_bundle() {
    let secret = "tok-9f8e7d6c5b4a";
    let plan = format!(
        "steps:\n  - name: leak\n    command: \"echo token is $API_TOKEN; echo --token=$API_TOKEN >&2\"\n    env: {{API_TOKEN: \"{secret}\"}}\n"
    );
    let (gate, _out, _dir) = plan_run("gate-secret", &plan, &[]);
    assert_eq!(gate.code(), 0, "{}", gate.stderr());
    let stdout = std::fs::read_to_string(gate.bundle.join("steps/01-leak/output/stdout.log"))
        .expect("stdout");
    assert_eq!(stdout, "token is [REDACTED]\n");
    let mut stack = vec![gate.bundle.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let bytes = std::fs::read(&p).expect("read");
                assert!(
                    !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                    "{} holds the secret",
                    p.display()
                );
            }
        }
    }
}
