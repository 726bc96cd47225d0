// SPDX-License-Identifier: GPL-2.0
/* io_uring submissions of the watched cgroups. An operation submitted through a ring is no
 * syscall of its own, so sys_exit never sees it; the io_uring tracepoints (not syscall
 * tracepoints: they cost the host nothing per syscall) do.
 *
 * - io_uring_submit_req (6.x: its one argument is the request): the opcode is read from the
 *   request; an IORING_OP_OPENAT/OPENAT2 becomes a file.open with its path, flags and directory
 *   (read from the prepared request, whose filename the kernel has already copied in), result
 *   not known at submission (absolute paths only: see below); any other opcode is recorded
 *   as unfollowed.
 * - io_uring_submit_sqe (older kernels): its arguments changed from release to release, so
 *   none are read; each submission is recorded as unfollowed with opcode 255.
 * Whichever exists is attached; health names it. Submissions by an SQPOLL thread run in that
 * thread, which is in the ring creator's cgroup, so the filter holds. */

#define IORING_OP_OPENAT 18
#define IORING_OP_OPENAT2 28
#define URING_OPCODE_UNREAD 255

SEC("raw_tp/io_uring_submit_req")
int BPF_PROG(vigil_uring_req, struct io_kiocb *req)
{
	__u64 cg = bpf_get_current_cgroup_id();
	if (!is_watched(cg))
		return 0;
	__u8 op = BPF_CORE_READ(req, opcode);
	/* io_kiocb_to_cmd(): the opcode's own data overlays the start of the request. Where this
	 * kernel's io_open holds no `struct filename *` (newer kernels defer the copy), the open
	 * is recorded like any other submission: its opcode, not its path. */
	struct io_open *o = (struct io_open *)req;
	if ((op != IORING_OP_OPENAT && op != IORING_OP_OPENAT2) ||
	    !bpf_core_field_exists(o->filename)) {
		emit_unfollowed(VIGIL_UNFOLLOWED_URING, op, 0, cg);
		return 0;
	}
	struct vigil_open *e = reserve(sizeof(*e), VIGIL_OPEN, cg);
	if (!e)
		return 0;
	fill_hdr(&e->h, VIGIL_OPEN, cg, (struct task_struct *)bpf_get_current_task());
	e->ret = 0;
	e->dirfd = BPF_CORE_READ(o, dfd);
	e->flags = (__u32)BPF_CORE_READ(o, how.flags);
	e->mode = (__u32)BPF_CORE_READ(o, how.mode);
	const char *name = BPF_CORE_READ(o, filename, name);
	long n = bpf_probe_read_kernel_str(e->path, sizeof(e->path), name);
	/* Only absolute paths: the in-kernel directory walk that resolves a relative one would be
	 * verified a second time in this program, ~17 ms of CPU at every run's start. A relative
	 * (or unreadable) one is recorded by its opcode instead, and health says so. */
	if (n <= 0 || e->path[0] != '/') {
		bpf_ringbuf_discard(e, 0);
		emit_unfollowed(VIGIL_UNFOLLOWED_URING, op, 0, cg);
		return 0;
	}
	e->path_truncated = n == VIGIL_PATH_LEN;
	e->via = VIGIL_VIA_IO_URING;
	e->dir[0] = 0;
	e->dir_state = VIGIL_DIR_NONE;
	bpf_ringbuf_submit(e, wakeup_flag());
	return 0;
}

SEC("raw_tp/io_uring_submit_sqe")
int BPF_PROG(vigil_uring_sqe)
{
	__u64 cg = bpf_get_current_cgroup_id();
	if (!is_watched(cg))
		return 0;
	emit_unfollowed(VIGIL_UNFOLLOWED_URING, URING_OPCODE_UNREAD, 0, cg);
	return 0;
}
