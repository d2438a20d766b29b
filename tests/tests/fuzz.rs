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

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut f = seed.to_vec();
    match rng.below(4) {
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
