//! The run's spans (CONTRACT.md taxonomy) as real `tracing` spans, on a dispatcher of the run's
//! own: a `tracing_subscriber` registry with the run-trace writer ([`SpanWriter`]) and the
//! contract checker as layers, so every consumer sees the same stream of span opens, records
//! and closes.
//!
//! A span carries its times as fields (`start_ns`, `end_ns`): the supervisor knows them exactly
//! (a child's exit time comes from waitid, a process's life from kernel timestamps), and the
//! registry closes a parent only after its children, so the close callback's own clock would
//! be wrong for a parent.

use std::sync::{Arc, Mutex, PoisonError};

use serde_json::Value;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Dispatch, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

use super::trace::{SpanId, SpanRecorder, span};
use crate::clock;

/// Declares one span callsite per taxonomy name (tracing's names are static per callsite, so
/// the names are listed again here; a test checks the list against [`span::ALL`]).
macro_rules! taxonomy_span {
    ($parent:expr, $start:expr, $detail:expr, $name:expr, [$($known:path),*]) => {
        match $name {
            $($known => tracing::info_span!(
                parent: $parent,
                $known,
                start_ns = $start,
                detail = $detail,
                end_ns = tracing::field::Empty,
                status = tracing::field::Empty,
                exit_code = tracing::field::Empty,
                signal = tracing::field::Empty,
                attrs = tracing::field::Empty,
            ),)*
            _ => tracing::Span::none(),
        }
    };
}

/// One open span of the run. Closing consumes it; a span dropped without [`RunSpan::close`]
/// ends as `unfinished`.
#[derive(Debug, Clone)]
pub struct RunSpan(tracing::Span);

impl Drop for RunSpan {
    /// The registry tells a closing span's parent through the *thread's default* dispatcher,
    /// so the last handle is dropped with the run's dispatcher as the default; otherwise a
    /// parent never learns its children closed, and never closes itself.
    fn drop(&mut self) {
        let span = std::mem::replace(&mut self.0, tracing::Span::none());
        match span.with_subscriber(|(_, dispatch)| dispatch.clone()) {
            Some(dispatch) => tracing::dispatcher::with_default(&dispatch, || drop(span)),
            None => drop(span),
        }
    }
}

impl RunSpan {
    /// Record the span's end and outcome and close it. `exit_code` and `signal` in `attrs`
    /// become typed fields too (contracts compare them).
    pub fn close(self, status: &str, attrs: Value, end_ns: u64) {
        let s = &self.0;
        s.record("end_ns", end_ns);
        s.record("status", status);
        for key in ["exit_code", "signal"] {
            if let Some(v) = attrs.get(key).and_then(Value::as_i64) {
                s.record(key, v);
            }
        }
        if attrs.as_object().is_some_and(|o| !o.is_empty()) {
            s.record("attrs", attrs.to_string().as_str());
        }
    }

    pub fn close_now(self, status: &str, attrs: Value) {
        self.close(status, attrs, clock::now_ns());
    }
}

/// Opens the run's spans on the run's dispatcher.
#[derive(Clone)]
pub struct SpanTree {
    dispatch: Dispatch,
}

impl SpanTree {
    pub fn new(dispatch: Dispatch) -> Self {
        SpanTree { dispatch }
    }

    /// Open a span of the taxonomy (`name` is one of [`span`]'s constants) at `start_ns`.
    pub fn open_at(&self, name: &str, parent: Option<&RunSpan>, start_ns: u64) -> RunSpan {
        self.open_inner(name, parent, start_ns, false)
    }

    pub fn open(&self, name: &str, parent: Option<&RunSpan>) -> RunSpan {
        self.open_at(name, parent, clock::now_ns())
    }

    /// A finished span of the detailed profile only (per-process spans from kernel events).
    /// The handle is returned so that children can be nested under it.
    pub fn record_detail(
        &self,
        name: &str,
        parent: Option<&RunSpan>,
        (start_ns, end_ns): (u64, u64),
        status: &str,
        attrs: Value,
    ) -> RunSpan {
        let s = self.open_inner(name, parent, start_ns, true);
        s.clone().close(status, attrs, end_ns);
        s
    }

    fn open_inner(
        &self,
        name: &str,
        parent: Option<&RunSpan>,
        start: u64,
        detail: bool,
    ) -> RunSpan {
        let parent = parent.and_then(|p| p.0.id());
        RunSpan(tracing::dispatcher::with_default(&self.dispatch, || {
            taxonomy_span!(
                parent,
                start,
                detail,
                name,
                [
                    span::RUN_TOTAL,
                    span::RUNNER_DISPATCH,
                    span::CASE_RUN,
                    span::CASE_CHAIN,
                    span::CASE_HARNESS,
                    span::CHECK_EXECUTE,
                    span::SUBPROCESS_EXEC,
                    span::SUBPROCESS_WAIT
                ]
            )
        }))
    }
}

/// The fields a run span carries, as recorded so far.
#[derive(Debug, Default, Clone)]
pub struct SpanFields {
    pub start_ns: Option<u64>,
    pub end_ns: Option<u64>,
    pub status: Option<String>,
    pub exit_code: Option<i64>,
    pub signal: Option<i64>,
    pub attrs: Option<String>,
    pub detail: bool,
}

impl Visit for SpanFields {
    fn record_u64(&mut self, field: &Field, value: u64) {
        match field.name() {
            "start_ns" => self.start_ns = Some(value),
            "end_ns" => self.end_ns = Some(value),
            "exit_code" => self.exit_code = i64::try_from(value).ok(),
            "signal" => self.signal = i64::try_from(value).ok(),
            _ => {}
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        match field.name() {
            "exit_code" => self.exit_code = Some(value),
            "signal" => self.signal = Some(value),
            _ => {
                if let Ok(v) = u64::try_from(value) {
                    self.record_u64(field, v);
                }
            }
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if field.name() == "detail" {
            self.detail = value;
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "status" => self.status = Some(value.to_string()),
            "attrs" => self.attrs = Some(value.to_string()),
            _ => {}
        }
    }

    fn record_debug(&mut self, _field: &Field, _value: &dyn std::fmt::Debug) {}
}

/// The run-trace writer: turns the span stream into run-trace.json's `spans`.
#[derive(Debug, Clone, Default)]
pub struct SpanWriter {
    rec: Arc<Mutex<SpanRecorder>>,
}

/// A span's index in the recorder, kept in the registry's extensions.
#[derive(Debug, Clone, Copy)]
struct Recorded(SpanId);

impl SpanWriter {
    /// Read the spans recorded so far.
    pub fn with<T>(&self, f: impl FnOnce(&SpanRecorder) -> T) -> T {
        f(&self.rec.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn update(&self, id: SpanId, fields: &SpanFields) {
        let attrs = fields
            .attrs
            .as_deref()
            .and_then(|a| serde_json::from_str(a).ok());
        self.rec
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .patch(id, fields.status.as_deref(), fields.end_ns, attrs);
    }
}

impl<S> Layer<S> for SpanWriter
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut fields = SpanFields::default();
        attrs.record(&mut fields);
        let parent = span
            .parent()
            .and_then(|p| p.extensions().get::<Recorded>().map(|r| r.0));
        let index = {
            let mut rec = self.rec.lock().unwrap_or_else(PoisonError::into_inner);
            let index = rec.open_at(
                attrs.metadata().name(),
                parent,
                fields.start_ns.unwrap_or_else(clock::now_ns),
            );
            if fields.detail {
                rec.mark_detail(index);
            }
            index
        };
        span.extensions_mut().insert(Recorded(index));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(index) = ctx
            .span(id)
            .and_then(|s| s.extensions().get::<Recorded>().map(|r| r.0))
        else {
            return;
        };
        let mut fields = SpanFields::default();
        values.record(&mut fields);
        self.update(index, &fields);
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(index) = ctx
            .span(&id)
            .and_then(|s| s.extensions().get::<Recorded>().map(|r| r.0))
        else {
            return;
        };
        // Dropped without `close`: it ends now, unfinished.
        self.rec
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .end_if_open(index, clock::now_ns());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn every_taxonomy_name_has_a_callsite() {
        let writer = SpanWriter::default();
        let tree = SpanTree::new(Dispatch::new(
            tracing_subscriber::registry().with(writer.clone()),
        ));
        for name in span::ALL {
            tree.open_at(name, None, 1).close("passed", json!({}), 2);
        }
        let names: Vec<String> = writer
            .with(|r| r.export(true, 3))
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(names, span::ALL);
    }

    #[test]
    fn spans_reach_the_writer_with_their_own_times_and_parents() {
        let writer = SpanWriter::default();
        let tree = SpanTree::new(Dispatch::new(
            tracing_subscriber::registry().with(writer.clone()),
        ));
        let total = tree.open_at(span::RUN_TOTAL, None, 100);
        let check = tree.open_at(span::CHECK_EXECUTE, Some(&total), 110);
        let kid = tree.record_detail(
            span::SUBPROCESS_WAIT,
            Some(&check),
            (120, 130),
            "failed",
            json!({"pid": 7, "exit_code": 3}),
        );
        drop(kid);
        check.close("failed", json!({"exit_code": 3}), 140);
        let dropped = tree.open_at(span::CASE_HARNESS, Some(&total), 150);
        drop(dropped);
        total.close("failed", json!({}), 200);
        let spans = writer.with(|r| r.export(true, 1_000));
        let names: Vec<_> = spans.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "run.total",
                "check.execute",
                "subprocess.wait",
                "case.harness"
            ]
        );
        assert_eq!((spans[1].start_ns, spans[1].end_ns), (110, 140));
        assert_eq!(
            spans[1].parent_id.as_deref(),
            Some(spans[0].span_id.as_str())
        );
        assert_eq!(
            spans[2].parent_id.as_deref(),
            Some(spans[1].span_id.as_str())
        );
        assert_eq!(spans[2].attrs, json!({"pid": 7, "exit_code": 3}));
        assert!(spans[2].detail);
        assert_eq!(spans[3].status, "unfinished");
        assert_eq!((spans[0].end_ns, spans[0].status.as_str()), (200, "failed"));
    }
}
