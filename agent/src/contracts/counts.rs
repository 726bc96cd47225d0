//! Run-wide counters that contract clauses speak about: kernel operations of the run's cgroup
//! (by operation, with how many a permission check refused), output bytes and lost events.
//! The supervisor and the output threads add to them; the contract layer snapshots them when a
//! span opens and when it closes, so a span's figure is what happened while it was open.
//!
//! Counter names are fixed here, and a clause naming one that does not exist is refused when
//! the contract loads: a typo must not read as a count that is always zero.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::kernel::event::{KernelEvent, NetOp, Observed};

/// Operations with a permission outcome: `<op>.count`, `<op>.allowed`, `<op>.denied`.
const JUDGED: [&str; 6] = [
    "process.exec",
    "file.open",
    "network.connect",
    "network.bind",
    "network.accept",
    "network.send",
];
/// Operations counted only: `<op>.count`.
const COUNTED: [&str; 5] = [
    "process.fork",
    "process.exit",
    "signal.generate",
    "oom.kill",
    "io.write",
];

/// Positions in [`JUDGED`] (a test keeps them in step with the names).
const EXEC: usize = 0;
const OPEN: usize = 1;
const CONNECT: usize = 2;
const BIND: usize = 3;
const ACCEPT: usize = 4;
const SEND: usize = 5;
/// Positions in [`COUNTED`].
const FORK: usize = 0;
const EXIT: usize = 1;
const SIGNAL: usize = 2;
const OOM: usize = 3;
const WRITE: usize = 4;

/// How many counters there are: three per judged operation, one per counted one.
pub const COUNTERS: usize = JUDGED.len() * 3 + COUNTED.len();

/// A clause's counter, resolved once when the contract loads.
pub type CounterId = usize;

/// Snapshot of every counter, indexed by [`CounterId`].
pub type Counts = [u64; COUNTERS];

/// The counter a name such as `network.connect.denied` refers to.
pub fn counter_id(name: &str) -> Option<CounterId> {
    let (op, outcome) = name.rsplit_once('.')?;
    if let Some(i) = JUDGED.iter().position(|o| *o == op) {
        let slot = ["count", "allowed", "denied"]
            .iter()
            .position(|s| *s == outcome)?;
        return Some(i * 3 + slot);
    }
    let i = COUNTED.iter().position(|o| *o == op)?;
    (outcome == "count").then_some(JUDGED.len() * 3 + i)
}

/// Every accepted counter name, for error messages.
pub fn counter_names() -> String {
    let mut names: Vec<String> = JUDGED
        .iter()
        .map(|op| format!("{op}.count|allowed|denied"))
        .collect();
    names.extend(COUNTED.iter().map(|op| format!("{op}.count")));
    names.join(", ")
}

/// `-EPERM` and `-EACCES`: what Landlock, the cgroup socket hooks and file modes answer.
fn refused(result: i64) -> bool {
    result == -i64::from(libc::EPERM) || result == -i64::from(libc::EACCES)
}

/// `-ENOENT` and `-ENOTDIR`: the call found nothing to act on (a shell's PATH search tries
/// several directories per command). Such a lookup is not an operation and is not counted.
fn not_found(result: i64) -> bool {
    result == -i64::from(libc::ENOENT) || result == -i64::from(libc::ENOTDIR)
}

#[derive(Debug)]
pub struct RunCounters {
    ops: [AtomicU64; COUNTERS],
    output_bytes: AtomicU64,
    lost_events: AtomicU64,
}

impl Default for RunCounters {
    fn default() -> Self {
        RunCounters {
            ops: std::array::from_fn(|_| AtomicU64::new(0)),
            output_bytes: AtomicU64::new(0),
            lost_events: AtomicU64::new(0),
        }
    }
}

impl RunCounters {
    fn bump(&self, id: CounterId) {
        self.ops[id].fetch_add(1, Ordering::Relaxed);
    }

    /// Count one call whose result vigil saw: denied when a permission check refused it, allowed otherwise (it passed
    /// every check, even if it then failed, as a refused connection does).
    fn judged(&self, op: usize, result: i64) {
        if not_found(result) {
            return;
        }
        self.bump(op * 3);
        self.bump(op * 3 + if refused(result) { 2 } else { 1 });
    }

    /// Count the kernel events of one drain.
    pub fn observe(&self, seen: &[Observed]) {
        let counted = |i: usize| JUDGED.len() * 3 + i;
        for o in seen {
            match &o.event {
                KernelEvent::Exec { .. } => self.judged(EXEC, 0),
                KernelEvent::ExecFailed { result, .. } => self.judged(EXEC, *result),
                KernelEvent::Open {
                    result: Some(r), ..
                } => self.judged(OPEN, *r),
                // An io_uring open, its result unknown: counted, neither allowed nor denied.
                KernelEvent::Open { result: None, .. } => self.bump(OPEN * 3),
                KernelEvent::Net { op, result, .. } => {
                    let i = match op {
                        NetOp::Connect => CONNECT,
                        NetOp::Bind => BIND,
                        NetOp::Accept => ACCEPT,
                        NetOp::Send => SEND,
                    };
                    match result {
                        Some(r) => self.judged(i, *r),
                        // Seen by a cgroup hook, its result unknown: a call, neither allowed
                        // nor denied as far as vigil saw.
                        None => self.bump(i * 3),
                    }
                }
                KernelEvent::Fork { is_thread, .. } if !is_thread => self.bump(counted(FORK)),
                KernelEvent::Fork { .. } => {}
                KernelEvent::Exit { group_dead, .. } if *group_dead => self.bump(counted(EXIT)),
                KernelEvent::Exit { .. } => {}
                KernelEvent::Signal { .. } => self.bump(counted(SIGNAL)),
                KernelEvent::Oom { .. } => self.bump(counted(OOM)),
                KernelEvent::Unfollowed { .. } => {}
                KernelEvent::Write { .. } => self.bump(counted(WRITE)),
            }
        }
    }

    pub fn add_output(&self, bytes: u64) {
        self.output_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn set_lost_events(&self, n: u64) {
        self.lost_events.store(n, Ordering::Relaxed);
    }

    /// Add what another run counted (a plan step's run, to the plan's counters).
    pub fn absorb(&self, other: &RunCounters) {
        for (mine, theirs) in self.ops.iter().zip(&other.ops) {
            mine.fetch_add(theirs.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        self.add_output(other.output_bytes());
        self.lost_events
            .fetch_add(other.lost_events(), Ordering::Relaxed);
    }

    pub fn ops(&self) -> Counts {
        std::array::from_fn(|i| self.ops[i].load(Ordering::Relaxed))
    }

    pub fn output_bytes(&self) -> u64 {
        self.output_bytes.load(Ordering::Relaxed)
    }

    pub fn lost_events(&self) -> u64 {
        self.lost_events.load(Ordering::Relaxed)
    }
}

impl crate::kernel::bus::KernelObserver for std::sync::Arc<RunCounters> {
    fn observe(&mut self, batch: &[Observed]) {
        RunCounters::observe(self, batch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::event::{
        Header, KIND_EXEC, KIND_EXIT, KIND_FORK, KIND_OOM, KIND_OPEN, KIND_SIGNAL, KIND_WRITE,
        kind_name,
    };

    #[test]
    fn operation_positions_name_the_kernel_kinds_they_count() {
        for (i, op) in [
            (EXEC, kind_name(KIND_EXEC)),
            (OPEN, kind_name(KIND_OPEN)),
            (CONNECT, NetOp::Connect.kind()),
            (BIND, NetOp::Bind.kind()),
            (ACCEPT, NetOp::Accept.kind()),
            (SEND, NetOp::Send.kind()),
        ] {
            assert_eq!(JUDGED[i], op);
        }
        for (i, op) in [
            (FORK, kind_name(KIND_FORK)),
            (EXIT, kind_name(KIND_EXIT)),
            (SIGNAL, kind_name(KIND_SIGNAL)),
            (OOM, kind_name(KIND_OOM)),
            (WRITE, kind_name(KIND_WRITE)),
        ] {
            assert_eq!(COUNTED[i], op);
        }
    }

    #[test]
    fn names_resolve_to_distinct_counters_and_typos_do_not() {
        let mut ids: Vec<_> = JUDGED
            .iter()
            .flat_map(|op| ["count", "allowed", "denied"].map(|s| format!("{op}.{s}")))
            .chain(COUNTED.iter().map(|op| format!("{op}.count")))
            .map(|n| counter_id(&n).expect(&n))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), COUNTERS);
        for bad in [
            "process.exec.cnt",
            "process.fork.denied",
            "exec.count",
            "count",
        ] {
            assert_eq!(counter_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn permission_refusals_count_as_denied_and_lookups_not_at_all() {
        let c = RunCounters::default();
        let open = |result| Observed {
            seq: 0,
            ts_ns: 0,
            event: KernelEvent::Open {
                hdr: Header::default(),
                result: Some(result),
                via: "syscall",
                dirfd: -100,
                flags: 0,
                mode: 0,
                path: "/x".into(),
                path_truncated: false,
                resolved_path: None,
            },
        };
        c.observe(&[
            open(3),
            open(-i64::from(libc::EACCES)),
            open(-i64::from(libc::ENOENT)),
        ]);
        let n = |name: &str| c.ops()[counter_id(name).expect(name)];
        assert_eq!(
            n("file.open.count"),
            2,
            "a lookup that found nothing is not counted"
        );
        assert_eq!(n("file.open.denied"), 1);
        assert_eq!(n("file.open.allowed"), 1);
        assert_eq!(n("process.exec.count"), 0);
    }
}
