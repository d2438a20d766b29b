//! Parsing, and the checks RFC 1812 5.2.2 asks of a router before anything
//! is done with a packet: version, header length, total length, header
//! checksum, options, and the L4 header against the payload it sits in.
//! Every header read goes through `ptr_at`.


use aya_ebpf::{macros::map, maps::PerCpuArray, programs::XdpContext};
use nat_common::{
    Endpoint, FragKey, Reason, checksum,
    icmp::QUOTED_L4_LEN,
    ipv4_options::{self, MAX_OPTIONS_LEN},
    proto::{IcmpEcho, SCTP_MAX_PACKET_LEN, SCTP_MIN_PACKET_LEN, Sctp, Tcp, Transport, Udp},
};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::Ipv4Hdr,
    vlan::VlanHdr,
};

use crate::{
    packet::{BAD_IP_HEADER, BAD_L4_HEADER, Invalid, Side, TRUNCATED, ptr_at, unlinked, words, zero_in_words},
    proto::{
        L4,
        icmp::{self, Quoted},
    },
};

/// Offsets of the IPv4 header's fields read and written as words.
pub const TOT_LEN_AT: usize = 2;
pub const TTL_AT: usize = 8;
pub const CHECK_AT: usize = 10;
pub const SRC_ADDR_AT: usize = 12;
pub const DST_ADDR_AT: usize = 16;

/// 802.1Q and 802.1ad (QinQ): at most this many tags are walked.
const MAX_VLAN_TAGS: usize = 2;

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

/// An IPv4 packet with its headers located and checked.
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
///
/// `SCTP`: for the SCTP programs, which translate SCTP and nothing else; the
/// main programs hand SCTP packets to them (`main`) and parse no SCTP
/// header. So the verifier walks each program for its own protocols only:
/// the SCTP paths cost nat_lan nothing of its budget.
#[inline(always)]
pub fn parse<const SCTP: bool>(ctx: &XdpContext) -> Result<Frame, Invalid> {
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: checked in the frame by `ptr_at`.
    let mut ether_type = unsafe { (*eth).ether_type };
    let mut l3_offset = EthHdr::LEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ether_type != EtherType::Ieee8021q as u16 && ether_type != EtherType::Ieee8021ad as u16 {
            break;
        }
        let vlan: *const VlanHdr = ptr_at(ctx, l3_offset)?;
        // SAFETY: checked in the frame by `ptr_at`.
        ether_type = unsafe { (*vlan).ether_type };
        l3_offset += VlanHdr::LEN;
    }
    if ether_type != EtherType::Ipv4 as u16 {
        return Ok(Frame::NotIpv4);
    }

    let ip: *mut Ipv4Hdr = ptr_at(ctx, l3_offset)?;
    const MORE_FRAGMENTS: u16 = 0x2000;
    const OFFSET_MASK: u16 = 0x1fff;
    // SAFETY: checked in the frame by `ptr_at`.
    let (vihl, tot_len, frags, ip_proto) =
        unsafe { ((*ip).vihl, u16::from_be_bytes((*ip).tot_len) as usize, u16::from_be_bytes((*ip).frags), (*ip).proto) };
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
        return Ok(Frame::Ipv4(Ipv4Packet { eth, l3_offset, ip, l4: L4::other(), fragment: Fragment::Later }));
    } else {
        Fragment::First
    };

    let l4_offset = l3_offset + header_len;
    // What the IPv4 header says follows it; the frame may hold more (padding).
    let payload_len = tot_len - header_len;
    // How many bytes of L4 header the packet must hold for `l4` to be
    // translated; checked against the payload below.
    let (mut l4, needed) = match ip_proto {
        Tcp::NR if !SCTP => {
            let tcp: *mut [u8; Tcp::HEADER_LEN] = ptr_at(ctx, l4_offset)?;
            // Data offset in 32-bit words, the high nibble of byte 12.
            // SAFETY: checked in the frame by `ptr_at`.
            let data_offset = unsafe { (*tcp)[12] } >> 4;
            if data_offset < 5 && payload_len >= Tcp::HEADER_LEN {
                return Err(BAD_L4_HEADER);
            }
            (L4::Tcp(tcp as *mut u8), (data_offset as usize * 4).max(Tcp::HEADER_LEN))
        }
        Udp::NR if !SCTP => {
            let udp: *mut [u8; Udp::HEADER_LEN] = ptr_at(ctx, l4_offset)?;
            // SAFETY: checked in the frame by `ptr_at`.
            let udp_len = u16::from_be_bytes(unsafe { [(*udp)[4], (*udp)[5]] }) as usize;
            // RFC 768: the length covers the header. Only a whole datagram's
            // must fit its payload: a first fragment's counts every fragment.
            let too_long = fragment == Fragment::No && udp_len > payload_len;
            if payload_len >= Udp::HEADER_LEN && (udp_len < Udp::HEADER_LEN || too_long) {
                return Err(BAD_L4_HEADER);
            }
            (L4::Udp(udp as *mut u8), Udp::HEADER_LEN)
        }
        // The CRC32c of a first fragment covers the whole datagram, whose
        // length (the factor a port change is carried by) the first
        // fragment does not tell, and only the last fragment does. It goes
        // the way of a later fragment, to natd by datagram identity, and
        // natd translates it once the last fragment has come (`nat::frag`).
        // SCTP endpoints avoid IP fragmentation (RFC 9260 §7.3, path MTU
        // discovery with DF set): rare on the wire, so not worth XDP's time.
        Sctp::NR if SCTP && fragment == Fragment::First => {
            return Ok(Frame::Ipv4(Ipv4Packet { eth, l3_offset, ip, l4: L4::other(), fragment: Fragment::Later }));
        }
        Sctp::NR if SCTP => {
            let sctp: *mut [u8; SCTP_MIN_PACKET_LEN] = ptr_at(ctx, l4_offset)?;
            // Past the shift table a port rewrite could not carry the CRC
            // along in O(1) (no 9000-byte jumbo frame holds such a packet).
            if payload_len > SCTP_MAX_PACKET_LEN {
                return Err(Invalid(Reason::DropSctpTooLong));
            }
            (L4::Sctp(sctp as *mut u8), SCTP_MIN_PACKET_LEN)
        }
        IcmpEcho::NR if !SCTP => {
            let header: *mut [u8; IcmpEcho::HEADER_LEN] = ptr_at(ctx, l4_offset)?;
            let header = header as *mut u8;
            match icmp::kind(header) {
                icmp::ECHO_REQUEST | icmp::ECHO_REPLY => (L4::IcmpEcho(header), IcmpEcho::HEADER_LEN),
                // Too short to carry the offending packet's header (in the
                // frame and within the total length): not translatable,
                // handled as any other ICMP. A fragmented error is not
                // translated either.
                icmp::DEST_UNREACHABLE | icmp::TIME_EXCEEDED => match icmp::quoted(ctx, l4_offset) {
                    Ok(quoted) if fragment == Fragment::No && quoted_within(&quoted, payload_len) => (L4::IcmpError(quoted), 0),
                    _ => (L4::other(), 0),
                },
                _ => (L4::other(), 0),
            }
        }
        _ => (L4::other(), 0),
    };
    // The header must lie within the total length: the bytes past it are no
    // part of the datagram. A first fragment too short for its header is a
    // tiny fragment (RFC 1858): kept, but not translated.
    if needed > payload_len {
        if fragment == Fragment::No {
            return Err(BAD_L4_HEADER);
        }
        l4 = L4::other();
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
/// inline from the header `parse` read; options (rare) are copied and
/// checked apart.
#[inline(always)]
fn check_header(ctx: &XdpContext, ip: *const Ipv4Hdr, l3_offset: usize, header_len: usize) -> Result<(), Invalid> {
    // Summed inline: the helper (bpf_csum_diff) cost ~35 ns a packet here.
    // Ten 16-bit loads, not twenty byte loads (LLVM's BPF backend never
    // merges byte loads it cannot prove aligned).
    // SAFETY: `ip` was bounds-checked for a whole `Ipv4Hdr` (20 bytes), and
    // it is 2-byte aligned: frames start aligned, and the Ethernet header
    // and VLAN tags before it are 14 and 4 bytes.
    let mut sum = checksum::sum_words16(unsafe { &*(ip as *const [u16; Ipv4Hdr::LEN / 2]) });
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
        zero_in_words(options);
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

impl Ipv4Packet {
    /// The fixed IPv4 header, to read. (Writes go through `ip`, with no
    /// reference alive.)
    #[inline(always)]
    fn header(&self) -> &Ipv4Hdr {
        // SAFETY: `parse` checked the whole fixed header in the frame before
        // it made the packet; the frame outlives the program run.
        unsafe { &*self.ip }
    }

    /// Source address, network byte order.
    #[inline(always)]
    pub fn src_be(&self) -> u32 {
        // SAFETY: within the fixed header `parse` checked, 2-aligned.
        unsafe { words::load32((self.ip as *const u8).add(SRC_ADDR_AT)) }
    }

    /// Destination address, network byte order.
    #[inline(always)]
    pub fn dst_be(&self) -> u32 {
        // SAFETY: as `src_be`.
        unsafe { words::load32((self.ip as *const u8).add(DST_ADDR_AT)) }
    }

    #[inline(always)]
    pub fn ttl(&self) -> u8 {
        self.header().ttl
    }

    #[inline(always)]
    pub fn proto(&self) -> u8 {
        self.header().proto
    }

    #[inline(always)]
    pub fn tos(&self) -> u8 {
        self.header().tos
    }

    /// Total length, host order.
    #[inline(always)]
    pub fn tot_len(&self) -> u16 {
        // SAFETY: as `src_be`.
        u16::from_be(unsafe { words::load16((self.ip as *const u8).add(TOT_LEN_AT)) })
    }

    /// The flags and fragment offset word, host order.
    #[inline(always)]
    pub fn frags(&self) -> u16 {
        u16::from_be_bytes(self.header().frags)
    }

    /// IPv4 header length in bytes (IHL, options included).
    #[inline(always)]
    pub fn header_len(&self) -> usize {
        ((self.header().vihl & 0x0f) as usize) * 4
    }

    /// Length of the L4 segment: total length minus the header. `parse`
    /// made sure the total length covers the header.
    #[inline(always)]
    pub fn l4_len(&self) -> u16 {
        self.tot_len().wrapping_sub(self.header_len() as u16)
    }

    /// The header of a whole SCTP packet (`SCTP_MIN_PACKET_LEN` bytes of
    /// it, checked by `parse`).
    #[inline(always)]
    pub fn sctp(&self) -> Option<*mut u8> {
        match self.l4 {
            L4::Sctp(header) => Some(header),
            _ => None,
        }
    }

    /// The packet's source endpoint, if it is one the gateway translates
    /// outbound (TCP, UDP, SCTP, ICMP echo request).
    #[inline(always)]
    pub fn source(&self) -> Option<Endpoint> {
        let (proto_nr, port_be) = self.l4.endpoint_port(Side::Source)?;
        Some(Endpoint::from_be(self.src_be(), port_be, proto_nr))
    }

    /// The packet's destination endpoint, if it is one the gateway translates
    /// inbound (TCP, UDP, SCTP, ICMP echo reply).
    #[inline(always)]
    pub fn destination(&self) -> Option<Endpoint> {
        let (proto_nr, port_be) = self.l4.endpoint_port(Side::Destination)?;
        Some(Endpoint::from_be(self.dst_be(), port_be, proto_nr))
    }

    /// TCP/UDP/SCTP (source, destination) ports, network order; `None` for
    /// other protocols.
    #[inline(always)]
    pub fn ports_be(&self) -> Option<(u16, u16)> {
        self.l4.ports_be()
    }

    /// The remote end of a packet being translated on `side`: the
    /// destination of an outbound packet (the source is rewritten), the
    /// source of an inbound one. The port is 0 for ICMP echo: a remote has no
    /// identifier of its own.
    #[inline(always)]
    pub fn remote(&self, translated: Side) -> (u32, u16) {
        let (src_port_be, dst_port_be) = self.ports_be().unwrap_or((0, 0));
        match translated {
            Side::Source => (self.dst_be(), dst_port_be),
            Side::Destination => (self.src_be(), src_port_be),
        }
    }

    /// The identity of this packet's datagram as it arrived (RFC 791), for
    /// the direction `dir` (`frag_dir::*`).
    #[inline(always)]
    pub fn frag_key(&self, dir: u8) -> FragKey {
        FragKey { src_be: self.src_be(), dst_be: self.dst_be(), id_be: u16::from_ne_bytes(self.header().id), proto: self.proto(), dir }
    }

    /// Multicast, limited broadcast or zeronet destination: the kernel never
    /// routes these through the unicast path, and they are never translated.
    #[inline(always)]
    pub fn dst_is_special(&self) -> bool {
        let first = self.dst_be().to_ne_bytes()[0];
        first >= 224 || first == 0
    }
}
