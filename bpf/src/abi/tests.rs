use super::*;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

#[test]
fn ipv4_is_stored_mapped_in_network_order() {
    let a = addr_be(IpAddr::V4(Ipv4Addr::new(127, 100, 0, 10)));
    let bytes: Vec<u8> = a.iter().flat_map(|w| w.to_ne_bytes()).collect();
    assert_eq!(bytes, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 100, 0, 10]);
}

#[test]
fn addresses_round_trip() {
    for ip in [
        IpAddr::V4(Ipv4Addr::new(10, 96, 0, 1)),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
        IpAddr::V6("fd00:5c::10".parse().unwrap()),
    ] {
        assert_eq!(ip_from_be(addr_be(ip)), ip);
    }
}

#[test]
fn svc_key_port_is_big_endian() {
    let k = SvcKey::new(SocketAddr::from(([127, 100, 0, 10], 8080)));
    assert_eq!(k.port_be.to_ne_bytes(), 8080u16.to_be_bytes());
    assert_eq!(k.socket_addr(), SocketAddr::from(([127, 100, 0, 10], 8080)));
}

#[test]
fn config_encodes_proxy_addresses() {
    let c = Config::new(
        SocketAddr::from(([127, 0, 0, 1], 15001)),
        SocketAddr::from((Ipv6Addr::LOCALHOST, 15002)),
        0x5c1,
    );
    assert_eq!(c.proxy_addr4_be.to_ne_bytes(), [127, 0, 0, 1]);
    assert_eq!(c.proxy_port4_be.to_ne_bytes(), 15001u16.to_be_bytes());
    assert_eq!(c.proxy_port6_be.to_ne_bytes(), 15002u16.to_be_bytes());
    assert_eq!(ip_from_be(c.proxy_addr6_be), IpAddr::V6(Ipv6Addr::LOCALHOST));
}

#[test]
fn flow_key_matches_the_accepted_socket() {
    let k =
        FlowKey::new(SocketAddr::from(([127, 0, 0, 1], 40000)), SocketAddr::from(([127, 0, 0, 1], 15001)));
    assert_eq!(ip_from_be(k.src_addr_be), IpAddr::V4(Ipv4Addr::LOCALHOST));
    assert_eq!(u16::from_be(k.src_port_be), 40000);
    assert_eq!(u16::from_be(k.dst_port_be), 15001);
}

#[test]
fn stat_names_cover_every_counter() {
    assert_eq!(Stat::ALL.len() as u32, Stat::COUNT);
    for (i, s) in Stat::ALL.iter().enumerate() {
        assert_eq!(*s as usize, i);
    }
}
