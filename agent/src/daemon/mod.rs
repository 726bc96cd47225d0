//! `vigil daemon`: the privileged sidecar. One process per host keeps the sensor loaded
//! ([`crate::kernel::hub`]), listens on a local socket, admits runs (bounded: `--max-runs`,
//! `--queue`, `--max-runs-per-uid`), runs each as its client's user with its client's stdio and
//! directories, and answers with the run's one outcome. The protocol is in [`protocol`] and the
//! README; a connection's life in [`session`]; listening, start-up and shutdown in [`server`].

pub mod admission;
pub mod client;
pub mod jobs;
pub mod metrics;
pub mod peer;
pub mod protocol;
pub mod server;
mod session;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{Notify, mpsc, oneshot};

use admission::{Admission, Ticket};
use metrics::Metrics;

use crate::kernel::hub::Hub;

/// Where the daemon listens unless told otherwise, and where clients look for it.
pub const DEFAULT_SOCKET: &str = "/run/vigil/vigil.sock";

/// `vigil run --cgroup-parent`'s default; a client that leaves it gets the daemon's.
pub const DEFAULT_CGROUP_PARENT: &str = "vigil";

#[derive(Debug, Clone)]
pub struct Config {
    pub socket: PathBuf,
    pub socket_group: String,
    pub max_runs: usize,
    pub queue: usize,
    pub per_uid: usize,
    pub metrics: Option<std::net::SocketAddr>,
    pub cgroup_parent: PathBuf,
}

/// What the daemon's tasks share.
pub struct Daemon {
    pub config: Config,
    pub hub: Option<Arc<Hub>>,
    pub metrics: Arc<Metrics>,
    admission: Mutex<Admission>,
    /// Deferred requests, told `true` when they may start (`false`: the daemon is stopping).
    waiting: Mutex<HashMap<Ticket, oneshot::Sender<bool>>>,
    /// Runs in progress: where their client's signals go (the daemon's SIGTERM too).
    active: Mutex<HashMap<Ticket, mpsc::Sender<i32>>>,
    /// Woken whenever a run ends.
    pub ended: Notify,
    /// CI jobs being watched, by key.
    jobs: Mutex<HashMap<String, jobs::Job>>,
    /// Job watches whose bundle is not committed yet (the daemon waits for them to stop).
    job_watches: std::sync::atomic::AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data behind these locks stays consistent between statements; a panic elsewhere
    // must not take the daemon down.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Daemon {
    pub fn new(config: Config, hub: Option<Arc<Hub>>) -> Self {
        let limits = admission::Limits {
            max_runs: config.max_runs,
            queue: config.queue,
            per_uid: config.per_uid,
        };
        Daemon {
            config,
            hub,
            metrics: Arc::new(Metrics::default()),
            admission: Mutex::new(Admission::new(limits)),
            waiting: Mutex::new(HashMap::new()),
            active: Mutex::new(HashMap::new()),
            ended: Notify::new(),
            jobs: Mutex::new(HashMap::new()),
            job_watches: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    fn admission(&self) -> MutexGuard<'_, Admission> {
        lock(&self.admission)
    }

    fn waiting(&self) -> MutexGuard<'_, HashMap<Ticket, oneshot::Sender<bool>>> {
        lock(&self.waiting)
    }

    fn active(&self) -> MutexGuard<'_, HashMap<Ticket, mpsc::Sender<i32>>> {
        lock(&self.active)
    }

    /// Runs, and job watches, not finished yet.
    pub fn runs_active(&self) -> usize {
        self.admission().active() + self.job_watches.load(std::sync::atomic::Ordering::Acquire)
    }

    fn update_gauges(&self) {
        let (active, queued) = {
            let a = self.admission();
            (a.active(), a.queued())
        };
        self.metrics.runs_active.set(active as i64);
        self.metrics.runs_queued.set(queued as i64);
    }

    /// A run ended (or a deferred request left): start whoever is next.
    fn release(&self, ticket: Ticket) {
        let next = self.admission().release(ticket);
        let mut waiting = self.waiting();
        for t in next {
            if let Some(tx) = waiting.remove(&t) {
                let _ = tx.send(true);
            }
        }
        drop(waiting);
        self.update_gauges();
        self.ended.notify_waiters();
    }

    /// Stop admitting; tell the queue; cancel every run (TERM → grace → KILL, bundles
    /// committed). A second call asks the runs to be killed at once.
    pub fn shut_down(&self) {
        let queued = self.admission().close();
        let mut waiting = self.waiting();
        for t in queued {
            if let Some(tx) = waiting.remove(&t) {
                let _ = tx.send(false);
            }
        }
        drop(waiting);
        for tx in self.active().values() {
            let _ = tx.try_send(libc::SIGTERM);
        }
        jobs::end_all(self);
        self.update_gauges();
    }
}
