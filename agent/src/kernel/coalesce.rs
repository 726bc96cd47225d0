//! Coalescing of repeated data events: the same process doing the same thing to the same target
//! with the same result, again and again within a short window (a tight open/close loop, a
//! retrying connect), becomes one line of the kernel layer with `count`, the first event's `seq`
//! and `ts` and the last one's `last_seq` and `last_ts`. Only the file is coalesced: every
//! consumer still sees every event, so contract counters, the oracle and the process tree stay
//! exact. Control events are never coalesced.

use super::event::{KernelEvent, Observed};

/// How far apart (event time) two identical events may be to share a line.
pub const WINDOW_NS: u64 = 100_000_000;

/// Consecutive identical data events, to be written as one line.
#[derive(Debug, Clone)]
pub struct Run {
    pub first: Observed,
    pub count: u64,
    pub last_seq: u64,
    pub last_ts_ns: u64,
}

/// Whether two data events are the same operation: process, kind, target, flags and result.
fn same(a: &KernelEvent, b: &KernelEvent) -> bool {
    match (a, b) {
        (
            KernelEvent::Open {
                hdr: ha,
                result: ra,
                flags: fa,
                path: pa,
                resolved_path: qa,
                ..
            },
            KernelEvent::Open {
                hdr: hb,
                result: rb,
                flags: fb,
                path: pb,
                resolved_path: qb,
                ..
            },
        ) => ha.pid == hb.pid && ra == rb && fa == fb && pa == pb && qa == qb,
        (
            KernelEvent::Net {
                hdr: ha,
                op: oa,
                result: ra,
                endpoint: ea,
                ..
            },
            KernelEvent::Net {
                hdr: hb,
                op: ob,
                result: rb,
                endpoint: eb,
                ..
            },
        ) => ha.pid == hb.pid && oa == ob && ra == rb && ea == eb,
        (
            KernelEvent::Unfollowed {
                hdr: ha,
                kind: ka,
                nr: na,
                result: ra,
            },
            KernelEvent::Unfollowed {
                hdr: hb,
                kind: kb,
                nr: nb,
                result: rb,
            },
        ) => ha.pid == hb.pid && ka == kb && na == nb && ra == rb,
        _ => false,
    }
}

/// Whether an event may be coalesced at all.
pub fn coalescable(ev: &KernelEvent) -> bool {
    matches!(
        ev,
        KernelEvent::Open { .. } | KernelEvent::Net { .. } | KernelEvent::Unfollowed { .. }
    )
}

#[derive(Debug, Default)]
pub struct Coalescer {
    pending: Option<Run>,
}

impl Coalescer {
    /// Offer a coalescable event. It joins the pending run when it repeats it within the window;
    /// otherwise the pending run is returned (to be written) and this event starts a new one.
    pub fn offer(&mut self, obs: &Observed) -> Option<Run> {
        if let Some(run) = self.pending.as_mut()
            && same(&run.first.event, &obs.event)
            && obs.ts_ns.saturating_sub(run.first.ts_ns) <= WINDOW_NS
        {
            run.count += 1;
            run.last_seq = obs.seq;
            run.last_ts_ns = obs.ts_ns;
            return None;
        }
        self.pending.replace(Run {
            first: obs.clone(),
            count: 1,
            last_seq: obs.seq,
            last_ts_ns: obs.ts_ns,
        })
    }

    /// The pending run, to be written now (before a control event).
    pub fn flush(&mut self) -> Option<Run> {
        self.pending.take()
    }

    /// The pending run if its window is over at `now_ns` (nothing can join it any more).
    pub fn flush_expired(&mut self, now_ns: u64) -> Option<Run> {
        match &self.pending {
            Some(run) if now_ns.saturating_sub(run.first.ts_ns) > WINDOW_NS => self.pending.take(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::event::Header;

    fn open(seq: u64, ts_ns: u64, pid: u32, path: &str, result: i64) -> Observed {
        Observed {
            seq,
            ts_ns,
            event: KernelEvent::Open {
                hdr: Header {
                    pid,
                    ..Header::default()
                },
                result: Some(result),
                via: "syscall",
                dirfd: -100,
                flags: 0,
                mode: 0,
                path: path.into(),
                path_truncated: false,
                resolved_path: Some(path.into()),
            },
        }
    }

    #[test]
    fn identical_events_in_the_window_share_a_line_and_anything_else_breaks_it() {
        let mut c = Coalescer::default();
        assert!(c.offer(&open(0, 0, 1, "/a", 3)).is_none());
        assert!(c.offer(&open(1, 10, 1, "/a", 3)).is_none());
        assert!(c.offer(&open(2, 20, 1, "/a", 3)).is_none());
        // Another result ends the run.
        let run = c.offer(&open(3, 30, 1, "/a", -2)).expect("run");
        assert_eq!(
            (run.first.seq, run.count, run.last_seq, run.last_ts_ns),
            (0, 3, 2, 20)
        );
        // Another process, another path, a gap past the window: each starts a run of its own.
        assert_eq!(c.offer(&open(4, 40, 2, "/a", -2)).expect("run").count, 1);
        assert_eq!(c.offer(&open(5, 50, 2, "/b", -2)).expect("run").count, 1);
        let gap = 50 + WINDOW_NS + 1;
        assert_eq!(c.offer(&open(6, gap, 2, "/b", -2)).expect("run").count, 1);
        assert_eq!(c.flush().expect("pending").first.seq, 6);
        assert!(c.flush().is_none());
    }

    #[test]
    fn a_run_is_carried_across_drains_until_its_window_is_over() {
        let mut c = Coalescer::default();
        assert!(c.offer(&open(0, 1_000, 1, "/a", -2)).is_none());
        // A drain ends within the window: the run stays open for the next drain's repeats.
        assert!(c.flush_expired(1_000 + WINDOW_NS).is_none());
        assert!(c.offer(&open(1, 2_000, 1, "/a", -2)).is_none());
        let run = c.flush_expired(1_000 + WINDOW_NS + 1).expect("window over");
        assert_eq!((run.count, run.last_seq), (2, 1));
        assert!(c.flush_expired(u64::MAX).is_none());
    }
}
