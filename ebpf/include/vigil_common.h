/* What every sensor program shares: the cgroup filter, the ring buffer, the loss counters and
 * the event header. Included once into the one object (vigil.bpf.c), so the programs of every
 * concern share one filter and one ring — and the loader parses BTF once. */
#ifndef VIGIL_COMMON_H
#define VIGIL_COMMON_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "vigil_event.h"

/* cgroup ids being watched: the run's cgroup and every cgroup created beneath it. The value is
 * the id of the run's own cgroup (the root of the watched subtree), so a daemon serving many
 * runs from one ring buffer can route an event of a nested cgroup to its run with one lookup. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, __u64);
} watched SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20);
} events SEC(".maps");

/* Ring buffer reservations that failed, per CPU and per event kind: events lost in the kernel,
 * counted where they are lost. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, VIGIL_KIND_MAX);
	__type(key, __u32);
	__type(value, __u64);
} lost SEC(".maps");

/* Wakeups of the reader are batched: at most one forced wakeup per WAKEUP_INTERVAL_NS (unless a
 * backlog builds up); events in between ride along with the next one. Nothing is dropped — at the end of a run vigil drains the
 * ring once the cgroup is empty — and liveness sees kernel progress at most this late. */
#define WAKEUP_INTERVAL_NS (10ULL * 1000 * 1000)
__u64 last_wakeup_ns = 0;

/* Past this much unread data the reader is woken at once: batching must not fill the ring. */
#define WAKEUP_BACKLOG_BYTES (1 << 20)

static __always_inline __u64 wakeup_flag(void)
{
	if (bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= WAKEUP_BACKLOG_BYTES)
		return BPF_RB_FORCE_WAKEUP;
	__u64 now = bpf_ktime_get_ns();
	if (now - last_wakeup_ns >= WAKEUP_INTERVAL_NS) {
		last_wakeup_ns = now; /* racy across CPUs by design: at worst an extra wakeup */
		return BPF_RB_FORCE_WAKEUP;
	}
	return BPF_RB_NO_WAKEUP;
}

static __always_inline int is_watched(__u64 cg)
{
	return bpf_map_lookup_elem(&watched, &cg) != 0;
}

/* Ring buffer reservations that failed, by run (the root of the watched subtree, as `watched`
 * names it) and kind: key = root << 5 | kind. A daemon serving many runs from one ring charges
 * each loss to the run whose event it was, not to every run alive at the time. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, __u64);
} lost_by_run SEC(".maps");

static __always_inline void count_lost(__u32 kind, __u64 cg)
{
	__u64 *n = bpf_map_lookup_elem(&lost, &kind);
	if (n)
		*n += 1;
	__u64 *root = bpf_map_lookup_elem(&watched, &cg);
	if (!root)
		return;
	__u64 key = (*root << 5) | (kind & 31);
	__u64 *c = bpf_map_lookup_elem(&lost_by_run, &key);
	if (c) {
		__sync_fetch_and_add(c, 1);
	} else {
		__u64 one = 1;
		if (bpf_map_update_elem(&lost_by_run, &key, &one, BPF_NOEXIST)) {
			/* Another CPU created it first: add to that one. */
			c = bpf_map_lookup_elem(&lost_by_run, &key);
			if (c)
				__sync_fetch_and_add(c, 1);
		}
	}
}

/* Reserve an event of `size` bytes, counting the loss of a `kind` event of cgroup `cg` if the
 * ring is full. */
static __always_inline void *reserve(__u64 size, __u32 kind, __u64 cg)
{
	void *e = bpf_ringbuf_reserve(&events, size, 0);
	if (!e)
		count_lost(kind, cg);
	return e;
}

static __always_inline void fill_hdr(struct vigil_hdr *h, __u32 kind, __u64 cg, struct task_struct *t)
{
	h->kind = kind;
	h->version = VIGIL_EVENT_VERSION;
	h->ts_ns = bpf_ktime_get_boot_ns();
	h->cgroup_id = cg;
	h->pid = BPF_CORE_READ(t, tgid);
	h->tid = BPF_CORE_READ(t, pid);
	h->ppid = BPF_CORE_READ(t, real_parent, tgid);
	h->_pad = 0;
	bpf_probe_read_kernel_str(h->comm, sizeof(h->comm), t->comm);
}

/* The cgroup (v2) id of a task other than the current one. */
static __always_inline __u64 task_cgroup_id(struct task_struct *t)
{
	return BPF_CORE_READ(t, cgroups, dfl_cgrp, kn, id);
}

#endif
