//! Fragmented datagrams both ways: fragmented by the kernels, and crafted in
//! reverse order.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket},
    process::Stdio,
    thread,
    time::{Duration, Instant},
};

use nat_tests::{
    natlab::{
        EXTERNAL, EchoServer, IO_TIMEOUT, KillOnDrop, NatLab, SERVER, host_addr, in_ns,
        snmp_counter, udp_socket_in,
    },
    netns::Netns,
    require_root,
};
use socket2::{Domain, Protocol, Socket, Type};

use super::{SERVICE_PORT, distinct_ports_on_external};

/// Lets the kernel fragment datagrams bigger than the MTU (DF clear), as a
/// UDP application that does not do path-MTU discovery has it.
fn allow_fragmentation(sock: &UdpSocket) {
    use std::os::fd::AsRawFd as _;
    let value: libc::c_int = libc::IP_PMTUDISC_DONT;
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "IP_MTU_DISCOVER: {}", std::io::Error::last_os_error());
}

/// RFC 4787 REQ-14 with real sockets: a 4000-byte UDP datagram (the sending
/// kernel fragments it for the 1500-byte MTU) from a LAN host to an echo
/// server, and the echo (fragmented by the server's kernel) back, compared
/// byte for byte; no checksum errors at either receiver. Once more from an
/// inside port in the NAT range, whose first fragment natd translates.
#[test]
fn a_udp_datagram_bigger_than_the_mtu_crosses_fragmented_both_ways() {
    require_root!();
    let mut lab = NatLab::new(1, true).unwrap();
    lab.start_natd(&[]).unwrap();
    let echo = EchoServer::start(&lab.server, SERVICE_PORT);
    let sock = udp_socket_in(&lab.hosts[0], 5600);
    allow_fragmentation(&sock);
    sock.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let payload: Vec<u8> = (0..4000u32).map(|i| (i * 31 % 251) as u8).collect();
    let mut buf = vec![0u8; 65536];
    for round in 0..3 {
        sock.send_to(&payload, SocketAddrV4::new(SERVER, SERVICE_PORT)).unwrap();
        let (n, from) = sock.recv_from(&mut buf).unwrap_or_else(|e| panic!("round {round}: no echo of the fragmented datagram: {e}"));
        assert_eq!(from, SocketAddr::from(SocketAddrV4::new(SERVER, SERVICE_PORT)));
        assert_eq!(&buf[..n], &[b"echo:".as_slice(), &payload].concat()[..], "round {round}: the echo differs");
    }
    let peers = echo.udp_peers();
    assert_eq!(distinct_ports_on_external(&peers).len(), 1, "one mapping: {peers:?}");
    // An inside port in the NAT range: natd sets the flow up and sends the
    // first fragment itself; the later ones, handed over behind it, follow.
    let slow = udp_socket_in(&lab.hosts[0], 25600);
    allow_fragmentation(&slow);
    slow.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    slow.send_to(&payload, SocketAddrV4::new(SERVER, SERVICE_PORT)).unwrap();
    let (n, _) = slow.recv_from(&mut buf).expect("no echo of the datagram whose first fragment natd sent");
    assert_eq!(&buf[..n], &[b"echo:".as_slice(), &payload].concat()[..], "slow path: the echo differs");
    for ns in [&lab.hosts[0], &lab.server] {
        assert_eq!(snmp_counter(ns, "Udp", "InCsumErrors").unwrap(), 0, "UDP checksum errors in {}", ns.name);
        assert!(snmp_counter(ns, "Ip", "ReasmOKs").unwrap() >= 3, "{} reassembled no datagram", ns.name);
    }
    let stats = lab.stats().unwrap();
    // 4008 bytes of UDP: three fragments each way per round. The first
    // round's outbound ones may go through natd's kernel path instead
    // (no_neighbour_to_daemon) while the gateway resolves the server's MAC.
    assert!(stats.get("fragment_translated_out").unwrap() >= 4, "{stats:?}");
    assert!(stats.get("fragment_translated_in").unwrap() >= 6, "{stats:?}");
    assert!(stats.get("first_packets_sent").unwrap() >= 1, "{stats:?}");
    assert_eq!(stats.get("fragments_expired"), Some(0), "{stats:?}");
}

/// Sends IPv4 packets (headers included) from `ns` through a raw socket, in
/// the given order, pausing `pause` before the last one.
fn send_raw(ns: &Netns, packets: Vec<Vec<u8>>, pause: Duration) -> thread::JoinHandle<()> {
    in_ns(ns, move || {
        let sock = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(libc::IPPROTO_RAW))).expect("raw socket");
        let last = packets.len() - 1;
        for (i, ip) in packets.iter().enumerate() {
            if i == last {
                thread::sleep(pause);
            }
            let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
            sock.send_to(ip, &SocketAddrV4::new(dst, 0).into()).expect("sending a crafted fragment");
        }
    })
}

/// The fragments of a UDP datagram, IPv4 header on, last fragment first.
fn reversed_fragments(from: (Ipv4Addr, u16), to: (Ipv4Addr, u16), payload: &[u8], id: u16) -> Vec<Vec<u8>> {
    let mut frame = nat_tests::packet::Frame::udp(from, to);
    (frame.payload, frame.id) = (payload.to_vec(), id);
    let mut pieces: Vec<Vec<u8>> = nat_tests::packet::fragments(&frame.build(), 1000).into_iter().map(|f| f[14..].to_vec()).collect();
    pieces.reverse();
    pieces
}

/// RFC 4787 REQ-14, out of order: the fragments of one datagram crafted with a
/// raw socket and sent last first, with a pause before the first fragment,
/// from the server to an inside host's mapping (opened by the host) and from
/// the inside host outwards. The later fragments wait in natd until the
/// first has been translated, then follow it; the receiving UDP socket gets
/// the whole datagram either way.
#[test]
fn fragments_in_reverse_order_reach_the_socket_whole_both_ways() {
    require_root!();
    let mut lab = NatLab::new(1, false).unwrap();
    lab.start_natd(&[]).unwrap();
    let echo = EchoServer::start(&lab.server, SERVICE_PORT);
    let inside_port = 5700;
    let sock = udp_socket_in(&lab.hosts[0], inside_port);
    sock.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut buf = vec![0u8; 65536];
    sock.send_to(b"open", SocketAddrV4::new(SERVER, SERVICE_PORT)).unwrap();
    sock.recv_from(&mut buf).expect("no echo through the new mapping");
    let external_port = echo.udp_peers()[0].port();
    let pause = Duration::from_millis(300);
    let capture_file = std::env::temp_dir().join(format!("{}-frag-wan.pcap", lab.gw.name));
    let mut capture = KillOnDrop(
        lab.server
            .command(&["tcpdump", "-i", "eth0", "-n", "-U", "-w", capture_file.to_str().unwrap(), "ip"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tcpdump"),
    );
    thread::sleep(Duration::from_millis(500));

    // Inbound: server -> the host's external endpoint.
    let inbound: Vec<u8> = (0..3000u32).map(|i| (i % 253) as u8).collect();
    send_raw(&lab.server, reversed_fragments((SERVER, SERVICE_PORT), (EXTERNAL, external_port), &inbound, 0x7001), pause)
        .join()
        .unwrap();
    let (n, from) = sock.recv_from(&mut buf).expect("the inside socket did not get the reverse-ordered datagram");
    assert_eq!(from, SocketAddr::from(SocketAddrV4::new(SERVER, SERVICE_PORT)));
    assert_eq!(&buf[..n], &inbound[..], "inbound datagram differs");

    // Outbound: the host -> a server socket, from the same inside endpoint.
    let receiver = udp_socket_in(&lab.server, SERVICE_PORT + 1);
    receiver.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let outbound: Vec<u8> = (0..3000u32).map(|i| (i % 241) as u8).collect();
    let pieces = reversed_fragments((host_addr(0), inside_port), (SERVER, SERVICE_PORT + 1), &outbound, 0x7002);
    let sent = pieces.len();
    send_raw(&lab.hosts[0], pieces, pause).join().unwrap();
    let (n, from) = receiver.recv_from(&mut buf).expect("the server socket did not get the reverse-ordered datagram");
    assert_eq!(from, SocketAddr::from(SocketAddrV4::new(EXTERNAL, external_port)), "not from the host's mapping");
    assert_eq!(&buf[..n], &outbound[..], "outbound datagram differs");

    // The parked fragments left from the external address too: no inside
    // address on the WAN, and every outbound fragment seen there.
    // -v: each packet's IP id on its first line, addresses on the second.
    // The capture reaches the file a little after the socket got the datagram.
    let read_capture = || lab.server.exec(&["tcpdump", "-n", "-v", "-r", capture_file.to_str().unwrap()]).unwrap_or_default();
    let seen = |dump: &str| dump.lines().filter(|l| l.contains(&format!("id {},", 0x7002))).count();
    let deadline = Instant::now() + Duration::from_secs(5);
    while seen(&read_capture()) < sent && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(200));
    }
    thread::sleep(Duration::from_millis(200));
    unsafe { libc::kill(capture.0.id() as i32, libc::SIGINT) };
    let _ = capture.0.wait();
    let dump = read_capture();
    let _ = std::fs::remove_file(&capture_file);
    let leaks: Vec<&str> = dump.lines().filter(|l| l.contains("10.77.1.")).collect();
    assert!(leaks.is_empty(), "inside addresses on the WAN:\n{}", leaks.join("\n"));
    assert_eq!(seen(&dump), sent, "outbound fragments on the WAN:\n{dump}");

    let stats = lab.stats().unwrap();
    // Four fragments each way (3008 bytes of UDP in 1000-byte pieces): the
    // three later ones parked and released each way.
    assert_eq!(stats.get("fragment_to_daemon"), Some(6), "{stats:?}");
    assert_eq!(stats.get("fragments_parked"), Some(6), "{stats:?}");
    assert_eq!(stats.get("fragments_sent"), Some(6), "{stats:?}");
    assert_eq!(stats.get("fragments_expired"), Some(0), "{stats:?}");
}
