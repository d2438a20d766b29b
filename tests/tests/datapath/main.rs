//! Table-driven BPF_PROG_TEST_RUN cases: the programs run in the real kernel
//! on crafted frames with preloaded mappings, and each case states the verdict,
//! the exact output frame (checksums computed from scratch, not incrementally)
//! and the counter that must move.
//!
//! One module per feature; the fixtures they share (the gateway, frame
//! builders, the case table runner) are here.

mod filtering;
mod esp;
mod forwards;
mod frag_needed;
mod fragments;
mod hairpin;
mod handoff;
mod icmp_errors;
mod new_flow;
mod next_hop;
mod passes_and_drops;
mod security;
mod sctp;
mod sessions;
mod translation;
mod verifier;

use std::net::Ipv4Addr;

use anyhow::{Result, bail};
use nat_common::{Reason, checksum, proto};
use nat_tests::{
    TestGateway, addr, assert_frames_eq,
    packet::{self, Frame, L4},
    xdp_action::{self, REDIRECT},
};
use nat_userspace::datapath::Side;

const TCP_INSIDE: (Ipv4Addr, u16) = (addr::LAN_HOST, 40000);
const TCP_EXTERNAL: (Ipv4Addr, u16) = (addr::EXTERNAL, 20000);
const UDP_INSIDE: (Ipv4Addr, u16) = (addr::LAN_HOST, 5353);
const UDP_EXTERNAL: (Ipv4Addr, u16) = (addr::EXTERNAL, 20001);
const ICMP_ID_INSIDE: u16 = 0x1234;
const ICMP_ID_EXTERNAL: u16 = 0x5678;
const UNRESOLVED_INSIDE: (Ipv4Addr, u16) = (addr::LAN_HOST_UNRESOLVED, 6000);
const UNRESOLVED_EXTERNAL: (Ipv4Addr, u16) = (addr::EXTERNAL, 20002);
const REMOTE_TCP: (Ipv4Addr, u16) = (addr::REMOTE, 443);
const REMOTE_UDP: (Ipv4Addr, u16) = (addr::REMOTE, 53);

const ICMP_ECHO_REQUEST: u8 = 8;
const ICMP_ECHO_REPLY: u8 = 0;

fn gateway(tag: &str) -> Result<TestGateway> {
    let mut gw = TestGateway::new(tag)?;
    gw.map(TCP_INSIDE, TCP_EXTERNAL, proto::TCP)?;
    gw.map(UDP_INSIDE, UDP_EXTERNAL, proto::UDP)?;
    gw.map((addr::LAN_HOST, ICMP_ID_INSIDE), (addr::EXTERNAL, ICMP_ID_EXTERNAL), proto::ICMP)?;
    gw.map(UNRESOLVED_INSIDE, UNRESOLVED_EXTERNAL, proto::UDP)?;
    Ok(gw)
}

/// A LAN host's frame as it arrives on the gateway's LAN port.
fn from_lan(f: Frame) -> Frame {
    f.with_macs(addr::LAN_HOST_MAC, addr::LAN_GW_MAC)
}

/// A remote frame as it arrives on the gateway's WAN port.
fn from_wan(f: Frame) -> Frame {
    f.with_macs(addr::WAN_NEXT_HOP_MAC, addr::WAN_GW_MAC)
}

/// What the gateway must send to the WAN for `f`: source rewritten, TTL - 1,
/// MACs of the WAN port and the next hop.
fn translated_out(mut f: Frame, external: (Ipv4Addr, u16)) -> Frame {
    f.src = external.0;
    f.ttl -= 1;
    match &mut f.l4 {
        L4::Tcp { sport, .. } | L4::Udp { sport, .. } | L4::Sctp { sport, .. } => *sport = external.1,
        L4::IcmpEcho { id, .. } => *id = external.1,
        L4::Raw { .. } => {}
    }
    f.with_macs(addr::WAN_GW_MAC, addr::WAN_NEXT_HOP_MAC)
}

/// What the gateway must send to the LAN for `f`.
fn translated_in(mut f: Frame, inside: (Ipv4Addr, u16)) -> Frame {
    f.dst = inside.0;
    f.ttl -= 1;
    match &mut f.l4 {
        L4::Tcp { dport, .. } | L4::Udp { dport, .. } | L4::Sctp { dport, .. } => *dport = inside.1,
        L4::IcmpEcho { id, .. } => *id = inside.1,
        L4::Raw { .. } => {}
    }
    f.with_macs(addr::LAN_GW_MAC, addr::LAN_HOST_MAC)
}

struct Case {
    name: &'static str,
    side: Side,
    input: Vec<u8>,
    action: u32,
    /// The exact output frame; `None`: the input, unchanged.
    output: Option<Vec<u8>>,
    reason: Reason,
}

fn case(name: &'static str, side: Side, input: Frame, action: u32, output: Option<Frame>, reason: Reason) -> Case {
    Case { name, side, input: input.build(), action, output: output.map(|f| f.build()), reason }
}

fn tcp_out() -> Frame {
    from_lan(Frame::tcp(TCP_INSIDE, REMOTE_TCP))
}
fn tcp_in() -> Frame {
    from_wan(Frame::tcp(REMOTE_TCP, TCP_EXTERNAL))
}
fn udp_out() -> Frame {
    from_lan(Frame::udp(UDP_INSIDE, REMOTE_UDP))
}
fn udp_in() -> Frame {
    from_wan(Frame::udp(REMOTE_UDP, UDP_EXTERNAL))
}
fn icmp_out() -> Frame {
    from_lan(Frame::icmp_echo(addr::LAN_HOST, addr::REMOTE, ICMP_ECHO_REQUEST, ICMP_ID_INSIDE))
}
fn icmp_in() -> Frame {
    from_wan(Frame::icmp_echo(addr::REMOTE, addr::EXTERNAL, ICMP_ECHO_REPLY, ICMP_ID_EXTERNAL))
}

fn with<F: FnOnce(&mut Frame)>(mut f: Frame, change: F) -> Frame {
    change(&mut f);
    f
}

/// As a local socket sends it with TX checksum offload on: the L4 checksum
/// field holds only the pseudo-header sum.
fn partial(f: Frame) -> Frame {
    f.with_partial_checksum()
}

/// `n` bytes of payload that are not all alike, so a piece summed twice or
/// skipped shows.
fn payload(n: usize) -> impl Fn(&mut Frame) {
    move |f: &mut Frame| f.payload = (0..n).map(|i| (i * 7 + 3) as u8).collect()
}

fn run_cases(gw: &TestGateway, cases: Vec<Case>) -> Result<()> {
    let mut failures = Vec::new();
    for c in cases {
        let before = gw.datapath.counter(c.reason)?;
        let run = gw.run(c.side, &c.input)?;
        let after = gw.datapath.counter(c.reason)?;
        let want = c.output.as_deref().unwrap_or(&c.input);
        let mut problems = Vec::new();
        if run.action != c.action {
            problems.push(format!(
                "action {} want {}",
                xdp_action::name(run.action),
                xdp_action::name(c.action)
            ));
        }
        if after != before + 1 {
            problems.push(format!("counter {} moved by {}", c.reason.name(), after - before));
        }
        if let Err(e) = assert_frames_eq(c.name, &run.frame, want) {
            problems.push(e.to_string());
        }
        if c.action == REDIRECT
            && let Err(e) = packet::verify_checksums(&run.frame)
        {
            problems.push(format!("bad {e} on the wire"));
        }
        if !problems.is_empty() {
            failures.push(format!("{}: {}", c.name, problems.join("; ")));
        }
    }
    if !failures.is_empty() {
        bail!("{} case(s) failed:\n{}", failures.len(), failures.join("\n"));
    }
    Ok(())
}

/// An ICMP message of `kind`/`code` quoting `quoted` (IPv4 header + 8 bytes),
/// with a valid checksum.
fn icmp_error(kind: u8, code: u8, quoted: &[u8]) -> Vec<u8> {
    let mut msg = vec![kind, code, 0, 0, 0, 0, 0, 0];
    msg.extend_from_slice(quoted);
    let c = checksum::checksum(&msg);
    msg[2..4].copy_from_slice(&c.to_ne_bytes());
    msg
}

/// The first 28 bytes of a frame's IPv4 packet: what an ICMP error quotes.
fn quote(f: &Frame) -> Vec<u8> {
    f.build()[14..14 + 28].to_vec()
}

/// The gateway of `gateway()` with every protocol filtering in `mode` and
/// permits living `ttl_ns`.
fn filtering_gateway(tag: &str, mode: u8, ttl_ns: u64) -> TestGateway {
    let mut gw = gateway(tag).unwrap();
    let mut config = nat_tests::fixture_config(gw.wan_ifindex);
    (config.filtering_tcp, config.filtering_udp, config.filtering_icmp) = (mode, mode, mode);
    (config.permit_ttl_tcp_ns, config.permit_ttl_udp_ns, config.permit_ttl_icmp_ns) = (ttl_ns, ttl_ns, ttl_ns);
    gw.datapath.set_config(config).unwrap();
    gw
}
