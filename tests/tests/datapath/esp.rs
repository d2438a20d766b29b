//! IPsec ESP (RFC 4303) through the ESP programs the main ones hand it to:
//! the address of a known SA's packet rewritten both ways with the IPv4
//! header checksum (ESP has none of its own), the SA pair's session stamped,
//! each SPI to its own host when two hosts talk to one peer, a rekeyed SA
//! beside the old one, and every other ESP packet bound across the gateway
//! handed to natd, never passed on untranslated.

use std::net::Ipv4Addr;

use nat_common::{
    MissEvent, Reason,
    esp::{EspKey, EspTarget},
    miss_kind, proto,
};
use nat_tests::{
    TestGateway, addr, mac,
    packet::{Frame, L4},
    require_root,
    xdp_action::{DROP, PASS, REDIRECT},
};
use nat_userspace::datapath::Side;

use super::{Case, case, from_lan, from_wan, gateway, handoff::read_events, run_cases, translated_in, translated_out};

/// A second inside host, with a neighbour entry (its frames are redirected).
const LAN_HOST_2: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 11);
const LAN_HOST_2_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x11];
/// A second peer.
const PEER_2: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 20);

/// SPIs: the host's outbound SA and the peer's inbound one, per host.
const SPI_OUT: u32 = 0xc001_0001;
const SPI_IN: u32 = 0x0bad_0001;
const SPI_OUT_2: u32 = 0xc002_0002;
const SPI_IN_2: u32 = 0x0bad_0002;
/// The session slots of the SA pairs (above the `gateway()` mappings').
const SLOT: u32 = 40;
const SLOT_2: u32 = 41;

fn key(local: Ipv4Addr, peer: Ipv4Addr, spi: u32) -> EspKey {
    EspKey { local_be: u32::from_ne_bytes(local.octets()), peer_be: u32::from_ne_bytes(peer.octets()), spi_be: spi.to_be() }
}

fn target(addr: Ipv4Addr, session: u32) -> EspTarget {
    EspTarget { addr_be: u32::from_ne_bytes(addr.octets()), session }
}

/// Installs an SA pair as natd does once it has learned both SPIs.
fn sa_pair(gw: &mut TestGateway, inside: Ipv4Addr, peer: Ipv4Addr, spi_out: u32, spi_in: u32, slot: u32) {
    gw.datapath.insert_esp_out(key(inside, peer, spi_out), target(addr::EXTERNAL, slot), 0).unwrap();
    gw.datapath.insert_esp_in(key(addr::EXTERNAL, peer, spi_in), target(inside, slot)).unwrap();
}

/// An ESP packet: the SPI, a sequence number and 40 bytes standing for the
/// encrypted payload and integrity check value.
fn esp(src: Ipv4Addr, dst: Ipv4Addr, spi: u32) -> Frame {
    let mut f = Frame::new(src, dst, L4::Raw { proto: proto::ESP });
    f.payload = spi.to_be_bytes().into_iter().chain(7u32.to_be_bytes()).chain((0..40).map(|i| i * 5 + 1)).collect();
    f
}

fn esp_gateway(tag: &str) -> TestGateway {
    let gw = gateway(tag).unwrap();
    gw.ns.ip(&["neigh", "replace", &LAN_HOST_2.to_string(), "lladdr", &mac(LAN_HOST_2_MAC), "dev", "lan0", "nud", "permanent"]).unwrap();
    gw
}

/// RFC 3715 §2.1 done per SA: an outbound packet of a known SA leaves from
/// the external address, an inbound one reaches its host; only the
/// address, the TTL and the IPv4 header checksum change (the output is the
/// frame built afresh with the new address, its checksum computed from
/// scratch), and the SA pair's session is stamped both ways.
#[test]
fn esp_is_translated_both_ways_by_its_sas() {
    require_root!();
    let mut gw = esp_gateway("esp");
    sa_pair(&mut gw, addr::LAN_HOST, addr::REMOTE, SPI_OUT, SPI_IN, SLOT);
    let out = from_lan(esp(addr::LAN_HOST, addr::REMOTE, SPI_OUT));
    let inbound = from_wan(esp(addr::REMOTE, addr::EXTERNAL, SPI_IN));
    use Side::{Lan, Wan};
    gw.datapath.set_clock(7_000_000_000).unwrap();
    run_cases(&gw, vec![case("esp out", Lan, out.clone(), REDIRECT, Some(translated_out(out, (addr::EXTERNAL, 0))), Reason::TranslatedOut)]).unwrap();
    assert_eq!(gw.datapath.liveness(SLOT).unwrap().last_seen_ns, 7_000_000_000, "an outbound packet stamps the SA pair's session");
    gw.datapath.set_clock(9_000_000_000).unwrap();
    run_cases(&gw, vec![case("esp in", Wan, inbound.clone(), REDIRECT, Some(translated_in(inbound, (addr::LAN_HOST, 0))), Reason::TranslatedIn)]).unwrap();
    assert_eq!(gw.datapath.liveness(SLOT).unwrap().last_seen_ns, 9_000_000_000, "an inbound packet stamps the same session");
}

/// A packet of no SA the datapath knows goes to natd, whole, as it came,
/// and is dropped here: outbound (a new SA, the first of a rekey) and
/// inbound (the peer's first packet, whose SPI natd binds, when an SA to
/// that peer awaits its answer; from any other peer it is dropped here),
/// never on to the kernel, which would forward an inside source to the WAN. An SPI known
/// for another peer or host is no SA of this one. ESP that is no transit
/// through the NAT stays the kernel's (routed inside) or is dropped
/// (inbound, not for an external address); a datagram too short for the
/// ESP header is dropped.
#[test]
fn esp_of_no_known_sa_goes_to_natd_never_on() {
    require_root!();
    let mut gw = esp_gateway("espmiss");
    sa_pair(&mut gw, addr::LAN_HOST, addr::REMOTE, SPI_OUT, SPI_IN, SLOT);
    let mut ring = gw.datapath.take_miss_ring().unwrap();
    // An inside host's SA to the peer awaits its answer (natd says so).
    gw.datapath.set_esp_awaited(key(addr::EXTERNAL, addr::REMOTE, 0), true).unwrap();
    let misses: [(&str, Side, Frame); 4] = [
        ("new SA out", Side::Lan, from_lan(esp(addr::LAN_HOST, addr::REMOTE, SPI_OUT_2))),
        ("known SPI, other peer", Side::Lan, from_lan(esp(addr::LAN_HOST, PEER_2, SPI_OUT))),
        ("known SPI, other host", Side::Lan, from_lan(esp(LAN_HOST_2, addr::REMOTE, SPI_OUT)).with_macs(LAN_HOST_2_MAC, addr::LAN_GW_MAC)),
        ("peer's first packet", Side::Wan, from_wan(esp(addr::REMOTE, addr::EXTERNAL, SPI_IN_2))),
    ];
    for (name, side, frame) in misses {
        let frame = frame.build();
        let before = gw.datapath.counter(Reason::EspToDaemon).unwrap();
        let run = gw.run(side, &frame).unwrap();
        assert_eq!(run.action, DROP, "{name}: dropped here, natd sends it on");
        assert_eq!(gw.datapath.counter(Reason::EspToDaemon).unwrap(), before + 1, "{name}");
        let events: Vec<MissEvent> = read_events(&mut ring);
        assert_eq!(events.len(), 1, "{name}");
        assert_eq!(events[0].kind, miss_kind::ESP, "{name}");
        assert_eq!(events[0].frame(), &frame[..], "{name}: natd gets the frame as it arrived");
    }
    let mut short = esp(addr::LAN_HOST, addr::REMOTE, SPI_OUT);
    short.payload.truncate(6);
    use Side::{Lan, Wan};
    let cases: Vec<Case> = vec![
        case("esp out, 6 bytes of ESP", Lan, from_lan(short), DROP, None, Reason::DropEspTruncated),
        case("esp in, not for an external address", Wan, from_wan(esp(addr::REMOTE, addr::LAN_HOST, SPI_IN)), DROP, None, Reason::DropInboundTransit),
        case("esp to the gateway's LAN address", Lan, from_lan(esp(addr::LAN_HOST, addr::LAN_GW, SPI_OUT)), PASS, None, Reason::PassLocal),
        // Nothing awaits an answer from this peer: nobody to bind it to.
        case("unknown SPI from a peer nothing awaits", Wan, from_wan(esp(PEER_2, addr::EXTERNAL, SPI_IN_2)), DROP, None, Reason::DropEspUnknownSpi),
    ];
    run_cases(&gw, cases).unwrap();
    assert!(read_events(&mut ring).is_empty(), "nothing else went to natd");
}

/// Two inside hosts, one peer, one external address: each host's SA pair
/// has its own SPIs, and each reply SPI reaches its own host (with its own
/// MAC), while both leave from the same address. A third SA to another
/// peer needs nothing of theirs.
#[test]
fn two_hosts_to_one_peer_each_get_their_own_replies() {
    require_root!();
    let mut gw = esp_gateway("esptwo");
    sa_pair(&mut gw, addr::LAN_HOST, addr::REMOTE, SPI_OUT, SPI_IN, SLOT);
    sa_pair(&mut gw, LAN_HOST_2, addr::REMOTE, SPI_OUT_2, SPI_IN_2, SLOT_2);
    sa_pair(&mut gw, LAN_HOST_2, PEER_2, SPI_OUT, SPI_IN, 42);
    let out_1 = from_lan(esp(addr::LAN_HOST, addr::REMOTE, SPI_OUT));
    let out_2 = from_lan(esp(LAN_HOST_2, addr::REMOTE, SPI_OUT_2)).with_macs(LAN_HOST_2_MAC, addr::LAN_GW_MAC);
    let out_3 = from_lan(esp(LAN_HOST_2, PEER_2, SPI_OUT)).with_macs(LAN_HOST_2_MAC, addr::LAN_GW_MAC);
    let in_1 = from_wan(esp(addr::REMOTE, addr::EXTERNAL, SPI_IN));
    let in_2 = from_wan(esp(addr::REMOTE, addr::EXTERNAL, SPI_IN_2));
    let in_3 = from_wan(esp(PEER_2, addr::EXTERNAL, SPI_IN));
    let to_host_2 = |f: Frame| translated_in(f, (LAN_HOST_2, 0)).with_macs(addr::LAN_GW_MAC, LAN_HOST_2_MAC);
    use Side::{Lan, Wan};
    let cases: Vec<Case> = vec![
        case("host 1 out", Lan, out_1.clone(), REDIRECT, Some(translated_out(out_1, (addr::EXTERNAL, 0))), Reason::TranslatedOut),
        case("host 2 out", Lan, out_2.clone(), REDIRECT, Some(translated_out(out_2, (addr::EXTERNAL, 0))), Reason::TranslatedOut),
        case("host 2 out, other peer", Lan, out_3.clone(), REDIRECT, Some(translated_out(out_3, (addr::EXTERNAL, 0))), Reason::TranslatedOut),
        case("reply to host 1", Wan, in_1.clone(), REDIRECT, Some(translated_in(in_1, (addr::LAN_HOST, 0))), Reason::TranslatedIn),
        case("reply to host 2", Wan, in_2.clone(), REDIRECT, Some(to_host_2(in_2)), Reason::TranslatedIn),
        case("other peer's reply to host 2", Wan, in_3.clone(), REDIRECT, Some(to_host_2(in_3)), Reason::TranslatedIn),
    ];
    run_cases(&gw, cases).unwrap();
}

/// A rekey (RFC 7296 §2.8): the new SA pair works beside the old one
/// while both are installed, each on its own session; once natd removes
/// the old pair, its packets go to natd again (inbound, only while an SA
/// to the peer awaits an answer).
#[test]
fn a_rekeyed_sa_works_beside_the_old_one_until_that_is_removed() {
    require_root!();
    let mut gw = esp_gateway("esprekey");
    sa_pair(&mut gw, addr::LAN_HOST, addr::REMOTE, SPI_OUT, SPI_IN, SLOT);
    sa_pair(&mut gw, addr::LAN_HOST, addr::REMOTE, SPI_OUT_2, SPI_IN_2, SLOT_2);
    let old_out = from_lan(esp(addr::LAN_HOST, addr::REMOTE, SPI_OUT));
    let new_out = from_lan(esp(addr::LAN_HOST, addr::REMOTE, SPI_OUT_2));
    let old_in = from_wan(esp(addr::REMOTE, addr::EXTERNAL, SPI_IN));
    let new_in = from_wan(esp(addr::REMOTE, addr::EXTERNAL, SPI_IN_2));
    use Side::{Lan, Wan};
    gw.datapath.set_clock(3_000_000_000).unwrap();
    let cases: Vec<Case> = vec![
        case("new SA out", Lan, new_out.clone(), REDIRECT, Some(translated_out(new_out.clone(), (addr::EXTERNAL, 0))), Reason::TranslatedOut),
        case("new SA in", Wan, new_in.clone(), REDIRECT, Some(translated_in(new_in.clone(), (addr::LAN_HOST, 0))), Reason::TranslatedIn),
        case("old SA out", Lan, old_out.clone(), REDIRECT, Some(translated_out(old_out.clone(), (addr::EXTERNAL, 0))), Reason::TranslatedOut),
        case("old SA in", Wan, old_in.clone(), REDIRECT, Some(translated_in(old_in.clone(), (addr::LAN_HOST, 0))), Reason::TranslatedIn),
    ];
    run_cases(&gw, cases).unwrap();
    assert_eq!(gw.datapath.liveness(SLOT_2).unwrap().last_seen_ns, 3_000_000_000, "the new pair's own session");
    gw.datapath.remove_esp_out(&key(addr::LAN_HOST, addr::REMOTE, SPI_OUT)).unwrap();
    gw.datapath.remove_esp_in(&key(addr::EXTERNAL, addr::REMOTE, SPI_IN)).unwrap();
    let cases: Vec<Case> = vec![
        case("old SA out, removed", Lan, old_out, DROP, None, Reason::EspToDaemon),
        case("old SA in, removed, nothing awaited", Wan, old_in.clone(), DROP, None, Reason::DropEspUnknownSpi),
        case("new SA out, still", Lan, new_out.clone(), REDIRECT, Some(translated_out(new_out, (addr::EXTERNAL, 0))), Reason::TranslatedOut),
        case("new SA in, still", Wan, new_in.clone(), REDIRECT, Some(translated_in(new_in, (addr::LAN_HOST, 0))), Reason::TranslatedIn),
    ];
    run_cases(&gw, cases).unwrap();
    gw.datapath.set_esp_awaited(key(addr::EXTERNAL, addr::REMOTE, 0), true).unwrap();
    run_cases(&gw, vec![case("old SA in, removed, an answer awaited", Wan, old_in, DROP, None, Reason::EspToDaemon)]).unwrap();
}
