//! Hairpinning: inside hosts reaching each other through the external address.

use std::net::Ipv4Addr;

use nat_common::{Reason, proto};
use nat_tests::{
    addr, assert_frames_eq,
    packet::{Frame, L4},
    require_root,
    xdp_action::{PASS, REDIRECT},
};
use nat_userspace::datapath::Side;

use super::{ICMP_ECHO_REQUEST, ICMP_ID_INSIDE, UDP_EXTERNAL, UDP_INSIDE, from_lan, gateway};

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
