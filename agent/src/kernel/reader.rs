//! Draining the sensor's ring buffer into `layers/kernel.ndjson` (`vigil.kernel_event.v1`).
//! The ring buffer's fd is registered with tokio: the reader wakes when the kernel says so (exec
//! and exit force a wakeup; forks wake an idle reader), never on a timer. At the end of a run the
//! supervisor drains until empty once the cgroup is empty — every event of the run has been
//! committed by then, because a task's exit tracepoint fires before it leaves the cgroup.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;

use aya::maps::{MapData, RingBuf};
use serde::Serialize;
use tokio::io::unix::AsyncFd;

use super::event::{KernelEvent, NetOp, Observed, decode};
use crate::clock;
use crate::evidence::downgrade::Downgraded;
use crate::evidence::ndjson::{Lane, NdjsonWriter};
use crate::evidence::redact::Redactor;
use crate::evidence::schema;
use crate::evidence::space::{Admit, Space};
use std::sync::Arc;

/// Batches the kernel layer's writer may have queued: with BATCH_EVENTS lines each, at most
/// ~5 MiB of JSON waits for the disk. Past that the reader waits, the ring buffer fills, and the
/// kernel counts what it cannot reserve — memory stays bounded in an event storm.
const QUEUE_BATCHES: usize = 8;

pub struct KernelReader {
    /// Registration of the ring buffer's fd; declared before `map` so it is dropped first.
    ready: AsyncFd<RawFd>,
    map: RingBuf<MapData>,
    out: NdjsonWriter,
    seq: u64,
    /// Wall clock minus boot clock, to turn bpf_ktime_get_boot_ns() into Unix time: taken once
    /// per sensor, so an event has one `ts` in every file that names it.
    boot_to_wall_ns: i128,
    /// Events that could not be decoded, by the kind their header named.
    decode_errors: BTreeMap<&'static str, u64>,
    /// The bundle's disk budget.
    space: Arc<Space>,
    /// Data events (opens, network, write progress) decoded, handed to the consumers, but not
    /// written to the layer because the disk ran short.
    dropped_for_space: u64,
    /// Data events past `--evidence-max-bytes`, as counts.
    downgraded: Downgraded,
    /// The last drain stopped at DRAIN_MAX with events left in the ring.
    more: bool,
}

/// Events handled per drain: the supervisor's loop gets its turn between drains, and `seen`
/// stays small, however fast the kernel produces.
const DRAIN_MAX: usize = 4 * BATCH_EVENTS;
/// Time one drain may take before it yields to the dispatcher, whose deadlines (timeouts,
/// heartbeats, the kill grace) must fire on time under any storm. Checked every 256 events.
const DRAIN_BUDGET: std::time::Duration = std::time::Duration::from_millis(5);

/// include/trace/events/signal.h: what became of a generated signal.
fn signal_result(r: i32) -> &'static str {
    match r {
        0 => "delivered",
        1 => "ignored",
        2 => "already_pending",
        3 => "overflow_fail",
        4 => "lose_info",
        _ => "unknown",
    }
}

impl KernelReader {
    /// `space` is the bundle's disk budget: the kernel layer is data, it yields to control
    /// evidence when the disk runs short (what it could not write is counted).
    pub fn new(map: RingBuf<MapData>, layer: &Path, space: Arc<Space>) -> std::io::Result<Self> {
        // SAFETY: the fd belongs to `map`, which this struct owns and drops after `ready`.
        let ready = unsafe {
            AsyncFd::register_with_interest(map.as_raw_fd(), tokio::io::Interest::READABLE)
        }
        .map_err(|e| e.into_parts().1)?;
        Ok(KernelReader {
            ready,
            map,
            out: NdjsonWriter::spawn(layer, QUEUE_BATCHES)?,
            space,
            dropped_for_space: 0,
            downgraded: Downgraded::default(),
            seq: 0,
            boot_to_wall_ns: clock::boot_to_wall_offset_ns(),
            decode_errors: BTreeMap::new(),
            more: false,
        })
    }

    /// Wait until the kernel signals new events, or return at once when the last drain left
    /// some (cancel-safe).
    pub async fn readable(&self) {
        if self.more {
            return;
        }
        match self.ready.readable().await {
            Ok(mut guard) => guard.clear_ready(),
            Err(_) => std::future::pending().await,
        }
    }

    /// Write up to DRAIN_MAX events now in the ring buffer to the writer, in batches of at
    /// most BATCH_EVENTS lines, and hand the decoded events to `seen`.
    pub fn drain(&mut self, redactor: &Redactor, seen: &mut Vec<Observed>) {
        self.drain_up_to(DRAIN_MAX, redactor, seen);
    }

    /// Drain until the ring buffer is empty (at the end of a run).
    pub fn drain_all(&mut self, redactor: &Redactor, seen: &mut Vec<Observed>) {
        self.drain_up_to(usize::MAX, redactor, seen);
    }

    fn drain_up_to(&mut self, max: usize, redactor: &Redactor, seen: &mut Vec<Observed>) {
        let mut batch = Vec::new();
        let mut lines = 0;
        let mut urgent = false;
        let mut handled = 0;
        let began = std::time::Instant::now();
        self.more = false;
        while let Some(item) = self.map.next() {
            handled += 1;
            match decode(&item) {
                Ok(mut ev) => {
                    // Decoded, redacted and stamped once: the layer file and every consumer
                    // of `seen` get the same event with the same `ts`.
                    ev.redact(redactor);
                    let seq = self.seq;
                    let ts_ns = clock::boot_to_wall(ev.header().boot_ns, self.boot_to_wall_ns);
                    let record = record(seq, ts_ns, &ev);
                    // Process lifecycle, signals, OOM kills and failed execs are control
                    // evidence: always written (the headroom is theirs). Data events yield to
                    // them when the disk runs short, and are counted; consumers still see
                    // every event, so the process tree and contract counts stay exact.
                    let control = !matches!(
                        ev,
                        KernelEvent::Open { .. }
                            | KernelEvent::Net { .. }
                            | KernelEvent::Write { .. }
                    );
                    let mark = batch.len();
                    let admit = match serde_json::to_writer(&mut batch, &record) {
                        Ok(()) => self.space.admit((batch.len() - mark) as u64 + 1, control),
                        Err(_) => Admit::Write,
                    };
                    if admit != Admit::Write {
                        // Its seq stays taken: decisions cite it, and the gap says so.
                        batch.truncate(mark);
                        self.seq += 1;
                        match admit {
                            Admit::OverBudget => self.downgraded.count(ev.kind(), &target(&ev)),
                            _ => self.dropped_for_space += 1,
                        }
                    } else if batch.len() > mark {
                        batch.push(b'\n');
                        self.seq += 1;
                        lines += 1;
                        // Signals and OOM kills are fsync'd at once; the rest (exits
                        // included: a spawn-heavy run has one per 10 ms drain) ride with the
                        // writer's batches, on disk within 200 ms.
                        urgent |=
                            matches!(ev, KernelEvent::Signal { .. } | KernelEvent::Oom { .. });
                    }
                    seen.push(Observed {
                        seq,
                        ts_ns,
                        event: ev,
                    });
                }
                Err(e) => {
                    *self
                        .decode_errors
                        .entry(KernelEvent::error_kind(&e))
                        .or_default() += 1;
                }
            }
            if lines == BATCH_EVENTS {
                self.out
                    .send(std::mem::take(&mut batch), Lane::Control, urgent);
                lines = 0;
            }
            if handled == max
                || (max != usize::MAX && handled % 256 == 0 && began.elapsed() >= DRAIN_BUDGET)
            {
                self.more = true;
                break;
            }
        }
        // Kernel evidence is control evidence: it waits for room in the writer's queue, never
        // dropped there. A reader that falls behind shows up as ring-buffer losses, counted in
        // the kernel per kind.
        if !batch.is_empty() {
            self.out.send(batch, Lane::Control, urgent);
        }
    }
}

/// Lines per batch handed to the writer: bounds the reader's memory in an event storm.
const BATCH_EVENTS: usize = 1024;

fn errno_name(result: i64) -> Option<String> {
    (result < 0).then(|| {
        let e = nix::errno::Errno::from_raw(i32::try_from(-result).unwrap_or(0));
        format!("{e:?}")
    })
}

/// What a downgraded data event was about: the path opened, the endpoint, the process.
fn target(ev: &KernelEvent) -> String {
    match ev {
        KernelEvent::Open {
            path,
            resolved_path,
            ..
        } => resolved_path.clone().unwrap_or_else(|| path.clone()),
        KernelEvent::Net {
            endpoint: Some(e), ..
        } => match (&e.address, e.port) {
            (Some(a), Some(p)) => format!("{a}:{p}"),
            (Some(a), None) => a.clone(),
            _ => e.family.clone(),
        },
        other => other.header().comm.clone(),
    }
}

/// O_ACCMODE and the flags a reader of the trace asks about.
fn open_access(flags: u32) -> &'static str {
    const O_PATH: u32 = 0o10000000;
    if flags & O_PATH != 0 {
        return "path";
    }
    match flags & 0o3 {
        0 => "read",
        1 => "write",
        _ => "read_write",
    }
}

/// One `vigil.kernel_event.v1` record: the common envelope, then the kind's fields. Serialized
/// straight from borrowed fields: the reader's cost per event is what bounds the drain rate.
#[derive(Serialize)]
struct Record<'a> {
    schema: &'static str,
    seq: u64,
    version: u32,
    ts: String,
    ts_ns: u64,
    pid: u32,
    tid: u32,
    ppid: u32,
    cgroup_id: u64,
    comm: &'a str,
    #[serde(flatten)]
    body: Body<'a>,
}

#[derive(Serialize)]
#[serde(tag = "kind")]
enum Body<'a> {
    #[serde(rename = "process.fork")]
    Fork {
        child_pid: u32,
        child_tid: u32,
        is_thread: bool,
    },
    #[serde(rename = "process.exec")]
    Exec {
        filename: &'a str,
        argv: &'a [String],
        argv_truncated: bool,
        uid: u32,
        gid: u32,
        cred_changed: bool,
    },
    #[serde(rename = "process.exit")]
    Exit {
        exit_code: Option<i32>,
        signal: Option<i32>,
        core_dumped: bool,
        group_dead: bool,
    },
    #[serde(rename = "io.write")]
    Write { bytes: u64, pages: u32 },
    #[serde(rename = "signal.generate")]
    Signal {
        target_pid: u32,
        target_tid: u32,
        signal: i32,
        result: &'static str,
        group: bool,
    },
    #[serde(rename = "file.open")]
    Open {
        path: &'a str,
        resolved_path: Option<&'a str>,
        path_truncated: bool,
        dirfd: i32,
        flags: u32,
        mode: u32,
        access: &'static str,
        create: bool,
        truncate: bool,
        result: i64,
        errno: Option<String>,
    },
    #[serde(rename = "network.connect")]
    Connect(Net<'a>),
    #[serde(rename = "network.bind")]
    Bind(Net<'a>),
    #[serde(rename = "network.accept")]
    Accept(Net<'a>),
    #[serde(rename = "network.send")]
    Send(Net<'a>),
    #[serde(rename = "process.exec_failed")]
    ExecFailed {
        path: &'a str,
        resolved_path: Option<&'a str>,
        result: i64,
        errno: Option<String>,
    },
    #[serde(rename = "oom.kill")]
    Oom {
        trigger_pid: u32,
        trigger_comm: &'a str,
    },
}

#[derive(Serialize)]
struct Net<'a> {
    fd: i32,
    family: Option<&'a str>,
    address: Option<&'a str>,
    port: Option<u16>,
    endpoint_source: &'static str,
    result: i64,
    errno: Option<String>,
}

/// The record of an event that is already redacted and stamped: fields are borrowed.
fn record(seq: u64, ts_ns: u64, ev: &KernelEvent) -> Record<'_> {
    const O_CREAT: u32 = 0o100;
    const O_TRUNC: u32 = 0o1000;
    let h = ev.header();
    let body = match ev {
        KernelEvent::Fork {
            child_pid,
            child_tid,
            is_thread,
            ..
        } => Body::Fork {
            child_pid: *child_pid,
            child_tid: *child_tid,
            is_thread: *is_thread,
        },
        KernelEvent::Exec {
            filename,
            argv,
            argv_truncated,
            uid,
            gid,
            cred_changed,
            ..
        } => Body::Exec {
            filename,
            argv,
            argv_truncated: *argv_truncated,
            uid: *uid,
            gid: *gid,
            cred_changed: *cred_changed,
        },
        KernelEvent::Exit {
            exit_code,
            signal,
            core_dumped,
            group_dead,
            ..
        } => Body::Exit {
            exit_code: *exit_code,
            signal: *signal,
            core_dumped: *core_dumped,
            group_dead: *group_dead,
        },
        KernelEvent::Write { bytes, pages, .. } => Body::Write {
            bytes: *bytes,
            pages: *pages,
        },
        KernelEvent::Signal {
            target_pid,
            target_tid,
            signal,
            result,
            group,
            ..
        } => Body::Signal {
            target_pid: *target_pid,
            target_tid: *target_tid,
            signal: *signal,
            result: signal_result(*result),
            group: *group,
        },
        KernelEvent::Open {
            result,
            dirfd,
            flags,
            mode,
            path,
            path_truncated,
            resolved_path,
            ..
        } => Body::Open {
            path,
            resolved_path: resolved_path.as_deref(),
            path_truncated: *path_truncated,
            dirfd: *dirfd,
            flags: *flags,
            mode: *mode,
            access: open_access(*flags),
            create: flags & O_CREAT != 0,
            truncate: flags & O_TRUNC != 0,
            result: *result,
            errno: errno_name(*result),
        },
        KernelEvent::Net {
            op,
            result,
            fd,
            endpoint,
            endpoint_source,
            ..
        } => {
            let net = Net {
                fd: *fd,
                family: endpoint.as_ref().map(|e| e.family.as_str()),
                address: endpoint.as_ref().and_then(|e| e.address.as_deref()),
                port: endpoint.as_ref().and_then(|e| e.port),
                endpoint_source,
                result: *result,
                errno: errno_name(*result),
            };
            match op {
                NetOp::Connect => Body::Connect(net),
                NetOp::Bind => Body::Bind(net),
                NetOp::Accept => Body::Accept(net),
                NetOp::Send => Body::Send(net),
            }
        }
        KernelEvent::ExecFailed {
            result,
            path,
            resolved_path,
            ..
        } => Body::ExecFailed {
            path,
            resolved_path: resolved_path.as_deref(),
            result: *result,
            errno: errno_name(*result),
        },
        KernelEvent::Oom {
            trigger_pid,
            trigger_comm,
            ..
        } => Body::Oom {
            trigger_pid: *trigger_pid,
            trigger_comm,
        },
    };
    Record {
        schema: schema::KERNEL_EVENT,
        seq,
        version: h.version,
        ts: clock::rfc3339(ts_ns),
        ts_ns,
        pid: h.pid,
        tid: h.tid,
        ppid: h.ppid,
        cgroup_id: h.cgroup_id,
        comm: &h.comm,
        body,
    }
}

impl KernelReader {
    /// The boot→wall offset every timestamp of this sensor is converted with.
    pub fn boot_to_wall_ns(&self) -> i128 {
        self.boot_to_wall_ns
    }

    /// Kernel events written to the layer.
    pub fn written(&self) -> u64 {
        self.seq - self.dropped_for_space - self.downgraded.total()
    }

    /// Data events past the evidence budget.
    pub fn downgraded(&self) -> &Downgraded {
        &self.downgraded
    }

    /// Data events decoded but not written for lack of disk room.
    pub fn dropped_for_space(&self) -> u64 {
        self.dropped_for_space
    }

    /// Events that did not decode (a reader-side loss), by kind.
    pub fn decode_errors(&self) -> &BTreeMap<&'static str, u64> {
        &self.decode_errors
    }

    /// Flush and fsync the layer; returns its first write error.
    pub fn finish(&mut self) -> Result<(), String> {
        self.out.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::event::{Endpoint, Header};

    fn hdr() -> Header {
        Header {
            version: 1,
            boot_ns: 1_000,
            cgroup_id: 7,
            pid: 10,
            tid: 10,
            ppid: 1,
            comm: "cat".into(),
        }
    }

    fn json_of(ev: &KernelEvent) -> serde_json::Value {
        // As the reader does: redact once, then serialize the redacted event.
        let r = Redactor::new(&[("API_TOKEN".into(), "hunter22".into())]);
        let mut ev = ev.clone();
        ev.redact(&r);
        serde_json::to_value(record(3, 0, &ev)).expect("serialize")
    }

    #[test]
    fn open_records_decode_flags_errno_and_mask_secrets() {
        let ev = KernelEvent::Open {
            hdr: hdr(),
            result: -2,
            dirfd: -100,
            flags: 0o1101, // O_WRONLY | O_CREAT | O_TRUNC
            mode: 0o644,
            path: "out/hunter22.txt".into(),
            path_truncated: false,
            resolved_path: Some("/w/out/hunter22.txt".into()),
        };
        let v = json_of(&ev);
        assert_eq!(v["kind"], "file.open");
        assert_eq!(v["seq"], 3);
        assert_eq!(v["access"], "write");
        assert_eq!(
            (v["create"].clone(), v["truncate"].clone()),
            (true.into(), true.into())
        );
        assert_eq!(v["errno"], "ENOENT");
        assert!(!v.to_string().contains("hunter22"), "{v}");
    }

    #[test]
    fn network_records_carry_the_op_as_kind() {
        let ev = KernelEvent::Net {
            hdr: hdr(),
            op: NetOp::Connect,
            result: -111,
            fd: 3,
            endpoint: Some(Endpoint {
                family: "inet".into(),
                address: Some("127.0.0.1".into()),
                port: Some(9),
            }),
            endpoint_source: "argument",
        };
        let v = json_of(&ev);
        assert_eq!(v["kind"], "network.connect");
        assert_eq!(v["errno"], "ECONNREFUSED");
        assert_eq!(
            (v["address"].clone(), v["port"].clone()),
            ("127.0.0.1".into(), 9.into())
        );
        let ok = KernelEvent::Net {
            hdr: hdr(),
            op: NetOp::Send,
            result: 5,
            fd: 3,
            endpoint: None,
            endpoint_source: "none",
        };
        let v = json_of(&ok);
        assert_eq!(v["kind"], "network.send");
        assert!(v["errno"].is_null() && v["family"].is_null());
    }
}
