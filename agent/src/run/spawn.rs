//! Spawning the child: pipes for stdout/stderr, its own process group, and a pre_exec hook that
//! (in this order) joins the run's cgroup, drops to `--user`, and arms PR_SET_PDEATHSIG. The
//! order matters: cgroup.procs is root's to write, and a credential change clears the
//! parent-death signal, so it is armed last.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use super::spec::{RunSpec, UserSpec};

/// errno values the pre_exec hook reports for its own failures. execve never returns these, so
/// the parent can tell "vigil could not set the child up" (exit 125) from "the command could not
/// be executed" (126/127).
const ERR_CGROUP_JOIN: i32 = libc::EL2HLT;
const ERR_DROP_PRIVS: i32 = libc::EL3HLT;
const ERR_PARENT_GONE: i32 = libc::EL3RST;

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("{0}: command not found")]
    NotFound(String),
    #[error("{0}: not executable: {1}")]
    NotExecutable(String, io::Error),
    #[error("could not place the child in the run cgroup")]
    CgroupJoin,
    #[error("could not drop the child's privileges to --user")]
    DropPrivileges,
    #[error("vigil's parent process went away while spawning")]
    ParentGone,
    #[error("spawning {0}: {1}")]
    Other(String, io::Error),
}

pub struct Spawned {
    pub child: tokio::process::Child,
    pub pid: u32,
    pub stdout: File,
    pub stderr: File,
}

/// A pipe with a larger buffer, so a fast writer is not throttled by 64 KiB round trips.
fn big_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    // SAFETY: F_SETPIPE_SZ on a pipe fd we own; failure (limit) is harmless and ignored.
    unsafe {
        libc::fcntl(r.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20);
    }
    Ok((r, w))
}

pub fn spawn(spec: &RunSpec, procs_file: &Path) -> Result<Spawned, SpawnError> {
    let name = spec.program.to_string_lossy().into_owned();
    let other = |e: io::Error| SpawnError::Other(name.clone(), e);
    let (out_r, out_w) = big_pipe().map_err(other)?;
    let (err_r, err_w) = big_pipe().map_err(other)?;
    let procs =
        CString::new(procs_file.as_os_str().as_bytes()).map_err(|e| other(io::Error::other(e)))?;
    let user = spec.user;
    let parent_pid = std::process::id();

    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .stdin(child_stdin())
        .stdout(Stdio::from(out_w))
        .stderr(Stdio::from(err_w))
        .process_group(0);
    // SAFETY: the hook runs in the forked child before exec and only makes raw syscalls on
    // memory prepared before the fork (no allocation, no locks): async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            join_cgroup(&procs)?;
            if let Some(u) = user {
                drop_privileges(u)?;
            }
            arm_parent_death_signal(parent_pid)
        });
    }
    let child = tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| classify(&name, e))?;
    let pid = child
        .id()
        .ok_or_else(|| other(io::Error::other("child exited before its pid was read")))?;
    Ok(Spawned {
        child,
        pid,
        stdout: File::from(out_r),
        stderr: File::from(err_r),
    })
}

/// stdin: vigil's own, unless it is a terminal — the child runs in its own process group, so
/// reading the terminal would stop it with SIGTTIN; it gets /dev/null instead (as nextest does).
fn child_stdin() -> Stdio {
    if nix::unistd::isatty(std::io::stdin()).unwrap_or(false) {
        Stdio::null()
    } else {
        Stdio::inherit()
    }
}

fn classify(name: &str, e: io::Error) -> SpawnError {
    match e.raw_os_error() {
        Some(ERR_CGROUP_JOIN) => SpawnError::CgroupJoin,
        Some(ERR_DROP_PRIVS) => SpawnError::DropPrivileges,
        Some(ERR_PARENT_GONE) => SpawnError::ParentGone,
        Some(libc::ENOENT) => SpawnError::NotFound(name.to_string()),
        Some(libc::EACCES | libc::ENOEXEC | libc::EISDIR | libc::EPERM | libc::ENOTDIR) => {
            SpawnError::NotExecutable(name.to_string(), e)
        }
        _ => SpawnError::Other(name.to_string(), e),
    }
}

fn fail(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

/// Write "0" (this process) to the run cgroup's cgroup.procs.
fn join_cgroup(procs: &CString) -> io::Result<()> {
    // SAFETY: open/write/close on a NUL-terminated path prepared before fork.
    unsafe {
        let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(fail(ERR_CGROUP_JOIN));
        }
        let ok = libc::write(fd, c"0".as_ptr().cast(), 1) == 1;
        libc::close(fd);
        if !ok {
            return Err(fail(ERR_CGROUP_JOIN));
        }
    }
    Ok(())
}

/// setgroups/setresgid/setresuid to an unprivileged user. A uid change from root clears the
/// permitted, effective and ambient capability sets; no_new_privs then keeps setuid binaries
/// and file capabilities from handing any back.
fn drop_privileges(u: UserSpec) -> io::Result<()> {
    let gid = u.gid as libc::gid_t;
    // SAFETY: plain credential syscalls on values copied before fork.
    unsafe {
        if libc::setgroups(1, &gid) != 0
            || libc::setresgid(gid, gid, gid) != 0
            || libc::setresuid(u.uid, u.uid, u.uid) != 0
            || libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
        {
            return Err(fail(ERR_DROP_PRIVS));
        }
    }
    Ok(())
}

/// SIGKILL the child if vigil dies; if vigil already died before this ran, give up.
fn arm_parent_death_signal(parent: u32) -> io::Result<()> {
    // SAFETY: prctl and getppid are async-signal-safe syscalls.
    unsafe {
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
            return Err(fail(ERR_PARENT_GONE));
        }
        if libc::getppid() as u32 != parent {
            return Err(fail(ERR_PARENT_GONE));
        }
    }
    Ok(())
}
