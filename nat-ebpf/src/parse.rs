//! Header parsing: every read goes through one bounds-checked `ptr_at`, and
//! every IPv4 packet is checked as RFC 1812 5.2.2 asks of a router before
//! anything is done with it: version, header length, total length, header
//! checksum, options, and the L4 header against the payload it sits in.

use core::mem;

use aya_ebpf::{macros::map, maps::PerCpuArray, programs::XdpContext};
use nat_common::{
    Endpoint, FragKey, Reason, checksum, icmp::QUOTED_L4_LEN,
    ipv4_options::{self, MAX_OPTIONS_LEN},
    proto,
};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::Ipv4Hdr,
    tcp::TcpHdr,
    udp::UdpHdr,
    vlan::VlanHdr,
};

/// 802.1Q and 802.1ad (QinQ): at most this many tags are walked.
const MAX_VLAN_TAGS: usize = 2;

/// Why a frame is refused before it is looked at further: the reason it is
/// dropped and counted under (`DropMalformed` for a frame cut short, the
/// `DropBad*` reasons for headers that lie).
pub struct Invalid(pub Reason);

const TRUNCATED: Invalid = Invalid(Reason::DropMalformed);
const BAD_IP_HEADER: Invalid = Invalid(Reason::DropBadIpHeader);
const BAD_L4_HEADER: Invalid = Invalid(Reason::DropBadL4Header);

/// A pointer to a `T` at `offset` bytes into the packet, if the whole `T` is there.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Result<*mut T, Invalid> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + mem::size_of::<T>() > end {
        return Err(TRUNCATED);
    }
    Ok((start + offset) as *mut T)
}

/// `value` read back through the stack: LLVM forgets what it knew about it,
/// the verifier (which tracks the stack slot) does not. For offsets whose
/// bounds check LLVM would otherwise prove redundant from an earlier check
/// (the datagram within the frame) and drop, leaving the verifier a read it
/// cannot prove safe.
#[inline(always)]
pub fn opaque(value: usize) -> usize {
    let slot = value;
    unsafe { core::ptr::read_volatile(&slot) }
}

/// A copy of `value` the verifier does not tie to it. A plain copy shares
/// the verifier's id, so every comparison a loop makes on it narrows the
/// original too, and each way out of the loop then walks the rest of the
/// program as a state of its own (the header length of every option count
/// did, past the verifier's million instructions). An xor with an opaque
/// zero gives the copy an id of its own.
#[inline(always)]
pub fn unlinked(value: usize) -> usize {
    value ^ opaque(0)
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
/// header the gateway translates, and checks them (RFC 1812 5.2.2).
#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Result<Frame, Invalid> {
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
        return Err(BAD_IP_HEADER);
    }
    // The whole datagram must be in the frame (Ethernet padding may follow it).
    if ctx.data() + l3_offset + tot_len > ctx.data_end() {
        return Err(TRUNCATED);
    }
    check_header(ctx, ip, l3_offset, header_len)?;

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
    // What the IPv4 header says follows it; the frame may hold more (padding).
    let payload_len = tot_len - header_len;
    // How many bytes of L4 header the packet must hold for `l4` to be
    // translated; checked against the payload below.
    let (mut l4, needed) = match ip_proto {
        proto::TCP => {
            let tcp: *mut TcpHdr = ptr_at(ctx, l4_offset)?;
            // Data offset in 32-bit words, the high nibble of byte 12.
            let data_offset = unsafe { *(tcp as *const u8).add(12) } >> 4;
            if data_offset < 5 && payload_len >= mem::size_of::<TcpHdr>() {
                return Err(BAD_L4_HEADER);
            }
            (L4::Tcp(tcp), (data_offset as usize * 4).max(mem::size_of::<TcpHdr>()))
        }
        proto::UDP => {
            let udp: *mut UdpHdr = ptr_at(ctx, l4_offset)?;
            let udp_len = u16::from_be_bytes(unsafe { (*udp).len }) as usize;
            // RFC 768: the length covers the header. Only a whole datagram's
            // must fit its payload: a first fragment's counts every fragment.
            let too_long = fragment == Fragment::No && udp_len > payload_len;
            if payload_len >= mem::size_of::<UdpHdr>() && (udp_len < mem::size_of::<UdpHdr>() || too_long) {
                return Err(BAD_L4_HEADER);
            }
            (L4::Udp(udp), mem::size_of::<UdpHdr>())
        }
        proto::ICMP => {
            let icmp: *mut IcmpEcho = ptr_at(ctx, l4_offset)?;
            match unsafe { (*icmp).kind } {
                ICMP_ECHO_REQUEST | ICMP_ECHO_REPLY => (L4::IcmpEcho(icmp), mem::size_of::<IcmpEcho>()),
                // Too short to carry the offending packet's header (in the
                // frame and within the total length): not translatable,
                // handled as any other ICMP. A fragmented error is not
                // translated either.
                ICMP_DEST_UNREACHABLE | ICMP_TIME_EXCEEDED => match quoted(ctx, l4_offset) {
                    Ok(quoted) if fragment == Fragment::No && quoted_within(&quoted, payload_len) => (L4::IcmpError(quoted), 0),
                    _ => (L4::Other, 0),
                },
                _ => (L4::Other, 0),
            }
        }
        _ => (L4::Other, 0),
    };
    // The header must lie within the total length: the bytes past it are no
    // part of the datagram. A first fragment too short for its header is a
    // tiny fragment (RFC 1858): kept, but not translated.
    if needed > payload_len {
        if fragment == Fragment::No {
            return Err(BAD_L4_HEADER);
        }
        l4 = L4::Other;
    }
    Ok(Frame::Ipv4(Ipv4Packet { eth, l3_offset, ip, l4, fragment }))
}

/// Whether the ICMP error's quote (its IPv4 header and the L4 bytes after
/// it) lies within the error's payload, behind the 8-byte ICMP header.
#[inline(always)]
fn quoted_within(quoted: &Quoted, payload_len: usize) -> bool {
    8 + quoted.inner_len + QUOTED_L4_LEN <= payload_len
}

/// RFC 1812 5.2.2: the header checksum must hold, and (RFC 791 3.1) every
/// option's length must stay within the header, so nothing after it is
/// taken for an option or the other way round. The fixed 20 bytes are summed
/// inline from the header `parse` read; options (rare) are copied to the
/// stack and checked there.
#[inline(always)]
fn check_header(ctx: &XdpContext, ip: *const Ipv4Hdr, l3_offset: usize, header_len: usize) -> Result<(), Invalid> {
    // Summed inline: the helper (bpf_csum_diff) cost ~35 ns a packet here.
    // SAFETY: `ip` was bounds-checked for a whole `Ipv4Hdr` (20 bytes).
    let mut sum = checksum::sum_bytes(unsafe { &*(ip as *const [u8; Ipv4Hdr::LEN]) });
    // Tested on a copy: a test of the length itself would split every later
    // path in two (no options, options), which the verifier cannot merge.
    let options_len = unlinked(header_len) - Ipv4Hdr::LEN;
    if options_len > 0 {
        let options = read_options(ctx, l3_offset, options_len)?;
        // The zeros past the options add nothing to the sum.
        sum = checksum::add(sum, checksum::sum_bytes(options));
        if !options_fit(options, options_len) {
            return Err(BAD_IP_HEADER);
        }
    }
    if checksum::fold(sum) != 0xffff {
        return Err(Invalid(Reason::DropBadIpChecksum));
    }
    Ok(())
}

/// Where `read_options` copies a packet's options: a per-CPU scratch slot,
/// because the programs' 512 bytes of stack are spoken for.
#[map]
static OPTIONS: PerCpuArray<[u8; MAX_OPTIONS_LEN]> = PerCpuArray::with_max_entries(1, 0);

/// The `len` (4..=40) option bytes after the fixed header, zero-padded to
/// `MAX_OPTIONS_LEN`. Copied out of the packet, every byte sits at a
/// constant offset: a walk through the packet would read at offsets the
/// options themselves decide, and the verifier would follow every option
/// layout to the end of the program.
#[inline(always)]
fn read_options(ctx: &XdpContext, l3_offset: usize, len: usize) -> Result<&'static [u8; MAX_OPTIONS_LEN], Invalid> {
    let Some(options) = OPTIONS.get_ptr_mut(0) else {
        return Err(BAD_IP_HEADER);
    };
    if len > MAX_OPTIONS_LEN {
        return Err(BAD_IP_HEADER);
    }
    // SAFETY: a per-CPU slot no one else writes while this program runs; it
    // holds MAX_OPTIONS_LEN >= len bytes.
    unsafe {
        *options = [0; MAX_OPTIONS_LEN];
        let copied = aya_ebpf::helpers::bpf_xdp_load_bytes(ctx.ctx as *mut _, (l3_offset + Ipv4Hdr::LEN) as u32, options as *mut _, len as u32);
        if copied != 0 {
            return Err(TRUNCATED);
        }
        Ok(&*options)
    }
}

/// `nat_common::ipv4_options::fit` in a BPF subprogram of its own (a call,
/// ~10 ns, only for packets with options): written out inline its 40 steps
/// pushed the programs past their 512 bytes of stack.
#[inline(never)]
fn options_fit(options: &[u8; MAX_OPTIONS_LEN], len: usize) -> bool {
    ipv4_options::fit(options, len)
}

/// The ICMP error at `offset` and the quoted packet's L4 bytes, past its
/// IPv4 options.
#[inline(always)]
fn quoted(ctx: &XdpContext, offset: usize) -> Result<Quoted, Invalid> {
    let error: *mut IcmpError = ptr_at(ctx, offset)?;
    // The mask bounds the length for the verifier: IHL is 4 bits.
    let inner_len = ((unsafe { (*error).inner.vihl } & 0x0f) as usize) * 4;
    if inner_len < Ipv4Hdr::LEN {
        return Err(BAD_IP_HEADER);
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

    /// Source address, network byte order.
    #[inline(always)]
    pub fn src_be(&self) -> u32 {
        u32::from_ne_bytes(unsafe { (*self.ip).src_addr })
    }

    /// Destination address, network byte order.
    #[inline(always)]
    pub fn dst_be(&self) -> u32 {
        u32::from_ne_bytes(unsafe { (*self.ip).dst_addr })
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
