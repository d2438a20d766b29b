//! Hairpinning with real sockets, the first packet set up by natd included.

use std::net::{SocketAddr, SocketAddrV4};

use nat_tests::{
    natlab::{EchoServer, IO_TIMEOUT, NatLab, SERVER, host_addr, udp_socket_in},
    require_root,
};

use super::SERVICE_PORT;

/// RFC 4787 REQ-9 (hairpinning) with real sockets: host 0 reaches host 1
/// through host 1's external address and port; host 1 sees host 0's external
/// endpoint, and its reply comes back the same way.
#[test]
fn hairpinning_lets_inside_hosts_reach_each_other_by_external_endpoint() {
    require_root!();
    let mut lab = NatLab::new(2, true).unwrap();
    lab.start_natd(&[]).unwrap();
    let _server = EchoServer::start(&lab.server, SERVICE_PORT);
    let (a, b) = (
        udp_socket_in(&lab.hosts[0], 6100),
        udp_socket_in(&lab.hosts[1], 6000),
    );
    let mut buf = [0u8; 64];
    for sock in [&a, &b] {
        sock.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        sock.send_to(b"map me", SocketAddrV4::new(SERVER, SERVICE_PORT)).unwrap();
        sock.recv_from(&mut buf).unwrap();
    }
    let a_ext = SocketAddr::from(lab.external_of("udp", SocketAddrV4::new(host_addr(0), 6100)).unwrap());
    let b_ext = SocketAddr::from(lab.external_of("udp", SocketAddrV4::new(host_addr(1), 6000)).unwrap());

    a.send_to(b"hairpin", b_ext).unwrap();
    let (n, from) = b.recv_from(&mut buf).expect("host 1 got nothing through the external address");
    assert_eq!((&buf[..n], from), (&b"hairpin"[..], a_ext), "host 1 must see host 0's external endpoint");
    b.send_to(b"back", from).unwrap();
    let (n, from) = a.recv_from(&mut buf).expect("the reply did not come back");
    assert_eq!((&buf[..n], from), (&b"back"[..], b_ext));
    assert!(lab.stats().unwrap().get("hairpinned").unwrap() >= 2);
}

/// RFC 4787 REQ-9 on natd's path: a host's very first packet, from an
/// inside port in the NAT range (natd sets the flow up), sent straight to
/// another host's external endpoint, arrives once: natd hairpins it itself
/// instead of leaving it to a retransmit.
#[test]
fn a_hairpinned_first_packet_set_up_by_natd_is_delivered() {
    require_root!();
    let mut lab = NatLab::new(2, true).unwrap();
    lab.start_natd(&[]).unwrap();
    let _server = EchoServer::start(&lab.server, SERVICE_PORT);
    let b = udp_socket_in(&lab.hosts[1], 6000);
    b.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut buf = [0u8; 64];
    b.send_to(b"map me", SocketAddrV4::new(SERVER, SERVICE_PORT)).unwrap();
    b.recv_from(&mut buf).unwrap();
    let b_ext: SocketAddr = lab.external_of("udp", SocketAddrV4::new(host_addr(1), 6000)).unwrap().into();

    let before = lab.stats().unwrap().get("first_packets_sent").unwrap();
    let a = udp_socket_in(&lab.hosts[0], 25100);
    a.send_to(b"first", b_ext).unwrap();
    let (n, from) = b.recv_from(&mut buf).expect("the hairpinned first packet was lost");
    assert_eq!(&buf[..n], b"first");
    let a_ext = lab.external_of("udp", SocketAddrV4::new(host_addr(0), 25100)).unwrap().to_string();
    assert_eq!(from.to_string(), a_ext, "host 1 must see host 0's external endpoint");
    assert_eq!(lab.stats().unwrap().get("first_packets_sent").unwrap(), before + 1, "natd did not send it");
}
