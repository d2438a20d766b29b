//! SCTP (RFC 9260) through the SCTP programs the main ones hand it to: ports
//! translated both ways with the CRC32c carried along (checked against a
//! full recomputation, `packet::verify_checksums`), a bad CRC staying bad by
//! the same error, the smallest packet and the largest a test run takes,
//! address-only rewrites, ICMP errors quoting SCTP, first fragments, and the
//! association's state recorded from its chunks.

use std::net::Ipv4Addr;

use nat_common::{Endpoint, Reason, crc32c, proto, sctp_chunks};
use nat_tests::{
    TestGateway, addr, assert_frames_eq,
    packet::{Frame, L4},
    require_root,
    xdp_action::{DROP, REDIRECT},
};
use nat_userspace::datapath::Side;

use super::{Case, case, from_lan, from_wan, gateway, icmp_error, payload, quote, run_cases, translated_in, translated_out, with};

/// Two inside hosts' associations to one server from the same port 5000
/// (draft-ietf-tsvwg-natsupp: two mappings, told apart by port).
const SCTP_INSIDE: (Ipv4Addr, u16) = (addr::LAN_HOST, 5000);
const SCTP_EXTERNAL: (Ipv4Addr, u16) = (addr::EXTERNAL, 20005);
/// A mapping that keeps its port: an address-only rewrite.
const KEPT_INSIDE: (Ipv4Addr, u16) = (addr::LAN_HOST, 20777);
const KEPT_EXTERNAL: (Ipv4Addr, u16) = (addr::EXTERNAL, 20777);
const REMOTE_SCTP: (Ipv4Addr, u16) = (addr::REMOTE, 3868);

fn sctp_gateway(tag: &str) -> TestGateway {
    let mut gw = gateway(tag).unwrap();
    gw.map(SCTP_INSIDE, SCTP_EXTERNAL, proto::SCTP).unwrap();
    gw.map(KEPT_INSIDE, KEPT_EXTERNAL, proto::SCTP).unwrap();
    gw
}

fn sctp_out() -> Frame {
    from_lan(Frame::sctp(SCTP_INSIDE, REMOTE_SCTP))
}

fn sctp_in() -> Frame {
    from_wan(Frame::sctp(REMOTE_SCTP, SCTP_EXTERNAL))
}

fn chunk(kind: u8) -> impl Fn(&mut Frame) {
    move |f: &mut Frame| {
        if let L4::Sctp { chunk, .. } = &mut f.l4 {
            *chunk = kind;
        }
    }
}

fn crc_error(error: u32) -> impl Fn(&mut Frame) {
    move |f: &mut Frame| {
        if let L4::Sctp { crc_error, .. } = &mut f.l4 {
            *crc_error = error;
        }
    }
}

/// RFC 9260 §6.8, RFC 4787 REQ-1 applied to SCTP: the port is translated
/// both ways and the output is byte for byte what a sender would build with
/// the new ports (the CRC32c computed afresh over the whole packet, and
/// checked again by recomputation). The smallest packet (common header and
/// a 4-byte chunk), a full 1500-byte IPv4 packet (the test links' MTU, and
/// about half what a test run takes: 9000-byte jumbo packets are checked at
/// every length by the host tests of the same update), and an INIT; a port
/// kept leaves the CRC as it was (no pseudo-header).
#[test]
fn sctp_is_translated_both_ways_with_its_crc32c() {
    require_root!();
    let gw = sctp_gateway("sctp");
    let smallest = |f: &mut Frame| f.payload.clear();
    let init = chunk(1);
    use Side::{Lan, Wan};
    let cases: Vec<Case> = vec![
        case("sctp out", Lan, sctp_out(), REDIRECT, Some(translated_out(sctp_out(), SCTP_EXTERNAL)), Reason::TranslatedOut),
        case("sctp in", Wan, sctp_in(), REDIRECT, Some(translated_in(sctp_in(), SCTP_INSIDE)), Reason::TranslatedIn),
        case(
            "sctp out, 16 bytes",
            Lan,
            with(sctp_out(), smallest),
            REDIRECT,
            Some(translated_out(with(sctp_out(), smallest), SCTP_EXTERNAL)),
            Reason::TranslatedOut,
        ),
        case(
            "sctp in, 16 bytes",
            Wan,
            with(sctp_in(), smallest),
            REDIRECT,
            Some(translated_in(with(sctp_in(), smallest), SCTP_INSIDE)),
            Reason::TranslatedIn,
        ),
        case(
            "sctp out, 1500-byte IPv4 packet",
            Lan,
            with(sctp_out(), payload(1464)),
            REDIRECT,
            Some(translated_out(with(sctp_out(), payload(1464)), SCTP_EXTERNAL)),
            Reason::TranslatedOut,
        ),
        case(
            "sctp in, 1500-byte IPv4 packet",
            Wan,
            with(sctp_in(), payload(1464)),
            REDIRECT,
            Some(translated_in(with(sctp_in(), payload(1464)), SCTP_INSIDE)),
            Reason::TranslatedIn,
        ),
        case("sctp INIT out", Lan, with(sctp_out(), &init), REDIRECT, Some(translated_out(with(sctp_out(), &init), SCTP_EXTERNAL)), Reason::TranslatedOut),
        case(
            "sctp out, port kept",
            Lan,
            from_lan(Frame::sctp(KEPT_INSIDE, REMOTE_SCTP)),
            REDIRECT,
            Some(translated_out(from_lan(Frame::sctp(KEPT_INSIDE, REMOTE_SCTP)), KEPT_EXTERNAL)),
            Reason::TranslatedOut,
        ),
        // An unmapped NAT port on the external address: not let in.
        case(
            "sctp in, no mapping",
            Wan,
            from_wan(Frame::sctp(REMOTE_SCTP, (addr::EXTERNAL, 20999))),
            DROP,
            None,
            Reason::DropInboundNoMapping,
        ),
    ];
    run_cases(&gw, cases).unwrap();
}

/// RFC 9260 §6.8: the NAT does not launder corruption. A packet that came
/// with a wrong CRC32c leaves with one wrong by exactly the same error (the
/// expected frame is built with the correct CRC of the translated packet,
/// then the input's error xored in), both ways.
#[test]
fn a_bad_crc32c_stays_bad_by_the_same_error() {
    require_root!();
    let gw = sctp_gateway("sctpbad");
    let error = 0x8000_0101;
    for (side, input, expected) in [
        (Side::Lan, with(sctp_out(), crc_error(error)), translated_out(with(sctp_out(), crc_error(error)), SCTP_EXTERNAL)),
        (Side::Wan, with(sctp_in(), crc_error(error)), translated_in(with(sctp_in(), crc_error(error)), SCTP_INSIDE)),
    ] {
        let run = gw.run(side, &input.build()).unwrap();
        assert_eq!(run.action, REDIRECT, "{side:?}");
        assert_frames_eq("bad CRC", &run.frame, &expected.build()).unwrap();
        let sctp = &run.frame[14 + 20..];
        assert_eq!(crc32c::read_sctp_checksum(sctp).unwrap() ^ crc32c::sctp_checksum(sctp), error, "{side:?}: off by the input's error");
    }
}

/// RFC 5508 REQ-4/5 for SCTP: an error from the WAN about a translated
/// packet reaches the inside host with the quoted ports reverted, and an
/// inside host's error about an inbound packet leaves with them set back to
/// the external endpoint; the quoted CRC32c is left as it is (it lies past
/// the 8 quoted bytes), every other checksum right.
#[test]
fn icmp_errors_quoting_sctp_are_translated_both_ways() {
    require_root!();
    let gw = sctp_gateway("sctpicmp");
    let router = Ipv4Addr::new(198, 51, 100, 1);
    // From the WAN: Time Exceeded about what left the gateway.
    let sent = with(Frame::sctp(SCTP_INSIDE, REMOTE_SCTP), |f| f.ttl = 63);
    let left = with(Frame::sctp(SCTP_EXTERNAL, REMOTE_SCTP), |f| f.ttl = 63);
    let mut input = Frame::new(router, addr::EXTERNAL, L4::Raw { proto: proto::ICMP });
    input.payload = icmp_error(11, 0, &quote(&left));
    let input = from_wan(input);
    let mut expected = Frame::new(router, addr::LAN_HOST, L4::Raw { proto: proto::ICMP });
    expected.ttl = input.ttl - 1;
    expected.payload = icmp_error(11, 0, &quote(&sent));
    let expected = expected.with_macs(addr::LAN_GW_MAC, addr::LAN_HOST_MAC);
    let run = gw.run(Side::Wan, &input.build()).unwrap();
    assert_eq!(run.action, REDIRECT);
    assert_frames_eq("ICMP error in, quoting SCTP", &run.frame, &expected.build()).unwrap();

    // From the LAN: the inside host refuses an inbound packet.
    let arrived = with(Frame::sctp(REMOTE_SCTP, SCTP_INSIDE), |f| f.ttl = 63);
    let as_sent = with(Frame::sctp(REMOTE_SCTP, SCTP_EXTERNAL), |f| f.ttl = 63);
    let mut input = Frame::new(addr::LAN_HOST, addr::REMOTE, L4::Raw { proto: proto::ICMP });
    input.payload = icmp_error(3, 3, &quote(&arrived));
    let input = from_lan(input);
    let mut expected = Frame::new(addr::EXTERNAL, addr::REMOTE, L4::Raw { proto: proto::ICMP });
    expected.ttl = input.ttl - 1;
    expected.payload = icmp_error(3, 3, &quote(&as_sent));
    let expected = expected.with_macs(addr::WAN_GW_MAC, addr::WAN_NEXT_HOP_MAC);
    let run = gw.run(Side::Lan, &input.build()).unwrap();
    assert_eq!(run.action, REDIRECT);
    assert_frames_eq("ICMP error out, quoting SCTP", &run.frame, &expected.build()).unwrap();
    assert_eq!((gw.datapath.counter(Reason::IcmpErrorIn).unwrap(), gw.datapath.counter(Reason::IcmpErrorOut).unwrap()), (1, 1));
}

/// An SCTP packet with no room for a chunk (the common header alone, 12
/// bytes, in a frame padded to Ethernet's minimum) is no SCTP packet: dropped
/// as a bad L4 header on either side, before any lookup.
#[test]
fn sctp_packets_without_a_chunk_are_dropped() {
    require_root!();
    let gw = sctp_gateway("sctpshort");
    let header_only = |frame: Frame| {
        let mut bytes = frame.build();
        bytes.resize(bytes.len() + 14, 0);
        bytes
    };
    let common_header = [0x13, 0x88, 0x0f, 0x1c, 0x1c, 0x0f, 0xfe, 0xe5, 0, 0, 0, 0].to_vec();
    let out = with(from_lan(Frame::new(SCTP_INSIDE.0, REMOTE_SCTP.0, L4::Raw { proto: proto::SCTP })), |f| f.payload = common_header.clone());
    let inbound = with(from_wan(Frame::new(REMOTE_SCTP.0, SCTP_EXTERNAL.0, L4::Raw { proto: proto::SCTP })), |f| f.payload = common_header.clone());
    let cases = [("12-byte sctp out", Side::Lan, out), ("12-byte sctp in", Side::Wan, inbound)]
        .into_iter()
        .map(|(name, side, frame)| Case { name, side, input: header_only(frame), action: DROP, output: None, reason: Reason::DropBadL4Header })
        .collect();
    run_cases(&gw, cases).unwrap();
}

/// A first fragment's CRC32c covers the whole datagram, whose length the
/// first fragment does not tell: the datapath hands it to natd by datagram
/// identity, as a later fragment (natd translates it once the last fragment
/// has told the length). Outbound it never leaves untranslated (dropped
/// here, the copy is natd's); inbound to the external address the kernel
/// gets it too, as any fragment natd takes.
#[test]
fn sctp_first_fragments_go_to_natd_by_datagram_identity() {
    require_root!();
    let mut gw = sctp_gateway("sctpfrag");
    let mut ring = gw.datapath.take_miss_ring().unwrap();
    let first_out = with(sctp_out(), |f| f.frag = 0x2000).build();
    let first_in = with(sctp_in(), |f| f.frag = 0x2000).build();
    assert_eq!(gw.run(Side::Lan, &first_out).unwrap().action, DROP, "out: to natd, never to the WAN untranslated");
    assert_eq!(gw.run(Side::Wan, &first_in).unwrap().action, nat_tests::xdp_action::PASS, "in: natd gets a copy, the kernel the packet");
    assert_eq!(gw.datapath.counter(Reason::FragmentToDaemon).unwrap(), 2);
    assert_eq!(gw.datapath.counter(Reason::DropUntranslatable).unwrap(), 0);
    let mut kinds = Vec::new();
    while let Some(item) = ring.next() {
        let event = nat_tests::handed_off(&item);
        kinds.push(event.kind);
        let frame = if event.kind == nat_common::miss_kind::FRAGMENT_OUT { &first_out } else { &first_in };
        assert_eq!(event.frame(), &frame[..], "natd gets the first fragment as it arrived");
    }
    assert_eq!(kinds, [nat_common::miss_kind::FRAGMENT_OUT, nat_common::miss_kind::FRAGMENT_IN]);
}

/// SCTP's state comes from the first chunk of each packet, per direction
/// (natd's timers read it): INIT out, INIT ACK in, COOKIE ACK, DATA; a new
/// INIT after an ABORT starts afresh.
#[test]
fn sctp_chunks_are_recorded_per_direction() {
    require_root!();
    use sctp_chunks::{ABORT, COOKIE_ACK, DATA, INIT, INIT_ACK};
    let gw = sctp_gateway("sctpstate");
    let inside = Endpoint::new(SCTP_INSIDE.0, SCTP_INSIDE.1, proto::SCTP);
    let slot = gw.datapath.outbound().unwrap().get(&inside, 0).unwrap().session;
    let steps: [(Side, u8, (u8, u8)); 6] = [
        (Side::Lan, 1, (INIT, 0)),
        (Side::Wan, 2, (INIT, INIT_ACK)),
        (Side::Wan, 11, (INIT, INIT_ACK | COOKIE_ACK)),
        (Side::Lan, 0, (INIT | DATA, INIT_ACK | COOKIE_ACK)),
        (Side::Wan, 6, (INIT | DATA, INIT_ACK | COOKIE_ACK | ABORT)),
        (Side::Lan, 1, (INIT, 0)),
    ];
    for (side, kind, want) in steps {
        let frame = if side == Side::Lan { with(sctp_out(), chunk(kind)) } else { with(sctp_in(), chunk(kind)) };
        assert_eq!(gw.run(side, &frame.build()).unwrap().action, REDIRECT);
        let live = gw.datapath.liveness(slot).unwrap();
        assert_eq!((live.sctp_chunks_out, live.sctp_chunks_in), want, "after chunk type {kind} on {side:?}");
        assert_eq!((live.tcp_flags_out, live.tcp_flags_in), (0, 0));
    }
}

/// The first packet of an SCTP association is not lost: it claims a port
/// natd queued for SCTP (its own queue, its own port space) and leaves at
/// once, CRC32c right; with the queue empty it goes to natd, which sends it
/// on (`first_packet`). Two inside hosts on the same port 5000 to one server
/// get two mappings (draft-ietf-tsvwg-natsupp: ports tell them apart).
#[test]
fn a_new_sctp_association_claims_a_queued_port() {
    require_root!();
    let mut gw = sctp_gateway("sctpclaim");
    let _ring = gw.datapath.take_miss_ring().unwrap();
    gw.datapath.push_free_port(proto::SCTP, nat_common::FreePort { session: 90, port: 24682, _pad: 0 }).unwrap();
    let other_host = Ipv4Addr::new(10, 77, 1, 11);
    let init = with(from_lan(Frame::sctp((other_host, SCTP_INSIDE.1), REMOTE_SCTP)), chunk(1));
    let run = gw.run(Side::Lan, &init.build()).unwrap();
    assert_eq!(run.action, REDIRECT, "the INIT was not forwarded");
    assert_frames_eq("claimed INIT", &run.frame, &translated_out(init.clone(), (addr::EXTERNAL, 24682)).build()).unwrap();
    assert_eq!(gw.datapath.counter(Reason::TranslatedNewFlow).unwrap(), 1);
    // The first host's association from the same port keeps its own mapping.
    let run = gw.run(Side::Lan, &sctp_out().build()).unwrap();
    assert_frames_eq("first host", &run.frame, &translated_out(sctp_out(), SCTP_EXTERNAL).build()).unwrap();
    // UDP's queue is not SCTP's: with SCTP's empty, natd decides.
    gw.datapath.push_free_port(proto::UDP, nat_common::FreePort { session: 91, port: 24684, _pad: 0 }).unwrap();
    let another = from_lan(Frame::sctp((addr::LAN_HOST, 7003), REMOTE_SCTP));
    assert_eq!(gw.run(Side::Lan, &another.build()).unwrap().action, DROP);
    assert_eq!(gw.datapath.counter(Reason::MissToDaemon).unwrap(), 1);
}

/// RFC 4787 REQ-9 for SCTP: a LAN host's packet to another's SCTP mapping on
/// the external address reaches it with both ports rewritten (the sender's
/// external one, the target's inside one) and the CRC32c carried through both
/// changes (the expected frame is a from-scratch build, checked again by
/// recomputation).
#[test]
fn hairpinned_sctp_carries_its_crc32c_through_both_ports() {
    require_root!();
    let mut gw = sctp_gateway("sctphairpin");
    let host_b = Ipv4Addr::new(10, 77, 1, 11);
    gw.ns.ip(&["neigh", "replace", "10.77.1.11", "lladdr", "02:00:00:00:01:11", "dev", "lan0", "nud", "permanent"]).unwrap();
    gw.map((host_b, 6000), (addr::EXTERNAL, 20500), proto::SCTP).unwrap();
    let to_b = from_lan(Frame::sctp(SCTP_INSIDE, (addr::EXTERNAL, 20500)));
    let mut expected = to_b.clone();
    (expected.src, expected.dst, expected.ttl) = (addr::EXTERNAL, host_b, to_b.ttl - 1);
    if let L4::Sctp { sport, dport, .. } = &mut expected.l4 {
        (*sport, *dport) = (SCTP_EXTERNAL.1, 6000);
    }
    let expected = expected.with_macs(addr::LAN_GW_MAC, [0x02, 0, 0, 0, 0x01, 0x11]);
    run_cases(&gw, vec![Case { name: "sctp hairpinned", side: Side::Lan, input: to_b.build(), action: REDIRECT, output: Some(expected.build()), reason: Reason::Hairpinned }]).unwrap();
}
