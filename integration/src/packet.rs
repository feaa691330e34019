//! Crafted packets for BPF_PROG_TEST_RUN: Ethernet, VLAN tags, IPv4 (with
//! fragments and bad headers), IPv6 (with extension headers), TCP, UDP, ICMP.

use std::net::{Ipv4Addr, Ipv6Addr};

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;

/// Ethernet header with `vlans` tags, then `ethertype`.
pub fn eth(vlans: &[u16], ethertype: u16) -> Vec<u8> {
    let mut p = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    for (i, vid) in vlans.iter().enumerate() {
        let tpid = if i == 0 && vlans.len() > 1 { ETH_P_8021AD } else { ETH_P_8021Q };
        p.extend_from_slice(&tpid.to_be_bytes());
        p.extend_from_slice(&vid.to_be_bytes());
    }
    p.extend_from_slice(&ethertype.to_be_bytes());
    p
}

/// An L4 header: TCP (20 bytes) or UDP (8) with ports, ICMP echo (8).
pub fn l4(proto: u8, sport: u16, dport: u16) -> Vec<u8> {
    match proto {
        TCP => {
            let mut h = vec![0u8; 20];
            h[0..2].copy_from_slice(&sport.to_be_bytes());
            h[2..4].copy_from_slice(&dport.to_be_bytes());
            h[12] = 5 << 4; // data offset
            h[13] = 0x02; // SYN
            h
        }
        UDP => {
            let mut h = vec![0u8; 8];
            h[0..2].copy_from_slice(&sport.to_be_bytes());
            h[2..4].copy_from_slice(&dport.to_be_bytes());
            h[4..6].copy_from_slice(&8u16.to_be_bytes());
            h
        }
        _ => vec![8, 0, 0, 0, 0, 1, 0, 1],
    }
}

/// IPv4 header (no options) + payload; `frag_off` is the raw field (flags + offset).
pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, frag_off: u16, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0x45, 0];
    h.extend_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    h.extend_from_slice(&[0, 1]);
    h.extend_from_slice(&frag_off.to_be_bytes());
    h.extend_from_slice(&[64, proto, 0, 0]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    h.extend_from_slice(payload);
    h
}

/// IPv6 header + extension headers (`(type, 8-byte body)` each) + payload.
pub fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, proto: u8, exts: &[(u8, [u8; 6])], payload: &[u8]) -> Vec<u8> {
    let first = exts.first().map_or(proto, |e| e.0);
    let ext_len = exts.len() * 8;
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&((ext_len + payload.len()) as u16).to_be_bytes());
    h.extend_from_slice(&[first, 64]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    for (i, (_, body)) in exts.iter().enumerate() {
        let next = exts.get(i + 1).map_or(proto, |e| e.0);
        h.push(next);
        h.push(0); // length: 8 bytes (0 extra units)
        h.extend_from_slice(body);
    }
    h.extend_from_slice(payload);
    h
}

pub fn frame(vlans: &[u16], ethertype: u16, l3: &[u8]) -> Vec<u8> {
    let mut p = eth(vlans, ethertype);
    p.extend_from_slice(l3);
    p
}

pub fn tcp4(src: &str, dst: &str, dport: u16) -> Vec<u8> {
    frame(&[], ETH_P_IP, &ipv4(src.parse().unwrap(), dst.parse().unwrap(), TCP, 0, &l4(TCP, 40000, dport)))
}

pub fn udp4(src: &str, dst: &str, dport: u16) -> Vec<u8> {
    frame(&[], ETH_P_IP, &ipv4(src.parse().unwrap(), dst.parse().unwrap(), UDP, 0, &l4(UDP, 40000, dport)))
}

pub fn tcp6(src: &str, dst: &str, dport: u16) -> Vec<u8> {
    frame(
        &[],
        ETH_P_IPV6,
        &ipv6(src.parse().unwrap(), dst.parse().unwrap(), TCP, &[], &l4(TCP, 40000, dport)),
    )
}
