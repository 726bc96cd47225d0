//! One client connection: read its request (bounded in size and time), check it, pass it
//! through admission, run it on its own thread with the client's stdio and directories, relay
//! its signals, and answer with exactly one outcome. Bad input is answered with an `error`
//! naming what is wrong, counted, and the connection closed; nothing else is affected.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

use super::Daemon;
use super::admission::Decision;
use super::peer::{MAX_FDS, Peer, is_dir, recv_with_fds};
use super::protocol::{
    Copy, DaemonStatus, Decoder, Finished, FrameError, RUN_FDS, Reply, Request, RunRequest,
    WatchRequest, encode, reason,
};
use crate::evidence::beneath::BundleDir;
use crate::run::host::{Client, RunHost};
use crate::run::spec::{RunSpec, UserSpec};
use crate::run::supervisor;

/// A whole request must arrive within this long of the connection.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A reply the client does not take within this long means the client is gone.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

struct Conn {
    stream: UnixStream,
    dec: Decoder,
}

/// Why the connection ends early, with the reason token the client is told.
struct Refusal {
    reason: &'static str,
    message: String,
}

impl From<FrameError> for Refusal {
    fn from(e: FrameError) -> Self {
        Refusal {
            reason: e.reason(),
            message: e.to_string(),
        }
    }
}

impl Conn {
    /// The next request; `Ok(None)` when the peer closed between requests.
    async fn next_request(&mut self) -> Result<Option<Request>, Refusal> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if let Some(req) = self.dec.next_request()? {
                return Ok(Some(req));
            }
            let fd = self.stream.as_raw_fd();
            let fds = &mut self.dec.fds;
            let read = self
                .stream
                .async_io(Interest::READABLE, || recv_with_fds(fd, &mut buf, fds))
                .await;
            let (n, truncated) = read.map_err(|e| Refusal {
                reason: reason::MALFORMED_FRAME,
                message: format!("reading the request: {e}"),
            })?;
            if truncated || self.dec.fds.len() > MAX_FDS {
                return Err(Refusal {
                    reason: reason::BAD_FDS,
                    message: format!(
                        "more file descriptors than a request carries ({RUN_FDS} for run)"
                    ),
                });
            }
            if n == 0 {
                return match self.dec.pending() {
                    0 => Ok(None),
                    _ => Err(FrameError::Truncated.into()),
                };
            }
            self.dec.push(&buf[..n]);
        }
    }

    /// Send one reply; false when the client did not take it (gone, or not reading).
    async fn send(&mut self, reply: &Reply) -> bool {
        let bytes = encode(reply);
        matches!(
            tokio::time::timeout(REPLY_TIMEOUT, self.stream.write_all(&bytes)).await,
            Ok(Ok(()))
        )
    }

    async fn refuse(&mut self, d: &Daemon, r: Refusal) {
        tracing::warn!(reason = r.reason, message = %r.message, "refused bad input");
        d.metrics
            .protocol_errors
            .get_or_create(&super::metrics::Reason {
                reason: r.reason.into(),
            })
            .inc();
        self.send(&Reply::Error {
            reason: r.reason.into(),
            message: r.message,
        })
        .await;
    }

    async fn reject(&mut self, d: &Daemon, reason: &'static str, message: String) {
        tracing::info!(reason, message = %message, "run rejected");
        d.metrics
            .rejected
            .get_or_create(&super::metrics::Reason {
                reason: reason.into(),
            })
            .inc();
        self.send(&Reply::Rejected {
            reason: reason.into(),
            message,
        })
        .await;
    }
}

pub async fn serve(stream: UnixStream, d: Arc<Daemon>) {
    d.metrics.connections.inc();
    let peer = match Peer::of(&stream) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "no peer credentials; closing");
            return;
        }
    };
    let mut conn = Conn {
        stream,
        dec: Decoder::default(),
    };
    let first = match tokio::time::timeout(REQUEST_TIMEOUT, conn.next_request()).await {
        Err(_) => Err(Refusal {
            reason: reason::TIMEOUT,
            message: format!("no whole request within {} s", REQUEST_TIMEOUT.as_secs()),
        }),
        Ok(r) => r,
    };
    match first {
        Err(r) => conn.refuse(&d, r).await,
        Ok(None) => {}
        Ok(Some(Request::Status)) => {
            let status = d.status();
            conn.send(&Reply::Status(status)).await;
        }
        Ok(Some(Request::Signal { .. })) => {
            let r = Refusal {
                reason: reason::BAD_REQUEST,
                message: "a signal before any run; send run first".into(),
            };
            conn.refuse(&d, r).await;
        }
        Ok(Some(Request::Run(req))) => run(conn, peer, *req, d).await,
        Ok(Some(Request::Watch(req))) => watch(conn, peer, *req, d).await,
        Ok(Some(Request::JobStart(req))) => {
            let fds = std::mem::take(&mut conn.dec.fds);
            let reply = super::jobs::start(*req, &peer, fds, &d).await;
            conn.send(&reply).await;
        }
        Ok(Some(Request::JobEnd { key })) => {
            let reply = super::jobs::end(&key, &peer, &d).await;
            conn.send(&reply).await;
        }
    }
}

/// The daemon's answer to `status`.
impl Daemon {
    pub fn status(&self) -> DaemonStatus {
        let adm = self.admission();
        let limits = adm.limits();
        DaemonStatus {
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            runs_active: adm.active(),
            runs_queued: adm.queued(),
            max_runs: limits.max_runs,
            queue: limits.queue,
            kernel_sensor: match &self.hub {
                Some(_) => "loaded".into(),
                None => "absent".into(),
            },
        }
    }
}

/// A request that passed its checks: the spec, the client's environment and `--out`.
type Checked = (RunSpec, Vec<(String, String)>, PathBuf);

/// Check a run request against who sent it; the spec to run, or why not.
fn check(
    req: RunRequest,
    peer: &Peer,
    fds: &[OwnedFd],
    d: &Daemon,
) -> Result<Checked, (&'static str, String)> {
    let run_fds = (RUN_FDS, "a run request (stdin, stdout, stderr, cwd, out)");
    super::jobs::check_request(req.version, fds, run_fds, (4, &req.out), peer)?;
    if !is_dir(&fds[3]) {
        return Err((reason::BAD_FDS, "the cwd fd is not a directory".into()));
    }
    let mut args = req.args;
    if !peer.is_root() {
        let own = UserSpec {
            uid: peer.uid,
            gid: peer.gid,
        };
        if args.user.is_some_and(|u| u != own) {
            return Err((
                reason::NOT_PERMITTED,
                format!(
                    "--user: only root may run as another user (you are {}:{})",
                    peer.uid, peer.gid
                ),
            ));
        }
        // The child runs as the client, whatever it asked.
        args.user = Some(own);
    }
    if args.cgroup_parent == std::path::Path::new(super::DEFAULT_CGROUP_PARENT) {
        args.cgroup_parent = d.config.cgroup_parent.clone();
    } else if !peer.is_root() {
        return Err((
            reason::NOT_PERMITTED,
            "--cgroup-parent: only root may choose where the daemon puts run cgroups".into(),
        ));
    }
    if args.plan.is_some() {
        return Err((
            reason::BAD_REQUEST,
            "--plan runs standalone (use --no-daemon)".into(),
        ));
    }
    let mut spec =
        RunSpec::from_parts(args, req.inputs).map_err(|e| (reason::BAD_REQUEST, e.to_string()))?;
    spec.out_dir = req.out.clone();
    Ok((spec, req.env, req.out))
}

async fn run(mut conn: Conn, peer: Peer, req: RunRequest, d: Arc<Daemon>) {
    let fds = std::mem::take(&mut conn.dec.fds);
    let (spec, env, out) = match check(req, &peer, &fds, &d) {
        Ok(x) => x,
        Err((reason, message)) => return conn.reject(&d, reason, message).await,
    };
    let decision = d.admission().request(peer.uid);
    d.update_gauges();
    let ticket = match decision {
        Decision::Reject(reason, message) => return conn.reject(&d, reason, message).await,
        Decision::Start(t) => t,
        Decision::Defer(t, position) => {
            let (tx, rx) = oneshot::channel();
            d.waiting().insert(t, tx);
            conn.send(&Reply::Deferred { position }).await;
            tokio::select! {
                go = rx => if go != Ok(true) {
                    return conn.reject(&d, reason::SHUTTING_DOWN, "the daemon is stopping; the queued run was not started".into()).await;
                },
                // Anything from a waiting client (its Ctrl-C, or its going away) cancels.
                req = conn.next_request() => {
                    d.waiting().remove(&t);
                    d.metrics.deferred_cancelled.inc();
                    tracing::info!(uid = peer.uid, "deferred request cancelled by its client");
                    d.release(t);
                    if let Ok(Some(Request::Signal { .. })) = req {
                        conn.send(&Reply::Rejected {
                            reason: reason::CANCELLED.into(),
                            message: "cancelled while waiting for a run slot; nothing ran".into(),
                        })
                        .await;
                    }
                    return;
                }
            }
            t
        }
    };
    let run_id = spec.run_id.to_string();
    let bundle = out.join(&run_id);
    tracing::info!(run_id = %run_id, uid = peer.uid, pid = ?peer.pid, "run accepted");
    let mut fds = fds.into_iter();
    let mut next = || fds.next().expect("checked: RUN_FDS fds");
    let (stdin, stdout, stderr, cwd, out_fd) = (next(), next(), next(), next(), next());
    let (sig_tx, sig_rx) = mpsc::channel(8);
    let (started_tx, mut started_rx) = mpsc::unbounded_channel();
    let client = Client {
        env: env.into_iter().map(|(k, v)| (k.into(), v.into())).collect(),
        stdin,
        stdout,
        stderr,
        cwd,
        out: Some(BundleDir::from_fd(out_fd, out)),
        owner: (peer.uid, peer.gid),
        signals: sig_rx,
        hub: d.hub.clone(),
        started: Some(started_tx),
        sdk_socket: None,
    };
    d.active().insert(ticket, sig_tx.clone());
    d.metrics.runs_started.inc();
    conn.send(&Reply::Accepted {
        run_id: run_id.clone(),
        bundle: bundle.clone(),
    })
    .await;
    let (notice_tx, notices) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(pid) = started_rx.recv().await {
            let _ = notice_tx.send(Reply::Started { pid });
        }
    });
    let (freed_tx, freed) = oneshot::channel();
    let finished = relay(
        &mut conn,
        &d,
        &run_id,
        spawn_run(spec, client, Some(freed_tx)),
        &sig_tx,
        notices,
    )
    .await;
    d.metrics
        .runs_finished
        .get_or_create(&super::metrics::Status {
            status: finished.status.clone(),
        })
        .inc();
    tracing::info!(run_id = %run_id, exit_code = finished.exit_code, status = %finished.status, "run finished");
    conn.send(&Reply::Finished(Box::new(finished))).await;
    let _ = freed.await;
    // A run's buffers (tee, layer writers, its runtime) are freed now; give the pages back so
    // the daemon's RSS follows what its live runs use, not its busiest moment. After the
    // client has its answer, before the slot is free: a daemon that says it is idle has
    // given them back.
    give_back_free_memory();
    d.active().remove(&ticket);
    d.release(ticket);
}

/// Return the allocator's free pages to the kernel (after a run, and once the sensor is
/// loaded: parsing the kernel's BTF leaves ~14 MiB free in the heap).
pub(super) fn give_back_free_memory() {
    // SAFETY: malloc_trim only releases free memory of the allocator.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Until the run is over: forward `notices` (started, watching) to the client and its signals
/// to the run; a client that goes away is a SIGTERM (a run is cancelled, a watch ends).
async fn relay(
    conn: &mut Conn,
    d: &Daemon,
    run_id: &str,
    done: impl std::future::Future<Output = Finished>,
    sig_tx: &mpsc::Sender<i32>,
    mut notices: mpsc::UnboundedReceiver<Reply>,
) -> Finished {
    tokio::pin!(done);
    let mut listening = true;
    loop {
        tokio::select! {
            Some(reply) = notices.recv() => {
                conn.send(&reply).await;
            }
            req = conn.next_request(), if listening => match req {
                Ok(Some(Request::Signal { signal })) if matches!(signal, libc::SIGINT | libc::SIGTERM) => {
                    let _ = sig_tx.try_send(signal);
                }
                Ok(Some(_)) => {
                    let r = Refusal { reason: reason::BAD_REQUEST, message: "during a run only signal (SIGINT or SIGTERM) is accepted".into() };
                    conn.refuse(d, r).await;
                }
                // The client went away (or sent garbage): cancel with the fence, commit.
                Ok(None) | Err(_) => {
                    listening = false;
                    tracing::info!(run_id = %run_id, "client went away; cancelling its run");
                    let _ = sig_tx.try_send(libc::SIGTERM);
                }
            },
            f = &mut done => return f,
        }
    }
}

/// `vigil watch` through the daemon: the client keeps the connection (its Ctrl-C ends the
/// watch, as its going away does); the daemon's sensor watches the cgroup.
async fn watch(mut conn: Conn, peer: Peer, req: WatchRequest, d: Arc<Daemon>) {
    let fds = std::mem::take(&mut conn.dec.fds);
    let (spec, (client, sig_tx, sdk_rx)) = match super::jobs::prepare_watch(req, &peer, fds, &d) {
        Ok(x) => x,
        Err((reason, message)) => return conn.reject(&d, reason, message).await,
    };
    let run_id = spec.run_id.to_string();
    let bundle = spec.out_dir.join(&run_id);
    tracing::info!(run_id = %run_id, uid = peer.uid, "watch accepted");
    d.metrics.runs_started.inc();
    conn.send(&Reply::Accepted {
        run_id: run_id.clone(),
        bundle: bundle.clone(),
    })
    .await;
    let (notice_tx, notices) = mpsc::unbounded_channel();
    let cgroup = spec
        .watch
        .as_ref()
        .map(|w| w.cgroup.clone())
        .unwrap_or_default();
    let mut sdk_rx = sdk_rx;
    let id = run_id.clone();
    tokio::spawn(async move {
        if let Some(sdk_socket) = sdk_rx.recv().await {
            let _ = notice_tx.send(Reply::Watching {
                run_id: id,
                bundle,
                cgroup,
                sdk_socket,
            });
        }
    });
    let finished = relay(
        &mut conn,
        &d,
        &run_id,
        spawn_run(spec, client, None),
        &sig_tx,
        notices,
    )
    .await;
    tracing::info!(run_id = %run_id, status = %finished.status, "watch finished");
    conn.send(&Reply::Finished(Box::new(finished))).await;
}

/// Run the spec on a thread of its own (its own current-thread runtime, as standalone vigil
/// runs): one run's storm or slow disk never delays another run's deadlines.
///
/// The answer is sent before the run's state is freed (a spawn-heavy run's takes
/// milliseconds); `freed`, when given, is told once it has been.
pub(super) async fn spawn_run(
    spec: RunSpec,
    client: Client,
    freed: Option<oneshot::Sender<()>>,
) -> Finished {
    let (tx, rx) = oneshot::channel();
    let bundle = spec.out_dir.join(spec.run_id.as_str());
    let name = format!("run-{}", spec.run_id);
    let spawned = std::thread::Builder::new().name(name).spawn(move || {
        let (finished, leftovers) = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Err(e) => (
                failed(&bundle, format!("cannot start the run's runtime: {e}")),
                None,
            ),
            Ok(rt) => match rt.block_on(supervisor::run_hosted(
                spec,
                RunHost::Daemon(Box::new(client)),
            )) {
                Ok(r) => (
                    Finished {
                        exit_code: r.exit_code(),
                        status: r.outcome.status().into(),
                        bundle: r.bundle_dir.clone(),
                        error: r.commit_error.clone(),
                        copies: r
                            .copies
                            .into_iter()
                            .map(|(path, bytes)| Copy {
                                path,
                                content: String::from_utf8_lossy(&bytes).into_owned(),
                            })
                            .collect(),
                    },
                    Some(r.leftovers),
                ),
                Err(e) => (
                    Finished {
                        exit_code: e.exit_code(),
                        ..failed(&bundle, e.to_string())
                    },
                    None,
                ),
            },
        };
        let _ = tx.send(finished);
        drop(leftovers);
        if let Some(f) = freed {
            let _ = f.send(());
        }
    });
    if let Err(e) = spawned {
        return failed(
            &PathBuf::new(),
            format!("cannot start the run's thread: {e}"),
        );
    }
    rx.await.unwrap_or_else(|_| {
        failed(
            &PathBuf::new(),
            "the run's supervisor ended without an outcome".into(),
        )
    })
}

fn failed(bundle: &std::path::Path, error: String) -> Finished {
    Finished {
        exit_code: crate::cli::ExitCode::VIGIL_FAILED,
        status: "error".into(),
        bundle: bundle.to_path_buf(),
        error: Some(error),
        copies: Vec::new(),
    }
}
