// SPDX-License-Identifier: GPL-2.0
/* The fast path of file and network evidence, where the kernel allows tracing programs: fexit
 * programs on the syscall functions themselves (__x64_sys_openat, …) instead of the sys_exit
 * tracepoint. No syscall tracepoint is attached, so a task of the host pays nothing for the
 * syscalls vigil does not follow (getppid, read, write…), and for the twelve it follows one
 * trampoline and the cgroup lookup.
 *
 * Each function's one argument is the task's saved user registers, the same pt_regs sys_exit
 * reads, so the decoding is the tracepoint's (emit_open, emit_net), and so are the events.
 * 32-bit calls enter through the __ia32_* functions, never the native ones: those of a followed
 * kind are recorded as unfollowed with their result, as on the tracepoint path.
 *
 * Why fexit and not kretprobes where fentry is refused: a kretprobe holds one of a bounded pool
 * of instances (max(10, 2 x CPUs) by default) for as long as the call blocks, and a return past
 * the pool is lost without an event — an accept or connect blocking in a few threads of the
 * host would blind vigil. Where fexit is refused the tracepoint path stays. */

/* A wrapper's argument (the user pt_regs) and return value, read through the helper rather
 * than as typed context: 5.10's BTF gives some wrappers (__x64_sys_execveat) a prototype whose
 * argument the verifier will not type ("invalid bpf_context access"), while every wrapper takes
 * the one pointer and returns long. */
struct wrapper_ctx {
	const struct pt_regs *regs;
	long ret;
};

/* Whether the call is a watched run's; if so, its argument and result in `w`. The cgroup
 * first: that lookup is all the rest of the host pays. */
static __always_inline int watched_call(__u64 *ctx, struct wrapper_ctx *w, __u64 *cg)
{
	*cg = bpf_get_current_cgroup_id();
	return is_watched(*cg) && bpf_probe_read_kernel(w, sizeof(*w), ctx) == 0;
}

static __always_inline int fast_exit(long nr, __u64 *ctx)
{
	struct wrapper_ctx w;
	__u64 cg;
	if (!watched_call(ctx, &w, &cg))
		return 0;
	const struct pt_regs *uregs = w.regs;
	long ret = w.ret;
	/* Only failed execs: a successful one is sched_process_exec. */
	if ((nr == NR_EXECVE || nr == NR_EXECVEAT) && ret >= 0)
		return 0;
	struct pt_regs regs;
	if (bpf_probe_read_kernel(&regs, sizeof(regs), uregs))
		return 0;
	if (nr == NR_OPEN || nr == NR_CREAT || nr == NR_OPENAT || nr == NR_OPENAT2 ||
	    nr == NR_EXECVE || nr == NR_EXECVEAT)
		return emit_open(nr, &regs, ret, cg);
	return emit_net(nr, &regs, ret, cg);
}

/* A native syscall function: `nr` is a constant, so each program keeps only its own branch. */
#define FAST_EXIT(name, nr)                                                        \
	SEC("fexit/__x64_sys_" #name)                                              \
	int vigil_fx_##name(__u64 *ctx)                                            \
	{                                                                          \
		return fast_exit(nr, ctx);                                         \
	}

FAST_EXIT(open, NR_OPEN)
FAST_EXIT(creat, NR_CREAT)
FAST_EXIT(openat, NR_OPENAT)
FAST_EXIT(openat2, NR_OPENAT2)
FAST_EXIT(execve, NR_EXECVE)
FAST_EXIT(execveat, NR_EXECVEAT)
FAST_EXIT(connect, NR_CONNECT)
FAST_EXIT(bind, NR_BIND)
FAST_EXIT(accept, NR_ACCEPT)
FAST_EXIT(accept4, NR_ACCEPT4)
FAST_EXIT(sendto, NR_SENDTO)
FAST_EXIT(sendmsg, NR_SENDMSG)

static __always_inline int compat_exit(__u32 nr, __u64 *ctx)
{
	struct wrapper_ctx w;
	__u64 cg;
	if (!watched_call(ctx, &w, &cg))
		return 0;
	emit_unfollowed(VIGIL_UNFOLLOWED_COMPAT, nr, w.ret, cg);
	return 0;
}

/* A 32-bit entry point of a followed kind (the i386 table's function: some are compat_sys_),
 * with its i386 number. */
#define COMPAT_EXIT(fn, nr)                                                        \
	SEC("fexit/" #fn)                                                          \
	int vigil_cx_##nr(__u64 *ctx)                                              \
	{                                                                          \
		return compat_exit(nr, ctx);                                       \
	}

COMPAT_EXIT(__ia32_compat_sys_open, 5)
COMPAT_EXIT(__ia32_sys_creat, 8)
COMPAT_EXIT(__ia32_compat_sys_execve, 11)
COMPAT_EXIT(__ia32_compat_sys_socketcall, 102)
COMPAT_EXIT(__ia32_compat_sys_openat, 295)
COMPAT_EXIT(__ia32_compat_sys_execveat, 358)
COMPAT_EXIT(__ia32_sys_bind, 361)
COMPAT_EXIT(__ia32_sys_connect, 362)
COMPAT_EXIT(__ia32_sys_accept4, 364)
COMPAT_EXIT(__ia32_sys_sendto, 369)
COMPAT_EXIT(__ia32_compat_sys_sendmsg, 370)
COMPAT_EXIT(__ia32_sys_openat2, 437)
