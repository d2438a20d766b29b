//! Hand-offs to natd through the ring: a miss, and a translated frame whose
//! inside host has no neighbour entry.

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
