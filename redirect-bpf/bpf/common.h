/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * What redirect.c and inbound.c share: the address key layout (`struct dst`,
 * `struct src`: src/key.rs reads and writes them) and small helpers.
 */
#ifndef NP_COMMON_H
#define NP_COMMON_H

#include <linux/bpf.h>
#include <linux/types.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* A destination: redirect.c's `redirect_set` key (and the recorded original
 * destination), inbound.c's `strict` key. */
struct dst {
	__u32 addr[4]; /* network order; IPv4 as ::ffff:a.b.c.d */
	__u16 port;    /* network order; in `strict` and `redirect_set`, 0 = every port */
	__u16 pad;
};

/* A source address: inbound.c's `proxy_sources` key. */
struct src {
	__u32 addr[4]; /* network order; IPv4 as ::ffff:a.b.c.d */
};

/* Adds one to slot `idx` of a per-CPU array of __u64 counters. */
static __always_inline void count_in(void *counters, __u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(counters, &idx);
	if (v)
		*v += 1;
}

/* Writes an IPv4 address (network order) as ::ffff:a.b.c.d. */
static __always_inline void map_v4(__u32 *out, __u32 ip4)
{
	out[0] = 0;
	out[1] = 0;
	out[2] = bpf_htonl(0x0000ffff);
	out[3] = ip4;
}

#endif
