//! The evidence-out rows of `cargo xtask bench` (`--export-only`): a bundle with a million
//! kernel events (distinct paths, so nothing coalesces; paced so the ring keeps up), then each
//! export and `emit-promotion` of it, timed, with each command's own peak RSS (wait4).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::bench::{Env, Row, median};

/// Wall ms and peak RSS (MiB) of one command, from its own rusage.
fn measured(cmd: &mut Command) -> Result<(f64, f64)> {
    let start = Instant::now();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("spawn")?;
    let mut status = 0;
    // SAFETY: wait4 on our own child, with valid out-pointers.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut ru) };
    let ms = start.elapsed().as_secs_f64() * 1e3;
    if pid < 0 || !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("{cmd:?} failed (status {status})");
    }
    Ok((ms, ru.ru_maxrss as f64 / 1024.0))
}

pub fn bench(env: &Env, tmp: &Path, quick: bool) -> Result<Vec<Row>> {
    let fixture = env.fixture.to_str().context("utf8")?;
    let out = tmp.join("export-runs");
    let st = Command::new(&env.vigil)
        .args([
            "run",
            "--no-daemon",
            "--run-id",
            "million",
            "--evidence-max-bytes",
            "4294967296",
            "--out",
        ])
        .arg(&out)
        .args(["--", fixture, "open-distinct", "1000000", "150000"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("vigil run")?;
    if !st.success() {
        bail!("the million-event run failed: {st}");
    }
    let bundle = out.join("million");
    let layer = std::fs::metadata(bundle.join("layers/kernel.ndjson"))?.len();
    let events = std::fs::read_to_string(bundle.join("observation-health.json"))
        .ok()
        .and_then(|h| serde_json::from_str::<serde_json::Value>(&h).ok())
        .map_or(0, |h| {
            h["notes"]
                .as_array()
                .and_then(|n| {
                    n.iter().find_map(|x| {
                        let s = x.as_str()?;
                        let rest = s
                            .split("attached (raw tracepoints filtered by cgroup id); ")
                            .nth(1)?;
                        rest.split(' ').next()?.parse::<u64>().ok()
                    })
                })
                .unwrap_or(0)
        });
    let reps = if quick { 1 } else { 3 };
    let mut rows = Vec::new();
    let target_of = |f: &str| match f {
        "perfetto" | "otlp-json" => ("≤ 3 s, ≤ 100 MiB", 3000.0),
        "html" => ("≤ 5 s, ≤ 10 MB, ≤ 100 MiB", 5000.0),
        _ => ("(report), ≤ 100 MiB", f64::MAX),
    };
    for (name, format) in [
        ("export --format perfetto of a 1M-event bundle", "perfetto"),
        (
            "export --format otlp-json of a 1M-event bundle",
            "otlp-json",
        ),
        (
            "export --format chrome-trace of a 1M-event bundle",
            "chrome-trace",
        ),
        ("export --format junit of a 1M-event bundle", "junit"),
        ("export --format html of a 1M-event bundle", "html"),
    ] {
        let dest = tmp.join(format!("export.{format}"));
        let (mut ms, mut rss) = (Vec::new(), Vec::new());
        for _ in 0..reps {
            let (m, r) = measured(
                Command::new(&env.vigil)
                    .arg("export")
                    .arg(&bundle)
                    .args(["--format", format, "--out"])
                    .arg(&dest),
            )?;
            ms.push(m);
            rss.push(r);
        }
        let (m, r) = (median(ms), rss.iter().copied().fold(0.0, f64::max));
        let size = std::fs::metadata(&dest).map_or(0, |m| m.len()) as f64 / 1e3;
        let (target, limit) = target_of(format);
        rows.push(Row {
            name,
            baseline: format!("{events} events, {:.0} MB layer", layer as f64 / 1e6),
            vigil: format!("{m:.0} ms, {r:.1} MiB peak, {size:.0} kB out"),
            figure: format!("{:.2} s", m / 1e3),
            target,
            ok: m <= limit && r <= 100.0 && (format != "html" || size <= 10_000.0),
        });
    }
    let (mut ms, mut rss) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        let (m, r) = measured(
            Command::new(&env.vigil)
                .arg("emit-promotion")
                .arg(&bundle)
                .arg("--out")
                .arg(tmp.join("packet.json")),
        )?;
        ms.push(m);
        rss.push(r);
    }
    let (m, r) = (median(ms), rss.iter().copied().fold(0.0, f64::max));
    rows.push(Row {
        name: "emit-promotion of a 1M-event bundle",
        baseline: format!("{events} events"),
        vigil: format!("{m:.0} ms, {r:.1} MiB peak"),
        figure: format!("{:.2} s", m / 1e3),
        target: "≤ 2 s",
        ok: m <= 2000.0,
    });
    let _ = std::fs::remove_dir_all(&out);
    Ok(rows)
}
