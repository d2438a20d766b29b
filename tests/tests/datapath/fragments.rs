//! Fragments (RFC 4787 REQ-14): in order, out of order through natd, state
//! expiry, filtering.

use nat_common::{Reason, checksum, miss_kind};
use nat_tests::{
    addr, assert_frames_eq,
    packet::{self, Frame},
    require_root,
    xdp_action::{self, DROP, PASS, REDIRECT},
};
use nat_userspace::datapath::Side;

use super::{
    ICMP_ID_EXTERNAL, ICMP_ID_INSIDE, TCP_EXTERNAL, UDP_EXTERNAL, UDP_INSIDE, filtering_gateway,
    gateway, icmp_in, icmp_out, tcp_out, translated_in, translated_out, udp_in, udp_out,
};

/// The ring's items, raw (`MissEvent`s, `ClaimEvent`s and `FragEvent`s).
fn read_items(ring: &mut aya::maps::RingBuf<aya::maps::MapData>) -> Vec<Vec<u8>> {
    let mut items = Vec::new();
    while let Some(item) = ring.next() {
        items.push(item.to_vec());
    }
    items
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
        let ev = nat_tests::handed_off(item);
        assert_eq!((ev.kind, ev.ingress_ifindex, ev.l3_offset), (miss_kind::FRAGMENT_OUT, gw.lan_ifindex, 14));
        assert_eq!(ev.frame(), &frame[..], "natd gets the fragment as it arrived");
    }

    // natd parks them and marks the datagram; its first fragment passes.
    let key = nat_userspace::packet::Ipv4::read(&out[0][14..]).unwrap().frag_key(nat_common::frag_dir::OUT);
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
    let ev = nat_tests::handed_off(&items[0]);
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
    assert_eq!(nat_tests::handed_off(&items[0]).kind, miss_kind::FRAGMENT_OUT);
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
