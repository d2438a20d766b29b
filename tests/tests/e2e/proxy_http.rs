//! `kind = "http"` proxies end to end (issue 13, HTTP): nginx on LAN hosts,
//! each answering its own name and logging the X-Forwarded-For and
//! Forwarded it got; curl and hand-written requests from the WAN, the real
//! natd on the external address: each host reaches its server, one
//! keep-alive connection is routed per request, the servers see the
//! client's address, an unknown host gets 421 (or the default), a request
//! without Host 400; the request-head and keep-alive timeouts,
//! max_connections, PROXY protocol, and a server that is down.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddrV4, TcpStream},
    thread,
    time::{Duration, Instant},
};

use nat_tests::{
    natlab::{EXTERNAL, GW_LAN, IO_TIMEOUT, NatLab, SERVER, host_addr, in_ns},
    netns::Netns,
    require_root,
    servers::{H2Server, Nginx},
};
use nat_userspace::proxy::{ProxyServerView, ProxyView};

fn nginx_on(lab: &NatLab, i: usize, name: &str) -> Nginx {
    Nginx::start(&lab.hosts[i], SocketAddrV4::new(host_addr(i), 80), name).unwrap()
}

fn proxy_view(lab: &NatLab, port: u16) -> ProxyView {
    let views = lab.proxies().unwrap();
    views.into_iter().find(|p| p.listen.ends_with(&format!(":{port}"))).unwrap_or_else(|| panic!("no proxy on port {port} in natd proxies"))
}

/// `server`:80 as `view` shows it (None: not one of the proxy's servers).
fn server_in(view: &ProxyView, server: Ipv4Addr) -> Option<&ProxyServerView> {
    view.servers.iter().find(|s| s.server == format!("{server}:80"))
}

/// The connections natd has open now to `server`:80 for the proxy on 80.
fn server_active(lab: &NatLab, server: Ipv4Addr) -> u64 {
    server_in(&proxy_view(lab, 80), server).map_or(0, |s| s.active)
}

fn refused(view: &ProxyView, reason: &str) -> u64 {
    view.refused_by.get(reason).copied().unwrap_or_default()
}

/// curl from the WAN host to EXTERNAL:`port` with `Host: host` (and any
/// more arguments): "STATUS BODY".
fn curl(lab: &NatLab, port: u16, host: &str, more: &[&str]) -> String {
    let url = format!("http://{EXTERNAL}:{port}/");
    let host = format!("Host: {host}");
    let mut args = vec!["curl", "-sS", "--max-time", "5", "-H", &host, "-w", " %{http_code}", &url];
    args.extend_from_slice(more);
    let out = lab.server.exec(&args).unwrap();
    // The body, then " STATUS".
    let (body, status) = out.rsplit_once(' ').unwrap();
    format!("{status} {}", body.trim())
}

/// One HTTP/1.x response: its status and body (Content-Length framed, as
/// nginx's `return` and natd's own answers are).
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    status: u16,
    body: String,
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Reads one response from `stream` (with `buffered`, bytes already read).
fn read_answer(stream: &mut TcpStream, buffered: &mut Vec<u8>) -> Result<Answer, String> {
    let deadline = Instant::now() + IO_TIMEOUT;
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = find(buffered, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffered[..end]).into_owned();
            let status: u16 = head.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or(format!("no status in {head:?}"))?;
            let length: usize = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
                .ok_or(format!("no content-length in {head:?}"))?;
            if buffered.len() >= end + 4 + length {
                let body = String::from_utf8_lossy(&buffered[end + 4..end + 4 + length]).trim().to_string();
                buffered.drain(..end + 4 + length);
                return Ok(Answer { status, body });
            }
        }
        if Instant::now() > deadline {
            return Err(format!("no whole answer in {IO_TIMEOUT:?}: {:?}", String::from_utf8_lossy(buffered)));
        }
        match stream.read(&mut buf) {
            Ok(0) => return Err(format!("closed after {:?}", String::from_utf8_lossy(buffered))),
            Ok(n) => buffered.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}

/// On one connection from the WAN host to EXTERNAL:`port`: each of
/// `requests` written, then its answer read (`pipelined`: all written
/// first, then every answer read).
fn on_one_connection(ns: &Netns, port: u16, requests: Vec<String>, pipelined: bool) -> Result<Vec<Answer>, String> {
    in_ns(ns, move || {
        let mut stream = TcpStream::connect_timeout(&SocketAddrV4::new(EXTERNAL, port).into(), IO_TIMEOUT).map_err(|e| format!("connect: {e}"))?;
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let mut buffered = Vec::new();
        let mut answers = Vec::new();
        if pipelined {
            stream.write_all(requests.concat().as_bytes()).map_err(|e| format!("send: {e}"))?;
            for _ in &requests {
                answers.push(read_answer(&mut stream, &mut buffered)?);
            }
        } else {
            for request in &requests {
                stream.write_all(request.as_bytes()).map_err(|e| format!("send: {e}"))?;
                answers.push(read_answer(&mut stream, &mut buffered)?);
            }
        }
        Ok(answers)
    })
    .join()
    .unwrap()
}

fn get(host: &str) -> String {
    format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n")
}

fn answer(status: u16, body: &str) -> Answer {
    Answer { status, body: body.to_string() }
}

#[test]
fn hosts_reach_their_servers_per_request_with_the_client_in_forwarded_headers() {
    require_root!();
    let mut lab = NatLab::new(3, false).unwrap();
    let blue = nginx_on(&lab, 0, "http-blue");
    let red = nginx_on(&lab, 1, "http-red");
    let fallback = nginx_on(&lab, 2, "http-default");
    let (h0, h1, h2) = (host_addr(0), host_addr(1), host_addr(2));
    lab.start_natd_with_config(&format!(
        "log_level = \"debug\"\n\
         [[proxy]]\nport = 80\nkind = \"http\"\nnames = {{ \"blue.example\" = \"{h0}\", \"*.red.example\" = \"{h1}:80\" }}\n\
         [[proxy]]\nport = 8080\nkind = \"http\"\nnames = {{ \"blue.example\" = \"{h0}:80\" }}\ndefault = \"{h2}:80\"\n"
    ))
    .unwrap();

    assert_eq!(curl(&lab, 80, "blue.example", &[]), "200 http-blue");
    assert_eq!(curl(&lab, 80, "www.red.example", &[]), "200 http-red");
    assert_eq!(curl(&lab, 80, "BLUE.Example.:80", &[]), "200 http-blue", "case, a trailing dot and the port are ignored");
    assert_eq!(curl(&lab, 8080, "blue.example", &[]), "200 http-blue");
    assert_eq!(curl(&lab, 8080, "other.example", &[]), "200 http-default", "an unknown host goes to the default");
    let unknown = curl(&lab, 80, "other.example", &[]);
    assert!(unknown.starts_with("421 ") && unknown.contains("other.example") && unknown.len() < 100, "no default: 421, a short body: {unknown:?}");
    assert_eq!(curl(&lab, 80, "a.b.red.example", &[]).split(' ').next(), Some("421"), "a wildcard stands for one label");
    let resolve = format!("blue.example:80:{EXTERNAL}");
    let blob = lab.server.exec(&["curl", "-sS", "--max-time", "10", "--resolve", &resolve, "http://blue.example/blob"]).unwrap();
    assert!(blob == Nginx::blob_text(), "1 MiB through the proxy, {} bytes back", blob.len());

    // One keep-alive connection, a request for each host in turn: each
    // reaches its own server, never the first one's.
    let requests = vec![get("blue.example"), get("x.red.example"), get("blue.example"), get("nowhere.example"), get("x.red.example")];
    let expected = [answer(200, "http-blue"), answer(200, "http-red"), answer(200, "http-blue"), answer(421, "no site \"nowhere.example\" here"), answer(200, "http-red")];
    assert_eq!(on_one_connection(&lab.server, 80, requests.clone(), false).unwrap(), expected);
    assert_eq!(on_one_connection(&lab.server, 80, requests, true).unwrap(), expected, "pipelined, the same");

    // Without Host: HTTP/1.1 is always 400 (RFC 9112 §3.2); HTTP/1.0 goes
    // to the default, or gets 400.
    let bare_10 = || vec!["GET / HTTP/1.0\r\n\r\n".to_string()];
    let bare_11 = || vec!["GET / HTTP/1.1\r\n\r\n".to_string()];
    assert_eq!(on_one_connection(&lab.server, 80, bare_10(), false).unwrap()[0].status, 400);
    assert_eq!(on_one_connection(&lab.server, 80, bare_11(), false).unwrap()[0].status, 400);
    assert_eq!(on_one_connection(&lab.server, 8080, bare_10(), false).unwrap(), [answer(200, "http-default")]);
    assert_eq!(on_one_connection(&lab.server, 8080, bare_11(), false).unwrap()[0].status, 400);
    let twice = vec!["GET / HTTP/1.1\r\nHost: blue.example\r\nHost: red.example\r\n\r\n".to_string()];
    assert_eq!(on_one_connection(&lab.server, 80, twice, false).unwrap()[0].status, 400, "two Hosts: 400");

    // The servers see natd's connection, and the client in the headers; an
    // X-Forwarded-For the client sent is kept, the client appended.
    assert_eq!(curl(&lab, 80, "blue.example", &["-H", "X-Forwarded-For: 192.0.2.9", "-H", "Forwarded: for=192.0.2.9"]), "200 http-blue");
    let logged = blue.requests();
    assert!(logged.len() >= 6, "{logged:#?}");
    let (last, earlier) = logged.split_last().unwrap();
    for request in earlier.iter().filter(|r| r.request.starts_with("GET / ")) {
        assert_eq!(request.client, GW_LAN, "natd connects from its LAN address: {request:?}");
        assert_eq!(request.x_forwarded_for, SERVER.to_string(), "{request:?}");
        let as_received = ["blue.example", "\"BLUE.Example.:80\""].map(|host| format!("for={SERVER};host={host};proto=http"));
        assert!(as_received.contains(&request.forwarded), "RFC 7239: host as received: {request:?}");
    }
    assert_eq!(last.x_forwarded_for, format!("192.0.2.9, {SERVER}"), "{last:?}");
    assert_eq!(last.forwarded, format!("for=192.0.2.9, for={SERVER};host=blue.example;proto=http"), "{last:?}");
    assert!(red.requests().iter().all(|r| r.x_forwarded_for == SERVER.to_string() && r.host.ends_with("red.example")), "{:#?}", red.requests());
    assert!(fallback.requests().iter().all(|r| r.x_forwarded_for == SERVER.to_string()), "{:#?}", fallback.requests());

    let view = proxy_view(&lab, 80);
    assert_eq!((view.kind.as_str(), view.listen.clone()), ("http", format!("{EXTERNAL}:80")));
    // other.example, a.b.red.example, nowhere.example twice.
    assert_eq!(refused(&view, "unknown_name"), 4, "{view:?}");
    assert_eq!(refused(&view, "no_name"), 2, "{view:?}");
    assert_eq!(refused(&view, "bad_request"), 1, "{view:?}");
    let served = |server: Ipv4Addr| server_in(&view, server).map_or(0, |s| s.total);
    assert_eq!((served(h0), served(h1)), (blue.requests().len() as u64 - 1, red.requests().len() as u64), "requests, per server: {view:?}");
    let text = lab.natd_cli(&["proxies"]).unwrap();
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(text.contains("proxy \"http/80\": http on 203.0.113.1:80") && text.contains("*.red.example") && text.contains("unknown_name 4"), "{text}");
    let log = lab.natd_log();
    assert!(log.contains(&format!("proxy http/80 on {EXTERNAL}:80: refused {SERVER}:")) && log.contains("name \"other.example\" is not in names, and no default"), "{log}");
    assert!(log.contains("an HTTP/1.1 request without Host") && log.contains("a bad request: Host appears more than once"), "{log}");
    // What the README shows (`-- --nocapture`).
    eprintln!("$ natd proxies\n{text}");
}

/// Reads from `stream` until it closes: how long that took after `since`.
fn closed_after(stream: &mut TcpStream, since: Instant) -> Result<Duration, String> {
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(since.elapsed()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(since.elapsed()),
            Err(e) => return Err(format!("read: {e} after {:?}", since.elapsed())),
        }
    }
}

#[test]
fn request_heads_and_keep_alive_waits_are_timed_and_max_connections_holds() {
    require_root!();
    let mut lab = NatLab::new(1, false).unwrap();
    let _blue = nginx_on(&lab, 0, "http-blue");
    let h0 = host_addr(0);
    lab.start_natd_with_config(&format!(
        "[[proxy]]\nport = 80\nkind = \"http\"\nhello_timeout = 1\nidle_timeout = 3\nnames = {{ \"blue.example\" = \"{h0}:80\" }}\n\
         [[proxy]]\nport = 8080\nkind = \"http\"\nmax_connections = 2\nnames = {{ \"blue.example\" = \"{h0}:80\" }}\n"
    ))
    .unwrap();

    let timings = in_ns(&lab.server, || -> Result<[Duration; 3], String> {
        let connect = || TcpStream::connect_timeout(&SocketAddrV4::new(EXTERNAL, 80).into(), IO_TIMEOUT).map_err(|e| format!("connect: {e}"));
        // A head that never ends (slowloris): closed after hello_timeout.
        let mut slow = connect()?;
        let started = Instant::now();
        slow.write_all(b"GET / HTTP/1.1\r\nHost: blue.example\r\n").map_err(|e| e.to_string())?;
        let head = closed_after(&mut slow, started)?;
        // A silent client: the same.
        let mut silent = connect()?;
        let silence = closed_after(&mut silent, Instant::now())?;
        // Served, then kept open for idle_timeout, longer than the head's.
        let mut kept = connect()?;
        kept.write_all(get("blue.example").as_bytes()).map_err(|e| e.to_string())?;
        let mut buffered = Vec::new();
        let first = read_answer(&mut kept, &mut buffered)?;
        let served = Instant::now();
        if first != answer(200, "http-blue") {
            return Err(format!("{first:?}"));
        }
        thread::sleep(Duration::from_millis(2000));
        kept.write_all(get("blue.example").as_bytes()).map_err(|e| format!("after 2 s of keep-alive: {e}"))?;
        let second = read_answer(&mut kept, &mut buffered).map_err(|e| format!("after 2 s of keep-alive: {e}"))?;
        if second != answer(200, "http-blue") {
            return Err(format!("{second:?}"));
        }
        let _ = served;
        let idle = closed_after(&mut kept, Instant::now())?;
        Ok([head, silence, idle])
    })
    .join()
    .unwrap()
    .unwrap();
    let [head, silence, idle] = timings;
    assert!(head >= Duration::from_millis(900) && head < Duration::from_millis(2500), "an unfinished head closed after {head:?}");
    assert!(silence >= Duration::from_millis(900) && silence < Duration::from_millis(2500), "a silent client closed after {silence:?}");
    assert!(idle >= Duration::from_millis(2900) && idle < Duration::from_millis(4500), "an idle keep-alive connection closed after {idle:?}");
    let view = proxy_view(&lab, 80);
    assert_eq!((refused(&view, "hello_timeout"), view.active), (2, 0), "{view:?}");

    let hold: Vec<TcpStream> = (0..2)
        .map(|_| in_ns(&lab.server, || TcpStream::connect_timeout(&SocketAddrV4::new(EXTERNAL, 8080).into(), IO_TIMEOUT)).join().unwrap().unwrap())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(2);
    while proxy_view(&lab, 8080).active < 2 {
        assert!(Instant::now() < deadline, "{:?}", proxy_view(&lab, 8080));
        thread::sleep(Duration::from_millis(20));
    }
    let third = on_one_connection(&lab.server, 8080, vec![get("blue.example")], false);
    assert!(third.is_err(), "a third client is closed at once: {third:?}");
    assert_eq!(refused(&proxy_view(&lab, 8080), "max_connections"), 1);
    drop(hold);
    let deadline = Instant::now() + Duration::from_secs(2);
    while proxy_view(&lab, 8080).active > 0 {
        assert!(Instant::now() < deadline, "{:?}", proxy_view(&lab, 8080));
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(on_one_connection(&lab.server, 8080, vec![get("blue.example")], false).unwrap(), [answer(200, "http-blue")], "served again once they left");
}

#[test]
fn proxy_protocol_opens_each_server_connection_of_an_http_client() {
    require_root!();
    let mut lab = NatLab::new(2, false).unwrap();
    let (h0, h1) = (host_addr(0), host_addr(1));
    let v1 = Nginx::start_proxy_protocol(&lab.hosts[0], SocketAddrV4::new(h0, 8081), "pp-blue").unwrap();
    let v1_red = Nginx::start_proxy_protocol(&lab.hosts[1], SocketAddrV4::new(h1, 8081), "pp-red").unwrap();
    lab.start_natd_with_config(&format!(
        "[[proxy]]\nport = 80\nkind = \"http\"\nproxy_protocol = \"v1\"\nnames = {{ \"blue.example\" = \"{h0}:8081\", \"red.example\" = \"{h1}:8081\" }}\n\
         [[proxy]]\nport = 8080\nkind = \"http\"\nproxy_protocol = \"v2\"\ndefault = \"{h0}:8081\"\n"
    ))
    .unwrap();
    let requests = vec![get("blue.example"), get("red.example"), get("blue.example")];
    assert_eq!(on_one_connection(&lab.server, 80, requests, false).unwrap(), [answer(200, "pp-blue"), answer(200, "pp-red"), answer(200, "pp-blue")]);
    assert_eq!(curl(&lab, 8080, "anything.example", &[]), "200 pp-blue");
    assert_eq!(v1.clients(), [SERVER; 3], "nginx logged the client from the v1 and v2 headers");
    assert_eq!(v1_red.clients(), [SERVER]);
}

#[test]
fn a_host_with_several_servers_spreads_and_avoids_a_server_that_is_down() {
    require_root!();
    let mut lab = NatLab::new(2, false).unwrap();
    let mut first = nginx_on(&lab, 0, "green-0");
    let _second = nginx_on(&lab, 1, "green-1");
    let (h0, h1) = (host_addr(0), host_addr(1));
    lab.start_natd_with_config(&format!("[[proxy]]\nport = 80\nkind = \"http\"\nnames = {{ \"*.green.example\" = [\"{h0}:80\", \"{h1}:80\"] }}\n")).unwrap();
    let health = |lab: &NatLab| -> Vec<String> { proxy_view(lab, 80).servers.iter().map(|s| s.health.clone()).collect() };
    let deadline = Instant::now() + Duration::from_secs(5);
    while health(&lab) != ["up", "up"] {
        assert!(Instant::now() < deadline, "{:?}", proxy_view(&lab, 80));
        thread::sleep(Duration::from_millis(50));
    }
    let answers: Vec<String> = (0..4).map(|_| curl(&lab, 80, "a.green.example", &[])).collect();
    assert_eq!(answers.iter().filter(|a| *a == "200 green-0").count(), 2, "in turn: {answers:?}");

    first.stop();
    let deadline = Instant::now() + Duration::from_secs(10);
    while health(&lab) != ["down", "up"] {
        assert!(Instant::now() < deadline, "{:?}", proxy_view(&lab, 80));
        thread::sleep(Duration::from_millis(50));
    }
    for _ in 0..4 {
        assert_eq!(curl(&lab, 80, "b.green.example", &[]), "200 green-1");
    }
    assert_eq!(proxy_view(&lab, 80).refused, 0);
}

/// A keep-alive connection from the WAN host that outlives a reload: each
/// request sent on it is answered on it.
struct KeepAlive {
    requests: std::sync::mpsc::Sender<String>,
    answers: std::sync::mpsc::Receiver<Result<Answer, String>>,
}

impl KeepAlive {
    fn open(ns: &Netns, port: u16) -> Self {
        let (requests, incoming) = std::sync::mpsc::channel::<String>();
        let (answer_tx, answers) = std::sync::mpsc::channel();
        in_ns(ns, move || {
            let mut stream = match TcpStream::connect_timeout(&SocketAddrV4::new(EXTERNAL, port).into(), IO_TIMEOUT) {
                Ok(stream) => stream,
                Err(e) => return drop(answer_tx.send(Err(format!("connect: {e}")))),
            };
            stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
            let mut buffered = Vec::new();
            for request in incoming {
                let answer = stream.write_all(request.as_bytes()).map_err(|e| format!("send: {e}")).and_then(|()| read_answer(&mut stream, &mut buffered));
                if answer_tx.send(answer).is_err() {
                    break;
                }
            }
        });
        Self { requests, answers }
    }

    fn ask(&self, request: String) -> Result<Answer, String> {
        self.requests.send(request).map_err(|e| e.to_string())?;
        self.answers.recv_timeout(Duration::from_secs(10)).map_err(|e| e.to_string())?
    }
}

#[test]
fn a_reload_adds_a_host_live_even_for_an_open_keep_alive_connection() {
    require_root!();
    let mut lab = NatLab::new(2, false).unwrap();
    let _servers = [nginx_on(&lab, 0, "http-blue"), nginx_on(&lab, 1, "http-red")];
    let (h0, h1) = (host_addr(0), host_addr(1));
    let before = format!("[[proxy]]\nport = 80\nkind = \"http\"\nnames = {{ \"blue.example\" = \"{h0}:80\" }}\n");
    lab.start_natd_with_config(&before).unwrap();
    let open = KeepAlive::open(&lab.server, 80);
    assert_eq!(open.ask(get("blue.example")), Ok(answer(200, "http-blue")));
    assert_eq!(open.ask(get("red.example")).map(|a| a.status), Ok(421), "not a host yet");

    lab.config_file(&before.replace(" }", &format!(", \"red.example\" = \"{h1}:80\" }}"))).unwrap();
    let out = lab.natd_cli(&["reload"]).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success() && stdout.contains("proxy http/80: now blue.example, red.example"), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(open.ask(get("red.example")), Ok(answer(200, "http-red")), "the next request on the same connection takes the new names");
    assert_eq!(open.ask(get("blue.example")), Ok(answer(200, "http-blue")));
    assert_eq!(curl(&lab, 80, "red.example", &[]), "200 http-red");
    assert_eq!(refused(&proxy_view(&lab, 80), "unknown_name"), 1, "counters outlive a reload");
}

/// A hand-written server on `addr` in `ns`, for its test's bounded time,
/// that takes WebSocket upgrades and keeps a connection for one request:
/// to a request that asks for `websocket` it answers 101 (the key's
/// Sec-WebSocket-Accept, but another key's to /wrong-accept; subprotocol
/// "chat"), then answers each line with "NAME: LINE"; to any other, 200 with "NAME
/// upgrade=UPGRADE" (the Upgrade it got, or "none"), the connection kept
/// open, and it closes it without an answer when the next request comes
/// (a server whose keep-alive ran out as the request went). Each request
/// head it got is kept, lowercased.
struct HandServer {
    heads: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl HandServer {
    /// How long it serves at most, and a tunnel at most.
    const LIFETIME: Duration = Duration::from_secs(60);

    fn start(ns: &Netns, addr: SocketAddrV4, name: &'static str) -> Self {
        use std::sync::{Arc, Mutex, atomic::{AtomicBool, Ordering}};
        let heads = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let listener = in_ns(ns, move || std::net::TcpListener::bind(addr)).join().unwrap().unwrap();
        listener.set_nonblocking(true).unwrap();
        let (kept, stopped) = (Arc::clone(&heads), Arc::clone(&stop));
        thread::spawn(move || {
            let until = Instant::now() + Self::LIFETIME;
            while Instant::now() < until && !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let kept = Arc::clone(&kept);
                        thread::spawn(move || Self::serve(stream, name, &kept, until));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Self { heads, stop }
    }

    fn serve(mut stream: TcpStream, name: &str, heads: &std::sync::Mutex<Vec<String>>, until: Instant) {
        stream.set_nonblocking(false).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buffered = Vec::new();
        let mut buf = [0u8; 4096];
        let Ok(raw_head) = read_raw_head(&mut stream, &mut buffered) else { return };
        let head = raw_head.to_ascii_lowercase();
        heads.lock().unwrap().push(head.clone());
        let upgrade = head.lines().find_map(|l| l.strip_prefix("upgrade:")).map(|v| v.trim().to_string());
        if upgrade.as_deref() != Some("websocket") {
            let body = format!("{name} upgrade={}", upgrade.as_deref().unwrap_or("none"));
            if stream.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len()).as_bytes()).is_ok()
                && let Ok(next) = read_head(&mut stream, &mut buffered)
            {
                heads.lock().unwrap().push(next);
            }
            return;
        }
        // RFC 6455 §4.2.2, from the key as sent (base64 is case-sensitive);
        // to /wrong-accept, another key's.
        let key = raw_head.lines().find_map(|l| l.split_once(':').filter(|(n, _)| n.eq_ignore_ascii_case("sec-websocket-key")).map(|(_, v)| v.trim().to_string()));
        let key = if head.starts_with("get /wrong-accept ") { "not the key".to_string() } else { key.unwrap_or_default() };
        let accepted = format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\nSec-WebSocket-Protocol: chat\r\n\r\n", websocket_accept(&key));
        if stream.write_all(accepted.as_bytes()).is_err() {
            return;
        }
        while Instant::now() < until {
            while let Some(end) = buffered.iter().position(|&b| b == b'\n') {
                let line = String::from_utf8_lossy(&buffered[..end]).into_owned();
                buffered.drain(..=end);
                if stream.write_all(format!("{name}: {line}\n").as_bytes()).is_err() {
                    return;
                }
            }
            match stream.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => buffered.extend_from_slice(&buf[..n]),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(_) => return,
            }
        }
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

impl Drop for HandServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A WebSocket opening handshake (RFC 6455 §4.1) for `host`.
fn websocket_upgrade(host: &str) -> String {
    format!(
        "GET /chat HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// A connection from the WAN host through the proxy on `port`, upgraded:
/// the 101's head (lowercased), and the stream with what came after it.
fn upgraded(port: u16, host: &str) -> Result<(String, TcpStream, Vec<u8>), String> {
    let mut stream = TcpStream::connect_timeout(&SocketAddrV4::new(EXTERNAL, port).into(), IO_TIMEOUT).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.write_all(websocket_upgrade(host).as_bytes()).map_err(|e| format!("send: {e}"))?;
    let mut buffered = Vec::new();
    let head = read_head(&mut stream, &mut buffered).map_err(|e| format!("no answer to the upgrade: {e}"))?;
    Ok((head, stream, buffered))
}

/// `Sec-WebSocket-Accept` for `key` (RFC 6455 §4.2.2), as a server makes it.
fn websocket_accept(key: &str) -> String {
    use base64::Engine as _;
    use sha1::Digest as _;
    let digest = sha1::Sha1::new().chain_update(key.as_bytes()).chain_update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").finalize();
    base64::engine::general_purpose::STANDARD.encode(digest)
}

/// Reads a request's or response's head from `stream`, lowercased; what
/// came after it stays in `buffered`.
fn read_head(stream: &mut TcpStream, buffered: &mut Vec<u8>) -> Result<String, String> {
    read_raw_head(stream, buffered).map(|head| head.to_ascii_lowercase())
}

/// `read_head`, as it came.
fn read_raw_head(stream: &mut TcpStream, buffered: &mut Vec<u8>) -> Result<String, String> {
    let mut buf = [0u8; 4096];
    let end = loop {
        if let Some(end) = find(buffered, b"\r\n\r\n") {
            break end;
        }
        match stream.read(&mut buf) {
            Ok(n) if n > 0 => buffered.extend_from_slice(&buf[..n]),
            other => return Err(format!("{other:?} after {:?}", String::from_utf8_lossy(buffered))),
        }
    };
    let head = String::from_utf8_lossy(&buffered[..end]).into_owned();
    buffered.drain(..end + 4);
    Ok(head)
}

/// Writes `line` into a tunnel and reads the line that comes back.
fn exchange(stream: &mut TcpStream, buffered: &mut Vec<u8>, line: &str) -> Result<String, String> {
    stream.write_all(format!("{line}\n").as_bytes()).map_err(|e| format!("send {line:?}: {e}"))?;
    let mut buf = [0u8; 1024];
    loop {
        if let Some(end) = buffered.iter().position(|&b| b == b'\n') {
            let back = String::from_utf8_lossy(&buffered[..end]).into_owned();
            buffered.drain(..=end);
            return Ok(back);
        }
        match stream.read(&mut buf) {
            Ok(n) if n > 0 => buffered.extend_from_slice(&buf[..n]),
            other => return Err(format!("no answer to {line:?}: {other:?}")),
        }
    }
}

#[test]
fn websocket_upgrades_become_tunnels_to_the_hosts_server_and_h2c_is_not_passed_on() {
    require_root!();
    let mut lab = NatLab::new(2, false).unwrap();
    let (h0, h1) = (host_addr(0), host_addr(1));
    let blue = HandServer::start(&lab.hosts[0], SocketAddrV4::new(h0, 80), "ws-blue");
    let red = HandServer::start(&lab.hosts[1], SocketAddrV4::new(h1, 80), "ws-red");
    lab.start_natd_with_config(&format!(
        "[[proxy]]\nport = 80\nkind = \"http\"\nhello_timeout = 1\nidle_timeout = 3\nnames = {{ \"blue.example\" = \"{h0}:80\", \"red.example\" = \"{h1}:80\" }}\n"
    ))
    .unwrap();

    // Each host's upgrade reaches its own server, and the tunnel carries
    // lines both ways for longer than hello_timeout: a tunnel's bytes are
    // never taken for a request head.
    let (blue_tunnel, red_tunnel) = in_ns(&lab.server, || -> Result<_, String> {
        let (head, mut stream, mut buffered) = upgraded(80, "blue.example")?;
        let mut said = vec![head];
        for (i, pause) in [0, 700, 700].into_iter().enumerate() {
            thread::sleep(Duration::from_millis(pause));
            said.push(exchange(&mut stream, &mut buffered, &format!("hello {i}"))?);
        }
        let (red_head, mut red_stream, mut red_buffered) = upgraded(80, "red.example")?;
        let red = vec![red_head, exchange(&mut red_stream, &mut red_buffered, "hi")?];
        Ok(((said, stream), red))
    })
    .join()
    .unwrap()
    .unwrap();
    let ((said, blue_stream), red_said) = (blue_tunnel, red_tunnel);
    assert!(said[0].starts_with("http/1.1 101") && said[0].contains("upgrade: websocket") && said[0].contains("connection: upgrade"), "the 101 with its Upgrade: {:?}", said[0]);
    assert_eq!(&said[1..], ["ws-blue: hello 0", "ws-blue: hello 1", "ws-blue: hello 2"]);
    assert!(red_said[0].starts_with("http/1.1 101"), "{red_said:?}");
    assert_eq!(red_said[1], "ws-red: hi");
    let head = &blue.heads()[0];
    assert!(head.contains("\r\nupgrade: websocket") && head.contains("\r\nconnection: upgrade") && head.contains("sec-websocket-key: dghlihnhbxbszsbub25jzq=="), "the server gets the upgrade as asked: {head}");
    assert!(head.contains(&format!("x-forwarded-for: {SERVER}")), "and the client's address: {head}");

    // The open tunnel is a connection of the client's and of the server's.
    let view = proxy_view(&lab, 80);
    assert_eq!((view.active, server_in(&view, h0).map_or(0, |s| s.active)), (1, 1), "{view:?}");

    // A silent tunnel is closed after idle_timeout; and the counts go.
    let mut blue_stream = blue_stream;
    let silence = closed_after(&mut blue_stream, Instant::now()).unwrap();
    assert!(silence >= Duration::from_millis(2500) && silence < Duration::from_millis(4500), "a silent tunnel closed after {silence:?}");
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let view = proxy_view(&lab, 80);
        let active = |server| server_in(&view, server).map_or(0, |s| s.active);
        if (view.active, active(h0), active(h1)) == (0, 0, 0) {
            break;
        }
        assert!(Instant::now() < deadline, "tunnels closed, nothing active: {view:?}");
        thread::sleep(Duration::from_millis(20));
    }

    // h2c is not passed on: the request is served as plain HTTP/1.1.
    let h2c = "GET / HTTP/1.1\r\nHost: blue.example\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n";
    assert_eq!(on_one_connection(&lab.server, 80, vec![h2c.to_string()], false).unwrap(), [answer(200, "ws-blue upgrade=none")]);
    drop(red);
}

#[test]
fn a_request_the_server_closes_a_reused_connection_under_goes_again_on_a_new_one_when_that_is_safe() {
    require_root!();
    let mut lab = NatLab::new(1, false).unwrap();
    let h0 = host_addr(0);
    let blue = HandServer::start(&lab.hosts[0], SocketAddrV4::new(h0, 80), "blue");
    lab.start_natd_with_config(&format!("[[proxy]]\nport = 80\nkind = \"http\"\nnames = {{ \"blue.example\" = \"{h0}:80\" }}\n")).unwrap();

    // The server keeps each connection for one request. The second GET
    // goes on the connection the first left open, which the server closes
    // under it: sent again on a new connection, it is answered. A POST
    // with a body is not sent again (it may have been acted on): 502.
    let post = "POST /form HTTP/1.1\r\nHost: blue.example\r\nContent-Length: 1\r\n\r\nx".to_string();
    let answers = on_one_connection(&lab.server, 80, vec![get("blue.example"), get("blue.example"), post], false).unwrap();
    assert_eq!(&answers[..2], [answer(200, "blue upgrade=none"), answer(200, "blue upgrade=none")]);
    assert_eq!(answers[2].status, 502, "{answers:?}");
    let heads: Vec<String> = blue.heads().iter().map(|h| h.lines().next().unwrap_or_default().to_string()).collect();
    assert_eq!(heads, ["get / http/1.1", "get / http/1.1", "get / http/1.1", "post /form http/1.1"], "the second GET twice, the POST once");
    let view = proxy_view(&lab, 80);
    assert_eq!(refused(&view, "server_failed"), 1, "{view:?}");
    assert_eq!(view.servers[0].total, 4, "each try is a request the server got: {view:?}");
}

/// An HTTP/2 frame's header (RFC 9113 §4.1) and payload.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut frame = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    frame.extend_from_slice(&[kind, flags]);
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// A GET for `target` ("host" for its `/`, or "host/path") as an HPACK
/// block of literal fields, not indexed and not Huffman-coded (RFC 7541
/// §6.2.2): the simplest valid one. It takes trailers (`te: trailers`).
fn h2_get(target: &str) -> Vec<u8> {
    let (authority, path) = match target.find('/') {
        Some(at) => (&target[..at], &target[at..]),
        None => (target, "/"),
    };
    hpack_literals(&[(":method", "GET"), (":scheme", "http"), (":path", path), (":authority", authority), ("te", "trailers")])
}

/// A header block of literal fields, not indexed and not Huffman-coded
/// (RFC 7541 §6.2.2), each name and value shorter than 127 bytes.
fn hpack_literals(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in fields {
        block.push(0x00);
        block.push(name.len() as u8);
        block.extend_from_slice(name.as_bytes());
        block.push(value.len() as u8);
        block.extend_from_slice(value.as_bytes());
    }
    block
}

/// Opens one HTTP/2 connection with prior knowledge to EXTERNAL:`port` and
/// sends a GET for each of `authorities` (`h2_get`'s targets) at once, as
/// concurrent streams 1, 3, 5...: each stream's body, and whether its
/// status was 200 (HPACK static index 8, how a server encodes it). The
/// rest of the server's headers are not decoded. `trailed` gets, for each
/// stream, whether a HEADERS frame came after its DATA (trailers).
fn h2_gets(port: u16, authorities: &[&str]) -> Result<Vec<(bool, String)>, String> {
    h2_gets_trailed(port, authorities).map(|answers| answers.into_iter().map(|(ok, body, _)| (ok, body)).collect())
}

fn h2_gets_trailed(port: u16, authorities: &[&str]) -> Result<Vec<(bool, String, bool)>, String> {
    use H2Client as F;
    const DATA: u8 = F::DATA;
    const HEADERS: u8 = F::HEADERS;
    const SETTINGS: u8 = F::SETTINGS;
    const GOAWAY: u8 = F::GOAWAY;
    const END_STREAM: u8 = F::END_STREAM;
    let mut stream = TcpStream::connect_timeout(&SocketAddrV4::new(EXTERNAL, port).into(), IO_TIMEOUT).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(h2_frame(SETTINGS, 0, 0, &[]));
    for (i, authority) in authorities.iter().enumerate() {
        out.extend(h2_frame(HEADERS, END_STREAM | 0x4, 2 * i as u32 + 1, &h2_get(authority)));
    }
    stream.write_all(&out).map_err(|e| format!("send: {e}"))?;
    let mut answers = vec![(false, String::new(), false); authorities.len()];
    let mut ended = vec![false; authorities.len()];
    let mut buffered = Vec::new();
    let mut buf = [0u8; 16384];
    let deadline = Instant::now() + IO_TIMEOUT;
    while ended.iter().any(|e| !e) {
        if Instant::now() > deadline {
            return Err(format!("streams not ended in {IO_TIMEOUT:?}: {answers:?}"));
        }
        if buffered.len() >= 9 {
            let length = u32::from_be_bytes([0, buffered[0], buffered[1], buffered[2]]) as usize;
            if buffered.len() >= 9 + length {
                let (kind, flags) = (buffered[3], buffered[4]);
                let id = u32::from_be_bytes([buffered[5], buffered[6], buffered[7], buffered[8]]) & 0x7fff_ffff;
                let payload = buffered[9..9 + length].to_vec();
                buffered.drain(..9 + length);
                let index = (id as usize).wrapping_sub(1) / 2;
                match kind {
                    SETTINGS if flags & 0x1 == 0 => stream.write_all(&h2_frame(SETTINGS, 0x1, 0, &[])).map_err(|e| format!("settings ack: {e}"))?,
                    GOAWAY => return Err(format!("GOAWAY {payload:?} after {answers:?}")),
                    HEADERS if id % 2 == 1 && index < answers.len() && !answers[index].1.is_empty() => answers[index].2 = true,
                    HEADERS if id % 2 == 1 && index < answers.len() => answers[index].0 = payload.first() == Some(&0x88),
                    DATA if id % 2 == 1 && index < answers.len() => answers[index].1.push_str(&String::from_utf8_lossy(&payload)),
                    _ => {}
                }
                if matches!(kind, HEADERS | DATA) && flags & END_STREAM != 0 && id % 2 == 1 && index < ended.len() {
                    ended[index] = true;
                }
                continue;
            }
        }
        match stream.read(&mut buf) {
            Ok(n) if n > 0 => buffered.extend_from_slice(&buf[..n]),
            other => return Err(format!("read: {other:?} after {answers:?}")),
        }
    }
    Ok(answers.into_iter().map(|(ok, body, trailed)| (ok, body.trim().to_string(), trailed)).collect())
}

#[test]
fn http2_clients_with_prior_knowledge_have_each_stream_routed_by_its_authority() {
    require_root!();
    let mut lab = NatLab::new(2, false).unwrap();
    let blue = nginx_on(&lab, 0, "http-blue");
    let red = nginx_on(&lab, 1, "http-red");
    let (h0, h1) = (host_addr(0), host_addr(1));
    lab.start_natd_with_config(&format!("[[proxy]]\nport = 80\nkind = \"http\"\nnames = {{ \"blue.example\" = \"{h0}:80\", \"red.example\" = \"{h1}:80\" }}\n")).unwrap();

    // curl, HTTP/2 from its first byte.
    let resolve = format!("blue.example:80:{EXTERNAL}");
    let out = lab.server.exec(&["curl", "-sS", "--max-time", "5", "--http2-prior-knowledge", "--resolve", &resolve, "-w", " %{http_version}", "http://blue.example/"]).unwrap();
    assert_eq!(out.split_whitespace().collect::<Vec<_>>(), ["http-blue", "2"], "served in HTTP/2, by blue's server");

    // Concurrent streams of one connection, each to its own host's server;
    // an unknown one gets natd's 421 on its stream, the others go on.
    let answers = in_ns(&lab.server, || h2_gets(80, &["blue.example", "red.example", "blue.example", "nowhere.example"])).join().unwrap().unwrap();
    assert_eq!(answers[..3], [(true, "http-blue".to_string()), (true, "http-red".to_string()), (true, "http-blue".to_string())]);
    assert_eq!((answers[3].0, answers[3].1.as_str()), (false, "no site \"nowhere.example\" here"));

    // The servers get HTTP/1.1 with Host and the client's address.
    for request in blue.requests().iter().chain(red.requests().iter()) {
        assert!(request.request.ends_with("HTTP/1.1") && request.x_forwarded_for == SERVER.to_string(), "{request:?}");
    }
    assert_eq!(blue.requests().len(), 3, "{:#?}", blue.requests());
    assert!(red.requests().iter().all(|r| r.host == "red.example"), "{:#?}", red.requests());
    assert_eq!(refused(&proxy_view(&lab, 80), "unknown_name"), 1);
}

#[test]
fn servers_can_be_spoken_to_in_http2_for_every_stream_of_a_client() {
    require_root!();
    let mut lab = NatLab::new(2, false).unwrap();
    let (h0, h1) = (host_addr(0), host_addr(1));
    let blue = Nginx::start_http2(&lab.hosts[0], SocketAddrV4::new(h0, 80), "h2-blue").unwrap();
    let red = Nginx::start_http2(&lab.hosts[1], SocketAddrV4::new(h1, 80), "h2-red").unwrap();
    lab.start_natd_with_config(&format!(
        "[[proxy]]\nport = 80\nkind = \"http\"\nserver_protocol = \"http2\"\nnames = {{ \"blue.example\" = \"{h0}:80\", \"red.example\" = \"{h1}:80\" }}\n"
    ))
    .unwrap();

    // An HTTP/1.1 client, and HTTP/2 ones, all reach servers that speak
    // nothing but HTTP/2.
    assert_eq!(curl(&lab, 80, "blue.example", &[]), "200 h2-blue");
    assert_eq!(on_one_connection(&lab.server, 80, vec![get("red.example"), get("blue.example")], false).unwrap(), [answer(200, "h2-red"), answer(200, "h2-blue")]);
    let answers = in_ns(&lab.server, || h2_gets(80, &["blue.example", "red.example", "blue.example", "red.example"])).join().unwrap().unwrap();
    assert_eq!(answers, [(true, "h2-blue".to_string()), (true, "h2-red".to_string()), (true, "h2-blue".to_string()), (true, "h2-red".to_string())]);
    // The server's trailers come through to an HTTP/2 client (gRPC's
    // status travels in them): natd passes the client's `te: trailers`.
    let trailed = in_ns(&lab.server, || h2_gets_trailed(80, &["blue.example/trailer"])).join().unwrap().unwrap();
    assert_eq!(trailed, [(true, "trailed".to_string(), true)], "200, the body, then trailers");
    // A WebSocket upgrade cannot pass to an HTTP/2 server: it goes as a
    // plain request, which nginx answers (it has no /chat: 404), not 101.
    assert_eq!(on_one_connection(&lab.server, 80, vec![websocket_upgrade("blue.example")], false).unwrap()[0].status, 404);

    for request in blue.requests().iter().chain(red.requests().iter()) {
        assert!(request.request.ends_with("HTTP/2.0") && request.x_forwarded_for == SERVER.to_string(), "{request:?}");
    }
    assert_eq!((blue.requests().len(), red.requests().len()), (6, 3));
    assert!(red.requests().iter().all(|r| r.host == "red.example"), "{:#?}", red.requests());
    let text = lab.natd_cli(&["proxies"]).unwrap();
    assert!(String::from_utf8_lossy(&text.stdout).contains("servers spoken to in HTTP/2"), "{}", String::from_utf8_lossy(&text.stdout));
}

/// A hand-driven HTTP/2 client with prior knowledge (RFC 9113), for what
/// curl does not send: the extended CONNECT of RFC 8441.
struct H2Client {
    stream: TcpStream,
    buffered: Vec<u8>,
    /// The server's SETTINGS, as (identifier, value).
    settings: Vec<(u16, u32)>,
    /// Frames read while another stream's were awaited, in order.
    pending: Vec<(u8, u8, u32, Vec<u8>)>,
}

impl H2Client {
    const DATA: u8 = 0;
    const HEADERS: u8 = 1;
    const RST_STREAM: u8 = 3;
    const SETTINGS: u8 = 4;
    const GOAWAY: u8 = 7;
    const END_STREAM: u8 = 0x1;
    const END_HEADERS: u8 = 0x4;

    /// Connects to EXTERNAL:`port` and exchanges SETTINGS.
    fn open(port: u16) -> Result<Self, String> {
        let stream = TcpStream::connect_timeout(&SocketAddrV4::new(EXTERNAL, port).into(), IO_TIMEOUT).map_err(|e| format!("connect: {e}"))?;
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let mut client = Self { stream, buffered: Vec::new(), settings: Vec::new(), pending: Vec::new() };
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        hello.extend(h2_frame(Self::SETTINGS, 0, 0, &[]));
        client.send(&hello)?;
        loop {
            let (kind, flags, _, payload) = client.frame()?;
            if kind == Self::SETTINGS && flags & 0x1 == 0 {
                client.settings = payload.chunks_exact(6).map(|c| (u16::from_be_bytes([c[0], c[1]]), u32::from_be_bytes([c[2], c[3], c[4], c[5]]))).collect();
                return Ok(client);
            }
        }
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.stream.write_all(bytes).map_err(|e| format!("send: {e}"))
    }

    /// A request's header block (`hpack_literals`), END_STREAM unless it
    /// opens a tunnel.
    fn request(&mut self, id: u32, fields: &[(&str, &str)], end_stream: bool) -> Result<(), String> {
        let flags = Self::END_HEADERS | if end_stream { Self::END_STREAM } else { 0 };
        self.send(&h2_frame(Self::HEADERS, flags, id, &hpack_literals(fields)))
    }

    /// The next frame: (type, flags, stream, payload); SETTINGS acked on the way.
    fn frame(&mut self) -> Result<(u8, u8, u32, Vec<u8>), String> {
        let mut buf = [0u8; 16384];
        loop {
            if self.buffered.len() >= 9 {
                let length = u32::from_be_bytes([0, self.buffered[0], self.buffered[1], self.buffered[2]]) as usize;
                if self.buffered.len() >= 9 + length {
                    let (kind, flags) = (self.buffered[3], self.buffered[4]);
                    let id = u32::from_be_bytes([self.buffered[5], self.buffered[6], self.buffered[7], self.buffered[8]]) & 0x7fff_ffff;
                    let payload = self.buffered[9..9 + length].to_vec();
                    self.buffered.drain(..9 + length);
                    if kind == Self::SETTINGS && flags & 0x1 == 0 {
                        self.send(&h2_frame(Self::SETTINGS, 0x1, 0, &[]))?;
                    }
                    if kind == Self::GOAWAY {
                        return Err(format!("GOAWAY {payload:?}"));
                    }
                    return Ok((kind, flags, id, payload));
                }
            }
            match self.stream.read(&mut buf) {
                Ok(n) if n > 0 => self.buffered.extend_from_slice(&buf[..n]),
                other => return Err(format!("read: {other:?}")),
            }
        }
    }

    /// Stream `id`'s next frame; other streams' are kept for later.
    fn frame_of(&mut self, id: u32) -> Result<(u8, u8, u32, Vec<u8>), String> {
        if let Some(at) = self.pending.iter().position(|f| f.2 == id) {
            return Ok(self.pending.remove(at));
        }
        loop {
            let frame = self.frame()?;
            if frame.2 == id {
                return Ok(frame);
            }
            if frame.2 != 0 {
                self.pending.push(frame);
            }
        }
    }

    /// Stream `id`'s response head: whether it is 200 (HPACK static index
    /// 8), and whether it ended the stream. A reset of `id` is an Err.
    fn response(&mut self, id: u32) -> Result<(bool, bool), String> {
        let deadline = Instant::now() + IO_TIMEOUT;
        while Instant::now() < deadline {
            match self.frame_of(id)? {
                (Self::HEADERS, flags, got, block) if got == id => return Ok((block.first() == Some(&0x88), flags & Self::END_STREAM != 0)),
                (Self::RST_STREAM, _, got, code) if got == id => return Err(format!("stream {id} reset: {code:?}")),
                _ => {}
            }
        }
        Err(format!("no response on stream {id}"))
    }

    /// Stream `id`'s DATA until `until` says it is enough or the stream
    /// ends: the bytes, and whether it ended.
    fn data(&mut self, id: u32, until: impl Fn(&[u8]) -> bool) -> Result<(Vec<u8>, bool), String> {
        let mut got = Vec::new();
        let deadline = Instant::now() + IO_TIMEOUT;
        while Instant::now() < deadline {
            match self.frame_of(id)? {
                (Self::DATA, flags, stream, payload) if stream == id => {
                    got.extend_from_slice(&payload);
                    if flags & Self::END_STREAM != 0 {
                        return Ok((got, true));
                    }
                    if until(&got) {
                        return Ok((got, false));
                    }
                }
                (Self::RST_STREAM, _, stream, code) if stream == id => return Err(format!("stream {id} reset: {code:?} after {got:?}")),
                _ => {}
            }
        }
        Err(format!("stream {id}: {got:?} in {IO_TIMEOUT:?}"))
    }

    /// Writes `line` on stream `id`'s tunnel and reads the line back.
    fn exchange(&mut self, id: u32, line: &str) -> Result<String, String> {
        self.send(&h2_frame(Self::DATA, 0, id, format!("{line}\n").as_bytes()))?;
        let (back, _) = self.data(id, |got| got.ends_with(b"\n"))?;
        Ok(String::from_utf8_lossy(&back).trim_end().to_string())
    }
}

/// An extended CONNECT for a WebSocket (RFC 8441 §5) to `authority`.
fn websocket_connect<'a>(authority: &'a str, path: &'a str, protocol: &'a str) -> [(&'a str, &'a str); 6] {
    [(":method", "CONNECT"), (":protocol", protocol), (":scheme", "http"), (":path", path), (":authority", authority), ("sec-websocket-version", "13")]
}

#[test]
fn websockets_over_http2_reach_http1_servers_as_their_opening_handshake() {
    require_root!();
    let mut lab = NatLab::new(2, false).unwrap();
    let (h0, h1) = (host_addr(0), host_addr(1));
    let blue = HandServer::start(&lab.hosts[0], SocketAddrV4::new(h0, 80), "ws-blue");
    let red = HandServer::start(&lab.hosts[1], SocketAddrV4::new(h1, 80), "ws-red");
    let config = format!(
        "[[proxy]]\nport = 80\nkind = \"http\"\nhello_timeout = 1\nidle_timeout = 5\nnames = {{ \"blue.example\" = \"{h0}:80\", \"red.example\" = \"{h1}:80\" }}\n"
    );
    lab.start_natd_with_config(&config).unwrap();

    let (mut client, settings) = in_ns(&lab.server, || -> Result<_, String> {
        let mut client = H2Client::open(80).map_err(|e| format!("open: {e}"))?;
        let settings = client.settings.clone();
        // Two WebSockets on one connection, one to each host.
        client.request(1, &websocket_connect("blue.example", "/chat", "websocket"), false)?;
        client.request(3, &websocket_connect("red.example", "/chat", "websocket"), false)?;
        let opened = (client.response(1).map_err(|e| format!("response 1: {e}"))?, client.response(3).map_err(|e| format!("response 3: {e}"))?);
        assert_eq!(opened, ((true, false), (true, false)), "200 on both streams, left open");
        let mut said = Vec::new();
        for (i, pause) in [0, 1300].into_iter().enumerate() {
            // Longer than hello_timeout: a tunnel's bytes are no request head.
            thread::sleep(Duration::from_millis(pause));
            said.push(client.exchange(1, &format!("hello {i}")).map_err(|e| format!("hello {i}: {e}"))?);
        }
        said.push(client.exchange(3, "hi").map_err(|e| format!("hi: {e}"))?);
        assert_eq!(said, ["ws-blue: hello 0", "ws-blue: hello 1", "ws-red: hi"]);
        Ok((client, settings))
    })
    .join()
    .unwrap()
    .unwrap_or_else(|e| panic!("{e}\n{}\n{:?}", lab.natd_log(), blue.heads()));
    assert!(settings.contains(&(0x8, 1)), "natd offers the extended CONNECT (SETTINGS_ENABLE_CONNECT_PROTOCOL): {settings:?}");
    let head = &blue.heads()[0];
    assert!(head.starts_with("get /chat http/1.1\r\n"), "the CONNECT reaches the server as a GET: {head}");
    for field in ["\r\nhost: blue.example", "\r\nupgrade: websocket", "\r\nconnection: upgrade", "\r\nsec-websocket-version: 13", &format!("\r\nx-forwarded-for: {SERVER}")] {
        assert!(head.contains(field), "{field:?} in {head}");
    }
    let key = head.lines().find_map(|l| l.strip_prefix("sec-websocket-key: ")).unwrap_or_default();
    assert_eq!(key.len(), 24, "a key of 16 bytes, base64: {head}");
    assert_eq!((server_active(&lab, h0), server_active(&lab, h1)), (1, 1), "each tunnel is its server's connection");

    // natd checks the server's accept; another protocol is not carried.
    // The connection serves its other streams on.
    let mut client = in_ns(&lab.server, move || -> Result<_, String> {
        client.request(5, &websocket_connect("blue.example", "/wrong-accept", "websocket"), false)?;
        let (ok, ended) = client.response(5)?;
        let (body, _) = if ended { (Vec::new(), true) } else { client.data(5, |_| false)? };
        assert!(!ok && String::from_utf8_lossy(&body).contains("did not answer"), "a wrong Sec-WebSocket-Accept is a 502: {:?}", String::from_utf8_lossy(&body));
        client.request(7, &websocket_connect("blue.example", "/", "connect-udp"), false)?;
        let (ok, _) = client.response(7)?;
        let (body, _) = client.data(7, |_| false)?;
        assert!(!ok && String::from_utf8_lossy(&body).contains("\"connect-udp\" is not carried"), "{:?}", String::from_utf8_lossy(&body));
        assert_eq!(client.exchange(1, "still there")?, "ws-blue: still there");
        Ok(client)
    })
    .join()
    .unwrap()
    .unwrap();

    // The client ending its stream ends the server's connection, and the
    // server's end ends the stream; the HTTP/2 connection goes on.
    let (rest, ended, mut client) = in_ns(&lab.server, move || -> Result<_, String> {
        client.send(&h2_frame(H2Client::DATA, H2Client::END_STREAM, 3, &[]))?;
        let (rest, ended) = client.data(3, |_| false)?;
        Ok((rest, ended, client))
    })
    .join()
    .unwrap()
    .unwrap();
    assert!(rest.is_empty() && ended, "the stream ended with the server's close: {rest:?}");
    let deadline = Instant::now() + Duration::from_secs(2);
    while server_active(&lab, h1) != 0 {
        assert!(Instant::now() < deadline, "red's tunnel is no longer counted: {:?}", proxy_view(&lab, 80));
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(server_active(&lab, h0), 1, "blue's tunnel still open");
    let (ok, body, client) = in_ns(&lab.server, move || -> Result<_, String> {
        client.send(&h2_frame(H2Client::HEADERS, H2Client::END_HEADERS | H2Client::END_STREAM, 9, &h2_get("red.example")))?;
        let (ok, _) = client.response(9)?;
        let (body, _) = client.data(9, |_| false)?;
        Ok((ok, String::from_utf8_lossy(&body).into_owned(), client))
    })
    .join()
    .unwrap()
    .unwrap();
    assert!(ok && body.trim() == "ws-red upgrade=none", "the next request on the connection: {ok} {body:?}");

    // A reload that has the servers spoken to in HTTP/2: the connection
    // offered the extended CONNECT before it, natd can no longer carry it.
    lab.config_file(&format!("{config}server_protocol = \"http2\"\n")).unwrap();
    let out = lab.natd_cli(&["reload"]).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (ok, body) = in_ns(&lab.server, move || -> Result<_, String> {
        let mut client = client;
        client.request(11, &websocket_connect("blue.example", "/chat", "websocket"), false)?;
        let (ok, _) = client.response(11)?;
        let (body, _) = client.data(11, |_| false)?;
        Ok((ok, String::from_utf8_lossy(&body).into_owned()))
    })
    .join()
    .unwrap()
    .unwrap();
    // These HTTP/1.1 servers, spoken to in HTTP/2 now, offer no extended
    // CONNECT: 501, not a CONNECT they cannot take.
    assert!(!ok && body.contains("which does not offer the extended CONNECT"), "501 after the reload: {body:?}");
    drop((blue, red));
}

#[test]
fn websockets_over_http2_pass_to_http2_servers_that_offer_them() {
    require_root!();
    let mut lab = NatLab::new(2, false).unwrap();
    let (h0, h1) = (host_addr(0), host_addr(1));
    let blue = H2Server::start(&lab.hosts[0], SocketAddrV4::new(h0, 80), "h2-blue", true).unwrap();
    let red = H2Server::start(&lab.hosts[1], SocketAddrV4::new(h1, 80), "h2-red", false).unwrap();
    let config = format!(
        "[[proxy]]\nport = 80\nkind = \"http\"\nserver_protocol = \"http2\"\nhello_timeout = 1\nidle_timeout = 5\nconnect_timeout = 2\n\
         names = {{ \"blue.example\" = \"{h0}:80\", \"red.example\" = \"{h1}:80\" }}\n"
    );
    lab.start_natd_with_config(&config).unwrap();

    let (mut client, settings, said, get) = in_ns(&lab.server, || -> Result<_, String> {
        let mut client = H2Client::open(80)?;
        let settings = client.settings.clone();
        let mut fields = websocket_connect("blue.example", "/chat", "websocket").to_vec();
        fields.push(("sec-websocket-protocol", "chat, superchat"));
        client.request(1, &fields, false)?;
        let opened = client.response(1).map_err(|e| format!("response 1: {e}"))?;
        if opened != (true, false) {
            let (body, _) = if opened.1 { (Vec::new(), true) } else { client.data(1, |_| false)? };
            return Err(format!("not 200 and open: {opened:?} {:?}", String::from_utf8_lossy(&body)));
        }
        let mut said = Vec::new();
        for (i, pause) in [0, 1300].into_iter().enumerate() {
            // Longer than hello_timeout: a tunnel's bytes are no request head.
            thread::sleep(Duration::from_millis(pause));
            said.push(client.exchange(1, &format!("hello {i}")).map_err(|e| format!("hello {i}: {e}"))?);
        }
        // A plain request beside the tunnel, on the same connections.
        client.send(&h2_frame(H2Client::HEADERS, H2Client::END_HEADERS | H2Client::END_STREAM, 3, &h2_get("blue.example/plain")))?;
        let (ok, _) = client.response(3)?;
        let (body, _) = client.data(3, |_| false)?;
        Ok((client, settings, said, (ok, String::from_utf8_lossy(&body).trim().to_string())))
    })
    .join()
    .unwrap()
    .unwrap_or_else(|e| panic!("{e}\n{}\n{:?}", lab.natd_log(), blue.requests()));
    assert!(settings.contains(&(0x8, 1)), "natd offers the extended CONNECT to clients: {settings:?}");
    assert_eq!(said, ["h2-blue: hello 0", "h2-blue: hello 1"], "the stream's bytes both ways");
    assert_eq!(get, (true, "h2-blue /plain".to_string()));
    let connect = blue.requests().into_iter().find(|r| r.contains(&(":method".into(), "CONNECT".into()))).expect("the CONNECT reached blue");
    let field = |name: &str| connect.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str()).unwrap_or_default();
    assert_eq!((field(":protocol"), field(":authority"), field(":path")), ("websocket", "blue.example", "/chat"), "passed on as it came: {connect:?}");
    assert_eq!((field("sec-websocket-version"), field("sec-websocket-protocol")), ("13", "chat, superchat"), "{connect:?}");
    assert_eq!(field("x-forwarded-for"), SERVER.to_string(), "{connect:?}");
    assert!(field("forwarded").starts_with(&format!("for={SERVER}")), "{connect:?}");
    assert_eq!(server_active(&lab, h0), 1, "the tunnel is a stream of natd's one connection to blue, not one of its own");

    // red does not offer it: 501, once red's SETTINGS are in, and red never
    // gets a `:protocol`; the tunnel and the connection go on.
    let started = Instant::now();
    let (refused, still, client) = in_ns(&lab.server, move || -> Result<_, String> {
        client.request(5, &websocket_connect("red.example", "/chat", "websocket"), false)?;
        let (ok, _) = client.response(5)?;
        let (body, _) = client.data(5, |_| false)?;
        let still = client.exchange(1, "still there")?;
        Ok(((ok, String::from_utf8_lossy(&body).into_owned()), still, client))
    })
    .join()
    .unwrap()
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.natd_log()));
    assert!(!refused.0 && refused.1.contains("which does not offer the extended CONNECT"), "{refused:?}");
    assert!(started.elapsed() < Duration::from_secs(4), "decided within connect_timeout: {:?}", started.elapsed());
    assert!(red.requests().iter().all(|r| r.iter().all(|(n, _)| n != ":protocol")), "red got no extended CONNECT: {:?}", red.requests());
    assert_eq!(still, "h2-blue: still there");

    // The client's end ends the server's stream, whose end ends the client's.
    let (rest, ended) = in_ns(&lab.server, move || -> Result<_, String> {
        let mut client = client;
        client.send(&h2_frame(H2Client::DATA, H2Client::END_STREAM, 1, &[]))?;
        client.data(1, |_| false)
    })
    .join()
    .unwrap()
    .unwrap();
    assert!(rest.is_empty() && ended, "the stream ended with the server's: {rest:?}");
}
