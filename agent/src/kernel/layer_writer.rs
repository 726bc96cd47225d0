//! The kernel layer of one run as written: each decoded event redacted and stamped once (seq,
//! wall time from the sensor's one boot→wall offset), identical data events coalesced, every
//! line admitted against the bundle's disk budget and the evidence bound, batched to the
//! `layers/kernel.ndjson` writer thread. Fed by the per-run ring reader (standalone) and by the
//! daemon's demultiplexed stream alike.

use std::path::Path;
use std::sync::Arc;

use super::coalesce::{self, Coalescer, Offered};
use super::event::{KernelEvent, Observed};
use super::identity::Identities;
use super::record::{LineCache, record, target, write_run};
use crate::clock;
use crate::evidence::downgrade::Downgraded;
use crate::evidence::ndjson::{Lane, NdjsonWriter};
use crate::evidence::redact::Redactor;
use crate::evidence::space::{Admit, Space};

/// Batches the kernel layer's writer may have queued: with BATCH_EVENTS lines each, at most
/// ~5 MiB of JSON waits for the disk. Past that the reader waits, the ring buffer fills, and the
/// kernel counts what it cannot reserve — memory stays bounded in an event storm.
const QUEUE_BATCHES: usize = 8;

/// Lines per batch handed to the writer: bounds the reader's memory in an event storm.
pub const BATCH_EVENTS: usize = 1024;

pub struct LayerWriter {
    out: NdjsonWriter,
    seq: u64,
    /// Wall clock minus boot clock, to turn bpf_ktime_get_boot_ns() into Unix time: taken once
    /// per sensor, so an event has one `ts` in every file that names it.
    boot_to_wall_ns: i128,
    /// The bundle's disk budget.
    space: Arc<Space>,
    /// Data events (opens, network, write progress) decoded, handed to the consumers, but not
    /// written to the layer because the disk ran short.
    dropped_for_space: u64,
    /// Data events past `--evidence-max-bytes`, as counts.
    downgraded: Downgraded,
    /// Repeated identical data events waiting to be written as one line.
    coalescer: Coalescer,
    /// comm and ppid for events of the cgroup hooks, which cannot read them: kept only for a
    /// run whose network evidence comes from those hooks (every other run pays nothing).
    identities: Option<Identities>,
    /// What the kernel saw happen that vigil does not follow (32-bit syscalls, io_uring
    /// submissions other than opens), by kind: the blind spots health names.
    unfollowed: std::collections::BTreeMap<String, u64>,
    batch: Batch,
    /// What consecutive lines share, made once.
    lines: LineCache,
}

impl LayerWriter {
    /// `space` is the bundle's disk budget: the kernel layer is data, it yields to control
    /// evidence when the disk runs short (what it could not write is counted).
    pub fn new(layer: &Path, space: Arc<Space>, boot_to_wall_ns: i128) -> std::io::Result<Self> {
        Ok(LayerWriter {
            out: NdjsonWriter::spawn(layer, QUEUE_BATCHES)?,
            seq: 0,
            boot_to_wall_ns,
            space,
            dropped_for_space: 0,
            downgraded: Downgraded::default(),
            coalescer: Coalescer::default(),
            identities: None,
            unfollowed: Default::default(),
            batch: Batch::default(),
            lines: LineCache::default(),
        })
    }

    /// One decoded event: redacted and stamped once — the layer file and every consumer of
    /// `seen` get the same event with the same `ts`. Every event takes a seq, written,
    /// coalesced or not.
    pub fn accept(&mut self, mut ev: KernelEvent, redactor: &Redactor, seen: &mut Vec<Observed>) {
        if let Some(ids) = self.identities.as_mut() {
            ids.see(&mut ev);
        }
        if let KernelEvent::Unfollowed { kind, .. } = &ev {
            *self.unfollowed.entry((*kind).to_string()).or_default() += 1;
        }
        ev.redact(redactor);
        let ts_ns = clock::boot_to_wall(ev.header().boot_ns, self.boot_to_wall_ns);
        let obs = Observed {
            seq: self.seq,
            ts_ns,
            event: ev,
        };
        self.seq += 1;
        if coalesce::coalescable(&obs.event) {
            if self.coalescer.offer(&obs.event, obs.seq, obs.ts_ns) == Offered::Starts {
                self.write_pending();
                let rec = record(obs.seq, obs.ts_ns, &obs.event);
                let lines = &mut self.lines;
                self.coalescer
                    .start(&obs.event, obs.seq, obs.ts_ns, |head, tail| {
                        rec.write_head(head, lines);
                        rec.write_tail(tail, lines);
                    });
            }
        } else {
            // Lines stay in seq order: what was pending goes first.
            self.write_pending();
            self.write_event(&obs);
        }
        seen.push(obs);
        if self.batch.lines >= BATCH_EVENTS {
            let full = self.take_batch();
            self.out.send(full.bytes, Lane::Control, full.urgent);
        }
    }

    /// The end of a drain: a coalesced run whose window is over is written (one still open is
    /// carried into the next drain, so repeats that arrive a drain apart still share a line —
    /// on a slow guest each paced open can be a drain of its own), and the batch goes to the
    /// writer.
    pub fn end_drain(&mut self) {
        self.end_drain_at(clock::now_ns());
    }

    fn end_drain_at(&mut self, now_ns: u64) {
        if self.coalescer.expired(now_ns) {
            self.write_pending();
        }
        // Kernel evidence is control evidence: it waits for room in the writer's queue, never
        // dropped there. A reader that falls behind shows up as ring-buffer losses, counted in
        // the kernel per kind.
        if !self.batch.bytes.is_empty() {
            let b = self.take_batch();
            self.out.send(b.bytes, Lane::Control, b.urgent);
        }
    }

    /// The batch to send, leaving an empty one as large as it was: a batch grown by doubling
    /// from nothing copies itself over and over (a fifth of the per-event cost in the
    /// `events/pipeline_open_distinct` bench).
    fn take_batch(&mut self) -> Batch {
        let room = self.batch.bytes.len();
        std::mem::replace(
            &mut self.batch,
            Batch {
                bytes: Vec::with_capacity(room),
                ..Batch::default()
            },
        )
    }

    /// One event's line into the batch. Process lifecycle, signals, OOM kills and failed
    /// execs are control evidence, always written (the disk headroom is theirs); data lines
    /// are downgraded past the evidence budget or dropped when the disk is short, and counted.
    /// Consumers saw every event either way.
    fn write_event(&mut self, obs: &Observed) {
        let ev = &obs.event;
        let control = !matches!(
            ev,
            KernelEvent::Open { .. }
                | KernelEvent::Net { .. }
                | KernelEvent::Write { .. }
                | KernelEvent::Unfollowed { .. }
        );
        let mark = self.batch.bytes.len();
        record(obs.seq, obs.ts_ns, ev).write_json(&mut self.batch.bytes, &mut self.lines);
        match self.batch.admit(&self.space, mark, control) {
            Admit::Write => {
                // Signals that can end a process, and OOM kills, are fsync'd at once; the rest
                // (exits, and the SIGCHLD of each one: a spawn-heavy run has thousands) ride
                // with the writer's batches, on disk within 200 ms.
                self.batch.urgent |= match ev {
                    KernelEvent::Signal { signal, .. } => !matches!(
                        *signal,
                        libc::SIGCHLD | libc::SIGURG | libc::SIGWINCH | libc::SIGCONT
                    ),
                    KernelEvent::Oom { .. } => true,
                    _ => false,
                };
            }
            Admit::OverBudget => self.downgraded.count_n(ev.kind(), &target(ev), 1),
            Admit::DiskShort => self.dropped_for_space += 1,
        }
    }

    /// The pending coalesced run, if any, as one line (data evidence, as [`Self::write_event`]
    /// writes it).
    fn write_pending(&mut self) {
        let Some(run) = self.coalescer.pending() else {
            return;
        };
        let mark = self.batch.bytes.len();
        self.batch.bytes.extend_from_slice(&run.head);
        if run.count > 1 {
            write_run(
                &mut self.batch.bytes,
                run.count,
                run.last_seq,
                run.last_ts_ns,
                &mut self.lines,
            );
        }
        self.batch.bytes.extend_from_slice(&run.tail);
        match self.batch.admit(&self.space, mark, false) {
            Admit::Write => {}
            Admit::OverBudget => self.downgraded.count_n(run.kind, &run.target, run.count),
            Admit::DiskShort => self.dropped_for_space += run.count,
        }
        self.coalescer.written();
    }

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

    /// Count data events the daemon's pressure lanes downgraded before they reached this run.
    pub fn merge_downgraded(&mut self, d: &Downgraded) {
        self.downgraded.merge(d);
    }

    /// Data events decoded but not written for lack of disk room.
    /// Events that come after the stream, at the end of a run (the network hooks' unresolved
    /// connects): accepted like any others, then written.
    pub fn accept_late(
        &mut self,
        evs: Vec<KernelEvent>,
        redactor: &Redactor,
        seen: &mut Vec<Observed>,
    ) {
        for ev in evs {
            self.accept(ev, redactor, seen);
        }
        self.end_drain();
    }

    /// Fill comm and ppid of the cgroup hooks' events from the stream (`--kernel-layer
    /// network`): call before the run's first event.
    pub fn fill_hook_identities(&mut self) {
        self.identities = Some(Identities::default());
    }

    /// Events of what vigil does not follow, by kind.
    pub fn unfollowed(&self) -> &std::collections::BTreeMap<String, u64> {
        &self.unfollowed
    }

    pub fn dropped_for_space(&self) -> u64 {
        self.dropped_for_space
    }

    /// Write the layer out; what was written, or its first write error. The last batch is
    /// not fsync'd on its own, urgent or not: the bundle's commit, next, syncs every file.
    pub fn finish(&mut self) -> Result<crate::evidence::ndjson::Written, String> {
        self.batch.urgent = false;
        self.end_drain_at(u64::MAX);
        self.out.finish()
    }
}

/// Serialized lines on their way to the writer.
#[derive(Default)]
struct Batch {
    bytes: Vec<u8>,
    lines: usize,
    urgent: bool,
}

impl Batch {
    /// The line serialized from `mark` on, admitted against the bundle's budgets: kept with
    /// its newline, or taken back out.
    fn admit(&mut self, space: &Space, mark: usize, control: bool) -> Admit {
        let admit = space.admit((self.bytes.len() - mark) as u64 + 1, control);
        if admit == Admit::Write {
            self.bytes.push(b'\n');
            self.lines += 1;
        } else {
            self.bytes.truncate(mark);
        }
        admit
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::event::{Endpoint, Header, NetOp};
    use crate::kernel::record::record;

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
        let mut line = Vec::new();
        record(3, 0, &ev).write_json(&mut line, &mut LineCache::default());
        serde_json::from_slice(&line).expect("a JSON line")
    }

    #[test]
    fn open_records_decode_flags_errno_and_mask_secrets() {
        let ev = KernelEvent::Open {
            hdr: hdr(),
            result: Some(-2),
            via: "syscall",
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
            result: Some(-111),
            fd: Some(3),
            observed_at: "syscall_exit",
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
            result: Some(5),
            fd: Some(3),
            observed_at: "syscall_exit",
            endpoint: None,
            endpoint_source: "none",
        };
        let v = json_of(&ok);
        assert_eq!(v["kind"], "network.send");
        assert!(v["errno"].is_null() && v["family"].is_null());
    }
}
