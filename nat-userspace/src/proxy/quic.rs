//! QUIC client Initial packets, read for routing by SNI.
//!
//! Initial packets are encrypted, but with keys anyone can derive from the
//! Destination Connection ID (RFC 9001 §5.2), so a middlebox can read the
//! ClientHello without being a party to the handshake. This module parses
//! the long header (RFC 9000 §17.2), removes header protection (RFC 9001
//! §5.4), decrypts the payload (RFC 9001 §5.3), extracts CRYPTO frames
//! (RFC 9000 §19.6) and reassembles them into a ClientHello for the
//! `tls` module's handshake-layer parser.
//!
//! QUIC v1 (RFC 9000) and v2 (RFC 9369) are supported.

use std::fmt;

use aes::Aes128;
use aes::cipher::{BlockCipherEncrypt, KeyInit};
use aes_gcm::aead::{AeadInOut, Nonce};
use aes_gcm::{Aes128Gcm, Tag};
use hkdf::Hkdf;
use sha2::Sha256;

use super::tls::{ClientHelloInfo, HandshakeReader, Limits as TlsLimits, TlsError};

/// RFC 9000 §14.1: a server MUST discard an Initial in a UDP datagram whose
/// payload is smaller than 1200 bytes; we do the same so that spoofed tiny
/// datagrams cannot make us decrypt or keep state.
pub const MIN_INITIAL_DATAGRAM: usize = 1200;

/// RFC 9000 §17.2: in versions 1 and 2 connection IDs are at most 20 bytes.
pub const MAX_CID_LEN: usize = 20;

/// RFC 9001 §5.4.2: the header-protection sample is 16 bytes taken 4 bytes
/// after the start of the packet number, whatever its real length.
const SAMPLE_LEN: usize = 16;
const SAMPLE_OFFSET_FROM_PN: usize = 4;
const AEAD_TAG_LEN: usize = 16;

/// RFC 9000 §16: largest value a variable-length integer can hold, and the
/// bound on any CRYPTO stream offset (§19.6).
const VARINT_MAX: u64 = (1 << 62) - 1;

const SALT_V1: [u8; 20] = [
    0x38, 0x76, 0x2c, 0xf7, 0xf5, 0x59, 0x34, 0xb3, 0x4d, 0x17, 0x9a, 0xe6, 0xa4, 0xc8, 0x0c, 0xad,
    0xcc, 0xbb, 0x7f, 0x0a,
];
const SALT_V2: [u8; 20] = [
    0x0d, 0xed, 0xe3, 0xde, 0xf7, 0x00, 0xa6, 0xdb, 0x81, 0x93, 0x81, 0xbe, 0x6e, 0x26, 0x9d, 0xcb,
    0xf9, 0xbd, 0x2e, 0xd9,
];

/// The QUIC versions whose Initial packets we can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuicVersion {
    /// RFC 9000.
    V1,
    /// RFC 9369.
    V2,
}

impl QuicVersion {
    pub const fn wire(self) -> u32 {
        match self {
            QuicVersion::V1 => 0x0000_0001,
            QuicVersion::V2 => 0x6b33_43cf,
        }
    }

    pub const fn from_wire(version: u32) -> Option<Self> {
        match version {
            0x0000_0001 => Some(QuicVersion::V1),
            0x6b33_43cf => Some(QuicVersion::V2),
            _ => None,
        }
    }

    fn initial_salt(self) -> &'static [u8; 20] {
        match self {
            QuicVersion::V1 => &SALT_V1,
            QuicVersion::V2 => &SALT_V2,
        }
    }

    /// RFC 9001 §5.1 labels; RFC 9369 §3.3.2 renames them for v2.
    fn labels(self) -> [&'static [u8]; 3] {
        match self {
            QuicVersion::V1 => [b"quic key", b"quic iv", b"quic hp"],
            QuicVersion::V2 => [b"quicv2 key", b"quicv2 iv", b"quicv2 hp"],
        }
    }

    /// The two Long Packet Type bits (0x30). RFC 9369 §3.2 permutes them so
    /// that v1-ossified middleboxes cannot recognise v2 Initials.
    fn packet_type(self, first_byte: u8) -> LongPacketType {
        let bits = (first_byte >> 4) & 0x03;
        match (self, bits) {
            (QuicVersion::V1, 0) | (QuicVersion::V2, 1) => LongPacketType::Initial,
            (QuicVersion::V1, 1) | (QuicVersion::V2, 2) => LongPacketType::ZeroRtt,
            (QuicVersion::V1, 2) | (QuicVersion::V2, 3) => LongPacketType::Handshake,
            _ => LongPacketType::Retry,
        }
    }

    /// Inverse of [`packet_type`](Self::packet_type), for building packets.
    #[cfg(test)]
    fn type_bits(self, ty: LongPacketType) -> u8 {
        let v1 = match ty {
            LongPacketType::Initial => 0,
            LongPacketType::ZeroRtt => 1,
            LongPacketType::Handshake => 2,
            LongPacketType::Retry => 3,
        };
        match self {
            QuicVersion::V1 => v1 << 4,
            QuicVersion::V2 => ((v1 + 1) & 3) << 4,
        }
    }
}

/// RFC 9000 §17.2 Long Packet Types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LongPacketType {
    Initial,
    ZeroRtt,
    Handshake,
    Retry,
}

/// What went wrong reading a QUIC Initial or reassembling its ClientHello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuicError {
    /// The datagram is under [`MIN_INITIAL_DATAGRAM`] bytes.
    DatagramTooSmall {
        len: usize,
    },
    /// The first byte has the header form bit clear: a short-header packet.
    NotLongHeader,
    /// Version 0: a Version Negotiation packet, which clients never send.
    VersionNegotiation,
    UnsupportedVersion {
        version: u32,
    },
    /// A long-header packet of another type where an Initial was required.
    NotInitial {
        packet_type: LongPacketType,
    },
    /// A Retry packet from a client; it has no Length field, so nothing after
    /// it can be found either.
    UnexpectedRetry,
    /// The packet ended inside a header field.
    Truncated {
        field: &'static str,
    },
    ConnectionIdTooLong {
        len: usize,
    },
    /// A Length field claims more bytes than the datagram holds.
    LengthOverrun {
        field: &'static str,
        declared: u64,
        available: usize,
    },
    /// Fewer than 4 + 16 bytes after the packet number offset, so there is
    /// nothing to sample for header protection (RFC 9001 §5.4.2).
    TooShortForSample {
        available: usize,
    },
    /// The AEAD tag did not verify: not a client Initial for this DCID, or
    /// corrupted.
    DecryptFailed,
    /// RFC 9000 §17.2: the reserved bits must be zero once protection is
    /// removed (PROTOCOL_VIOLATION).
    ReservedBitsSet,
    /// RFC 9000 §12.4: a packet with no frames is a PROTOCOL_VIOLATION.
    EmptyPayload,
    /// RFC 9000 §12.4 Table 3: only PADDING, PING, ACK, CRYPTO and
    /// CONNECTION_CLOSE (0x1c) may appear in an Initial.
    FrameNotAllowed {
        frame_type: u64,
    },
    /// RFC 9000 §12.4: frame types MUST use the shortest encoding.
    FrameTypeNotMinimal {
        frame_type: u64,
    },
    /// A frame ended before its last field.
    TruncatedFrame {
        frame_type: u64,
    },
    /// CRYPTO offset + length is past 2^62-1 (RFC 9000 §19.6).
    CryptoOffsetOverflow,
    /// A packet whose DCID differs from the first one fed to the assembler.
    DcidMismatch,
    /// A packet whose version differs from the first one fed to the assembler.
    VersionMismatch,
    /// More Initial packets than `AssemblerLimits::max_packets`.
    TooManyPackets {
        max: usize,
    },
    /// CRYPTO data ends past the largest ClientHello we accept; the client's
    /// Initial CRYPTO stream holds nothing but the ClientHello.
    CryptoBeyondLimit {
        end: u64,
        max: usize,
    },
    /// The same CRYPTO stream offset arrived twice with different bytes
    /// (RFC 9000 §2.2 allows treating this as PROTOCOL_VIOLATION). Refused
    /// so we never route on data the server may not see.
    CryptoDataMismatch {
        offset: u64,
    },
    /// The reassembled ClientHello is malformed.
    Tls(TlsError),
}

impl fmt::Display for QuicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QuicError::DatagramTooSmall { len } => write!(
                f,
                "datagram of {len} bytes is under the {MIN_INITIAL_DATAGRAM}-byte minimum for an Initial"
            ),
            QuicError::NotLongHeader => write!(f, "not a long-header packet"),
            QuicError::VersionNegotiation => write!(f, "Version Negotiation packet from a client"),
            QuicError::UnsupportedVersion { version } => {
                write!(f, "unsupported QUIC version 0x{version:08x}")
            }
            QuicError::NotInitial { packet_type } => {
                write!(f, "{packet_type:?} packet where an Initial was expected")
            }
            QuicError::UnexpectedRetry => write!(f, "Retry packet from a client"),
            QuicError::Truncated { field } => write!(f, "packet ends inside {field}"),
            QuicError::ConnectionIdTooLong { len } => {
                write!(f, "connection ID of {len} bytes, more than {MAX_CID_LEN}")
            }
            QuicError::LengthOverrun {
                field,
                declared,
                available,
            } => write!(
                f,
                "{field} declares {declared} bytes but only {available} remain"
            ),
            QuicError::TooShortForSample { available } => write!(
                f,
                "only {available} bytes after the packet number offset, 20 needed for the header-protection sample"
            ),
            QuicError::DecryptFailed => write!(f, "Initial packet failed AEAD authentication"),
            QuicError::ReservedBitsSet => write!(f, "reserved header bits are not zero"),
            QuicError::EmptyPayload => write!(f, "packet contains no frames"),
            QuicError::FrameNotAllowed { frame_type } => {
                write!(
                    f,
                    "frame type 0x{frame_type:x} is not allowed in an Initial packet"
                )
            }
            QuicError::FrameTypeNotMinimal { frame_type } => {
                write!(f, "frame type 0x{frame_type:x} is not minimally encoded")
            }
            QuicError::TruncatedFrame { frame_type } => {
                write!(f, "frame of type 0x{frame_type:x} is truncated")
            }
            QuicError::CryptoOffsetOverflow => write!(f, "CRYPTO frame ends past 2^62-1"),
            QuicError::DcidMismatch => {
                write!(f, "packet belongs to another connection (DCID differs)")
            }
            QuicError::VersionMismatch => write!(f, "packet has another QUIC version"),
            QuicError::TooManyPackets { max } => {
                write!(f, "ClientHello not complete after {max} Initial packets")
            }
            QuicError::CryptoBeyondLimit { end, max } => write!(
                f,
                "CRYPTO data up to offset {end} exceeds the {max}-byte ClientHello limit"
            ),
            QuicError::CryptoDataMismatch { offset } => {
                write!(
                    f,
                    "CRYPTO data at offset {offset} differs from an earlier copy"
                )
            }
            QuicError::Tls(e) => write!(f, "ClientHello in CRYPTO frames: {e}"),
        }
    }
}

impl std::error::Error for QuicError {}

impl From<TlsError> for QuicError {
    fn from(e: TlsError) -> Self {
        QuicError::Tls(e)
    }
}

/// Packet-protection keys for one direction at the Initial level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitialKeys {
    pub key: [u8; 16],
    pub iv: [u8; 12],
    pub hp: [u8; 16],
}

/// `client_initial_secret` and `server_initial_secret` for a DCID
/// (RFC 9001 §5.2).
pub fn initial_secrets(version: QuicVersion, dcid: &[u8]) -> ([u8; 32], [u8; 32]) {
    let (_, initial) = Hkdf::<Sha256>::extract(Some(&version.initial_salt()[..]), dcid);
    let mut client = [0; 32];
    let mut server = [0; 32];
    expand_label_with(&initial, b"client in", &mut client);
    expand_label_with(&initial, b"server in", &mut server);
    (client, server)
}

impl InitialKeys {
    /// Keys protecting what the client sends, which is what we read.
    pub fn client(version: QuicVersion, dcid: &[u8]) -> Self {
        Self::from_secret(version, &initial_secrets(version, dcid).0)
    }

    /// Keys protecting what the server sends.
    pub fn server(version: QuicVersion, dcid: &[u8]) -> Self {
        Self::from_secret(version, &initial_secrets(version, dcid).1)
    }

    /// RFC 9001 §5.1: key, iv and hp from a traffic secret (AES-128-GCM).
    pub fn from_secret(version: QuicVersion, secret: &[u8; 32]) -> Self {
        let hkdf = Hkdf::<Sha256>::from_prk(secret).expect("a 32-byte PRK is valid for SHA-256");
        let [key_label, iv_label, hp_label] = version.labels();
        let mut keys = InitialKeys {
            key: [0; 16],
            iv: [0; 12],
            hp: [0; 16],
        };
        expand_label_with(&hkdf, key_label, &mut keys.key);
        expand_label_with(&hkdf, iv_label, &mut keys.iv);
        expand_label_with(&hkdf, hp_label, &mut keys.hp);
        keys
    }

    /// RFC 9001 §5.4.3: AES-ECB of the sample under hp; the first 5 bytes
    /// mask the first header byte and up to 4 packet-number bytes.
    pub fn header_mask(&self, sample: &[u8; 16]) -> [u8; 5] {
        let cipher = Aes128::new(&self.hp.into());
        let mut block = aes::Block::from(*sample);
        cipher.encrypt_block(&mut block);
        let mut mask = [0; 5];
        mask.copy_from_slice(&block[..5]);
        mask
    }

    /// RFC 9001 §5.3: the nonce is the iv XORed with the packet number,
    /// left-padded to the iv's length.
    fn nonce(&self, packet_number: u64) -> [u8; 12] {
        let mut nonce = self.iv;
        for (n, p) in nonce[4..].iter_mut().zip(packet_number.to_be_bytes()) {
            *n ^= p;
        }
        nonce
    }

    fn aead(&self) -> Aes128Gcm {
        Aes128Gcm::new(&self.key.into())
    }
}

/// HKDF-Expand-Label (RFC 8446 §7.1) with an empty context, as all QUIC
/// Initial derivations use.
fn expand_label_with(hkdf: &Hkdf<Sha256>, label: &[u8], out: &mut [u8]) {
    const PREFIX: &[u8] = b"tls13 ";
    let mut info = Vec::with_capacity(4 + PREFIX.len() + label.len());
    info.extend_from_slice(
        &u16::try_from(out.len())
            .expect("short output")
            .to_be_bytes(),
    );
    info.push(u8::try_from(PREFIX.len() + label.len()).expect("short label"));
    info.extend_from_slice(PREFIX);
    info.extend_from_slice(label);
    info.push(0);
    hkdf.expand(&info, out)
        .expect("Initial key lengths are far below 255 * 32 bytes");
}

/// A parsed (still protected) long header of an Initial, 0-RTT or
/// Handshake packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LongHeader<'a> {
    pub version: QuicVersion,
    pub packet_type: LongPacketType,
    pub dcid: &'a [u8],
    pub scid: &'a [u8],
    /// Initial packets only; empty for the others.
    pub token: &'a [u8],
    /// Where the (protected) packet number starts.
    pub pn_offset: usize,
    /// Bytes from the first header byte to the end of this packet, as set by
    /// the Length field; more packets may follow in the datagram.
    pub packet_len: usize,
}

/// Bounds-checked reader over a packet.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len())?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Some(out)
    }

    fn u8(&mut self) -> Option<u8> {
        self.bytes(1).map(|b| b[0])
    }

    /// RFC 9000 §16 variable-length integer; also returns its encoded size.
    fn varint(&mut self) -> Option<(u64, usize)> {
        let first = *self.buf.get(self.pos)?;
        let len = 1usize << (first >> 6);
        let bytes = self.bytes(len)?;
        let mut v = u64::from(first & 0x3f);
        for b in &bytes[1..] {
            v = (v << 8) | u64::from(*b);
        }
        Some((v, len))
    }
}

fn varint_len(v: u64) -> usize {
    match v {
        0..=0x3f => 1,
        0x40..=0x3fff => 2,
        0x4000..=0x3fff_ffff => 4,
        _ => 8,
    }
}

/// Parses the long header at the start of `packet` (RFC 9000 §17.2,
/// §17.2.2 for the Initial's token). Header protection is not removed.
pub fn parse_long_header(packet: &[u8]) -> Result<LongHeader<'_>, QuicError> {
    let mut c = Cursor::new(packet);
    let first = c.u8().ok_or(QuicError::Truncated {
        field: "first byte",
    })?;
    if first & 0x80 == 0 {
        return Err(QuicError::NotLongHeader);
    }
    // The fixed bit (0x40) is deliberately not checked: RFC 9287 lets
    // clients grease it.
    let v = c
        .bytes(4)
        .ok_or(QuicError::Truncated { field: "version" })?;
    let wire = u32::from_be_bytes([v[0], v[1], v[2], v[3]]);
    if wire == 0 {
        return Err(QuicError::VersionNegotiation);
    }
    let version =
        QuicVersion::from_wire(wire).ok_or(QuicError::UnsupportedVersion { version: wire })?;
    let dcid = read_cid(&mut c, "destination connection ID")?;
    let scid = read_cid(&mut c, "source connection ID")?;
    let packet_type = version.packet_type(first);
    let token = match packet_type {
        LongPacketType::Retry => return Err(QuicError::UnexpectedRetry),
        LongPacketType::Initial => {
            let (len, _) = c.varint().ok_or(QuicError::Truncated {
                field: "token length",
            })?;
            read_declared(&mut c, len, "token")?
        }
        LongPacketType::ZeroRtt | LongPacketType::Handshake => &[][..],
    };
    let (len, _) = c.varint().ok_or(QuicError::Truncated { field: "length" })?;
    let pn_offset = c.pos;
    read_declared(&mut c, len, "length")?;
    Ok(LongHeader {
        version,
        packet_type,
        dcid,
        scid,
        token,
        pn_offset,
        packet_len: c.pos,
    })
}

fn read_cid<'a>(c: &mut Cursor<'a>, field: &'static str) -> Result<&'a [u8], QuicError> {
    let len = usize::from(c.u8().ok_or(QuicError::Truncated { field })?);
    if len > MAX_CID_LEN {
        return Err(QuicError::ConnectionIdTooLong { len });
    }
    c.bytes(len).ok_or(QuicError::Truncated { field })
}

fn read_declared<'a>(
    c: &mut Cursor<'a>,
    declared: u64,
    field: &'static str,
) -> Result<&'a [u8], QuicError> {
    let available = c.remaining();
    usize::try_from(declared)
        .ok()
        .and_then(|n| c.bytes(n))
        .ok_or(QuicError::LengthOverrun {
            field,
            declared,
            available,
        })
}

/// One CRYPTO frame: `data` belongs at `offset` in the Initial-level
/// CRYPTO stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CryptoFrame {
    pub offset: u64,
    pub data: Vec<u8>,
}

/// A decrypted client Initial packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitialPacket {
    pub version: QuicVersion,
    pub dcid: Vec<u8>,
    pub scid: Vec<u8>,
    pub token: Vec<u8>,
    /// The packet number decoded without per-connection state, i.e. as if
    /// nothing had been received yet (RFC 9000 §A.3), which yields the
    /// truncated value. That is exact while the full number fits the 1–4
    /// bytes it was sent in; client Initials are numbered from 0 and a
    /// ClientHello takes a handful of them, so in practice it always does
    /// (and a wrong number fails authentication rather than mis-parsing).
    pub packet_number: u64,
    /// CRYPTO frames in the order they appear in the packet.
    pub crypto: Vec<CryptoFrame>,
    /// Error code of a CONNECTION_CLOSE frame, if the client sent one.
    pub connection_close: Option<u64>,
    /// Bytes this packet took in the datagram.
    pub wire_len: usize,
}

/// Decrypts the client Initial at the start of `packet`, deriving the keys
/// from its own DCID.
pub fn decrypt_initial(packet: &[u8]) -> Result<InitialPacket, QuicError> {
    let header = parse_long_header(packet)?;
    let keys = InitialKeys::client(header.version, header.dcid);
    decrypt_initial_with(packet, &keys)
}

/// Like [`decrypt_initial`] with given keys (e.g. server keys, or keys
/// already derived for this DCID).
pub fn decrypt_initial_with(packet: &[u8], keys: &InitialKeys) -> Result<InitialPacket, QuicError> {
    let header = parse_long_header(packet)?;
    if header.packet_type != LongPacketType::Initial {
        return Err(QuicError::NotInitial {
            packet_type: header.packet_type,
        });
    }
    let (packet_number, plaintext) = unprotect(&packet[..header.packet_len], &header, keys)?;
    let frames = parse_frames(&plaintext)?;
    Ok(InitialPacket {
        version: header.version,
        dcid: header.dcid.to_vec(),
        scid: header.scid.to_vec(),
        token: header.token.to_vec(),
        packet_number,
        crypto: frames.crypto,
        connection_close: frames.connection_close,
        wire_len: header.packet_len,
    })
}

/// Removes header protection and decrypts; returns (packet number,
/// plaintext payload). `packet` is exactly one packet.
fn unprotect(
    packet: &[u8],
    header: &LongHeader<'_>,
    keys: &InitialKeys,
) -> Result<(u64, Vec<u8>), QuicError> {
    let pn_offset = header.pn_offset;
    let available = packet.len() - pn_offset;
    if available < SAMPLE_OFFSET_FROM_PN + SAMPLE_LEN {
        return Err(QuicError::TooShortForSample { available });
    }
    let sample_at = pn_offset + SAMPLE_OFFSET_FROM_PN;
    let mut sample = [0; SAMPLE_LEN];
    sample.copy_from_slice(&packet[sample_at..sample_at + SAMPLE_LEN]);
    let mask = keys.header_mask(&sample);

    // Long headers protect the low 4 bits of the first byte (§5.4.1).
    let first = packet[0] ^ (mask[0] & 0x0f);
    let pn_len = usize::from(first & 0x03) + 1;
    let mut header_bytes = packet[..pn_offset + pn_len].to_vec();
    header_bytes[0] = first;
    let mut packet_number = 0u64;
    for i in 0..pn_len {
        header_bytes[pn_offset + i] ^= mask[1 + i];
        packet_number = (packet_number << 8) | u64::from(header_bytes[pn_offset + i]);
    }

    // The sample check above guarantees ciphertext + tag >= 16 bytes.
    let body = &packet[pn_offset + pn_len..];
    let (ciphertext, tag) = body.split_at(body.len() - AEAD_TAG_LEN);
    let mut plaintext = ciphertext.to_vec();
    let nonce = Nonce::<Aes128Gcm>::from(keys.nonce(packet_number));
    let tag = Tag::try_from(tag).expect("tag slice is 16 bytes");
    keys.aead()
        .decrypt_inout_detached(&nonce, &header_bytes, plaintext.as_mut_slice().into(), &tag)
        .map_err(|_| QuicError::DecryptFailed)?;

    // Only meaningful once authenticated: before that they are noise.
    if first & 0x0c != 0 {
        return Err(QuicError::ReservedBitsSet);
    }
    Ok((packet_number, plaintext))
}

struct Frames {
    crypto: Vec<CryptoFrame>,
    connection_close: Option<u64>,
}

const FRAME_PADDING: u64 = 0x00;
const FRAME_PING: u64 = 0x01;
const FRAME_ACK: u64 = 0x02;
const FRAME_ACK_ECN: u64 = 0x03;
const FRAME_CRYPTO: u64 = 0x06;
const FRAME_CONNECTION_CLOSE: u64 = 0x1c;

/// Parses the frames of an Initial payload (RFC 9000 §19), keeping CRYPTO
/// data and skipping the other permitted frames field by field, so that a
/// frame boundary is never guessed.
fn parse_frames(payload: &[u8]) -> Result<Frames, QuicError> {
    if payload.is_empty() {
        return Err(QuicError::EmptyPayload);
    }
    let mut frames = Frames {
        crypto: Vec::new(),
        connection_close: None,
    };
    let mut c = Cursor::new(payload);
    while c.remaining() > 0 {
        let (frame_type, encoded_len) = c
            .varint()
            .ok_or(QuicError::TruncatedFrame { frame_type: 0 })?;
        if encoded_len != varint_len(frame_type) {
            return Err(QuicError::FrameTypeNotMinimal { frame_type });
        }
        let truncated = QuicError::TruncatedFrame { frame_type };
        match frame_type {
            FRAME_PADDING | FRAME_PING => {}
            FRAME_ACK | FRAME_ACK_ECN => {
                // Largest Acknowledged, ACK Delay, ACK Range Count, First ACK Range.
                let mut fields = [0u64; 4];
                for f in &mut fields {
                    *f = c.varint().ok_or(truncated.clone())?.0;
                }
                // Each range is two varints (>= 2 bytes), so a huge count
                // runs out of payload quickly rather than looping long.
                for _ in 0..fields[2] {
                    c.varint().ok_or(truncated.clone())?;
                    c.varint().ok_or(truncated.clone())?;
                }
                if frame_type == FRAME_ACK_ECN {
                    for _ in 0..3 {
                        c.varint().ok_or(truncated.clone())?;
                    }
                }
            }
            FRAME_CRYPTO => {
                let (offset, _) = c.varint().ok_or(truncated.clone())?;
                let (len, _) = c.varint().ok_or(truncated.clone())?;
                if offset.checked_add(len).is_none_or(|end| end > VARINT_MAX) {
                    return Err(QuicError::CryptoOffsetOverflow);
                }
                let data = usize::try_from(len)
                    .ok()
                    .and_then(|n| c.bytes(n))
                    .ok_or(truncated)?;
                frames.crypto.push(CryptoFrame {
                    offset,
                    data: data.to_vec(),
                });
            }
            FRAME_CONNECTION_CLOSE => {
                let (code, _) = c.varint().ok_or(truncated.clone())?;
                c.varint().ok_or(truncated.clone())?; // offending frame type
                let (reason_len, _) = c.varint().ok_or(truncated.clone())?;
                usize::try_from(reason_len)
                    .ok()
                    .and_then(|n| c.bytes(n))
                    .ok_or(truncated)?;
                frames.connection_close = Some(code);
            }
            _ => return Err(QuicError::FrameNotAllowed { frame_type }),
        }
    }
    Ok(frames)
}

/// The client Initials found in one UDP datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitialDatagram {
    pub version: QuicVersion,
    /// DCID of the first packet: the key for per-connection state, since the
    /// client keeps it on every Initial until it hears from the server
    /// (RFC 9000 §7.2).
    pub dcid: Vec<u8>,
    /// Decrypted Initial packets, in datagram order.
    pub packets: Vec<InitialPacket>,
    /// Later Initials with this DCID that did not decrypt or parse. RFC 9000
    /// §12.2 has each coalesced packet processed on its own.
    pub dropped: Vec<QuicError>,
    /// Coalesced 0-RTT/Handshake packets, and packets with another DCID or
    /// version (RFC 9000 §12.2: receivers SHOULD ignore those).
    pub ignored: usize,
}

/// Reads the client Initials of a UDP datagram, coalesced packets included
/// (RFC 9000 §12.2). The first packet must be a valid client Initial;
/// otherwise the datagram is refused as a whole.
pub fn parse_datagram(datagram: &[u8]) -> Result<InitialDatagram, QuicError> {
    if datagram.len() < MIN_INITIAL_DATAGRAM {
        return Err(QuicError::DatagramTooSmall {
            len: datagram.len(),
        });
    }
    let header = parse_long_header(datagram)?;
    if header.packet_type != LongPacketType::Initial {
        return Err(QuicError::NotInitial {
            packet_type: header.packet_type,
        });
    }
    let version = header.version;
    let keys = InitialKeys::client(version, header.dcid);
    let first = decrypt_initial_with(datagram, &keys)?;
    let mut out = InitialDatagram {
        version,
        dcid: first.dcid.clone(),
        packets: Vec::new(),
        dropped: Vec::new(),
        ignored: 0,
    };
    let mut rest = &datagram[first.wire_len..];
    out.packets.push(first);
    // A short-header packet has no length and so must be last; trailing
    // bytes without the long-header bit (some stacks pad with zeros) end
    // the walk the same way.
    while rest.first().is_some_and(|b| b & 0x80 != 0) {
        let header = match parse_long_header(rest) {
            Ok(h) => h,
            Err(e) => {
                // Without a Length there is no way to find the next packet.
                out.dropped.push(e);
                break;
            }
        };
        let len = header.packet_len;
        if header.packet_type != LongPacketType::Initial
            || header.dcid != out.dcid.as_slice()
            || header.version != version
        {
            out.ignored += 1;
        } else {
            match decrypt_initial_with(&rest[..len], &keys) {
                Ok(p) => out.packets.push(p),
                Err(e) => out.dropped.push(e),
            }
        }
        rest = &rest[len..];
    }
    Ok(out)
}

/// Bounds on reassembling one client's ClientHello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AssemblerLimits {
    /// `max_client_hello_len` also bounds the CRYPTO stream we buffer: the
    /// client's Initial-level stream carries only the ClientHello.
    pub tls: TlsLimits,
    /// Most Initial packets fed before giving up. A 10 KB ClientHello needs
    /// about 9; the rest is room for retransmissions.
    pub max_packets: usize,
}

impl Default for AssemblerLimits {
    fn default() -> Self {
        Self {
            tls: TlsLimits::default(),
            max_packets: 32,
        }
    }
}

/// Reassembles the Initial-level CRYPTO stream of one connection (one
/// DCID) from packets arriving in any order, with duplicates and
/// overlaps, and reads the ClientHello from it.
///
/// Memory is bounded by `tls.max_client_hello_len` for the stream, one bit
/// per stream byte for the received map, and the same again inside the
/// handshake reader. Once it has returned a ClientHello or an error, it
/// returns the same outcome for every later push.
#[derive(Debug, Clone)]
pub struct QuicClientHelloAssembler {
    limits: AssemblerLimits,
    dcid: Option<Vec<u8>>,
    version: Option<QuicVersion>,
    packets: usize,
    /// The CRYPTO stream as far as any frame has reached; holes are zero.
    stream: Vec<u8>,
    /// One bit per byte of `stream`: received or not.
    have: Vec<u64>,
    /// Length of the hole-free prefix already handed to `reader`.
    contiguous: usize,
    reader: HandshakeReader,
    outcome: Option<Result<ClientHelloInfo, QuicError>>,
}

impl QuicClientHelloAssembler {
    pub fn new(limits: AssemblerLimits) -> Self {
        Self {
            limits,
            dcid: None,
            version: None,
            packets: 0,
            stream: Vec::new(),
            have: Vec::new(),
            contiguous: 0,
            reader: HandshakeReader::new(limits.tls),
            outcome: None,
        }
    }

    /// The DCID of the first packet fed, which keys this connection.
    pub fn dcid(&self) -> Option<&[u8]> {
        self.dcid.as_deref()
    }

    /// Bytes of CRYPTO stream held (holes included).
    pub fn buffered(&self) -> usize {
        self.stream.len()
    }

    /// Feeds every Initial of a datagram.
    pub fn push_datagram(
        &mut self,
        datagram: &InitialDatagram,
    ) -> Result<Option<ClientHelloInfo>, QuicError> {
        let mut last = Ok(None);
        for p in &datagram.packets {
            last = self.push_packet(p);
            if !matches!(last, Ok(None)) {
                break;
            }
        }
        last
    }

    /// Feeds one decrypted Initial packet. `Ok(None)` means more are needed.
    ///
    /// A packet of another connection (DCID or version differs from the
    /// first one) is refused without ending the assembly: that is the
    /// caller's mix-up, not this client's fault.
    pub fn push_packet(
        &mut self,
        packet: &InitialPacket,
    ) -> Result<Option<ClientHelloInfo>, QuicError> {
        if self.outcome.is_none() {
            if self.dcid.as_ref().is_some_and(|d| *d != packet.dcid) {
                return Err(QuicError::DcidMismatch);
            }
            if self.version.is_some_and(|v| v != packet.version) {
                return Err(QuicError::VersionMismatch);
            }
        }
        self.sticky(|s| {
            s.dcid.get_or_insert_with(|| packet.dcid.clone());
            s.version.get_or_insert(packet.version);
            s.packets += 1;
            if s.packets > s.limits.max_packets {
                return Err(QuicError::TooManyPackets {
                    max: s.limits.max_packets,
                });
            }
            for frame in &packet.crypto {
                if let Some(info) = s.insert(frame.offset, &frame.data)? {
                    return Ok(Some(info));
                }
            }
            Ok(None)
        })
    }

    /// Feeds CRYPTO stream data directly (no packet bookkeeping).
    pub fn push_crypto(
        &mut self,
        offset: u64,
        data: &[u8],
    ) -> Result<Option<ClientHelloInfo>, QuicError> {
        self.sticky(|s| s.insert(offset, data))
    }

    fn sticky(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<Option<ClientHelloInfo>, QuicError>,
    ) -> Result<Option<ClientHelloInfo>, QuicError> {
        if let Some(outcome) = &self.outcome {
            return outcome.clone().map(Some);
        }
        let result = f(self);
        match &result {
            Ok(Some(info)) => self.outcome = Some(Ok(info.clone())),
            Err(e) => self.outcome = Some(Err(e.clone())),
            Ok(None) => {}
        }
        result
    }

    fn insert(&mut self, offset: u64, data: &[u8]) -> Result<Option<ClientHelloInfo>, QuicError> {
        let max = self.limits.tls.max_client_hello_len;
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or(QuicError::CryptoOffsetOverflow)?;
        if data.is_empty() {
            return Ok(None);
        }
        if end > max as u64 {
            return Err(QuicError::CryptoBeyondLimit { end, max });
        }
        // Both fit in usize: end <= max.
        let (start, end) = (offset as usize, end as usize);
        if end > self.stream.len() {
            self.stream.resize(end, 0);
            self.have.resize(end.div_ceil(64), 0);
        }
        for (i, &byte) in data.iter().enumerate() {
            let at = start + i;
            let (word, bit) = (at / 64, 1u64 << (at % 64));
            if self.have[word] & bit != 0 {
                if self.stream[at] != byte {
                    return Err(QuicError::CryptoDataMismatch { offset: at as u64 });
                }
            } else {
                self.stream[at] = byte;
                self.have[word] |= bit;
            }
        }
        let from = self.contiguous;
        while self.contiguous < self.stream.len()
            && self.have[self.contiguous / 64] & (1u64 << (self.contiguous % 64)) != 0
        {
            self.contiguous += 1;
        }
        if self.contiguous == from {
            return Ok(None);
        }
        Ok(self.reader.push(&self.stream[from..self.contiguous])?)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    // `super::super`, not `crate`: these files move into a submodule of natd.
    use super::super::test_support::{ClientHelloBuilder, hex};
    use proptest::prelude::*;

    const DCID: &str = "8394c8f03e515708";

    /// RFC 9001 Appendix A.2: the client Initial's unprotected payload
    /// starts with this CRYPTO frame, then PADDING to 1162 bytes.
    const A2_CRYPTO_FRAME: &str = "
        060040f1010000ed0303ebf8fa56f12939b9584a3896472ec40bb863cfd3e868
        04fe3a47f06a2b69484c00000413011302010000c000000010000e00000b6578
        616d706c652e636f6dff01000100000a00080006001d00170018001000070005
        04616c706e000500050100000000003300260024001d00209370b2c9caa47fba
        baf4559fedba753de171fa71f50f1ce15d43e994ec74d748002b000302030400
        0d0010000e0403050306030203080408050806002d00020101001c0002400100
        3900320408ffffffffffffffff05048000ffff07048000ffff08011001048000
        75300901100f088394c8f03e51570806048000ffff";

    /// RFC 9001 Appendix A.2: the protected 1200-byte client Initial.
    const A2_PROTECTED: &str = "
        c000000001088394c8f03e5157080000449e7b9aec34d1b1c98dd7689fb8ec11
        d242b123dc9bd8bab936b47d92ec356c0bab7df5976d27cd449f63300099f399
        1c260ec4c60d17b31f8429157bb35a1282a643a8d2262cad67500cadb8e7378c
        8eb7539ec4d4905fed1bee1fc8aafba17c750e2c7ace01e6005f80fcb7df6212
        30c83711b39343fa028cea7f7fb5ff89eac2308249a02252155e2347b63d58c5
        457afd84d05dfffdb20392844ae812154682e9cf012f9021a6f0be17ddd0c208
        4dce25ff9b06cde535d0f920a2db1bf362c23e596d11a4f5a6cf3948838a3aec
        4e15daf8500a6ef69ec4e3feb6b1d98e610ac8b7ec3faf6ad760b7bad1db4ba3
        485e8a94dc250ae3fdb41ed15fb6a8e5eba0fc3dd60bc8e30c5c4287e53805db
        059ae0648db2f64264ed5e39be2e20d82df566da8dd5998ccabdae053060ae6c
        7b4378e846d29f37ed7b4ea9ec5d82e7961b7f25a9323851f681d582363aa5f8
        9937f5a67258bf63ad6f1a0b1d96dbd4faddfcefc5266ba6611722395c906556
        be52afe3f565636ad1b17d508b73d8743eeb524be22b3dcbc2c7468d54119c74
        68449a13d8e3b95811a198f3491de3e7fe942b330407abf82a4ed7c1b311663a
        c69890f4157015853d91e923037c227a33cdd5ec281ca3f79c44546b9d90ca00
        f064c99e3dd97911d39fe9c5d0b23a229a234cb36186c4819e8b9c5927726632
        291d6a418211cc2962e20fe47feb3edf330f2c603a9d48c0fcb5699dbfe58964
        25c5bac4aee82e57a85aaf4e2513e4f05796b07ba2ee47d80506f8d2c25e50fd
        14de71e6c418559302f939b0e1abd576f279c4b2e0feb85c1f28ff18f58891ff
        ef132eef2fa09346aee33c28eb130ff28f5b766953334113211996d20011a198
        e3fc433f9f2541010ae17c1bf202580f6047472fb36857fe843b19f5984009dd
        c324044e847a4f4a0ab34f719595de37252d6235365e9b84392b061085349d73
        203a4a13e96f5432ec0fd4a1ee65accdd5e3904df54c1da510b0ff20dcc0c77f
        cb2c0e0eb605cb0504db87632cf3d8b4dae6e705769d1de354270123cb11450e
        fc60ac47683d7b8d0f811365565fd98c4c8eb936bcab8d069fc33bd801b03ade
        a2e1fbc5aa463d08ca19896d2bf59a071b851e6c239052172f296bfb5e724047
        90a2181014f3b94a4e97d117b438130368cc39dbb2d198065ae3986547926cd2
        162f40a29f0c3c8745c0f50fba3852e566d44575c29d39a03f0cda721984b6f4
        40591f355e12d439ff150aab7613499dbd49adabc8676eef023b15b65bfc5ca0
        6948109f23f350db82123535eb8a7433bdabcb909271a6ecbcb58b936a88cd4e
        8f2e6ff5800175f113253d8fa9ca8885c2f552e657dc603f252e1a8e308f76f0
        be79e2fb8f5d5fbbe2e30ecadd220723c8c0aea8078cdfcb3868263ff8f09400
        54da48781893a7e49ad5aff4af300cd804a6b6279ab3ff3afb64491c85194aab
        760d58a606654f9f4400e8b38591356fbf6425aca26dc85244259ff2b19c41b9
        f96f3ca9ec1dde434da7d2d392b905ddf3d1f9af93d1af5950bd493f5aa731b4
        056df31bd267b6b90a079831aaf579be0a39013137aac6d404f518cfd4684064
        7e78bfe706ca4cf5e9c5453e9f7cfd2b8b4c8d169a44e55c88d4a9a7f9474241
        e221af44860018ab0856972e194cd934";

    /// RFC 9001 Appendix A.3: the server Initial (ACK + CRYPTO(ServerHello)).
    const A3_PAYLOAD: &str = "
        02000000000600405a020000560303eefce7f7b37ba1d1632e96677825ddf739
        88cfc79825df566dc5430b9a045a1200130100002e00330024001d00209d3c94
        0d89690b84d08a60993c144eca684d1081287c834d5311bcf32bb9da1a002b00
        020304";
    const A3_PROTECTED: &str = "
        cf000000010008f067a5502a4262b5004075c0d95a482cd0991cd25b0aac406a
        5816b6394100f37a1c69797554780bb38cc5a99f5ede4cf73c3ec2493a1839b3
        dbcba3f6ea46c5b7684df3548e7ddeb9c3bf9c73cc3f3bded74b562bfb19fb84
        022f8ef4cdd93795d77d06edbb7aaf2f58891850abbdca3d20398c276456cbc4
        2158407dd074ee";

    /// RFC 9369 Appendix A.2: the same client Initial protected for QUIC v2.
    const V2_A2_PROTECTED: &str = "
        d76b3343cf088394c8f03e5157080000449ea0c95e82ffe67b6abcdb4298b485
        dd04de806071bf03dceebfa162e75d6c96058bdbfb127cdfcbf903388e99ad04
        9f9a3dd4425ae4d0992cfff18ecf0fdb5a842d09747052f17ac2053d21f57c5d
        250f2c4f0e0202b70785b7946e992e58a59ac52dea6774d4f03b55545243cf1a
        12834e3f249a78d395e0d18f4d766004f1a2674802a747eaa901c3f10cda5500
        cb9122faa9f1df66c392079a1b40f0de1c6054196a11cbea40afb6ef5253cd68
        18f6625efce3b6def6ba7e4b37a40f7732e093daa7d52190935b8da58976ff33
        12ae50b187c1433c0f028edcc4c2838b6a9bfc226ca4b4530e7a4ccee1bfa2a3
        d396ae5a3fb512384b2fdd851f784a65e03f2c4fbe11a53c7777c023462239dd
        6f7521a3f6c7d5dd3ec9b3f233773d4b46d23cc375eb198c63301c21801f6520
        bcfb7966fc49b393f0061d974a2706df8c4a9449f11d7f3d2dcbb90c6b877045
        636e7c0c0fe4eb0f697545460c806910d2c355f1d253bc9d2452aaa549e27a1f
        ac7cf4ed77f322e8fa894b6a83810a34b361901751a6f5eb65a0326e07de7c12
        16ccce2d0193f958bb3850a833f7ae432b65bc5a53975c155aa4bcb4f7b2c4e5
        4df16efaf6ddea94e2c50b4cd1dfe06017e0e9d02900cffe1935e0491d77ffb4
        fdf85290fdd893d577b1131a610ef6a5c32b2ee0293617a37cbb08b847741c3b
        8017c25ca9052ca1079d8b78aebd47876d330a30f6a8c6d61dd1ab5589329de7
        14d19d61370f8149748c72f132f0fc99f34d766c6938597040d8f9e2bb522ff9
        9c63a344d6a2ae8aa8e51b7b90a4a806105fcbca31506c446151adfeceb51b91
        abfe43960977c87471cf9ad4074d30e10d6a7f03c63bd5d4317f68ff325ba3bd
        80bf4dc8b52a0ba031758022eb025cdd770b44d6d6cf0670f4e990b22347a7db
        848265e3e5eb72dfe8299ad7481a408322cac55786e52f633b2fb6b614eaed18
        d703dd84045a274ae8bfa73379661388d6991fe39b0d93debb41700b41f90a15
        c4d526250235ddcd6776fc77bc97e7a417ebcb31600d01e57f32162a8560cacc
        7e27a096d37a1a86952ec71bd89a3e9a30a2a26162984d7740f81193e8238e61
        f6b5b984d4d3dfa033c1bb7e4f0037febf406d91c0dccf32acf423cfa1e70710
        10d3f270121b493ce85054ef58bada42310138fe081adb04e2bd901f2f13458b
        3d6758158197107c14ebb193230cd1157380aa79cae1374a7c1e5bbcb80ee23e
        06ebfde206bfb0fcbc0edc4ebec309661bdd908d532eb0c6adc38b7ca7331dce
        8dfce39ab71e7c32d318d136b6100671a1ae6a6600e3899f31f0eed19e3417d1
        34b90c9058f8632c798d4490da4987307cba922d61c39805d072b589bd52fdf1
        e86215c2d54e6670e07383a27bbffb5addf47d66aa85a0c6f9f32e59d85a44dd
        5d3b22dc2be80919b490437ae4f36a0ae55edf1d0b5cb4e9a3ecabee93dfc6e3
        8d209d0fa6536d27a5d6fbb17641cde27525d61093f1b28072d111b2b4ae5f89
        d5974ee12e5cf7d5da4d6a31123041f33e61407e76cffcdcfd7e19ba58cf4b53
        6f4c4938ae79324dc402894b44faf8afbab35282ab659d13c93f70412e85cb19
        9a37ddec600545473cfb5a05e08d0b209973b2172b4d21fb69745a262ccde96b
        a18b2faa745b6fe189cf772a9f84cbfc";

    /// RFC 9369 Appendix A.3: the server Initial protected for QUIC v2.
    const V2_A3_PROTECTED: &str = "
        dc6b3343cf0008f067a5502a4262b5004075d92faaf16f05d8a4398c47089698
        baeea26b91eb761d9b89237bbf87263017915358230035f7fd3945d88965cf17
        f9af6e16886c61bfc703106fbaf3cb4cfa52382dd16a393e42757507698075b2
        c984c707f0a0812d8cd5a6881eaf21ceda98f4bd23f6fe1a3e2c43edd9ce7ca8
        4bed8521e2e140";

    fn arr<const N: usize>(h: &str) -> [u8; N] {
        hex(h).try_into().expect("length")
    }

    fn a2_payload() -> Vec<u8> {
        let mut p = hex(A2_CRYPTO_FRAME);
        p.resize(1162, 0);
        p
    }

    // ---- encrypt side, for tests only ----

    fn put_varint(out: &mut Vec<u8>, v: u64) {
        match varint_len(v) {
            1 => out.push(v as u8),
            2 => out.extend_from_slice(&(v as u16 | 0x4000).to_be_bytes()),
            4 => out.extend_from_slice(&(v as u32 | 0x8000_0000).to_be_bytes()),
            _ => out.extend_from_slice(&(v | 0xc000_0000_0000_0000).to_be_bytes()),
        }
    }

    fn crypto_frame(offset: u64, data: &[u8]) -> Vec<u8> {
        let mut f = vec![0x06];
        put_varint(&mut f, offset);
        put_varint(&mut f, data.len() as u64);
        f.extend_from_slice(data);
        f
    }

    /// Applies packet and header protection to `header` (unprotected, ending
    /// with the packet number) + `payload` (RFC 9001 §5.3, §5.4).
    fn protect(
        keys: &InitialKeys,
        header: &[u8],
        pn_offset: usize,
        pn: u64,
        payload: &[u8],
    ) -> Vec<u8> {
        let pn_len = usize::from(header[0] & 0x03) + 1;
        assert_eq!(header.len(), pn_offset + pn_len);
        let nonce = Nonce::<Aes128Gcm>::from(keys.nonce(pn));
        let mut body = payload.to_vec();
        let tag = keys
            .aead()
            .encrypt_inout_detached(&nonce, header, body.as_mut_slice().into())
            .unwrap();
        let mut packet = header.to_vec();
        packet.extend_from_slice(&body);
        packet.extend_from_slice(&tag);
        let sample: [u8; 16] = packet[pn_offset + 4..pn_offset + 20].try_into().unwrap();
        let mask = keys.header_mask(&sample);
        packet[0] ^= mask[0] & 0x0f;
        for i in 0..pn_len {
            packet[pn_offset + i] ^= mask[1 + i];
        }
        packet
    }

    struct InitialSpec<'a> {
        version: QuicVersion,
        dcid: &'a [u8],
        scid: &'a [u8],
        token: &'a [u8],
        pn: u64,
        pn_len: usize,
        /// Extra bits OR-ed into the unprotected first byte (reserved bits).
        first_byte_extra: u8,
    }

    impl Default for InitialSpec<'_> {
        fn default() -> Self {
            Self {
                version: QuicVersion::V1,
                dcid: &[0x11; 8],
                scid: &[0x22; 4],
                token: &[],
                pn: 0,
                pn_len: 1,
                first_byte_extra: 0,
            }
        }
    }

    /// Builds a protected client Initial around `frames`.
    fn build_initial(spec: &InitialSpec<'_>, frames: &[u8]) -> Vec<u8> {
        let mut payload = frames.to_vec();
        // The sample needs 4 bytes after the packet number start + 16.
        let min_payload =
            (SAMPLE_OFFSET_FROM_PN + SAMPLE_LEN).saturating_sub(spec.pn_len + AEAD_TAG_LEN);
        if payload.len() < min_payload {
            payload.resize(min_payload, 0);
        }
        let mut h = vec![
            0xc0 | spec.version.type_bits(LongPacketType::Initial)
                | (spec.pn_len as u8 - 1)
                | spec.first_byte_extra,
        ];
        h.extend_from_slice(&spec.version.wire().to_be_bytes());
        h.push(spec.dcid.len() as u8);
        h.extend_from_slice(spec.dcid);
        h.push(spec.scid.len() as u8);
        h.extend_from_slice(spec.scid);
        put_varint(&mut h, spec.token.len() as u64);
        h.extend_from_slice(spec.token);
        let length = (spec.pn_len + payload.len() + AEAD_TAG_LEN) as u64;
        // Always a 2-byte Length, as most stacks write it.
        h.extend_from_slice(&(length as u16 | 0x4000).to_be_bytes());
        let pn_offset = h.len();
        h.extend_from_slice(&spec.pn.to_be_bytes()[8 - spec.pn_len..]);
        let keys = InitialKeys::client(spec.version, spec.dcid);
        protect(&keys, &h, pn_offset, spec.pn, &payload)
    }

    /// Pads a datagram with PADDING inside its (only) packet up to 1200 bytes.
    fn padded_initial(spec: &InitialSpec<'_>, frames: &[u8]) -> Vec<u8> {
        let probe = build_initial(spec, frames);
        let mut f = frames.to_vec();
        f.resize(
            frames.len() + MIN_INITIAL_DATAGRAM.saturating_sub(probe.len()),
            0,
        );
        build_initial(spec, &f)
    }

    // ---- RFC 9001 Appendix A (QUIC v1) ----

    #[test]
    fn rfc9001_a1_keys() {
        let dcid = hex(DCID);
        let (client, server) = initial_secrets(QuicVersion::V1, &dcid);
        assert_eq!(
            client,
            arr::<32>("c00cf151ca5be075ed0ebfb5c80323c42d6b7db67881289af4008f1f6c357aea")
        );
        assert_eq!(
            server,
            arr::<32>("3c199828fd139efd216c155ad844cc81fb82fa8d7446fa7d78be803acdda951b")
        );
        assert_eq!(
            InitialKeys::client(QuicVersion::V1, &dcid),
            InitialKeys {
                key: arr("1f369613dd76d5467730efcbe3b1a22d"),
                iv: arr("fa044b2f42a3fd3b46fb255c"),
                hp: arr("9f50449e04a0e810283a1e9933adedd2"),
            }
        );
        assert_eq!(
            InitialKeys::server(QuicVersion::V1, &dcid),
            InitialKeys {
                key: arr("cf3a5331653c364c88f0f379b6067e37"),
                iv: arr("0ac1493ca1905853b0bba03e"),
                hp: arr("c206b8d9b9f0f37644430b490eeaa314"),
            }
        );
    }

    #[test]
    fn rfc9001_a1_initial_secret_and_label_encoding() {
        // The intermediate initial_secret, and one HKDF-Expand-Label by hand
        // (info = 00 20 0f "tls13 client in" 00).
        let (prk, _) = Hkdf::<Sha256>::extract(Some(&SALT_V1[..]), &hex(DCID));
        assert_eq!(
            prk.as_slice(),
            hex("7db5df06e7a69e432496adedb00851923595221596ae2ae9fb8115c1e9ed0a44")
        );
        let hkdf = Hkdf::<Sha256>::from_prk(&prk[..]).unwrap();
        let mut out = [0; 32];
        hkdf.expand(&hex("00200f746c73313320636c69656e7420696e00"), &mut out)
            .unwrap();
        assert_eq!(out, initial_secrets(QuicVersion::V1, &hex(DCID)).0);
    }

    #[test]
    fn rfc9001_a2_header_protection_values() {
        let keys = InitialKeys::client(QuicVersion::V1, &hex(DCID));
        assert_eq!(
            keys.header_mask(&arr("d1b1c98dd7689fb8ec11d242b123dc9b")),
            arr::<5>("437b9aec36")
        );
        assert_eq!(keys.nonce(2), arr::<12>("fa044b2f42a3fd3b46fb255e"));
    }

    #[test]
    fn rfc9001_a2_encrypt_reproduces_the_rfc_packet() {
        // Validates the test-only encrypt helper used by the reassembly tests.
        let keys = InitialKeys::client(QuicVersion::V1, &hex(DCID));
        let header = hex("c300000001088394c8f03e5157080000449e00000002");
        let packet = protect(&keys, &header, 18, 2, &a2_payload());
        assert_eq!(packet, hex(A2_PROTECTED));
    }

    fn assert_a2(packet: &InitialPacket, version: QuicVersion) {
        assert_eq!(packet.version, version);
        assert_eq!(packet.dcid, hex(DCID));
        assert!(packet.scid.is_empty());
        assert!(packet.token.is_empty());
        assert_eq!(packet.packet_number, 2);
        assert_eq!(packet.wire_len, 1200);
        assert_eq!(packet.connection_close, None);
        assert_eq!(packet.crypto.len(), 1);
        assert_eq!(packet.crypto[0].offset, 0);
        // The frame header is 06 00 40f1: offset 0, length 241.
        assert_eq!(packet.crypto[0].data, hex(A2_CRYPTO_FRAME)[4..].to_vec());
        let mut asm = QuicClientHelloAssembler::new(AssemblerLimits::default());
        let info = asm
            .push_packet(packet)
            .unwrap()
            .expect("complete ClientHello");
        assert_eq!(info.sni.as_deref(), Some("example.com"));
        assert_eq!(info.alpn, vec![b"alpn".to_vec()]);
        assert_eq!(info.supported_versions, vec![0x0304]);
        assert_eq!(info.handshake_len, 241);
    }

    #[test]
    fn rfc9001_a2_decrypt_client_initial() {
        let bytes = hex(A2_PROTECTED);
        assert_eq!(bytes.len(), 1200);
        let header = parse_long_header(&bytes).unwrap();
        assert_eq!(header.version, QuicVersion::V1);
        assert_eq!(header.packet_type, LongPacketType::Initial);
        assert_eq!(header.pn_offset, 18);
        assert_eq!(header.packet_len, 1200);
        assert_a2(&decrypt_initial(&bytes).unwrap(), QuicVersion::V1);

        let dg = parse_datagram(&bytes).unwrap();
        assert_eq!(dg.dcid, hex(DCID));
        assert_eq!(dg.packets.len(), 1);
        assert!(dg.dropped.is_empty());
        assert_eq!(dg.ignored, 0);
        assert_a2(&dg.packets[0], QuicVersion::V1);
    }

    #[test]
    fn rfc9001_a3_server_initial_with_two_byte_pn_and_ack() {
        let keys = InitialKeys::server(QuicVersion::V1, &hex(DCID));
        let p = decrypt_initial_with(&hex(A3_PROTECTED), &keys).unwrap();
        assert_eq!(p.packet_number, 1);
        assert_eq!(p.scid, hex("f067a5502a4262b5"));
        assert!(p.dcid.is_empty());
        assert_eq!(p.crypto.len(), 1);
        assert_eq!(p.crypto[0].offset, 0);
        assert_eq!(p.crypto[0].data, hex(A3_PAYLOAD)[9..].to_vec());
        // And the helper reproduces it.
        let header = hex("c1000000010008f067a5502a4262b50040750001");
        assert_eq!(
            protect(&keys, &header, 18, 1, &hex(A3_PAYLOAD)),
            hex(A3_PROTECTED)
        );
        // With client keys the tag does not verify.
        assert_eq!(
            decrypt_initial(&hex(A3_PROTECTED)),
            Err(QuicError::DecryptFailed)
        );
    }

    // ---- RFC 9369 Appendix A (QUIC v2) ----

    #[test]
    fn rfc9369_a1_keys() {
        let dcid = hex(DCID);
        let (client, server) = initial_secrets(QuicVersion::V2, &dcid);
        assert_eq!(
            client,
            arr::<32>("14ec9d6eb9fd7af83bf5a668bc17a7e283766aade7ecd0891f70f9ff7f4bf47b")
        );
        assert_eq!(
            server,
            arr::<32>("0263db1782731bf4588e7e4d93b7463907cb8cd8200b5da55a8bd488eafc37c1")
        );
        assert_eq!(
            InitialKeys::client(QuicVersion::V2, &dcid),
            InitialKeys {
                key: arr("8b1a0bc121284290a29e0971b5cd045d"),
                iv: arr("91f73e2351d8fa91660e909f"),
                hp: arr("45b95e15235d6f45a6b19cbcb0294ba9"),
            }
        );
        assert_eq!(
            InitialKeys::server(QuicVersion::V2, &dcid),
            InitialKeys {
                key: arr("82db637861d55e1d011f19ea71d5d2a7"),
                iv: arr("dd13c276499c0249d3310652"),
                hp: arr("edf6d05c83121201b436e16877593c3a"),
            }
        );
    }

    #[test]
    fn rfc9369_a2_client_initial() {
        let keys = InitialKeys::client(QuicVersion::V2, &hex(DCID));
        assert_eq!(
            keys.header_mask(&arr("ffe67b6abcdb4298b485dd04de806071")),
            arr::<5>("94a0c95e80")
        );
        let header = hex("d36b3343cf088394c8f03e5157080000449e00000002");
        assert_eq!(
            protect(&keys, &header, 18, 2, &a2_payload()),
            hex(V2_A2_PROTECTED)
        );
        let dg = parse_datagram(&hex(V2_A2_PROTECTED)).unwrap();
        assert_eq!(dg.version, QuicVersion::V2);
        assert_a2(&dg.packets[0], QuicVersion::V2);
    }

    #[test]
    fn rfc9369_a3_server_initial() {
        let keys = InitialKeys::server(QuicVersion::V2, &hex(DCID));
        let p = decrypt_initial_with(&hex(V2_A3_PROTECTED), &keys).unwrap();
        assert_eq!(p.version, QuicVersion::V2);
        assert_eq!(p.packet_number, 1);
        assert_eq!(p.crypto[0].data, hex(A3_PAYLOAD)[9..].to_vec());
    }

    #[test]
    fn v1_packet_is_not_read_as_v2() {
        // Same bytes with the version swapped: type bits 00 mean Retry under
        // v2, so it is refused before any decryption.
        let mut bytes = hex(A2_PROTECTED);
        bytes[1..5].copy_from_slice(&QuicVersion::V2.wire().to_be_bytes());
        assert_eq!(parse_datagram(&bytes), Err(QuicError::UnexpectedRetry));
    }

    // ---- header and packet errors ----

    #[test]
    fn long_header_errors() {
        let good = hex(A2_PROTECTED);
        assert_eq!(
            parse_long_header(&[]),
            Err(QuicError::Truncated {
                field: "first byte"
            })
        );
        assert_eq!(
            parse_long_header(&[0x40, 1, 2]),
            Err(QuicError::NotLongHeader)
        );
        assert_eq!(
            parse_long_header(&good[..3]),
            Err(QuicError::Truncated { field: "version" })
        );
        assert_eq!(
            parse_long_header(&[0xc0, 0, 0, 0, 0, 8]),
            Err(QuicError::VersionNegotiation)
        );
        assert_eq!(
            parse_long_header(&[0xc0, 0xff, 0, 0, 0x1d, 0]),
            Err(QuicError::UnsupportedVersion {
                version: 0xff00_001d
            })
        );
        assert_eq!(
            parse_long_header(&[0xc0, 0, 0, 0, 1, 21]),
            Err(QuicError::ConnectionIdTooLong { len: 21 })
        );
        assert_eq!(
            parse_long_header(&good[..10]),
            Err(QuicError::Truncated {
                field: "destination connection ID"
            })
        );
        assert_eq!(
            parse_long_header(&good[..15]),
            Err(QuicError::Truncated {
                field: "token length"
            })
        );
        assert_eq!(
            parse_long_header(&good[..17]),
            Err(QuicError::Truncated { field: "length" })
        );
        assert_eq!(
            parse_long_header(&good[..1199]),
            Err(QuicError::LengthOverrun {
                field: "length",
                declared: 0x49e,
                available: 1181
            })
        );
        // Token length far beyond the packet (and beyond usize on 32-bit).
        let mut t = good[..15].to_vec();
        t.extend_from_slice(&[0xff; 8]);
        assert!(matches!(
            parse_long_header(&t),
            Err(QuicError::LengthOverrun { field: "token", .. })
        ));
        let mut retry = good.clone();
        retry[0] = 0xf0;
        assert_eq!(parse_long_header(&retry), Err(QuicError::UnexpectedRetry));
        let mut handshake = good.clone();
        handshake[0] = 0xe0;
        let h = parse_long_header(&handshake).unwrap();
        assert_eq!(h.packet_type, LongPacketType::Handshake);
        assert_eq!(
            decrypt_initial(&handshake),
            Err(QuicError::NotInitial {
                packet_type: LongPacketType::Handshake
            })
        );
    }

    #[test]
    fn token_is_returned() {
        let spec = InitialSpec {
            token: b"retry-token-from-server",
            ..InitialSpec::default()
        };
        let p = decrypt_initial(&padded_initial(&spec, &crypto_frame(0, b"x"))).unwrap();
        assert_eq!(p.token, b"retry-token-from-server");
        assert_eq!(p.scid, vec![0x22; 4]);
    }

    #[test]
    fn too_short_for_sample() {
        // Length = 19: one short of pn offset + 4 + 16.
        let mut p = hex(A2_PROTECTED)[..18].to_vec();
        p[16..18].copy_from_slice(&(19u16 | 0x4000).to_be_bytes());
        p.extend_from_slice(&[0; 19]);
        assert_eq!(
            decrypt_initial(&p),
            Err(QuicError::TooShortForSample { available: 19 })
        );
    }

    #[test]
    fn tampering_fails_authentication() {
        let good = hex(A2_PROTECTED);
        for at in [0usize, 7, 17, 18, 21, 22, 600, 1199] {
            let mut bad = good.clone();
            bad[at] ^= 0x01;
            let r = decrypt_initial(&bad);
            // Mostly DecryptFailed; a flipped Length byte overruns instead.
            assert!(r.is_err(), "flip at {at} went unnoticed");
        }
    }

    #[test]
    fn reserved_bits_checked_after_decryption() {
        let spec = InitialSpec {
            first_byte_extra: 0x04,
            ..InitialSpec::default()
        };
        let p = padded_initial(&spec, &crypto_frame(0, b"abc"));
        assert_eq!(decrypt_initial(&p), Err(QuicError::ReservedBitsSet));
    }

    #[test]
    fn four_byte_and_large_packet_numbers() {
        for (pn, pn_len) in [(0, 1), (0x1234, 2), (0xabcdef, 3), (0x1234_5678, 4)] {
            let spec = InitialSpec {
                pn,
                pn_len,
                ..InitialSpec::default()
            };
            let p = decrypt_initial(&padded_initial(&spec, &crypto_frame(0, b"x"))).unwrap();
            assert_eq!(p.packet_number, pn);
        }
    }

    // ---- frames ----

    fn frames_of(payload: &[u8]) -> Result<InitialPacket, QuicError> {
        decrypt_initial(&padded_initial(&InitialSpec::default(), payload))
    }

    #[test]
    fn permitted_frames_are_skipped_correctly() {
        let mut payload = vec![0x01, 0x00, 0x00]; // PING, PADDING
        // ACK: largest 0x4000 (4-byte varint), delay 5, 2 ranges, first 0,
        // then (gap 1, len 2) x 2.
        payload.extend_from_slice(&[0x02, 0x80, 0x00, 0x40, 0x00, 0x05, 0x02, 0x00, 1, 2, 1, 2]);
        // ACK_ECN with 0 ranges and three ECN counts.
        payload.extend_from_slice(&[0x03, 0x01, 0x00, 0x00, 0x00, 7, 8, 0x40, 9]);
        payload.extend(crypto_frame(5, b"world"));
        // CONNECTION_CLOSE 0x1c: code 0x0a, frame type 0x06, reason "bye".
        payload.extend_from_slice(&[0x1c, 0x0a, 0x06, 0x03, b'b', b'y', b'e']);
        payload.extend(crypto_frame(0, b"hello"));
        let p = frames_of(&payload).unwrap();
        assert_eq!(
            p.crypto,
            vec![
                CryptoFrame {
                    offset: 5,
                    data: b"world".to_vec()
                },
                CryptoFrame {
                    offset: 0,
                    data: b"hello".to_vec()
                },
            ]
        );
        assert_eq!(p.connection_close, Some(0x0a));
    }

    #[test]
    fn frame_errors() {
        assert_eq!(
            frames_of(&[0x08, 0x00, 0x00]).unwrap_err(),
            QuicError::FrameNotAllowed { frame_type: 0x08 }
        );
        // Application CONNECTION_CLOSE (0x1d) is not allowed in Initial.
        assert_eq!(
            frames_of(&[0x1d, 0, 0, 0]).unwrap_err(),
            QuicError::FrameNotAllowed { frame_type: 0x1d }
        );
        assert_eq!(
            frames_of(&[0x1e]).unwrap_err(),
            QuicError::FrameNotAllowed { frame_type: 0x1e }
        );
        assert_eq!(
            frames_of(&[0x40, 0x06, 0, 1, b'x']).unwrap_err(),
            QuicError::FrameTypeNotMinimal { frame_type: 0x06 }
        );
        // CRYPTO length past the payload end (the payload is padded with
        // zeros to 1200 bytes, so claim more than that).
        assert_eq!(
            frames_of(&[0x06, 0x00, 0x80, 0x00, 0x10, 0x00]).unwrap_err(),
            QuicError::TruncatedFrame { frame_type: 0x06 }
        );
        assert_eq!(
            frames_of(&[
                0x06, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0x00
            ])
            .unwrap_err(),
            QuicError::CryptoOffsetOverflow
        );
        // ACK claiming a huge range count runs out of payload.
        assert_eq!(
            frames_of(&[0x02, 0x00, 0x00, 0xbf, 0xff, 0xff, 0xff, 0x00]).unwrap_err(),
            QuicError::TruncatedFrame { frame_type: 0x02 }
        );
        assert_eq!(parse_frames(&[]).err(), Some(QuicError::EmptyPayload));
        assert_eq!(
            parse_frames(&[0x06, 0x00]).err(),
            Some(QuicError::TruncatedFrame { frame_type: 6 })
        );
        assert_eq!(
            parse_frames(&[0x40]).err(),
            Some(QuicError::TruncatedFrame { frame_type: 0 })
        );
    }

    // ---- datagrams ----

    /// A coalesced non-Initial packet with a plausible Length.
    fn fake_long_packet(
        version: QuicVersion,
        ty: LongPacketType,
        dcid: &[u8],
        body_len: usize,
    ) -> Vec<u8> {
        let mut p = vec![0xc0 | version.type_bits(ty)];
        p.extend_from_slice(&version.wire().to_be_bytes());
        p.push(dcid.len() as u8);
        p.extend_from_slice(dcid);
        p.push(0);
        p.extend_from_slice(&(body_len as u16 | 0x4000).to_be_bytes());
        p.extend(std::iter::repeat_n(0x5a, body_len));
        p
    }

    #[test]
    fn coalesced_packets() {
        let dcid = [0x33; 8];
        let spec = |pn| InitialSpec {
            dcid: &dcid,
            pn,
            ..InitialSpec::default()
        };
        let mut dg = build_initial(&spec(0), &crypto_frame(0, b"first"));
        dg.extend(fake_long_packet(
            QuicVersion::V1,
            LongPacketType::ZeroRtt,
            &dcid,
            50,
        ));
        dg.extend(build_initial(&spec(1), &crypto_frame(5, b"second")));
        // Another connection's Initial: ignored (RFC 9000 §12.2).
        dg.extend(build_initial(
            &InitialSpec {
                dcid: &[0x44; 8],
                ..InitialSpec::default()
            },
            &crypto_frame(0, b"other"),
        ));
        dg.extend(fake_long_packet(
            QuicVersion::V1,
            LongPacketType::Handshake,
            &dcid,
            40,
        ));
        // A corrupted Initial of ours: reported, and the walk continues.
        let mut bad = build_initial(&spec(2), &crypto_frame(11, b"bad"));
        let n = bad.len();
        bad[n - 1] ^= 1;
        dg.extend(bad);
        dg.extend(build_initial(&spec(3), &crypto_frame(11, b"third")));
        // Short-header packet, then zeros: the walk stops at it.
        dg.push(0x40);
        dg.resize(1300, 0);

        let out = parse_datagram(&dg).unwrap();
        assert_eq!(out.dcid, dcid);
        let pns: Vec<u64> = out.packets.iter().map(|p| p.packet_number).collect();
        assert_eq!(pns, [0, 1, 3]);
        assert_eq!(out.ignored, 3);
        assert_eq!(out.dropped, vec![QuicError::DecryptFailed]);
    }

    #[test]
    fn unparseable_coalesced_packet_is_reported() {
        let mut dg = build_initial(&InitialSpec::default(), &crypto_frame(0, b"x"));
        dg.extend_from_slice(&[0xc0, 0xde, 0xad, 0xbe, 0xef]);
        dg.resize(1200, 0);
        let out = parse_datagram(&dg).unwrap();
        assert_eq!(out.packets.len(), 1);
        assert_eq!(
            out.dropped,
            vec![QuicError::UnsupportedVersion {
                version: 0xdead_beef
            }]
        );
    }

    #[test]
    fn datagram_errors() {
        let good = hex(A2_PROTECTED);
        assert_eq!(
            parse_datagram(&good[..1199]),
            Err(QuicError::DatagramTooSmall { len: 1199 })
        );
        let mut first_not_initial =
            fake_long_packet(QuicVersion::V1, LongPacketType::Handshake, &[1; 8], 30);
        first_not_initial.extend_from_slice(&good);
        assert_eq!(
            parse_datagram(&first_not_initial),
            Err(QuicError::NotInitial {
                packet_type: LongPacketType::Handshake
            })
        );
        let mut short = vec![0x40];
        short.resize(1200, 0);
        assert_eq!(parse_datagram(&short), Err(QuicError::NotLongHeader));
    }

    // ---- reassembly ----

    /// A PQ-sized ClientHello, chopped into CRYPTO frames of `frame_len`,
    /// each in its own padded Initial (pn = index).
    /// A client's Initial datagrams for `sni` with connection ID `dcid`:
    /// one 1200-byte datagram, or (`large`) a 9 KB ClientHello with a
    /// post-quantum-sized key share over eight.
    pub(in crate::proxy) fn client_initials(sni: &str, dcid: &[u8], large: bool) -> Vec<Vec<u8>> {
        let builder = ClientHelloBuilder::new().sni(sni).alpn(&[b"h3"]);
        let hello = if large { builder.big_key_share(1216 + 32).padding(7700).handshake() } else { builder.handshake() };
        hello
            .chunks(1150)
            .enumerate()
            .map(|(i, chunk)| padded_initial(&InitialSpec { pn: i as u64, dcid, ..InitialSpec::default() }, &crypto_frame((i * 1150) as u64, chunk)))
            .collect()
    }

    fn multi_packet_hello(sni: &str, frame_len: usize) -> (Vec<u8>, Vec<Vec<u8>>) {
        let hello = ClientHelloBuilder::new()
            .sni(sni)
            .alpn(&[b"h3"])
            .big_key_share(1216 + 32)
            .padding(7700)
            .ext(0x39, vec![0x01, 0x02, 0x40, 0x00])
            .handshake();
        let packets = hello
            .chunks(frame_len)
            .enumerate()
            .map(|(i, chunk)| {
                let spec = InitialSpec {
                    pn: i as u64,
                    ..InitialSpec::default()
                };
                padded_initial(&spec, &crypto_frame((i * frame_len) as u64, chunk))
            })
            .collect();
        (hello, packets)
    }

    #[test]
    fn nine_kb_hello_over_eight_initials_in_reverse_with_duplicates() {
        let (hello, packets) = multi_packet_hello("h3.example", 1150);
        assert!(hello.len() > 9000);
        assert_eq!(packets.len(), 8);
        let mut asm = QuicClientHelloAssembler::new(AssemblerLimits::default());
        let mut order: Vec<usize> = (0..packets.len()).rev().collect();
        order.insert(3, 6); // a retransmission
        let mut result = None;
        for (k, &i) in order.iter().enumerate() {
            let dg = parse_datagram(&packets[i]).unwrap();
            let r = asm.push_datagram(&dg).unwrap();
            if k + 1 < order.len() {
                assert_eq!(r, None, "complete too early at step {k}");
            }
            result = r;
        }
        let info = result.expect("complete");
        assert_eq!(info.sni.as_deref(), Some("h3.example"));
        assert_eq!(info.alpn, vec![b"h3".to_vec()]);
        assert_eq!(info.handshake_len, hello.len());
        assert_eq!(asm.dcid(), Some(&[0x11; 8][..]));
        assert_eq!(asm.buffered(), hello.len());
        // Sticky afterwards.
        assert_eq!(asm.push_crypto(0, b"late").unwrap(), Some(info));
    }

    #[test]
    fn chaos_protection_style_single_packet() {
        // Chrome splits the hello into out-of-order CRYPTO frames mixed with
        // PING and PADDING inside one Initial.
        let hello = ClientHelloBuilder::new()
            .sni("chaos.example")
            .alpn(&[b"h3"])
            .handshake();
        let mut frames = Vec::new();
        let cuts = [0, 7, 60, 61, 100, hello.len()];
        let mut pieces: Vec<(usize, usize)> = cuts.windows(2).map(|w| (w[0], w[1])).collect();
        pieces.swap(0, 4);
        pieces.swap(1, 2);
        for (a, b) in pieces {
            frames.push(0x01);
            frames.extend_from_slice(&[0, 0, 0]);
            frames.extend(crypto_frame(a as u64, &hello[a..b]));
        }
        let dg = parse_datagram(&padded_initial(&InitialSpec::default(), &frames)).unwrap();
        let info = QuicClientHelloAssembler::new(AssemblerLimits::default())
            .push_datagram(&dg)
            .unwrap()
            .unwrap();
        assert_eq!(info.sni.as_deref(), Some("chaos.example"));
    }

    #[test]
    fn overlapping_frames() {
        let hello = ClientHelloBuilder::new().sni("overlap.example").handshake();
        let mut asm = QuicClientHelloAssembler::new(AssemblerLimits::default());
        assert_eq!(asm.push_crypto(20, &hello[20..50]), Ok(None));
        assert_eq!(asm.push_crypto(40, &hello[40..70]), Ok(None));
        assert_eq!(asm.push_crypto(10, &hello[10..25]), Ok(None));
        assert_eq!(asm.push_crypto(0, &hello[0..12]), Ok(None));
        assert_eq!(asm.push_crypto(5, &hello[5..60]), Ok(None));
        let info = asm.push_crypto(30, &hello[30..]).unwrap().unwrap();
        assert_eq!(info.sni.as_deref(), Some("overlap.example"));
    }

    #[test]
    fn conflicting_retransmission_is_refused() {
        let hello = ClientHelloBuilder::new().sni("a.example").handshake();
        // Conflict with data already handed to the parser.
        let mut asm = QuicClientHelloAssembler::new(AssemblerLimits::default());
        asm.push_crypto(0, &hello[..40]).unwrap();
        let mut forged = hello[30..50].to_vec();
        forged[5] ^= 0xff;
        assert_eq!(
            asm.push_crypto(30, &forged),
            Err(QuicError::CryptoDataMismatch { offset: 35 })
        );
        assert_eq!(
            asm.push_crypto(40, &hello[40..]),
            Err(QuicError::CryptoDataMismatch { offset: 35 })
        );
        // Conflict between two out-of-order pieces.
        let mut asm = QuicClientHelloAssembler::new(AssemblerLimits::default());
        asm.push_crypto(50, &hello[50..60]).unwrap();
        let mut forged = hello[55..70].to_vec();
        forged[0] ^= 1;
        assert_eq!(
            asm.push_crypto(55, &forged),
            Err(QuicError::CryptoDataMismatch { offset: 55 })
        );
    }

    #[test]
    fn assembler_limits() {
        let limits = AssemblerLimits {
            tls: TlsLimits {
                max_client_hello_len: 4096,
                ..TlsLimits::default()
            },
            max_packets: 3,
        };
        let mut asm = QuicClientHelloAssembler::new(limits);
        assert_eq!(
            asm.push_crypto(4000, &[0; 97]),
            Err(QuicError::CryptoBeyondLimit {
                end: 4097,
                max: 4096
            })
        );
        let mut asm = QuicClientHelloAssembler::new(limits);
        assert_eq!(asm.push_crypto(4000, &[0; 96]), Ok(None));
        assert_eq!(asm.buffered(), 4096);
        assert_eq!(
            asm.push_crypto(u64::MAX - 1, &[0; 4]),
            Err(QuicError::CryptoOffsetOverflow)
        );

        let (_, packets) = multi_packet_hello("a.example", 1000);
        let mut asm = QuicClientHelloAssembler::new(limits);
        let mut last = Ok(None);
        for p in &packets[1..5] {
            last = asm.push_datagram(&parse_datagram(p).unwrap());
        }
        assert_eq!(last, Err(QuicError::TooManyPackets { max: 3 }));

        // The hello declares more than the limit: the TLS layer refuses it
        // from its 4-byte header.
        let mut asm = QuicClientHelloAssembler::new(limits);
        assert_eq!(
            asm.push_crypto(0, &[1, 0, 0x10, 0x00]),
            Err(QuicError::Tls(TlsError::ClientHelloTooLarge {
                len: 4100,
                max: 4096
            }))
        );
    }

    #[test]
    fn assembler_rejects_other_connections_and_bad_hellos() {
        let mut asm = QuicClientHelloAssembler::new(AssemblerLimits::default());
        let a = parse_datagram(&padded_initial(
            &InitialSpec::default(),
            &crypto_frame(0, &[1, 0]),
        ))
        .unwrap();
        let b = parse_datagram(&padded_initial(
            &InitialSpec {
                dcid: &[9; 8],
                ..InitialSpec::default()
            },
            &crypto_frame(2, &[0, 10]),
        ))
        .unwrap();
        assert_eq!(asm.push_datagram(&a), Ok(None));
        assert_eq!(asm.push_datagram(&b), Err(QuicError::DcidMismatch));
        // Not fatal to this connection's assembly.
        assert_eq!(asm.push_crypto(2, &[0, 10]), Ok(None));

        let mut asm = QuicClientHelloAssembler::new(AssemblerLimits::default());
        assert_eq!(asm.push_datagram(&a), Ok(None));
        let mut v2 = a.packets[0].clone();
        v2.version = QuicVersion::V2;
        assert_eq!(asm.push_packet(&v2), Err(QuicError::VersionMismatch));

        let mut asm = QuicClientHelloAssembler::new(AssemblerLimits::default());
        assert_eq!(
            asm.push_crypto(0, &[2, 0, 0, 4, 0, 0, 0, 0]),
            Err(QuicError::Tls(TlsError::NotClientHello { msg_type: 2 }))
        );
    }

    #[test]
    fn errors_display_what_was_wrong() {
        assert_eq!(
            QuicError::FrameNotAllowed { frame_type: 8 }.to_string(),
            "frame type 0x8 is not allowed in an Initial packet"
        );
        assert_eq!(
            QuicError::UnsupportedVersion {
                version: 0xff00_001d
            }
            .to_string(),
            "unsupported QUIC version 0xff00001d"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn reassembly_in_any_order_with_duplicates(
            frame_len in 300usize..1150,
            seed in proptest::collection::vec(any::<u16>(), 30),
            dups in proptest::collection::vec(any::<u16>(), 0..6),
        ) {
            let (hello, packets) = multi_packet_hello("any.example", frame_len);
            let mut order: Vec<usize> = (0..packets.len()).collect();
            // Fisher-Yates driven by the generated seed.
            for i in (1..order.len()).rev() {
                let j = usize::from(seed[i % seed.len()]) % (i + 1);
                order.swap(i, j);
            }
            for d in dups {
                let at = usize::from(d) % order.len();
                order.insert(at, order[(at + 1) % order.len()]);
            }
            let limits = AssemblerLimits { max_packets: 64, ..AssemblerLimits::default() };
            let mut asm = QuicClientHelloAssembler::new(limits);
            let mut got = None;
            for i in order {
                if let Some(info) = asm.push_datagram(&parse_datagram(&packets[i]).unwrap()).unwrap() {
                    got = Some(info);
                }
            }
            let info = got.expect("complete");
            prop_assert_eq!(info.sni.as_deref(), Some("any.example"));
            prop_assert_eq!(info.handshake_len, hello.len());
        }

        #[test]
        fn arbitrary_crypto_pieces_give_same_result(
            cuts in proptest::collection::vec(0usize..260, 1..12),
            overlap in 0usize..20,
        ) {
            let hello = ClientHelloBuilder::new().sni("p.example").handshake();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % hello.len()).collect();
            cuts.push(0);
            cuts.push(hello.len());
            cuts.sort_unstable();
            cuts.dedup();
            let mut asm = QuicClientHelloAssembler::new(AssemblerLimits::default());
            let mut got = None;
            for w in cuts.windows(2).rev() {
                let a = w[0].saturating_sub(overlap);
                if let Some(info) = asm.push_crypto(a as u64, &hello[a..w[1]]).unwrap() {
                    got = Some(info);
                }
            }
            let info = got.expect("complete");
            prop_assert_eq!(info.sni.as_deref(), Some("p.example"));
        }

        #[test]
        fn arbitrary_datagrams_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1400)) {
            let _ = parse_datagram(&bytes);
            let _ = parse_long_header(&bytes);
            let _ = parse_frames(&bytes);
            let mut padded = bytes.clone();
            padded.resize(1200, 0);
            let _ = parse_datagram(&padded);
        }

        #[test]
        fn corrupted_rfc_packet_never_panics(pos in 0usize..1200, byte in any::<u8>()) {
            let mut bytes = hex(A2_PROTECTED);
            bytes[pos] = byte;
            if let Ok(dg) = parse_datagram(&bytes) {
                // Only an unchanged byte can still authenticate.
                prop_assert_eq!(dg.packets[0].crypto[0].data.len(), 241);
            }
        }

        #[test]
        fn arbitrary_crypto_into_assembler_never_panics(
            pieces in proptest::collection::vec((0u64..70_000, proptest::collection::vec(any::<u8>(), 0..300)), 0..20)
        ) {
            let mut asm = QuicClientHelloAssembler::new(AssemblerLimits::default());
            for (off, data) in pieces {
                let _ = asm.push_crypto(off, &data);
            }
        }
    }
}
