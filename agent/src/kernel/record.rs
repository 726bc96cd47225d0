//! One kernel event as a `vigil.kernel_event.v1` line: the common envelope, then the kind's
//! fields, written straight from borrowed fields into the batch (the reader's cost per event
//! bounds the drain rate); and the target a downgraded data event is counted under.

use super::event::KernelEvent;
use super::json_line::{Obj, TsCache};
use crate::evidence::schema;

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

/// What consecutive lines share, made once: the timestamps' date and time of day, and the
/// fields that name the process (a drain's events mostly come from a few processes).
#[derive(Default)]
pub(super) struct LineCache {
    ts: TsCache,
    /// pid, tid, ppid, cgroup id and comm of `ids_json`.
    ids: Option<(u32, u32, u32, u64, String)>,
    ids_json: Vec<u8>,
}

impl LineCache {
    fn ids(&mut self, r: &Record<'_>) -> &[u8] {
        let same = self.ids.as_ref().is_some_and(|(pid, tid, ppid, cg, comm)| {
            (*pid, *tid, *ppid, *cg) == (r.pid, r.tid, r.ppid, r.cgroup_id) && comm == r.comm
        });
        if !same {
            self.ids_json.clear();
            let mut o = Obj::continued(&mut self.ids_json);
            o.num("pid", r.pid);
            o.num("tid", r.tid);
            o.num("ppid", r.ppid);
            o.num("cgroup_id", r.cgroup_id);
            o.str("comm", r.comm);
            self.ids = Some((r.pid, r.tid, r.ppid, r.cgroup_id, r.comm.to_string()));
        }
        &self.ids_json
    }
}

impl Record<'_> {
    /// The line, without its newline, appended to `out`.
    pub(super) fn write_json(&self, out: &mut Vec<u8>, cache: &mut LineCache) {
        self.write_head(out, cache);
        if let Some((count, last_seq, last_ns)) = self.coalesced {
            write_run(out, count, last_seq, last_ns, cache);
        }
        self.write_tail(out, cache);
    }

    /// The line up to `ts_ns`: what a coalesced run's fields follow.
    pub(super) fn write_head(&self, out: &mut Vec<u8>, cache: &mut LineCache) {
        let mut o = Obj::open(out);
        o.str("schema", schema::KERNEL_EVENT);
        o.num("seq", self.seq);
        o.num("version", self.version);
        o.ts("ts", self.ts_ns, &mut cache.ts);
        o.num("ts_ns", self.ts_ns);
    }

    /// The rest of the line after the head (and a run's fields).
    pub(super) fn write_tail(&self, out: &mut Vec<u8>, cache: &mut LineCache) {
        let mut o = Obj::continued(out);
        o.raw_fields(cache.ids(self));
        self.body.write(&mut o);
        o.close();
    }
}

/// A coalesced line's fields: how many events it stands for, and the last one.
pub(super) fn write_run(
    out: &mut Vec<u8>,
    count: u64,
    last_seq: u64,
    last_ns: u64,
    cache: &mut LineCache,
) {
    let mut o = Obj::continued(out);
    o.num("count", count);
    o.num("last_seq", last_seq);
    o.ts("last_ts", last_ns, &mut cache.ts);
    o.num("last_ts_ns", last_ns);
}

impl Body<'_> {
    /// `kind`, then the kind's fields.
    fn write(&self, o: &mut Obj<'_>) {
        match self {
            Body::Fork {
                child_pid,
                child_tid,
                is_thread,
            } => {
                o.str("kind", "process.fork");
                o.num("child_pid", *child_pid);
                o.num("child_tid", *child_tid);
                o.bool("is_thread", *is_thread);
            }
            Body::Exec {
                filename,
                argv,
                argv_truncated,
                uid,
                gid,
                cred_changed,
            } => {
                o.str("kind", "process.exec");
                o.str("filename", filename);
                o.strs("argv", argv);
                o.bool("argv_truncated", *argv_truncated);
                o.num("uid", *uid);
                o.num("gid", *gid);
                o.bool("cred_changed", *cred_changed);
            }
            Body::Exit {
                exit_code,
                signal,
                core_dumped,
                group_dead,
            } => {
                o.str("kind", "process.exit");
                o.opt_num("exit_code", *exit_code);
                o.opt_num("signal", *signal);
                o.bool("core_dumped", *core_dumped);
                o.bool("group_dead", *group_dead);
            }
            Body::Write { bytes, pages } => {
                o.str("kind", "io.write");
                o.num("bytes", *bytes);
                o.num("pages", *pages);
            }
            Body::Signal {
                target_pid,
                target_tid,
                signal,
                result,
                group,
            } => {
                o.str("kind", "signal.generate");
                o.num("target_pid", *target_pid);
                o.num("target_tid", *target_tid);
                o.num("signal", *signal);
                o.str("result", result);
                o.bool("group", *group);
            }
            Body::Open {
                path,
                resolved_path,
                path_truncated,
                dirfd,
                flags,
                mode,
                access,
                create,
                truncate,
                result,
                errno,
                via,
            } => {
                o.str("kind", "file.open");
                o.str("path", path);
                o.opt_str("resolved_path", *resolved_path);
                o.bool("path_truncated", *path_truncated);
                o.num("dirfd", *dirfd);
                o.num("flags", *flags);
                o.num("mode", *mode);
                o.str("access", access);
                o.bool("create", *create);
                o.bool("truncate", *truncate);
                o.opt_num("result", *result);
                o.opt_str("errno", errno.as_deref());
                o.str("via", via);
            }
            Body::Net(kind, n) => {
                o.str("kind", kind);
                o.opt_num("fd", n.fd);
                o.opt_str("family", n.family);
                o.opt_str("address", n.address);
                o.opt_num("port", n.port);
                o.str("endpoint_source", n.endpoint_source);
                o.opt_num("result", n.result);
                o.opt_str("errno", n.errno.as_deref());
                o.str("observed_at", n.observed_at);
            }
            Body::ExecFailed {
                path,
                resolved_path,
                result,
                errno,
            } => {
                o.str("kind", "process.exec_failed");
                o.str("path", path);
                o.opt_str("resolved_path", *resolved_path);
                o.num("result", *result);
                o.opt_str("errno", errno.as_deref());
            }
            Body::Oom {
                trigger_pid,
                trigger_comm,
            } => {
                o.str("kind", "oom.kill");
                o.num("trigger_pid", *trigger_pid);
                o.str("trigger_comm", trigger_comm);
            }
            Body::Compat { nr, result, errno } => {
                o.str("kind", "syscall.compat");
                o.opt_num("nr", *nr);
                o.opt_num("result", *result);
                o.opt_str("errno", errno.as_deref());
            }
            Body::Uring { opcode, op } => {
                o.str("kind", "io_uring.submit");
                o.opt_num("opcode", *opcode);
                o.opt_str("op", *op);
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::event::{Endpoint, Header, NetOp};

    fn hdr() -> Header {
        Header {
            tid: 11,
            comm: "we\"ird\ncomm".into(),
            ..Header::of(10, 1, "")
        }
    }

    /// One event of every kind the layer writes.
    fn every_kind() -> Vec<KernelEvent> {
        let net = |op, result| KernelEvent::Net {
            hdr: hdr(),
            op,
            result,
            fd: Some(3),
            endpoint: Some(Endpoint {
                family: "inet6".into(),
                address: Some("::1".into()),
                port: Some(443),
            }),
            endpoint_source: "argument",
            observed_at: "cgroup_hook",
        };
        vec![
            KernelEvent::Fork {
                hdr: hdr(),
                child_pid: 12,
                child_tid: 12,
                is_thread: false,
            },
            KernelEvent::Exec {
                hdr: hdr(),
                filename: "/bin/sh".into(),
                argv: vec!["sh".into(), "-c".into(), "echo \"$X\"\t".into()],
                argv_truncated: true,
                uid: 1000,
                gid: 1000,
                cred_changed: false,
            },
            KernelEvent::Exit {
                hdr: hdr(),
                exit_code: None,
                signal: Some(9),
                core_dumped: false,
                group_dead: true,
            },
            KernelEvent::Write {
                hdr: hdr(),
                bytes: 8192,
                pages: 2,
            },
            KernelEvent::Signal {
                hdr: hdr(),
                target_pid: 12,
                target_tid: 12,
                signal: 15,
                result: 0,
                group: true,
            },
            KernelEvent::Open {
                hdr: hdr(),
                result: Some(-2),
                via: "syscall",
                dirfd: -100,
                flags: 0o1101,
                mode: 0o644,
                path: "out/ü.txt".into(),
                path_truncated: false,
                resolved_path: None,
            },
            net(NetOp::Connect, Some(-111)),
            net(NetOp::Bind, Some(0)),
            net(NetOp::Accept, None),
            net(NetOp::Send, Some(5)),
            KernelEvent::ExecFailed {
                hdr: hdr(),
                result: -13,
                path: "./x".into(),
                resolved_path: Some("/w/x".into()),
            },
            KernelEvent::Oom {
                hdr: hdr(),
                trigger_pid: 12,
                trigger_comm: "hog".into(),
            },
            KernelEvent::Unfollowed {
                hdr: hdr(),
                kind: "syscall.compat",
                nr: Some(5),
                result: Some(-9),
            },
            KernelEvent::Unfollowed {
                hdr: hdr(),
                kind: "io_uring.submit",
                nr: Some(22),
                result: None,
            },
        ]
    }

    #[test]
    fn every_kind_writes_a_json_line_with_the_fields_its_schema_requires() {
        let schema: serde_json::Value =
            serde_json::from_str(include_str!("../../../specs/schema/kernel_event.v1.json"))
                .expect("schema");
        let required = |v: &serde_json::Value| -> Vec<String> {
            v["required"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|k| k.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut ts = LineCache::default();
        let mut kinds = std::collections::BTreeSet::new();
        let mut coalesced_open = None;
        for (seq, ev) in every_kind().iter().enumerate() {
            let mut rec = record(seq as u64, 1_796_348_926_506_182_638, ev);
            rec.coalesced = (seq == 5).then_some((3, 9, 1_796_348_927_000_000_001));
            let mut line = Vec::new();
            rec.write_json(&mut line, &mut ts);
            assert!(!line.contains(&b'\n'), "one line");
            let v: serde_json::Value = serde_json::from_slice(&line).expect("a JSON line");
            let kind = v["kind"].as_str().expect("kind").to_string();
            let mut need = required(&schema);
            for case in schema["allOf"].as_array().expect("allOf") {
                let when = &case["if"]["properties"]["kind"];
                let applies = when["const"].as_str() == Some(&kind)
                    || when["enum"]
                        .as_array()
                        .is_some_and(|e| e.iter().any(|k| k.as_str() == Some(&kind)));
                if applies {
                    need.extend(required(&case["then"]));
                }
            }
            for field in need {
                assert!(v.get(&field).is_some(), "{kind}: no {field} in {v}");
            }
            assert_eq!(v["comm"], "we\"ird\ncomm");
            assert_eq!(v["ts"], "2026-12-04T01:48:46.506182Z");
            assert_eq!(v["seq"], seq as u64);
            kinds.insert(kind);
            if seq == 5 {
                coalesced_open = Some(v);
            }
        }
        assert_eq!(kinds.len(), 14, "every kind: {kinds:?}");
        let v = coalesced_open.expect("the open was written");
        assert_eq!(
            (
                v["count"].clone(),
                v["last_seq"].clone(),
                v["last_ts"].clone()
            ),
            (3.into(), 9.into(), "2026-12-04T01:48:47.000000Z".into())
        );
        assert!(v["resolved_path"].is_null() && v["errno"] == "ENOENT");
    }
}
