/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Includes, names and small helpers every Sluice program shares. */
#ifndef SLUICE_COMMON_H
#define SLUICE_COMMON_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "abi.h"

/* From <sys/socket.h> and <netinet/in.h>, which do not build for the bpf target. */
#define AF_INET 2
#define AF_INET6 10
#define SOCK_STREAM 1
/* From <errno.h>. */
#define ECONNREFUSED 111

/* cgroup sock_addr verdicts. */
#define SL_VERDICT_PROCEED 1
#define SL_VERDICT_REJECT 0
/* sock_ops programs return 1 (their return value only matters for a few ops). */
#define SL_SOCKOPS_OK 1

/* Load-time configuration, set by the redirector before the object is loaded. */
const volatile struct sl_config sl_cfg = {};

static __always_inline void sl_addr_from_v4(__u32 out_be[4], __u32 ip4_be)
{
	out_be[0] = 0;
	out_be[1] = 0;
	out_be[2] = bpf_htonl(0x0000ffff);
	out_be[3] = ip4_be;
}

static __always_inline int sl_addr_is_v4mapped(const __u32 a_be[4])
{
	return a_be[0] == 0 && a_be[1] == 0 && a_be[2] == bpf_htonl(0x0000ffff);
}

#endif
