// SPDX-License-Identifier: GPL-2.0
/* Process lifecycle of the watched cgroups: fork/clone, exec, exit, signals, write progress and
 * cgroups created beneath a watched one.
 *
 * raw_tp programs, attached by tracepoint name — no tracefs needed (these hosts do not mount
 * it) and, unlike tp_btf, no second parse of the kernel's BTF in vigil just to find attach ids
 * (that parse cost ~60 ms and ~13 MiB per run). Arguments are read with CO-RE
 * (BPF_CORE_READ). Every program checks the cgroup filter first: the miss path (one hash
 * lookup) is all the rest of the host pays. */
#include "vigil_common.h"

SEC("raw_tp/sched_process_fork")
int BPF_PROG(vigil_fork, struct task_struct *parent, struct task_struct *child)
{
	__u64 cg = bpf_get_current_cgroup_id();
	if (!is_watched(cg))
		return 0;
	struct vigil_fork *e = reserve(sizeof(*e), VIGIL_FORK, cg);
	if (!e)
		return 0;
	fill_hdr(&e->h, VIGIL_FORK, cg, parent);
	e->child_pid = BPF_CORE_READ(child, tgid);
	e->child_tid = BPF_CORE_READ(child, pid);
	e->is_thread = e->child_pid != e->child_tid;
	e->_pad = 0;
	bpf_ringbuf_submit(e, wakeup_flag());
	return 0;
}

SEC("raw_tp/sched_process_exec")
int BPF_PROG(vigil_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	__u64 cg = bpf_get_current_cgroup_id();
	if (!is_watched(cg))
		return 0;
	struct vigil_exec *e = reserve(sizeof(*e), VIGIL_EXEC, cg);
	if (!e)
		return 0;
	fill_hdr(&e->h, VIGIL_EXEC, cg, p);
	e->uid = BPF_CORE_READ(p, cred, uid.val);
	e->gid = BPF_CORE_READ(p, cred, gid.val);
	e->euid = BPF_CORE_READ(p, cred, euid.val);
	e->egid = BPF_CORE_READ(p, cred, egid.val);
	bpf_probe_read_kernel_str(e->filename, sizeof(e->filename), BPF_CORE_READ(bprm, filename));
	unsigned long start = BPF_CORE_READ(p, mm, arg_start);
	unsigned long end = BPF_CORE_READ(p, mm, arg_end);
	unsigned long len = end > start ? end - start : 0;
	/* The mask is what the verifier needs to see the copy stays inside argv[]. */
	e->argv_truncated = len > VIGIL_ARGV_LEN - 1;
	if (len > VIGIL_ARGV_LEN - 1)
		len = VIGIL_ARGV_LEN - 1;
	len &= VIGIL_ARGV_LEN - 1;
	e->argv_len = 0;
	if (len > 0 && bpf_probe_read_user(e->argv, len, (void *)start) == 0)
		e->argv_len = len;
	bpf_ringbuf_submit(e, wakeup_flag());
	return 0;
}

SEC("raw_tp/sched_process_exit")
int BPF_PROG(vigil_exit, struct task_struct *p)
{
	__u64 cg = bpf_get_current_cgroup_id();
	if (!is_watched(cg))
		return 0;
	struct vigil_exit *e = reserve(sizeof(*e), VIGIL_EXIT, cg);
	if (!e)
		return 0;
	fill_hdr(&e->h, VIGIL_EXIT, cg, p);
	e->exit_code = BPF_CORE_READ(p, exit_code);
	e->group_exit_code = BPF_CORE_READ(p, signal, group_exit_code);
	e->group_dead = BPF_CORE_READ(p, signal, live.counter) == 0;
	e->_pad = 0;
	bpf_ringbuf_submit(e, wakeup_flag());
	return 0;
}

/* Signals sent to the run's processes, from anywhere: the filter is the target's cgroup. SIGCHLD
 * is skipped: every exit raises one and the exit event already says it. */
SEC("raw_tp/signal_generate")
int BPF_PROG(vigil_signal, int sig, struct kernel_siginfo *info, struct task_struct *task, int group, int result)
{
	if (sig == 17 /* SIGCHLD */)
		return 0;
	__u64 cg = task_cgroup_id(task);
	if (!is_watched(cg))
		return 0;
	struct vigil_signal *e = reserve(sizeof(*e), VIGIL_SIGNAL, cg);
	if (!e)
		return 0;
	fill_hdr(&e->h, VIGIL_SIGNAL, cg, (struct task_struct *)bpf_get_current_task());
	e->target_pid = BPF_CORE_READ(task, tgid);
	e->target_tid = BPF_CORE_READ(task, pid);
	e->sig = sig;
	e->result = result;
	e->group = group;
	e->_pad = 0;
	bpf_ringbuf_submit(e, wakeup_flag());
	return 0;
}

/* Write progress: a process silent on stdout but busy writing files is working, not stalled. */
#define VIGIL_WRITE_REPORT_NS (250ULL * 1000 * 1000)

struct write_acc {
	__u64 bytes;
	__u64 last_report_ns;
	__u32 pages;
	__u32 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, __u32);
	__type(value, struct write_acc);
} write_acc SEC(".maps");

/* Hooked where a clean page-cache page becomes dirty — not at sys_exit: attaching there would
 * put every task of the host on the slow syscall path. So this counts file writes (pipes and
 * sockets are not page cache), one page per newly dirtied folio: a lower bound that is enough
 * to tell a silent but working process from a stalled one. */
SEC("raw_tp/writeback_dirty_folio")
int BPF_PROG(vigil_write, struct folio *folio, struct address_space *mapping)
{
	__u64 cg = bpf_get_current_cgroup_id();
	if (!is_watched(cg))
		return 0;
	const long page = 4096;
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	__u64 now = bpf_ktime_get_ns();
	struct write_acc *acc = bpf_map_lookup_elem(&write_acc, &tgid);
	if (!acc) {
		struct write_acc fresh = {};
		bpf_map_update_elem(&write_acc, &tgid, &fresh, BPF_NOEXIST);
		acc = bpf_map_lookup_elem(&write_acc, &tgid);
		if (!acc)
			return 0;
	}
	__sync_fetch_and_add(&acc->bytes, page);
	__sync_fetch_and_add(&acc->pages, 1);
	if (now - acc->last_report_ns < VIGIL_WRITE_REPORT_NS)
		return 0;
	struct vigil_write *e = reserve(sizeof(*e), VIGIL_WRITE, cg);
	if (!e)
		return 0;
	fill_hdr(&e->h, VIGIL_WRITE, cg, (struct task_struct *)bpf_get_current_task());
	e->bytes = acc->bytes;
	e->pages = acc->pages;
	e->_pad = 0;
	acc->bytes = 0;
	acc->pages = 0;
	acc->last_report_ns = now;
	bpf_ringbuf_submit(e, wakeup_flag());
	return 0;
}

/* A cgroup created under a watched one is watched too (systemd-run, container runtimes). */
SEC("raw_tp/cgroup_mkdir")
int BPF_PROG(vigil_cgroup_mkdir, struct cgroup *cgrp, const char *path)
{
	struct cgroup *parent = BPF_CORE_READ(cgrp, self.parent, cgroup);
	if (!parent)
		return 0;
	__u64 parent_id = BPF_CORE_READ(parent, kn, id);
	__u64 *root = bpf_map_lookup_elem(&watched, &parent_id);
	if (!root)
		return 0;
	__u64 id = BPF_CORE_READ(cgrp, kn, id);
	__u64 run_root = *root;
	bpf_map_update_elem(&watched, &id, &run_root, BPF_ANY);
	return 0;
}
