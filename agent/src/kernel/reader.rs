//! Draining the sensor's ring buffer into `layers/kernel.ndjson` (`vigil.kernel_event.v1`).
//! The ring buffer's fd is registered with tokio: the reader wakes when the kernel says so (exec
//! and exit force a wakeup; forks wake an idle reader), never on a timer. At the end of a run the
//! supervisor drains until empty once the cgroup is empty — every event of the run has been
//! committed by then, because a task's exit tracepoint fires before it leaves the cgroup.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;

use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;

use super::coalesce::{self, Coalescer, Run};
use super::event::{KernelEvent, Observed, decode};
use super::record::{record, target};
use crate::clock;
use crate::evidence::downgrade::Downgraded;
use crate::evidence::ndjson::{Lane, NdjsonWriter};
use crate::evidence::redact::Redactor;
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
    /// Repeated identical data events waiting to be written as one line.
    coalescer: Coalescer,
    /// The last drain stopped at DRAIN_MAX with events left in the ring.
    more: bool,
}

/// Events handled per drain: the supervisor's loop gets its turn between drains, and `seen`
/// stays small, however fast the kernel produces.
const DRAIN_MAX: usize = 4 * BATCH_EVENTS;
/// Time one drain may take before it yields to the dispatcher, whose deadlines (timeouts,
/// heartbeats, the kill grace) must fire on time under any storm. Checked every 256 events.
const DRAIN_BUDGET: std::time::Duration = std::time::Duration::from_millis(5);

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
            coalescer: Coalescer::default(),
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
        let mut out = Batch::default();
        let mut handled = 0;
        let began = std::time::Instant::now();
        self.more = false;
        loop {
            // The ring's item is released before the event is written (it borrows the map).
            let decoded = match self.map.next() {
                Some(item) => decode(&item),
                None => break,
            };
            handled += 1;
            match decoded {
                Ok(mut ev) => {
                    // Decoded, redacted and stamped once: the layer file and every consumer
                    // of `seen` get the same event with the same `ts`. Every event takes a
                    // seq, written, coalesced or not.
                    ev.redact(redactor);
                    let ts_ns = clock::boot_to_wall(ev.header().boot_ns, self.boot_to_wall_ns);
                    let obs = Observed {
                        seq: self.seq,
                        ts_ns,
                        event: ev,
                    };
                    self.seq += 1;
                    if coalesce::coalescable(&obs.event) {
                        if let Some(run) = self.coalescer.offer(&obs) {
                            self.write(&run.first, Some(&run), &mut out);
                        }
                    } else {
                        // Lines stay in seq order: what was pending goes first.
                        if let Some(run) = self.coalescer.flush() {
                            self.write(&run.first, Some(&run), &mut out);
                        }
                        self.write(&obs, None, &mut out);
                    }
                    seen.push(obs);
                }
                Err(e) => {
                    *self
                        .decode_errors
                        .entry(KernelEvent::error_kind(&e))
                        .or_default() += 1;
                }
            }
            if out.lines >= BATCH_EVENTS {
                let full = std::mem::take(&mut out);
                self.out.send(full.bytes, Lane::Control, full.urgent);
            }
            if handled == max
                || (max != usize::MAX && handled % 256 == 0 && began.elapsed() >= DRAIN_BUDGET)
            {
                self.more = true;
                break;
            }
        }
        // A run is not carried across drains: its line is on disk within one drain.
        if let Some(run) = self.coalescer.flush() {
            self.write(&run.first, Some(&run), &mut out);
        }
        // Kernel evidence is control evidence: it waits for room in the writer's queue, never
        // dropped there. A reader that falls behind shows up as ring-buffer losses, counted in
        // the kernel per kind.
        if !out.bytes.is_empty() {
            self.out.send(out.bytes, Lane::Control, out.urgent);
        }
    }

    /// One line into the batch: an event, or a coalesced `run` of it. Process lifecycle,
    /// signals, OOM kills and failed execs are control evidence, always written (the disk
    /// headroom is theirs); data lines are downgraded past the evidence budget or dropped when
    /// the disk is short, and counted. Consumers saw every event either way.
    fn write(&mut self, obs: &Observed, run: Option<&Run>, out: &mut Batch) {
        let ev = &obs.event;
        let count = run.map_or(1, |r| r.count);
        let control = !matches!(
            ev,
            KernelEvent::Open { .. } | KernelEvent::Net { .. } | KernelEvent::Write { .. }
        );
        let mut rec = record(obs.seq, obs.ts_ns, ev);
        if let Some(r) = run.filter(|r| r.count > 1) {
            rec.count = Some(r.count);
            rec.last_seq = Some(r.last_seq);
            rec.last_ts = Some(clock::rfc3339(r.last_ts_ns));
            rec.last_ts_ns = Some(r.last_ts_ns);
        }
        let mark = out.bytes.len();
        if serde_json::to_writer(&mut out.bytes, &rec).is_err() {
            out.bytes.truncate(mark);
            return;
        }
        match self
            .space
            .admit((out.bytes.len() - mark) as u64 + 1, control)
        {
            Admit::Write => {
                out.bytes.push(b'\n');
                out.lines += 1;
                // Signals and OOM kills are fsync'd at once; the rest (exits included: a
                // spawn-heavy run has one per 10 ms drain) ride with the writer's batches, on
                // disk within 200 ms.
                out.urgent |= matches!(ev, KernelEvent::Signal { .. } | KernelEvent::Oom { .. });
            }
            Admit::OverBudget => {
                out.bytes.truncate(mark);
                self.downgraded.count_n(ev.kind(), &target(ev), count);
            }
            Admit::DiskShort => {
                out.bytes.truncate(mark);
                self.dropped_for_space += count;
            }
        }
    }
}

/// Serialized lines on their way to the writer.
#[derive(Default)]
struct Batch {
    bytes: Vec<u8>,
    lines: usize,
    urgent: bool,
}

/// Lines per batch handed to the writer: bounds the reader's memory in an event storm.
const BATCH_EVENTS: usize = 1024;

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
    use crate::kernel::event::{Endpoint, Header, NetOp};

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
