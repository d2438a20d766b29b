//! Table-driven BPF_PROG_TEST_RUN cases: the programs run in the real kernel
//! on crafted frames with preloaded mappings, and each case states the verdict,
//! the exact output frame (checksums computed from scratch, not incrementally)
//! and the counter that must move.

use std::net::Ipv4Addr;

use anyhow::{Result, bail};
use nat_common::{MissEvent, Reason, checksum, miss_kind, proto};
use nat_tests::{
    TestGateway, addr, assert_frames_eq,
    packet::{self, Frame, L4},
    require_root,
    xdp_action::{self, DROP, PASS, REDIRECT},
};
use nat_userspace::datapath::Side;

const TCP_INSIDE: (Ipv4Addr, u16) = (addr::LAN_HOST, 40000);
const TCP_EXTERNAL: (Ipv4Addr, u16) = (addr::EXTERNAL, 20000);
const UDP_INSIDE: (Ipv4Addr, u16) = (addr::LAN_HOST, 5353);
const UDP_EXTERNAL: (Ipv4Addr, u16) = (addr::EXTERNAL, 20001);
const ICMP_ID_INSIDE: u16 = 0x1234;
const ICMP_ID_EXTERNAL: u16 = 0x5678;
const UNRESOLVED_INSIDE: (Ipv4Addr, u16) = (addr::LAN_HOST_UNRESOLVED, 6000);
const UNRESOLVED_EXTERNAL: (Ipv4Addr, u16) = (addr::EXTERNAL, 20002);
const REMOTE_TCP: (Ipv4Addr, u16) = (addr::REMOTE, 443);
const REMOTE_UDP: (Ipv4Addr, u16) = (addr::REMOTE, 53);

const ICMP_ECHO_REQUEST: u8 = 8;
const ICMP_ECHO_REPLY: u8 = 0;

fn gateway(tag: &str) -> Result<TestGateway> {
    let mut gw = TestGateway::new(tag)?;
    gw.map(TCP_INSIDE, TCP_EXTERNAL, proto::TCP)?;
    gw.map(UDP_INSIDE, UDP_EXTERNAL, proto::UDP)?;
    gw.map((addr::LAN_HOST, ICMP_ID_INSIDE), (addr::EXTERNAL, ICMP_ID_EXTERNAL), proto::ICMP)?;
    gw.map(UNRESOLVED_INSIDE, UNRESOLVED_EXTERNAL, proto::UDP)?;
    Ok(gw)
}

/// A LAN host's frame as it arrives on the gateway's LAN port.
fn from_lan(f: Frame) -> Frame {
    f.with_macs(addr::LAN_HOST_MAC, addr::LAN_GW_MAC)
}

/// A remote frame as it arrives on the gateway's WAN port.
fn from_wan(f: Frame) -> Frame {
    f.with_macs(addr::WAN_NEXT_HOP_MAC, addr::WAN_GW_MAC)
}

/// What the gateway must send to the WAN for `f`: source rewritten, TTL - 1,
/// MACs of the WAN port and the next hop.
fn translated_out(mut f: Frame, external: (Ipv4Addr, u16)) -> Frame {
    f.src = external.0;
    f.ttl -= 1;
    match &mut f.l4 {
        L4::Tcp { sport, .. } | L4::Udp { sport, .. } => *sport = external.1,
        L4::IcmpEcho { id, .. } => *id = external.1,
        L4::Raw { .. } => {}
    }
    f.with_macs(addr::WAN_GW_MAC, addr::WAN_NEXT_HOP_MAC)
}

/// What the gateway must send to the LAN for `f`.
fn translated_in(mut f: Frame, inside: (Ipv4Addr, u16)) -> Frame {
    f.dst = inside.0;
    f.ttl -= 1;
    match &mut f.l4 {
        L4::Tcp { dport, .. } | L4::Udp { dport, .. } => *dport = inside.1,
        L4::IcmpEcho { id, .. } => *id = inside.1,
        L4::Raw { .. } => {}
    }
    f.with_macs(addr::LAN_GW_MAC, addr::LAN_HOST_MAC)
}

struct Case {
    name: &'static str,
    side: Side,
    input: Vec<u8>,
    action: u32,
    /// The exact output frame; `None`: the input, unchanged.
    output: Option<Vec<u8>>,
    reason: Reason,
}

fn case(name: &'static str, side: Side, input: Frame, action: u32, output: Option<Frame>, reason: Reason) -> Case {
    Case { name, side, input: input.build(), action, output: output.map(|f| f.build()), reason }
}

fn tcp_out() -> Frame {
    from_lan(Frame::tcp(TCP_INSIDE, REMOTE_TCP))
}
fn tcp_in() -> Frame {
    from_wan(Frame::tcp(REMOTE_TCP, TCP_EXTERNAL))
}
fn udp_out() -> Frame {
    from_lan(Frame::udp(UDP_INSIDE, REMOTE_UDP))
}
fn udp_in() -> Frame {
    from_wan(Frame::udp(REMOTE_UDP, UDP_EXTERNAL))
}
fn icmp_out() -> Frame {
    from_lan(Frame::icmp_echo(addr::LAN_HOST, addr::REMOTE, ICMP_ECHO_REQUEST, ICMP_ID_INSIDE))
}
fn icmp_in() -> Frame {
    from_wan(Frame::icmp_echo(addr::REMOTE, addr::EXTERNAL, ICMP_ECHO_REPLY, ICMP_ID_EXTERNAL))
}

fn with<F: FnOnce(&mut Frame)>(mut f: Frame, change: F) -> Frame {
    change(&mut f);
    f
}

fn translation_cases() -> Vec<Case> {
    let icmp_ext = (addr::EXTERNAL, ICMP_ID_EXTERNAL);
    let icmp_inside = (addr::LAN_HOST, ICMP_ID_INSIDE);
    let zero_udp = |f: &mut Frame| {
        if let L4::Udp { zero_checksum, .. } = &mut f.l4 {
            *zero_checksum = true;
        }
    };
    // NOP NOP NOP EOL: a 4-byte option area, IHL 6.
    let options = |f: &mut Frame| f.options = vec![1, 1, 1, 0];
    // Router Alert (RFC 2113) plus record-route-sized padding: IHL 8.
    let long_options = |f: &mut Frame| f.options = vec![148, 4, 0, 0, 1, 1, 1, 1, 1, 1, 1, 0];
    let vlan = |f: &mut Frame| f.vlans = vec![100];
    let qinq = |f: &mut Frame| f.vlans = vec![200, 100];
    use Side::{Lan, Wan};
    vec![
        case("tcp out", Lan, tcp_out(), REDIRECT, Some(translated_out(tcp_out(), TCP_EXTERNAL)), Reason::TranslatedOut),
        case("tcp in", Wan, tcp_in(), REDIRECT, Some(translated_in(tcp_in(), TCP_INSIDE)), Reason::TranslatedIn),
        case("udp out", Lan, udp_out(), REDIRECT, Some(translated_out(udp_out(), UDP_EXTERNAL)), Reason::TranslatedOut),
        case("udp in", Wan, udp_in(), REDIRECT, Some(translated_in(udp_in(), UDP_INSIDE)), Reason::TranslatedIn),
        case("icmp echo request out", Lan, icmp_out(), REDIRECT, Some(translated_out(icmp_out(), icmp_ext)), Reason::TranslatedOut),
        case("icmp echo reply in", Wan, icmp_in(), REDIRECT, Some(translated_in(icmp_in(), icmp_inside)), Reason::TranslatedIn),
        case(
            "udp zero checksum out stays zero",
            Lan,
            with(udp_out(), zero_udp),
            REDIRECT,
            Some(translated_out(with(udp_out(), zero_udp), UDP_EXTERNAL)),
            Reason::TranslatedOut,
        ),
        case(
            "udp zero checksum in stays zero",
            Wan,
            with(udp_in(), zero_udp),
            REDIRECT,
            Some(translated_in(with(udp_in(), zero_udp), UDP_INSIDE)),
            Reason::TranslatedIn,
        ),
        case(
            "tcp with IP options out",
            Lan,
            with(tcp_out(), options),
            REDIRECT,
            Some(translated_out(with(tcp_out(), options), TCP_EXTERNAL)),
            Reason::TranslatedOut,
        ),
        case(
            "udp with long IP options in",
            Wan,
            with(udp_in(), long_options),
            REDIRECT,
            Some(translated_in(with(udp_in(), long_options), UDP_INSIDE)),
            Reason::TranslatedIn,
        ),
        case(
            "tcp 802.1Q out keeps its tag",
            Lan,
            with(tcp_out(), vlan),
            REDIRECT,
            Some(translated_out(with(tcp_out(), vlan), TCP_EXTERNAL)),
            Reason::TranslatedOut,
        ),
        case(
            "udp QinQ out keeps both tags",
            Lan,
            with(udp_out(), qinq),
            REDIRECT,
            Some(translated_out(with(udp_out(), qinq), UDP_EXTERNAL)),
            Reason::TranslatedOut,
        ),
        case(
            "icmp QinQ in keeps both tags",
            Wan,
            with(icmp_in(), qinq),
            REDIRECT,
            Some(translated_in(with(icmp_in(), qinq), icmp_inside)),
            Reason::TranslatedIn,
        ),
        case(
            "tcp out with TTL 2 leaves with TTL 1",
            Lan,
            with(tcp_out(), |f| f.ttl = 2),
            REDIRECT,
            Some(translated_out(with(tcp_out(), |f| f.ttl = 2), TCP_EXTERNAL)),
            Reason::TranslatedOut,
        ),
    ]
}

/// As a local socket sends it with TX checksum offload on: the L4 checksum
/// field holds only the pseudo-header sum.
fn partial(f: Frame) -> Frame {
    f.with_partial_checksum()
}

/// `n` bytes of payload that are not all alike, so a piece summed twice or
/// skipped shows.
fn payload(n: usize) -> impl Fn(&mut Frame) {
    move |f: &mut Frame| f.payload = (0..n).map(|i| (i * 7 + 3) as u8).collect()
}

/// `f` with its first two payload bytes chosen so that its L4 checksum,
/// computed in full, comes out as `want` (before UDP turns 0 into 0xffff).
fn with_full_checksum(mut f: Frame, want: u16) -> Frame {
    f.payload[..2].fill(0);
    let bytes = f.build();
    let p = packet::parse_ipv4(&bytes).unwrap();
    let check_at = if p.proto() == proto::TCP { 16 } else { 6 };
    let mut seg = p.l4.to_vec();
    seg[check_at..check_at + 2].fill(0);
    let pseudo = checksum::pseudo_header_sum(p.src().octets(), p.dst().octets(), p.proto(), seg.len() as u16);
    let rest = checksum::fold(checksum::add(pseudo, checksum::sum_words(&seg, 0)));
    // The payload starts at an even offset: the word adds as it is.
    let word = checksum::fold(checksum::add(!want as u32, !rest as u32));
    f.payload[..2].copy_from_slice(&word.to_ne_bytes());
    f
}

/// The folded pseudo-header sum of `f`: what a partial checksum field holds.
fn pseudo_of(f: &Frame) -> u16 {
    let bytes = f.build();
    let p = packet::parse_ipv4(&bytes).unwrap();
    checksum::fold(checksum::pseudo_header_sum(p.src().octets(), p.dst().octets(), p.proto(), p.l4.len() as u16))
}

/// Frames sent with TX checksum offload (CHECKSUM_PARTIAL): they must leave
/// with a full checksum, since the receiver gets them as CHECKSUM_NONE and
/// verifies. Payload lengths exercise every piece of the summation: whole
/// 512-byte chunks, the 256..4-byte pieces, and 1-3 trailing bytes.
fn partial_checksum_cases() -> Vec<Case> {
    use Side::{Lan, Wan};
    let vlan_and_options = |f: &mut Frame| {
        f.vlans = vec![100];
        f.options = vec![1, 1, 1, 0];
    };
    // Found so that the translated datagram's checksum computes to zero.
    let udp_zero_sum = with_full_checksum(translated_out(udp_out(), UDP_EXTERNAL), 0);
    let udp_zero_sum_in = Frame { payload: udp_zero_sum.payload.clone(), ..udp_out() };
    // A full checksum that equals the pseudo-header sum by chance: taken for a
    // partial one and recomputed, which must give it back unchanged.
    let coincidental = {
        let f = tcp_out();
        let want = pseudo_of(&f);
        with_full_checksum(f, want)
    };
    assert_eq!(&coincidental.build()[50..52], &pseudo_of(&coincidental).to_ne_bytes(), "the coincidence was not built");
    vec![
        case(
            "tcp out, partial checksum, 16-byte payload",
            Lan,
            partial(tcp_out()),
            REDIRECT,
            Some(translated_out(tcp_out(), TCP_EXTERNAL)),
            Reason::TranslatedOut,
        ),
        case(
            "tcp in, partial checksum, 1400-byte payload",
            Wan,
            partial(with(tcp_in(), payload(1400))),
            REDIRECT,
            Some(translated_in(with(tcp_in(), payload(1400)), TCP_INSIDE)),
            Reason::TranslatedIn,
        ),
        case(
            "udp out, partial checksum, 15-byte payload (3 trailing bytes)",
            Lan,
            partial(with(udp_out(), payload(15))),
            REDIRECT,
            Some(translated_out(with(udp_out(), payload(15)), UDP_EXTERNAL)),
            Reason::TranslatedOut,
        ),
        case(
            "udp in, partial checksum, 1401-byte payload",
            Wan,
            partial(with(udp_in(), payload(1401))),
            REDIRECT,
            Some(translated_in(with(udp_in(), payload(1401)), UDP_INSIDE)),
            Reason::TranslatedIn,
        ),
        case(
            "udp in, partial checksum, no payload",
            Wan,
            partial(with(udp_in(), payload(0))),
            REDIRECT,
            Some(translated_in(with(udp_in(), payload(0)), UDP_INSIDE)),
            Reason::TranslatedIn,
        ),
        case(
            "tcp out, partial checksum, 1402-byte payload, 802.1Q tag and IP options",
            Lan,
            partial(with(with(tcp_out(), payload(1402)), vlan_and_options)),
            REDIRECT,
            Some(translated_out(with(with(tcp_out(), payload(1402)), vlan_and_options), TCP_EXTERNAL)),
            Reason::TranslatedOut,
        ),
        case(
            "udp out, partial checksum, 3001-byte payload (five whole chunks)",
            Lan,
            partial(with(udp_out(), payload(3001))),
            REDIRECT,
            Some(translated_out(with(udp_out(), payload(3001)), UDP_EXTERNAL)),
            Reason::TranslatedOut,
        ),
        case(
            "udp out, partial checksum that finishes as zero is sent as all ones",
            Lan,
            partial(udp_zero_sum_in),
            REDIRECT,
            Some(udp_zero_sum),
            Reason::TranslatedOut,
        ),
        case(
            "tcp out, full checksum equal to the pseudo-header sum stays right",
            Lan,
            coincidental.clone(),
            REDIRECT,
            Some(translated_out(coincidental, TCP_EXTERNAL)),
            Reason::TranslatedOut,
        ),
    ]
}

fn pass_and_drop_cases() -> Vec<Case> {
    use Side::{Lan, Wan};
    let frag = |offset_and_flags: u16| move |f: &mut Frame| f.frag = offset_and_flags;
    vec![
        case("ttl 1 out goes to the kernel (Time Exceeded)", Lan, with(tcp_out(), |f| f.ttl = 1), PASS, None, Reason::PassTtlExpired),
        case("ttl 1 in with a mapping is dropped", Wan, with(udp_in(), |f| f.ttl = 1), DROP, None, Reason::DropTtlExpired),
        // RFC 1858: a first fragment must hold the whole L4 header (here 4 of
        // UDP's 8 bytes, the frame padded so the header is readable).
        Case {
            name: "first fragment too short for its UDP header out to the WAN is dropped",
            side: Lan,
            input: {
                let mut f = from_lan(Frame::new(addr::LAN_HOST, addr::REMOTE, L4::Raw { proto: proto::UDP }));
                (f.payload, f.frag) = (vec![0x14, 0xe9, 0, 53], 0x2000);
                [f.build(), vec![0; 20]].concat()
            },
            action: DROP,
            output: None,
            reason: Reason::DropUntranslatable,
        },
        case(
            "later fragment in with no state passes to the kernel (a copy to natd)",
            Wan,
            with(udp_in(), frag(0x0010)),
            PASS,
            None,
            Reason::FragmentToDaemon,
        ),
        case(
            "later fragment in for an inside address is dropped",
            Wan,
            from_wan(with(Frame::udp(REMOTE_UDP, UDP_INSIDE), frag(0x0010))),
            DROP,
            None,
            Reason::DropInboundTransit,
        ),
        case(
            "first fragment hairpinned to the external address goes to the kernel",
            Lan,
            from_lan(with(Frame::udp((addr::LAN_HOST, 7000), UDP_EXTERNAL), frag(0x2000))),
            PASS,
            None,
            Reason::PassLocal,
        ),
        case(
            "GRE out to the WAN is dropped, never forwarded untranslated",
            Lan,
            from_lan(Frame::new(addr::LAN_HOST, addr::REMOTE, L4::Raw { proto: 47 })),
            DROP,
            None,
            Reason::DropUntranslatable,
        ),
        case(
            "ICMP timestamp out to the WAN is dropped",
            Lan,
            from_lan(Frame::icmp_echo(addr::LAN_HOST, addr::REMOTE, 13, 1)),
            DROP,
            None,
            Reason::DropUntranslatable,
        ),
        case(
            "LAN host to the gateway itself passes (ssh to the LAN address)",
            Lan,
            from_lan(Frame::tcp((addr::LAN_HOST, 40001), (addr::LAN_GW, 22))),
            PASS,
            None,
            Reason::PassLocal,
        ),
        case(
            "LAN host to the gateway's external address passes (local delivery)",
            Lan,
            from_lan(Frame::udp((addr::LAN_HOST, 40002), (addr::EXTERNAL, 53))),
            PASS,
            None,
            Reason::PassLocal,
        ),
        case(
            "LAN multicast passes",
            Lan,
            from_lan(Frame::udp((addr::LAN_HOST, 5353), (Ipv4Addr::new(224, 0, 0, 251), 5353))),
            PASS,
            None,
            Reason::PassLocal,
        ),
        case(
            "WAN to a gateway service outside the NAT range passes",
            Wan,
            from_wan(Frame::tcp(REMOTE_TCP, (addr::EXTERNAL, 22))),
            PASS,
            None,
            Reason::PassNoMapping,
        ),
        case(
            "WAN reply to the gateway's own ephemeral port passes",
            Wan,
            from_wan(Frame::udp(REMOTE_UDP, (addr::EXTERNAL, 45000))),
            PASS,
            None,
            Reason::PassNoMapping,
        ),
        case(
            "WAN echo request to the gateway passes (the kernel answers)",
            Wan,
            from_wan(Frame::icmp_echo(addr::REMOTE, addr::EXTERNAL, ICMP_ECHO_REQUEST, 9)),
            PASS,
            None,
            Reason::PassNoMapping,
        ),
        case(
            "RFC 5382 REQ-4: unsolicited SYN to an unmapped NAT port is dropped, no RST",
            Wan,
            from_wan(Frame::tcp(REMOTE_TCP, (addr::EXTERNAL, 25000))),
            DROP,
            None,
            Reason::DropInboundNoMapping,
        ),
        case(
            "unsolicited WAN packet addressed straight to an inside host is dropped, not forwarded",
            Wan,
            from_wan(Frame::udp(REMOTE_UDP, (addr::LAN_HOST, 5000))),
            DROP,
            None,
            Reason::DropInboundTransit,
        ),
        Case {
            name: "ARP passes",
            side: Lan,
            input: packet::other_ethertype(packet::ETH_P_ARP, 42),
            action: PASS,
            output: None,
            reason: Reason::PassNotIpv4,
        },
        Case {
            name: "IPv6 passes",
            side: Wan,
            input: packet::other_ethertype(packet::ETH_P_IPV6, 74),
            action: PASS,
            output: None,
            reason: Reason::PassNotIpv4,
        },
    ]
}

fn run_cases(gw: &TestGateway, cases: Vec<Case>) -> Result<()> {
    let mut failures = Vec::new();
    for c in cases {
        let before = gw.datapath.counter(c.reason)?;
        let run = gw.run(c.side, &c.input)?;
        let after = gw.datapath.counter(c.reason)?;
        let want = c.output.as_deref().unwrap_or(&c.input);
        let mut problems = Vec::new();
        if run.action != c.action {
            problems.push(format!(
                "action {} want {}",
                xdp_action::name(run.action),
                xdp_action::name(c.action)
            ));
        }
        if after != before + 1 {
            problems.push(format!("counter {} moved by {}", c.reason.name(), after - before));
        }
        if let Err(e) = assert_frames_eq(c.name, &run.frame, want) {
            problems.push(e.to_string());
        }
        if c.action == REDIRECT
            && let Err(e) = packet::verify_checksums(&run.frame)
        {
            problems.push(format!("bad {e} on the wire"));
        }
        if !problems.is_empty() {
            failures.push(format!("{}: {}", c.name, problems.join("; ")));
        }
    }
    if !failures.is_empty() {
        bail!("{} case(s) failed:\n{}", failures.len(), failures.join("\n"));
    }
    Ok(())
}

#[test]
fn translates_tcp_udp_icmp_both_directions() {
    require_root!();
    let gw = gateway("xlate").unwrap();
    run_cases(&gw, translation_cases()).unwrap();
}

#[test]
fn finishes_partial_checksums_both_directions() {
    require_root!();
    let gw = gateway("partial").unwrap();
    // The route lookup checks the egress MTU: the 3001-byte case needs more
    // than 1500 (BPF_PROG_TEST_RUN itself takes frames up to about 3.5 KB).
    for ifname in ["lan0", "wan0"] {
        gw.ns.ip(&["link", "set", ifname, "mtu", "9000"]).unwrap();
    }
    run_cases(&gw, partial_checksum_cases()).unwrap();
}

/// The summation must stop at the IPv4 total length: Ethernet padding after
/// the datagram is not part of the segment.
#[test]
fn partial_checksum_ignores_ethernet_padding() {
    require_root!();
    let gw = gateway("partialpad").unwrap();
    let mut input = partial(with(tcp_in(), payload(37))).build();
    let mut want = translated_in(with(tcp_in(), payload(37)), TCP_INSIDE).build();
    let padding = [0xa5; 7];
    input.extend_from_slice(&padding);
    want.extend_from_slice(&padding);
    let run = gw.run(Side::Wan, &input).unwrap();
    assert_eq!(run.action, REDIRECT, "{}", xdp_action::name(run.action));
    assert_frames_eq("padded", &run.frame, &want).unwrap();
    packet::verify_checksums(&run.frame).unwrap();
}

/// What must not be translated is passed or dropped, never leaked with an
/// inside address: each case names its reason (RFC 5382 REQ-4: an
/// unsolicited SYN to a NAT port is dropped, not answered).
#[test]
fn passes_and_drops_what_it_must_not_translate() {
    require_root!();
    let gw = gateway("pass").unwrap();
    run_cases(&gw, pass_and_drop_cases()).unwrap();
}

/// Every prefix of a TCP frame that cuts a header short: dropped and counted,
/// never passed to a kernel that would forward it.
#[test]
fn truncated_frames_at_every_header_boundary_are_dropped() {
    require_root!();
    let gw = gateway("trunc").unwrap();
    let mut tagged = tcp_out();
    tagged.vlans = vec![200, 100];
    let full = tagged.build();
    // Ethernet 14 + two tags 8: the IPv4 header starts at 22, TCP at 42.
    for cut in [14, 16, 18, 20, 22, 30, 41, 42, 50, 61] {
        let before = gw.datapath.counter(Reason::DropMalformed).unwrap();
        let run = gw.run(Side::Lan, &full[..cut]).unwrap();
        assert_eq!(run.action, DROP, "cut at {cut}: {}", xdp_action::name(run.action));
        assert_eq!(gw.datapath.counter(Reason::DropMalformed).unwrap(), before + 1, "cut at {cut}");
    }
    // A header that lies: IHL below 5, total length beyond the frame.
    let mut bad_ihl = tcp_out().build();
    bad_ihl[14] = 0x44;
    assert_eq!(gw.run(Side::Lan, &bad_ihl).unwrap().action, DROP);
    let mut long_total = tcp_out().build();
    long_total[16] = 0x05;
    assert_eq!(gw.run(Side::Wan, &long_total).unwrap().action, DROP);
    // Ethernet padding after the datagram is fine.
    let mut padded = tcp_out().build();
    padded.extend_from_slice(&[0; 6]);
    assert_eq!(gw.run(Side::Lan, &padded).unwrap().action, REDIRECT);
}

fn read_events(ring: &mut aya::maps::RingBuf<aya::maps::MapData>) -> Vec<MissEvent> {
    let mut events = Vec::new();
    while let Some(item) = ring.next() {
        assert_eq!(item.len(), std::mem::size_of::<MissEvent>());
        events.push(unsafe { std::ptr::read_unaligned(item.as_ptr() as *const MissEvent) });
    }
    events
}

/// Outbound miss: the frame is not forwarded, it is handed to the daemon
/// intact through the ring, with where it came from.
#[test]
fn miss_hands_the_untranslated_frame_to_the_daemon() {
    require_root!();
    let mut gw = gateway("miss").unwrap();
    let mut ring = gw.datapath.take_miss_ring().unwrap();
    let mut tagged = from_lan(Frame::udp((addr::LAN_HOST, 7777), REMOTE_UDP));
    tagged.vlans = vec![100];
    let frame = tagged.build();
    let run = gw.run(Side::Lan, &frame).unwrap();
    assert_eq!(run.action, DROP, "the miss must not be forwarded by the kernel");
    assert_eq!(gw.datapath.counter(Reason::MissToDaemon).unwrap(), 1);
    let events = read_events(&mut ring);
    assert_eq!(events.len(), 1);
    let ev = &events[0];
    assert_eq!(ev.kind, miss_kind::NEW_FLOW);
    assert_eq!(ev.ingress_ifindex, gw.lan_ifindex);
    assert_eq!(ev.l3_offset, 18);
    assert_eq!(ev.frame(), &frame[..], "the daemon gets the frame as it arrived");
}

/// Translated inbound packet whose inside host has no neighbour entry: not
/// forwarded with a guessed MAC, handed (translated) to the daemon, which
/// sends it through the kernel so ARP resolves the host.
#[test]
fn no_neighbour_hands_the_translated_frame_to_the_daemon() {
    require_root!();
    let mut gw = gateway("noneigh").unwrap();
    let mut ring = gw.datapath.take_miss_ring().unwrap();
    let input = from_wan(Frame::udp(REMOTE_UDP, UNRESOLVED_EXTERNAL));
    let run = gw.run(Side::Wan, &input.build()).unwrap();
    assert_eq!(run.action, DROP);
    assert_eq!(gw.datapath.counter(Reason::NoNeighbourToDaemon).unwrap(), 1);
    let events = read_events(&mut ring);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, miss_kind::NO_NEIGHBOUR);
    let translated = packet::parse_ipv4(events[0].frame()).unwrap();
    assert_eq!(translated.dst(), addr::LAN_HOST_UNRESOLVED);
    assert_eq!(u16::from_be_bytes([translated.l4[2], translated.l4[3]]), UNRESOLVED_INSIDE.1);
    packet::verify_checksums(events[0].frame()).unwrap();
}

/// The daemon sends a no-neighbour frame as it is through a raw socket: a
/// partial checksum must be finished before it goes into the ring.
#[test]
fn no_neighbour_hand_off_carries_a_finished_checksum() {
    require_root!();
    let mut gw = gateway("noneighpart").unwrap();
    let mut ring = gw.datapath.take_miss_ring().unwrap();
    let input = partial(with(from_wan(Frame::udp(REMOTE_UDP, UNRESOLVED_EXTERNAL)), payload(601)));
    let run = gw.run(Side::Wan, &input.build()).unwrap();
    assert_eq!(run.action, DROP);
    assert_eq!(gw.datapath.counter(Reason::NoNeighbourToDaemon).unwrap(), 1);
    let events = read_events(&mut ring);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, miss_kind::NO_NEIGHBOUR);
    packet::verify_checksums(events[0].frame()).unwrap();
}

/// A route out of an interface the daemon did not register is refused.
#[test]
fn egress_outside_the_managed_ports_is_dropped() {
    require_root!();
    let mut gw = gateway("egress").unwrap();
    gw.ns.ip(&["link", "add", "other0", "type", "veth", "peer", "name", "other0p"]).unwrap();
    gw.ns.ip(&["link", "set", "other0", "up"]).unwrap();
    gw.ns.ip(&["link", "set", "other0p", "up"]).unwrap();
    gw.ns.ip(&["addr", "add", "10.99.0.1/24", "dev", "other0"]).unwrap();
    gw.ns.ip(&["neigh", "replace", "10.99.0.5", "lladdr", "02:00:00:00:09:05", "dev", "other0", "nud", "permanent"]).unwrap();
    gw.map((Ipv4Addr::new(10, 99, 0, 5), 1000), (addr::EXTERNAL, 20100), proto::UDP).unwrap();
    let input = from_wan(Frame::udp(REMOTE_UDP, (addr::EXTERNAL, 20100)));
    let run = gw.run(Side::Wan, &input.build()).unwrap();
    assert_eq!(run.action, DROP);
    assert_eq!(gw.datapath.counter(Reason::DropEgressUnmanaged).unwrap(), 1);
}

/// RFC 4787 REQ-6: packets refresh their session, outbound and inbound.
///
/// A mapping's last-seen time and TCP flags move with traffic.
#[test]
fn hits_refresh_the_mapping() {
    require_root!();
    let mut gw = gateway("refresh").unwrap();
    // The time comes from the clock the daemon publishes.
    gw.datapath.set_clock(5_000_000_000).unwrap();
    let inside = nat_common::Endpoint::new(TCP_INSIDE.0, TCP_INSIDE.1, proto::TCP);
    let fin = with(tcp_out(), |f| f.l4 = L4::Tcp { sport: TCP_INSIDE.1, dport: REMOTE_TCP.1, flags: 0x11 });
    assert_eq!(gw.run(Side::Lan, &fin.build()).unwrap().action, REDIRECT);
    let slot = gw.datapath.outbound().unwrap().get(&inside, 0).unwrap().session;
    let live = gw.datapath.liveness(slot).unwrap();
    assert_eq!(live.last_seen_ns, 5_000_000_000, "last_seen_ns was not refreshed to the published clock");
    assert_eq!(live.tcp_flags_out & nat_common::tcp_flags::FIN, nat_common::tcp_flags::FIN);
    assert_eq!(live.tcp_flags_in, 0, "an outbound packet set inbound flags");

    // The reply refreshes the same session and its own direction's flags.
    gw.datapath.set_clock(7_000_000_000).unwrap();
    let ack = with(tcp_in(), |f| f.l4 = L4::Tcp { sport: REMOTE_TCP.1, dport: TCP_EXTERNAL.1, flags: 0x10 });
    assert_eq!(gw.run(Side::Wan, &ack.build()).unwrap().action, REDIRECT);
    let live = gw.datapath.liveness(slot).unwrap();
    assert_eq!((live.last_seen_ns, live.tcp_flags_in), (7_000_000_000, nat_common::tcp_flags::ACK));
}

/// RFC 7857 / RFC 5382 REQ-2: the TCP state of a mapping follows its
/// connections. A bare SYN after a FIN or RST (the same inside endpoint
/// connecting again while the mapping waits out the closing timer) starts the
/// state afresh, so the new connection gets the established timeout once both
/// sides ACK; a SYN-ACK or a retransmitted FIN does not reset anything.
#[test]
fn a_new_syn_after_fin_or_rst_starts_the_tcp_state_afresh() {
    require_root!();
    use nat_common::tcp_flags::{ACK, FIN, RST, SYN};
    let gw = gateway("tcpstate").unwrap();
    let inside = nat_common::Endpoint::new(TCP_INSIDE.0, TCP_INSIDE.1, proto::TCP);
    let slot = gw.datapath.outbound().unwrap().get(&inside, 0).unwrap().session;
    let out = |flags: u8| with(tcp_out(), |f| f.l4 = L4::Tcp { sport: TCP_INSIDE.1, dport: REMOTE_TCP.1, flags });
    let inb = |flags: u8| with(tcp_in(), |f| f.l4 = L4::Tcp { sport: REMOTE_TCP.1, dport: TCP_EXTERNAL.1, flags });
    let flags = |gw: &TestGateway| {
        let live = gw.datapath.liveness(slot).unwrap();
        (live.tcp_flags_out, live.tcp_flags_in)
    };
    let steps: [(Side, Frame, (u8, u8)); 7] = [
        (Side::Lan, out(SYN), (SYN, 0)),
        (Side::Wan, inb(SYN | ACK), (SYN, SYN | ACK)),
        (Side::Lan, out(FIN | ACK), (SYN | FIN | ACK, SYN | ACK)),
        // A retransmitted FIN and a stray SYN-ACK keep the closing state.
        (Side::Lan, out(FIN | ACK), (SYN | FIN | ACK, SYN | ACK)),
        (Side::Wan, inb(SYN | ACK), (SYN | FIN | ACK, SYN | ACK)),
        // The same endpoint connects again: state afresh.
        (Side::Lan, out(SYN), (SYN, 0)),
        (Side::Wan, inb(RST | ACK), (SYN, RST | ACK)),
    ];
    for (i, (side, frame, want)) in steps.into_iter().enumerate() {
        assert_eq!(gw.run(side, &frame.build()).unwrap().action, REDIRECT, "step {i}");
        assert_eq!(flags(&gw), want, "step {i}: (out, in) flags");
    }
    // Simultaneous open: SYNs cross, then SYN-ACKs; established both ways.
    for (side, frame) in [(Side::Lan, out(SYN)), (Side::Wan, inb(SYN)), (Side::Lan, out(SYN | ACK)), (Side::Wan, inb(SYN | ACK))] {
        assert_eq!(gw.run(side, &frame.build()).unwrap().action, REDIRECT);
    }
    assert_eq!(flags(&gw), (SYN | ACK, SYN | ACK));
}

/// The next hop is cached for NEXT_HOP_TTL_NS of the published clock: a
/// neighbour change is picked up once the entry expires, and a packet longer
/// than any the route lookup accepted is checked against the egress MTU.
#[test]
fn next_hops_are_cached_until_they_expire_and_longer_packets_are_checked() {
    require_root!();
    let mut gw = gateway("nexthop").unwrap();
    let t0 = 10_000_000_000;
    gw.datapath.set_clock(t0).unwrap();
    let first = gw.run(Side::Lan, &udp_out().build()).unwrap();
    assert_eq!((first.action, &first.frame[..6]), (REDIRECT, &addr::WAN_NEXT_HOP_MAC[..]));

    let new_mac = [0x02, 0, 0, 0, 0x02, 0x99];
    let new_mac_text = "02:00:00:00:02:99";
    gw.ns.ip(&["neigh", "replace", "203.0.113.2", "lladdr", new_mac_text, "dev", "wan0", "nud", "permanent"]).unwrap();
    let cached = gw.run(Side::Lan, &udp_out().build()).unwrap();
    assert_eq!(&cached.frame[..6], &addr::WAN_NEXT_HOP_MAC[..], "the cached next hop was not used");

    gw.datapath.set_clock(t0 + nat_common::NEXT_HOP_TTL_NS).unwrap();
    let fresh = gw.run(Side::Lan, &udp_out().build()).unwrap();
    assert_eq!(&fresh.frame[..6], &new_mac[..], "the expired next hop was not looked up again");

    // The cache approved 16-byte payloads; a 1400-byte one over a 1000-byte
    // MTU must be refused, not sent on the cached entry.
    gw.ns.ip(&["link", "set", "wan0", "mtu", "1000"]).unwrap();
    let big = with(udp_out(), |f| f.payload = vec![0; 1400]);
    assert_eq!(gw.run(Side::Lan, &big.build()).unwrap().action, DROP);
    assert_eq!(gw.datapath.counter(Reason::DropTooBigForEgress).unwrap(), 1);
}

/// A new flow claims a free port the daemon queued: the datapath installs the
/// mapping pair, translates and forwards the first packet itself, and tells
/// the daemon with a ClaimEvent. An inside port inside the NAT range is left
/// to the daemon (which keeps it if free), as is a flow when the queue is empty.
#[test]
fn new_flow_claims_a_queued_port_and_forwards_its_first_packet() {
    require_root!();
    let mut gw = gateway("claim").unwrap();
    let mut ring = gw.datapath.take_miss_ring().unwrap();
    gw.datapath.set_clock(3_000_000_000).unwrap();
    let free = nat_common::FreePort { session: 77, port: 24680, _pad: 0 };
    gw.datapath.push_free_port(proto::UDP, free).unwrap();

    let inside = (addr::LAN_HOST, 7001);
    let first = from_lan(Frame::udp(inside, REMOTE_UDP));
    let run = gw.run(Side::Lan, &first.build()).unwrap();
    assert_eq!(run.action, REDIRECT, "the first packet was not forwarded");
    assert_frames_eq("claimed first packet", &run.frame, &translated_out(first.clone(), (addr::EXTERNAL, 24680)).build()).unwrap();
    assert_eq!(gw.datapath.counter(Reason::TranslatedNewFlow).unwrap(), 1);

    let item = ring.next().expect("no ClaimEvent in the ring");
    assert_eq!(item.len(), std::mem::size_of::<nat_common::ClaimEvent>());
    let claim = unsafe { std::ptr::read_unaligned(item.as_ptr() as *const nat_common::ClaimEvent) };
    drop(item);
    assert_eq!(claim.kind, miss_kind::CLAIMED);
    assert_eq!(claim.session, 77);
    assert_eq!(claim.inside, nat_common::Endpoint::new(inside.0, inside.1, proto::UDP));
    assert_eq!(claim.external, nat_common::Endpoint::new(addr::EXTERNAL, 24680, proto::UDP));
    assert_eq!(gw.datapath.liveness(77).unwrap().last_seen_ns, 3_000_000_000);

    // The reply finds the reverse entry; the next packet is a plain hit.
    let reply = from_wan(Frame::udp(REMOTE_UDP, (addr::EXTERNAL, 24680)));
    assert_eq!(gw.run(Side::Wan, &reply.build()).unwrap().action, REDIRECT);
    assert_eq!(gw.run(Side::Lan, &first.build()).unwrap().action, REDIRECT);
    assert_eq!(gw.datapath.counter(Reason::TranslatedOut).unwrap(), 1);

    // Queue empty: the daemon decides.
    let second = from_lan(Frame::udp((addr::LAN_HOST, 7002), REMOTE_UDP));
    assert_eq!(gw.run(Side::Lan, &second.build()).unwrap().action, DROP);
    assert_eq!(gw.datapath.counter(Reason::MissToDaemon).unwrap(), 1);
    // An inside port in the NAT range goes to the daemon even with a port queued.
    gw.datapath.push_free_port(proto::UDP, nat_common::FreePort { session: 78, port: 24681, _pad: 0 }).unwrap();
    let in_range = from_lan(Frame::udp((addr::LAN_HOST, addr::PORT_MIN + 5), REMOTE_UDP));
    assert_eq!(gw.run(Side::Lan, &in_range.build()).unwrap().action, DROP);
    assert_eq!(gw.datapath.counter(Reason::MissToDaemon).unwrap(), 2);
}

/// RFC 4787 REQ-9 / RFC 5382 REQ-8 (hairpinning): a LAN host reaching another
/// LAN host's mapping on the external address gets there with both ends
/// translated (the target sees the sender's external endpoint) and the TTL
/// decremented once; anything else for the external address, a ping or a
/// port of the gateway's own, passes to the kernel even from a mapped host.
#[test]
fn hairpinned_packets_reach_the_other_inside_host_as_from_the_outside() {
    require_root!();
    let mut gw = gateway("hairpin").unwrap();
    let host_b = Ipv4Addr::new(10, 77, 1, 11);
    let host_b_mac = [0x02, 0, 0, 0, 0x01, 0x11];
    gw.ns.ip(&["neigh", "replace", "10.77.1.11", "lladdr", "02:00:00:00:01:11", "dev", "lan0", "nud", "permanent"]).unwrap();
    gw.map((host_b, 6000), (addr::EXTERNAL, 20500), proto::UDP).unwrap();

    let to_b = from_lan(Frame::udp(UDP_INSIDE, (addr::EXTERNAL, 20500)));
    let run = gw.run(Side::Lan, &to_b.build()).unwrap();
    let mut expected = to_b.clone();
    (expected.src, expected.dst, expected.ttl) = (addr::EXTERNAL, host_b, to_b.ttl - 1);
    expected.l4 = L4::Udp { sport: UDP_EXTERNAL.1, dport: 6000, zero_checksum: false };
    let expected = expected.with_macs(addr::LAN_GW_MAC, host_b_mac);
    assert_eq!(run.action, REDIRECT);
    assert_frames_eq("hairpinned", &run.frame, &expected.build()).unwrap();
    assert_eq!(gw.datapath.counter(Reason::Hairpinned).unwrap(), 1);

    // The gateway's own service on the external address, from a mapped host.
    let to_gateway = from_lan(Frame::udp(UDP_INSIDE, (addr::EXTERNAL, 53)));
    assert_eq!(gw.run(Side::Lan, &to_gateway.build()).unwrap().action, PASS);
    let ping = from_lan(Frame::icmp_echo(addr::LAN_HOST, addr::EXTERNAL, ICMP_ECHO_REQUEST, ICMP_ID_INSIDE));
    assert_eq!(gw.run(Side::Lan, &ping.build()).unwrap().action, PASS);
}

/// An ICMP message of `kind`/`code` quoting `quoted` (IPv4 header + 8 bytes),
/// with a valid checksum.
fn icmp_error(kind: u8, code: u8, quoted: &[u8]) -> Vec<u8> {
    let mut msg = vec![kind, code, 0, 0, 0, 0, 0, 0];
    msg.extend_from_slice(quoted);
    let c = checksum::checksum(&msg);
    msg[2..4].copy_from_slice(&c.to_ne_bytes());
    msg
}

/// The first 28 bytes of a frame's IPv4 packet: what an ICMP error quotes.
fn quote(f: &Frame) -> Vec<u8> {
    f.build()[14..14 + 28].to_vec()
}

/// RFC 5508 REQ-4/5: an ICMP error from the WAN about a translated packet
/// reaches the inside host with the quoted packet reverted to what that host
/// sent (address, port or echo identifier, quoted IPv4 and UDP/echo
/// checksums), type and code kept, outer destination and every checksum
/// right. UDP (Time Exceeded) and echo (Fragmentation Needed) quotes; an
/// error about the gateway's own packet passes to the kernel. The errors
/// neither refresh (RFC 5508 REQ-6) nor end (RFC 4787 REQ-12, RFC 5382
/// REQ-10) the mapping.
#[test]
fn icmp_errors_from_the_wan_reach_the_inside_host_reverted() {
    require_root!();
    let mut gw = gateway("icmperr").unwrap();
    gw.datapath.set_clock(9_000_000_000).unwrap();
    let router = Ipv4Addr::new(198, 51, 100, 1);
    let cases: [(Frame, Frame, u8, u8); 2] = [
        // (what the inside host sent, what left the gateway, type, code)
        (Frame::udp(UDP_INSIDE, REMOTE_UDP), Frame::udp(UDP_EXTERNAL, REMOTE_UDP), 11, 0),
        (
            Frame::icmp_echo(addr::LAN_HOST, addr::REMOTE, ICMP_ECHO_REQUEST, ICMP_ID_INSIDE),
            Frame::icmp_echo(addr::EXTERNAL, addr::REMOTE, ICMP_ECHO_REQUEST, ICMP_ID_EXTERNAL),
            3,
            4,
        ),
    ];
    for (sent, left, kind, code) in cases {
        // The router saw the packet with TTL 63 (one hop after the gateway).
        let (sent, left) = (with(sent, |f| f.ttl = 63), with(left, |f| f.ttl = 63));
        let mut input = Frame::new(router, addr::EXTERNAL, L4::Raw { proto: proto::ICMP });
        input.payload = icmp_error(kind, code, &quote(&left));
        let input = from_wan(input);
        let mut expected = Frame::new(router, addr::LAN_HOST, L4::Raw { proto: proto::ICMP });
        expected.ttl = input.ttl - 1;
        expected.payload = icmp_error(kind, code, &quote(&sent));
        let expected = expected.with_macs(addr::LAN_GW_MAC, addr::LAN_HOST_MAC);
        let run = gw.run(Side::Wan, &input.build()).unwrap();
        assert_eq!(run.action, REDIRECT, "ICMP {kind}/{code}");
        assert_frames_eq(&format!("ICMP {kind}/{code}"), &run.frame, &expected.build()).unwrap();
    }
    assert_eq!(gw.datapath.counter(Reason::IcmpErrorIn).unwrap(), 2);
    // RFC 5508 REQ-6: the errors refreshed nothing (the mappings were made at t=0).
    let slot = gw.datapath.outbound().unwrap().get(&nat_common::Endpoint::new(UDP_INSIDE.0, UDP_INSIDE.1, proto::UDP), 0).unwrap().session;
    assert_eq!(gw.datapath.liveness(slot).unwrap().last_seen_ns, 0, "an ICMP error refreshed the mapping");
    // RFC 4787 REQ-12, RFC 5382 REQ-10: nor ended it (Port Unreachable included).
    let unreachable = with(Frame::udp(UDP_EXTERNAL, REMOTE_UDP), |f| f.ttl = 63);
    let mut input = Frame::new(addr::REMOTE, addr::EXTERNAL, L4::Raw { proto: proto::ICMP });
    input.payload = icmp_error(3, 3, &quote(&unreachable));
    assert_eq!(gw.run(Side::Wan, &from_wan(input).build()).unwrap().action, REDIRECT);
    assert!(gw.datapath.outbound().unwrap().get(&nat_common::Endpoint::new(UDP_INSIDE.0, UDP_INSIDE.1, proto::UDP), 0).is_ok());
    assert!(gw.datapath.inbound().unwrap().get(&nat_common::Endpoint::new(UDP_EXTERNAL.0, UDP_EXTERNAL.1, proto::UDP), 0).is_ok());
    assert_eq!(gw.run(Side::Wan, &udp_in().build()).unwrap().action, REDIRECT, "the mapping stopped working after the errors");

    // About a packet of the gateway's own (source port 33000, no mapping).
    let own = with(Frame::udp((addr::EXTERNAL, 33000), REMOTE_UDP), |f| f.ttl = 63);
    let mut input = Frame::new(router, addr::EXTERNAL, L4::Raw { proto: proto::ICMP });
    input.payload = icmp_error(3, 3, &quote(&own));
    assert_eq!(gw.run(Side::Wan, &from_wan(input).build()).unwrap().action, PASS);
}

/// RFC 5508 REQ-4/5, the other way: an inside host's Port Unreachable about an
/// inbound datagram leaves from the external address, quoting the datagram
/// as the remote sent it (to the external endpoint), every checksum right.
#[test]
fn icmp_errors_from_inside_hosts_leave_with_the_quote_set_back() {
    require_root!();
    let gw = gateway("icmperrout").unwrap();
    let received = with(Frame::udp(REMOTE_UDP, UDP_INSIDE), |f| f.ttl = 63);
    let sent_by_remote = with(Frame::udp(REMOTE_UDP, UDP_EXTERNAL), |f| f.ttl = 63);
    let mut input = Frame::new(addr::LAN_HOST, addr::REMOTE, L4::Raw { proto: proto::ICMP });
    input.payload = icmp_error(3, 3, &quote(&received));
    let input = from_lan(input);
    let mut expected = Frame::new(addr::EXTERNAL, addr::REMOTE, L4::Raw { proto: proto::ICMP });
    expected.ttl = input.ttl - 1;
    expected.payload = icmp_error(3, 3, &quote(&sent_by_remote));
    let expected = expected.with_macs(addr::WAN_GW_MAC, addr::WAN_NEXT_HOP_MAC);
    let run = gw.run(Side::Lan, &input.build()).unwrap();
    assert_eq!(run.action, REDIRECT);
    assert_frames_eq("port unreachable out", &run.frame, &expected.build()).unwrap();
    assert_eq!(gw.datapath.counter(Reason::IcmpErrorOut).unwrap(), 1);

    // About a flow with no mapping: never leaves with an inside address.
    let unmapped = with(Frame::udp(REMOTE_UDP, (addr::LAN_HOST, 9999)), |f| f.ttl = 63);
    let mut input = Frame::new(addr::LAN_HOST, addr::REMOTE, L4::Raw { proto: proto::ICMP });
    input.payload = icmp_error(3, 3, &quote(&unmapped));
    assert_eq!(gw.run(Side::Lan, &from_lan(input).build()).unwrap().action, DROP);
}

/// The gateway of `gateway()` with every protocol filtering in `mode` and
/// permits living `ttl_ns`.
fn filtering_gateway(tag: &str, mode: u8, ttl_ns: u64) -> TestGateway {
    let mut gw = gateway(tag).unwrap();
    let mut config = nat_tests::fixture_config(gw.wan_ifindex);
    (config.filtering_tcp, config.filtering_udp, config.filtering_icmp) = (mode, mode, mode);
    (config.permit_ttl_tcp_ns, config.permit_ttl_udp_ns, config.permit_ttl_icmp_ns) = (ttl_ns, ttl_ns, ttl_ns);
    gw.datapath.set_config(config).unwrap();
    gw
}

/// RFC 4787 REQ-8 / RFC 5382 REQ-3: inbound filtering, selectable per
/// protocol; mapping stays endpoint-independent. A remote gets in through a
/// mapping if the mode lets it: endpoint-independent, anyone;
/// address-dependent, an address the inside endpoint sent to;
/// address-and-port-dependent, an address and port it sent to (ICMP echo: an
/// address). Permits live the protocol's timeout after the last packet sent,
/// and refused packets are counted as `drop_filtered`.
#[test]
fn inbound_filtering_follows_the_configured_mode() {
    require_root!();
    use nat_common::filtering::{ADDRESS_AND_PORT_DEPENDENT, ADDRESS_DEPENDENT, ENDPOINT_INDEPENDENT};
    let stranger = Ipv4Addr::new(198, 51, 100, 99);
    let ttl = 10_000_000_000;
    // (mode, tag, [from the remote sent to, same address other port, other address])
    let modes = [
        (ENDPOINT_INDEPENDENT, "eif", [REDIRECT, REDIRECT, REDIRECT]),
        (ADDRESS_DEPENDENT, "adf", [REDIRECT, REDIRECT, DROP]),
        (ADDRESS_AND_PORT_DEPENDENT, "apdf", [REDIRECT, DROP, DROP]),
    ];
    for (mode, tag, want) in modes {
        let mut gw = filtering_gateway(&format!("filt{tag}"), mode, ttl);
        let t0 = 1_000_000_000;
        gw.datapath.set_clock(t0).unwrap();
        let filtered = |gw: &TestGateway| gw.datapath.counter(Reason::DropFiltered).unwrap();
        let expect_dropped = u64::from(mode != ENDPOINT_INDEPENDENT);

        // Nothing sent yet: only endpoint-independent filtering lets the reply in.
        let early = gw.run(Side::Wan, &udp_in().build()).unwrap();
        assert_eq!(early.action, if mode == ENDPOINT_INDEPENDENT { REDIRECT } else { DROP }, "{tag}: before any packet out");
        assert_eq!(filtered(&gw), expect_dropped, "{tag}: drop_filtered");

        type Address = (Ipv4Addr, u16);
        type Build = fn(Address, Address) -> Frame;
        let protocols: [(&str, Frame, Address, Address, Build); 2] = [
            ("tcp", tcp_out(), REMOTE_TCP, TCP_EXTERNAL, Frame::tcp),
            ("udp", udp_out(), REMOTE_UDP, UDP_EXTERNAL, Frame::udp),
        ];
        for (name, out, remote, external, inbound) in protocols {
            assert_eq!(gw.run(Side::Lan, &out.build()).unwrap().action, REDIRECT, "{tag} {name}: outbound");
            let senders = [remote, (remote.0, remote.1 + 1), (stranger, remote.1)];
            for (sender, want) in senders.into_iter().zip(want) {
                let run = gw.run(Side::Wan, &from_wan(inbound(sender, external)).build()).unwrap();
                assert_eq!(xdp_action::name(run.action), xdp_action::name(want), "{tag} {name}: from {sender:?}");
            }
        }
        let icmp_from = |from: Ipv4Addr| from_wan(Frame::icmp_echo(from, addr::EXTERNAL, ICMP_ECHO_REPLY, ICMP_ID_EXTERNAL));
        assert_eq!(gw.run(Side::Lan, &icmp_out().build()).unwrap().action, REDIRECT, "{tag} icmp: outbound");
        assert_eq!(gw.run(Side::Wan, &icmp_from(addr::REMOTE).build()).unwrap().action, REDIRECT, "{tag}: echo reply");
        assert_eq!(gw.run(Side::Wan, &icmp_from(stranger).build()).unwrap().action, want[2], "{tag}: echo reply from a stranger");
        // Refused: each DROP of the table for TCP and UDP, and the stranger's echo reply.
        let refused = 2 * want.iter().filter(|&&a| a == DROP).count() as u64 + u64::from(want[2] == DROP);
        assert_eq!(filtered(&gw), expect_dropped + refused, "{tag}: drop_filtered");

        // An admitted reply keeps its permit alive; one the inside endpoint
        // stopped sending to and that stopped answering expires with the timeout.
        gw.datapath.set_clock(t0 + ttl).unwrap();
        assert_eq!(gw.run(Side::Wan, &tcp_in().build()).unwrap().action, REDIRECT, "{tag}: within the timeout");
        gw.datapath.set_clock(t0 + ttl + ttl / 2).unwrap();
        assert_eq!(gw.run(Side::Wan, &tcp_in().build()).unwrap().action, REDIRECT, "{tag}: refreshed by the last reply");
        let expired = gw.run(Side::Wan, &udp_in().build()).unwrap().action;
        assert_eq!(xdp_action::name(expired), xdp_action::name(if mode == ENDPOINT_INDEPENDENT { REDIRECT } else { DROP }), "{tag}: expired permit");
    }
}

/// Filtering applies to what an ICMP error is about (RFC 5508 REQ-4 with
/// RFC 4787 REQ-8): a router on the way may report on a flow to a remote the
/// inside host chose, but an error quoting a remote it never sent to is
/// dropped. Hairpinned packets are filtered as from the outside: with
/// address-and-port-dependent filtering, A reaches B's mapping only once B
/// has sent to A's external endpoint (the order in which two hosts punch
/// holes towards each other).
#[test]
fn filtering_covers_icmp_errors_and_hairpinned_packets() {
    require_root!();
    let mut gw = filtering_gateway("filterr", nat_common::filtering::ADDRESS_AND_PORT_DEPENDENT, 10_000_000_000);
    gw.datapath.set_clock(1_000_000_000).unwrap();
    let router = Ipv4Addr::new(198, 51, 100, 1);
    let error_about = |dst: (Ipv4Addr, u16)| {
        let left = with(Frame::udp(UDP_EXTERNAL, dst), |f| f.ttl = 63);
        let mut error = Frame::new(router, addr::EXTERNAL, L4::Raw { proto: proto::ICMP });
        error.payload = icmp_error(11, 0, &quote(&left));
        from_wan(error).build()
    };
    assert_eq!(gw.run(Side::Lan, &udp_out().build()).unwrap().action, REDIRECT);
    assert_eq!(gw.run(Side::Wan, &error_about(REMOTE_UDP)).unwrap().action, REDIRECT, "error about the flow sent");
    assert_eq!(gw.run(Side::Wan, &error_about((addr::REMOTE, 9))).unwrap().action, DROP, "error about another port");
    assert_eq!(gw.datapath.counter(Reason::DropFiltered).unwrap(), 1);

    // Hairpinning between A (UDP_INSIDE, external UDP_EXTERNAL) and B.
    let host_b = Ipv4Addr::new(10, 77, 1, 11);
    let b_external = (addr::EXTERNAL, 20500);
    gw.ns.ip(&["neigh", "replace", "10.77.1.11", "lladdr", "02:00:00:00:01:11", "dev", "lan0", "nud", "permanent"]).unwrap();
    gw.map((host_b, 6000), b_external, proto::UDP).unwrap();
    let a_to_b = from_lan(Frame::udp(UDP_INSIDE, b_external)).build();
    let b_to_a = with(from_lan(Frame::udp((host_b, 6000), UDP_EXTERNAL)), |f| f.src_mac = [0x02, 0, 0, 0, 0x01, 0x11]).build();
    assert_eq!(gw.run(Side::Lan, &a_to_b).unwrap().action, DROP, "A before B sent to it");
    assert_eq!(gw.run(Side::Lan, &b_to_a).unwrap().action, REDIRECT, "B after A sent to it");
    assert_eq!(gw.run(Side::Lan, &a_to_b).unwrap().action, REDIRECT, "A after B sent to it");
    assert_eq!(gw.datapath.counter(Reason::DropFiltered).unwrap(), 2);
    assert_eq!(gw.datapath.counter(Reason::Hairpinned).unwrap(), 2);
}

/// RFC 6888 REQ-4: the datapath claims no more ports for an inside host than
/// its quota. Past it, the new flow goes to natd (which refuses it and tells
/// the host, RFC 5508 REQ-8); other hosts are not affected; a port natd
/// reports released makes room again.
#[test]
fn claims_stop_at_the_per_host_quota() {
    require_root!();
    let mut gw = gateway("quota").unwrap();
    let mut config = nat_tests::fixture_config(gw.wan_ifindex);
    config.ports_per_host = 2;
    gw.datapath.set_config(config).unwrap();
    let _ring = gw.datapath.take_miss_ring().unwrap();
    for (i, port) in [24000u16, 24001, 24002, 24003].into_iter().enumerate() {
        gw.datapath.push_free_port(proto::UDP, nat_common::FreePort { session: 100 + i as u32, port, _pad: 0 }).unwrap();
    }
    let new_flow = |host: Ipv4Addr, port: u16| from_lan(Frame::udp((host, port), REMOTE_UDP)).build();
    let host = addr::LAN_HOST;
    assert_eq!(gw.run(Side::Lan, &new_flow(host, 7001)).unwrap().action, REDIRECT);
    assert_eq!(gw.run(Side::Lan, &new_flow(host, 7002)).unwrap().action, REDIRECT);
    let third = gw.run(Side::Lan, &new_flow(host, 7003)).unwrap();
    assert_eq!(third.action, DROP, "a third port for a host with a quota of 2");
    assert_eq!(gw.datapath.counter(Reason::MissToDaemon).unwrap(), 1, "the refused flow went to natd");
    let key = nat_common::HostKey::of(&nat_common::Endpoint::new(host, 0, proto::UDP));
    assert_eq!(gw.datapath.host_claims(key).unwrap(), 2, "the refused claim was not undone");
    // TCP is counted apart, and so is another host.
    gw.datapath.push_free_port(proto::TCP, nat_common::FreePort { session: 200, port: 24100, _pad: 0 }).unwrap();
    let tcp = from_lan(Frame::tcp((host, 7004), REMOTE_TCP)).build();
    assert_eq!(gw.run(Side::Lan, &tcp).unwrap().action, REDIRECT, "TCP has its own quota");
    gw.ns.ip(&["neigh", "replace", "10.77.1.11", "lladdr", "02:00:00:00:01:11", "dev", "lan0", "nud", "permanent"]).unwrap();
    let other = Ipv4Addr::new(10, 77, 1, 11);
    assert_eq!(gw.run(Side::Lan, &new_flow(other, 7001)).unwrap().action, REDIRECT, "another host");
    // natd released one of the host's mappings.
    gw.datapath.set_host_returns(key, 1).unwrap();
    assert_eq!(gw.run(Side::Lan, &new_flow(host, 7003)).unwrap().action, REDIRECT, "after a release");
}
/// The verifier walks every path of a program up to 1,000,000 instructions;
/// a change that multiplies paths (one state per queue, per pool address...)
/// fails to load long after it compiles. Half the limit is the budget.
#[test]
fn programs_stay_within_half_the_verifier_budget() {
    require_root!();
    let gw = gateway("verified").unwrap();
    for side in [Side::Lan, Side::Wan] {
        let info = gw.datapath.program(side).unwrap().info().unwrap();
        let verified = info.verified_instruction_count().expect("the kernel reports verified instructions (5.16+)");
        eprintln!("{}: {verified} instructions verified", side.program_name());
        assert!(verified < 500_000, "{}: {verified} instructions verified", side.program_name());
    }
}

/// RFC 4787 REQ-2, REQ-4, REQ-3a in the claim path. With a pool of two
/// addresses each host's new flows take its paired address (the hash natd
/// uses too), from the one queue of the port's parity; with parity kept an
/// odd inside port takes an odd port while one is queued and an even one
/// after (parity lost beats a refusal); with class kept an inside port below
/// 1024 is left to natd.
#[test]
fn claims_keep_the_paired_address_parity_and_class() {
    require_root!();
    let mut gw = gateway("pool").unwrap();
    let second = Ipv4Addr::new(203, 0, 113, 5);
    let mut config = nat_tests::fixture_config(gw.wan_ifindex);
    config.external_addrs_be[1] = u32::from_ne_bytes(second.octets());
    config.pool_len = 2;
    (config.port_parity, config.port_class) = (1, 1);
    (config.low_port_min, config.low_port_max) = (600, 699);
    gw.datapath.set_config(config).unwrap();
    let _ring = gw.datapath.take_miss_ring().unwrap();
    let pool = [addr::EXTERNAL, second];
    gw.ns.ip(&["neigh", "replace", "10.77.1.11", "lladdr", "02:00:00:00:01:11", "dev", "lan0", "nud", "permanent"]).unwrap();
    let hosts = [addr::LAN_HOST, Ipv4Addr::new(10, 77, 1, 11)];
    let paired = |host: Ipv4Addr| pool[config.pool_index(u32::from_ne_bytes(host.octets())) as usize];
    assert_ne!(paired(hosts[0]), paired(hosts[1]), "the fixture's hosts should land on different addresses");

    let mut session = 300;
    let mut queue = |gw: &mut TestGateway, proto_nr: u8, port: u16| {
        session += 1;
        gw.datapath.push_free_port(proto_nr, nat_common::FreePort { session, port, _pad: 0 }).unwrap();
    };
    for (host, inside_port, proto_nr) in [(hosts[0], 7001, proto::UDP), (hosts[1], 7003, proto::UDP), (hosts[0], 7005, proto::TCP), (hosts[1], 7006, proto::TCP)] {
        let external_port = 25000 + inside_port;
        queue(&mut gw, proto_nr, external_port);
        let first = if proto_nr == proto::UDP { Frame::udp((host, inside_port), REMOTE_UDP) } else { Frame::tcp((host, inside_port), REMOTE_TCP) };
        let run = gw.run(Side::Lan, &from_lan(first.clone()).build()).unwrap();
        assert_eq!(run.action, REDIRECT, "{host}:{inside_port}");
        let want = translated_out(from_lan(first), (paired(host), external_port));
        assert_frames_eq(&format!("{host}:{inside_port}"), &run.frame, &want.build()).unwrap();
    }

    // Parity kept: odd to odd while an odd port is queued, then the even one.
    queue(&mut gw, proto::UDP, 26000);
    queue(&mut gw, proto::UDP, 26001);
    let source_port = |run: &nat_tests::TestRun| u16::from_be_bytes([run.frame[34], run.frame[35]]);
    let odd = gw.run(Side::Lan, &from_lan(Frame::udp((addr::LAN_HOST, 7101), REMOTE_UDP)).build()).unwrap();
    assert_eq!((odd.action, source_port(&odd)), (REDIRECT, 26001));
    let odd = gw.run(Side::Lan, &from_lan(Frame::udp((addr::LAN_HOST, 7103), REMOTE_UDP)).build()).unwrap();
    assert_eq!((odd.action, source_port(&odd)), (REDIRECT, 26000), "no fallback to the other parity");
    // Class kept: NTP's port 123 is natd's to map into 600-699.
    queue(&mut gw, proto::UDP, 26003);
    let ntp = from_lan(Frame::udp((addr::LAN_HOST, 123), REMOTE_UDP)).build();
    assert_eq!(gw.run(Side::Lan, &ntp).unwrap().action, DROP);
    assert_eq!(gw.datapath.counter(Reason::MissToDaemon).unwrap(), 1);

    // Unmapped ports of the low range are the NAT's too: dropped, not passed.
    let unsolicited = from_wan(Frame::udp(REMOTE_UDP, (second, 650))).build();
    assert_eq!(gw.run(Side::Wan, &unsolicited).unwrap().action, DROP);
    assert_eq!(gw.datapath.counter(Reason::DropInboundNoMapping).unwrap(), 1);
}

/// The ring's items, raw (`MissEvent`s, `ClaimEvent`s and `FragEvent`s).
fn read_items(ring: &mut aya::maps::RingBuf<aya::maps::MapData>) -> Vec<Vec<u8>> {
    let mut items = Vec::new();
    while let Some(item) = ring.next() {
        items.push(item.to_vec());
    }
    items
}

fn as_miss(item: &[u8]) -> MissEvent {
    assert_eq!(item.len(), std::mem::size_of::<MissEvent>());
    unsafe { std::ptr::read_unaligned(item.as_ptr() as *const MissEvent) }
}

fn with_payload(mut f: Frame, len: usize, id: u16) -> Frame {
    f.payload = (0..len).map(|i| (i * 7) as u8).collect();
    f.id = id;
    f
}

/// RFC 4787 REQ-14: a fragmented datagram crosses in both directions, TCP,
/// UDP and ICMP echo. The first fragment is translated like a whole packet
/// (its L4 checksum, which covers the whole datagram, updated incrementally);
/// the later ones get the same address by the datagram's identity. Every
/// output fragment is byte for byte the fragment of the translated datagram
/// built from scratch: addresses, TTL, IPv4 checksums, and the L4 checksum of
/// the first.
#[test]
fn fragments_are_translated_both_ways_in_order() {
    require_root!();
    let mut gw = gateway("frag").unwrap();
    gw.datapath.set_clock(10_000_000_000).unwrap();
    let icmp_ext = (addr::EXTERNAL, ICMP_ID_EXTERNAL);
    let icmp_inside = (addr::LAN_HOST, ICMP_ID_INSIDE);
    let cases: Vec<(&str, Side, Frame, Frame, Reason, Reason)> = vec![
        ("udp out", Side::Lan, with_payload(udp_out(), 100, 1), translated_out(with_payload(udp_out(), 100, 1), UDP_EXTERNAL), Reason::TranslatedOut, Reason::FragmentTranslatedOut),
        ("tcp out", Side::Lan, with_payload(tcp_out(), 90, 2), translated_out(with_payload(tcp_out(), 90, 2), TCP_EXTERNAL), Reason::TranslatedOut, Reason::FragmentTranslatedOut),
        ("udp in", Side::Wan, with_payload(udp_in(), 100, 3), translated_in(with_payload(udp_in(), 100, 3), UDP_INSIDE), Reason::TranslatedIn, Reason::FragmentTranslatedIn),
        ("icmp echo reply in", Side::Wan, with_payload(icmp_in(), 70, 4), translated_in(with_payload(icmp_in(), 70, 4), icmp_inside), Reason::TranslatedIn, Reason::FragmentTranslatedIn),
        ("icmp echo request out", Side::Lan, with_payload(icmp_out(), 70, 5), translated_out(with_payload(icmp_out(), 70, 5), icmp_ext), Reason::TranslatedOut, Reason::FragmentTranslatedOut),
    ];
    let mut failures = Vec::new();
    for (name, side, input, output, first_reason, later_reason) in cases {
        let inputs = packet::fragments(&input.build(), 32);
        let wants = packet::fragments(&output.build(), 32);
        assert!(inputs.len() >= 3, "{name}: at least one middle fragment");
        for (i, (frame, want)) in inputs.iter().zip(&wants).enumerate() {
            let reason = if i == 0 { first_reason } else { later_reason };
            let before = gw.datapath.counter(reason).unwrap();
            let run = gw.run(side, frame).unwrap();
            if run.action != REDIRECT {
                failures.push(format!("{name} fragment {i}: {}", xdp_action::name(run.action)));
            }
            if let Err(e) = assert_frames_eq(&format!("{name} fragment {i}"), &run.frame, want) {
                failures.push(e.to_string());
            }
            if gw.datapath.counter(reason).unwrap() != before + 1 {
                failures.push(format!("{name} fragment {i}: {} did not count it", reason.name()));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// RFC 4787 REQ-14, out of order: a later fragment that comes before its
/// first fragment is not forwarded (outbound it would leave with the inside
/// source) but handed to natd through the ring, intact; inbound the kernel
/// gets it too (it may be the gateway's own). When the first fragment of a
/// datagram natd parks (a PARKED entry) is translated, natd is told the
/// identity and the address, and later fragments then pass in XDP.
#[test]
fn a_later_fragment_before_its_first_goes_to_natd_never_to_the_wan() {
    require_root!();
    let mut gw = gateway("fragooo").unwrap();
    let mut ring = gw.datapath.take_miss_ring().unwrap();
    let out = packet::fragments(&with_payload(udp_out(), 100, 0x4242).build(), 32);
    let want_out = packet::fragments(&translated_out(with_payload(udp_out(), 100, 0x4242), UDP_EXTERNAL).build(), 32);

    let run = gw.run(Side::Lan, &out[3]).unwrap();
    assert_eq!(run.action, DROP, "a later fragment with no state must not leave untranslated");
    let run = gw.run(Side::Lan, &out[2]).unwrap();
    assert_eq!(run.action, DROP);
    assert_eq!(gw.datapath.counter(Reason::FragmentToDaemon).unwrap(), 2);
    let items = read_items(&mut ring);
    assert_eq!(items.len(), 2);
    for (item, frame) in items.iter().zip([&out[3], &out[2]]) {
        let ev = as_miss(item);
        assert_eq!((ev.kind, ev.ingress_ifindex, ev.l3_offset), (miss_kind::FRAGMENT_OUT, gw.lan_ifindex, 14));
        assert_eq!(ev.frame(), &frame[..], "natd gets the fragment as it arrived");
    }

    // natd parks them and marks the datagram; its first fragment passes.
    let key = nat_userspace::frag::frag_key_of(&out[0][14..], nat_common::frag_dir::OUT).unwrap();
    gw.datapath.mark_parked(key, 0).unwrap();
    let run = gw.run(Side::Lan, &out[0]).unwrap();
    assert_eq!(run.action, REDIRECT);
    assert_frames_eq("first fragment", &run.frame, &want_out[0]).unwrap();
    let items = read_items(&mut ring);
    assert_eq!(items.len(), 1, "one FragEvent for the parked datagram");
    let ev: nat_common::FragEvent = unsafe { std::ptr::read_unaligned(items[0].as_ptr() as *const _) };
    assert_eq!(ev.kind, miss_kind::FRAGMENT_TRANSLATED);
    assert_eq!((ev.key, ev.addr_be.to_ne_bytes()), (key, addr::EXTERNAL.octets()));
    // A fragment still in flight passes in XDP; no event for an unparked datagram.
    let run = gw.run(Side::Lan, &out[1]).unwrap();
    assert_eq!(run.action, REDIRECT);
    assert_frames_eq("middle fragment", &run.frame, &want_out[1]).unwrap();
    gw.datapath.unmark_parked(&key).unwrap();
    let other = packet::fragments(&with_payload(udp_out(), 100, 0x4343).build(), 32);
    assert_eq!(gw.run(Side::Lan, &other[0]).unwrap().action, REDIRECT);
    assert!(read_items(&mut ring).is_empty(), "no FragEvent when natd parks nothing of the datagram");

    // Inbound: the copy goes to natd and the fragment to the kernel.
    let inbound = packet::fragments(&with_payload(udp_in(), 100, 0x4444).build(), 32);
    let run = gw.run(Side::Wan, &inbound[2]).unwrap();
    assert_eq!(run.action, PASS);
    assert_eq!(run.frame, inbound[2]);
    let items = read_items(&mut ring);
    assert_eq!(items.len(), 1);
    let ev = as_miss(&items[0]);
    assert_eq!((ev.kind, ev.ingress_ifindex), (miss_kind::FRAGMENT_IN, gw.wan_ifindex));
    assert_eq!(ev.frame(), &inbound[2][..]);
}

/// RFC 4787 REQ-14: the translation of a first fragment serves its later
/// fragments for FRAG_TIMEOUT_NS of the clock natd publishes, then is
/// ignored: a late fragment goes to natd (counted as expired state), never
/// out untranslated.
#[test]
fn fragment_state_expires_with_the_published_clock() {
    require_root!();
    let mut gw = gateway("fragexp").unwrap();
    let mut ring = gw.datapath.take_miss_ring().unwrap();
    let t0 = 20_000_000_000;
    gw.datapath.set_clock(t0).unwrap();
    let out = packet::fragments(&with_payload(udp_out(), 100, 0x5151).build(), 32);
    assert_eq!(gw.run(Side::Lan, &out[0]).unwrap().action, REDIRECT);
    gw.datapath.set_clock(t0 + nat_common::FRAG_TIMEOUT_NS).unwrap();
    assert_eq!(gw.run(Side::Lan, &out[1]).unwrap().action, REDIRECT, "still fresh at the timeout");
    gw.datapath.set_clock(t0 + nat_common::FRAG_TIMEOUT_NS + nat_common::CLOCK_TICK_NS).unwrap();
    let run = gw.run(Side::Lan, &out[2]).unwrap();
    assert_eq!(run.action, DROP, "stale state: not translated, not leaked");
    assert_eq!(gw.datapath.counter(Reason::FragmentStateExpired).unwrap(), 1);
    assert_eq!(gw.datapath.counter(Reason::FragmentTranslatedOut).unwrap(), 1);
    let items = read_items(&mut ring);
    assert_eq!(items.len(), 1);
    assert_eq!(as_miss(&items[0]).kind, miss_kind::FRAGMENT_OUT);
}

/// RFC 4787 REQ-14 with RFC 4787 REQ-8: the later fragments of a datagram
/// whose first fragment filtering refused do not get in by identity (no
/// state is recorded for it); once the inside endpoint has sent to the
/// remote, a datagram of its gets in whole. A later fragment in with TTL 1 is
/// dropped like any inbound packet.
#[test]
fn later_fragments_follow_the_filtering_of_their_first() {
    require_root!();
    let gw = filtering_gateway("fragfilt", nat_common::filtering::ADDRESS_AND_PORT_DEPENDENT, 10_000_000_000);
    let refused = packet::fragments(&with_payload(udp_in(), 100, 0x6001).build(), 32);
    assert_eq!(gw.run(Side::Wan, &refused[0]).unwrap().action, DROP, "first fragment from a remote never sent to");
    assert_eq!(gw.datapath.counter(Reason::DropFiltered).unwrap(), 1);
    let run = gw.run(Side::Wan, &refused[1]).unwrap();
    assert_eq!((run.action, &run.frame), (PASS, &refused[1]), "untranslated to the kernel (and natd), not to the inside host");
    assert_eq!(gw.datapath.counter(Reason::FragmentTranslatedIn).unwrap(), 0);

    assert_eq!(gw.run(Side::Lan, &udp_out().build()).unwrap().action, REDIRECT, "the inside endpoint sends to the remote");
    let admitted = packet::fragments(&with_payload(udp_in(), 100, 0x6002).build(), 32);
    let wants = packet::fragments(&translated_in(with_payload(udp_in(), 100, 0x6002), UDP_INSIDE).build(), 32);
    for (i, (frame, want)) in admitted.iter().zip(&wants).enumerate() {
        let run = gw.run(Side::Wan, frame).unwrap();
        assert_eq!(run.action, REDIRECT, "fragment {i}");
        assert_frames_eq(&format!("fragment {i}"), &run.frame, want).unwrap();
    }
    let mut last = admitted.last().unwrap().clone();
    last[14 + 8] = 1;
    last[14 + 10..14 + 12].fill(0);
    let c = checksum::checksum(&last[14..34]);
    last[14 + 10..14 + 12].copy_from_slice(&c.to_ne_bytes());
    assert_eq!(gw.run(Side::Wan, &last).unwrap().action, DROP, "TTL 1");
    assert_eq!(gw.datapath.counter(Reason::DropTtlExpired).unwrap(), 1);
}

/// RFC 5508 REQ-3: an ICMP error about a mapped flow is translated only if
/// its checksum and the quoted IPv4 header's checksum hold, and a quoted
/// header with options is walked to find the quoted ports (here a Time
/// Exceeded quoting a UDP datagram with IHL 6, and Port Unreachable from an
/// inside host about one with IHL 8).
#[test]
fn icmp_errors_are_checked_and_quoted_options_walked() {
    require_root!();
    let gw = gateway("icmpcheck").unwrap();
    let router = Ipv4Addr::new(198, 51, 100, 1);
    let error_from_wan = |payload: Vec<u8>| {
        let mut f = Frame::new(router, addr::EXTERNAL, L4::Raw { proto: proto::ICMP });
        f.payload = payload;
        from_wan(f)
    };
    let sent = with(Frame::udp(UDP_INSIDE, REMOTE_UDP), |f| (f.ttl, f.options) = (63, vec![1, 1, 1, 0]));
    let left = with(Frame::udp(UDP_EXTERNAL, REMOTE_UDP), |f| (f.ttl, f.options) = (63, vec![1, 1, 1, 0]));
    let input = error_from_wan(icmp_error(11, 0, &quote_with_options(&left)));
    let mut expected = Frame::new(router, addr::LAN_HOST, L4::Raw { proto: proto::ICMP });
    expected.ttl = input.ttl - 1;
    expected.payload = icmp_error(11, 0, &quote_with_options(&sent));
    let run = gw.run(Side::Wan, &input.build()).unwrap();
    assert_eq!(run.action, REDIRECT, "a quote with IPv4 options");
    assert_frames_eq("quote with options", &run.frame, &expected.with_macs(addr::LAN_GW_MAC, addr::LAN_HOST_MAC).build()).unwrap();

    // A corrupted ICMP checksum, then a corrupted quoted IPv4 checksum (with
    // the ICMP checksum made right over it): both dropped, neither delivered.
    let mut bad_icmp = icmp_error(11, 0, &quote(&with(left.clone(), |f| f.options.clear())));
    bad_icmp[2] ^= 0x55;
    let mut bad_inner = quote(&with(left.clone(), |f| f.options.clear()));
    bad_inner[10] ^= 0x55;
    for (name, payload) in [("ICMP checksum", bad_icmp), ("quoted IPv4 checksum", icmp_error(11, 0, &bad_inner))] {
        assert_eq!(gw.run(Side::Wan, &error_from_wan(payload).build()).unwrap().action, DROP, "{name}");
    }
    assert_eq!(gw.datapath.counter(Reason::DropBadIcmpError).unwrap(), 2);

    // The other way: an inside host's error quoting an inbound datagram with IHL 8.
    let long_options = vec![148, 4, 0, 0, 1, 1, 1, 1, 1, 1, 1, 0];
    let received = with(Frame::udp(REMOTE_UDP, UDP_INSIDE), |f| (f.ttl, f.options) = (63, long_options.clone()));
    let sent_by_remote = with(Frame::udp(REMOTE_UDP, UDP_EXTERNAL), |f| (f.ttl, f.options) = (63, long_options.clone()));
    let mut input = Frame::new(addr::LAN_HOST, addr::REMOTE, L4::Raw { proto: proto::ICMP });
    input.payload = icmp_error(3, 3, &quote_with_options(&received));
    let input = from_lan(input);
    let mut expected = Frame::new(addr::EXTERNAL, addr::REMOTE, L4::Raw { proto: proto::ICMP });
    expected.ttl = input.ttl - 1;
    expected.payload = icmp_error(3, 3, &quote_with_options(&sent_by_remote));
    let run = gw.run(Side::Lan, &input.build()).unwrap();
    assert_eq!(run.action, REDIRECT);
    assert_frames_eq("inside error, quote with options", &run.frame, &expected.with_macs(addr::WAN_GW_MAC, addr::WAN_NEXT_HOP_MAC).build()).unwrap();
}

/// A frame's IPv4 header, options included, and the 8 bytes after it.
fn quote_with_options(f: &Frame) -> Vec<u8> {
    let packet = &f.build()[14..];
    let ihl = usize::from(packet[0] & 0x0f) * 4;
    packet[..ihl + 8].to_vec()
}

/// The ICMP Fragmentation Needed message (type 3 code 4, RFC 792) with the
/// next-hop MTU in the low half of the second word (RFC 1191), quoting
/// `quoted`, with a valid checksum.
fn frag_needed_message(mtu: u16, quoted: &[u8]) -> Vec<u8> {
    let mut msg = vec![3, 4, 0, 0, 0, 0];
    msg.extend_from_slice(&mtu.to_be_bytes());
    msg.extend_from_slice(quoted);
    let c = checksum::checksum(&msg);
    msg[2..4].copy_from_slice(&c.to_ne_bytes());
    msg
}

/// What the gateway sends back for the too-big frame `input`: from `from`
/// (its own address on that side) to the sender, TTL 64, DF set and ID 0 (an
/// atomic datagram), MACs swapped and VLAN tags kept, quoting the sender's
/// IPv4 header, options included, and the first 8 L4 bytes exactly as sent.
fn frag_needed_for(input: &Frame, from: Ipv4Addr, mtu: u16) -> Frame {
    let bytes = input.build();
    let p = packet::parse_ipv4(&bytes).unwrap();
    let quoted = &bytes[p.l3_offset..p.l3_offset + p.ip.len() + 8];
    let mut error = Frame::new(from, input.src, L4::Raw { proto: proto::ICMP });
    (error.ttl, error.frag, error.id, error.vlans) = (64, 0x4000, 0, input.vlans.clone());
    error.payload = frag_needed_message(mtu, quoted);
    error.with_macs(input.dst_mac, input.src_mac)
}

/// Don't fragment.
fn df(f: &mut Frame) {
    f.frag = 0x4000;
}

/// RFC 4787 REQ-13: a DF packet too big for the egress once translated is
/// answered with ICMP Fragmentation Needed and the next-hop MTU, built in XDP
/// and sent back out of the ingress port (redirected to it), never passed to the
/// kernel. Outbound (WAN MTU 1400) the error comes from the gateway's LAN
/// address and quotes the inside host's untranslated packet; inbound (LAN MTU
/// 1200) from the external address, quoting the remote's packet as sent to
/// the external endpoint. Without DF the packet is dropped: the gateway does
/// not fragment. Packets that fit are translated as before.
#[test]
fn rfc4787_req13_df_too_big_is_answered_with_frag_needed() {
    require_root!();
    let mut gw = gateway("fragneed").unwrap();
    gw.ns.ip(&["link", "set", "wan0", "mtu", "1400"]).unwrap();
    gw.ns.ip(&["link", "set", "lan0", "mtu", "1200"]).unwrap();
    let host_b = Ipv4Addr::new(10, 77, 1, 11);
    gw.ns.ip(&["neigh", "replace", "10.77.1.11", "lladdr", "02:00:00:00:01:11", "dev", "lan0", "nud", "permanent"]).unwrap();
    gw.map((host_b, 6000), (addr::EXTERNAL, 20500), proto::UDP).unwrap();
    use Side::{Lan, Wan};
    let big = |n: usize| move |f: &mut Frame| {
        df(f);
        payload(n)(f);
    };
    let vlan_and_options = |f: &mut Frame| {
        f.vlans = vec![100];
        f.options = vec![1, 1, 1, 0];
    };
    // 20 + 20 + 1361 = 1401 bytes: one more than the WAN takes.
    let tcp_big = with(tcp_out(), big(1361));
    let udp_tagged = with(with(udp_out(), big(1400)), vlan_and_options);
    let udp_partial = partial(with(udp_out(), big(1400)));
    let ping_big = with(icmp_out(), big(1400));
    let inbound = with(udp_in(), big(1300));
    let hairpin_big = with(from_lan(Frame::udp(UDP_INSIDE, (addr::EXTERNAL, 20500))), big(1300));
    let fits = with(udp_out(), big(1352));
    let cases = vec![
        case("tcp out, DF, 1401 bytes", Lan, tcp_big.clone(), REDIRECT, Some(frag_needed_for(&tcp_big, addr::LAN_GW, 1400)), Reason::FragNeededSent),
        case(
            "udp out, DF, 802.1Q tag and IP options (quoted whole)",
            Lan,
            udp_tagged.clone(),
            REDIRECT,
            Some(frag_needed_for(&udp_tagged, addr::LAN_GW, 1400)),
            Reason::FragNeededSent,
        ),
        case(
            "udp out, DF, partial checksum quoted as sent",
            Lan,
            udp_partial.clone(),
            REDIRECT,
            Some(frag_needed_for(&udp_partial, addr::LAN_GW, 1400)),
            Reason::FragNeededSent,
        ),
        case("echo request out, DF", Lan, ping_big.clone(), REDIRECT, Some(frag_needed_for(&ping_big, addr::LAN_GW, 1400)), Reason::FragNeededSent),
        case(
            "udp in, DF, too big for the LAN: from the external address",
            Wan,
            inbound.clone(),
            REDIRECT,
            Some(frag_needed_for(&inbound, addr::EXTERNAL, 1200)),
            Reason::FragNeededSent,
        ),
        case(
            "hairpinned udp, DF, too big for the LAN",
            Lan,
            hairpin_big.clone(),
            REDIRECT,
            Some(frag_needed_for(&hairpin_big, addr::LAN_GW, 1200)),
            Reason::FragNeededSent,
        ),
        case("udp out, no DF, too big: dropped, not fragmented", Lan, with(udp_out(), payload(1400)), DROP, None, Reason::DropTooBigForEgress),
        case(
            "udp out, DF, 1400 bytes: fits, translated",
            Lan,
            fits.clone(),
            REDIRECT,
            Some(translated_out(fits, UDP_EXTERNAL)),
            Reason::TranslatedOut,
        ),
    ];
    run_cases(&gw, cases).unwrap();

    // New flows: the first packet claims a queued port, then gets the same
    // answer. Never passed to the kernel, which would forward it untranslated
    // (the route lookup leaves the egress out when the packet is too big).
    for (session, port) in [(40, 24700), (41, 24701)] {
        gw.datapath.push_free_port(proto::UDP, nat_common::FreePort { session, port, _pad: 0 }).unwrap();
    }
    let new_flow = with(from_lan(Frame::udp((addr::LAN_HOST, 7100), REMOTE_UDP)), big(1400));
    let new_flow_no_df = with(from_lan(Frame::udp((addr::LAN_HOST, 7101), REMOTE_UDP)), payload(1400));
    let cases = vec![
        case(
            "new udp flow, DF, too big",
            Lan,
            new_flow.clone(),
            REDIRECT,
            Some(frag_needed_for(&new_flow, addr::LAN_GW, 1400)),
            Reason::FragNeededSent,
        ),
        case("new udp flow, no DF, too big: dropped, not passed", Lan, new_flow_no_df, DROP, None, Reason::DropTooBigForEgress),
    ];
    run_cases(&gw, cases).unwrap();

    let errors = [tcp_big, udp_tagged, udp_partial, ping_big, inbound, hairpin_big, new_flow];
    for input in &errors {
        let run = gw.run(if input.src == addr::REMOTE { Wan } else { Lan }, &input.build()).unwrap();
        packet::verify_checksums(&run.frame).unwrap_or_else(|e| panic!("bad {e} in the error about {:?}", input.l4));
    }
}

/// Binds the calling thread to one CPU (per-CPU maps must be read on it).
fn pin_to_cpu(cpu: usize) {
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set), 0, "sched_setaffinity");
    }
}

/// RFC 4787 REQ-13, rate limited: each CPU sends at most
/// `FRAG_NEEDED_BURST` errors back to back, then `FRAG_NEEDED_PER_SEC`;
/// the rest are dropped and counted.
#[test]
fn rfc4787_req13_frag_needed_is_rate_limited() {
    require_root!();
    use nat_common::icmp::{FRAG_NEEDED_BURST, RateLimit};
    pin_to_cpu(0);
    let gw = gateway("fragrate").unwrap();
    gw.ns.ip(&["link", "set", "wan0", "mtu", "1400"]).unwrap();
    let input = with(tcp_out(), |f| {
        df(f);
        payload(1400)(f);
    })
    .build();
    let tries = FRAG_NEEDED_BURST + 10;
    let started = std::time::Instant::now();
    let sent = (0..tries).filter(|_| gw.run(Side::Lan, &input).unwrap().action == REDIRECT).count() as u64;
    let refills = started.elapsed().as_nanos() as u64 / RateLimit::COST_NS + 1;
    let limited = gw.datapath.counter(Reason::FragNeededRateLimited).unwrap();
    assert_eq!(gw.datapath.counter(Reason::FragNeededSent).unwrap(), sent);
    assert_eq!(sent + limited, tries, "every refused error is counted");
    assert!(sent >= FRAG_NEEDED_BURST && sent <= FRAG_NEEDED_BURST + refills, "{sent} errors sent, burst {FRAG_NEEDED_BURST}");
    assert!(limited > 0, "nothing was rate limited");
}

/// RFC 5508 REQ-7 (hairpinned ICMP errors): host B's Port Unreachable about
/// a datagram hairpinned to it from host A (B saw it from A's external
/// endpoint, so it answers to the external address) reaches A from the
/// external address, the outside view of B, quoting what A sent: its inside
/// endpoint to B's external endpoint. Every checksum right; an error to the
/// external address quoting nobody's mapping is the gateway's own.
#[test]
fn rfc5508_req7_hairpinned_icmp_errors_reach_the_sender() {
    require_root!();
    let mut gw = gateway("hairpinerr").unwrap();
    let host_b = Ipv4Addr::new(10, 77, 1, 11);
    let host_b_mac = [0x02, 0, 0, 0, 0x01, 0x11];
    gw.ns.ip(&["neigh", "replace", "10.77.1.11", "lladdr", "02:00:00:00:01:11", "dev", "lan0", "nud", "permanent"]).unwrap();
    gw.map((host_b, 6000), (addr::EXTERNAL, 20500), proto::UDP).unwrap();
    gw.map((host_b, 6001), (addr::EXTERNAL, 20501), proto::TCP).unwrap();

    let cases = [
        // (what A sent, what B received)
        (Frame::udp(UDP_INSIDE, (addr::EXTERNAL, 20500)), Frame::udp(UDP_EXTERNAL, (host_b, 6000))),
        (Frame::tcp(TCP_INSIDE, (addr::EXTERNAL, 20501)), Frame::tcp(TCP_EXTERNAL, (host_b, 6001))),
    ];
    for (sent_by_a, received_by_b) in cases {
        let (sent_by_a, received_by_b) = (with(sent_by_a, |f| f.ttl = 63), with(received_by_b, |f| f.ttl = 63));
        let mut input = Frame::new(host_b, addr::EXTERNAL, L4::Raw { proto: proto::ICMP });
        input.payload = icmp_error(3, 3, &quote(&received_by_b));
        let input = input.with_macs(host_b_mac, addr::LAN_GW_MAC);
        let mut expected = Frame::new(addr::EXTERNAL, addr::LAN_HOST, L4::Raw { proto: proto::ICMP });
        expected.ttl = input.ttl - 1;
        expected.payload = icmp_error(3, 3, &quote(&sent_by_a));
        let expected = expected.with_macs(addr::LAN_GW_MAC, addr::LAN_HOST_MAC);
        let run = gw.run(Side::Lan, &input.build()).unwrap();
        let name = format!("{:?}", sent_by_a.l4);
        assert_eq!(run.action, REDIRECT, "{name}: {}", xdp_action::name(run.action));
        assert_frames_eq(&name, &run.frame, &expected.build()).unwrap();
        packet::verify_checksums(&run.frame).unwrap();
    }
    assert_eq!(gw.datapath.counter(Reason::IcmpErrorHairpinned).unwrap(), 2);

    // About a datagram from an external port nobody has: the gateway's own.
    let unmapped = with(Frame::udp((addr::EXTERNAL, 33000), (host_b, 6000)), |f| f.ttl = 63);
    let mut input = Frame::new(host_b, addr::EXTERNAL, L4::Raw { proto: proto::ICMP });
    input.payload = icmp_error(3, 3, &quote(&unmapped));
    let input = input.with_macs(host_b_mac, addr::LAN_GW_MAC);
    assert_eq!(gw.run(Side::Lan, &input.build()).unwrap().action, PASS);
}

/// Frames from the LAN whose sources the gateway refuses (BCP 38 / RFC
/// 2827, RFC 1812 5.3.7) and from the WAN (BCP 84 / RFC 3704, RFC 6890),
/// each dropped under its own reason before anything is translated or passed
/// on, while traffic for the gateway itself (DHCP from 0.0.0.0 among it)
/// still passes.
fn source_cases() -> Vec<Case> {
    use Side::{Lan, Wan};
    let at = |a: [u8; 4]| Ipv4Addr::from(a);
    let mut cases = Vec::new();
    // LAN: outside the inside prefix 10.77.1.0/24, special-purpose, the
    // gateway's external address, a WAN address: never translated.
    for src in [at([10, 0, 0, 5]), at([0, 0, 0, 0]), at([127, 0, 0, 1]), at([224, 0, 0, 5]), addr::EXTERNAL, addr::REMOTE] {
        cases.push(case(
            "LAN source outside the inside prefixes to the WAN",
            Lan,
            from_lan(Frame::udp((src, 5353), REMOTE_UDP)),
            DROP,
            None,
            Reason::DropLanSourceNotInside,
        ));
    }
    // Within the prefix: the LAN's network and broadcast addresses and the
    // gateway's own LAN address (RFC 1812 5.3.7).
    for src in [at([10, 77, 1, 0]), at([10, 77, 1, 255]), addr::LAN_GW] {
        cases.push(case("LAN source reserved to the gateway or the subnet", Lan, from_lan(Frame::udp((src, 5353), REMOTE_UDP)), DROP, None, Reason::DropLanSourceReserved));
    }
    cases.extend([
        case(
            "LAN TCP SYN from a forged source is not set up",
            Lan,
            from_lan(Frame::tcp((at([10, 9, 9, 9]), 40000), REMOTE_TCP)),
            DROP,
            None,
            Reason::DropLanSourceNotInside,
        ),
        case(
            "LAN forged source with TTL 1 gets no Time Exceeded from the kernel",
            Lan,
            from_lan(with(Frame::udp((at([10, 9, 9, 9]), 5353), REMOTE_UDP), |f| f.ttl = 1)),
            DROP,
            None,
            Reason::DropLanSourceNotInside,
        ),
        case(
            "LAN forged source routed back inside is not forwarded",
            Lan,
            from_lan(Frame::udp((at([10, 9, 9, 9]), 5353), (addr::LAN_HOST, 53))),
            DROP,
            None,
            Reason::DropLanSourceNotInside,
        ),
        case(
            "LAN forged source echo request to the WAN",
            Lan,
            from_lan(Frame::icmp_echo(at([192, 168, 0, 1]), addr::REMOTE, ICMP_ECHO_REQUEST, 77)),
            DROP,
            None,
            Reason::DropLanSourceNotInside,
        ),
        case(
            "LAN forged source GRE to the WAN",
            Lan,
            from_lan(Frame::new(at([192, 168, 0, 1]), addr::REMOTE, L4::Raw { proto: 47 })),
            DROP,
            None,
            Reason::DropLanSourceNotInside,
        ),
        case(
            "LAN forged later fragment to the WAN is not parked",
            Lan,
            from_lan(with(Frame::udp((at([10, 9, 9, 9]), 5353), REMOTE_UDP), |f| f.frag = 0x0010)),
            DROP,
            None,
            Reason::DropLanSourceNotInside,
        ),
        case(
            "LAN forged source to another host's external endpoint is not hairpinned",
            Lan,
            from_lan(Frame::udp((at([10, 9, 9, 9]), 5353), UDP_EXTERNAL)),
            PASS,
            None,
            Reason::PassLocal,
        ),
        case(
            "LAN forged source to the gateway itself passes (its kernel's to judge)",
            Lan,
            from_lan(Frame::udp((at([10, 9, 9, 9]), 5353), (addr::LAN_GW, 53))),
            PASS,
            None,
            Reason::PassLocal,
        ),
        case(
            "DHCP discover from 0.0.0.0 to 255.255.255.255 passes to the gateway's DHCP server",
            Lan,
            from_lan(Frame::udp((at([0, 0, 0, 0]), 68), (Ipv4Addr::BROADCAST, 67))),
            PASS,
            None,
            Reason::PassLocal,
        ),
        case(
            "WAN source in the inside prefix through a mapping",
            Wan,
            from_wan(Frame::udp((at([10, 77, 1, 11]), 53), UDP_EXTERNAL)),
            DROP,
            None,
            Reason::DropWanSourceInside,
        ),
        case(
            "WAN source in the inside prefix to the gateway itself",
            Wan,
            from_wan(Frame::icmp_echo(addr::LAN_HOST, addr::EXTERNAL, ICMP_ECHO_REQUEST, 1)),
            DROP,
            None,
            Reason::DropWanSourceInside,
        ),
        case(
            "WAN source the gateway's own external address",
            Wan,
            from_wan(Frame::udp((addr::EXTERNAL, 53), UDP_EXTERNAL)),
            DROP,
            None,
            Reason::DropWanSourceOwn,
        ),
        case(
            "WAN echo request to an inside host is not forwarded in",
            Wan,
            from_wan(Frame::icmp_echo(addr::REMOTE, addr::LAN_HOST, ICMP_ECHO_REQUEST, 1)),
            DROP,
            None,
            Reason::DropInboundTransit,
        ),
        case(
            "WAN GRE to an inside host is not forwarded in",
            Wan,
            from_wan(Frame::new(addr::REMOTE, addr::LAN_HOST, L4::Raw { proto: 47 })),
            DROP,
            None,
            Reason::DropInboundTransit,
        ),
        case(
            "WAN ICMP error addressed to an inside host about no mapped flow is not forwarded in",
            Wan,
            {
                let mut f = Frame::new(addr::REMOTE, addr::LAN_HOST, L4::Raw { proto: proto::ICMP });
                f.payload = icmp_error(3, 1, &quote(&Frame::udp((addr::LAN_HOST, 9), REMOTE_UDP)));
                from_wan(f)
            },
            DROP,
            None,
            Reason::DropInboundTransit,
        ),
    ]);
    // RFC 6890: no packet comes from these, on either side of a router.
    for src in [at([0, 0, 0, 0]), at([127, 0, 0, 1]), at([224, 0, 0, 5]), at([240, 0, 0, 1]), Ipv4Addr::BROADCAST] {
        cases.push(case("WAN source special-purpose", Wan, from_wan(Frame::udp((src, 53), UDP_EXTERNAL)), DROP, None, Reason::DropWanSourceMartian));
    }
    cases
}

/// RFC 1812 5.2.2: headers that lie, from either side, each dropped under
/// its reason before anything else looks at them.
fn header_cases() -> Vec<Case> {
    use Side::{Lan, Wan};
    let raw = |name, side, frame: Vec<u8>, reason| Case { name, side, input: frame, action: DROP, output: None, reason };
    let udp_out = || from_lan(Frame::udp(UDP_INSIDE, REMOTE_UDP)).build();
    let udp_in = || from_wan(Frame::udp(REMOTE_UDP, UDP_EXTERNAL)).build();
    let tcp_out = || from_lan(Frame::tcp(TCP_INSIDE, REMOTE_TCP)).build();
    // IPv4 header from byte 14, UDP or TCP from 34 (no options).
    let bad_checksum = |mut f: Vec<u8>| {
        f[24] ^= 0x40;
        f
    };
    // The checksum is right: only the option lies (length 10 in a 4-byte area).
    let bad_option = with(from_lan(Frame::udp(UDP_INSIDE, REMOTE_UDP)), |f| f.options = vec![1, 7, 10, 0]).build();
    vec![
        raw("LAN bad IPv4 header checksum", Lan, bad_checksum(udp_out()), Reason::DropBadIpChecksum),
        raw("WAN bad IPv4 header checksum", Wan, bad_checksum(udp_in()), Reason::DropBadIpChecksum),
        raw(
            "LAN bad checksum over options",
            Lan,
            {
                let mut f = with(from_lan(Frame::udp(UDP_INSIDE, REMOTE_UDP)), |f| f.options = vec![1, 1, 1, 0]).build();
                f[36] = 0; // NOP NOP EOL EOL: still well formed, but not what the checksum covers
                f
            },
            Reason::DropBadIpChecksum,
        ),
        raw("LAN option longer than the header", Lan, bad_option, Reason::DropBadIpHeader),
        raw(
            "WAN option length below 2",
            Wan,
            with(from_wan(Frame::udp(REMOTE_UDP, UDP_EXTERNAL)), |f| f.options = vec![1, 7, 1, 0]).build(),
            Reason::DropBadIpHeader,
        ),
        raw("LAN IHL claims options the UDP header fills", Lan, packet::edit_ipv4(udp_out(), |ip| ip[0] = 0x46), Reason::DropBadIpHeader),
        raw("WAN version 6 in an IPv4 frame", Wan, packet::edit_ipv4(udp_in(), |ip| ip[0] = 0x65), Reason::DropBadIpHeader),
        raw("LAN total length shorter than the header", Lan, packet::edit_ipv4(udp_out(), |ip| ip[2..4].copy_from_slice(&16u16.to_be_bytes())), Reason::DropBadIpHeader),
        raw(
            "LAN UDP whose total length is 20: the port bytes are past the datagram",
            Lan,
            packet::edit_ipv4(udp_out(), |ip| ip[2..4].copy_from_slice(&20u16.to_be_bytes())),
            Reason::DropBadL4Header,
        ),
        raw(
            "WAN UDP length below its header",
            Wan,
            {
                let mut f = udp_in();
                f[38..40].copy_from_slice(&4u16.to_be_bytes());
                f
            },
            Reason::DropBadL4Header,
        ),
        raw(
            "LAN UDP length beyond the IPv4 payload",
            Lan,
            {
                let mut f = udp_out();
                f[38..40].copy_from_slice(&1000u16.to_be_bytes());
                f
            },
            Reason::DropBadL4Header,
        ),
        raw(
            "LAN TCP data offset below 5",
            Lan,
            {
                let mut f = tcp_out();
                f[34 + 12] = 4 << 4;
                f
            },
            Reason::DropBadL4Header,
        ),
        raw(
            "WAN TCP data offset beyond the IPv4 payload",
            Wan,
            {
                let mut f = from_wan(Frame::tcp(REMOTE_TCP, TCP_EXTERNAL)).build();
                f[34 + 12] = 15 << 4;
                f
            },
            Reason::DropBadL4Header,
        ),
        raw(
            "WAN echo reply cut by the total length",
            Wan,
            packet::edit_ipv4(from_wan(Frame::icmp_echo(addr::REMOTE, addr::EXTERNAL, ICMP_ECHO_REPLY, ICMP_ID_EXTERNAL)).build(), |ip| {
                ip[2..4].copy_from_slice(&24u16.to_be_bytes())
            }),
            Reason::DropBadL4Header,
        ),
    ]
}

/// BCP 38 / BCP 84 / RFC 6890 / RFC 1812 5.3.7: spoofed sources dropped on
/// both sides, each under its reason, traffic for the gateway itself kept.
#[test]
fn spoofed_sources_are_dropped_on_both_sides() {
    require_root!();
    let gw = gateway("spoof").unwrap();
    run_cases(&gw, source_cases()).unwrap();
}

/// RFC 1812 5.2.2: bad IPv4 headers and L4 headers that do not fit the
/// payload are dropped on both sides, each under its reason; a header with
/// well-formed options is still translated (`translation_cases`).
#[test]
fn rfc1812_bad_headers_are_dropped_on_both_sides() {
    require_root!();
    let gw = gateway("hdr").unwrap();
    run_cases(&gw, header_cases()).unwrap();
}

/// BCP 84: the operator's `wan_drop_sources` list drops its prefixes, and
/// only those; without a list nothing is looked up.
#[test]
fn listed_wan_sources_are_dropped() {
    require_root!();
    let mut gw = gateway("listed").unwrap();
    let listed = Ipv4Addr::new(192, 0, 2, 9);
    let from = |src: Ipv4Addr| from_wan(Frame::udp((src, 53), UDP_EXTERNAL));
    run_cases(&gw, vec![case("unlisted before the list", Side::Wan, from(listed), REDIRECT, Some(translated_in(from(listed), UDP_INSIDE)), Reason::TranslatedIn)]).unwrap();
    gw.datapath.set_wan_drop_sources(&[nat_common::Prefix::new(Ipv4Addr::new(192, 0, 2, 0), 24)]).unwrap();
    let mut config = nat_tests::fixture_config(gw.wan_ifindex);
    config.wan_drop_listed = 1;
    gw.datapath.set_config(config).unwrap();
    run_cases(
        &gw,
        vec![
            case("listed", Side::Wan, from(listed), DROP, None, Reason::DropWanSourceListed),
            case("unlisted", Side::Wan, udp_in(), REDIRECT, Some(translated_in(udp_in(), UDP_INSIDE)), Reason::TranslatedIn),
        ],
    )
    .unwrap();
}
