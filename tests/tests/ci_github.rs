//! The GitHub Actions job hooks end to end, without GitHub: a stand-in `Runner.Worker` (a shell
//! whose comm is that name) runs the job-started hook, two steps with the runner's environment
//! variables — one passing, one leaving a daemonized process that holds its output pipe while
//! the runner reads it — and the job-completed hook. The real daemon moves the worker into a job
//! cgroup, watches it, attributes processes to steps and writes the job summary. With no daemon,
//! or one that never answers, both hooks exit 0 within 5 s.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use vigil_e2e::daemon::TestDaemon;
use vigil_e2e::*;

fn script(which: &str) -> std::path::PathBuf {
    repo_root()
        .join("contrib/github")
        .join(format!("{which}.sh"))
}

/// The stand-in worker: /bin/sh under the name Runner.Worker (comm comes from the exec'd path).
fn worker(dir: &Path) -> std::path::PathBuf {
    let w = dir.join("Runner.Worker");
    std::os::unix::fs::symlink("/bin/sh", &w).expect("symlink");
    w
}

fn hook_env(cmd: &mut Command, dir: &Path, run_id: &str) {
    cmd.env("GITHUB_RUN_ID", run_id)
        .env("GITHUB_RUN_ATTEMPT", "1")
        .env("GITHUB_JOB", "build")
        .env("GITHUB_ENV", dir.join("github_env"))
        .env("GITHUB_STEP_SUMMARY", dir.join("summary.md"))
        .env("VIGIL_OUT", dir.join("out"))
        .env("SPEC_RUNNER_PROFILE_STALL_THRESHOLD_MS", "1000")
        .env_remove("SPEC_RUNNER_LIVENESS_LEVEL")
        .env_remove("VIGIL_DAEMON_SOCKET");
}

#[test]
fn a_job_is_watched_per_step_and_its_summary_names_the_step_that_hung_and_the_holder() {
    let d = TestDaemon::start("ci", &[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let vigil = vigil_bin().display().to_string();
    let sock = d.socket.display().to_string();
    // The shipped hook scripts, as the runner's .env names them.
    let hook = |which: &str| format!("VIGIL={vigil} {} --daemon {sock}", script(which).display());
    // The runner: hooks around two steps; each step's output is read to its end, as the real
    // runner does, with the step's timeout (3 s) as the only way out of a pipe held open. Each
    // step does some work (0.3 s) as real steps do: its id is read from its environment while
    // it runs.
    let script = format!(
        "{start}; \
         GITHUB_ACTION=build sh -c 'echo compiling; ls / > /dev/null; sleep 0.3' 2>&1 | cat > build.log; \
         GITHUB_ACTION=flaky sh -c '(setsid sleep 600 &); echo started; sleep 0.3' 2>&1 | timeout 3 cat > flaky.log; \
         {end}",
        start = hook("job-started"),
        end = hook("job-completed"),
    );
    let run = std::process::id().to_string();
    let key = format!("gh-{run}-1-build");
    let job_cgroup = vigil_e2e::cgroup2_mount()
        .join(&d.cgroup_parent)
        .join("jobs")
        .join(&key);
    // Whatever happens, the leftover daemon dies with the test.
    let _cleanup = KillOnDrop(job_cgroup.clone());
    let mut cmd = Command::new(worker(dir.path()));
    cmd.args(["-c", &script]).current_dir(dir.path());
    hook_env(&mut cmd, dir.path(), &run);
    let out = cmd.output().expect("run the stand-in runner");
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{said}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains(&format!("vigil: watching job {key}")),
        "{said}"
    );
    assert!(!said.contains("::warning"), "{said}");
    // The steps got the SDK socket and the run id through $GITHUB_ENV.
    let env = std::fs::read_to_string(dir.path().join("github_env")).expect("GITHUB_ENV");
    assert!(env.contains(&format!("VIGIL_RUN_ID={key}")), "{env}");
    assert!(env.contains("VIGIL_SDK_SOCKET="), "{env}");

    let bundle = dir.path().join("out").join(&key);
    assert_valid_bundle(&bundle);
    assert_schemas(&bundle);
    let h = read_json(&bundle.join("observation-health.json"));
    assert_eq!(h["spawned_by_vigil"], false);
    assert_eq!(h["mode"], "daemon");
    let cgroup = h["cgroup"]["path"].as_str().expect("cgroup").to_string();
    assert_eq!(Path::new(&cgroup), job_cgroup);
    // The daemonized sleep is still in the job cgroup: every step inherited it.
    let left = std::fs::read_to_string(Path::new(&cgroup).join("cgroup.procs")).unwrap_or_default();
    assert_eq!(left.lines().count(), 1, "the leftover sleep: {left:?}");

    let trace = read_json(&bundle.join("run-trace.json"));
    let steps: Vec<&str> = trace["summary"]["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| s["name"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(steps, ["build", "flaky"]);
    let spans: Vec<&serde_json::Value> = trace["spans"]
        .as_array()
        .expect("spans")
        .iter()
        .filter(|s| s["name"] == "case.run" && s["attrs"].get("step_id").is_some())
        .collect();
    assert_eq!(spans.len(), 2);
    assert!(
        spans[0]["attrs"]["execs"].as_u64() >= Some(2),
        "sh and ls: {:?}",
        spans[0]
    );

    let summary = std::fs::read_to_string(dir.path().join("summary.md")).expect("summary");
    let flaky_row = summary
        .lines()
        .find(|l| l.contains(" flaky |"))
        .unwrap_or_else(|| panic!("{summary}"));
    assert!(flaky_row.contains("hung"), "{summary}");
    let build_row = summary
        .lines()
        .find(|l| l.contains(" build |"))
        .expect("build row");
    assert!(!build_row.contains("hung"), "{summary}");
    assert!(summary.contains("### Why it hung"), "{summary}");
    assert!(
        summary
            .lines()
            .any(|l| l.contains("'sleep 600'") && l.contains("setsid") && l.contains("step flaky")),
        "{summary}"
    );
}

struct KillOnDrop(std::path::PathBuf);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::write(self.0.join("cgroup.kill"), "1");
    }
}

fn timed(cmd: &mut Command) -> (Output, Duration) {
    let t = Instant::now();
    let out = cmd.output().expect("hook");
    (out, t.elapsed())
}

#[test]
fn without_a_daemon_or_with_a_silent_one_both_hooks_exit_0_within_5_s() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    // A socket that accepts connections and never answers.
    let silent = dir.path().join("silent.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&silent).expect("bind");
    let w = worker(dir.path());
    let cases = [
        (vigil_bin(), dir.path().join("absent.sock")),
        (vigil_bin(), silent.clone()),
        // vigil itself missing: the script says so and still exits 0.
        (dir.path().join("no-vigil"), silent.clone()),
    ];
    for (vigil, socket) in cases {
        for which in ["job-started", "job-completed"] {
            let script = format!(
                "VIGIL={} {} --daemon {}",
                vigil.display(),
                script(which).display(),
                socket.display()
            );
            // The hook runs under the stand-in worker, so job-started gets as far as the daemon.
            let mut cmd = Command::new(&w);
            cmd.args(["-c", &script]);
            hook_env(&mut cmd, dir.path(), "77");
            let (out, took) = timed(&mut cmd);
            let said = String::from_utf8_lossy(&out.stdout);
            assert_eq!(
                out.status.code(),
                Some(0),
                "{which} {}: {said}",
                socket.display()
            );
            assert!(took < Duration::from_millis(5500), "{which} took {took:?}");
            let warning: Vec<&str> = said
                .lines()
                .filter(|l| l.starts_with("::warning"))
                .collect();
            assert_eq!(warning.len(), 1, "{said}");
        }
    }
}

#[test]
fn a_restarted_daemon_removes_the_empty_job_cgroups_a_previous_one_left() {
    require_root();
    let parent = cgroup2_mount().join("vigil-test-sweep");
    let left = parent.join("jobs").join("gh-1-1-gone");
    std::fs::create_dir_all(&left).expect("a leftover job cgroup");
    // Swept at start, by a reaper thread: said before or after the daemon is ready.
    let mut d = TestDaemon::start("sweep", &[]);
    let said = |l: &str| l.contains("job cgroup removed") && l.contains("gh-1-1-gone");
    if !d.log_text().lines().any(said) {
        let line = d.wait_log("job cgroup removed", Duration::from_secs(10));
        assert!(said(&line), "{line}");
    }
    assert!(!left.exists());
}
