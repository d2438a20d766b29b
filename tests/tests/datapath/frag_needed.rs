//! RFC 4787 REQ-13: Fragmentation Needed built in XDP for DF packets too big
//! for the egress, and its rate limit.

use std::net::Ipv4Addr;

use nat_common::{Reason, checksum, proto};
use nat_tests::{
    addr,
    packet::{self, Frame, L4},
    require_root,
    xdp_action::{DROP, REDIRECT},
};
use nat_userspace::datapath::Side;

use super::{
    REMOTE_UDP, UDP_EXTERNAL, UDP_INSIDE, case, from_lan, gateway, icmp_out, partial, payload,
    run_cases, tcp_out, translated_out, udp_in, udp_out, with,
};

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

/// `input` as the datapath hands it to natd to be cut into fragments:
/// translated outbound to `external`, its MACs as they came (natd sends the
/// IPv4 packet).
fn handed_translated(input: Frame, external: (Ipv4Addr, u16)) -> Frame {
    let (src_mac, dst_mac) = (input.src_mac, input.dst_mac);
    translated_out(input, external).with_macs(src_mac, dst_mac)
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
/// the external endpoint. Without DF the packet is handed to natd to be
/// fragmented (`handoff::too_big_without_df_is_handed_translated_to_be_cut`).
/// Packets that fit are translated as before.
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
        case(
            "udp out, no DF, too big: to natd, translated, to be cut into fragments",
            Lan,
            with(udp_out(), payload(1400)),
            DROP,
            Some(handed_translated(with(udp_out(), payload(1400)), UDP_EXTERNAL)),
            Reason::TooBigToDaemon,
        ),
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
        case(
            "new udp flow, no DF, too big: to natd to be cut, not passed",
            Lan,
            new_flow_no_df.clone(),
            DROP,
            Some(handed_translated(new_flow_no_df, (addr::EXTERNAL, 24701))),
            Reason::TooBigToDaemon,
        ),
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
