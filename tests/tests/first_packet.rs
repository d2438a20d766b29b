//! The daemon's translation of a flow's first packet (`packet::translate_source`)
//! gives exactly the bytes a from-scratch build of the translated packet has:
//! TCP, UDP, UDP without checksum, ICMP echo, SCTP (its CRC32c, a bad one
//! included), IP options, a payload of odd length, TCP/UDP checksums left
//! partial by a TX-offloading sender, and a first fragment.
//! No root needed.

use std::net::Ipv4Addr;

use nat_common::{
    Endpoint,
    checksum::{fold, pseudo_header_sum},
    proto,
};
use nat_tests::packet::{Frame, L4};
use nat_userspace::packet::{translate_destination, translate_source};

const INSIDE: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 10);
const REMOTE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
const EXTERNAL: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const ETH_LEN: usize = 14;

/// The frame's L4 checksum replaced by the pseudo-header sum alone, as a
/// sender with TX checksum offload leaves it (CHECKSUM_PARTIAL).
fn with_partial_checksum(frame: &Frame) -> Vec<u8> {
    let mut bytes = frame.build();
    let ip = &mut bytes[ETH_LEN..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let check_at = ihl + if frame.l4_proto() == proto::TCP { 16 } else { 6 };
    let sum = pseudo_header_sum(frame.src.octets(), frame.dst.octets(), frame.l4_proto(), (total - ihl) as u16);
    ip[check_at..check_at + 2].copy_from_slice(&fold(sum).to_ne_bytes());
    bytes
}

fn translated(frame: &Frame, port: u16) -> Frame {
    let mut out = frame.clone();
    out.src = EXTERNAL;
    out.ttl -= 1;
    match &mut out.l4 {
        L4::Tcp { sport, .. } | L4::Udp { sport, .. } => *sport = port,
        L4::IcmpEcho { id, .. } => *id = port,
        L4::Sctp { sport, .. } => *sport = port,
        L4::Raw { .. } => unreachable!(),
    }
    out
}

fn check(name: &str, input: Vec<u8>, frame: &Frame, port: u16) {
    let mut packet = input[ETH_LEN..].to_vec();
    translate_source(&mut packet, Endpoint::new(EXTERNAL, port, frame.l4_proto())).unwrap_or_else(|e| panic!("{name}: {e}"));
    let expected = translated(frame, port).build()[ETH_LEN..].to_vec();
    assert_eq!(packet, expected, "{name}: translated bytes differ from a from-scratch build");
}

fn cases() -> Vec<(&'static str, Frame)> {
    let mut odd = Frame::udp((INSIDE, 5000), (REMOTE, 53));
    odd.payload = vec![0xab; 1401];
    let mut options = Frame::tcp((INSIDE, 5000), (REMOTE, 443));
    options.options = vec![1, 1, 1, 0];
    vec![
        ("tcp", Frame::tcp((INSIDE, 5000), (REMOTE, 443))),
        ("udp", Frame::udp((INSIDE, 5000), (REMOTE, 53))),
        ("udp odd-length payload", odd),
        ("tcp with IP options", options),
        ("icmp echo", Frame::icmp_echo(INSIDE, REMOTE, 8, 4242)),
    ]
}

#[test]
fn translated_first_packets_match_a_from_scratch_build() {
    for (name, frame) in cases() {
        check(name, frame.build(), &frame, 23456);
    }
    let no_checksum = Frame::new(INSIDE, REMOTE, L4::Udp { sport: 5000, dport: 53, zero_checksum: true });
    check("udp without checksum", no_checksum.build(), &no_checksum, 23456);
    // SCTP: the CRC32c of a from-scratch build; a bad one stays bad by its
    // error (the from-scratch build of the translated packet carries the
    // same error).
    let sctp = Frame::sctp((INSIDE, 5000), (REMOTE, 3868));
    check("sctp", sctp.build(), &sctp, 23456);
    let mut bad = Frame::new(INSIDE, REMOTE, L4::Sctp { sport: 5000, dport: 3868, vtag: 7, chunk: 1, crc_error: 0x10 });
    bad.payload = vec![0x5a; 1400];
    check("sctp with a bad CRC32c", bad.build(), &bad, 23457);
    // An SCTP first fragment is refused: its CRC covers the whole datagram.
    let mut first = Frame::sctp((INSIDE, 5000), (REMOTE, 3868));
    first.frag = 0x2000;
    let mut packet = first.build()[ETH_LEN..].to_vec();
    assert!(translate_source(&mut packet, Endpoint::new(EXTERNAL, 23458, proto::SCTP)).is_err(), "an SCTP first fragment was translated");
}

#[test]
fn partial_checksums_from_tx_offload_are_completed() {
    for (name, frame) in cases().into_iter().filter(|(_, f)| f.l4_proto() != proto::ICMP) {
        check(name, with_partial_checksum(&frame), &frame, 31000);
    }
}

/// RFC 4787 REQ-14: a first fragment natd sends itself (a new flow's first
/// packet on the slow path) carries the L4 header: it leaves as the first
/// fragment of the translated datagram built from scratch, its L4 checksum
/// (over the whole datagram) updated incrementally.
#[test]
fn a_first_fragment_is_translated_like_the_datagram_it_starts() {
    for (name, mut frame) in cases() {
        frame.payload = (0..200u32).map(|i| (i * 13) as u8).collect();
        let first = nat_tests::packet::fragments(&frame.build(), 64).remove(0);
        let mut packet = first[ETH_LEN..].to_vec();
        translate_source(&mut packet, Endpoint::new(EXTERNAL, 23456, frame.l4_proto())).unwrap_or_else(|e| panic!("{name}: {e}"));
        let expected = nat_tests::packet::fragments(&translated(&frame, 23456).build(), 64).remove(0);
        assert_eq!(packet, expected[ETH_LEN..].to_vec(), "{name}: first fragment differs from a from-scratch build");
    }
}

#[test]
fn untranslatable_packets_are_refused() {
    // A later fragment: no L4 header (natd rewrites those with `frag::translate_fragment`).
    let mut fragment = Frame::udp((INSIDE, 5000), (REMOTE, 53));
    fragment.frag = 0x0010;
    let mut expired = Frame::udp((INSIDE, 5000), (REMOTE, 53));
    expired.ttl = 1;
    for (name, frame) in [("fragment", fragment), ("ttl 1", expired)] {
        let mut packet = frame.build()[ETH_LEN..].to_vec();
        assert!(translate_source(&mut packet, Endpoint::new(EXTERNAL, 1, proto::UDP)).is_err(), "{name} was translated");
    }
    let mut short = Frame::udp((INSIDE, 5000), (REMOTE, 53)).build()[ETH_LEN..ETH_LEN + 24].to_vec();
    assert!(translate_source(&mut short, Endpoint::new(EXTERNAL, 1, proto::UDP)).is_err());
}

/// RFC 4787 REQ-9: a hairpinned first packet natd sends itself gets both
/// ends translated (`translate_source`, then `translate_destination` to the
/// target's inside endpoint), the TTL decremented once, and every checksum
/// as a from-scratch build has it, from a full or a partial (TX offload)
/// checksum alike.
#[test]
fn a_hairpinned_first_packet_is_translated_both_ways() {
    const TARGET: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 11);
    for frame in [Frame::udp((INSIDE, 5000), (EXTERNAL, 24000)), Frame::tcp((INSIDE, 5000), (EXTERNAL, 24000))] {
        let name = if frame.l4_proto() == proto::UDP { "udp" } else { "tcp" };
        for (kind, input) in [("full", frame.build()), ("partial", with_partial_checksum(&frame))] {
            let mut packet = input[ETH_LEN..].to_vec();
            translate_source(&mut packet, Endpoint::new(EXTERNAL, 23456, frame.l4_proto())).unwrap();
            translate_destination(&mut packet, Endpoint::new(TARGET, 6000, frame.l4_proto())).unwrap();
            let mut expected = translated(&frame, 23456);
            expected.dst = TARGET;
            match &mut expected.l4 {
                L4::Tcp { dport, .. } | L4::Udp { dport, .. } | L4::Sctp { dport, .. } => *dport = 6000,
                _ => unreachable!(),
            }
            assert_eq!(packet, expected.build()[ETH_LEN..].to_vec(), "{name} ({kind} checksum): differs from a from-scratch build");
        }
    }
}
