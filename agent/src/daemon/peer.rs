//! The other end of a daemon connection: who it is (SO_PEERCRED, its groups), the fds it passed
//! (SCM_RIGHTS), and whether it could itself write where it asks the daemon to.

use std::io::IoSliceMut;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
use nix::sys::stat::{FileStat, SFlag};

/// Fds one connection may pass in all; more is refused (and the kernel closes what did not fit).
pub const MAX_FDS: usize = 8;

/// Who connected.
#[derive(Debug, Clone)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
    /// Supplementary groups (from /proc/<pid>/status; empty when unreadable).
    pub groups: Vec<u32>,
}

impl Peer {
    pub fn of(stream: &tokio::net::UnixStream) -> std::io::Result<Peer> {
        let cred = stream.peer_cred()?;
        let pid = cred.pid();
        Ok(Peer {
            uid: cred.uid(),
            gid: cred.gid(),
            pid,
            groups: pid.map(groups_of).unwrap_or_default(),
        })
    }

    pub fn is_root(&self) -> bool {
        self.uid == 0
    }
}

fn groups_of(pid: i32) -> Vec<u32> {
    procfs::process::Process::new(pid)
        .and_then(|p| p.status())
        .map(|s| s.groups)
        .unwrap_or_default()
}

/// One non-blocking recvmsg: the bytes read (0 at EOF) and the fds that came with them.
/// `truncated` is set when the peer sent more fds than fit (the kernel closed the rest).
pub fn recv_with_fds(
    fd: RawFd,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> std::io::Result<(usize, bool)> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let msg = recvmsg::<()>(
        fd,
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
    )
    .map_err(std::io::Error::from)?;
    let truncated = msg.flags.contains(MsgFlags::MSG_CTRUNC);
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            if let ControlMessageOwned::ScmRights(raw) = c {
                for r in raw {
                    // SAFETY: SCM_RIGHTS installed these fds in this process just now; nothing
                    // else owns them.
                    fds.push(unsafe { OwnedFd::from_raw_fd(r) });
                }
            }
        }
    }
    Ok((msg.bytes, truncated))
}

/// Whether `peer` may create entries in the directory `st` describes, by its mode bits (as
/// access(2) would for that user; ACLs are not consulted, so an ACL-only grant is refused).
pub fn may_write_dir(st: &FileStat, peer: &Peer) -> bool {
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFDIR {
        return false;
    }
    if peer.is_root() {
        return true;
    }
    let mode = st.st_mode;
    let bits = if st.st_uid == peer.uid {
        mode >> 6
    } else if st.st_gid == peer.gid || peer.groups.contains(&st.st_gid) {
        mode >> 3
    } else {
        mode
    };
    // Creating an entry needs write and search permission on the directory.
    bits & 0o3 == 0o3
}

/// Whether `fd` is a directory.
pub fn is_dir(fd: &OwnedFd) -> bool {
    nix::sys::stat::fstat(fd)
        .is_ok_and(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(mode: u32, uid: u32, gid: u32) -> FileStat {
        // SAFETY: FileStat is a plain C struct; all-zero is a valid value.
        let mut st: FileStat = unsafe { std::mem::zeroed() };
        st.st_mode = SFlag::S_IFDIR.bits() | mode;
        st.st_uid = uid;
        st.st_gid = gid;
        st
    }

    fn peer(uid: u32, gid: u32, groups: &[u32]) -> Peer {
        Peer {
            uid,
            gid,
            pid: None,
            groups: groups.to_vec(),
        }
    }

    #[test]
    fn write_permission_follows_owner_group_other() {
        let alice = peer(1000, 1000, &[27]);
        assert!(may_write_dir(&dir(0o700, 1000, 1000), &alice));
        assert!(!may_write_dir(&dir(0o500, 1000, 1000), &alice));
        // Owner bits decide for the owner, even when group bits would allow.
        assert!(!may_write_dir(&dir(0o570, 1000, 1000), &alice));
        assert!(
            may_write_dir(&dir(0o770, 0, 27), &alice),
            "supplementary group"
        );
        assert!(!may_write_dir(&dir(0o755, 0, 0), &alice), "root's /etc");
        assert!(may_write_dir(&dir(0o1777, 0, 0), &alice), "/tmp");
        assert!(may_write_dir(&dir(0o755, 0, 0), &peer(0, 0, &[])));
        let mut file = dir(0o777, 1000, 1000);
        file.st_mode = SFlag::S_IFREG.bits() | 0o777;
        assert!(!may_write_dir(&file, &alice));
    }
}
