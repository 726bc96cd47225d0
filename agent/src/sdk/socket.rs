//! The per-run SDK socket (`VIGIL_SDK_SOCKET`): a unix stream socket on which processes of the
//! run send NDJSON events about themselves.
//!
//! Bounded everywhere: at most [`MAX_CONNECTIONS`] open connections, lines of at most
//! [`MAX_LINE`] bytes, [`MAX_EVENTS`] accepted events per run, and a bounded channel to the
//! supervisor (a client that sends faster than vigil stores waits on its socket). Only
//! processes inside the run's cgroup are heard: the peer's pid (SO_PEERCRED) is checked against
//! /proc/<pid>/cgroup when it connects, so nothing outside the run can speak for it.
//!
//! Accepting and reading happen on threads of their own (as the output tee does), not on the
//! supervisor's runtime: an event's timestamp is when it arrived, not when the supervisor got
//! round to it — tool-call windows are correlated with kernel events by those timestamps.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use std::io::Read;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::AtomicBool;

use tokio::sync::{Notify, mpsc};

use super::event::{MAX_EVENTS, MAX_LINE, Rejected, SdkEvent, parse_line};
use crate::clock;
use crate::evidence::redact::Redactor;

pub const MAX_CONNECTIONS: u64 = 64;
/// Events in flight between the connections and the supervisor.
const CHANNEL: usize = 1024;

/// One accepted event, stamped when it arrived.
#[derive(Debug)]
pub struct Received {
    pub event: SdkEvent,
    pub pid: Option<i32>,
    pub ts_ns: u64,
}

/// What the socket turned away, for health.
#[derive(Debug, Default)]
pub struct SdkStats {
    rejected: Mutex<BTreeMap<&'static str, u64>>,
    admitted: AtomicU64,
    dropped: AtomicU64,
    refused_connections: AtomicU64,
    connections: AtomicU64,
    active: AtomicU64,
    /// Told each time a connection ends.
    closed: Notify,
}

impl SdkStats {
    fn reject(&self, why: Rejected) {
        *self
            .rejected
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(why.token())
            .or_default() += 1;
    }

    /// Rejected lines by reason token.
    pub fn rejected(&self) -> BTreeMap<&'static str, u64> {
        self.rejected
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Valid events past [`MAX_EVENTS`], counted and not stored.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Connections refused: from outside the run, or past [`MAX_CONNECTIONS`].
    pub fn refused_connections(&self) -> u64 {
        self.refused_connections.load(Ordering::Relaxed)
    }

    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Connections still being read.
    pub fn active(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }

    /// Resolves when a connection ends (or has ended since the last call).
    pub async fn connection_closed(&self) {
        self.closed.notified().await;
    }
}

pub struct SdkSocket {
    path: PathBuf,
    dir: PathBuf,
    pub rx: mpsc::Receiver<Received>,
    pub stats: Arc<SdkStats>,
    stop: Arc<AtomicBool>,
}

impl SdkSocket {
    /// Listen on a fresh socket for the run whose cgroup is `run_cgroup` (under `mount`).
    pub fn bind(
        run_cgroup: &Path,
        mount: &Path,
        redactor: Arc<Redactor>,
    ) -> std::io::Result<SdkSocket> {
        // sun_path holds 108 bytes: a short directory of vigil's own, not the run id.
        let dir = std::env::temp_dir().join(format!(
            "vigil-sdk-{}-{:08x}",
            std::process::id(),
            getrandom::u32().unwrap_or(0)
        ));
        std::fs::create_dir(&dir)?;
        // Searchable by a child running as another --user; the cgroup check decides who is
        // heard.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711))?;
        let path = dir.join("sdk.sock");
        let listener = UnixListener::bind(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))?;
        let (tx, rx) = mpsc::channel(CHANNEL);
        let stats = Arc::new(SdkStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (stats.clone(), stop.clone());
        let (cg, mnt) = (run_cgroup.to_path_buf(), mount.to_path_buf());
        std::thread::Builder::new()
            .name("vigil-sdk".into())
            .spawn(move || serve(listener, tx, st, sp, redactor, cg, mnt))?;
        Ok(SdkSocket {
            path,
            dir,
            rx,
            stats,
            stop,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The run's private directory the socket lives in (removed with it).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for SdkSocket {
    fn drop(&mut self) {
        // Wake the accepting thread so that it sees the stop and ends.
        self.stop.store(true, Ordering::Release);
        let _ = UnixStream::connect(&self.path);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether `pid` is in `run_cgroup` or below it (cgroup v2 line `0::/path` of /proc/pid/cgroup).
fn in_run(pid: i32, run_cgroup: &Path, mount: &Path) -> bool {
    let Ok(groups) = procfs::process::Process::new(pid).and_then(|p| p.cgroups()) else {
        return false;
    };
    groups.0.iter().find(|g| g.hierarchy == 0).is_some_and(|g| {
        mount
            .join(g.pathname.trim_start_matches('/'))
            .starts_with(run_cgroup)
    })
}

fn serve(
    listener: UnixListener,
    tx: mpsc::Sender<Received>,
    stats: Arc<SdkStats>,
    stop: Arc<AtomicBool>,
    redactor: Arc<Redactor>,
    run_cgroup: PathBuf,
    mount: PathBuf,
) {
    for stream in listener.incoming() {
        if stop.load(Ordering::Acquire) {
            break;
        }
        let Ok(stream) = stream else { continue };
        let pid = nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials)
            .ok()
            .map(|c| c.pid());
        let heard = pid.is_some_and(|p| in_run(p, &run_cgroup, &mount));
        if !heard || stats.active.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
            stats.refused_connections.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        stats.connections.fetch_add(1, Ordering::Relaxed);
        stats.active.fetch_add(1, Ordering::Relaxed);
        let (tx, st, red) = (tx.clone(), stats.clone(), redactor.clone());
        let started = std::thread::Builder::new()
            .name("vigil-sdk-conn".into())
            .spawn(move || connection(stream, pid, tx, st, red));
        if started.is_err() {
            stats.active.fetch_sub(1, Ordering::Relaxed);
            stats.refused_connections.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn connection(
    mut stream: UnixStream,
    pid: Option<i32>,
    tx: mpsc::Sender<Received>,
    stats: Arc<SdkStats>,
    redactor: Arc<Redactor>,
) {
    let mut buf: Vec<u8> = Vec::with_capacity(8 * 1024);
    let mut chunk = vec![0u8; 8 * 1024];
    // Inside a line longer than MAX_LINE: its rest is skipped up to the next newline.
    let mut skipping = false;
    'read: loop {
        let n = match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let mut data = &chunk[..n];
        while let Some(nl) = data.iter().position(|&b| b == b'\n') {
            let (head, rest) = data.split_at(nl);
            data = &rest[1..];
            if skipping {
                skipping = false;
                continue;
            }
            buf.extend_from_slice(head);
            let line = std::mem::take(&mut buf);
            if !deliver(&line, pid, &tx, &stats, &redactor) {
                break 'read;
            }
        }
        if !skipping {
            buf.extend_from_slice(data);
            if buf.len() > MAX_LINE {
                stats.reject(Rejected::TooLong);
                buf.clear();
                skipping = true;
            }
        }
    }
    if !skipping && !buf.is_empty() {
        deliver(&buf, pid, &tx, &stats, &redactor);
    }
    stats.active.fetch_sub(1, Ordering::Relaxed);
    stats.closed.notify_one();
}

/// Check and forward one line; false once the run no longer listens.
fn deliver(
    line: &[u8],
    pid: Option<i32>,
    tx: &mpsc::Sender<Received>,
    stats: &SdkStats,
    redactor: &Redactor,
) -> bool {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.iter().all(u8::is_ascii_whitespace) {
        return true;
    }
    match parse_line(line, redactor) {
        Err(why) => {
            stats.reject(why);
            true
        }
        Ok(_) if stats.admitted.fetch_add(1, Ordering::Relaxed) >= MAX_EVENTS => {
            stats.dropped.fetch_add(1, Ordering::Relaxed);
            true
        }
        Ok(event) => tx
            .blocking_send(Received {
                event,
                pid,
                ts_ns: clock::now_ns(),
            })
            .is_ok(),
    }
}
