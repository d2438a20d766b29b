//! Hand-built TLS ClientHellos, for the proxy tests and proxy-bench: TLS
//! 1.2, so the server's certificate comes back in the clear; offering
//! ECDHE with ECDSA and RSA certificates alike, so any test server answers.

fn u16_prefixed(body: &[u8]) -> Vec<u8> {
    let mut out = u16::try_from(body.len()).expect("a TLS vector under 64 KiB").to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

/// A ClientHello naming `sni` (None: no server_name), with `padding` bytes
/// of padding extension, cut into handshake records of at most
/// `record_size` bytes.
pub fn client_hello(sni: Option<&str>, padding: usize, record_size: usize) -> Vec<u8> {
    let mut extensions: Vec<(u16, Vec<u8>)> = Vec::new();
    if let Some(name) = sni {
        let mut entry = vec![0u8];
        entry.extend(u16_prefixed(name.as_bytes()));
        extensions.push((0, u16_prefixed(&entry)));
    }
    extensions.push((0x000a, u16_prefixed(&[0x00, 0x1d, 0x00, 0x17]))); // x25519, secp256r1
    extensions.push((0x000b, vec![1, 0])); // uncompressed points
    // ecdsa_secp256r1_sha256, rsa_pss_rsae_sha256, rsa_pkcs1_sha256, rsa_pss_rsae_sha384, rsa_pkcs1_sha384
    extensions.push((0x000d, u16_prefixed(&[0x04, 0x03, 0x08, 0x04, 0x04, 0x01, 0x08, 0x05, 0x05, 0x01])));
    extensions.push((0xff01, vec![0])); // renegotiation_info
    if padding > 0 {
        extensions.push((0x0015, vec![0; padding]));
    }
    let mut block = Vec::new();
    for (ty, data) in extensions {
        block.extend_from_slice(&ty.to_be_bytes());
        block.extend(u16_prefixed(&data));
    }
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[0x42; 32]);
    body.push(32);
    body.extend_from_slice(&[0x55; 32]);
    // ECDHE-ECDSA-AES-GCM, ECDHE-RSA-AES-GCM, RSA-AES128-GCM
    body.extend(u16_prefixed(&[0xc0, 0x2b, 0xc0, 0x2c, 0xc0, 0x2f, 0xc0, 0x30, 0x00, 0x9c]));
    body.extend_from_slice(&[1, 0]);
    body.extend(u16_prefixed(&block));
    let mut handshake = vec![1];
    handshake.extend_from_slice(&u32::try_from(body.len()).expect("a ClientHello under 16 MiB").to_be_bytes()[1..]);
    handshake.extend(body);
    handshake
        .chunks(record_size)
        .flat_map(|chunk| {
            let mut record = vec![22, 3, 1];
            record.extend(u16_prefixed(chunk));
            record
        })
        .collect()
}
