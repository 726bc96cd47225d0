//! The watch rows of `cargo xtask bench` (`--watch-only`): `vigil watch` attaching to a cgroup
//! that already holds 200 running processes, and the GitHub job-started hook through a release
//! daemon, against a stand-in worker doing nothing, in the same invocation.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::bench::{Env, Row, median, paired};

/// A cgroup of the bench's own holding `n` sleeping processes; killed and removed on drop.
struct Crowd {
    dir: std::path::PathBuf,
    kids: Vec<Child>,
}

impl Drop for Crowd {
    fn drop(&mut self) {
        let _ = std::fs::write(self.dir.join("cgroup.kill"), "1");
        for k in &mut self.kids {
            let _ = k.wait();
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

fn cgroup2_mount() -> Result<std::path::PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    mounts
        .lines()
        .find(|l| l.split(' ').nth(2) == Some("cgroup2"))
        .and_then(|l| l.split(' ').nth(1))
        .map(std::path::PathBuf::from)
        .context("no cgroup2 mount")
}

fn crowd(name: &str, n: usize) -> Result<Crowd> {
    let dir = cgroup2_mount()?.join(name);
    let _ = std::fs::create_dir(&dir);
    let procs = std::ffi::CString::new(dir.join("cgroup.procs").as_os_str().as_encoded_bytes())?;
    let mut kids = Vec::new();
    for _ in 0..n {
        let path = procs.clone();
        let mut c = Command::new("sleep");
        c.arg("600").stdin(Stdio::null()).stdout(Stdio::null());
        // SAFETY: only open/write/close between fork and exec, on a CString made before.
        unsafe {
            c.pre_exec(move || {
                let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(fd);
                Ok(())
            });
        }
        kids.push(c.spawn().context("spawn sleep")?);
    }
    Ok(Crowd { dir, kids })
}

pub fn bench(env: &Env, tmp: &Path, quick: bool) -> Result<Vec<Row>> {
    let reps = if quick { 5 } else { 15 };
    let mut rows = Vec::new();
    let c = crowd("vigil-bench-watch", 200)?;
    let name = c
        .dir
        .file_name()
        .context("name")?
        .to_string_lossy()
        .into_owned();
    // Attach: standalone `vigil watch` ends at once (--duration), its health says how long
    // the attach took from the kernel filter to the seeded tree; the wall time to its
    // "watching" line includes the sensor's load.
    let (mut attach, mut seeded) = (Vec::new(), 0);
    for i in 0..reps {
        let run_id = format!("watch-{i}");
        let out = Command::new(&env.vigil)
            .args([
                "watch",
                "--cgroup",
                &name,
                "--duration",
                "1ms",
                "--run-id",
                &run_id,
            ])
            .arg("--out")
            .arg(&env.out)
            .output()
            .context("vigil watch")?;
        if !out.status.success() {
            bail!("vigil watch: {}", String::from_utf8_lossy(&out.stderr));
        }
        let h: serde_json::Value = serde_json::from_slice(&std::fs::read(
            env.out.join(&run_id).join("observation-health.json"),
        )?)?;
        attach.push(h["watch"]["attach_ms"].as_f64().context("attach_ms")?);
        seeded = h["watch"]["seeded_processes"].as_u64().unwrap_or(0);
    }
    let a = median(attach);
    rows.push(Row {
        name: "`vigil watch` attach to a cgroup of 200 running processes (seeded tree complete)",
        baseline: "-".into(),
        vigil: format!("{a:.1} ms"),
        figure: format!("{seeded} seeded"),
        target: "≤ 50 ms",
        ok: a <= 50.0 && seeded == 200,
    });
    drop(c);

    // The job-started hook through a daemon: a stand-in Runner.Worker runs it, against the
    // same worker running `true`.
    let socket = tmp.join("watch.sock");
    let _d = crate::bench_daemon::start(env, &socket)?;
    let worker = tmp.join("Runner.Worker");
    let _ = std::fs::remove_file(&worker);
    std::os::unix::fs::symlink("/bin/sh", &worker)?;
    let mut n = 0u32;
    let hook = |which: &str, run: u32| {
        let mut c = Command::new(&worker);
        c.args([
            "-c",
            &format!(
                "{} ci github {which} --daemon {} --out {} > /dev/null",
                env.vigil.display(),
                socket.display(),
                env.out.display()
            ),
        ])
        .env("GITHUB_RUN_ID", run.to_string())
        .env("GITHUB_JOB", "bench")
        .env_remove("GITHUB_ENV")
        .env_remove("GITHUB_STEP_SUMMARY");
        c
    };
    let (b, v) = paired(
        reps,
        || {
            let mut c = Command::new(&worker);
            c.args(["-c", "true"]);
            c
        },
        || {
            n += 1;
            hook("job-started", n)
        },
    )?;
    for run in 1..=n {
        hook("job-completed", run).output()?;
    }
    rows.push(Row {
        name: "GitHub hook job-started → watch active (through the daemon)",
        baseline: format!("{b:.1} ms"),
        vigil: format!("{v:.1} ms"),
        figure: format!("+{:.1} ms", v - b),
        target: "≤ 100 ms",
        ok: v - b <= 100.0,
    });
    Ok(rows)
}
