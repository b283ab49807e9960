// SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0)
/*
 * Transparent redirect of pod connections to the node proxy, with cgroup BPF.
 *
 *  - cgroup/connect4, cgroup/connect6: when the destination (IP, port) is in
 *    `redirect_set` (port 0 there stands for every port of the IP), remember it
 *    under the socket cookie (`cookie_orig`) and rewrite the destination to the
 *    proxy (globals `proxy_ip4`/`proxy_ip6`/`proxy_port`, set at load time).
 *  - sockops: on BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, copy the cookie's entry to
 *    `conn_orig`, keyed by the 4-tuple as the proxy's accepted socket sees it.
 *  - cgroup/getsockopt: answer SOL_IP/SO_ORIGINAL_DST and
 *    SOL_IPV6/IP6T_SO_ORIGINAL_DST from `conn_orig`.
 *  - cgroup/getpeername4, cgroup/getpeername6: show the application the
 *    address it dialed instead of the proxy.
 *
 * Every address is stored as 16 bytes (IPv4 as ::ffff:a.b.c.d), ports in
 * network byte order. `meta` is written and read by user space only: what this
 * attachment was made for, so a restarted proxy can tell whether to keep it.
 */
#include "common.h"

#define AF_INET 2
#define AF_INET6 10
#define SOL_IP 0
#define SOL_IPV6 41
#define SO_ORIGINAL_DST 80
#define IP6T_SO_ORIGINAL_DST 80
#define TCP_CLOSE 7

#define barrier() asm volatile("" ::: "memory")

/* Counter indexes: keep in sync with `Counter` in src/loader.rs. */
enum counter {
	C_REDIRECTED = 0,
	C_BYPASSED_NOT_IN_SET = 1,
	C_BYPASSED_OWN_TRAFFIC = 2,
	C_GETSOCKOPT_ANSWERED = 3,
	C_GETSOCKOPT_MISSED = 4,
	C_BYPASSED_NO_PROXY_FAMILY = 5,
	C_MAX = 8,
};

/* The connection as the proxy's accepted socket sees it: peer = the client. */
struct conn_key {
	__u32 peer[4];
	__u32 local[4];
	__u16 peer_port;  /* network order */
	__u16 local_port; /* network order */
};

/* Set at load time (EbpfLoader::override_global). All network byte order. */
volatile const __u32 proxy_ip4 = 0;
volatile const __u32 proxy_ip6[4] = {0, 0, 0, 0};
volatile const __u16 proxy_port = 0;
/* 1 when proxy_ip4 is set (the proxy listens on IPv4), 2 for IPv6. */
volatile const __u32 proxy_family = 0;
/* Sockets carrying this SO_MARK are the proxy's own: never redirected. 0 = off. */
volatile const __u32 bypass_mark = 0;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct dst);
	__type(value, __u8);
} redirect_set SEC(".maps");

/* Keep in sync with `Meta` in src/loader.rs. */
struct meta {
	__u64 object_hash;
	__u64 pods_cgroup_id;
	__u64 proxy_cgroup_id;
	struct dst proxy;
	__u32 bypass_mark;
	char pods_cgroup[256];
	char proxy_cgroup[256];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct meta);
} meta SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct dst);
} cookie_orig SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct conn_key);
	__type(value, struct dst);
} conn_orig SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, C_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

#define count(idx) count_in(&counters, idx)

/*
 * Copies an IPv6 address word by word. A macro, not a function: each read of a
 * context field must stay a direct load of that field for the verifier.
 */
#define COPY_IP6(dst, src)          \
	do {                        \
		(dst)[0] = (src)[0]; \
		(dst)[1] = (src)[1]; \
		(dst)[2] = (src)[2]; \
		(dst)[3] = (src)[3]; \
	} while (0)

/*
 * Sets the socket address a sock_addr hook reports or connects to. One store per
 * field with a barrier between: clang would merge adjacent ctx stores into one the
 * verifier rejects.
 */
static __always_inline void set_user_addr6(struct bpf_sock_addr *ctx, __u32 a0, __u32 a1, __u32 a2, __u32 a3, __u16 port)
{
	ctx->user_ip6[0] = a0;
	barrier();
	ctx->user_ip6[1] = a1;
	barrier();
	ctx->user_ip6[2] = a2;
	barrier();
	ctx->user_ip6[3] = a3;
	barrier();
	ctx->user_port = (__u32)port;
}

static __always_inline int is_v4_mapped(const __u32 *a)
{
	return a[0] == 0 && a[1] == 0 && a[2] == bpf_htonl(0x0000ffff);
}

static __always_inline int own_traffic(struct bpf_sock_addr *ctx)
{
	struct bpf_sock *sk;

	if (bypass_mark == 0)
		return 0;
	sk = ctx->sk;
	if (!sk)
		return 0;
	return sk->mark == bypass_mark;
}

/* Whether (IP, port) or (IP, every port) is in the redirect set. */
static __always_inline int in_set(struct dst *d)
{
	__u16 port = d->port;
	int hit;

	if (bpf_map_lookup_elem(&redirect_set, d))
		return 1;
	d->port = 0;
	hit = bpf_map_lookup_elem(&redirect_set, d) != 0;
	d->port = port;
	return hit;
}

/* Looks the destination up; on a hit, records it under the socket cookie. */
static __always_inline int lookup_and_record(struct bpf_sock_addr *ctx, struct dst *d)
{
	__u64 cookie;

	if (!in_set(d)) {
		count(C_BYPASSED_NOT_IN_SET);
		return 0;
	}
	if (own_traffic(ctx)) {
		count(C_BYPASSED_OWN_TRAFFIC);
		return 0;
	}
	cookie = bpf_get_socket_cookie(ctx);
	if (bpf_map_update_elem(&cookie_orig, &cookie, d, BPF_ANY) != 0)
		return 0;
	return 1;
}

SEC("cgroup/connect4")
int np_connect4(struct bpf_sock_addr *ctx)
{
	struct dst d = {};

	if (ctx->protocol != 6 /* IPPROTO_TCP */)
		return 1;
	map_v4(d.addr, ctx->user_ip4);
	d.port = (__u16)ctx->user_port;
	if (!lookup_and_record(ctx, &d))
		return 1;
	if (proxy_family != 1) {
		/* An AF_INET socket cannot reach an IPv6-only proxy. */
		count(C_BYPASSED_NO_PROXY_FAMILY);
		return 1;
	}
	ctx->user_ip4 = proxy_ip4;
	barrier();
	ctx->user_port = (__u32)proxy_port;
	count(C_REDIRECTED);
	return 1;
}

SEC("cgroup/connect6")
int np_connect6(struct bpf_sock_addr *ctx)
{
	struct dst d = {};
	__u32 a0, a1, a2, a3;

	if (ctx->protocol != 6 /* IPPROTO_TCP */)
		return 1;
	COPY_IP6(d.addr, ctx->user_ip6);
	d.port = (__u16)ctx->user_port;
	if (!lookup_and_record(ctx, &d))
		return 1;
	if (proxy_family == 1) {
		/* IPv4 proxy: reach it through its v4-mapped address. */
		a0 = 0;
		a1 = 0;
		a2 = bpf_htonl(0x0000ffff);
		a3 = proxy_ip4;
	} else if (proxy_family == 2) {
		a0 = proxy_ip6[0];
		a1 = proxy_ip6[1];
		a2 = proxy_ip6[2];
		a3 = proxy_ip6[3];
	} else {
		count(C_BYPASSED_NO_PROXY_FAMILY);
		return 1;
	}
	set_user_addr6(ctx, a0, a1, a2, a3, proxy_port);
	count(C_REDIRECTED);
	return 1;
}

SEC("sockops")
int np_sockops(struct bpf_sock_ops *skops)
{
	struct conn_key k = {};
	struct dst *d;
	__u64 cookie;

	switch (skops->op) {
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		break;
	case BPF_SOCK_OPS_STATE_CB:
		/* args[1] is the new state: forget the cookie once the socket closes. */
		if (skops->args[1] == TCP_CLOSE) {
			cookie = bpf_get_socket_cookie(skops);
			bpf_map_delete_elem(&cookie_orig, &cookie);
		}
		return 1;
	default:
		return 1;
	}

	cookie = bpf_get_socket_cookie(skops);
	d = bpf_map_lookup_elem(&cookie_orig, &cookie);
	if (!d)
		return 1;

	if (skops->family == AF_INET) {
		map_v4(k.peer, skops->local_ip4);
		map_v4(k.local, skops->remote_ip4);
	} else if (skops->family == AF_INET6) {
		COPY_IP6(k.peer, skops->local_ip6);
		COPY_IP6(k.local, skops->remote_ip6);
	} else {
		return 1;
	}
	/* local_port is host order; remote_port is network order in the upper 16 bits. */
	k.peer_port = bpf_htons((__u16)skops->local_port);
	k.local_port = (__u16)(skops->remote_port >> 16);
	bpf_map_update_elem(&conn_orig, &k, d, BPF_ANY);
	/* Keep the cookie entry for getpeername; drop it on close. */
	bpf_sock_ops_cb_flags_set(skops, BPF_SOCK_OPS_STATE_CB_FLAG);
	return 1;
}

SEC("cgroup/getsockopt")
int np_getsockopt(struct bpf_sockopt *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	struct conn_key k = {};
	struct dst *d;
	void *optval = ctx->optval;
	void *optval_end = ctx->optval_end;
	int v4;

	if (ctx->level == SOL_IP && ctx->optname == SO_ORIGINAL_DST)
		v4 = 1;
	else if (ctx->level == SOL_IPV6 && ctx->optname == IP6T_SO_ORIGINAL_DST)
		v4 = 0;
	else
		return 1;
	/* Our entry first, even when the kernel answered: once any NAT rule exists in
	 * the namespace (the HBONE capture), conntrack tracks every connection and
	 * answers for a connection it did not translate with its actual destination:
	 * the proxy's own address. Without our entry, the kernel's answer stands (the
	 * nftables fallback's REDIRECTed connections). */
	if (!sk)
		return 1;

	if (sk->family == AF_INET) {
		map_v4(k.peer, sk->dst_ip4);
		map_v4(k.local, sk->src_ip4);
	} else if (sk->family == AF_INET6) {
		COPY_IP6(k.peer, sk->dst_ip6);
		COPY_IP6(k.local, sk->src_ip6);
	} else {
		return 1;
	}
	/* dst_port is network order, src_port host order. */
	k.peer_port = sk->dst_port;
	k.local_port = bpf_htons((__u16)sk->src_port);

	d = bpf_map_lookup_elem(&conn_orig, &k);
	if (!d) {
		if (ctx->retval != 0)
			count(C_GETSOCKOPT_MISSED);
		return 1;
	}

	if (v4) {
		struct sockaddr_in_ {
			__u16 family;
			__u16 port;
			__u32 addr;
			__u8 zero[8];
		} *sin = optval;

		if (!is_v4_mapped(d->addr) || (void *)(sin + 1) > optval_end) {
			count(C_GETSOCKOPT_MISSED);
			return 1;
		}
		sin->family = AF_INET;
		sin->port = d->port;
		sin->addr = d->addr[3];
		__builtin_memset(sin->zero, 0, sizeof(sin->zero));
		ctx->optlen = sizeof(*sin);
	} else {
		struct sockaddr_in6_ {
			__u16 family;
			__u16 port;
			__u32 flowinfo;
			__u32 addr[4];
			__u32 scope_id;
		} *sin6 = optval;

		if ((void *)(sin6 + 1) > optval_end) {
			count(C_GETSOCKOPT_MISSED);
			return 1;
		}
		sin6->family = AF_INET6;
		sin6->port = d->port;
		sin6->flowinfo = 0;
		COPY_IP6(sin6->addr, d->addr);
		sin6->scope_id = 0;
		ctx->optlen = sizeof(*sin6);
	}
	ctx->retval = 0;
	count(C_GETSOCKOPT_ANSWERED);
	return 1;
}

SEC("cgroup/getpeername4")
int np_getpeername4(struct bpf_sock_addr *ctx)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct dst *d = bpf_map_lookup_elem(&cookie_orig, &cookie);

	if (!d || !is_v4_mapped(d->addr))
		return 1;
	ctx->user_ip4 = d->addr[3];
	barrier();
	ctx->user_port = (__u32)d->port;
	return 1;
}

SEC("cgroup/getpeername6")
int np_getpeername6(struct bpf_sock_addr *ctx)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct dst *d = bpf_map_lookup_elem(&cookie_orig, &cookie);

	if (!d)
		return 1;
	set_user_addr6(ctx, d->addr[0], d->addr[1], d->addr[2], d->addr[3], d->port);
	return 1;
}

char _license[] SEC("license") = "GPL";
