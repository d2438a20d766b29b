//! In-place rewrite of address, port and TTL with incremental checksum
//! updates (RFC 1624, arithmetic in `nat_common::checksum`; the port and
//! L4 checksum per protocol in `proto`).

use nat_common::{
    Endpoint,
    checksum::{replace16, replace32},
};

use crate::{
    packet::{
        Side,
        parse::{CHECK_AT, DST_ADDR_AT, Ipv4Packet, SRC_ADDR_AT, TTL_AT},
        words,
    },
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
    let ip = pkt.ip as *mut u8;
    // SAFETY: `parse` checked the whole fixed IPv4 header in the frame; its
    // fields are read and written as aligned words (`words`).
    let old_addr = unsafe {
        let addr_field = ip.add(match side {
            Side::Source => SRC_ADDR_AT,
            Side::Destination => DST_ADDR_AT,
        });
        let old_addr = words::load32(addr_field);
        words::store32(addr_field, to.addr_be);

        // TTL shares a 16-bit word with the protocol byte, TTL first.
        let ttl_field = ip.add(TTL_AT);
        let old_ttl_word = words::load16(ttl_field);
        // Minus one in the TTL byte, whichever end of the word it is: no
        // borrow from the protocol byte, since a packet whose TTL would
        // expire here got Time Exceeded before any rewrite.
        let one_ttl = u16::from_be(0x0100);
        let new_ttl_word = if decrement_ttl { old_ttl_word.wrapping_sub(one_ttl) } else { old_ttl_word };
        words::store16(ttl_field, new_ttl_word);

        let check_field = ip.add(CHECK_AT);
        let mut ip_check = words::load16(check_field);
        ip_check = replace32(ip_check, old_addr, to.addr_be);
        ip_check = replace16(ip_check, old_ttl_word, new_ttl_word);
        words::store16(check_field, ip_check);
        old_addr
    };
    // Only the outer header for an ICMP error: its quote is `Quoted::rewrite`'s.
    pkt.l4.rewrite(side, old_addr, to, sctp);
}
