//! The SDK layer: accepted events in arrival order, stamped and numbered, written to
//! layers/sdk.ndjson when the run ends — with each completed tool call correlated with the
//! kernel events that happened inside it.
//!
//! Correlation: a tool call is the window from its `tool_call_started` to its
//! `tool_call_completed` (same `tool_call_id`); a kernel event belongs to it when its time is in
//! the window and its process is the reporting process or one of its descendants (parents from
//! the kernel events themselves). Kernel events arrive in drains up to tens of ms late, so a
//! closed window keeps collecting for [`LATE_NS`] after its end before it is final.

use std::collections::{BTreeMap, HashMap};

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
    counts: BTreeMap<&'static str, u64>,
}

pub struct SdkLayer {
    records: Vec<Value>,
    windows: Vec<Window>,
    finished: Vec<Window>,
    parents: HashMap<u32, u32>,
    kernel: bool,
    offset: i128,
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
            finished: Vec::new(),
            parents: HashMap::new(),
            kernel,
            offset: clock::boot_to_wall_offset_ns(),
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
                counts: BTreeMap::new(),
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

    /// Attribute one drain's kernel events to the tool calls they happened in.
    pub fn observe_kernel(&mut self, seen: &[Observed]) {
        let mut latest = 0;
        for o in seen {
            let hdr = o.event.header();
            if hdr.ppid != 0 {
                self.parents.insert(hdr.pid, hdr.ppid);
            }
            if self.windows.is_empty() {
                continue;
            }
            let at = clock::boot_to_wall(hdr.boot_ns, self.offset);
            latest = latest.max(at);
            for i in 0..self.windows.len() {
                let w = &self.windows[i];
                let inside = at >= w.start_ns && w.end_ns.is_none_or(|end| at <= end);
                if inside && self.descends(hdr.pid, w.pid) {
                    *self.windows[i].counts.entry(o.event.kind()).or_default() += 1;
                }
            }
        }
        // Windows closed long enough ago are final.
        let (done, open): (Vec<_>, Vec<_>) = std::mem::take(&mut self.windows)
            .into_iter()
            .partition(|w| w.end_ns.is_some_and(|e| e + LATE_NS < latest));
        self.windows = open;
        self.finished.extend(done);
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
        self.finished.append(&mut self.windows);
        let tool_calls = self.finished.len() as u64;
        for w in self.finished {
            let Some(rec) = w.record.and_then(|i| self.records.get_mut(i)) else {
                continue;
            };
            rec["kernel_events"] = if self.kernel {
                json!(w.counts)
            } else {
                Value::Null
            };
        }
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

    fn exec(pid: u32, ppid: u32, wall_ns: u64, offset: i128) -> Observed {
        Observed {
            seq: 0,
            event: KernelEvent::Exec {
                hdr: Header {
                    pid,
                    tid: pid,
                    ppid,
                    boot_ns: u64::try_from(i128::from(wall_ns) - offset).expect("boot ns"),
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
        let off = l.offset;
        l.accept(received(
            r#"{"event":"tool_call_started","tool":"sh","tool_call_id":"c1"}"#,
            100,
            s,
        ));
        l.observe_kernel(&[
            exec(101, 100, s + 10, off), // child of the caller, inside
            exec(300, 1, s + 20, off),   // unrelated process, inside
            exec(102, 101, s + 30, off), // grandchild, inside
        ]);
        let cp = l.accept(received(
            r#"{"event":"tool_call_completed","tool":"sh","tool_call_id":"c1"}"#,
            100,
            s + 1_000,
        ));
        assert!(cp.is_none());
        l.observe_kernel(&[exec(103, 100, s + 5_000, off)]); // after the call
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
    fn a_plausible_client_time_opens_the_window_before_the_line_was_read() {
        let mut l = SdkLayer::new(true);
        let s = clock::now_ns();
        let off = l.offset;
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
        l.observe_kernel(&[exec(101, 100, s - 20, off)]);
        l.accept(received(
            r#"{"event":"tool_call_completed","tool":"sh","tool_call_id":"c1"}"#,
            100,
            s + 100,
        ));
        // A client time after the arrival is not believed.
        let mut late = started(s + 1_000_000);
        late.event.fields.insert("tool_call_id".into(), json!("c2"));
        l.accept(late);
        l.observe_kernel(&[exec(102, 100, s + 500, off)]);
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
