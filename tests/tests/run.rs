//! `vigil run` end to end, as root, on the real kernel, with real children that exit, die, hang,
//! flood, ignore SIGTERM, daemonize and hold pipes open.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use vigil_e2e::*;

fn reasons(events: &[Value]) -> Vec<String> {
    events_of(events, "watchdog")
        .iter()
        .filter_map(|e| e["reason"].as_str().map(String::from))
        .collect()
}

fn step(trace: &Value) -> &Value {
    &trace["summary"]["steps"][0]
}

#[test]
fn exit_codes_pass_through_and_bundle_validates() {
    for (code, status) in [(0, "passed"), (3, "failed")] {
        let (f, _dir) = VigilRun::new(&format!("exit{code}"))
            .fixture(&["exit", &code.to_string()])
            .run();
        assert_eq!(f.code(), code, "{}", f.stderr());
        let t = f.trace();
        assert_eq!(t["status"], status);
        assert_eq!(step(&t)["exit_code"], code);
        assert_eq!(t["runner_impl"], "vigil-rust");
        assert_valid_bundle(&f.bundle);
        let h = f.health();
        assert_eq!(h["kernel_layer"], "observed", "{}", h["probes"]);
        assert_eq!(h["cgroup_correlation"], "full");
        // The run cgroup is gone afterwards.
        let cg = h["cgroup"]["path"].as_str().expect("cgroup path");
        assert!(!Path::new(cg).exists(), "{cg} left behind");
        assert_eq!(
            std::fs::read_to_string(f.bundle.parent().expect("out").join("LATEST"))
                .expect("LATEST")
                .trim(),
            f.bundle.file_name().expect("id").to_string_lossy()
        );
    }
}

/// The command is looked for as execvp would, in the child's own PATH (the child shares
/// vigil's memory until its exec, so the search is vigil's, not glibc's): entries in order,
/// a directory that refuses (EACCES) passed over, a file without `#!` run by /bin/sh, 126 for
/// a file that cannot be executed and 127 for none at all.
#[test]
fn the_command_is_searched_for_as_execvp_would() {
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |rel: &str, body: &str, mode: u32| {
        let p = dir.path().join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, body).expect("write");
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(mode))
            .expect("chmod");
    };
    // `first/tool` is not executable (EACCES: the search goes on), `second/tool` is a script
    // without `#!` (ENOEXEC: run by /bin/sh, with its arguments).
    write("first/tool", "echo wrong\n", 0o644);
    write("second/tool", "echo second:$1\n", 0o755);
    write("only/plain", "echo never\n", 0o644);
    let path = |dirs: &[&str]| {
        dirs.iter()
            .map(|d| dir.path().join(d).display().to_string())
            .chain(["/usr/bin".to_string(), "/bin".to_string()])
            .collect::<Vec<_>>()
            .join(":")
    };
    let (f, _o) = VigilRun::new("search")
        .env("PATH", &path(&["first", "missing", "second"]))
        .args(["--", "tool", "arg1"])
        .run();
    assert_eq!(f.code(), 0, "{}", f.stderr());
    assert_eq!(String::from_utf8_lossy(&f.output.stdout), "second:arg1\n");

    let (f, _o) = VigilRun::new("eacces")
        .env("PATH", &path(&["only"]))
        .args(["--", "plain"])
        .run();
    assert_eq!(f.code(), 126, "{}", f.stderr());
    assert!(
        f.stderr().contains("plain: not executable"),
        "{}",
        f.stderr()
    );

    let (f, _o) = VigilRun::new("missing")
        .env("PATH", &path(&["missing"]))
        .args(["--", "vigil-no-such-tool-5d1e"])
        .run();
    assert_eq!(f.code(), 127, "{}", f.stderr());
    assert!(
        f.stderr()
            .contains("vigil-no-such-tool-5d1e: command not found"),
        "{}",
        f.stderr()
    );
    // Not found is still a committed bundle.
    assert_valid_bundle(&f.bundle);
}

#[test]
fn death_by_signal_is_128_plus_n() {
    let (f, _dir) = VigilRun::new("sig").fixture(&["signal", "9"]).run();
    assert_eq!(f.code(), 137, "{}", f.stderr());
    let t = f.trace();
    assert_eq!(t["status"], "killed");
    assert_eq!(step(&t)["signal"], 9);
    assert_eq!(step(&t)["exit_code"], Value::Null);
    assert_valid_bundle(&f.bundle);
}

#[test]
fn silent_hang_is_killed_by_basic_liveness_with_triage() {
    let (f, _dir) = VigilRun::new("hang")
        .args([
            "--liveness-stall-ms",
            "600",
            "--liveness-kill-grace-ms",
            "400",
            "--profile-stall-threshold-ms",
            "300",
        ])
        .fixture(&["hang"])
        .run();
    assert_eq!(f.code(), 124, "{}", f.stderr());
    // stall (600) + grace (400) at most, plus start-up slack.
    assert!(
        f.elapsed < Duration::from_millis(600 + 400 + 2500),
        "took {:?}",
        f.elapsed
    );
    let ev = f.events();
    assert_eq!(
        reasons(&ev)[..2],
        ["stall.subprocess.no_output_no_event", "watchdog.kill.term"]
    );
    assert!(
        !events_of(&ev, "stall_warning").is_empty(),
        "a stall warning precedes the kill"
    );
    let wd = events_of(&ev, "watchdog")[0];
    let phase = wd["data"]["stall_phase"].as_str().expect("stall_phase");
    assert!(phase.starts_with("blocked_in_syscall:"), "phase {phase}");
    let procs = wd["data"]["snapshot"]["processes"]
        .as_array()
        .expect("snapshot processes");
    assert!(
        procs
            .iter()
            .any(|p| p["comm"] == "vigil-fixture" && p["state"] == "S"),
        "{procs:?}"
    );
    assert_eq!(wd["data"]["snapshot"]["frozen"], true);
    let t = f.trace();
    assert_eq!(t["status"], "timed_out");
    assert_eq!(step(&t)["reason"], "stall.subprocess.no_output_no_event");
    assert_eq!(step(&t)["stall_detected"], true);
    assert_eq!(step(&t)["stall_phase"], phase);
    assert_valid_bundle(&f.bundle);
}

#[test]
fn endless_printing_is_not_stalled() {
    let (f, _dir) = VigilRun::new("flood")
        .args(["--liveness-stall-ms", "300"])
        .fixture(&["flood", "1500"])
        .run();
    assert_eq!(f.code(), 0, "{}", f.stderr());
    assert!(reasons(&f.events()).is_empty());
    let lines = String::from_utf8_lossy(&f.output.stdout).lines().count();
    assert!(lines > 100, "only {lines} lines teed");
    let captured = std::fs::read(f.bundle.join("output/stdout.log")).expect("capture");
    assert_eq!(
        captured, f.output.stdout,
        "capture and tee are byte-identical"
    );
    assert_valid_bundle(&f.bundle);
}

#[test]
fn sigterm_ignorer_is_killed_after_grace() {
    let pids = tempfile::tempdir().expect("tmp");
    let pidfile = pids.path().join("p");
    let (f, _dir) = VigilRun::new("ignterm")
        .args([
            "--liveness-level",
            "off",
            "--liveness-hard-cap-ms",
            "800",
            "--liveness-kill-grace-ms",
            "500",
        ])
        .fixture(&["ignore-term", pidfile.to_str().expect("utf8")])
        .run();
    assert_eq!(f.code(), 124, "{}", f.stderr());
    assert_eq!(
        reasons(&f.events()),
        [
            "timeout.hard_cap.emergency",
            "watchdog.kill.term",
            "watchdog.kill.killed"
        ]
    );
    let pid = read_pid(&pidfile);
    assert!(!pid_alive(pid), "TERM-ignoring child {pid} survived");
    let done = events_of(&f.events(), "note")
        .into_iter()
        .find(|e| e["data"]["what"] == "kill_complete")
        .cloned()
        .expect("kill_complete");
    assert!(done["data"]["term_to_empty_ms"].as_f64().expect("ms") >= 500.0);
    assert_eq!(f.health()["cgroup"]["kill_mechanism"], "cgroup.kill");
    assert_valid_bundle(&f.bundle);
}

#[test]
fn double_fork_daemon_does_not_outlive_the_run() {
    let pids = tempfile::tempdir().expect("tmp");
    let pidfile = pids.path().join("d");
    let (f, _dir) = VigilRun::new("daemon")
        .fixture(&["daemon", pidfile.to_str().expect("utf8")])
        .run();
    assert_eq!(f.code(), 0, "{}", f.stderr());
    let pid = read_pid(&pidfile);
    assert!(!pid_alive(pid), "daemon {pid} escaped the run");
    let notes = f.health()["notes"].to_string();
    assert!(
        notes.contains("still in the run cgroup after the main child exited"),
        "{notes}"
    );
    assert_valid_bundle(&f.bundle);
}

#[test]
fn pipes_held_open_after_exit_time_out_under_strict_only() {
    for (level, code) in [("strict", 124), ("basic", 0)] {
        let pids = tempfile::tempdir().expect("tmp");
        let pidfile = pids.path().join("h");
        let (f, _dir) = VigilRun::new(&format!("drain{level}"))
            .args([
                "--liveness-level",
                level,
                "--liveness-kill-grace-ms",
                "400",
                "--liveness-stall-ms",
                "60000",
            ])
            .fixture(&["hold-pipes", pidfile.to_str().expect("utf8")])
            .run();
        assert_eq!(f.code(), code, "{level}: {}", f.stderr());
        let r = reasons(&f.events());
        if level == "strict" {
            assert_eq!(
                r[..2],
                ["timeout.subprocess.io_drain", "watchdog.kill.term"]
            );
        } else {
            assert!(r.is_empty(), "{r:?}");
            let notes = f.health()["notes"]
                .as_array()
                .expect("notes")
                .iter()
                .filter(|n| {
                    n.as_str()
                        .is_some_and(|n| n.contains("output pipes stayed open"))
                })
                .count();
            assert_eq!(notes, 1, "one drain cleanup, noted once");
        }
        assert!(
            !pid_alive(read_pid(&pidfile)),
            "{level}: pipe holder survived"
        );
        assert_valid_bundle(&f.bundle);
    }
}

#[test]
fn hard_cap_holds_with_liveness_off() {
    let (f, _dir) = VigilRun::new("cap")
        .args([
            "--liveness-level",
            "off",
            "--liveness-hard-cap-ms",
            "500",
            "--liveness-kill-grace-ms",
            "300",
        ])
        .fixture(&["hang"])
        .run();
    assert_eq!(f.code(), 124, "{}", f.stderr());
    assert_eq!(step(&f.trace())["reason"], "timeout.hard_cap.emergency");
    assert_valid_bundle(&f.bundle);
}

#[test]
fn bad_flags_and_env_are_usage_errors_with_nothing_started() {
    /// (flags, environment, what the error line must name)
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        (&["--liveness-level", "loud"], &[], "--liveness-level"),
        (
            &["--liveness-kill-grace-ms", "0"],
            &[],
            "--liveness-kill-grace-ms",
        ),
        (&["--liveness-stall-ms", "-5"], &[], "--liveness-stall-ms"),
        (
            &["--profile-heartbeat-ms", "abc"],
            &[],
            "--profile-heartbeat-ms",
        ),
        (
            &[],
            &[("SPEC_RUNNER_PROFILE_LEVEL", "verbose")],
            "SPEC_RUNNER_PROFILE_LEVEL",
        ),
        (
            &[],
            &[("SPEC_RUNNER_LIVENESS_STALL_MS", "1.5")],
            "SPEC_RUNNER_LIVENESS_STALL_MS",
        ),
        (
            &[],
            &[("SPEC_RUNNER_FAIL_FAST", "maybe")],
            "SPEC_RUNNER_FAIL_FAST",
        ),
        (&["--run-id", "a:b"], &[], "run id"),
        (&["--run-id", "../x"], &[], "run id"),
    ];
    let marker_dir = tempfile::tempdir().expect("tmp");
    for (i, (flags, env, needle)) in cases.iter().enumerate() {
        let marker = marker_dir.path().join(format!("m{i}"));
        // A bad run id replaces the helper's own --run-id rather than repeating the flag.
        let mut r = match flags {
            ["--run-id", id] => VigilRun::new(id),
            _ => VigilRun::new(&format!("bad{i}")).args(*flags),
        };
        for (k, v) in *env {
            r = r.env(k, v);
        }
        let r = r.args(["--", "touch", marker.to_str().expect("utf8")]);
        let (f, dir) = r.run();
        assert_eq!(f.code(), 2, "{flags:?} {env:?}: {}", f.stderr());
        let err = f.stderr();
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
        assert!(err.contains(needle), "{needle} not named: {err}");
        assert!(!marker.exists(), "command ran despite a usage error");
        assert_eq!(
            std::fs::read_dir(dir.path()).expect("out").count(),
            0,
            "no bundle"
        );
    }
    // An empty command is a usage error too.
    let (f, _d) = VigilRun::new("empty").run();
    assert_eq!(f.code(), 2);
    assert!(f.stderr().contains("no command given"), "{}", f.stderr());
}

#[test]
fn flag_wins_over_env() {
    let (f, _dir) = VigilRun::new("flagwins")
        .env("SPEC_RUNNER_LIVENESS_STALL_MS", "100")
        .args(["--liveness-stall-ms", "60000"])
        .args(["--", "sh", "-c", "sleep 0.5"])
        .run();
    assert_eq!(
        f.code(),
        0,
        "env's 100 ms stall must lose to the flag: {}",
        f.stderr()
    );
}

#[test]
fn unwritable_output_directory_fails_before_starting() {
    let marker = tempfile::tempdir().expect("tmp");
    let m = marker.path().join("ran");
    let out = Command::new(vigil_bin())
        .current_dir(marker.path())
        .args(["run", "--out", "/proc/vigil-cannot-write-here", "--"])
        .args(["touch", m.to_str().expect("utf8")])
        .output()
        .expect("vigil");
    assert_eq!(out.status.code(), Some(125));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/proc/vigil-cannot-write-here"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(!m.exists(), "the command must not run");
}

#[test]
fn command_not_found_and_not_executable() {
    let (f, _d) = VigilRun::new("nf")
        .args(["--", "/nonexistent/vigil-nope"])
        .run();
    assert_eq!(f.code(), 127, "{}", f.stderr());
    assert_valid_bundle(&f.bundle);
    let tmp = tempfile::tempdir().expect("tmp");
    let plain = tmp.path().join("not-executable");
    std::fs::write(&plain, "echo should not run\n").expect("write");
    let (f, _d) = VigilRun::new("nx")
        .args(["--", plain.to_str().expect("utf8")])
        .run();
    assert_eq!(f.code(), 126, "{}", f.stderr());
    assert_valid_bundle(&f.bundle);
}

#[test]
fn secrets_never_reach_the_bundle() {
    let secret = "s3cr3t-value-0123456789";
    let pw = "hunter2-pw-abcdef";
    let (f, _dir) = VigilRun::new("secrets")
        .env("API_TOKEN", secret)
        .args(["--profile-level", "detailed"])
        .args([
            "--",
            fixture_bin().to_str().expect("utf8"),
            "echo-env",
            "API_TOKEN",
            "--password",
            pw,
        ])
        .run();
    assert_eq!(f.code(), 0, "{}", f.stderr());
    // The terminal gets the bytes as written (byte-exact tee); the artifacts never do.
    assert!(String::from_utf8_lossy(&f.output.stdout).contains(secret));
    let mut checked = 0;
    for entry in walk(&f.bundle) {
        let bytes = std::fs::read(&entry).expect("read");
        for s in [secret, pw] {
            assert!(
                !bytes.windows(s.len()).any(|w| w == s.as_bytes()),
                "{s} found in {}",
                entry.display()
            );
        }
        checked += 1;
    }
    assert!(checked >= 9, "only {checked} files checked");
    let out = std::fs::read_to_string(f.bundle.join("output/stdout.log")).expect("stdout.log");
    assert_eq!(out, "value=[REDACTED]\n");
    let t = f.trace();
    assert_eq!(
        t["env_profile"]["variables"]["API_TOKEN"]["length"],
        secret.len()
    );
    assert_eq!(t["args"][2], "--password");
    assert_eq!(t["args"][3], "[REDACTED]");
    assert_valid_bundle(&f.bundle);
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)
        .expect("read_dir")
        .filter_map(Result::ok)
    {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p))
        } else {
            out.push(p)
        }
    }
    out
}

#[test]
fn output_cap_truncates_and_records() {
    let (f, _dir) = VigilRun::new("cap10")
        .args([
            "--output-cap-bytes",
            "10",
            "--",
            "sh",
            "-c",
            "printf 'abcdefghijklmnopqrstuvwxyz'",
        ])
        .run();
    assert_eq!(f.code(), 0);
    assert_eq!(
        f.output.stdout, b"abcdefghijklmnopqrstuvwxyz",
        "tee is not capped"
    );
    assert_eq!(
        std::fs::read(f.bundle.join("output/stdout.log")).expect("log"),
        b"abcdefghij"
    );
    let h = f.health();
    assert_eq!(h["output"]["stdout"]["truncated"], true);
    assert_eq!(h["output"]["stdout"]["bytes_total"], 26);
    assert_valid_bundle(&f.bundle);
}

/// 4 MiB of distinct lines, so a byte out of place or twice shows.
const LINES_4M: &str = "seq 1 1000000 | head -c 4194304";

fn seq_bytes(n: usize) -> Vec<u8> {
    let mut all = Vec::new();
    for i in 1..=1_000_000u32 {
        all.extend_from_slice(format!("{i}\n").as_bytes());
    }
    all.truncate(n);
    all
}

#[test]
fn a_large_stream_is_relayed_whole_and_captured_up_to_the_cap() {
    // vigil's stdout is a pipe: the zero-copy relay (splice, with tee(2) for the capture).
    let (f, _dir) = VigilRun::new("relay")
        .args(["--output-cap-bytes", "1000000", "--", "sh", "-c", LINES_4M])
        .run();
    assert_eq!(f.code(), 0, "{}", f.stderr());
    let want = seq_bytes(4 << 20);
    assert!(f.output.stdout == want, "relayed stream differs");
    let log = std::fs::read(f.bundle.join("output/stdout.log")).expect("log");
    assert!(
        log == want[..1_000_000],
        "capture is not the stream's first 1,000,000 bytes"
    );
    let h = f.health();
    assert_eq!(h["output"]["stdout"]["bytes_total"], 4 << 20);
    assert_eq!(h["output"]["stdout"]["bytes_captured"], 1_000_000);
    assert_eq!(h["output"]["stdout"]["truncated"], true);
    assert_eq!(h["output"]["stdout"]["truncated_reason"], "cap");
    // The manifest's digest of the capture is checked against the file.
    assert_valid_bundle(&f.bundle);
}

#[test]
fn a_stdout_splice_refuses_is_relayed_by_copying_with_nothing_lost() {
    // splice(2) refuses a file opened O_APPEND (`>>` in a shell): the tee falls back to copying.
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("appended.log");
    std::fs::write(&path, b"before\n").expect("seed");
    let file = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .expect("open append");
    let (f, _out) = VigilRun::new("append")
        .args(["--output-cap-bytes", "1000000", "--", "sh", "-c", LINES_4M])
        .run_with_stdout(file);
    assert_eq!(f.code(), 0, "{}", f.stderr());
    let mut want = b"before\n".to_vec();
    want.extend(seq_bytes(4 << 20));
    assert!(
        std::fs::read(&path).expect("read") == want,
        "appended stream differs"
    );
    let log = std::fs::read(f.bundle.join("output/stdout.log")).expect("log");
    assert!(
        log == want[7..1_000_007],
        "capture is not the stream's first 1,000,000 bytes"
    );
    let tee_error = &f.health()["output"]["stdout"]["tee_error"];
    assert!(tee_error.is_null(), "{tee_error}");
    assert_valid_bundle(&f.bundle);
}

#[test]
fn user_flag_runs_unprivileged_without_capabilities() {
    let (f, _dir) = VigilRun::new("user")
        .args([
            "--user",
            "65534:65534",
            "--",
            "sh",
            "-c",
            "id -u; id -g; grep -E '^(CapEff|CapPrm|NoNewPrivs)' /proc/self/status",
        ])
        .run();
    assert_eq!(f.code(), 0, "{}", f.stderr());
    let out = String::from_utf8_lossy(&f.output.stdout).into_owned();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[..2], ["65534", "65534"], "{out}");
    assert!(out.contains("CapEff:\t0000000000000000"), "{out}");
    assert!(out.contains("CapPrm:\t0000000000000000"), "{out}");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    assert_valid_bundle(&f.bundle);
}

#[test]
fn sigint_cancels_and_commits() {
    let out = tempfile::tempdir().expect("tmp");
    let mut child = Command::new(vigil_bin())
        .current_dir(out.path())
        .args([
            "run",
            "--run-id",
            "cancel",
            "--liveness-kill-grace-ms",
            "300",
            "--out",
        ])
        .arg(out.path())
        .arg("--")
        .arg(fixture_bin())
        .arg("hang")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("vigil");
    wait_for_ready(&mut child);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("kill");
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(130));
    let bundle = out.path().join("cancel");
    let t = read_json(&bundle.join("run-trace.json"));
    assert_eq!(t["status"], "cancelled");
    assert_eq!(step(&t)["status"], "killed");
    assert_valid_bundle(&bundle);
}

/// Read vigil's teed stdout until the fixture says "ready" (an event, not a sleep).
fn wait_for_ready(child: &mut std::process::Child) {
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("read");
    assert_eq!(line.trim(), "ready");
}

#[test]
fn vigil_killed_mid_run_leaves_no_orphan_and_a_repairable_bundle() {
    // Random delays pick random points of setup and supervision; `ready` points are mid-run.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(7, |d| d.subsec_nanos());
    let delays: Vec<Option<u64>> = (0..4u32)
        .map(|k| Some(u64::from(seed.rotate_left(k * 8) % 60)))
        .chain([None, None])
        .collect();
    for (i, delay) in delays.into_iter().enumerate() {
        let out = tempfile::tempdir().expect("tmp");
        let pids = tempfile::tempdir().expect("tmp");
        let pidfile = pids.path().join("daemon");
        let script = format!(
            "{fx} daemon {pf} && {fx} hang",
            fx = fixture_bin().display(),
            pf = pidfile.display()
        );
        let run_id = format!("crash{i}");
        let mut child = Command::new(vigil_bin())
            .current_dir(out.path())
            .args(["run", "--run-id", &run_id, "--out"])
            .arg(out.path())
            .args(["--", "sh", "-c", &script])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("vigil");
        // Watch the parent before pulling the plug, so the removal cannot be missed.
        let watch = DirWatch::new(&cgroup_parent());
        match delay {
            // Not synchronisation: a random point at which to pull the plug.
            Some(ms) => std::thread::sleep(Duration::from_millis(ms)),
            None => wait_for_ready(&mut child),
        }
        child.kill().expect("SIGKILL vigil");
        child.wait().expect("reap vigil");
        let vigil_pid = child.id();
        // The guard notices vigil's death and empties the owner cgroup; wait for that (bounded).
        let owner_prefix = format!("vigil-{vigil_pid}-");
        assert!(
            watch.wait_until_gone(&owner_prefix, Duration::from_secs(15)),
            "owner cgroup of killed vigil {vigil_pid} never removed"
        );
        if pidfile.exists() {
            let pid = read_pid(&pidfile);
            assert!(!pid_alive(pid), "daemon {pid} outlived a SIGKILLed vigil");
        }
        let bundle = out.path().join(&run_id);
        if !bundle.exists() {
            continue; // killed before the bundle directory existed: nothing to repair
        }
        let v = Command::new(vigil_bin())
            .arg("validate")
            .arg(&bundle)
            .output()
            .expect("validate");
        assert_eq!(
            v.status.code(),
            Some(1),
            "an interrupted bundle must not validate"
        );
        vigil_ok(&["reindex".as_ref(), "--repair".as_ref(), bundle.as_os_str()]);
        assert_valid_bundle(&bundle);
        let t = read_json(&bundle.join("run-trace.json"));
        assert_eq!(t["run_status"]["state"], "repaired");
        assert!(
            t["run_status"]["reason"]
                .as_str()
                .expect("reason")
                .contains("before commit")
        );
    }
}

fn cgroup_parent() -> std::path::PathBuf {
    cgroup2_mount().join("vigil")
}

#[test]
fn stale_run_cgroups_are_swept_at_start() {
    let parent = cgroup_parent().join("stale-test");
    let stale = parent.join("vigil-999999999-1").join("old_run");
    std::fs::create_dir_all(&stale).expect("mkdir stale cgroup");
    let mut sleeper = Command::new("sleep").arg("1000").spawn().expect("sleep");
    std::fs::write(stale.join("cgroup.procs"), sleeper.id().to_string()).expect("move sleeper");
    let (f, _dir) = VigilRun::new("sweep")
        .args(["--cgroup-parent"])
        .args([parent.to_str().expect("utf8")])
        .args(["--", "true"])
        .run();
    assert_eq!(f.code(), 0, "{}", f.stderr());
    assert!(
        f.stderr().contains("removed stale run cgroup"),
        "{}",
        f.stderr()
    );
    let status = sleeper.wait().expect("reap sleeper");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    assert!(!stale.exists());
    assert!(f.health()["notes"].to_string().contains("old_run"));
    assert_valid_bundle(&f.bundle);
    let _ = std::fs::remove_dir(&parent);
}

#[test]
fn profile_copies_follow_level_and_on_fail() {
    let tmp = tempfile::tempdir().expect("tmp");
    let copy = tmp.path().join("t.json");
    let summary = tmp.path().join("s.md");
    let copies = |id: &str, level: &str, code: &str| {
        let _ = std::fs::remove_file(&copy);
        let _ = std::fs::remove_file(&summary);
        let (f, d) = VigilRun::new(id)
            .args([
                "--profile-level",
                level,
                "--profile-out",
                copy.to_str().expect("utf8"),
                "--profile-summary-out",
                summary.to_str().expect("utf8"),
            ])
            .args(["--", "sh", "-c", &format!("exit {code}")])
            .run();
        (f, d, copy.exists(), summary.exists())
    };
    let (_, _d1, c, s) = copies("p_off_pass", "off", "0");
    assert!(!c && !s, "profile off + success: no copies");
    let (_, _d2, c, s) = copies("p_off_fail", "off", "1");
    assert!(c && s, "profile off + failure: profile-on-fail writes both");
    let (f, _d3, c, _) = copies("p_detailed", "detailed", "0");
    assert!(c);
    let names: Vec<String> = read_json(&copy)["spans"]
        .as_array()
        .expect("spans")
        .iter()
        .map(|s| s["name"].as_str().unwrap_or("").to_string())
        .collect();
    for n in [
        "run.total",
        "runner.dispatch",
        "case.run",
        "case.chain",
        "case.harness",
        "check.execute",
        "subprocess.exec",
        "subprocess.wait",
    ] {
        assert!(names.iter().any(|x| x == n), "{n} missing from {names:?}");
    }
    let basic: Vec<String> = f.trace()["spans"]
        .as_array()
        .expect("spans")
        .iter()
        .map(|s| s["name"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(
        basic.contains(&"case.chain".to_string()),
        "bundle trace at detailed has detailed spans"
    );
}

#[test]
fn second_sigint_kills_at_once() {
    let out = tempfile::tempdir().expect("tmp");
    let pids = tempfile::tempdir().expect("tmp");
    let pidfile = pids.path().join("p");
    let mut child = Command::new(vigil_bin())
        .current_dir(out.path())
        .args([
            "run",
            "--run-id",
            "twice",
            "--liveness-kill-grace-ms",
            "60000",
            "--out",
        ])
        .arg(out.path())
        .arg("--")
        .arg(fixture_bin())
        .arg("ignore-term")
        .arg(&pidfile)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("vigil");
    wait_for_ready(&mut child);
    let vigil = nix::unistd::Pid::from_raw(child.id() as i32);
    let start = std::time::Instant::now();
    nix::sys::signal::kill(vigil, nix::sys::signal::Signal::SIGINT).expect("first SIGINT");
    // The first SIGINT is acknowledged on stderr before the second is sent (an event, not a sleep).
    let mut err = BufReader::new(child.stderr.take().expect("stderr"));
    let mut line = String::new();
    err.read_line(&mut line).expect("read stderr");
    assert!(line.contains("SIGINT received"), "{line}");
    nix::sys::signal::kill(vigil, nix::sys::signal::Signal::SIGINT).expect("second SIGINT");
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(130));
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "the 60 s grace was not cut short"
    );
    assert!(!pid_alive(read_pid(&pidfile)));
    let bundle = out.path().join("twice");
    let notes: Vec<String> = read_ndjson(&bundle.join("events.ndjson"))
        .iter()
        .filter_map(|e| e["data"]["what"].as_str().map(String::from))
        .collect();
    assert!(notes.contains(&"cancel_kill_now".to_string()), "{notes:?}");
    assert_valid_bundle(&bundle);
}

#[test]
fn strict_kills_a_trickle_below_min_events() {
    // ~10 lines a second, each its own write: alive, but below 50 events per 1 s window.
    let script = "i=0; while [ $i -lt 40 ]; do echo tick; sleep 0.1; i=$((i+1)); done";
    let (f, _dir) = VigilRun::new("trickle")
        .args([
            "--liveness-level",
            "strict",
            "--liveness-stall-ms",
            "1000",
            "--liveness-min-events",
            "50",
            "--liveness-kill-grace-ms",
            "300",
        ])
        .args(["--", "sh", "-c", script])
        .run();
    assert_eq!(f.code(), 124, "{}", f.stderr());
    assert_eq!(reasons(&f.events())[0], "stall.runner.no_progress");
    assert_valid_bundle(&f.bundle);
    // The same trickle passes under basic: it is never silent for the stall window.
    let short = "i=0; while [ $i -lt 15 ]; do echo tick; sleep 0.1; i=$((i+1)); done";
    let (f, _dir) = VigilRun::new("trickle_basic")
        .args(["--liveness-stall-ms", "1000", "--liveness-min-events", "50"])
        .args(["--", "sh", "-c", short])
        .run();
    assert_eq!(f.code(), 0, "{}", f.stderr());
    assert_valid_bundle(&f.bundle);
}

#[test]
fn kernel_layer_records_the_run_and_nothing_else() {
    let marker = "vigil-kernel-marker-91c2";
    // Something outside the run doing the same thing at the same time must never appear.
    let mut outsider = Command::new("sh")
        .args([
            "-c",
            "for i in 1 2 3 4 5; do /bin/sh -c 'exit 0' vigil-outsider-marker; sleep 0.05; done",
        ])
        .spawn()
        .expect("outsider");
    let (f, _dir) = VigilRun::new("kernel")
        .args(["--", "/bin/sh", "-c", "/bin/true; exit 3", marker])
        .run();
    outsider.wait().expect("outsider");
    assert_eq!(f.code(), 3, "{}", f.stderr());
    let h = f.health();
    assert_eq!(
        h["kernel_layer"], "observed",
        "every probe attached, nothing lost: {h:#}"
    );
    for p in [
        "process.sched_process_exec",
        "process.sched_process_exit",
        "process.sched_process_fork",
        "process.cgroup_mkdir",
    ] {
        assert_eq!(h["probes"][p]["status"], "attached", "{p}: {}", h["probes"]);
    }
    assert_eq!(h["lost_events"]["kernel_ring_buffer"], 0);
    let k = read_ndjson(&f.bundle.join("layers/kernel.ndjson"));
    let execs: Vec<&Value> = k
        .iter()
        .filter(|e| e["kind"] == "process.exec" && e["argv"].to_string().contains(marker))
        .collect();
    assert_eq!(
        execs.len(),
        1,
        "the run's exec appears exactly once: {k:#?}"
    );
    assert_eq!(
        execs[0]["argv"],
        serde_json::json!(["/bin/sh", "-c", "/bin/true; exit 3", marker])
    );
    let pid = execs[0]["pid"].clone();
    // Its parent is vigil, as vigil's own spawn record says.
    let spawn = f
        .events()
        .into_iter()
        .find(|e| e["kind"] == "subprocess_state" && e["data"]["source"] == "spawn")
        .expect("spawn record");
    assert_eq!(spawn["data"]["pid"], pid);
    assert_eq!(execs[0]["ppid"], spawn["data"]["ppid"], "the exec's parent");
    let cg = h["cgroup"]["id"].clone();
    assert!(
        k.iter().all(|e| e["cgroup_id"] == cg),
        "every event is the run's cgroup"
    );
    let exit = k
        .iter()
        .find(|e| e["kind"] == "process.exit" && e["pid"] == pid && e["group_dead"] == true)
        .expect("exit event");
    assert_eq!(exit["exit_code"], 3);
    assert!(
        k.iter()
            .any(|e| e["kind"] == "process.exec" && e["argv"] == serde_json::json!(["/bin/true"])),
        "the grandchild's exec"
    );
    assert!(
        k.iter()
            .any(|e| e["kind"] == "process.fork" && e["pid"] == pid),
        "the shell's fork"
    );
    assert!(
        !k.iter()
            .any(|e| e.to_string().contains("vigil-outsider-marker")),
        "an outside process leaked in"
    );
    assert_valid_bundle(&f.bundle);
}

#[test]
fn kernel_layer_off_is_absent_and_says_why() {
    let (f, _dir) = VigilRun::new("kernel_off")
        .args(["--kernel-layer", "off", "--", "true"])
        .run();
    assert_eq!(f.code(), 0, "{}", f.stderr());
    let h = f.health();
    assert_eq!(h["kernel_layer"], "absent");
    assert!(h["notes"].to_string().contains("--kernel-layer off"));
    assert_eq!(
        std::fs::read(f.bundle.join("layers/kernel.ndjson"))
            .expect("layer")
            .len(),
        0
    );
    assert_valid_bundle(&f.bundle);
}

#[test]
fn kernel_layer_names_the_sender_of_each_signal() {
    // A kill from one process of the run to another, then vigil's own watchdog kill.
    let (f, _dir) = VigilRun::new("signals")
        .args([
            "--liveness-level",
            "off",
            "--liveness-hard-cap-ms",
            "1500",
            "--liveness-kill-grace-ms",
            "300",
        ])
        .args([
            "--",
            "sh",
            "-c",
            "sleep 30 & k=$!; kill -USR1 $k; wait $k; exec sleep 30",
        ])
        .run();
    assert_eq!(f.code(), 124, "{}", f.stderr());
    let ev = f.events();
    let vigil_pid = events_of(&ev, "run_started")[0]["data"]["vigil_pid"].clone();
    let main_pid = events_of(&ev, "subprocess_state")[0]["data"]["pid"].clone();
    let k = read_ndjson(&f.bundle.join("layers/kernel.ndjson"));
    let signals: Vec<&Value> = k
        .iter()
        .filter(|e| e["kind"] == "signal.generate")
        .collect();
    assert!(
        signals
            .iter()
            .any(|s| s["signal"] == 10 && s["pid"] == main_pid && s["target_pid"] != main_pid),
        "the shell's SIGUSR1 to its child, with the shell as sender: {signals:#?}"
    );
    assert!(
        signals.iter().any(|s| s["signal"] == 15
            && s["pid"] == vigil_pid
            && s["target_pid"] == main_pid
            && s["result"] == "delivered"),
        "vigil's watchdog SIGTERM, with vigil as sender: {signals:#?}"
    );
    assert!(
        signals.iter().all(|s| s["signal"] != 17),
        "SIGCHLD is not recorded"
    );
    assert_eq!(
        f.health()["probes"]["process.signal_generate"]["status"],
        "attached"
    );
    assert_valid_bundle(&f.bundle);
}

#[test]
fn kernel_rebuilds_a_three_level_tree_and_who_killed_whom() {
    let script = "sh -c 'sh -c /bin/true'; sleep 30 & kill -TERM $!; wait; exit 0";
    let (f, _dir) = VigilRun::new("tree").args(["--", "sh", "-c", script]).run();
    assert_eq!(f.code(), 0, "{}", f.stderr());
    assert_eq!(f.health()["process_tree_source"], "kernel");
    let ev = f.events();
    let states: Vec<&Value> = events_of(&ev, "subprocess_state")
        .into_iter()
        .map(|e| &e["data"])
        .collect();
    let main = states[0]["pid"].clone();
    let exec_of = |argv: Value| {
        states
            .iter()
            .find(|s| s["source"] == "kernel" && s["state"] == "exec" && s["argv"] == argv)
            .copied()
    };
    let level2 = exec_of(serde_json::json!(["sh", "-c", "sh -c /bin/true"])).expect("level 2 exec");
    let level3 = exec_of(serde_json::json!(["sh", "-c", "/bin/true"])).expect("level 3 exec");
    let level4 = exec_of(serde_json::json!(["/bin/true"])).expect("level 4 exec");
    assert_eq!(level2["ppid"], main, "level 2 is the main child's child");
    assert_eq!(level3["ppid"], level2["pid"]);
    assert_eq!(level4["ppid"], level3["pid"]);
    for lvl in [level2, level3, level4] {
        assert!(
            states.iter().any(|s| s["state"] == "spawned"
                && s["pid"] == lvl["pid"]
                && s["ppid"] == lvl["ppid"]),
            "spawned record for {lvl}"
        );
        assert!(
            states
                .iter()
                .any(|s| s["state"] == "exited" && s["pid"] == lvl["pid"] && s["exit_code"] == 0),
            "exit 0 for {lvl}"
        );
    }
    let killed = states
        .iter()
        .find(|s| s["state"] == "killed_by")
        .expect("killed_by record");
    assert_eq!(
        killed["killer_pid"], main,
        "the main shell killed its background child"
    );
    assert_eq!(killed["signal"], 15);
    assert!(
        states.iter().all(|s| s["source"] != "procfs"),
        "no sampled states when the kernel tree is exact"
    );
    assert_valid_bundle(&f.bundle);
}

#[test]
fn doctor_reports_what_this_host_supports() {
    require_root();
    let out = vigil_ok(&["doctor".as_ref(), "--json".as_ref()]);
    let r: Value = serde_json::from_slice(&out.stdout).expect("json");
    let f = &r["features"];
    // The facts of this project's hosts (DESIGN.md), each checked against its own source.
    let mount = cgroup_parent()
        .parent()
        .expect("mount")
        .display()
        .to_string();
    assert_eq!(f["cgroup_v2"]["status"], "yes");
    assert!(
        f["cgroup_v2"]["detail"]
            .as_str()
            .expect("detail")
            .ends_with(&mount),
        "{f}"
    );
    assert_eq!(
        f["btf"]["status"],
        if Path::new("/sys/kernel/btf/vmlinux").exists() {
            "yes"
        } else {
            "no"
        }
    );
    assert_eq!(f["cgroup_kill"]["status"], "yes");
    assert_eq!(f["landlock"]["status"], "yes");
    assert!(
        f["landlock"]["detail"]
            .as_str()
            .expect("abi")
            .starts_with("ABI ")
    );
    let tracefs = std::fs::read_to_string("/proc/self/mounts")
        .expect("mounts")
        .lines()
        .any(|l| l.split(' ').nth(2) == Some("tracefs"));
    assert_eq!(f["tracefs"]["status"], if tracefs { "yes" } else { "no" });
    // Attach types found by loading a program of each: a kprobe needs the kprobe PMU.
    let kprobe_pmu = Path::new("/sys/bus/event_source/devices/kprobe/type").exists();
    assert_eq!(
        f["kprobe"]["status"],
        if kprobe_pmu { "yes" } else { "no" },
        "{f}"
    );
    for (name, prog) in [
        ("fentry", "fentry/__x64_sys_openat"),
        ("bpf_lsm", "lsm/file_open"),
    ] {
        let status = f[name]["status"].as_str().expect("status");
        assert!(status == "yes" || status == "no", "{name}: {f}");
        assert!(
            f[name]["detail"]
                .as_str()
                .expect("detail")
                .starts_with(prog)
        );
    }
    for (probe, status) in r["probes"].as_object().expect("probes") {
        let status = status.as_str().expect("status");
        assert!(status.starts_with("attached"), "{probe}: {status}");
    }
    // The path of file and network evidence is named: fexit where tracing programs load, the
    // sys_exit tracepoint (with fexit's refusal) where they do not.
    let path = r["probes"]["file.open"].as_str().expect("file.open");
    if f["fentry"]["status"] == "yes" {
        assert!(path.contains("fexit on the syscall functions"), "{path}");
    } else {
        assert!(
            path.contains("raw_tp/sys_exit") && path.contains("fexit refused"),
            "{path}"
        );
    }
    assert!(r["sensor_load_ms"].as_f64().expect("load ms") > 0.0);
    // The human form names the same things.
    let human = vigil_ok(&["doctor".as_ref()]);
    let text = String::from_utf8_lossy(&human.stdout);
    for word in [
        "cgroup_v2",
        "landlock",
        "bpf_lsm",
        "process.sched_process_exec",
    ] {
        assert!(text.contains(word), "{word} missing from:\n{text}");
    }
}

#[test]
fn a_silent_process_writing_a_file_is_not_stalled() {
    let tmp = tempfile::tempdir().expect("tmp");
    let file = tmp.path().join("busy");
    let argv = ["write-silently", file.to_str().expect("utf8"), "1500"];
    let flags = [
        "--liveness-stall-ms",
        "400",
        "--liveness-kill-grace-ms",
        "200",
    ];
    // With the kernel layer, its writes are progress: it runs to the end.
    let (f, _dir) = VigilRun::new("silent_writer")
        .args(flags)
        .fixture(&argv)
        .run();
    assert_eq!(f.code(), 0, "killed although busy: {}", f.stderr());
    let k = read_ndjson(&f.bundle.join("layers/kernel.ndjson"));
    let written: u64 = k
        .iter()
        .filter(|e| e["kind"] == "io.write")
        .filter_map(|e| e["bytes"].as_u64())
        .sum();
    assert!(
        written >= 4096 * 10,
        "write progress reported: {written} bytes"
    );
    assert_valid_bundle(&f.bundle);
    // The same workload without the kernel layer looks stalled — the mechanism is what saves it.
    let (f, _dir) = VigilRun::new("silent_writer_off")
        .args(flags)
        .args(["--kernel-layer", "off"])
        .fixture(&argv)
        .run();
    assert_eq!(f.code(), 124, "{}", f.stderr());
}

/// A flag wins over its environment variable (CONTRACT.md §2): `SPEC_RUNNER_FAIL_FAST=false`
/// with `--continue-on-fail` is no conflict; and a step row's `stall_phase` is present (null)
/// when no stall was seen.
#[test]
fn continue_on_fail_wins_over_the_environment_and_stall_phase_is_null_not_missing() {
    let (f, _dir) = VigilRun::new("ff-env")
        .env("SPEC_RUNNER_FAIL_FAST", "false")
        .args(["--continue-on-fail"])
        .fixture(&["exit", "0"])
        .run();
    assert_eq!(f.code(), 0, "{}", f.stderr());
    let t = f.trace();
    assert_eq!(t["summary"]["fail_fast_enabled"], false);
    let row = step(&t).as_object().expect("step row");
    assert_eq!(row.get("stall_phase"), Some(&Value::Null), "{row:?}");
    assert_eq!(row["stall_detected"], false);
}

/// Heartbeats count the run's live processes (the main child and what it spawned), from the
/// kernel's process tree.
#[test]
fn heartbeats_count_the_live_processes_of_the_run() {
    let (f, _dir) = VigilRun::new("hb-procs")
        .args(["--profile-heartbeat-ms", "200"])
        .args(["--", "sh", "-c", "sleep 1.5 & sleep 1.5 & sleep 1.5 & wait"])
        .run();
    assert_eq!(f.code(), 0, "{}", f.stderr());
    let events = f.events();
    let counts: Vec<u64> = events_of(&events, "heartbeat")
        .iter()
        .filter_map(|e| e["data"]["processes"].as_u64())
        .collect();
    assert_eq!(
        counts.iter().max(),
        Some(&4),
        "sh and its three sleeps at once: {counts:?}"
    );
}

/// Health records vigil's own cost for the run: its CPU time (not the child's: a child that
/// burns CPU does not raise it) and its peak RSS.
#[test]
fn health_records_the_observers_own_cost() {
    let (f, _dir) = VigilRun::new("observer-cost")
        .args([
            "--",
            "sh",
            "-c",
            "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done",
        ])
        .run();
    assert_eq!(f.code(), 0, "{}", f.stderr());
    let o = &f.health()["observer"];
    let cpu = o["cpu_user_ms"].as_f64().expect("user") + o["cpu_system_ms"].as_f64().expect("sys");
    assert!(cpu > 0.0, "{o}");
    // The child's busy loop (hundreds of ms of CPU) is not vigil's.
    let child_ms = f.elapsed.as_secs_f64() * 1000.0;
    assert!(
        cpu < child_ms,
        "vigil {cpu} ms of CPU vs a {child_ms} ms run: {o}"
    );
    assert!(o["peak_rss_kib"].as_u64().expect("rss") > 1024, "{o}");
    assert_valid_bundle(&f.bundle);
}
