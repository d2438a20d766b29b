//! natd's one reader and writer of IPv4 packets: the packets the datapath
//! hands over (first packets of new flows, fragments, no-neighbour frames)
//! and the ones natd sends itself. Offsets come from the protocols'
//! definitions in `nat_common::proto`; lengths are checked once, when a
//! packet is read, and every accessor reads within them.
//!
//! The rewrites are the user-space twins of the datapath's (incremental,
//! RFC 1624), tested byte for byte against from-scratch builds.

mod fragments;

use std::net::Ipv4Addr;

use anyhow::{Result, anyhow, bail, ensure};
use nat_common::{
    Endpoint, FragKey, MissEvent, checksum,
    checksum::{finish, is_partial, pseudo_header_sum, replace16, replace32, sum_words, udp_fixup},
    crc32c,
    frag_dir,
    icmp::{QUOTED_L4_LEN, unreachable_headers},
    proto::{self, Layout},
};

pub use fragments::fragments;

/// The fixed IPv4 header.
const MIN_HEADER: usize = 20;
/// The flags/fragment-offset word: more fragments, and the offset bits.
const MORE_FRAGMENTS: u16 = 0x2000;
const OFFSET_MASK: u16 = 0x1fff;

/// Which end of a packet a rewrite changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Source,
    Destination,
}

/// An IPv4 packet, header first, whose version and lengths were checked:
/// the header is at least 20 bytes, the total length covers it, and the
/// bytes hold the total length.
#[derive(Clone, Copy)]
pub struct Ipv4<'a> {
    bytes: &'a [u8],
    header_len: usize,
    total_len: usize,
}

impl<'a> Ipv4<'a> {
    pub fn read(bytes: &'a [u8]) -> Result<Self> {
        ensure!(bytes.len() >= MIN_HEADER && bytes[0] >> 4 == 4, "not an IPv4 packet");
        let header_len = usize::from(bytes[0] & 0x0f) * 4;
        let total_len = usize::from(u16::from_be_bytes([bytes[2], bytes[3]]));
        ensure!(
            header_len >= MIN_HEADER && header_len <= total_len && total_len <= bytes.len(),
            "IPv4 header lengths ({header_len}, total {total_len}) do not fit the {} bytes there",
            bytes.len()
        );
        Ok(Self { bytes, header_len, total_len })
    }

    /// The IPv4 packet inside a ring event's frame.
    pub fn of_event(event: &'a MissEvent) -> Result<Self> {
        let ip = event.frame().get(usize::from(event.l3_offset)..).ok_or_else(|| anyhow!("event frame too short for its IPv4 header"))?;
        Self::read(ip)
    }

    /// The datagram: header and payload up to the total length (no padding).
    pub fn datagram(&self) -> &'a [u8] {
        &self.bytes[..self.total_len]
    }

    /// The header, options included.
    pub fn header(&self) -> &'a [u8] {
        &self.bytes[..self.header_len]
    }

    /// What follows the header, up to the total length.
    pub fn payload(&self) -> &'a [u8] {
        &self.bytes[self.header_len..self.total_len]
    }

    pub fn proto(&self) -> u8 {
        self.bytes[9]
    }

    pub fn ttl(&self) -> u8 {
        self.bytes[8]
    }

    /// Source address, network byte order (the wire bytes in memory).
    pub fn src_be(&self) -> u32 {
        u32::from_ne_bytes(self.bytes[12..16].try_into().unwrap())
    }

    /// Destination address, network byte order.
    pub fn dst_be(&self) -> u32 {
        u32::from_ne_bytes(self.bytes[16..20].try_into().unwrap())
    }

    pub fn src(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.src_be().to_ne_bytes())
    }

    pub fn dst(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.dst_be().to_ne_bytes())
    }

    fn fragment_word(&self) -> u16 {
        u16::from_be_bytes([self.bytes[6], self.bytes[7]])
    }

    /// Don't Fragment: the packet may not be cut on its way.
    pub fn dont_fragment(&self) -> bool {
        self.fragment_word() & nat_common::icmp::IP_DF != 0
    }

    /// The fragment offset field, in 8-byte units.
    pub fn fragment_offset(&self) -> u16 {
        self.fragment_word() & OFFSET_MASK
    }

    /// More Fragments: a fragment that is not the datagram's last.
    pub fn more_fragments(&self) -> bool {
        self.fragment_word() & MORE_FRAGMENTS != 0
    }

    /// Offset 0 with more fragments to come: the L4 header is here.
    pub fn is_first_fragment(&self) -> bool {
        self.fragment_word() & (MORE_FRAGMENTS | OFFSET_MASK) == MORE_FRAGMENTS
    }

    /// A non-zero offset: no L4 header.
    pub fn is_later_fragment(&self) -> bool {
        self.fragment_word() & OFFSET_MASK != 0
    }

    /// The port (ICMP echo: identifier) of `side`, network order, where the
    /// protocol has one and its header is here.
    pub fn port_be(&self, side: Side) -> Option<u16> {
        if self.is_later_fragment() {
            return None;
        }
        let layout = proto::layout(self.proto(), side == Side::Source)?;
        let l4 = self.payload();
        (l4.len() >= layout.port_at + 2).then(|| u16::from_ne_bytes([l4[layout.port_at], l4[layout.port_at + 1]]))
    }

    /// The endpoint of `side`: address, port (identifier), protocol.
    pub fn endpoint(&self, side: Side) -> Option<Endpoint> {
        let addr_be = if side == Side::Source { self.src_be() } else { self.dst_be() };
        Some(Endpoint::from_be(addr_be, self.port_be(side)?, self.proto()))
    }

    /// The remote a packet leaving for the WAN is sent to: its destination
    /// address and, for TCP/UDP/SCTP, port (both network order; 0 for ICMP
    /// echo, whose remote has no identifier of its own).
    pub fn remote(&self) -> (u32, u16) {
        let port_be = match self.proto() {
            proto::TCP | proto::UDP | proto::SCTP => self.port_be(Side::Destination).unwrap_or(0),
            _ => 0,
        };
        (self.dst_be(), port_be)
    }

    /// The identity of the datagram this packet belongs to, as the datapath
    /// files it for direction `dir` (RFC 791: source, destination,
    /// protocol, identification).
    pub fn frag_key(&self, dir: u8) -> FragKey {
        FragKey {
            src_be: self.src_be(),
            dst_be: self.dst_be(),
            id_be: u16::from_ne_bytes([self.bytes[4], self.bytes[5]]),
            proto: self.proto(),
            dir,
        }
    }
}

/// Rewrites the source of a missed outbound IPv4 packet (`ip`, from the IPv4
/// header on) to `to` and decrements its TTL, keeping every checksum valid:
/// the user-space twin of the datapath's rewrite, for the first packet of a
/// flow. A TCP/UDP checksum that is only the pseudo-header sum (the sender
/// left it to TX offload, CHECKSUM_PARTIAL) is computed in full instead.
pub fn translate_source(ip: &mut [u8], to: Endpoint) -> Result<()> {
    // A first fragment carries the L4 header: translated like a whole packet
    // (RFC 4787 REQ-14), its checksum incrementally (it covers the whole
    // datagram; only the pseudo-header address and the port change). A later
    // fragment has no header to translate here.
    let packet = Ipv4::read(ip)?;
    ensure!(!packet.is_later_fragment(), "a later fragment has no L4 header to translate");
    ensure!(packet.ttl() > 1, "TTL expired");
    let first_fragment = packet.is_first_fragment();
    let (proto_nr, dst) = (packet.proto(), packet.dst_be().to_ne_bytes());
    let layout = l4_layout(proto_nr, Side::Source, packet.payload().len())?;
    // SCTP's CRC32c covers the whole datagram: a port change is carried by
    // its length, which a first fragment does not tell (the datapath does
    // not translate these either).
    ensure!(!(first_fragment && layout.crc32c), "an SCTP first fragment's CRC32c cannot follow a port rewrite");
    let (header, rest) = split_datagram(ip)?;
    let l4_len = rest.len() as u16;
    // A fragment never carries a partial checksum: the sender's kernel
    // completes it before fragmenting, and the segment is not all here.
    let partial = !first_fragment
        && layout.pseudo_header
        && is_partial(word(rest, layout.check_at), pseudo_header_sum(header[12..16].try_into().unwrap(), dst, proto_nr, l4_len));

    let old_src = rewrite_address(header, Side::Source, to.addr_be, true);
    if partial {
        rest[layout.port_at..layout.port_at + 2].copy_from_slice(&to.port_be.to_ne_bytes());
        rest[layout.check_at..layout.check_at + 2].fill(0);
        let check = finish(pseudo_header_sum(to.addr().octets(), dst, proto_nr, l4_len), sum_words(rest, 0), layout.zero_is_none);
        rest[layout.check_at..layout.check_at + 2].copy_from_slice(&check.to_ne_bytes());
    } else {
        rewrite_l4(rest, layout, old_src, to);
    }
    Ok(())
}

/// Rewrites the destination of a TCP/UDP/SCTP packet `translate_source` has
/// already translated (so its checksum is a full one) to `to`: the second
/// half of hairpinning a first packet (RFC 4787 REQ-9). The TTL is left
/// alone: a hairpinned packet crosses the gateway once.
pub fn translate_destination(ip: &mut [u8], to: Endpoint) -> Result<()> {
    let packet = Ipv4::read(ip)?;
    let proto_nr = packet.proto();
    ensure!(matches!(proto_nr, proto::TCP | proto::UDP | proto::SCTP), "protocol {proto_nr} is not hairpinned");
    let layout = l4_layout(proto_nr, Side::Destination, packet.payload().len())?;
    let (header, rest) = split_datagram(ip)?;
    let old_dst = rewrite_address(header, Side::Destination, to.addr_be, false);
    rewrite_l4(rest, layout, old_dst, to);
    Ok(())
}

/// Rewrites a later fragment (`ip`, from its IPv4 header on) as the datapath
/// does: the source (`frag_dir::OUT`) or destination (`frag_dir::IN`) address
/// becomes `to`, the TTL drops by one, and the IPv4 header checksum follows
/// incrementally (RFC 1624). The payload is not touched: it has no L4 header.
pub fn translate_fragment(ip: &mut [u8], dir: u8, to: Ipv4Addr) -> Result<()> {
    let side = if dir == frag_dir::OUT { Side::Source } else { Side::Destination };
    translate_address(ip, side, to)
}

/// Rewrites the address of `side` of a packet that has no port to
/// translate (a later fragment, an ESP packet: RFC 4303's integrity check
/// covers no IP address, and ESP has no checksum of its own) to `to`, the
/// TTL down by one and the IPv4 header checksum following (RFC 1624).
pub fn translate_address(ip: &mut [u8], side: Side, to: Ipv4Addr) -> Result<()> {
    ensure!(ip.len() >= MIN_HEADER && ip[0] >> 4 == 4, "not an IPv4 packet");
    ensure!(ip[8] > 1, "TTL expired");
    rewrite_address(ip, side, u32::from_ne_bytes(to.octets()), true);
    Ok(())
}

/// Where an IPv4 packet (header first) stands in fragmentation: `Some(true)`
/// for an SCTP datagram's first fragment (offset 0, more fragments),
/// `Some(false)` for its last fragment (offset > 0, no more), with the whole
/// datagram's payload length, the SCTP packet's (offset + this payload);
/// `None` for anything else.
pub fn sctp_fragment_role(ip: &[u8]) -> Option<(bool, usize)> {
    const MORE_FRAGMENTS: u16 = 0x2000;
    const OFFSET_MASK: u16 = 0x1fff;
    if ip.len() < MIN_HEADER || ip[0] >> 4 != 4 || ip[9] != proto::SCTP {
        return None;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let flags = u16::from_be_bytes([ip[6], ip[7]]);
    let offset = usize::from(flags & OFFSET_MASK) * 8;
    let payload = total.checked_sub(ihl)?;
    match (flags & MORE_FRAGMENTS != 0, offset) {
        (true, 0) => Some((true, payload)),
        (false, offset) if offset > 0 => Some((false, offset + payload)),
        _ => None,
    }
}

/// Translates the first fragment of an SCTP datagram (`ip`, header first)
/// whose SCTP packet is `sctp_len` bytes (the datagram's payload, which only
/// its last fragment tells): the address and port of `dir`'s side to `to`,
/// the CRC32c carried along for the port change with the whole packet's
/// length (the update a whole packet gets; its field is in this fragment),
/// the IPv4 checksum and TTL.
pub fn translate_sctp_first_fragment(ip: &mut [u8], dir: u8, to: Endpoint, sctp_len: usize) -> Result<()> {
    ensure!(ip.len() >= MIN_HEADER && ip[0] >> 4 == 4, "not an IPv4 packet");
    ensure!(ip[8] > 1, "TTL expired");
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let ports = crc32c::SCTP_PORTS_LEN;
    ensure!(ip.len() >= ihl + 12 && sctp_len >= 12, "an SCTP first fragment without its whole common header");
    let side = if dir == frag_dir::OUT { Side::Source } else { Side::Destination };
    rewrite_address(ip, side, to.addr_be, true);
    let sctp = &mut ip[ihl..];
    let port_at = if side == Side::Source { 0 } else { 2 };
    let old_ports: [u8; 4] = sctp[..ports].try_into()?;
    sctp[port_at..port_at + 2].copy_from_slice(&to.port_be.to_ne_bytes());
    let new_ports: [u8; 4] = sctp[..ports].try_into()?;
    let field: [u8; 4] = sctp[8..12].try_into()?;
    let shift = crc32c::x8n_mod_p((sctp_len - ports) as u32);
    sctp[8..12].copy_from_slice(&crc32c::updated_checksum_field_for_port_rewrite(field, old_ports, new_ports, shift));
    Ok(())
}

/// ICMP Destination Unreachable `code` from `from` to the sender of
/// `refused` (an IPv4 packet, header first), quoting its IPv4 header and the
/// first 8 bytes after it (RFC 792), with valid checksums. `None` if
/// `refused` is not a whole IPv4 header.
pub fn destination_unreachable(from: Ipv4Addr, refused: &[u8], code: u8) -> Option<Vec<u8>> {
    let packet = Ipv4::read(refused).ok()?;
    let quoted = &refused[..refused.len().min(packet.header().len() + QUOTED_L4_LEN)];
    let headers = unreachable_headers(from.octets(), packet.src().octets(), code, 0, quoted.len() as u16, checksum::sum_words(quoted, 0));
    Some([&headers[..], quoted].concat())
}

/// The TCP reset that refuses `refused` (a TCP segment), from the endpoint
/// it was sent to (RFC 9293 3.10.7.1, a segment to a closed port): to an
/// ACK, `<SEQ=SEG.ACK><CTL=RST>`; otherwise `<SEQ=0><ACK=SEG.SEQ+SEG.LEN>
/// <CTL=RST,ACK>`. `None` for an RST (never answered) or a segment too
/// short to read.
pub fn tcp_reset(refused: &[u8]) -> Option<Vec<u8>> {
    const RST: u8 = 0x04;
    const ACK: u8 = 0x10;
    const SYN: u8 = 0x02;
    const FIN: u8 = 0x01;
    let packet = Ipv4::read(refused).ok()?;
    let tcp = packet.payload();
    if packet.proto() != proto::TCP || tcp.len() < 20 || packet.is_later_fragment() {
        return None;
    }
    let flags = tcp[13];
    if flags & RST != 0 {
        return None;
    }
    let seq = u32::from_be_bytes(tcp[4..8].try_into().ok()?);
    let ack = u32::from_be_bytes(tcp[8..12].try_into().ok()?);
    let data_len = tcp.len().saturating_sub(usize::from(tcp[12] >> 4) * 4) as u32;
    let (reset_seq, reset_ack, reset_flags) = if flags & ACK != 0 {
        (ack, 0, RST)
    } else {
        let len = data_len + u32::from(flags & SYN != 0) + u32::from(flags & FIN != 0);
        (0, seq.wrapping_add(len), RST | ACK)
    };
    let mut segment = [0u8; 20];
    segment[0..2].copy_from_slice(&tcp[2..4]);
    segment[2..4].copy_from_slice(&tcp[0..2]);
    segment[4..8].copy_from_slice(&reset_seq.to_be_bytes());
    segment[8..12].copy_from_slice(&reset_ack.to_be_bytes());
    segment[12] = 5 << 4;
    segment[13] = reset_flags;
    let (from, to) = (packet.dst().octets(), packet.src().octets());
    let check = checksum::l4_checksum(from, to, proto::TCP, &segment);
    segment[16..18].copy_from_slice(&check.to_ne_bytes());
    let mut header = [0u8; 20];
    header[0] = 0x45;
    header[2..4].copy_from_slice(&40u16.to_be_bytes());
    // Don't fragment, as the kernel's own resets.
    header[6] = 0x40;
    header[8] = 64;
    header[9] = proto::TCP;
    header[12..16].copy_from_slice(&from);
    header[16..20].copy_from_slice(&to);
    let check = checksum::checksum(&header);
    header[10..12].copy_from_slice(&check.to_ne_bytes());
    Some([&header[..], &segment[..]].concat())
}

/// The layout of `proto_nr`'s header on `side`, if the protocol is
/// translated and its header (up to the checksum) fits `l4_len` bytes.
fn l4_layout(proto_nr: u8, side: Side, l4_len: usize) -> Result<Layout> {
    let Some(layout) = proto::layout(proto_nr, side == Side::Source) else {
        bail!("protocol {proto_nr} is not translated");
    };
    let check_len = if layout.crc32c { crc32c::SCTP_CHECKSUM_LEN } else { 2 };
    ensure!(l4_len >= layout.check_at + check_len && l4_len >= layout.port_at + 2, "L4 header truncated");
    Ok(layout)
}

/// An IPv4 packet's header and the rest of its datagram (up to the total
/// length), once both lengths are checked.
fn split_datagram(ip: &mut [u8]) -> Result<(&mut [u8], &mut [u8])> {
    let packet = Ipv4::read(ip)?;
    let (header_len, total_len) = (packet.header_len, packet.total_len);
    Ok(ip[..total_len].split_at_mut(header_len))
}

fn word(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

/// Rewrites the source or destination address of an IPv4 `header` to
/// `to_be`, and decrements the TTL if asked, updating the header checksum
/// incrementally (RFC 1624). Returns the old address. The TTL must be above
/// 1 when it is decremented.
fn rewrite_address(header: &mut [u8], side: Side, to_be: u32, decrement_ttl: bool) -> u32 {
    let at = if side == Side::Source { 12 } else { 16 };
    let old = u32::from_ne_bytes(header[at..at + 4].try_into().unwrap());
    let mut check = replace32(word(header, 10), old, to_be);
    if decrement_ttl {
        let old_ttl_word = word(header, 8);
        header[8] -= 1;
        check = replace16(check, old_ttl_word, word(header, 8));
    }
    header[at..at + 4].copy_from_slice(&to_be.to_ne_bytes());
    header[10..12].copy_from_slice(&check.to_ne_bytes());
    old
}

/// The L4 half of a rewrite to `to` (the address already rewritten from
/// `old_addr_be`): the port and the full checksum, updated incrementally;
/// the address counts where the checksum covers the pseudo-header, and a
/// zero "none" checksum stays zero. SCTP's CRC32c is updated by the port
/// change alone, as the datapath does (`rest` is the whole SCTP packet).
fn rewrite_l4(rest: &mut [u8], layout: Layout, old_addr_be: u32, to: Endpoint) {
    let (port_at, check_at) = (layout.port_at, layout.check_at);
    if layout.crc32c {
        let ports = crc32c::SCTP_PORTS_LEN;
        let old_ports: [u8; 4] = rest[..ports].try_into().unwrap();
        rest[port_at..port_at + 2].copy_from_slice(&to.port_be.to_ne_bytes());
        let new_ports: [u8; 4] = rest[..ports].try_into().unwrap();
        let field: [u8; 4] = rest[check_at..check_at + 4].try_into().unwrap();
        let shift = crc32c::x8n_mod_p((rest.len() - ports) as u32);
        rest[check_at..check_at + 4].copy_from_slice(&crc32c::updated_checksum_field_for_port_rewrite(field, old_ports, new_ports, shift));
        return;
    }
    let (old_port, check_before) = (word(rest, port_at), word(rest, check_at));
    rest[port_at..port_at + 2].copy_from_slice(&to.port_be.to_ne_bytes());
    let mut check = replace16(check_before, old_port, to.port_be);
    if layout.pseudo_header {
        check = replace32(check, old_addr_be, to.addr_be);
    }
    if layout.zero_is_none {
        check = udp_fixup(check_before, check);
    }
    rest[check_at..check_at + 2].copy_from_slice(&check.to_ne_bytes());
}

/// A UDP datagram from `src` to `dst` carrying `payload`, as a whole IPv4
/// packet with both checksums: what natd sends on a remote's behalf (a QUIC
/// client's Initials, once their server is chosen). Don't Fragment is set,
/// as QUIC senders set it (RFC 9000 §14).
pub fn udp_packet(src: std::net::SocketAddrV4, dst: std::net::SocketAddrV4, payload: &[u8]) -> Result<Vec<u8>> {
    const UDP_HEADER: usize = 8;
    const DONT_FRAGMENT: u16 = 0x4000;
    let total = MIN_HEADER + UDP_HEADER + payload.len();
    let total_16 = u16::try_from(total).map_err(|_| anyhow!("a UDP payload of {} bytes does not fit an IPv4 packet", payload.len()))?;
    let mut ip = vec![0u8; total];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total_16.to_be_bytes());
    ip[6..8].copy_from_slice(&DONT_FRAGMENT.to_be_bytes());
    ip[8] = 64;
    ip[9] = proto::UDP;
    ip[12..16].copy_from_slice(&src.ip().octets());
    ip[16..20].copy_from_slice(&dst.ip().octets());
    let header_check = checksum::checksum(&ip[..MIN_HEADER]);
    ip[10..12].copy_from_slice(&header_check.to_ne_bytes());
    let udp = &mut ip[MIN_HEADER..];
    udp[0..2].copy_from_slice(&src.port().to_be_bytes());
    udp[2..4].copy_from_slice(&dst.port().to_be_bytes());
    udp[4..6].copy_from_slice(&((UDP_HEADER + payload.len()) as u16).to_be_bytes());
    udp[UDP_HEADER..].copy_from_slice(payload);
    // Checksums are summed and stored in memory order (`checksum`). RFC
    // 768: a computed 0 is sent as all ones (0 means "no checksum").
    let check = match checksum::l4_checksum(src.ip().octets(), dst.ip().octets(), proto::UDP, udp) {
        0 => 0xffff,
        check => check,
    };
    udp[6..8].copy_from_slice(&check.to_ne_bytes());
    Ok(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_udp_packet_built_for_a_remote_verifies_and_reads_back() {
        let (src, dst) = ("198.51.100.7:40000".parse().unwrap(), "10.0.0.5:443".parse().unwrap());
        let packet = udp_packet(src, dst, b"an initial").unwrap();
        let read = Ipv4::read(&packet).unwrap();
        assert_eq!((read.src(), read.dst(), read.proto(), read.datagram().len()), (*src.ip(), *dst.ip(), proto::UDP, 20 + 8 + 10));
        assert!(checksum::verifies(read.header(), 0), "the IPv4 header checksum");
        let pseudo = pseudo_header_sum(src.ip().octets(), dst.ip().octets(), proto::UDP, 18);
        assert!(checksum::verifies(read.payload(), pseudo), "the UDP checksum with its pseudo-header");
        assert_eq!(&read.payload()[8..], b"an initial");
        assert_eq!(read.port_be(Side::Source), Some(40000u16.to_be()));
    }

    /// A TCP segment from 198.51.100.7:40000 to 203.0.113.1:8080.
    fn segment(flags: u8, seq: u32, ack: u32, payload: usize) -> Vec<u8> {
        let mut ip = vec![0u8; 40 + payload];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&((40 + payload) as u16).to_be_bytes());
        ip[8] = 64;
        ip[9] = 6;
        ip[12..16].copy_from_slice(&[198, 51, 100, 7]);
        ip[16..20].copy_from_slice(&[203, 0, 113, 1]);
        ip[20..22].copy_from_slice(&40000u16.to_be_bytes());
        ip[22..24].copy_from_slice(&8080u16.to_be_bytes());
        ip[24..28].copy_from_slice(&seq.to_be_bytes());
        ip[28..32].copy_from_slice(&ack.to_be_bytes());
        ip[32] = 5 << 4;
        ip[33] = flags;
        ip
    }

    /// RFC 9293 3.10.7.1: a SYN is refused with RST+ACK acknowledging it; a
    /// segment with an ACK with an RST carrying that sequence number; an RST
    /// is never answered. From the address and port it was sent to, with
    /// both checksums right.
    #[test]
    fn refusing_resets_follow_rfc_9293() {
        let reset = tcp_reset(&segment(0x02, 1000, 0, 0)).unwrap();
        assert_eq!(reset.len(), 40);
        assert_eq!((&reset[12..16], &reset[16..20]), (&[203, 0, 113, 1][..], &[198, 51, 100, 7][..]));
        assert_eq!((u16::from_be_bytes([reset[20], reset[21]]), u16::from_be_bytes([reset[22], reset[23]])), (8080, 40000));
        assert_eq!((u32::from_be_bytes(reset[24..28].try_into().unwrap()), u32::from_be_bytes(reset[28..32].try_into().unwrap())), (0, 1001));
        assert_eq!(reset[33], 0x14, "RST+ACK");
        assert!(checksum::verifies(&reset[..20], 0));
        let pseudo = pseudo_header_sum([203, 0, 113, 1], [198, 51, 100, 7], 6, 20);
        assert!(checksum::verifies(&reset[20..], pseudo));

        let reset = tcp_reset(&segment(0x18, 5000, 777, 10)).unwrap();
        assert_eq!((u32::from_be_bytes(reset[24..28].try_into().unwrap()), reset[33]), (777, 0x04), "to an ACK: SEQ=SEG.ACK, RST alone");
        let reset = tcp_reset(&segment(0x01, 5000, 0, 10)).unwrap();
        assert_eq!(u32::from_be_bytes(reset[28..32].try_into().unwrap()), 5011, "data and FIN count");
        assert_eq!(tcp_reset(&segment(0x04, 1, 0, 0)), None);
    }

    fn fragment(src: [u8; 4], dst: [u8; 4], id: u16, offset_words: u16, payload: usize) -> Vec<u8> {
        let mut ip = vec![0u8; 20 + payload];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&((20 + payload) as u16).to_be_bytes());
        ip[4..6].copy_from_slice(&id.to_be_bytes());
        ip[6..8].copy_from_slice(&offset_words.to_be_bytes());
        ip[8] = 64;
        ip[9] = 17;
        ip[12..16].copy_from_slice(&src);
        ip[16..20].copy_from_slice(&dst);
        for (i, b) in ip[20..].iter_mut().enumerate() {
            *b = i as u8;
        }
        let c = checksum::checksum(&ip[..20]);
        ip[10..12].copy_from_slice(&c.to_ne_bytes());
        ip
    }

    /// RFC 4787 REQ-14: a parked fragment leaves as the datapath would have
    /// sent it: address and TTL rewritten, header checksum equal to one
    /// computed from scratch, payload untouched.
    #[test]
    fn translated_fragments_match_a_from_scratch_build() {
        let inside = [10, 77, 1, 10];
        let (external, remote) = ([203, 0, 113, 1], [198, 51, 100, 10]);
        let mut out = fragment(inside, remote, 0xbeef, 185, 100);
        let key = Ipv4::read(&out).unwrap().frag_key(frag_dir::OUT);
        assert_eq!((key.src_be.to_ne_bytes(), key.dst_be.to_ne_bytes(), u16::from_be(key.id_be)), (inside, remote, 0xbeef));
        translate_fragment(&mut out, frag_dir::OUT, Ipv4Addr::from(external)).unwrap();
        let mut want = fragment(external, remote, 0xbeef, 185, 100);
        want[8] = 63;
        want[10..12].fill(0);
        let c = checksum::checksum(&want[..20]);
        want[10..12].copy_from_slice(&c.to_ne_bytes());
        assert_eq!(out, want);

        let mut inbound = fragment(remote, external, 7, 0x2000 | 185, 64);
        translate_fragment(&mut inbound, frag_dir::IN, Ipv4Addr::from(inside)).unwrap();
        assert_eq!(&inbound[16..20], &inside);
        assert!(checksum::verifies(&inbound[..20], 0));
        let mut dying = fragment(remote, external, 7, 185, 8);
        dying[8] = 1;
        assert!(translate_fragment(&mut dying, frag_dir::IN, Ipv4Addr::from(inside)).is_err());
    }

    /// RFC 5508 REQ-8 / RFC 792: the message quotes the refused packet's
    /// header and 8 bytes, goes back to its sender, and every checksum holds.
    #[test]
    fn destination_unreachable_quotes_the_refused_packet() {
        let mut refused = vec![0x45, 0, 0, 40, 0x12, 0x34, 0x40, 0, 64, 17, 0, 0, 10, 77, 1, 10, 203, 0, 113, 2];
        refused.extend_from_slice(&[0x17, 0x71, 0x1b, 0x58, 0, 20, 0xab, 0xcd]);
        refused.extend_from_slice(&[0xee; 12]);
        let gw = Ipv4Addr::new(10, 77, 1, 1);
        let msg = destination_unreachable(gw, &refused, nat_common::icmp::ICMP_ADMIN_PROHIBITED).unwrap();
        assert_eq!(msg.len(), 20 + 8 + 28);
        assert_eq!(&msg[12..16], &gw.octets());
        assert_eq!(&msg[16..20], &[10, 77, 1, 10]);
        assert_eq!((msg[20], msg[21]), (3, 13));
        assert_eq!(&msg[28..], &refused[..28]);
        assert_eq!(checksum::checksum(&msg[..20]), 0, "IPv4 header checksum");
        assert_eq!(checksum::checksum(&msg[20..]), 0, "ICMP checksum");
    }

    /// An IPv4 SCTP packet from 10.77.1.10:5000 to 198.51.100.10:7 of
    /// `sctp_len` bytes (one DATA chunk, filled), with a valid CRC32c.
    fn sctp_packet(sctp_len: usize) -> Vec<u8> {
        let mut ip = fragment([10, 77, 1, 10], [198, 51, 100, 10], 9, 0, sctp_len);
        ip[9] = proto::SCTP;
        ip[10..12].fill(0);
        let c = checksum::checksum(&ip[..20]);
        ip[10..12].copy_from_slice(&c.to_ne_bytes());
        let sctp = &mut ip[20..];
        sctp[0..4].copy_from_slice(&[0x13, 0x88, 0x00, 0x07]);
        sctp[4..8].copy_from_slice(&0xdead_beefu32.to_be_bytes());
        sctp[12] = 0;
        sctp[14..16].copy_from_slice(&((sctp_len - 12) as u16).to_be_bytes());
        crc32c::fill_sctp_checksum(sctp).unwrap();
        ip
    }

    /// RFC 9260 §6.8: a translated SCTP packet's CRC32c holds (checked by
    /// computing it afresh), at the smallest and a jumbo size; one that
    /// came with a wrong CRC leaves wrong by exactly the same error; an
    /// address-only rewrite leaves the CRC alone (no pseudo-header); a first
    /// fragment is refused (its CRC covers the whole datagram).
    #[test]
    fn sctp_first_packets_carry_their_crc32c_along() {
        let external = Endpoint::new(Ipv4Addr::new(203, 0, 113, 1), 20002, proto::SCTP);
        for len in [16, 100, 8980] {
            let mut ip = sctp_packet(len);
            assert_eq!(Ipv4::read(&ip).unwrap().endpoint(Side::Source), Some(Endpoint::new(Ipv4Addr::new(10, 77, 1, 10), 5000, proto::SCTP)));
            translate_source(&mut ip, external).unwrap();
            assert_eq!(&ip[12..16], &[203, 0, 113, 1]);
            assert_eq!(&ip[20..22], &20002u16.to_be_bytes());
            assert!(crc32c::verify_sctp_checksum(&ip[20..]), "{len} bytes: CRC32c after the rewrite");
            assert!(checksum::verifies(&ip[..20], 0));

            // Hairpinned: the destination port too.
            let mut back = ip.clone();
            translate_destination(&mut back, Endpoint::new(Ipv4Addr::new(10, 77, 1, 20), 9999, proto::SCTP)).unwrap();
            assert_eq!(&back[22..24], &9999u16.to_be_bytes());
            assert!(crc32c::verify_sctp_checksum(&back[20..]), "{len} bytes: hairpinned");
        }

        let error = 0x0400_0001;
        let mut bad = sctp_packet(64);
        let good = crc32c::read_sctp_checksum(&bad[20..]).unwrap();
        crc32c::write_sctp_checksum(&mut bad[20..], good ^ error).unwrap();
        translate_source(&mut bad, external).unwrap();
        let correct = crc32c::sctp_checksum(&bad[20..]);
        assert_eq!(crc32c::read_sctp_checksum(&bad[20..]).unwrap() ^ correct, error, "a bad CRC stays bad by the same error");

        let mut kept = sctp_packet(64);
        let before = kept[28..32].to_vec();
        translate_source(&mut kept, Endpoint::new(Ipv4Addr::new(203, 0, 113, 1), 5000, proto::SCTP)).unwrap();
        assert_eq!(kept[28..32], before[..], "port kept: the CRC is not touched");

        let mut first = sctp_packet(64);
        first[6] = 0x20;
        first[10..12].fill(0);
        let c = checksum::checksum(&first[..20]);
        first[10..12].copy_from_slice(&c.to_ne_bytes());
        assert!(translate_source(&mut first, external).is_err(), "an SCTP first fragment is not translated");
    }

    /// An SCTP datagram fragmented on its way: its first fragment is
    /// translated with the whole packet's length (which the last fragment
    /// tells), and the reassembled datagram's CRC32c holds, out and in, at
    /// lengths past the datapath's table (up to an IPv4 datagram's limit).
    #[test]
    fn sctp_first_fragments_are_translated_with_the_datagram_length() {
        let external = Endpoint::new(Ipv4Addr::new(203, 0, 113, 1), 20002, proto::SCTP);
        let inside = Endpoint::new(Ipv4Addr::new(10, 77, 1, 10), 6000, proto::SCTP);
        for len in [1500, 4000, 16400, 65000] {
            let whole = sctp_packet(len);
            // The first fragment: the header and 1480 bytes, offset 0, MF.
            let mut first = whole[..20 + 1480].to_vec();
            first[2..4].copy_from_slice(&(1500u16).to_be_bytes());
            first[6] = 0x20;
            first[10..12].fill(0);
            let c = checksum::checksum(&first[..20]);
            first[10..12].copy_from_slice(&c.to_ne_bytes());
            assert_eq!(sctp_fragment_role(&first), Some((true, 1480)));
            // The last fragment tells the whole length.
            let mut last = whole[..20].to_vec();
            last.extend_from_slice(&whole[20 + 1480..]);
            let last_len = last.len() as u16;
            last[2..4].copy_from_slice(&last_len.to_be_bytes());
            last[6..8].copy_from_slice(&(1480u16 / 8).to_be_bytes());
            assert_eq!(sctp_fragment_role(&last), Some((false, len)));
            for (dir, to, port_at) in [(frag_dir::OUT, external, 20), (frag_dir::IN, inside, 22)] {
                let mut translated = first.clone();
                translate_sctp_first_fragment(&mut translated, dir, to, len).unwrap();
                assert_eq!(&translated[port_at..port_at + 2], &to.port_be.to_ne_bytes());
                assert!(checksum::verifies(&translated[..20], 0), "{len}: IPv4 header checksum");
                let reassembled = [&translated[20..], &whole[20 + 1480..]].concat();
                assert!(crc32c::verify_sctp_checksum(&reassembled), "{len} bytes, dir {dir}: the reassembled datagram's CRC32c holds");
            }
        }
        assert_eq!(sctp_fragment_role(&sctp_packet(64)), None, "a whole packet");
    }

    /// Lengths are checked once: a header that lies is refused, and the
    /// endpoints come from the protocol's layout (an echo request's
    /// identifier, a later fragment none).
    #[test]
    fn packets_are_read_within_their_lengths() {
        let mut udp = fragment([10, 77, 1, 10], [198, 51, 100, 10], 1, 0, 8);
        udp[20..24].copy_from_slice(&[0x13, 0x88, 0x00, 0x35]);
        let packet = Ipv4::read(&udp).unwrap();
        assert_eq!(packet.endpoint(Side::Source), Some(Endpoint::new(Ipv4Addr::new(10, 77, 1, 10), 5000, proto::UDP)));
        assert_eq!(packet.remote(), (u32::from_ne_bytes([198, 51, 100, 10]), 53u16.to_be()));
        let mut later = udp.clone();
        later[6..8].copy_from_slice(&185u16.to_be_bytes());
        assert_eq!(Ipv4::read(&later).unwrap().endpoint(Side::Source), None, "a later fragment has no ports");
        let mut lying = udp.clone();
        lying[2..4].copy_from_slice(&200u16.to_be_bytes());
        assert!(Ipv4::read(&lying).is_err(), "total length beyond the bytes");
        lying[0] = 0x44;
        assert!(Ipv4::read(&lying).is_err(), "IHL below 5");
        let mut echo = fragment([10, 77, 1, 10], [198, 51, 100, 10], 1, 0, 8);
        echo[9] = proto::ICMP;
        echo[20] = 8;
        echo[24..26].copy_from_slice(&0x1234u16.to_be_bytes());
        assert_eq!(Ipv4::read(&echo).unwrap().port_be(Side::Source), Some(0x1234u16.to_be()));
    }
}
