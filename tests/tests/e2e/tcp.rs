//! TCP: simultaneous open, and first packets (SYNs) that need no retransmit.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddrV4, TcpStream},
    time::Duration,
};

use nat_tests::{
    natlab::{EchoServer, IO_TIMEOUT, NatLab, SERVER, host_addr, in_ns},
    require_root,
};
use socket2::{Domain, Protocol, Socket, Type};

use super::{SERVICE_PORT, tcp_request, udp_request};

/// TCP connect from `bind` to `to` in the calling thread's namespace, then
/// `say` and read what the peer says. Returns what was read, and the
/// connection, still open.
fn tcp_talk(bind: SocketAddrV4, to: SocketAddrV4, say: &'static [u8]) -> Result<(Vec<u8>, TcpStream), String> {
    let sock = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).map_err(|e| e.to_string())?;
    sock.set_reuse_address(true).unwrap();
    sock.bind(&bind.into()).map_err(|e| format!("bind {bind}: {e}"))?;
    sock.connect_timeout(&to.into(), Duration::from_secs(10)).map_err(|e| format!("connect {bind} -> {to}: {e}"))?;
    let mut stream: TcpStream = sock.into();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.write_all(say).map_err(|e| e.to_string())?;
    let mut heard = vec![0u8; say.len()];
    stream.read_exact(&mut heard).map_err(|e| format!("reading from {to}: {e}"))?;
    Ok((heard, stream))
}

/// RFC 5382 REQ-2: TCP simultaneous open through the gateway, with real
/// sockets and address-and-port-dependent filtering. The server drops the
/// inside host's bare SYN (an nftables rule in its namespace), so the two
/// SYNs cross: the server's SYN reaches the inside host in SYN_SENT through
/// the mapping, which answers SYN-ACK. Both connects complete, data flows
/// both ways, and natd shows the session established.
#[test]
fn tcp_simultaneous_open_completes_through_the_gateway() {
    require_root!();
    const INSIDE_PORT: u16 = 6200;
    const SERVER_PORT: u16 = 7300;
    let mut lab = NatLab::new(1, true).unwrap();
    lab.start_natd(&["--filtering", "address-and-port-dependent"]).unwrap();
    let rule = format!(
        "table ip simopen {{ chain input {{ type filter hook input priority 0; tcp dport {SERVER_PORT} tcp flags & (syn | ack) == syn counter drop; }}; }}"
    );
    lab.server.exec(&["nft", &rule]).unwrap();

    let inside = in_ns(&lab.hosts[0], move || {
        tcp_talk(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, INSIDE_PORT), SocketAddrV4::new(SERVER, SERVER_PORT), b"from inside")
    });
    // The inside SYN made the mapping: the server connects to its external end.
    let external = lab.wait_external_of("tcp", SocketAddrV4::new(host_addr(0), INSIDE_PORT), Duration::from_secs(5)).unwrap();
    let outside = in_ns(&lab.server, move || {
        tcp_talk(SocketAddrV4::new(SERVER, SERVER_PORT), external, b"from outsid")
    });
    let (heard_inside, _inside_conn) = inside.join().unwrap().unwrap();
    let (heard_outside, _outside_conn) = outside.join().unwrap().unwrap();
    assert_eq!((heard_inside.as_slice(), heard_outside.as_slice()), (&b"from outsid"[..], &b"from inside"[..]));
    let dropped = lab.server.exec(&["nft", "list", "table", "ip", "simopen"]).unwrap();
    assert!(!dropped.contains("packets 0 "), "the server never dropped the inside SYN, so the SYNs did not cross:\n{dropped}");
    let session = lab.sessions().unwrap().into_iter().find(|s| s.proto == "tcp").unwrap();
    assert_eq!(session.state, "established", "{session:?}");
}

/// The first packet of a new flow is delivered without relying on a retry:
/// a TCP connect completes well inside the 1 s SYN retransmit timer, and a
/// single UDP datagram gets its answer.
#[test]
fn first_packet_is_not_lost_tcp_connects_without_a_syn_retransmit() {
    require_root!();
    let mut lab = NatLab::new(1, false).unwrap();
    lab.start_natd(&[]).unwrap();
    let _server = EchoServer::start(&lab.server, SERVICE_PORT);
    for port in [6001, 6002, 6003] {
        let (reply, connect) = tcp_request(&lab.hosts[0], port, b"syn".to_vec()).join().unwrap().unwrap();
        assert_eq!(reply, b"echo:syn");
        assert!(connect < Duration::from_millis(500), "connect took {connect:?}: the first SYN was lost and retransmitted");
    }
    assert_eq!(udp_request(&lab.hosts[0], 6004, b"once".to_vec()).join().unwrap().unwrap(), b"echo:once");
    let stats = lab.stats().unwrap();
    assert_eq!(stats.get("mappings_created"), Some(4), "{stats:?}");
    // Each first packet went on either from the datapath (a claimed free
    // port) or from natd (after the hand-off): none waited for a retransmit.
    let first_packets = stats.get("claimed_in_datapath").unwrap() + stats.get("first_packets_sent").unwrap();
    assert!(first_packets >= 4, "{stats:?}");
}
