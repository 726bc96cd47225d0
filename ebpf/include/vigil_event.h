/* The one event header shared by the kernel programs and vigil's decoder. The Rust view in
 * agent/src/kernel/event.rs is checked against this layout (as compiled into the object's BTF)
 * by a test; change both together and bump VIGIL_EVENT_VERSION. */
#ifndef VIGIL_EVENT_H
#define VIGIL_EVENT_H

#define VIGIL_EVENT_VERSION 1
#define VIGIL_COMM_LEN 16
#define VIGIL_PATH_LEN 256
#define VIGIL_ARGV_LEN 512

enum vigil_kind {
	VIGIL_FORK = 1,
	VIGIL_EXEC = 2,
	VIGIL_EXIT = 3,
	VIGIL_SIGNAL = 4,
	VIGIL_WRITE = 5,
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

#endif
