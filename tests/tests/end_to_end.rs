//! The product end to end: the real `natd` binary on a gateway namespace,
//! several LAN hosts, a WAN server, real sockets and real clients (curl,
//! nginx, iperf3, ping, tcpdump). Each test builds its own lab and tears it
//! down, natd included, even when it fails.

use std::{
    collections::BTreeSet,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket},
    process::Stdio,
    sync::{Arc, Barrier},
    thread,
    time::{Duration, Instant},
};

use nat_tests::{
    natlab::{
        EXTERNAL, EchoServer, GW_LAN, IO_TIMEOUT, KillOnDrop, NatLab, ROUTED_SERVER, ROUTER, SERVER, host_addr, in_ns,
        snmp_counter, udp_socket_in,
    },
    netns::Netns,
    require_root,
};
use socket2::{Domain, Protocol, Socket, Type};

const SERVICE_PORT: u16 = 7000;
/// Every LAN host uses this source port: the collision the NAT exists to solve.
const SHARED_SOURCE_PORT: u16 = 5000;
const SHARED_ICMP_ID: &str = "4242";

/// One UDP request from `source_port` in `host`; returns the reply.
fn udp_request(host: &Netns, source_port: u16, payload: Vec<u8>) -> thread::JoinHandle<Result<Vec<u8>, String>> {
    in_ns(host, move || {
        let sock = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, source_port)).map_err(|e| e.to_string())?;
        sock.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        // Sent once: the first packet of the flow must arrive without a retry.
        sock.send_to(&payload, SocketAddrV4::new(SERVER, SERVICE_PORT)).map_err(|e| e.to_string())?;
        let mut buf = [0u8; 2048];
        let (n, from) = sock.recv_from(&mut buf).map_err(|e| format!("no UDP reply: {e}"))?;
        if from != SocketAddr::from(SocketAddrV4::new(SERVER, SERVICE_PORT)) {
            return Err(format!("reply from {from}"));
        }
        Ok(buf[..n].to_vec())
    })
}

/// One TCP exchange from `source_port` in `host`; returns (reply, connect time).
fn tcp_request(host: &Netns, source_port: u16, payload: Vec<u8>) -> thread::JoinHandle<Result<(Vec<u8>, Duration), String>> {
    in_ns(host, move || {
        let sock = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).map_err(|e| e.to_string())?;
        sock.set_reuse_address(true).unwrap();
        sock.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, source_port).into()).map_err(|e| format!("bind: {e}"))?;
        let started = Instant::now();
        sock.connect_timeout(&SocketAddrV4::new(SERVER, SERVICE_PORT).into(), IO_TIMEOUT)
            .map_err(|e| format!("connect: {e}"))?;
        let connect_time = started.elapsed();
        let mut stream: TcpStream = sock.into();
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.write_all(&payload).map_err(|e| e.to_string())?;
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).map_err(|e| format!("reading the TCP reply: {e}"))?;
        Ok((reply, connect_time))
    })
}

fn ping(host: &Netns, id: &str, count: u32) -> thread::JoinHandle<Result<String, String>> {
    let (name, id) = (host.name.clone(), id.to_string());
    thread::spawn(move || {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &name, "ping", "-c", &count.to_string(), "-i", "0.2", "-W", "2", "-e", &id])
            .arg(SERVER.to_string())
            .output()
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() { Ok(text) } else { Err(text) }
    })
}

fn distinct_ports_on_external(peers: &[SocketAddr]) -> BTreeSet<u16> {
    for peer in peers {
        assert_eq!(peer.ip(), std::net::IpAddr::V4(EXTERNAL), "the server saw an address other than the gateway's: {peer}");
    }
    peers.iter().map(|p| p.port()).collect()
}

/// Three hosts on one source port, UDP, TCP and ICMP echo with one identifier,
/// all at once: distinct external ports on the gateway's address, and each
/// host gets exactly its own replies.
fn same_source_port_from_three_hosts(tx_offload: bool) {
    const HOSTS: usize = 3;
    let mut lab = NatLab::new(HOSTS, tx_offload).unwrap();
    lab.start_natd(&[]).unwrap();
    let server = EchoServer::start(&lab.server, SERVICE_PORT);

    let start = Arc::new(Barrier::new(HOSTS));
    let workers: Vec<_> = (0..HOSTS)
        .map(|i| {
            let (host, start) = (Netns { name: lab.hosts[i].name.clone() }, start.clone());
            thread::spawn(move || {
                start.wait();
                let me = format!("host {i}").into_bytes();
                let pinger = ping(&host, SHARED_ICMP_ID, 3);
                let udp = udp_request(&host, SHARED_SOURCE_PORT, me.clone()).join().unwrap();
                let tcp = tcp_request(&host, SHARED_SOURCE_PORT, me).join().unwrap();
                let pinged = pinger.join().unwrap();
                std::mem::forget(host);
                (udp, tcp, pinged)
            })
        })
        .collect();
    for (i, worker) in workers.into_iter().enumerate() {
        let (udp, tcp, pinged) = worker.join().unwrap();
        let expected = format!("echo:host {i}").into_bytes();
        assert_eq!(udp.unwrap_or_else(|e| panic!("host {i} UDP: {e}\n{}", lab.natd_log())), expected, "host {i} got another host's UDP reply");
        let (reply, _) = tcp.unwrap_or_else(|e| panic!("host {i} TCP: {e}\n{}", lab.natd_log()));
        assert_eq!(reply, expected, "host {i} got another host's TCP reply");
        let pinged = pinged.unwrap_or_else(|e| panic!("host {i} ping: {e}"));
        assert!(pinged.contains("3 received"), "host {i}: {pinged}");
    }

    assert_eq!(distinct_ports_on_external(&server.udp_peers()).len(), HOSTS, "UDP: {:?}", server.udp_peers());
    assert_eq!(distinct_ports_on_external(&server.tcp_peers()).len(), HOSTS, "TCP: {:?}", server.tcp_peers());
    let sessions = lab.sessions().unwrap();
    let icmp: BTreeSet<&str> = sessions.iter().filter(|s| s.proto == "icmp").map(|s| s.external.as_str()).collect();
    assert_eq!(icmp.len(), HOSTS, "ICMP echo identifiers must be distinct on the WAN: {sessions:?}");
    for s in &sessions {
        assert!(s.external.starts_with(&format!("{EXTERNAL}:")), "{s:?}");
    }
    // The receivers checked every checksum: none failed.
    for ns in lab.hosts.iter().chain([&lab.server]) {
        assert_eq!(snmp_counter(ns, "Udp", "InCsumErrors").unwrap(), 0, "UDP checksum errors in {}", ns.name);
        assert_eq!(snmp_counter(ns, "Tcp", "InCsumErrors").unwrap(), 0, "TCP checksum errors in {}", ns.name);
    }
    let stats = lab.stats().unwrap();
    assert!(stats.get("translated_out").unwrap() > 0 && stats.get("translated_in").unwrap() > 0, "{stats:?}");
    assert_eq!(lab.stop_natd().unwrap().code(), Some(0));
    assert!(!lab.xdp_attached().unwrap(), "natd left a program attached");
    assert!(!lab.natd_cli(&["status"]).unwrap().status.success(), "status must fail once natd stopped");
}

/// RFC 4787 REQ-1/REQ-3, RFC 5508 REQ-1/2: three hosts on one source port
/// and one ICMP identifier get distinct external ports (TX offload off).
#[test]
fn same_source_port_from_three_hosts_tx_offload_off() {
    require_root!();
    same_source_port_from_three_hosts(false);
}

/// As above, with TX checksum offload on (partial checksums finished).
#[test]
fn same_source_port_from_three_hosts_tx_offload_on() {
    require_root!();
    same_source_port_from_three_hosts(true);
}

/// RFC 4787 REQ-1 / RFC 5382 REQ-1: one inside endpoint, two destinations,
/// one external port.
#[test]
fn mapping_is_endpoint_independent() {
    require_root!();
    let mut lab = NatLab::new(1, false).unwrap();
    lab.start_natd(&[]).unwrap();
    let a = EchoServer::start(&lab.server, SERVICE_PORT);
    let b = EchoServer::start(&lab.server, SERVICE_PORT + 1);
    let sock = udp_socket_in(&lab.hosts[0], 5555);
    sock.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut buf = [0u8; 64];
    for port in [SERVICE_PORT, SERVICE_PORT + 1] {
        sock.send_to(b"x", SocketAddrV4::new(SERVER, port)).unwrap();
        sock.recv_from(&mut buf).unwrap();
    }
    assert_eq!(a.udp_peers(), b.udp_peers(), "two destinations saw different external endpoints");
}

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

/// Real clients through the gateway: curl to nginx, iperf3 TCP and UDP, ping;
/// a WAN capture shows no inside address; the gateway's own connection to the
/// server works while natd runs.
#[test]
fn real_clients_curl_nginx_iperf3_and_a_clean_wan_capture() {
    require_root!();
    let mut lab = NatLab::new(1, false).unwrap();
    lab.start_natd(&[]).unwrap();
    let host = &lab.hosts[0];

    // Captured where the WAN frames arrive: AF_PACKET on the gateway's wan0
    // does not see frames that XDP redirects out of it.
    let capture_file = std::env::temp_dir().join(format!("{}-wan.pcap", lab.gw.name));
    let mut capture = lab
        .server
        .command(&["tcpdump", "-i", "eth0", "-n", "-U", "-w", capture_file.to_str().unwrap(), "ip"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("tcpdump");
    let _nginx = Nginx::start(&lab.server);
    thread::sleep(Duration::from_millis(500));

    // curl: 1 MiB over HTTP, compared byte for byte.
    let body = host.exec(&["curl", "-sS", "--max-time", "10", &format!("http://{SERVER}/blob")]).expect("curl through the gateway");
    assert_eq!(body.len(), Nginx::BLOB_LEN, "curl got a short body");
    assert_eq!(body, Nginx::blob_text(), "the body changed on the way");

    // iperf3 TCP and UDP, 2 s each.
    let iperf_server = lab.server.command(&["iperf3", "-s", "-p", "5201"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let _kill_iperf = KillOnDrop(iperf_server);
    thread::sleep(Duration::from_millis(300));
    let tcp = host.exec(&["iperf3", "-c", &SERVER.to_string(), "-p", "5201", "-t", "2", "-J"]).expect("iperf3 TCP");
    let tcp: serde_json::Value = serde_json::from_str(&tcp).unwrap();
    let tcp_bps = tcp["end"]["sum_received"]["bits_per_second"].as_f64().unwrap();
    assert!(tcp_bps > 1e6, "iperf3 TCP through the gateway: {tcp_bps} bit/s");
    let udp = host.exec(&["iperf3", "-c", &SERVER.to_string(), "-p", "5201", "-u", "-b", "20M", "-t", "2", "-J"]).expect("iperf3 UDP");
    let udp: serde_json::Value = serde_json::from_str(&udp).unwrap();
    let lost = udp["end"]["sum"]["lost_percent"].as_f64().unwrap();
    let packets = udp["end"]["sum"]["packets"].as_u64().unwrap();
    assert!(packets > 1000 && lost < 5.0, "iperf3 UDP: {packets} packets, {lost}% lost");

    let pinged = ping(host, "777", 3).join().unwrap().expect("ping");
    assert!(pinged.contains("3 received"), "{pinged}");

    // The gateway's own connection (an ephemeral port outside the NAT range).
    let own = lab.gw.exec(&["curl", "-sS", "--max-time", "5", "-o", "/dev/null", "-w", "%{http_code}", &format!("http://{SERVER}/blob")]);
    assert_eq!(own.expect("the gateway's own curl"), "200");

    thread::sleep(Duration::from_millis(300));
    unsafe { libc::kill(capture.id() as i32, libc::SIGINT) };
    let _ = capture.wait();
    let dump = lab.server.exec(&["tcpdump", "-n", "-r", capture_file.to_str().unwrap()]).unwrap();
    let _ = std::fs::remove_file(&capture_file);
    assert!(dump.lines().count() > 1000, "the capture saw too little: {} lines", dump.lines().count());
    let leaks: Vec<&str> = dump.lines().filter(|l| l.contains("10.77.1.")).take(5).collect();
    assert!(leaks.is_empty(), "inside addresses on the WAN:\n{}", leaks.join("\n"));
}

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

/// RFC 4787 REQ-5, RFC 6888 REQ-8: timers and the port hold.
///
/// Short timeouts: the mapping disappears on time and its port returns to
/// the pool after the hold.
#[test]
fn aging_removes_idle_mappings_on_time_and_frees_their_ports() {
    require_root!();
    let mut lab = NatLab::new(1, false).unwrap();
    lab.start_natd_with_config("port_hold = 1\n[timeouts]\nudp = 2\nicmp = 2\n").unwrap();
    let _server = EchoServer::start(&lab.server, SERVICE_PORT);
    assert_eq!(udp_request(&lab.hosts[0], 6100, b"a".to_vec()).join().unwrap().unwrap(), b"echo:a");
    let sent = Instant::now();
    assert_eq!(lab.sessions().unwrap().len(), 1);
    assert_eq!(lab.status().unwrap().ports.iter().find(|p| p.proto == "udp").unwrap().in_use, 1);

    let deadline = sent + Duration::from_secs(8);
    while !lab.sessions().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the mapping outlived its 2 s timeout by far: {:?}", lab.sessions().unwrap());
        thread::sleep(Duration::from_millis(100));
    }
    let gone_after = sent.elapsed();
    assert!(gone_after >= Duration::from_secs(2), "removed after {gone_after:?}, before its 2 s timeout");
    thread::sleep(Duration::from_millis(2500));
    let udp = lab.status().unwrap().ports.into_iter().find(|p| p.proto == "udp").unwrap();
    assert_eq!((udp.in_use, udp.held), (0, 0), "the port did not return to the pool: {udp:?}");
    assert_eq!(lab.stats().unwrap().get("mappings_expired"), Some(1));
}

/// RFC 6888 REQ-11: out of ports, nothing is evicted.
///
/// A tiny port range fills: new flows are refused and counted, existing ones
/// keep working, and the gateway recovers by itself once mappings age out.
#[test]
fn exhaustion_refuses_and_counts_new_flows_keeps_existing_and_recovers() {
    require_root!();
    let mut lab = NatLab::new(1, false).unwrap();
    lab.start_natd_with_config("port_range = \"20000-20001\"\nport_hold = 0\n[timeouts]\nudp = 4\n").unwrap();
    let _server = EchoServer::start(&lab.server, SERVICE_PORT);
    let host = &lab.hosts[0];
    let keep = udp_socket_in(host, 6200);
    keep.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let exchange = |sock: &UdpSocket| -> bool {
        let mut buf = [0u8; 64];
        sock.send_to(b"k", SocketAddrV4::new(SERVER, SERVICE_PORT)).unwrap();
        sock.recv_from(&mut buf).is_ok()
    };
    assert!(exchange(&keep));
    assert!(udp_request(host, 6201, b"b".to_vec()).join().unwrap().is_ok(), "the second port of two");
    let third = udp_socket_in(host, 6202);
    third.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    assert!(!exchange(&third), "a third flow got through a two-port range");
    let stats = lab.stats().unwrap();
    assert!(stats.get("refused_no_port").unwrap() >= 1, "{stats:?}");
    let status = lab.status().unwrap();
    assert_eq!(status.sessions, 2, "a live mapping was evicted: {status:?}");
    // The existing flow still works while the space is full.
    keep.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    assert!(exchange(&keep), "an existing flow stopped working when the range filled");

    // Recovery: once idle mappings expire, a new flow gets a port.
    let deadline = Instant::now() + Duration::from_secs(10);
    while lab.status().unwrap().sessions > 0 {
        assert!(Instant::now() < deadline, "mappings never expired");
        thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(udp_request(host, 6203, b"d".to_vec()).join().unwrap().unwrap(), b"echo:d");
}

/// RFC 6888 REQ-4 and RFC 5508 REQ-8: a host at its quota of ports
/// (`ports_per_host = 2`, reached once through the datapath's claim and once
/// through natd's own allocation) has its next new flow refused and learns it
/// at once: its connected socket gets EHOSTUNREACH from ICMP Destination
/// Unreachable code 13 sent by the gateway. Its existing flows keep working,
/// another host is not affected, a flood of refused flows draws at most one
/// message a second, and a released port makes room again.
#[test]
fn a_host_past_its_port_quota_is_refused_and_told_so() {
    require_root!();
    let mut lab = NatLab::new(2, true).unwrap();
    lab.start_natd_with_config("ports_per_host = 2\n[timeouts]\nudp = 3\n").unwrap();
    let _server = EchoServer::start(&lab.server, SERVICE_PORT);
    let service = SocketAddrV4::new(SERVER, SERVICE_PORT);
    let (h0, h1) = (&lab.hosts[0], &lab.hosts[1]);
    let exchange = |sock: &UdpSocket| {
        let mut buf = [0u8; 64];
        sock.send(b"q").unwrap();
        sock.recv(&mut buf).map(|n| buf[..n].to_vec())
    };
    let connected = |host: &Netns, port: u16| {
        let sock = udp_socket_in(host, port);
        sock.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        sock.connect(service).unwrap();
        sock
    };
    // One port claimed in the datapath, one allocated by natd (in the NAT range).
    let (first, second) = (connected(h0, 6001), connected(h0, 25000));
    assert_eq!(exchange(&first).unwrap(), b"echo:q");
    assert_eq!(exchange(&second).unwrap(), b"echo:q");

    let unreachable_before = snmp_counter(h0, "Icmp", "InDestUnreachs").unwrap();
    let refused = connected(h0, 6003);
    let started = Instant::now();
    let err = exchange(&refused).expect_err("a third port for a host with a quota of 2");
    assert_eq!(err.raw_os_error(), Some(libc::EHOSTUNREACH), "{err}");
    assert!(started.elapsed() < Duration::from_secs(1), "the refusal took {:?}", started.elapsed());
    assert_eq!(exchange(&first).unwrap(), b"echo:q", "an existing flow stopped at the quota");
    assert_eq!(exchange(&connected(h1, 6003)).unwrap(), b"echo:q", "another host was refused");

    // A flood of refused new flows: each counted, at most one ICMP a second.
    let flood_started = Instant::now();
    for port in 6100..6130 {
        udp_socket_in(h0, port).send_to(b"f", service).unwrap();
    }
    thread::sleep(Duration::from_millis(300));
    let seconds = flood_started.elapsed().as_secs() + 1;
    let messages = snmp_counter(h0, "Icmp", "InDestUnreachs").unwrap() - unreachable_before;
    assert!(messages <= 1 + seconds, "{messages} ICMP messages in {seconds} s: not rate-limited");
    let stats = lab.stats().unwrap();
    assert!(stats.get("refused_quota").unwrap() >= 31, "{stats:?}");
    assert!(stats.get("refusals_notified").unwrap() >= 1, "{stats:?}");
    assert_eq!(lab.status().unwrap().sessions, 3, "a live mapping was evicted or a refused one made");

    // The host's two mappings age out (3 s): its quota has room again.
    drop((first, second));
    let deadline = Instant::now() + Duration::from_secs(15);
    while lab.sessions().unwrap().iter().any(|s| s.inside.starts_with(&format!("{}:", host_addr(0)))) {
        assert!(Instant::now() < deadline, "the host's mappings never expired");
        thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(exchange(&connected(h0, 6004)).unwrap(), b"echo:q", "released ports did not make room");
}

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

/// RFC 6888 REQ-12..15: with `log_mappings`, natd logs each mapping made and
/// removed, datapath-claimed or its own, with the time, inside and external
/// endpoints and lifetime, and never a destination address or port.
#[test]
fn mappings_are_logged_without_destinations() {
    require_root!();
    let mut lab = NatLab::new(1, true).unwrap();
    lab.start_natd_with_config("log_mappings = true\n[timeouts]\nudp = 2\n").unwrap();
    let _server = EchoServer::start(&lab.server, SERVICE_PORT);
    for port in [6001, 25000] {
        assert_eq!(udp_request(&lab.hosts[0], port, b"l".to_vec()).join().unwrap().unwrap(), b"echo:l");
    }
    let externals: Vec<String> = lab.sessions().unwrap().into_iter().map(|s| s.external).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !lab.sessions().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the mappings never expired");
        thread::sleep(Duration::from_millis(200));
    }
    let log = lab.natd_log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("natd: mapping ")).collect();
    assert_eq!(lines.len(), 4, "two made, two removed:\n{log}");
    for external in &externals {
        for what in ["created", "removed"] {
            assert!(
                lines.iter().any(|l| l.contains(&format!("mapping {what} ")) && l.contains(&format!("external={external}")) && l.contains("inside=10.77.1.10:")),
                "no `{what}` line for {external}:\n{log}"
            );
        }
    }
    assert!(lines.iter().all(|l| l.contains(" time=") && !l.contains(&SERVER.to_string()) && !l.contains(&SERVICE_PORT.to_string())), "{log}");
    assert!(lines.iter().filter(|l| l.contains("removed")).all(|l| l.contains(" lifetime_s=")), "{log}");
}

/// RFC 4787 REQ-11 (deterministic behaviour): the mapping behaviour does not
/// change with load. With all but one port of a four-port range in use, a
/// host's flows to two destinations still share one external endpoint
/// (endpoint-independent, no fallback to per-destination mappings or port
/// overloading), and once the range is full new endpoints are refused
/// rather than given a shared port.
#[test]
fn mapping_behaviour_stays_the_same_when_ports_run_short() {
    require_root!();
    let mut lab = NatLab::new(2, true).unwrap();
    lab.start_natd_with_config("port_range = \"20000-20003\"\n").unwrap();
    let a = EchoServer::start(&lab.server, SERVICE_PORT);
    let b = EchoServer::start(&lab.server, SERVICE_PORT + 1);
    for port in [6001, 6002, 6003] {
        assert_eq!(udp_request(&lab.hosts[0], port, b"f".to_vec()).join().unwrap().unwrap(), b"echo:f");
    }
    let sock = udp_socket_in(&lab.hosts[1], 7001);
    sock.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut buf = [0u8; 64];
    for port in [SERVICE_PORT, SERVICE_PORT + 1] {
        sock.send_to(b"x", SocketAddrV4::new(SERVER, port)).unwrap();
        sock.recv_from(&mut buf).unwrap();
    }
    let last = |peers: Vec<SocketAddr>| *peers.last().unwrap();
    assert_eq!(last(a.udp_peers()), last(b.udp_peers()), "two destinations got different external endpoints under pressure");
    let externals: BTreeSet<String> = lab.sessions().unwrap().into_iter().map(|s| s.external).collect();
    assert_eq!(externals.len(), 4, "four endpoints, four distinct external ports: {externals:?}");
    // Full: a fifth endpoint is refused, never overloaded onto a used port.
    let fifth = udp_socket_in(&lab.hosts[1], 7002);
    fifth.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    fifth.send_to(b"y", SocketAddrV4::new(SERVER, SERVICE_PORT)).unwrap();
    assert!(fifth.recv_from(&mut buf).is_err(), "a fifth endpoint got through a four-port range");
    assert_eq!(lab.sessions().unwrap().len(), 4);
}

/// Bad input: each a clear error naming what to fix, and nothing left attached.
#[test]
fn bad_input_is_a_clear_error_and_leaves_nothing_attached() {
    require_root!();
    let mut lab = NatLab::new(1, false).unwrap();
    let failures: [(&[&str], &str); 4] = [
        (&["--lan", "nosuch0", "--wan", "wan0"], "lan = nosuch0: no such interface"),
        (&["--lan", "lan0", "--wan", "wan0", "--port-range", "100-50"], "--port-range (port_range) = \"100-50\""),
        (&["--lan", "lan0", "--wan", "wan0", "--port-range", "40000-40100"], "overlaps the kernel's ephemeral ports"),
        (&["--lan", "lan0", "--wan", "wan0", "--xdp-mode", "turbo"], "xdp_mode"),
    ];
    for (args, expected) in failures {
        let full = [&["run"], args].concat();
        let out = lab.natd_cli(&full).unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(expected), "natd {full:?}: expected {expected:?} in:\n{err}");
        assert!(!lab.xdp_attached().unwrap(), "natd {full:?} failed but left a program attached");
    }

    let bad = lab.config_file("lan = \"lan0\"\nwan = \"wan0\"\nport_rnage = \"20000-20100\"\n[timeouts]\nudp = \"soon\"\n").unwrap();
    let out = lab.natd_cli(&["check", "--config", bad.to_str().unwrap()]).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("port_rnage: unknown setting") && err.contains("timeouts.udp = \"soon\""), "{err}");
    let out = lab.natd_cli(&["run", "--config", bad.to_str().unwrap()]).unwrap();
    assert!(!out.status.success() && !lab.xdp_attached().unwrap());

    // A WAN interface without an IPv4 address and no external_ip.
    lab.gw.ip(&["addr", "flush", "dev", "wan0"]).unwrap();
    let out = lab.natd_cli(&["run", "--lan", "lan0", "--wan", "wan0"]).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("wan = wan0: has no IPv4 address"), "{err}");
    lab.gw.ip(&["addr", "add", "203.0.113.1/24", "dev", "wan0"]).unwrap();

    // A second daemon on the same interfaces.
    lab.start_natd(&[]).unwrap();
    let out = lab.natd_cli(&["run", "--lan", "lan0", "--wan", "wan0"]).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("already served by another natd"), "{err}");
    assert!(lab.natd_cli(&["status"]).unwrap().status.success(), "the first natd must keep serving");
    lab.stop_natd().unwrap();
    assert!(!lab.xdp_attached().unwrap(), "programs left attached after SIGINT");
}

/// nginx serving a 1 MiB file from a temp dir in the server namespace.
struct Nginx {
    child: std::process::Child,
    dir: std::path::PathBuf,
}

impl Nginx {
    const BLOB_LEN: usize = 1 << 20;

    fn blob_text() -> String {
        (0..Self::BLOB_LEN).map(|i| (b'a' + (i * 7 % 26) as u8) as char).collect()
    }

    fn start(server: &Netns) -> Self {
        let dir = std::env::temp_dir().join(format!("{}-nginx", server.name));
        std::fs::create_dir_all(dir.join("www")).unwrap();
        std::fs::write(dir.join("www/blob"), Self::blob_text()).unwrap();
        let conf = format!(
            "daemon off; master_process off; pid {d}/nginx.pid; error_log {d}/error.log;\n\
             events {{ worker_connections 64; }}\n\
             http {{ access_log off; client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; \
             uwsgi_temp_path {d}; scgi_temp_path {d};\n\
             server {{ listen {SERVER}:80; root {d}/www; }} }}\n",
            d = dir.display()
        );
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let child = server
            .command(&["nginx", "-c", dir.join("nginx.conf").to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx (Debian nginx-light; cargo xtask test installs it)");
        Self { child, dir }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `--xdp-mode generic` (skb mode, for drivers without native XDP) carries
/// the same traffic, and `natd status` says which mode serves.
#[test]
fn generic_mode_carries_udp_tcp_and_ping() {
    require_root!();
    let mut lab = NatLab::new(1, true).unwrap();
    lab.start_natd(&["--xdp-mode", "generic"]).unwrap();
    assert_eq!(lab.status().unwrap().xdp_mode, "generic");
    let _server = EchoServer::start(&lab.server, SERVICE_PORT);
    assert_eq!(udp_request(&lab.hosts[0], 6300, b"g".to_vec()).join().unwrap().unwrap(), b"echo:g");
    let (reply, _) = tcp_request(&lab.hosts[0], 6301, b"g".to_vec()).join().unwrap().unwrap();
    assert_eq!(reply, b"echo:g");
    let pinged = ping(&lab.hosts[0], "99", 2).join().unwrap().expect("ping");
    assert!(pinged.contains("2 received"), "{pinged}");
    assert!(lab.gw.ip(&["link", "show", "lan0"]).unwrap().contains("xdpgeneric"), "not attached in generic mode");
}

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

/// Runs `args` in `ns` under `timeout` (seconds) and returns its stdout;
/// fails with both outputs when it fails.
fn run_bounded(ns: &Netns, seconds: u32, args: &[&str]) -> String {
    let mut cmd = ns.command(&["timeout", &seconds.to_string()]);
    let out = cmd.args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{args:?} failed ({}):\n{stdout}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    stdout
}

/// The hops a traceroute or tracepath printed, in order: the first address
/// on each line that starts with a hop number ("2" or "2:"). tracepath prints
/// a hop again when a probe of it gets another answer (first the gateway's
/// "pmtu 1400", then the next hop once the probe fits): the last answer
/// counts. A silent hop ("*", "no reply") shows as "*".
fn hops(output: &str) -> Vec<String> {
    let mut hops: Vec<(String, String)> = Vec::new();
    // tracepath rewrites a line in place with carriage returns.
    for line in output.split(['\n', '\r']) {
        let mut words = line.split_whitespace();
        let Some(number) = words.next().map(|w| w.trim_end_matches(':')) else { continue };
        if number.parse::<u32>().is_err() {
            continue;
        }
        let addr = match words.next() {
            Some(w) if w.parse::<Ipv4Addr>().is_ok() => w.to_string(),
            _ => "*".to_string(),
        };
        match hops.iter_mut().find(|(n, _)| n == number) {
            Some(hop) if addr != "*" => hop.1 = addr,
            Some(_) => {}
            None => hops.push((number.to_string(), addr)),
        }
    }
    hops.into_iter().map(|(_, a)| a).collect()
}

/// A TCP upload of `len` bytes from `host` to a sink on `server` at `addr`:
/// the sink answers with the number of bytes it got. Returns that number.
fn tcp_upload(host: &Netns, server: &Netns, addr: Ipv4Addr, len: usize) -> u64 {
    const SINK_PORT: u16 = 7300;
    let listener = in_ns(server, || std::net::TcpListener::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, SINK_PORT)).unwrap())
        .join()
        .unwrap();
    let sink = thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut got = 0u64;
        let mut buf = vec![0u8; 65536];
        loop {
            match conn.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got += n as u64,
                Err(e) => panic!("sink: {e} after {got} bytes"),
            }
        }
        conn.write_all(&got.to_be_bytes()).unwrap();
    });
    let uploaded = in_ns(host, move || {
        let mut conn = TcpStream::connect_timeout(&SocketAddrV4::new(addr, SINK_PORT).into(), IO_TIMEOUT).expect("connect");
        conn.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        conn.write_all(&data).expect("upload stalled: path-MTU discovery failed?");
        conn.shutdown(std::net::Shutdown::Write).unwrap();
        let mut count = [0u8; 8];
        conn.read_exact(&mut count).expect("no byte count from the sink");
        u64::from_be_bytes(count)
    })
    .join()
    .unwrap();
    sink.join().unwrap();
    uploaded
}

/// The path MTU `host`'s kernel learned for `addr` ("mtu N" in its route cache).
fn learned_pmtu(host: &Netns, addr: Ipv4Addr) -> Option<u32> {
    let route = host.ip(&["route", "get", &addr.to_string()]).unwrap();
    let mut words = route.split_whitespace();
    words.by_ref().find(|w| *w == "mtu")?;
    words.next()?.parse().ok()
}

const MIB: usize = 1 << 20;

/// RFC 4787 REQ-13 end to end: the gateway's WAN link takes 1400 bytes, the
/// LAN 1500. tracepath from a LAN host learns the 1400 from the gateway's
/// Fragmentation Needed, and a 1 MiB TCP upload completes through path-MTU
/// discovery (the server's end stays at 1500, so its MSS does not hide the
/// narrow link: the host's first full-size segments are too big for it).
#[test]
fn rfc4787_req13_frag_needed_from_the_gateway_drives_tracepath_and_tcp_pmtud() {
    require_root!();
    let mut lab = NatLab::new(1, false).unwrap();
    lab.gw.ip(&["link", "set", "wan0", "mtu", "1400"]).unwrap();
    lab.start_natd(&[]).unwrap();

    let out = run_bounded(&lab.hosts[0], 30, &["tracepath", "-n", "-m", "5", &SERVER.to_string()]);
    assert!(out.contains("pmtu 1400"), "tracepath did not learn the WAN MTU:\n{out}\n{:?}", lab.stats().unwrap());
    assert!(out.contains("reached") && out.contains("Resume: pmtu 1400"), "{out}");
    assert_eq!(hops(&out), [GW_LAN.to_string(), SERVER.to_string()], "{out:?}");
    let stats = lab.stats().unwrap();
    assert!(stats.get("frag_needed_sent").unwrap() >= 1, "{stats:?}");

    // A fresh host route cache: TCP must learn the MTU by itself.
    lab.hosts[0].ip(&["route", "flush", "cache"]).unwrap();
    let sent_before = lab.stats().unwrap().get("frag_needed_sent").unwrap();
    let got = tcp_upload(&lab.hosts[0], &lab.server, SERVER, MIB);
    assert_eq!(got, MIB as u64, "the server got {got} of {MIB} bytes\n{}", lab.natd_log());
    assert_eq!(learned_pmtu(&lab.hosts[0], SERVER), Some(1400));
    assert!(lab.stats().unwrap().get("frag_needed_sent").unwrap() > sent_before, "TCP got no Fragmentation Needed");
}

/// Path-MTU discovery across a smaller-MTU link beyond the gateway (RFC 5508
/// REQ-4/5 with RFC 1191): the router behind the gateway forwards onto a
/// 1280-byte link and answers Fragmentation Needed to the external address;
/// the gateway reverts the quote and hands it to the LAN host, whose 1 MiB
/// TCP upload completes and whose tracepath reports pmtu 1280.
#[test]
fn rfc5508_pmtu_discovery_across_a_smaller_link_beyond_the_gateway() {
    require_root!();
    let mut lab = NatLab::with_router(1, false, 1280).unwrap();
    lab.start_natd(&[]).unwrap();

    let got = tcp_upload(&lab.hosts[0], &lab.server, ROUTED_SERVER, MIB);
    assert_eq!(got, MIB as u64, "the server got {got} of {MIB} bytes\n{}", lab.natd_log());
    assert_eq!(learned_pmtu(&lab.hosts[0], ROUTED_SERVER), Some(1280));
    let stats = lab.stats().unwrap();
    assert!(stats.get("icmp_error_in").unwrap() >= 1, "{stats:?}");
    assert_eq!(stats.get("frag_needed_sent").unwrap(), 0, "the gateway's own links are 1500");

    lab.hosts[0].ip(&["route", "flush", "cache"]).unwrap();
    let out = run_bounded(&lab.hosts[0], 30, &["tracepath", "-n", "-m", "5", &ROUTED_SERVER.to_string()]);
    assert!(out.contains("Resume: pmtu 1280") && out.contains("reached"), "{out}");
}

/// traceroute and tracepath through the gateway (RFC 5508 REQ-4/5: Time
/// Exceeded and Port Unreachable from beyond the gateway reach the host
/// reverted; RFC 4787 REQ-13 for tracepath's full-size DF probes): each
/// shows the gateway's LAN address, the router and the server, in order.
fn traceroute_through_the_gateway(args: &[&str]) {
    let mut lab = NatLab::with_router(1, false, 1500).unwrap();
    lab.start_natd(&[]).unwrap();
    let mut cmd = args.to_vec();
    let dest = ROUTED_SERVER.to_string();
    cmd.push(&dest);
    let out = run_bounded(&lab.hosts[0], 60, &cmd);
    assert_eq!(hops(&out), [GW_LAN.to_string(), ROUTER.to_string(), ROUTED_SERVER.to_string()], "{args:?}:\n{out}");
}

/// traceroute -U, UDP probes (RFC 5508 REQ-4/5).
#[test]
fn traceroute_udp_shows_every_hop_through_the_gateway() {
    require_root!();
    traceroute_through_the_gateway(&["traceroute", "-n", "-U", "-w", "1", "-q", "1", "-m", "5"]);
}

/// traceroute -I, echo probes (RFC 5508 REQ-4/5).
#[test]
fn traceroute_icmp_shows_every_hop_through_the_gateway() {
    require_root!();
    traceroute_through_the_gateway(&["traceroute", "-n", "-I", "-w", "1", "-q", "1", "-m", "5"]);
}

/// tracepath: DF probes, hop by hop (RFC 5508 REQ-4/5, RFC 4787 REQ-13).
#[test]
fn tracepath_shows_every_hop_through_the_gateway() {
    require_root!();
    traceroute_through_the_gateway(&["tracepath", "-n", "-m", "5"]);
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
