//! Kernel events as vigil handles them: the decoder from ring-buffer bytes (the structs of
//! `abi`) to [`KernelEvent`], its redaction, and [`Observed`], the decoded, redacted and stamped
//! form every consumer of a drain shares.

use zerocopy::FromBytes;

use crate::evidence::redact::Redactor;

pub use super::abi::*;
pub use super::sockaddr::{Endpoint, decode_sockaddr};

/// The `kind` of the events of a kernel kind number, for loss reports.
pub fn kind_name(kind: u32) -> &'static str {
    match kind {
        KIND_FORK => "process.fork",
        KIND_EXEC => "process.exec",
        KIND_EXIT => "process.exit",
        KIND_SIGNAL => "signal.generate",
        KIND_WRITE => "io.write",
        KIND_OPEN => "file.open",
        KIND_NET => "network",
        KIND_OOM => "oom.kill",
        KIND_EXEC_FAILED => "process.exec_failed",
        KIND_UNFOLLOWED => "unfollowed",
        _ => "unknown",
    }
}

/// enum vigil_dir_state
const DIR_NONE: u32 = 0;
const DIR_OK: u32 = 1;

/// `dir` + `/` + a relative `path`, without the `./` a shell often puts in front.
fn join_dir(dir: &str, path: &str) -> String {
    let mut rel = path;
    while let Some(rest) = rel.strip_prefix("./") {
        rel = rest.trim_start_matches('/');
    }
    match (dir.ends_with('/'), rel) {
        (_, "." | "") => dir.to_string(),
        (true, _) => format!("{dir}{rel}"),
        (false, _) => format!("{dir}/{rel}"),
    }
}

/// One decoded kernel event (before seq, wall-clock time and redaction are added; the reader's
/// `Record` is its `vigil.kernel_event.v1` form).
#[derive(Debug, Clone, PartialEq)]
pub enum KernelEvent {
    Fork {
        hdr: Header,
        child_pid: u32,
        child_tid: u32,
        is_thread: bool,
    },
    Exec {
        hdr: Header,
        filename: String,
        argv: Vec<String>,
        argv_truncated: bool,
        uid: u32,
        gid: u32,
        /// The new image runs with other effective ids than real ones (setuid/setgid binary).
        cred_changed: bool,
    },
    Exit {
        hdr: Header,
        exit_code: Option<i32>,
        signal: Option<i32>,
        core_dumped: bool,
        group_dead: bool,
    },
    /// File-write progress since this process's last report: newly dirtied page-cache pages ×
    /// 4 KiB, a lower bound on bytes written (rate-limited in the kernel).
    Write { hdr: Header, bytes: u64, pages: u32 },
    /// `hdr` is the sender; `hdr.cgroup_id` the target's cgroup.
    Signal {
        hdr: Header,
        target_pid: u32,
        target_tid: u32,
        signal: i32,
        result: i32,
        group: bool,
    },
    /// An open at syscall exit, or an io_uring open at submission; `path` as passed,
    /// `resolved_path` absolute when the kernel could walk the directory a relative path
    /// starts from.
    Open {
        hdr: Header,
        /// The fd or -errno; None for an io_uring open (not known at submission).
        result: Option<i64>,
        /// `syscall` or `io_uring`.
        via: &'static str,
        dirfd: i32,
        flags: u32,
        mode: u32,
        path: String,
        path_truncated: bool,
        resolved_path: Option<String>,
    },
    Net {
        hdr: Header,
        op: NetOp,
        /// None when the program that saw the call could not see its result (a cgroup hook).
        result: Option<i64>,
        /// None when not known (a cgroup hook does not see the fd).
        fd: Option<i32>,
        endpoint: Option<Endpoint>,
        /// Where the endpoint came from: the call's argument or the socket's peer.
        endpoint_source: &'static str,
        /// Which program saw it: `syscall_exit`, `cgroup_hook` or `tcp_state`.
        observed_at: &'static str,
    },
    /// An execve/execveat that failed (`result` is -errno); `path` as passed.
    ExecFailed {
        hdr: Header,
        result: i64,
        path: String,
        resolved_path: Option<String>,
    },
    /// Something vigil saw happen but does not follow: a 32-bit syscall (`syscall.compat`,
    /// `nr` its i386 number) or an io_uring submission other than an open (`io_uring.submit`,
    /// `nr` the opcode, None when this kernel's tracepoint gives none vigil reads).
    Unfollowed {
        hdr: Header,
        kind: &'static str,
        nr: Option<u32>,
        result: Option<i64>,
    },
    /// The OOM killer chose `hdr.pid`; `trigger_pid` is the task whose allocation ran it.
    Oom {
        hdr: Header,
        trigger_pid: u32,
        trigger_comm: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetOp {
    Connect,
    Bind,
    Accept,
    Send,
}

impl NetOp {
    pub fn kind(self) -> &'static str {
        match self {
            NetOp::Connect => "network.connect",
            NetOp::Bind => "network.bind",
            NetOp::Accept => "network.accept",
            NetOp::Send => "network.send",
        }
    }
}

/// A decoded event and the `seq` it was written under in layers/kernel.ndjson (what policy
/// decisions cite as their evidence).
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub seq: u64,
    /// Wall-clock ns of the event: its boot-clock time through the sensor's one conversion.
    pub ts_ns: u64,
    /// Already redacted: consumers never see a secret value.
    pub event: KernelEvent,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Header {
    pub version: u32,
    pub boot_ns: u64,
    pub cgroup_id: u64,
    pub pid: u32,
    pub tid: u32,
    pub ppid: u32,
    pub comm: String,
}

#[cfg(test)]
impl Header {
    /// A process's header (thread id = pid) for unit tests.
    pub fn of(pid: u32, ppid: u32, comm: &str) -> Header {
        Header {
            version: 1,
            boot_ns: 0,
            cgroup_id: 1,
            pid,
            tid: pid,
            ppid,
            comm: comm.into(),
        }
    }
}

#[cfg(test)]
impl KernelEvent {
    /// A successful-or-not `openat(AT_FDCWD, path)` of process `pid`, for unit tests.
    pub fn open_of(pid: u32, path: &str, resolved: Option<&str>, result: i64) -> KernelEvent {
        KernelEvent::Open {
            hdr: Header::of(pid, 0, "cat"),
            result: Some(result),
            via: "syscall",
            dirfd: -100,
            flags: 0,
            mode: 0,
            path: path.into(),
            path_truncated: false,
            resolved_path: resolved.map(String::from),
        }
    }
}

impl KernelEvent {
    /// The record's `kind` in layers/kernel.ndjson.
    pub fn kind(&self) -> &'static str {
        match self {
            KernelEvent::Fork { .. } => kind_name(KIND_FORK),
            KernelEvent::Exec { .. } => kind_name(KIND_EXEC),
            KernelEvent::Exit { .. } => kind_name(KIND_EXIT),
            KernelEvent::Signal { .. } => kind_name(KIND_SIGNAL),
            KernelEvent::Write { .. } => kind_name(KIND_WRITE),
            KernelEvent::Open { .. } => kind_name(KIND_OPEN),
            KernelEvent::Net { op, .. } => op.kind(),
            KernelEvent::ExecFailed { .. } => kind_name(KIND_EXEC_FAILED),
            KernelEvent::Unfollowed { kind, .. } => kind,
            KernelEvent::Oom { .. } => kind_name(KIND_OOM),
        }
    }

    pub fn header(&self) -> &Header {
        match self {
            KernelEvent::Fork { hdr, .. }
            | KernelEvent::Exec { hdr, .. }
            | KernelEvent::Exit { hdr, .. }
            | KernelEvent::Signal { hdr, .. }
            | KernelEvent::Write { hdr, .. }
            | KernelEvent::Open { hdr, .. }
            | KernelEvent::Net { hdr, .. }
            | KernelEvent::ExecFailed { hdr, .. }
            | KernelEvent::Unfollowed { hdr, .. }
            | KernelEvent::Oom { hdr, .. } => hdr,
        }
    }
}

impl KernelEvent {
    /// Mask secret values in everything a process chose (program, argv, paths, socket
    /// addresses) — once, before any consumer or file sees the event.
    pub fn redact(&mut self, r: &Redactor) {
        // Whether the string held a secret (and was masked).
        let mask = |s: &mut String| {
            if let std::borrow::Cow::Owned(m) = r.mask_cow(s) {
                *s = m;
                return true;
            }
            false
        };
        match self {
            KernelEvent::Exec { filename, argv, .. } => {
                mask(filename);
                *argv = r.redact_argv(argv);
            }
            KernelEvent::Open {
                path,
                resolved_path,
                ..
            }
            | KernelEvent::ExecFailed {
                path,
                resolved_path,
                ..
            } => {
                // An absolute path is its own resolved path: scanned once.
                let same = resolved_path.as_deref() == Some(path.as_str());
                let masked = mask(path);
                match resolved_path {
                    Some(p) if same && masked => p.clone_from(path),
                    Some(_) if same => {}
                    Some(p) => {
                        mask(p);
                    }
                    None => {}
                }
            }
            KernelEvent::Net {
                endpoint:
                    Some(Endpoint {
                        address: Some(a), ..
                    }),
                ..
            } => {
                mask(a);
            }
            _ => {}
        }
    }

    /// The kernel kind number a decode error was about, for per-kind counts.
    pub fn error_kind(e: &DecodeError) -> &'static str {
        match e {
            DecodeError::Short(_) | DecodeError::Version(_) => "unknown",
            DecodeError::Kind(k) | DecodeError::Truncated { kind: k, .. } => kind_name(*k),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("event of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("event version {0}, this vigil reads version {EVENT_VERSION}")]
    Version(u32),
    #[error("unknown event kind {0}")]
    Kind(u32),
    #[error("kind {kind} needs {need} bytes, got {got}")]
    Truncated { kind: u32, need: usize, got: usize },
}

fn cstr(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    // Valid UTF-8 (nearly every name) takes std's word-at-a-time check; the rest is repaired.
    match std::str::from_utf8(&bytes[..end]) {
        Ok(s) => s.to_owned(),
        Err(_) => String::from_utf8_lossy(&bytes[..end]).into_owned(),
    }
}

/// Read a `T` from the front of `bytes` (which need not be aligned: the value is copied out).
fn read<T: FromBytes>(bytes: &[u8], kind: u32) -> Result<T, DecodeError> {
    T::read_from_prefix(bytes)
        .map(|(v, _)| v)
        .map_err(|_| DecodeError::Truncated {
            kind,
            need: std::mem::size_of::<T>(),
            got: bytes.len(),
        })
}

pub fn decode(bytes: &[u8]) -> Result<KernelEvent, DecodeError> {
    if bytes.len() < std::mem::size_of::<Hdr>() {
        return Err(DecodeError::Short(bytes.len()));
    }
    let h: Hdr = read(bytes, 0)?;
    if h.version != EVENT_VERSION {
        return Err(DecodeError::Version(h.version));
    }
    let hdr = Header {
        version: h.version,
        boot_ns: h.ts_ns,
        cgroup_id: h.cgroup_id,
        pid: h.pid,
        tid: h.tid,
        ppid: h.ppid,
        comm: cstr(&h.comm),
    };
    match h.kind {
        KIND_FORK => {
            let e: Fork = read(bytes, h.kind)?;
            Ok(KernelEvent::Fork {
                hdr,
                child_pid: e.child_pid,
                child_tid: e.child_tid,
                is_thread: e.is_thread != 0,
            })
        }
        KIND_EXEC => {
            let e: Exec = read(bytes, h.kind)?;
            let n = (e.argv_len as usize).min(ARGV_LEN);
            let argv = e.argv[..n]
                .split(|&b| b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            Ok(KernelEvent::Exec {
                hdr,
                filename: cstr(&e.filename),
                argv,
                argv_truncated: e.argv_truncated != 0,
                uid: e.uid,
                gid: e.gid,
                cred_changed: e.euid != e.uid || e.egid != e.gid,
            })
        }
        KIND_EXIT => {
            let e: Exit = read(bytes, h.kind)?;
            // A group exit (exit_group, fatal signal) records its status on the signal struct.
            let status = if e.group_exit_code != 0 {
                e.group_exit_code
            } else {
                e.exit_code
            };
            let sig = (status & 0x7f) as i32;
            let (exit_code, signal) = if sig == 0 {
                (Some(((status >> 8) & 0xff) as i32), None)
            } else {
                (None, Some(sig))
            };
            Ok(KernelEvent::Exit {
                hdr,
                exit_code,
                signal,
                core_dumped: status & 0x80 != 0,
                group_dead: e.group_dead != 0,
            })
        }
        KIND_SIGNAL => {
            let e: Signal = read(bytes, h.kind)?;
            Ok(KernelEvent::Signal {
                hdr,
                target_pid: e.target_pid,
                target_tid: e.target_tid,
                signal: e.sig,
                result: e.result,
                group: e.group != 0,
            })
        }
        KIND_WRITE => {
            let e: Write = read(bytes, h.kind)?;
            Ok(KernelEvent::Write {
                hdr,
                bytes: e.bytes,
                pages: e.pages,
            })
        }
        KIND_OPEN | KIND_EXEC_FAILED => {
            let e: Open = read(bytes, h.kind)?;
            let path = cstr(&e.path);
            let resolved_path = match e.dir_state {
                DIR_NONE if path.starts_with('/') => Some(path.clone()),
                DIR_OK => Some(join_dir(&cstr(&e.dir), &path)),
                _ => None,
            };
            if h.kind == KIND_EXEC_FAILED {
                return Ok(KernelEvent::ExecFailed {
                    hdr,
                    result: e.ret,
                    path,
                    resolved_path,
                });
            }
            let (via, result) = match e.via {
                0 => ("syscall", Some(e.ret)),
                1 => ("io_uring", None),
                _ => return Err(DecodeError::Kind(h.kind)),
            };
            Ok(KernelEvent::Open {
                hdr,
                result,
                via,
                dirfd: e.dirfd,
                flags: e.flags,
                mode: e.mode,
                path,
                path_truncated: e.path_truncated != 0,
                resolved_path,
            })
        }
        KIND_NET => {
            let e: Net = read(bytes, h.kind)?;
            let op = match e.op {
                1 => NetOp::Connect,
                2 => NetOp::Bind,
                3 => NetOp::Accept,
                4 => NetOp::Send,
                _ => return Err(DecodeError::Kind(h.kind)),
            };
            let n = (e.addr_len as usize).min(SOCKADDR_LEN);
            // enum vigil_net_at: what the program that took it could see.
            let (observed_at, result, fd) = match e.at {
                0 => ("syscall_exit", Some(e.ret), Some(e.fd)),
                1 => ("cgroup_hook", None, None),
                2 => ("tcp_state", Some(e.ret), None),
                3 => ("cgroup_hook", Some(0), None),
                _ => return Err(DecodeError::Kind(h.kind)),
            };
            Ok(KernelEvent::Net {
                hdr,
                op,
                result,
                fd,
                observed_at,
                endpoint: decode_sockaddr(&e.addr[..n]),
                endpoint_source: match e.addr_source {
                    1 => "argument",
                    2 => "peer",
                    _ => "none",
                },
            })
        }
        KIND_UNFOLLOWED => {
            let e: Unfollowed = read(bytes, h.kind)?;
            // enum vigil_unfollowed_what
            Ok(match e.what {
                1 => KernelEvent::Unfollowed {
                    hdr,
                    kind: "syscall.compat",
                    nr: Some(e.nr),
                    result: Some(e.ret),
                },
                2 => KernelEvent::Unfollowed {
                    hdr,
                    kind: "io_uring.submit",
                    nr: (e.nr != 255).then_some(e.nr),
                    result: None,
                },
                _ => return Err(DecodeError::Kind(h.kind)),
            })
        }
        KIND_OOM => {
            let e: Oom = read(bytes, h.kind)?;
            Ok(KernelEvent::Oom {
                hdr,
                trigger_pid: e.trigger_pid,
                trigger_comm: cstr(&e.trigger_comm),
            })
        }
        other => Err(DecodeError::Kind(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use zerocopy::{Immutable, IntoBytes};

    fn bytes<T: IntoBytes + Immutable>(v: &T) -> Vec<u8> {
        v.as_bytes().to_vec()
    }

    fn hdr(kind: u32) -> Hdr {
        let mut comm = [0u8; COMM_LEN];
        comm[..2].copy_from_slice(b"sh");
        Hdr {
            kind,
            version: EVENT_VERSION,
            ts_ns: 5,
            cgroup_id: 9,
            pid: 10,
            tid: 11,
            ppid: 1,
            _pad: 0,
            comm,
        }
    }

    #[test]
    fn an_absolute_path_and_its_resolved_copy_are_masked_alike_and_a_relative_one_apart() {
        let r = Redactor::new(&[("API_TOKEN".into(), "hunter22".into())]);
        let open = |path: &str, resolved: Option<&str>| KernelEvent::open_of(1, path, resolved, 3);
        let paths = |ev: &KernelEvent| match ev {
            KernelEvent::Open {
                path,
                resolved_path,
                ..
            } => (path.clone(), resolved_path.clone()),
            _ => unreachable!(),
        };
        for (path, resolved) in [
            ("/w/hunter22/x", Some("/w/hunter22/x")),
            ("hunter22/x", Some("/w/hunter22/x")),
            ("x", Some("/hunter22/x")),
            ("/w/x", Some("/w/x")),
        ] {
            let mut ev = open(path, resolved);
            ev.redact(&r);
            let (p, q) = paths(&ev);
            let q = q.expect("resolved");
            assert!(
                !p.contains("hunter22") && !q.contains("hunter22"),
                "{p} {q}"
            );
            assert_eq!(p, r.mask_str(path));
            assert_eq!(q, r.mask_str(resolved.expect("resolved")));
        }
    }

    #[test]
    fn decodes_exec_argv_and_exit_status() {
        let mut e = Exec {
            h: hdr(KIND_EXEC),
            uid: 0,
            gid: 0,
            euid: 0,
            egid: 0,
            argv_len: 0,
            argv_truncated: 0,
            filename: [0; PATH_LEN],
            argv: [0; ARGV_LEN],
        };
        e.filename[..7].copy_from_slice(b"/bin/sh");
        let args = b"sh\0-c\0exit 3\0";
        e.argv[..args.len()].copy_from_slice(args);
        e.argv_len = args.len() as u32;
        match decode(&bytes(&e)).expect("decode") {
            KernelEvent::Exec {
                argv,
                filename,
                hdr,
                ..
            } => {
                assert_eq!(argv, ["sh", "-c", "exit 3"]);
                assert_eq!(filename, "/bin/sh");
                assert_eq!(hdr.comm, "sh");
            }
            other => panic!("{other:?}"),
        }
        let x = Exit {
            h: hdr(KIND_EXIT),
            exit_code: 3 << 8,
            group_exit_code: 0,
            group_dead: 1,
            _pad: 0,
        };
        assert!(matches!(
            decode(&bytes(&x)),
            Ok(KernelEvent::Exit {
                exit_code: Some(3),
                signal: None,
                ..
            })
        ));
        let k = Exit {
            h: hdr(KIND_EXIT),
            exit_code: 9,
            group_exit_code: 9,
            group_dead: 1,
            _pad: 0,
        };
        assert!(matches!(
            decode(&bytes(&k)),
            Ok(KernelEvent::Exit {
                exit_code: None,
                signal: Some(9),
                ..
            })
        ));
    }

    #[test]
    fn joins_relative_paths_to_their_directory() {
        assert_eq!(join_dir("/etc", "hostname"), "/etc/hostname");
        assert_eq!(join_dir("/", "tmp/x"), "/tmp/x");
        assert_eq!(join_dir("/w", "./a/b"), "/w/a/b");
        assert_eq!(join_dir("/w", "."), "/w");
        assert_eq!(join_dir("/w", "../x"), "/w/../x");
    }

    #[test]
    fn refuses_short_unknown_and_other_versions() {
        assert_eq!(decode(&[0u8; 8]), Err(DecodeError::Short(8)));
        let mut h = hdr(77);
        assert_eq!(decode(&bytes(&h)), Err(DecodeError::Kind(77)));
        h.version = 2;
        assert_eq!(decode(&bytes(&h)), Err(DecodeError::Version(2)));
        assert!(matches!(
            decode(&bytes(&hdr(KIND_EXEC))),
            Err(DecodeError::Truncated { .. })
        ));
    }
}
