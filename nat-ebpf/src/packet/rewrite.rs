//! In-place rewrite of address, port and TTL with incremental checksum
//! updates (RFC 1624, arithmetic in `nat_common::checksum`; the port and
//! L4 checksum per protocol in `proto`).

use nat_common::{
    Endpoint,
    checksum::{replace16, replace32},
};

use crate::{
    packet::{Side, parse::Ipv4Packet},
    proto::SctpCheck,
};

/// Rewrites one endpoint of the packet to `to` and decrements the TTL, keeping
/// the IPv4 header and L4 checksums valid. The caller checked `ttl > 1`.
/// For packets that are no SCTP packet (later fragments, ICMP errors):
/// SCTP's are translated by `translate_with`.
#[inline(always)]
pub fn translate(pkt: &Ipv4Packet, side: Side, to: &Endpoint) {
    translate_with(pkt, side, to, SctpCheck::NONE);
}

/// As `translate`, an SCTP packet's CRC32c field set to `sctp`, which
/// `proto::sctp::check_after` computed for this rewrite.
#[inline(always)]
pub fn translate_with(pkt: &Ipv4Packet, side: Side, to: &Endpoint, sctp: SctpCheck) {
    rewrite(pkt, side, to, true, sctp);
}

/// Both endpoints, for a hairpinned packet (LAN to LAN through the external
/// address): the source becomes the sender's external endpoint, the
/// destination the target's inside one; the TTL drops once.
#[inline(always)]
pub fn translate_both(pkt: &Ipv4Packet, source: &Endpoint, destination: &Endpoint) {
    translate_both_with(pkt, source, destination, SctpCheck::NONE);
}

/// As `translate_both`, with an SCTP packet's CRC32c field as `translate_with`.
#[inline(always)]
pub fn translate_both_with(pkt: &Ipv4Packet, source: &Endpoint, destination: &Endpoint, sctp: SctpCheck) {
    rewrite(pkt, Side::Source, source, true, sctp);
    rewrite(pkt, Side::Destination, destination, false, sctp);
}

#[inline(always)]
fn rewrite(pkt: &Ipv4Packet, side: Side, to: &Endpoint, decrement_ttl: bool, sctp: SctpCheck) {
    let ip = pkt.ip;
    // SAFETY: `parse` checked the whole fixed IPv4 header in the frame.
    let old_addr = unsafe {
        let addr_field = match side {
            Side::Source => &mut (*ip).src_addr,
            Side::Destination => &mut (*ip).dst_addr,
        };
        let old_addr = u32::from_ne_bytes(*addr_field);
        *addr_field = to.addr_be.to_ne_bytes();

        // TTL shares a 16-bit word with the protocol byte.
        let old_ttl_word = u16::from_ne_bytes([(*ip).ttl, (*ip).proto]);
        if decrement_ttl {
            (*ip).ttl -= 1;
        }
        let new_ttl_word = u16::from_ne_bytes([(*ip).ttl, (*ip).proto]);

        let mut ip_check = u16::from_ne_bytes((*ip).check);
        ip_check = replace32(ip_check, old_addr, to.addr_be);
        ip_check = replace16(ip_check, old_ttl_word, new_ttl_word);
        (*ip).check = ip_check.to_ne_bytes();
        old_addr
    };
    // Only the outer header for an ICMP error: its quote is `Quoted::rewrite`'s.
    pkt.l4.rewrite(side, old_addr, to, sctp);
}
