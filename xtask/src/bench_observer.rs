//! vigil's own CPU per kernel event (part of `cargo xtask bench`): a run's `observer` in health
//! is vigil's rusage (its threads, never the child's) from the run's start to its end. Per kind,
//! a paced workload makes a known number of events without ring-buffer loss; the same run of
//! `true` is the baseline (sensor load and the run's fixed cost), measured in the same
//! invocation. (CPU per event) = (median CPU of the workload run − median CPU of `true`) /
//! (events the kernel layer recorded).

use anyhow::{Context, Result};
use serde_json::Value;

use crate::bench::{Env, Row, median};

/// vigil's CPU (ms) for one run, and how many kernel events of `kind` it recorded.
fn one(env: &Env, argv: &[&str], kind: &str) -> Result<(f64, u64)> {
    let st = env
        .vigil_run(&["--profile-level", "off"], argv)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .context("vigil run")?;
    anyhow::ensure!(st.success(), "vigil run {argv:?} failed: {st}");
    let health: Value = serde_json::from_str(&env.latest_file("observation-health.json")?)?;
    let o = &health["observer"];
    let cpu = o["cpu_user_ms"].as_f64().context("observer")?
        + o["cpu_system_ms"].as_f64().context("observer")?;
    let layer = env.latest_file("layers/kernel.ndjson")?;
    // `*`: every event of the run, whatever its kind.
    let needle = format!("\"kind\":\"{kind}\"");
    let events = layer
        .lines()
        .filter(|l| kind == "*" || l.contains(&needle))
        .map(|l| {
            serde_json::from_str::<Value>(l)
                .ok()
                .and_then(|v| v["count"].as_u64())
                .unwrap_or(1)
        })
        .sum();
    Ok((cpu, events))
}

pub fn bench(env: &Env, quick: bool) -> Result<Vec<Row>> {
    let reps = if quick { 3 } else { 7 };
    let fixture = env.fixture.to_str().context("utf8")?;
    // Distinct paths defeat coalescing, so this is the cost of writing every event; the
    // identical-path row shows what coalescing saves.
    let workloads: [(&str, Vec<String>, &str); 3] = [
        (
            "vigil CPU per file.open event: 100,000 distinct paths, paced at 50k/s",
            vec![
                fixture.into(),
                "open-distinct".into(),
                "100000".into(),
                "50000".into(),
            ],
            "file.open",
        ),
        (
            "vigil CPU per file.open event: 100,000 opens of one path, paced at 50k/s (coalesced)",
            vec![
                fixture.into(),
                "open-paced".into(),
                "100000".into(),
                "50000".into(),
                "/nonexistent/vigil-bench".into(),
            ],
            "file.open",
        ),
        (
            "vigil CPU per kernel event: 2,000 `/bin/true` spawns from sh (fork, exec, exit and the loader's opens of each)",
            vec![
                "sh".into(),
                "-c".into(),
                "i=0; while [ $i -lt 2000 ]; do /bin/true; i=$((i+1)); done".into(),
            ],
            "*",
        ),
    ];
    let mut base = Vec::new();
    let mut rows = Vec::new();
    let mut runs: Vec<(Vec<f64>, Vec<u64>)> = vec![(vec![], vec![]); workloads.len()];
    for _ in 0..reps {
        base.push(one(env, &["true"], "process.exec")?.0);
        for (i, (_, argv, kind)) in workloads.iter().enumerate() {
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            let (cpu, n) = one(env, &argv, kind)?;
            runs[i].0.push(cpu);
            runs[i].1.push(n);
        }
    }
    let base_ms = median(base);
    for ((name, _, _), (cpu, counts)) in workloads.iter().zip(runs) {
        let events = *counts.iter().max().unwrap_or(&0);
        let cpu_ms = median(cpu);
        let per_us = (cpu_ms - base_ms).max(0.0) * 1000.0 / events.max(1) as f64;
        rows.push(Row {
            name,
            baseline: format!("`true`: {base_ms:.1} ms"),
            vigil: format!("{cpu_ms:.1} ms for {events} events"),
            figure: format!("{per_us:.2} µs/event"),
            target: "≤ 1 µs",
            ok: per_us <= 1.0,
        });
    }
    Ok(rows)
}
