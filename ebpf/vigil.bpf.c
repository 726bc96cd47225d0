// SPDX-License-Identifier: GPL-2.0
/* The sensor object: every concern's programs in one object, so they share the cgroup filter,
 * the ring buffer and the loss counters, and vigil parses the kernel's BTF once to load them.
 * Each concern lives in its own file; build.rs compiles only this one. */
#include "vigil_common.h"
#include "process.bpf.c"
#include "syscalls.bpf.c"
#include "oom.bpf.c"

/* Sizes and offsets of the event structs as this compiler laid them out; vigil's tests compare
 * its Rust view against this table in the object. */
#define OFF(t, f) __builtin_offsetof(struct t, f)
const volatile __u32 vigil_layout[] __attribute__((used)) = {
	VIGIL_EVENT_VERSION,
	sizeof(struct vigil_hdr), OFF(vigil_hdr, ts_ns), OFF(vigil_hdr, cgroup_id), OFF(vigil_hdr, pid),
	OFF(vigil_hdr, comm),
	sizeof(struct vigil_fork), OFF(vigil_fork, child_pid), OFF(vigil_fork, is_thread),
	sizeof(struct vigil_exec), OFF(vigil_exec, uid), OFF(vigil_exec, argv_len), OFF(vigil_exec, filename),
	OFF(vigil_exec, argv),
	sizeof(struct vigil_exit), OFF(vigil_exit, exit_code), OFF(vigil_exit, group_dead),
	sizeof(struct vigil_signal), OFF(vigil_signal, target_pid), OFF(vigil_signal, sig), OFF(vigil_signal, group),
	sizeof(struct vigil_write), OFF(vigil_write, bytes), OFF(vigil_write, pages),
	sizeof(struct vigil_open), OFF(vigil_open, ret), OFF(vigil_open, dirfd), OFF(vigil_open, flags),
	OFF(vigil_open, path_truncated), OFF(vigil_open, dir_state), OFF(vigil_open, path), OFF(vigil_open, dir),
	sizeof(struct vigil_net), OFF(vigil_net, ret), OFF(vigil_net, op), OFF(vigil_net, addr_len),
	OFF(vigil_net, addr_source), OFF(vigil_net, addr),
	sizeof(struct vigil_oom), OFF(vigil_oom, trigger_pid), OFF(vigil_oom, trigger_comm),
};

char LICENSE[] SEC("license") = "GPL";
