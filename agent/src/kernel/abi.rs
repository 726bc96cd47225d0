//! The kernel's side of the ABI as Rust sees it: `ebpf/include/vigil_event.h` mirrored as
//! `repr(C)` structs read with zerocopy (valid for any bytes, no unsafe), and the layout table
//! they are checked against. The object carries the C compiler's table (`vigil_layout`): every
//! field's offset and size, in declaration order; a test compares it with [`rust_layout`], and
//! another proves the Rust table tiles each struct, so no field is left unchecked.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

pub const EVENT_VERSION: u32 = 1;
pub const COMM_LEN: usize = 16;
pub const PATH_LEN: usize = 256;
pub const ARGV_LEN: usize = 512;
pub const SOCKADDR_LEN: usize = 128;

pub const KIND_FORK: u32 = 1;
pub const KIND_EXEC: u32 = 2;
pub const KIND_EXIT: u32 = 3;
pub const KIND_SIGNAL: u32 = 4;
pub const KIND_WRITE: u32 = 5;
pub const KIND_OPEN: u32 = 6;
pub const KIND_NET: u32 = 7;
pub const KIND_OOM: u32 = 8;
pub const KIND_EXEC_FAILED: u32 = 9;
pub const KIND_UNFOLLOWED: u32 = 10;
/// Size of the kernel's per-kind loss counters (`lost` map).
pub const KIND_MAX: u32 = 16;

#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
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
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct Fork {
    pub h: Hdr,
    pub child_pid: u32,
    pub child_tid: u32,
    pub is_thread: u32,
    pub _pad: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
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
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct Exit {
    pub h: Hdr,
    pub exit_code: u32,
    pub group_exit_code: u32,
    pub group_dead: u32,
    pub _pad: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
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
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct Write {
    pub h: Hdr,
    pub bytes: u64,
    pub pages: u32,
    pub _pad: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct Open {
    pub h: Hdr,
    pub ret: i64,
    pub dirfd: i32,
    pub flags: u32,
    pub mode: u32,
    pub path_truncated: u32,
    pub dir_state: u32,
    pub via: u32,
    pub path: [u8; PATH_LEN],
    pub dir: [u8; PATH_LEN],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct Net {
    pub h: Hdr,
    pub ret: i64,
    pub op: u32,
    pub fd: i32,
    pub addr_len: u32,
    pub addr_source: u32,
    pub at: u32,
    pub _pad: u32,
    pub addr: [u8; SOCKADDR_LEN],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct Unfollowed {
    pub h: Hdr,
    pub ret: i64,
    pub what: u32,
    pub nr: u32,
}

/// A `struct vigil_net` as a map value (the kernel's table of TCP connects awaiting their
/// outcome).
#[repr(transparent)]
#[derive(Debug, Clone, Copy)]
pub struct NetPod(pub Net);

// SAFETY: Net is repr(C), plain integers and byte arrays with explicit padding fields, valid
// for any bit pattern (it derives FromBytes), which is what aya::Pod requires.
unsafe impl aya::Pod for NetPod {}

#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct Oom {
    pub h: Hdr,
    pub trigger_pid: u32,
    pub _pad: u32,
    pub trigger_comm: [u8; COMM_LEN],
}

/// One field of an event struct: (offset, size).
fn field<S, F>(offset: usize, _: fn(&S) -> &F) -> [u32; 2] {
    let v = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    [v(offset), v(std::mem::size_of::<F>())]
}

/// `[size_of::<S>(), field count, (offset, size) of each field in declaration order]`.
macro_rules! layout_of {
    ($s:ident: $($f:ident),+ $(,)?) => {{
        let fields: Vec<[u32; 2]> =
            vec![$(field(std::mem::offset_of!($s, $f), |x: &$s| &x.$f)),+];
        let mut row = vec![
            u32::try_from(std::mem::size_of::<$s>()).unwrap_or(u32::MAX),
            u32::try_from(fields.len()).unwrap_or(u32::MAX),
        ];
        row.extend(fields.into_iter().flatten());
        row
    }};
}

/// The layout table as the Rust side sees it, in the order `vigil_layout` lists it: the event
/// version, then per struct its size, field count and every field's (offset, size).
pub fn rust_layout() -> Vec<u32> {
    let mut t = vec![EVENT_VERSION];
    t.extend(layout_of!(Hdr: kind, version, ts_ns, cgroup_id, pid, tid, ppid, _pad, comm));
    t.extend(layout_of!(Fork: h, child_pid, child_tid, is_thread, _pad));
    t.extend(layout_of!(Exec: h, uid, gid, euid, egid, argv_len, argv_truncated, filename, argv));
    t.extend(layout_of!(Exit: h, exit_code, group_exit_code, group_dead, _pad));
    t.extend(layout_of!(Signal: h, target_pid, target_tid, sig, result, group, _pad));
    t.extend(layout_of!(Write: h, bytes, pages, _pad));
    t.extend(
        layout_of!(Open: h, ret, dirfd, flags, mode, path_truncated, dir_state, via, path, dir),
    );
    t.extend(layout_of!(Net: h, ret, op, fd, addr_len, addr_source, at, _pad, addr));
    t.extend(layout_of!(Oom: h, trigger_pid, _pad, trigger_comm));
    t.extend(layout_of!(Unfollowed: h, ret, what, nr));
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every struct's fields, as the Rust table lists them, tile it exactly: each starts where
    /// the one before ended and the last ends at the struct's size. So no field is left out of
    /// the table the object's is compared with (a field swapped, resized or added on either
    /// side fails that comparison).
    #[test]
    fn the_layout_table_covers_every_byte_of_every_struct() {
        let t = rust_layout();
        assert_eq!(t[0], EVENT_VERSION);
        let mut i = 1;
        let mut structs = 0;
        while i < t.len() {
            let (size, n) = (t[i], t[i + 1] as usize);
            let mut end = 0;
            for k in 0..n {
                let (off, len) = (t[i + 2 + 2 * k], t[i + 3 + 2 * k]);
                assert_eq!(
                    off, end,
                    "struct #{structs}: field {k} at {off}, previous ended at {end}"
                );
                end = off + len;
            }
            assert_eq!(
                end, size,
                "struct #{structs}: fields end at {end}, size {size}"
            );
            i += 2 + 2 * n;
            structs += 1;
        }
        assert_eq!(structs, 10);
    }
}
