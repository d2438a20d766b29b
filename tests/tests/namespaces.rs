//! The programs attached (native XDP) to veths in namespaces, with preloaded
//! mappings, carry a real ping and a real UDP exchange between a LAN host and
//! a WAN server. Every host, the gateway included, has its own namespace.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    os::fd::{AsRawFd as _, FromRawFd as _},
    thread,
    time::{Duration, Instant},
};

use aya::programs::XdpMode;
use nat_common::{Endpoint, GatewayConfig, Prefix, Reason, proto};
use nat_tests::{natlab::in_ns, netns::Netns, require_root};
use nat_userspace::datapath::{Datapath, Side};

const HOST: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 10);
const EXTERNAL: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const SERVER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
const PING_ID: u16 = 16962;
const PING_ID_EXTERNAL: u16 = 20500;
const UDP_PORT: u16 = 5000;
const UDP_PORT_EXTERNAL: u16 = 20001;
const SERVER_PORT: u16 = 7000;
const TCP_PORT: u16 = 5002;
const TCP_PORT_EXTERNAL: u16 = 20003;
const TCP_SERVER_PORT: u16 = 7100;
/// How long a socket waits before the test calls the traffic lost.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(5);

struct Lab {
    host: Netns,
    gw: Netns,
    server: Netns,
    datapath: Datapath,
}

/// host(eth0) <-> (lan0) gw (wan0) <-> (eth0) server
fn lab(tx_offload: bool) -> Lab {
    // With TX offload on, a local sender leaves only the pseudo-header sum in
    // the L4 checksum (CHECKSUM_PARTIAL); XDP cannot see that, and a redirect
    // drops the skb state that would finish it, so the datapath finishes it.
    // Real NICs deliver full sums: most tests send as a wire would (offload
    // off), and one keeps it on.
    let host = Netns::new("host").unwrap();
    let gw = Netns::new("gw").unwrap();
    let server = Netns::new("srv").unwrap();
    gw.ip(&["link", "add", "lan0", "type", "veth", "peer", "name", "eth0", "netns", &host.name]).unwrap();
    gw.ip(&["link", "add", "wan0", "type", "veth", "peer", "name", "eth0", "netns", &server.name]).unwrap();
    gw.ip(&["addr", "add", "10.77.1.1/24", "dev", "lan0"]).unwrap();
    gw.ip(&["addr", "add", "203.0.113.1/24", "dev", "wan0"]).unwrap();
    host.ip(&["addr", "add", "10.77.1.10/24", "dev", "eth0"]).unwrap();
    server.ip(&["addr", "add", "203.0.113.2/24", "dev", "eth0"]).unwrap();
    for (ns, ifname) in [(&gw, "lan0"), (&gw, "wan0"), (&host, "eth0"), (&server, "eth0")] {
        ns.ip(&["link", "set", ifname, "up"]).unwrap();
    }
    host.ip(&["route", "add", "default", "via", "10.77.1.1"]).unwrap();
    gw.sysctl("net.ipv4.conf.all.forwarding=1").unwrap();
    for ns in [&host, &server] {
        // XDP_REDIRECT into a veth is delivered only if the peer runs NAPI:
        // GRO (or an XDP program) on the receiving end turns it on.
        ns.exec(&["ethtool", "-K", "eth0", "gro", "on"]).unwrap();
        let tx = if tx_offload { "on" } else { "off" };
        ns.exec(&["ethtool", "-K", "eth0", "tx", tx]).unwrap();
    }
    // The gateway's own pings resolve its neighbours (its own traffic passes
    // the programs untouched once they are attached, too).
    gw.exec(&["ping", "-c", "1", "-W", "2", "10.77.1.10"]).unwrap();
    gw.exec(&["ping", "-c", "1", "-W", "2", "203.0.113.2"]).unwrap();

    let lan_ifindex = gw.ifindex("lan0").unwrap();
    let wan_ifindex = gw.ifindex("wan0").unwrap();
    let _inside_gw = gw.enter().unwrap();
    let mut datapath = Datapath::load().unwrap();
    datapath
        .set_config(GatewayConfig::new(EXTERNAL, wan_ifindex, 20000, 29999).with_lan_ifindex(lan_ifindex).with_inside_prefix(Prefix::new(HOST, 24), true))
        .unwrap();
    datapath.add_tx_port(lan_ifindex).unwrap();
    datapath.add_tx_port(wan_ifindex).unwrap();
    datapath
        .insert_pair(Endpoint::new(HOST, PING_ID, proto::ICMP), Endpoint::new(EXTERNAL, PING_ID_EXTERNAL, proto::ICMP), 1, 0)
        .unwrap();
    datapath
        .insert_pair(Endpoint::new(HOST, UDP_PORT, proto::UDP), Endpoint::new(EXTERNAL, UDP_PORT_EXTERNAL, proto::UDP), 2, 0)
        .unwrap();
    datapath.attach(Side::Lan, lan_ifindex, XdpMode::Driver).unwrap();
    datapath.attach(Side::Wan, wan_ifindex, XdpMode::Driver).unwrap();
    Lab { host, gw, server, datapath }
}

fn udp_exchange(lab: &Lab) {
    let server = in_ns(&lab.server, || {
        let sock = UdpSocket::bind(SocketAddrV4::new(SERVER, SERVER_PORT)).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 1500];
        let (n, peer) = sock.recv_from(&mut buf).expect("the server received nothing");
        sock.send_to(&buf[..n], peer).unwrap();
        (buf[..n].to_vec(), peer)
    });
    thread::sleep(Duration::from_millis(200));
    let client = in_ns(&lab.host, || {
        let sock = UdpSocket::bind(SocketAddrV4::new(HOST, UDP_PORT)).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        sock.send_to(b"through the gateway", SocketAddrV4::new(SERVER, SERVER_PORT)).unwrap();
        let mut buf = [0u8; 1500];
        let (n, from) = sock.recv_from(&mut buf).expect("the reply did not come back");
        (buf[..n].to_vec(), from)
    });
    let (got, peer) = server.join().unwrap();
    assert_eq!(got, b"through the gateway");
    assert_eq!(
        peer,
        SocketAddrV4::new(EXTERNAL, UDP_PORT_EXTERNAL).into(),
        "the server must see the external address and port"
    );
    let (reply, from) = client.join().unwrap();
    assert_eq!(reply, b"through the gateway");
    assert_eq!(from, SocketAddrV4::new(SERVER, SERVER_PORT).into());
}

fn ping(lab: &Lab) {
    let out = lab
        .host
        .exec(&["ping", "-c", "3", "-i", "0.2", "-W", "2", "-e", &PING_ID.to_string(), &SERVER.to_string()])
        .expect("ping through the gateway failed");
    assert!(out.contains("3 received"), "{out}");
}

#[test]
fn ping_and_udp_cross_the_attached_gateway() {
    require_root!();
    let lab = lab(false);
    ping(&lab);
    udp_exchange(&lab);
    let out = lab.datapath.counter(Reason::TranslatedOut).unwrap();
    let back = lab.datapath.counter(Reason::TranslatedIn).unwrap();
    assert!(out >= 4 && back >= 4, "translated out {out}, in {back}: the kernel, not XDP, carried the traffic");
    let _ = &lab.gw;
}


/// Waits (bounded) for the next event in the miss ring.
fn next_event(ring: &mut aya::maps::RingBuf<aya::maps::MapData>) -> nat_common::MissEvent {
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        if let Some(item) = ring.next() {
            return nat_tests::handed_off(&item);
        }
        assert!(std::time::Instant::now() < deadline, "no event in the miss ring within 3 s");
        thread::sleep(Duration::from_millis(5));
    }
}

/// A datagram of a flow with no mapping yet is handed to userspace, and after
/// the mapping is inserted it is translated and sent on through the kernel:
/// one datagram sent, one received, no retransmission involved.
#[test]
fn first_packet_of_a_new_flow_is_delivered_after_the_hand_off() {
    require_root!();
    let mut lab = lab(false);
    let mut ring = lab.datapath.take_miss_ring().unwrap();
    let server = in_ns(&lab.server, || {
        let sock = UdpSocket::bind(SocketAddrV4::new(SERVER, 7001)).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 64];
        let (n, peer) = sock.recv_from(&mut buf).expect("the first datagram never arrived");
        sock.send_to(&buf[..n], peer).unwrap();
        peer
    });
    thread::sleep(Duration::from_millis(200));
    let client = in_ns(&lab.host, || {
        let sock = UdpSocket::bind(SocketAddrV4::new(HOST, 5001)).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        sock.send_to(b"first", SocketAddrV4::new(SERVER, 7001)).unwrap();
        let mut buf = [0u8; 64];
        sock.recv_from(&mut buf).expect("no reply to the first datagram").0
    });

    let event = next_event(&mut ring);
    assert_eq!(event.kind, nat_common::miss_kind::NEW_FLOW);
    assert_eq!(event.ingress_ifindex, lab.gw.ifindex("lan0").unwrap());
    let _in_gw = lab.gw.enter().unwrap();
    lab.datapath
        .insert_pair(Endpoint::new(HOST, 5001, proto::UDP), Endpoint::new(EXTERNAL, 20002, proto::UDP), 3, 0)
        .unwrap();
    let mut packet = nat_userspace::packet::Ipv4::of_event(&event).unwrap().datagram().to_vec();
    nat_userspace::packet::translate_source(&mut packet, Endpoint::new(EXTERNAL, 20002, proto::UDP)).unwrap();
    nat_userspace::nat::first_packet::KernelSender::new().unwrap().send_packet(&packet).unwrap();

    assert_eq!(server.join().unwrap(), SocketAddrV4::new(EXTERNAL, 20002).into());
    assert_eq!(client.join().unwrap(), 5);
    assert_eq!(lab.datapath.counter(Reason::MissToDaemon).unwrap(), 1);
}

/// A first packet natd sends itself that is longer than the WAN's MTU with
/// DF clear: the raw socket refuses it whole (EMSGSIZE), so natd asks the
/// route's MTU and sends it in fragments, which the server reassembles.
#[test]
fn a_first_packet_too_long_for_the_wan_is_sent_in_fragments() {
    require_root!();
    const LEN: usize = 1472;
    let mut lab = lab(false);
    lab.gw.ip(&["link", "set", "wan0", "mtu", "1400"]).unwrap();
    lab.server.ip(&["link", "set", "eth0", "mtu", "1400"]).unwrap();
    let mut ring = lab.datapath.take_miss_ring().unwrap();
    let server = in_ns(&lab.server, || {
        let sock = UdpSocket::bind(SocketAddrV4::new(SERVER, 7002)).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 4096];
        let (n, peer) = sock.recv_from(&mut buf).expect("the first datagram never arrived whole");
        (buf[..n].to_vec(), peer)
    });
    thread::sleep(Duration::from_millis(200));
    let data: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8).collect();
    let sent = data.clone();
    in_ns(&lab.host, move || {
        let sock = UdpSocket::bind(SocketAddrV4::new(HOST, 5003)).unwrap();
        let dont: libc::c_int = libc::IP_PMTUDISC_DONT;
        // SAFETY: an int option and its length.
        assert_eq!(unsafe { libc::setsockopt(sock.as_raw_fd(), libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, (&dont as *const libc::c_int).cast(), 4) }, 0);
        sock.send_to(&sent, SocketAddrV4::new(SERVER, 7002)).unwrap();
    })
    .join()
    .unwrap();

    let event = next_event(&mut ring);
    assert_eq!(event.kind, nat_common::miss_kind::NEW_FLOW);
    let _in_gw = lab.gw.enter().unwrap();
    let mut packet = nat_userspace::packet::Ipv4::of_event(&event).unwrap().datagram().to_vec();
    assert_eq!(packet.len(), 1500);
    nat_userspace::packet::translate_source(&mut packet, Endpoint::new(EXTERNAL, 20004, proto::UDP)).unwrap();
    let sender = nat_userspace::nat::first_packet::KernelSender::new().unwrap();
    sender.send_packet(&packet).unwrap();
    assert_eq!(sender.packets_cut(), 1);

    let (got, peer) = server.join().unwrap();
    assert_eq!(peer, SocketAddrV4::new(EXTERNAL, 20004).into());
    assert!(got == data, "{} bytes arrived, not the {LEN} sent", got.len());
}

/// Inbound packet for an inside host the gateway has no ARP entry for: handed
/// over translated, sent through the kernel, which resolves the host.
#[test]
fn packet_without_a_neighbour_is_delivered_through_the_kernel() {
    require_root!();
    let mut lab = lab(false);
    let mut ring = lab.datapath.take_miss_ring().unwrap();
    // The premise: the gateway has no neighbour entry for the host (an ARP
    // request from the host would make one again, so check after flushing).
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        lab.gw.ip(&["neigh", "flush", "dev", "lan0"]).unwrap();
        if !lab.gw.ip(&["neigh", "show", "10.77.1.10"]).unwrap().contains("lladdr") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the gateway keeps a neighbour entry for the host");
        thread::sleep(Duration::from_millis(50));
    }
    let host = in_ns(&lab.host, || {
        let sock = UdpSocket::bind(SocketAddrV4::new(HOST, UDP_PORT)).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 64];
        let (n, from) = sock.recv_from(&mut buf).expect("the inbound datagram never arrived");
        (n, from)
    });
    thread::sleep(Duration::from_millis(200));
    in_ns(&lab.server, || {
        let sock = UdpSocket::bind(SocketAddrV4::new(SERVER, 7002)).unwrap();
        sock.send_to(b"inbound", SocketAddrV4::new(EXTERNAL, UDP_PORT_EXTERNAL)).unwrap();
    })
    .join()
    .unwrap();

    let event = next_event(&mut ring);
    assert_eq!(event.kind, nat_common::miss_kind::NO_NEIGHBOUR);
    let _in_gw = lab.gw.enter().unwrap();
    let packet = nat_userspace::packet::Ipv4::of_event(&event).unwrap();
    nat_userspace::nat::first_packet::KernelSender::new().unwrap().send_packet(packet.datagram()).unwrap();
    let (n, from) = host.join().unwrap();
    assert_eq!((n, from), (7, SocketAddrV4::new(SERVER, 7002).into()));
    assert!(lab.gw.ip(&["neigh", "show", "10.77.1.10"]).unwrap().contains("lladdr"), "the neighbour was not resolved");
}

/// Fails unless TX checksum offload is on at `eth0` in `ns`: a test of partial
/// checksums must not quietly send full ones.
fn assert_tx_checksum_on(ns: &Netns) {
    let features = ns.exec(&["ethtool", "-k", "eth0"]).unwrap();
    assert!(
        features.lines().any(|l| l.trim() == "tx-checksumming: on"),
        "tx checksum offload is off at eth0 in {}:\n{features}",
        ns.name
    );
}

/// Bytes that differ from their neighbours, so a checksum over them is not
/// fooled by a misplaced piece.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

/// A TCP connection from `local` (a fixed port, so it can have a mapping) to
/// `remote`. std cannot bind before connecting; SO_SNDTIMEO bounds connect().
fn connect_from(local: SocketAddrV4, remote: SocketAddrV4) -> std::io::Result<TcpStream> {
    fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
        libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: a.port().to_be(),
            sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
            sin_zero: [0; 8],
        }
    }
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // Owns the descriptor from here: closed on every error path.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    stream.set_write_timeout(Some(SOCKET_TIMEOUT))?;
    stream.set_read_timeout(Some(SOCKET_TIMEOUT))?;
    let (l, r) = (sockaddr(local), sockaddr(remote));
    if unsafe { libc::bind(stream.as_raw_fd(), &l as *const _ as *const libc::sockaddr, len) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if unsafe { libc::connect(stream.as_raw_fd(), &r as *const _ as *const libc::sockaddr, len) } != 0 {
        let e = std::io::Error::last_os_error();
        // What a blocking connect() reports when SO_SNDTIMEO runs out.
        if e.raw_os_error() == Some(libc::EINPROGRESS) {
            return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer to the SYN"));
        }
        return Err(e);
    }
    Ok(stream)
}

/// UDP datagrams of each size from the LAN host to the server and echoed
/// back; each must arrive intact both ways.
fn udp_echo(lab: &Lab, sizes: &'static [usize]) {
    let server = in_ns(&lab.server, move || {
        let sock = UdpSocket::bind(SocketAddrV4::new(SERVER, SERVER_PORT)).unwrap();
        sock.set_read_timeout(Some(SOCKET_TIMEOUT)).unwrap();
        let mut buf = [0u8; 2048];
        let mut peers = Vec::new();
        for size in sizes {
            let (n, peer) = sock
                .recv_from(&mut buf)
                .unwrap_or_else(|e| panic!("the server received no {size}-byte datagram: {e}"));
            assert_eq!(&buf[..n], &pattern(*size, 1)[..], "the server received a damaged datagram");
            sock.send_to(&pattern(n, 2), peer).unwrap();
            peers.push(peer);
        }
        peers
    });
    thread::sleep(Duration::from_millis(200));
    let client = in_ns(&lab.host, move || {
        let sock = UdpSocket::bind(SocketAddrV4::new(HOST, UDP_PORT)).unwrap();
        sock.set_read_timeout(Some(SOCKET_TIMEOUT)).unwrap();
        let mut buf = [0u8; 2048];
        for size in sizes {
            sock.send_to(&pattern(*size, 1), SocketAddrV4::new(SERVER, SERVER_PORT)).unwrap();
            let (n, _) = sock
                .recv_from(&mut buf)
                .unwrap_or_else(|e| panic!("no echo of the {size}-byte datagram came back: {e}"));
            assert_eq!(&buf[..n], &pattern(*size, 2)[..], "the echo came back damaged");
        }
    });
    client.join().unwrap();
    for peer in server.join().unwrap() {
        assert_eq!(peer, SocketAddrV4::new(EXTERNAL, UDP_PORT_EXTERNAL).into());
    }
}

/// A TCP connection through the gateway: the handshake, a request of several
/// segments one way and a reply the other, each checked byte for byte.
fn tcp_exchange(lab: &Lab, request_len: usize, reply_len: usize) {
    let server = in_ns(&lab.server, move || {
        let listener = TcpListener::bind(SocketAddrV4::new(SERVER, TCP_SERVER_PORT)).unwrap();
        // accept() has no timeout of its own: poll it, so a lost handshake
        // fails the test instead of hanging it.
        listener.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + SOCKET_TIMEOUT;
        let (mut stream, peer) = loop {
            match listener.accept() {
                Ok(conn) => break conn,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(Instant::now() < deadline, "no TCP connection reached the server");
                    thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("accept: {e}"),
            }
        };
        stream.set_nonblocking(false).unwrap();
        stream.set_read_timeout(Some(SOCKET_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(SOCKET_TIMEOUT)).unwrap();
        let mut request = vec![0u8; request_len];
        stream.read_exact(&mut request).expect("the request did not arrive whole");
        stream.write_all(&pattern(reply_len, 4)).unwrap();
        (request, peer)
    });
    thread::sleep(Duration::from_millis(200));
    let client = in_ns(&lab.host, move || {
        let mut stream = connect_from(SocketAddrV4::new(HOST, TCP_PORT), SocketAddrV4::new(SERVER, TCP_SERVER_PORT))
            .expect("the TCP handshake through the gateway failed");
        stream.write_all(&pattern(request_len, 3)).unwrap();
        let mut reply = vec![0u8; reply_len];
        stream.read_exact(&mut reply).expect("the reply did not arrive whole");
        reply
    });
    let reply = client.join().unwrap();
    let (request, peer) = server.join().unwrap();
    assert!(request == pattern(request_len, 3), "the server received a damaged request");
    assert!(reply == pattern(reply_len, 4), "the client received a damaged reply");
    assert_eq!(peer, SocketAddrV4::new(EXTERNAL, TCP_PORT_EXTERNAL).into());
}

/// With TX checksum offload on, the LAN host and the server send only the
/// pseudo-header sum in their TCP/UDP checksums (CHECKSUM_PARTIAL). After
/// XDP_REDIRECT the receiving kernel gets the frames as CHECKSUM_NONE,
/// verifies them and drops bad ones: data arriving both ways proves the
/// gateway finished every checksum. Sizes: odd, over 512 bytes, several
/// TCP segments.
#[test]
fn tcp_and_udp_cross_the_gateway_with_tx_checksum_offload_on() {
    require_root!();
    let mut lab = lab(true);
    assert_tx_checksum_on(&lab.host);
    assert_tx_checksum_on(&lab.server);
    lab.datapath
        .insert_pair(Endpoint::new(HOST, TCP_PORT, proto::TCP), Endpoint::new(EXTERNAL, TCP_PORT_EXTERNAL, proto::TCP), 4, 0)
        .unwrap();

    udp_echo(&lab, &[1, 19, 1401]);
    tcp_exchange(&lab, 3001, 2049);

    let out = lab.datapath.counter(Reason::TranslatedOut).unwrap();
    let back = lab.datapath.counter(Reason::TranslatedIn).unwrap();
    // 3 datagrams and at least handshake, 3 data segments, ACKs each way.
    assert!(out >= 7 && back >= 7, "translated out {out}, in {back}: the kernel, not XDP, carried the traffic");
    assert_eq!(lab.datapath.counter(Reason::PartialChecksumTooLong).unwrap(), 0);
}

/// natd skips the partial-checksum test only on a NIC's own interface in
/// native mode (`GatewayConfig::wire_ingress`), told by its rtnetlink link
/// kind: software devices, whose senders may leave a partial checksum, all
/// have one, and are never taken for NICs.
#[test]
fn software_interfaces_are_not_taken_for_nics() {
    require_root!();
    let ns = Netns::new("kind").unwrap();
    ns.ip(&["link", "add", "v0", "type", "veth", "peer", "name", "v1"]).unwrap();
    ns.ip(&["link", "add", "b0", "type", "bridge"]).unwrap();
    let (veth, bridge) = (ns.ifindex("v0").unwrap(), ns.ifindex("b0").unwrap());
    let _inside = ns.enter().unwrap();
    use nat_userspace::interfaces::{driver, link_kind};
    assert_eq!(link_kind(veth).unwrap().as_deref(), Some("veth"));
    assert_eq!(link_kind(bridge).unwrap().as_deref(), Some("bridge"));
    assert_eq!(link_kind(1).unwrap(), None, "the loopback (natd never takes it for a NIC either)");
    // The driver, as `ethtool -i` names it, asked of this namespace.
    assert_eq!(driver("v0").unwrap(), "veth");
    assert_eq!(driver("b0").unwrap(), "bridge");
    assert!(driver("no-such-if").is_err());
}
