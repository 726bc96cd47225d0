//! Runner lifecycle events (`events.ndjson`, `vigil.runner.event.v1`): one owner assigns `seq`
//! from 0 and keeps the run trace's copy; a writer thread appends them in fsync'd batches.
//! Under pressure telemetry (heartbeats, process samples) is shed before it gets a seq, so the
//! file's seq has no gaps; the shed count goes to health. Control events are never shed.

use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::ndjson::{Lane, NdjsonWriter};
use super::schema;
use crate::clock;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    RunStarted,
    Heartbeat,
    StallWarning,
    Watchdog,
    SubprocessState,
    Checkpoint,
    ContractViolation,
    Note,
    RunFinished,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::RunStarted => "run_started",
            EventKind::Heartbeat => "heartbeat",
            EventKind::StallWarning => "stall_warning",
            EventKind::Watchdog => "watchdog",
            EventKind::SubprocessState => "subprocess_state",
            EventKind::Checkpoint => "checkpoint",
            EventKind::ContractViolation => "contract_violation",
            EventKind::Note => "note",
            EventKind::RunFinished => "run_finished",
        }
    }

    /// Kinds that belong in run-trace.json's `events` (CONTRACT.md §3).
    pub fn in_trace(self) -> bool {
        matches!(
            self,
            EventKind::Heartbeat
                | EventKind::StallWarning
                | EventKind::Watchdog
                | EventKind::SubprocessState
                | EventKind::Checkpoint
                | EventKind::ContractViolation
        )
    }

    /// Heartbeats are telemetry: shed first under pressure. Everything else is control evidence
    /// and is never dropped.
    fn lane(self) -> Lane {
        if self == EventKind::Heartbeat {
            Lane::Telemetry
        } else {
            Lane::Control
        }
    }

    /// Events fsync'd at once (outcomes, kills, notes); the rest wait for their batch.
    /// `run_finished` is the log's last line: the commit that follows it syncs it with every
    /// other file of the bundle.
    fn urgent(self) -> bool {
        !matches!(
            self,
            EventKind::RunStarted
                | EventKind::RunFinished
                | EventKind::Heartbeat
                | EventKind::SubprocessState
                | EventKind::Checkpoint
        )
    }

    /// Telemetry is what the trace's in-memory copy sheds first under pressure.
    fn is_telemetry(self) -> bool {
        matches!(self, EventKind::Heartbeat | EventKind::SubprocessState)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunnerEvent {
    pub schema: String,
    pub seq: u64,
    pub run_id: String,
    pub ts: String,
    pub ts_ns: u64,
    pub kind: String,
    pub reason: Option<String>,
    pub data: serde_json::Value,
}

/// Most trace events kept in memory for run-trace.json; telemetry past this is shed from the
/// trace (events.ndjson still holds every event) and the shed count is written to health.
const TRACE_EVENT_CAP: usize = 20_000;

pub struct EventLog {
    run_id: String,
    next_seq: u64,
    out: NdjsonWriter,
    /// Lines not yet handed to the writer: one message per dispatcher iteration instead of one
    /// thread wakeup per event. Always sent before anything else, so `seq` stays in order.
    pending: Vec<u8>,
    pending_urgent: bool,
    trace: Vec<RunnerEvent>,
    trace_shed: u64,
}

/// A batch this large is sent without waiting for the end of the dispatcher iteration.
const PENDING_MAX: usize = 64 * 1024;

/// Lines the writer thread may have queued: bounded, and far above what a run emits per batch.
const QUEUE_LINES: usize = 8192;

impl EventLog {
    pub fn create(path: &Path, run_id: &str) -> io::Result<Self> {
        Ok(EventLog {
            run_id: run_id.to_string(),
            next_seq: 0,
            out: NdjsonWriter::spawn(path, QUEUE_LINES)?,
            pending: Vec::new(),
            pending_urgent: false,
            trace: Vec::new(),
            trace_shed: 0,
        })
    }

    /// Record one event; returns its seq, or None when telemetry was shed. A write failure is
    /// reported by `finish` (the run goes on; the commit then fails and says why).
    pub fn emit(
        &mut self,
        kind: EventKind,
        reason: Option<&str>,
        data: serde_json::Value,
    ) -> Option<u64> {
        self.emit_at(kind, reason, data, clock::now_ns())
    }

    /// `emit`, stamped with the moment the event happened (`ts_ns`, wall clock) rather than
    /// the moment it is written: a record written just after what it records.
    pub fn emit_at(
        &mut self,
        kind: EventKind,
        reason: Option<&str>,
        data: serde_json::Value,
        ts_ns: u64,
    ) -> Option<u64> {
        let ev = RunnerEvent {
            schema: schema::RUNNER_EVENT.to_string(),
            seq: self.next_seq,
            run_id: self.run_id.clone(),
            ts: clock::rfc3339(ts_ns),
            ts_ns,
            kind: kind.as_str().to_string(),
            reason: reason.map(str::to_string),
            data,
        };
        let mut line = serde_json::to_vec(&ev).unwrap_or_default();
        line.push(b'\n');
        if kind.lane() == Lane::Telemetry && self.pending.is_empty() {
            // Sheddable, and nothing queued ahead of it: try the writer's queue directly.
            if !self.out.send(line, Lane::Telemetry, false) {
                return None;
            }
        } else {
            self.pending.extend_from_slice(&line);
            self.pending_urgent |= kind.urgent();
            if kind.urgent() || self.pending.len() >= PENDING_MAX {
                self.flush_pending();
            }
        }
        self.next_seq += 1;
        if kind.in_trace() {
            if self.trace.len() < TRACE_EVENT_CAP || !kind.is_telemetry() {
                self.trace.push(ev);
            } else {
                self.trace_shed += 1;
            }
        }
        Some(self.next_seq - 1)
    }

    /// Hand the pending batch to the writer (control lane: waits for room, never dropped).
    pub fn flush_pending(&mut self) {
        if !self.pending.is_empty() {
            let batch = std::mem::take(&mut self.pending);
            self.out.send(
                batch,
                Lane::Control,
                std::mem::take(&mut self.pending_urgent),
            );
        }
    }

    /// Flush and fsync everything; returns the first write error of the run, if any.
    pub fn finish(&mut self) -> Result<super::ndjson::Written, String> {
        self.flush_pending();
        self.out.finish()
    }

    /// Telemetry events shed from events.ndjson because the writer's queue was full.
    pub fn shed(&self) -> u64 {
        self.out.shed()
    }

    /// The trace's copy of the events, handed over (the log is finished: nothing follows).
    pub fn take_trace_events(&mut self) -> Vec<RunnerEvent> {
        std::mem::take(&mut self.trace)
    }

    pub fn trace_shed(&self) -> u64 {
        self.trace_shed
    }

    pub fn count(&self) -> u64 {
        self.next_seq
    }
}
