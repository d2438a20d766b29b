//! ICMP: echo, whose identifier is translated like a port (RFC 5508 REQ-1),
//! and the errors that quote a packet the gateway translated (RFC 5508
//! REQ-3..5), whose quote is translated with them.

use aya_ebpf::programs::XdpContext;
use nat_common::{
    Endpoint,
    checksum::{replace16, replace32, udp_fixup},
    proto::{IcmpEcho, Sctp, Tcp, Transport, Udp},
};
use network_types::ip::Ipv4Hdr;

use crate::{
    packet::{BAD_IP_HEADER, Invalid, Side, ptr_at},
    proto::quoted_fields,
};

pub const ECHO_REPLY: u8 = 0;
pub const ECHO_REQUEST: u8 = 8;
pub const DEST_UNREACHABLE: u8 = 3;
pub const TIME_EXCEEDED: u8 = 11;

/// The type byte of an ICMP header.
#[inline(always)]
pub fn kind(header: *mut u8) -> u8 {
    // SAFETY: the first byte of a header `parse` checked.
    unsafe { *header }
}

/// Whether an echo header is the kind translated on `side`: a request's
/// identifier is its sender's (outbound), a reply's its receiver's (inbound).
#[inline(always)]
pub fn echo_translates(header: *mut u8, side: Side) -> bool {
    kind(header) == if side == Side::Source { ECHO_REQUEST } else { ECHO_REPLY }
}

/// An ICMP error (Destination Unreachable, Time Exceeded) and the fixed
/// part of the IPv4 header of the packet it is about.
#[repr(C)]
pub struct IcmpError {
    pub kind: u8,
    pub code: u8,
    pub check: [u8; 2],
    pub rest: [u8; 4],
    pub inner: Ipv4Hdr,
}

/// An ICMP error and the first 8 bytes of the quoted packet's L4 header
/// (ports, or the echo identifier), as RFC 792 requires every error to
/// carry, found past the quoted header's options (RFC 5508 REQ-3b).
#[derive(Clone, Copy)]
pub struct Quoted {
    error: *mut IcmpError,
    l4: *mut [u8; 8],
    /// Offset of the ICMP header in the frame.
    pub offset: usize,
    /// The quoted IPv4 header's length.
    pub inner_len: usize,
}

/// The ICMP error at `offset` and the quoted packet's L4 bytes, past its
/// IPv4 options.
#[inline(always)]
pub fn quoted(ctx: &XdpContext, offset: usize) -> Result<Quoted, Invalid> {
    let error: *mut IcmpError = ptr_at(ctx, offset)?;
    // The mask bounds the length for the verifier: IHL is 4 bits.
    // SAFETY: `ptr_at` checked the whole IcmpError.
    let inner_len = ((unsafe { (*error).inner.vihl } & 0x0f) as usize) * 4;
    if inner_len < Ipv4Hdr::LEN {
        return Err(BAD_IP_HEADER);
    }
    let l4 = ptr_at(ctx, offset + 8 + inner_len)?;
    Ok(Quoted { error, l4, offset, inner_len })
}

impl Quoted {
    /// The error's header and the fixed part of the quoted IPv4 header, to
    /// read. (Writes go through the pointer, with no reference alive.)
    #[inline(always)]
    fn error(&self) -> &IcmpError {
        // SAFETY: `quoted` checked the whole IcmpError in the frame.
        unsafe { &*self.error }
    }

    /// The quoted L4 bytes, to read.
    #[inline(always)]
    fn quoted_l4(&self) -> &[u8; 8] {
        // SAFETY: `quoted` checked the 8 bytes in the frame.
        unsafe { &*self.l4 }
    }

    /// Whether the error says the sender refused the quoted packet: a
    /// Destination Unreachable for its protocol or port, or administratively
    /// prohibited (RFC 1812 5.2.7.1). Not Fragmentation Needed, not Time
    /// Exceeded: a server that sends those is not refusing service.
    #[inline(always)]
    pub fn is_refusal(&self) -> bool {
        const PROTOCOL: u8 = 2;
        const PORT: u8 = 3;
        const NET_PROHIBITED: u8 = 9;
        const HOST_PROHIBITED: u8 = 10;
        const ADMIN_PROHIBITED: u8 = 13;
        let error = self.error();
        error.kind == DEST_UNREACHABLE && matches!(error.code, PROTOCOL | PORT | NET_PROHIBITED | HOST_PROHIBITED | ADMIN_PROHIBITED)
    }

    /// The quoted packet's protocol.
    #[inline(always)]
    pub fn proto(&self) -> u8 {
        self.error().inner.proto
    }

    /// The quoted packet's source address, network order.
    #[inline(always)]
    pub fn inner_src_be(&self) -> u32 {
        u32::from_ne_bytes(self.error().inner.src_addr)
    }

    /// The quoted packet's destination address, network order.
    #[inline(always)]
    pub fn inner_dst_be(&self) -> u32 {
        u32::from_ne_bytes(self.error().inner.dst_addr)
    }

    /// The 16-bit field at `at` of the quoted L4 bytes, read in the packet
    /// (a copy on the stack would be indexed through a pointer the verifier
    /// refuses arithmetic on).
    #[inline(always)]
    fn l4_field(&self, at: usize) -> u16 {
        let l4 = self.quoted_l4();
        u16::from_ne_bytes([l4[at & 7], l4[(at + 1) & 7]])
    }

    /// The quoted packet's source (`Side::Source`) or destination endpoint:
    /// address and TCP/UDP/SCTP port. `None` for other protocols.
    #[inline(always)]
    pub fn endpoint(&self, side: Side) -> Option<Endpoint> {
        let (port_at, _) = match self.proto() {
            Tcp::NR => quoted_fields::<Tcp>(side),
            Udp::NR => quoted_fields::<Udp>(side),
            Sctp::NR => quoted_fields::<Sctp>(side),
            _ => return None,
        };
        let addr_be = if side == Side::Source { self.inner_src_be() } else { self.inner_dst_be() };
        Some(Endpoint::from_be(addr_be, self.l4_field(port_at), self.proto()))
    }

    /// What an error from the WAN is about, as the gateway sent it: the
    /// quoted source's port (TCP/UDP) or an echo request's identifier, and
    /// the remote's port (0 for echo: a remote has no identifier of its
    /// own). `None` for anything else.
    #[inline(always)]
    pub fn sent_ports_be(&self) -> Option<(u16, u16)> {
        match self.proto() {
            // The three keep their ports at the same offsets.
            Tcp::NR | Udp::NR | Sctp::NR => Some((self.l4_field(Tcp::SRC_PORT_AT), self.l4_field(Tcp::DST_PORT_AT))),
            IcmpEcho::NR if self.quoted_l4()[0] == ECHO_REQUEST => Some((self.l4_field(IcmpEcho::SRC_PORT_AT), 0)),
            _ => None,
        }
    }

    /// Rewrites the packet the error quotes (RFC 5508 REQ-4/5): its source
    /// (an error from the WAN about a packet the gateway sent from `to`'s
    /// external endpoint: reverted to the inside one) or its destination (an
    /// inside host's error about an inbound packet: set back to the external
    /// endpoint). The quoted IPv4 checksum, the quoted UDP or echo checksum
    /// (TCP's lies beyond the 8 quoted bytes) and the error's own checksum
    /// follow, incrementally. Type and code are kept. The caller rewrites
    /// the outer header.
    ///
    /// A quoted SCTP packet gets its ports, not its CRC32c: the CRC sits at
    /// bytes 8..12, past the 8 bytes RFC 792 asks an error to quote, and
    /// where a router quotes more the quote is still usually cut short of
    /// the packet the CRC covers, so it could not be checked anyway (the
    /// receiver matches the error by addresses, ports and verification tag).
    #[inline(always)]
    pub fn rewrite(&self, side: Side, to: &Endpoint) {
        let fields = match self.proto() {
            Tcp::NR => quoted_fields::<Tcp>(side),
            Udp::NR => quoted_fields::<Udp>(side),
            Sctp::NR => quoted_fields::<Sctp>(side),
            IcmpEcho::NR => quoted_fields::<IcmpEcho>(side),
            // Callers translate only errors about these four.
            _ => return,
        };
        let pseudo_header = matches!(self.proto(), Tcp::NR | Udp::NR);
        let zero_is_none = self.proto() == Udp::NR;
        let (error, l4) = (self.error, self.l4);
        // SAFETY: as the accessors; every index is masked into the 8 bytes.
        unsafe {
            let inner = &raw mut (*error).inner;
            let mut icmp_check = u16::from_ne_bytes((*error).check);

            let addr_field = match side {
                Side::Source => &mut (*inner).src_addr,
                Side::Destination => &mut (*inner).dst_addr,
            };
            let old_addr = u32::from_ne_bytes(*addr_field);
            *addr_field = to.addr_be.to_ne_bytes();
            icmp_check = replace32(icmp_check, old_addr, to.addr_be);
            let old_ip_check = u16::from_ne_bytes((*inner).check);
            let ip_check = replace32(old_ip_check, old_addr, to.addr_be);
            (*inner).check = ip_check.to_ne_bytes();
            icmp_check = replace16(icmp_check, old_ip_check, ip_check);

            let (port_at, check_at) = fields;
            let old_port = self.l4_field(port_at);
            let new_port = to.port_be.to_ne_bytes();
            (*l4)[port_at & 7] = new_port[0];
            (*l4)[(port_at + 1) & 7] = new_port[1];
            icmp_check = replace16(icmp_check, old_port, to.port_be);
            if let Some(at) = check_at {
                let old = self.l4_field(at);
                let mut new = replace16(old, old_port, to.port_be);
                if pseudo_header {
                    new = replace32(new, old_addr, to.addr_be);
                }
                if zero_is_none {
                    new = udp_fixup(old, new);
                }
                let bytes = new.to_ne_bytes();
                (*l4)[at & 7] = bytes[0];
                (*l4)[(at + 1) & 7] = bytes[1];
                icmp_check = replace16(icmp_check, old, new);
            }
            (*error).check = icmp_check.to_ne_bytes();
        }
    }
}
