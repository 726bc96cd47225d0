//! The Rust view of `ebpf/include/vigil_event.h` and the decoder from ring-buffer bytes to
//! `vigil.kernel_event.v1` records. The structs are checked against the layout table the C
//! compiler wrote into the object (`vigil_layout`), so the two sides cannot drift silently.

use serde::Serialize;

pub const EVENT_VERSION: u32 = 1;
pub const COMM_LEN: usize = 16;
pub const PATH_LEN: usize = 256;
pub const ARGV_LEN: usize = 512;

pub const KIND_FORK: u32 = 1;
pub const KIND_EXEC: u32 = 2;
pub const KIND_EXIT: u32 = 3;
pub const KIND_SIGNAL: u32 = 4;
pub const KIND_WRITE: u32 = 5;

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Hdr {
    pub kind: u32,
    pub version: u32,
    pub ts_ns: u64,
    pub cgroup_id: u64,
    pub pid: u32,
    pub tid: u32,
    pub ppid: u32,
    pub _pad: u32,
    pub comm: [u8; COMM_LEN],
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Fork {
    pub h: Hdr,
    pub child_pid: u32,
    pub child_tid: u32,
    pub is_thread: u32,
    pub _pad: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Exec {
    pub h: Hdr,
    pub uid: u32,
    pub gid: u32,
    pub euid: u32,
    pub egid: u32,
    pub argv_len: u32,
    pub argv_truncated: u32,
    pub filename: [u8; PATH_LEN],
    pub argv: [u8; ARGV_LEN],
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Exit {
    pub h: Hdr,
    pub exit_code: u32,
    pub group_exit_code: u32,
    pub group_dead: u32,
    pub _pad: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Signal {
    pub h: Hdr,
    pub target_pid: u32,
    pub target_tid: u32,
    pub sig: i32,
    pub result: i32,
    pub group: u32,
    pub _pad: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Write {
    pub h: Hdr,
    pub bytes: u64,
    pub pages: u32,
    pub _pad: u32,
}

/// The layout table as the Rust side sees it, in the order `vigil_layout` lists it.
pub fn rust_layout() -> Vec<u32> {
    use std::mem::{offset_of, size_of};
    let v = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    vec![
        EVENT_VERSION,
        v(size_of::<Hdr>()),
        v(offset_of!(Hdr, ts_ns)),
        v(offset_of!(Hdr, cgroup_id)),
        v(offset_of!(Hdr, pid)),
        v(offset_of!(Hdr, comm)),
        v(size_of::<Fork>()),
        v(offset_of!(Fork, child_pid)),
        v(offset_of!(Fork, is_thread)),
        v(size_of::<Exec>()),
        v(offset_of!(Exec, uid)),
        v(offset_of!(Exec, argv_len)),
        v(offset_of!(Exec, filename)),
        v(offset_of!(Exec, argv)),
        v(size_of::<Exit>()),
        v(offset_of!(Exit, exit_code)),
        v(offset_of!(Exit, group_dead)),
        v(size_of::<Signal>()),
        v(offset_of!(Signal, target_pid)),
        v(offset_of!(Signal, sig)),
        v(offset_of!(Signal, group)),
        v(size_of::<Write>()),
        v(offset_of!(Write, bytes)),
        v(offset_of!(Write, pages)),
    ]
}

/// One decoded kernel event (before seq, wall-clock time and redaction are added).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind")]
pub enum KernelEvent {
    #[serde(rename = "process.fork")]
    Fork {
        hdr: Header,
        child_pid: u32,
        child_tid: u32,
        is_thread: bool,
    },
    #[serde(rename = "process.exec")]
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
    #[serde(rename = "process.exit")]
    Exit {
        hdr: Header,
        exit_code: Option<i32>,
        signal: Option<i32>,
        core_dumped: bool,
        group_dead: bool,
    },
    /// `hdr` is the sender; `hdr.cgroup_id` the target's cgroup.
    /// File-write progress since this process's last report: newly dirtied page-cache pages ×
    /// 4 KiB, a lower bound on bytes written (rate-limited in the kernel).
    #[serde(rename = "io.write")]
    Write { hdr: Header, bytes: u64, pages: u32 },
    #[serde(rename = "signal.generate")]
    Signal {
        hdr: Header,
        target_pid: u32,
        target_tid: u32,
        signal: i32,
        result: i32,
        group: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Header {
    pub version: u32,
    pub boot_ns: u64,
    pub cgroup_id: u64,
    pub pid: u32,
    pub tid: u32,
    pub ppid: u32,
    pub comm: String,
}

impl KernelEvent {
    pub fn header(&self) -> &Header {
        match self {
            KernelEvent::Fork { hdr, .. }
            | KernelEvent::Exec { hdr, .. }
            | KernelEvent::Exit { hdr, .. }
            | KernelEvent::Signal { hdr, .. }
            | KernelEvent::Write { hdr, .. } => hdr,
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
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// Read a `T` from the front of `bytes` (which need not be aligned).
fn read<T: Copy>(bytes: &[u8], kind: u32) -> Result<T, DecodeError> {
    let need = std::mem::size_of::<T>();
    if bytes.len() < need {
        return Err(DecodeError::Truncated {
            kind,
            need,
            got: bytes.len(),
        });
    }
    // SAFETY: the length was checked; T is a repr(C) struct of integers and byte arrays, valid
    // for any bit pattern; read_unaligned copes with the ring buffer's 8-byte alignment.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
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
        other => Err(DecodeError::Kind(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes<T>(v: &T) -> Vec<u8> {
        // SAFETY: viewing a plain repr(C) value as bytes for the test.
        unsafe {
            std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>())
        }
        .to_vec()
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
