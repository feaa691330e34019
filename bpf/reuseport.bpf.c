// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * sk_reuseport (select or migrate): picks the proxy worker for each new
 * connection among the ACTIVE slots, by flow hash or by fewest open
 * connections. A DRAINING worker gets nothing new, and when a worker's
 * listener closes, the connections queued on it migrate to an active one
 * instead of being reset: this is what makes restarts refuse nothing.
 */
#include "lib/maps.h"

static __always_inline int sl_slot_active(__u32 slot)
{
	__u32 *state = bpf_map_lookup_elem(&sl_wstate, &slot);

	return state && *state == SL_WORKER_ACTIVE;
}

static __always_inline __u32 sl_slot_load(__u32 slot)
{
	__u32 *load = bpf_map_lookup_elem(&sl_wload, &slot);

	return load ? *load : 0;
}

static __always_inline void sl_count_slot(__u32 slot)
{
	__u64 *n = bpf_map_lookup_elem(&sl_wsel, &slot);

	if (n)
		*n += 1;
}

/*
 * Scans of the 64 slots run under bpf_loop(): the verifier checks a callback
 * once instead of walking every iteration of every branch.
 */
struct sl_scan {
	__u32 count;     /* active slots seen */
	__u32 k;         /* nth: how many active slots to skip */
	__u32 start;     /* least-loaded: first slot to look at (spreads ties) */
	__u32 chosen;    /* the answer, or SL_MAX_WORKERS */
	__u32 best_load; /* least-loaded: the load of `chosen` */
};

static long sl_count_active_cb(__u32 slot, void *ctx)
{
	struct sl_scan *scan = ctx;

	scan->count += sl_slot_active(slot);
	return 0;
}

static long sl_nth_active_cb(__u32 slot, void *ctx)
{
	struct sl_scan *scan = ctx;

	if (!sl_slot_active(slot))
		return 0;
	if (scan->k == 0) {
		scan->chosen = slot;
		return 1; /* stop */
	}
	scan->k--;
	return 0;
}

static long sl_least_loaded_cb(__u32 i, void *ctx)
{
	struct sl_scan *scan = ctx;
	__u32 slot = (scan->start + i) % SL_MAX_WORKERS;
	__u32 load;

	if (!sl_slot_active(slot))
		return 0;
	load = sl_slot_load(slot);
	if (load < scan->best_load) {
		scan->chosen = slot;
		scan->best_load = load;
	}
	return 0;
}

static __always_inline int sl_select(struct sk_reuseport_md *md, void *workers)
{
	__u32 zero = 0, slot;
	struct sl_rp_cfg *cfg = bpf_map_lookup_elem(&sl_rpcfg, &zero);
	struct sl_scan scan = { .chosen = SL_MAX_WORKERS, .best_load = 0xffffffff };

	bpf_loop(SL_MAX_WORKERS, sl_count_active_cb, &scan, 0);
	if (scan.count == 0)
		goto fallback;
	if (cfg && cfg->mode == SL_LB_LEAST_LOADED) {
		scan.start = md->hash % SL_MAX_WORKERS;
		bpf_loop(SL_MAX_WORKERS, sl_least_loaded_cb, &scan, 0);
	} else {
		scan.k = md->hash % scan.count;
		bpf_loop(SL_MAX_WORKERS, sl_nth_active_cb, &scan, 0);
	}
	slot = scan.chosen;
	if (slot >= SL_MAX_WORKERS)
		goto fallback;
	/* Fails when the slot has no listener of this family (e.g. no IPv6). */
	if (bpf_sk_select_reuseport(md, workers, &slot, 0) != 0)
		goto fallback;
	sl_count_slot(slot);
	sl_count(md->migrating_sk ? SL_STAT_RP_MIGRATED : SL_STAT_RP_SELECTED);
	return SK_PASS;
fallback:
	/* SK_PASS without a selection: the kernel picks by hash in the group. */
	sl_count(SL_STAT_RP_FALLBACK);
	return SK_PASS;
}

SEC("sk_reuseport/migrate")
int sl_reuseport(struct sk_reuseport_md *md)
{
	struct bpf_sock *sk = md->sk;

	if (sk && sk->family == AF_INET6)
		return sl_select(md, &sl_work6);
	return sl_select(md, &sl_work4);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
