/* The one event header shared by the kernel programs and vigil's decoder. The Rust view in
 * agent/src/kernel/event.rs is checked against this layout (as compiled into the object's BTF)
 * by a test; change both together and bump VIGIL_EVENT_VERSION. */
#ifndef VIGIL_EVENT_H
#define VIGIL_EVENT_H

#define VIGIL_EVENT_VERSION 1
#define VIGIL_COMM_LEN 16
#define VIGIL_PATH_LEN 256
#define VIGIL_ARGV_LEN 512
#define VIGIL_SOCKADDR_LEN 128

enum vigil_kind {
	VIGIL_FORK = 1,
	VIGIL_EXEC = 2,
	VIGIL_EXIT = 3,
	VIGIL_SIGNAL = 4,
	VIGIL_WRITE = 5,
	VIGIL_OPEN = 6,
	VIGIL_NET = 7,
	VIGIL_OOM = 8,
	VIGIL_EXEC_FAILED = 9, /* struct vigil_open: execve/execveat that returned an error */
	VIGIL_UNFOLLOWED = 10, /* struct vigil_unfollowed: seen happen, not followed */
	VIGIL_KIND_MAX = 16, /* size of the per-kind loss counters */
};

enum vigil_net_op {
	VIGIL_NET_CONNECT = 1,
	VIGIL_NET_BIND = 2,
	VIGIL_NET_ACCEPT = 3,
	VIGIL_NET_SEND = 4,
};

/* Where a vigil_net address came from. */
enum vigil_addr_source {
	VIGIL_ADDR_NONE = 0,
	VIGIL_ADDR_ARG = 1,  /* the syscall's sockaddr argument (after accept: what it returned) */
	VIGIL_ADDR_PEER = 2, /* the socket's peer (connected send, accept without an address) */
};

struct vigil_hdr {
	__u32 kind;
	__u32 version;
	__u64 ts_ns;     /* bpf_ktime_get_boot_ns() */
	__u64 cgroup_id;
	__u32 pid;       /* tgid */
	__u32 tid;
	__u32 ppid;      /* real parent's tgid */
	__u32 _pad;
	char comm[VIGIL_COMM_LEN];
};

struct vigil_fork {
	struct vigil_hdr h;
	__u32 child_pid;
	__u32 child_tid;
	__u32 is_thread;
	__u32 _pad;
};

struct vigil_exec {
	struct vigil_hdr h;
	__u32 uid;
	__u32 gid;
	__u32 euid;
	__u32 egid;
	__u32 argv_len;       /* bytes copied into argv (NUL-separated) */
	__u32 argv_truncated; /* the argument area was longer than VIGIL_ARGV_LEN */
	char filename[VIGIL_PATH_LEN];
	char argv[VIGIL_ARGV_LEN];
};

struct vigil_exit {
	struct vigil_hdr h;
	__u32 exit_code;       /* task->exit_code: waitpid-style status of this thread */
	__u32 group_exit_code; /* signal->group_exit_code, for group exits */
	__u32 group_dead;      /* the last thread of the process exited */
	__u32 _pad;
};

/* A signal generated for a task of a watched cgroup. The header describes the sender (the
 * current task, which may be outside the run: vigil's watchdog, an operator's kill); its
 * cgroup_id is the *target's* cgroup. */
struct vigil_signal {
	struct vigil_hdr h;
	__u32 target_pid;
	__u32 target_tid;
	__s32 sig;
	__s32 result;   /* TRACE_SIGNAL_DELIVERED (0), IGNORED, ALREADY_PENDING, … */
	__u32 group;    /* sent to the whole thread group */
	__u32 _pad;
};

/* File-write progress of a process since its last report: page-cache pages it newly dirtied,
 * counted as 4 KiB each (a lower bound on bytes written); reported at most every
 * VIGIL_WRITE_REPORT_NS per process. Progress evidence for liveness. */
struct vigil_write {
	struct vigil_hdr h;
	__u64 bytes;
	__u32 pages;
	__u32 _pad;
};

/* What vigil_open.dir holds. */
enum vigil_dir_state {
	VIGIL_DIR_NONE = 0,        /* the path is absolute: no directory needed */
	VIGIL_DIR_OK = 1,          /* dir is the absolute path the relative path starts from */
	VIGIL_DIR_TRUNCATED = 2,   /* dir was deeper or longer than the walk allows */
	VIGIL_DIR_UNAVAILABLE = 3, /* dirfd was not an open file */
};

/* An open(2)/openat(2)/openat2(2)/creat(2) at syscall exit. The path is the argument as the
 * process passed it; a relative one comes with the directory it is relative to (the cwd or
 * dirfd), walked from the dentry in the kernel at the time of the call. */
struct vigil_open {
	struct vigil_hdr h;
	__s64 ret;            /* the fd, or -errno */
	__s32 dirfd;          /* AT_FDCWD (-100) for open/creat */
	__u32 flags;          /* O_* flags (creat: O_CREAT|O_WRONLY|O_TRUNC) */
	__u32 mode;
	__u32 path_truncated; /* the path was VIGIL_PATH_LEN bytes or longer */
	__u32 dir_state;      /* enum vigil_dir_state */
	__u32 via;            /* enum vigil_open_via */
	char path[VIGIL_PATH_LEN];
	char dir[VIGIL_PATH_LEN];
};

/* How an open was made. */
enum vigil_open_via {
	VIGIL_VIA_SYSCALL = 0,  /* a syscall, taken at its exit: ret is its result */
	VIGIL_VIA_IO_URING = 1, /* an io_uring IORING_OP_OPENAT/OPENAT2, taken at submission: ret is
				 * not known (0) */
};

/* What vigil sees happen but does not follow, so that health can say so. */
enum vigil_unfollowed_what {
	VIGIL_UNFOLLOWED_COMPAT = 1, /* a 32-bit syscall (int 0x80) of a followed kind: nr is its
				      * i386 number, ret its result; arguments not read */
	VIGIL_UNFOLLOWED_URING = 2,  /* an io_uring submission other than an open: nr is the
				      * opcode (255: this kernel's tracepoint gives none vigil can
				      * read), ret not known (0) */
};

struct vigil_unfollowed {
	struct vigil_hdr h;
	__s64 ret;
	__u32 what; /* enum vigil_unfollowed_what */
	__u32 nr;
};

/* Where a vigil_net was taken, which says what `ret` and `fd` mean. */
enum vigil_net_at {
	VIGIL_AT_SYSCALL_EXIT = 0, /* sys_exit: ret is the syscall's result, fd its socket */
	VIGIL_AT_CGROUP_HOOK = 1,  /* a cgroup sock_addr/sock hook, before or inside the call: ret
				    * is not known (0), fd neither (-1); ppid and comm are 0 (the hook
				    * cannot read the task), vigil fills them from its process tree */
	VIGIL_AT_TCP_STATE = 2,    /* a TCP connect's outcome (sock:inet_sock_set_state): ret is 0
				    * (established) or -sk_err (refused, timed out, unreachable) */
	VIGIL_AT_POST_BIND = 3,    /* a cgroup post_bind hook, which runs only once a bind
				    * succeeded: ret is 0, fd -1, ppid and comm 0 as above */
};

/* connect/bind/accept/accept4/sendto/sendmsg. addr is a struct sockaddr (family first, ports
 * and addresses in network order) of addr_len bytes. */
struct vigil_net {
	struct vigil_hdr h;
	__s64 ret;            /* 0, a byte count or an fd; or -errno (see `at`) */
	__u32 op;             /* enum vigil_net_op */
	__s32 fd;             /* the socket the call was made on */
	__u32 addr_len;
	__u32 addr_source;    /* enum vigil_addr_source */
	__u32 at;             /* enum vigil_net_at */
	__u32 _pad;
	__u8 addr[VIGIL_SOCKADDR_LEN];
};

/* The OOM killer chose a victim in a watched cgroup. The header describes the victim; the
 * trigger is the task whose allocation ran the OOM killer (often the victim itself). */
struct vigil_oom {
	struct vigil_hdr h;
	__u32 trigger_pid;
	__u32 _pad;
	char trigger_comm[VIGIL_COMM_LEN];
};

#endif
