//! What each protocol the gateway translates means, in one place per
//! protocol: its number, its name, where its port (or identifier) and its
//! checksum sit in its header, and what the checksum covers. The datapath's
//! rewrites and natd's packet module are written once against `Transport`
//! and instantiated per protocol, so a new protocol is a new type here and
//! an arm where headers are told apart, not an edit at every rewrite.

/// IPv4 protocol numbers the gateway translates.
pub const ICMP: u8 = IcmpEcho::NR;
pub const TCP: u8 = Tcp::NR;
pub const UDP: u8 = Udp::NR;
pub const SCTP: u8 = Sctp::NR;
/// IPsec ESP (RFC 4303): no ports; its SAs are told apart by the SPI
/// (`crate::esp`), translated by programs and maps of their own.
pub const ESP: u8 = 50;

/// A protocol whose flows are told apart by a 16-bit port (or identifier)
/// at a fixed place in its header, covered by a checksum: the Internet
/// checksum, or SCTP's CRC32c (`CRC32C`).
pub trait Transport {
    /// IPv4 protocol number (RFC 5237 registry).
    const NR: u8;
    /// Its name in settings, logs and `natd sessions`.
    const NAME: &'static str;
    /// Bytes of header that must be present to translate it.
    const HEADER_LEN: usize;
    /// Offset of the source port, and of the destination port, in the
    /// header. ICMP echo has one identifier for both.
    const SRC_PORT_AT: usize;
    const DST_PORT_AT: usize;
    /// Offset of the checksum in the header.
    const CHECK_AT: usize;
    /// The checksum covers the IPv4 pseudo-header (the addresses): an
    /// address rewrite changes it too.
    const PSEUDO_HEADER: bool;
    /// A zero checksum means "none" (RFC 768) and stays zero; a computed
    /// zero is sent as all ones.
    const ZERO_IS_NONE: bool;
    /// The checksum is a 4-byte CRC32c over the whole packet (SCTP), not a
    /// 16-bit one's complement sum: a port rewrite updates it with
    /// `crate::crc32c`, not RFC 1624.
    const CRC32C: bool = false;
}

/// TCP (RFC 9293).
pub struct Tcp;
impl Transport for Tcp {
    const NR: u8 = 6;
    const NAME: &'static str = "tcp";
    const HEADER_LEN: usize = 20;
    const SRC_PORT_AT: usize = 0;
    const DST_PORT_AT: usize = 2;
    const CHECK_AT: usize = 16;
    const PSEUDO_HEADER: bool = true;
    const ZERO_IS_NONE: bool = false;
}

/// UDP (RFC 768).
pub struct Udp;
impl Transport for Udp {
    const NR: u8 = 17;
    const NAME: &'static str = "udp";
    const HEADER_LEN: usize = 8;
    const SRC_PORT_AT: usize = 0;
    const DST_PORT_AT: usize = 2;
    const CHECK_AT: usize = 6;
    const PSEUDO_HEADER: bool = true;
    const ZERO_IS_NONE: bool = true;
}

/// ICMP echo request and reply (RFC 792): the identifier plays the port
/// (RFC 5508 REQ-1). ICMPv4 has no pseudo-header.
pub struct IcmpEcho;
impl Transport for IcmpEcho {
    const NR: u8 = 1;
    const NAME: &'static str = "icmp";
    const HEADER_LEN: usize = 8;
    const SRC_PORT_AT: usize = 4;
    const DST_PORT_AT: usize = 4;
    const CHECK_AT: usize = 2;
    const PSEUDO_HEADER: bool = false;
    const ZERO_IS_NONE: bool = false;
}

/// SCTP (RFC 9260): ports like UDP's, then the verification tag, then a
/// CRC32c over the whole packet at bytes 8..12, with no pseudo-header.
/// `HEADER_LEN` is the common header; a packet must also hold the header of
/// its first chunk (`SCTP_MIN_PACKET_LEN`), whose type the datapath reads.
pub struct Sctp;
impl Transport for Sctp {
    const NR: u8 = 132;
    const NAME: &'static str = "sctp";
    const HEADER_LEN: usize = crate::crc32c::SCTP_COMMON_HEADER_LEN;
    const SRC_PORT_AT: usize = 0;
    const DST_PORT_AT: usize = 2;
    const CHECK_AT: usize = crate::crc32c::SCTP_CHECKSUM_OFFSET;
    const PSEUDO_HEADER: bool = false;
    const ZERO_IS_NONE: bool = false;
    const CRC32C: bool = true;
}

/// The smallest SCTP packet: the common header and one chunk header (RFC
/// 9260 §3: a packet carries at least one chunk). Where the first chunk's
/// type sits: `SCTP_FIRST_CHUNK_TYPE_AT`.
pub const SCTP_MIN_PACKET_LEN: usize = Sctp::HEADER_LEN + 4;

/// Offset of the first chunk's type byte in an SCTP packet.
pub const SCTP_FIRST_CHUNK_TYPE_AT: usize = Sctp::HEADER_LEN;

/// The longest SCTP packet whose port rewrite can follow the CRC32c in O(1)
/// from the shift table (x^(8n) for n up to `SHIFT_TABLE_MAX_N`, n = L -
/// 4). Any packet of a 9000-byte jumbo frame fits.
pub const SCTP_MAX_PACKET_LEN: usize = crate::crc32c::SHIFT_TABLE_MAX_N as usize + crate::crc32c::SCTP_PORTS_LEN;

/// Every translated protocol, in the order settings and views list them.
pub const ALL: [u8; 4] = [TCP, UDP, ICMP, SCTP];

/// The name of a protocol number ("other" for one not translated).
pub const fn name(nr: u8) -> &'static str {
    match nr {
        Tcp::NR => Tcp::NAME,
        Udp::NR => Udp::NAME,
        IcmpEcho::NR => IcmpEcho::NAME,
        Sctp::NR => Sctp::NAME,
        ESP => "esp",
        _ => "other",
    }
}

/// Where the port of `side` (source: true) and the checksum are in the
/// header of protocol `nr`, and whether that checksum covers the
/// pseudo-header and keeps a zero: for code that meets the protocol as a
/// number (natd's packet reader).
pub const fn layout(nr: u8, source: bool) -> Option<Layout> {
    match nr {
        Tcp::NR => Some(Layout::of::<Tcp>(source)),
        Udp::NR => Some(Layout::of::<Udp>(source)),
        IcmpEcho::NR => Some(Layout::of::<IcmpEcho>(source)),
        Sctp::NR => Some(Layout::of::<Sctp>(source)),
        _ => None,
    }
}

/// `Transport`'s facts as values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub header_len: usize,
    pub port_at: usize,
    pub check_at: usize,
    pub pseudo_header: bool,
    pub zero_is_none: bool,
    /// The checksum is SCTP's CRC32c (4 bytes at `check_at`).
    pub crc32c: bool,
}

impl Layout {
    pub const fn of<T: Transport>(source: bool) -> Self {
        Self {
            header_len: T::HEADER_LEN,
            port_at: if source { T::SRC_PORT_AT } else { T::DST_PORT_AT },
            check_at: T::CHECK_AT,
            pseudo_header: T::PSEUDO_HEADER,
            zero_is_none: T::ZERO_IS_NONE,
            crc32c: T::CRC32C,
        }
    }
}
