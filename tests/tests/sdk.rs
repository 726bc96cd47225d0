//! The SDK layer end to end: a real child reports itself through examples/python/vigil_sdk.py
//! — tool calls around real subprocesses, checkpoints, malformed lines and a flood — and vigil
//! validates, caps, counts and correlates what arrives.

use serde_json::Value;
use vigil_e2e::*;

fn client_dir() -> String {
    repo_root().join("examples/python").display().to_string()
}

/// Run a Python script that has `vigil` (a connected `Vigil`) in scope.
fn run_client(id: &str, body: &str, extra: &[&str]) -> (Finished, tempfile::TempDir) {
    let script = format!(
        "import sys, subprocess\nsys.path.insert(0, {dir:?})\nfrom vigil_sdk import Vigil\nvigil = Vigil(sdk_name='e2e', sdk_version='1')\nassert vigil.connected, 'VIGIL_SDK_SOCKET not set'\n{body}\nvigil.close()\n",
        dir = client_dir()
    );
    VigilRun::new(id)
        .args(extra)
        .args(["--", "python3", "-c", &script])
        .run()
}

fn sdk_lines(f: &Finished) -> Vec<Value> {
    read_ndjson(&f.bundle.join("layers/sdk.ndjson"))
}

#[test]
fn tool_calls_checkpoints_and_malformed_lines_from_a_real_child() {
    let (run, _out) = run_client(
        "sdk-mixed",
        r#"with vigil.tool_call("shell", data={"cmd": "sh -c true", "api_token": "s3cret-value"}):
    subprocess.run(["sh", "-c", "/bin/true; /bin/true"], check=True)
vigil.send_raw(b"this is not json\n")
vigil.send_raw(b'{"event": "explode"}\n')
vigil.send_raw(b'{"event": "tool_call_started", "tool": "x"}\n')
vigil.send_raw(b'{"event": "checkpoint", "name": ' + b'"' + b"a" * 20000 + b'"}\n')
vigil.send_raw(b'[1, 2]\n')
vigil.checkpoint("halfway")
vigil.run_finished()"#,
        &[],
    );
    assert_eq!(run.code(), 0, "{}", run.stderr());
    let h = run.health();
    assert_eq!(h["sdk_layer"], "self_reported");
    let sdk = &h["sdk"];
    assert_eq!(sdk["accepted"], 4, "{sdk}");
    assert_eq!(sdk["tool_calls"], 1);
    assert_eq!(
        sdk["rejected"],
        serde_json::json!({"line_too_long": 1, "missing_field": 1, "not_an_object": 1, "not_json": 1, "unknown_event": 1})
    );
    assert_eq!(sdk["dropped_over_cap"], 0);

    let lines = sdk_lines(&run);
    let kinds: Vec<&str> = lines.iter().filter_map(|l| l["event"].as_str()).collect();
    assert_eq!(
        kinds,
        [
            "tool_call_started",
            "tool_call_completed",
            "checkpoint",
            "run_finished"
        ]
    );
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["seq"], i);
        assert_eq!(l["sdk_name"], "e2e");
        assert!(l["ts_ns"].as_u64().is_some());
    }
    assert_eq!(lines[0]["data"]["api_token"], "[REDACTED]");
    // The tool call saw the shell and its two /bin/true execs in the kernel.
    let execs = lines[1]["kernel_events"]["process.exec"]
        .as_u64()
        .expect("correlated exec count");
    assert_eq!(execs, 3, "{}", lines[1]);
    // The checkpoint is in the run trace.
    let cps: Vec<Value> = run.trace()["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["kind"] == "checkpoint")
        .cloned()
        .collect();
    assert_eq!(cps.len(), 1);
    assert_eq!(cps[0]["data"]["name"], "halfway");
    assert_eq!(cps[0]["data"]["source"], "sdk");
    assert_valid_bundle(&run.bundle);
}

#[test]
fn a_flood_is_capped_counted_and_does_not_hurt_the_run() {
    let (run, _out) = run_client(
        "sdk-flood",
        r#"line = b'{"event":"checkpoint","name":"tick"}\n'
vigil.send_raw(line * 25000)
print("flood sent")"#,
        &[],
    );
    assert_eq!(run.code(), 0, "{}", run.stderr());
    let sdk = &run.health()["sdk"];
    assert_eq!(sdk["accepted"], 10_000, "{sdk}");
    assert_eq!(sdk["dropped_over_cap"], 15_000, "{sdk}");
    assert_eq!(sdk_lines(&run).len(), 10_000);
    assert_valid_bundle(&run.bundle);
}

#[test]
fn no_valid_event_means_no_sdk_claim_and_the_shim_is_checked() {
    let (quiet, _o1) = run_client("sdk-quiet", r#"vigil.send_raw(b"garbage\n")"#, &[]);
    assert_eq!(quiet.code(), 0, "{}", quiet.stderr());
    let h = quiet.health();
    assert_eq!(h["sdk_layer"], "absent", "invalid events claim nothing");
    assert_eq!(h["sdk"]["rejected"]["not_json"], 1);

    let (shim, _o2) = VigilRun::new("sdk-shim")
        .args([
            "--agent-shim",
            "openai-agents",
            "--",
            "sh",
            "-c",
            "echo $VIGIL_AGENT_SHIM",
        ])
        .run();
    assert_eq!(shim.code(), 0);
    assert_eq!(
        std::fs::read_to_string(shim.bundle.join("output/stdout.log")).expect("stdout"),
        "openai-agents\n"
    );
    assert_eq!(shim.health()["sdk"]["shim"], "openai-agents");

    let (bad, _o3) = VigilRun::new("sdk-bad-shim")
        .args(["--agent-shim", "langchain", "--", "true"])
        .run();
    assert_eq!(bad.code(), 2);
    let err = bad.stderr();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("--agent-shim"), "{err}");
    assert!(
        err.contains("none, openai-agents, gemini-google-genai"),
        "{err}"
    );
}

#[test]
fn a_process_outside_the_run_is_not_heard() {
    // The child hands its socket path out through a FIFO; a process vigil did not start (this
    // test) connects and speaks; then a second FIFO lets the child finish. No sleeps: FIFO
    // opens block until the other side is there.
    let dir = tempfile::tempdir().expect("tempdir");
    let path_fifo = dir.path().join("sock-path");
    let go_fifo = dir.path().join("go");
    for f in [&path_fifo, &go_fifo] {
        let ok = std::process::Command::new("mkfifo")
            .arg(f)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "mkfifo {}", f.display());
    }
    let script = format!(
        "import os\nopen({p:?}, 'w').write(os.environ['VIGIL_SDK_SOCKET'])\nopen({g:?}).read()\n",
        p = path_fifo.display().to_string(),
        g = go_fifo.display().to_string()
    );
    let run = VigilRun::new("sdk-outsider").args(["--", "python3", "-c", &script]);
    let handle = std::thread::spawn(move || run.run());
    let sock = std::fs::read_to_string(&path_fifo).expect("socket path from the child");
    {
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(&sock).expect("connect");
        let _ = s.write_all(b"{\"event\":\"checkpoint\",\"name\":\"forged\"}\n");
        // vigil hangs up on a peer outside the run once it has looked at it: wait for that.
        let mut byte = [0u8; 1];
        assert!(
            !matches!(s.read(&mut byte), Ok(n) if n > 0),
            "vigil must not answer"
        );
    }
    std::fs::write(&go_fifo, "go").expect("let the child finish");
    let (run, _out) = handle.join().expect("run thread");
    assert_eq!(run.code(), 0, "{}", run.stderr());
    let h = run.health();
    assert_eq!(h["sdk"]["refused_connections"], 1);
    assert_eq!(h["sdk"]["accepted"], 0);
    assert_eq!(h["sdk_layer"], "absent");
}

fn require_python_module(module: &str, pin: &str) {
    let ok = std::process::Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "{module} is required (.ci/run installs it: python3 -m pip install {pin})"
    );
}

/// An unmodified agent under `--agent-shim SHIM` reports exactly one `run_shell` tool call,
/// with the `uname` it ran inside; without the shim it reports nothing.
fn shim_reports_the_tool_call(shim: &str, script: &str, version_prefix: &str) {
    let agent = repo_root().join("tests/python").join(script);
    let agent = agent.to_str().expect("utf-8 path");
    let (shimmed, _o1) = VigilRun::new(&format!("sdk-{shim}"))
        .args(["--agent-shim", shim, "--", "python3", agent])
        .env("OPENAI_AGENTS_DISABLE_TRACING", "0")
        .run();
    assert_eq!(shimmed.code(), 0, "{}", shimmed.stderr());
    assert_eq!(shimmed.health()["sdk_layer"], "self_reported");
    let lines = sdk_lines(&shimmed);
    let calls: Vec<&Value> = lines
        .iter()
        .filter(|l| l["event"] == "tool_call_completed")
        .collect();
    assert_eq!(calls.len(), 1, "{lines:?}");
    assert_eq!(calls[0]["tool"], "run_shell");
    assert_eq!(calls[0]["status"], "ok");
    assert_eq!(calls[0]["sdk_name"], shim);
    assert!(
        calls[0]["sdk_version"]
            .as_str()
            .is_some_and(|v| v.starts_with(version_prefix)),
        "{}",
        calls[0]
    );
    assert_eq!(
        calls[0]["kernel_events"]["process.exec"], 1,
        "the tool's `uname` ran inside the call: {}",
        calls[0]
    );

    let (plain, _o2) = VigilRun::new(&format!("sdk-{shim}-plain"))
        .args(["--", "python3", agent])
        .run();
    assert_eq!(plain.code(), 0, "{}", plain.stderr());
    assert_eq!(plain.health()["sdk_layer"], "absent");
    assert!(sdk_lines(&plain).is_empty());
}

#[test]
fn the_openai_agents_shim_reports_an_unmodified_agent_s_tool_calls() {
    require_python_module("agents", "openai-agents==0.24.0");
    shim_reports_the_tool_call("openai-agents", "scripted_openai_agent.py", "0.");
}

#[test]
fn the_gemini_shim_reports_automatic_function_calls() {
    require_python_module("google.genai", "google-genai==3.4.0");
    shim_reports_the_tool_call("gemini-google-genai", "scripted_gemini_agent.py", "3.");
}
