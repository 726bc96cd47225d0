//! Hang explanation end to end: a stalled run's watchdog event says who waits on whom, naming
//! the process that holds the other end — a daemonized writer of a pipe, a stopped unix-socket
//! server, a child stuck in a read — and `vigil inspect` prints it.

use serde_json::Value;
use vigil_e2e::*;

/// Run `script` under a short stall limit; the watchdog's `waits`.
fn stalled(run_id: &str, script: &str) -> (Vec<Value>, Finished, tempfile::TempDir) {
    let (f, dir) = VigilRun::new(run_id)
        .args([
            "--liveness-stall-ms",
            "1500",
            "--liveness-kill-grace-ms",
            "300",
            "--",
            "sh",
            "-c",
            script,
        ])
        .run();
    assert_eq!(f.code(), 124, "{}", f.stderr());
    let events = f.events();
    let dog = events_of(&events, "watchdog")
        .into_iter()
        .find(|e| e["reason"] == "stall.subprocess.no_output_no_event")
        .cloned()
        .unwrap_or_else(|| panic!("no stall verdict: {events:?}"));
    let waits = dog["data"]["snapshot"]["waits"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("no waits in {dog:#}"));
    (waits, f, dir)
}

fn wait_of<'a>(waits: &'a [Value], comm: &str) -> &'a Value {
    waits
        .iter()
        .find(|w| w["comm"] == comm)
        .unwrap_or_else(|| panic!("no wait of {comm}: {waits:#?}"))
}

fn inspect(f: &Finished) -> String {
    let out = vigil_ok(&[std::ffi::OsStr::new("inspect"), f.bundle.as_os_str()]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_reader_blocked_on_a_pipe_names_the_daemonized_writer() {
    // The subshell's stdout is the pipe; `setsid sleep` inherits it and outlives the subshell,
    // so cat never sees end of file.
    let (waits, f, _dir) = stalled("hang-pipe", "(setsid sleep 600 &) | cat");
    let cat = wait_of(&waits, "cat");
    assert_eq!(cat["syscall"], "read");
    assert!(
        cat["on"].as_str().is_some_and(|o| o.starts_with("pipe:[")),
        "{cat}"
    );
    let holders = cat["holders"].as_array().expect("holders");
    assert_eq!(holders.len(), 1, "{cat:#}");
    let h = &holders[0];
    assert_eq!(h["comm"], "sleep");
    assert_eq!(h["argv"], serde_json::json!(["sleep", "600"]));
    assert_eq!(h["setsid"], true);
    assert_eq!(h["holds"], "write end");
    assert_eq!(h["in_run"], true);
    let text = cat["explanation"].as_str().expect("explanation");
    assert!(
        text.contains("cat (pid") && text.contains("`sleep 600`") && text.contains("setsid"),
        "{text}"
    );
    // The shell waits for cat: a wait on a child, named.
    let sh = wait_of(&waits, "sh");
    assert_eq!(sh["on"], "children");
    assert!(
        sh["holders"]
            .as_array()
            .is_some_and(|h| h.iter().any(|c| c["comm"] == "cat")),
        "{sh:#}"
    );
    let shown = inspect(&f);
    assert!(
        shown.contains(text),
        "inspect shows the explanation:\n{shown}"
    );
    // And the exports carry it: the watchdog's mark in the Trace Event Format.
    let out = vigil_ok(&[
        std::ffi::OsStr::new("export"),
        f.bundle.as_os_str(),
        std::ffi::OsStr::new("--format"),
        std::ffi::OsStr::new("chrome-trace"),
    ]);
    let chrome: Value = serde_json::from_slice(&out.stdout).expect("chrome trace");
    let marked = chrome["traceEvents"]
        .as_array()
        .expect("events")
        .iter()
        .any(|e| {
            e["ph"] == "i"
                && e["args"]["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains(text))
        });
    assert!(marked, "the watchdog mark names the holder");
}

#[test]
fn a_unix_client_names_its_stopped_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("s.sock");
    let fx = fixture_bin().display().to_string();
    let s = sock.display();
    // The client starts once the server said it listens (the pipe carries that line).
    let script = format!("{fx} unix-server {s} | (read l; exec {fx} unix-client {s})");
    let (waits, _f, _d) = stalled("hang-unix", &script);
    let client = wait_of(&waits, "vigil-fixture");
    assert!(
        client["on"]
            .as_str()
            .is_some_and(|o| o.contains("unix") && o.contains("s.sock")),
        "{client:#}"
    );
    let h = &client["holders"][0];
    assert_eq!(h["holds"], "peer", "{client:#}");
    assert_eq!(h["stopped"], true, "{client:#}");
    assert_eq!(h["argv"][1], "unix-server", "{client:#}");
    assert!(
        client["explanation"]
            .as_str()
            .is_some_and(|t| t.contains("stopped")),
        "{client:#}"
    );
}

#[test]
fn a_parent_in_wait_names_the_child_stuck_in_a_read() {
    let fx = fixture_bin().display().to_string();
    let (waits, _f, _d) = stalled("hang-wait", &format!("{fx} read-own-pipe; echo never"));
    let sh = wait_of(&waits, "sh");
    assert_eq!(sh["on"], "children");
    let child = &sh["holders"][0];
    assert_eq!(child["comm"], "vigil-fixture", "{sh:#}");
    assert_eq!(child["holds"], "child");
    let stuck = waits
        .iter()
        .find(|w| w["pid"] == child["pid"])
        .unwrap_or_else(|| panic!("the child's own wait: {waits:#?}"));
    assert_eq!(stuck["syscall"], "read");
    assert!(
        stuck["explanation"]
            .as_str()
            .is_some_and(|t| t.ends_with("held by itself")),
        "{stuck:#}"
    );
}
