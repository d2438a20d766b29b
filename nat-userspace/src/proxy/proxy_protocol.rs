//! PROXY protocol header encoders, versions 1 (text) and 2 (binary), as
//! specified in HAProxy's `doc/proxy-protocol.txt` (2020/03/05 revision).
//!
//! natd prepends one of these to the connection it opens to an inside
//! server so that the server sees the real client address, not natd's.

use std::fmt::{self, Write as _};
use std::net::SocketAddr;

/// §2.2: the 12-byte v2 signature. It contains a NUL, so it is never
/// handled as a C string.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// §2.1: the longest v1 line, CRLF included (the UNKNOWN worst case).
pub const V1_MAX_LEN: usize = 107;

/// §2.1: the line for a connection whose addresses cannot be given. The
/// spec advises against it for connections that should be accepted.
pub const V1_UNKNOWN: &str = "PROXY UNKNOWN\r\n";

/// §2.2: version 2 in the high nibble; command in the low one.
const V2_VERSION: u8 = 0x20;
const V2_CMD_LOCAL: u8 = 0x00;
const V2_CMD_PROXY: u8 = 0x01;

/// §2.2: address family in the high nibble, transport in the low one.
const V2_AF_INET: u8 = 0x10;
const V2_AF_INET6: u8 = 0x20;
const V2_STREAM: u8 = 0x01;
const V2_DGRAM: u8 = 0x02;

/// §2.2 registered TLV types.
pub const PP2_TYPE_ALPN: u8 = 0x01;
pub const PP2_TYPE_AUTHORITY: u8 = 0x02;
pub const PP2_TYPE_CRC32C: u8 = 0x03;
pub const PP2_TYPE_NOOP: u8 = 0x04;
pub const PP2_TYPE_UNIQUE_ID: u8 = 0x05;

/// The proxied transport, for the v2 family byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Udp,
}

/// One v2 Type-Length-Value extension (§2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tlv<'a> {
    pub kind: u8,
    pub value: &'a [u8],
}

/// Why a header could not be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyProtocolError {
    /// Source and destination are of different address families (after
    /// IPv4-mapped IPv6 addresses were turned back into IPv4); the protocol
    /// has one family per header.
    MixedFamilies { src: SocketAddr, dst: SocketAddr },
    /// A TLV value longer than its 16-bit length field can say.
    TlvTooLong { kind: u8, len: usize },
    /// Addresses plus TLVs exceed the 16-bit v2 length field.
    HeaderTooLong { len: usize },
}

impl fmt::Display for ProxyProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyProtocolError::MixedFamilies { src, dst } => write!(
                f,
                "source {src} and destination {dst} are of different address families"
            ),
            ProxyProtocolError::TlvTooLong { kind, len } => {
                write!(f, "TLV 0x{kind:02x} value of {len} bytes exceeds 65535")
            }
            ProxyProtocolError::HeaderTooLong { len } => {
                write!(f, "v2 address block and TLVs total {len} bytes, over 65535")
            }
        }
    }
}

impl std::error::Error for ProxyProtocolError {}

/// Dual-stack sockets report IPv4 peers as `::ffff:a.b.c.d`. The server
/// expects TCP4 for those, and Rust prints such addresses in dotted form,
/// which §2.1's IPv6 syntax (hex groups only) does not allow.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

fn same_family(
    src: SocketAddr,
    dst: SocketAddr,
) -> Result<(SocketAddr, SocketAddr), ProxyProtocolError> {
    let (src, dst) = (canonical(src), canonical(dst));
    if src.is_ipv4() != dst.is_ipv4() {
        return Err(ProxyProtocolError::MixedFamilies { src, dst });
    }
    Ok((src, dst))
}

/// The v1 line for a TCP connection from `src` (the client) to `dst` (the
/// address it connected to), §2.1: `PROXY TCP4|TCP6 src dst sport dport\r\n`.
/// v1 has no UDP form.
pub fn encode_v1(src: SocketAddr, dst: SocketAddr) -> Result<String, ProxyProtocolError> {
    let (src, dst) = same_family(src, dst)?;
    let family = if src.is_ipv4() { "TCP4" } else { "TCP6" };
    let mut line = String::with_capacity(V1_MAX_LEN);
    // Display gives what §2.1 asks for: IPv4 without leading zeros, IPv6 as
    // hex groups with the longest zero run compressed (RFC 5952).
    write!(
        line,
        "PROXY {family} {} {} {} {}\r\n",
        src.ip(),
        dst.ip(),
        src.port(),
        dst.port()
    )
    .expect("writing to a String cannot fail");
    Ok(line)
}

/// The v2 header with the PROXY command for a connection from `src` to
/// `dst`, followed by `tlvs` in order.
pub fn encode_v2(
    transport: Transport,
    src: SocketAddr,
    dst: SocketAddr,
    tlvs: &[Tlv<'_>],
) -> Result<Vec<u8>, ProxyProtocolError> {
    let (src, dst) = same_family(src, dst)?;
    let proto = match transport {
        Transport::Tcp => V2_STREAM,
        Transport::Udp => V2_DGRAM,
    };
    let mut block = Vec::with_capacity(36);
    let family = match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            block.extend_from_slice(&s.ip().octets());
            block.extend_from_slice(&d.ip().octets());
            V2_AF_INET
        }
        (SocketAddr::V6(s), SocketAddr::V6(d)) => {
            block.extend_from_slice(&s.ip().octets());
            block.extend_from_slice(&d.ip().octets());
            V2_AF_INET6
        }
        _ => unreachable!("same_family checked the families"),
    };
    block.extend_from_slice(&src.port().to_be_bytes());
    block.extend_from_slice(&dst.port().to_be_bytes());
    for tlv in tlvs {
        let len = u16::try_from(tlv.value.len()).map_err(|_| ProxyProtocolError::TlvTooLong {
            kind: tlv.kind,
            len: tlv.value.len(),
        })?;
        block.push(tlv.kind);
        block.extend_from_slice(&len.to_be_bytes());
        block.extend_from_slice(tlv.value);
    }
    let len = u16::try_from(block.len())
        .map_err(|_| ProxyProtocolError::HeaderTooLong { len: block.len() })?;
    let mut header = Vec::with_capacity(16 + block.len());
    header.extend_from_slice(&V2_SIGNATURE);
    header.push(V2_VERSION | V2_CMD_PROXY);
    header.push(family | proto);
    header.extend_from_slice(&len.to_be_bytes());
    header.extend_from_slice(&block);
    Ok(header)
}

/// The v2 header with the LOCAL command (§2.2): the connection is natd's
/// own (e.g. a health check), so the receiver uses the real endpoints.
/// AF_UNSPEC and no address block, as the spec advises for LOCAL.
pub fn encode_v2_local() -> [u8; 16] {
    let mut h = [0; 16];
    h[..12].copy_from_slice(&V2_SIGNATURE);
    h[12] = V2_VERSION | V2_CMD_LOCAL;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_spec_example() {
        // §2.1's example line.
        assert_eq!(
            encode_v1(sa("192.168.0.1:56324"), sa("192.168.0.11:443")).unwrap(),
            "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
        );
    }

    #[test]
    fn v1_longest_lines_from_spec() {
        let v4 = encode_v1(sa("255.255.255.255:65535"), sa("255.255.255.255:65535")).unwrap();
        assert_eq!(
            v4,
            "PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n"
        );
        assert_eq!(v4.len(), 56);
        let all_f = "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535";
        let v6 = encode_v1(sa(all_f), sa(all_f)).unwrap();
        assert_eq!(
            v6,
            "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff \
             ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"
        );
        assert_eq!(v6.len(), 104);
        assert!(v6.len() <= V1_MAX_LEN);
        assert_eq!(V1_UNKNOWN.len(), 15);
    }

    #[test]
    fn v1_ipv6_and_ports() {
        assert_eq!(
            encode_v1(sa("[2001:db8::1]:1024"), sa("[2001:db8:0:0:1::11]:8443")).unwrap(),
            "PROXY TCP6 2001:db8::1 2001:db8::1:0:0:11 1024 8443\r\n"
        );
        assert_eq!(
            encode_v1(sa("10.0.0.1:0"), sa("10.0.0.2:7")).unwrap(),
            "PROXY TCP4 10.0.0.1 10.0.0.2 0 7\r\n"
        );
    }

    #[test]
    fn mapped_ipv4_becomes_tcp4() {
        assert_eq!(
            encode_v1(sa("[::ffff:192.0.2.7]:5000"), sa("198.51.100.1:443")).unwrap(),
            "PROXY TCP4 192.0.2.7 198.51.100.1 5000 443\r\n"
        );
        let v2 = encode_v2(
            Transport::Tcp,
            sa("[::ffff:192.0.2.7]:5000"),
            sa("[::ffff:198.51.100.1]:443"),
            &[],
        )
        .unwrap();
        assert_eq!(v2[13], 0x11);
        assert_eq!(v2.len(), 16 + 12);
    }

    #[test]
    fn mixed_families_are_refused() {
        let err = encode_v1(sa("192.0.2.7:5000"), sa("[2001:db8::1]:443")).unwrap_err();
        assert_eq!(
            err,
            ProxyProtocolError::MixedFamilies {
                src: sa("192.0.2.7:5000"),
                dst: sa("[2001:db8::1]:443")
            }
        );
        assert!(
            encode_v2(
                Transport::Udp,
                sa("[2001:db8::1]:1"),
                sa("192.0.2.7:2"),
                &[]
            )
            .is_err()
        );
    }

    #[test]
    fn v2_tcp4_exact_bytes() {
        // The §2.1 example connection in binary form.
        let h = encode_v2(
            Transport::Tcp,
            sa("192.168.0.1:56324"),
            sa("192.168.0.11:443"),
            &[],
        )
        .unwrap();
        let expected: Vec<u8> = [
            &[
                0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a,
            ][..],
            &[0x21],       // version 2, PROXY
            &[0x11],       // AF_INET, STREAM
            &[0x00, 0x0c], // 2*4 + 2*2
            &[192, 168, 0, 1],
            &[192, 168, 0, 11],
            &[0xdc, 0x04], // 56324
            &[0x01, 0xbb], // 443
        ]
        .concat();
        assert_eq!(h, expected);
    }

    #[test]
    fn v2_udp4_family_byte() {
        let h = encode_v2(
            Transport::Udp,
            sa("192.0.2.1:443"),
            sa("198.51.100.2:443"),
            &[],
        )
        .unwrap();
        assert_eq!(&h[12..16], &[0x21, 0x12, 0x00, 0x0c]);
    }

    #[test]
    fn v2_ipv6_exact_bytes() {
        let h = encode_v2(
            Transport::Tcp,
            sa("[2001:db8::1]:1024"),
            sa("[2001:db8::2]:443"),
            &[],
        )
        .unwrap();
        let mut expected = V2_SIGNATURE.to_vec();
        expected.extend_from_slice(&[0x21, 0x21, 0x00, 0x24]); // TCP over IPv6, 36 bytes
        expected.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        expected.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        expected.extend_from_slice(&[0x04, 0x00, 0x01, 0xbb]);
        assert_eq!(h, expected);
        let h = encode_v2(Transport::Udp, sa("[::1]:1"), sa("[::1]:2"), &[]).unwrap();
        assert_eq!(&h[12..16], &[0x21, 0x22, 0x00, 0x24]);
    }

    #[test]
    fn v2_tlvs_follow_the_addresses_and_count_in_length() {
        let h = encode_v2(
            Transport::Tcp,
            sa("192.0.2.1:1000"),
            sa("192.0.2.2:443"),
            &[
                Tlv {
                    kind: PP2_TYPE_AUTHORITY,
                    value: b"app.example",
                },
                Tlv {
                    kind: PP2_TYPE_ALPN,
                    value: b"h2",
                },
                Tlv {
                    kind: PP2_TYPE_NOOP,
                    value: b"",
                },
            ],
        )
        .unwrap();
        let tlvs: Vec<u8> = [
            &[0x02, 0x00, 0x0b][..],
            b"app.example",
            &[0x01, 0x00, 0x02],
            b"h2",
            &[0x04, 0x00, 0x00],
        ]
        .concat();
        assert_eq!(u16::from_be_bytes([h[14], h[15]]) as usize, 12 + tlvs.len());
        assert_eq!(&h[16 + 12..], &tlvs[..]);
        assert_eq!(h.len(), 16 + 12 + tlvs.len());
    }

    #[test]
    fn v2_length_limits() {
        let big = vec![0u8; 65536];
        assert_eq!(
            encode_v2(
                Transport::Tcp,
                sa("192.0.2.1:1"),
                sa("192.0.2.2:2"),
                &[Tlv {
                    kind: 0xe0,
                    value: &big
                }]
            ),
            Err(ProxyProtocolError::TlvTooLong {
                kind: 0xe0,
                len: 65536
            })
        );
        let half = vec![0u8; 40000];
        let two = [
            Tlv {
                kind: 0xe0,
                value: &half,
            },
            Tlv {
                kind: 0xe1,
                value: &half,
            },
        ];
        assert_eq!(
            encode_v2(Transport::Tcp, sa("192.0.2.1:1"), sa("192.0.2.2:2"), &two),
            Err(ProxyProtocolError::HeaderTooLong {
                len: 12 + 2 * (3 + 40000)
            })
        );
    }

    #[test]
    fn v2_local() {
        let h = encode_v2_local();
        assert_eq!(&h[..12], b"\r\n\r\n\0\r\nQUIT\n");
        assert_eq!(&h[12..], &[0x20, 0x00, 0x00, 0x00]);
    }

    #[test]
    fn v2_signature_matches_spec_hex() {
        // §2.2: \x0D \x0A \x0D \x0A \x00 \x0D \x0A \x51 \x55 \x49 \x54 \x0A
        assert_eq!(
            V2_SIGNATURE,
            [
                0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A
            ]
        );
    }

    #[test]
    fn errors_display_what_was_wrong() {
        assert_eq!(
            ProxyProtocolError::TlvTooLong {
                kind: 2,
                len: 70000
            }
            .to_string(),
            "TLV 0x02 value of 70000 bytes exceeds 65535"
        );
    }
}
