//! Contract benchmarks (part of `cargo xtask bench`): runs the criterion bench
//! `agent/benches/contracts.rs` and reports its medians (criterion's estimates.json) against
//! issue 6's targets. The layer's cost per span close is the difference of two medians measured
//! in the same run: a dispatcher with and without the contract layer.

use anyhow::{Context, Result, bail};

use crate::bench::Row;
use crate::root;

/// Median of one criterion benchmark, in ns, from `target/criterion/<id>/new/estimates.json`.
fn median_ns(id: &str) -> Result<f64> {
    let path = root()
        .join("target/criterion")
        .join(id)
        .join("new/estimates.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text).context("estimates.json")?;
    v["median"]["point_estimate"]
        .as_f64()
        .with_context(|| format!("no median in {}", path.display()))
}

pub fn bench(quick: bool) -> Result<Vec<Row>> {
    let mut args = vec![
        "bench",
        "--quiet",
        "-p",
        "vigil",
        "--bench",
        "contracts",
        "--",
        "--noplot",
    ];
    if quick {
        args.extend(["--warm-up-time", "1", "--measurement-time", "2"]);
    }
    let status = std::process::Command::new("cargo")
        .args(&args)
        .current_dir(root())
        .status()
        .context("cargo bench --bench contracts")?;
    if !status.success() {
        bail!("cargo bench --bench contracts failed: {status}");
    }
    let check = median_ns("contracts_check_3_clauses")?;
    let bare = median_ns("contracts_span_close/registry_only")?;
    let layered = median_ns("contracts_span_close/with_10_contracts")?;
    let load_ms = median_ns("contracts_load_30_files")? / 1e6;
    let added = layered - bare;
    let row = |name, baseline: String, vigil: String, figure: String, target, ok| Row {
        name,
        baseline,
        vigil,
        figure,
        target,
        ok,
    };
    Ok(vec![
        row(
            "contracts: one check of a three-clause postcondition (median)",
            "-".into(),
            format!("{check:.1} ns"),
            format!("{check:.1} ns"),
            "≤ 200 ns",
            check <= 200.0,
        ),
        row(
            "contracts: layer cost per span open+close, 10 contracts (median)",
            format!("{bare:.0} ns"),
            format!("{layered:.0} ns"),
            format!("+{added:.0} ns ({:.2}×)", layered / bare),
            "≤ 1 µs added",
            added <= 1000.0,
        ),
        row(
            "contracts: loading 30 contract files (150 contracts, median)",
            "-".into(),
            format!("{load_ms:.2} ms"),
            format!("{load_ms:.2} ms"),
            "≤ 50 ms",
            load_ms <= 50.0,
        ),
    ])
}
