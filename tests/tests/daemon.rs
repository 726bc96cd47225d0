//! `vigil daemon` end to end, as root on the real kernel: runs through the socket behave as
//! standalone ones, run as their client's user and never write where it could not; admission
//! defers and rejects; Ctrl-C and disconnects cancel; bad input is refused and counted; a
//! SIGKILLed daemon leaves nothing running and nothing unrecoverable; one run's storm does not
//! delay another's watchdog.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use vigil_e2e::daemon::{TestDaemon, frame};
use vigil_e2e::*;

const NOBODY: u32 = 65534;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A work directory with `out/` inside, owned by `uid` (both searchable by everyone).
fn workdir(uid: u32) -> (tempfile::TempDir, PathBuf) {
    let work = tempfile::tempdir().expect("tempdir");
    let out = work.path().join("out");
    std::fs::create_dir(&out).expect("mkdir out");
    for p in [work.path(), &out] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::os::unix::fs::chown(p, Some(uid), Some(uid)).expect("chown");
    }
    (work, out)
}

/// Spawn a client whose command prints "ready" first; return once it did.
fn spawn_ready(mut cmd: Command) -> (Child, BufReader<std::process::ChildStdout>) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn client");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("read ready");
    assert_eq!(line.trim(), "ready", "the run never started");
    (child, out)
}

fn stderr_of(child: &mut Child) -> String {
    let mut s = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut s);
    }
    s
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: signalling a process this test started.
    unsafe { libc::kill(pid as i32, sig) };
}

#[test]
fn a_run_through_the_daemon_behaves_as_standalone() {
    let d = TestDaemon::start("parity", &["--max-runs", "2"]);
    let (work, out) = workdir(0);
    let args = [
        "--",
        "sh",
        "-c",
        "printf 'out\\n'; printf 'err\\n' >&2; echo \"$MARK\"; pwd; exit 3",
    ];
    let mut via = d.run_cmd(&out, &[&["--run-id", "via-daemon"][..], &args].concat());
    let via = via.env("MARK", "from-the-client").output().expect("client");
    let alone = Command::new(vigil_bin())
        .args(["run", "--no-daemon", "--run-id", "standalone", "--out"])
        .arg(&out)
        .args(args)
        .env("MARK", "from-the-client")
        .current_dir(work.path())
        .output()
        .expect("standalone");
    assert_eq!(via.status.code(), Some(3), "{}", text(&via.stderr));
    assert_eq!(alone.status.code(), via.status.code());
    let expected = format!("out\nfrom-the-client\n{}\n", work.path().display());
    assert_eq!(
        text(&via.stdout),
        expected,
        "the client's env and cwd reach the child"
    );
    assert_eq!(via.stdout, alone.stdout);
    assert!(
        text(&via.stderr).starts_with("err\n"),
        "{}",
        text(&via.stderr)
    );
    let bundle = out.join("via-daemon");
    assert_valid_bundle(&bundle);
    assert_schemas(&bundle);
    let health = read_json(&bundle.join("observation-health.json"));
    assert_eq!(health["mode"], "daemon", "{health:#}");
    assert_eq!(health["kernel_layer"], "observed", "{health:#}");
    assert_eq!(health["process_tree_source"], "kernel");
    let standalone = read_json(&out.join("standalone/observation-health.json"));
    assert_eq!(standalone["mode"], "standalone");
    // The kernel saw the child exec through the shared sensor.
    let kernel = read_ndjson(&bundle.join("layers/kernel.ndjson"));
    assert!(
        kernel
            .iter()
            .any(|e| e["kind"] == "process.exec" && e["filename"].to_string().contains("sh")),
        "{kernel:?}"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("LATEST"))
            .expect("LATEST")
            .trim(),
        "standalone"
    );
    // `vigil status` sees the daemon and the newest bundle's verdict.
    let status = Command::new(vigil_bin())
        .arg("status")
        .arg("--daemon")
        .arg(&d.socket)
        .arg("--out")
        .arg(&out)
        .output()
        .expect("status");
    let report = text(&status.stdout);
    assert!(report.contains("daemon: answers at"), "{report}");
    assert!(report.contains("0 of 2 run slots busy"), "{report}");
    assert!(
        report.contains("standalone: committed") && report.contains("run failed exit 3"),
        "{report}"
    );
}

#[test]
fn ctrl_c_at_the_client_cancels_the_run_with_the_fence() {
    let d = TestDaemon::start("ctrlc", &[]);
    let (_work, out) = workdir(0);
    let cmd = d.run_cmd(
        &out,
        &[
            "--run-id",
            "cc",
            "--",
            "sh",
            "-c",
            "echo ready; exec sleep 1000",
        ],
    );
    let (mut child, _stdout) = spawn_ready(cmd);
    signal(child.id(), libc::SIGINT);
    let status = child.wait().expect("wait");
    let err = stderr_of(&mut child);
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(err.contains("SIGINT received; stopping the run"), "{err}");
    let bundle = out.join("cc");
    assert_valid_bundle(&bundle);
    assert_eq!(
        read_json(&bundle.join("run-trace.json"))["status"],
        "cancelled"
    );
}

#[test]
fn a_client_that_goes_away_gets_its_run_cancelled_and_committed() {
    let mut d = TestDaemon::start("disconnect", &[]);
    let (_work, out) = workdir(0);
    let cmd = d.run_cmd(
        &out,
        &[
            "--run-id",
            "gone",
            "--",
            "sh",
            "-c",
            "echo ready; exec sleep 1000",
        ],
    );
    let (mut child, _stdout) = spawn_ready(cmd);
    signal(child.id(), libc::SIGKILL);
    let _ = child.wait();
    d.wait_log(
        "client went away; cancelling its run",
        Duration::from_secs(10),
    );
    let line = d.wait_log("run finished", Duration::from_secs(20));
    assert!(line.contains("cancelled"), "{line}");
    assert_valid_bundle(&out.join("gone"));
}

#[test]
fn runs_as_its_client_and_never_writes_where_the_client_could_not() {
    let d = TestDaemon::start("nobody", &["--socket-group", "nogroup"]);
    let (work, out) = workdir(NOBODY);
    let as_nobody = |args: &[&str], out: &Path| {
        let mut c = d.run_cmd(out, args);
        c.uid(NOBODY).gid(NOBODY).current_dir(work.path());
        c.output().expect("client")
    };
    let ok = as_nobody(
        &["--run-id", "mine", "--", "sh", "-c", "id -u; id -g; pwd"],
        &out,
    );
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stderr));
    assert_eq!(
        text(&ok.stdout),
        format!("65534\n65534\n{}\n", work.path().display())
    );
    let bundle = out.join("mine");
    assert_valid_bundle(&bundle);
    for rel in [
        "",
        "events.ndjson",
        "output/stdout.log",
        "artifact_index.json",
    ] {
        let m = std::fs::metadata(bundle.join(rel)).expect("bundle file");
        assert_eq!(
            (m.uid(), m.gid()),
            (NOBODY, NOBODY),
            "{rel} given to its client"
        );
    }

    // Another user: refused, nothing run.
    let other = as_nobody(&["--user", "0", "--", "true"], &out);
    assert_eq!(other.status.code(), Some(2), "{}", text(&other.stderr));
    assert!(text(&other.stderr).contains("not_permitted"));

    // A directory the client cannot write: refused, nothing created in it.
    let root_dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(root_dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    let refused = as_nobody(&["--run-id", "intruder", "--", "true"], root_dir.path());
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused.stderr));
    assert!(
        text(&refused.stderr).contains("may not create entries there"),
        "{}",
        text(&refused.stderr)
    );
    assert_eq!(std::fs::read_dir(root_dir.path()).expect("ls").count(), 0);

    // Links the client planted are never followed: a bundle name taken by a link to a
    // root-only directory is refused; LATEST pointing at a root file is replaced, not written.
    let precious = root_dir.path().join("precious");
    std::fs::write(&precious, "precious\n").expect("write");
    std::os::unix::fs::symlink(root_dir.path(), out.join("planted")).expect("symlink");
    std::fs::remove_file(out.join("LATEST")).expect("rm LATEST");
    std::os::unix::fs::symlink(&precious, out.join("LATEST")).expect("symlink");
    let planted = as_nobody(&["--run-id", "planted", "--", "true"], &out);
    assert_eq!(
        planted.status.code(),
        Some(125),
        "{}",
        text(&planted.stderr)
    );
    assert!(text(&planted.stderr).contains("already exists"));
    let next = as_nobody(&["--run-id", "after-plant", "--", "true"], &out);
    assert_eq!(next.status.code(), Some(0), "{}", text(&next.stderr));
    assert_eq!(
        std::fs::read_to_string(&precious).expect("read"),
        "precious\n"
    );
    let latest = std::fs::symlink_metadata(out.join("LATEST")).expect("LATEST");
    assert!(latest.file_type().is_file(), "LATEST replaced by a file");
    assert_eq!(
        std::fs::read_to_string(out.join("LATEST")).expect("read"),
        "after-plant\n"
    );
    assert_eq!(std::fs::read_dir(root_dir.path()).expect("ls").count(), 1);
}

#[test]
fn a_user_outside_the_socket_group_is_refused_by_the_socket_itself() {
    // No group `vigil-test-nosuch`: the socket is root's only (0600).
    let d = TestDaemon::start("perm", &["--socket-group", "vigil-test-nosuch"]);
    let mode = std::fs::metadata(&d.socket).expect("socket").mode() & 0o777;
    assert_eq!(mode, 0o600);
    let (work, out) = workdir(NOBODY);
    let mut c = d.run_cmd(&out, &["--", "true"]);
    c.uid(NOBODY).gid(NOBODY).current_dir(work.path());
    let o = c.output().expect("client");
    assert_eq!(o.status.code(), Some(125));
    let err = text(&o.stderr);
    assert!(
        err.contains("cannot reach the daemon") && err.contains("Permission denied"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(!out.join("LATEST").exists());
}

#[test]
fn admission_defers_then_rejects_and_a_cancelled_wait_leaves_nothing() {
    let d = TestDaemon::start("admission", &["--max-runs", "1", "--queue", "2"]);
    let (_work, out) = workdir(0);
    let hold = d.run_cmd(
        &out,
        &[
            "--run-id",
            "a",
            "--",
            "sh",
            "-c",
            "echo ready; exec sleep 1000",
        ],
    );
    let (mut a, _a_out) = spawn_ready(hold);
    // B waits first in line, D second.
    let wait_deferred = |run_id: &str, position: u32| {
        let mut c = d
            .run_cmd(&out, &["--run-id", run_id, "--", "echo", "ran"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let mut err = BufReader::new(c.stderr.take().expect("stderr"));
        let mut line = String::new();
        err.read_line(&mut line).expect("read");
        assert!(
            line.contains(&format!("waiting (position {position})")),
            "{run_id}: {line}"
        );
        // Kept open: the client still writes to its stderr.
        (c, err)
    };
    let (b, _b_err) = wait_deferred("b", 1);
    let (mut dd, _d_err) = wait_deferred("d", 2);
    let c = d
        .run_cmd(&out, &["--run-id", "c", "--", "echo", "ran"])
        .output()
        .expect("c");
    assert_eq!(c.status.code(), Some(125));
    assert!(
        text(&c.stderr).contains("queue_full"),
        "{}",
        text(&c.stderr)
    );
    // D's Ctrl-C while it waits: it never runs, no bundle.
    signal(dd.id(), libc::SIGINT);
    assert_eq!(dd.wait().expect("d").code(), Some(130));
    // A cancelled: B starts and runs.
    signal(a.id(), libc::SIGINT);
    assert_eq!(a.wait().expect("a").code(), Some(130));
    let b = b.wait_with_output().expect("b");
    assert_eq!(b.status.code(), Some(0));
    assert_eq!(text(&b.stdout), "ran\n");
    assert_valid_bundle(&out.join("b"));
    for never in ["c", "d"] {
        assert!(!out.join(never).exists(), "{never} got a bundle");
    }
}

/// Parse an OpenMetrics scrape with the official Python client's parser: metric samples as
/// `name{labels} value` lines.
fn scrape(addr: &str) -> Vec<String> {
    let script = r#"
import sys, urllib.request
from prometheus_client.openmetrics.parser import text_string_to_metric_families
body = urllib.request.urlopen("http://" + sys.argv[1] + "/metrics").read().decode()
for fam in text_string_to_metric_families(body):
    for s in fam.samples:
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
        print(f"{s.name}{{{labels}}} {s.value}")
"#;
    let o = Command::new("python3")
        .args(["-c", script, addr])
        .output()
        .expect("python3");
    assert!(
        o.status.success(),
        "scrape not parsed by prometheus_client (`cargo xtask test` installs it): {}",
        text(&o.stderr)
    );
    text(&o.stdout).lines().map(String::from).collect()
}

fn sample(samples: &[String], name_labels: &str) -> f64 {
    samples
        .iter()
        .find_map(|s| s.strip_prefix(name_labels)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {name_labels} in {samples:#?}"))
}

#[test]
fn bad_input_is_refused_counted_and_affects_no_run() {
    // 1,000 connections at once need fds on both ends.
    let lim = libc::rlimit {
        rlim_cur: 8192,
        rlim_max: 8192,
    };
    // SAFETY: setrlimit with a valid struct.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    let mut d = TestDaemon::start("badinput", &["--metrics", "127.0.0.1:0"]);
    // Logged before "ready".
    let addr = d
        .log_text()
        .lines()
        .find_map(|l| {
            l.split("bound=")
                .nth(1)
                .map(|a| a.split_whitespace().next().unwrap_or("").to_string())
        })
        .expect("metrics address");
    let cases: [(&[u8], &str); 4] = [
        (&frame(b"{not json"), "malformed_frame"),
        (&(4u32 << 20).to_be_bytes(), "oversized_frame"),
        (&frame(br#"{"type":"reboot"}"#), "unknown_message"),
        (&frame(br#"{"type":"signal","signal":2}"#), "bad_request"),
    ];
    for (bytes, token) in cases {
        let reply = d.exchange(bytes);
        assert!(reply.contains(token), "{token}: {reply}");
    }
    // Half a frame, then the peer goes away.
    {
        let mut s = std::os::unix::net::UnixStream::connect(&d.socket).expect("connect");
        std::io::Write::write_all(&mut s, &frame(&[b'{'; 100])[..40]).expect("write");
        s.shutdown(std::net::Shutdown::Write).expect("shutdown");
        let mut reply = String::new();
        let _ = std::io::Read::read_to_string(&mut s, &mut reply);
        assert!(reply.contains("in the middle of a frame"), "{reply}");
    }
    // 1,000 connections held at once, each asking for status.
    let conns: Vec<_> = (0..1000)
        .map(|_| {
            let mut s = std::os::unix::net::UnixStream::connect(&d.socket).expect("connect");
            std::io::Write::write_all(&mut s, &frame(br#"{"type":"status"}"#)).expect("write");
            s
        })
        .collect();
    let answered = conns
        .into_iter()
        .filter(|s| {
            let mut s = s;
            s.set_read_timeout(Some(Duration::from_secs(30)))
                .expect("timeout");
            let mut buf = [0u8; 4096];
            std::io::Read::read(&mut s, &mut buf)
                .is_ok_and(|n| n > 4 && text(&buf[4..n]).contains("runs_active"))
        })
        .count();
    assert_eq!(answered, 1000);
    // A run is not affected by any of it.
    let (_work, out) = workdir(0);
    let ok = d
        .run_cmd(&out, &["--", "echo", "fine"])
        .output()
        .expect("run");
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stderr));
    assert_eq!(text(&ok.stdout), "fine\n");
    let samples = scrape(&addr);
    for token in [
        "malformed_frame",
        "oversized_frame",
        "unknown_message",
        "bad_request",
    ] {
        let n = sample(
            &samples,
            &format!("vigil_protocol_errors_total{{reason=\"{token}\"}}"),
        );
        assert!(n >= 1.0, "{token} counted: {n}");
    }
    assert_eq!(
        sample(
            &samples,
            "vigil_protocol_errors_total{reason=\"malformed_frame\"}"
        ),
        2.0
    );
    assert!(sample(&samples, "vigil_connections_total{}") >= 1006.0);
    assert_eq!(sample(&samples, "vigil_runs_active{}"), 0.0);
    assert_eq!(
        sample(&samples, "vigil_runs_finished_total{status=\"passed\"}"),
        1.0
    );
    assert!(sample(&samples, "vigil_kernel_events_total{kind=\"process.exec\"}") >= 1.0);
    assert_eq!(
        sample(
            &samples,
            "vigil_probe_attached{probe=\"process.sched_process_exec\"}"
        ),
        1.0
    );
    assert!(sample(&samples, "vigil_daemon_rss_bytes{}") > 1e6);
    assert!(!d.log_text().contains("panicked"), "{}", d.log_text());
    assert!(d.stop().success());
}

/// Processes in the run cgroups of the daemon `pid`.
fn run_procs(d: &TestDaemon, pid: i32) -> Vec<i32> {
    let parent = cgroup2_mount().join(&d.cgroup_parent);
    let mut out = Vec::new();
    for owner in std::fs::read_dir(&parent).into_iter().flatten().flatten() {
        if !owner
            .file_name()
            .to_string_lossy()
            .starts_with(&format!("vigil-{pid}-"))
        {
            continue;
        }
        for run in std::fs::read_dir(owner.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let procs =
                std::fs::read_to_string(run.path().join("cgroup.procs")).unwrap_or_default();
            out.extend(procs.lines().filter_map(|l| l.parse::<i32>().ok()));
        }
    }
    out
}

/// A run whose command leaves an escaped daemon (setsid) and then holds.
fn holding_run(d: &TestDaemon, out: &Path, run_id: &str) -> Child {
    let cmd = d.run_cmd(
        out,
        &[
            "--run-id",
            run_id,
            "--",
            "sh",
            "-c",
            "setsid sleep 1000 & echo ready; exec sleep 1000",
        ],
    );
    spawn_ready(cmd).0
}

#[test]
fn a_killed_daemon_leaves_nothing_running_and_every_bundle_recoverable() {
    let d = TestDaemon::start("crash", &["--max-runs", "3"]);
    let (_work, out) = workdir(0);
    let mut clients: Vec<_> = ["r1", "r2", "r3"]
        .iter()
        .map(|r| holding_run(&d, &out, r))
        .collect();
    let pid = d.pid();
    let procs = run_procs(&d, pid);
    assert!(
        procs.len() >= 6,
        "three runs with an escaped daemon each: {procs:?}"
    );
    let watch = DirWatch::new(&cgroup2_mount().join(&d.cgroup_parent));
    signal(pid as u32, libc::SIGKILL);
    for c in &mut clients {
        let status = c.wait().expect("client");
        let err = stderr_of(c);
        assert_eq!(status.code(), Some(125), "{err}");
        assert!(
            err.contains("went away before the run finished")
                && err.contains("vigil reindex --repair"),
            "{err}"
        );
    }
    assert!(
        watch.wait_until_gone(&format!("vigil-{pid}-"), Duration::from_secs(20)),
        "the guard removes every run cgroup"
    );
    for p in procs {
        assert!(!pid_alive(p), "pid {p} outlived the daemon");
    }
    for r in ["r1", "r2", "r3"] {
        let b = out.join(r);
        let repair = Command::new(vigil_bin())
            .arg("reindex")
            .arg(&b)
            .arg("--repair")
            .output()
            .expect("repair");
        assert!(repair.status.success(), "{}", text(&repair.stderr));
        assert_valid_bundle(&b);
    }

    // Daemon and guard killed together (a host's OOM killer, say): the escaped daemon stays in
    // its cgroup until a restarted daemon sweeps it, and says so.
    let d = d.restart(&[]);
    let mut c = holding_run(&d, &out, "r4");
    let pid = d.pid();
    let procs = run_procs(&d, pid);
    let guard = std::fs::read_dir("/proc")
        .expect("proc")
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .find(|p| {
            let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            let ppid = stat
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().nth(1))
                .and_then(|x| x.parse::<i32>().ok());
            text(&cmd).contains("__cgroup-guard") && ppid == Some(pid)
        })
        .expect("the daemon's guard");
    signal(guard as u32, libc::SIGKILL);
    signal(pid as u32, libc::SIGKILL);
    let _ = c.wait();
    let escaped: Vec<i32> = procs.iter().copied().filter(|p| pid_alive(*p)).collect();
    assert!(
        !escaped.is_empty(),
        "the escaped daemon is still there before the sweep"
    );
    let d = d.restart(&[]);
    // Swept before it is ready.
    let log = d.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("swept run cgroups"))
        .unwrap_or_else(|| panic!("no sweep logged: {log}"));
    assert!(
        line.contains("r4") && line.contains("processes_killed=1"),
        "{line}"
    );
    for p in escaped {
        assert!(!pid_alive(p), "pid {p} survived the sweep");
    }
}

#[test]
fn one_runs_open_storm_does_not_delay_another_runs_watchdog() {
    let d = TestDaemon::start("storm", &["--max-runs", "2"]);
    let (_work, out) = workdir(0);
    let fixture = fixture_bin();
    let fx = fixture.to_str().expect("utf-8");
    let storm = d
        .run_cmd(
            &out,
            &[
                "--run-id",
                "storm",
                "--liveness-level",
                "off",
                "--",
                fx,
                "open-storm",
                "1000000",
                "/nonexistent/storm",
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("storm");
    let hang = d.run_cmd(
        &out,
        &[
            "--run-id",
            "hang",
            "--liveness-stall-ms",
            "1000",
            "--liveness-kill-grace-ms",
            "300",
            "--",
            fx,
            "hang",
        ],
    );
    let began = Instant::now();
    let (mut h, _) = spawn_ready(hang);
    let status = h.wait().expect("hang");
    let took = began.elapsed();
    assert_eq!(status.code(), Some(124), "{}", stderr_of(&mut h));
    assert!(
        took < Duration::from_millis(1000 + 300 + 1700),
        "watchdog late under the storm: {took:?}"
    );
    let storm = storm.wait_with_output().expect("storm");
    assert_eq!(storm.status.code(), Some(0));

    let hang = read_json(&out.join("hang/observation-health.json"));
    assert_eq!(hang["lost_events"]["kernel_ring_buffer"], 0, "{hang:#}");
    assert_eq!(hang["lost_events"]["queues"], 0, "{hang:#}");
    assert!(
        hang["downgraded_events_by_kind"]
            .as_object()
            .is_none_or(|m| m.is_empty()),
        "{hang:#}"
    );
    assert_eq!(hang["kernel_layer"], "observed", "{hang:#}");

    // Every open of the storm is accounted for in its own bundle: a line (with its count),
    // a downgrade or a counted loss.
    let b = out.join("storm");
    assert_valid_bundle(&b);
    let health = read_json(&b.join("observation-health.json"));
    let lines: u64 = read_ndjson(&b.join("layers/kernel.ndjson"))
        .iter()
        .filter(|e| e["kind"] == "file.open" && e["path"] == "/nonexistent/storm")
        .map(|e| e["count"].as_u64().unwrap_or(1))
        .sum();
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let downgraded = n(&health["downgraded_events_by_kind"]["file.open"]);
    let lost = n(&health["lost_events"]["kernel_ring_buffer_by_kind"]["file.open"]);
    assert!(
        lines + downgraded + lost >= 1_000_000,
        "lines {lines} + downgraded {downgraded} + lost {lost}: {health:#}"
    );
    if downgraded + lost > 0 {
        assert_eq!(health["kernel_layer"], "partial", "{health:#}");
    }
}

#[test]
fn the_systemd_units_verify_and_the_daemon_runs_with_only_their_capabilities() {
    let units = repo_root().join("contrib/systemd");
    let dir = tempfile::tempdir().expect("tempdir");
    let service = std::fs::read_to_string(units.join("vigil.service")).expect("unit");
    // The unit names the installed path; verify it against the binary under test.
    std::fs::write(
        dir.path().join("vigil.service"),
        service.replace("/usr/local/bin/vigil", &vigil_bin().display().to_string()),
    )
    .expect("write");
    std::fs::copy(units.join("vigil.socket"), dir.path().join("vigil.socket")).expect("copy");
    let o = Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.path().join("vigil.service"))
        .arg(dir.path().join("vigil.socket"))
        .output()
        .expect("systemd-analyze (Debian package systemd)");
    assert!(o.status.success(), "{}", text(&o.stderr));
    let noise: Vec<_> = text(&o.stderr)
        .lines()
        .filter(|l| l.contains("vigil."))
        .map(String::from)
        .collect();
    assert!(noise.is_empty(), "systemd-analyze warns: {noise:#?}");

    // Exactly the unit's bounding set: setpriv drops every other capability, then the daemon
    // serves a run with the kernel layer observed to an unprivileged client.
    let caps: Vec<String> = service
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("CapabilityBoundingSet")
        .split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    let d = TestDaemon::start_with(
        "caps",
        &["--socket-group", "nogroup"],
        Some(&[
            "setpriv",
            "--bounding-set",
            &format!("-all,{}", caps.join(",")),
        ]),
    );
    let (work, out) = workdir(NOBODY);
    let mut c = d.run_cmd(&out, &["--run-id", "capped", "--", "sh", "-c", "echo hi"]);
    c.uid(NOBODY).gid(NOBODY).current_dir(work.path());
    let o = c.output().expect("client");
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}\n{}",
        text(&o.stderr),
        d.log_text()
    );
    let health = read_json(&out.join("capped/observation-health.json"));
    assert_eq!(health["kernel_layer"], "observed", "{health:#}");
    let status = std::fs::read_to_string(format!("/proc/{}/status", d.pid())).expect("status");
    let bnd = status
        .lines()
        .find(|l| l.starts_with("CapBnd:"))
        .expect("CapBnd");
    assert_ne!(
        bnd.split_whitespace().nth(1),
        Some("000001ffffffffff"),
        "bounding set not reduced: {bnd}"
    );
}

#[test]
fn a_client_that_never_reads_its_output_holds_only_its_own_run() {
    let d = TestDaemon::start("noreader", &[]);
    let (_work, out) = workdir(0);
    // stdout is a pipe this test never reads: the run fills it, its timeout still ends it.
    let mut stuck = d
        .run_cmd(
            &out,
            &[
                "--run-id",
                "stuck",
                "--timeout",
                "2s",
                "--liveness-kill-grace-ms",
                "300",
                "--",
                "yes",
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("stuck client");
    let began = Instant::now();
    let other = d
        .run_cmd(&out, &["--run-id", "other", "--", "echo", "unaffected"])
        .output()
        .expect("other");
    assert_eq!(text(&other.stdout), "unaffected\n");
    assert!(
        began.elapsed() < Duration::from_secs(2),
        "the other run waited: {:?}",
        began.elapsed()
    );
    let status = stuck.wait().expect("stuck");
    assert_eq!(status.code(), Some(124), "{}", stderr_of(&mut stuck));
    let health = read_json(&out.join("stuck/observation-health.json"));
    let tee_error = health["output"]["stdout"]["tee_error"].to_string();
    assert!(tee_error.contains("stopped reading"), "{health:#}");
    assert_valid_bundle(&out.join("stuck"));
}

#[test]
fn sigterm_stops_the_daemon_after_cancelling_and_committing_its_runs() {
    let mut d = TestDaemon::start("sigterm", &[]);
    let (_work, out) = workdir(0);
    let cmd = d.run_cmd(
        &out,
        &[
            "--run-id",
            "t",
            "--liveness-kill-grace-ms",
            "500",
            "--",
            "sh",
            "-c",
            "echo ready; exec sleep 1000",
        ],
    );
    let (mut client, _o) = spawn_ready(cmd);
    assert!(d.stop().success(), "{}", d.log_text());
    assert_eq!(client.wait().expect("client").code(), Some(143));
    assert_valid_bundle(&out.join("t"));
    assert!(
        d.log_text()
            .contains("stopped: every run ended and committed")
    );
    assert!(!d.socket.exists(), "the socket is removed");
}
