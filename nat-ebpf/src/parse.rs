//! Header parsing: every read goes through one bounds-checked `ptr_at`.

use core::mem;

use aya_ebpf::programs::XdpContext;
use nat_common::{Endpoint, FragKey, proto};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::Ipv4Hdr,
    tcp::TcpHdr,
    udp::UdpHdr,
    vlan::VlanHdr,
};

/// 802.1Q and 802.1ad (QinQ): at most this many tags are walked.
const MAX_VLAN_TAGS: usize = 2;

/// The frame is shorter than a header it claims to carry, or the IPv4 header is
/// not valid. Counted and dropped by the caller.
pub struct Malformed;

/// A pointer to a `T` at `offset` bytes into the packet, if the whole `T` is there.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Result<*mut T, Malformed> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + mem::size_of::<T>() > end {
        return Err(Malformed);
    }
    Ok((start + offset) as *mut T)
}

/// ICMP echo request/reply (RFC 792): the identifier plays the role of a port.
#[repr(C)]
pub struct IcmpEcho {
    pub kind: u8,
    pub code: u8,
    pub check: [u8; 2],
    pub id: [u8; 2],
    pub seq: [u8; 2],
}
pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMP_DEST_UNREACHABLE: u8 = 3;
pub const ICMP_TIME_EXCEEDED: u8 = 11;

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
    pub error: *mut IcmpError,
    pub l4: *mut [u8; 8],
    /// Offset of the ICMP header in the frame, and the quoted IPv4 header's length.
    pub offset: usize,
    pub inner_len: usize,
}

impl Quoted {
    /// The quoted packet's protocol.
    #[inline(always)]
    pub fn proto(&self) -> u8 {
        unsafe { (*self.error).inner.proto }
    }

    /// The quoted packet's source (`Side::Source`) or destination endpoint:
    /// address and TCP/UDP port. `None` for other protocols.
    #[inline(always)]
    pub fn endpoint(&self, side: crate::rewrite::Side) -> Option<Endpoint> {
        let proto_nr = self.proto();
        if proto_nr != proto::TCP && proto_nr != proto::UDP {
            return None;
        }
        let l4 = unsafe { *self.l4 };
        let (addr, port) = unsafe {
            match side {
                crate::rewrite::Side::Source => ((*self.error).inner.src_addr, [l4[0], l4[1]]),
                crate::rewrite::Side::Destination => ((*self.error).inner.dst_addr, [l4[2], l4[3]]),
            }
        };
        Some(Endpoint::from_be(u32::from_ne_bytes(addr), u16::from_ne_bytes(port), proto_nr))
    }
}

/// Where the translatable part of the packet is, and how to rewrite it.
pub enum L4 {
    Tcp(*mut TcpHdr),
    Udp(*mut UdpHdr),
    /// Echo request or reply (which one is checked against the direction).
    IcmpEcho(*mut IcmpEcho),
    /// Destination Unreachable or Time Exceeded, with the quoted header.
    IcmpError(Quoted),
    /// Another protocol, another ICMP type, or a later fragment: no header
    /// to translate.
    Other,
}

/// Where a packet stands in IPv4 fragmentation (RFC 791).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Fragment {
    /// A whole datagram.
    No,
    /// Offset 0, more fragments: the L4 header is here, the rest follows.
    First,
    /// Offset > 0: payload only; translated by the datagram's identity.
    Later,
}

/// An IPv4 packet with its headers located.
pub struct Ipv4Packet {
    pub eth: *mut EthHdr,
    /// Offset of the IPv4 header (after Ethernet and VLAN tags).
    pub l3_offset: usize,
    pub ip: *mut Ipv4Hdr,
    pub l4: L4,
    pub fragment: Fragment,
}

pub enum Frame {
    /// ARP, IPv6, LLDP...: not ours.
    NotIpv4,
    Ipv4(Ipv4Packet),
}

/// Parses Ethernet (up to two VLAN tags), IPv4 (options allowed) and the L4
/// header the gateway translates.
#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Result<Frame, Malformed> {
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    let mut ether_type = unsafe { (*eth).ether_type };
    let mut l3_offset = EthHdr::LEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ether_type != EtherType::Ieee8021q as u16 && ether_type != EtherType::Ieee8021ad as u16
        {
            break;
        }
        let vlan: *const VlanHdr = ptr_at(ctx, l3_offset)?;
        ether_type = unsafe { (*vlan).ether_type };
        l3_offset += VlanHdr::LEN;
    }
    if ether_type != EtherType::Ipv4 as u16 {
        return Ok(Frame::NotIpv4);
    }

    let ip: *mut Ipv4Hdr = ptr_at(ctx, l3_offset)?;
    const MORE_FRAGMENTS: u16 = 0x2000;
    const OFFSET_MASK: u16 = 0x1fff;
    let (vihl, tot_len, frags, ip_proto) = unsafe {
        (
            (*ip).vihl,
            u16::from_be_bytes((*ip).tot_len) as usize,
            u16::from_be_bytes((*ip).frags),
            (*ip).proto,
        )
    };
    // The mask bounds the offset for the verifier: IHL is 4 bits.
    let header_len = ((vihl & 0x0f) as usize) * 4;
    if vihl >> 4 != 4 || header_len < Ipv4Hdr::LEN || tot_len < header_len {
        return Err(Malformed);
    }
    // The whole datagram must be in the frame (Ethernet padding may follow it).
    if ctx.data() + l3_offset + tot_len > ctx.data_end() {
        return Err(Malformed);
    }

    // A later fragment (non-zero offset) carries no L4 header: only its
    // addresses can be translated, by the datagram's identity (`FRAGS`). A
    // first fragment (offset 0, more-fragments set) carries it, and must carry
    // all of it (RFC 1858: no tiny first fragments); a fragmented ICMP error is
    // not translated.
    // One test for the common case, a whole datagram.
    let fragment = if frags & (MORE_FRAGMENTS | OFFSET_MASK) == 0 {
        Fragment::No
    } else if frags & OFFSET_MASK != 0 {
        return Ok(Frame::Ipv4(Ipv4Packet { eth, l3_offset, ip, l4: L4::Other, fragment: Fragment::Later }));
    } else {
        Fragment::First
    };

    let l4_offset = l3_offset + header_len;
    let mut l4 = match ip_proto {
        proto::TCP => L4::Tcp(ptr_at(ctx, l4_offset)?),
        proto::UDP => L4::Udp(ptr_at(ctx, l4_offset)?),
        proto::ICMP => {
            let icmp: *mut IcmpEcho = ptr_at(ctx, l4_offset)?;
            match unsafe { (*icmp).kind } {
                ICMP_ECHO_REQUEST | ICMP_ECHO_REPLY => L4::IcmpEcho(icmp),
                // Too short to carry the offending packet's header: not
                // translatable, handled as any other ICMP.
                ICMP_DEST_UNREACHABLE | ICMP_TIME_EXCEEDED => match quoted(ctx, l4_offset) {
                    Ok(quoted) => L4::IcmpError(quoted),
                    Err(_) => L4::Other,
                },
                _ => L4::Other,
            }
        }
        _ => L4::Other,
    };
    if let Fragment::First = fragment {
        let l4_header_len = match l4 {
            L4::Tcp(_) => mem::size_of::<TcpHdr>(),
            L4::Udp(_) => mem::size_of::<UdpHdr>(),
            L4::IcmpEcho(_) => mem::size_of::<IcmpEcho>(),
            // A fragmented ICMP error: not translated.
            _ => usize::MAX,
        };
        if tot_len - header_len < l4_header_len {
            l4 = L4::Other;
        }
    }
    Ok(Frame::Ipv4(Ipv4Packet { eth, l3_offset, ip, l4, fragment }))
}

/// The ICMP error at `offset` and the quoted packet's L4 bytes, past its
/// IPv4 options.
#[inline(always)]
fn quoted(ctx: &XdpContext, offset: usize) -> Result<Quoted, Malformed> {
    let error: *mut IcmpError = ptr_at(ctx, offset)?;
    // The mask bounds the length for the verifier: IHL is 4 bits.
    let inner_len = ((unsafe { (*error).inner.vihl } & 0x0f) as usize) * 4;
    if inner_len < Ipv4Hdr::LEN {
        return Err(Malformed);
    }
    let l4 = ptr_at(ctx, offset + 8 + inner_len)?;
    Ok(Quoted { error, l4, offset, inner_len })
}

impl Ipv4Packet {
    /// The packet's source endpoint, if it is one the gateway translates
    /// outbound (TCP, UDP, ICMP echo request).
    #[inline(always)]
    pub fn source(&self) -> Option<Endpoint> {
        let addr_be = u32::from_ne_bytes(unsafe { (*self.ip).src_addr });
        let (port_be, ip_proto) = match self.l4 {
            L4::Tcp(tcp) => (u16::from_ne_bytes(unsafe { (*tcp).source }), proto::TCP),
            L4::Udp(udp) => (u16::from_ne_bytes(unsafe { (*udp).src }), proto::UDP),
            L4::IcmpEcho(icmp) if unsafe { (*icmp).kind } == ICMP_ECHO_REQUEST => {
                (u16::from_ne_bytes(unsafe { (*icmp).id }), proto::ICMP)
            }
            _ => return None,
        };
        Some(Endpoint::from_be(addr_be, port_be, ip_proto))
    }

    /// The packet's destination endpoint, if it is one the gateway translates
    /// inbound (TCP, UDP, ICMP echo reply).
    #[inline(always)]
    pub fn destination(&self) -> Option<Endpoint> {
        let addr_be = u32::from_ne_bytes(unsafe { (*self.ip).dst_addr });
        let (port_be, ip_proto) = match self.l4 {
            L4::Tcp(tcp) => (u16::from_ne_bytes(unsafe { (*tcp).dest }), proto::TCP),
            L4::Udp(udp) => (u16::from_ne_bytes(unsafe { (*udp).dst }), proto::UDP),
            L4::IcmpEcho(icmp) if unsafe { (*icmp).kind } == ICMP_ECHO_REPLY => {
                (u16::from_ne_bytes(unsafe { (*icmp).id }), proto::ICMP)
            }
            _ => return None,
        };
        Some(Endpoint::from_be(addr_be, port_be, ip_proto))
    }

    /// TCP/UDP (source, destination) ports, network order; `None` for
    /// other protocols.
    #[inline(always)]
    pub fn ports_be(&self) -> Option<(u16, u16)> {
        match self.l4 {
            L4::Tcp(tcp) => unsafe { Some((u16::from_ne_bytes((*tcp).source), u16::from_ne_bytes((*tcp).dest))) },
            L4::Udp(udp) => unsafe { Some((u16::from_ne_bytes((*udp).src), u16::from_ne_bytes((*udp).dst))) },
            _ => None,
        }
    }

    /// The remote end of a packet being translated on `side`: the
    /// destination of an outbound packet (the source is rewritten), the
    /// source of an inbound one. The port is 0 for ICMP echo: a remote has no
    /// identifier of its own.
    #[inline(always)]
    pub fn remote(&self, translated: crate::rewrite::Side) -> (u32, u16) {
        let (src_port_be, dst_port_be) = self.ports_be().unwrap_or((0, 0));
        unsafe {
            match translated {
                crate::rewrite::Side::Source => (u32::from_ne_bytes((*self.ip).dst_addr), dst_port_be),
                crate::rewrite::Side::Destination => (u32::from_ne_bytes((*self.ip).src_addr), src_port_be),
            }
        }
    }

    /// The identity of this packet's datagram as it arrived (RFC 791), for
    /// the direction `dir` (`frag_dir::*`).
    #[inline(always)]
    pub fn frag_key(&self, dir: u8) -> FragKey {
        unsafe {
            FragKey {
                src_be: u32::from_ne_bytes((*self.ip).src_addr),
                dst_be: u32::from_ne_bytes((*self.ip).dst_addr),
                id_be: u16::from_ne_bytes((*self.ip).id),
                proto: (*self.ip).proto,
                dir,
            }
        }
    }

    #[inline(always)]
    pub fn ttl(&self) -> u8 {
        unsafe { (*self.ip).ttl }
    }

    /// Multicast, limited broadcast or zeronet destination: the kernel never
    /// routes these through the unicast path, and they are never translated.
    #[inline(always)]
    pub fn dst_is_special(&self) -> bool {
        let first = unsafe { (*self.ip).dst_addr[0] };
        first >= 224 || first == 0
    }
}
