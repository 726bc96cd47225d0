//! Hang explanation: who waits on whom. For each blocked process of a stalled run, resolve what
//! its syscall waits on — a pipe, a unix or TCP socket, a child, a file lock, a futex, the fds
//! of a poll — and who holds the other end, with that holder's parentage, start time and
//! whether it left its session (setsid) or is stopped. Read from /proc (the `procfs` crate) while
//! the run is frozen, so fd tables do not move under the reading; the syscall and its arguments
//! come from the pass before the freeze (a frozen task reports the freezer's trap instead).
//!
//! Holders are found by scanning every process's fd table once: a pipe's write end is an fd
//! on the same pipe inode opened for writing. A unix socket's peer is named by SO_PEERCRED on
//! a copy of the waiter's socket (pidfd_getfd): the process that created the listening socket
//! or pair. A TCP socket's peer, when it is on this host, is the socket whose local and remote
//! addresses are the waiter's swapped.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::FileExt;

use procfs::process::{FDPermissions, FDTarget, Process};
use serde::Serialize;

use crate::evidence::redact::Redactor;

/// What a blocked process was in before the freeze.
#[derive(Debug, Clone)]
pub struct Blocked {
    pub pid: i32,
    pub comm: String,
    pub syscall: String,
    pub args: [u64; 6],
}

/// The process holding the other end of what someone waits on.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Holder {
    pub pid: i32,
    pub comm: String,
    pub argv: Vec<String>,
    pub ppid: i32,
    pub parent_comm: Option<String>,
    /// Wall-clock ns of its start (kernel events when vigil saw the fork, else /proc).
    pub started_ns: Option<u64>,
    /// A session leader other than the waiter's: it called setsid (a daemonized process).
    pub setsid: bool,
    pub stopped: bool,
    /// In the run's cgroup (false: something outside the run holds it).
    pub in_run: bool,
    /// What it holds: `write end`, `read end`, `peer`, `child`, `lock`.
    pub holds: &'static str,
}

/// One blocked process and what it waits on.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Wait {
    pub pid: i32,
    pub comm: String,
    pub syscall: String,
    /// `pipe:[ino]`, `socket:[ino] (unix /path)`, `tcp 127.0.0.1:1 -> 127.0.0.1:2`, `children`,
    /// `lock on /path`, `futex`.
    pub on: String,
    pub holders: Vec<Holder>,
    /// One sentence for people.
    pub explanation: String,
}

/// What the kernel layer knows of the run's processes: the parent that forked it, that
/// parent's comm, and its start on the boot clock (a daemonized process's parent is init by
/// now; the kernel saw who started it).
pub type Known = HashMap<u32, (u32, String, u64)>;

/// Every process's fds on pipes and sockets: inode → (pid, mode).
struct FdIndex {
    pipes: HashMap<u64, Vec<(i32, FDPermissions)>>,
    sockets: HashMap<u64, Vec<i32>>,
}

impl FdIndex {
    fn scan() -> FdIndex {
        let mut idx = FdIndex {
            pipes: HashMap::new(),
            sockets: HashMap::new(),
        };
        let Ok(all) = procfs::process::all_processes() else {
            return idx;
        };
        for p in all.filter_map(Result::ok) {
            let Ok(fds) = p.fd() else { continue };
            for fd in fds.filter_map(Result::ok) {
                match fd.target {
                    FDTarget::Pipe(ino) => {
                        idx.pipes.entry(ino).or_default().push((p.pid, fd.mode()))
                    }
                    FDTarget::Socket(ino) => idx.sockets.entry(ino).or_default().push(p.pid),
                    _ => {}
                }
            }
        }
        for v in idx.sockets.values_mut() {
            v.sort_unstable();
            v.dedup();
        }
        idx
    }
}

/// Explain each blocked process. `run` holds the run's pids.
pub fn explain(
    blocked: &[Blocked],
    run: &HashSet<i32>,
    known: &Known,
    redactor: &Redactor,
) -> Vec<Wait> {
    if blocked.is_empty() {
        return Vec::new();
    }
    let idx = FdIndex::scan();
    let ctx = Ctx {
        idx,
        run,
        known,
        redactor,
        boot_to_wall: crate::clock::boot_to_wall_offset_ns(),
    };
    blocked.iter().filter_map(|b| ctx.explain_one(b)).collect()
}

struct Ctx<'a> {
    idx: FdIndex,
    run: &'a HashSet<i32>,
    known: &'a Known,
    redactor: &'a Redactor,
    boot_to_wall: i128,
}

/// The fd argument of the syscalls that wait on one fd.
fn fd_arg(syscall: &str, args: &[u64; 6]) -> Option<(i32, bool)> {
    let fd = i32::try_from(args[0]).ok()?;
    match syscall {
        "read" | "readv" | "pread64" | "preadv" | "recvfrom" | "recvmsg" | "recvmmsg" => {
            Some((fd, true))
        }
        "write" | "writev" | "pwrite64" | "sendto" | "sendmsg" | "sendmmsg" | "splice" => {
            Some((fd, false))
        }
        _ => None,
    }
}

impl Ctx<'_> {
    fn explain_one(&self, b: &Blocked) -> Option<Wait> {
        let who = format!("{} (pid {})", b.comm, b.pid);
        let (on, holders, verb) = match b.syscall.as_str() {
            "wait4" | "waitid" => {
                let kids = self.children(b.pid);
                ("children".to_string(), kids, "waits for its child")
            }
            "futex" | "futex_waitv" => (
                "futex".to_string(),
                Vec::new(),
                "waits on a futex (a lock or condition inside the process)",
            ),
            // A sleeper waits on nobody.
            "nanosleep" | "clock_nanosleep" | "pause" => return None,
            "flock" | "fcntl" => {
                let (on, holders) = self.lock(b)?;
                (on, holders, "waits for a file lock held by")
            }
            "poll" | "ppoll" | "select" | "pselect6" | "epoll_wait" | "epoll_pwait"
            | "epoll_pwait2" => {
                let mut on = Vec::new();
                let mut holders = Vec::new();
                for fd in self.polled_fds(b) {
                    if let Some((what, mut h)) = self.fd_other_end(b.pid, fd, true) {
                        on.push(what);
                        holders.append(&mut h);
                    }
                }
                holders.sort_by_key(|h| h.pid);
                holders.dedup_by_key(|h| h.pid);
                if on.is_empty() {
                    return None;
                }
                (on.join(", "), holders, "")
            }
            s => {
                let (fd, reading) = fd_arg(s, &b.args)?;
                let (on, holders) = self.fd_other_end(b.pid, fd, reading)?;
                (on, holders, "")
            }
        };
        let explanation = match (verb, holders.is_empty()) {
            ("waits for its child", false) => {
                format!(
                    "{who} waits in {} for {}",
                    b.syscall,
                    self.list(&holders, b.pid)
                )
            }
            ("", false) => format!(
                "{who} blocked in {} on {on}; its other end is held by {}",
                b.syscall,
                self.list(&holders, b.pid)
            ),
            ("", true) => format!(
                "{who} blocked in {} on {on}; nobody else holds its other end",
                b.syscall
            ),
            (v, false) => format!("{who} {v} {}", self.list(&holders, b.pid)),
            (v, true) => format!("{who} {v} (in {})", b.syscall),
        };
        Some(Wait {
            pid: b.pid,
            comm: b.comm.clone(),
            syscall: b.syscall.clone(),
            on,
            holders,
            explanation,
        })
    }

    fn list(&self, holders: &[Holder], waiter: i32) -> String {
        holders
            .iter()
            .map(|h| self.describe(h, waiter))
            .collect::<Vec<_>>()
            .join("; and by ")
    }

    fn describe(&self, h: &Holder, waiter: i32) -> String {
        if h.pid == waiter {
            return "itself".into();
        }
        let mut s = format!("`{}` (pid {})", h.argv.join(" "), h.pid);
        if let Some(t) = h.started_ns {
            s.push_str(&format!(", started {}", crate::clock::rfc3339(t)));
        }
        match &h.parent_comm {
            Some(p) => s.push_str(&format!(" by {p} (pid {})", h.ppid)),
            None => s.push_str(&format!(" by pid {}", h.ppid)),
        }
        for (flag, word) in [
            (h.setsid, "setsid"),
            (h.stopped, "stopped"),
            (!h.in_run, "outside the run"),
        ] {
            if flag {
                s.push_str(", ");
                s.push_str(word);
            }
        }
        s
    }

    fn holder(&self, pid: i32, holds: &'static str) -> Option<Holder> {
        let p = Process::new(pid).ok()?;
        let st = p.stat().ok()?;
        let argv = p.cmdline().unwrap_or_default();
        let argv = match argv.is_empty() {
            true => vec![st.comm.clone()],
            false => self.redactor.redact_argv(&argv),
        };
        let (ppid, parent_comm, boot_ns) = match self.known.get(&pid.unsigned_abs()) {
            Some((ppid, comm, start)) => (
                i32::try_from(*ppid).unwrap_or(st.ppid),
                Some(comm.clone()).filter(|c| !c.is_empty()),
                *start,
            ),
            None => {
                let hz = procfs::ticks_per_second().max(1);
                let comm = Process::new(st.ppid)
                    .ok()
                    .and_then(|pp| pp.stat().ok())
                    .map(|s| s.comm);
                (
                    st.ppid,
                    comm,
                    st.starttime.saturating_mul(1_000_000_000) / hz,
                )
            }
        };
        let started_ns = Some(crate::clock::boot_to_wall(boot_ns, self.boot_to_wall));
        Some(Holder {
            pid,
            comm: st.comm,
            argv,
            ppid,
            parent_comm,
            started_ns,
            setsid: st.session == pid,
            stopped: matches!(st.state, 'T' | 't'),
            in_run: self.run.contains(&pid),
            holds,
        })
    }

    /// The children of `pid`: each of its threads' `task/TID/children` (the kernel's own
    /// list, no scan of every process).
    fn children(&self, pid: i32) -> Vec<Holder> {
        let Ok(tasks) = Process::new(pid).and_then(|p| p.tasks()) else {
            return Vec::new();
        };
        let mut kids: Vec<u32> = tasks
            .filter_map(Result::ok)
            .filter_map(|t| t.children().ok())
            .flatten()
            .collect();
        kids.sort_unstable();
        kids.dedup();
        kids.into_iter()
            .filter_map(|k| self.holder(i32::try_from(k).ok()?, "child"))
            .collect()
    }

    /// What fd `fd` of `pid` is, and who holds its other end.
    fn fd_other_end(&self, pid: i32, fd: i32, reading: bool) -> Option<(String, Vec<Holder>)> {
        let target = procfs::process::FDInfo::from_raw_fd(pid, fd).ok()?.target;
        match target {
            FDTarget::Pipe(ino) => {
                // A reader waits for writers; a writer (pipe full) for readers.
                let (want, holds) = match reading {
                    true => (FDPermissions::WRITE, "write end"),
                    false => (FDPermissions::READ, "read end"),
                };
                let mut pids: Vec<i32> = self
                    .idx
                    .pipes
                    .get(&ino)
                    .into_iter()
                    .flatten()
                    .filter(|(_, mode)| mode.contains(want))
                    .map(|(p, _)| *p)
                    .collect();
                pids.sort_unstable();
                pids.dedup();
                let holders = pids.into_iter().filter_map(|p| self.holder(p, holds));
                Some((format!("pipe:[{ino}]"), holders.collect()))
            }
            FDTarget::Socket(ino) => Some(self.socket_other_end(pid, fd, ino)),
            FDTarget::Path(p) => Some((p.display().to_string(), Vec::new())),
            _ => None,
        }
    }

    fn socket_other_end(&self, pid: i32, fd: i32, ino: u64) -> (String, Vec<Holder>) {
        let proc_ = Process::new(pid).ok();
        let unix = proc_
            .as_ref()
            .and_then(|p| p.unix().ok())
            .and_then(|v| v.into_iter().find(|u| u.inode == ino));
        if let Some(u) = unix {
            let peer = unix_peer(pid, fd);
            // A client's own socket is unnamed: the path is its peer's (the server's).
            let path = u
                .path
                .or_else(|| peer.as_ref().and_then(|p| p.1.clone()))
                .map(|p| format!(" {}", p.display()))
                .unwrap_or_default();
            let on = format!("socket:[{ino}] (unix{path})");
            let holders = peer
                .map(|p| p.0)
                .filter(|p| *p != 0)
                .and_then(|p| self.holder(p, "peer"))
                .into_iter()
                .collect();
            return (on, holders);
        }
        let tcp = proc_.as_ref().map(|p| {
            let mut all = p.tcp().unwrap_or_default();
            all.extend(p.tcp6().unwrap_or_default());
            all
        });
        let Some(tcp) = tcp else {
            return (format!("socket:[{ino}]"), Vec::new());
        };
        let Some(me) = tcp.iter().find(|t| t.inode == ino) else {
            return (format!("socket:[{ino}]"), Vec::new());
        };
        let on = format!(
            "tcp {} -> {} ({:?})",
            me.local_address, me.remote_address, me.state
        );
        // The peer, when it lives on this host: local and remote swapped.
        let holders = tcp
            .iter()
            .find(|t| t.local_address == me.remote_address && t.remote_address == me.local_address)
            .and_then(|peer| self.idx.sockets.get(&peer.inode))
            .into_iter()
            .flatten()
            .filter_map(|p| self.holder(*p, "peer"))
            .collect();
        (on, holders)
    }

    /// The file a flock/fcntl waits for, and the processes /proc/locks says hold it.
    fn lock(&self, b: &Blocked) -> Option<(String, Vec<Holder>)> {
        let fd = i32::try_from(b.args[0]).ok()?;
        let link = format!("/proc/{}/fd/{fd}", b.pid);
        let path = std::fs::read_link(&link).ok()?;
        // The fd's own inode (stat through the magic link reaches the open file, not a path).
        let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&link).ok()?);
        let locks = procfs::locks().unwrap_or_default();
        let holders = locks
            .iter()
            .filter(|l| l.inode == ino)
            .filter_map(|l| l.pid)
            .filter(|p| *p != b.pid)
            .collect::<HashSet<_>>()
            .into_iter()
            .filter_map(|p| self.holder(p, "lock"))
            .collect();
        Some((format!("lock on {}", path.display()), holders))
    }

    /// The fds a poll/select/epoll waits on.
    fn polled_fds(&self, b: &Blocked) -> Vec<i32> {
        let a = &b.args;
        match b.syscall.as_str() {
            "poll" | "ppoll" => {
                let n = usize::try_from(a[1]).unwrap_or(0).min(256);
                read_mem(b.pid, a[0], n * 8)
                    .map(|bytes| {
                        bytes
                            .chunks_exact(8)
                            .map(|c| i32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
                            .filter(|fd| *fd >= 0)
                            .collect()
                    })
                    .unwrap_or_default()
            }
            "select" | "pselect6" => {
                let n = usize::try_from(a[0]).unwrap_or(0).min(1024);
                read_mem(b.pid, a[1], n.div_ceil(8))
                    .map(|bits| {
                        (0..n)
                            .filter(|i| bits[i / 8] & (1 << (i % 8)) != 0)
                            .filter_map(|i| i32::try_from(i).ok())
                            .collect()
                    })
                    .unwrap_or_default()
            }
            // epoll: the interest list is in the epoll fd's fdinfo (`tfd: N …`).
            _ => std::fs::read_to_string(format!("/proc/{}/fdinfo/{}", b.pid, a[0]))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.strip_prefix("tfd:"))
                .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
                .collect(),
        }
    }
}

/// `len` bytes of `pid`'s memory at `addr` (the process is frozen or blocked in the syscall
/// whose argument points there).
fn read_mem(pid: i32, addr: u64, len: usize) -> Option<Vec<u8>> {
    if len == 0 {
        return None;
    }
    let f = std::fs::File::open(format!("/proc/{pid}/mem")).ok()?;
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, addr).ok()?;
    Some(buf)
}

/// The pid SO_PEERCRED names for unix socket `fd` of `pid`, and the peer's path, through a
/// copy of the socket.
fn unix_peer(pid: i32, fd: i32) -> Option<(i32, Option<std::path::PathBuf>)> {
    use std::os::fd::{FromRawFd, OwnedFd};
    // SAFETY: pidfd_open and pidfd_getfd take plain integers and return a new fd or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let pidfd = i32::try_from(pidfd).ok().filter(|f| *f >= 0)?;
    // SAFETY: `pidfd` was just returned to us and is owned by nobody else.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    use std::os::fd::AsRawFd;
    // SAFETY: as above; the flags argument must be 0.
    let copy = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    let copy = i32::try_from(copy).ok().filter(|f| *f >= 0)?;
    // SAFETY: `copy` is a new fd in this process, owned by nobody else.
    let copy = unsafe { OwnedFd::from_raw_fd(copy) };
    use nix::sys::socket::{UnixAddr, getpeername, getsockopt, sockopt::PeerCredentials};
    let cred = getsockopt(&copy, PeerCredentials).ok()?;
    let path = getpeername::<UnixAddr>(copy.as_raw_fd())
        .ok()
        .and_then(|a| a.path().map(std::path::Path::to_path_buf));
    Some((cred.pid(), path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_of_its_own_pipe_is_held_by_itself() {
        // This process holds both ends of a pipe: a reader blocked on it would wait forever.
        let (r, w) = nix::unistd::pipe().expect("pipe");
        use std::os::fd::AsRawFd;
        let me = std::process::id() as i32;
        let ctx = Ctx {
            idx: FdIndex::scan(),
            run: &HashSet::from([me]),
            known: &Known::new(),
            redactor: &Redactor::new(&[]),
            boot_to_wall: 0,
        };
        let (on, holders) = ctx.fd_other_end(me, r.as_raw_fd(), true).expect("a pipe");
        assert!(on.starts_with("pipe:["), "{on}");
        assert_eq!(holders.len(), 1, "{holders:?}");
        assert_eq!(holders[0].pid, me);
        assert_eq!(holders[0].holds, "write end");
        let wait = ctx
            .explain_one(&Blocked {
                pid: me,
                comm: "t".into(),
                syscall: "read".into(),
                args: [r.as_raw_fd() as u64, 0, 0, 0, 0, 0],
            })
            .expect("explained");
        assert!(
            wait.explanation.ends_with("held by itself"),
            "{}",
            wait.explanation
        );
        drop(w);
    }

    #[test]
    fn only_waiting_syscalls_name_an_fd() {
        assert_eq!(fd_arg("read", &[3, 0, 0, 0, 0, 0]), Some((3, true)));
        assert_eq!(fd_arg("sendto", &[4, 0, 0, 0, 0, 0]), Some((4, false)));
        assert_eq!(fd_arg("getpid", &[4, 0, 0, 0, 0, 0]), None);
    }
}
