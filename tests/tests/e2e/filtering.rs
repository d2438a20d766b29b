//! Address-and-port-dependent filtering with real sockets, on both first-packet
//! paths.

use std::{net::SocketAddrV4, time::Duration};

use nat_tests::{
    natlab::{EchoServer, IO_TIMEOUT, NatLab, SERVER, udp_socket_in},
    require_root,
};

use super::SERVICE_PORT;

/// RFC 4787 REQ-8 with real sockets, on both first-packet paths: under
/// address-and-port-dependent filtering the server port a host sent to gets
/// its reply through, whether the datapath claimed a queued port (inside
/// port 6100) or natd set the flow up and sent the first packet itself
/// (inside port 25000, in the NAT range); a datagram from another server
/// port to the same external endpoint reaches nobody.
#[test]
fn address_and_port_dependent_filtering_lets_in_only_the_remote_sent_to() {
    require_root!();
    let mut lab = NatLab::new(1, true).unwrap();
    lab.start_natd(&["--filtering", "address-and-port-dependent"]).unwrap();
    let echo = EchoServer::start(&lab.server, SERVICE_PORT);
    let mut buf = [0u8; 64];
    for (i, source_port) in [6100u16, 25000].into_iter().enumerate() {
        let sock = udp_socket_in(&lab.hosts[0], source_port);
        sock.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        sock.send_to(b"x", SocketAddrV4::new(SERVER, SERVICE_PORT)).unwrap();
        let (n, _) = sock.recv_from(&mut buf).unwrap_or_else(|e| panic!("port {source_port}: no reply from the remote sent to: {e}"));
        assert_eq!(&buf[..n], b"echo:x");
        let external = *echo.udp_peers().last().unwrap();

        let stranger = udp_socket_in(&lab.server, 7100 + i as u16);
        stranger.send_to(b"intruder", external).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        let got = sock.recv_from(&mut buf);
        assert!(got.is_err(), "port {source_port}: a datagram from another server port got in: {got:?}");
    }
    let stats = lab.stats().unwrap();
    assert!(stats.get("drop_filtered").unwrap() >= 2, "{stats:?}");
    assert!(stats.get("first_packets_sent").unwrap() >= 1, "natd's own first-packet path was not taken: {stats:?}");
}
