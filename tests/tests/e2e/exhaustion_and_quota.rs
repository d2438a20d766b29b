//! Running out of ports: a full range, the per-host quota, and mapping
//! behaviour that stays the same under pressure.

use std::{
    collections::BTreeSet,
    net::{SocketAddr, SocketAddrV4, UdpSocket},
    thread,
    time::{Duration, Instant},
};

use nat_tests::{
    bench::bpf_maps_of,
    natlab::{EchoServer, IO_TIMEOUT, NatLab, SERVER, host_addr, in_ns, snmp_counter, udp_socket_in},
    netns::Netns,
    packet::Frame,
    require_root,
};
use nat_userspace::nat::first_packet::KernelSender;

use super::{SERVICE_PORT, udp_request};

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

/// A flow is refused for want of a port only when none is left: natd takes
/// a port back from the datapath's free queues rather than refuse. A
/// 20-port range with half of it queued for the datapath, and 20 new flows
/// from inside ports in the range, which natd sets up itself (it would
/// keep such a port): all 20 are set up and answered, none refused.
#[test]
fn natd_takes_queued_ports_back_before_it_refuses_a_flow() {
    require_root!();
    let mut lab = NatLab::new(1, false).unwrap();
    lab.start_natd_with_config("port_range = \"20000-20019\"\n").unwrap();
    let _server = EchoServer::start(&lab.server, SERVICE_PORT);
    let host = &lab.hosts[0];
    for port in 20000..20020u16 {
        let answer = udp_request(host, port, vec![b'p']).join().unwrap();
        assert!(answer.is_ok(), "the flow from port {port} was not answered: {:?}", lab.stats().unwrap());
    }
    let stats = lab.stats().unwrap();
    assert_eq!(stats.get("refused_no_port"), Some(0), "{stats:?}");
    assert_eq!(stats.get("claimed_in_datapath"), Some(0), "natd was to set these flows up: {stats:?}");
    assert_eq!(lab.status().unwrap().sessions, 20);
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

/// `max_sessions` sizes the session tables: natd reports the size, sets up
/// that many sessions and no more, and refuses the rest by name
/// (`refused_map_full`) without evicting any. 1,100 new flows from inside
/// ports outside natd's range (claimed in the datapath from the free
/// queues, whose queued ports hold slots too, then set up by natd once the
/// queues run dry) against room for 1,024.
#[test]
fn max_sessions_sizes_the_session_tables_and_refuses_past_them() {
    require_root!();
    const ROOM: usize = 1024;
    const FLOWS: u16 = 1100;
    let mut lab = NatLab::new(1, false).unwrap();
    lab.start_natd_with_config(&format!("max_sessions = {ROOM}\nports_per_host = 0\n")).unwrap();
    let _server = EchoServer::start(&lab.server, SERVICE_PORT);
    let status = lab.status().unwrap();
    assert_eq!(status.max_sessions as usize, ROOM);
    // The kernel's maps as natd made them: LIVENESS (an array of 16-byte
    // entries) and OUTBOUND (a hash of 8-byte keys, 12-byte mappings).
    let maps: Vec<_> = bpf_maps_of(status.pid).unwrap().iter().map(|m| (m.map_type, m.key_size, m.value_size, m.max_entries)).collect();
    assert!(maps.contains(&(2, 4, 16, ROOM as u64)), "no LIVENESS of {ROOM}: {maps:?}");
    assert!(maps.contains(&(1, 8, 12, ROOM as u64)), "no OUTBOUND of {ROOM}: {maps:?}");
    let inside = host_addr(0);
    let packets: Vec<Vec<u8>> = (0..FLOWS).map(|i| Frame::udp((inside, 40000 + i), (SERVER, SERVICE_PORT)).build()[14..].to_vec()).collect();
    in_ns(&lab.hosts[0], move || {
        let raw = KernelSender::new().unwrap();
        for packet in &packets {
            raw.send_packet(packet).unwrap();
            // A few at a time: natd sets up what the queues do not hold.
            thread::sleep(Duration::from_micros(200));
        }
    })
    .join()
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, stats) = (lab.status().unwrap(), lab.stats().unwrap());
        let refused = stats.get("refused_map_full").unwrap();
        if status.sessions == ROOM && refused >= u64::from(FLOWS) - ROOM as u64 {
            break;
        }
        assert!(Instant::now() < deadline, "sessions {} of {ROOM}, refused_map_full {refused}: {stats:?}", status.sessions);
        thread::sleep(Duration::from_millis(100));
    }
    // Nothing was evicted to make room, and a full table refuses a new flow.
    assert!(udp_request(&lab.hosts[0], 42000, b"x".to_vec()).join().unwrap().is_err(), "a flow past max_sessions got through");
    assert_eq!(lab.status().unwrap().sessions, ROOM);
}
