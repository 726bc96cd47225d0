//! One kernel event as a `vigil.kernel_event.v1` line: the common envelope, then the kind's
//! fields, written straight from borrowed fields into the batch (the reader's cost per event
//! bounds the drain rate); and the target a downgraded data event is counted under.

use super::event::KernelEvent;

mod write;

pub(super) use write::{LineCache, write_run};

/// include/trace/events/signal.h: what became of a generated signal.
fn signal_result(r: i32) -> &'static str {
    match r {
        0 => "delivered",
        1 => "ignored",
        2 => "already_pending",
        3 => "overflow_fail",
        4 => "lose_info",
        _ => "unknown",
    }
}

fn errno_name(result: i64) -> Option<String> {
    (result < 0).then(|| {
        let e = nix::errno::Errno::from_raw(i32::try_from(-result).unwrap_or(0));
        format!("{e:?}")
    })
}

/// What a downgraded data event was about: the path opened, the endpoint, the process.
pub(super) fn target(ev: &KernelEvent) -> String {
    let mut t = String::new();
    target_into(ev, &mut t);
    t
}

/// [`target`], appended to `out`.
pub(super) fn target_into(ev: &KernelEvent, out: &mut String) {
    use std::fmt::Write;
    match ev {
        KernelEvent::Open {
            path,
            resolved_path,
            ..
        } => out.push_str(resolved_path.as_deref().unwrap_or(path)),
        KernelEvent::Net {
            endpoint: Some(e), ..
        } => match (&e.address, e.port) {
            (Some(a), Some(p)) => {
                let _ = write!(out, "{a}:{p}");
            }
            (Some(a), None) => out.push_str(a),
            _ => out.push_str(&e.family),
        },
        other => out.push_str(&other.header().comm),
    }
}

/// O_ACCMODE and the flags a reader of the trace asks about.
fn open_access(flags: u32) -> &'static str {
    const O_PATH: u32 = 0o10000000;
    if flags & O_PATH != 0 {
        return "path";
    }
    match flags & 0o3 {
        0 => "read",
        1 => "write",
        _ => "read_write",
    }
}

/// One `vigil.kernel_event.v1` record: the common envelope, then the kind's fields, borrowed
/// from the event.
pub(super) struct Record<'a> {
    seq: u64,
    version: u32,
    ts_ns: u64,
    /// A coalesced line: how many identical events it stands for, and the last one (seq, ns).
    pub(super) coalesced: Option<(u64, u64, u64)>,
    pid: u32,
    tid: u32,
    ppid: u32,
    cgroup_id: u64,
    comm: &'a str,
    body: Body<'a>,
}

enum Body<'a> {
    Fork {
        child_pid: u32,
        child_tid: u32,
        is_thread: bool,
    },
    Exec {
        filename: &'a str,
        argv: &'a [String],
        argv_truncated: bool,
        uid: u32,
        gid: u32,
        cred_changed: bool,
    },
    Exit {
        exit_code: Option<i32>,
        signal: Option<i32>,
        core_dumped: bool,
        group_dead: bool,
    },
    Write {
        bytes: u64,
        pages: u32,
    },
    Signal {
        target_pid: u32,
        target_tid: u32,
        signal: i32,
        result: &'static str,
        group: bool,
    },
    Open {
        path: &'a str,
        resolved_path: Option<&'a str>,
        path_truncated: bool,
        dirfd: i32,
        flags: u32,
        mode: u32,
        access: &'static str,
        create: bool,
        truncate: bool,
        result: Option<i64>,
        errno: Option<String>,
        via: &'static str,
    },
    Net(&'static str, Net<'a>),
    ExecFailed {
        path: &'a str,
        resolved_path: Option<&'a str>,
        result: i64,
        errno: Option<String>,
    },
    Oom {
        trigger_pid: u32,
        trigger_comm: &'a str,
    },
    Compat {
        nr: Option<u32>,
        result: Option<i64>,
        errno: Option<String>,
    },
    Uring {
        opcode: Option<u32>,
        op: Option<&'static str>,
    },
}

/// io_uring opcode names (include/uapi/linux/io_uring.h), for the trace's reader.
fn uring_op(opcode: u32) -> Option<&'static str> {
    const OPS: [&str; 59] = [
        "nop",
        "readv",
        "writev",
        "fsync",
        "read_fixed",
        "write_fixed",
        "poll_add",
        "poll_remove",
        "sync_file_range",
        "sendmsg",
        "recvmsg",
        "timeout",
        "timeout_remove",
        "accept",
        "async_cancel",
        "link_timeout",
        "connect",
        "fallocate",
        "openat",
        "close",
        "files_update",
        "statx",
        "read",
        "write",
        "fadvise",
        "madvise",
        "send",
        "recv",
        "openat2",
        "epoll_ctl",
        "splice",
        "provide_buffers",
        "remove_buffers",
        "tee",
        "shutdown",
        "renameat",
        "unlinkat",
        "mkdirat",
        "symlinkat",
        "linkat",
        "msg_ring",
        "fsetxattr",
        "setxattr",
        "fgetxattr",
        "getxattr",
        "socket",
        "uring_cmd",
        "send_zc",
        "sendmsg_zc",
        "read_multishot",
        "waitid",
        "futex_wait",
        "futex_wake",
        "futex_waitv",
        "fixed_fd_install",
        "ftruncate",
        "bind",
        "listen",
        "recv_zc",
    ];
    OPS.get(opcode as usize).copied()
}

struct Net<'a> {
    fd: Option<i32>,
    family: Option<&'a str>,
    address: Option<&'a str>,
    port: Option<u16>,
    endpoint_source: &'static str,
    result: Option<i64>,
    errno: Option<String>,
    observed_at: &'static str,
}

/// The record of an event that is already redacted and stamped: fields are borrowed.
pub(super) fn record(seq: u64, ts_ns: u64, ev: &KernelEvent) -> Record<'_> {
    const O_CREAT: u32 = 0o100;
    const O_TRUNC: u32 = 0o1000;
    let h = ev.header();
    let body = match ev {
        KernelEvent::Fork {
            child_pid,
            child_tid,
            is_thread,
            ..
        } => Body::Fork {
            child_pid: *child_pid,
            child_tid: *child_tid,
            is_thread: *is_thread,
        },
        KernelEvent::Exec {
            filename,
            argv,
            argv_truncated,
            uid,
            gid,
            cred_changed,
            ..
        } => Body::Exec {
            filename,
            argv,
            argv_truncated: *argv_truncated,
            uid: *uid,
            gid: *gid,
            cred_changed: *cred_changed,
        },
        KernelEvent::Exit {
            exit_code,
            signal,
            core_dumped,
            group_dead,
            ..
        } => Body::Exit {
            exit_code: *exit_code,
            signal: *signal,
            core_dumped: *core_dumped,
            group_dead: *group_dead,
        },
        KernelEvent::Write { bytes, pages, .. } => Body::Write {
            bytes: *bytes,
            pages: *pages,
        },
        KernelEvent::Signal {
            target_pid,
            target_tid,
            signal,
            result,
            group,
            ..
        } => Body::Signal {
            target_pid: *target_pid,
            target_tid: *target_tid,
            signal: *signal,
            result: signal_result(*result),
            group: *group,
        },
        KernelEvent::Open {
            result,
            via,
            dirfd,
            flags,
            mode,
            path,
            path_truncated,
            resolved_path,
            ..
        } => Body::Open {
            path,
            resolved_path: resolved_path.as_deref(),
            path_truncated: *path_truncated,
            dirfd: *dirfd,
            flags: *flags,
            mode: *mode,
            access: open_access(*flags),
            create: flags & O_CREAT != 0,
            truncate: flags & O_TRUNC != 0,
            result: *result,
            errno: result.and_then(errno_name),
            via,
        },
        KernelEvent::Unfollowed {
            kind: "syscall.compat",
            nr,
            result,
            ..
        } => Body::Compat {
            nr: *nr,
            result: *result,
            errno: result.and_then(errno_name),
        },
        KernelEvent::Unfollowed { nr, .. } => Body::Uring {
            opcode: *nr,
            op: nr.and_then(uring_op),
        },
        KernelEvent::Net {
            op,
            result,
            fd,
            endpoint,
            endpoint_source,
            observed_at,
            ..
        } => {
            let net = Net {
                fd: *fd,
                family: endpoint.as_ref().map(|e| e.family.as_str()),
                address: endpoint.as_ref().and_then(|e| e.address.as_deref()),
                port: endpoint.as_ref().and_then(|e| e.port),
                endpoint_source,
                result: *result,
                errno: result.and_then(errno_name),
                observed_at,
            };
            Body::Net(op.kind(), net)
        }
        KernelEvent::ExecFailed {
            result,
            path,
            resolved_path,
            ..
        } => Body::ExecFailed {
            path,
            resolved_path: resolved_path.as_deref(),
            result: *result,
            errno: errno_name(*result),
        },
        KernelEvent::Oom {
            trigger_pid,
            trigger_comm,
            ..
        } => Body::Oom {
            trigger_pid: *trigger_pid,
            trigger_comm,
        },
    };
    Record {
        seq,
        version: h.version,
        ts_ns,
        coalesced: None,
        pid: h.pid,
        tid: h.tid,
        ppid: h.ppid,
        cgroup_id: h.cgroup_id,
        comm: &h.comm,
        body,
    }
}
