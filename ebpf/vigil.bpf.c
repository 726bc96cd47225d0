// SPDX-License-Identifier: GPL-2.0
/* The sensor object: every concern's programs in one object, so they share the cgroup filter,
 * the ring buffer and the loss counters, and vigil parses the kernel's BTF once to load them.
 * Each concern lives in its own file; build.rs compiles only this one. */
#include "vigil_common.h"
#include "process.bpf.c"
#include "syscalls.bpf.c"
#include "fastpath.bpf.c"
#include "oom.bpf.c"
#include "network.bpf.c"
#include "uring.bpf.c"

/* The event structs as this compiler laid them out: per struct its size, its field count and
 * every field's offset and size, in declaration order. vigil's tests compare its Rust view
 * against this table in the object, and check that the Rust table leaves no byte uncovered. */
#define F(t, f) __builtin_offsetof(struct t, f), sizeof(((struct t *)0)->f)
#define S(t, n) sizeof(struct t), n
const volatile __u32 vigil_layout[] __attribute__((used)) = {
	VIGIL_EVENT_VERSION,
	S(vigil_hdr, 9), F(vigil_hdr, kind), F(vigil_hdr, version), F(vigil_hdr, ts_ns),
	F(vigil_hdr, cgroup_id), F(vigil_hdr, pid), F(vigil_hdr, tid), F(vigil_hdr, ppid),
	F(vigil_hdr, _pad), F(vigil_hdr, comm),
	S(vigil_fork, 5), F(vigil_fork, h), F(vigil_fork, child_pid), F(vigil_fork, child_tid),
	F(vigil_fork, is_thread), F(vigil_fork, _pad),
	S(vigil_exec, 9), F(vigil_exec, h), F(vigil_exec, uid), F(vigil_exec, gid), F(vigil_exec, euid),
	F(vigil_exec, egid), F(vigil_exec, argv_len), F(vigil_exec, argv_truncated),
	F(vigil_exec, filename), F(vigil_exec, argv),
	S(vigil_exit, 5), F(vigil_exit, h), F(vigil_exit, exit_code), F(vigil_exit, group_exit_code),
	F(vigil_exit, group_dead), F(vigil_exit, _pad),
	S(vigil_signal, 7), F(vigil_signal, h), F(vigil_signal, target_pid), F(vigil_signal, target_tid),
	F(vigil_signal, sig), F(vigil_signal, result), F(vigil_signal, group), F(vigil_signal, _pad),
	S(vigil_write, 4), F(vigil_write, h), F(vigil_write, bytes), F(vigil_write, pages),
	F(vigil_write, _pad),
	S(vigil_open, 10), F(vigil_open, h), F(vigil_open, ret), F(vigil_open, dirfd), F(vigil_open, flags),
	F(vigil_open, mode), F(vigil_open, path_truncated), F(vigil_open, dir_state), F(vigil_open, via),
	F(vigil_open, path), F(vigil_open, dir),
	S(vigil_net, 9), F(vigil_net, h), F(vigil_net, ret), F(vigil_net, op), F(vigil_net, fd),
	F(vigil_net, addr_len), F(vigil_net, addr_source), F(vigil_net, at), F(vigil_net, _pad),
	F(vigil_net, addr),
	S(vigil_oom, 4), F(vigil_oom, h), F(vigil_oom, trigger_pid), F(vigil_oom, _pad),
	F(vigil_oom, trigger_comm),
	S(vigil_unfollowed, 4), F(vigil_unfollowed, h), F(vigil_unfollowed, ret),
	F(vigil_unfollowed, what), F(vigil_unfollowed, nr),
};

char LICENSE[] SEC("license") = "GPL";
