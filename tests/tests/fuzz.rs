//! Mutation fuzz through BPF_PROG_TEST_RUN: valid frames of every kind are
//! mutated (bytes flipped, headers cut, lengths lied about) and run through
//! both programs. The programs must never abort, and nothing may leave toward
//! the WAN with an inside source address: neither redirected by the LAN
//! program, nor passed to a kernel that would forward it there.

use std::net::Ipv4Addr;

use nat_common::proto;
use nat_tests::{
    TestGateway, addr,
    packet::{self, Frame, L4},
    require_root,
    xdp_action::{ABORTED, DROP, PASS, REDIRECT},
};
use nat_userspace::datapath::Side;

const FRAMES: u32 = 100_000;

/// xorshift64*: deterministic, so a failure names a reproducible seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn seeds() -> Vec<(Side, Vec<u8>)> {
    let lan = |f: Frame| f.with_macs(addr::LAN_HOST_MAC, addr::LAN_GW_MAC);
    let wan = |f: Frame| f.with_macs(addr::WAN_NEXT_HOP_MAC, addr::WAN_GW_MAC);
    let remote = (addr::REMOTE, 443);
    let mut tagged = lan(Frame::udp((addr::LAN_HOST, 5353), (addr::REMOTE, 53)));
    tagged.vlans = vec![200, 100];
    let mut options = lan(Frame::tcp((addr::LAN_HOST, 40000), remote));
    options.options = vec![1, 1, 1, 0];
    // TX offload checksums take the full-sum path; odd and long payloads.
    let mut partial_tcp = lan(Frame::tcp((addr::LAN_HOST, 40000), remote)).with_partial_checksum();
    partial_tcp.payload = vec![0x5a; 701];
    let mut partial_udp = wan(Frame::udp((addr::REMOTE, 53), (addr::EXTERNAL, 20001))).with_partial_checksum();
    partial_udp.payload = vec![0xa5; 37];
    vec![
        (Side::Lan, lan(Frame::tcp((addr::LAN_HOST, 40000), remote)).build()),
        (Side::Lan, lan(Frame::udp((addr::LAN_HOST, 5353), (addr::REMOTE, 53))).build()),
        (Side::Lan, lan(Frame::icmp_echo(addr::LAN_HOST, addr::REMOTE, 8, 0x1234)).build()),
        (Side::Lan, lan(Frame::tcp((addr::LAN_HOST, 41000), remote)).build()),
        (Side::Lan, lan(Frame::new(addr::LAN_HOST, addr::REMOTE, L4::Raw { proto: 47 })).build()),
        (Side::Lan, tagged.build()),
        (Side::Lan, options.build()),
        (Side::Wan, wan(Frame::tcp(remote, (addr::EXTERNAL, 20000))).build()),
        (Side::Wan, wan(Frame::udp((addr::REMOTE, 53), (addr::EXTERNAL, 20001))).build()),
        (Side::Wan, wan(Frame::icmp_echo(addr::REMOTE, addr::EXTERNAL, 0, 0x5678)).build()),
        (Side::Lan, partial_tcp.build()),
        (Side::Wan, partial_udp.build()),
    ]
}

/// Sources a hostile neighbour picks: special-purpose, inside, the
/// gateway's own, the LAN's network and broadcast, or anything at all.
fn hostile_source(rng: &mut Rng) -> Ipv4Addr {
    let any = Ipv4Addr::from(rng.next() as u32);
    let interesting = [
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::LOCALHOST,
        Ipv4Addr::new(224, 0, 0, 5),
        Ipv4Addr::new(240, 1, 2, 3),
        Ipv4Addr::BROADCAST,
        addr::LAN_HOST,
        Ipv4Addr::new(10, 77, 1, 0),
        Ipv4Addr::new(10, 77, 1, 255),
        addr::LAN_GW,
        addr::EXTERNAL,
        addr::REMOTE,
        any,
    ];
    interesting[rng.below(interesting.len())]
}

/// Writes `source` into the frame's IPv4 header and fixes the header
/// checksum, so the frame gets past the header checks to the source checks.
fn with_source(mut f: Vec<u8>, source: Ipv4Addr) -> Vec<u8> {
    if let Some(l3) = packet::parse_ipv4(&f).map(|p| p.l3_offset) {
        f[l3 + 12..l3 + 16].copy_from_slice(&source.octets());
        let ihl = ((f[l3] & 0x0f) as usize * 4).max(20);
        f[l3 + 10..l3 + 12].fill(0);
        let c = nat_common::checksum::checksum(&f[l3..l3 + ihl]);
        f[l3 + 10..l3 + 12].copy_from_slice(&c.to_ne_bytes());
    }
    f
}

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut f = seed.to_vec();
    match rng.below(5) {
        // A forged source (BCP 38 / BCP 84), the rest intact.
        4 => f = with_source(f, hostile_source(rng)),
        // Flip a few bytes anywhere (headers are in the first 64).
        0 | 1 => {
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(f.len().min(64));
                f[at] = rng.next() as u8;
            }
        }
        // Cut the frame short (test run needs at least an Ethernet header).
        2 => f.truncate(14 + rng.below(f.len() - 13)),
        // Rewrite one IPv4 header field the parser depends on.
        _ => {
            let l3 = packet::parse_ipv4(&f).map_or(14, |p| p.l3_offset);
            let field = [0usize, 2, 3, 6, 8, 9][rng.below(6)];
            if l3 + field < f.len() {
                f[l3 + field] = rng.next() as u8;
            }
        }
    }
    f
}

fn is_inside(a: Ipv4Addr) -> bool {
    a.octets()[..3] == [10, 77, 1]
}

/// RFC 6890 addresses no packet comes from.
fn is_martian(a: Ipv4Addr) -> bool {
    let first = a.octets()[0];
    first == 0 || first == 127 || first >= 224
}

/// A LAN source the gateway may translate (BCP 38): an inside host, not the
/// gateway's own address nor the subnet's network or broadcast address.
fn translatable_lan_source(a: Ipv4Addr) -> bool {
    is_inside(a) && !is_martian(a) && a != addr::LAN_GW && a.octets()[3] != 0 && a.octets()[3] != 255
}

/// The fixture's routing table: where the kernel would forward `dst` if the
/// program passed the packet up with forwarding enabled.
fn kernel_would_forward_to_wan(p: &packet::Parsed) -> bool {
    let dst = p.dst();
    let local = dst == addr::LAN_GW || dst == addr::EXTERNAL || dst.is_loopback();
    let special = dst.is_multicast() || dst.is_broadcast() || dst.octets()[0] == 0 || dst.octets()[0] >= 224;
    let lan_subnet = is_inside(dst);
    let subnet_broadcast = dst == Ipv4Addr::new(10, 77, 1, 255) || dst == Ipv4Addr::new(203, 0, 113, 255);
    // The kernel drops a header with a bad checksum or version before routing.
    let valid = nat_common::checksum::verifies(p.ip, 0) && p.ip[0] >> 4 == 4;
    valid && p.ttl() > 1 && !(local || special || lan_subnet || subnet_broadcast)
}

#[test]
fn mutated_frames_never_abort_and_never_leak_inside_addresses() {
    require_root!();
    let mut gw = TestGateway::new("fuzz").unwrap();
    gw.map((addr::LAN_HOST, 40000), (addr::EXTERNAL, 20000), proto::TCP).unwrap();
    gw.map((addr::LAN_HOST, 5353), (addr::EXTERNAL, 20001), proto::UDP).unwrap();
    gw.map((addr::LAN_HOST, 0x1234), (addr::EXTERNAL, 0x5678), proto::ICMP).unwrap();
    // Keep the miss ring drained so the miss path stays exercised.
    let mut ring = gw.datapath.take_miss_ring().unwrap();

    let seeds = seeds();
    let mut rng = Rng(0x5eed_cafe_f00d_d00d);
    let mut seen = [0u32; 5];
    for i in 0..FRAMES {
        let (side, seed) = &seeds[rng.below(seeds.len())];
        let frame = mutate(&mut rng, seed);
        let run = gw.run(*side, &frame).unwrap_or_else(|e| panic!("frame {i}: {e:#}"));
        seen[run.action.min(4) as usize] += 1;
        assert_ne!(run.action, ABORTED, "frame {i} aborted: {frame:02x?}");
        assert!(matches!(run.action, DROP | PASS | REDIRECT), "frame {i}: action {}", run.action);

        let source = packet::parse_ipv4(&frame).map(|p| p.src());
        if let Some(src) = source {
            // BCP 38: a source the gateway may not translate is never sent on.
            if *side == Side::Lan && !translatable_lan_source(src) {
                assert_ne!(run.action, REDIRECT, "frame {i} from {src} redirected: {frame:02x?}");
            }
            // BCP 84: a WAN frame from inside, from the gateway or from a
            // special-purpose address goes nowhere, the kernel included.
            if *side == Side::Wan && (is_inside(src) || is_martian(src) || src == addr::EXTERNAL) {
                assert_eq!(run.action, DROP, "frame {i} from {src} not dropped: {frame:02x?}");
            }
        }
        if *side == Side::Lan {
            let out = packet::parse_ipv4(&run.frame);
            match (run.action, out) {
                (REDIRECT, Some(p)) => {
                    assert_eq!(p.src(), addr::EXTERNAL, "frame {i} redirected with source {}: {frame:02x?}", p.src());
                }
                (REDIRECT, None) => panic!("frame {i} redirected but is not IPv4: {frame:02x?}"),
                (PASS, Some(p)) if is_inside(p.src()) => assert!(
                    !kernel_would_forward_to_wan(&p),
                    "frame {i} passed to a kernel that forwards it to the WAN untranslated: {frame:02x?}"
                ),
                _ => {}
            }
        }
        if i % 512 == 0 {
            while ring.next().is_some() {}
        }
    }
    eprintln!(
        "fuzz: {FRAMES} frames: {} dropped, {} passed, {} redirected",
        seen[DROP as usize], seen[PASS as usize], seen[REDIRECT as usize]
    );
    assert!(seen[REDIRECT as usize] > 0 && seen[PASS as usize] > 0 && seen[DROP as usize] > 0);
}
