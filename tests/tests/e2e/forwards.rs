//! Inbound forwards end to end (issue 12): nginx servers on LAN hosts, curl
//! and wrk on the WAN, the real natd: the client's address reaches the
//! server, load spreads by weight, dead and frozen servers are taken out and
//! come back, long-lived connections survive failover and reloads, hairpin,
//! UDP, port ranges, the outward direction of a single-server forward,
//! reloads, a SYN flood, no server up, and bad configs.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use nat_tests::{
    natlab::{EXTERNAL, EchoServer, IO_TIMEOUT, NatLab, SERVER, StreamEcho, host_addr, in_ns, tcp_conversation, udp_socket_in},
    netns::Netns,
    packet::Frame,
    require_root,
    servers::Nginx,
    wire::{Link, send_frames},
};
use nat_userspace::nat::forwards::ForwardView;

const WEB_PORT: u16 = 8080;

fn nginx_on(lab: &NatLab, i: usize) -> Nginx {
    Nginx::start(&lab.hosts[i], SocketAddrV4::new(host_addr(i), 80), &format!("s{i}")).unwrap()
}

/// A `[[forward]]` named `name` of `port` to the LAN hosts `servers` (port
/// 80), with `extra` lines (weights are given in `servers`).
fn web_forward(name: &str, port: u16, servers: &[(usize, u32)], extra: &str) -> String {
    let to: Vec<String> = servers.iter().map(|(i, w)| format!("{{ server = \"{}:80\", weight = {w} }}", host_addr(*i))).collect();
    format!("[[forward]]\nname = \"{name}\"\nprotocol = \"tcp\"\nport = {port}\nto = [{}]\n{extra}\n", to.join(", "))
}

/// One GET of `http://EXTERNAL:port/` from `ns`: the answering server's name.
fn get(ns: &Netns, port: u16, max_time_s: u32) -> Result<String, String> {
    let url = format!("http://{EXTERNAL}:{port}/");
    ns.exec(&["curl", "-sS", "--max-time", &max_time_s.to_string(), &url]).map(|body| body.trim().to_string()).map_err(|e| format!("{e:#}"))
}

/// The forward `name` as `natd forwards` shows it.
fn forward_view(lab: &NatLab, name: &str) -> ForwardView {
    let views = lab.forwards().unwrap();
    views.into_iter().find(|f| f.name == name).unwrap_or_else(|| panic!("no forward {name:?} in natd forwards"))
}

/// The health `natd forwards` shows for `server` (ADDR:PORT) of `forward`.
fn health_of(lab: &NatLab, forward: &str, server: &str) -> String {
    let view = forward_view(lab, forward);
    view.servers.iter().find(|s| s.server == server).map(|s| s.health.clone()).unwrap_or_else(|| format!("absent from {view:?}"))
}

/// Waits (polling every 50 ms, at most `within`) until every listed server
/// of `forward` has `health`; returns how long that took.
fn wait_health(lab: &NatLab, forward: &str, servers: &[String], health: &str, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if servers.iter().all(|s| health_of(lab, forward, s) == health) {
            return started.elapsed();
        }
        assert!(started.elapsed() < within, "{servers:?} of {forward:?} not {health} within {within:?}: {:?}\n{}", forward_view(lab, forward), lab.natd_log());
        thread::sleep(Duration::from_millis(50));
    }
}

fn server_name(i: usize) -> String {
    format!("{}:80", host_addr(i))
}

/// An HTTP/1.1 keep-alive connection: many requests, one TCP connection.
struct KeepAlive {
    stream: TcpStream,
}

impl KeepAlive {
    fn connect(ns: &Netns, to: SocketAddrV4) -> Self {
        let stream = in_ns(ns, move || TcpStream::connect_timeout(&to.into(), IO_TIMEOUT)).join().unwrap().expect("keep-alive connect");
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        Self { stream }
    }

    /// GET / on the connection: the answering server's name.
    fn get(&mut self) -> Result<String, String> {
        self.stream.write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n").map_err(|e| format!("send: {e}"))?;
        let mut response = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            let n = self.stream.read(&mut buf).map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("the connection was closed".into());
            }
            response.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&response).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length: usize = head
                    .lines()
                    .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
                    .unwrap_or(0);
                if body.len() >= length {
                    return Ok(body[..length].trim().to_string());
                }
            }
        }
    }
}

/// Client address kept (no SNAT), spread by weight (Maglev), forwarded
/// flows visible in `natd sessions`, new flows per second in `natd
/// forwards`.
#[test]
fn a_load_balanced_forward_spreads_by_weight_and_servers_see_the_client() {
    require_root!();
    let mut lab = NatLab::new(3, false).unwrap();
    let servers: Vec<Nginx> = (0..3).map(|i| nginx_on(&lab, i)).collect();
    lab.start_natd_with_config(&web_forward("web", WEB_PORT, &[(0, 1), (1, 2), (2, 3)], "")).unwrap();
    let names: Vec<String> = (0..3).map(server_name).collect();
    wait_health(&lab, "web", &names, "up", Duration::from_secs(5));

    let url = format!("http://{EXTERNAL}:{WEB_PORT}/");
    let out = lab.server.exec(&["timeout", "20", "wrk", "-t1", "-c16", "-d3s", "-H", "Connection: close", &url]).unwrap();
    assert!(!out.contains("Socket errors") && !out.contains("Non-2xx"), "wrk saw errors:\n{out}");
    let rates: Vec<f64> = forward_view(&lab, "web").servers.iter().map(|s| s.new_flows_per_s).collect();

    let counts: Vec<usize> = servers.iter().map(|s| s.clients().len()).collect();
    let total: usize = counts.iter().sum();
    assert!(total > 500, "only {total} requests: {counts:?}\n{out}");
    for (i, weight) in [1.0, 2.0, 3.0].into_iter().enumerate() {
        let share = counts[i] as f64 / total as f64;
        assert!((share - weight / 6.0).abs() < 0.06, "server {i} (weight {weight}) took {share:.3} of {total}: {counts:?}");
    }
    for server in &servers {
        assert!(server.clients().iter().all(|c| *c == SERVER), "{} saw a client other than {SERVER}", server.name);
    }
    assert!(rates.iter().all(|r| *r > 0.0), "new flows per second in natd forwards: {rates:?}");

    let sessions = lab.sessions().unwrap();
    let forwarded: Vec<_> = sessions.iter().filter(|s| s.forward.as_deref() == Some("web")).collect();
    assert!(!forwarded.is_empty(), "no forwarded flow in natd sessions");
    for row in &forwarded {
        assert_eq!(row.external, format!("{EXTERNAL}:{WEB_PORT}"));
        assert!(row.remote.as_deref().is_some_and(|r| r.starts_with(&format!("{SERVER}:"))), "{row:?}");
        assert!(names.contains(&row.inside), "{row:?}");
    }
}

/// Failover (issue 12): a stopped server (its port refuses) and a frozen
/// one (SIGSTOP: connects complete into the backlog, nothing answers) are
/// taken out; once they are, no new request fails; a long-lived connection
/// to the healthy server stays up through both and through a reload; both
/// come back when they recover.
#[test]
fn failover_on_stop_and_freeze_keeps_long_lived_connections_and_recovers() {
    require_root!();
    let mut lab = NatLab::new(3, false).unwrap();
    let mut servers: Vec<Nginx> = (0..3).map(|i| nginx_on(&lab, i)).collect();
    let config = web_forward("web", WEB_PORT, &[(0, 1), (1, 1), (2, 1)], "[forward.health]\nkind = \"http\"\n");
    lab.start_natd_with_config(&config).unwrap();
    let names: Vec<String> = (0..3).map(server_name).collect();
    wait_health(&lab, "web", &names, "up", Duration::from_secs(5));

    let mut long = KeepAlive::connect(&lab.server, SocketAddrV4::new(EXTERNAL, WEB_PORT));
    let home = long.get().unwrap();
    let home_i: usize = home.trim_start_matches('s').parse().unwrap();
    let (stopped, frozen) = match home_i {
        0 => (1, 2),
        1 => (0, 2),
        _ => (0, 1),
    };

    // Stopped: refused connections (passive) or the failed check.
    servers[stopped].stop();
    let (detection, last_failure) = requests_until_down(&lab, &names[stopped], Duration::from_secs(6));
    eprintln!("failover, stopped server: down after {detection:?}, last failed request {last_failure:?} after the stop");
    assert!(detection < Duration::from_secs(3), "a stopped server took {detection:?} to go down");
    assert_all_answered(&lab, 20, &[]);
    assert_eq!(long.get().unwrap(), home, "the long-lived connection after the failover");

    // Frozen: only the HTTP check notices (its timeout, `fall` times).
    servers[frozen].freeze();
    let (detection, last_failure) = requests_until_down(&lab, &names[frozen], Duration::from_secs(8));
    eprintln!("failover, frozen server: down after {detection:?}, last failed request {last_failure:?} after the freeze");
    assert!(detection < Duration::from_secs(5), "a frozen server took {detection:?} to go down");
    assert_all_answered(&lab, 20, &[&home]);
    assert_eq!(long.get().unwrap(), home, "the long-lived connection after the second failover");

    // A reload that changes the forward (a weight) keeps the connection.
    let reweighted = web_forward("web", WEB_PORT, &[(0, 2), (1, 2), (2, 2)], "[forward.health]\nkind = \"http\"\n");
    lab.config_file(&reweighted).unwrap();
    let reload = lab.natd_cli(&["reload"]).unwrap();
    assert!(reload.status.success(), "natd reload: {}", String::from_utf8_lossy(&reload.stderr));
    assert_eq!(long.get().unwrap(), home, "the long-lived connection after a reload");

    // Recovery: both come back (rise 2) and take requests again.
    servers[stopped].start_again(&lab.hosts[stopped]).unwrap();
    servers[frozen].thaw();
    let recovered = wait_health(&lab, "web", &names, "up", Duration::from_secs(8));
    eprintln!("recovery: both servers up {recovered:?} after they were");
    let before = [servers[stopped].clients().len(), servers[frozen].clients().len()];
    assert_all_answered(&lab, 40, &[]);
    assert!(servers[stopped].clients().len() > before[0] && servers[frozen].clients().len() > before[1], "the recovered servers take no requests");
    assert_eq!(long.get().unwrap(), home);
}

/// Sends a request every 100 ms until natd shows `server` down (at most
/// `within`). Returns (time to detection, time of the last failed request),
/// both from the call.
fn requests_until_down(lab: &NatLab, server: &str, within: Duration) -> (Duration, Option<Duration>) {
    let started = Instant::now();
    let mut last_failure = None;
    loop {
        if get(&lab.server, WEB_PORT, 1).is_err() {
            last_failure = Some(started.elapsed());
        }
        if health_of(lab, "web", server) == "down" {
            return (started.elapsed(), last_failure);
        }
        assert!(started.elapsed() < within, "{server} not down within {within:?}: {:?}\n{}", forward_view(lab, "web"), lab.natd_log());
        thread::sleep(Duration::from_millis(100));
    }
}

/// `count` requests from the WAN, every one answered (by one of `only`, if given).
fn assert_all_answered(lab: &NatLab, count: usize, only: &[&str]) {
    for n in 0..count {
        let name = get(&lab.server, WEB_PORT, 2).unwrap_or_else(|e| panic!("request {n} after detection failed: {e}"));
        assert!(only.is_empty() || only.contains(&name.as_str()), "request {n} answered by {name}, not {only:?}");
    }
}

/// RFC 4787 REQ-9 for forwards: a LAN host reaches the forwarded server at
/// the external address, and the server sees the external address (so its
/// replies come back through the gateway).
#[test]
fn a_lan_host_reaches_a_forward_by_the_external_address() {
    require_root!();
    let mut lab = NatLab::new(2, false).unwrap();
    let server = nginx_on(&lab, 0);
    lab.start_natd_with_config(&web_forward("web", WEB_PORT, &[(0, 1)], "")).unwrap();
    for _ in 0..3 {
        assert_eq!(get(&lab.hosts[1], WEB_PORT, 3).unwrap(), "s0");
    }
    assert_eq!(server.clients(), vec![EXTERNAL; 3], "the server sees the hairpinned client as the external address");
    let stats = lab.stats().unwrap();
    assert!(stats.get("hairpinned_to_forward").unwrap_or(0) >= 3, "{stats:?}");
}

/// A UDP forward (a DNS-like echo): the server sees the client, the client
/// hears from the external endpoint. A single-server forward is a static
/// mapping both ways: what the server opens from its forwarded port leaves
/// from the external endpoint (SIP, game servers), TCP and UDP.
#[test]
fn a_udp_forward_echoes_and_a_single_server_forward_works_outward() {
    require_root!();
    let mut lab = NatLab::new(1, false).unwrap();
    let inside = EchoServer::start(&lab.hosts[0], 5353);
    let outside = EchoServer::start(&lab.server, 7000);
    let config = format!(
        "[[forward]]\nprotocol = \"udp\"\nport = 5353\nto = [\"{h}:5353\"]\n\n[[forward]]\nprotocol = \"tcp+udp\"\nport = 5060\nto = [\"{h}\"]\n",
        h = host_addr(0)
    );
    lab.start_natd_with_config(&config).unwrap();

    let client = udp_socket_in(&lab.server, 0);
    client.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    for query in [b"query-1".as_slice(), b"query-2"] {
        client.send_to(query, SocketAddrV4::new(EXTERNAL, 5353)).unwrap();
        let mut buf = [0u8; 256];
        let (n, from) = client.recv_from(&mut buf).expect("the forwarded echo");
        assert_eq!((&buf[..n], from), ([b"echo:".as_slice(), query].concat().as_slice(), SocketAddrV4::new(EXTERNAL, 5353).into()));
    }
    let client_port = client.local_addr().unwrap().port();
    assert_eq!(inside.udp_peers(), vec![SocketAddrV4::new(SERVER, client_port).into(); 2], "the server sees the client");

    // Outward from the forwarded port: UDP and TCP.
    let sip = udp_socket_in(&lab.hosts[0], 5060);
    sip.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    sip.send_to(b"INVITE", SocketAddrV4::new(SERVER, 7000)).unwrap();
    let mut buf = [0u8; 256];
    let (n, from) = sip.recv_from(&mut buf).expect("the reply to the server's own datagram");
    assert_eq!((&buf[..n], from), (b"echo:INVITE".as_slice(), SocketAddrV4::new(SERVER, 7000).into()));
    let reply = in_ns(&lab.hosts[0], || {
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.set_reuse_address(true).unwrap();
        sock.bind(&SocketAddrV4::new(host_addr(0), 5060).into()).unwrap();
        sock.connect_timeout(&SocketAddrV4::new(SERVER, 7000).into(), IO_TIMEOUT).unwrap();
        let mut stream: TcpStream = sock.into();
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.write_all(b"REGISTER").unwrap();
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).unwrap();
        reply
    })
    .join()
    .unwrap();
    assert_eq!(reply, b"echo:REGISTER");
    let external = SocketAddrV4::new(EXTERNAL, 5060).into();
    assert_eq!(outside.udp_peers(), vec![external], "the server's datagram left from the forward's endpoint");
    assert_eq!(outside.tcp_peers(), vec![external], "the server's connection left from the forward's endpoint");
}

/// TCP listeners on `ports` in `ns` that answer each connection with the
/// port it came to, until dropped.
struct PortNamers {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl PortNamers {
    fn start(ns: &Netns, addr: Ipv4Addr, ports: &[u16]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for &port in ports {
            let listener = in_ns(ns, move || TcpListener::bind(SocketAddrV4::new(addr, port)).unwrap()).join().unwrap();
            listener.set_nonblocking(true).unwrap();
            let stop = stop.clone();
            threads.push(thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((mut conn, _)) => {
                            let _ = conn.write_all(format!("port {port}").as_bytes());
                        }
                        Err(_) => thread::sleep(Duration::from_millis(5)),
                    }
                }
            }));
        }
        Self { stop, threads }
    }
}

impl Drop for PortNamers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn read_from(ns: &Netns, to: SocketAddrV4) -> Result<String, String> {
    in_ns(ns, move || {
        let mut stream = TcpStream::connect_timeout(&to.into(), IO_TIMEOUT).map_err(|e| format!("connect to {to}: {e}"))?;
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).map_err(|e| e.to_string())?;
        Ok(text)
    })
    .join()
    .unwrap()
}

/// A port range: a server given with the range's first port keeps the
/// offset (8005 -> 9005); one given without a port gets the same port.
#[test]
fn a_port_range_forward_keeps_the_offset() {
    require_root!();
    let mut lab = NatLab::new(2, false).unwrap();
    let _offset = PortNamers::start(&lab.hosts[0], host_addr(0), &[9000, 9005, 9009]);
    let _same = PortNamers::start(&lab.hosts[1], host_addr(1), &[8100, 8109]);
    let config = format!(
        "[[forward]]\nprotocol = \"tcp\"\nport = \"8000-8009\"\nto = [\"{}:9000\"]\n\n[[forward]]\nprotocol = \"tcp\"\nport = \"8100-8109\"\nto = [\"{}\"]\n",
        host_addr(0),
        host_addr(1)
    );
    lab.start_natd_with_config(&config).unwrap();
    for (external, answer) in [(8000, "port 9000"), (8005, "port 9005"), (8009, "port 9009"), (8100, "port 8100"), (8109, "port 8109")] {
        assert_eq!(read_from(&lab.server, SocketAddrV4::new(EXTERNAL, external)).unwrap(), answer, "external port {external}");
    }
}

/// `natd reload` and SIGHUP apply forward changes live (a forward and a
/// server added, then removed) while a connection to a server that stays
/// keeps working; a new config that changes what cannot change live, or
/// that is invalid, is refused whole with a message, `natd reload` exits 1,
/// and natd serves on as before.
#[test]
fn reload_adds_and_removes_forwards_and_servers_and_refuses_what_it_cannot_apply() {
    require_root!();
    let mut lab = NatLab::new(3, false).unwrap();
    let servers: Vec<Nginx> = (0..3).map(|i| nginx_on(&lab, i)).collect();
    let none = "[forward.health]\nkind = \"none\"\n";
    lab.start_natd_with_config(&web_forward("web", WEB_PORT, &[(0, 1)], none)).unwrap();
    assert_eq!(get(&lab.server, WEB_PORT, 3).unwrap(), "s0");
    let mut long = KeepAlive::connect(&lab.server, SocketAddrV4::new(EXTERNAL, WEB_PORT));
    assert_eq!(long.get().unwrap(), "s0");

    // Added: server s1 to "web", forward "api" (8081 -> s2).
    let grown = format!("{}{}", web_forward("web", WEB_PORT, &[(0, 1), (1, 1)], none), web_forward("api", 8081, &[(2, 1)], none));
    lab.config_file(&grown).unwrap();
    let out = lab.natd_cli(&["reload"]).unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{said}{}", String::from_utf8_lossy(&out.stderr));
    assert!(said.contains("server 10.77.1.11:80 added") && said.contains("forward \"api\" added"), "{said}");
    assert_eq!(get(&lab.server, 8081, 3).unwrap(), "s2");
    let answered: std::collections::BTreeSet<String> = (0..30).map(|_| get(&lab.server, WEB_PORT, 3).unwrap()).collect();
    assert_eq!(answered, ["s0".to_string(), "s1".to_string()].into(), "both servers of web answer");
    assert_eq!(long.get().unwrap(), "s0");

    // Refused: a setting only a restart can change; an invalid value.
    for (bad, why) in [(format!("port_range = \"30000-40000\"\n{grown}"), "port_range"), (grown.replace("weight = 1 }", "weight = 500 }"), "weight")] {
        lab.config_file(&bad).unwrap();
        let out = lab.natd_cli(&["reload"]).unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "a reload changing {why} was accepted");
        assert!(stderr.contains(why) && stderr.contains("nothing was changed"), "{stderr}");
        assert_eq!(get(&lab.server, 8081, 3).unwrap(), "s2", "natd runs as before");
    }

    // Removed, by SIGHUP: server s1 and forward "api".
    lab.config_file(&web_forward("web", WEB_PORT, &[(0, 1)], none)).unwrap();
    lab.signal_natd(libc::SIGHUP).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while lab.forwards().unwrap().len() != 1 {
        assert!(Instant::now() < deadline, "SIGHUP did not reload:\n{}", lab.natd_log());
        thread::sleep(Duration::from_millis(50));
    }
    assert!(get(&lab.server, 8081, 2).is_err(), "the removed forward still answers");
    let answered: std::collections::BTreeSet<String> = (0..10).map(|_| get(&lab.server, WEB_PORT, 3).unwrap()).collect();
    assert_eq!(answered, ["s0".to_string()].into());
    assert_eq!(long.get().unwrap(), "s0", "the connection to the server that stayed");
    assert!(!servers[1].clients().is_empty());
}

/// A forward added by a reload, to a server endpoint that holds a dynamic
/// mapping (the server talked out from that port as a client), takes the
/// endpoint over: the dynamic session goes (natd finds it by its inside
/// endpoint in `OUTBOUND`, its own table being by slot), its port returns
/// to the pool's hold, and the forward reaches the server.
#[test]
fn a_forward_added_on_reload_takes_over_its_servers_dynamic_mapping() {
    require_root!();
    let mut lab = NatLab::new(1, false).unwrap();
    lab.start_natd_with_config("log_level = \"info\"\n").unwrap();
    let _outside = EchoServer::start(&lab.server, super::SERVICE_PORT);
    const SERVER_PORT: u16 = 7300;
    let inside = format!("{}:{SERVER_PORT}", host_addr(0));
    assert_eq!(super::udp_request(&lab.hosts[0], SERVER_PORT, b"a".to_vec()).join().unwrap().unwrap(), b"echo:a");
    let dynamic = |lab: &NatLab| lab.sessions().unwrap().into_iter().filter(|s| s.inside == inside && s.forward.is_none()).count();
    assert_eq!(dynamic(&lab), 1, "{:?}", lab.sessions().unwrap());

    let _served = EchoServer::start(&lab.hosts[0], SERVER_PORT);
    lab.config_file(&format!("log_level = \"info\"\n[[forward]]\nname = \"dns\"\nprotocol = \"udp\"\nport = 5300\nto = [\"{inside}\"]\n")).unwrap();
    let out = lab.natd_cli(&["reload"]).unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(dynamic(&lab), 0, "the server's dynamic mapping outlived its forward: {:?}", lab.sessions().unwrap());
    let udp = lab.status().unwrap().ports.into_iter().find(|p| p.proto == "udp").unwrap();
    assert_eq!((udp.in_use, udp.held), (0, 1), "the mapping's port: {udp:?}");
    let answer = in_ns(&lab.server, || {
        let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
        sock.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        sock.send_to(b"q", SocketAddrV4::new(EXTERNAL, 5300)).unwrap();
        let mut buf = [0u8; 64];
        sock.recv(&mut buf).map(|n| buf[..n].to_vec())
    })
    .join()
    .unwrap();
    assert_eq!(answer.expect("an answer through the forward"), b"echo:q");
}

/// A SYN flood to a forward (200k SYNs from spoofed sources) never evicts
/// an established flow, and new connections keep completing: half-open
/// flows live in a bounded LRU apart from the established ones.
#[test]
fn a_syn_flood_neither_evicts_established_flows_nor_stops_new_connections() {
    require_root!();
    let mut lab = NatLab::new(2, false).unwrap();
    let _servers: Vec<Nginx> = (0..2).map(|i| nginx_on(&lab, i)).collect();
    let _stream = StreamEcho::start(&lab.hosts[0], 7100);
    let config = format!(
        "{}[[forward]]\nname = \"stream\"\nprotocol = \"tcp\"\nport = 7100\nto = [\"{}:7100\"]\n",
        web_forward("web", WEB_PORT, &[(0, 1), (1, 1)], ""),
        host_addr(0)
    );
    lab.start_natd_with_config(&config).unwrap();
    wait_health(&lab, "web", &[server_name(0), server_name(1)], "up", Duration::from_secs(5));

    // An established conversation through the flood: 60 rounds, 100 ms apart.
    let conversation = tcp_conversation(&lab.server, SocketAddrV4::new(EXTERNAL, 7100), 60, Duration::from_millis(100));
    thread::sleep(Duration::from_millis(300));
    let wan = Link::between(&lab.server, "eth0", &lab.gw, "wan0").unwrap();
    let frames: Vec<Vec<u8>> = (0..200_000u32)
        .map(|n| {
            let spoofed = Ipv4Addr::new(100, 64 + (n >> 16) as u8 % 64, (n >> 8) as u8, n as u8);
            Frame::tcp((spoofed, 1024 + (n % 60000) as u16), (EXTERNAL, WEB_PORT)).with_macs(wan.from, wan.to).build()
        })
        .collect();
    // New connections while the flood runs.
    let (answered, flooded) = thread::scope(|scope| {
        let flood = scope.spawn(|| send_frames(&lab.server, "eth0", frames, Duration::ZERO));
        let mut answered = 0;
        let started = Instant::now();
        while !flood.is_finished() && started.elapsed() < Duration::from_secs(30) {
            get(&lab.server, WEB_PORT, 3).expect("a new connection during the flood");
            answered += 1;
            thread::sleep(Duration::from_millis(50));
        }
        (answered, flood.join().unwrap())
    });
    flooded.expect("the flood");
    assert!(answered > 0, "the flood ended before a request could be made");
    for _ in 0..10 {
        get(&lab.server, WEB_PORT, 3).expect("a new connection after the flood");
    }
    let (rounds, longest) = conversation.join().unwrap().expect("the established conversation");
    assert_eq!(rounds, 60, "the established conversation lost rounds (longest wait {longest:?})");

    let stats = lab.stats().unwrap();
    let new_flows = stats.get("forwarded_new_flow").unwrap_or(0);
    assert!(new_flows >= 200_000, "the flood did not reach the forward: {stats:?}");
    let sessions = lab.sessions().unwrap();
    // The conversation has ended (closing), but its flow is still in the
    // table floods cannot reach.
    let stream = sessions.iter().find(|s| s.forward.as_deref() == Some("stream"));
    assert!(stream.is_some_and(|s| s.state == "closing"), "the established flow: {stream:?}");
    let half_open = sessions.iter().filter(|s| s.forward.as_deref() == Some("web") && s.state == "opening").count();
    assert!(half_open <= nat_common::forward::MAX_PENDING_FLOWS as usize, "{half_open} half-open flows: the table is not bounded");
    let web = forward_view(&lab, "web");
    assert!(web.servers.iter().all(|s| s.health == "up"), "the flood took a server down: {web:?}");
}

/// No server up: a new flow is refused at once, as by a closed port (TCP
/// RST: connection refused; UDP: ICMP port unreachable), and counted.
#[test]
fn no_server_up_refuses_new_flows_at_once() {
    require_root!();
    let mut lab = NatLab::new(1, false).unwrap();
    // Nothing listens on the servers: their checks fail (tcp and udp).
    let config = format!(
        "{}[[forward]]\nprotocol = \"udp\"\nport = 5353\nto = [\"{h}:5353\", \"{h}:5354\"]\n[forward.health]\nkind = \"udp\"\nsend = \"ping\"\n",
        web_forward("web", WEB_PORT, &[(0, 1)], "[forward.health]\nkind = \"tcp\"\n"),
        h = host_addr(0)
    );
    lab.start_natd_with_config(&config).unwrap();
    thread::sleep(Duration::from_millis(500));

    let started = Instant::now();
    let refused = read_from(&lab.server, SocketAddrV4::new(EXTERNAL, WEB_PORT)).unwrap_err();
    assert!(refused.contains("refused"), "{refused}");
    assert!(started.elapsed() < Duration::from_secs(1), "the refusal took {:?}", started.elapsed());

    let udp = in_ns(&lab.server, || {
        let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
        sock.connect(SocketAddrV4::new(EXTERNAL, 5353)).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        sock.send(b"query").unwrap();
        sock.recv(&mut [0u8; 64]).map_err(|e| e.kind())
    })
    .join()
    .unwrap();
    assert_eq!(udp, Err(std::io::ErrorKind::ConnectionRefused), "ICMP port unreachable for UDP");

    let stats = lab.stats().unwrap();
    assert!(stats.get("forward_no_server").unwrap_or(0) >= 2, "{stats:?}");
    assert!(stats.get("no_server_answered").unwrap_or(0) >= 2, "{stats:?}");
}

/// Bad forwards are explained, field and value named, before anything is
/// attached.
#[test]
fn bad_forwards_are_explained_before_anything_is_attached() {
    require_root!();
    let lab = NatLab::new(1, false).unwrap();
    let cases = [
        (format!("port = 25000\nprotocol = \"tcp\"\nto = [\"{}:80\"]", host_addr(0)), "overlaps port_range 20000-32767"),
        (format!("port = 8080\nprotocol = \"tcp\"\nto = [\"{SERVER}:80\"]"), "is on the WAN side"),
        (format!("port = 8080\nprotocol = \"tcp\"\nto = [{{ server = \"{}:80\", weight = 101 }}]", host_addr(0)), "weight = 101"),
        (format!("port = 8080\nprotocol = \"gre\"\nto = [\"{}:80\"]", host_addr(0)), "protocol = \"gre\""),
    ];
    for (body, why) in cases {
        let path = lab.config_file(&format!("lan = \"lan0\"\nwan = \"wan0\"\n[[forward]]\n{body}\n")).unwrap();
        let out = lab.natd_cli(&["check", "--config", path.to_str().unwrap()]).unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success() && stderr.contains(why), "{body}: {stderr}");
    }
    // Two forwards on one protocol and port.
    let twice = format!("lan = \"lan0\"\nwan = \"wan0\"\n{}{}", web_forward("a", WEB_PORT, &[(0, 1)], ""), web_forward("b", WEB_PORT, &[(0, 1)], ""));
    let path = lab.config_file(&twice).unwrap();
    let out = lab.natd_cli(&["check", "--config", path.to_str().unwrap()]).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success() && stderr.contains("overlaps forward[0] \"a\""), "{stderr}");
    // The flag form, on `natd run`: nothing attached, a clear error.
    let out = lab.natd_cli(&["run", "--lan", "lan0", "--wan", "wan0", "--forward", "tcp:8080=nowhere"]).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success() && stderr.contains("--forward"), "{stderr}");
    assert!(!lab.xdp_attached().unwrap());
}
