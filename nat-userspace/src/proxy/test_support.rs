//! Builders shared by the tests of `tls` and `quic`: ClientHellos made to
//! order, TLS record framing, hex literals; and for the relay's tests, a
//! runtime and connected sockets.

/// Decodes hex, ignoring whitespace (so RFC dumps can be pasted as is).
pub fn hex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text
        .bytes()
        .filter(|b| !b.is_ascii_whitespace())
        .map(|b| match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            _ => panic!("not a hex digit: {:?}", b as char),
        })
        .collect();
    assert!(digits.len().is_multiple_of(2), "odd number of hex digits");
    digits.chunks(2).map(|p| (p[0] << 4) | p[1]).collect()
}

pub const EXT_SERVER_NAME: u16 = 0;
pub const EXT_ALPN: u16 = 16;
pub const EXT_PADDING: u16 = 21;
pub const EXT_SUPPORTED_VERSIONS: u16 = 43;
pub const EXT_KEY_SHARE: u16 = 51;

fn u16_prefixed(body: &[u8]) -> Vec<u8> {
    let mut out = (u16::try_from(body.len()).unwrap()).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

/// server_name extension_data holding the given (name_type, name) entries.
pub fn server_name_ext(entries: &[(u8, &[u8])]) -> Vec<u8> {
    let mut list = Vec::new();
    for (ty, name) in entries {
        list.push(*ty);
        list.extend(u16_prefixed(name));
    }
    u16_prefixed(&list)
}

/// application_layer_protocol_negotiation extension_data.
pub fn alpn_ext(protocols: &[&[u8]]) -> Vec<u8> {
    let mut list = Vec::new();
    for p in protocols {
        list.push(u8::try_from(p.len()).unwrap());
        list.extend_from_slice(p);
    }
    u16_prefixed(&list)
}

/// A ClientHello assembled field by field, so tests can break any one of them.
#[derive(Clone, Debug)]
pub struct ClientHelloBuilder {
    pub legacy_version: u16,
    pub session_id: Vec<u8>,
    pub cipher_suites: Vec<u8>,
    pub compression_methods: Vec<u8>,
    /// `None` leaves the extensions block out entirely (pre-TLS 1.3 form).
    pub extensions: Option<Vec<(u16, Vec<u8>)>>,
    /// Bytes appended after the extensions block, inside the message.
    pub trailing: Vec<u8>,
}

impl Default for ClientHelloBuilder {
    fn default() -> Self {
        Self {
            legacy_version: 0x0303,
            session_id: vec![0x55; 32],
            cipher_suites: vec![0x13, 0x01, 0x13, 0x02, 0x13, 0x03],
            compression_methods: vec![0],
            extensions: Some(vec![(
                EXT_SUPPORTED_VERSIONS,
                vec![4, 0x03, 0x04, 0x03, 0x03],
            )]),
            trailing: Vec::new(),
        }
    }
}

impl ClientHelloBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn ext(mut self, ty: u16, data: Vec<u8>) -> Self {
        self.extensions
            .get_or_insert_with(Vec::new)
            .push((ty, data));
        self
    }

    pub fn sni(self, name: &str) -> Self {
        self.ext(EXT_SERVER_NAME, server_name_ext(&[(0, name.as_bytes())]))
    }

    pub fn alpn(self, protocols: &[&[u8]]) -> Self {
        self.ext(EXT_ALPN, alpn_ext(protocols))
    }

    /// Stands in for the large post-quantum key shares (X25519MLKEM768 is
    /// 1,216 bytes per share) that push real ClientHellos past one MTU.
    pub fn big_key_share(self, total: usize) -> Self {
        let mut share = Vec::new();
        share.extend_from_slice(&0x11ecu16.to_be_bytes());
        share.extend(u16_prefixed(&vec![0xab; total]));
        self.ext(EXT_KEY_SHARE, u16_prefixed(&share))
    }

    pub fn padding(self, len: usize) -> Self {
        self.ext(EXT_PADDING, vec![0; len])
    }

    pub fn body(&self) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&self.legacy_version.to_be_bytes());
        b.extend_from_slice(&[0x42; 32]);
        b.push(u8::try_from(self.session_id.len()).unwrap());
        b.extend_from_slice(&self.session_id);
        b.extend(u16_prefixed(&self.cipher_suites));
        b.push(u8::try_from(self.compression_methods.len()).unwrap());
        b.extend_from_slice(&self.compression_methods);
        if let Some(exts) = &self.extensions {
            let mut block = Vec::new();
            for (ty, data) in exts {
                block.extend_from_slice(&ty.to_be_bytes());
                block.extend(u16_prefixed(data));
            }
            b.extend(u16_prefixed(&block));
        }
        b.extend_from_slice(&self.trailing);
        b
    }

    /// The handshake message: msg_type client_hello(1), uint24 length, body.
    pub fn handshake(&self) -> Vec<u8> {
        handshake_message(1, &self.body())
    }

    /// The handshake message in TLS records of at most `max_fragment` bytes.
    pub fn records(&self, max_fragment: usize) -> Vec<u8> {
        records(&self.handshake(), max_fragment)
    }
}

pub fn handshake_message(msg_type: u8, body: &[u8]) -> Vec<u8> {
    let len = u32::try_from(body.len()).unwrap();
    assert!(len < 1 << 24);
    let mut m = vec![msg_type];
    m.extend_from_slice(&len.to_be_bytes()[1..]);
    m.extend_from_slice(body);
    m
}

/// One TLS record (legacy_record_version 0x0301, as ClientHellos use).
pub fn record(content_type: u8, fragment: &[u8]) -> Vec<u8> {
    let mut r = vec![content_type, 0x03, 0x01];
    r.extend(u16_prefixed(fragment));
    r
}

/// Splits `handshake` into handshake records of at most `max_fragment` bytes.
pub fn records(handshake: &[u8], max_fragment: usize) -> Vec<u8> {
    handshake
        .chunks(max_fragment)
        .flat_map(|c| record(22, c))
        .collect()
}

/// Splits `handshake` into handshake records with the given fragment sizes
/// (the last one takes whatever is left).
pub fn records_sized(handshake: &[u8], sizes: &[usize]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = handshake;
    for &n in sizes {
        if rest.is_empty() {
            break;
        }
        let (a, b) = rest.split_at(n.min(rest.len()));
        out.extend(record(22, a));
        rest = b;
    }
    if !rest.is_empty() {
        out.extend(record(22, rest));
    }
    out
}

/// A runtime for one test.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// A connected pair on loopback: (the end a client or server holds, the
/// end natd holds).
pub async fn pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
    let listener = tokio::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
    let (accepted, _) = listener.accept().await.unwrap();
    (client, accepted)
}
