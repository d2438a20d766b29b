//! The checksums the datapath computes in full rather than incrementally:
//! the TCP/UDP checksum a sender with TX offload leaves partial, and the
//! checks of an ICMP error's own and quoted checksums (RFC 5508 REQ-3).

use aya_ebpf::{helpers::bpf_csum_diff, programs::XdpContext};
use nat_common::checksum::{self, CSUM_CHUNK, CSUM_MAX_CHUNKS, CSUM_MAX_LEN, CSUM_TAIL_PIECES, piece_offset};

use crate::{
    packet::{opaque, parse::Ipv4Packet, words},
    proto::icmp::Quoted,
};

/// True when the TCP or UDP checksum field holds only the pseudo-header sum,
/// as a sender with TX checksum offload leaves it (`checksum::is_partial`).
/// Judged on the packet as received: call before `translate`. A zero UDP
/// checksum ("none") is never partial: the pseudo-header sum never folds to 0.
#[inline(always)]
pub fn has_partial_checksum(pkt: &Ipv4Packet) -> bool {
    let Some((field, _)) = pkt.l4.pseudo_header_checksum() else {
        return false;
    };
    // SAFETY: the field lies in the L4 header `parse` checked.
    let check = unsafe { words::load16(field as *const u8) };
    let pseudo = checksum::pseudo_header_sum_of(pkt.src_be(), pkt.dst_be(), pkt.proto(), pkt.l4_len());
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
    let Some((field, zero_is_none)) = pkt.l4.pseudo_header_checksum() else {
        return Ok(());
    };
    let len = pkt.l4_len();
    if len as usize > CSUM_MAX_LEN {
        return Err(Unfinished);
    }
    let l4_offset = pkt.l3_offset + pkt.header_len();
    let whole = sum_segment(ctx, l4_offset, len as usize)?;
    // SAFETY: the field lies in the L4 header `parse` checked.
    unsafe {
        // The sum covered the field with the incremental result in it: take
        // it back out (adding the complement subtracts in one's complement).
        let segment = checksum::add(whole, !words::load16(field as *const u8) as u32);
        let pseudo = checksum::pseudo_header_sum_of(pkt.src_be(), pkt.dst_be(), pkt.proto(), len);
        words::store16(field as *mut u8, checksum::finish(pseudo, segment, zero_is_none));
    }
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
    // The mask changes nothing (`len <= CSUM_MAX_LEN`, checked by the
    // callers) but bounds the offsets for the verifier: the opaque copy
    // carries no range of its own.
    const ADDRESS_MASK: usize = CSUM_MAX_LEN.next_power_of_two() - 1;
    let len_for_addresses = opaque(len) & ADDRESS_MASK;
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
        // The size through `opaque`: knowing it, LLVM turns `at + 2 > end`
        // into `at + 1 >= end`, which proves the verifier one byte, not two.
        if at + opaque(2) > ctx.data_end() {
            return Err(Unfinished);
        }
        // SAFETY: checked against data_end just above.
        sum = checksum::add(sum, u16::from_ne_bytes(unsafe { *(at as *const [u8; 2]) }) as u32);
    }
    if len & 1 != 0 {
        let at = ctx.data() + piece(1);
        // As above: `at >= end` proves the verifier nothing.
        if at + opaque(1) > ctx.data_end() {
            return Err(Unfinished);
        }
        // RFC 1071: a lone last byte is summed as if padded with a zero byte.
        // SAFETY: checked against data_end just above.
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
    // SAFETY: the helper reads SIZE bytes at `at`, checked against data_end above.
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
    let icmp_len = pkt.tot_len() as usize - (quoted.offset - pkt.l3_offset);
    if icmp_len > CSUM_MAX_LEN {
        return true;
    }
    let holds = |sum: Result<u32, Unfinished>| sum.is_ok_and(|sum| checksum::fold(sum) == 0xffff);
    holds(sum_segment(ctx, quoted.offset, icmp_len)) && holds(sum_segment(ctx, quoted.offset + 8, quoted.inner_len))
}
