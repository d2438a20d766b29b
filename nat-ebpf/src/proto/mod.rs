//! The transport headers the gateway translates, told apart once (`L4`),
//! and what a translation does to each: the port (or echo identifier) and
//! checksum rewrite is written once against `nat_common::proto::Transport`
//! and instantiated per protocol, so the offsets are constants in every
//! instance. Protocol state lives in the protocol's module (`tcp`,
//! `sctp`), ICMP errors and their quotes in `icmp`, SCTP's CRC32c update in
//! `sctp`.

pub mod esp;
pub mod icmp;
pub mod sctp;
pub mod tcp;

use nat_common::{
    Endpoint,
    checksum::{replace16, replace32, udp_fixup},
    proto::{IcmpEcho, Sctp, Tcp, Transport, Udp},
};

use crate::{
    packet::{Side, words},
    proto::icmp::Quoted,
};

/// The wire bytes an SCTP packet's CRC32c field takes when it is
/// translated (`sctp::check_after`), handed to the rewrite (`L4::rewrite`).
#[derive(Clone, Copy)]
pub struct SctpCheck(pub [u8; 4]);

impl SctpCheck {
    /// For rewrites of packets that are no SCTP packet: never written.
    pub const NONE: SctpCheck = SctpCheck([0; 4]);
}

/// Where the translatable part of the packet is. Each pointer is the start
/// of a header `parse` checked to be in the frame and within the datagram
/// for `Transport::HEADER_LEN` bytes.
#[repr(u8)]
pub enum L4 {
    Tcp(*mut u8),
    Udp(*mut u8),
    /// A whole SCTP packet, only ever in the SCTP programs (`parse`).
    Sctp(*mut u8),
    /// Echo request or reply (which one is checked against the direction).
    IcmpEcho(*mut u8),
    /// Destination Unreachable or Time Exceeded, with the quoted header.
    IcmpError(Quoted),
    /// Another protocol, another ICMP type, or a later fragment: no header
    /// to translate. Built with `L4::other()`, never as the bare variant.
    #[allow(dead_code, reason = "built by `L4::other()` from its tag")]
    Other = OTHER_TAG,
}

/// `L4::Other`'s tag, the first byte of its `repr(u8)` layout.
const OTHER_TAG: u8 = 5;

impl L4 {
    /// `L4::Other` with its unused payload zeroed. Built as the bare variant,
    /// the payload is undefined, and where LLVM spills a parsed packet whole
    /// to the stack it stores that undefined register, which the verifier
    /// refuses ("R5 !read_ok").
    #[inline(always)]
    pub fn other() -> L4 {
        let mut bytes = [0u8; core::mem::size_of::<L4>()];
        bytes[0] = OTHER_TAG;
        // SAFETY: `repr(u8)` puts the tag in the first byte; `Other` has no
        // payload, so any bytes after the tag are a valid `L4::Other`.
        unsafe { core::mem::transmute::<[u8; core::mem::size_of::<L4>()], L4>(bytes) }
    }
}

/// The 16-bit field at `at` in a header, in memory (network) order.
#[inline(always)]
fn field(header: *mut u8, at: usize) -> u16 {
    // SAFETY: `at` is a `Transport` offset within the header `parse` checked,
    // an even one in a 2-aligned header (`packet::words`).
    unsafe { words::load16(header.add(at)) }
}

#[inline(always)]
fn set_field(header: *mut u8, at: usize, value: u16) {
    // SAFETY: as `field`.
    unsafe { words::store16(header.add(at), value) };
}

/// The port (echo identifier) of `side` in a `T` header, network order.
#[inline(always)]
fn port_be<T: Transport>(header: *mut u8, side: Side) -> u16 {
    field(header, if side == Side::Source { T::SRC_PORT_AT } else { T::DST_PORT_AT })
}

/// Sets the port of `side` to `to.port_be` and follows with the checksum
/// (RFC 1624), the address change from `old_addr_be` included where the
/// checksum covers the pseudo-header. A zero "none" checksum stays zero.
#[inline(always)]
fn rewrite_port<T: Transport>(header: *mut u8, side: Side, old_addr_be: u32, to: &Endpoint) {
    let port_at = if side == Side::Source { T::SRC_PORT_AT } else { T::DST_PORT_AT };
    let old_port = field(header, port_at);
    set_field(header, port_at, to.port_be);
    let before = field(header, T::CHECK_AT);
    let mut check = replace16(before, old_port, to.port_be);
    if T::PSEUDO_HEADER {
        check = replace32(check, old_addr_be, to.addr_be);
    }
    if T::ZERO_IS_NONE {
        check = udp_fixup(before, check);
    }
    set_field(header, T::CHECK_AT, check);
}

impl L4 {
    /// The protocol and port of the endpoint on `side` of a packet the
    /// gateway translates in that direction: TCP, UDP and SCTP either way,
    /// ICMP echo requests outbound (their source) and replies inbound
    /// (their destination).
    #[inline(always)]
    pub fn endpoint_port(&self, side: Side) -> Option<(u8, u16)> {
        match *self {
            L4::Tcp(h) => Some((Tcp::NR, port_be::<Tcp>(h, side))),
            L4::Udp(h) => Some((Udp::NR, port_be::<Udp>(h, side))),
            L4::Sctp(h) => Some((Sctp::NR, port_be::<Sctp>(h, side))),
            L4::IcmpEcho(h) if icmp::echo_translates(h, side) => Some((IcmpEcho::NR, port_be::<IcmpEcho>(h, side))),
            _ => None,
        }
    }

    /// TCP/UDP/SCTP (source, destination) ports, network order; `None` for
    /// other protocols.
    #[inline(always)]
    pub fn ports_be(&self) -> Option<(u16, u16)> {
        match *self {
            L4::Tcp(h) => Some((port_be::<Tcp>(h, Side::Source), port_be::<Tcp>(h, Side::Destination))),
            L4::Udp(h) => Some((port_be::<Udp>(h, Side::Source), port_be::<Udp>(h, Side::Destination))),
            L4::Sctp(h) => Some((port_be::<Sctp>(h, Side::Source), port_be::<Sctp>(h, Side::Destination))),
            _ => None,
        }
    }

    /// Rewrites the port (identifier) of `side` to `to`'s, the address
    /// having gone from `old_addr_be` to `to.addr_be`, with the checksum; an
    /// SCTP packet's CRC32c field becomes `sctp_check` (computed before
    /// the rewrite, `sctp::check_after`). ICMP errors are rewritten by
    /// `icmp` (their quote), other headers not at all.
    #[inline(always)]
    pub fn rewrite(&self, side: Side, old_addr_be: u32, to: &Endpoint, sctp_check: SctpCheck) {
        match *self {
            L4::Tcp(h) => rewrite_port::<Tcp>(h, side, old_addr_be, to),
            L4::Udp(h) => rewrite_port::<Udp>(h, side, old_addr_be, to),
            L4::Sctp(h) => sctp::rewrite_port(h, side, to, sctp_check),
            L4::IcmpEcho(h) => rewrite_port::<IcmpEcho>(h, side, old_addr_be, to),
            L4::IcmpError(_) | L4::Other => {}
        }
    }

    /// The TCP/UDP checksum field and whether zero means "none" there: the
    /// field a sender with TX offload leaves partial.
    #[inline(always)]
    pub fn pseudo_header_checksum(&self) -> Option<(*mut [u8; 2], bool)> {
        match *self {
            L4::Tcp(h) => Some((checksum_field::<Tcp>(h), Tcp::ZERO_IS_NONE)),
            L4::Udp(h) => Some((checksum_field::<Udp>(h), Udp::ZERO_IS_NONE)),
            _ => None,
        }
    }
}

#[inline(always)]
fn checksum_field<T: Transport>(header: *mut u8) -> *mut [u8; 2] {
    // SAFETY: within the header, as `field`.
    unsafe { header.add(T::CHECK_AT) as *mut [u8; 2] }
}

/// Where a `T` header's port of `side` and its checksum sit in the 8 bytes
/// an ICMP error quotes, the checksum `None` when it lies beyond them
/// (TCP's, SCTP's CRC32c): for rewriting quotes (`icmp`).
#[inline(always)]
pub fn quoted_fields<T: Transport>(side: Side) -> (usize, Option<usize>) {
    let port_at = if side == Side::Source { T::SRC_PORT_AT } else { T::DST_PORT_AT };
    let check_at = if !T::CRC32C && T::CHECK_AT + 2 <= nat_common::icmp::QUOTED_L4_LEN { Some(T::CHECK_AT) } else { None };
    (port_at, check_at)
}
