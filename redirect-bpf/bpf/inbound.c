// SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0)
/*
 * Inbound STRICT enforcement for pods, with cgroup BPF.
 *
 *  - cgroup_skb/ingress, attached to the cgroup that holds the pod cgroups: runs
 *    for every packet delivered to a socket of a pod, including the SYN to a
 *    listening socket. For TCP over IPv4, and over IPv6 when the fixed header's
 *    next header is TCP, it looks the destination (IP, port) up in `strict`,
 *    first with the exact port and then with port 0 (every port of the IP).
 *    Mode 1 (STRICT): the packet passes only when its source address is in
 *    `proxy_sources` (the node proxy, which terminates mTLS), otherwise it is
 *    dropped. Mode 0 (a port-level PERMISSIVE/DISABLE override) or no entry:
 *    the packet passes, as does a pod's connection to its own address.
 *
 * Every address is stored as 16 bytes (IPv4 as ::ffff:a.b.c.d), ports in
 * network byte order: the same key layout as `redirect_set` in redirect.c.
 */
#include "common.h"

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define IPPROTO_TCP 6
/* The fragment offset bits of iphdr.frag_off (host order). */
#define IP_OFFSET 0x1fff

#define MODE_STRICT 1

/* Counter indexes: keep in sync with `Counter` in src/inbound.rs. */
enum counter {
	C_PASSED_NOT_TCP = 0,
	C_PASSED_NOT_STRICT = 1,
	C_ALLOWED_FROM_PROXY = 2,
	C_DROPPED_PLAINTEXT = 3,
	C_PASSED_SELF = 4,
	C_MAX = 8,
};

/* The leading fields of struct iphdr. */
struct ip4_hdr {
	__u8 ver_ihl;
	__u8 tos;
	__u16 tot_len;
	__u16 id;
	__u16 frag_off;
	__u8 ttl;
	__u8 protocol;
	__u16 check;
	__u32 saddr;
	__u32 daddr;
};

/* struct ipv6hdr. */
struct ip6_hdr {
	__u32 ver_tc_flow;
	__u16 payload_len;
	__u8 nexthdr;
	__u8 hop_limit;
	__u32 saddr[4];
	__u32 daddr[4];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct dst);
	__type(value, __u8);
} strict SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, struct src);
	__type(value, __u8);
} proxy_sources SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, C_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

#define count(idx) count_in(&counters, idx)

/*
 * Fills the destination address and source address from the IP header and
 * returns the offset of the TCP header, or -1 when the packet is not TCP (or
 * not one this program parses).
 */
static __always_inline int parse_ip(struct __sk_buff *skb, struct dst *d, struct src *s)
{
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct ip4_hdr ip;
		int ihl;

		if (bpf_skb_load_bytes(skb, 0, &ip, sizeof(ip)) != 0)
			return -1;
		if ((ip.ver_ihl >> 4) != 4 || ip.protocol != IPPROTO_TCP)
			return -1;
		/* A later fragment has no TCP header (sockets see reassembled packets). */
		if (ip.frag_off & bpf_htons(IP_OFFSET))
			return -1;
		ihl = (ip.ver_ihl & 0x0f) * 4;
		if (ihl < (int)sizeof(ip))
			return -1;
		map_v4(d->addr, ip.daddr);
		map_v4(s->addr, ip.saddr);
		return ihl;
	}
	if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ip6_hdr ip6;

		if (bpf_skb_load_bytes(skb, 0, &ip6, sizeof(ip6)) != 0)
			return -1;
		/* Extension headers are not walked: such packets pass, counted. */
		if (ip6.nexthdr != IPPROTO_TCP)
			return -1;
		__builtin_memcpy(d->addr, ip6.daddr, sizeof(d->addr));
		__builtin_memcpy(s->addr, ip6.saddr, sizeof(s->addr));
		return sizeof(ip6);
	}
	return -1;
}

SEC("cgroup_skb/ingress")
int np_inbound(struct __sk_buff *skb)
{
	struct dst d = {};
	struct src s = {};
	__u16 ports[2]; /* TCP source and destination port, network order */
	__u8 *mode;
	int l4;

	l4 = parse_ip(skb, &d, &s);
	if (l4 < 0 || bpf_skb_load_bytes(skb, l4, ports, sizeof(ports)) != 0) {
		count(C_PASSED_NOT_TCP);
		return 1;
	}

	d.port = ports[1];
	mode = bpf_map_lookup_elem(&strict, &d);
	if (!mode) {
		d.port = 0;
		mode = bpf_map_lookup_elem(&strict, &d);
	}
	if (!mode || *mode != MODE_STRICT) {
		count(C_PASSED_NOT_STRICT);
		return 1;
	}
	/* A pod talking to itself never leaves it: nothing to protect. */
	if (s.addr[0] == d.addr[0] && s.addr[1] == d.addr[1] && s.addr[2] == d.addr[2] && s.addr[3] == d.addr[3]) {
		count(C_PASSED_SELF);
		return 1;
	}
	if (bpf_map_lookup_elem(&proxy_sources, &s)) {
		count(C_ALLOWED_FROM_PROXY);
		return 1;
	}
	count(C_DROPPED_PLAINTEXT);
	return 0;
}

char _license[] SEC("license") = "GPL";
