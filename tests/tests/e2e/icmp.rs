//! ICMP errors with real clients and sockets: Time Exceeded in, Port
//! Unreachable out, and hairpinned.

use std::net::{SocketAddr, SocketAddrV4, UdpSocket};

use nat_tests::{
    natlab::{EchoServer, IO_TIMEOUT, NatLab, SERVER, host_addr, in_ns},
    require_root,
};

use super::{SERVICE_PORT, udp_request};

/// RFC 5508 with a real client: ping with TTL 2 from a LAN host dies one hop
/// past the gateway (the server forwards it), and the Time Exceeded comes back
/// through the gateway to the host, which matches it to its own echo request:
/// what traceroute relies on.
#[test]
fn time_exceeded_from_beyond_the_gateway_reaches_the_inside_host() {
    require_root!();
    let mut lab = NatLab::new(1, true).unwrap();
    lab.start_natd(&[]).unwrap();
    // The server routes 198.51.100.0/24 on: a probe reaching it with TTL 1
    // expires there.
    lab.gw.ip(&["route", "add", "198.51.100.0/24", "via", &SERVER.to_string()]).unwrap();
    lab.server.sysctl("net.ipv4.conf.all.forwarding=1").unwrap();
    lab.server.ip(&["route", "add", "198.51.100.0/24", "dev", "eth0"]).unwrap();
    let out = lab.hosts[0].command(&["ping", "-c", "1", "-t", "2", "-W", "2", "198.51.100.10"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("From 203.0.113.2") && text.contains("Time to live exceeded"), "{text}");
    assert!(lab.stats().unwrap().get("icmp_error_in").unwrap() >= 1);
}

/// RFC 5508 the other way, with real sockets: a datagram from the server to a
/// mapping whose inside socket has closed draws the host's Port Unreachable,
/// which reaches the server's connected socket as "connection refused".
#[test]
fn port_unreachable_from_an_inside_host_reaches_the_remote_sender() {
    require_root!();
    let mut lab = NatLab::new(1, true).unwrap();
    lab.start_natd(&[]).unwrap();
    let _server = EchoServer::start(&lab.server, SERVICE_PORT);
    assert_eq!(udp_request(&lab.hosts[0], 6400, b"x".to_vec()).join().unwrap().unwrap(), b"echo:x");
    // The host's socket is closed now; the mapping lives on.
    let external: SocketAddr = lab.external_of("udp", SocketAddrV4::new(host_addr(0), 6400)).unwrap().into();
    let refused = in_ns(&lab.server, move || {
        let sock = UdpSocket::bind("0.0.0.0:7100").unwrap();
        sock.connect(external).unwrap();
        sock.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        sock.send(b"anyone there?").unwrap();
        sock.recv(&mut [0u8; 64]).map_err(|e| e.kind())
    })
    .join()
    .unwrap();
    assert_eq!(refused, Err(std::io::ErrorKind::ConnectionRefused), "the Port Unreachable did not come back through the gateway");
    assert!(lab.stats().unwrap().get("icmp_error_out").unwrap() >= 1);
}

/// RFC 5508 REQ-7 with real sockets: host 1 had a mapping for UDP port 6000
/// and closed the socket. Host 0's connected socket sends to host 1's
/// external endpoint (hairpinned); host 1's kernel answers Port Unreachable
/// to the external address, and the gateway hands it to host 0 as the
/// outside would: host 0's socket reports "connection refused".
#[test]
fn rfc5508_req7_hairpinned_port_unreachable_reaches_the_sender() {
    require_root!();
    let mut lab = NatLab::new(2, false).unwrap();
    lab.start_natd(&[]).unwrap();
    let _server = EchoServer::start(&lab.server, SERVICE_PORT);
    assert_eq!(udp_request(&lab.hosts[1], 6000, b"b".to_vec()).join().unwrap().unwrap(), b"echo:b");
    assert_eq!(udp_request(&lab.hosts[0], 6100, b"a".to_vec()).join().unwrap().unwrap(), b"echo:a");
    // Host 1's socket is closed now; its mapping lives on.
    let b_external: SocketAddr = lab.external_of("udp", SocketAddrV4::new(host_addr(1), 6000)).unwrap().into();
    let refused = in_ns(&lab.hosts[0], move || {
        let sock = UdpSocket::bind("0.0.0.0:6100").unwrap();
        sock.connect(b_external).unwrap();
        sock.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        sock.send(b"anyone there?").unwrap();
        sock.recv(&mut [0u8; 64]).map_err(|e| e.kind())
    })
    .join()
    .unwrap();
    assert_eq!(refused, Err(std::io::ErrorKind::ConnectionRefused), "the hairpinned Port Unreachable did not reach host 0");
    let stats = lab.stats().unwrap();
    assert!(stats.get("hairpinned").unwrap() >= 1 && stats.get("icmp_error_hairpinned").unwrap() >= 1, "{stats:?}");
}
