//! Unsolicited inbound packets reach no LAN host.

use std::{
    net::{SocketAddrV4, TcpStream, UdpSocket},
    time::Duration,
};

use nat_tests::{
    natlab::{EXTERNAL, NatLab, host_addr, in_ns, udp_socket_in},
    require_root,
};

/// RFC 5382 REQ-4 and the no-leak invariant.
///
/// Unsolicited inbound packets reach no LAN host: to NAT ports on the external
/// address (no mapping) and addressed straight to an inside host.
#[test]
fn unsolicited_inbound_reaches_no_lan_host() {
    require_root!();
    let mut lab = NatLab::new(1, false).unwrap();
    lab.start_natd(&[]).unwrap();
    // A route to the inside network, as a hostile next hop could have.
    lab.server.ip(&["route", "add", "10.77.1.0/24", "via", &EXTERNAL.to_string()]).unwrap();
    let listener = udp_socket_in(&lab.hosts[0], 20000);
    listener.set_read_timeout(Some(Duration::from_millis(800))).unwrap();
    in_ns(&lab.server, || {
        let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
        for port in [20000u16, 20001, 25000, 32767] {
            sock.send_to(b"knock", SocketAddrV4::new(EXTERNAL, port)).unwrap();
        }
        sock.send_to(b"direct", SocketAddrV4::new(host_addr(0), 20000)).unwrap();
    })
    .join()
    .unwrap();
    let mut buf = [0u8; 64];
    let got = listener.recv_from(&mut buf);
    assert!(got.is_err(), "an unsolicited packet reached the LAN host: {got:?}");
    // RFC 5382 REQ-4: an unsolicited SYN gets no answer (no RST): the
    // connect times out instead of being refused.
    let syn = in_ns(&lab.server, || TcpStream::connect_timeout(&SocketAddrV4::new(EXTERNAL, 25001).into(), Duration::from_secs(2)).map_err(|e| e.kind()))
        .join()
        .unwrap();
    assert_eq!(syn.map(drop), Err(std::io::ErrorKind::TimedOut), "the gateway answered an unsolicited SYN");
    let stats = lab.stats().unwrap();
    assert!(stats.get("drop_inbound_no_mapping").unwrap() >= 4, "{stats:?}");
    assert!(stats.get("drop_inbound_transit").unwrap() >= 1, "{stats:?}");
}
