//! The daemon's process: start-up (sweep what a killed daemon left, start the cgroup guard, load
//! the sensor, bind the socket), the accept loop, and shutdown on SIGTERM/SIGINT (runs
//! cancelled, bundles committed, sensor detached, guard released).

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use tokio::net::UnixListener;
use tokio::signal::unix::{SignalKind, signal};

use super::{Config, Daemon, session};
use crate::kernel::hub::Hub;
use crate::run::cgroup;
use crate::run::guard::Guard;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Cgroup(#[from] cgroup::CgroupError),
    #[error("cannot start the cgroup guard: {0}")]
    Guard(std::io::Error),
    #[error("socket {path}: {message}")]
    Socket { path: String, message: String },
    #[error("--metrics {addr}: {error}")]
    Metrics {
        addr: std::net::SocketAddr,
        error: std::io::Error,
    },
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
}

/// Run the daemon until SIGTERM or SIGINT.
pub fn run(config: Config) -> Result<(), DaemonError> {
    let mount = cgroup::cgroup2_mount()?;
    let parent = cgroup::resolve_parent(&mount, &config.cgroup_parent)?;
    for stale in cgroup::sweep_stale(&parent) {
        tracing::warn!(
            dir = %stale.dir.display(),
            owner_pid = stale.owner_pid,
            runs = ?stale.runs,
            processes_killed = stale.processes_killed,
            removed = stale.removed,
            "swept run cgroups a vigil that is gone left behind"
        );
    }
    sweep_sdk_dirs();
    super::jobs::sweep(&parent);
    // One guard for every run: if this process dies (SIGKILL included), it kills and removes
    // every run cgroup of this daemon.
    let guard = Guard::spawn(&cgroup::owner_dir(&parent)).map_err(DaemonError::Guard)?;
    let hub = match Hub::start() {
        Ok(h) => {
            tracing::info!(probes = ?h.probes(), "sensor loaded");
            Some(Arc::new(h))
        }
        Err(e) => {
            tracing::warn!(error = %e, "sensor not loaded: runs get kernel_layer absent");
            None
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(DaemonError::Runtime)?;
    let result = rt.block_on(serve(config, hub));
    guard.release();
    result
}

async fn serve(config: Config, hub: Option<Arc<Hub>>) -> Result<(), DaemonError> {
    let listener = listen(&config)?;
    let d = Arc::new(Daemon::new(config.clone(), hub.clone()));
    if let Some(addr) = config.metrics {
        let tcp = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|error| DaemonError::Metrics { addr, error })?;
        let bound = tcp.local_addr().unwrap_or(addr);
        tracing::info!(%bound, "metrics at http://{bound}/metrics");
        tokio::spawn(super::metrics::serve(tcp, d.metrics.clone(), hub));
    }
    let sig_err = |e: std::io::Error| DaemonError::Socket {
        path: "signals".into(),
        message: e.to_string(),
    };
    let mut term = signal(SignalKind::terminate()).map_err(sig_err)?;
    let mut int = signal(SignalKind::interrupt()).map_err(sig_err)?;
    super::session::give_back_free_memory();
    tracing::info!(
        socket = %config.socket.display(),
        max_runs = config.max_runs,
        queue = config.queue,
        max_runs_per_uid = config.per_uid,
        "vigil daemon ready"
    );
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            conn = listener.accept() => match conn {
                Ok((stream, _)) => { tokio::spawn(session::serve(stream, d.clone())); }
                // EMFILE and the like: the connection is refused, the daemon goes on.
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            },
        }
    }
    tracing::info!(active = d.runs_active(), "stopping: cancelling active runs");
    d.shut_down();
    drop(listener);
    let _ = std::fs::remove_file(&config.socket);
    while d.runs_active() > 0 {
        let ended = d.ended.notified();
        tokio::select! {
            _ = ended => {}
            // A second signal: the runs are killed at once.
            _ = term.recv() => d.shut_down(),
            _ = int.recv() => d.shut_down(),
        }
    }
    tracing::info!("stopped: every run ended and committed");
    Ok(())
}

/// Remove the SDK socket directories (`$TMPDIR/vigil-sdk-<pid>-<rand>`) of vigils that are gone:
/// a SIGKILLed vigil cannot remove its own.
fn sweep_sdk_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("vigil-sdk-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let alive = i32::try_from(pid).is_ok_and(|p| procfs::process::Process::new(p).is_ok());
        // Only directories of our own making (root's, not a link someone planted in /tmp).
        let ours = e
            .metadata()
            .is_ok_and(|m| m.is_dir() && std::os::unix::fs::MetadataExt::uid(&m) == 0);
        if !alive && ours && std::fs::remove_dir_all(e.path()).is_ok() {
            tracing::info!(dir = %e.path().display(), "removed the SDK directory of a vigil that is gone");
        }
    }
}

/// The listening socket: systemd's (socket activation) or our own at `config.socket`.
fn listen(config: &Config) -> Result<UnixListener, DaemonError> {
    let path = &config.socket;
    let err = |message: String| DaemonError::Socket {
        path: path.display().to_string(),
        message,
    };
    if let Some(fd) = activated_fd() {
        let std = std::os::unix::net::UnixListener::from(fd);
        std.set_nonblocking(true).map_err(|e| err(e.to_string()))?;
        tracing::info!("listening on the socket systemd passed (LISTEN_FDS)");
        return UnixListener::from_std(std).map_err(|e| err(e.to_string()));
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| err(format!("cannot create {}: {e}", dir.display())))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(err(
                    "another daemon answers there; stop it first or pick another --socket".into(),
                ));
            }
            // A socket nobody answers on: a daemon that died. Replace it.
            std::fs::remove_file(path).map_err(|e| err(e.to_string()))?;
        }
        Ok(_) => {
            return Err(err(
                "exists and is not a socket; refusing to replace it".into()
            ));
        }
        Err(_) => {}
    }
    let listener = UnixListener::bind(path).map_err(|e| err(e.to_string()))?;
    let (mode, gid) = match nix::unistd::Group::from_name(&config.socket_group) {
        Ok(Some(g)) => (0o660, Some(g.gid)),
        _ => (0o600, None),
    };
    if let Some(gid) = gid {
        nix::unistd::chown(path, None, Some(gid)).map_err(|e| err(e.to_string()))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| err(e.to_string()))?;
    match gid {
        Some(g) => {
            tracing::info!(group = %config.socket_group, gid = g.as_raw(), "socket mode 0660: root and group members may request runs")
        }
        None => {
            tracing::info!(group = %config.socket_group, "no such group: socket mode 0600, root only")
        }
    }
    Ok(listener)
}

/// fd 3 when systemd socket activation handed us exactly one socket.
fn activated_fd() -> Option<OwnedFd> {
    let pid: u32 = std::env::var("LISTEN_PID").ok()?.parse().ok()?;
    let fds: u32 = std::env::var("LISTEN_FDS").ok()?.parse().ok()?;
    if pid != std::process::id() || fds != 1 {
        return None;
    }
    // SAFETY: systemd passed fd 3 to this process (LISTEN_PID is ours) and nothing else took it.
    Some(unsafe { OwnedFd::from_raw_fd(3) })
}

/// Whether a daemon answers `status` at `path` within a short time.
pub fn answers(path: &Path) -> bool {
    super::client::status(path).is_ok()
}
