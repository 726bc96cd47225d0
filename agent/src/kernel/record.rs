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

/// One `vigil.kernel_event.v1` record: the common envelope, then the kind's fields, written
/// straight from the event (`write`).
pub(super) struct Record<'a> {
    seq: u64,
    ts_ns: u64,
    /// A coalesced line: how many identical events it stands for, and the last one (seq, ns).
    pub(super) coalesced: Option<(u64, u64, u64)>,
    ev: &'a KernelEvent,
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

/// The record of an event that is already redacted and stamped.
pub(super) fn record(seq: u64, ts_ns: u64, ev: &KernelEvent) -> Record<'_> {
    Record {
        seq,
        ts_ns,
        coalesced: None,
        ev,
    }
}
