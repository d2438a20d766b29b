//! Three hosts on one source port and one ICMP identifier; endpoint-independent
//! mapping.

use std::{
    collections::BTreeSet,
    net::SocketAddrV4,
    sync::{Arc, Barrier},
    thread,
};

use nat_tests::{
    natlab::{EXTERNAL, EchoServer, IO_TIMEOUT, NatLab, SERVER, snmp_counter, udp_socket_in},
    netns::Netns,
    require_root,
};

use super::{SERVICE_PORT, distinct_ports_on_external, ping, tcp_request, udp_request};

/// Every LAN host uses this source port: the collision the NAT exists to solve.
const SHARED_SOURCE_PORT: u16 = 5000;
const SHARED_ICMP_ID: &str = "4242";

/// Three hosts on one source port, UDP, TCP and ICMP echo with one identifier,
/// all at once: distinct external ports on the gateway's address, and each
/// host gets exactly its own replies.
fn same_source_port_from_three_hosts(tx_offload: bool) {
    const HOSTS: usize = 3;
    let mut lab = NatLab::new(HOSTS, tx_offload).unwrap();
    lab.start_natd(&[]).unwrap();
    // Native mode on veths: software devices, whose senders may leave
    // partial checksums, so every frame is tested for one.
    let status = lab.status().unwrap();
    assert_eq!((status.xdp_mode.as_str(), status.off_the_wire.len()), ("native", 0), "the lab's veths taken for NICs: {status:?}");
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
