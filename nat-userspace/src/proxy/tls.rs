//! TLS ClientHello reader for SNI passthrough routing.
//!
//! Two layers, so that TCP and QUIC share the ClientHello parser:
//! - [`HandshakeReader`] takes the handshake-message byte stream. QUIC
//!   feeds it directly from CRYPTO frames (RFC 9001 §4: QUIC carries
//!   handshake messages without the TLS record layer).
//! - [`ClientHelloReader`] takes raw TCP bytes, strips the TLS record layer
//!   (RFC 8446 §5.1) and feeds the handshake bytes to a `HandshakeReader`.
//!
//! Nothing here keeps the raw TCP bytes: the caller holds them to replay to
//! the chosen server, and the reader only buffers the handshake message.

use std::fmt;

use super::names::{NameError, normalize_dns_name_bytes};

/// TLS ContentType values (RFC 8446 §5.1).
pub const CONTENT_TYPE_ALERT: u8 = 21;
pub const CONTENT_TYPE_HANDSHAKE: u8 = 22;

/// RFC 8446 §5.1: a TLSPlaintext fragment MUST NOT exceed 2^14 bytes.
pub const MAX_RECORD_FRAGMENT: usize = 1 << 14;

/// RFC 8446 §6: alert level and the RFC 6066 §3 description.
pub const ALERT_LEVEL_FATAL: u8 = 2;
pub const ALERT_UNRECOGNIZED_NAME: u8 = 112;

const RECORD_HEADER_LEN: usize = 5;
const HANDSHAKE_HEADER_LEN: usize = 4;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;

const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;
const EXT_SUPPORTED_VERSIONS: u16 = 43;
/// encrypted_client_hello, draft-ietf-tls-esni: the outer ClientHello's SNI
/// is then the ECH provider's public name, not the inner server's.
const EXT_ENCRYPTED_CLIENT_HELLO: u16 = 0xfe0d;
const SERVER_NAME_TYPE_HOST_NAME: u8 = 0;

/// Bounds on what a peer can make us buffer before we know where to send it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest ClientHello handshake message accepted, 4-byte header
    /// included. Post-quantum key shares make real ones 1.5–10 KB.
    pub max_client_hello_len: usize,
    /// Most TLS records the ClientHello may be spread over. Each record adds
    /// 5 bytes the caller must also keep for replay; without a cap, a peer
    /// sending 1-byte records would make the caller hold 6x the hello.
    pub max_records: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_client_hello_len: 64 * 1024,
            max_records: 32,
        }
    }
}

/// What the ClientHello says that matters for routing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientHelloInfo {
    /// The host_name from server_name (RFC 6066 §3), normalised by
    /// [`normalize_dns_name_bytes`];
    /// `None` when the client sent no host_name.
    pub sni: Option<String>,
    /// ALPN protocol names in client order (RFC 7301 §3.1). Kept as bytes:
    /// the names are opaque, and GREASE values (RFC 8701, e.g. 0xFA 0xFA)
    /// are not UTF-8.
    pub alpn: Vec<Vec<u8>>,
    /// legacy_version (0x0303 for TLS 1.2 and 1.3 clients).
    pub legacy_version: u16,
    /// supported_versions (RFC 8446 §4.2.1); empty when absent.
    pub supported_versions: Vec<u16>,
    /// The client sent encrypted_client_hello, so `sni` is the outer
    /// (public) name.
    pub offers_ech: bool,
    /// Size of the handshake message, 4-byte header included.
    pub handshake_len: usize,
}

impl ClientHelloInfo {
    pub fn offers_alpn(&self, protocol: &[u8]) -> bool {
        self.alpn.iter().any(|p| p == protocol)
    }
}

/// Outcome of feeding bytes to a [`ClientHelloReader`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// The ClientHello is not complete yet.
    NeedMore,
    /// The stream does not start with a TLS handshake record (e.g. plain
    /// HTTP, or an SSLv2-format hello): route to a default or refuse.
    NotTls,
    /// The whole ClientHello has arrived. Bytes after it are not read.
    Done(ClientHelloInfo),
}

/// Why a stream that looked like TLS was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsError {
    /// A record after the first is not a handshake record; RFC 8446 §5.1
    /// forbids interleaving other record types with a handshake message.
    UnexpectedRecordType { content_type: u8 },
    /// A record fragment longer than 2^14 (RFC 8446 §5.1, record_overflow).
    RecordTooLong { len: usize },
    /// A zero-length handshake record (RFC 8446 §5.1 forbids them).
    EmptyRecord,
    /// The ClientHello is spread over more records than `Limits::max_records`.
    TooManyRecords { max: usize },
    /// The first handshake message is not a ClientHello.
    NotClientHello { msg_type: u8 },
    /// The declared ClientHello size is over `Limits::max_client_hello_len`.
    ClientHelloTooLarge { len: usize, max: usize },
    /// The message ended inside a fixed-size field.
    Truncated { field: &'static str },
    /// A length prefix claims more bytes than its enclosing structure has.
    LengthOverrun {
        field: &'static str,
        declared: usize,
        available: usize,
    },
    /// Bytes left over after the last field of a structure.
    TrailingBytes { field: &'static str, extra: usize },
    /// A length outside what the RFC allows for this field.
    BadLength { field: &'static str, len: usize },
    /// RFC 8446 §4.2: an extension type appears more than once. Refused
    /// rather than picking one, so we never route on a different SNI than
    /// the one the server will use.
    DuplicateExtension { ext_type: u16 },
    /// server_name present but its list is empty.
    EmptyServerNameList,
    /// RFC 6066 §3: more than one host_name in server_name.
    DuplicateHostName,
    /// The host_name is not a valid DNS name.
    InvalidSni(NameError),
    /// RFC 7301 §3.1: empty protocol names MUST NOT be sent.
    EmptyAlpnProtocol,
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::UnexpectedRecordType { content_type } => write!(
                f,
                "record of content type {content_type} inside the ClientHello (expected handshake, 22)"
            ),
            TlsError::RecordTooLong { len } => write!(
                f,
                "record fragment of {len} bytes is over the {MAX_RECORD_FRAGMENT}-byte limit"
            ),
            TlsError::EmptyRecord => write!(f, "zero-length handshake record"),
            TlsError::TooManyRecords { max } => {
                write!(f, "ClientHello spread over more than {max} records")
            }
            TlsError::NotClientHello { msg_type } => {
                write!(
                    f,
                    "first handshake message has type {msg_type}, not ClientHello (1)"
                )
            }
            TlsError::ClientHelloTooLarge { len, max } => {
                write!(f, "ClientHello of {len} bytes is over the {max}-byte limit")
            }
            TlsError::Truncated { field } => write!(f, "ClientHello ends inside {field}"),
            TlsError::LengthOverrun {
                field,
                declared,
                available,
            } => write!(
                f,
                "{field} declares {declared} bytes but only {available} remain"
            ),
            TlsError::TrailingBytes { field, extra } => {
                write!(f, "{extra} unexpected bytes after {field}")
            }
            TlsError::BadLength { field, len } => write!(f, "{field} has invalid length {len}"),
            TlsError::DuplicateExtension { ext_type } => {
                write!(f, "extension {ext_type} appears more than once")
            }
            TlsError::EmptyServerNameList => write!(f, "server_name extension has an empty list"),
            TlsError::DuplicateHostName => write!(f, "server_name has more than one host_name"),
            TlsError::InvalidSni(e) => write!(f, "invalid SNI host_name: {e}"),
            TlsError::EmptyAlpnProtocol => write!(f, "ALPN list contains an empty protocol name"),
        }
    }
}

impl std::error::Error for TlsError {}

/// The alert record to send before closing a connection whose SNI routes
/// nowhere: RFC 6066 §3 unrecognized_name, always fatal because RFC 8446
/// §6.2 makes every error alert fatal. Record version 0x0303 per RFC 8446
/// §5.1 (what every TLS 1.0–1.3 client accepts before ServerHello).
pub fn unrecognized_name_alert() -> [u8; 7] {
    fatal_alert(ALERT_UNRECOGNIZED_NAME)
}

/// A plaintext fatal alert record with the given AlertDescription.
pub fn fatal_alert(description: u8) -> [u8; 7] {
    [
        CONTENT_TYPE_ALERT,
        0x03,
        0x03,
        0x00,
        0x02,
        ALERT_LEVEL_FATAL,
        description,
    ]
}

/// Reads a ClientHello from the handshake-message stream (no record layer).
///
/// Once it has returned a ClientHello or an error, it returns the same
/// outcome for every later push.
#[derive(Debug, Clone)]
pub struct HandshakeReader {
    limits: Limits,
    buf: Vec<u8>,
    /// Total message length, known once the 4-byte header has arrived.
    target: Option<usize>,
    outcome: Option<Result<ClientHelloInfo, TlsError>>,
}

impl HandshakeReader {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            buf: Vec::new(),
            target: None,
            outcome: None,
        }
    }

    /// Appends the next handshake-stream bytes. `Ok(None)` means more are
    /// needed. Bytes past the end of the ClientHello are ignored.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Option<ClientHelloInfo>, TlsError> {
        if let Some(outcome) = &self.outcome {
            return outcome.clone().map(Some);
        }
        let result = self.push_inner(bytes);
        match &result {
            Ok(Some(info)) => self.outcome = Some(Ok(info.clone())),
            Err(e) => self.outcome = Some(Err(e.clone())),
            Ok(None) => {}
        }
        result
    }

    /// The handshake bytes taken so far (a prefix of the handshake stream).
    pub fn received(&self) -> &[u8] {
        &self.buf
    }

    fn push_inner(&mut self, mut bytes: &[u8]) -> Result<Option<ClientHelloInfo>, TlsError> {
        let target = match self.target {
            Some(t) => t,
            None => {
                let take = (HANDSHAKE_HEADER_LEN - self.buf.len()).min(bytes.len());
                self.buf.extend_from_slice(&bytes[..take]);
                bytes = &bytes[take..];
                // Reject on the first byte: no point waiting for a length.
                if let Some(&msg_type) = self.buf.first()
                    && msg_type != HANDSHAKE_CLIENT_HELLO
                {
                    return Err(TlsError::NotClientHello { msg_type });
                }
                if self.buf.len() < HANDSHAKE_HEADER_LEN {
                    return Ok(None);
                }
                let body_len = u32::from_be_bytes([0, self.buf[1], self.buf[2], self.buf[3]]);
                let total = HANDSHAKE_HEADER_LEN + body_len as usize;
                // Checked before buffering the body, so an oversized hello
                // costs us 4 bytes, not `max_client_hello_len`.
                if total > self.limits.max_client_hello_len {
                    return Err(TlsError::ClientHelloTooLarge {
                        len: total,
                        max: self.limits.max_client_hello_len,
                    });
                }
                self.target = Some(total);
                total
            }
        };
        let take = (target - self.buf.len()).min(bytes.len());
        self.buf.extend_from_slice(&bytes[..take]);
        if self.buf.len() < target {
            return Ok(None);
        }
        let mut info = parse_client_hello(&self.buf[HANDSHAKE_HEADER_LEN..])?;
        info.handshake_len = target;
        Ok(Some(info))
    }
}

/// Reads a ClientHello from the start of a TCP stream, TLS records and all.
///
/// Once it has returned `NotTls`, `Done` or an error, it returns the same
/// outcome for every later push.
#[derive(Debug, Clone)]
pub struct ClientHelloReader {
    limits: Limits,
    header: [u8; RECORD_HEADER_LEN],
    header_len: usize,
    /// Bytes of the current record's fragment not yet read.
    fragment_left: usize,
    records: usize,
    handshake: HandshakeReader,
    outcome: Option<Result<Progress, TlsError>>,
}

impl ClientHelloReader {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            header: [0; RECORD_HEADER_LEN],
            header_len: 0,
            fragment_left: 0,
            records: 0,
            handshake: HandshakeReader::new(limits),
            outcome: None,
        }
    }

    /// Feeds the next bytes read from the client, in order, any size
    /// (including one byte or none).
    pub fn push(&mut self, bytes: &[u8]) -> Result<Progress, TlsError> {
        if let Some(outcome) = &self.outcome {
            return outcome.clone();
        }
        let result = self.push_inner(bytes);
        if result != Ok(Progress::NeedMore) {
            self.outcome = Some(result.clone());
        }
        result
    }

    fn push_inner(&mut self, mut bytes: &[u8]) -> Result<Progress, TlsError> {
        while !bytes.is_empty() {
            if self.fragment_left == 0 {
                let take = (RECORD_HEADER_LEN - self.header_len).min(bytes.len());
                self.header[self.header_len..self.header_len + take]
                    .copy_from_slice(&bytes[..take]);
                self.header_len += take;
                bytes = &bytes[take..];
                if self.records == 0 && !looks_like_tls(&self.header[..self.header_len]) {
                    return Ok(Progress::NotTls);
                }
                if self.header_len < RECORD_HEADER_LEN {
                    return Ok(Progress::NeedMore);
                }
                self.header_len = 0;
                self.start_record()?;
            } else {
                let take = self.fragment_left.min(bytes.len());
                let (fragment, rest) = bytes.split_at(take);
                self.fragment_left -= take;
                bytes = rest;
                if let Some(info) = self.handshake.push(fragment)? {
                    return Ok(Progress::Done(info));
                }
            }
        }
        Ok(Progress::NeedMore)
    }

    fn start_record(&mut self) -> Result<(), TlsError> {
        let content_type = self.header[0];
        if content_type != CONTENT_TYPE_HANDSHAKE {
            return Err(TlsError::UnexpectedRecordType { content_type });
        }
        // legacy_record_version is ignored past the first record: RFC 8446
        // §5.1 says it "MUST be ignored for all purposes".
        let len = usize::from(u16::from_be_bytes([self.header[3], self.header[4]]));
        if len == 0 {
            return Err(TlsError::EmptyRecord);
        }
        if len > MAX_RECORD_FRAGMENT {
            return Err(TlsError::RecordTooLong { len });
        }
        self.records += 1;
        if self.records > self.limits.max_records {
            return Err(TlsError::TooManyRecords {
                max: self.limits.max_records,
            });
        }
        self.fragment_left = len;
        Ok(())
    }
}

/// Is this (possibly partial) first record header a TLS handshake record?
/// The major version byte is 3 for SSL 3.0 through TLS 1.3; anything else
/// starting with 0x16 is some other protocol.
fn looks_like_tls(header: &[u8]) -> bool {
    match header {
        [] => true,
        [ty] => *ty == CONTENT_TYPE_HANDSHAKE,
        [ty, major, ..] => *ty == CONTENT_TYPE_HANDSHAKE && *major == 3,
    }
}

/// Bounds-checked reader over one length-delimited structure.
struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn bytes(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], TlsError> {
        if n > self.buf.len() {
            return Err(TlsError::Truncated { field });
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, TlsError> {
        Ok(self.bytes(1, field)?[0])
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, TlsError> {
        let b = self.bytes(2, field)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn prefixed(&mut self, declared: usize, field: &'static str) -> Result<&'a [u8], TlsError> {
        if declared > self.buf.len() {
            return Err(TlsError::LengthOverrun {
                field,
                declared,
                available: self.buf.len(),
            });
        }
        self.bytes(declared, field)
    }

    /// An `opaque x<0..2^8-1>` vector.
    fn vec8(&mut self, field: &'static str) -> Result<&'a [u8], TlsError> {
        let n = usize::from(self.u8(field)?);
        self.prefixed(n, field)
    }

    /// An `opaque x<0..2^16-1>` vector.
    fn vec16(&mut self, field: &'static str) -> Result<&'a [u8], TlsError> {
        let n = usize::from(self.u16(field)?);
        self.prefixed(n, field)
    }

    fn finish(self, field: &'static str) -> Result<(), TlsError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(TlsError::TrailingBytes {
                field,
                extra: self.buf.len(),
            })
        }
    }
}

/// Parses a ClientHello body (the handshake message without its 4-byte
/// header), RFC 8446 §4.1.2 / RFC 5246 §7.4.1.2.
/// `handshake_len` in the result is left 0; the readers fill it in.
pub fn parse_client_hello(body: &[u8]) -> Result<ClientHelloInfo, TlsError> {
    let mut c = Cursor::new(body);
    let mut info = ClientHelloInfo {
        legacy_version: c.u16("legacy_version")?,
        ..ClientHelloInfo::default()
    };
    c.bytes(32, "random")?;
    let session_id = c.vec8("legacy_session_id")?;
    if session_id.len() > 32 {
        return Err(TlsError::BadLength {
            field: "legacy_session_id",
            len: session_id.len(),
        });
    }
    let suites = c.vec16("cipher_suites")?;
    if suites.is_empty() || !suites.len().is_multiple_of(2) {
        return Err(TlsError::BadLength {
            field: "cipher_suites",
            len: suites.len(),
        });
    }
    let compression = c.vec8("legacy_compression_methods")?;
    if compression.is_empty() {
        return Err(TlsError::BadLength {
            field: "legacy_compression_methods",
            len: 0,
        });
    }
    // RFC 5246 §7.4.1.2: a pre-TLS 1.3 client may end the hello here.
    if c.is_empty() {
        return Ok(info);
    }
    let extensions = c.vec16("extensions")?;
    c.finish("extensions")?;

    let mut seen = Vec::new();
    let mut ext = Cursor::new(extensions);
    while !ext.is_empty() {
        let ext_type = ext.u16("extension_type")?;
        let data = ext.vec16("extension_data")?;
        seen.push(ext_type);
        match ext_type {
            EXT_SERVER_NAME => info.sni = parse_server_name(data)?,
            EXT_ALPN => info.alpn = parse_alpn(data)?,
            EXT_SUPPORTED_VERSIONS => info.supported_versions = parse_supported_versions(data)?,
            EXT_ENCRYPTED_CLIENT_HELLO => info.offers_ech = true,
            _ => {}
        }
    }
    // Sort-and-scan rather than a pairwise search: a 64 KiB hello can hold
    // 16k empty extensions.
    seen.sort_unstable();
    if let Some(pair) = seen.windows(2).find(|w| w[0] == w[1]) {
        return Err(TlsError::DuplicateExtension { ext_type: pair[0] });
    }
    Ok(info)
}

/// RFC 6066 §3 server_name.
fn parse_server_name(data: &[u8]) -> Result<Option<String>, TlsError> {
    let mut c = Cursor::new(data);
    let list = c.vec16("server_name_list")?;
    c.finish("server_name_list")?;
    if list.is_empty() {
        return Err(TlsError::EmptyServerNameList);
    }
    let mut host = None;
    let mut entries = Cursor::new(list);
    while !entries.is_empty() {
        let name_type = entries.u8("name_type")?;
        // Only host_name(0) is defined; every deployed parser assumes the
        // same 16-bit length layout for unknown types, so we skip them that
        // way rather than reject the hello.
        let name = entries.vec16("server_name")?;
        if name_type == SERVER_NAME_TYPE_HOST_NAME {
            if host.is_some() {
                return Err(TlsError::DuplicateHostName);
            }
            host = Some(name);
        }
    }
    host.map(|h| normalize_dns_name_bytes(h).map_err(TlsError::InvalidSni))
        .transpose()
}

/// RFC 7301 §3.1 application_layer_protocol_negotiation.
fn parse_alpn(data: &[u8]) -> Result<Vec<Vec<u8>>, TlsError> {
    let mut c = Cursor::new(data);
    let list = c.vec16("protocol_name_list")?;
    c.finish("protocol_name_list")?;
    if list.is_empty() {
        return Err(TlsError::BadLength {
            field: "protocol_name_list",
            len: 0,
        });
    }
    let mut names = Vec::new();
    let mut entries = Cursor::new(list);
    while !entries.is_empty() {
        let name = entries.vec8("protocol_name")?;
        if name.is_empty() {
            return Err(TlsError::EmptyAlpnProtocol);
        }
        names.push(name.to_vec());
    }
    Ok(names)
}

/// RFC 8446 §4.2.1 supported_versions, ClientHello form
/// (`ProtocolVersion versions<2..254>`).
fn parse_supported_versions(data: &[u8]) -> Result<Vec<u16>, TlsError> {
    let mut c = Cursor::new(data);
    let list = c.vec8("supported_versions")?;
    c.finish("supported_versions")?;
    if list.len() < 2 || !list.len().is_multiple_of(2) {
        return Err(TlsError::BadLength {
            field: "supported_versions",
            len: list.len(),
        });
    }
    Ok(list
        .chunks_exact(2)
        .map(|v| u16::from_be_bytes([v[0], v[1]]))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    // `super::super`, not `crate`: these files move into a submodule of natd.
    use super::super::test_support::{
        ClientHelloBuilder, EXT_ALPN, EXT_SERVER_NAME, alpn_ext, handshake_message, hex, record,
        records, records_sized, server_name_ext,
    };
    use proptest::prelude::*;

    /// RFC 8448 §3 "Simple 1-RTT Handshake", the client's first flight: the
    /// ClientHello record (196-byte handshake message, SNI "server").
    const RFC8448_CLIENT_HELLO_RECORD: &str = "
        16 03 01 00 c4 01 00 00 c0 03 03 cb 34 ec b1 e7 81 63
        ba 1c 38 c6 da cb 19 6a 6d ff a2 1a 8d 99 12 ec 18 a2 ef 62 83
        02 4d ec e7 00 00 06 13 01 13 03 13 02 01 00 00 91 00 00 00 0b
        00 09 00 00 06 73 65 72 76 65 72 ff 01 00 01 00 00 0a 00 14 00
        12 00 1d 00 17 00 18 00 19 01 00 01 01 01 02 01 03 01 04 00 23
        00 00 00 33 00 26 00 24 00 1d 00 20 99 38 1d e5 60 e4 bd 43 d2
        3d 8e 43 5a 7d ba fe b3 c0 6e 51 c1 3c ae 4d 54 13 69 1e 52 9a
        af 2c 00 2b 00 03 02 03 04 00 0d 00 20 00 1e 04 03 05 03 06 03
        02 03 08 04 08 05 08 06 04 01 05 01 06 01 02 01 04 02 05 02 06
        02 02 02 00 2d 00 02 01 01 00 1c 00 02 40 01";

    fn rfc8448() -> Vec<u8> {
        hex(RFC8448_CLIENT_HELLO_RECORD)
    }

    fn rfc8448_info() -> ClientHelloInfo {
        ClientHelloInfo {
            sni: Some("server".into()),
            alpn: vec![],
            legacy_version: 0x0303,
            supported_versions: vec![0x0304],
            offers_ech: false,
            handshake_len: 196,
        }
    }

    fn reader() -> ClientHelloReader {
        ClientHelloReader::new(Limits::default())
    }

    fn feed_whole(bytes: &[u8]) -> Result<Progress, TlsError> {
        reader().push(bytes)
    }

    /// Feeds `bytes` in pieces ending at `cuts`; every push before the last
    /// must say NeedMore.
    fn feed_cut(limits: Limits, bytes: &[u8], cuts: &[usize]) -> Result<Progress, TlsError> {
        let mut r = ClientHelloReader::new(limits);
        let mut start = 0;
        for &end in cuts.iter().chain(std::iter::once(&bytes.len())) {
            let end = end.clamp(start, bytes.len());
            let p = r.push(&bytes[start..end]);
            if end == bytes.len() {
                return p;
            }
            if p != Ok(Progress::NeedMore) {
                return Err(TlsError::Truncated {
                    field: "test: reader finished before the last byte",
                });
            }
            start = end;
        }
        unreachable!()
    }

    fn done(p: Result<Progress, TlsError>) -> ClientHelloInfo {
        match p {
            Ok(Progress::Done(info)) => info,
            other => panic!("expected Done, got {other:?}"),
        }
    }

    fn body_err(b: &ClientHelloBuilder) -> TlsError {
        parse_client_hello(&b.body()).unwrap_err()
    }

    #[test]
    fn rfc8448_whole() {
        assert_eq!(rfc8448().len(), 5 + 196);
        assert_eq!(done(feed_whole(&rfc8448())), rfc8448_info());
    }

    #[test]
    fn rfc8448_byte_by_byte() {
        let bytes = rfc8448();
        let mut r = reader();
        for (i, b) in bytes.iter().enumerate() {
            let p = r.push(std::slice::from_ref(b)).unwrap();
            if i + 1 < bytes.len() {
                assert_eq!(p, Progress::NeedMore, "at byte {i}");
            } else {
                assert_eq!(p, Progress::Done(rfc8448_info()));
            }
        }
    }

    #[test]
    fn rfc8448_split_at_every_offset() {
        let bytes = rfc8448();
        for cut in 0..=bytes.len() {
            assert_eq!(
                done(feed_cut(Limits::default(), &bytes, &[cut])),
                rfc8448_info(),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn rfc8448_reframed_into_records_of_every_size() {
        let handshake = rfc8448()[5..].to_vec();
        let limits = Limits {
            max_records: 196,
            ..Limits::default()
        };
        for size in 1..=handshake.len() {
            let stream = records(&handshake, size);
            let mut r = ClientHelloReader::new(limits);
            assert_eq!(
                r.push(&stream),
                Ok(Progress::Done(rfc8448_info())),
                "size {size}"
            );
        }
    }

    #[test]
    fn every_proper_prefix_needs_more() {
        let bytes = rfc8448();
        for end in 0..bytes.len() {
            assert_eq!(
                feed_whole(&bytes[..end]),
                Ok(Progress::NeedMore),
                "prefix {end}"
            );
        }
    }

    #[test]
    fn outcome_is_sticky_and_trailing_bytes_are_ignored() {
        let mut stream = rfc8448();
        // TLS 1.3 middlebox-compat ChangeCipherSpec and early data may follow
        // in the same segment; they are the server's business.
        stream.extend(record(20, &[1]));
        stream.extend(record(23, &[0xaa; 40]));
        let mut r = reader();
        assert_eq!(r.push(&stream), Ok(Progress::Done(rfc8448_info())));
        assert_eq!(r.push(b"more"), Ok(Progress::Done(rfc8448_info())));

        let mut r = reader();
        assert_eq!(r.push(b"GET"), Ok(Progress::NotTls));
        assert_eq!(r.push(&rfc8448()), Ok(Progress::NotTls));
    }

    #[test]
    fn large_hello_over_two_records_one_byte_at_a_time() {
        let b = ClientHelloBuilder::new()
            .sni("pq.example")
            .alpn(&[b"h2", b"http/1.1"])
            .big_key_share(1216 + 32)
            .padding(7700);
        let handshake = b.handshake();
        assert!(
            handshake.len() > 9000 && handshake.len() < 9400,
            "{}",
            handshake.len()
        );
        let stream = records_sized(&handshake, &[4000]);
        let mut r = reader();
        let (last, init) = stream.split_last().unwrap();
        for byte in init {
            assert_eq!(r.push(std::slice::from_ref(byte)), Ok(Progress::NeedMore));
        }
        let info = done(r.push(std::slice::from_ref(last)));
        assert_eq!(info.sni.as_deref(), Some("pq.example"));
        assert_eq!(info.alpn, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
        assert!(info.offers_alpn(b"h2"));
        assert!(!info.offers_alpn(b"h3"));
        assert_eq!(info.handshake_len, handshake.len());
    }

    #[test]
    fn hello_larger_than_one_record_spans_records() {
        let b = ClientHelloBuilder::new().sni("big.example").padding(20_000);
        let handshake = b.handshake();
        assert!(handshake.len() > MAX_RECORD_FRAGMENT);
        let stream = records(&handshake, MAX_RECORD_FRAGMENT);
        let info = done(feed_whole(&stream));
        assert_eq!(info.sni.as_deref(), Some("big.example"));
        // The same bytes crammed into one over-long record are refused.
        let mut one = vec![22, 3, 1];
        one.extend_from_slice(&u16::try_from(handshake.len()).unwrap().to_be_bytes());
        one.extend_from_slice(&handshake);
        assert_eq!(
            feed_whole(&one),
            Err(TlsError::RecordTooLong {
                len: handshake.len()
            })
        );
    }

    #[test]
    fn max_size_hello_is_accepted_and_one_more_byte_is_not() {
        let base = ClientHelloBuilder::new()
            .sni("a.example")
            .padding(0)
            .handshake();
        let limits = Limits {
            max_client_hello_len: 1000,
            ..Limits::default()
        };
        let pad = 1000 - base.len();
        let exact = ClientHelloBuilder::new()
            .sni("a.example")
            .padding(pad)
            .handshake();
        assert_eq!(exact.len(), 1000);
        let mut r = ClientHelloReader::new(limits);
        assert!(matches!(
            r.push(&records(&exact, 300)),
            Ok(Progress::Done(_))
        ));

        let over = ClientHelloBuilder::new()
            .sni("a.example")
            .padding(pad + 1)
            .handshake();
        let stream = records(&over, 300);
        // Refused as soon as the handshake header is in, before the body.
        let mut r = ClientHelloReader::new(limits);
        assert_eq!(
            r.push(&stream[..5 + 4]),
            Err(TlsError::ClientHelloTooLarge {
                len: 1001,
                max: 1000
            })
        );
    }

    #[test]
    fn default_limit_is_64k() {
        assert_eq!(Limits::default().max_client_hello_len, 65536);
        // A hello declaring 16 MiB - 1 is refused on its header alone.
        let stream = [22, 3, 1, 0, 4, 1, 0xff, 0xff, 0xff];
        assert_eq!(
            feed_whole(&stream),
            Err(TlsError::ClientHelloTooLarge {
                len: 4 + 0xff_ffff,
                max: 65536
            })
        );
    }

    #[test]
    fn not_tls() {
        assert_eq!(
            feed_whole(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
            Ok(Progress::NotTls)
        );
        assert_eq!(feed_whole(b"G"), Ok(Progress::NotTls));
        assert_eq!(feed_whole(b"SSH-2.0-OpenSSH_9.6\r\n"), Ok(Progress::NotTls));
        // SSLv2-format ClientHello (high bit set length).
        assert_eq!(
            feed_whole(&[0x80, 0x2e, 0x01, 0x03, 0x01]),
            Ok(Progress::NotTls)
        );
        // 0x16 followed by a non-3 major version: not TLS either.
        assert_eq!(feed_whole(&[0x16, 0x01]), Ok(Progress::NotTls));
        assert_eq!(feed_whole(&[0x16]), Ok(Progress::NeedMore));
        assert_eq!(feed_whole(&[]), Ok(Progress::NeedMore));
        // First record of another TLS content type is not a handshake: also
        // NotTls, since nothing routable can follow.
        assert_eq!(feed_whole(&record(23, &[0; 8])), Ok(Progress::NotTls));
    }

    #[test]
    fn non_handshake_record_inside_hello_is_an_error() {
        let handshake = rfc8448()[5..].to_vec();
        let mut stream = record(22, &handshake[..100]);
        stream.extend(record(21, &[2, 40]));
        stream.extend(record(22, &handshake[100..]));
        assert_eq!(
            feed_whole(&stream),
            Err(TlsError::UnexpectedRecordType { content_type: 21 })
        );
    }

    #[test]
    fn handshake_that_is_not_a_client_hello() {
        let server_hello = handshake_message(2, &[0; 40]);
        assert_eq!(
            feed_whole(&record(22, &server_hello)),
            Err(TlsError::NotClientHello { msg_type: 2 })
        );
        // Refused on the first handshake byte, not after the whole message.
        assert_eq!(
            feed_whole(&[22, 3, 1, 0, 40, 2]),
            Err(TlsError::NotClientHello { msg_type: 2 })
        );
    }

    #[test]
    fn record_layer_errors() {
        assert_eq!(feed_whole(&[22, 3, 1, 0, 0]), Err(TlsError::EmptyRecord));
        assert_eq!(
            feed_whole(&[22, 3, 1, 0x40, 0x01]),
            Err(TlsError::RecordTooLong { len: 16385 })
        );
        let handshake = rfc8448()[5..].to_vec();
        let limits = Limits {
            max_records: 3,
            ..Limits::default()
        };
        assert_eq!(
            ClientHelloReader::new(limits).push(&records(&handshake, 10)),
            Err(TlsError::TooManyRecords { max: 3 })
        );
        assert!(matches!(
            ClientHelloReader::new(limits).push(&records(&handshake, 66)),
            Ok(Progress::Done(_))
        ));
    }

    #[test]
    fn no_sni() {
        let info = done(feed_whole(&ClientHelloBuilder::new().records(16384)));
        assert_eq!(info.sni, None);
        assert_eq!(info.supported_versions, vec![0x0304, 0x0303]);

        // No extensions block at all (TLS 1.0–1.2 may omit it).
        let b = ClientHelloBuilder {
            extensions: None,
            ..ClientHelloBuilder::new()
        };
        let info = done(feed_whole(&b.records(16384)));
        assert_eq!(info.sni, None);
        assert!(info.supported_versions.is_empty());

        // Empty extensions block.
        let b = ClientHelloBuilder {
            extensions: Some(vec![]),
            ..ClientHelloBuilder::new()
        };
        assert_eq!(done(feed_whole(&b.records(16384))).sni, None);
    }

    #[test]
    fn sni_is_normalised() {
        let info = done(feed_whole(
            &ClientHelloBuilder::new()
                .sni("WWW.Example.COM.")
                .records(512),
        ));
        assert_eq!(info.sni.as_deref(), Some("www.example.com"));
    }

    #[test]
    fn sni_validation() {
        let bad = |name: &[u8]| {
            body_err(&ClientHelloBuilder::new().ext(EXT_SERVER_NAME, server_name_ext(&[(0, name)])))
        };
        assert_eq!(
            bad(b"bad_name.example"),
            TlsError::InvalidSni(NameError::InvalidByte { byte: b'_', at: 3 })
        );
        assert_eq!(bad(b"10.1.2.3"), TlsError::InvalidSni(NameError::IpLiteral));
        assert_eq!(bad(b"a..b"), TlsError::InvalidSni(NameError::EmptyLabel));
        assert_eq!(bad(b""), TlsError::InvalidSni(NameError::Empty));
        assert_eq!(
            bad(b"caf\xc3\xa9.example"),
            TlsError::InvalidSni(NameError::InvalidByte { byte: 0xc3, at: 3 })
        );
        assert_eq!(
            bad(&[b'a'; 254]),
            TlsError::InvalidSni(NameError::TooLong { len: 254 })
        );
        assert_eq!(
            bad(&[b'a'; 64]),
            TlsError::InvalidSni(NameError::LabelTooLong { len: 64 })
        );
    }

    #[test]
    fn server_name_list_structure() {
        let with = |data: Vec<u8>| {
            parse_client_hello(&ClientHelloBuilder::new().ext(EXT_SERVER_NAME, data).body())
        };
        assert_eq!(
            with(server_name_ext(&[(0, b"a.example"), (0, b"b.example")])),
            Err(TlsError::DuplicateHostName)
        );
        assert_eq!(with(vec![0, 0]), Err(TlsError::EmptyServerNameList));
        // Unknown name types are skipped; the host_name is still found.
        assert_eq!(
            with(server_name_ext(&[(7, b"opaque"), (0, b"a.example")]))
                .unwrap()
                .sni
                .as_deref(),
            Some("a.example")
        );
        assert_eq!(with(server_name_ext(&[(7, b"opaque")])).unwrap().sni, None);
        // Entry length overruns the list.
        assert_eq!(
            with(vec![0, 5, 0, 0, 9, b'a', b'b']),
            Err(TlsError::LengthOverrun {
                field: "server_name",
                declared: 9,
                available: 2
            })
        );
        // List length overruns the extension.
        assert_eq!(
            with(vec![0, 9, 0, 0, 1, b'a']),
            Err(TlsError::LengthOverrun {
                field: "server_name_list",
                declared: 9,
                available: 4
            })
        );
        // Bytes after the list inside the extension.
        let mut data = server_name_ext(&[(0, b"a.example")]);
        data.push(0);
        assert_eq!(
            with(data),
            Err(TlsError::TrailingBytes {
                field: "server_name_list",
                extra: 1
            })
        );
        // Empty extension_data (a server-side form) is malformed here.
        assert_eq!(
            with(vec![]),
            Err(TlsError::Truncated {
                field: "server_name_list"
            })
        );
    }

    #[test]
    fn alpn() {
        let info = parse_client_hello(
            &ClientHelloBuilder::new()
                .alpn(&[&[0xfa, 0xfa], b"h2", b"http/1.1"])
                .body(),
        )
        .unwrap();
        assert_eq!(
            info.alpn,
            vec![vec![0xfa, 0xfa], b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        let with = |data: Vec<u8>| {
            parse_client_hello(&ClientHelloBuilder::new().ext(EXT_ALPN, data).body())
        };
        assert_eq!(
            with(alpn_ext(&[b"h2", b""])),
            Err(TlsError::EmptyAlpnProtocol)
        );
        assert_eq!(
            with(vec![0, 0]),
            Err(TlsError::BadLength {
                field: "protocol_name_list",
                len: 0
            })
        );
        assert_eq!(
            with(vec![0, 3, 5, b'h', b'2']),
            Err(TlsError::LengthOverrun {
                field: "protocol_name",
                declared: 5,
                available: 2
            })
        );
    }

    #[test]
    fn supported_versions_and_ech() {
        let info = parse_client_hello(
            &ClientHelloBuilder::new()
                .sni("public.example")
                .ext(0xfe0d, vec![0; 20])
                .body(),
        )
        .unwrap();
        assert!(info.offers_ech);
        assert_eq!(info.sni.as_deref(), Some("public.example"));
        let odd = ClientHelloBuilder {
            extensions: Some(vec![(43, vec![3, 3, 4, 3])]),
            ..ClientHelloBuilder::new()
        };
        assert_eq!(
            body_err(&odd),
            TlsError::BadLength {
                field: "supported_versions",
                len: 3
            }
        );
    }

    #[test]
    fn duplicate_extensions_are_refused() {
        let b = ClientHelloBuilder::new().sni("a.example").sni("b.example");
        assert_eq!(body_err(&b), TlsError::DuplicateExtension { ext_type: 0 });
        let b = ClientHelloBuilder::new()
            .ext(0x1234, vec![])
            .padding(3)
            .ext(0x1234, vec![1]);
        assert_eq!(
            body_err(&b),
            TlsError::DuplicateExtension { ext_type: 0x1234 }
        );
    }

    #[test]
    fn malformed_fixed_fields() {
        let b = ClientHelloBuilder {
            session_id: vec![0; 33],
            ..ClientHelloBuilder::new()
        };
        assert_eq!(
            body_err(&b),
            TlsError::BadLength {
                field: "legacy_session_id",
                len: 33
            }
        );
        let b = ClientHelloBuilder {
            cipher_suites: vec![0x13, 0x01, 0x13],
            ..ClientHelloBuilder::new()
        };
        assert_eq!(
            body_err(&b),
            TlsError::BadLength {
                field: "cipher_suites",
                len: 3
            }
        );
        let b = ClientHelloBuilder {
            cipher_suites: vec![],
            ..ClientHelloBuilder::new()
        };
        assert_eq!(
            body_err(&b),
            TlsError::BadLength {
                field: "cipher_suites",
                len: 0
            }
        );
        let b = ClientHelloBuilder {
            compression_methods: vec![],
            ..ClientHelloBuilder::new()
        };
        assert_eq!(
            body_err(&b),
            TlsError::BadLength {
                field: "legacy_compression_methods",
                len: 0
            }
        );
        let b = ClientHelloBuilder {
            trailing: vec![0, 0, 0],
            ..ClientHelloBuilder::new()
        };
        assert_eq!(
            body_err(&b),
            TlsError::TrailingBytes {
                field: "extensions",
                extra: 3
            }
        );
        assert_eq!(
            parse_client_hello(&[3, 3, 0]),
            Err(TlsError::Truncated { field: "random" })
        );
        assert_eq!(
            parse_client_hello(&[]),
            Err(TlsError::Truncated {
                field: "legacy_version"
            })
        );
    }

    #[test]
    fn inner_lengths_that_disagree_with_the_message_length() {
        // Claim a shorter message than the body: the parser sees a hello cut
        // inside its extensions block and must say so, not read past it.
        let body = ClientHelloBuilder::new().sni("a.example").body();
        let cut = &body[..body.len() - 3];
        assert!(matches!(
            parse_client_hello(cut),
            Err(TlsError::LengthOverrun {
                field: "extensions",
                ..
            })
        ));
        let stream = record(22, &handshake_message(1, cut));
        assert!(matches!(
            feed_whole(&stream),
            Err(TlsError::LengthOverrun { .. })
        ));
        // An extension whose length runs past the extensions block.
        let mut body = ClientHelloBuilder::new().ext(0x77, vec![1, 2, 3]).body();
        let n = body.len();
        body[n - 4] = 9;
        assert!(matches!(
            parse_client_hello(&body),
            Err(TlsError::LengthOverrun {
                field: "extension_data",
                ..
            })
        ));
    }

    #[test]
    fn handshake_reader_alone() {
        let hs = rfc8448()[5..].to_vec();
        let mut r = HandshakeReader::new(Limits::default());
        assert_eq!(r.push(&hs[..3]), Ok(None));
        assert_eq!(r.received(), &hs[..3]);
        assert_eq!(r.push(&hs[3..100]), Ok(None));
        let mut tail = hs[100..].to_vec();
        tail.extend_from_slice(b"ignored");
        assert_eq!(r.push(&tail), Ok(Some(rfc8448_info())));
        assert_eq!(r.received(), &hs[..]);
        assert_eq!(r.push(b"x"), Ok(Some(rfc8448_info())));

        let mut r = HandshakeReader::new(Limits::default());
        assert_eq!(r.push(&[2]), Err(TlsError::NotClientHello { msg_type: 2 }));
        assert_eq!(r.push(&hs), Err(TlsError::NotClientHello { msg_type: 2 }));
    }

    #[test]
    fn alert_bytes() {
        assert_eq!(
            unrecognized_name_alert(),
            [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x70]
        );
        assert_eq!(fatal_alert(40), [21, 3, 3, 0, 2, 2, 40]);
    }

    #[test]
    fn errors_display_what_was_wrong() {
        assert_eq!(
            TlsError::LengthOverrun {
                field: "cipher_suites",
                declared: 10,
                available: 4
            }
            .to_string(),
            "cipher_suites declares 10 bytes but only 4 remain"
        );
        assert_eq!(
            TlsError::InvalidSni(NameError::IpLiteral).to_string(),
            "invalid SNI host_name: an IPv4 address is not a host name"
        );
    }

    proptest! {
        #[test]
        fn rfc8448_any_chunking(mut cuts in proptest::collection::vec(0usize..202, 0..40)) {
            cuts.sort_unstable();
            prop_assert_eq!(done(feed_cut(Limits::default(), &rfc8448(), &cuts)), rfc8448_info());
        }

        #[test]
        fn built_hello_any_records_any_chunking(
            sni in "[a-z]{1,20}(\\.[a-z0-9]{1,10}){0,3}",
            pad in 0usize..3000,
            record_sizes in proptest::collection::vec(1usize..2000, 0..10),
            mut cuts in proptest::collection::vec(0usize..6000, 0..20),
        ) {
            let handshake = ClientHelloBuilder::new().sni(&sni).alpn(&[b"h2"]).padding(pad).handshake();
            let stream = records_sized(&handshake, &record_sizes);
            cuts.sort_unstable();
            let info = done(feed_cut(Limits::default(), &stream, &cuts));
            prop_assert_eq!(info.sni, Some(sni));
            prop_assert_eq!(info.handshake_len, handshake.len());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = feed_whole(&bytes);
            let _ = parse_client_hello(&bytes);
            let mut tls = vec![22, 3, 1];
            tls.extend_from_slice(&bytes);
            let _ = feed_whole(&tls);
        }

        #[test]
        fn corrupted_hello_never_panics(pos in 0usize..201, byte in any::<u8>(), cut in 0usize..202) {
            let mut bytes = rfc8448();
            bytes[pos] = byte;
            let _ = feed_cut(Limits::default(), &bytes, &[cut]);
            let _ = parse_client_hello(&bytes[9..]);
        }
    }
}
