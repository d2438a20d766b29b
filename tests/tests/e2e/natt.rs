//! IPsec NAT traversal (RFC 3947, RFC 3948) through the gateway with a real
//! IKE stack: strongSwan's charon in each namespace (see
//! `nat_tests::strongswan`), IKEv2 with a pre-shared key, ESP in UDP 4500.
//!
//! Nothing in natd knows IKE: port 500 and 4500 are ordinary UDP mappings.
//! The case many NATs get wrong is two inside clients that both use source
//! port 500 (and 4500 once NAT is detected) towards one responder; with
//! endpoint-independent mapping each client keeps its own external port
//! and the responder tells the two tunnels apart by it.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddrV4},
    thread,
    time::{Duration, Instant},
};

use nat_tests::{
    natlab::{Capture, EXTERNAL, NatLab, SERVER, host_addr},
    netns::Netns,
    require_root,
    strongswan::{Charon, IkeSa},
};

/// An address on the responder's side, reachable only through a tunnel: the
/// gateway has no route to it, so a plain packet to it never leaves the LAN.
const INNER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// The responder hands each client a virtual IP from this pool.
const POOL: &str = "10.99.0.0/24";
/// NAT-T keepalive interval (strongSwan's default is 20 s), and natd's UDP
/// idle timeout: longer than one keepalive interval, shorter than the idle
/// wait, so the mappings live on keepalives alone.
const KEEP_ALIVE: Duration = Duration::from_secs(2);
const UDP_TIMEOUT: Duration = Duration::from_secs(5);
const IKE: u16 = 500;
const NAT_T: u16 = 4500;
/// Algorithms the plugins in `strongswan::PLUGINS` provide.
const PROPOSALS: &str = "proposals = aes128-sha256-modp2048";
const ESP_PROPOSALS: &str = "esp_proposals = aes128-sha256";

fn secrets() -> String {
    "secrets { ike-natt { id-r = responder.natt.test\n id-0 = client0.natt.test\n id-1 = client1.natt.test\n secret = natt-lab-psk } }\n".to_string()
}

fn responder_conf() -> String {
    format!(
        "connections {{ natt {{ version = 2\n {PROPOSALS}\n pools = vips\n\
           local {{ auth = psk\n id = responder.natt.test }}\n remote {{ auth = psk }}\n\
           children {{ net {{ local_ts = {INNER}/32\n {ESP_PROPOSALS} }} }} }} }}\n\
         pools {{ vips {{ addrs = {POOL} }} }}\n{}",
        secrets()
    )
}

fn client_conf(i: usize) -> String {
    format!(
        "connections {{ natt {{ version = 2\n {PROPOSALS}\n remote_addrs = {SERVER}\n vips = 0.0.0.0\n\
           local {{ auth = psk\n id = client{i}.natt.test }}\n remote {{ auth = psk\n id = responder.natt.test }}\n\
           children {{ net {{ remote_ts = {INNER}/32\n {ESP_PROPOSALS} }} }} }} }}\n{}",
        secrets()
    )
}

/// The one IKE SA of a client.
fn only_sa(charon: &Charon, ns: &Netns) -> IkeSa {
    let sas = charon.sas(ns).unwrap();
    assert_eq!(sas.len(), 1, "{} has {} IKE SAs: {sas:#?}", charon.name, sas.len());
    sas.into_iter().next().unwrap()
}

/// The responder's IKE SA with `client{i}`.
fn responder_sa_of(responder: &Charon, ns: &Netns, i: usize) -> IkeSa {
    let sas = responder.sas(ns).unwrap();
    let id = format!("client{i}.natt.test");
    sas.iter().find(|sa| sa.is("remote-id", &id)).cloned().unwrap_or_else(|| panic!("the responder has no IKE SA with {id}: {sas:#?}"))
}

/// Pings `INNER` from every client at once; each must get all its echoes.
fn ping_through_tunnels(hosts: &[Netns]) {
    let pings: Vec<_> = hosts
        .iter()
        .map(|h| {
            let mut cmd = h.command(&["ping", "-n", "-c", "3", "-i", "0.2", "-W", "2", &INNER.to_string()]);
            thread::spawn(move || cmd.output())
        })
        .collect();
    for (i, ping) in pings.into_iter().enumerate() {
        let out = ping.join().unwrap().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && text.contains("3 received"), "ping from client {i} through its tunnel:\n{text}");
    }
}

/// The external endpoint natd gave each client's port-`port` endpoint.
fn externals(lab: &NatLab, hosts: usize, port: u16) -> Vec<SocketAddrV4> {
    (0..hosts)
        .map(|i| lab.wait_external_of("udp", SocketAddrV4::new(host_addr(i), port), Duration::from_secs(2)).unwrap())
        .collect()
}

/// RFC 3947, RFC 3948; RFC 4787 REQ-1 for IKE's fixed ports.
///
/// Two LAN clients, both on source ports 500 and 4500, bring up IKEv2 tunnels
/// to one responder at once: each detects the NAT, both tunnels carry pings,
/// the two clients have distinct external ports the responder sees, and no
/// inside address reaches the WAN. Then nothing but NAT-T keepalives for
/// longer than natd's UDP timeout: the port-500 mappings age out, the
/// port-4500 ones stay with the same external ports, and both tunnels still
/// carry pings.
#[test]
fn natt_two_clients_on_port_500_tunnel_to_one_responder_and_keepalives_hold_the_mappings() {
    require_root!();
    let started = Instant::now();
    let mut lab = NatLab::new(2, false).unwrap();
    lab.start_natd_with_config(&format!("[timeouts]\nudp = {}\n", UDP_TIMEOUT.as_secs())).unwrap();
    lab.server.ip(&["addr", "add", &format!("{INNER}/32"), "dev", "lo"]).unwrap();
    // Where the WAN frames arrive: AF_PACKET on the gateway's wan0 does not
    // see frames XDP redirects out of it.
    let wan = Capture::start(&lab.server, "eth0", "ip").unwrap();

    let responder = Charon::start(&lab.server, "responder", KEEP_ALIVE, &responder_conf()).unwrap();
    let clients: Vec<Charon> =
        (0..2).map(|i| Charon::start(&lab.hosts[i], &format!("client{i}"), KEEP_ALIVE, &client_conf(i)).unwrap()).collect();

    // Both at once: two IKE_SA_INITs from port 500 in flight together.
    let initiations: Vec<_> = clients
        .iter()
        .zip(&lab.hosts)
        .map(|(c, h)| {
            let mut cmd = c.swanctl_command(h, &["--initiate", "--child", "net", "--timeout", "20"]);
            thread::spawn(move || cmd.output())
        })
        .collect();
    for (i, initiation) in initiations.into_iter().enumerate() {
        let out = initiation.join().unwrap().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("initiate completed successfully"),
            "client {i} could not bring its tunnel up:\n{text}\n--- client log ---\n{}\n--- responder log ---\n{}\n--- natd ---\n{}",
            clients[i].log(),
            responder.log(),
            lab.natd_log()
        );
    }

    // The first packet of a flow is not lost (natd sets the mapping up and
    // sends it on): charon retransmits a request after 4 s without an answer.
    for (i, client) in clients.iter().enumerate() {
        assert!(!client.log().contains("retransmit"), "client {i} had to retransmit:\n{}", client.log());
    }

    // NAT detected by each client itself (RFC 7296 §2.23: the responder's
    // NAT_DETECTION_DESTINATION_IP hash is not of the client's own address and
    // port), ESP in UDP, both tunnels up at once, one virtual IP each.
    // `nat-remote` proves nothing: with no NAT at all (one veth between
    // client and responder) strongSwan reports nat-remote=yes on both sides
    // once the client asks for a virtual IP, but never nat-local=yes.
    let mut vips = BTreeSet::new();
    for (i, (client, host)) in clients.iter().zip(&lab.hosts).enumerate() {
        let sa = only_sa(client, host);
        assert!(sa.is("state", "ESTABLISHED"), "client {i}: {sa:#?}");
        assert!(sa.is("nat-local", "yes"), "client {i} did not find itself behind a NAT: {sa:#?}");
        assert!(client.log().contains("local host is behind NAT"), "client {i} log:\n{}", client.log());
        assert_eq!(sa.get("local-host"), Some(host_addr(i).to_string().as_str()), "client {i}: {sa:#?}");
        assert_eq!(sa.number("local-port"), Some(NAT_T.into()), "client {i} did not float to 4500: {sa:#?}");
        let child = sa.child().unwrap_or_else(|| panic!("client {i} has no CHILD_SA: {sa:#?}"));
        assert!(child.is("state", "INSTALLED") && child.is("encap", "yes"), "client {i}'s CHILD_SA is not UDP-encapsulated: {sa:#?}");
        vips.insert(sa.get("local-vips").unwrap_or_default().to_string());
    }
    assert_eq!(vips.len(), 2, "the clients' virtual IPs: {vips:?}");
    let sas = responder.sas(&lab.server).unwrap();
    assert_eq!(sas.len(), 2, "the responder's IKE SAs: {sas:#?}");
    for sa in &sas {
        let installed = sa.child().is_some_and(|c| c.is("state", "INSTALLED") && c.is("encap", "yes"));
        assert!(sa.is("state", "ESTABLISHED") && sa.is("nat-remote", "yes") && installed, "{sa:#?}");
        assert_eq!(sa.get("remote-host"), Some(EXTERNAL.to_string().as_str()), "the responder saw {sa:#?}");
    }

    ping_through_tunnels(&lab.hosts);
    for (i, (client, host)) in clients.iter().zip(&lab.hosts).enumerate() {
        let sa = only_sa(client, host);
        assert!(sa.number("packets-in").unwrap_or(0) >= 3, "client {i}'s echoes did not come through its CHILD_SA: {sa:#?}");
    }
    let last_ping = Instant::now();

    // natd: four UDP mappings, one per inside endpoint, four external ports;
    // the responder sees each client on its 4500 mapping. The pings went
    // inside ESP: no ICMP mapping.
    let ike = externals(&lab, 2, IKE);
    let nat_t = externals(&lab, 2, NAT_T);
    let all: BTreeSet<SocketAddrV4> = ike.iter().chain(&nat_t).copied().collect();
    assert_eq!(all.len(), 4, "500: {ike:?}, 4500: {nat_t:?}");
    assert!(all.iter().all(|e| *e.ip() == EXTERNAL), "{all:?}");
    for (i, external) in nat_t.iter().enumerate() {
        let sa = responder_sa_of(&responder, &lab.server, i);
        assert_eq!(sa.number("remote-port"), Some(external.port().into()), "client {i} on {external}: {sa:#?}");
    }
    let sessions = lab.sessions().unwrap();
    assert!(sessions.iter().all(|s| s.proto == "udp"), "{sessions:#?}");

    // Nothing but keepalives for longer than the UDP timeout. The port-500
    // mappings, idle since IKE floated to 4500, age out (the timeout is
    // real); the 4500 ones are refreshed by the keepalives.
    let idle = Capture::start(&lab.server, "eth0", "ip").unwrap();
    let deadline = last_ping + UDP_TIMEOUT + Duration::from_secs(6);
    loop {
        let sessions = lab.sessions().unwrap();
        let ike_left = sessions.iter().any(|s| s.inside.ends_with(&format!(":{IKE}")));
        if !ike_left && last_ping.elapsed() >= UDP_TIMEOUT + KEEP_ALIVE {
            break;
        }
        assert!(Instant::now() < deadline, "the idle port-500 mappings outlived their {UDP_TIMEOUT:?} timeout: {sessions:#?}");
        thread::sleep(Duration::from_millis(200));
    }
    let idle_for = last_ping.elapsed();
    let idle_lines = idle.finish().unwrap();
    let keepalives = |port: u16| idle_lines.iter().filter(|l| l.contains(&format!("{EXTERNAL}.{port} > {SERVER}.{NAT_T}")) && l.contains("keep-alive")).count();
    for external in &nat_t {
        assert!(keepalives(external.port()) >= 2, "keepalives from {external} in {idle_for:?}:\n{}", idle_lines.join("\n"));
    }
    let other: Vec<&String> = idle_lines.iter().filter(|l| !l.contains("keep-alive")).collect();
    assert!(other.is_empty(), "traffic other than NAT-T keepalives while idle:\n{other:#?}");

    let nat_t_after = externals(&lab, 2, NAT_T);
    assert_eq!(nat_t_after, nat_t, "the port-4500 mappings changed while idle ({idle_for:?})");
    for s in lab.sessions().unwrap() {
        assert!(s.inside.ends_with(&format!(":{NAT_T}")) && s.idle_s < UDP_TIMEOUT.as_secs(), "after {idle_for:?} of keepalives: {s:?}");
    }
    ping_through_tunnels(&lab.hosts);
    for (i, (client, host)) in clients.iter().zip(&lab.hosts).enumerate() {
        let sa = only_sa(client, host);
        assert!(sa.is("state", "ESTABLISHED") && sa.number("packets-in").unwrap_or(0) >= 6, "client {i} after the idle time: {sa:#?}");
        let at_responder = responder_sa_of(&responder, &lab.server, i);
        assert_eq!(at_responder.number("remote-port"), Some(nat_t[i].port().into()), "client {i} moved: {at_responder:#?}");
    }

    // The WAN saw both rounds of pings as ESP in UDP on each client's
    // external 4500 port, both ways, and never an inside address.
    let lines = wan.finish().unwrap();
    for external in &nat_t {
        let end = format!("{}.{}", external.ip(), external.port());
        let (from, to) = (format!("{end} > {SERVER}.{NAT_T}:"), format!("{SERVER}.{NAT_T} > {end}:"));
        let esp = |way: &str| lines.iter().filter(|l| l.contains(way) && l.contains("UDP-encap: ESP")).count();
        assert!(esp(&from) >= 6 && esp(&to) >= 6, "not both pings' ESP in UDP {from} and back on the WAN:\n{}", lines.join("\n"));
    }
    let leaks: Vec<&String> = lines.iter().filter(|l| l.contains("10.77.1.")).take(5).collect();
    assert!(leaks.is_empty(), "inside addresses on the WAN:\n{leaks:#?}");
    eprintln!("natt: {} WAN packets, idle {idle_for:?} on keepalives, whole test {:?}", lines.len(), started.elapsed());
}
