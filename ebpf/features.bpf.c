// SPDX-License-Identifier: GPL-2.0
/* Feature probes for `vigil doctor`: one do-nothing program per attach type vigil does not use
 * but a host might offer (fentry, BPF LSM, kprobe). Doctor loads and attaches each and reports
 * what the kernel said — the only reliable answer, since config files and securityfs can be
 * missing or lie (a kernel may list "bpf" in its LSMs and still refuse the program). */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

SEC("fentry/__x64_sys_openat")
int BPF_PROG(probe_fentry)
{
	return 0;
}

SEC("lsm/file_open")
int BPF_PROG(probe_lsm, struct file *file)
{
	return 0;
}

SEC("kprobe/__x64_sys_openat")
int probe_kprobe(struct pt_regs *ctx)
{
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
