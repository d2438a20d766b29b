//! In-place rewrite of address, port and TTL with incremental checksum
//! updates (RFC 1624, arithmetic in `nat_common::checksum`), and the full
//! recomputation a partial (TX offload) TCP/UDP checksum needs instead.

use aya_ebpf::{helpers::bpf_csum_diff, programs::XdpContext};
use nat_common::{
    Endpoint, proto,
    checksum::{
        self, CSUM_CHUNK, CSUM_MAX_CHUNKS, CSUM_MAX_LEN, CSUM_TAIL_PIECES, piece_offset, replace16,
        replace32, udp_fixup,
    },
};

use crate::parse::{Ipv4Packet, L4, Quoted, opaque};

/// Which end of the packet the mapping rewrites.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// LAN -> WAN: the inside source becomes the external endpoint.
    Source,
    /// WAN -> LAN: the external destination becomes the inside endpoint.
    Destination,
}

#[inline(always)]
fn load16(field: &[u8; 2]) -> u16 {
    u16::from_ne_bytes(*field)
}

/// Rewrites one endpoint of the packet to `to` and decrements the TTL, keeping
/// the IPv4 header and L4 checksums valid. The caller checked `ttl > 1`.
#[inline(always)]
pub fn translate(pkt: &Ipv4Packet, side: Side, to: &Endpoint) {
    rewrite(pkt, side, to, true);
}

/// Both endpoints, for a hairpinned packet (LAN to LAN through the external
/// address): the source becomes the sender's external endpoint, the
/// destination the target's inside one; the TTL drops once.
#[inline(always)]
pub fn translate_both(pkt: &Ipv4Packet, source: &Endpoint, destination: &Endpoint) {
    rewrite(pkt, Side::Source, source, true);
    rewrite(pkt, Side::Destination, destination, false);
}

#[inline(always)]
fn rewrite(pkt: &Ipv4Packet, side: Side, to: &Endpoint, decrement_ttl: bool) {
    let ip = pkt.ip;
    unsafe {
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

        let mut ip_check = load16(&(*ip).check);
        ip_check = replace32(ip_check, old_addr, to.addr_be);
        ip_check = replace16(ip_check, old_ttl_word, new_ttl_word);
        (*ip).check = ip_check.to_ne_bytes();

        match pkt.l4 {
            L4::Tcp(tcp) => {
                let port = match side {
                    Side::Source => &mut (*tcp).source,
                    Side::Destination => &mut (*tcp).dest,
                };
                let old_port = load16(port);
                *port = to.port_be.to_ne_bytes();
                // The pseudo-header carries the address.
                let mut check = load16(&(*tcp).check);
                check = replace32(check, old_addr, to.addr_be);
                check = replace16(check, old_port, to.port_be);
                (*tcp).check = check.to_ne_bytes();
            }
            L4::Udp(udp) => {
                let port = match side {
                    Side::Source => &mut (*udp).src,
                    Side::Destination => &mut (*udp).dst,
                };
                let old_port = load16(port);
                *port = to.port_be.to_ne_bytes();
                let before = load16(&(*udp).check);
                let mut check = replace32(before, old_addr, to.addr_be);
                check = replace16(check, old_port, to.port_be);
                (*udp).check = udp_fixup(before, check).to_ne_bytes();
            }
            L4::IcmpEcho(icmp) => {
                // No pseudo-header in ICMPv4: only the identifier counts.
                let old_id = load16(&(*icmp).id);
                (*icmp).id = to.port_be.to_ne_bytes();
                let check = replace16(load16(&(*icmp).check), old_id, to.port_be);
                (*icmp).check = check.to_ne_bytes();
            }
            // Only the outer header here; `icmp_error` reverts the inner one.
            L4::IcmpError(_) | L4::Other => {}
        }
    }
}

/// TCP flags byte of the packet, 0 for anything else.
#[inline(always)]
pub fn tcp_flags(pkt: &Ipv4Packet) -> u8 {
    match pkt.l4 {
        // The flags are the low byte of the 16-bit word after the ack number
        // (offset 13 in the header).
        L4::Tcp(tcp) => unsafe { *((tcp as *const u8).add(13)) },
        _ => 0,
    }
}

/// Length of the L4 segment from the IPv4 header: total length minus IHL.
/// `parse` made sure the total length covers the header.
#[inline(always)]
fn l4_len(pkt: &Ipv4Packet) -> u16 {
    let ip = pkt.ip;
    unsafe {
        let header_len = ((*ip).vihl & 0x0f) as u16 * 4;
        u16::from_be_bytes((*ip).tot_len).wrapping_sub(header_len)
    }
}

/// True when the TCP or UDP checksum field holds only the pseudo-header sum,
/// as a sender with TX checksum offload leaves it (`checksum::is_partial`).
/// Judged on the packet as received: call before `translate`. A zero UDP
/// checksum ("none") is never partial: the pseudo-header sum never folds to 0.
#[inline(always)]
pub fn has_partial_checksum(pkt: &Ipv4Packet) -> bool {
    let check = match pkt.l4 {
        L4::Tcp(tcp) => unsafe { load16(&(*tcp).check) },
        L4::Udp(udp) => unsafe { load16(&(*udp).check) },
        _ => return false,
    };
    let ip = pkt.ip;
    let pseudo = unsafe {
        checksum::pseudo_header_sum((*ip).src_addr, (*ip).dst_addr, (*ip).proto, l4_len(pkt))
    };
    checksum::is_partial(check, pseudo)
}

/// The partial checksum could not be replaced: the segment is longer than
/// `CSUM_MAX_LEN`. (A piece outside the frame or a helper error would land
/// here too, but `parse` checked that the datagram is in the frame and every
/// size is a constant the helper takes.)
pub struct Unfinished;

/// Replaces the TCP/UDP checksum of a translated packet by the full one over
/// its new pseudo-header and the whole segment. For packets that
/// `has_partial_checksum` accepted before `translate`: the incremental update
/// `translate` made is only right for full checksums. On `Err` the packet
/// keeps that incremental result.
#[inline(always)]
pub fn finish_partial_checksum(ctx: &XdpContext, pkt: &Ipv4Packet) -> Result<(), Unfinished> {
    let (field, udp) = match pkt.l4 {
        L4::Tcp(tcp) => (unsafe { &raw mut (*tcp).check }, false),
        L4::Udp(udp) => (unsafe { &raw mut (*udp).check }, true),
        _ => return Ok(()),
    };
    let len = l4_len(pkt);
    if len as usize > CSUM_MAX_LEN {
        return Err(Unfinished);
    }
    let ip = pkt.ip;
    let l4_offset = pkt.l3_offset + unsafe { ((*ip).vihl & 0x0f) as usize * 4 };
    let whole = sum_segment(ctx, l4_offset, len as usize)?;
    // The sum covered the field with the incremental result in it: take it
    // back out (adding the complement subtracts in one's complement).
    let segment = checksum::add(whole, !load16(unsafe { &*field }) as u32);
    let pseudo = unsafe { checksum::pseudo_header_sum((*ip).src_addr, (*ip).dst_addr, (*ip).proto, len) };
    unsafe { *field = checksum::finish(pseudo, segment, udp).to_ne_bytes() };
    Ok(())
}

/// One's complement sum (not folded) of the `len` bytes at `offset` in the
/// packet, `len <= CSUM_MAX_LEN`, in the pieces `nat_common::checksum` lays
/// out: whole `CSUM_CHUNK`s, then one piece per remaining bit, each through
/// `bpf_csum_diff` with a constant size, then the last 1-3 bytes by hand.
///
/// Verifier notes. Every piece is checked against `data_end` through its own
/// pointer, built from `ctx.data()` and a scalar offset: a check on a pointer
/// derived from the L4 header pointer would widen that pointer's verified
/// range, differently after each number of chunks, and the verifier could not
/// merge those states (it walked the rest of the program once per chunk
/// count). The branches test `len` but the addresses use an opaque copy of
/// it: where LLVM knows the low bits of `len` it rewrites `at + 1 > end` as
/// `data + offset + len > end`, a check on another pointer than the one read.
#[inline(always)]
fn sum_segment(ctx: &XdpContext, offset: usize, len: usize) -> Result<u32, Unfinished> {
    let mut sum = 0u32;
    for i in 0..CSUM_MAX_CHUNKS {
        let at = i * CSUM_CHUNK;
        if at + CSUM_CHUNK > len {
            break;
        }
        sum = sum_piece::<CSUM_CHUNK>(ctx, offset + at, sum)?;
    }
    let len_for_addresses = opaque(len);
    let piece = |size| offset + piece_offset(len_for_addresses, size);
    // One call per size, so each size is a constant at its call site: the
    // verifier checks a helper's memory argument against the size's upper bound.
    const _: () = assert!(CSUM_TAIL_PIECES.len() == 7);
    sum = tail_piece::<{ CSUM_TAIL_PIECES[0] }>(ctx, piece(CSUM_TAIL_PIECES[0]), len, sum)?;
    sum = tail_piece::<{ CSUM_TAIL_PIECES[1] }>(ctx, piece(CSUM_TAIL_PIECES[1]), len, sum)?;
    sum = tail_piece::<{ CSUM_TAIL_PIECES[2] }>(ctx, piece(CSUM_TAIL_PIECES[2]), len, sum)?;
    sum = tail_piece::<{ CSUM_TAIL_PIECES[3] }>(ctx, piece(CSUM_TAIL_PIECES[3]), len, sum)?;
    sum = tail_piece::<{ CSUM_TAIL_PIECES[4] }>(ctx, piece(CSUM_TAIL_PIECES[4]), len, sum)?;
    sum = tail_piece::<{ CSUM_TAIL_PIECES[5] }>(ctx, piece(CSUM_TAIL_PIECES[5]), len, sum)?;
    sum = tail_piece::<{ CSUM_TAIL_PIECES[6] }>(ctx, piece(CSUM_TAIL_PIECES[6]), len, sum)?;
    if len & 2 != 0 {
        let at = ctx.data() + piece(2);
        if at + 2 > ctx.data_end() {
            return Err(Unfinished);
        }
        sum = checksum::add(sum, u16::from_ne_bytes(unsafe { *(at as *const [u8; 2]) }) as u32);
    }
    if len & 1 != 0 {
        let at = ctx.data() + piece(1);
        if at + 1 > ctx.data_end() {
            return Err(Unfinished);
        }
        // RFC 1071: a lone last byte is summed as if padded with a zero byte.
        sum = checksum::add(sum, u16::from_ne_bytes([unsafe { *(at as *const u8) }, 0]) as u32);
    }
    Ok(sum)
}

/// The piece of `SIZE` bytes at `offset`, if `len` has one (`len & SIZE`).
#[inline(always)]
fn tail_piece<const SIZE: usize>(ctx: &XdpContext, offset: usize, len: usize, sum: u32) -> Result<u32, Unfinished> {
    if len & SIZE == 0 {
        return Ok(sum);
    }
    sum_piece::<SIZE>(ctx, offset, sum)
}

/// `sum` plus the sum of the `SIZE` bytes at `offset` in the packet.
#[inline(always)]
fn sum_piece<const SIZE: usize>(ctx: &XdpContext, offset: usize, sum: u32) -> Result<u32, Unfinished> {
    const { assert!(SIZE.is_multiple_of(4) && SIZE <= CSUM_CHUNK) };
    let at = ctx.data() + offset;
    if at + SIZE > ctx.data_end() {
        return Err(Unfinished);
    }
    // From nothing to the packet bytes: the helper returns their sum, seeded.
    let ret = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, at as *mut u32, SIZE as u32, sum) };
    if ret < 0 {
        return Err(Unfinished);
    }
    Ok(ret as u32)
}

/// RFC 5508 REQ-3: an ICMP error is translated only if its own checksum
/// and the quoted IPv4 header's checksum hold (the quoted transport checksum
/// is not checked: the quote may be cut short). An error longer than
/// `CSUM_MAX_LEN` is not summed and passes unchecked.
#[inline(always)]
pub fn icmp_error_checksums_hold(ctx: &XdpContext, pkt: &Ipv4Packet, quoted: &Quoted) -> bool {
    let icmp_len = unsafe { u16::from_be_bytes((*pkt.ip).tot_len) as usize } - (quoted.offset - pkt.l3_offset);
    if icmp_len > CSUM_MAX_LEN {
        return true;
    }
    let holds = |sum: Result<u32, Unfinished>| sum.is_ok_and(|sum| checksum::fold(sum) == 0xffff);
    holds(sum_segment(ctx, quoted.offset, icmp_len)) && holds(sum_segment(ctx, quoted.offset + 8, quoted.inner_len))
}


/// Rewrites the packet an ICMP error quotes (RFC 5508 REQ-4/5): its source
/// (an error from the WAN about a packet the gateway sent from `to`'s
/// external endpoint: reverted to the inside one) or its destination (an
/// inside host's error about an inbound packet: set back to the external
/// endpoint). The quoted IPv4 checksum, the quoted UDP or echo checksum
/// (TCP's lies beyond the 8 quoted bytes) and the error's own checksum follow,
/// incrementally. Type and code are kept. The caller rewrites the outer header.
#[inline(always)]
pub fn rewrite_quoted(quoted: &Quoted, side: Side, to: &Endpoint) {
    let (error, l4) = (quoted.error, quoted.l4);
    unsafe {
        let inner = &raw mut (*error).inner;
        let mut icmp_check = load16(&(*error).check);

        let addr_field = match side {
            Side::Source => &mut (*inner).src_addr,
            Side::Destination => &mut (*inner).dst_addr,
        };
        let old_addr = u32::from_ne_bytes(*addr_field);
        *addr_field = to.addr_be.to_ne_bytes();
        icmp_check = replace32(icmp_check, old_addr, to.addr_be);
        let old_ip_check = load16(&(*inner).check);
        let ip_check = replace32(old_ip_check, old_addr, to.addr_be);
        (*inner).check = ip_check.to_ne_bytes();
        icmp_check = replace16(icmp_check, old_ip_check, ip_check);

        // Port (TCP/UDP source or destination) or echo identifier, and the
        // quoted L4 checksum when it is within the quote.
        let (port_at, check_at) = match ((*inner).proto, side) {
            (proto::UDP, Side::Source) => (0, Some(6)),
            (proto::UDP, Side::Destination) => (2, Some(6)),
            (proto::ICMP, _) => (4, Some(2)),
            (_, Side::Source) => (0, None),
            (_, Side::Destination) => (2, None),
        };
        let old_port = u16::from_ne_bytes([(*l4)[port_at], (*l4)[port_at + 1]]);
        let new_port = to.port_be.to_ne_bytes();
        (*l4)[port_at] = new_port[0];
        (*l4)[port_at + 1] = new_port[1];
        icmp_check = replace16(icmp_check, old_port, to.port_be);
        if let Some(at) = check_at {
            let old = u16::from_ne_bytes([(*l4)[at], (*l4)[at + 1]]);
            let mut new = replace16(old, old_port, to.port_be);
            if (*inner).proto == proto::UDP {
                new = udp_fixup(old, replace32(new, old_addr, to.addr_be));
            }
            let bytes = new.to_ne_bytes();
            (*l4)[at] = bytes[0];
            (*l4)[at + 1] = bytes[1];
            icmp_check = replace16(icmp_check, old, new);
        }
        (*error).check = icmp_check.to_ne_bytes();
    }
}
