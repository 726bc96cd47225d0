//! cgroup v2 for runs: find the mount, create one cgroup per run under a per-owner directory,
//! list its processes, freeze, kill, remove, and sweep cgroups left by a vigil that died.
//!
//! Layout: `<mount>/<parent>/vigil-<pid>-<starttime>/<run_id>`. The owner directory names the
//! vigil process that created it (pid plus its start time, so a reused pid is not mistaken for
//! the owner); a later vigil finding an owner directory whose owner is gone kills and removes it.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup2 filesystem in /proc/self/mounts; vigil needs cgroup v2")]
    NoCgroup2,
    #[error("cgroup parent {0} is not under the cgroup2 mount {1}")]
    ParentOutsideMount(PathBuf, PathBuf),
    #[error(
        "--cgroup {0}: {1}; accepted: an existing cgroup v2 directory, relative to the cgroup2 mount or absolute under it"
    )]
    NotACgroup(PathBuf, &'static str),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The cgroup2 mount point, from /proc/self/mounts (pure v2: /sys/fs/cgroup; hybrid:
/// /sys/fs/cgroup/unified).
///
/// Found once per process: a daemon would otherwise parse the mount table before every run.
pub fn cgroup2_mount() -> Result<PathBuf, CgroupError> {
    static FOUND: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    if let Some(m) = FOUND.get() {
        return Ok(m.clone());
    }
    let found = read_cgroup2_mount()?;
    Ok(FOUND.get_or_init(|| found).clone())
}

fn read_cgroup2_mount() -> Result<PathBuf, CgroupError> {
    let mounts = procfs::mounts().map_err(|e| CgroupError::Io {
        op: "read",
        path: PathBuf::from("/proc/self/mounts"),
        source: io::Error::other(e.to_string()),
    })?;
    cgroup2_in(&mounts).ok_or(CgroupError::NoCgroup2)
}

/// The first cgroup2 mount of a mount table.
fn cgroup2_in(mounts: &[procfs::MountEntry]) -> Option<PathBuf> {
    mounts
        .iter()
        .find(|m| m.fs_vfstype == "cgroup2")
        .map(|m| PathBuf::from(unescape_mount_field(&m.fs_file)))
}

/// /proc/self/mounts escapes space, tab, newline and backslash as `\ooo` (procfs leaves the
/// mount point as it reads it).
fn unescape_mount_field(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 4 <= bytes.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Resolve `--cgroup-parent`: relative to the mount, or absolute under it.
pub fn resolve_parent(mount: &Path, parent: &Path) -> Result<PathBuf, CgroupError> {
    if parent.is_absolute() {
        if parent.starts_with(mount) {
            Ok(parent.to_path_buf())
        } else {
            Err(CgroupError::ParentOutsideMount(
                parent.to_path_buf(),
                mount.to_path_buf(),
            ))
        }
    } else {
        Ok(mount.join(parent))
    }
}

/// `vigil-<pid>-<starttime>` for a process, or None if it does not exist.
fn owner_tag(pid: u32) -> Option<String> {
    let start = process_start_ticks(pid)?;
    Some(format!("vigil-{pid}-{start}"))
}

/// A process's start time in clock ticks since boot (field 22 of /proc/PID/stat).
pub fn process_start_ticks(pid: u32) -> Option<u64> {
    let pid = i32::try_from(pid).ok()?;
    Some(
        procfs::process::Process::new(pid)
            .ok()?
            .stat()
            .ok()?
            .starttime,
    )
}

/// This vigil's owner directory under `parent` (not created).
pub fn owner_dir(parent: &Path) -> PathBuf {
    let me = std::process::id();
    parent.join(owner_tag(me).unwrap_or_else(|| format!("vigil-{me}-0")))
}

/// A run's cgroup, removed (with its owner directory) by [`RunCgroup::remove`]. A clone is a
/// handle to the same directory (triage reads it from a blocking thread).
#[derive(Debug, Clone)]
pub struct RunCgroup {
    owner_dir: PathBuf,
    path: PathBuf,
    id: u64,
    /// The owner directory holds other runs too (a daemon's): only this run's cgroup is removed.
    shared_owner: bool,
    /// Someone else's cgroup (`vigil watch`): observed and, on a watchdog verdict, killed, but
    /// never removed.
    foreign: bool,
}

/// One observation of `cgroup.events`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupEvents {
    pub populated: bool,
    pub frozen: bool,
}

impl RunCgroup {
    /// Create `<parent>/vigil-<own pid>-<start>/<run_id>`, with the controllers vigil needs
    /// enabled down to it where the hierarchy offers them.
    pub fn create(parent: &Path, run_id: &str) -> Result<Self, CgroupError> {
        let owner_dir = owner_dir(parent);
        fs::create_dir_all(&owner_dir).map_err(io_err("create cgroup", &owner_dir))?;
        enable_controllers(parent, &owner_dir);
        let path = owner_dir.join(run_id);
        fs::create_dir(&path).map_err(io_err("create cgroup", &path))?;
        // The cgroup id that bpf_get_current_cgroup_id() reports is the directory's inode.
        let id = fs::metadata(&path).map_err(io_err("stat", &path))?.ino();
        Ok(RunCgroup {
            owner_dir,
            path,
            id,
            shared_owner: false,
            foreign: false,
        })
    }

    /// Create a run cgroup in an owner directory shared with other runs of this process.
    pub fn create_shared(parent: &Path, run_id: &str) -> Result<Self, CgroupError> {
        let mut cg = RunCgroup::create(parent, run_id)?;
        cg.shared_owner = true;
        Ok(cg)
    }

    /// An existing cgroup to watch: `path` relative to the cgroup2 mount or absolute under it,
    /// a real directory there (no `..`, no symlink on the way: cgroupfs has none, so one is an
    /// attempt to point vigil elsewhere).
    pub fn existing(mount: &Path, path: &Path) -> Result<Self, CgroupError> {
        if path
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(CgroupError::NotACgroup(
                path.to_path_buf(),
                "must not contain '..'",
            ));
        }
        let full = resolve_parent(mount, path)?;
        let mut at = mount.to_path_buf();
        for part in full
            .strip_prefix(mount)
            .unwrap_or(Path::new(""))
            .components()
        {
            at.push(part);
            match fs::symlink_metadata(&at) {
                Ok(m) if m.file_type().is_dir() => {}
                Ok(_) => {
                    return Err(CgroupError::NotACgroup(full, "is not a directory"));
                }
                Err(e) => return Err(io_err("open cgroup", &full)(e)),
            }
        }
        if !full.join("cgroup.procs").exists() {
            return Err(CgroupError::NotACgroup(full, "has no cgroup.procs"));
        }
        let id = fs::metadata(&full).map_err(io_err("stat", &full))?.ino();
        Ok(RunCgroup {
            owner_dir: full.clone(),
            path: full,
            id,
            shared_owner: false,
            foreign: true,
        })
    }

    /// The ids of every cgroup beneath this one, parents before children.
    pub fn descendant_ids(&self) -> Vec<u64> {
        let mut ids = Vec::new();
        let mut queue = std::collections::VecDeque::from([self.path.clone()]);
        while let Some(dir) = queue.pop_front() {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.filter_map(Result::ok) {
                if e.file_type().is_ok_and(|t| t.is_dir())
                    && let Ok(m) = e.metadata()
                {
                    ids.push(m.ino());
                    queue.push_back(e.path());
                }
            }
        }
        ids
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The controllers the run's cgroup has (its `cgroup.controllers`).
    pub fn controllers(&self) -> Vec<String> {
        controllers_of(&self.path)
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// Every process in the run's cgroup and its descendant cgroups.
    pub fn procs(&self) -> Vec<i32> {
        procs_recursive(&self.path)
    }

    pub fn events(&self) -> CgroupEvents {
        read_events(&self.path)
    }

    /// Cumulative CPU time of the run (cpu.stat usage_usec), present without the cpu controller.
    pub fn cpu_usage_usec(&self) -> Option<u64> {
        let stat = fs::read_to_string(self.path.join("cpu.stat")).ok()?;
        stat.lines()
            .find_map(|l| l.strip_prefix("usage_usec "))
            .and_then(|v| v.trim().parse().ok())
    }

    pub fn set_frozen(&self, frozen: bool) -> Result<(), CgroupError> {
        let file = self.path.join("cgroup.freeze");
        fs::write(&file, if frozen { "1" } else { "0" }).map_err(io_err("write", &file))
    }

    /// Send `sig` to every process of the subtree through pidfds; how many were signalled.
    pub fn signal_all(&self, sig: i32) -> usize {
        super::pidfd::signal_listed(|| procs_recursive(&self.path), sig)
    }

    /// SIGKILL everything in the subtree: cgroup.kill where the kernel has it, else a kill loop.
    pub fn kill_all(&self) -> Result<KillMechanism, CgroupError> {
        kill_subtree(&self.path)
    }

    /// Remove the run cgroup and (unless shared) its owner directory. The cgroup must be empty.
    pub fn remove(&self) -> Result<(), CgroupError> {
        if self.foreign {
            return Ok(());
        }
        match self.shared_owner {
            true => remove_tree(&self.path),
            false => remove_tree(&self.owner_dir),
        }
    }

    /// A watcher on this cgroup's `cgroup.events`.
    pub fn watch_events(&self) -> Result<EventsWatch, CgroupError> {
        EventsWatch::new(&self.path)
    }
}

/// Controllers a run uses: memory limits and OOM (memory), fork bombs (pids), CPU rate for
/// triage (cpu), I/O pressure (io).
const WANTED: [&str; 4] = ["cpu", "io", "memory", "pids"];

fn controllers_of(dir: &Path) -> Vec<String> {
    fs::read_to_string(dir.join("cgroup.controllers"))
        .unwrap_or_default()
        .split_whitespace()
        .map(String::from)
        .collect()
}

/// Enable the WANTED controllers each directory from `top` down to `bottom` offers, in its
/// `cgroup.subtree_control`, so the cgroups beneath have them (a pure v2 host enables none
/// below what systemd delegates). The mount's root is never touched: that would change every
/// top-level cgroup of the host. A controller the hierarchy does not offer (a hybrid host keeps
/// memory on v1) stays off; health lists what the run's cgroup has.
fn enable_controllers(top: &Path, bottom: &Path) {
    let mut chain: Vec<&Path> = bottom
        .ancestors()
        .take_while(|d| d.starts_with(top))
        .collect();
    chain.reverse();
    for dir in chain {
        // The root cgroup is the one without cgroup.events (`--cgroup-parent /`).
        if !dir.join("cgroup.events").exists() {
            continue;
        }
        let offered = controllers_of(dir);
        let enable: Vec<String> = WANTED
            .iter()
            .filter(|c| offered.iter().any(|o| o == *c))
            .map(|c| format!("+{c}"))
            .collect();
        if !enable.is_empty() {
            // Refused when the directory holds processes (no internal processes): then the
            // controllers stay as they are.
            let _ = fs::write(dir.join("cgroup.subtree_control"), enable.join(" "));
        }
    }
}

/// How a SIGKILL reached every process of a cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillMechanism {
    /// `cgroup.kill` (Linux ≥ 5.14): atomic, races no fork.
    CgroupKill,
    /// SIGKILL to each listed pid until the cgroup is empty (older kernels).
    SignalLoop,
}

impl KillMechanism {
    pub fn as_str(self) -> &'static str {
        match self {
            KillMechanism::CgroupKill => "cgroup.kill",
            KillMechanism::SignalLoop => "sigkill_loop",
        }
    }
}

fn kill_subtree(path: &Path) -> Result<KillMechanism, CgroupError> {
    let file = path.join("cgroup.kill");
    if file.exists() {
        fs::write(&file, "1").map_err(io_err("write", &file))?;
        return Ok(KillMechanism::CgroupKill);
    }
    // Without cgroup.kill a process may fork between listing and killing; repeat until a
    // listing comes back empty, bounded so a fork bomb cannot hold vigil here forever.
    for _ in 0..1000 {
        let pids = procs_recursive(path);
        if pids.is_empty() {
            break;
        }
        super::pidfd::signal_listed(|| procs_recursive(path), libc::SIGKILL);
    }
    Ok(KillMechanism::SignalLoop)
}

fn procs_recursive(path: &Path) -> Vec<i32> {
    let mut out = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
            out.extend(procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
        }
        if let Ok(entries) = fs::read_dir(&dir) {
            stack.extend(
                entries
                    .filter_map(Result::ok)
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    out
}

fn read_events(path: &Path) -> CgroupEvents {
    parse_events(&fs::read_to_string(path.join("cgroup.events")).unwrap_or_default())
}

fn parse_events(text: &str) -> CgroupEvents {
    let mut ev = CgroupEvents::default();
    for line in text.lines() {
        match line.split_once(' ') {
            Some(("populated", v)) => ev.populated = v.trim() == "1",
            Some(("frozen", v)) => ev.frozen = v.trim() == "1",
            _ => {}
        }
    }
    ev
}

/// rmdir a cgroup subtree, deepest first.
fn remove_tree(path: &Path) -> Result<(), CgroupError> {
    if !path.exists() {
        return Ok(());
    }
    if let Ok(entries) = fs::read_dir(path) {
        for e in entries.filter_map(Result::ok) {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path())?;
            }
        }
    }
    match fs::remove_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(CgroupError::Io {
            op: "remove cgroup",
            path: path.to_path_buf(),
            source: e,
        }),
    }
}

/// Kill and remove a whole owner directory (used by the guard and by the stale sweep). Waits
/// (event-driven, bounded) for the subtree to empty before removing it.
pub fn kill_and_remove(dir: &Path, timeout: Duration) -> Result<(), CgroupError> {
    if !dir.exists() {
        return Ok(());
    }
    kill_subtree(dir)?;
    let watch = EventsWatch::new(dir)?;
    watch.wait_blocking(timeout, |ev| !ev.populated);
    remove_tree(dir)
}

/// A run cgroup left behind by a vigil that died.
#[derive(Debug, Clone)]
pub struct StaleOwner {
    pub dir: PathBuf,
    pub owner_pid: u32,
    pub runs: Vec<String>,
    pub processes_killed: usize,
    pub removed: bool,
}

/// Find owner directories under `parent` whose vigil is gone; kill what is in them and remove
/// them.
pub fn sweep_stale(parent: &Path) -> Vec<StaleOwner> {
    let Ok(entries) = fs::read_dir(parent) else {
        return Vec::new();
    };
    let mut swept = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((pid, start)) = parse_owner_tag(&name) else {
            continue;
        };
        if process_start_ticks(pid) == Some(start) {
            continue; // owner alive
        }
        let dir = entry.path();
        let runs = fs::read_dir(&dir)
            .map(|it| {
                it.filter_map(Result::ok)
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let processes_killed = procs_recursive(&dir).len();
        let removed = kill_and_remove(&dir, Duration::from_secs(5)).is_ok();
        swept.push(StaleOwner {
            dir,
            owner_pid: pid,
            runs,
            processes_killed,
            removed,
        });
    }
    swept
}

fn parse_owner_tag(name: &str) -> Option<(u32, u64)> {
    let rest = name.strip_prefix("vigil-")?;
    let (pid, start) = rest.split_once('-')?;
    Some((pid.parse().ok()?, start.parse().ok()?))
}

/// A watch on `cgroup.events`. kernfs wakes pollers of the file with EPOLLPRI whenever
/// `populated` or `frozen` changes; re-reading it from the start re-arms the notification. This
/// needs no polling loop and, unlike inotify, no SRCU grace period when the watch is closed
/// (closing an inotify fd costs ~15 ms on these hosts).
pub struct EventsWatch {
    file: fs::File,
}

impl EventsWatch {
    pub fn new(dir: &Path) -> Result<Self, CgroupError> {
        let path = dir.join("cgroup.events");
        let file = fs::File::open(&path).map_err(io_err("open", &path))?;
        let w = EventsWatch { file };
        w.current(); // the first read arms the notification
        Ok(w)
    }

    /// Read the file from the start (which also re-arms the notification).
    pub fn current(&self) -> CgroupEvents {
        use std::os::unix::fs::FileExt;
        let mut buf = [0u8; 256];
        let n = self.file.read_at(&mut buf, 0).unwrap_or(0);
        parse_events(&String::from_utf8_lossy(&buf[..n]))
    }

    /// Block until `pred` holds or `timeout` passes; returns whether it holds.
    pub fn wait_blocking(&self, timeout: Duration, pred: impl Fn(CgroupEvents) -> bool) -> bool {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        use std::os::fd::AsFd;
        let deadline = Instant::now() + timeout;
        loop {
            if pred(self.current()) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let ms = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
            let mut fds = [PollFd::new(
                self.file.as_fd(),
                PollFlags::POLLPRI | PollFlags::POLLERR,
            )];
            let _ = poll(&mut fds, PollTimeout::from(ms));
        }
    }

    /// Register the file with the tokio reactor for EPOLLPRI (needs a runtime).
    pub fn async_fd(&self) -> io::Result<tokio::io::unix::AsyncFd<std::os::fd::RawFd>> {
        use std::os::fd::AsRawFd;
        let raw = self.file.as_raw_fd();
        // SAFETY: the fd is owned by `self.file`, which callers keep alive for as long as the
        // AsyncFd (it is declared first, so dropped last); the AsyncFd never closes it.
        unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(raw, tokio::io::Interest::PRIORITY)
        }
        .map_err(|e| e.into_parts().1)
    }

    /// Wait for the next change notification, then return the current state.
    pub async fn changed(
        &self,
        afd: &tokio::io::unix::AsyncFd<std::os::fd::RawFd>,
    ) -> CgroupEvents {
        if let Ok(mut guard) = afd.ready(tokio::io::Interest::PRIORITY).await {
            guard.clear_ready();
        }
        self.current()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> Vec<procfs::MountEntry> {
        <Vec<procfs::MountEntry> as procfs::FromBufRead>::from_buf_read(text.as_bytes())
            .expect("mount table")
    }

    #[test]
    fn finds_cgroup2_on_hybrid_and_pure_hosts() {
        let hybrid = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\ncgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(
            cgroup2_in(&table(hybrid)),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let pure = "proc /proc proc rw 0 0\ncgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\n";
        assert_eq!(
            cgroup2_in(&table(pure)),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(cgroup2_in(&table("proc /proc proc rw 0 0\n")), None);
        let escaped = "cgroup2 /mnt/a\\040b cgroup2 rw 0 0\n";
        assert_eq!(cgroup2_in(&table(escaped)), Some(PathBuf::from("/mnt/a b")));
    }

    /// On a fake hierarchy (plain files): each level from the parent down enables what it is
    /// offered, and nothing else; the mount's root is left alone.
    #[test]
    fn controllers_are_enabled_down_to_the_owner_directory() {
        let root = tempfile::tempdir().expect("tempdir");
        let parent = root.path().join("vigil");
        let owner = parent.join("vigil-1-2");
        fs::create_dir_all(&owner).expect("dirs");
        fs::write(root.path().join("cgroup.controllers"), "cpu io memory pids").expect("w");
        fs::write(parent.join("cgroup.controllers"), "cpuset cpu memory pids").expect("w");
        fs::write(owner.join("cgroup.controllers"), "cpu memory").expect("w");
        for d in [&parent, &owner] {
            fs::write(d.join("cgroup.events"), "populated 0\n").expect("w");
        }
        enable_controllers(&parent, &owner);
        // The root (no cgroup.events) is left alone even when it is the top.
        enable_controllers(root.path(), &owner);
        let sub = |d: &Path| fs::read_to_string(d.join("cgroup.subtree_control")).ok();
        assert_eq!(sub(&parent).as_deref(), Some("+cpu +memory +pids"));
        assert_eq!(sub(&owner).as_deref(), Some("+cpu +memory"));
        assert_eq!(sub(root.path()), None, "the root is never written");
    }

    #[test]
    fn parent_must_be_under_the_mount() {
        let m = Path::new("/sys/fs/cgroup");
        assert_eq!(
            resolve_parent(m, Path::new("vigil")).ok(),
            Some(m.join("vigil"))
        );
        assert!(resolve_parent(m, Path::new("/tmp/x")).is_err());
        assert!(resolve_parent(m, Path::new("/sys/fs/cgroup/ci")).is_ok());
    }

    #[test]
    fn owner_tags_round_trip() {
        assert_eq!(parse_owner_tag("vigil-42-9000"), Some((42, 9000)));
        assert_eq!(parse_owner_tag("vigil-x-1"), None);
        assert_eq!(parse_owner_tag("other"), None);
        let mine = owner_tag(std::process::id()).expect("own /proc entry");
        let (pid, start) = parse_owner_tag(&mine).expect("parse own tag");
        assert_eq!(pid, std::process::id());
        assert_eq!(process_start_ticks(pid), Some(start));
    }
}
