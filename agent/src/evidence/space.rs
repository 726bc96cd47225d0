//! Disk pressure and the evidence budget. A run's data (captured output, the kernel and policy layers) may not take the
//! room its control evidence and its commit need, so that a chatty job on a small `--out` still
//! leaves a committed, verifiable bundle that says what it could not keep.
//!
//! At bundle creation a reserve file is allocated (`fallocate`, [`RESERVE`] bytes, named as a
//! temporary so no index lists it); it is released just before the commit writes its
//! documents. While the run lasts, data writers ask [`Space::allow`] before writing: once the
//! filesystem's free space falls under [`HEADROOM`] (left for control evidence: events.ndjson),
//! data writing stops for the rest of the run and the truncation is recorded.

use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Bytes held back for the commit: health, the trace, its summary, the index, LATEST.
pub const RESERVE: u64 = 512 * 1024;
/// Free bytes left to control evidence while the run lasts.
pub const HEADROOM: u64 = 512 * 1024;
/// Data bytes written between two looks at the free space.
const CHECK_EVERY: u64 = 64 * 1024;

/// The reserve file's name inside the bundle (a temporary: never indexed).
pub const RESERVE_NAME: &str = ".reserve.tmp";

#[derive(Debug)]
pub struct Space {
    /// The bundle directory, for fstatvfs.
    dir: File,
    reserve: Mutex<Option<PathBuf>>,
    /// Data bytes written since the last look.
    since_check: AtomicU64,
    stopped: AtomicBool,
    /// Free bytes when data writing stopped.
    free_at_stop: AtomicU64,
    /// Why no reserve could be made, if so.
    reserve_error: Option<String>,
    /// `--evidence-max-bytes`: what the kernel and policy layers may hold together.
    evidence_max: AtomicU64,
    /// Bytes those layers hold so far (control evidence included).
    evidence_used: AtomicU64,
}

/// What a layer does with one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Write,
    /// Past `--evidence-max-bytes`: downgraded to a count.
    OverBudget,
    /// The disk is short: dropped, counted.
    DiskShort,
}

impl Space {
    /// Allocate the reserve in `bundle_dir`. Never fails: without a reserve the run goes on and
    /// health says so.
    pub fn create(bundle_dir: &Path) -> std::io::Result<Self> {
        let dir = File::open(bundle_dir)?;
        let path = bundle_dir.join(RESERVE_NAME);
        let made = File::create_new(&path).and_then(|f| {
            nix::fcntl::fallocate(
                &f,
                nix::fcntl::FallocateFlags::empty(),
                0,
                i64::try_from(RESERVE).unwrap_or(i64::MAX),
            )
            .map_err(std::io::Error::from)
        });
        let (reserve, reserve_error) = match made {
            Ok(()) => (Some(path), None),
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                (None, Some(e.to_string()))
            }
        };
        Ok(Space {
            dir,
            reserve: Mutex::new(reserve),
            since_check: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
            free_at_stop: AtomicU64::new(0),
            reserve_error,
            evidence_max: AtomicU64::new(u64::MAX),
            evidence_used: AtomicU64::new(0),
        })
    }

    /// Bound the kernel and policy layers to `max` bytes together.
    pub fn set_evidence_max(&self, max: u64) {
        self.evidence_max.store(max, Ordering::Relaxed);
    }

    pub fn evidence_max(&self) -> u64 {
        self.evidence_max.load(Ordering::Relaxed)
    }

    /// Whether a layer line of `n` bytes is written. Control evidence always is (and counts
    /// toward the budget); data is downgraded once the budget is spent — deterministically,
    /// by the bytes before it — or dropped when the disk is short.
    pub fn admit(&self, n: u64, control: bool) -> Admit {
        if control {
            self.evidence_used.fetch_add(n, Ordering::Relaxed);
            return Admit::Write;
        }
        let used = self.evidence_used.load(Ordering::Relaxed);
        if used.saturating_add(n) > self.evidence_max() {
            return Admit::OverBudget;
        }
        if !self.allow(n) {
            return Admit::DiskShort;
        }
        self.evidence_used.fetch_add(n, Ordering::Relaxed);
        Admit::Write
    }

    fn free_bytes(&self) -> Option<u64> {
        let st = nix::sys::statvfs::fstatvfs(&self.dir).ok()?;
        Some(st.blocks_available() * st.fragment_size())
    }

    /// May a data writer write `n` more bytes? False once free space fell under the headroom
    /// (and from then on, for the rest of the run: data is downgraded once, not flapping).
    pub fn allow(&self, n: u64) -> bool {
        if self.stopped.load(Ordering::Relaxed) {
            return false;
        }
        let since = self.since_check.fetch_add(n, Ordering::Relaxed) + n;
        if since < CHECK_EVERY {
            return true;
        }
        self.since_check.store(0, Ordering::Relaxed);
        match self.free_bytes() {
            Some(free) if free < HEADROOM + n => {
                self.free_at_stop.store(free, Ordering::Relaxed);
                self.stopped.store(true, Ordering::Relaxed);
                false
            }
            _ => true,
        }
    }

    /// Data writing stopped for lack of room.
    pub fn stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }

    /// Give the reserve back, just before the commit writes its documents.
    pub fn release(&self) {
        if let Some(path) = self.take_reserve() {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Give the reserve back as an empty file to write a document into (truncating it frees
    /// its blocks): its path and the open file, or None when there is no reserve (left).
    /// Reusing the inode rather than freeing one and allocating another matters on ext4
    /// without a journal, whose allocator steps over every inode freed in the last minute.
    pub fn release_as_file(&self) -> Option<(PathBuf, File)> {
        let path = self.take_reserve()?;
        let opened = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path);
        match opened {
            Ok(f) => Some((path, f)),
            Err(_) => {
                let _ = std::fs::remove_file(path);
                None
            }
        }
    }

    fn take_reserve(&self) -> Option<PathBuf> {
        self.reserve
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }

    /// What health says about disk pressure, if anything happened.
    pub fn notes(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(e) = &self.reserve_error {
            out.push(format!(
                "no {} KiB reserve for the commit could be allocated in the bundle ({e}); a full disk may keep it from committing",
                RESERVE / 1024
            ));
        }
        if self.stopped() {
            out.push(format!(
                "disk pressure: {} bytes were free beside the bundle, under the {} KiB kept for control evidence; captured output and the data layers stopped there (see output.*.truncated_reason and the kernel layer's notes)",
                self.free_at_stop.load(Ordering::Relaxed),
                HEADROOM / 1024
            ));
        }
        out
    }
}

impl Drop for Space {
    fn drop(&mut self) {
        self.release();
    }
}
