// SPDX-License-Identifier: GPL-2.0
/* Network evidence without a syscall hook (`--kernel-layer network`): cgroup programs attached
 * to a run's cgroup only, so the rest of the host never runs them, and one tracepoint that fires
 * on TCP state changes (not on syscalls) for the outcome of a connect.
 *
 * - connect4/6: a TCP connect is remembered by its socket cookie and reported when its SYN is
 *   answered (established → 0; reset or timed out → -sk_err); any other connect (UDP) is
 *   reported at once, its result unknown.
 * - sendmsg4/6: a datagram sent with an explicit address, result unknown.
 * - post_bind4/6: a bind that succeeded, with the address and port the socket got.
 *
 * What the hooks cannot see (said in health and in the README): accepts, sends on connected
 * sockets, failed binds, the byte counts of sends and the result of a TCP connect refused
 * before its SYN (a policy's EPERM, no route) — such a connect is reported by vigil at the end
 * of the run, its result unknown. Every hook returns 1: evidence, never a decision. */

#include <bpf/bpf_endian.h>

#define TCP_ESTABLISHED_STATE 1
#define TCP_SYN_SENT_STATE 2
#define SOCK_STREAM_TYPE 1

/* TCP connects waiting for their outcome, by socket cookie. LRU: a socket that never changes
 * state again (its connect refused before the SYN) must not hold a slot forever. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, struct vigil_net);
} tcp_connecting SEC(".maps");

/* The header a cgroup hook can fill: no task access there (ppid and comm are vigil's to fill
 * from its process tree). */
static __always_inline void hook_hdr(struct vigil_hdr *h, __u64 cg)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	h->kind = VIGIL_NET;
	h->version = VIGIL_EVENT_VERSION;
	h->ts_ns = bpf_ktime_get_boot_ns();
	h->cgroup_id = cg;
	h->pid = pid_tgid >> 32;
	h->tid = (__u32)pid_tgid;
	h->ppid = 0;
	h->_pad = 0;
	__builtin_memset(h->comm, 0, sizeof(h->comm));
}

/* A struct sockaddr_in/in6 from the hook's view of the call (ports and addresses already in
 * network order). */
static __always_inline void hook_addr(struct vigil_net *e, __u32 family, __u32 ip4,
				      const __u32 *ip6, __u16 port_be)
{
	e->addr_source = VIGIL_ADDR_ARG;
	if (family == AF_INET) {
		struct abi_sockaddr_in *sin = (void *)e->addr;
		sin->family = AF_INET;
		sin->port = port_be;
		sin->addr = ip4;
		e->addr_len = sizeof(*sin);
	} else {
		struct abi_sockaddr_in6 *sin6 = (void *)e->addr;
		sin6->family = AF_INET6;
		sin6->port = port_be;
		sin6->flowinfo = 0;
		__builtin_memcpy(sin6->addr, ip6, 16);
		e->addr_len = sizeof(*sin6);
	}
}

static __always_inline void hook_fill(struct vigil_net *e, __u32 op, __u64 cg)
{
	hook_hdr(&e->h, cg);
	e->ret = 0;
	e->op = op;
	e->fd = -1;
	e->addr_len = 0;
	e->addr_source = VIGIL_ADDR_NONE;
	e->at = VIGIL_AT_CGROUP_HOOK;
	e->_pad = 0;
	__builtin_memset(e->addr, 0, sizeof(e->addr));
}

/* `v6` is a constant at each call: a connect4 program may not even read user_ip6 (the verifier
 * refuses it), so each program must carry only its own family's reads. */
static __always_inline void sock_addr_event(struct bpf_sock_addr *ctx, __u32 op, int v6)
{
	__u64 cg = bpf_get_current_cgroup_id();
	if (!is_watched(cg))
		return;
	__u32 ip6[4] = {};
	__u32 ip4 = 0;
	__u32 family = v6 ? AF_INET6 : AF_INET;
	if (v6) {
		ip6[0] = ctx->user_ip6[0];
		ip6[1] = ctx->user_ip6[1];
		ip6[2] = ctx->user_ip6[2];
		ip6[3] = ctx->user_ip6[3];
	} else {
		ip4 = ctx->user_ip4;
	}
	__u16 port = (__u16)ctx->user_port;
	if (op == VIGIL_NET_CONNECT && ctx->type == SOCK_STREAM_TYPE) {
		struct vigil_net pending;
		hook_fill(&pending, op, cg);
		hook_addr(&pending, family, ip4, ip6, port);
		__u64 cookie = bpf_get_socket_cookie(ctx);
		bpf_map_update_elem(&tcp_connecting, &cookie, &pending, BPF_ANY);
		return;
	}
	struct vigil_net *e = reserve(sizeof(*e), VIGIL_NET, cg);
	if (!e)
		return;
	hook_fill(e, op, cg);
	hook_addr(e, family, ip4, ip6, port);
	bpf_ringbuf_submit(e, wakeup_flag());
}

SEC("cgroup/connect4")
int vigil_connect4(struct bpf_sock_addr *ctx)
{
	sock_addr_event(ctx, VIGIL_NET_CONNECT, 0);
	return 1;
}

SEC("cgroup/connect6")
int vigil_connect6(struct bpf_sock_addr *ctx)
{
	sock_addr_event(ctx, VIGIL_NET_CONNECT, 1);
	return 1;
}

SEC("cgroup/sendmsg4")
int vigil_sendmsg4(struct bpf_sock_addr *ctx)
{
	sock_addr_event(ctx, VIGIL_NET_SEND, 0);
	return 1;
}

SEC("cgroup/sendmsg6")
int vigil_sendmsg6(struct bpf_sock_addr *ctx)
{
	sock_addr_event(ctx, VIGIL_NET_SEND, 1);
	return 1;
}

/* `v6` constant per program, as for sock_addr: post_bind4 may not read src_ip6. */
static __always_inline void post_bind_event(struct bpf_sock *sk, int v6)
{
	__u64 cg = bpf_get_current_cgroup_id();
	if (!is_watched(cg))
		return;
	struct vigil_net *e = reserve(sizeof(*e), VIGIL_NET, cg);
	if (!e)
		return;
	hook_fill(e, VIGIL_NET_BIND, cg);
	__u32 ip6[4] = {};
	__u32 ip4 = 0;
	if (v6) {
		ip6[0] = sk->src_ip6[0];
		ip6[1] = sk->src_ip6[1];
		ip6[2] = sk->src_ip6[2];
		ip6[3] = sk->src_ip6[3];
	} else {
		ip4 = sk->src_ip4;
	}
	/* src_port is in host order here (bpf_sock), unlike every other port of the hooks. */
	hook_addr(e, v6 ? AF_INET6 : AF_INET, ip4, ip6, bpf_htons((__u16)sk->src_port));
	e->at = VIGIL_AT_POST_BIND;
	bpf_ringbuf_submit(e, wakeup_flag());
}

SEC("cgroup/post_bind4")
int vigil_post_bind4(struct bpf_sock *sk)
{
	post_bind_event(sk, 0);
	return 1;
}

SEC("cgroup/post_bind6")
int vigil_post_bind6(struct bpf_sock *sk)
{
	post_bind_event(sk, 1);
	return 1;
}

/* The outcome of a connect remembered above: the first state its socket leaves SYN_SENT for. */
SEC("raw_tp/inet_sock_set_state")
int BPF_PROG(vigil_tcp_state, struct sock *sk, int oldstate, int newstate)
{
	if (oldstate != TCP_SYN_SENT_STATE)
		return 0;
	__u64 cookie = BPF_CORE_READ(sk, __sk_common.skc_cookie.counter);
	if (!cookie)
		return 0;
	struct vigil_net *pending = bpf_map_lookup_elem(&tcp_connecting, &cookie);
	if (!pending)
		return 0;
	struct vigil_net *e = reserve(sizeof(*e), VIGIL_NET, pending->h.cgroup_id);
	if (e) {
		__builtin_memcpy(e, pending, sizeof(*e));
		e->h.ts_ns = bpf_ktime_get_boot_ns();
		if (newstate == TCP_ESTABLISHED_STATE) {
			e->ret = 0;
			e->at = VIGIL_AT_TCP_STATE;
		} else {
			int err = BPF_CORE_READ(sk, sk_err);
			/* Closed with no error: the process gave up on it first; the outcome is unknown. */
			e->ret = err ? -(__s64)err : 0;
			e->at = err ? VIGIL_AT_TCP_STATE : VIGIL_AT_CGROUP_HOOK;
		}
		bpf_ringbuf_submit(e, wakeup_flag());
	}
	bpf_map_delete_elem(&tcp_connecting, &cookie);
	return 0;
}
