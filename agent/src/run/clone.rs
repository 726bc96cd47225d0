//! `clone3` for the child, as posix_spawn does it: `CLONE_VM | CLONE_VFORK`, the child on a
//! stack of its own. The child shares vigil's memory until it execs, so the kernel copies no
//! page tables — a fork of a daemon with 30 MiB resident copies thousands of PTEs, tears them
//! down again at the child's exec, and then takes a copy-on-write fault on every page the
//! daemon writes next (perf: a quarter of the daemon's CPU per `vigil run -- true`). The
//! calling thread sleeps until the child has exec'd or exited; the rest of vigil runs on.
//!
//! The price is what the child may do: it runs on vigil's memory with vigil's thread pointer,
//! so between clone and exec it makes only raw syscalls on memory prepared before the clone,
//! changes no global (no `environ`, no allocator), and never returns (`run/spawn.rs`).

use std::ffi::c_void;
use std::io;

/// `struct clone_args` of linux/sched.h (CLONE_ARGS_SIZE_VER2).
#[repr(C)]
#[derive(Default)]
pub struct CloneArgs {
    pub flags: u64,
    pub pidfd: u64,
    pub child_tid: u64,
    pub parent_tid: u64,
    pub exit_signal: u64,
    pub stack: u64,
    pub stack_size: u64,
    pub tls: u64,
    pub set_tid: u64,
    pub set_tid_size: u64,
    pub cgroup: u64,
}

/// linux/sched.h: place the child in the cgroup given by `CloneArgs::cgroup` (Linux ≥ 5.7).
pub const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// The child's stack between clone and exec: an anonymous mapping with a guard page below it,
/// so an overflow faults instead of writing over vigil's heap.
pub struct ChildStack {
    base: *mut c_void,
    len: usize,
}

/// Enough for the child's few frames and the exec path search, which builds each candidate
/// path on the stack (glibc's posix_spawn takes about the same).
const STACK_BYTES: usize = 64 * 1024;
const GUARD_BYTES: usize = 4096;

impl ChildStack {
    pub fn new() -> io::Result<Self> {
        let len = STACK_BYTES + GUARD_BYTES;
        // SAFETY: a fresh private anonymous mapping; nothing else refers to it.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let stack = ChildStack { base, len };
        // SAFETY: the lowest page of the mapping just made; stacks grow down towards it.
        if unsafe { libc::mprotect(base, GUARD_BYTES, libc::PROT_NONE) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stack)
    }

    /// Lowest usable address and size, as `clone_args.stack`/`stack_size` want them (the
    /// kernel starts the child at `stack + stack_size`, which stays 16-byte aligned).
    fn usable(&self) -> (u64, u64) {
        (self.base as u64 + GUARD_BYTES as u64, STACK_BYTES as u64)
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: our own mapping; the child that used it has exec'd or exited (CLONE_VFORK).
        unsafe { libc::munmap(self.base, self.len) };
    }
}

/// The child's entry: called on the child's stack with the argument given; never returns.
pub type ChildEntry = unsafe extern "C" fn(*mut c_void) -> !;

/// Clone a child that shares this memory and runs `entry(arg)` on `stack`; returns in the
/// parent once the child has exec'd or exited, with its pid.
///
/// # Safety
/// `entry` must never return and, until it execs or `_exit`s, must only make async-signal-safe
/// raw syscalls on memory prepared before the call (see the module comment). `args` must not
/// carry CLONE_SETTLS/CLONE_THREAD/CLONE_SIGHAND. All signals should be blocked in the calling
/// thread, so no handler of vigil's runs on the child's stack before the child resets them.
pub unsafe fn clone_vfork(
    args: &mut CloneArgs,
    stack: &ChildStack,
    entry: ChildEntry,
    arg: *mut c_void,
) -> io::Result<libc::pid_t> {
    args.flags |= (libc::CLONE_VM | libc::CLONE_VFORK) as u64;
    (args.stack, args.stack_size) = stack.usable();
    let args: *const CloneArgs = args;
    let ret: i64;
    // SAFETY: the raw clone3 syscall. In the child (rax = 0) the kernel has switched rsp to the
    // top of `stack`; the child clears the frame pointer and calls `entry(arg)`, which never
    // returns (ud2 guards it). r12 and r13 survive the syscall, so they carry entry and arg
    // across. The parent falls through to label 2 with the pid or -errno in rax; rcx and r11
    // are clobbered by `syscall` itself.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "xor ebp, ebp",
            "mov rdi, r13",
            "call r12",
            "ud2",
            "2:",
            inlateout("rax") libc::SYS_clone3 => ret,
            in("rdi") args,
            in("rsi") std::mem::size_of::<CloneArgs>(),
            in("r12") entry as usize,
            in("r13") arg,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        // Elsewhere a plain fork-like clone3: the child continues on a copy of this stack.
        // SAFETY: as for a fork; the child branch never returns.
        unsafe {
            let mut a = std::ptr::read(args);
            a.flags &= !((libc::CLONE_VM | libc::CLONE_VFORK) as u64);
            (a.stack, a.stack_size) = (0, 0);
            ret = libc::syscall(
                libc::SYS_clone3,
                &raw const a,
                std::mem::size_of::<CloneArgs>(),
            );
            if ret == 0 {
                entry(arg)
            }
            if ret < 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    match ret {
        r if r < 0 => Err(io::Error::from_raw_os_error(-r as i32)),
        pid => Ok(pid as libc::pid_t),
    }
}
