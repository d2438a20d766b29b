//! Translation both ways (TCP, UDP, ICMP echo; options, VLAN tags, TTL), and
//! partial checksums (TX offload) finished on the way.

use nat_common::{Reason, checksum, proto};
use nat_tests::{
    addr, assert_frames_eq,
    packet::{self, Frame, L4},
    require_root,
    xdp_action::{self, REDIRECT},
};
use nat_userspace::datapath::Side;

use super::{
    Case, ICMP_ID_EXTERNAL, ICMP_ID_INSIDE, TCP_EXTERNAL, TCP_INSIDE, UDP_EXTERNAL, UDP_INSIDE,
    case, gateway, icmp_in, icmp_out, partial, payload, run_cases, tcp_in, tcp_out, translated_in,
    translated_out, udp_in, udp_out, with,
};

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

/// A side whose frames come off a wire (`GatewayConfig::wire_ingress`: a
/// NIC's driver runs the program) is not tested for partial checksums: a
/// full one is translated as always, a partial one only incrementally (no
/// NIC hands over such a frame). The other side is still tested.
#[test]
fn frames_off_a_wire_are_not_tested_for_partial_checksums() {
    require_root!();
    let mut gw = gateway("wire").unwrap();
    gw.datapath.set_config(nat_tests::fixture_config(gw.wan_ifindex).with_wire_ingress(true, false)).unwrap();
    run_cases(&gw, vec![
        case("tcp out off a wire, full checksum", Side::Lan, tcp_out(), REDIRECT, Some(translated_out(tcp_out(), TCP_EXTERNAL)), Reason::TranslatedOut),
        case(
            "udp in, partial checksum, the WAN side not off a wire",
            Side::Wan,
            partial(with(udp_in(), payload(15))),
            REDIRECT,
            Some(translated_in(with(udp_in(), payload(15)), UDP_INSIDE)),
            Reason::TranslatedIn,
        ),
    ])
    .unwrap();
    let run = gw.run(Side::Lan, &partial(tcp_out()).build()).unwrap();
    assert_eq!(run.action, REDIRECT, "{}", xdp_action::name(run.action));
    let full = translated_out(tcp_out(), TCP_EXTERNAL).build();
    // TCP's checksum field: Ethernet 14, IPv4 20, then 16 bytes in.
    let field = 14 + 20 + 16..14 + 20 + 18;
    assert_ne!(run.frame[field.clone()], full[field.clone()], "the partial checksum was finished: the LAN side was tested");
    let (mut got, mut want) = (run.frame.clone(), full);
    got[field.clone()].fill(0);
    want[field].fill(0);
    assert_frames_eq("partial, off a wire", &got, &want).unwrap();
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
