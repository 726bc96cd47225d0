//! What the exports draw, read once from a bundle (beneath its directory, as untrusted input):
//! the run's spans and steps from run-trace.json, its watchdog and stall events, and the process
//! lives from layers/kernel.ndjson — streamed line by line, so memory follows the number of
//! processes, never the number of events. Everything in a bundle is already redacted.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde_json::Value;

use super::ops::{OpsError, each_line};
use crate::evidence::beneath::BundleDir;
use crate::evidence::files;

/// One exec image of a process: from its exec (or fork) to the next exec or the exit.
#[derive(Debug, Clone, Default)]
pub struct Image {
    pub start_ns: u64,
    pub filename: String,
    pub argv: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Proc {
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
    pub start_ns: u64,
    pub images: Vec<Image>,
    pub end_ns: Option<u64>,
    pub exit_code: Option<i64>,
    pub signal: Option<i64>,
}

/// A moment worth marking: a failed exec, an OOM kill, a stall warning, a watchdog kill.
#[derive(Debug, Clone)]
pub struct Instant {
    pub ts_ns: u64,
    pub pid: Option<u32>,
    pub name: String,
    pub detail: String,
}

/// A signal from one process to another.
#[derive(Debug, Clone)]
pub struct Flow {
    pub ts_ns: u64,
    pub from: u32,
    pub to: u32,
    pub signal: i64,
}

#[derive(Debug, Default)]
pub struct Timeline {
    pub trace: Value,
    pub procs: BTreeMap<u32, Proc>,
    pub instants: Vec<Instant>,
    pub flows: Vec<Flow>,
    /// Kernel events per second of the run (second since the epoch → events).
    pub per_second: BTreeMap<u64, u64>,
}

/// Instants and flows kept (the rest counted): an export stays bounded on a 1M-event bundle.
pub const MAX_MARKS: usize = 10_000;

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// The fields of a kernel record the timeline reads, borrowed from the line; the rest of the
/// line is skipped unparsed.
#[derive(serde::Deserialize, Default)]
struct Rec<'a> {
    #[serde(default)]
    ts_ns: u64,
    #[serde(default)]
    pid: u32,
    #[serde(default)]
    ppid: u32,
    #[serde(borrow, default)]
    comm: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(default)]
    count: Option<u64>,
    #[serde(default)]
    is_thread: Option<bool>,
    #[serde(default)]
    child_pid: Option<u32>,
    #[serde(borrow, default)]
    filename: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    argv: Vec<Cow<'a, str>>,
    #[serde(default)]
    group_dead: Option<bool>,
    #[serde(default)]
    exit_code: Option<i64>,
    #[serde(default)]
    signal: Option<i64>,
    #[serde(borrow, default)]
    path: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    errno: Option<Cow<'a, str>>,
    #[serde(default)]
    target_pid: Option<u32>,
}

impl Timeline {
    /// The trace, and with `kernel` the process lives and marks of the kernel layer (a report
    /// that only needs the steps, such as JUnit, skips the layer).
    pub fn read(b: &BundleDir, kernel: bool) -> Result<Timeline, OpsError> {
        let trace: Value = b.read_json(files::RUN_TRACE)?;
        let marks: Vec<Instant> = trace["events"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| matches!(e["kind"].as_str(), Some("stall_warning" | "watchdog")))
            .map(|e| {
                // The reason, and who waited on whom (the hang explanation), one per line.
                let waits = e["data"]["waits"]
                    .as_array()
                    .or_else(|| e["data"]["snapshot"]["waits"].as_array());
                let mut detail = e["reason"].as_str().unwrap_or("").to_string();
                for w in waits.into_iter().flatten() {
                    if let Some(x) = w["explanation"].as_str() {
                        detail.push('\n');
                        detail.push_str(x);
                    }
                }
                Instant {
                    ts_ns: u(&e["ts_ns"]),
                    pid: None,
                    name: e["kind"].as_str().unwrap_or("").into(),
                    detail,
                }
            })
            .collect();
        let mut t = Timeline {
            trace,
            ..Timeline::default()
        };
        for m in marks {
            t.mark(m);
        }
        if kernel {
            // A line that does not parse is skipped: the rest of the layer still draws.
            each_line(b, files::KERNEL_LAYER, |_, line| {
                if let Ok(rec) = serde_json::from_str::<Rec<'_>>(line) {
                    t.apply(&rec);
                }
                Ok(())
            })?;
        }
        Ok(t)
    }

    fn mark(&mut self, i: Instant) {
        if self.instants.len() < MAX_MARKS {
            self.instants.push(i);
        }
    }

    fn proc(&mut self, pid: u32, ppid: u32, comm: &str, ts: u64) -> &mut Proc {
        self.procs.entry(pid).or_insert_with(|| Proc {
            pid,
            ppid,
            comm: comm.to_string(),
            start_ns: ts,
            ..Proc::default()
        })
    }

    fn apply(&mut self, v: &Rec<'_>) {
        let ts = v.ts_ns;
        *self.per_second.entry(ts / 1_000_000_000).or_default() += v.count.unwrap_or(1);
        let (pid, ppid) = (v.pid, v.ppid);
        let comm = v.comm.as_deref().unwrap_or("");
        match v.kind.as_deref().unwrap_or("") {
            "process.fork" if v.is_thread != Some(true) => {
                let child = v.child_pid.unwrap_or(0);
                self.proc(pid, ppid, comm, ts);
                self.proc(child, pid, comm, ts);
            }
            "process.exec" => {
                let p = self.proc(pid, ppid, comm, ts);
                p.comm = comm.to_string();
                p.images.push(Image {
                    start_ns: ts,
                    filename: v.filename.as_deref().unwrap_or("").into(),
                    argv: v.argv.iter().map(|a| a.to_string()).collect(),
                });
            }
            "process.exit" if v.group_dead != Some(false) => {
                let p = self.proc(pid, ppid, comm, ts);
                p.end_ns = Some(ts);
                p.exit_code = v.exit_code;
                p.signal = v.signal;
            }
            "process.exec_failed" => self.mark(Instant {
                ts_ns: ts,
                pid: Some(pid),
                name: "exec_failed".into(),
                detail: format!(
                    "{} {}",
                    v.path.as_deref().unwrap_or(""),
                    v.errno.as_deref().unwrap_or("")
                ),
            }),
            "oom.kill" => self.mark(Instant {
                ts_ns: ts,
                pid: Some(pid),
                name: "oom_kill".into(),
                detail: comm.into(),
            }),
            "signal.generate" => {
                let to = v.target_pid.unwrap_or(0);
                if to != pid && self.flows.len() < MAX_MARKS {
                    self.flows.push(Flow {
                        ts_ns: ts,
                        from: pid,
                        to,
                        signal: v.signal.unwrap_or(0),
                    });
                }
            }
            _ => {}
        }
    }

    /// The run's start and end (ns since the epoch).
    pub fn bounds(&self) -> (u64, u64) {
        let spans = self.trace["spans"].as_array();
        let start = spans
            .and_then(|s| s.iter().filter_map(|x| x["start_ns"].as_u64()).min())
            .unwrap_or(0);
        let end = spans
            .and_then(|s| s.iter().filter_map(|x| x["end_ns"].as_u64()).max())
            .unwrap_or(start);
        (start, end)
    }

    /// When a process ended (its exit, else the run's end).
    pub fn end_of(&self, p: &Proc) -> u64 {
        p.end_ns.unwrap_or(self.bounds().1).max(p.start_ns)
    }
}
