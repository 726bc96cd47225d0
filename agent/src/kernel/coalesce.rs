//! Coalescing of repeated data events: the same process doing the same thing to the same target
//! with the same result, again and again within a short window (a tight open/close loop, a
//! retrying connect), becomes one line of the kernel layer with `count`, the first event's `seq`
//! and `ts` and the last one's `last_seq` and `last_ts`. Only the file is coalesced: every
//! consumer still sees every event, so contract counters, the oracle and the process tree stay
//! exact. Control events are never coalesced.
//!
//! The pending run keeps the first event's line already serialized (split where the run's
//! fields go) and what makes events "the same" as compact key bytes, in buffers reused from run
//! to run: a run of one distinct event costs no copy of the event and no allocation.

use super::event::KernelEvent;

/// How far apart (event time) two identical events may be to share a line.
pub const WINDOW_NS: u64 = 100_000_000;

/// What makes two data events the same operation — process, kind, target, flags and result —
/// as bytes, each variable-length part prefixed by its length so that two keys are equal only
/// when those fields are. False for an event that is never coalesced.
fn key_of(ev: &KernelEvent, key: &mut Vec<u8>) -> bool {
    fn bytes(key: &mut Vec<u8>, b: &[u8]) {
        key.extend_from_slice(&(b.len() as u64).to_le_bytes());
        key.extend_from_slice(b);
    }
    fn opt_bytes(key: &mut Vec<u8>, b: Option<&str>) {
        match b {
            Some(b) => {
                key.push(1);
                bytes(key, b.as_bytes());
            }
            None => key.push(0),
        }
    }
    fn opt<T: Copy>(key: &mut Vec<u8>, v: Option<T>, le: impl Fn(T) -> [u8; 8]) {
        match v {
            Some(v) => {
                key.push(1);
                key.extend_from_slice(&le(v));
            }
            None => key.push(0),
        }
    }
    key.clear();
    match ev {
        KernelEvent::Open {
            hdr,
            result,
            flags,
            path,
            resolved_path,
            ..
        } => {
            key.push(1);
            key.extend_from_slice(&hdr.pid.to_le_bytes());
            opt(key, *result, i64::to_le_bytes);
            key.extend_from_slice(&flags.to_le_bytes());
            bytes(key, path.as_bytes());
            opt_bytes(key, resolved_path.as_deref());
        }
        KernelEvent::Net {
            hdr,
            op,
            result,
            endpoint,
            ..
        } => {
            key.push(2);
            key.extend_from_slice(&hdr.pid.to_le_bytes());
            key.extend_from_slice(op.kind().as_bytes());
            opt(key, *result, i64::to_le_bytes);
            match endpoint {
                Some(e) => {
                    key.push(1);
                    bytes(key, e.family.as_bytes());
                    opt_bytes(key, e.address.as_deref());
                    opt(key, e.port, |p| u64::from(p).to_le_bytes());
                }
                None => key.push(0),
            }
        }
        KernelEvent::Unfollowed {
            hdr,
            kind,
            nr,
            result,
        } => {
            key.push(3);
            key.extend_from_slice(&hdr.pid.to_le_bytes());
            bytes(key, kind.as_bytes());
            opt(key, *nr, |n| u64::from(n).to_le_bytes());
            opt(key, *result, i64::to_le_bytes);
        }
        _ => return false,
    }
    true
}

/// Whether an event may be coalesced at all.
pub fn coalescable(ev: &KernelEvent) -> bool {
    matches!(
        ev,
        KernelEvent::Open { .. } | KernelEvent::Net { .. } | KernelEvent::Unfollowed { .. }
    )
}

/// The run being built: its first event's line, and how many joined it.
#[derive(Debug, Default)]
pub struct Run {
    /// The first event's line up to its `ts_ns`, and from its `pid` on: the run's fields go
    /// between the two.
    pub head: Vec<u8>,
    pub tail: Vec<u8>,
    pub first_ts_ns: u64,
    pub count: u64,
    pub last_seq: u64,
    pub last_ts_ns: u64,
    /// What a downgrade counts the run under.
    pub kind: &'static str,
    pub target: String,
}

#[derive(Debug, Default)]
pub struct Coalescer {
    run: Run,
    /// A run is pending in `run`.
    pending: bool,
    key: Vec<u8>,
    scratch: Vec<u8>,
}

/// What became of an offered event.
#[derive(Debug, PartialEq, Eq)]
pub enum Offered {
    /// It repeats the pending run, which now counts it.
    Joined,
    /// It starts a run: the caller writes the pending one first (if [`Coalescer::pending`]),
    /// then [`Coalescer::start`]s this one.
    Starts,
}

impl Coalescer {
    /// Offer a coalescable event seen at `ts_ns` under `seq`: it joins the pending run when it
    /// repeats it within the window.
    pub fn offer(&mut self, ev: &KernelEvent, seq: u64, ts_ns: u64) -> Offered {
        key_of(ev, &mut self.scratch);
        if self.pending
            && self.scratch == self.key
            && ts_ns.saturating_sub(self.run.first_ts_ns) <= WINDOW_NS
        {
            self.run.count += 1;
            self.run.last_seq = seq;
            self.run.last_ts_ns = ts_ns;
            return Offered::Joined;
        }
        Offered::Starts
    }

    /// The pending run, if any (to be written now, before a control event or a new run).
    pub fn pending(&self) -> Option<&Run> {
        self.pending.then_some(&self.run)
    }

    /// The pending run is written: nothing is pending.
    pub fn written(&mut self) {
        self.pending = false;
    }

    /// Whether the pending run's window is over at `now_ns` (nothing can join it any more).
    pub fn expired(&self, now_ns: u64) -> bool {
        self.pending && now_ns.saturating_sub(self.run.first_ts_ns) > WINDOW_NS
    }

    /// Start a run with the event last offered (which must have been answered
    /// [`Offered::Starts`], the previous run written): `line` fills the run's head and tail
    /// buffers with its line.
    pub fn start(
        &mut self,
        ev: &KernelEvent,
        seq: u64,
        ts_ns: u64,
        line: impl FnOnce(&mut Vec<u8>, &mut Vec<u8>),
    ) {
        std::mem::swap(&mut self.key, &mut self.scratch);
        let run = &mut self.run;
        run.head.clear();
        run.tail.clear();
        line(&mut run.head, &mut run.tail);
        run.first_ts_ns = ts_ns;
        run.count = 1;
        run.last_seq = seq;
        run.last_ts_ns = ts_ns;
        run.kind = ev.kind();
        run.target.clear();
        super::record::target_into(ev, &mut run.target);
        self.pending = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::event::{Endpoint, Header, NetOp};

    fn open(pid: u32, path: &str, result: i64) -> KernelEvent {
        KernelEvent::open_of(pid, path, Some(path), result)
    }

    /// Offer `ev`; when it starts a run, "write" the pending one (returned as (first seq,
    /// count, last seq)) and start the new one.
    fn feed(c: &mut Coalescer, ev: &KernelEvent, seq: u64, ts: u64) -> Option<(u64, u64, u64)> {
        if c.offer(ev, seq, ts) == Offered::Joined {
            return None;
        }
        let done = c.pending().map(|r| {
            let first = String::from_utf8(r.head.clone()).expect("utf8");
            (first.parse().expect("seq"), r.count, r.last_seq)
        });
        c.written();
        c.start(ev, seq, ts, |head, tail| {
            head.extend_from_slice(seq.to_string().as_bytes());
            tail.extend_from_slice(b"}");
        });
        done
    }

    #[test]
    fn identical_events_in_the_window_share_a_line_and_anything_else_breaks_it() {
        let mut c = Coalescer::default();
        assert_eq!(feed(&mut c, &open(1, "/a", 3), 0, 0), None);
        assert_eq!(feed(&mut c, &open(1, "/a", 3), 1, 10), None);
        assert_eq!(feed(&mut c, &open(1, "/a", 3), 2, 20), None);
        // Another result ends the run.
        assert_eq!(feed(&mut c, &open(1, "/a", -2), 3, 30), Some((0, 3, 2)));
        // Another process, another path, a gap past the window: each starts a run of its own.
        assert_eq!(feed(&mut c, &open(2, "/a", -2), 4, 40), Some((3, 1, 3)));
        assert_eq!(feed(&mut c, &open(2, "/b", -2), 5, 50), Some((4, 1, 4)));
        let gap = 50 + WINDOW_NS + 1;
        assert_eq!(feed(&mut c, &open(2, "/b", -2), 6, gap), Some((5, 1, 5)));
        let run = c.pending().expect("pending");
        assert_eq!(
            (run.count, run.kind, run.target.as_str()),
            (1, "file.open", "/b")
        );
        c.written();
        assert!(c.pending().is_none());
    }

    #[test]
    fn keys_tell_apart_what_only_a_length_prefix_can() {
        // "/a" + resolved "b" must not equal "/ab" + resolved "" and the like.
        let mut a = open(1, "/a", 3);
        let mut b = open(1, "/ab", 3);
        if let KernelEvent::Open { resolved_path, .. } = &mut a {
            *resolved_path = Some("b".into());
        }
        if let KernelEvent::Open { resolved_path, .. } = &mut b {
            *resolved_path = Some(String::new());
        }
        let (mut ka, mut kb) = (Vec::new(), Vec::new());
        assert!(key_of(&a, &mut ka) && key_of(&b, &mut kb));
        assert_ne!(ka, kb);
        let net = |address: Option<&str>, port| KernelEvent::Net {
            hdr: Header::default(),
            op: NetOp::Connect,
            result: Some(0),
            fd: Some(3),
            endpoint: Some(Endpoint {
                family: "inet".into(),
                address: address.map(String::from),
                port,
            }),
            endpoint_source: "argument",
            observed_at: "syscall_exit",
        };
        let keys: Vec<Vec<u8>> = [
            net(None, Some(1)),
            net(Some(""), Some(1)),
            net(Some("x"), None),
        ]
        .iter()
        .map(|e| {
            let mut k = Vec::new();
            assert!(key_of(e, &mut k));
            k
        })
        .collect();
        assert!(keys[0] != keys[1] && keys[1] != keys[2] && keys[0] != keys[2]);
    }

    #[test]
    fn a_run_is_carried_across_drains_until_its_window_is_over() {
        let mut c = Coalescer::default();
        assert_eq!(feed(&mut c, &open(1, "/a", -2), 0, 1_000), None);
        // A drain ends within the window: the run stays open for the next drain's repeats.
        assert!(!c.expired(1_000 + WINDOW_NS));
        assert_eq!(feed(&mut c, &open(1, "/a", -2), 1, 2_000), None);
        assert!(c.expired(1_000 + WINDOW_NS + 1));
        let run = c.pending().expect("pending");
        assert_eq!((run.count, run.last_seq), (2, 1));
    }
}
