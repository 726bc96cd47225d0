//! Contract micro-benchmarks (run by `cargo xtask bench --contracts-only`, release build):
//! one check of a three-clause postcondition, and loading 30 contract files. Medians of
//! repeated batches; the figures issue 6 sets are ≤ 200 ns and ≤ 50 ms.

use std::hint::black_box;
use std::time::Instant;

use vigil::contracts::{Clause, Registry, SpanFacts};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let clauses: Vec<Clause> = [
        "duration_ms <= 60000",
        "exit_code == 0",
        "process.exec.count <= 500",
    ]
    .iter()
    .map(|c| Clause::parse(c).expect("clause"))
    .collect();
    let facts = SpanFacts {
        duration_ms: 1234,
        exit_code: Some(0),
        signal: None,
        status: "passed".into(),
        output_bytes: 4096,
        lost_events: 0,
        counts: vec![
            ("file.open.count".into(), 900),
            ("network.connect.denied".into(), 0),
            ("process.exec.count".into(), 42),
        ],
    };
    const BATCH: u32 = 100_000;
    let mut per_check = Vec::new();
    for _ in 0..31 {
        let start = Instant::now();
        for _ in 0..BATCH {
            let ok = black_box(&clauses)
                .iter()
                .all(|c| c.holds(black_box(&facts)));
            black_box(ok);
        }
        per_check.push(start.elapsed().as_nanos() as f64 / f64::from(BATCH));
    }
    let check_ns = median(per_check);

    let dir = std::env::temp_dir().join(format!("vigil-contract-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    for i in 0..30 {
        let mut text = String::from("contracts:\n");
        for j in 0..5 {
            text.push_str(&format!(
                "  - id: c{i}-{j}\n    span: subprocess.wait\n    postconditions: [\"duration_ms <= {}\", \"exit_code == 0\", \"process.exec.count <= 500\"]\n    budget_ms: 60000\n",
                1000 + j
            ));
        }
        std::fs::write(dir.join(format!("c{i:02}.yaml")), text).expect("write");
    }
    let mut loads = Vec::new();
    for _ in 0..21 {
        let start = Instant::now();
        let r = Registry::load_dir(&dir).expect("load");
        loads.push(start.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(r.len(), 150);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let load_ms = median(loads);
    println!("check_3_clauses_ns {check_ns:.1}");
    println!("load_30_files_ms {load_ms:.2}");
}
