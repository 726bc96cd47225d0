//! The contract checker, a `tracing` layer: when a run span closes, the postconditions and
//! budget of every contract for its name are checked against the span's facts, and each broken
//! obligation becomes a [`Violation`].
//!
//! Spans without a contract cost one slice lookup when they open and nothing after. Per-process
//! spans built after the fact from kernel events (`detail`) are not checked: their counts would
//! be read at the wrong time, and contracts speak about the run's own steps.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use tracing::Subscriber;
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

use super::clause::SpanFacts;
use super::counts::{Counts, RunCounters};
use super::registry::Registry;
use crate::clock;
use crate::evidence::spans::SpanFields;

/// One broken obligation of a contract.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Violation {
    pub contract: String,
    pub span: String,
    /// The clause as written, or `duration_ms <= <budget_ms>` for a budget.
    pub obligation: String,
    /// The value the obligation looked at (`null` when the field had none).
    pub observed: Option<String>,
    /// `file:line` of the contract.
    pub origin: String,
}

/// Violations found so far, bounded: past the bound they are only counted.
#[derive(Debug, Default)]
pub struct Violations {
    list: Mutex<Vec<Violation>>,
    dropped: AtomicU64,
}

const MAX_VIOLATIONS: usize = 1024;

impl Violations {
    fn push(&self, v: Violation) {
        let mut list = self.list.lock().unwrap_or_else(PoisonError::into_inner);
        if list.len() < MAX_VIOLATIONS {
            list.push(v);
        } else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Take the violations found since the last call.
    pub fn take(&self) -> Vec<Violation> {
        std::mem::take(&mut *self.list.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Violations past the bound, counted but not kept.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// What the layer keeps for an open span that has contracts.
struct Open {
    fields: SpanFields,
    start_ns: u64,
    counts: Counts,
    output_bytes: u64,
    lost_events: u64,
}

pub struct ContractLayer {
    registry: Arc<Registry>,
    counters: Arc<RunCounters>,
    found: Arc<Violations>,
}

impl ContractLayer {
    pub fn new(
        registry: Arc<Registry>,
        counters: Arc<RunCounters>,
        found: Arc<Violations>,
    ) -> Self {
        ContractLayer {
            registry,
            counters,
            found,
        }
    }

    fn check(&self, name: &str, open: Open, now_ns: u64) {
        let end = open.fields.end_ns.unwrap_or(now_ns);
        let ops = self.counters.ops();
        let facts = SpanFacts {
            duration_ms: end.saturating_sub(open.start_ns) / 1_000_000,
            exit_code: open.fields.exit_code,
            signal: open.fields.signal,
            status: open.fields.status.unwrap_or_else(|| "unfinished".into()),
            output_bytes: self
                .counters
                .output_bytes()
                .saturating_sub(open.output_bytes),
            lost_events: self.counters.lost_events().saturating_sub(open.lost_events),
            counts: std::array::from_fn(|i| ops[i].saturating_sub(open.counts[i])),
        };
        for c in self.registry.for_span(name) {
            let violation = |obligation: String, observed: Option<String>| Violation {
                contract: c.id.clone(),
                span: c.span.clone(),
                obligation,
                observed,
                origin: c.origin.clone(),
            };
            for clause in c.postconditions.iter().filter(|cl| !cl.holds(&facts)) {
                self.found
                    .push(violation(clause.text.clone(), clause.observed(&facts)));
            }
            if let Some(budget) = c.budget_ms.filter(|b| facts.duration_ms > *b) {
                self.found.push(violation(
                    format!("duration_ms <= {budget}"),
                    Some(facts.duration_ms.to_string()),
                ));
            }
        }
    }
}

impl<S> Layer<S> for ContractLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if self.registry.for_span(attrs.metadata().name()).is_empty() {
            return;
        }
        let mut fields = SpanFields::default();
        attrs.record(&mut fields);
        if fields.detail {
            return;
        }
        let Some(span) = ctx.span(id) else { return };
        span.extensions_mut().insert(Open {
            start_ns: fields.start_ns.unwrap_or_else(clock::now_ns),
            fields,
            counts: self.counters.ops(),
            output_bytes: self.counters.output_bytes(),
            lost_events: self.counters.lost_events(),
        });
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        if let Some(open) = span.extensions_mut().get_mut::<Open>() {
            values.record(&mut open.fields);
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let Some(open) = span.extensions_mut().remove::<Open>() else {
            return;
        };
        self.check(span.name(), open, clock::now_ns());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evidence::spans::SpanTree;
    use crate::evidence::trace::span;
    use serde_json::json;
    use tracing::Dispatch;
    use tracing_subscriber::layer::SubscriberExt;

    const CONTRACTS: &str = "contracts:\n  - id: fast-green\n    span: check.execute\n    postconditions: [\"exit_code == 0\", \"duration_ms <= 100\", \"process.exec.count <= 1\"]\n  - id: budgeted\n    span: check.execute\n    budget_ms: 50\n";

    fn tree(found: &Arc<Violations>, counters: &Arc<RunCounters>) -> SpanTree {
        let mut registry = Registry::default();
        registry.add_text("c.yaml", CONTRACTS).expect("contracts");
        SpanTree::new(Dispatch::new(tracing_subscriber::registry().with(
            ContractLayer::new(Arc::new(registry), counters.clone(), found.clone()),
        )))
    }

    #[test]
    fn a_closed_span_is_checked_against_its_contracts() {
        let found = Arc::new(Violations::default());
        let counters = Arc::new(RunCounters::default());
        let tree = tree(&found, &counters);
        let ms = 1_000_000;
        tree.open_at(span::CHECK_EXECUTE, None, 0).close(
            "passed",
            json!({"exit_code": 0}),
            40 * ms,
        );
        assert_eq!(found.take(), vec![], "every obligation held");

        // With a child: the registry closes the parent after the child, on the run's
        // dispatcher (not the thread's default one).
        let check = tree.open_at(span::CHECK_EXECUTE, None, 0);
        let child = tree.open_at(span::SUBPROCESS_WAIT, Some(&check), ms);
        check.close("failed", json!({"exit_code": 3}), 120 * ms);
        assert_eq!(found.take(), vec![], "still open: its child is");
        child.close_now("passed", json!({}));
        let v = found.take();
        let broken: Vec<_> = v
            .iter()
            .map(|v| {
                (
                    v.contract.as_str(),
                    v.obligation.as_str(),
                    v.observed.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            broken,
            [
                ("fast-green", "exit_code == 0", Some("3")),
                ("fast-green", "duration_ms <= 100", Some("120")),
                ("budgeted", "duration_ms <= 50", Some("120")),
            ]
        );
        assert_eq!(v[2].origin, "c.yaml:5");

        // Other spans, and detail spans of the same name, are not checked.
        tree.open_at(span::CASE_RUN, None, 0)
            .close("failed", json!({"exit_code": 3}), 500 * ms);
        tree.record_detail(
            span::CHECK_EXECUTE,
            None,
            (0, 500 * ms),
            "failed",
            json!({}),
        );
        assert_eq!(found.take(), vec![]);
    }
}
