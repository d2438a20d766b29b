//! Builds test frames with full (non-incremental) checksums, and checks the
//! checksums of frames the programs emit by recomputing them from scratch.

use std::net::Ipv4Addr;

use nat_common::{checksum, crc32c, proto};

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;

#[derive(Clone, Debug)]
pub enum L4 {
    Tcp { sport: u16, dport: u16, flags: u8 },
    /// `zero_checksum`: send without a UDP checksum (RFC 768 allows it).
    Udp { sport: u16, dport: u16, zero_checksum: bool },
    IcmpEcho { kind: u8, id: u16, seq: u16 },
    /// SCTP (RFC 9260): the common header and one chunk of `chunk` type
    /// carrying the payload (padded to 4 bytes), the CRC32c computed over
    /// the whole packet and then xored with `crc_error` (0: a correct CRC).
    Sctp { sport: u16, dport: u16, vtag: u32, chunk: u8, crc_error: u32 },
    /// Any other protocol: the payload is carried as is.
    Raw { proto: u8 },
}

#[derive(Clone, Debug)]
pub struct Frame {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    /// VLAN IDs, outermost first. Two tags: the outer one is 802.1ad (QinQ).
    pub vlans: Vec<u16>,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
    pub tos: u8,
    /// IPv4 options, padded by the caller to a multiple of 4 bytes.
    pub options: Vec<u8>,
    /// Flags and fragment offset word, host order (0x2000 = more fragments,
    /// 0x4000 = don't fragment).
    pub frag: u16,
    /// IPv4 identification, host order: with the addresses and protocol,
    /// what tells the fragments of one datagram apart.
    pub id: u16,
    pub l4: L4,
    pub payload: Vec<u8>,
    /// TCP/UDP checksum field as a Linux sender with TX checksum offload
    /// leaves it (CHECKSUM_PARTIAL): only the folded pseudo-header sum, for
    /// the NIC to finish. A UDP `zero_checksum` stays zero.
    pub partial_checksum: bool,
}

impl Frame {
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr, l4: L4) -> Self {
        Self {
            dst_mac: [0x02, 0, 0, 0, 0xaa, 0x01],
            src_mac: [0x02, 0, 0, 0, 0xbb, 0x01],
            vlans: Vec::new(),
            src,
            dst,
            ttl: 64,
            tos: 0,
            options: Vec::new(),
            frag: 0,
            id: 0x1234,
            l4,
            payload: b"nat test payload".to_vec(),
            partial_checksum: false,
        }
    }

    pub fn tcp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> Self {
        Self::new(src.0, dst.0, L4::Tcp { sport: src.1, dport: dst.1, flags: 0x02 })
    }

    pub fn udp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> Self {
        Self::new(src.0, dst.0, L4::Udp { sport: src.1, dport: dst.1, zero_checksum: false })
    }

    /// An SCTP packet with one DATA chunk (type 0) and a correct CRC32c.
    pub fn sctp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> Self {
        Self::new(src.0, dst.0, L4::Sctp { sport: src.1, dport: dst.1, vtag: 0x1c0f_fee5, chunk: 0, crc_error: 0 })
    }

    pub fn icmp_echo(src: Ipv4Addr, dst: Ipv4Addr, kind: u8, id: u16) -> Self {
        Self::new(src, dst, L4::IcmpEcho { kind, id, seq: 7 })
    }

    pub fn with_macs(mut self, src: [u8; 6], dst: [u8; 6]) -> Self {
        self.src_mac = src;
        self.dst_mac = dst;
        self
    }

    /// The frame as a local socket sends it over a device with TX checksum
    /// offload on: see `partial_checksum`.
    pub fn with_partial_checksum(mut self) -> Self {
        self.partial_checksum = true;
        self
    }

    pub fn l4_proto(&self) -> u8 {
        match self.l4 {
            L4::Tcp { .. } => proto::TCP,
            L4::Udp { .. } => proto::UDP,
            L4::IcmpEcho { .. } => proto::ICMP,
            L4::Sctp { .. } => proto::SCTP,
            L4::Raw { proto } => proto,
        }
    }

    /// The frame's bytes, every checksum computed over the whole packet
    /// (except a `partial_checksum`).
    pub fn build(&self) -> Vec<u8> {
        let mut l4 = match self.l4 {
            L4::Tcp { sport, dport, flags } => {
                let mut h = vec![0u8; 20];
                h[0..2].copy_from_slice(&sport.to_be_bytes());
                h[2..4].copy_from_slice(&dport.to_be_bytes());
                h[4..8].copy_from_slice(&0x1000_0000u32.to_be_bytes());
                h[12] = 5 << 4;
                h[13] = flags;
                h[14..16].copy_from_slice(&64240u16.to_be_bytes());
                h
            }
            L4::Udp { sport, dport, .. } => {
                let mut h = vec![0u8; 8];
                h[0..2].copy_from_slice(&sport.to_be_bytes());
                h[2..4].copy_from_slice(&dport.to_be_bytes());
                h[4..6].copy_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
                h
            }
            L4::IcmpEcho { kind, id, seq } => {
                let mut h = vec![0u8; 8];
                h[0] = kind;
                h[4..6].copy_from_slice(&id.to_be_bytes());
                h[6..8].copy_from_slice(&seq.to_be_bytes());
                h
            }
            L4::Sctp { sport, dport, vtag, chunk, .. } => {
                let mut h = vec![0u8; 16];
                h[0..2].copy_from_slice(&sport.to_be_bytes());
                h[2..4].copy_from_slice(&dport.to_be_bytes());
                h[4..8].copy_from_slice(&vtag.to_be_bytes());
                h[12] = chunk;
                h[14..16].copy_from_slice(&((4 + self.payload.len()) as u16).to_be_bytes());
                h
            }
            L4::Raw { .. } => Vec::new(),
        };
        l4.extend_from_slice(&self.payload);
        if let L4::Sctp { crc_error, .. } = self.l4 {
            // RFC 9260 §3.2: a chunk is padded to a multiple of 4 bytes.
            l4.resize(l4.len().next_multiple_of(4), 0);
            let crc = crc32c::fill_sctp_checksum(&mut l4).expect("an SCTP header");
            crc32c::write_sctp_checksum(&mut l4, crc ^ crc_error).expect("an SCTP header");
        }
        let (src, dst) = (self.src.octets(), self.dst.octets());
        let partial = checksum::fold(checksum::pseudo_header_sum(src, dst, self.l4_proto(), l4.len() as u16));
        match self.l4 {
            L4::Tcp { .. } if self.partial_checksum => l4[16..18].copy_from_slice(&partial.to_ne_bytes()),
            L4::Udp { zero_checksum, .. } if self.partial_checksum && !zero_checksum => {
                l4[6..8].copy_from_slice(&partial.to_ne_bytes())
            }
            L4::Tcp { .. } => {
                let c = checksum::l4_checksum(src, dst, proto::TCP, &l4);
                l4[16..18].copy_from_slice(&c.to_ne_bytes());
            }
            L4::Udp { zero_checksum, .. } if !zero_checksum => {
                let c = checksum::l4_checksum(src, dst, proto::UDP, &l4);
                let c = if c == 0 { 0xffff } else { c };
                l4[6..8].copy_from_slice(&c.to_ne_bytes());
            }
            L4::IcmpEcho { .. } => {
                let c = checksum::checksum(&l4);
                l4[2..4].copy_from_slice(&c.to_ne_bytes());
            }
            _ => {}
        }

        let ihl = 20 + self.options.len();
        assert!(ihl.is_multiple_of(4) && ihl <= 60, "options must pad the header to 4 bytes");
        let mut ip = vec![0u8; 20];
        ip[0] = 0x40 | (ihl / 4) as u8;
        ip[1] = self.tos;
        ip[2..4].copy_from_slice(&((ihl + l4.len()) as u16).to_be_bytes());
        ip[4..6].copy_from_slice(&self.id.to_be_bytes());
        ip[6..8].copy_from_slice(&self.frag.to_be_bytes());
        ip[8] = self.ttl;
        ip[9] = self.l4_proto();
        ip[12..16].copy_from_slice(&src);
        ip[16..20].copy_from_slice(&dst);
        ip.extend_from_slice(&self.options);
        let c = checksum::checksum(&ip);
        ip[10..12].copy_from_slice(&c.to_ne_bytes());

        let mut frame = Vec::with_capacity(14 + 8 + ip.len() + l4.len());
        frame.extend_from_slice(&self.dst_mac);
        frame.extend_from_slice(&self.src_mac);
        for (i, vid) in self.vlans.iter().enumerate() {
            let tpid = if i == 0 && self.vlans.len() == 2 { ETH_P_8021AD } else { ETH_P_8021Q };
            frame.extend_from_slice(&tpid.to_be_bytes());
            frame.extend_from_slice(&vid.to_be_bytes());
        }
        frame.extend_from_slice(&ETH_P_IP.to_be_bytes());
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(&l4);
        frame
    }
}

/// Splits a built frame's IPv4 datagram into fragments of `piece` payload
/// bytes (a multiple of 8; the last one shorter) as a sender fragments it
/// (RFC 791): each keeps the link header, the IPv4 header with its own total
/// length, more-fragments flag, offset and a from-scratch header checksum.
/// The first carries the L4 header with the checksum over the whole datagram.
pub fn fragments(frame: &[u8], piece: usize) -> Vec<Vec<u8>> {
    assert!(piece.is_multiple_of(8) && piece > 0);
    let p = parse_ipv4(frame).expect("an IPv4 frame");
    let (link, header, payload) = (&frame[..p.l3_offset], p.ip, p.l4);
    payload
        .chunks(piece)
        .enumerate()
        .map(|(i, chunk)| {
            let mut ip = header.to_vec();
            let more = if (i + 1) * piece < payload.len() { 0x2000 } else { 0 };
            ip[2..4].copy_from_slice(&((header.len() + chunk.len()) as u16).to_be_bytes());
            ip[6..8].copy_from_slice(&(more | (i * piece / 8) as u16).to_be_bytes());
            ip[10..12].fill(0);
            let c = checksum::checksum(&ip);
            ip[10..12].copy_from_slice(&c.to_ne_bytes());
            [link, &ip, chunk].concat()
        })
        .collect()
}

/// `frame` with its IPv4 header edited by `edit` (given the bytes from the
/// IPv4 header to the end of the frame), then the header checksum computed
/// afresh over the header length the edited header claims: a frame that lies
/// about a field but is otherwise well formed. The frame has no VLAN tags.
pub fn edit_ipv4(mut frame: Vec<u8>, edit: impl FnOnce(&mut [u8])) -> Vec<u8> {
    const L3: usize = 14;
    edit(&mut frame[L3..]);
    let ihl = ((frame[L3] & 0x0f) as usize * 4).clamp(20, frame.len() - L3);
    frame[L3 + 10..L3 + 12].fill(0);
    let c = checksum::checksum(&frame[L3..L3 + ihl]);
    frame[L3 + 10..L3 + 12].copy_from_slice(&c.to_ne_bytes());
    frame
}

/// A non-IPv4 frame (ARP request, IPv6...) with the given ethertype.
pub fn other_ethertype(ethertype: u16, len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len.max(14)];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0xbb, 0x01]);
    f[12..14].copy_from_slice(&ethertype.to_be_bytes());
    f
}

/// The IPv4 header and what follows it in an Ethernet frame, if it is IPv4.
pub struct Parsed<'a> {
    pub l3_offset: usize,
    pub ip: &'a [u8],
    pub l4: &'a [u8],
}

impl Parsed<'_> {
    pub fn src(&self) -> Ipv4Addr {
        Ipv4Addr::new(self.ip[12], self.ip[13], self.ip[14], self.ip[15])
    }
    pub fn dst(&self) -> Ipv4Addr {
        Ipv4Addr::new(self.ip[16], self.ip[17], self.ip[18], self.ip[19])
    }
    pub fn proto(&self) -> u8 {
        self.ip[9]
    }
    pub fn ttl(&self) -> u8 {
        self.ip[8]
    }
}

pub fn parse_ipv4(frame: &[u8]) -> Option<Parsed<'_>> {
    let mut off = 12;
    let mut ethertype = u16::from_be_bytes(frame.get(off..off + 2)?.try_into().ok()?);
    off += 2;
    for _ in 0..2 {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        ethertype = u16::from_be_bytes(frame.get(off + 2..off + 4)?.try_into().ok()?);
        off += 4;
    }
    if ethertype != ETH_P_IP {
        return None;
    }
    let ip_start = frame.get(off..)?;
    let ihl = ((*ip_start.first()? & 0x0f) as usize) * 4;
    let tot = u16::from_be_bytes(ip_start.get(2..4)?.try_into().ok()?) as usize;
    if ihl < 20 || tot < ihl || ip_start.len() < tot {
        return None;
    }
    Some(Parsed { l3_offset: off, ip: &ip_start[..ihl], l4: &ip_start[ihl..tot] })
}

/// Verifies every checksum in an IPv4 frame by recomputation: the IPv4 header,
/// and TCP, UDP (zero allowed), SCTP's CRC32c or ICMP when the packet is not
/// a fragment.
pub fn verify_checksums(frame: &[u8]) -> Result<(), String> {
    let p = parse_ipv4(frame).ok_or("not a complete IPv4 frame")?;
    if !checksum::verifies(p.ip, 0) {
        return Err("IPv4 header checksum".into());
    }
    let frag = u16::from_be_bytes([p.ip[6], p.ip[7]]) & 0x3fff;
    if frag != 0 {
        return Ok(());
    }
    let (src, dst) = (p.src().octets(), p.dst().octets());
    let pseudo = checksum::pseudo_header_sum(src, dst, p.proto(), p.l4.len() as u16);
    match p.proto() {
        proto::TCP if !checksum::verifies(p.l4, pseudo) => Err("TCP checksum".into()),
        proto::UDP if p.l4.len() >= 8 && p.l4[6..8] != [0, 0] && !checksum::verifies(p.l4, pseudo) => {
            Err("UDP checksum".into())
        }
        proto::ICMP if !checksum::verifies(p.l4, 0) => Err("ICMP checksum".into()),
        proto::SCTP if !crc32c::verify_sctp_checksum(p.l4) => Err("SCTP CRC32c".into()),
        _ => Ok(()),
    }
}
