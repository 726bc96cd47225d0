//! `vigil watch` end to end, as root on the real kernel: a job vigil did not start, in a cgroup
//! someone else made, is seeded from /proc, followed by kernel events, and its bundle is the
//! same as a run's. Ending a watch (SIGINT, --duration, the cgroup emptying) kills nothing; the
//! watchdog does. Filesystem enforcement is refused; network enforcement is held.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};

use serde_json::Value;
use vigil_e2e::*;

/// A cgroup of the test's own, with a job started in it (not by vigil); killed and removed on
/// drop.
struct Job {
    cgroup: PathBuf,
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Job {
    /// `sh -c script` in a fresh cgroup; its stdin is a pipe the test holds (`go` writes a line).
    fn start(name: &str, script: &str) -> Job {
        require_root();
        let cgroup = cgroup2_mount().join(format!("vigil-e2e-{name}-{}", std::process::id()));
        let _ = std::fs::create_dir(&cgroup);
        let procs = cgroup.join("cgroup.procs");
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]).stdin(Stdio::piped());
        // The path is prepared before the fork: between fork and exec only async-signal-safe
        // calls (open, write, close) run.
        let path = std::ffi::CString::new(procs.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: the closure only calls open/write/close on a CString made before the fork.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
                if n != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("spawn the job");
        let stdin = child.stdin.take();
        Job {
            cgroup,
            child,
            stdin,
        }
    }

    fn name(&self) -> String {
        self.cgroup
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned()
    }

    fn go(&mut self) {
        let mut s = self.stdin.take().expect("stdin");
        s.write_all(b"go\n").expect("go");
    }

    fn procs(&self) -> Vec<i32> {
        std::fs::read_to_string(self.cgroup.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.parse().ok())
            .collect()
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        let _ = std::fs::write(self.cgroup.join("cgroup.kill"), "1");
        let _ = self.child.wait();
        let _ = vigil_e2e::wait_cgroup_empty(&self.cgroup, std::time::Duration::from_secs(5));
        let _ = std::fs::remove_dir(&self.cgroup);
    }
}

/// `vigil watch` on the job's cgroup (by its name under the mount); returns once it said it is
/// watching.
struct Watch {
    child: Child,
    out: tempfile::TempDir,
    said: Vec<String>,
    stderr: BufReader<std::process::ChildStderr>,
}

impl Watch {
    fn start(job: &Job, run_id: &str, extra: &[&str]) -> Watch {
        let out = tempfile::tempdir().expect("tempdir");
        let mut cmd = Command::new(vigil_bin());
        cmd.args([
            "watch",
            "--cgroup",
            &job.name(),
            "--run-id",
            run_id,
            "--out",
        ])
        .arg(out.path())
        .args(extra)
        .current_dir(out.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        for (k, _) in std::env::vars() {
            if k.starts_with("SPEC_RUNNER_") || k == "VIGIL_OUT" || k == "VIGIL_DAEMON_SOCKET" {
                cmd.env_remove(k);
            }
        }
        let mut child = cmd.spawn().expect("spawn vigil watch");
        let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
        let mut said = Vec::new();
        loop {
            let mut line = String::new();
            let n = stderr.read_line(&mut line).expect("read stderr");
            assert!(n > 0, "vigil watch ended before attaching: {said:?}");
            let watching = line.contains("watching ");
            said.push(line);
            if watching {
                break;
            }
        }
        Watch {
            child,
            out,
            said,
            stderr,
        }
    }

    fn bundle(&self, run_id: &str) -> PathBuf {
        self.out.path().join(run_id)
    }

    /// Wait for vigil to exit: (exit code, everything it said).
    fn finish(mut self) -> (i32, String, tempfile::TempDir) {
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut self.stderr, &mut rest);
        let code = self.child.wait().expect("wait").code().unwrap_or(-1);
        (code, self.said.concat() + &rest, self.out)
    }
}

fn states<'a>(events: &'a [Value], state: &str) -> Vec<&'a Value> {
    events_of(events, "subprocess_state")
        .into_iter()
        .filter(|e| e["data"]["state"] == state)
        .collect()
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: signalling a process this test started.
    unsafe { libc::kill(pid as i32, sig) };
}

#[test]
fn a_watch_seeds_what_runs_follows_what_starts_and_ends_when_the_cgroup_empties() {
    let mut job = Job::start(
        "seed",
        "read x; ls / > /dev/null; cat /etc/hostname > /dev/null",
    );
    let shell = job.child.id();
    let w = Watch::start(&job, "w-seed", &[]);
    let bundle = w.bundle("w-seed");
    // The job goes on only now: every step after this is the kernel's evidence.
    job.go();
    let (code, said, _out) = w.finish();
    assert_eq!(code, 0, "{said}");
    assert!(said.contains("1 process(es) running at attach"), "{said}");
    assert_valid_bundle(&bundle);
    assert_schemas(&bundle);
    let trace = read_json(&bundle.join("run-trace.json"));
    assert_eq!(trace["status"], "observed");
    let events = read_ndjson(&bundle.join("events.ndjson"));
    let seeded = states(&events, "running");
    let seeded: Vec<_> = seeded
        .iter()
        .filter(|e| e["data"]["seeded"] == true)
        .collect();
    assert_eq!(seeded.len(), 1, "{seeded:?}");
    assert_eq!(seeded[0]["data"]["pid"], shell);
    assert_eq!(seeded[0]["data"]["comm"], "sh");
    let execs: Vec<String> = states(&events, "exec")
        .iter()
        .map(|e| e["data"]["filename"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(
        execs.iter().any(|f| f.ends_with("/ls")) && execs.iter().any(|f| f.ends_with("/cat")),
        "{execs:?}"
    );
    let exited: Vec<_> = states(&events, "exited")
        .iter()
        .map(|e| e["data"]["pid"].clone())
        .collect();
    assert!(
        exited.contains(&Value::from(shell)),
        "the seeded shell's exit: {exited:?}"
    );
    let ended = events_of(&events, "note");
    assert!(
        ended
            .iter()
            .any(|e| e["data"]["what"] == "watch_ended" && e["data"]["why"] == "cgroup_empty"),
        "{ended:?}"
    );
    let h = read_json(&bundle.join("observation-health.json"));
    assert_eq!(h["spawned_by_vigil"], false);
    assert_eq!(h["watch"]["seeded_processes"], 1);
    assert_eq!(h["kernel_layer"], "observed", "{h}");
    assert!(
        h["watch"]["missed_before_attach"]
            .as_array()
            .is_some_and(|m| !m.is_empty())
    );
    // The job's own result is its own: vigil killed nothing, and left the cgroup in place.
    assert!(job.child.wait().expect("wait").success());
    assert!(job.cgroup.exists(), "a watched cgroup is never removed");
}

#[test]
fn sigint_and_duration_end_a_watch_and_leave_the_job_running() {
    let job = Job::start("sigint", "exec sleep 300");
    let w = Watch::start(&job, "w-int", &[]);
    signal(w.child.id(), libc::SIGINT);
    let (code, said, out) = w.finish();
    assert_eq!(code, 0, "{said}");
    assert!(said.contains("ending the watch"), "{said}");
    let bundle = out.path().join("w-int");
    assert_valid_bundle(&bundle);
    assert_eq!(job.procs(), [job.child.id() as i32], "the job still runs");
    assert!(pid_alive(job.child.id() as i32));

    let w = Watch::start(&job, "w-dur", &["--duration", "300ms"]);
    let (code, said, out) = w.finish();
    assert_eq!(code, 0, "{said}");
    let events = read_ndjson(&out.path().join("w-dur").join("events.ndjson"));
    assert!(
        events_of(&events, "note")
            .iter()
            .any(|e| e["data"]["why"] == "duration"),
        "{events:?}"
    );
    assert!(pid_alive(job.child.id() as i32), "--duration kills nothing");
}

#[test]
fn a_stalled_watched_job_is_killed_with_its_escaped_daemon() {
    let job = Job::start("stall", "setsid sleep 300 & exec sleep 300");
    let w = Watch::start(
        &job,
        "w-stall",
        &[
            "--liveness-stall-ms",
            "1500",
            "--liveness-kill-grace-ms",
            "500",
        ],
    );
    let (code, said, out) = w.finish();
    assert_eq!(code, 124, "{said}");
    let bundle = out.path().join("w-stall");
    assert_valid_bundle(&bundle);
    let events = read_ndjson(&bundle.join("events.ndjson"));
    let dog = events_of(&events, "watchdog");
    let verdicts: Vec<_> = dog
        .iter()
        .filter(|e| e["reason"] == "stall.subprocess.no_output_no_event")
        .collect();
    assert_eq!(verdicts.len(), 1, "{dog:?}");
    assert_eq!(
        verdicts[0]["data"]["snapshot"]["processes"]
            .as_array()
            .map(Vec::len),
        Some(2),
        "the triage saw both sleeps"
    );
    assert!(job.procs().is_empty(), "both sleeps killed");
    assert!(job.cgroup.exists(), "killed, not removed");
    let trace = read_json(&bundle.join("run-trace.json"));
    assert_eq!(trace["status"], "timed_out");
}

fn policy_file(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("policy.yaml");
    std::fs::write(&p, text).expect("policy");
    p
}

#[test]
fn filesystem_enforcement_is_refused_and_network_enforcement_is_held() {
    let dir = tempfile::tempdir().expect("tempdir");
    let job = Job::start("enforce", "read x; exec sleep 300");
    // A policy that restricts writes cannot be enforced on a process that exec'd long ago.
    let fs_policy = policy_file(
        dir.path(),
        "version: 1\nname: fs\nmode: enforce\ndefault: deny\nfilesystem:\n  read:\n    - id: r\n      paths: [/]\n  write:\n    - id: w\n      paths: [/tmp]\n  exec:\n    - id: x\n      paths: [/]\n",
    );
    let out = Command::new(vigil_bin())
        .args(["watch", "--cgroup", &job.name(), "--policy"])
        .arg(&fs_policy)
        .output()
        .expect("vigil watch");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot be enforced on processes vigil did not start")
            && err.lines().count() == 1,
        "{err}"
    );
    drop(job);

    // Network rules are: the cgroup hooks go on the existing cgroup.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
    let port = listener.local_addr().expect("addr").port();
    let net_policy = policy_file(
        dir.path(),
        "version: 1\nname: net\nmode: enforce\ndefault: deny\nfilesystem:\n  read:\n    - id: r\n      paths: [/]\n  write:\n    - id: w\n      paths: [/]\n  exec:\n    - id: x\n      paths: [/]\nnetwork:\n  connect:\n    - id: none\n      cidrs: [\"10.255.255.0/24\"]\n",
    );
    let f = fixture_bin().display().to_string();
    let mut job = Job::start(
        "netenf",
        &format!("read x; {f} connect 127.0.0.1:{port} > /dev/null && exit 0 || exit 7"),
    );
    let policy = net_policy.display().to_string();
    let w = Watch::start(&job, "w-net", &["--policy", &policy]);
    job.go();
    let (code, said, out) = w.finish();
    assert_eq!(code, 0, "{said}");
    assert_eq!(
        job.child.wait().expect("wait").code(),
        Some(7),
        "the connect was refused in the kernel"
    );
    let h = read_json(&out.path().join("w-net").join("observation-health.json"));
    assert_eq!(h["policy_layer"], "enforced", "{h}");
    let decisions = read_ndjson(&out.path().join("w-net").join("layers/policy.ndjson"));
    assert!(
        decisions.iter().any(
            |d| d["decision"] == "deny:network.connect" && d["enforcement_evidence"] == "EPERM"
        ),
        "{decisions:?}"
    );
}

#[test]
fn a_watch_through_the_daemon_uses_its_sensor_and_only_root_or_the_owner_may_ask() {
    // The socket's group is nobody's, so that nobody can ask (and be refused).
    let d = vigil_e2e::daemon::TestDaemon::start("watch", &["--socket-group", "nogroup"]);
    let mut job = Job::start("viad", "read x; ls / > /dev/null");
    let sock = d.socket.display().to_string();
    let announce = tempfile::NamedTempFile::new().expect("tmp");
    let file = announce.path().display().to_string();
    let w = Watch::start(
        &job,
        "w-daemon",
        &["--daemon", &sock, "--sdk-announce", &file],
    );
    job.go();
    let (code, said, out) = w.finish();
    assert_eq!(code, 0, "{said}");
    let bundle = out.path().join("w-daemon");
    assert_valid_bundle(&bundle);
    let h = read_json(&bundle.join("observation-health.json"));
    assert_eq!(
        (h["mode"].as_str(), h["spawned_by_vigil"].as_bool()),
        (Some("daemon"), Some(false))
    );
    let events = read_ndjson(&bundle.join("events.ndjson"));
    assert!(
        states(&events, "exec").iter().any(|e| e["data"]["filename"]
            .as_str()
            .is_some_and(|f| f.ends_with("/ls"))),
        "the daemon's sensor saw the job's exec"
    );
    let path = std::fs::read_to_string(announce.path()).expect("announced");
    assert!(path.trim().ends_with("sdk.sock"), "{path}");

    // nobody may not watch root's cgroup through the daemon.
    let job = Job::start("viad2", "exec sleep 300");
    let out = Command::new(vigil_bin())
        .args([
            "watch",
            "--cgroup",
            &job.name(),
            "--daemon",
            &sock,
            "--out",
            "/tmp",
        ])
        .uid(65534)
        .gid(65534)
        .current_dir("/tmp")
        .output()
        .expect("vigil watch as nobody");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("not_permitted") && err.contains("delegated"),
        "{err}"
    );
    assert!(pid_alive(job.child.id() as i32));
}
