//! Contract micro-benchmarks (part of `cargo xtask bench`): runs the release build of
//! `agent/examples/contract_bench.rs` and reports its medians against issue 6's targets.

use anyhow::{Context, Result, bail};

use crate::bench::Row;
use crate::root;

pub fn bench() -> Result<Vec<Row>> {
    let out = std::process::Command::new("cargo")
        .args([
            "run",
            "--quiet",
            "--release",
            "-p",
            "vigil",
            "--example",
            "contract_bench",
        ])
        .current_dir(root())
        .output()
        .context("cargo run --example contract_bench")?;
    if !out.status.success() {
        bail!(
            "contract_bench failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let figure = |key: &str| -> Result<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("{key} missing from: {text}"))
    };
    let row = |name, shown: String, target, ok| Row {
        name,
        baseline: "-".into(),
        vigil: shown.clone(),
        figure: shown,
        target,
        ok,
    };
    let (check, load) = (figure("check_3_clauses_ns")?, figure("load_30_files_ms")?);
    Ok(vec![
        row(
            "contracts: one check of a three-clause postcondition (median)",
            format!("{check:.1} ns"),
            "≤ 200 ns",
            check <= 200.0,
        ),
        row(
            "contracts: loading 30 contract files (150 contracts, median)",
            format!("{load:.2} ms"),
            "≤ 50 ms",
            load <= 50.0,
        ),
    ])
}
