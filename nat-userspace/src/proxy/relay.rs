//! One client connection of a proxy, from its first byte to its close:
//! read the ClientHello within `hello_timeout`, pick the server set of its
//! name, connect to a server up (within `connect_timeout`), send the PROXY
//! header if asked, replay the bytes read, then splice both ways until
//! both sides are done or nothing moved for `idle_timeout`.
//!
//! Every wait is bounded, and each connection is its own task: a client
//! that sends nothing, or sends slowly, holds its own task and socket only.

use std::{
    io,
    net::{SocketAddr, SocketAddrV4},
    sync::atomic::Ordering,
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    time::{Instant, timeout, timeout_at},
};

use crate::{
    config::{Proxy, ProxyProtocolVersion},
    proxy::{
        proxy_protocol::{PP2_TYPE_AUTHORITY, Tlv, Transport, encode_v1, encode_v2},
        route::{Backend, Refusal, Routes},
        splice::splice_until_idle,
        tls::{ClientHelloReader, Limits, Progress, unrecognized_name_alert},
    },
};

/// A refused client gets its alert within this time, or none.
const ALERT_WRITE: Duration = Duration::from_secs(1);
/// What a connection's first read asks for: a whole classic ClientHello,
/// and most post-quantum ones in two reads.
const FIRST_READ: usize = 4096;

/// What the first bytes of a connection were.
enum Hello {
    /// A whole ClientHello, with its server name (normalised), if any.
    Tls { sni: Option<String> },
    /// Not a TLS handshake record (plain HTTP, SSH, an SSLv2 hello...).
    NotTls,
}

/// How a relayed connection ended.
#[derive(Debug)]
pub(super) enum End {
    /// Both sides closed (or one reset: the other is closed with it).
    Closed(io::Result<()>),
    /// Nothing moved either way for `idle_timeout`.
    Idle,
}

/// Serves one client of `proxy` from `peer`: Err when it was refused before
/// anything was relayed.
pub(super) async fn relay(proxy: &Proxy, routes: &Routes, mut client: TcpStream, peer: SocketAddr) -> Result<(SocketAddrV4, End), Refusal> {
    let deadline = Instant::now() + proxy.hello_timeout;
    let (seen, hello) = read_hello(&mut client, deadline).await?;
    let (routed, sni) = match hello {
        Hello::Tls { sni } => (routes.for_name(sni.as_deref()), sni),
        Hello::NotTls => (routes.for_non_tls(), None),
    };
    let set = match routed {
        Ok(set) => set,
        Err(refusal) => {
            if refusal.alerts() {
                // Best effort: the client may be gone already.
                let _ = timeout(ALERT_WRITE, async {
                    client.write_all(&unrecognized_name_alert()).await?;
                    client.shutdown().await
                })
                .await;
            }
            return Err(refusal);
        }
    };
    let (mut server, backend) = connect(routes.candidates(set)?, proxy.connect_timeout).await?;
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);

    let mut first = match proxy.proxy_protocol {
        None => Vec::with_capacity(seen.len()),
        Some(version) => {
            let local = client.local_addr().map_err(|e| Refusal::Local(format!("the client's socket: {e}")))?;
            header(version, peer, local, sni.as_deref()).map_err(Refusal::Local)?
        }
    };
    first.extend_from_slice(&seen);
    // Held no longer than needed: an idle relay keeps only its sockets,
    // pipes and task.
    drop(seen);
    backend.active.fetch_add(1, Ordering::Relaxed);
    backend.total.fetch_add(1, Ordering::Relaxed);
    let replayed = timeout(proxy.idle_timeout, server.write_all(&first)).await;
    drop(first);
    let end = match replayed {
        Ok(Ok(())) => match splice_until_idle(&client, &server, proxy.idle_timeout).await {
            Ok(true) => End::Idle,
            Ok(false) => End::Closed(Ok(())),
            Err(e) => End::Closed(Err(e)),
        },
        Ok(Err(e)) => End::Closed(Err(e)),
        Err(_) => End::Idle,
    };
    backend.active.fetch_sub(1, Ordering::Relaxed);
    Ok((backend.addr, end))
}

/// The PROXY protocol header for a client `peer` that connected to `local`.
/// v2 carries the server name as PP2_TYPE_AUTHORITY, as HAProxy sends it.
pub(super) fn header(version: ProxyProtocolVersion, peer: SocketAddr, local: SocketAddr, sni: Option<&str>) -> Result<Vec<u8>, String> {
    let header = match version {
        ProxyProtocolVersion::V1 => encode_v1(peer, local).map(String::into_bytes),
        ProxyProtocolVersion::V2 => {
            let tlvs: Vec<Tlv<'_>> = sni.map(|name| Tlv { kind: PP2_TYPE_AUTHORITY, value: name.as_bytes() }).into_iter().collect();
            encode_v2(Transport::Tcp, peer, local, &tlvs)
        }
    };
    header.map_err(|e| format!("the PROXY header: {e}"))
}

/// Reads until the ClientHello is whole, or the first bytes show the client
/// does not speak TLS; every byte read is returned, to be replayed.
async fn read_hello(client: &mut TcpStream, deadline: Instant) -> Result<(Vec<u8>, Hello), Refusal> {
    // The reader bounds what it accepts (64 KiB of hello, 32 records), so
    // `seen` is bounded too.
    let mut reader = ClientHelloReader::new(Limits::default());
    let mut seen = Vec::with_capacity(FIRST_READ);
    loop {
        let before = seen.len();
        match timeout_at(deadline, client.read_buf(&mut seen)).await {
            Err(_) => return Err(Refusal::HelloTimeout),
            Ok(Ok(0) | Err(_)) => return Err(Refusal::ClientClosed),
            Ok(Ok(_)) => {}
        }
        match reader.push(&seen[before..]) {
            Ok(Progress::NeedMore) => {}
            Ok(Progress::NotTls) => return Ok((seen, Hello::NotTls)),
            Ok(Progress::Done(info)) => return Ok((seen, Hello::Tls { sni: info.sni })),
            Err(e) => return Err(Refusal::BadHello(e.to_string())),
        }
    }
}

/// Tries the servers in order, each within `connect_timeout`; the first
/// that accepts is the one. Each failure is counted on its server.
pub(super) async fn connect(candidates: Vec<&Backend>, connect_timeout: Duration) -> Result<(TcpStream, &Backend), Refusal> {
    let mut failures = Vec::new();
    for backend in candidates {
        let why = match timeout(connect_timeout, TcpStream::connect(backend.addr)).await {
            Ok(Ok(stream)) => return Ok((stream, backend)),
            Ok(Err(e)) => format!("{}: {e}", backend.addr),
            Err(_) => format!("{}: no answer within connect_timeout ({} s)", backend.addr, connect_timeout.as_secs_f64()),
        };
        backend.connect_failures.fetch_add(1, Ordering::Relaxed);
        backend.note_failure(format!("connect: {why}"));
        failures.push(why);
    }
    Err(Refusal::ConnectFailed(failures.join("; ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::{
        proxy_protocol::V2_SIGNATURE,
        test_support::{ClientHelloBuilder, pair, rt},
    };

    #[test]
    fn a_hello_written_a_byte_at_a_time_is_read_whole_and_kept_for_replay() {
        rt().block_on(async {
            let (mut client, mut natd) = pair().await;
            client.set_nodelay(true).unwrap();
            let hello = ClientHelloBuilder::new().sni("Blue.Example").big_key_share(3000).records(700);
            let sent = hello.clone();
            let writer = tokio::spawn(async move {
                for byte in &sent {
                    client.write_all(std::slice::from_ref(byte)).await.unwrap();
                }
                client
            });
            let (seen, parsed) = read_hello(&mut natd, Instant::now() + Duration::from_secs(10)).await.unwrap();
            assert_eq!(seen, hello, "every byte read is replayed, and none past the hello was needed");
            assert!(matches!(parsed, Hello::Tls { sni: Some(ref name) } if name == "blue.example"));
            drop(writer.await.unwrap());
        });
    }

    #[test]
    fn a_silent_client_times_out_and_plain_text_is_not_tls() {
        rt().block_on(async {
            let (_client, mut natd) = pair().await;
            let started = Instant::now();
            let result = read_hello(&mut natd, started + Duration::from_millis(200)).await;
            assert_eq!(result.err(), Some(Refusal::HelloTimeout));
            assert!(started.elapsed() >= Duration::from_millis(200));

            let (mut client, mut natd) = pair().await;
            client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
            let (seen, hello) = read_hello(&mut natd, Instant::now() + Duration::from_secs(5)).await.unwrap();
            assert!(matches!(hello, Hello::NotTls));
            assert!(seen.starts_with(b"GET"), "the bytes read are kept: {seen:?}");

            let (mut client, mut natd) = pair().await;
            client.write_all(&[22, 3, 1, 0, 4, 2, 0, 0, 0]).await.unwrap();
            assert!(matches!(read_hello(&mut natd, Instant::now() + Duration::from_secs(5)).await, Err(Refusal::BadHello(_))), "a ServerHello is no ClientHello");

            let (client, mut natd) = pair().await;
            drop(client);
            assert_eq!(read_hello(&mut natd, Instant::now() + Duration::from_secs(5)).await.err(), Some(Refusal::ClientClosed));
        });
    }

    #[test]
    fn proxy_protocol_headers_name_the_client_and_the_address_it_reached() {
        let peer: SocketAddr = "203.0.113.2:40000".parse().unwrap();
        let local: SocketAddr = "203.0.113.1:443".parse().unwrap();
        let v1 = header(ProxyProtocolVersion::V1, peer, local, Some("blue.example")).unwrap();
        assert_eq!(v1, b"PROXY TCP4 203.0.113.2 203.0.113.1 40000 443\r\n");
        let v2 = header(ProxyProtocolVersion::V2, peer, local, Some("blue.example")).unwrap();
        assert_eq!(v2[..12], V2_SIGNATURE);
        assert_eq!(&v2[16..28], &[203, 0, 113, 2, 203, 0, 113, 1, 0x9c, 0x40, 0x01, 0xbb]);
        assert_eq!(&v2[28..31], &[PP2_TYPE_AUTHORITY, 0, 12]);
        assert_eq!(&v2[31..], b"blue.example");
    }
}
