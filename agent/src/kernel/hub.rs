//! The daemon's sensor: loaded once, kept loaded, its one ring buffer read by one thread that
//! decodes each event once and routes it by cgroup id to the run it belongs to ([`Lanes`]: a
//! bounded inbox per run). Runs come and go: [`Hub::register`] adds a run cgroup to the
//! in-kernel filter (the `watched` map, whose value names the run's own cgroup, so an event of a
//! cgroup created beneath it is routed with one lookup) and [`SharedSource`] is that run's
//! [`EventSource`]; dropping the source (or [`SharedSource::finish`]) removes the run from the
//! filter. The syscall program is attached only while some run asks for it.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use aya::maps::{MapData, RingBuf};

use super::bus::EventSource;
use super::event::{KernelEvent, Observed, decode};
use super::lanes::{Lanes, Offer};
use super::layer::{KernelReport, probe_health, report};
use super::layer_writer::LayerWriter;
use super::reader::DRAIN_MAX;
use super::record::target;
use super::sensor::{
    KernelSensor, NET_HOOK_PROBE, ProbeStatus, Scope, SensorError, TCP_STATE_PROBE,
};
use super::uring::URING_PROBE;
use crate::clock;
use crate::evidence::health::ProbeHealth;
use crate::evidence::redact::Redactor;
use crate::evidence::space::Space;

/// The longest the reader sleeps while runs are routed and the kernel does not wake it: data
/// events ride without a wakeup (BPF_RB_NO_WAKEUP). With no run routed nothing can arrive, and
/// it sleeps until woken (a run registering wakes it).
const POLL: Duration = Duration::from_millis(20);

/// One registered run, as the reader sees it.
struct Route {
    inbox: Arc<Inbox>,
    redactor: Arc<Redactor>,
    /// What the run asked for: the stream carries what any run did.
    scope: Scope,
}

/// A run's inbox: its lanes and the wakeup of its dispatcher.
pub struct Inbox {
    lanes: Mutex<Lanes>,
    ready: tokio::sync::Notify,
}

/// Counters of the whole hub, for metrics.
#[derive(Debug, Default)]
pub struct HubStats {
    pub events: Mutex<BTreeMap<&'static str, u64>>,
    pub decode_errors: AtomicU64,
    /// Events of a cgroup no run claims (a run that just ended).
    pub unrouted: AtomicU64,
    pub downgraded: AtomicU64,
    pub control_lost: AtomicU64,
}

struct Shared {
    sensor: Mutex<KernelSensor>,
    routes: Mutex<HashMap<u64, Route>>,
    /// Runs that asked for the syscall probes.
    syscall_runs: Mutex<usize>,
    stop: AtomicBool,
    /// Sync tickets: a run that must see every event committed so far takes one and wakes the
    /// reader; a pass that began after the ticket was taken serves it.
    asked: AtomicU64,
    served: Mutex<u64>,
    passed: Condvar,
    /// Wakes the reader out of its poll (sync, stop).
    wake: OwnedFd,
    /// When some run last needed the syscall program (it is detached a while after).
    syscalls_needed_at: Mutex<std::time::Instant>,
    boot_to_wall_ns: i128,
    stats: HubStats,
}

pub struct Hub {
    shared: Arc<Shared>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Hub {
    /// Load the sensor with its process programs attached (the syscall path chosen and loaded,
    /// not attached) and start the reader thread.
    pub fn start() -> Result<Hub, SensorError> {
        let mut sensor = KernelSensor::load(Scope::Process)?;
        // Now, not at the first run that needs it: loading is verifier time, which must not
        // come out of that run's timeout.
        sensor.prepare_syscalls();
        let ring = sensor.take_events()?;
        let shared = Arc::new(Shared {
            sensor: Mutex::new(sensor),
            routes: Mutex::new(HashMap::new()),
            syscall_runs: Mutex::new(0),
            stop: AtomicBool::new(false),
            asked: AtomicU64::new(0),
            served: Mutex::new(0),
            passed: Condvar::new(),
            wake: nix::sys::eventfd::EventFd::from_flags(
                nix::sys::eventfd::EfdFlags::EFD_CLOEXEC
                    | nix::sys::eventfd::EfdFlags::EFD_NONBLOCK,
            )
            .map(OwnedFd::from)
            .map_err(|e| SensorError::Load(format!("eventfd: {e}")))?,
            syscalls_needed_at: Mutex::new(std::time::Instant::now()),
            boot_to_wall_ns: clock::boot_to_wall_offset_ns(),
            stats: HubStats::default(),
        });
        let s = shared.clone();
        let reader = std::thread::Builder::new()
            .name("vigil-sensor".into())
            .spawn(move || read_loop(&s, ring))
            .map_err(|e| SensorError::Load(format!("cannot start the reader thread: {e}")))?;
        Ok(Hub {
            shared,
            reader: Some(reader),
        })
    }

    pub fn stats(&self) -> &HubStats {
        &self.shared.stats
    }

    /// Events the kernel could not reserve ring-buffer space for, since the sensor loaded.
    pub fn ring_lost(&self) -> u64 {
        lock(&self.shared.sensor)
            .lost()
            .map_or(0, |by_kind| by_kind.values().sum())
    }

    /// The sensor's probes now.
    pub fn probes(&self) -> BTreeMap<String, ProbeStatus> {
        lock(&self.shared.sensor).probes().clone()
    }

    /// Route the events of `cgroup_id` (and of cgroups created beneath it) to a new source
    /// writing `layer`. With `scope` Full the syscall probes are attached while it lives.
    pub fn register(
        &self,
        (cgroup_id, cgroup_dir): (u64, &Path),
        beneath: &dyn Fn() -> Vec<u64>,
        scope: Scope,
        redactor: Arc<Redactor>,
        layer: &Path,
        space: Arc<Space>,
    ) -> Result<SharedSource, SensorError> {
        let mut writer = LayerWriter::new(layer, space, self.shared.boot_to_wall_ns)
            .map_err(|e| SensorError::Load(format!("{}: {e}", layer.display())))?;
        if scope == Scope::Network {
            writer.fill_hook_identities();
        }
        let inbox = Arc::new(Inbox {
            lanes: Mutex::new(Lanes::default()),
            ready: tokio::sync::Notify::new(),
        });
        let full = scope == Scope::Full;
        if full {
            let mut n = lock(&self.shared.syscall_runs);
            *n += 1;
            lock(&self.shared.sensor).set_syscalls(true);
        }
        // The route exists before the filter does, so the run's first event finds it.
        lock(&self.shared.routes).insert(
            cgroup_id,
            Route {
                inbox: inbox.clone(),
                redactor: redactor.clone(),
                scope,
            },
        );
        // An idle reader sleeps without a timeout: from now on it polls.
        self.shared.wake();
        let (mut probes, hooks) = {
            let mut sensor = lock(&self.shared.sensor);
            // Counters a run with a reused inode number might have left.
            let _ = sensor.lost_of_run(cgroup_id, true);
            if let Err(e) = sensor.watch_subtree(cgroup_id, beneath) {
                drop(sensor);
                lock(&self.shared.routes).remove(&cgroup_id);
                if full {
                    let mut n = lock(&self.shared.syscall_runs);
                    *n = n.saturating_sub(1);
                }
                return Err(e);
            }
            let hooks = (scope == Scope::Network).then(|| sensor.attach_net(cgroup_id, cgroup_dir));
            (sensor.probes().clone(), hooks)
        };
        if !full {
            for name in ["file.open", "network.socket", URING_PROBE] {
                probes.insert(
                    name.into(),
                    ProbeStatus::Unavailable(format!(
                        "not attached for this run: --kernel-layer {}",
                        scope.flag()
                    )),
                );
            }
        }
        // The network programs are this run's only when it asked for them.
        match hooks {
            Some(h) => {
                probes.insert(NET_HOOK_PROBE.into(), h);
            }
            None => {
                probes.remove(TCP_STATE_PROBE);
            }
        }
        let probes = probe_health(&probes);
        Ok(SharedSource {
            shared: self.shared.clone(),
            cgroup_id,
            inbox,
            writer,
            redactor,
            scope,
            decode_errors_at_start: self.shared.stats.decode_errors.load(Ordering::Relaxed),
            probes,
            registered: true,
        })
    }
}

impl Shared {
    fn wake(&self) {
        let _ = nix::unistd::write(&self.wake, &1u64.to_ne_bytes());
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.wake();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind; go on with it.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// How long the syscall program stays attached after the last run that needed it: detaching
/// waits for an RCU grace period, which must not land on a run's end, and runs come in bursts.
const SYSCALLS_LINGER: Duration = Duration::from_secs(2);

fn read_loop(shared: &Shared, mut ring: RingBuf<MapData>) {
    // Root of each cgroup seen, so a nested cgroup costs one map lookup once.
    let mut roots: HashMap<u64, u64> = HashMap::new();
    let mut batch = Batch::default();
    while !shared.stop.load(Ordering::Acquire) {
        let mut pfd = [
            libc::pollfd {
                fd: ring.as_fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: shared.wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let idle = lock(&shared.routes).is_empty() && !lock(&shared.sensor).syscalls_attached();
        let timeout = if idle { -1 } else { POLL.as_millis() as i32 };
        // SAFETY: two valid pollfds for the duration of the call.
        unsafe { libc::poll(pfd.as_mut_ptr(), 2, timeout) };
        let mut drained = [0u8; 8];
        let _ = nix::unistd::read(&shared.wake, &mut drained);
        // Every ticket taken before this load is served by this pass.
        let ticket = shared.asked.load(Ordering::Acquire);
        loop {
            let mut n = 0;
            {
                let routes = lock(&shared.routes);
                while n < DRAIN_MAX {
                    let decoded = match ring.next() {
                        Some(item) => decode(&item),
                        None => break,
                    };
                    n += 1;
                    match decoded {
                        Ok(ev) => batch.route(shared, &routes, &mut roots, ev),
                        Err(_) => {
                            shared.stats.decode_errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
            batch.deliver(shared);
            if n < DRAIN_MAX {
                break;
            }
        }
        *lock(&shared.served) = ticket;
        shared.passed.notify_all();
        if roots.len() > 4096 {
            roots.clear();
        }
        linger_syscalls(shared);
    }
}

/// Detach the syscall program once no run has needed it for SYSCALLS_LINGER.
fn linger_syscalls(shared: &Shared) {
    let runs = lock(&shared.syscall_runs);
    if *runs == 0 && lock(&shared.syscalls_needed_at).elapsed() >= SYSCALLS_LINGER {
        let mut sensor = lock(&shared.sensor);
        if sensor.syscalls_attached() {
            sensor.set_syscalls(false);
        }
    }
}

/// One drain's events by run, handed over with one lock and one wakeup per run.
#[derive(Default)]
struct Batch {
    by_route: Vec<(Arc<Inbox>, Arc<Redactor>, Vec<KernelEvent>)>,
    events: BTreeMap<&'static str, u64>,
    unrouted: u64,
}

impl Batch {
    fn route(
        &mut self,
        shared: &Shared,
        routes: &HashMap<u64, Route>,
        roots: &mut HashMap<u64, u64>,
        ev: KernelEvent,
    ) {
        let cg = ev.header().cgroup_id;
        let root = if routes.contains_key(&cg) {
            Some(cg)
        } else if let Some(r) = roots.get(&cg) {
            Some(*r)
        } else {
            let r = lock(&shared.sensor).root_of(cg);
            if let Some(r) = r {
                roots.insert(cg, r);
            }
            r
        };
        let Some(route) = root.and_then(|r| routes.get(&r)) else {
            self.unrouted += 1;
            return;
        };
        if !route.scope.takes(&ev) {
            return;
        }
        *self.events.entry(ev.kind()).or_default() += 1;
        match self
            .by_route
            .iter_mut()
            .find(|(inbox, ..)| Arc::ptr_eq(inbox, &route.inbox))
        {
            Some((.., evs)) => evs.push(ev),
            None => self
                .by_route
                .push((route.inbox.clone(), route.redactor.clone(), vec![ev])),
        }
    }

    fn deliver(&mut self, shared: &Shared) {
        let st = &shared.stats;
        for (inbox, redactor, evs) in self.by_route.drain(..) {
            let (mut downgraded, mut lost) = (0, 0);
            {
                let mut lanes = lock(&inbox.lanes);
                for ev in evs {
                    // A downgraded event never reaches the run's writer: its target is
                    // redacted here.
                    match lanes.offer(ev, |e| {
                        e.redact(&redactor);
                        target(e)
                    }) {
                        Offer::Queued => {}
                        Offer::Downgraded => downgraded += 1,
                        Offer::Lost => lost += 1,
                    }
                }
            }
            inbox.ready.notify_one();
            st.downgraded.fetch_add(downgraded, Ordering::Relaxed);
            st.control_lost.fetch_add(lost, Ordering::Relaxed);
        }
        if !self.events.is_empty() {
            let mut events = lock(&st.events);
            for (k, n) in std::mem::take(&mut self.events) {
                *events.entry(k).or_default() += n;
            }
        }
        st.unrouted
            .fetch_add(std::mem::take(&mut self.unrouted), Ordering::Relaxed);
    }
}

/// One run's view of the hub's stream.
pub struct SharedSource {
    shared: Arc<Shared>,
    cgroup_id: u64,
    inbox: Arc<Inbox>,
    writer: LayerWriter,
    redactor: Arc<Redactor>,
    scope: Scope,
    decode_errors_at_start: u64,
    probes: BTreeMap<String, ProbeHealth>,
    registered: bool,
}

impl SharedSource {
    /// Move what the inbox holds (up to DRAIN_MAX) through the writer to `out`.
    fn take(&mut self, out: &mut Vec<Observed>, max: usize) -> usize {
        let mut evs = Vec::new();
        let downgraded = {
            let mut lanes = lock(&self.inbox.lanes);
            lanes.take(max, &mut evs);
            std::mem::take(&mut lanes.downgraded)
        };
        let n = evs.len();
        for ev in evs {
            self.writer.accept(ev, &self.redactor, out);
        }
        self.writer.merge_downgraded(&downgraded);
        self.writer.end_drain();
        n
    }

    /// Wait until the reader has finished a full pass begun after now: every event the
    /// kernel committed before this call is then in the inbox.
    fn sync(&self) {
        let mine = self.shared.asked.fetch_add(1, Ordering::AcqRel) + 1;
        self.shared.wake();
        let mut served = lock(&self.shared.served);
        while *served < mine && !self.shared.stop.load(Ordering::Acquire) {
            served = self
                .shared
                .passed
                .wait_timeout(served, Duration::from_secs(1))
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }

    fn unregister(&mut self) {
        if !std::mem::take(&mut self.registered) {
            return;
        }
        let _ = lock(&self.shared.sensor).unwatch(self.cgroup_id);
        lock(&self.shared.routes).remove(&self.cgroup_id);
        if self.scope == Scope::Full {
            // Detached by the reader a while after the last run that needed it.
            let mut n = lock(&self.shared.syscall_runs);
            *n = n.saturating_sub(1);
            *lock(&self.shared.syscalls_needed_at) = std::time::Instant::now();
        }
    }
}

impl Drop for SharedSource {
    fn drop(&mut self) {
        self.unregister();
    }
}

impl EventSource for SharedSource {
    async fn readable(&self) {
        if !lock(&self.inbox.lanes).is_empty() {
            return;
        }
        self.inbox.ready.notified().await;
    }

    fn active(&self) -> bool {
        true
    }

    fn drain(&mut self, _redactor: &Redactor, out: &mut Vec<Observed>) {
        self.take(out, DRAIN_MAX);
    }

    fn finish(&mut self, _redactor: &Redactor, out: &mut Vec<Observed>) -> KernelReport {
        self.sync();
        while self.take(out, usize::MAX) > 0 {}
        if self.scope == Scope::Network {
            let unresolved = lock(&self.shared.sensor).take_unresolved_connects(self.cgroup_id);
            self.writer.accept_late(unresolved, &self.redactor, out);
        }
        let control_lost = lock(&self.inbox.lanes).control_lost;
        // The kernel counts ring losses per run (by the root of its watched subtree): this
        // run's are its own, whatever its neighbours did.
        let ring_lost_by_kind: BTreeMap<String, u64> = lock(&self.shared.sensor)
            .lost_of_run(self.cgroup_id, true)
            .unwrap_or_default()
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| (k.to_string(), n))
            .collect();
        self.unregister();
        let decode_errors = self
            .shared
            .stats
            .decode_errors
            .load(Ordering::Relaxed)
            .saturating_sub(self.decode_errors_at_start);
        let mut errors = BTreeMap::new();
        if decode_errors > 0 {
            errors.insert("any".to_string(), decode_errors);
        }
        let mut notes = vec![
            "kernel layer: the daemon's shared sensor (loaded once), routed to this run by cgroup id".to_string(),
        ];
        if control_lost > 0 {
            notes.push(format!(
                "kernel layer: {control_lost} control events lost at this run's bounded queue (its dispatcher fell behind)"
            ));
        }
        let mut r = report(
            &self.probes,
            notes,
            ring_lost_by_kind,
            Some((&mut self.writer, errors)),
        );
        r.queue_lost = control_lost;
        if control_lost > 0 {
            r.kernel_layer = crate::evidence::health::KernelClaim::Partial;
        }
        r
    }

    fn boot_to_wall_ns(&self) -> i128 {
        self.shared.boot_to_wall_ns
    }
}
