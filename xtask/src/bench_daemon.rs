//! The daemon rows of `cargo xtask bench` (`--daemon-only`): a release `vigil daemon` on a
//! socket of the bench's own, and runs through it against bare commands in the same invocation.
//! Kernel layer on throughout (the daemon's sensor is loaded once, at its start).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::bench::{Env, Row, median, paired, ratio_row, sh, time_ms};

pub(crate) struct Daemon {
    child: Child,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

pub(crate) fn start(env: &Env, socket: &Path) -> Result<Daemon> {
    let mut child = Command::new(&env.vigil)
        .arg("daemon")
        .arg("--socket")
        .arg(socket)
        .args(["--max-runs", "8", "--cgroup-parent", "vigil-bench"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("vigil daemon")?;
    let stderr = child.stderr.take().context("stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    // Ready is a log line, not a guess.
    loop {
        match lines.next() {
            Some(Ok(l)) if l.contains("vigil daemon ready") => break,
            Some(Ok(_)) => continue,
            _ => bail!("vigil daemon exited before it was ready"),
        }
    }
    std::thread::spawn(move || for _ in lines {});
    Ok(Daemon { child })
}

/// VmRSS and VmHWM of a process, in MiB.
fn rss_mib(pid: u32) -> Result<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Result<f64> {
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .with_context(|| format!("{name} of {pid}"))?;
        Ok(kib / 1024.0)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// `runs_active` of the daemon's `status` reply (README "Daemon protocol": a 4-byte big-endian
/// length, then the JSON message).
fn runs_active(socket: &Path) -> Result<u64> {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket).context("daemon socket")?;
    let body = br#"{"type":"status"}"#;
    s.write_all(&(body.len() as u32).to_be_bytes())?;
    s.write_all(body)?;
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let mut reply = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut reply)?;
    let v: serde_json::Value = serde_json::from_slice(&reply).context("status reply")?;
    v["runs_active"]
        .as_u64()
        .context("runs_active in the status reply")
}

/// CPU (user + system) of waited-for children so far, in ms.
fn children_cpu_ms() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) };
    let ms = |t: libc::timeval| t.tv_sec as f64 * 1e3 + t.tv_usec as f64 / 1e3;
    ms(u.ru_utime) + ms(u.ru_stime)
}

fn mono_ns() -> i128 {
    // SAFETY: clock_gettime fills the timespec it is given.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

pub fn bench(env: &Env, tmp: &Path, quick: bool) -> Result<Vec<Row>> {
    let reps = if quick { 10 } else { 30 };
    let socket = tmp.join("vigil.sock");
    let d = start(env, &socket)?;
    let via = |argv: &[&str]| {
        let mut c = Command::new(&env.vigil);
        c.arg("run")
            .arg("--daemon")
            .arg(&socket)
            .arg("--out")
            .arg(&env.out)
            .arg("--")
            .args(argv);
        c
    };
    let mut rows = Vec::new();
    let (idle_rss, _) = rss_mib(d.child.id())?;

    // 8 runs at once: each run's added wall time over the same 8 bare, and the daemon's peak RSS.
    let batch = |through: bool| -> Result<Vec<f64>> {
        let started = Instant::now();
        let mut kids = Vec::new();
        for _ in 0..8 {
            let mut c = if through {
                via(&["sleep", "0.3"])
            } else {
                let mut c = Command::new("sleep");
                c.arg("0.3");
                c
            };
            kids.push(
                c.stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()?,
            );
        }
        let mut walls = Vec::new();
        for mut k in kids {
            k.wait()?;
            walls.push(started.elapsed().as_secs_f64() * 1e3);
        }
        Ok(walls)
    };
    // Peak RSS from here on (writing 5 to clear_refs resets VmHWM).
    std::fs::write(format!("/proc/{}/clear_refs", d.child.id()), "5")?;
    let (mut bare, mut under) = (Vec::new(), Vec::new());
    for _ in 0..(if quick { 3 } else { 7 }) {
        bare.extend(batch(false)?);
        under.extend(batch(true)?);
    }
    let (b, v) = (median(bare), median(under));
    rows.push(Row {
        name: "8 concurrent runs (`sleep 0.3`): each run's added wall time",
        baseline: format!("{b:.1} ms"),
        vigil: format!("{v:.1} ms"),
        figure: format!("+{:.1} ms", v - b),
        target: "≤ 15 ms",
        ok: v - b <= 15.0,
    });
    let (_, peak) = rss_mib(d.child.id())?;
    rows.push(Row {
        name: "daemon RSS: idle / peak under 8 concurrent runs",
        baseline: "—".into(),
        vigil: format!("{idle_rss:.1} / {peak:.1} MiB"),
        figure: format!("{peak:.1} MiB"),
        target: "≤ 40 MiB",
        ok: idle_rss <= 40.0 && peak <= 40.0,
    });

    // `vigil run -- true` through the daemon, and the client's own CPU for it.
    let (b, v) = paired(reps, || Command::new("true"), || via(&["true"]))?;
    rows.push(Row {
        name: "`vigil run -- true` through the daemon: added wall time (kernel layer on)",
        baseline: format!("{b:.1} ms"),
        vigil: format!("{v:.1} ms"),
        figure: format!("+{:.1} ms", v - b),
        target: "≤ 10 ms",
        ok: v - b <= 10.0,
    });
    let mut cpu = Vec::new();
    for _ in 0..reps {
        let before = children_cpu_ms();
        time_ms(&mut via(&["true"]))?;
        cpu.push(children_cpu_ms() - before);
    }
    let c = median(cpu);
    rows.push(Row {
        name: "`vigil run -- true` through the daemon: the client's CPU",
        baseline: "—".into(),
        vigil: format!("{c:.2} ms"),
        figure: format!("{c:.2} ms"),
        target: "≤ 5 ms",
        ok: c <= 5.0,
    });

    // From the client's exec to the child running (the child reads CLOCK_MONOTONIC first).
    let fixture = env.fixture.to_str().context("utf8")?;
    let mut lat = Vec::new();
    for _ in 0..reps {
        let t0 = mono_ns();
        let o = via(&[fixture, "mono"])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()?;
        let t1: i128 = String::from_utf8_lossy(&o.stdout)
            .trim()
            .parse()
            .context("mono")?;
        lat.push((t1 - t0) as f64 / 1e6);
    }
    let l = median(lat);
    rows.push(Row {
        name: "request → child running (client exec to the child's first instruction)",
        baseline: "—".into(),
        vigil: format!("{l:.2} ms"),
        figure: format!("{l:.2} ms"),
        target: "≤ 5 ms",
        ok: l <= 5.0,
    });

    // 2,000 fork/exec spawns through the daemon: every probe, and the lifecycle probes only
    // (the syscall program is what makes each of the run's syscalls take the slow path).
    let spawns = "i=0; while [ $i -lt 2000 ]; do /bin/true; i=$((i+1)); done";
    for (name, layer) in [
        (
            "2,000 fork/exec spawns through the daemon (kernel layer auto: syscall probes too)",
            "auto",
        ),
        (
            "2,000 fork/exec spawns through the daemon (--kernel-layer process)",
            "process",
        ),
    ] {
        let (b, v) = paired(
            if quick { 3 } else { 7 },
            || sh(spawns),
            || {
                let mut c = via(&["sh", "-c", spawns]);
                c.env("VIGIL_KERNEL_LAYER", layer);
                c
            },
        )?;
        rows.push(ratio_row(name, b, v, "≤ 1.05×", |r| r <= 1.05));
    }

    // The same daemon after every row above (a spawn storm with the syscall probes included),
    // once it says it is idle: a run's slot is freed after its memory is given back.
    while runs_active(&socket)? > 0 {}
    let (after, _) = rss_mib(d.child.id())?;
    rows.push(Row {
        name: "daemon RSS idle after all the rows above",
        baseline: "—".into(),
        vigil: format!("{after:.1} MiB"),
        figure: format!("{after:.1} MiB"),
        target: "≤ 40 MiB",
        ok: after <= 40.0,
    });
    drop(d);
    let _ = std::fs::remove_dir_all(&env.out);
    Ok(rows)
}
