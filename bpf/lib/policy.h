/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The L3/L4 policy decision shared by the XDP (ingress) and tc (egress) programs. */
#ifndef SLUICE_POLICY_H
#define SLUICE_POLICY_H

#include "parse.h"

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct sl_lpm_key);
	__type(value, __u64); /* bit N: rule N names a source prefix covering this one */
} sl_psrc SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct sl_lpm_key);
	__type(value, __u64);
} sl_pdst SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SL_POLICY_SLOTS * 2 * SL_MAX_RULES);
	__type(key, __u32);
	__type(value, struct sl_rule);
} sl_prules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sl_pol_cfg);
} sl_pcfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2 * SL_PSTAT_PER_DIR);
	__type(key, __u32);
	__type(value, __u64);
} sl_pstats SEC(".maps");

/* Token buckets by source address. LRU: a flood of spoofed sources evicts old ones. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct sl_svc_key);
	__type(value, struct sl_rl_state);
} sl_prl SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} sl_pevents SEC(".maps");

/* Per-CPU event budget: {second, events sent in it}. */
struct sl_ev_budget {
	__u64 sec;
	__u64 sent;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sl_ev_budget);
} sl_pevrl SEC(".maps");

static __always_inline void sl_pcount(__u32 dir, __u32 stat)
{
	__u32 key = dir * SL_PSTAT_PER_DIR + stat;
	__u64 *n = bpf_map_lookup_elem(&sl_pstats, &key);

	if (n)
		*n += 1;
}

static __always_inline void sl_drop_event(const struct sl_pol_cfg *cfg, const struct sl_pkt *p, __u32 dir,
					  __u32 reason, __u32 rule)
{
	__u32 zero = 0;
	struct sl_ev_budget *b = bpf_map_lookup_elem(&sl_pevrl, &zero);
	__u64 now = bpf_ktime_get_ns();
	struct sl_drop_event *e;

	if (!b || !cfg)
		return;
	if (b->sec != now / 1000000000ULL) {
		b->sec = now / 1000000000ULL;
		b->sent = 0;
	}
	/* Under a flood the events are sampled: the counters still see every drop. */
	if (b->sent >= cfg->events_per_sec) {
		sl_pcount(dir, SL_PSTAT_EVENTS_SUPPRESSED);
		return;
	}
	e = bpf_ringbuf_reserve(&sl_pevents, sizeof(*e), 0);
	if (!e) {
		sl_pcount(dir, SL_PSTAT_EVENTS_SUPPRESSED);
		return;
	}
	b->sent++;
	e->ts_ns = now;
	__builtin_memcpy(e->src_be, p->src_be, 16);
	__builtin_memcpy(e->dst_be, p->dst_be, 16);
	e->sport = p->sport;
	e->dport = p->dport;
	e->proto = p->proto;
	e->dir = dir;
	e->reason = reason;
	e->_pad = 0;
	e->rule = rule;
	e->_pad2 = 0;
	bpf_ringbuf_submit(e, 0);
}

#define SL_NANO 1000000000ULL

/* True when the source is over its rate: the packet is dropped. */
static __always_inline int sl_rate_limited(const struct sl_pol_cfg *cfg, const struct sl_pkt *p)
{
	struct sl_svc_key key = {};
	struct sl_rl_state *st, fresh = {};
	__u64 now = bpf_ktime_get_ns(), cap = (__u64)cfg->rate_burst * SL_NANO, pps = cfg->rate_pps;

	__builtin_memcpy(key.addr_be, p->src_be, 16);
	st = bpf_map_lookup_elem(&sl_prl, &key);
	if (!st) {
		/* A new source starts with a full bucket, less this packet. */
		fresh.tokens_nano = cap >= SL_NANO ? cap - SL_NANO : 0;
		fresh.last_ns = now;
		bpf_map_update_elem(&sl_prl, &key, &fresh, BPF_ANY);
		return cap < SL_NANO;
	}
	/*
	 * Refill: pps packets per second is pps nano-packets per ns. Exact (no
	 * rounding to zero however close the packets come), and capped before the
	 * multiplication can overflow.
	 */
	__u64 elapsed = now > st->last_ns ? now - st->last_ns : 0;
	__u64 tokens = st->tokens_nano < cap ? st->tokens_nano : cap;
	__u64 room = cap - tokens;

	if (pps == 0 || elapsed >= room / pps + 1)
		tokens = cap;
	else
		tokens += elapsed * pps;
	if (tokens > cap)
		tokens = cap;
	st->last_ns = now;
	if (tokens < SL_NANO) {
		st->tokens_nano = tokens;
		return 1;
	}
	st->tokens_nano = tokens - SL_NANO;
	return 0;
}

struct sl_match {
	__u64 candidates;
	__u32 base; /* index of rule 0 of this slot and direction in sl_prules */
	__u32 found;
	const struct sl_pkt *pkt;
};

static long sl_match_cb(__u32 i, void *ctx)
{
	struct sl_match *m = ctx;
	__u32 idx = m->base + i;
	struct sl_rule *r;

	if ((m->candidates >> i) == 0)
		return 1; /* no candidate left: stop */
	if (!((m->candidates >> i) & 1))
		return 0;
	r = bpf_map_lookup_elem(&sl_prules, &idx);
	if (!r)
		return 0;
	if (r->proto != SL_PROTO_ANY && r->proto != m->pkt->proto)
		return 0;
	if (r->port_hi != 0 && (!m->pkt->has_ports || m->pkt->dport < r->port_lo || m->pkt->dport > r->port_hi))
		return 0;
	m->found = i;
	return 1; /* first match wins */
}

static __always_inline __u64 sl_prefix_mask(void *trie, __u32 slot, __u32 dir, const __u32 addr_be[4])
{
	struct sl_lpm_key key = { .prefixlen = 32 + 128, .slot = slot, .dir = dir };
	__u64 *mask;

	__builtin_memcpy(key.addr_be, addr_be, 16);
	mask = bpf_map_lookup_elem(trie, &key);
	return mask ? *mask : 0;
}

/* The verdict for a parsed IP packet: SL_ACT_ALLOW or SL_ACT_DENY. Counted. */
static __always_inline __u32 sl_policy(const struct sl_pkt *p, __u32 dir)
{
	__u32 zero = 0, slot, action;
	const struct sl_pol_cfg *cfg = bpf_map_lookup_elem(&sl_pcfg, &zero);
	struct sl_match m = { .found = SL_MAX_RULES, .pkt = p };

	if (!cfg)
		return SL_ACT_ALLOW;
	slot = cfg->active_slot & 1;
	if (dir == SL_DIR_INGRESS && cfg->rate_pps != 0 && sl_rate_limited(cfg, p)) {
		sl_pcount(dir, SL_PSTAT_RATE_LIMITED);
		sl_drop_event(cfg, p, dir, SL_DROP_RATE_LIMIT, 0);
		return SL_ACT_DENY;
	}
	m.candidates = sl_prefix_mask(&sl_psrc, slot, dir, p->src_be) & sl_prefix_mask(&sl_pdst, slot, dir, p->dst_be);
	if (m.candidates) {
		m.base = slot * 2 * SL_MAX_RULES + dir * SL_MAX_RULES;
		bpf_loop(SL_MAX_RULES, sl_match_cb, &m, 0);
	}
	if (m.found < SL_MAX_RULES) {
		__u32 idx = m.base + m.found;
		struct sl_rule *r = bpf_map_lookup_elem(&sl_prules, &idx);

		sl_pcount(dir, SL_PSTAT_RULE_BASE + m.found);
		action = r ? r->action : SL_ACT_ALLOW;
		if (action == SL_ACT_DENY)
			sl_drop_event(cfg, p, dir, SL_DROP_RULE, m.found);
		return action;
	}
	action = dir == SL_DIR_INGRESS ? cfg->default_in : cfg->default_eg;
	if (action == SL_ACT_DENY) {
		sl_pcount(dir, SL_PSTAT_DENIED_DEFAULT);
		sl_drop_event(cfg, p, dir, SL_DROP_DEFAULT, 0);
	} else {
		sl_pcount(dir, SL_PSTAT_ALLOWED_DEFAULT);
	}
	return action;
}

/* Parse + decide; SL_ACT_DENY for malformed IP packets, ALLOW for non-IP. */
static __always_inline __u32 sl_filter(void *data, void *end, __u64 len, __u32 dir)
{
	struct sl_pkt p = {};

	switch (sl_parse(data, end, len, &p)) {
	case SL_PARSE_NOT_IP:
		sl_pcount(dir, SL_PSTAT_NOT_IP);
		return SL_ACT_ALLOW;
	case SL_PARSE_MALFORMED: {
		__u32 zero = 0;

		sl_pcount(dir, SL_PSTAT_MALFORMED);
		sl_drop_event(bpf_map_lookup_elem(&sl_pcfg, &zero), &p, dir, SL_DROP_MALFORMED, 0);
		return SL_ACT_DENY;
	}
	default:
		return sl_policy(&p, dir);
	}
}

#endif
