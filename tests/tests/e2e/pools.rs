//! A pool of external addresses: paired pooling, port parity and class.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
};

use nat_tests::{
    natlab::{EXTERNAL, EchoServer, NatLab, SERVER, host_addr},
    require_root,
};

use super::{SERVICE_PORT, tcp_request, udp_request};

/// RFC 4787 REQ-2 (paired pooling), REQ-4 (parity) and REQ-3a (class) with
/// the real natd and a pool of two external addresses: every flow of a host,
/// UDP, TCP and ping, datapath-claimed or set up by natd, leaves from the one
/// address the host is paired with (the two hosts from different ones, both
/// seen by the server); each external port has its inside port's parity; an
/// inside port below 1024 gets one from `low_port_range`, and with
/// `port_class = false` one from the NAT range.
#[test]
fn a_pool_pairs_each_host_with_one_address_and_ports_keep_parity_and_class() {
    require_root!();
    let second = "203.0.113.5";
    let mut lab = NatLab::new(2, true).unwrap();
    lab.gw.ip(&["addr", "add", &format!("{second}/24"), "dev", "wan0"]).unwrap();
    let pool_config = |class: bool| {
        format!("external_ip = [\"{EXTERNAL}\", \"{second}\"]\nlow_port_range = \"600-699\"\nport_class = {class}\n")
    };
    lab.start_natd_with_config(&pool_config(true)).unwrap();
    let server = EchoServer::start(&lab.server, SERVICE_PORT);
    let pool: [Ipv4Addr; 2] = [EXTERNAL, second.parse().unwrap()];
    let paired = |i: usize| pool[nat_common::pool_index(u32::from_ne_bytes(host_addr(i).octets()), 2) as usize];
    assert_ne!(paired(0), paired(1), "the lab's first two hosts should land on different addresses");

    for (i, host) in lab.hosts.iter().enumerate() {
        // 5000/5001: claimed in the datapath; 25001: natd's (in the NAT range).
        for port in [5000, 5001, 25001] {
            assert_eq!(udp_request(host, port, b"p".to_vec()).join().unwrap().unwrap(), b"echo:p");
        }
        assert_eq!(tcp_request(host, 5003, b"t".to_vec()).join().unwrap().unwrap().0, b"echo:t");
        host.exec(&["ping", "-c", "1", "-W", "2", &SERVER.to_string()]).unwrap();
        let sessions: Vec<_> = lab.sessions().unwrap().into_iter().filter(|s| s.inside.starts_with(&format!("{}:", host_addr(i)))).collect();
        assert_eq!(sessions.len(), 5, "{sessions:?}");
        for s in &sessions {
            let external: SocketAddrV4 = s.external.parse().unwrap();
            let inside: SocketAddrV4 = s.inside.parse().unwrap();
            assert_eq!(*external.ip(), paired(i), "host {i}: {s:?} left from another address");
            if s.proto != "icmp" {
                assert_eq!(external.port() & 1, inside.port() & 1, "parity not kept: {s:?}");
            }
        }
    }
    let seen: BTreeSet<Ipv4Addr> = server.udp_peers().iter().chain(&server.tcp_peers()).map(|p| match p {
        SocketAddr::V4(v4) => *v4.ip(),
        other => panic!("{other}"),
    }).collect();
    assert_eq!(seen, pool.into_iter().collect(), "the server did not see both pool addresses");

    // Class kept: NTP's port 123 leaves from a port of the low range.
    assert_eq!(udp_request(&lab.hosts[0], 123, b"n".to_vec()).join().unwrap().unwrap(), b"echo:n");
    let ntp = lab.external_of("udp", SocketAddrV4::new(host_addr(0), 123)).unwrap();
    let port = ntp.port();
    assert!((600..=699).contains(&port), "{ntp:?}");

    // Class not kept: a port of the NAT range.
    lab.stop_natd().unwrap();
    lab.start_natd_with_config(&pool_config(false)).unwrap();
    assert_eq!(udp_request(&lab.hosts[0], 124, b"m".to_vec()).join().unwrap().unwrap(), b"echo:m");
    let low = lab.external_of("udp", SocketAddrV4::new(host_addr(0), 124)).unwrap();
    let port = low.port();
    assert!((20000..=32767).contains(&port), "{low:?}");
}
