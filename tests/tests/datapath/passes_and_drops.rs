//! What is not translated: passed to the kernel or dropped, each under its
//! reason; truncated frames; egress through an interface natd does not manage.

use std::net::Ipv4Addr;

use nat_common::{Reason, proto};
use nat_tests::{
    addr,
    packet::{self, Frame, L4},
    require_root,
    xdp_action::{self, DROP, PASS, REDIRECT},
};
use nat_userspace::datapath::Side;

use super::{
    Case, ICMP_ECHO_REQUEST, REMOTE_TCP, REMOTE_UDP, UDP_EXTERNAL, UDP_INSIDE, case, from_lan,
    from_wan, gateway, run_cases, tcp_out, udp_in, with,
};

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

/// A redirect to one of the gateway's own interfaces that fails (natd took
/// it out of the devmap, as it does when an interface goes away) is counted
/// as such, not as an unmanaged egress.
#[test]
fn a_failed_redirect_is_counted_as_such() {
    require_root!();
    let mut gw = gateway("redirect").unwrap();
    gw.datapath.remove_tx_port(gw.lan_ifindex).unwrap();
    let run = gw.run(Side::Wan, &udp_in().build()).unwrap();
    assert_eq!(run.action, DROP);
    assert_eq!(gw.datapath.counter(Reason::DropRedirectFailed).unwrap(), 1);
    assert_eq!(gw.datapath.counter(Reason::DropEgressUnmanaged).unwrap(), 0);
}
