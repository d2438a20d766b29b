//! The gateway attacked from both sides, end to end: the real natd, LAN
//! hosts on a bridge, a WAN host, hand-built frames sent as a hostile
//! neighbour would (AF_PACKET: nothing in the sender's stack fixes them).
//! Every attack is stopped and counted, while a UDP stream and a TCP
//! conversation through the gateway lose nothing.

use std::{
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    process::Stdio,
    thread,
    time::Duration,
};

use nat_tests::{
    natlab::{
        Capture, EXTERNAL, EchoServer, GW_LAN, KillOnDrop, NatLab, SERVER, StreamEcho, host_addr,
        in_ns, snmp_counter, tcp_conversation, udp_socket_in, udp_stream,
    },
    packet::{self, Frame},
    require_root,
    wire::{Link, send_frames},
};
use nat_userspace::control::Stats;

const ECHO_PORT: u16 = 7000;
const STREAM_PORT: u16 = 7001;
const SINK_PORT: u16 = 7002;

/// A UDP stream and a TCP conversation from host 0 through the gateway,
/// running while a test attacks it: (datagrams echoed, messages echoed).
struct LegitimateFlows {
    udp: thread::JoinHandle<Result<u32, String>>,
    tcp: thread::JoinHandle<Result<(u32, Duration), String>>,
}

const ROUNDS: u32 = 150;

impl LegitimateFlows {
    fn start(lab: &NatLab) -> Self {
        let host = &lab.hosts[0];
        Self {
            udp: udp_stream(host, 6000, SocketAddrV4::new(SERVER, ECHO_PORT), ROUNDS, Duration::from_millis(10)),
            tcp: tcp_conversation(host, SocketAddrV4::new(SERVER, STREAM_PORT), ROUNDS, Duration::from_millis(10)),
        }
    }

    /// Both flows lost nothing.
    fn assert_whole(self) {
        assert_eq!(self.udp.join().unwrap(), Ok(ROUNDS), "the UDP stream lost datagrams");
        let (echoed, _) = self.tcp.join().unwrap().expect("the TCP conversation");
        assert_eq!(echoed, ROUNDS, "the TCP conversation lost messages");
    }
}

fn counter(stats: &Stats, name: &str) -> u64 {
    stats.get(name).unwrap_or_else(|| panic!("no counter {name}: {stats:?}"))
}

/// Nothing reaches `sock` within half a second.
fn assert_silent(sock: &UdpSocket, what: &str) {
    sock.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let mut buf = [0u8; 256];
    let got = sock.recv_from(&mut buf);
    assert!(got.is_err(), "{what}: {got:?}");
}

/// BCP 84 / RFC 3704 and RFC 6890 from the WAN side. A WAN neighbour that
/// routes the inside prefix at the gateway cannot ping an inside host;
/// datagrams forged from an inside host's address reach neither the inside
/// socket of a mapping (it would take them for that host's) nor the
/// gateway itself (whose answers would go to the LAN host); forged own and
/// special-purpose sources are dropped too. Each is counted.
#[test]
fn wan_attacks_are_stopped_and_counted_while_flows_go_on() {
    require_root!();
    let mut lab = NatLab::new(2, false).unwrap();
    lab.start_natd(&[]).unwrap();
    let _echo = EchoServer::start(&lab.server, ECHO_PORT);
    let _stream = StreamEcho::start(&lab.server, STREAM_PORT);
    lab.server.ip(&["route", "add", "10.77.1.0/24", "via", &EXTERNAL.to_string()]).unwrap();
    let flows = LegitimateFlows::start(&lab);

    // 1. Ping an inside host straight through the gateway.
    let echoes_before = snmp_counter(&lab.hosts[0], "Icmp", "InEchos").unwrap();
    let ping = lab.server.exec(&["ping", "-c", "3", "-i", "0.2", "-W", "1", &host_addr(0).to_string()]);
    assert!(ping.is_err(), "a WAN host pinged an inside host: {ping:?}");
    assert_eq!(snmp_counter(&lab.hosts[0], "Icmp", "InEchos").unwrap(), echoes_before, "an echo request reached the inside host");

    // 2. Through a mapping, from a forged inside source: the inside socket
    //    must not hear "10.77.1.11:53".
    let inside = SocketAddrV4::new(host_addr(0), 6100);
    let sock = udp_socket_in(&lab.hosts[0], inside.port());
    sock.send_to(b"open", SocketAddrV4::new(SERVER, ECHO_PORT)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 256];
    sock.recv_from(&mut buf).expect("the echo that proves the mapping");
    let mapped = lab.external_of("udp", inside).unwrap().port();
    let wan = Link::between(&lab.server, "eth0", &lab.gw, "wan0").unwrap();
    let forged = |src: Ipv4Addr, sport: u16, dport: u16| Frame::udp((src, sport), (EXTERNAL, dport)).with_macs(wan.from, wan.to).build();
    let mut frames = vec![forged(host_addr(1), 53, mapped), forged(EXTERNAL, 53, mapped)];
    for martian in [Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::UNSPECIFIED, Ipv4Addr::new(224, 0, 0, 5), Ipv4Addr::BROADCAST] {
        frames.push(forged(martian, 53, mapped));
    }
    // 3. To the gateway itself (a closed port outside the NAT range), from
    //    an inside host's address: its Port Unreachable would go to that host.
    frames.push(forged(host_addr(1), 5555, 9));
    let unreachables_before = snmp_counter(&lab.hosts[1], "Icmp", "InDestUnreachs").unwrap();
    send_frames(&lab.server, "eth0", frames, Duration::from_millis(2)).unwrap();
    assert_silent(&sock, "a forged datagram reached the inside socket");
    assert_eq!(snmp_counter(&lab.hosts[1], "Icmp", "InDestUnreachs").unwrap(), unreachables_before, "the gateway answered a forged inside source");
    // The mapping itself still lets the remote in (endpoint-independent filtering).
    in_ns(&lab.server, move || UdpSocket::bind("0.0.0.0:0").unwrap().send_to(b"real", SocketAddrV4::new(EXTERNAL, mapped)).unwrap()).join().unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let (n, from) = sock.recv_from(&mut buf).expect("the real remote's datagram");
    assert_eq!((&buf[..n], from.ip()), (&b"real"[..], std::net::IpAddr::V4(SERVER)));

    flows.assert_whole();
    let stats = lab.stats().unwrap();
    assert!(counter(&stats, "drop_inbound_transit") >= 3, "{stats:?}");
    assert_eq!(counter(&stats, "drop_wan_source_inside"), 2, "{stats:?}");
    assert_eq!(counter(&stats, "drop_wan_source_own"), 1, "{stats:?}");
    assert_eq!(counter(&stats, "drop_wan_source_martian"), 4, "{stats:?}");
}

/// BCP 38 / RFC 2827 and RFC 1812 from the LAN side. Sources outside the
/// inside prefix, special-purpose ones, the LAN's network and broadcast
/// addresses and the gateway's own are never translated or forwarded; nor
/// are headers with a bad checksum, options that are not there, or a UDP
/// header past the total length. A capture on the WAN sees only the one
/// honest datagram, from the external address.
#[test]
fn lan_attacks_are_stopped_and_counted_while_flows_go_on() {
    require_root!();
    let mut lab = NatLab::new(2, false).unwrap();
    // br_netfilter would drop the malformed frames on the bridge before the
    // gateway saw them.
    lab.switch.sysctl("net.bridge.bridge-nf-call-iptables=0").unwrap();
    lab.start_natd(&[]).unwrap();
    let _echo = EchoServer::start(&lab.server, ECHO_PORT);
    let _stream = StreamEcho::start(&lab.server, STREAM_PORT);
    let capture = Capture::start(&lab.server, "eth0", &format!("udp port {SINK_PORT}")).unwrap();
    let flows = LegitimateFlows::start(&lab);

    let lan = Link::between(&lab.hosts[0], "eth0", &lab.gw, "lan0").unwrap();
    let to_sink = |src: Ipv4Addr, sport: u16| Frame::udp((src, sport), (SERVER, SINK_PORT)).with_macs(lan.from, lan.to);
    let not_inside = [Ipv4Addr::new(10, 0, 0, 5), Ipv4Addr::UNSPECIFIED, Ipv4Addr::LOCALHOST, Ipv4Addr::new(224, 0, 0, 5), EXTERNAL, SERVER];
    let reserved = [Ipv4Addr::new(10, 77, 1, 0), Ipv4Addr::new(10, 77, 1, 255), GW_LAN];
    let mut frames: Vec<Vec<u8>> = not_inside.iter().chain(&reserved).enumerate().map(|(i, src)| to_sink(*src, 5000 + i as u16).build()).collect();
    // Broken headers from an honest address.
    let honest = || to_sink(host_addr(0), 5100).build();
    let mut bad_checksum = honest();
    bad_checksum[24] ^= 0x40;
    frames.push(bad_checksum);
    frames.push(packet::edit_ipv4(honest(), |ip| ip[0] = 0x46));
    frames.push(packet::edit_ipv4(honest(), |ip| ip[2..4].copy_from_slice(&20u16.to_be_bytes())));
    send_frames(&lab.hosts[0], "eth0", frames, Duration::from_millis(2)).unwrap();
    // The honest one, through the host's own stack.
    in_ns(&lab.hosts[0], || UdpSocket::bind("0.0.0.0:5200").unwrap().send_to(b"honest", SocketAddrV4::new(SERVER, SINK_PORT)).unwrap()).join().unwrap();

    flows.assert_whole();
    let seen = capture.finish().unwrap();
    assert_eq!(seen.len(), 1, "the WAN saw more than the honest datagram:\n{}", seen.join("\n"));
    assert!(seen[0].contains(&format!("{EXTERNAL}.")), "{}", seen[0]);
    let stats = lab.stats().unwrap();
    assert_eq!(counter(&stats, "drop_lan_source_not_inside"), not_inside.len() as u64, "{stats:?}");
    assert_eq!(counter(&stats, "drop_lan_source_reserved"), reserved.len() as u64, "{stats:?}");
    assert_eq!(counter(&stats, "drop_bad_ip_checksum"), 1, "{stats:?}");
    assert_eq!(counter(&stats, "drop_bad_ip_header"), 1, "{stats:?}");
    assert_eq!(counter(&stats, "drop_bad_l4_header"), 1, "{stats:?}");
}

/// RFC 6888 REQ-4 with BCP 38: a host that invents source addresses outside
/// the inside prefix to take a port quota for each gets no port at all, and
/// another host's new flows keep being set up.
#[test]
fn invented_sources_cannot_exhaust_the_port_range() {
    require_root!();
    let mut lab = NatLab::new(2, false).unwrap();
    lab.start_natd_with_config("port_range = \"20000-20099\"\nports_per_host = 40\n").unwrap();
    let _echo = EchoServer::start(&lab.server, ECHO_PORT);
    let lan = Link::between(&lab.hosts[0], "eth0", &lab.gw, "lan0").unwrap();
    let mut frames = Vec::new();
    for invented in 1..=4u8 {
        for port in 0..100u16 {
            frames.push(Frame::udp((Ipv4Addr::new(10, 66, 0, invented), 30000 + port), (SERVER, ECHO_PORT)).with_macs(lan.from, lan.to).build());
        }
    }
    send_frames(&lab.hosts[0], "eth0", frames, Duration::ZERO).unwrap();
    thread::sleep(Duration::from_millis(300));
    assert!(lab.sessions().unwrap().is_empty(), "invented sources were given ports: {:?}", lab.sessions().unwrap());
    assert_eq!(counter(&lab.stats().unwrap(), "drop_lan_source_not_inside"), 400);

    let replies: Vec<_> = (0..30u16)
        .map(|i| {
            in_ns(&lab.hosts[1], move || {
                let sock = UdpSocket::bind(("0.0.0.0", 6000 + i)).unwrap();
                sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
                sock.send_to(b"x", SocketAddrV4::new(SERVER, ECHO_PORT)).unwrap();
                sock.recv(&mut [0u8; 64]).is_ok()
            })
        })
        .collect();
    let answered = replies.into_iter().filter_map(|r| r.join().ok()).filter(|answered| *answered).count();
    assert_eq!(answered, 30, "the other host's new flows were refused");
}

/// The forwarding sysctl of `ifname` in the gateway namespace.
fn forwarding(lab: &NatLab, ifname: &str) -> String {
    lab.gw.exec(&["cat", &format!("/proc/sys/net/ipv4/conf/{ifname}/forwarding")]).unwrap().trim().to_string()
}

/// A UDP stream from host 0 to the server's sink port, 50 datagrams a
/// second for `seconds`, sent whatever happens to the gateway meanwhile.
fn keep_sending(lab: &NatLab, seconds: u32) -> thread::JoinHandle<()> {
    in_ns(&lab.hosts[0], move || {
        let sock = UdpSocket::bind("0.0.0.0:5300").unwrap();
        for i in 0..50 * seconds {
            let _ = sock.send_to(&i.to_be_bytes(), SocketAddrV4::new(SERVER, SINK_PORT));
            thread::sleep(Duration::from_millis(20));
        }
    })
}

/// Forwarding goes on only while the programs guard it: with natd stopped,
/// nothing with an inside source reaches the WAN (the kernel would forward
/// it untranslated), and the sysctls are as natd found them.
#[test]
fn after_natd_stops_nothing_with_an_inside_source_reaches_the_wan() {
    require_root!();
    let mut lab = NatLab::new(1, false).unwrap();
    assert_eq!((forwarding(&lab, "lan0"), forwarding(&lab, "wan0")), ("0".into(), "0".into()));
    lab.start_natd(&[]).unwrap();
    assert_eq!((forwarding(&lab, "lan0"), forwarding(&lab, "wan0")), ("1".into(), "1".into()), "natd needs forwarding for its route lookups");
    let capture = Capture::start(&lab.server, "eth0", &format!("udp port {SINK_PORT}")).unwrap();
    let sender = keep_sending(&lab, 3);
    thread::sleep(Duration::from_secs(1));
    lab.stop_natd().unwrap();
    assert_eq!((forwarding(&lab, "lan0"), forwarding(&lab, "wan0")), ("0".into(), "0".into()), "natd left forwarding on");
    sender.join().unwrap();
    let seen = capture.finish().unwrap();
    let translated = seen.iter().filter(|l| l.contains(&format!("{EXTERNAL}."))).count();
    let leaked: Vec<&String> = seen.iter().filter(|l| l.contains("10.77.1.")).collect();
    assert!(translated > 20, "too little went through while natd ran: {seen:?}");
    assert!(leaked.is_empty(), "inside sources reached the WAN after natd stopped:\n{leaked:?}");
}

/// What a crash leaves (README, "Stopping"): natd killed with SIGKILL
/// leaves its datapath serving from its pins, translating as before, and
/// cannot restore forwarding. `natd down` then removes the programs, with
/// forwarding still on (no natd handed over the values to put back): the
/// nftables guard the README ships (examples/natd-guard.nft) keeps every
/// inside source off the WAN. Loaded while natd runs, the guard changes
/// nothing: the programs forward in XDP, before the kernel's forward hook.
#[test]
fn after_a_crash_the_nftables_guard_keeps_inside_sources_off_the_wan() {
    require_root!();
    let mut lab = NatLab::new(1, false).unwrap();
    let guard = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/natd-guard.nft");
    lab.gw.exec(&["nft", "-D", "LAN=lan0", "-D", "WAN=wan0", "-f", guard]).unwrap();
    lab.start_natd(&[]).unwrap();
    let _echo = EchoServer::start(&lab.server, ECHO_PORT);
    let _stream = StreamEcho::start(&lab.server, STREAM_PORT);
    LegitimateFlows::start(&lab).assert_whole();

    let capture = Capture::start(&lab.server, "eth0", &format!("udp port {SINK_PORT}")).unwrap();
    let sender = keep_sending(&lab, 3);
    thread::sleep(Duration::from_secs(1));
    lab.kill_natd().unwrap();
    assert_eq!(forwarding(&lab, "lan0"), "1", "a killed natd restores nothing (what the README says)");
    thread::sleep(Duration::from_millis(700));
    let down = lab.natd_cli(&["down", "--lan", "lan0", "--wan", "wan0"]).unwrap();
    assert!(down.status.success(), "{down:?}");
    assert_eq!(forwarding(&lab, "lan0"), "1", "natd down cannot know what the killed natd found");
    sender.join().unwrap();
    let seen = capture.finish().unwrap();
    let leaked: Vec<&String> = seen.iter().filter(|l| l.contains("10.77.1.")).collect();
    assert!(leaked.is_empty(), "inside sources reached the WAN after the crash:\n{leaked:?}");
    let translated = seen.iter().filter(|l| l.contains(&format!("{EXTERNAL}."))).count();
    assert!(translated > 60, "the datapath translated on after the crash (some 50 packets before it), until natd down: {translated} packets");
    let guard_counts = lab.gw.exec(&["nft", "list", "table", "inet", "natd_guard"]).unwrap();
    assert!(!guard_counts.contains("counter packets 0 bytes 0 drop\n\t\tiifname \"wan0\""), "the guard dropped nothing:\n{guard_counts}");
}

/// Traffic to the gateway itself still passes from any source: DHCP from
/// 0.0.0.0 to 255.255.255.255 reaches a DHCP server on the gateway
/// (dnsmasq), and the client gets its lease (busybox udhcpc).
#[test]
fn a_dhcp_server_on_the_gateway_keeps_working() {
    require_root!();
    let mut lab = NatLab::new(1, false).unwrap();
    lab.start_natd(&[]).unwrap();
    let leases = std::env::temp_dir().join(format!("{}-dhcp.leases", lab.gw.name));
    let dnsmasq = lab
        .gw
        .command(&[
            "dnsmasq",
            "--no-daemon",
            "--conf-file=/dev/null",
            "--port=0",
            "--interface=lan0",
            "--bind-interfaces",
            "--user=root",
            "--dhcp-range=10.77.1.100,10.77.1.150,255.255.255.0,1h",
            &format!("--dhcp-leasefile={}", leases.display()),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("dnsmasq");
    let _dnsmasq = KillOnDrop(dnsmasq);
    thread::sleep(Duration::from_millis(500));
    let client = lab.hosts[0].command(&["busybox", "udhcpc", "-i", "eth0", "-f", "-q", "-n", "-B", "-t", "5", "-T", "1", "-s", "/bin/true"]).output();
    let _ = std::fs::remove_file(&leases);
    let client = client.expect("running udhcpc");
    // udhcpc reports on stderr.
    let said = String::from_utf8_lossy(&client.stderr);
    assert!(client.status.success() && said.contains("lease of 10.77.1.1"), "no lease from the gateway's DHCP server:\n{said}");
    let stats = lab.stats().unwrap();
    assert!(counter(&stats, "pass_local") >= 2, "DISCOVER and REQUEST pass to the gateway: {stats:?}");
}
