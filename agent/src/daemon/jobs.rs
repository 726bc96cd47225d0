//! CI runner jobs served by the daemon (`job_start` / `job_end`): a job's worker process is
//! moved into a job cgroup the daemon creates (`<cgroup-parent>/jobs/<key>`), so every step it
//! starts inherits it, and a watch of that cgroup runs until the job ends — detached from the
//! hook that asked for it, which exits at once. Ending the job's watch kills nothing: the
//! runner owns its processes. Job watches do not take run slots (they spawn nothing); at most
//! [`MAX_JOBS`] are active at once.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::peer::{Peer, may_write_dir};
use super::protocol::{
    Finished, JOB_FDS, JobStart, Reply, VERSION, WATCH_FDS, WatchRequest, reason,
};
use super::{Daemon, lock};
use crate::cli::WatchArgs;
use crate::evidence::beneath::BundleDir;
use crate::run::cgroup::{self, EventsWatch};
use crate::run::host::Client;
use crate::run::spec::RunId;

/// Jobs watched at once; past it `job_start` is rejected (`queue_full`).
pub const MAX_JOBS: usize = 64;
/// How long `job_start` waits for the watch to be active before answering.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(4);
/// How long `job_end` waits for the watch's bundle to commit.
const END_TIMEOUT: Duration = Duration::from_secs(30);

/// One watched job.
pub struct Job {
    owner: u32,
    signals: mpsc::Sender<i32>,
    done: oneshot::Receiver<Finished>,
    /// When the watch ended by itself (the worker left), if it did: its `finished` waits for
    /// `job_end` for [`UNCLAIMED`], then the job is forgotten.
    ended_at: Arc<std::sync::Mutex<Option<std::time::Instant>>>,
}

/// How long the outcome of a job whose watch ended by itself waits for its `job_end`.
const UNCLAIMED: Duration = Duration::from_secs(3600);

type Refused = (&'static str, String);

fn refuse<T>(reason: &'static str, message: impl Into<String>) -> Result<T, Refused> {
    Err((reason, message.into()))
}

/// Whether `ancestor` is `pid` or one of its ancestors.
fn descends_from(pid: i32, ancestor: i32) -> bool {
    let mut at = pid;
    for _ in 0..64 {
        if at == ancestor {
            return true;
        }
        match procfs::process::Process::new(at).and_then(|p| p.stat()) {
            Ok(st) if st.ppid > 0 => at = st.ppid,
            _ => return false,
        }
    }
    false
}

/// The checks every request with fds makes: the protocol version, the fd count, and that the
/// client may itself create entries in the `--out` directory it passed (fd `out_at`).
pub(super) fn check_request(
    version: u32,
    fds: &[OwnedFd],
    (want, what): (usize, &str),
    (out_at, out): (usize, &Path),
    peer: &Peer,
) -> Result<(), Refused> {
    if version != VERSION {
        return refuse(
            reason::UNSUPPORTED_VERSION,
            format!("protocol version {version}; this daemon speaks {VERSION}"),
        );
    }
    if fds.len() != want {
        return refuse(
            reason::BAD_FDS,
            format!("{what} carries {want} fd(s); got {}", fds.len()),
        );
    }
    if !nix::sys::stat::fstat(&fds[out_at]).is_ok_and(|st| may_write_dir(&st, peer)) {
        return refuse(
            reason::NOT_PERMITTED,
            format!(
                "--out {}: uid {} may not create entries there",
                out.display(),
                peer.uid
            ),
        );
    }
    Ok(())
}

/// Check a job request against who sent it; the job cgroup's path (not created yet).
fn check_job(req: &JobStart, peer: &Peer, fds: &[OwnedFd], d: &Daemon) -> Result<PathBuf, Refused> {
    let job_fds = (JOB_FDS, "job_start (out)");
    check_request(req.version, fds, job_fds, (0, &req.out), peer)?;
    if req.key.parse::<RunId>().is_err() {
        return refuse(
            reason::BAD_REQUEST,
            format!(
                "job key {:?}: accepted: ASCII letters, digits, _ and -",
                req.key
            ),
        );
    }
    // The worker must be the client's own ancestor and run as the client: a hook can only put
    // its own job under watch.
    let worker_uid = procfs::process::Process::new(req.worker_pid).and_then(|p| p.uid());
    let ancestor = peer.pid.is_some_and(|p| descends_from(p, req.worker_pid));
    if !ancestor || (!peer.is_root() && worker_uid.ok() != Some(peer.uid)) {
        return refuse(
            reason::NOT_PERMITTED,
            format!(
                "worker pid {} is not an ancestor of the client running as uid {}",
                req.worker_pid, peer.uid
            ),
        );
    }
    if !peer.is_root() && req.args.cgroup_parent != Path::new(super::DEFAULT_CGROUP_PARENT) {
        return refuse(
            reason::NOT_PERMITTED,
            "--cgroup-parent: only root may choose where the daemon puts job cgroups",
        );
    }
    let mut jobs = lock(&d.jobs);
    // Jobs whose hook never came back for them (job-completed failed) do not hold slots forever.
    jobs.retain(|_, j| !lock(&j.ended_at).is_some_and(|t| t.elapsed() > UNCLAIMED));
    if jobs.contains_key(&req.key) {
        return refuse(
            reason::BAD_REQUEST,
            format!("job {} is already watched", req.key),
        );
    }
    if jobs.len() >= MAX_JOBS {
        return refuse(
            reason::QUEUE_FULL,
            format!("{MAX_JOBS} jobs are watched already"),
        );
    }
    drop(jobs);
    let failed = |e: cgroup::CgroupError| (reason::BAD_REQUEST, e.to_string());
    let mount = cgroup::cgroup2_mount().map_err(failed)?;
    let parent = cgroup::resolve_parent(&mount, &d.config.cgroup_parent).map_err(failed)?;
    Ok(parent.join("jobs").join(&req.key))
}

/// Make the job cgroup and move the worker into it: every step it starts inherits it.
fn enter_job_cgroup(dir: &Path, worker: i32) -> Result<(), Refused> {
    std::fs::create_dir_all(dir).map_err(|e| {
        (
            reason::BAD_REQUEST,
            format!("create job cgroup {}: {e}", dir.display()),
        )
    })?;
    std::fs::write(dir.join("cgroup.procs"), worker.to_string()).map_err(|e| {
        let _ = std::fs::remove_dir(dir);
        (
            reason::BAD_REQUEST,
            format!("move worker {worker} into {}: {e}", dir.display()),
        )
    })
}

/// The host of a watch the daemon runs for a client: nothing is spawned (stdin and stdout are
/// /dev/null), vigil's messages go to `stderr` (the client's, or /dev/null for a detached
/// job), the bundle beneath the client's out directory; with where its signals go and where it
/// says it is active.
fn watch_host(
    stderr: Option<OwnedFd>,
    out_fd: OwnedFd,
    out: PathBuf,
    peer: &Peer,
    d: &Daemon,
) -> Result<Host, Refused> {
    let opened = (dev_null(), dev_null(), std::fs::File::open("/"));
    let (Ok(stdin), Ok(stdout), Ok(cwd)) = opened else {
        return refuse(reason::BAD_REQUEST, "cannot open /dev/null or /");
    };
    let stderr = match stderr {
        Some(fd) => fd,
        None => dev_null().map_err(|e| (reason::BAD_REQUEST, e.to_string()))?,
    };
    let (sig_tx, sig_rx) = mpsc::channel(4);
    let (sdk_tx, sdk_rx) = mpsc::unbounded_channel();
    let client = Client {
        env: Vec::new(),
        stdin,
        stdout,
        stderr,
        cwd: cwd.into(),
        out: Some(BundleDir::from_fd(out_fd, out)),
        owner: (peer.uid, peer.gid),
        signals: sig_rx,
        hub: d.hub.clone(),
        started: None,
        sdk_socket: Some(sdk_tx),
    };
    Ok((client, sig_tx, sdk_rx))
}

fn dev_null() -> std::io::Result<OwnedFd> {
    Ok(std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?
        .into())
}

/// Start a job's watch; the reply for the hook (`watching`, or why not).
pub async fn start(req: JobStart, peer: &Peer, fds: Vec<OwnedFd>, d: &Arc<Daemon>) -> Reply {
    let rejected = |(reason, message): Refused| {
        tracing::info!(reason, message = %message, "job rejected");
        Reply::Rejected {
            reason: reason.into(),
            message,
        }
    };
    let dir = match check_job(&req, peer, &fds, d) {
        Ok(x) => x,
        Err(r) => return rejected(r),
    };
    let mut args = WatchArgs {
        cgroup: dir.clone(),
        until_empty: false,
        duration: None,
        sdk_announce: None,
        run: req.args,
    };
    args.run.run_id = req.key.parse().ok();
    let mut spec = match crate::run::watch::spec_from_parts(args, req.inputs) {
        Ok(s) => s,
        Err(e) => return rejected((reason::BAD_REQUEST, e.to_string())),
    };
    spec.out_dir = req.out.clone();
    if let Some(w) = spec.watch.as_mut() {
        w.steps_parent = Some(req.worker_pid.unsigned_abs());
    }
    // Everything checked: only now is the worker moved.
    if let Err(r) = enter_job_cgroup(&dir, req.worker_pid) {
        return rejected(r);
    }
    let Some(out_fd) = fds.into_iter().next() else {
        return rejected((reason::BAD_FDS, "no out fd".into()));
    };
    let (client, sig_tx, mut sdk_rx) = match watch_host(None, out_fd, req.out.clone(), peer, d) {
        Ok(x) => x,
        Err(r) => return rejected(r),
    };
    let bundle = req.out.join(&req.key);
    let (done_tx, done_rx) = oneshot::channel();
    let ended_at = Arc::new(std::sync::Mutex::new(None));
    lock(&d.jobs).insert(
        req.key.clone(),
        Job {
            owner: peer.uid,
            signals: sig_tx,
            done: done_rx,
            ended_at: ended_at.clone(),
        },
    );
    d.metrics.runs_started.inc();
    tracing::info!(key = %req.key, worker = req.worker_pid, cgroup = %dir.display(), "job watch starting");
    let key = req.key.clone();
    let cg = dir.clone();
    d.job_watches.fetch_add(1, Ordering::AcqRel);
    let daemon = d.clone();
    tokio::spawn(async move {
        let finished = super::session::spawn_run(spec, client, None).await;
        tracing::info!(key = %key, status = %finished.status, "job watch ended");
        *lock(&ended_at) = Some(std::time::Instant::now());
        let _ = done_tx.send(finished);
        daemon.job_watches.fetch_sub(1, Ordering::AcqRel);
        daemon.ended.notify_waiters();
        reap(cg);
    });
    // Active once the watch has seeded its tree and offers its socket.
    match tokio::time::timeout(ATTACH_TIMEOUT, sdk_rx.recv()).await {
        Ok(Some(sdk_socket)) => Reply::Watching {
            run_id: req.key,
            bundle,
            cgroup: dir,
            sdk_socket,
        },
        // The watch ended before it was active (its bundle or cgroup failed): job_end says why.
        Ok(None) => Reply::Rejected {
            reason: reason::BAD_REQUEST.into(),
            message: format!(
                "the job's watch did not start; `job-completed` will say why ({key_shown})",
                key_shown = req.key
            ),
        },
        Err(_) => Reply::Rejected {
            reason: reason::TIMEOUT.into(),
            message: format!(
                "the job's watch was not active within {} s",
                ATTACH_TIMEOUT.as_secs()
            ),
        },
    }
}

/// A watch's spec and its host, for `vigil watch --daemon`: the client may watch a cgroup it
/// owns (a delegated one) or, as root, any; it writes where it could itself.
pub fn prepare_watch(
    req: WatchRequest,
    peer: &Peer,
    fds: Vec<OwnedFd>,
    d: &Daemon,
) -> Result<Watched, Refused> {
    let watch_fds = (WATCH_FDS, "watch (stderr, out)");
    check_request(req.version, &fds, watch_fds, (1, &req.out), peer)?;
    let bad = |e: String| (reason::BAD_REQUEST, e);
    let mount = cgroup::cgroup2_mount().map_err(|e| bad(e.to_string()))?;
    let cg =
        cgroup::RunCgroup::existing(&mount, &req.args.cgroup).map_err(|e| bad(e.to_string()))?;
    let owner = std::os::unix::fs::MetadataExt::uid(
        &std::fs::metadata(cg.path()).map_err(|e| bad(e.to_string()))?,
    );
    if !peer.is_root() && owner != peer.uid {
        return refuse(
            reason::NOT_PERMITTED,
            format!(
                "--cgroup {}: owned by uid {owner}; uid {} may watch only cgroups delegated to it",
                cg.path().display(),
                peer.uid
            ),
        );
    }
    let mut args = req.args;
    args.sdk_announce = None; // the client writes it, as itself
    let mut spec =
        crate::run::watch::spec_from_parts(args, req.inputs).map_err(|e| bad(e.to_string()))?;
    spec.out_dir = req.out.clone();
    let mut fds = fds.into_iter();
    let (Some(stderr), Some(out_fd)) = (fds.next(), fds.next()) else {
        return refuse(reason::BAD_FDS, "missing fds");
    };
    Ok((spec, watch_host(Some(stderr), out_fd, req.out, peer, d)?))
}

/// A watch's host, where its signals go, and where it says it is active (its SDK socket).
pub type Host = (
    Client,
    mpsc::Sender<i32>,
    mpsc::UnboundedReceiver<Option<PathBuf>>,
);

/// A watch ready to run: its spec and [`Host`].
pub type Watched = (crate::run::spec::RunSpec, Host);

/// End a job's watch; its `finished`.
pub async fn end(key: &str, peer: &Peer, d: &Daemon) -> Reply {
    let job = {
        let mut jobs = lock(&d.jobs);
        match jobs.get(key) {
            None => None,
            Some(j) if j.owner != peer.uid && !peer.is_root() => {
                return Reply::Rejected {
                    reason: reason::NOT_PERMITTED.into(),
                    message: format!("job {key} belongs to uid {}", j.owner),
                };
            }
            Some(_) => jobs.remove(key),
        }
    };
    let Some(job) = job else {
        return Reply::Rejected {
            reason: reason::BAD_REQUEST.into(),
            message: format!("no job {key} is watched"),
        };
    };
    // SIGINT ends a watch without killing anything (it may have ended by itself already).
    let _ = job.signals.try_send(libc::SIGINT);
    match tokio::time::timeout(END_TIMEOUT, job.done).await {
        Ok(Ok(f)) => Reply::Finished(Box::new(f)),
        _ => Reply::Rejected {
            reason: reason::TIMEOUT.into(),
            message: format!(
                "job {key}'s bundle was not committed within {} s",
                END_TIMEOUT.as_secs()
            ),
        },
    }
}

/// Ask every job's watch to end (the daemon stops); their bundles commit.
pub fn end_all(d: &Daemon) {
    for job in lock(&d.jobs).values() {
        let _ = job.signals.try_send(libc::SIGTERM);
    }
}

/// At start: job cgroups a previous daemon left. Their jobs are not vigil's to kill (the
/// runner owns them): an empty one is removed, a populated one is reaped once it empties.
pub fn sweep(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent.join("jobs")) else {
        return;
    };
    for e in entries.filter_map(Result::ok) {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            tracing::warn!(cgroup = %e.path().display(), "job cgroup of a previous daemon; removed once empty");
            reap(e.path());
        }
    }
}

/// Remove a job cgroup once the runner's processes have left it (the worker exits after the
/// job); a blocking wait on cgroup.events, on a thread of its own.
fn reap(dir: PathBuf) {
    let _ = std::thread::Builder::new()
        .name("job-reaper".into())
        .spawn(move || {
            if let Ok(w) = EventsWatch::new(&dir) {
                w.wait_blocking(Duration::from_secs(24 * 3600), |e| !e.populated);
            }
            match std::fs::remove_dir(&dir) {
                Ok(()) => tracing::info!(cgroup = %dir.display(), "job cgroup removed"),
                Err(e) => tracing::warn!(cgroup = %dir.display(), error = %e, "job cgroup left"),
            }
        });
}
