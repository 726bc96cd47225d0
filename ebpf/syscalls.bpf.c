// SPDX-License-Identifier: GPL-2.0
/* File opens and network calls of the watched cgroups, taken at syscall exit so the result (fd
 * or -errno) is known.
 *
 * One raw_tp/sys_exit program. At exit the syscall's arguments are still in pt_regs (x86-64:
 * di, si, dx, r10, r8, r9; only ax holds the return value), so no sys_enter program and no
 * per-task map are needed. The cost: while any syscall tracepoint is attached the kernel takes
 * the slow syscall-exit path for every task of the host. The program returns after one compare
 * for every syscall it does not follow, and after the cgroup lookup for the rest of the host;
 * `cargo xtask bench` measures what that costs a process outside the run.
 *
 * Only the native x86-64 syscall numbers are followed (32-bit compat calls are recorded as
 * unfollowed). Where the kernel allows fexit programs, fastpath.bpf.c takes the same events from
 * the syscall functions instead, and this program is not loaded. */
#include "vigil_common.h"

#define NR_OPEN 2
#define NR_CONNECT 42
#define NR_ACCEPT 43
#define NR_SENDTO 44
#define NR_SENDMSG 46
#define NR_BIND 49
#define NR_CREAT 85
#define NR_OPENAT 257
#define NR_ACCEPT4 288
#define NR_OPENAT2 437
#define NR_EXECVE 59
#define NR_EXECVEAT 322

/* thread_info.status while the task is in a 32-bit syscall (int 0x80 from a 64-bit process
 * included): its number and arguments are i386 ones and must not be read as x86-64 ones. */
#define TS_COMPAT 0x0002

static __always_inline int in_compat_syscall(void)
{
	struct task_struct *t = (struct task_struct *)bpf_get_current_task();
	return BPF_CORE_READ(t, thread_info.status) & TS_COMPAT;
}

/* The i386 numbers of the calls followed natively: open, creat, execve, socketcall, openat,
 * execveat, bind, connect, accept4, sendto, sendmsg, openat2. Made through int 0x80 they are
 * recorded as unfollowed (health says so), not decoded. */
static __always_inline int compat_followed(long nr)
{
	switch (nr) {
	case 5:
	case 8:
	case 11:
	case 102:
	case 295:
	case 358:
	case 361:
	case 362:
	case 364:
	case 369:
	case 370:
	case 437:
		return 1;
	}
	return 0;
}

static __always_inline void emit_unfollowed(__u32 what, __u32 nr, long ret, __u64 cg)
{
	struct vigil_unfollowed *e = reserve(sizeof(*e), VIGIL_UNFOLLOWED, cg);
	if (!e)
		return;
	fill_hdr(&e->h, VIGIL_UNFOLLOWED, cg, (struct task_struct *)bpf_get_current_task());
	e->ret = ret;
	e->what = what;
	e->nr = nr;
	bpf_ringbuf_submit(e, wakeup_flag());
}

/* User-space ABI structs, fixed by the syscall ABI: plain copies, so they cost no CO-RE
 * relocation (each relocated type costs vigil a scan of the kernel's BTF at load). */
struct abi_open_how {
	__u64 flags;
	__u64 mode;
	__u64 resolve;
};

struct abi_msghdr {
	void *msg_name;
	int msg_namelen;
};

struct abi_sockaddr_in {
	__u16 family;
	__be16 port;
	__be32 addr;
};

struct abi_sockaddr_in6 {
	__u16 family;
	__be16 port;
	__u32 flowinfo;
	__u8 addr[16];
};

#define AT_FDCWD -100
#define O_WRONLY 01
#define O_CREAT 0100
#define O_TRUNC 01000
#define EAGAIN 11
#define AF_INET 2
#define AF_INET6 10
#define S_IFMT 00170000
#define S_IFSOCK 0140000

/* Scratch space to build a directory path backwards, per CPU; twice the path length so that
 * every masked offset the verifier sees stays inside it. */
struct dir_scratch {
	char buf[2 * VIGIL_PATH_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct dir_scratch);
} dir_scratch SEC(".maps");

#define DIR_MAX_DEPTH 32

/* The absolute path of (dentry, vfsmount) as the current task sees it (its root ends the walk),
 * crossing mount points, into out[VIGIL_PATH_LEN]. Returns a vigil_dir_state. */
static __always_inline __u32 dir_path(struct dentry *dentry, struct vfsmount *vfsmnt, char *out)
{
	__u32 zero = 0;
	struct dir_scratch *s = bpf_map_lookup_elem(&dir_scratch, &zero);
	if (!s || !dentry || !vfsmnt)
		return VIGIL_DIR_UNAVAILABLE;
	struct task_struct *t = (struct task_struct *)bpf_get_current_task();
	struct dentry *root = BPF_CORE_READ(t, fs, root.dentry);
	struct vfsmount *root_mnt = BPF_CORE_READ(t, fs, root.mnt);
	struct mount *mnt = (void *)vfsmnt - bpf_core_field_offset(struct mount, mnt);
	long off = VIGIL_PATH_LEN; /* the path is built backwards and ends before buf[off] */
	__u32 state = VIGIL_DIR_TRUNCATED;
	for (int i = 0; i < DIR_MAX_DEPTH; i++) {
		if (dentry == root && vfsmnt == root_mnt) {
			state = VIGIL_DIR_OK;
			break;
		}
		struct dentry *parent = BPF_CORE_READ(dentry, d_parent);
		if (dentry == BPF_CORE_READ(vfsmnt, mnt_root) || dentry == parent) {
			struct mount *up = BPF_CORE_READ(mnt, mnt_parent);
			if (up == mnt) { /* the root of the mount tree */
				state = VIGIL_DIR_OK;
				break;
			}
			dentry = BPF_CORE_READ(mnt, mnt_mountpoint);
			mnt = up;
			vfsmnt = &up->mnt;
			continue;
		}
		__u32 len = BPF_CORE_READ(dentry, d_name.len);
		off -= (long)len + 1;
		if (off < 0)
			break;
		off &= VIGIL_PATH_LEN - 1;
		len &= VIGIL_PATH_LEN - 1;
		bpf_probe_read_kernel(&s->buf[off + 1], len, BPF_CORE_READ(dentry, d_name.name));
		s->buf[off] = '/';
		dentry = parent;
	}
	if (state != VIGIL_DIR_OK)
		return state;
	if (off == VIGIL_PATH_LEN) { /* the root itself */
		out[0] = '/';
		out[1] = 0;
		return state;
	}
	long n = VIGIL_PATH_LEN - off;
	if (n > VIGIL_PATH_LEN - 1)
		return VIGIL_DIR_TRUNCATED;
	n &= VIGIL_PATH_LEN - 1;
	bpf_probe_read_kernel(out, n, &s->buf[off & (VIGIL_PATH_LEN - 1)]);
	out[n] = 0;
	return state;
}

/* The open file behind `fd` of the current task, or NULL. */
static __always_inline struct file *fd_file(long fd)
{
	struct task_struct *t = (struct task_struct *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(t, files, fdt);
	if (fd < 0 || fd >= BPF_CORE_READ(fdt, max_fds))
		return 0;
	struct file **fds = BPF_CORE_READ(fdt, fd);
	struct file *f = 0;
	bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]);
	return f;
}

static __always_inline void resolve_dir(struct vigil_open *e);

/* An open, or a failed execve/execveat (a successful one is sched_process_exec): the same
 * layout, a path with the directory it is relative to. */
static __always_inline int emit_open(long nr, struct pt_regs *regs, long ret, __u64 cg)
{
	__u32 kind = (nr == NR_EXECVE || nr == NR_EXECVEAT) ? VIGIL_EXEC_FAILED : VIGIL_OPEN;
	struct vigil_open *e = reserve(sizeof(*e), kind, cg);
	if (!e)
		return 0;
	fill_hdr(&e->h, kind, cg, (struct task_struct *)bpf_get_current_task());
	e->ret = ret;
	e->mode = 0;
	const char *path;
	if (nr == NR_EXECVE) {
		e->dirfd = AT_FDCWD;
		e->flags = 0;
		path = (const char *)regs->di;
	} else if (nr == NR_EXECVEAT) {
		e->dirfd = (__s32)regs->di;
		e->flags = 0;
		path = (const char *)regs->si;
	} else if (nr == NR_OPENAT || nr == NR_OPENAT2) {
		e->dirfd = (__s32)regs->di;
		path = (const char *)regs->si;
		if (nr == NR_OPENAT) {
			e->flags = (__u32)regs->dx;
			e->mode = (__u32)regs->r10;
		} else {
			struct abi_open_how how = {};
			bpf_probe_read_user(&how, sizeof(how), (void *)regs->dx);
			e->flags = (__u32)how.flags;
			e->mode = (__u32)how.mode;
		}
	} else {
		e->dirfd = AT_FDCWD;
		path = (const char *)regs->di;
		if (nr == NR_OPEN) {
			e->flags = (__u32)regs->si;
			e->mode = (__u32)regs->dx;
		} else { /* creat(path, mode) */
			e->flags = O_CREAT | O_WRONLY | O_TRUNC;
			e->mode = (__u32)regs->si;
		}
	}
	long n = bpf_probe_read_user_str(e->path, sizeof(e->path), path);
	if (n < 0)
		e->path[0] = 0;
	e->path_truncated = n == VIGIL_PATH_LEN;
	e->via = VIGIL_VIA_SYSCALL;
	resolve_dir(e);
	bpf_ringbuf_submit(e, wakeup_flag());
	return 0;
}

/* The directory a relative path of `e` starts from (cwd or dirfd), walked in the kernel. */
static __always_inline void resolve_dir(struct vigil_open *e)
{
	e->dir[0] = 0;
	e->dir_state = VIGIL_DIR_NONE;
	if (e->path[0] != '/' && e->path[0] != 0) {
		/* One walk, whichever directory: the verifier checks the loop once, not per branch. */
		struct dentry *dentry = 0;
		struct vfsmount *mnt = 0;
		if (e->dirfd == AT_FDCWD) {
			struct task_struct *t = (struct task_struct *)bpf_get_current_task();
			dentry = BPF_CORE_READ(t, fs, pwd.dentry);
			mnt = BPF_CORE_READ(t, fs, pwd.mnt);
		} else {
			struct file *f = fd_file(e->dirfd);
			if (f) {
				dentry = BPF_CORE_READ(f, f_path.dentry);
				mnt = BPF_CORE_READ(f, f_path.mnt);
			}
		}
		e->dir_state = dir_path(dentry, mnt, e->dir);
	}
}

/* The socket behind `fd` of the current task, or NULL when fd is not a socket. */
static __always_inline struct sock *fd_sock(long fd)
{
	struct file *f = fd_file(fd);
	if (!f || (BPF_CORE_READ(f, f_inode, i_mode) & S_IFMT) != S_IFSOCK)
		return 0;
	struct socket *sock = BPF_CORE_READ(f, private_data);
	return BPF_CORE_READ(sock, sk);
}

/* The peer of a socket as a struct sockaddr (family only, for families without ports). */
static __always_inline void peer_addr(struct vigil_net *e, long fd)
{
	struct sock *sk = fd_sock(fd);
	if (!sk)
		return;
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);
	e->addr_source = VIGIL_ADDR_PEER;
	if (family == AF_INET) {
		struct abi_sockaddr_in *sin = (void *)e->addr;
		sin->family = family;
		sin->port = BPF_CORE_READ(sk, __sk_common.skc_dport);
		sin->addr = BPF_CORE_READ(sk, __sk_common.skc_daddr);
		e->addr_len = sizeof(*sin);
	} else if (family == AF_INET6) {
		struct abi_sockaddr_in6 *sin6 = (void *)e->addr;
		sin6->family = family;
		sin6->port = BPF_CORE_READ(sk, __sk_common.skc_dport);
		sin6->flowinfo = 0;
		BPF_CORE_READ_INTO(&sin6->addr, sk, __sk_common.skc_v6_daddr.in6_u.u6_addr8);
		e->addr_len = sizeof(*sin6);
	} else {
		__builtin_memcpy(e->addr, &family, sizeof(family));
		e->addr_len = sizeof(family);
	}
}

/* Copy a user sockaddr of `len` bytes (bounded by the event's buffer). */
static __always_inline void arg_addr(struct vigil_net *e, const void *addr, long len)
{
	if (!addr || len <= 0)
		return;
	if (len > VIGIL_SOCKADDR_LEN - 1)
		len = VIGIL_SOCKADDR_LEN - 1;
	len &= VIGIL_SOCKADDR_LEN - 1; /* for the verifier: the copy stays inside addr[] */
	if (bpf_probe_read_user(e->addr, len, addr) == 0) {
		e->addr_len = len;
		e->addr_source = VIGIL_ADDR_ARG;
	}
}

static __always_inline int emit_net(long nr, struct pt_regs *regs, long ret, __u64 cg)
{
	/* A non-blocking accept with nothing pending is a poll, not an event. */
	if ((nr == NR_ACCEPT || nr == NR_ACCEPT4) && ret == -EAGAIN)
		return 0;
	struct vigil_net *e = reserve(sizeof(*e), VIGIL_NET, cg);
	if (!e)
		return 0;
	fill_hdr(&e->h, VIGIL_NET, cg, (struct task_struct *)bpf_get_current_task());
	e->ret = ret;
	e->fd = (__s32)regs->di;
	e->addr_len = 0;
	e->addr_source = VIGIL_ADDR_NONE;
	e->at = VIGIL_AT_SYSCALL_EXIT;
	e->_pad = 0;
	__builtin_memset(e->addr, 0, sizeof(e->addr));
	switch (nr) {
	case NR_CONNECT:
		e->op = VIGIL_NET_CONNECT;
		arg_addr(e, (void *)regs->si, (long)(__u32)regs->dx);
		break;
	case NR_BIND:
		e->op = VIGIL_NET_BIND;
		arg_addr(e, (void *)regs->si, (long)(__u32)regs->dx);
		break;
	case NR_ACCEPT:
	case NR_ACCEPT4: {
		e->op = VIGIL_NET_ACCEPT;
		int len = 0;
		if (ret >= 0 && regs->si && regs->dx &&
		    bpf_probe_read_user(&len, sizeof(len), (void *)regs->dx) == 0)
			arg_addr(e, (void *)regs->si, len);
		if (ret >= 0 && e->addr_len == 0)
			peer_addr(e, ret);
		break;
	}
	case NR_SENDTO:
		e->op = VIGIL_NET_SEND;
		arg_addr(e, (void *)regs->r8, (long)(__u32)regs->r9);
		if (e->addr_len == 0)
			peer_addr(e, e->fd);
		break;
	default: { /* NR_SENDMSG */
		e->op = VIGIL_NET_SEND;
		struct abi_msghdr msg = {};
		if (bpf_probe_read_user(&msg, sizeof(msg), (void *)regs->si) == 0)
			arg_addr(e, msg.msg_name, msg.msg_namelen);
		if (e->addr_len == 0)
			peer_addr(e, e->fd);
		break;
	}
	}
	bpf_ringbuf_submit(e, wakeup_flag());
	return 0;
}

SEC("raw_tp/sys_exit")
int BPF_PROG(vigil_sys_exit, struct pt_regs *uregs, long ret)
{
	/* The syscall number first: one read and a compare is the whole cost for every other
	 * syscall. */
	long nr = BPF_CORE_READ(uregs, orig_ax);
	int open;
	switch (nr) {
	case NR_OPEN:
	case NR_CREAT:
	case NR_OPENAT:
	case NR_OPENAT2:
		open = 1;
		break;
	case NR_EXECVE:
	case NR_EXECVEAT:
		/* Only failures: a successful exec is reported by sched_process_exec (and its
		 * pt_regs no longer hold the arguments). */
		if (ret >= 0)
			return 0;
		open = 1;
		break;
	case NR_CONNECT:
	case NR_BIND:
	case NR_ACCEPT:
	case NR_ACCEPT4:
	case NR_SENDTO:
	case NR_SENDMSG:
		open = 0;
		break;
	default:
		/* Numbers x86-64 does not follow (fstat, lseek… share them): the 32-bit test before
		 * the cgroup lookup, as the cheaper of the two. */
		if (!compat_followed(nr) || !in_compat_syscall())
			return 0;
		open = -1;
	}
	__u64 cg = bpf_get_current_cgroup_id();
	if (!is_watched(cg))
		return 0;
	/* A followed x86-64 number may be a 32-bit call of something else (i386 42 is pipe). */
	if (open >= 0 && in_compat_syscall())
		open = -1;
	if (open < 0) {
		if (compat_followed(nr))
			emit_unfollowed(VIGIL_UNFOLLOWED_COMPAT, nr, ret, cg);
		return 0;
	}
	/* The arguments, copied once (raw_tp arguments are plain pointers, not BTF ones). */
	struct pt_regs regs;
	if (bpf_probe_read_kernel(&regs, sizeof(regs), uregs))
		return 0;
	if (open)
		return emit_open(nr, &regs, ret, cg);
	return emit_net(nr, &regs, ret, cg);
}
