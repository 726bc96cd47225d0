//! Draining the sensor's ring buffer of one standalone run into its [`LayerWriter`]. The ring
//! buffer's fd is registered with tokio: the reader wakes when the kernel says so (exec and exit
//! force a wakeup; forks wake an idle reader), never on a timer. At the end of a run the
//! supervisor drains until empty once the cgroup is empty — every event of the run has been
//! committed by then, because a task's exit tracepoint fires before it leaves the cgroup.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::sync::Arc;

use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;

use super::event::{KernelEvent, Observed, decode};
use super::layer_writer::{BATCH_EVENTS, LayerWriter};
use crate::clock;
use crate::evidence::redact::Redactor;
use crate::evidence::space::Space;

pub struct KernelReader {
    /// Registration of the ring buffer's fd; declared before `map` so it is dropped first.
    ready: AsyncFd<RawFd>,
    map: RingBuf<MapData>,
    /// Events that could not be decoded, by the kind their header named.
    decode_errors: BTreeMap<&'static str, u64>,
    /// The run's layer.
    pub writer: LayerWriter,
    /// The last drain stopped at DRAIN_MAX with events left in the ring.
    more: bool,
}

/// Events handled per drain: the supervisor's loop gets its turn between drains, and `seen`
/// stays small, however fast the kernel produces.
pub const DRAIN_MAX: usize = 4 * BATCH_EVENTS;
/// Time one drain may take before it yields to the dispatcher, whose deadlines (timeouts,
/// heartbeats, the kill grace) must fire on time under any storm. Checked every 256 events.
pub const DRAIN_BUDGET: std::time::Duration = std::time::Duration::from_millis(5);

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
            writer: LayerWriter::new(layer, space, clock::boot_to_wall_offset_ns())?,
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
                Ok(ev) => self.writer.accept(ev, redactor, seen),
                Err(e) => {
                    *self
                        .decode_errors
                        .entry(KernelEvent::error_kind(&e))
                        .or_default() += 1;
                }
            }
            if handled == max
                || (max != usize::MAX && handled % 256 == 0 && began.elapsed() >= DRAIN_BUDGET)
            {
                self.more = true;
                break;
            }
        }
        self.writer.end_drain();
    }

    /// Events that did not decode (a reader-side loss), by kind.
    pub fn decode_errors(&self) -> &BTreeMap<&'static str, u64> {
        &self.decode_errors
    }
}
