// SPDX-License-Identifier: GPL-2.0
/* OOM kills in the watched cgroups: raw_tp/mark_victim fires when the OOM killer (global or a
 * memory cgroup's) has chosen its victim, in the context of the task whose allocation failed —
 * so the filter is the victim's cgroup, not the current task's. */
#include "vigil_common.h"

SEC("raw_tp/mark_victim")
int BPF_PROG(vigil_oom, struct task_struct *task, uid_t uid)
{
	__u64 cg = task_cgroup_id(task);
	if (!is_watched(cg))
		return 0;
	struct vigil_oom *e = reserve(sizeof(*e), VIGIL_OOM, cg);
	if (!e)
		return 0;
	fill_hdr(&e->h, VIGIL_OOM, cg, task);
	struct task_struct *cur = (struct task_struct *)bpf_get_current_task();
	e->trigger_pid = BPF_CORE_READ(cur, tgid);
	e->_pad = 0;
	bpf_probe_read_kernel_str(e->trigger_comm, sizeof(e->trigger_comm), cur->comm);
	/* The victim dies of SIGKILL: the reader should learn of it now, not with the next batch. */
	bpf_ringbuf_submit(e, BPF_RB_FORCE_WAKEUP);
	return 0;
}
