//! Who a cgroup-hook event is about. The cgroup network hooks (`--kernel-layer network`) know
//! the pid and tid of the calling task but cannot read the task itself, so their events come
//! without `comm` and `ppid`. The run's own fork/exec stream names every process it has, so the
//! layer writer fills them from what it has seen; a process that predates the stream (`vigil
//! watch` seeds) is read once from /proc.

use std::collections::HashMap;

use super::event::KernelEvent;

#[derive(Default)]
pub struct Identities {
    /// tgid → (comm, ppid), as the latest exec or fork said.
    by_pid: HashMap<u32, (String, u32)>,
}

impl Identities {
    /// Learn from an event of the stream; fill a hook event's missing fields.
    pub fn see(&mut self, ev: &mut KernelEvent) {
        match ev {
            KernelEvent::Net {
                hdr, observed_at, ..
            } if *observed_at != "syscall_exit" && hdr.comm.is_empty() => {
                let (comm, ppid) = self.lookup(hdr.pid);
                hdr.comm = comm;
                hdr.ppid = ppid;
            }
            KernelEvent::Fork {
                hdr,
                child_pid,
                is_thread: false,
                ..
            } => {
                self.by_pid.insert(*child_pid, (hdr.comm.clone(), hdr.pid));
            }
            KernelEvent::Exec { hdr, .. } => {
                self.by_pid.insert(hdr.pid, (hdr.comm.clone(), hdr.ppid));
            }
            KernelEvent::Exit {
                hdr,
                group_dead: true,
                ..
            } => {
                self.by_pid.remove(&hdr.pid);
            }
            _ => {}
        }
    }

    fn lookup(&mut self, pid: u32) -> (String, u32) {
        if let Some(known) = self.by_pid.get(&pid) {
            return known.clone();
        }
        let found = from_proc(pid).unwrap_or_default();
        self.by_pid.insert(pid, found.clone());
        found
    }
}

/// comm and ppid from /proc/PID/stat (comm in parentheses, may hold spaces and parentheses).
fn from_proc(pid: u32) -> Option<(String, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_string();
    let ppid = stat.get(close + 2..)?.split(' ').nth(1)?.parse().ok()?;
    Some((comm, ppid))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::event::{Header, NetOp};

    fn hdr(pid: u32, ppid: u32, comm: &str) -> Header {
        Header::of(pid, ppid, comm)
    }

    fn hook_connect(pid: u32) -> KernelEvent {
        KernelEvent::Net {
            hdr: hdr(pid, 0, ""),
            op: NetOp::Connect,
            result: None,
            fd: None,
            endpoint: None,
            endpoint_source: "argument",
            observed_at: "cgroup_hook",
        }
    }

    #[test]
    fn a_hook_event_takes_comm_and_ppid_from_the_fork_and_exec_seen_before() {
        let mut ids = Identities::default();
        let mut fork = KernelEvent::Fork {
            hdr: hdr(10, 1, "sh"),
            child_pid: 11,
            child_tid: 11,
            is_thread: false,
        };
        ids.see(&mut fork);
        let mut ev = hook_connect(11);
        ids.see(&mut ev);
        assert_eq!(
            (ev.header().comm.as_str(), ev.header().ppid),
            ("sh", 10),
            "forked, not yet exec'd: the parent's comm"
        );
        let mut exec = KernelEvent::Exec {
            hdr: hdr(11, 10, "curl"),
            filename: "/usr/bin/curl".into(),
            argv: vec![],
            argv_truncated: false,
            uid: 0,
            gid: 0,
            cred_changed: false,
        };
        ids.see(&mut exec);
        let mut ev = hook_connect(11);
        ids.see(&mut ev);
        assert_eq!((ev.header().comm.as_str(), ev.header().ppid), ("curl", 10));
    }

    #[test]
    fn a_process_the_stream_never_named_is_read_from_proc() {
        let me = std::process::id();
        let mut ev = hook_connect(me);
        Identities::default().see(&mut ev);
        let comm = std::fs::read_to_string(format!("/proc/{me}/comm")).expect("comm");
        assert_eq!(ev.header().comm, comm.trim());
        assert_eq!(ev.header().ppid, std::os::unix::process::parent_id());
    }
}
