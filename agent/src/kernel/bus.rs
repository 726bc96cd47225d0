//! The kernel event bus: a drain's events, decoded, redacted and stamped once by the reader
//! ([`Observed`]), fanned out to every consumer through one trait — as tetragon's observer hands
//! each event to its listeners. Consumers observe the same batch and never reach into each
//! other: the policy oracle, the SDK layer's tool-call windows, the contract counters here; the
//! process tree inside the run's state, which turns it into `subprocess_state` records.
//!
//! The sensor side is an [`EventSource`]: the per-run kernel layer today, a long-lived daemon's
//! demultiplexed stream later, a scripted source in tests.

use std::future::Future;

use super::event::Observed;
use super::layer::KernelReport;
use crate::evidence::redact::Redactor;

/// A consumer of kernel event batches.
pub trait KernelObserver {
    fn observe(&mut self, batch: &[Observed]);
}

/// Hand one batch to every observer, in order.
pub fn fan_out(batch: &[Observed], observers: &mut [&mut dyn KernelObserver]) {
    if batch.is_empty() {
        return;
    }
    for o in observers.iter_mut() {
        o.observe(batch);
    }
}

/// Where a run's kernel events come from.
pub trait EventSource {
    /// Resolves when events are waiting (cancel-safe); never, for a source that has none.
    fn readable(&self) -> impl Future<Output = ()>;
    /// Whether events are being read at all (the process tree can come from them).
    fn active(&self) -> bool;
    /// Append what is waiting now (a bounded amount) to `out`, decoded, redacted and stamped.
    fn drain(&mut self, redactor: &Redactor, out: &mut Vec<Observed>);
    /// Once the run's cgroup is empty: append everything left and say what was observed.
    fn finish(&mut self, redactor: &Redactor, out: &mut Vec<Observed>) -> KernelReport;
    /// The one boot→wall offset the source stamps its events with.
    fn boot_to_wall_ns(&self) -> i128;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::event::{Header, KernelEvent};

    /// A scripted source: one batch per drain.
    struct Scripted(Vec<Vec<Observed>>);

    impl EventSource for Scripted {
        async fn readable(&self) {
            if self.0.is_empty() {
                std::future::pending::<()>().await;
            }
        }
        fn active(&self) -> bool {
            true
        }
        fn drain(&mut self, _: &Redactor, out: &mut Vec<Observed>) {
            if !self.0.is_empty() {
                out.extend(self.0.remove(0));
            }
        }
        fn finish(&mut self, r: &Redactor, out: &mut Vec<Observed>) -> KernelReport {
            while !self.0.is_empty() {
                self.drain(r, out);
            }
            KernelReport::absent("scripted")
        }
        fn boot_to_wall_ns(&self) -> i128 {
            0
        }
    }

    #[derive(Default)]
    struct Seqs(Vec<u64>);

    impl KernelObserver for Seqs {
        fn observe(&mut self, batch: &[Observed]) {
            self.0.extend(batch.iter().map(|o| o.seq));
        }
    }

    fn exit(seq: u64) -> Observed {
        Observed {
            seq,
            ts_ns: seq,
            event: KernelEvent::Exit {
                hdr: Header::default(),
                exit_code: Some(0),
                signal: None,
                core_dumped: false,
                group_dead: true,
            },
        }
    }

    #[test]
    fn every_observer_sees_every_batch_in_order() {
        let mut src = Scripted(vec![vec![exit(0), exit(1)], vec![exit(2)]]);
        let (mut a, mut b) = (Seqs::default(), Seqs::default());
        let redactor = Redactor::new(&[]);
        let mut batch = Vec::new();
        while !src.0.is_empty() {
            batch.clear();
            src.drain(&redactor, &mut batch);
            fan_out(&batch, &mut [&mut a, &mut b]);
        }
        assert_eq!(a.0, [0, 1, 2]);
        assert_eq!(b.0, a.0);
    }
}
