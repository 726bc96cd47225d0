//! Helpers for vigil's privileged end-to-end tests: locate the real binaries, run vigil, check
//! bundles against the JSON Schemas in specs/schema/, and look at real processes.
//!
//! These tests need root (cgroup v2 writes). They fail — loudly, never skip — when not root.

pub mod daemon;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Panic unless running as root: the tests must not pass by not running.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "vigil's end-to-end tests need root (cgroup v2); run them with `sudo cargo xtask test`"
    );
}

/// The vigil binary: $VIGIL_BIN, or target/<profile>/vigil next to the fixture.
pub fn vigil_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("VIGIL_BIN") {
        return PathBuf::from(p);
    }
    let bin = target_dir().join("vigil");
    assert!(
        bin.exists(),
        "{} not built: run `cargo build -p vigil` first (`cargo xtask test` does)",
        bin.display()
    );
    bin
}

/// target/<profile>/: the test executable lives in its deps/ directory.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .to_path_buf()
}

pub fn fixture_bin() -> PathBuf {
    let bin = target_dir().join("vigil-fixture");
    assert!(bin.exists(), "{} not built", bin.display());
    bin
}

/// Where the cgroup2 hierarchy is mounted (/sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid
/// hosts).
pub fn cgroup2_mount() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("mounts");
    let mount = mounts
        .lines()
        .find(|l| l.split(' ').nth(2) == Some("cgroup2"))
        .and_then(|l| l.split(' ').nth(1))
        .expect("cgroup2 mount");
    PathBuf::from(mount)
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// One `vigil run` in its own output directory.
pub struct VigilRun {
    pub out: tempfile::TempDir,
    pub run_id: String,
    pub cmd: Command,
}

pub struct Finished {
    pub output: Output,
    pub bundle: PathBuf,
    pub elapsed: Duration,
}

impl Finished {
    pub fn code(&self) -> i32 {
        self.output.status.code().unwrap_or(-1)
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }
    pub fn trace(&self) -> Value {
        read_json(&self.bundle.join("run-trace.json"))
    }
    pub fn health(&self) -> Value {
        read_json(&self.bundle.join("observation-health.json"))
    }
    pub fn events(&self) -> Vec<Value> {
        read_ndjson(&self.bundle.join("events.ndjson"))
    }
}

impl VigilRun {
    pub fn new(run_id: &str) -> Self {
        require_root();
        let out = tempfile::tempdir().expect("tempdir");
        let mut cmd = Command::new(vigil_bin());
        cmd.arg("run")
            .arg("--out")
            .arg(out.path())
            .arg("--run-id")
            .arg(run_id);
        // Relative defaults (profile copies under .artifacts/) land in the temp dir, not the repo.
        cmd.current_dir(out.path());
        // Tests set every liveness value they depend on; clear the environment equivalents.
        for (k, _) in std::env::vars() {
            if k.starts_with("SPEC_RUNNER_") || k == "VIGIL_OUT" {
                cmd.env_remove(k);
            }
        }
        VigilRun {
            out,
            run_id: run_id.to_string(),
            cmd,
        }
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.cmd.args(args);
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.cmd.env(k, v);
        self
    }

    /// Append `-- vigil-fixture ARGS…`.
    pub fn fixture(mut self, args: &[&str]) -> Self {
        self.cmd.arg("--").arg(fixture_bin()).args(args);
        self
    }

    pub fn bundle(&self) -> PathBuf {
        self.out.path().join(&self.run_id)
    }

    pub fn run(self) -> (Finished, tempfile::TempDir) {
        self.run_with_stdout(Stdio::piped())
    }

    /// Run with vigil's own stdout going to `stdout` (a file, say) instead of a pipe.
    pub fn run_with_stdout(mut self, stdout: impl Into<Stdio>) -> (Finished, tempfile::TempDir) {
        let start = Instant::now();
        let output = self
            .cmd
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::piped())
            .output()
            .expect("spawn vigil");
        let f = Finished {
            output,
            bundle: self.out.path().join(&self.run_id),
            elapsed: start.elapsed(),
        };
        (f, self.out)
    }
}

pub fn read_json(path: &Path) -> Value {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

pub fn read_ndjson(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .lines()
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{}: bad line {l:?}: {e}", path.display()))
        })
        .collect()
}

fn schema(name: &str) -> jsonschema::Validator {
    let s = read_json(&repo_root().join("specs/schema").join(name));
    jsonschema::validator_for(&s).unwrap_or_else(|e| panic!("schema {name}: {e}"))
}

fn check(validator: &jsonschema::Validator, what: &str, v: &Value) {
    let errors: Vec<String> = validator
        .iter_errors(v)
        .map(|e| format!("{e} at {}", e.instance_path))
        .collect();
    assert!(errors.is_empty(), "{what} violates its schema: {errors:#?}");
}

/// A document matches the JSON Schema `specs/schema/<name>`.
pub fn assert_matches_schema(name: &str, v: &Value) {
    check(&schema(name), name, v);
}

/// `vigil validate` accepts the bundle and every artifact matches its JSON Schema.
pub fn assert_valid_bundle(bundle: &Path) {
    vigil_ok(&["validate".as_ref(), bundle.as_os_str()]);
    assert_schemas(bundle);
}

/// Run a vigil subcommand that must succeed; returns its output.
pub fn vigil_ok(args: &[&std::ffi::OsStr]) -> Output {
    let out = Command::new(vigil_bin())
        .args(args)
        .output()
        .expect("spawn vigil");
    assert!(
        out.status.success(),
        "vigil {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Every artifact of a bundle matches its JSON Schema.
pub fn assert_schemas(bundle: &Path) {
    check(
        &schema("run_trace.v1.json"),
        "run-trace.json",
        &read_json(&bundle.join("run-trace.json")),
    );
    check(
        &schema("observation_health.v1.json"),
        "observation-health.json",
        &read_json(&bundle.join("observation-health.json")),
    );
    check(
        &schema("artifact_index.v1.json"),
        "artifact_index.json",
        &read_json(&bundle.join("artifact_index.json")),
    );
    let ev = schema("runner_event.v1.json");
    for (i, e) in read_ndjson(&bundle.join("events.ndjson"))
        .iter()
        .enumerate()
    {
        check(&ev, &format!("events.ndjson line {}", i + 1), e);
        assert_eq!(
            e["seq"].as_u64(),
            Some(i as u64),
            "seq runs from 0 without gaps"
        );
    }
    for (layer, name) in [
        ("kernel", "kernel_event.v1.json"),
        ("policy", "policy_decision.v1.json"),
        ("sdk", "sdk_event.v1.json"),
    ] {
        let v = schema(name);
        for e in read_ndjson(&bundle.join(format!("layers/{layer}.ndjson"))) {
            check(&v, layer, &e);
        }
    }
}

pub fn pid_alive(pid: i32) -> bool {
    // A zombie still answers kill(0); look at its state instead.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

pub fn read_pid(path: &Path) -> i32 {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("pid file {}: {e}", path.display()))
        .trim()
        .parse()
        .expect("pid")
}

/// Wait (on cgroup.events, no polling loop) until `cgroup` holds no process; false on timeout.
pub fn wait_cgroup_empty(cgroup: &Path, timeout: Duration) -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::io::{Read, Seek};
    use std::os::fd::AsFd;
    let Ok(mut f) = std::fs::File::open(cgroup.join("cgroup.events")) else {
        return true;
    };
    let deadline = Instant::now() + timeout;
    loop {
        let mut text = String::new();
        let _ = f.rewind();
        let _ = f.read_to_string(&mut text);
        if text.lines().any(|l| l == "populated 0") {
            return true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(f.as_fd(), PollFlags::POLLPRI)];
        let _ = poll(&mut fds, PollTimeout::from(ms));
    }
}

/// `n` scaled down for a slow machine: divided by `VIGIL_TEST_SCALE` (`cargo xtask vm` sets
/// it under TCG, where fork/exec and opens run 10–40× slower), at least 1. The tests that use
/// it keep their counts exact; only the sizes shrink.
pub fn scaled(n: u64) -> u64 {
    let by: u64 = std::env::var("VIGIL_TEST_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|d| *d > 0)
        .unwrap_or(1);
    (n / by).max(1)
}

/// Events of one kind, in order.
pub fn events_of<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["kind"] == kind).collect()
}

/// Removal of entries of a directory, watched with inotify (no polling).
pub struct DirWatch {
    dir: PathBuf,
    inotify: nix::sys::inotify::Inotify,
}

impl DirWatch {
    pub fn new(dir: &Path) -> Self {
        use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
        std::fs::create_dir_all(dir).expect("create watched dir");
        let inotify =
            Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).expect("inotify");
        inotify
            .add_watch(dir, AddWatchFlags::IN_DELETE)
            .expect("watch");
        DirWatch {
            dir: dir.to_path_buf(),
            inotify,
        }
    }

    fn any_with_prefix(&self, prefix: &str) -> bool {
        std::fs::read_dir(&self.dir)
            .map(|d| {
                d.filter_map(Result::ok)
                    .any(|e| e.file_name().to_string_lossy().starts_with(prefix))
            })
            .unwrap_or(false)
    }

    /// Wait until no entry starts with `prefix`; false on timeout.
    pub fn wait_until_gone(&self, prefix: &str, timeout: Duration) -> bool {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        use std::os::fd::AsFd;
        let deadline = Instant::now() + timeout;
        while self.any_with_prefix(prefix) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
            let mut fds = [PollFd::new(self.inotify.as_fd(), PollFlags::POLLIN)];
            let _ = poll(&mut fds, PollTimeout::from(ms));
            let _ = self.inotify.read_events();
        }
        true
    }
}

/// A loopback TCP port nothing listens on: bound, then released.
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// A thread outside any run repeating `each` until stopped: the kernel tests' proof that only a
/// run's own calls reach its bundle.
pub struct Outsider {
    running: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl Outsider {
    pub fn start(each: impl Fn() + Send + 'static) -> Outsider {
        use std::sync::atomic::{AtomicBool, Ordering};
        let running = std::sync::Arc::new(AtomicBool::new(true));
        let r = running.clone();
        let thread = std::thread::spawn(move || {
            let mut n = 0u64;
            while r.load(Ordering::Relaxed) {
                each();
                n += 1;
            }
            n
        });
        Outsider { running, thread }
    }

    /// Stop it; how many times it ran.
    pub fn stop(self) -> u64 {
        self.running
            .store(false, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().expect("outsider")
    }
}
