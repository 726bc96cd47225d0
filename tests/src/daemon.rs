//! A real `vigil daemon` for a test: its own socket and cgroup parent, its log read line by line
//! (readiness and what it did are waited for as log events, never slept for), stopped with
//! SIGTERM when dropped.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{require_root, vigil_bin};

pub struct TestDaemon {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub cgroup_parent: String,
    pub child: Option<Child>,
    lines: mpsc::Receiver<String>,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl TestDaemon {
    /// Start `vigil daemon` with `args` (its socket and cgroup parent are the test's) and wait
    /// for its "ready" line.
    pub fn start(name: &str, args: &[&str]) -> TestDaemon {
        TestDaemon::start_with(name, args, None)
    }

    /// The same, run through `wrapper` (a command that execs the rest, such as setpriv).
    pub fn start_with(name: &str, args: &[&str], wrapper: Option<&[&str]>) -> TestDaemon {
        require_root();
        let dir = tempfile::tempdir().expect("tempdir");
        // Searchable by the unprivileged clients of some tests.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod");
        let socket = dir.path().join("vigil.sock");
        let cgroup_parent = format!("vigil-test-{name}");
        TestDaemon::start_at(dir, socket, cgroup_parent, args, wrapper)
    }

    /// Start another daemon on the same socket and cgroup parent (after a crash).
    pub fn restart(mut self, args: &[&str]) -> TestDaemon {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let placeholder = tempfile::tempdir().expect("tempdir");
        let dir = std::mem::replace(&mut self.dir, placeholder);
        TestDaemon::start_at(
            dir,
            self.socket.clone(),
            self.cgroup_parent.clone(),
            args,
            None,
        )
    }

    fn start_at(
        dir: tempfile::TempDir,
        socket: PathBuf,
        cgroup_parent: String,
        args: &[&str],
        wrapper: Option<&[&str]>,
    ) -> TestDaemon {
        let mut cmd = match wrapper {
            Some([first, rest @ ..]) => {
                let mut c = Command::new(first);
                c.args(rest).arg(vigil_bin());
                c
            }
            _ => Command::new(vigil_bin()),
        };
        let mut child = cmd
            .arg("daemon")
            .arg("--socket")
            .arg(&socket)
            .args(["--cgroup-parent", &cgroup_parent])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn vigil daemon");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let l = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                l.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(line.clone());
                let _ = tx.send(line);
            }
        });
        let mut d = TestDaemon {
            dir,
            socket,
            cgroup_parent,
            child: Some(child),
            lines: rx,
            log,
        };
        d.wait_log("vigil daemon ready", Duration::from_secs(20));
        d
    }

    /// Wait for a log line containing `needle`; panics with the log on timeout.
    pub fn wait_log(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return l,
                Ok(_) => continue,
                Err(_) => panic!(
                    "daemon log never said {needle:?}; log:\n{}",
                    self.log.lock().expect("log").join("\n")
                ),
            }
        }
    }

    pub fn log_text(&self) -> String {
        self.log.lock().expect("log").join("\n")
    }

    /// `vigil run --daemon SOCKET --out OUT ARGS…` (not started).
    pub fn run_cmd(&self, out: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(vigil_bin());
        cmd.arg("run")
            .arg("--daemon")
            .arg(&self.socket)
            .arg("--out")
            .arg(out)
            .args(args)
            .current_dir(out.parent().unwrap_or(Path::new("/")));
        for (k, _) in std::env::vars() {
            if k.starts_with("SPEC_RUNNER_") || k == "VIGIL_OUT" {
                cmd.env_remove(k);
            }
        }
        cmd
    }

    /// The daemon's pid.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// Send raw bytes on a fresh connection and read what comes back until the daemon closes.
    pub fn exchange(&self, bytes: &[u8]) -> String {
        let mut s = UnixStream::connect(&self.socket).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        s.write_all(bytes).expect("write");
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        // Skip each frame's 4-byte length: the JSON is what the test reads.
        let mut text = String::new();
        let mut rest = &out[..];
        while rest.len() >= 4 {
            let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            let end = (4 + len).min(rest.len());
            text.push_str(&String::from_utf8_lossy(&rest[4..end]));
            text.push('\n');
            rest = &rest[end..];
        }
        text
    }

    /// SIGTERM and wait (the daemon cancels its runs and commits their bundles first).
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        // SAFETY: signalling our own child.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        c.wait().expect("wait daemon")
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }
}

/// One frame: 4-byte big-endian length, then `body`.
pub fn frame(body: &[u8]) -> Vec<u8> {
    let mut v = (body.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(body);
    v
}
