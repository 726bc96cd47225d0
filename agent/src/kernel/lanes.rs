//! A run's bounded inbox in the daemon: the events the hub routed to it, in kernel order, with
//! admission by lane. Control evidence (process lifecycle, signals, OOM kills, failed execs) is
//! always admitted up to a hard bound no healthy run reaches; data (file opens, network calls)
//! is admitted while fewer than [`DATA_WATERMARK`] data events wait, and telemetry (write
//! progress) while fewer than [`TELEMETRY_WATERMARK`] wait. What is not admitted becomes an exact
//! per-kind, per-target count — the same `downgraded_events_by_kind` accounting as the evidence
//! budget — so one run's storm costs its own evidence, never another run's.
//!
//! Deterministic: whether an event is admitted depends only on what its run has not consumed
//! yet, never on another run or on a random draw.

use std::collections::VecDeque;

use super::event::KernelEvent;
use crate::evidence::downgrade::Downgraded;

/// Data events a run may have waiting before further data is counted instead of queued.
pub const DATA_WATERMARK: usize = 16 * 1024;
/// Telemetry events (write progress) a run may have waiting.
pub const TELEMETRY_WATERMARK: usize = 1024;
/// Control events waiting: far past anything a run's dispatcher leaves unread (it drains every
/// 100 ms at most 4096 at a time); past it events are lost at the queue and health says so.
pub const CONTROL_BOUND: usize = 256 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    Control,
    Data,
    Telemetry,
}

impl Lane {
    pub fn of(ev: &KernelEvent) -> Lane {
        match ev {
            KernelEvent::Open { .. } | KernelEvent::Net { .. } | KernelEvent::Unfollowed { .. } => {
                Lane::Data
            }
            KernelEvent::Write { .. } => Lane::Telemetry,
            _ => Lane::Control,
        }
    }
}

/// What an offer did.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer {
    Queued,
    /// Counted as downgraded (data or telemetry past its watermark).
    Downgraded,
    /// Control past its hard bound: lost at the queue.
    Lost,
}

#[derive(Debug, Default)]
pub struct Lanes {
    queue: VecDeque<(Lane, KernelEvent)>,
    data: usize,
    telemetry: usize,
    control: usize,
    /// Not admitted, by kind and target.
    pub downgraded: Downgraded,
    /// Control events lost at the bound.
    pub control_lost: u64,
}

impl Lanes {
    /// Admit `ev` (its lane decides) or count it. `target` names what a downgraded event was
    /// about (already redacted by the caller), computed only when needed.
    pub fn offer(
        &mut self,
        mut ev: KernelEvent,
        target: impl FnOnce(&mut KernelEvent) -> String,
    ) -> Offer {
        let lane = Lane::of(&ev);
        let (waiting, bound) = match lane {
            Lane::Control => (self.control, CONTROL_BOUND),
            Lane::Data => (self.data, DATA_WATERMARK),
            Lane::Telemetry => (self.telemetry, TELEMETRY_WATERMARK),
        };
        if waiting >= bound {
            if lane == Lane::Control {
                self.control_lost += 1;
                return Offer::Lost;
            }
            let t = target(&mut ev);
            self.downgraded.count(ev.kind(), &t);
            return Offer::Downgraded;
        }
        *self.count_mut(lane) += 1;
        self.queue.push_back((lane, ev));
        Offer::Queued
    }

    fn count_mut(&mut self, lane: Lane) -> &mut usize {
        match lane {
            Lane::Control => &mut self.control,
            Lane::Data => &mut self.data,
            Lane::Telemetry => &mut self.telemetry,
        }
    }

    /// Up to `max` events in kernel order.
    pub fn take(&mut self, max: usize, out: &mut Vec<KernelEvent>) {
        for _ in 0..max {
            let Some((lane, ev)) = self.queue.pop_front() else {
                break;
            };
            *self.count_mut(lane) -= 1;
            out.push(ev);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::event::Header;

    fn open(n: u32) -> KernelEvent {
        KernelEvent::Open {
            hdr: Header::default(),
            result: Some(3),
            via: "syscall",
            dirfd: -100,
            flags: 0,
            mode: 0,
            path: format!("/f{n}"),
            path_truncated: false,
            resolved_path: None,
        }
    }

    fn exit() -> KernelEvent {
        KernelEvent::Exit {
            hdr: Header::default(),
            exit_code: Some(0),
            signal: None,
            core_dumped: false,
            group_dead: true,
        }
    }

    #[test]
    fn data_past_the_watermark_is_counted_and_control_still_queues_in_order() {
        let mut lanes = Lanes::default();
        for i in 0..DATA_WATERMARK as u32 + 10 {
            lanes.offer(open(i), |_| "/f".into());
        }
        assert_eq!(lanes.offer(exit(), |_| unreachable!()), Offer::Queued);
        assert_eq!(lanes.downgraded.total(), 10);
        assert_eq!(lanes.downgraded.by_kind().get("file.open"), Some(&10));
        assert_eq!(lanes.len(), DATA_WATERMARK + 1);
        // Draining makes room again: the rule depends only on what waits.
        let mut out = Vec::new();
        lanes.take(DATA_WATERMARK, &mut out);
        assert!(matches!(out[0], KernelEvent::Open { .. }));
        assert_eq!(lanes.offer(open(0), |_| "/f".into()), Offer::Queued);
        out.clear();
        lanes.take(usize::MAX, &mut out);
        assert!(
            matches!(out[0], KernelEvent::Exit { .. }),
            "kernel order kept"
        );
        assert!(lanes.is_empty());
    }

    #[test]
    fn control_is_lost_only_past_its_hard_bound() {
        let mut lanes = Lanes::default();
        for _ in 0..CONTROL_BOUND {
            assert_eq!(lanes.offer(exit(), |_| String::new()), Offer::Queued);
        }
        assert_eq!(lanes.offer(exit(), |_| String::new()), Offer::Lost);
        assert_eq!(lanes.control_lost, 1);
        assert_eq!(lanes.downgraded.total(), 0);
    }
}
