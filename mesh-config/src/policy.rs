//! Validation of the `policy:` section (L3/L4 rules for XDP and tc).

use std::{net::IpAddr, path::Path};

use serde_saphyr::Spanned;

use crate::{
    ConfigError, MAX_POLICY_RULES,
    model::{Cidr, Direction, L4Protocol, Policy, PolicyAction, PolicyRule, RateLimit, XdpMode},
    raw::{PortSpec, RawPolicy, RawRule, loc},
};

pub(crate) fn validate(file: &Path, raw: &Spanned<RawPolicy>) -> Result<Policy, ConfigError> {
    let p = &raw.value;
    let err =
        |s: &dyn Fn() -> crate::Location, field: &str, msg: String| ConfigError::at(file, s(), field, msg);
    let mut interfaces = Vec::new();
    if let Some(list) = &p.interfaces {
        for (i, name) in list.value.iter().enumerate() {
            let n = name.value.trim();
            if n.is_empty() || n.len() > 15 || n.contains(['/', ' ', '\t']) || n == "." || n == ".." {
                return Err(err(
                    &|| loc(name),
                    &format!("policy.interfaces[{i}]"),
                    format!("'{n}' is not an interface name"),
                )
                .hint("use a name such as veth0 (at most 15 characters; `ip link` lists them)"));
            }
            if interfaces.iter().any(|x: &String| x == n) {
                return Err(err(
                    &|| loc(name),
                    &format!("policy.interfaces[{i}]"),
                    format!("interface '{n}' is listed twice"),
                )
                .hint("list each interface once"));
            }
            interfaces.push(n.to_string());
        }
    }
    let default_ingress = action_or(file, p.default.as_ref(), "policy.default", PolicyAction::Allow)?;
    let default_egress =
        action_or(file, p.egress_default.as_ref(), "policy.egress_default", PolicyAction::Allow)?;
    let mut rules = Vec::new();
    for (i, r) in p.rules.iter().flatten().enumerate() {
        rules.push(rule(file, i, &r.value)?);
    }
    for dir in [Direction::Ingress, Direction::Egress] {
        let n: usize = rules.iter().filter(|r| r.direction == dir).map(PolicyRule::kernel_rules).sum();
        if n > MAX_POLICY_RULES {
            return Err(ConfigError::at(file, loc(raw), "policy.rules", format!(
                "{n} {dir:?} rules (each port range of a rule counts as one); the kernel programs hold {MAX_POLICY_RULES}"
            ))
            .hint("merge rules, or use wider port ranges"));
        }
    }
    let rate_limit = match &p.rate_limit {
        None => None,
        Some(rl) => {
            let pps = rl.value.packets_per_second.value;
            if pps == 0 {
                return Err(ConfigError::at(
                    file,
                    loc(&rl.value.packets_per_second),
                    "policy.rate_limit.packets_per_second",
                    "0 packets per second would drop everything",
                )
                .hint("give a positive rate, or remove rate_limit"));
            }
            let burst = rl.value.burst.as_ref().map_or(pps, |b| b.value);
            if burst == 0 {
                return Err(ConfigError::at(
                    file,
                    loc(rl.value.burst.as_ref().unwrap_or(&rl.value.packets_per_second)),
                    "policy.rate_limit.burst",
                    "a burst of 0 would drop everything",
                )
                .hint("use at least 1 (default: one second's worth)"));
            }
            Some(RateLimit { packets_per_second: pps, burst })
        }
    };
    if interfaces.is_empty()
        && (!rules.is_empty() || rate_limit.is_some() || default_ingress == PolicyAction::Deny)
    {
        return Err(ConfigError::at(
            file,
            loc(raw),
            "policy.interfaces",
            "the policy has rules but no interfaces to enforce them on",
        )
        .hint("list the interfaces, e.g. interfaces: [veth0]"));
    }
    let drop_events_per_second = p.drop_events_per_second.as_ref().map_or(100, |e| e.value);
    let xdp_mode = match &p.xdp_mode {
        None => XdpMode::Auto,
        Some(m) => match m.value.as_str() {
            "auto" => XdpMode::Auto,
            "native" => XdpMode::Native,
            "generic" => XdpMode::Generic,
            other => {
                return Err(ConfigError::at(
                    file,
                    loc(m),
                    "policy.xdp_mode",
                    format!("unknown XDP mode '{other}'"),
                )
                .hint("use auto (native where the driver has it), native or generic"));
            }
        },
    };
    Ok(Policy {
        interfaces,
        default_ingress,
        default_egress,
        rules,
        rate_limit,
        drop_events_per_second,
        xdp_mode,
    })
}

fn action_or(
    file: &Path,
    v: Option<&Spanned<String>>,
    field: &str,
    default: PolicyAction,
) -> Result<PolicyAction, ConfigError> {
    match v {
        None => Ok(default),
        Some(s) => match s.value.as_str() {
            "allow" => Ok(PolicyAction::Allow),
            "deny" => Ok(PolicyAction::Deny),
            other => Err(ConfigError::at(file, loc(s), field, format!("unknown action '{other}'"))
                .hint("use allow or deny")),
        },
    }
}

fn rule(file: &Path, i: usize, r: &RawRule) -> Result<PolicyRule, ConfigError> {
    let f = |sub: &str| format!("policy.rules[{i}].{sub}");
    let action = action_or(file, Some(&r.action), &f("action"), PolicyAction::Allow)?;
    let direction = match &r.direction {
        None => Direction::Ingress,
        Some(d) => match d.value.as_str() {
            "ingress" => Direction::Ingress,
            "egress" => Direction::Egress,
            other => {
                return Err(ConfigError::at(
                    file,
                    loc(d),
                    f("direction"),
                    format!("unknown direction '{other}'"),
                )
                .hint("use ingress (XDP, packets arriving) or egress (tc, packets leaving)"));
            }
        },
    };
    let cidrs = |list: &Option<Vec<Spanned<String>>>, name: &str| -> Result<Vec<Cidr>, ConfigError> {
        list.iter()
            .flatten()
            .enumerate()
            .map(|(j, c)| cidr(file, &format!("policy.rules[{i}].{name}[{j}]"), c))
            .collect()
    };
    let sources = cidrs(&r.sources, "sources")?;
    let destinations = cidrs(&r.destinations, "destinations")?;
    let protocol = match &r.protocol {
        None => L4Protocol::Any,
        Some(p) => match p.value.to_ascii_lowercase().as_str() {
            "any" => L4Protocol::Any,
            "tcp" => L4Protocol::Tcp,
            "udp" => L4Protocol::Udp,
            "icmp" => L4Protocol::Icmp,
            "icmpv6" => L4Protocol::Icmpv6,
            other => {
                return Err(ConfigError::at(
                    file,
                    loc(p),
                    f("protocol"),
                    format!("unknown protocol '{other}'"),
                )
                .hint("use tcp, udp, icmp, icmpv6 or any"));
            }
        },
    };
    let mut ports = Vec::new();
    for (j, p) in r.ports.iter().flatten().enumerate() {
        if !matches!(protocol, L4Protocol::Tcp | L4Protocol::Udp) {
            return Err(ConfigError::at(
                file,
                loc(p),
                format!("policy.rules[{i}].ports[{j}]"),
                "ports need protocol tcp or udp",
            )
            .hint("add `protocol: tcp` (or udp) to the rule"));
        }
        ports.push(port_range(file, &format!("policy.rules[{i}].ports[{j}]"), p)?);
    }
    let name = r.name.as_ref().map_or_else(|| format!("rule-{i}"), |n| n.value.clone());
    Ok(PolicyRule { name, action, direction, sources, destinations, protocol, ports })
}

fn cidr(file: &Path, field: &str, c: &Spanned<String>) -> Result<Cidr, ConfigError> {
    let bad = |msg: String| {
        ConfigError::at(file, loc(c), field, msg)
            .hint("write an address or a prefix, e.g. 10.0.0.0/8, 192.0.2.7 or fd00::/8")
    };
    let text = c.value.trim();
    let (a, p) = match text.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (text, None),
    };
    let addr: IpAddr = a.parse().map_err(|_| bad(format!("'{text}' is not an address or prefix")))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix: u8 = match p {
        None => max,
        Some(p) => p
            .parse()
            .ok()
            .filter(|n| *n <= max)
            .ok_or_else(|| bad(format!("'/{p}' is not a prefix length for {a} (0 to {max})")))?,
    };
    let masked = mask(addr, prefix);
    if masked != addr {
        return Err(ConfigError::at(file, loc(c), field, format!("{text} has bits set past the prefix"))
            .hint(format!("did you mean {masked}/{prefix}?")));
    }
    Ok(Cidr { addr, prefix })
}

fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let m = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix)) };
            IpAddr::V4((u32::from(v4) & m).into())
        }
        IpAddr::V6(v6) => {
            let m = if prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(prefix)) };
            IpAddr::V6((u128::from(v6) & m).into())
        }
    }
}

fn port_range(file: &Path, field: &str, p: &Spanned<PortSpec>) -> Result<(u16, u16), ConfigError> {
    let text = p.value.0.trim();
    let bad = || {
        ConfigError::at(file, loc(p), field, format!("'{text}' is not a port or port range"))
            .hint("write 80 or \"8000-8100\" (1 to 65535, low-high)")
    };
    let num = |s: &str| s.trim().parse::<u16>().ok().filter(|n| *n != 0);
    let (lo, hi) = match text.split_once('-') {
        Some((a, b)) => (num(a).ok_or_else(bad)?, num(b).ok_or_else(bad)?),
        None => {
            let n = num(text).ok_or_else(bad)?;
            (n, n)
        }
    };
    if lo > hi {
        return Err(bad());
    }
    Ok((lo, hi))
}
