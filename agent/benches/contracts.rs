//! Contract benchmarks (criterion; `cargo xtask bench --contracts-only` runs them and compares
//! the medians with issue 6's targets):
//! - `contracts/check_3_clauses`: one check of a three-clause postcondition (≤ 200 ns);
//! - `contracts/span_close/{registry_only,with_10_contracts}`: open, record and close one run
//!   span on a dispatcher without and with the contract layer holding 10 contracts for that
//!   span; the difference is what the layer adds per span (≤ 1 µs);
//! - `contracts/load_30_files`: loading a directory of 30 contract files, 150 contracts
//!   (≤ 50 ms).

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;
use tracing::Dispatch;
use tracing_subscriber::layer::SubscriberExt;
use vigil::contracts::counts::counter_id;
use vigil::contracts::{Clause, ContractLayer, Registry, RunCounters, SpanFacts, Violations};
use vigil::evidence::spans::SpanTree;
use vigil::evidence::trace::span;

fn three_clauses(c: &mut Criterion) {
    let clauses: Vec<Clause> = [
        "duration_ms <= 60000",
        "exit_code == 0",
        "process.exec.count <= 500",
    ]
    .iter()
    .map(|c| Clause::parse(c).expect("clause"))
    .collect();
    let mut facts = SpanFacts {
        duration_ms: 1234,
        exit_code: Some(0),
        status: "passed".into(),
        output_bytes: 4096,
        ..SpanFacts::default()
    };
    facts.counts[counter_id("process.exec.count").expect("counter")] = 42;
    c.bench_function("contracts/check_3_clauses", |b| {
        b.iter(|| {
            black_box(&clauses)
                .iter()
                .all(|cl| cl.holds(black_box(&facts)))
        })
    });
}

/// Ten contracts for `check.execute`, three clauses each, all of which hold (the common case:
/// every clause is evaluated, nothing is recorded).
fn ten_contracts() -> Registry {
    let mut text = String::from("contracts:\n");
    for i in 0..10 {
        text.push_str(&format!(
            "  - id: c{i}\n    span: check.execute\n    postconditions: [\"duration_ms <= 60000\", \"exit_code == 0\", \"process.exec.count <= 500\"]\n    budget_ms: 60000\n"
        ));
    }
    let mut r = Registry::default();
    r.add_text("bench.yaml", &text).expect("contracts");
    r
}

fn span_close(c: &mut Criterion) {
    let bare = SpanTree::new(Dispatch::new(tracing_subscriber::registry()));
    let found = Arc::new(Violations::default());
    let checked = SpanTree::new(Dispatch::new(tracing_subscriber::registry().with(
        ContractLayer::new(
            Arc::new(ten_contracts()),
            Arc::new(RunCounters::default()),
            found.clone(),
        ),
    )));
    let mut group = c.benchmark_group("contracts/span_close");
    for (name, tree) in [("registry_only", &bare), ("with_10_contracts", &checked)] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let s = tree.open_at(span::CHECK_EXECUTE, None, 1_000);
                s.close("passed", json!({"exit_code": 0}), 2_000);
            })
        });
    }
    group.finish();
    assert!(found.take().is_empty(), "every clause held");
}

fn load_30_files(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    for i in 0..30 {
        let mut text = String::from("contracts:\n");
        for j in 0..5 {
            text.push_str(&format!(
                "  - id: c{i}-{j}\n    span: subprocess.wait\n    postconditions: [\"duration_ms <= {}\", \"exit_code == 0\", \"process.exec.count <= 500\"]\n    budget_ms: 60000\n",
                1000 + j
            ));
        }
        std::fs::write(dir.path().join(format!("c{i:02}.yaml")), text).expect("write");
    }
    c.bench_function("contracts/load_30_files", |b| {
        b.iter(|| {
            let r = Registry::load_dir(dir.path()).expect("load");
            assert_eq!(r.len(), 150);
            r
        })
    });
}

criterion_group!(benches, three_clauses, span_close, load_30_files);
criterion_main!(benches);
