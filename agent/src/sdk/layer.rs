//! The SDK layer: accepted events in arrival order, stamped and numbered, written to
//! layers/sdk.ndjson when the run ends — with each completed tool call correlated with the
//! kernel events that happened inside it.
//!
//! Correlation: a tool call is the window from its `tool_call_started` to its
//! `tool_call_completed` (same `tool_call_id`); a kernel event belongs to it when its time is in
//! the window and its process is the reporting process or one of its descendants (parents from
//! the kernel events themselves). It is decided by timestamps, never by which of the two
//! streams vigil happened to read first: kernel events are kept in a bounded, time-limited
//! buffer, and a window is counted from it once it has been closed for [`LATE_NS`] (drains run
//! up to tens of ms late) or the run ended.

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde_json::{Value, json};

use super::socket::Received;
use crate::clock;
use crate::evidence::schema;
use crate::kernel::event::Observed;

/// How long after a window closed kernel events may still be attributed to it.
const LATE_NS: u64 = 2_000_000_000;
/// Levels of ancestry walked to decide whether a process descends from the caller.
const MAX_DEPTH: usize = 64;
/// How far before its arrival a client's own timestamp is believed.
const CLIENT_SKEW_NS: u64 = 10_000_000_000;
/// Kernel events kept for windows still to be counted. Past it the oldest go, and a window
/// that reached back before them says its counts are truncated.
const MAX_KEPT: usize = 131_072;
/// The same before the child reported anything: most runs never use the SDK, and they should
/// not pay for it (32 bytes an event).
const MAX_KEPT_UNUSED: usize = 16_384;

/// What correlation needs of one kernel event.
struct Seen {
    at: u64,
    pid: u32,
    kind: &'static str,
}

/// When an event happened for correlation: the client's timestamp when it is plausible (not
/// after the arrival, at most [`CLIENT_SKEW_NS`] before), else the arrival. A line is read a
/// moment after it was written; the client's own clock closes that gap.
fn event_time(r: &Received) -> u64 {
    r.event
        .client_ts_ns
        .filter(|c| *c <= r.ts_ns && r.ts_ns - *c <= CLIENT_SKEW_NS)
        .unwrap_or(r.ts_ns)
}

struct Window {
    call_id: String,
    pid: u32,
    start_ns: u64,
    end_ns: Option<u64>,
    /// Index of the `tool_call_completed` record.
    record: Option<usize>,
}

pub struct SdkLayer {
    records: Vec<Value>,
    /// Tool calls not counted yet.
    windows: Vec<Window>,
    tool_calls: u64,
    /// Recent kernel events, oldest first.
    kept: VecDeque<Seen>,
    /// Events before this time were dropped from `kept` (0: none).
    dropped_before: u64,
    parents: HashMap<u32, u32>,
    kernel: bool,
}

/// What the layer reports for health.
#[derive(Debug, Default, Clone, Copy)]
pub struct SdkSummary {
    pub accepted: u64,
    pub tool_calls: u64,
}

impl SdkLayer {
    /// `kernel`: whether kernel events will be observed (else tool calls are not correlated).
    pub fn new(kernel: bool) -> Self {
        SdkLayer {
            records: Vec::new(),
            windows: Vec::new(),
            tool_calls: 0,
            kept: VecDeque::new(),
            dropped_before: 0,
            parents: HashMap::new(),
            kernel,
        }
    }

    /// Store one accepted event. A checkpoint returns the data of its run-trace event.
    pub fn accept(&mut self, r: Received) -> Option<Value> {
        let seq = self.records.len();
        let mut rec = json!({
            "schema": schema::SDK_EVENT,
            "seq": seq,
            "ts": clock::rfc3339(r.ts_ns),
            "ts_ns": r.ts_ns,
            "event": r.event.event,
            "pid": r.pid,
        });
        if let Some(obj) = rec.as_object_mut() {
            obj.extend(r.event.fields.clone());
            if let Some(d) = &r.event.data {
                obj.insert("data".into(), d.clone());
            }
        }
        if let Some(c) = r.event.client_ts_ns {
            rec["client_ts_ns"] = json!(c);
        }
        let at = event_time(&r);
        let pid = r.pid.and_then(|p| u32::try_from(p).ok()).unwrap_or(0);
        let call_id = r.event.str("tool_call_id").map(str::to_string);
        match (r.event.event, call_id) {
            ("tool_call_started", Some(id)) => self.windows.push(Window {
                call_id: id,
                pid,
                start_ns: at,
                end_ns: None,
                record: None,
            }),
            ("tool_call_completed", Some(id)) => {
                if let Some(w) = self
                    .windows
                    .iter_mut()
                    .find(|w| w.end_ns.is_none() && w.call_id == id && w.pid == pid)
                {
                    w.end_ns = Some(at);
                    w.record = Some(seq);
                    rec["duration_ms"] = json!(at.saturating_sub(w.start_ns) / 1_000_000);
                }
            }
            _ => {}
        }
        self.records.push(rec);
        (r.event.event == "checkpoint").then(|| {
            let mut data = json!({"source": "sdk", "pid": r.pid, "sdk_seq": seq});
            if let Some(obj) = data.as_object_mut() {
                obj.extend(r.event.fields);
            }
            data
        })
    }

    /// Keep one drain's kernel events for correlation; count the windows that are final.
    pub fn observe_kernel(&mut self, seen: &[Observed]) {
        let mut latest = 0;
        for o in seen {
            let hdr = o.event.header();
            if hdr.ppid != 0 {
                self.parents.insert(hdr.pid, hdr.ppid);
            }
            // The reader's stamp: the same `ts` the kernel layer file gives the event.
            let at = o.ts_ns;
            latest = latest.max(at);
            self.kept.push_back(Seen {
                at,
                pid: hdr.pid,
                kind: o.event.kind(),
            });
        }
        // Windows closed long enough ago are final.
        let (done, open): (Vec<_>, Vec<_>) = std::mem::take(&mut self.windows)
            .into_iter()
            .partition(|w| w.end_ns.is_some_and(|e| e + LATE_NS < latest));
        self.windows = open;
        for w in done {
            self.count(&w);
        }
        // Keep what an open window, or one still to open, may need.
        let keep_from = self
            .windows
            .iter()
            .map(|w| w.start_ns)
            .min()
            .unwrap_or(u64::MAX)
            .min(latest.saturating_sub(CLIENT_SKEW_NS + LATE_NS));
        let cap = if self.records.is_empty() {
            MAX_KEPT_UNUSED
        } else {
            MAX_KEPT
        };
        while self
            .kept
            .front()
            .is_some_and(|e| e.at < keep_from || self.kept.len() > cap)
        {
            if let Some(e) = self.kept.pop_front()
                && e.at >= keep_from
            {
                self.dropped_before = self.dropped_before.max(e.at);
            }
        }
    }

    /// Count a window's kernel events into its completion record.
    fn count(&mut self, w: &Window) {
        self.tool_calls += 1;
        let end = w.end_ns.unwrap_or(u64::MAX);
        let mut counts: BTreeMap<&'static str, u64> = BTreeMap::new();
        for e in self
            .kept
            .iter()
            .filter(|e| e.at >= w.start_ns && e.at <= end)
        {
            if self.descends(e.pid, w.pid) {
                *counts.entry(e.kind).or_default() += 1;
            }
        }
        let truncated = w.start_ns < self.dropped_before;
        let kernel = self.kernel;
        if let Some(rec) = w.record.and_then(|i| self.records.get_mut(i)) {
            rec["kernel_events"] = if kernel { json!(counts) } else { Value::Null };
            if truncated {
                rec["kernel_events_truncated"] = json!(true);
            }
        }
    }

    fn descends(&self, mut pid: u32, ancestor: u32) -> bool {
        for _ in 0..MAX_DEPTH {
            if pid == ancestor {
                return true;
            }
            match self.parents.get(&pid) {
                Some(&p) if p != pid && p != 0 => pid = p,
                _ => return false,
            }
        }
        false
    }

    /// The layer's lines (layers/sdk.ndjson) and its summary.
    pub fn finish(mut self) -> (Vec<u8>, SdkSummary) {
        for w in std::mem::take(&mut self.windows) {
            self.count(&w);
        }
        let tool_calls = self.tool_calls;
        let mut out = Vec::new();
        for r in &self.records {
            if serde_json::to_writer(&mut out, r).is_ok() {
                out.push(b'\n');
            }
        }
        (
            out,
            SdkSummary {
                accepted: self.records.len() as u64,
                tool_calls,
            },
        )
    }
}

impl crate::kernel::bus::KernelObserver for SdkLayer {
    fn observe(&mut self, batch: &[Observed]) {
        self.observe_kernel(batch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evidence::redact::Redactor;
    use crate::kernel::event::{Header, KernelEvent};
    use crate::sdk::event::parse_line;

    fn received(line: &str, pid: i32, ts_ns: u64) -> Received {
        Received {
            event: parse_line(line.as_bytes(), &Redactor::new(&[])).expect(line),
            pid: Some(pid),
            ts_ns,
        }
    }

    fn exec(pid: u32, ppid: u32, wall_ns: u64) -> Observed {
        Observed {
            seq: 0,
            ts_ns: wall_ns,
            event: KernelEvent::Exec {
                hdr: Header {
                    pid,
                    tid: pid,
                    ppid,
                    ..Header::default()
                },
                filename: "/bin/true".into(),
                argv: vec![],
                argv_truncated: false,
                uid: 0,
                gid: 0,
                cred_changed: false,
            },
        }
    }

    #[test]
    fn kernel_events_inside_a_tool_call_of_the_caller_or_its_children_are_counted() {
        let mut l = SdkLayer::new(true);
        let s = clock::now_ns();
        l.accept(received(
            r#"{"event":"tool_call_started","tool":"sh","tool_call_id":"c1"}"#,
            100,
            s,
        ));
        l.observe_kernel(&[
            exec(101, 100, s + 10), // child of the caller, inside
            exec(300, 1, s + 20),   // unrelated process, inside
            exec(102, 101, s + 30), // grandchild, inside
        ]);
        let cp = l.accept(received(
            r#"{"event":"tool_call_completed","tool":"sh","tool_call_id":"c1"}"#,
            100,
            s + 1_000,
        ));
        assert!(cp.is_none());
        l.observe_kernel(&[exec(103, 100, s + 5_000)]); // after the call
        let cp = l.accept(received(
            r#"{"event":"checkpoint","name":"half"}"#,
            100,
            s + 6_000,
        ));
        assert_eq!(cp.expect("checkpoint")["name"], "half");
        let (bytes, summary) = l.finish();
        let lines: Vec<Value> = bytes
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).expect("json"))
            .collect();
        assert_eq!(summary.accepted, 3);
        assert_eq!(summary.tool_calls, 1);
        assert_eq!(lines[1]["kernel_events"], json!({"process.exec": 2}));
        assert_eq!(lines[2]["seq"], 2);
    }

    #[test]
    fn events_drained_before_the_start_was_read_still_count() {
        let mut l = SdkLayer::new(true);
        let s = clock::now_ns();
        // vigil drains the child's exec before it processes the line that opened the call.
        l.observe_kernel(&[exec(101, 100, s + 10)]);
        l.accept(received(
            r#"{"event":"tool_call_started","tool":"sh","tool_call_id":"c1"}"#,
            100,
            s,
        ));
        l.accept(received(
            r#"{"event":"tool_call_completed","tool":"sh","tool_call_id":"c1"}"#,
            100,
            s + 100,
        ));
        let (bytes, _) = l.finish();
        let text = String::from_utf8(bytes).expect("utf-8");
        assert!(
            text.contains(r#""kernel_events":{"process.exec":1}"#),
            "{text}"
        );
    }

    #[test]
    fn a_plausible_client_time_opens_the_window_before_the_line_was_read() {
        let mut l = SdkLayer::new(true);
        let s = clock::now_ns();
        let started = |client: u64| {
            let mut r = received(
                r#"{"event":"tool_call_started","tool":"sh","tool_call_id":"c1"}"#,
                100,
                s,
            );
            r.event.client_ts_ns = Some(client);
            r
        };
        l.accept(started(s - 50));
        // The child exec'd after the client wrote the line, before vigil read it.
        l.observe_kernel(&[exec(101, 100, s - 20)]);
        l.accept(received(
            r#"{"event":"tool_call_completed","tool":"sh","tool_call_id":"c1"}"#,
            100,
            s + 100,
        ));
        // A client time after the arrival is not believed.
        let mut late = started(s + 1_000_000);
        late.event.fields.insert("tool_call_id".into(), json!("c2"));
        l.accept(late);
        l.observe_kernel(&[exec(102, 100, s + 500)]);
        let (bytes, _) = l.finish();
        let first_completed: Value = bytes
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice::<Value>(l).expect("json"))
            .find(|v| v["event"] == "tool_call_completed")
            .expect("completed");
        assert_eq!(first_completed["kernel_events"], json!({"process.exec": 1}));
    }
}
