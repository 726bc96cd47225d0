// SPDX-License-Identifier: GPL-2.0
/* Network enforcement of a policy: cgroup sock_addr programs attached to one run's cgroup only
 * (so the rest of the host is never judged). connect4/6 decide connect(2) (TCP and UDP), and
 * sendmsg4/6 decide datagrams sent with an explicit address. The first matching entry decides;
 * none matching, the policy's default does. Returning 0 makes the syscall fail with EPERM.
 *
 * vigil flattens the policy's rules into entries (one per network × port range, in rule order)
 * and writes them into the read-only globals below before loading. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define MAX_ENTRIES 64
#define AF_INET 2
#define AF_INET6 10

struct net_entry {
	__u32 addr[4]; /* network order; IPv4 in addr[0] */
	__u32 mask[4]; /* network order */
	__u16 port_lo; /* host order, inclusive */
	__u16 port_hi;
	__u8 family;
	__u8 allow;
	__u8 loopback; /* the entry's network is a loopback one: it may reach loopback */
	__u8 _pad;
};

const volatile struct net_entry connect_entries[MAX_ENTRIES] = {};
const volatile __u32 connect_count = 0;
const volatile struct net_entry send_entries[MAX_ENTRIES] = {};
const volatile __u32 send_count = 0;
const volatile __u8 default_allow = 0;

static __always_inline int decide(const volatile struct net_entry *entries, __u32 count, __u8 family,
				  const __u32 ip[4], __u16 port)
{
	int loopback = family == AF_INET ? (bpf_ntohl(ip[0]) >> 24) == 127
					 : (ip[0] | ip[1] | ip[2]) == 0 && ip[3] == bpf_htonl(1);
	for (int i = 0; i < MAX_ENTRIES; i++) {
		if (i >= count)
			break;
		const volatile struct net_entry *e = &entries[i];
		if (e->family != family)
			continue;
		int words = family == AF_INET ? 1 : 4;
		int hit = 1;
		for (int w = 0; w < 4; w++) {
			if (w < words && (ip[w] & e->mask[w]) != e->addr[w])
				hit = 0;
		}
		if (!hit || (loopback && !e->loopback))
			continue;
		if (port < e->port_lo || port > e->port_hi)
			continue;
		return e->allow;
	}
	return default_allow;
}

static __always_inline int decide4(struct bpf_sock_addr *ctx, const volatile struct net_entry *entries, __u32 count)
{
	__u32 ip[4] = {ctx->user_ip4, 0, 0, 0};
	return decide(entries, count, AF_INET, ip, bpf_ntohs((__u16)ctx->user_port));
}

static __always_inline int decide6(struct bpf_sock_addr *ctx, const volatile struct net_entry *entries, __u32 count)
{
	__u32 ip[4] = {ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3]};
	__u16 port = bpf_ntohs((__u16)ctx->user_port);
	/* An IPv4-mapped address (::ffff:a.b.c.d) is IPv4: judged by the IPv4 entries, so a
	 * dual-stack socket is no way around them. */
	if (ip[0] == 0 && ip[1] == 0 && ip[2] == bpf_htonl(0xffff)) {
		__u32 v4[4] = {ip[3], 0, 0, 0};
		return decide(entries, count, AF_INET, v4, port);
	}
	return decide(entries, count, AF_INET6, ip, port);
}

SEC("cgroup/connect4")
int vigil_connect4(struct bpf_sock_addr *ctx)
{
	return decide4(ctx, connect_entries, connect_count);
}

SEC("cgroup/connect6")
int vigil_connect6(struct bpf_sock_addr *ctx)
{
	return decide6(ctx, connect_entries, connect_count);
}

SEC("cgroup/sendmsg4")
int vigil_sendmsg4(struct bpf_sock_addr *ctx)
{
	return decide4(ctx, send_entries, send_count);
}

SEC("cgroup/sendmsg6")
int vigil_sendmsg6(struct bpf_sock_addr *ctx)
{
	return decide6(ctx, send_entries, send_count);
}

char LICENSE[] SEC("license") = "GPL";
