//! Name-based proxies end to end (issue 13, TLS): `openssl s_server` on LAN
//! hosts, each with its own certificate, curl and hand-made ClientHellos
//! from the WAN, the real natd listening on the external address: each name
//! reaches its server, wildcards and the default, the unrecognized_name
//! alert, a ClientHello one byte per segment and one over 4 KB in several
//! records, silent clients closed after the hello timeout without holding
//! up others, max_connections, PROXY protocol v1 and v2, a server that goes
//! down, a reload, and bad configs.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use nat_tests::{
    natlab::{EXTERNAL, IO_TIMEOUT, NatLab, SERVER, host_addr, in_ns},
    netns::Netns,
    require_root,
    servers::{Nginx, TlsServer},
    tls::client_hello,
};
use nat_userspace::proxy::ProxyView;

/// s_server on LAN host `i`, port 443, its certificate and answer `name`.
fn tls_on(lab: &NatLab, i: usize, name: &str) -> TlsServer {
    TlsServer::start(&lab.hosts[i], SocketAddrV4::new(host_addr(i), 443), name).unwrap()
}

/// `GET https://NAME:PORT/who` from the WAN host, NAME resolved to the
/// external address: the answering server's name.
fn who(lab: &NatLab, name: &str, port: u16) -> Result<String, String> {
    let resolve = format!("{name}:{port}:{EXTERNAL}");
    let url = format!("https://{name}:{port}/who");
    lab.server.exec(&["curl", "-sS", "-k", "--max-time", "5", "--resolve", &resolve, &url]).map(|body| body.trim().to_string()).map_err(|e| format!("{e:#}"))
}

/// A TCP listener on EXTERNAL:`port` in the gateway namespace, as another
/// service would hold it, until dropped.
struct PortHolder {
    release: mpsc::Sender<()>,
    thread: Option<thread::JoinHandle<()>>,
}

impl PortHolder {
    fn take(lab: &NatLab, port: u16) -> Self {
        let (taken_tx, taken) = mpsc::channel();
        let (release, released) = mpsc::channel::<()>();
        let thread = in_ns(&lab.gw, move || {
            let listener = TcpListener::bind(SocketAddrV4::new(EXTERNAL, port)).unwrap();
            taken_tx.send(()).unwrap();
            let _ = released.recv();
            drop(listener);
        });
        taken.recv().unwrap();
        Self { release, thread: Some(thread) }
    }
}

impl Drop for PortHolder {
    fn drop(&mut self) {
        let _ = self.release.send(());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The proxy on `port` as `natd proxies` shows it.
fn proxy_view(lab: &NatLab, port: u16) -> ProxyView {
    let views = lab.proxies().unwrap();
    views.into_iter().find(|p| p.listen.ends_with(&format!(":{port}"))).unwrap_or_else(|| panic!("no proxy on port {port} in natd proxies"))
}

fn refused(view: &ProxyView, reason: &str) -> u64 {
    view.refused_by.get(reason).copied().unwrap_or_default()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Connects from the WAN host to EXTERNAL:`port`, sends `hello` (all at
/// once, or one byte per segment `gap` apart), then reads until `until`
/// appears, the connection closes, or 5 s pass. Returns what was read.
fn tls_exchange(ns: &Netns, port: u16, hello: Vec<u8>, gap: Option<Duration>, until: Option<&'static [u8]>) -> Result<Vec<u8>, String> {
    in_ns(ns, move || {
        let mut stream = TcpStream::connect_timeout(&SocketAddrV4::new(EXTERNAL, port).into(), IO_TIMEOUT).map_err(|e| format!("connect: {e}"))?;
        stream.set_nodelay(true).unwrap();
        stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        match gap {
            None => stream.write_all(&hello).map_err(|e| format!("send: {e}"))?,
            Some(gap) => {
                for byte in &hello {
                    stream.write_all(std::slice::from_ref(byte)).map_err(|e| format!("send: {e}"))?;
                    thread::sleep(gap);
                }
            }
        }
        let deadline = Instant::now() + IO_TIMEOUT;
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(e) => return Err(format!("read: {e} after {got:?}")),
            }
            if until.is_some_and(|marker| contains(&got, marker)) {
                break;
            }
        }
        Ok(got)
    })
    .join()
    .unwrap()
}

/// RFC 6066 §3 unrecognized_name, fatal, as natd sends it.
const UNRECOGNIZED_NAME: [u8; 7] = [21, 3, 3, 0, 2, 2, 112];

/// Each name reaches its server (the body and the certificate show which),
/// case and a trailing dot aside; a wildcard covers one label; an unknown
/// name or none gets the unrecognized_name alert without a default and
/// reaches the default with one; a ClientHello one byte per segment, and
/// one over 4 KB in five records, route as a whole one does.
#[test]
fn names_reach_their_servers_and_unknown_names_get_an_alert_or_the_default() {
    require_root!();
    let mut lab = NatLab::new(3, false).unwrap();
    let _servers = [tls_on(&lab, 0, "proxy-blue"), tls_on(&lab, 1, "proxy-red"), tls_on(&lab, 2, "proxy-default")];
    let (h0, h1, h2) = (host_addr(0), host_addr(1), host_addr(2));
    lab.start_natd_with_config(&format!(
        "log_level = \"debug\"\n\
         [[proxy]]\nport = 443\nkind = \"tls\"\nnames = {{ \"blue.example\" = \"{h0}:443\", \"red.example\" = \"{h1}:443\", \"*.green.example\" = \"{h2}:443\" }}\n\
         [[proxy]]\nport = 4443\nkind = \"tls\"\nnames = {{ \"blue.example\" = \"{h0}:443\" }}\ndefault = \"{h2}:443\"\n"
    ))
    .unwrap();

    assert_eq!(who(&lab, "blue.example", 443).as_deref(), Ok("proxy-blue"));
    assert_eq!(who(&lab, "red.example", 443).as_deref(), Ok("proxy-red"));
    assert_eq!(who(&lab, "www.green.example", 443).as_deref(), Ok("proxy-default"), "the wildcard's server");
    assert_eq!(who(&lab, "blue.example", 4443).as_deref(), Ok("proxy-blue"));
    assert_eq!(who(&lab, "other.example", 4443).as_deref(), Ok("proxy-default"), "an unknown name goes to the default");
    assert!(who(&lab, "other.example", 443).is_err(), "no default: refused");
    let resolve = format!("blue.example:443:{EXTERNAL}");
    let blob = lab.server.exec(&["curl", "-sS", "-k", "--max-time", "10", "--resolve", &resolve, "https://blue.example/blob"]).unwrap();
    assert!(blob == Nginx::blob_text(), "1 MiB through the relay, {} bytes back", blob.len());

    let certificate = |sni: Option<&str>, port: u16, marker: &'static [u8]| tls_exchange(&lab.server, port, client_hello(sni, 0, 16384), None, Some(marker)).unwrap();
    assert!(contains(&certificate(Some("Red.EXAMPLE."), 443, b"proxy-red"), b"proxy-red"), "case and a trailing dot are ignored");
    assert!(contains(&certificate(None, 4443, b"proxy-default"), b"proxy-default"), "no SNI goes to the default");

    for sni in [Some("unknown.example"), Some("a.b.green.example"), None] {
        let answer = tls_exchange(&lab.server, 443, client_hello(sni, 0, 16384), None, None).unwrap();
        assert_eq!(answer, UNRECOGNIZED_NAME, "{sni:?}: the alert, then the close");
    }

    let started = Instant::now();
    let hello = client_hello(Some("red.example"), 0, 16384);
    let segments = hello.len();
    let answer = tls_exchange(&lab.server, 443, hello, Some(Duration::from_millis(2)), Some(b"proxy-red")).unwrap();
    assert!(contains(&answer, b"proxy-red"), "a ClientHello of {segments} one-byte segments ({:?}) reached {answer:?}", started.elapsed());

    let big = client_hello(Some("blue.example"), 5000, 1100);
    assert!(big.len() > 5000 && big.iter().filter(|&&b| b == 22).count() >= 5);
    let answer = tls_exchange(&lab.server, 443, big, None, Some(b"proxy-blue")).unwrap();
    assert!(contains(&answer, b"proxy-blue"), "a 5 KB ClientHello in 5 records: {answer:?}");

    let view = proxy_view(&lab, 443);
    assert_eq!(view.listen, format!("{EXTERNAL}:443"));
    assert_eq!(refused(&view, "unknown_name"), 3, "other.example, unknown.example, a.b.green.example: {view:?}");
    assert_eq!(refused(&view, "no_name"), 1, "{view:?}");
    let served = |server: Ipv4Addr| view.servers.iter().find(|s| s.server == format!("{server}:443")).map_or(0, |s| s.total);
    assert_eq!((served(h0), served(h1), served(h2)), (3, 3, 1), "{view:?}");
    assert_eq!(view.active, 0, "{view:?}");
    let text = lab.natd_cli(&["proxies"]).unwrap();
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(text.contains("proxy \"tls/443\": tls on 203.0.113.1:443") && text.contains("*.green.example") && text.contains("unknown_name 3"), "{text}");
    let log = lab.natd_log();
    assert!(log.contains(&format!("proxy tls/443 on {EXTERNAL}:443: refused {SERVER}:")) && log.contains("name \"unknown.example\" is not in names, and no default"), "{log}");
    // A LAN host reaches a proxy through the external address too.
    let resolve = format!("blue.example:443:{EXTERNAL}");
    let hairpin = lab.hosts[1].exec(&["curl", "-sS", "-k", "--max-time", "5", "--resolve", &resolve, "https://blue.example/who"]).unwrap();
    assert_eq!(hairpin.trim(), "proxy-blue");
    // What the README shows (`-- --nocapture`).
    eprintln!("$ natd proxies\n{text}");
}

/// Slowloris: as many silent clients as the issue asks for.
const SILENT: u64 = 500;

/// Silent clients (slowloris) are closed once the hello timeout has passed,
/// and meanwhile a normal client is served; past max_connections a client
/// is closed at once.
#[test]
fn silent_clients_are_closed_after_the_hello_timeout_without_holding_up_others() {
    require_root!();
    let mut lab = NatLab::new(1, false).unwrap();
    let _blue = tls_on(&lab, 0, "proxy-blue");
    let h0 = host_addr(0);
    lab.start_natd_with_config(&format!(
        "[[proxy]]\nport = 443\nkind = \"tls\"\nhello_timeout = 3\nnames = {{ \"blue.example\" = \"{h0}:443\" }}\n\
         [[proxy]]\nport = 4443\nkind = \"tls\"\nmax_connections = 2\nnames = {{ \"blue.example\" = \"{h0}:443\" }}\n"
    ))
    .unwrap();

    let silent: Vec<thread::JoinHandle<Result<Duration, String>>> = (0..SILENT)
        .map(|_| {
            in_ns(&lab.server, || {
                let started = Instant::now();
                let mut stream = TcpStream::connect_timeout(&SocketAddrV4::new(EXTERNAL, 443).into(), IO_TIMEOUT).map_err(|e| format!("connect: {e}"))?;
                stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut byte = [0u8; 1];
                match stream.read(&mut byte) {
                    Ok(0) => Ok(started.elapsed()),
                    Ok(_) => Err("got a byte".to_string()),
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(started.elapsed()),
                    Err(e) => Err(format!("read: {e} after {:?}", started.elapsed())),
                }
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_millis(2500);
    while proxy_view(&lab, 443).active < SILENT {
        assert!(Instant::now() < deadline, "not all silent clients connected: {:?}", proxy_view(&lab, 443));
        thread::sleep(Duration::from_millis(50));
    }
    let started = Instant::now();
    assert_eq!(who(&lab, "blue.example", 443).as_deref(), Ok("proxy-blue"));
    assert!(started.elapsed() < Duration::from_secs(1), "served in {:?}, while {SILENT} silent clients wait", started.elapsed());
    for handle in silent {
        let closed_after = handle.join().unwrap().unwrap();
        assert!(closed_after >= Duration::from_millis(2900) && closed_after < Duration::from_secs(6), "closed after {closed_after:?}");
    }
    let view = proxy_view(&lab, 443);
    assert_eq!((refused(&view, "hello_timeout"), view.active), (SILENT, 0), "{view:?}");

    let hold: Vec<TcpStream> = (0..2)
        .map(|_| in_ns(&lab.server, || TcpStream::connect_timeout(&SocketAddrV4::new(EXTERNAL, 4443).into(), IO_TIMEOUT)).join().unwrap().unwrap())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(2);
    while proxy_view(&lab, 4443).active < 2 {
        assert!(Instant::now() < deadline, "{:?}", proxy_view(&lab, 4443));
        thread::sleep(Duration::from_millis(20));
    }
    let started = Instant::now();
    let answer = tls_exchange(&lab.server, 4443, client_hello(Some("blue.example"), 0, 16384), None, None);
    // Closed at once: an EOF, or a reset when the hello had arrived unread.
    assert!(answer.as_ref().is_ok_and(Vec::is_empty) || answer.as_ref().is_err_and(|e| e.contains("reset") || e.contains("pipe")), "{answer:?}");
    assert!(started.elapsed() < Duration::from_secs(1), "closed at once, not after {:?}", started.elapsed());
    assert_eq!(refused(&proxy_view(&lab, 4443), "max_connections"), 1);
    drop(hold);
}

/// A server that records what arrives first on its first connection.
fn recorder(ns: &Netns, addr: SocketAddrV4, want: usize) -> thread::JoinHandle<Vec<u8>> {
    let (ready_tx, ready) = mpsc::channel();
    let handle = in_ns(ns, move || {
        let listener = TcpListener::bind(addr).unwrap();
        ready_tx.send(()).unwrap();
        let (mut stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let mut got = vec![0u8; want];
        let mut filled = 0;
        while filled < want {
            match stream.read(&mut got[filled..]) {
                Ok(0) | Err(_) => break,
                Ok(n) => filled += n,
            }
        }
        got.truncate(filled);
        got
    });
    ready.recv().unwrap();
    handle
}

/// PROXY protocol v2 and v1 headers reach the server first, with the
/// client's address and port and the address and port it reached (v2 with
/// the server name), followed by the client's bytes exactly; a client that
/// does not speak TLS goes to the default.
#[test]
fn proxy_protocol_v1_and_v2_reach_the_server_with_the_client_address() {
    require_root!();
    let mut lab = NatLab::new(1, false).unwrap();
    let h0 = host_addr(0);
    let hello = client_hello(Some("pp.example"), 0, 16384);
    let v2_len = 16 + 12 + 3 + "pp.example".len();
    let v2 = recorder(&lab.hosts[0], SocketAddrV4::new(h0, 9001), v2_len + hello.len());
    let plain = b"GET / HTTP/1.0\r\n\r\n";
    let v1 = recorder(&lab.hosts[0], SocketAddrV4::new(h0, 9002), 64 + plain.len());
    lab.start_natd_with_config(&format!(
        "[[proxy]]\nport = 9443\nkind = \"tls\"\nproxy_protocol = \"v2\"\nnames = {{ \"pp.example\" = \"{h0}:9001\" }}\n\
         [[proxy]]\nport = 8443\nkind = \"tls\"\nproxy_protocol = \"v1\"\nnames = {{ \"pp.example\" = \"{h0}:9001\" }}\ndefault = \"{h0}:9002\"\n"
    ))
    .unwrap();

    let sent = hello.clone();
    let client_port = in_ns(&lab.server, move || {
        let mut stream = TcpStream::connect_timeout(&SocketAddrV4::new(EXTERNAL, 9443).into(), IO_TIMEOUT).unwrap();
        stream.write_all(&sent).unwrap();
        let port = stream.local_addr().unwrap().port();
        // Open until the server has it all.
        thread::sleep(Duration::from_millis(500));
        port
    })
    .join()
    .unwrap();
    let got = v2.join().unwrap();
    assert_eq!(got.len(), v2_len + hello.len(), "{got:?}");
    assert_eq!(got[..12], *b"\r\n\r\n\0\r\nQUIT\n", "the v2 signature");
    assert_eq!(got[12..14], [0x21, 0x11], "v2 PROXY, TCP over IPv4");
    assert_eq!(u16::from_be_bytes([got[14], got[15]]) as usize, v2_len - 16);
    assert_eq!(got[16..20], SERVER.octets(), "the client's address");
    assert_eq!(got[20..24], EXTERNAL.octets(), "the address it reached");
    assert_eq!(u16::from_be_bytes([got[24], got[25]]), client_port);
    assert_eq!(u16::from_be_bytes([got[26], got[27]]), 9443);
    assert_eq!(got[28..31], [0x02, 0, 10], "PP2_TYPE_AUTHORITY");
    assert_eq!(&got[31..v2_len], b"pp.example");
    assert_eq!(got[v2_len..], hello[..], "then the ClientHello as the client sent it");

    let client_port = in_ns(&lab.server, move || {
        let mut stream = TcpStream::connect_timeout(&SocketAddrV4::new(EXTERNAL, 8443).into(), IO_TIMEOUT).unwrap();
        stream.write_all(plain).unwrap();
        let port = stream.local_addr().unwrap().port();
        thread::sleep(Duration::from_millis(500));
        port
    })
    .join()
    .unwrap();
    let got = v1.join().unwrap();
    let expected = format!("PROXY TCP4 {SERVER} {EXTERNAL} {client_port} 8443\r\nGET / HTTP/1.0\r\n\r\n");
    assert_eq!(String::from_utf8_lossy(&got), expected, "v1, then the plain-text request, at the default");
}

/// nginx with `listen ... proxy_protocol` understands natd's v1 and v2
/// headers: it answers, and logs the client's address from the header.
#[test]
fn nginx_reads_the_client_address_from_the_proxy_protocol_header() {
    require_root!();
    let mut lab = NatLab::new(1, false).unwrap();
    let h0 = host_addr(0);
    let v1 = Nginx::start_proxy_protocol(&lab.hosts[0], SocketAddrV4::new(h0, 8081), "pp-v1").unwrap();
    let v2 = Nginx::start_proxy_protocol(&lab.hosts[0], SocketAddrV4::new(h0, 8082), "pp-v2").unwrap();
    lab.start_natd_with_config(&format!(
        "[[proxy]]\nport = 8443\nkind = \"tls\"\nproxy_protocol = \"v1\"\ndefault = \"{h0}:8081\"\n\
         [[proxy]]\nport = 9443\nkind = \"tls\"\nproxy_protocol = \"v2\"\ndefault = \"{h0}:8082\"\n"
    ))
    .unwrap();
    // Plain HTTP is not TLS: it goes to the default, after the header.
    for (port, nginx) in [(8443, &v1), (9443, &v2)] {
        let url = format!("http://{EXTERNAL}:{port}/");
        let body = lab.server.exec(&["curl", "-sS", "--max-time", "5", &url]).unwrap();
        assert_eq!(body.trim(), nginx.name);
        assert_eq!(nginx.clients(), [SERVER], "{} logged the client from the header", nginx.name);
    }
}

/// Two servers for one name: both take connections in turn while up; one
/// stopped is found down by the health checks, and every connection goes
/// to the other.
#[test]
fn a_name_with_several_servers_spreads_and_avoids_a_server_that_is_down() {
    require_root!();
    let mut lab = NatLab::new(2, false).unwrap();
    let mut first = tls_on(&lab, 0, "proxy-green-0");
    let _second = tls_on(&lab, 1, "proxy-green-1");
    let (h0, h1) = (host_addr(0), host_addr(1));
    lab.start_natd_with_config(&format!("[[proxy]]\nport = 443\nkind = \"tls\"\nnames = {{ \"*.green.example\" = [\"{h0}:443\", \"{h1}:443\"] }}\n")).unwrap();
    let health = |lab: &NatLab| -> Vec<String> { proxy_view(lab, 443).servers.iter().map(|s| s.health.clone()).collect() };
    let deadline = Instant::now() + Duration::from_secs(5);
    while health(&lab) != ["up", "up"] {
        assert!(Instant::now() < deadline, "{:?}", proxy_view(&lab, 443));
        thread::sleep(Duration::from_millis(50));
    }
    let answers: Vec<String> = (0..4).map(|_| who(&lab, "a.green.example", 443).unwrap()).collect();
    assert_eq!(answers.iter().filter(|a| *a == "proxy-green-0").count(), 2, "in turn: {answers:?}");

    first.stop();
    let deadline = Instant::now() + Duration::from_secs(10);
    while health(&lab) != ["down", "up"] {
        assert!(Instant::now() < deadline, "{:?}", proxy_view(&lab, 443));
        thread::sleep(Duration::from_millis(50));
    }
    for _ in 0..4 {
        assert_eq!(who(&lab, "b.green.example", 443).as_deref(), Ok("proxy-green-1"));
    }
    let view = proxy_view(&lab, 443);
    assert!(view.servers[0].last_failure.as_deref().is_some_and(|f| f.contains("refused")), "{view:?}");
    assert_eq!(view.refused, 0, "{view:?}");
}

/// A relayed connection whose server goes away is closed on the client's
/// side at once, not left to the idle timeout.
#[test]
fn a_client_learns_at_once_that_its_server_went_away() {
    require_root!();
    let mut lab = NatLab::new(1, false).unwrap();
    let mut blue = tls_on(&lab, 0, "proxy-blue");
    let h0 = host_addr(0);
    lab.start_natd_with_config(&format!("[[proxy]]\nport = 443\nkind = \"tls\"\nnames = {{ \"blue.example\" = \"{h0}:443\" }}\n")).unwrap();
    let mut stream = in_ns(&lab.server, || TcpStream::connect_timeout(&SocketAddrV4::new(EXTERNAL, 443).into(), IO_TIMEOUT)).join().unwrap().unwrap();
    stream.write_all(&client_hello(Some("blue.example"), 0, 16384)).unwrap();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !contains(&got, b"proxy-blue") {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "closed before the certificate: {got:?}");
        got.extend_from_slice(&buf[..n]);
    }
    let stopped = Instant::now();
    blue.stop();
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("{e} after {:?}, not closed", stopped.elapsed()),
        }
    }
    assert!(stopped.elapsed() < Duration::from_secs(1), "closed {:?} after the server went away", stopped.elapsed());
    // The server's close was passed on as a half-close (TCP allows the
    // client to go on sending); the client's own close ends the relay.
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(1);
    while proxy_view(&lab, 443).active > 0 {
        assert!(Instant::now() < deadline, "{:?}", proxy_view(&lab, 443));
        thread::sleep(Duration::from_millis(20));
    }
}

/// `natd reload` adds a name and a server to a running proxy; moves a
/// proxy to another port (the old port closes, a download relayed through
/// it finishes), adds one, and removes them all; a reload whose new proxy
/// cannot listen (another service holds the port) is refused whole and the
/// proxies serve as before.
#[test]
fn a_reload_adds_names_and_adds_moves_and_removes_proxies_live() {
    require_root!();
    let mut lab = NatLab::new(2, false).unwrap();
    let _servers = [tls_on(&lab, 0, "proxy-blue"), tls_on(&lab, 1, "proxy-red")];
    let (h0, h1) = (host_addr(0), host_addr(1));
    let before = format!("[[proxy]]\nport = 443\nkind = \"tls\"\nnames = {{ \"blue.example\" = \"{h0}:443\" }}\n");
    lab.start_natd_with_config(&before).unwrap();
    assert_eq!(who(&lab, "blue.example", 443).as_deref(), Ok("proxy-blue"));
    assert!(who(&lab, "red.example", 443).is_err(), "not a name yet");

    let reload = |lab: &NatLab, config: &str| {
        lab.config_file(config).unwrap();
        let out = lab.natd_cli(&["reload"]).unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
    };
    let (ok, text) = reload(&lab, &before.replace(" }", &format!(", \"red.example\" = \"{h1}:443\" }}")));
    assert!(ok && text.contains("proxy tls/443: now blue.example, red.example"), "{text}");
    assert_eq!(who(&lab, "red.example", 443).as_deref(), Ok("proxy-red"));
    assert_eq!(who(&lab, "blue.example", 443).as_deref(), Ok("proxy-blue"));
    let view = proxy_view(&lab, 443);
    assert_eq!(view.routes.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["blue.example", "red.example"]);
    assert_eq!(refused(&view, "unknown_name"), 1, "counters outlive a reload: {view:?}");

    // A 1 MiB download at 256 KiB/s through port 443 while the reload moves
    // the proxy to 8443 and adds one on 4443.
    let download = {
        let server = lab.server.command(&["curl", "-sS", "-k", "--max-time", "15", "--limit-rate", "256k", "--resolve", &format!("blue.example:443:{EXTERNAL}"), "https://blue.example/blob"]);
        std::thread::spawn(move || { let mut server = server; server.output().unwrap() })
    };
    thread::sleep(Duration::from_millis(800));
    let moved = format!(
        "[[proxy]]\nport = 8443\nkind = \"tls\"\nnames = {{ \"blue.example\" = \"{h0}:443\" }}\n[[proxy]]\nport = 4443\nkind = \"tls\"\ndefault = \"{h1}:443\"\n"
    );
    let (ok, text) = reload(&lab, &moved);
    assert!(ok && text.contains(&format!("proxy tls/443 on {EXTERNAL}:443 removed")) && text.contains(&format!("proxy tls/8443 added, listening on {EXTERNAL}:8443")), "{text}");
    assert_eq!(who(&lab, "blue.example", 8443).as_deref(), Ok("proxy-blue"));
    assert_eq!(who(&lab, "anything.example", 4443).as_deref(), Ok("proxy-red"));
    assert!(who(&lab, "blue.example", 443).is_err(), "the old port is closed");
    let blob = download.join().unwrap();
    assert!(blob.status.success() && blob.stdout == Nginx::blob_text().as_bytes(), "a relayed download outlives its proxy's removal: {} bytes, {}", blob.stdout.len(), String::from_utf8_lossy(&blob.stderr));

    // Port 9443 held by another service: the reload adding a proxy there is
    // refused, and nothing changes.
    let holder = PortHolder::take(&lab, 9443);
    let (ok, text) = reload(&lab, &format!("{moved}[[proxy]]\nport = 9443\nkind = \"tls\"\ndefault = \"{h1}:443\"\n"));
    assert!(!ok && text.contains("nothing was changed") && text.contains("cannot listen on 203.0.113.1:9443"), "{text}");
    drop(holder);
    assert_eq!(who(&lab, "blue.example", 8443).as_deref(), Ok("proxy-blue"), "as before the refused reload");
    assert_eq!(lab.proxies().unwrap().len(), 2);

    let (ok, text) = reload(&lab, "");
    assert!(ok && text.contains("proxy tls/8443 on") && text.contains("proxy tls/4443 on"), "{text}");
    assert!(lab.proxies().unwrap().is_empty());
    assert!(who(&lab, "blue.example", 8443).is_err(), "every proxy removed");
}

/// Bad proxies are explained, field and value named, before anything is
/// attached; a port another service holds stops `natd run` before it
/// attaches.
#[test]
fn bad_proxies_are_explained_before_anything_is_attached() {
    require_root!();
    let lab = NatLab::new(1, false).unwrap();
    let h0 = host_addr(0);
    let cases = [
        (format!("port = 443\nkind = \"https\"\nnames = {{ \"a.example\" = \"{h0}:80\" }}"), "proxy[0].kind = \"https\": must be \"tls\" (route by the SNI of the TLS ClientHello) or \"http\""),
        (format!("port = 25000\nkind = \"tls\"\nnames = {{ \"a.example\" = \"{h0}:443\" }}"), "proxy[0].port = 25000: is in port_range 20000-32767"),
        (format!("port = 443\nkind = \"tls\"\nnames = {{ \"a..example\" = \"{h0}:443\" }}"), "proxy[0].names.\"a..example\": name has an empty label"),
        (format!("port = 443\nkind = \"tls\"\nnames = {{ \"a.example\" = \"{SERVER}:443\" }}"), "is on the WAN side"),
        (format!("port = 8080\nkind = \"tls\"\ndefault = \"{h0}:443\"\n[[forward]]\nprotocol = \"tcp\"\nport = 8080\nto = [\"{h0}:80\"]"), "is forwarded by forward"),
    ];
    for (body, why) in cases {
        let path = lab.config_file(&format!("lan = \"lan0\"\nwan = \"wan0\"\n[[proxy]]\n{body}\n")).unwrap();
        let out = lab.natd_cli(&["check", "--config", path.to_str().unwrap()]).unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success() && stderr.contains(why), "{body}: {stderr}");
    }

    let good = format!(
        "lan = \"lan0\"\nwan = \"wan0\"\n[[proxy]]\nport = 443\nkind = \"tls\"\nnames = {{ \"*.green.example\" = [\"{h0}:443\", \"{h0}:8443\"] }}\n\
         [[proxy]]\nport = 80\nkind = \"http\"\nnames = {{ \"blue.example\" = \"{h0}\" }}\n"
    );
    let path = lab.config_file(&good).unwrap();
    let out = lab.natd_cli(&["check", "--config", path.to_str().unwrap()]).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("proxy \"tls/443\": tls on 203.0.113.1:443") && stdout.contains(&format!("*.green.example -> {h0}:443, {h0}:8443")), "{stdout}");
    assert!(stdout.contains("tcp connect every 1 s") && stdout.contains("no default"), "{stdout}");
    assert!(stdout.contains("proxy \"http/80\": http on 203.0.113.1:80") && stdout.contains(&format!("blue.example -> {h0}:80")), "{stdout}");

    let holder = PortHolder::take(&lab, 443);
    let path = lab.config_file(&format!("lan = \"lan0\"\nwan = \"wan0\"\n[[proxy]]\nport = 443\nkind = \"tls\"\ndefault = \"{h0}:443\"\n")).unwrap();
    let out = lab.natd_cli(&["run", "--config", path.to_str().unwrap()]).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success() && stderr.contains("proxy \"tls/443\": cannot listen on 203.0.113.1:443"), "{stderr}");
    assert!(!lab.xdp_attached().unwrap());
    drop(holder);
}
