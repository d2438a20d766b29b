//! TCP state the datapath keeps per session: the flags seen each way, from
//! which natd tells opening, established and closing apart (RFC 7857).

use nat_common::{Liveness, tcp_flags};

use crate::packet::Side;

/// The flags byte of a TCP header (offset 13), 0 for anything else.
#[inline(always)]
pub fn flags(header: *mut u8) -> u8 {
    // SAFETY: within the 20-byte header `parse` checked.
    unsafe { *header.add(13) }
}

/// Records the TCP flags of a packet crossing on `side` in its session's
/// liveness: a write only when a flag is new in that direction.
#[inline(always)]
pub fn record_flags(live: &mut Liveness, header: *mut u8, side: Side) {
    let flags = flags(header) & tcp_flags::TRACKED;
    // A bare SYN after a FIN or RST is a new connection between the same
    // endpoints (the mapping outlives the last one by the transitory
    // timeout): its state starts afresh, or an idle but established
    // connection would age out on the closing timer.
    let closed = (live.tcp_flags_out | live.tcp_flags_in) & (tcp_flags::FIN | tcp_flags::RST) != 0;
    if closed && flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN {
        live.tcp_flags_out = 0;
        live.tcp_flags_in = 0;
    }
    let seen = match side {
        Side::Source => &mut live.tcp_flags_out,
        Side::Destination => &mut live.tcp_flags_in,
    };
    if *seen & flags != flags {
        *seen |= flags;
    }
}
