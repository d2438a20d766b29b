//! Hand-offs to natd through the ring: a miss, a translated frame whose
//! inside host has no neighbour entry, and one too long for its egress
//! with DF clear.

use nat_common::{MissEvent, Reason, miss_kind};
use nat_tests::{
    addr,
    packet::{self, Frame},
    require_root,
    xdp_action::DROP,
};
use nat_userspace::datapath::Side;

use super::{
    REMOTE_UDP, UNRESOLVED_EXTERNAL, UNRESOLVED_INSIDE, from_lan, from_wan, gateway, partial,
    payload, with,
};

pub(super) fn read_events(ring: &mut aya::maps::RingBuf<aya::maps::MapData>) -> Vec<MissEvent> {
    let mut events = Vec::new();
    while let Some(item) = ring.next() {
        events.push(nat_tests::handed_off(&item));
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

/// RFC 791 / RFC 1812: a packet longer than the egress MTU with DF clear is
/// fragmented by a router. XDP cannot make several packets of one, so the
/// datapath translates it (a partial checksum finished) and hands it to
/// natd with the MTU the route lookup gave, both ways; natd cuts it.
#[test]
fn too_big_without_df_is_handed_translated_to_be_cut() {
    require_root!();
    let mut gw = gateway("toobig").unwrap();
    gw.ns.ip(&["link", "set", "wan0", "mtu", "1400"]).unwrap();
    gw.ns.ip(&["link", "set", "lan0", "mtu", "1200"]).unwrap();
    let mut ring = gw.datapath.take_miss_ring().unwrap();
    let outbound = partial(with(from_lan(Frame::udp(super::UDP_INSIDE, REMOTE_UDP)), payload(1400)));
    let inbound = with(from_wan(Frame::udp(REMOTE_UDP, super::UDP_EXTERNAL)), payload(1300));
    for (side, input, mtu, src, dst) in [
        (Side::Lan, &outbound, 1400, addr::EXTERNAL, REMOTE_UDP.0),
        (Side::Wan, &inbound, 1200, REMOTE_UDP.0, super::UDP_INSIDE.0),
    ] {
        let run = gw.run(side, &input.build()).unwrap();
        assert_eq!(run.action, DROP, "{side:?}: not sent whole");
        let events = read_events(&mut ring);
        assert_eq!(events.len(), 1, "{side:?}");
        assert_eq!((events[0].kind, events[0].mtu), (miss_kind::TOO_BIG, mtu), "{side:?}: the egress MTU to cut to");
        let translated = packet::parse_ipv4(events[0].frame()).unwrap();
        assert_eq!((translated.src(), translated.dst()), (src, dst), "{side:?}: translated");
        assert_eq!(translated.ttl(), 63, "{side:?}: a hop");
        packet::verify_checksums(events[0].frame()).unwrap();
    }
    assert_eq!(gw.datapath.counter(Reason::TooBigToDaemon).unwrap(), 2);
}
