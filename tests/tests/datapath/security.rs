//! Source and header checks: spoofed sources (BCP 38/84, RFC 6890), RFC 1812
//! headers, listed WAN sources.

use std::net::Ipv4Addr;

use nat_common::{Reason, proto};
use nat_tests::{
    addr,
    packet::{self, Frame, L4},
    require_root,
    xdp_action::{DROP, PASS, REDIRECT},
};
use nat_userspace::datapath::Side;

use super::{
    Case, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, ICMP_ID_EXTERNAL, REMOTE_TCP, REMOTE_UDP,
    TCP_EXTERNAL, TCP_INSIDE, UDP_EXTERNAL, UDP_INSIDE, case, from_lan, from_wan, gateway,
    icmp_error, quote, run_cases, translated_in, udp_in, with,
};

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
