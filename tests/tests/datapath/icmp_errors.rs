//! ICMP errors both ways (RFC 5508): quotes reverted, checksums checked, quoted
//! options walked, hairpinned errors.

use std::net::Ipv4Addr;

use nat_common::{Reason, proto};
use nat_tests::{
    addr, assert_frames_eq,
    packet::{self, Frame, L4},
    require_root,
    xdp_action::{self, DROP, PASS, REDIRECT},
};
use nat_userspace::datapath::Side;

use super::{
    ICMP_ECHO_REQUEST, ICMP_ID_EXTERNAL, ICMP_ID_INSIDE, REMOTE_UDP, TCP_EXTERNAL, TCP_INSIDE,
    UDP_EXTERNAL, UDP_INSIDE, from_lan, from_wan, gateway, icmp_error, quote, udp_in, with,
};

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
    assert!(gw.datapath.inbound_mapping(&nat_common::Endpoint::new(UDP_EXTERNAL.0, UDP_EXTERNAL.1, proto::UDP)).unwrap().is_some());
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
