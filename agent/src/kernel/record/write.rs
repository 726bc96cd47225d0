//! A record as its `vigil.kernel_event.v1` line: the envelope, a coalesced run's fields, the
//! kind's fields, written through [`Obj`] with what consecutive lines share cached.

use super::{Record, errno_name, open_access, signal_result, uring_op};
use crate::evidence::schema;
use crate::kernel::event::KernelEvent;
use crate::kernel::json_line::{Obj, TsCache};

/// What consecutive lines share, made once: the timestamps' date and time of day, and the
/// fields that name the process (a drain's events mostly come from a few processes).
#[derive(Default)]
pub(in crate::kernel) struct LineCache {
    ts: TsCache,
    /// pid, tid, ppid, cgroup id and comm of `ids_json`.
    ids: Option<(u32, u32, u32, u64, String)>,
    ids_json: Vec<u8>,
}

impl LineCache {
    fn ids(&mut self, ev: &KernelEvent) -> &[u8] {
        let h = ev.header();
        let same = self.ids.as_ref().is_some_and(|(pid, tid, ppid, cg, comm)| {
            (*pid, *tid, *ppid, *cg) == (h.pid, h.tid, h.ppid, h.cgroup_id) && *comm == h.comm
        });
        if !same {
            self.ids_json.clear();
            let mut o = Obj::continued(&mut self.ids_json);
            o.num("pid", h.pid);
            o.num("tid", h.tid);
            o.num("ppid", h.ppid);
            o.num("cgroup_id", h.cgroup_id);
            o.str("comm", &h.comm);
            self.ids = Some((h.pid, h.tid, h.ppid, h.cgroup_id, h.comm.clone()));
        }
        &self.ids_json
    }
}

impl Record<'_> {
    /// The line, without its newline, appended to `out`.
    pub(in crate::kernel) fn write_json(&self, out: &mut Vec<u8>, cache: &mut LineCache) {
        self.write_head(out, cache);
        if let Some((count, last_seq, last_ns)) = self.coalesced {
            write_run(out, count, last_seq, last_ns, cache);
        }
        self.write_tail(out, cache);
    }

    /// The line up to `ts_ns`: what a coalesced run's fields follow.
    pub(in crate::kernel) fn write_head(&self, out: &mut Vec<u8>, cache: &mut LineCache) {
        let mut o = Obj::open(out);
        o.str("schema", schema::KERNEL_EVENT);
        o.num("seq", self.seq);
        o.num("version", self.ev.header().version);
        o.ts("ts", self.ts_ns, &mut cache.ts);
        o.num("ts_ns", self.ts_ns);
    }

    /// The rest of the line after the head (and a run's fields).
    pub(in crate::kernel) fn write_tail(&self, out: &mut Vec<u8>, cache: &mut LineCache) {
        let mut o = Obj::continued(out);
        o.raw_fields(cache.ids(self.ev));
        write_kind(self.ev, &mut o);
        o.close();
    }
}

/// A coalesced line's fields: how many events it stands for, and the last one.
pub(in crate::kernel) fn write_run(
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

/// `kind`, then the kind's fields, some derived for the trace's reader (an open's access and
/// create/truncate from its flags, errno names, signal results, io_uring op names).
fn write_kind(ev: &KernelEvent, o: &mut Obj<'_>) {
    const O_CREAT: u32 = 0o100;
    const O_TRUNC: u32 = 0o1000;
    match ev {
        KernelEvent::Fork {
            child_pid,
            child_tid,
            is_thread,
            ..
        } => {
            o.str("kind", "process.fork");
            o.num("child_pid", *child_pid);
            o.num("child_tid", *child_tid);
            o.bool("is_thread", *is_thread);
        }
        KernelEvent::Exec {
            filename,
            argv,
            argv_truncated,
            uid,
            gid,
            cred_changed,
            ..
        } => {
            o.str("kind", "process.exec");
            o.str("filename", filename);
            o.strs("argv", argv);
            o.bool("argv_truncated", *argv_truncated);
            o.num("uid", *uid);
            o.num("gid", *gid);
            o.bool("cred_changed", *cred_changed);
        }
        KernelEvent::Exit {
            exit_code,
            signal,
            core_dumped,
            group_dead,
            ..
        } => {
            o.str("kind", "process.exit");
            o.opt_num("exit_code", *exit_code);
            o.opt_num("signal", *signal);
            o.bool("core_dumped", *core_dumped);
            o.bool("group_dead", *group_dead);
        }
        KernelEvent::Write { bytes, pages, .. } => {
            o.str("kind", "io.write");
            o.num("bytes", *bytes);
            o.num("pages", *pages);
        }
        KernelEvent::Signal {
            target_pid,
            target_tid,
            signal,
            result,
            group,
            ..
        } => {
            o.str("kind", "signal.generate");
            o.num("target_pid", *target_pid);
            o.num("target_tid", *target_tid);
            o.num("signal", *signal);
            o.str("result", signal_result(*result));
            o.bool("group", *group);
        }
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
        } => {
            o.str("kind", "file.open");
            o.str("path", path);
            o.opt_str("resolved_path", resolved_path.as_deref());
            o.bool("path_truncated", *path_truncated);
            o.num("dirfd", *dirfd);
            o.num("flags", *flags);
            o.num("mode", *mode);
            o.str("access", open_access(*flags));
            o.bool("create", flags & O_CREAT != 0);
            o.bool("truncate", flags & O_TRUNC != 0);
            o.opt_num("result", *result);
            o.opt_str("errno", result.and_then(errno_name).as_deref());
            o.str("via", via);
        }
        KernelEvent::Net {
            op,
            result,
            fd,
            endpoint,
            endpoint_source,
            observed_at,
            ..
        } => {
            o.str("kind", op.kind());
            o.opt_num("fd", *fd);
            o.opt_str("family", endpoint.as_ref().map(|e| e.family.as_str()));
            o.opt_str(
                "address",
                endpoint.as_ref().and_then(|e| e.address.as_deref()),
            );
            o.opt_num("port", endpoint.as_ref().and_then(|e| e.port));
            o.str("endpoint_source", endpoint_source);
            o.opt_num("result", *result);
            o.opt_str("errno", result.and_then(errno_name).as_deref());
            o.str("observed_at", observed_at);
        }
        KernelEvent::ExecFailed {
            result,
            path,
            resolved_path,
            ..
        } => {
            o.str("kind", "process.exec_failed");
            o.str("path", path);
            o.opt_str("resolved_path", resolved_path.as_deref());
            o.num("result", *result);
            o.opt_str("errno", errno_name(*result).as_deref());
        }
        KernelEvent::Oom {
            trigger_pid,
            trigger_comm,
            ..
        } => {
            o.str("kind", "oom.kill");
            o.num("trigger_pid", *trigger_pid);
            o.str("trigger_comm", trigger_comm);
        }
        KernelEvent::Unfollowed {
            kind: "syscall.compat",
            nr,
            result,
            ..
        } => {
            o.str("kind", "syscall.compat");
            o.opt_num("nr", *nr);
            o.opt_num("result", *result);
            o.opt_str("errno", result.and_then(errno_name).as_deref());
        }
        KernelEvent::Unfollowed { nr, .. } => {
            o.str("kind", "io_uring.submit");
            o.opt_num("opcode", *nr);
            o.opt_str("op", nr.and_then(uring_op));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::event::KernelEvent;
    use crate::kernel::event::{Endpoint, Header, NetOp};
    use crate::kernel::record::record;

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
        let schema: serde_json::Value = serde_json::from_str(include_str!(
            "../../../../specs/schema/kernel_event.v1.json"
        ))
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
