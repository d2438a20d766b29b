//! Inbound forwards (issue 12, DESIGN "Inbound"): a WAN packet to a
//! forwarded port reaches the backend of its flow (picked from the forward's
//! Maglev table when the flow is new), the client's address kept; the
//! backend's packets leave from the forward's external endpoint by its
//! static mapping; LAN hosts reach a forward hairpinned; half-open flows stay
//! in the LRU until the client answers the server; ICMP errors about
//! forwarded flows both ways; no backend up hands the packet to natd; the
//! passive health signals each backend earns.
//!
//! The tables are written as natd writes them (FORWARDS, BACKENDS, the
//! backends' static OUTBOUND mappings, MAGLEV), but with a Maglev table the
//! test chooses, so the backend a client must get follows from the pick hash
//! alone.

use std::net::{Ipv4Addr, SocketAddrV4};

use nat_common::{
    Endpoint, FreePort, Reason, miss_kind, proto, tcp_flags,
    forward::{Backend, FlowKey, ForwardPort, MAGLEV_SIZE, NO_BACKEND, Signals, backend_state, port_flags},
};
use nat_tests::{
    TestGateway, addr,
    packet::{Frame, L4},
    require_root,
    xdp_action::{DROP, PASS, REDIRECT},
};
use nat_userspace::datapath::{FlowTable, ForwardTables, PinRefusal, Side, StaticMapping};

use super::{
    TCP_EXTERNAL, TCP_INSIDE, UDP_EXTERNAL, UDP_INSIDE, case, from_lan, from_wan, gateway,
    handoff::read_events, icmp_error, quote, run_cases, with,
};

/// The forward's index: not 0, so a table read at another forward's offset
/// shows.
const FORWARD: u32 = 5;
/// The forward's external endpoint (TCP and UDP).
const SERVICE: (Ipv4Addr, u16) = (addr::EXTERNAL, 8080);
const SERVER_PORT: u16 = 80;
const CLIENT: (Ipv4Addr, u16) = (addr::REMOTE, 51000);
/// The clock natd publishes while the tests run.
const NOW: u64 = 7_000_000_000;

const SYN: u8 = tcp_flags::SYN;
const SYN_ACK: u8 = tcp_flags::SYN | tcp_flags::ACK;
const ACK: u8 = tcp_flags::ACK;
const RST_ACK: u8 = tcp_flags::RST | tcp_flags::ACK;

/// A backend: an inside server the gateway has a neighbour entry for.
struct Server {
    addr: Ipv4Addr,
    mac: [u8; 6],
    /// Its slot in the forward's BACKENDS.
    slot: u32,
}

impl Server {
    const fn at(&self) -> (Ipv4Addr, u16) {
        (self.addr, SERVER_PORT)
    }
}

const A: Server = Server { addr: Ipv4Addr::new(10, 77, 1, 30), mac: [0x02, 0, 0, 0, 0x01, 0x30], slot: 0 };
/// Slot 3: not next to A's, so a slot read one off shows.
const B: Server = Server { addr: Ipv4Addr::new(10, 77, 1, 31), mac: [0x02, 0, 0, 0, 0x01, 0x31], slot: 3 };

fn endpoint(e: (Ipv4Addr, u16), proto_nr: u8) -> Endpoint {
    Endpoint::new(e.0, e.1, proto_nr)
}

fn backend(server: &Server, base_port: u16, state: u8) -> Backend {
    Backend { addr_be: u32::from_ne_bytes(server.addr.octets()), base_port, state, _pad: 0 }
}

/// The fixture gateway with a forward of TCP and UDP port 8080 to servers A
/// and B on port 80, both up, installed as natd does it: the external
/// endpoints in FORWARDS, the backends, each backend's static outbound
/// mapping; and a Maglev table that gives every slot to A.
fn forward_gateway(tag: &str) -> TestGateway {
    let mut gw = gateway(tag).unwrap();
    gw.datapath.set_clock(NOW).unwrap();
    for server in [&A, &B] {
        let mac = nat_tests::mac(server.mac);
        gw.ns.ip(&["neigh", "replace", &server.addr.to_string(), "lladdr", &mac, "dev", "lan0", "nud", "permanent"]).unwrap();
        gw.datapath.set_backend(FORWARD, server.slot, backend(server, SERVER_PORT, backend_state::UP)).unwrap();
    }
    for proto_nr in [proto::TCP, proto::UDP] {
        let port = ForwardPort::new(FORWARD, 0, 0);
        gw.datapath.set_forward_port(endpoint(SERVICE, proto_nr), port).unwrap();
        for server in [&A, &B] {
            let mapping = StaticMapping {
                server: endpoint(server.at(), proto_nr),
                external: endpoint(SERVICE, proto_nr),
                forward: FORWARD,
                slot: server.slot,
                offset: 0,
            };
            gw.datapath.insert_static_mapping(&mapping).unwrap();
        }
    }
    set_table(&mut gw, FORWARD, |_| A.slot);
    gw
}

/// Writes a forward's whole Maglev table: index -> `slot_of(index)`.
fn set_table(gw: &mut TestGateway, forward: u32, slot_of: impl Fn(u32) -> u32) {
    gw.datapath.set_maglev(forward, &mut (0..MAGLEV_SIZE).map(|i| (i, slot_of(i)))).unwrap();
}

fn set_state(gw: &mut TestGateway, server: &Server, state: u8) {
    gw.datapath.set_backend(FORWARD, server.slot, backend(server, SERVER_PORT, state)).unwrap();
}

/// The forwarded flow of `client` to the service.
fn flow_key(client: (Ipv4Addr, u16), proto_nr: u8) -> FlowKey {
    FlowKey::new(&endpoint(client, proto_nr), &endpoint(SERVICE, proto_nr))
}

/// The Maglev index a new flow from `client` reads.
fn maglev_index(client: (Ipv4Addr, u16), proto_nr: u8) -> u32 {
    flow_key(client, proto_nr).pick_hash() % MAGLEV_SIZE
}

/// Which table holds a flow (never both).
fn table_of(gw: &TestGateway, key: &FlowKey) -> Option<FlowTable> {
    let established = gw.datapath.forwarded_flow(key, FlowTable::Established).unwrap();
    let half_open = gw.datapath.forwarded_flow(key, FlowTable::HalfOpen).unwrap();
    match (established, half_open) {
        (Some(_), Some(_)) => panic!("{key:?} is in FLOWS and PENDING both"),
        (Some(_), None) => Some(FlowTable::Established),
        (None, Some(_)) => Some(FlowTable::HalfOpen),
        (None, None) => None,
    }
}

/// The backend slot a tracked flow is on.
fn backend_of(gw: &TestGateway, key: &FlowKey) -> u32 {
    let table = table_of(gw, key).unwrap_or_else(|| panic!("{key:?} is not tracked"));
    u32::from(gw.datapath.forwarded_flow(key, table).unwrap().unwrap().backend)
}

fn tcp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), flags: u8) -> Frame {
    with(Frame::tcp(src, dst), |f| f.l4 = L4::Tcp { sport: src.1, dport: dst.1, flags })
}

fn udp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> Frame {
    Frame::udp(src, dst)
}

/// What `server` must receive for `f` (already addressed to it): TTL - 1,
/// from the gateway's LAN port.
fn at_server(f: Frame, server: &Server) -> Frame {
    with(f, |f| f.ttl -= 1).with_macs(addr::LAN_GW_MAC, server.mac)
}

/// A server's frame as it arrives on the gateway's LAN port.
fn from_server(f: Frame, server: &Server) -> Frame {
    f.with_macs(server.mac, addr::LAN_GW_MAC)
}

/// What must leave on the WAN for `f` (already addressed): TTL - 1, MACs of
/// the WAN port and the next hop.
fn on_wan(f: Frame) -> Frame {
    with(f, |f| f.ttl -= 1).with_macs(addr::WAN_GW_MAC, addr::WAN_NEXT_HOP_MAC)
}

/// One packet forwarded to a backend: the exact frame, checksums, reason.
fn to_backend(gw: &TestGateway, name: &'static str, input: Frame, server: &Server, want: Frame, reason: Reason) {
    run_cases(gw, vec![case(name, Side::Wan, input, REDIRECT, Some(at_server(want, server)), reason)]).unwrap();
}

/// DESIGN "Inbound" (a load-balanced forward, as katran and cilium
/// `lb4_local`): a client's SYN to the forward's external endpoint, which
/// has no mapping, reaches the backend the Maglev table gives it with only
/// the destination rewritten (the server sees the client's real address),
/// TTL - 1, MACs of the LAN port and the server, checksums right. The
/// server's SYN-ACK leaves from the external endpoint by its static
/// mapping. The flow is filed half-open (PENDING) with its forward, backend,
/// offset and time, stays there after the SYN-ACK, and moves to FLOWS when
/// the client's ACK answers the server; data then goes both ways.
#[test]
fn a_forwarded_connection_reaches_its_backend_and_answers_from_the_service() {
    require_root!();
    let gw = forward_gateway("fwd");
    let a = A.at();
    let key = flow_key(CLIENT, proto::TCP);
    use Side::{Lan, Wan};
    run_cases(
        &gw,
        vec![
            case("SYN to the service", Wan, from_wan(tcp(CLIENT, SERVICE, SYN)), REDIRECT, Some(at_server(tcp(CLIENT, a, SYN), &A)), Reason::ForwardedNewFlow),
            case("SYN-ACK from the server", Lan, from_server(tcp(a, CLIENT, SYN_ACK), &A), REDIRECT, Some(on_wan(tcp(SERVICE, CLIENT, SYN_ACK))), Reason::TranslatedOut),
        ],
    )
    .unwrap();
    let flow = gw.datapath.forwarded_flow(&key, FlowTable::HalfOpen).unwrap().expect("the SYN filed no half-open flow");
    assert_eq!((flow.forward, flow.backend, flow.offset, flow.last_seen_ns), (FORWARD as u16, A.slot as u16, 0, NOW));
    assert_eq!(flow.tcp_flags_in & tcp_flags::TRACKED, SYN);
    assert_eq!(table_of(&gw, &key), Some(FlowTable::HalfOpen), "a flow the client has not answered left PENDING");

    run_cases(
        &gw,
        vec![case("client's ACK", Wan, from_wan(tcp(CLIENT, SERVICE, ACK)), REDIRECT, Some(at_server(tcp(CLIENT, a, ACK), &A)), Reason::ForwardedIn)],
    )
    .unwrap();
    assert_eq!(table_of(&gw, &key), Some(FlowTable::Established), "the completed handshake did not promote the flow");
    let flow = gw.datapath.forwarded_flow(&key, FlowTable::Established).unwrap().unwrap();
    assert_eq!((flow.forward, flow.backend, flow.offset), (FORWARD as u16, A.slot as u16, 0));

    let data = |f: Frame| with(f, |f| f.payload = (0..300).map(|i| (i * 7 + 3) as u8).collect());
    run_cases(
        &gw,
        vec![
            case("data in", Wan, data(from_wan(tcp(CLIENT, SERVICE, ACK))), REDIRECT, Some(data(at_server(tcp(CLIENT, a, ACK), &A))), Reason::ForwardedIn),
            case("data out", Lan, data(from_server(tcp(a, CLIENT, ACK), &A)), REDIRECT, Some(data(on_wan(tcp(SERVICE, CLIENT, ACK)))), Reason::TranslatedOut),
        ],
    )
    .unwrap();
}

/// A port range forward: the server port is its base port plus the port's
/// offset into the range, both ways (`Backend::endpoint`,
/// `ForwardPort::offset`), and the flow keeps the offset.
#[test]
fn a_port_range_forward_keeps_the_port_offset_both_ways() {
    require_root!();
    let mut gw = forward_gateway("fwdrange");
    const RANGE: u32 = 9;
    gw.datapath.set_backend(RANGE, A.slot, backend(&A, 9000, backend_state::UP)).unwrap();
    for offset in 0..10u16 {
        let external = endpoint((addr::EXTERNAL, 8000 + offset), proto::TCP);
        gw.datapath.set_forward_port(external, ForwardPort::new(RANGE, offset, 0)).unwrap();
        let server = endpoint((A.addr, 9000 + offset), proto::TCP);
        gw.datapath.insert_static_mapping(&StaticMapping { server, external, forward: RANGE, slot: A.slot, offset }).unwrap();
    }
    set_table(&mut gw, RANGE, |_| A.slot);

    let (service, server) = ((addr::EXTERNAL, 8003), (A.addr, 9003));
    run_cases(
        &gw,
        vec![
            case("SYN to port 8003", Side::Wan, from_wan(tcp(CLIENT, service, SYN)), REDIRECT, Some(at_server(tcp(CLIENT, server, SYN), &A)), Reason::ForwardedNewFlow),
            case("SYN-ACK from 9003", Side::Lan, from_server(tcp(server, CLIENT, SYN_ACK), &A), REDIRECT, Some(on_wan(tcp(service, CLIENT, SYN_ACK))), Reason::TranslatedOut),
        ],
    )
    .unwrap();
    let key = FlowKey::new(&endpoint(CLIENT, proto::TCP), &endpoint(service, proto::TCP));
    let flow = gw.datapath.forwarded_flow(&key, FlowTable::HalfOpen).unwrap().expect("no flow filed");
    assert_eq!((flow.forward, flow.backend, flow.offset), (RANGE as u16, A.slot as u16, 3));
}

/// RFC 4787 REQ-9 / RFC 5382 REQ-8 applied to a forward (DESIGN: hairpin to
/// a forward works like hairpinning to a mapping, the server sees the
/// external address): a LAN host's SYN to the service on the external
/// address goes back into the LAN to the backend, from the host's own
/// external endpoint; the server's SYN-ACK to that endpoint reaches the host
/// from the service, TTL - 1 each way, and so does its Port Unreachable
/// about a hairpinned datagram (RFC 5508 REQ-7). A host with no mapping yet
/// claims one from natd's queue and is hairpinned from it.
#[test]
fn a_lan_host_reaches_a_forward_hairpinned_from_its_external_endpoint() {
    require_root!();
    let mut gw = forward_gateway("fwdhairpin");
    let a = A.at();
    let host_gets = |f: Frame| with(f, |f| f.ttl -= 1).with_macs(addr::LAN_GW_MAC, addr::LAN_HOST_MAC);
    run_cases(
        &gw,
        vec![
            case(
                "host's SYN to the service",
                Side::Lan,
                from_lan(tcp(TCP_INSIDE, SERVICE, SYN)),
                REDIRECT,
                Some(at_server(tcp(TCP_EXTERNAL, a, SYN), &A)),
                Reason::HairpinnedToForward,
            ),
            case(
                "server's SYN-ACK to the host's external endpoint",
                Side::Lan,
                from_server(tcp(a, TCP_EXTERNAL, SYN_ACK), &A),
                REDIRECT,
                Some(host_gets(tcp(SERVICE, TCP_INSIDE, SYN_ACK))),
                Reason::Hairpinned,
            ),
            case(
                "host's ACK",
                Side::Lan,
                from_lan(tcp(TCP_INSIDE, SERVICE, ACK)),
                REDIRECT,
                Some(at_server(tcp(TCP_EXTERNAL, a, ACK), &A)),
                Reason::HairpinnedToForward,
            ),
        ],
    )
    .unwrap();
    assert!(table_of(&gw, &FlowKey::new(&endpoint(TCP_EXTERNAL, proto::TCP), &endpoint(SERVICE, proto::TCP))).is_some(), "no flow filed for the hairpinned connection");

    // RFC 5508 REQ-7: the server's Port Unreachable about a hairpinned
    // datagram (it quotes the host's external endpoint to itself) reaches
    // the host from the external address, quoting what the host sent.
    let received = with(udp(UDP_EXTERNAL, a), |f| f.ttl = 63);
    let sent_by_host = with(udp(UDP_INSIDE, SERVICE), |f| f.ttl = 63);
    let mut error = Frame::new(A.addr, addr::EXTERNAL, L4::Raw { proto: proto::ICMP });
    error.payload = icmp_error(3, 3, &quote(&received));
    let mut expected = Frame::new(addr::EXTERNAL, addr::LAN_HOST, L4::Raw { proto: proto::ICMP });
    expected.payload = icmp_error(3, 3, &quote(&sent_by_host));
    run_cases(
        &gw,
        vec![
            case("host's datagram", Side::Lan, from_lan(udp(UDP_INSIDE, SERVICE)), REDIRECT, Some(at_server(udp(UDP_EXTERNAL, a), &A)), Reason::HairpinnedToForward),
            case("server's port unreachable about it", Side::Lan, from_server(error, &A), REDIRECT, Some(host_gets(expected)), Reason::IcmpErrorHairpinned),
        ],
    )
    .unwrap();

    // No mapping yet: the host claims a queued port and is hairpinned from it.
    let _ring = gw.datapath.take_miss_ring().unwrap();
    gw.datapath.push_free_port(proto::UDP, FreePort { session: 77, port: 24680, _pad: 0 }).unwrap();
    let inside = (addr::LAN_HOST, 7001);
    run_cases(
        &gw,
        vec![case(
            "unmapped host's datagram to the service",
            Side::Lan,
            from_lan(udp(inside, SERVICE)),
            REDIRECT,
            Some(at_server(udp((addr::EXTERNAL, 24680), a), &A)),
            Reason::HairpinnedToForward,
        )],
    )
    .unwrap();
    let claimed = gw.datapath.outbound_mapping(&endpoint(inside, proto::UDP)).unwrap().expect("the host claimed no mapping");
    assert_eq!(claimed.target(proto::UDP), endpoint((addr::EXTERNAL, 24680), proto::UDP));
}

/// DESIGN "Health": the passive signals count a hairpinned client like any
/// other. Its SYN counts in the backend's `syns`, so the server's SYN-ACK
/// must count in `syn_acks` (else natd sees SYNs left unanswered and takes a
/// healthy server down when only LAN clients use it), and the server's
/// answer with the host's ACK completes the handshake: the flow moves to
/// FLOWS, where a flood cannot evict it. The server's Port Unreachable to a
/// hairpinned client counts in `unreachables`.
#[test]
fn a_hairpinned_handshake_counts_the_servers_answer_and_promotes_the_flow() {
    require_root!();
    let gw = forward_gateway("fwdhairpinsig");
    let a = A.at();
    let key = FlowKey::new(&endpoint(TCP_EXTERNAL, proto::TCP), &endpoint(SERVICE, proto::TCP));
    for (side, input) in [
        (Side::Lan, from_lan(tcp(TCP_INSIDE, SERVICE, SYN))),
        (Side::Lan, from_server(tcp(a, TCP_EXTERNAL, SYN_ACK), &A)),
        (Side::Lan, from_lan(tcp(TCP_INSIDE, SERVICE, ACK))),
    ] {
        assert_eq!(gw.run(side, &input.build()).unwrap().action, REDIRECT);
    }
    let signals = gw.datapath.signals(FORWARD, A.slot).unwrap();
    assert_eq!((signals.syns, signals.syn_acks), (1, 1), "hairpinned SYN and SYN-ACK counted as {signals:?}");
    assert_eq!(table_of(&gw, &key), Some(FlowTable::Established), "the hairpinned handshake did not promote the flow");

    // The server's Port Unreachable to a hairpinned client is a refusal as
    // one to the Internet is.
    assert_eq!(gw.run(Side::Lan, &from_lan(udp(UDP_INSIDE, SERVICE)).build()).unwrap().action, REDIRECT);
    let mut error = Frame::new(A.addr, addr::EXTERNAL, L4::Raw { proto: proto::ICMP });
    error.payload = icmp_error(3, 3, &quote(&with(udp(UDP_EXTERNAL, a), |f| f.ttl = 63)));
    assert_eq!(gw.run(Side::Lan, &from_server(error, &A).build()).unwrap().action, REDIRECT);
    assert_eq!(gw.datapath.signals(FORWARD, A.slot).unwrap().unreachables, 1, "the hairpinned refusal was not counted");
}

/// DESIGN "Inbound": a new flow takes the backend in the slot
/// `pick_hash % MAGLEV_SIZE` of its forward's Maglev table. With slots
/// alternating between A and B, each of 16 clients reaches the backend of
/// its own slot (both backends among them); with every slot A's but one
/// client's slot B's, that client alone reaches B. A backend down in the
/// picked slot gives no pick (natd takes it out of the table; the datapath
/// does not guess another): the packet goes to natd.
#[test]
fn a_new_flow_takes_the_backend_of_its_maglev_slot() {
    require_root!();
    let mut gw = forward_gateway("fwdpick");
    let _ring = gw.datapath.take_miss_ring().unwrap();
    // Even indexes A's, odd ones B's.
    let alternating = |index: u32| if index.is_multiple_of(2) { &A } else { &B };
    set_table(&mut gw, FORWARD, |index| alternating(index).slot);
    let clients: Vec<(Ipv4Addr, u16)> = (0..16).map(|i| (addr::REMOTE, 52000 + i)).collect();
    let servers: Vec<&Server> = clients.iter().map(|c| alternating(maglev_index(*c, proto::TCP))).collect();
    assert!(servers.iter().any(|s| s.slot == A.slot) && servers.iter().any(|s| s.slot == B.slot), "the clients all hash to one parity: pick others");
    for (client, server) in clients.iter().zip(&servers) {
        to_backend(&gw, "SYN, alternating table", from_wan(tcp(*client, SERVICE, SYN)), server, tcp(*client, server.at(), SYN), Reason::ForwardedNewFlow);
        assert_eq!(backend_of(&gw, &flow_key(*client, proto::TCP)), server.slot);
    }

    // One slot of B's: only the client hashing there reaches B.
    let (lone, other) = ((addr::REMOTE, 53000), (addr::REMOTE, 53001));
    let lone_index = maglev_index(lone, proto::UDP);
    assert_ne!(lone_index, maglev_index(other, proto::UDP), "pick another client");
    set_table(&mut gw, FORWARD, |index| if index == lone_index { B.slot } else { A.slot });
    to_backend(&gw, "datagram to the one slot of B", from_wan(udp(lone, SERVICE)), &B, udp(lone, B.at()), Reason::ForwardedNewFlow);
    to_backend(&gw, "datagram to another slot", from_wan(udp(other, SERVICE)), &A, udp(other, A.at()), Reason::ForwardedNewFlow);

    // B down in its slots: no pick for the clients hashing there.
    set_table(&mut gw, FORWARD, |index| alternating(index).slot);
    set_state(&mut gw, &B, backend_state::DOWN);
    let fresh: Vec<(Ipv4Addr, u16)> = (0..16).map(|i| (addr::REMOTE, 54000 + i)).collect();
    let on_b = *fresh.iter().find(|c| alternating(maglev_index(**c, proto::TCP)).slot == B.slot).expect("no client hashes to B");
    let on_a = *fresh.iter().find(|c| alternating(maglev_index(**c, proto::TCP)).slot == A.slot).expect("no client hashes to A");
    run_cases(&gw, vec![case("SYN to B's slot, B down", Side::Wan, from_wan(tcp(on_b, SERVICE, SYN)), DROP, None, Reason::ForwardNoServer)]).unwrap();
    assert_eq!(table_of(&gw, &flow_key(on_b, proto::TCP)), None, "a flow was filed with no backend");
    to_backend(&gw, "SYN to A's slot, B down", from_wan(tcp(on_a, SERVICE, SYN)), &A, tcp(on_a, A.at(), SYN), Reason::ForwardedNewFlow);
}

/// DESIGN "Inbound": a flow stays on its backend when the set changes
/// (natd rebuilt the Maglev table): after the table gives every slot to B,
/// the packets of flows that began on A, a TCP connection (a retransmitted
/// SYN included) and a UDP flow, still reach A, while a new client reaches
/// B. A draining backend (weight 0) keeps its flows too, a new SYN of its
/// flow included.
#[test]
fn a_flow_stays_on_its_backend_when_the_table_changes() {
    require_root!();
    let mut gw = forward_gateway("fwdkeep");
    let udp_client = (addr::REMOTE, 51001);
    to_backend(&gw, "SYN", from_wan(tcp(CLIENT, SERVICE, SYN)), &A, tcp(CLIENT, A.at(), SYN), Reason::ForwardedNewFlow);
    to_backend(&gw, "datagram", from_wan(udp(udp_client, SERVICE)), &A, udp(udp_client, A.at()), Reason::ForwardedNewFlow);

    set_table(&mut gw, FORWARD, |_| B.slot);
    to_backend(&gw, "SYN again, table all B", from_wan(tcp(CLIENT, SERVICE, SYN)), &A, tcp(CLIENT, A.at(), SYN), Reason::ForwardedIn);
    to_backend(&gw, "ACK, table all B", from_wan(tcp(CLIENT, SERVICE, ACK)), &A, tcp(CLIENT, A.at(), ACK), Reason::ForwardedIn);
    to_backend(&gw, "datagram, table all B", from_wan(udp(udp_client, SERVICE)), &A, udp(udp_client, A.at()), Reason::ForwardedIn);
    let new_client = (addr::REMOTE, 51002);
    to_backend(&gw, "new client, table all B", from_wan(tcp(new_client, SERVICE, SYN)), &B, tcp(new_client, B.at(), SYN), Reason::ForwardedNewFlow);
    assert_eq!(backend_of(&gw, &flow_key(CLIENT, proto::TCP)), A.slot);

    set_state(&mut gw, &A, backend_state::DRAINING);
    to_backend(&gw, "SYN again, A draining", from_wan(tcp(CLIENT, SERVICE, SYN)), &A, tcp(CLIENT, A.at(), SYN), Reason::ForwardedIn);
    to_backend(&gw, "datagram, A draining", from_wan(udp(udp_client, SERVICE)), &A, udp(udp_client, A.at()), Reason::ForwardedIn);
}

/// DESIGN "Health": a down server leaves the Maglev table; its UDP flows
/// reselect, and a TCP retry (a new SYN) reselects, while the other
/// segments of a TCP connection on it stay (the server may still answer
/// them). A server taken out of the forward (its slot EMPTY) loses its flows
/// whatever the packet. Each move counts as `forward_rebalanced` and as a
/// new flow (and SYN) of the backend it moved to; the flow then stays there.
#[test]
fn flows_of_a_down_backend_move_on_a_datagram_or_a_new_syn() {
    require_root!();
    let mut gw = forward_gateway("fwdmove");
    let (udp_client, tcp_client, gone_client) = ((addr::REMOTE, 51001), (addr::REMOTE, 51002), (addr::REMOTE, 51003));
    to_backend(&gw, "datagram", from_wan(udp(udp_client, SERVICE)), &A, udp(udp_client, A.at()), Reason::ForwardedNewFlow);
    to_backend(&gw, "SYN", from_wan(tcp(tcp_client, SERVICE, SYN)), &A, tcp(tcp_client, A.at(), SYN), Reason::ForwardedNewFlow);

    set_state(&mut gw, &A, backend_state::DOWN);
    set_table(&mut gw, FORWARD, |_| B.slot);
    to_backend(&gw, "datagram, A down", from_wan(udp(udp_client, SERVICE)), &B, udp(udp_client, B.at()), Reason::ForwardRebalanced);
    assert_eq!(backend_of(&gw, &flow_key(udp_client, proto::UDP)), B.slot);
    to_backend(&gw, "next datagram", from_wan(udp(udp_client, SERVICE)), &B, udp(udp_client, B.at()), Reason::ForwardedIn);
    to_backend(&gw, "ACK, A down", from_wan(tcp(tcp_client, SERVICE, ACK)), &A, tcp(tcp_client, A.at(), ACK), Reason::ForwardedIn);
    assert_eq!(backend_of(&gw, &flow_key(tcp_client, proto::TCP)), A.slot);
    to_backend(&gw, "new SYN, A down", from_wan(tcp(tcp_client, SERVICE, SYN)), &B, tcp(tcp_client, B.at(), SYN), Reason::ForwardRebalanced);
    assert_eq!(backend_of(&gw, &flow_key(tcp_client, proto::TCP)), B.slot);
    to_backend(&gw, "ACK after the move", from_wan(tcp(tcp_client, SERVICE, ACK)), &B, tcp(tcp_client, B.at(), ACK), Reason::ForwardedIn);
    let b = gw.datapath.signals(FORWARD, B.slot).unwrap();
    assert_eq!((b.flows, b.syns), (2, 1), "B's signals after two flows moved to it: {b:?}");

    // Taken out of the forward: even a segment that is not a SYN moves.
    set_state(&mut gw, &A, backend_state::UP);
    set_table(&mut gw, FORWARD, |_| A.slot);
    to_backend(&gw, "SYN", from_wan(tcp(gone_client, SERVICE, SYN)), &A, tcp(gone_client, A.at(), SYN), Reason::ForwardedNewFlow);
    gw.datapath.set_backend(FORWARD, A.slot, Backend::default()).unwrap();
    set_table(&mut gw, FORWARD, |_| B.slot);
    to_backend(&gw, "ACK, A removed", from_wan(tcp(gone_client, SERVICE, ACK)), &B, tcp(gone_client, B.at(), ACK), Reason::ForwardRebalanced);
}

/// DESIGN "Inbound" and `miss_kind::NO_SERVER`: with no backend up (all
/// down, or a table of NO_BACKEND slots) a new flow's packet is not
/// forwarded; it is handed to natd intact through the ring, to answer it
/// (a TCP RST, an ICMP Port Unreachable), counted as `forward_no_server`,
/// and no flow is filed. The same from a LAN host hairpinning to the
/// forward.
#[test]
fn no_backend_up_hands_the_packet_to_natd() {
    require_root!();
    let mut gw = forward_gateway("fwdnoserver");
    let mut ring = gw.datapath.take_miss_ring().unwrap();
    let check = |gw: &TestGateway, ring: &mut aya::maps::RingBuf<aya::maps::MapData>, name: &str, side: Side, input: Frame| {
        let frame = input.build();
        let before = gw.datapath.counter(Reason::ForwardNoServer).unwrap();
        let run = gw.run(side, &frame).unwrap();
        assert_eq!(run.action, DROP, "{name}: the packet must not be forwarded");
        assert_eq!(gw.datapath.counter(Reason::ForwardNoServer).unwrap(), before + 1, "{name}");
        let events = read_events(ring);
        assert_eq!(events.len(), 1, "{name}");
        assert_eq!(events[0].kind, miss_kind::NO_SERVER, "{name}");
        assert_eq!(events[0].ingress_ifindex, gw.ingress_ifindex(side), "{name}");
        assert_eq!(events[0].frame(), &frame[..], "{name}: natd gets the frame as it arrived");
    };
    set_state(&mut gw, &A, backend_state::DOWN);
    set_state(&mut gw, &B, backend_state::DOWN);
    check(&gw, &mut ring, "TCP SYN, every backend down", Side::Wan, from_wan(tcp(CLIENT, SERVICE, SYN)));
    check(&gw, &mut ring, "UDP, every backend down", Side::Wan, from_wan(udp(CLIENT, SERVICE)));
    check(&gw, &mut ring, "hairpinned SYN, every backend down", Side::Lan, from_lan(tcp(TCP_INSIDE, SERVICE, SYN)));

    set_state(&mut gw, &A, backend_state::UP);
    set_state(&mut gw, &B, backend_state::UP);
    set_table(&mut gw, FORWARD, |_| NO_BACKEND);
    check(&gw, &mut ring, "TCP SYN, empty table", Side::Wan, from_wan(tcp(CLIENT, SERVICE, SYN)));
    check(&gw, &mut ring, "UDP, empty table", Side::Wan, from_wan(udp(CLIENT, SERVICE)));
    assert!(gw.datapath.forwarded_flows().unwrap().is_empty(), "a flow was filed with no backend");
}

/// DESIGN "Inbound": half-open flows live in the LRU (PENDING) and move to
/// the non-evicting FLOWS when the remote answers the server: for TCP the
/// client's ACK after the server's SYN-ACK (a retransmitted SYN does not
/// count), for UDP the client's next datagram after a reply. A flood of
/// SYNs from new sources fills only PENDING; FLOWS keeps the established
/// flow, and only it.
#[test]
fn half_open_flows_stay_in_the_lru_until_the_client_answers() {
    require_root!();
    let gw = forward_gateway("fwdpending");
    let a = A.at();
    let (tcp_key, udp_key) = (flow_key(CLIENT, proto::TCP), flow_key(CLIENT, proto::UDP));
    let steps: [(&str, Side, Frame, &FlowKey, FlowTable); 7] = [
        ("UDP first datagram", Side::Wan, from_wan(udp(CLIENT, SERVICE)), &udp_key, FlowTable::HalfOpen),
        ("UDP reply", Side::Lan, from_server(udp(a, CLIENT), &A), &udp_key, FlowTable::HalfOpen),
        ("UDP next datagram", Side::Wan, from_wan(udp(CLIENT, SERVICE)), &udp_key, FlowTable::Established),
        ("TCP SYN", Side::Wan, from_wan(tcp(CLIENT, SERVICE, SYN)), &tcp_key, FlowTable::HalfOpen),
        ("TCP SYN-ACK", Side::Lan, from_server(tcp(a, CLIENT, SYN_ACK), &A), &tcp_key, FlowTable::HalfOpen),
        ("TCP SYN retransmitted", Side::Wan, from_wan(tcp(CLIENT, SERVICE, SYN)), &tcp_key, FlowTable::HalfOpen),
        ("TCP ACK", Side::Wan, from_wan(tcp(CLIENT, SERVICE, ACK)), &tcp_key, FlowTable::Established),
    ];
    for (name, side, input, key, table) in steps {
        assert_eq!(gw.run(side, &input.build()).unwrap().action, REDIRECT, "{name}");
        assert_eq!(table_of(&gw, key), Some(table), "{name}");
    }

    const FLOOD: u16 = 64;
    for i in 0..FLOOD {
        let source = (Ipv4Addr::new(198, 51, 100, 100 + (i % 4) as u8), 30000 + i);
        let run = gw.run(Side::Wan, &from_wan(tcp(source, SERVICE, SYN)).build()).unwrap();
        assert_eq!(run.action, REDIRECT, "flood SYN {i}");
    }
    let flows = gw.datapath.forwarded_flows().unwrap();
    let mut established: Vec<FlowKey> = flows.iter().filter(|f| f.2 == FlowTable::Established).map(|f| f.0).collect();
    established.sort_by_key(|k| k.proto);
    assert_eq!(established, vec![tcp_key, udp_key], "FLOWS holds other than the two established flows");
    assert_eq!(flows.iter().filter(|f| f.2 == FlowTable::HalfOpen).count(), usize::from(FLOOD));
}

/// RFC 5508 REQ-4/5 for forwarded flows, from the WAN: a router's ICMP
/// error about the gateway's packet from the service to the client (a
/// backend's reply as it left) reaches that backend with the outer
/// destination and the quoted source set back to it (address and port,
/// quoted checksums), TTL - 1, every checksum right; a UDP Time Exceeded
/// and a TCP Host Unreachable. An error about the service port and a client
/// with no flow is the gateway's own.
#[test]
fn icmp_errors_from_the_wan_about_a_forwarded_flow_reach_its_backend() {
    require_root!();
    let gw = forward_gateway("fwdicmpin");
    let router = Ipv4Addr::new(198, 51, 100, 1);
    let a = A.at();
    for (side, input) in [(Side::Wan, from_wan(udp(CLIENT, SERVICE))), (Side::Wan, from_wan(tcp(CLIENT, SERVICE, SYN)))] {
        assert_eq!(gw.run(side, &input.build()).unwrap().action, REDIRECT);
    }
    let router_saw = |f: Frame| with(f, |f| f.ttl = 63);
    let cases: [(&'static str, Frame, Frame, u8, u8); 2] = [
        // (name, what left the gateway, what the server sent, type, code)
        ("UDP time exceeded", udp(SERVICE, CLIENT), udp(a, CLIENT), 11, 0),
        ("TCP host unreachable", tcp(SERVICE, CLIENT, SYN_ACK), tcp(a, CLIENT, SYN_ACK), 3, 1),
    ];
    let mut table = Vec::new();
    for (name, left, sent, kind, code) in cases {
        let mut input = Frame::new(router, addr::EXTERNAL, L4::Raw { proto: proto::ICMP });
        input.payload = icmp_error(kind, code, &quote(&router_saw(left)));
        let mut expected = Frame::new(router, A.addr, L4::Raw { proto: proto::ICMP });
        expected.payload = icmp_error(kind, code, &quote(&router_saw(sent)));
        table.push(case(name, Side::Wan, from_wan(input), REDIRECT, Some(at_server(expected, &A)), Reason::IcmpErrorIn));
    }
    run_cases(&gw, table).unwrap();

    let mut input = Frame::new(router, addr::EXTERNAL, L4::Raw { proto: proto::ICMP });
    input.payload = icmp_error(3, 3, &quote(&router_saw(udp(SERVICE, (addr::REMOTE, 40404)))));
    assert_eq!(gw.run(Side::Wan, &from_wan(input).build()).unwrap().action, PASS, "an error about no forwarded flow");
}

/// RFC 5508 REQ-4/5 for forwarded flows, the other way: a backend's Port
/// Unreachable about a client's datagram leaves from the external address
/// with the quote set back to what the client sent (to the service), every
/// checksum right; it counts in the backend's `unreachables` (DESIGN
/// "Health": a passive signal), and nowhere else. Errors that refuse
/// nothing (Fragmentation Needed, Time Exceeded) are translated alike but
/// not counted: a server that sends them is not refusing service.
#[test]
fn icmp_errors_from_a_backend_leave_from_the_service_and_count_as_unreachables() {
    require_root!();
    let gw = forward_gateway("fwdicmpout");
    assert_eq!(gw.run(Side::Wan, &from_wan(udp(CLIENT, SERVICE)).build()).unwrap().action, REDIRECT);
    let received = with(udp(CLIENT, A.at()), |f| f.ttl = 63);
    let sent_by_client = with(udp(CLIENT, SERVICE), |f| f.ttl = 63);
    let error = |kind: u8, code: u8| {
        let mut input = Frame::new(A.addr, CLIENT.0, L4::Raw { proto: proto::ICMP });
        input.payload = icmp_error(kind, code, &quote(&received));
        let mut expected = Frame::new(addr::EXTERNAL, CLIENT.0, L4::Raw { proto: proto::ICMP });
        expected.payload = icmp_error(kind, code, &quote(&sent_by_client));
        (from_server(input, &A), Some(on_wan(expected)))
    };
    let (frag_needed, frag_needed_out) = error(3, 4);
    let (time_exceeded, time_exceeded_out) = error(11, 0);
    let (port_unreachable, port_unreachable_out) = error(3, 3);
    run_cases(
        &gw,
        vec![
            case("fragmentation needed from the backend", Side::Lan, frag_needed, REDIRECT, frag_needed_out, Reason::IcmpErrorOut),
            case("time exceeded from the backend", Side::Lan, time_exceeded, REDIRECT, time_exceeded_out, Reason::IcmpErrorOut),
        ],
    )
    .unwrap();
    assert_eq!(gw.datapath.signals(FORWARD, A.slot).unwrap().unreachables, 0, "errors that refuse nothing");
    run_cases(&gw, vec![case("port unreachable from the backend", Side::Lan, port_unreachable, REDIRECT, port_unreachable_out, Reason::IcmpErrorOut)])
        .unwrap();
    let signals = gw.datapath.signals(FORWARD, A.slot).unwrap();
    assert_eq!(signals, Signals { flows: 1, syns: 0, syn_acks: 0, resets: 0, unreachables: 1 });
    assert_eq!(gw.datapath.signals(FORWARD, B.slot).unwrap(), Signals::default());
}

/// DESIGN "Health" (passive signals, `nat_common::forward::Signals`): per
/// backend, a new flow counts in `flows` (every protocol), its SYN in
/// `syns`, the server's SYN-ACK in `syn_acks`, and an RST from the server
/// before the handshake completed (a refused connection) in `resets`; an RST
/// closing an established connection is no refusal. Nothing counts for the
/// other backend.
#[test]
fn passive_signals_count_syns_answers_and_refusals_per_backend() {
    require_root!();
    let gw = forward_gateway("fwdsignals");
    let a = A.at();
    let (refused, udp_client) = ((addr::REMOTE, 51001), (addr::REMOTE, 51002));
    let signals = || gw.datapath.signals(FORWARD, A.slot).unwrap();
    let steps: [(&str, Side, Frame, Signals); 7] = [
        ("SYN", Side::Wan, from_wan(tcp(CLIENT, SERVICE, SYN)), Signals { flows: 1, syns: 1, ..Signals::default() }),
        ("SYN-ACK", Side::Lan, from_server(tcp(a, CLIENT, SYN_ACK), &A), Signals { flows: 1, syns: 1, syn_acks: 1, ..Signals::default() }),
        ("ACK", Side::Wan, from_wan(tcp(CLIENT, SERVICE, ACK)), Signals { flows: 1, syns: 1, syn_acks: 1, ..Signals::default() }),
        ("RST closing the connection", Side::Lan, from_server(tcp(a, CLIENT, RST_ACK), &A), Signals { flows: 1, syns: 1, syn_acks: 1, ..Signals::default() }),
        ("SYN of another client", Side::Wan, from_wan(tcp(refused, SERVICE, SYN)), Signals { flows: 2, syns: 2, syn_acks: 1, ..Signals::default() }),
        ("RST refusing it", Side::Lan, from_server(tcp(a, refused, RST_ACK), &A), Signals { flows: 2, syns: 2, syn_acks: 1, resets: 1, unreachables: 0 }),
        ("UDP datagram", Side::Wan, from_wan(udp(udp_client, SERVICE)), Signals { flows: 3, syns: 2, syn_acks: 1, resets: 1, unreachables: 0 }),
    ];
    for (name, side, input, want) in steps {
        assert_eq!(gw.run(side, &input.build()).unwrap().action, REDIRECT, "{name}");
        assert_eq!(signals(), want, "after the {name}");
    }
    assert_eq!(gw.datapath.signals(FORWARD, B.slot).unwrap(), Signals::default());
}

/// A pinned port (`port_flags::PINNED`, a QUIC proxy's): a new flow's
/// packet is not given a backend by the Maglev table but passed to the
/// kernel untouched, for natd's socket; once natd files the flow
/// (`FlowPins::pin`) on the server it chose, the datapath translates it
/// both ways as any forwarded flow, and promotes it when the client answers
/// the server. natd refuses to pin to a server that is not a backend, or on
/// a port that is not pinned.
#[test]
fn a_pinned_port_passes_new_flows_to_natd_and_translates_the_flows_it_files() {
    require_root!();
    let mut gw = forward_gateway("fwdpin");
    let service = endpoint(SERVICE, proto::UDP);
    gw.datapath.set_forward_port(service, ForwardPort::new(FORWARD, 0, port_flags::PINNED)).unwrap();
    let key = flow_key(CLIENT, proto::UDP);
    use Side::{Lan, Wan};
    run_cases(&gw, vec![case("a new flow's datagram", Wan, from_wan(udp(CLIENT, SERVICE)), PASS, None, Reason::PassNoMapping)]).unwrap();
    assert_eq!(table_of(&gw, &key), None, "the datapath filed a flow on a pinned port");

    // natd's choice, B, where the Maglev table would say A.
    let mut pins = gw.datapath.flow_pins().unwrap();
    let client = endpoint(CLIENT, proto::UDP);
    assert_eq!(pins.pin(&client, &service, SocketAddrV4::new(B.addr, SERVER_PORT + 1), NOW).unwrap(), Err(PinRefusal::UnknownServer));
    assert_eq!(pins.pin(&client, &endpoint(SERVICE, proto::TCP), SocketAddrV4::new(B.addr, SERVER_PORT), NOW).unwrap(), Err(PinRefusal::NotInstalled));
    pins.pin(&client, &service, SocketAddrV4::new(B.addr, SERVER_PORT), NOW).unwrap().unwrap();
    assert_eq!((table_of(&gw, &key), backend_of(&gw, &key)), (Some(FlowTable::HalfOpen), B.slot));

    let b = B.at();
    run_cases(
        &gw,
        vec![
            case("the client's next datagram", Wan, from_wan(udp(CLIENT, SERVICE)), REDIRECT, Some(at_server(udp(CLIENT, b), &B)), Reason::ForwardedIn),
            case("the server's answer", Lan, from_server(udp(b, CLIENT), &B), REDIRECT, Some(on_wan(udp(SERVICE, CLIENT))), Reason::TranslatedOut),
            case("the client again", Wan, from_wan(udp(CLIENT, SERVICE)), REDIRECT, Some(at_server(udp(CLIENT, b), &B)), Reason::ForwardedIn),
        ],
    )
    .unwrap();
    assert_eq!(table_of(&gw, &key), Some(FlowTable::Established), "the answered flow was not promoted");
    let other = (addr::REMOTE, 51001);
    run_cases(&gw, vec![case("another client", Wan, from_wan(udp(other, SERVICE)), PASS, None, Reason::PassNoMapping)]).unwrap();
}

/// SCTP forwards (issue 14 after issue 12): an INIT to the service reaches
/// the backend with its destination port rewritten and the CRC32c updated
/// (the expected frames are built with the CRC computed whole), the server's
/// INIT ACK leaves from the service, and the flow stays on its backend.
#[test]
fn an_sctp_forward_rewrites_the_port_with_the_crc_both_ways() {
    require_root!();
    let mut gw = forward_gateway("fwdsctp");
    let service = endpoint(SERVICE, proto::SCTP);
    gw.datapath.set_forward_port(service, ForwardPort::new(FORWARD, 0, 0)).unwrap();
    for server in [&A, &B] {
        let mapping = StaticMapping { server: endpoint(server.at(), proto::SCTP), external: service, forward: FORWARD, slot: server.slot, offset: 0 };
        gw.datapath.insert_static_mapping(&mapping).unwrap();
    }
    let sctp = |src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)| Frame::sctp(src, dst);
    let a = A.at();
    use Side::{Lan, Wan};
    run_cases(
        &gw,
        vec![
            case("INIT to the service", Wan, from_wan(sctp(CLIENT, SERVICE)), REDIRECT, Some(at_server(sctp(CLIENT, a), &A)), Reason::ForwardedNewFlow),
            case("INIT ACK from the server", Lan, from_server(sctp(a, CLIENT), &A), REDIRECT, Some(on_wan(sctp(SERVICE, CLIENT))), Reason::TranslatedOut),
            case("the client again", Wan, from_wan(sctp(CLIENT, SERVICE)), REDIRECT, Some(at_server(sctp(CLIENT, a), &A)), Reason::ForwardedIn),
        ],
    )
    .unwrap();
    assert_eq!(table_of(&gw, &flow_key(CLIENT, proto::SCTP)), Some(FlowTable::Established), "promoted once the client answered the server");
}
