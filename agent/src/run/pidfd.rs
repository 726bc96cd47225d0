//! Signals through pidfds, never through bare pids: a pid read from `cgroup.procs` may be reaped
//! and recycled before the signal is sent. A pid is pinned with `pidfd_open` first and then must
//! still be listed in the cgroup; a signal through the pidfd can only reach that process.

use std::collections::HashSet;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A process pinned by a pidfd.
pub fn open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no memory is shared.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = i32::try_from(fd).ok().filter(|fd| *fd >= 0)?;
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Send `sig` to the process behind `fd`; false when it is gone.
pub fn send(fd: &OwnedFd, sig: i32) -> bool {
    // SAFETY: a valid pidfd, a signal number and a null siginfo (the kernel fills it as kill()).
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    r == 0
}

/// Signal every process that `list` reports, pinning each first and keeping only those `list`
/// still reports once pinned (a recycled pid belongs to a process elsewhere). Returns how many
/// were signalled.
pub fn signal_listed(list: impl Fn() -> Vec<i32>, sig: i32) -> usize {
    let pinned: Vec<(i32, OwnedFd)> = list()
        .into_iter()
        .filter_map(|pid| open(pid).map(|fd| (pid, fd)))
        .collect();
    if pinned.is_empty() {
        return 0;
    }
    let still: HashSet<i32> = list().into_iter().collect();
    pinned
        .iter()
        .filter(|(pid, _)| still.contains(pid))
        .filter(|(_, fd)| send(fd, sig))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_processes_still_listed_once_pinned_are_signalled() {
        let me = i32::try_from(std::process::id()).expect("pid");
        assert!(open(me).is_some(), "pidfd_open on ourselves");
        assert!(open(-5).is_none());
        // Signal 0 checks deliverability without delivering anything.
        assert_eq!(signal_listed(|| vec![me], 0), 1);
        // Listed at first, gone from the second listing (as a reaped, recycled pid would be).
        let calls = std::cell::Cell::new(0);
        let flaky = || {
            calls.set(calls.get() + 1);
            if calls.get() == 1 { vec![me] } else { vec![] }
        };
        assert_eq!(signal_listed(flaky, 0), 0);
    }
}
