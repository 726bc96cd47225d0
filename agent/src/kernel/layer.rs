//! The kernel layer of one run: start the sensor (or record why it is absent), watch the run's
//! cgroup, drain events into `layers/kernel.ndjson`, and say in health what was observed.

use std::collections::BTreeMap;
use std::path::Path;

use super::event::Observed;
use super::layer_writer::LayerWriter;
use super::reader::KernelReader;
use super::sensor::{KernelSensor, ProbeStatus, Scope};
use crate::evidence::downgrade::Downgraded;
use crate::evidence::health::{KernelClaim, ProbeHealth, ProbeState};
use crate::evidence::redact::Redactor;
use crate::evidence::space::Space;
use std::sync::Arc;

pub struct KernelLayer {
    sensor: Option<KernelSensor>,
    reader: Option<KernelReader>,
    probes: BTreeMap<String, ProbeHealth>,
    notes: Vec<String>,
    /// The run cgroup, when the network hooks report its TCP connects (their unresolved ones
    /// are collected at the end).
    root: Option<u64>,
}

/// What the kernel layer observed, for observation-health.json.
#[derive(Debug, Clone, Default)]
pub struct KernelReport {
    pub kernel_layer: KernelClaim,
    pub probes: BTreeMap<String, ProbeHealth>,
    pub ring_lost: u64,
    /// `ring_lost` by event kind.
    pub ring_lost_by_kind: BTreeMap<String, u64>,
    pub decode_errors: u64,
    /// `decode_errors` by the kind the event's header named.
    pub decode_errors_by_kind: BTreeMap<String, u64>,
    pub written: u64,
    pub notes: Vec<String>,
    pub write_error: Option<String>,
    /// Events not written to the layer because the disk ran short (counted, and the claim is
    /// partial).
    pub dropped_for_space: u64,
    /// Data events past `--evidence-max-bytes`, as per-kind, per-target counts.
    pub downgraded: Downgraded,
    /// Control events lost at the daemon's bounded per-run queue.
    pub queue_lost: u64,
    /// What the run did that vigil saw but does not follow (32-bit syscalls, io_uring
    /// submissions other than opens), by kind: the claim is `partial` when there are any.
    pub unfollowed_by_kind: BTreeMap<String, u64>,
    /// What the layer's writer wrote (its digest, for the index), when it finished cleanly.
    pub layer_written: Option<crate::evidence::ndjson::Written>,
}

impl KernelReport {
    /// A source that observed nothing, with the reason.
    pub fn absent(why: &str) -> Self {
        KernelReport {
            notes: vec![format!("kernel layer absent: {why}")],
            ..KernelReport::default()
        }
    }
}

fn probe(status: ProbeState, reason: Option<String>) -> ProbeHealth {
    ProbeHealth { status, reason }
}

impl KernelLayer {
    /// Load and attach the programs of `scope` (none when None) and watch `cgroup_id` (with the
    /// cgroups `beneath` lists). Never
    /// fails: a missing feature lowers the claim and is recorded.
    pub fn start(
        scope: Option<Scope>,
        (cgroup_id, cgroup_dir): (u64, &Path),
        beneath: &dyn Fn() -> Vec<u64>,
        layer: &Path,
        space: Arc<Space>,
    ) -> Self {
        let mut me = KernelLayer {
            sensor: None,
            reader: None,
            probes: BTreeMap::new(),
            notes: Vec::new(),
            root: None,
        };
        let Some(scope) = scope else {
            me.notes
                .push("kernel layer disabled (--kernel-layer off)".into());
            return me;
        };
        let mut sensor = match KernelSensor::load(scope) {
            Ok(s) => s,
            Err(e) => {
                me.notes.push(format!("kernel layer unavailable: {e}"));
                me.probes.insert(
                    "process".into(),
                    probe(ProbeState::Failed, Some(e.to_string())),
                );
                return me;
            }
        };
        if let Err(e) = sensor.watch_subtree(cgroup_id, beneath) {
            me.probes = probe_health(sensor.probes());
            me.notes
                .push(format!("kernel layer not watching the run cgroup: {e}"));
            return me;
        }
        // After the filter holds the cgroup, before the child exists: its first connect is seen.
        // (Attaching them first: the TCP-state program joins the sensor's probes then.)
        let hooks = (scope == Scope::Network).then(|| sensor.attach_net(cgroup_id, cgroup_dir));
        let mut probes = sensor.probes().clone();
        if let Some(hooks) = hooks {
            probes.insert(super::sensor::NET_HOOK_PROBE.into(), hooks);
            me.root = Some(cgroup_id);
        }
        me.probes = probe_health(&probes);
        match sensor
            .take_events()
            .map_err(|e| e.to_string())
            .and_then(|ring| KernelReader::new(ring, layer, space).map_err(|e| e.to_string()))
        {
            Ok(mut r) => {
                if me.root.is_some() {
                    r.writer.fill_hook_identities();
                }
                me.reader = Some(r);
            }
            Err(e) => me.notes.push(format!("kernel events cannot be read: {e}")),
        }
        me.sensor = Some(sensor);
        me
    }

    /// A layer that observes nothing, for `why`.
    pub fn absent(why: &str) -> Self {
        KernelLayer {
            sensor: None,
            reader: None,
            probes: BTreeMap::new(),
            notes: vec![why.to_string()],
            root: None,
        }
    }

    /// Resolves when the kernel has new events; never, without a reader.
    pub async fn readable(&self) {
        match &self.reader {
            Some(r) => r.readable().await,
            None => std::future::pending().await,
        }
    }

    /// The one boot→wall offset of this sensor's timestamps (the reader's), or a fresh one
    /// without a reader.
    pub fn boot_to_wall_ns(&self) -> i128 {
        self.reader
            .as_ref()
            .map_or_else(crate::clock::boot_to_wall_offset_ns, |r| {
                r.writer.boot_to_wall_ns()
            })
    }

    /// Whether kernel events are being read (the process tree can come from them).
    pub fn active(&self) -> bool {
        self.reader.is_some()
    }

    /// Write what is in the ring buffer now, handing decoded events to `seen`.
    pub fn drain(&mut self, redactor: &Redactor, seen: &mut Vec<Observed>) {
        if let Some(r) = self.reader.as_mut() {
            r.drain(redactor, seen);
        }
    }

    /// Drain what is left (call once the cgroup is empty: every event of the run is committed
    /// by then), handing it to `seen`, flush the layer and report.
    pub fn finish(&mut self, redactor: &Redactor, seen: &mut Vec<Observed>) -> KernelReport {
        if let Some(r) = self.reader.as_mut() {
            r.drain_all(redactor, seen);
            if let (Some(root), Some(sensor)) = (self.root, self.sensor.as_mut()) {
                r.writer
                    .accept_late(sensor.take_unresolved_connects(root), redactor, seen);
            }
        }
        let ring_lost_by_kind = self
            .sensor
            .as_ref()
            .and_then(|s| s.lost().ok())
            .unwrap_or_default()
            .into_iter()
            .map(|(k, n)| (k.to_string(), n))
            .collect();
        let source = self.reader.as_mut().map(|r| {
            let decode_errors = r
                .decode_errors()
                .iter()
                .map(|(k, n)| (k.to_string(), *n))
                .collect();
            (&mut r.writer, decode_errors)
        });
        report(&self.probes, self.notes.clone(), ring_lost_by_kind, source)
    }
}

/// What a run's kernel layer observed, from its probes, the ring losses that can be charged to
/// it, and its writer (None when no events were read) with the reader's decode errors.
pub fn report(
    probes: &BTreeMap<String, ProbeHealth>,
    mut notes: Vec<String>,
    ring_lost_by_kind: BTreeMap<String, u64>,
    source: Option<(&mut LayerWriter, BTreeMap<String, u64>)>,
) -> KernelReport {
    let ring_lost = ring_lost_by_kind.values().sum();
    let reading = source.is_some();
    let (written, decode_errors_by_kind, finished, dropped_for_space, downgraded, unfollowed) =
        match source {
            Some((w, decode_errors)) => {
                let finished = Some(w.finish());
                (
                    w.written(),
                    decode_errors,
                    finished,
                    w.dropped_for_space(),
                    w.downgraded().clone(),
                    w.unfollowed().clone(),
                )
            }
            None => (
                0,
                BTreeMap::new(),
                None,
                0,
                Downgraded::default(),
                BTreeMap::new(),
            ),
        };
    let (write_error, layer_written) = match finished {
        Some(Ok(w)) => (None, Some(w)),
        Some(Err(e)) => (Some(e), None),
        None => (None, None),
    };
    let decode_errors = decode_errors_by_kind.values().sum();
    let attached = probes
        .values()
        .filter(|p| p.status == ProbeState::Attached)
        .count();
    let all_attached = attached > 0 && probes.values().all(|p| p.status == ProbeState::Attached);
    let kernel_layer = match (
        reading,
        all_attached
            && ring_lost == 0
            && decode_errors == 0
            && dropped_for_space == 0
            && downgraded.total() == 0
            && unfollowed.is_empty()
            && write_error.is_none(),
    ) {
        (false, _) => KernelClaim::Absent,
        (true, true) => KernelClaim::Observed,
        (true, false) => KernelClaim::Partial,
    };
    if reading {
        notes.push(format!(
            "kernel layer: {attached} of {} probes attached (raw tracepoints filtered by cgroup id); {written} events, {ring_lost} lost in the ring buffer, {decode_errors} undecodable",
            probes.len()
        ));
    }
    if dropped_for_space > 0 {
        notes.push(format!(
            "kernel layer: {dropped_for_space} events not written to layers/kernel.ndjson: the disk ran short (control evidence kept)"
        ));
    }
    if let Some(e) = &write_error {
        notes.push(format!("kernel layer: writing stopped: {e}"));
    }
    for (kind, n) in &unfollowed {
        notes.push(match kind.as_str() {
            "syscall.compat" => format!(
                "kernel layer: {n} 32-bit syscalls (int 0x80) of kinds vigil follows were made; their arguments (paths, addresses) are not read (syscall.compat events)"
            ),
            _ => format!(
                "kernel layer: {n} io_uring submissions were made whose target vigil does not read (io_uring.submit events: opcode only; opens whose path it reads are file.open)"
            ),
        });
    }
    KernelReport {
        kernel_layer,
        probes: probes.clone(),
        ring_lost,
        ring_lost_by_kind,
        decode_errors,
        decode_errors_by_kind,
        written,
        notes,
        write_error,
        dropped_for_space,
        downgraded,
        queue_lost: 0,
        unfollowed_by_kind: unfollowed,
        layer_written,
    }
}

/// A sensor's probe states as health reports them.
pub fn probe_health(probes: &BTreeMap<String, ProbeStatus>) -> BTreeMap<String, ProbeHealth> {
    probes
        .iter()
        .map(|(name, status)| {
            let h = match status {
                ProbeStatus::Attached => probe(ProbeState::Attached, None),
                ProbeStatus::AttachedTo(via) => probe(ProbeState::Attached, Some(via.clone())),
                ProbeStatus::Unavailable(r) => probe(ProbeState::Unavailable, Some(r.clone())),
                ProbeStatus::Failed(r) => probe(ProbeState::Failed, Some(r.clone())),
            };
            (name.clone(), h)
        })
        .collect()
}

impl super::bus::EventSource for KernelLayer {
    async fn readable(&self) {
        KernelLayer::readable(self).await;
    }
    fn active(&self) -> bool {
        KernelLayer::active(self)
    }
    fn drain(&mut self, redactor: &Redactor, out: &mut Vec<Observed>) {
        KernelLayer::drain(self, redactor, out);
    }
    fn finish(&mut self, redactor: &Redactor, out: &mut Vec<Observed>) -> KernelReport {
        KernelLayer::finish(self, redactor, out)
    }
    fn boot_to_wall_ns(&self) -> i128 {
        KernelLayer::boot_to_wall_ns(self)
    }
}
