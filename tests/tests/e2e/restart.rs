//! Restarts and upgrades that lose nothing (issue 15): SIGTERM leaves the
//! datapath serving from its pins; a new natd adopts its sessions, ports
//! and clock, and swaps its own programs in (bpf_link_update) under
//! traffic; `natd down` removes everything; two labs with the same
//! interface names keep apart.

use std::{
    collections::BTreeMap,
    net::SocketAddrV4,
    process::Stdio,
    thread,
    time::{Duration, Instant},
};

use nat_tests::{
    natlab::{EchoServer, NatLab, SERVER, host_addr, udp_socket_in, udp_stream},
    require_root,
};

const ECHO_PORT: u16 = 7001;
const IPERF_PORT: &str = "5299";

/// The XDP program attached to an interface of the gateway (`ip -d link`).
fn attached_program(lab: &NatLab, ifname: &str) -> Option<u32> {
    let text = lab.gw.ip(&["-d", "link", "show", ifname]).ok()?;
    let at = text.find("prog/xdp id ")? + "prog/xdp id ".len();
    text[at..].split_whitespace().next()?.parse().ok()
}

/// Runs a command in a lab namespace on a thread of its own; its stdout.
fn run_in(ns: &str, args: &[&str]) -> thread::JoinHandle<String> {
    let mut cmd = std::process::Command::new("ip");
    cmd.args(["netns", "exec", ns]).args(args);
    thread::spawn(move || {
        String::from_utf8_lossy(
            &cmd.output()
                .expect("running a command in a lab namespace")
                .stdout,
        )
        .into_owned()
    })
}

/// (proto, inside) -> external of every dynamic session.
fn sessions_of(lab: &NatLab) -> BTreeMap<(String, String), String> {
    lab.sessions()
        .unwrap()
        .into_iter()
        .filter(|s| s.forward.is_none())
        .map(|s| ((s.proto, s.inside), s.external))
        .collect()
}

/// One datagram out from `port` of host 1 and its echo back, with natd down:
/// the new flow is set up by the datapath from a queued port. Returns the
/// external endpoint the server saw.
fn new_flow_while_down(lab: &NatLab, port: u16) -> String {
    let inside = udp_socket_in(&lab.hosts[1], port);
    inside
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    inside
        .send_to(b"while natd is down", SocketAddrV4::new(SERVER, ECHO_PORT))
        .unwrap();
    let mut buf = [0u8; 64];
    let (n, _) = inside
        .recv_from(&mut buf)
        .expect("a new flow set up while natd was down was answered");
    assert!(
        buf[..n].ends_with(b"while natd is down"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    format!("{}:{port}", host_addr(1))
}

/// The restart and the upgrade of the issue, under a 50 packet/s UDP
/// stream, an iperf3 TCP transfer and a ping: 0 packets lost, no TCP stall
/// over 100 ms, the same sessions (same external ports) before and after,
/// and a flow opened while natd was down in the sessions of the next natd.
#[test]
fn a_restart_and_an_upgrade_lose_no_packet_and_keep_every_session() {
    require_root!();
    let mut lab = NatLab::new(2, false).unwrap();
    lab.start_natd(&[]).unwrap();
    let _echo = EchoServer::start(&lab.server, ECHO_PORT);
    let mut iperf_server = lab
        .server
        .command(&["iperf3", "-s", "-1", "-p", IPERF_PORT])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    thread::sleep(Duration::from_millis(300));

    let seconds = 14u32;
    let udp = udp_stream(
        &lab.hosts[0],
        40000,
        SocketAddrV4::new(SERVER, ECHO_PORT),
        50 * seconds,
        Duration::from_millis(20),
    );
    let tcp = run_in(
        &lab.hosts[0].name,
        &[
            "iperf3",
            "-c",
            &SERVER.to_string(),
            "-p",
            IPERF_PORT,
            "-t",
            &seconds.to_string(),
            "-i",
            "0.1",
            "-b",
            "200M",
            "-J",
        ],
    );
    let pings = 20 * seconds;
    let ping = run_in(
        &lab.hosts[1].name,
        &[
            "ping",
            "-c",
            &pings.to_string(),
            "-i",
            "0.05",
            "-W",
            "2",
            &SERVER.to_string(),
        ],
    );
    thread::sleep(Duration::from_millis(1500));

    // The restart: SIGTERM, a while without natd, a new natd.
    let before = sessions_of(&lab);
    assert!(
        before.keys().any(|(proto, _)| proto == "tcp")
            && before.keys().any(|(proto, _)| proto == "udp")
            && before.keys().any(|(proto, _)| proto == "icmp"),
        "{before:?}"
    );
    let (lan_program, wan_program) = (
        attached_program(&lab, "lan0").unwrap(),
        attached_program(&lab, "wan0").unwrap(),
    );
    assert!(
        lab.terminate_natd().unwrap().success(),
        "{}",
        lab.natd_log()
    );
    assert_eq!(
        attached_program(&lab, "lan0"),
        Some(lan_program),
        "SIGTERM left the programs attached"
    );
    assert_eq!(attached_program(&lab, "wan0"), Some(wan_program));
    let opened_while_down = new_flow_while_down(&lab, 41000);
    thread::sleep(Duration::from_secs(1));
    lab.start_natd(&[]).unwrap();
    let log = lab.natd_log();
    assert!(
        log.contains("adopting the datapath serving lan0 and wan0")
            && log.contains("replaced the programs of the pinned links"),
        "{log}"
    );
    let after = sessions_of(&lab);
    for (flow, external) in &before {
        assert_eq!(
            after.get(flow),
            Some(external),
            "session {flow:?} kept its external endpoint across the restart"
        );
    }
    assert!(
        after.contains_key(&("udp".to_string(), opened_while_down.clone())),
        "the flow opened while natd was down: {after:?}"
    );
    let (new_lan, new_wan) = (
        attached_program(&lab, "lan0").unwrap(),
        attached_program(&lab, "wan0").unwrap(),
    );
    assert!(
        new_lan != lan_program && new_wan != wan_program,
        "the new natd's programs replaced the old ones"
    );

    // The upgrade: programs that differ (a changed constant), swapped in
    // under the same traffic.
    thread::sleep(Duration::from_secs(2));
    assert!(lab.terminate_natd().unwrap().success());
    lab.set_natd_env(&[("NATD_PROGRAM_MARK", "1")]);
    lab.start_natd(&[]).unwrap();
    assert!(
        attached_program(&lab, "lan0").is_some_and(|id| id != new_lan),
        "the upgrade swapped the LAN program"
    );
    let upgraded = sessions_of(&lab);
    for (flow, external) in &after {
        assert_eq!(
            upgraded.get(flow),
            Some(external),
            "session {flow:?} kept its external endpoint across the upgrade"
        );
    }

    // Nothing lost.
    let echoed = udp.join().unwrap().unwrap();
    assert_eq!(
        echoed,
        50 * seconds,
        "UDP echoes back of {} sent",
        50 * seconds
    );
    let ping_out = ping.join().unwrap();
    assert!(
        ping_out.contains(&format!("{pings} packets transmitted, {pings} received")),
        "{ping_out}"
    );
    let report: serde_json::Value = serde_json::from_str(&tcp.join().unwrap()).unwrap();
    let intervals = report["intervals"].as_array().expect("iperf3 intervals");
    let stalled: Vec<f64> = intervals
        .iter()
        .filter(|i| {
            i["sum"]["seconds"].as_f64().unwrap_or(0.0) > 0.09
                && i["sum"]["bytes"].as_u64() == Some(0)
        })
        .filter_map(|i| i["sum"]["start"].as_f64())
        .collect();
    assert!(
        stalled.is_empty(),
        "the TCP transfer moved nothing for 100 ms from {stalled:?} s"
    );
    let retransmits = report["end"]["sum_sent"]["retransmits"]
        .as_u64()
        .unwrap_or(0);
    eprintln!(
        "restart and upgrade: {echoed} UDP echoes, {pings} pings answered, {} TCP intervals of 100 ms all moving, {retransmits} retransmits",
        intervals.len()
    );
    let _ = iperf_server.kill();
    let _ = iperf_server.wait();
}

/// `natd down` detaches the programs and removes every pin SIGTERM left;
/// it refuses while natd runs on the interfaces.
#[test]
fn natd_down_removes_what_sigterm_left_serving() {
    require_root!();
    let mut lab = NatLab::new(1, false).unwrap();
    lab.start_natd(&[]).unwrap();
    let refused = lab
        .natd_cli(&["down", "--lan", "lan0", "--wan", "wan0"])
        .unwrap();
    assert!(
        !refused.status.success()
            && String::from_utf8_lossy(&refused.stderr).contains("already served by another natd"),
        "{refused:?}"
    );
    assert!(lab.terminate_natd().unwrap().success());
    assert!(attached_program(&lab, "lan0").is_some() && attached_program(&lab, "wan0").is_some());
    let forwarding = |ifname: &str| {
        lab.gw
            .exec(&[
                "cat",
                &format!("/proc/sys/net/ipv4/conf/{ifname}/forwarding"),
            ])
            .unwrap()
            .trim()
            .to_string()
    };
    assert_eq!(
        (forwarding("lan0"), forwarding("wan0")),
        ("1".into(), "1".into()),
        "forwarding stays on while the datapath serves (its route lookups need it)"
    );
    let down = lab
        .natd_cli(&["down", "--lan", "lan0", "--wan", "wan0"])
        .unwrap();
    let said = String::from_utf8_lossy(&down.stdout);
    assert!(
        down.status.success() && said.contains("removed the gateway on lan0 and wan0"),
        "{down:?}"
    );
    assert_eq!(
        (
            attached_program(&lab, "lan0"),
            attached_program(&lab, "wan0")
        ),
        (None, None),
        "no program left attached"
    );
    assert_eq!(
        (forwarding("lan0"), forwarding("wan0")),
        ("0".into(), "0".into()),
        "natd down put forwarding back as the first natd found it"
    );
    let again = lab
        .natd_cli(&["down", "--lan", "lan0", "--wan", "wan0"])
        .unwrap();
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("no gateway on lan0 and wan0"),
        "{again:?}"
    );
    let cookie = nat_tests::natlab::in_ns(&lab.gw, || nat_userspace::datapath::netns_cookie().unwrap()).join().unwrap();
    let handover = std::path::PathBuf::from(format!("/run/natd/handover/netns-{cookie}"));
    assert!(!handover.exists(), "natd down left {} behind", handover.display());
    // SIGINT (an operator's Ctrl-C) takes the datapath with natd.
    lab.start_natd(&[]).unwrap();
    assert!(lab.stop_natd().unwrap().success());
    assert_eq!(attached_program(&lab, "lan0"), None);
}

/// Two gateways with the same interface names in two namespaces at once:
/// each natd adopts its own pins only; a namespace deleted leaves pins
/// that the next natd removes and never adopts.
#[test]
fn pins_belong_to_their_namespace() {
    require_root!();
    let mut first = NatLab::new(1, false).unwrap();
    let mut second = NatLab::new(1, false).unwrap();
    first.start_natd(&[]).unwrap();
    second.start_natd(&[]).unwrap();
    let _echo = EchoServer::start(&first.server, ECHO_PORT);
    let inside = udp_socket_in(&first.hosts[0], 40000);
    inside
        .send_to(b"first", SocketAddrV4::new(SERVER, ECHO_PORT))
        .unwrap();
    let external = first
        .wait_external_of(
            "udp",
            SocketAddrV4::new(host_addr(0), 40000),
            Duration::from_secs(2),
        )
        .unwrap();
    assert!(first.terminate_natd().unwrap().success());
    assert!(second.terminate_natd().unwrap().success());
    second.start_natd(&[]).unwrap();
    assert!(
        second
            .sessions()
            .unwrap()
            .iter()
            .all(|s| s.inside != format!("{}:40000", host_addr(0))),
        "the second lab adopted the first's session"
    );
    first.start_natd(&[]).unwrap();
    assert_eq!(
        first
            .external_of("udp", SocketAddrV4::new(host_addr(0), 40000))
            .unwrap(),
        external,
        "the first lab adopted its own"
    );
    assert!(first.terminate_natd().unwrap().success());
    // The first lab's namespaces go without `natd down` (a crashed test):
    // its pins stay behind, serving nothing.
    let cookie = nat_tests::natlab::in_ns(&first.gw, || {
        nat_userspace::datapath::netns_cookie().unwrap()
    })
    .join()
    .unwrap();
    let root = nat_userspace::datapath::PinRoot::find(None, false)
        .unwrap()
        .expect("the bpffs natd pinned in");
    let first_pins = root.path().join(format!("natd/netns-{cookie}"));
    assert!(
        first_pins.join("lan0+wan0").is_dir(),
        "{}",
        first_pins.display()
    );
    first.leave_pins();
    drop(first);
    // The next natd anywhere removes them (this one, or a parallel test's),
    // and so does `natd down`, once the kernel has dismantled the deleted
    // namespace (asynchronously: its links are detached then).
    second.stop_natd().unwrap();
    second.start_natd(&[]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while first_pins.exists() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(200));
        let _ = second.natd_cli(&["down", "--lan", "none0", "--wan", "none1"]);
    }
    assert!(
        !first_pins.exists(),
        "the pins of a deleted namespace were not removed:\n{}",
        second.natd_log()
    );
    assert!(second.status().is_ok(), "the second gateway serves on");
}

/// State of another layout is refused with what to do, never started
/// over: a layout number that differs, and a map the new natd has that the
/// pinned state lacks. `natd down` clears either.
#[test]
fn a_different_map_layout_is_refused_never_started_over() {
    require_root!();
    let mut lab = NatLab::new(1, false).unwrap();
    lab.start_natd(&[]).unwrap();
    let cookie =
        nat_tests::natlab::in_ns(&lab.gw, || nat_userspace::datapath::netns_cookie().unwrap())
            .join()
            .unwrap();
    let root = nat_userspace::datapath::PinRoot::find(None, false)
        .unwrap()
        .expect("the bpffs natd pinned in");
    let pair = root.path().join(format!("natd/netns-{cookie}/lan0+wan0"));
    let own = pair.join(format!("layout-{}", nat_userspace::datapath::STATE_LAYOUT));
    assert!(lab.terminate_natd().unwrap().success());

    // A map missing from the pinned state (a natd with a map more).
    std::fs::remove_file(own.join("CLOCK")).unwrap();
    let refused = lab.start_natd(&[]).unwrap_err().to_string();
    assert!(
        refused.contains("has another map layout than this natd's")
            && refused.contains("CLOCK: not pinned")
            && refused.contains("natd down"),
        "{refused}"
    );
    assert!(
        attached_program(&lab, "lan0").is_some(),
        "the refused natd left the serving datapath alone"
    );

    // Another layout number.
    std::fs::rename(&own, pair.join("layout-0")).unwrap();
    let refused = lab.start_natd(&[]).unwrap_err().to_string();
    assert!(
        refused.contains("whose map layout is layout-0")
            && refused.contains("natd down --lan lan0 --wan wan0"),
        "{refused}"
    );
    assert!(
        lab.natd_cli(&["down", "--lan", "lan0", "--wan", "wan0"])
            .unwrap()
            .status
            .success()
    );
    assert_eq!(attached_program(&lab, "lan0"), None);
    lab.start_natd(&[]).unwrap();
}

fn udp_ports(lab: &NatLab) -> nat_userspace::control::PortUsage {
    lab.status()
        .unwrap()
        .ports
        .into_iter()
        .find(|p| p.proto == "udp")
        .unwrap()
}

/// Aging pauses while no natd runs, and resumes without a mass expiry: a
/// UDP session idle for 1 s of a 4 s timeout outlives 5 s without natd,
/// then expires on the restarted natd's clock. A port held back before
/// reuse stays held across the restart.
#[test]
fn aging_pauses_while_natd_is_down_and_held_ports_stay_held() {
    require_root!();
    let mut lab = NatLab::new(1, false).unwrap();
    lab.start_natd_with_config("port_hold = 120\n[timeouts]\nudp = 4\n")
        .unwrap();
    let _echo = EchoServer::start(&lab.server, ECHO_PORT);
    let inside = udp_socket_in(&lab.hosts[0], 40000);
    let held = udp_socket_in(&lab.hosts[0], 40001);
    inside
        .send_to(b"kept", SocketAddrV4::new(SERVER, ECHO_PORT))
        .unwrap();
    held.send_to(b"released", SocketAddrV4::new(SERVER, ECHO_PORT))
        .unwrap();
    let kept = lab
        .wait_external_of(
            "udp",
            SocketAddrV4::new(host_addr(0), 40000),
            Duration::from_secs(2),
        )
        .unwrap();
    lab.wait_external_of(
        "udp",
        SocketAddrV4::new(host_addr(0), 40001),
        Duration::from_secs(2),
    )
    .unwrap();
    // 40001 goes quiet and expires; 40000 keeps talking until the stop.
    let deadline = Instant::now() + Duration::from_secs(10);
    while udp_ports(&lab).held == 0 {
        assert!(Instant::now() < deadline, "the quiet session never expired");
        inside
            .send_to(b"kept", SocketAddrV4::new(SERVER, ECHO_PORT))
            .unwrap();
        thread::sleep(Duration::from_millis(200));
    }
    thread::sleep(Duration::from_secs(1));
    assert!(lab.terminate_natd().unwrap().success());
    thread::sleep(Duration::from_secs(5));
    lab.start_natd_with_config("port_hold = 120\n[timeouts]\nudp = 4\n")
        .unwrap();
    assert_eq!(
        lab.external_of("udp", SocketAddrV4::new(host_addr(0), 40000))
            .unwrap(),
        kept,
        "5 s without natd did not age the session out"
    );
    assert_eq!(
        udp_ports(&lab).held,
        1,
        "the port held before the restart is held after it"
    );
    let deadline = Instant::now() + Duration::from_secs(8);
    while lab
        .sessions()
        .unwrap()
        .iter()
        .any(|s| s.inside == format!("{}:40000", host_addr(0)))
    {
        assert!(
            Instant::now() < deadline,
            "the session never expired after the restart"
        );
        thread::sleep(Duration::from_millis(200));
    }
}

/// A forwarded TCP connection (two servers behind one public port) goes on
/// across a restart, every message echoed; a restart whose settings no
/// longer have the forward removes its port from the adopted datapath.
#[test]
fn forwarded_connections_survive_a_restart_and_dropped_forwards_go() {
    require_root!();
    let mut lab = NatLab::new(2, false).unwrap();
    let _servers: Vec<nat_tests::natlab::StreamEcho> = (0..2)
        .map(|i| nat_tests::natlab::StreamEcho::start(&lab.hosts[i], 9000))
        .collect();
    let forward = format!(
        "[[forward]]\nprotocol = \"tcp\"\nport = 9000\nto = [\"{}:9000\", \"{}:9000\"]\n",
        host_addr(0),
        host_addr(1)
    );
    lab.start_natd_with_config(&forward).unwrap();
    let public = SocketAddrV4::new(nat_tests::natlab::EXTERNAL, 9000);
    // Until the health checks have found both servers up.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !lab
        .forwards()
        .unwrap()
        .iter()
        .flat_map(|f| f.servers.iter())
        .all(|s| s.health == "up")
    {
        assert!(
            Instant::now() < deadline,
            "the servers never came up: {:?}",
            lab.forwards().unwrap()
        );
        thread::sleep(Duration::from_millis(100));
    }
    let conversation =
        nat_tests::natlab::tcp_conversation(&lab.server, public, 60, Duration::from_millis(50));
    thread::sleep(Duration::from_millis(700));
    assert!(lab.terminate_natd().unwrap().success());
    thread::sleep(Duration::from_millis(500));
    lab.start_natd_with_config(&forward).unwrap();
    // New connections right away: the servers the datapath had up start
    // up, before their first check.
    let refused: Vec<String> = (0..10)
        .filter_map(|_| {
            nat_tests::natlab::in_ns(&lab.server, move || {
                std::net::TcpStream::connect_timeout(&public.into(), Duration::from_secs(1))
            })
            .join()
            .unwrap()
            .err()
        })
        .map(|e| e.to_string())
        .collect();
    assert!(
        refused.is_empty(),
        "new connections refused just after the restart: {refused:?}"
    );
    let (echoed, longest) = conversation.join().unwrap().unwrap();
    assert_eq!(
        echoed, 60,
        "every message of the forwarded connection came back across the restart"
    );
    eprintln!(
        "forwarded connection across a restart: 60 of 60 echoed, longest round trip {longest:?}"
    );

    assert!(lab.terminate_natd().unwrap().success());
    lab.start_natd_with_config("").unwrap();
    assert!(
        lab.natd_log()
            .contains("forward ports and static mappings the previous natd's settings had"),
        "{}",
        lab.natd_log()
    );
    let refused = nat_tests::natlab::in_ns(&lab.server, move || {
        std::net::TcpStream::connect_timeout(&public.into(), Duration::from_secs(1))
    })
    .join()
    .unwrap();
    assert!(
        refused.is_err(),
        "a forward the settings dropped still forwards"
    );
}

/// `max_sessions` sizes the session tables when the datapath is made; a
/// natd that adopts one made with another size keeps that size (its
/// sessions carry over), reports it, and says in its log how to apply the
/// new one.
#[test]
fn a_restart_with_another_max_sessions_keeps_the_adopted_tables_and_says_so() {
    require_root!();
    let mut lab = NatLab::new(1, false).unwrap();
    let _server = EchoServer::start(&lab.server, ECHO_PORT);
    lab.start_natd_with_config("max_sessions = 2048\n").unwrap();
    assert_eq!(lab.status().unwrap().max_sessions, 2048);
    let sock = udp_socket_in(&lab.hosts[0], 6400);
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let exchange = || {
        sock.send_to(b"m", SocketAddrV4::new(SERVER, ECHO_PORT)).unwrap();
        let mut buf = [0u8; 64];
        sock.recv_from(&mut buf).is_ok()
    };
    assert!(exchange());
    let before = sessions_of(&lab);
    assert!(lab.terminate_natd().unwrap().success());
    lab.start_natd_with_config("max_sessions = 4096\n").unwrap();
    let status = lab.status().unwrap();
    assert_eq!(status.max_sessions, 2048, "the adopted tables' size, not the file's");
    assert_eq!(sessions_of(&lab), before, "the session did not carry over");
    assert!(exchange(), "the adopted session stopped working");
    let log = lab.natd_log();
    assert!(log.contains("max_sessions is 4096, but the adopted datapath's session tables hold 2048"), "{log}");
    // Made anew after `natd down`: the file's size.
    assert!(lab.stop_natd().unwrap().success());
    lab.start_natd_with_config("max_sessions = 4096\n").unwrap();
    assert_eq!(lab.status().unwrap().max_sessions, 4096);
}

/// What `one_session_left_pinned` leaves: the host's socket, the sessions,
/// and the directory the state is pinned in (valid while `_root`, the
/// bpffs that reached it, is held).
struct LeftPinned {
    socket: std::net::UdpSocket,
    sessions: BTreeMap<(String, String), String>,
    _root: nat_userspace::datapath::PinRoot,
    dir: std::path::PathBuf,
}

/// Starts natd, makes one UDP session from the LAN host's `port` to the
/// echo server, and stops natd with SIGTERM (the datapath serves on).
fn one_session_left_pinned(lab: &mut NatLab, port: u16) -> LeftPinned {
    lab.start_natd(&[]).unwrap();
    let socket = udp_socket_in(&lab.hosts[0], port);
    socket.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    socket.send_to(b"a", SocketAddrV4::new(SERVER, ECHO_PORT)).unwrap();
    socket.recv(&mut [0u8; 64]).expect("the echo through natd");
    let before = sessions_of(lab);
    assert_eq!(before.len(), 1, "{before:?}");
    let cookie = nat_tests::natlab::in_ns(&lab.gw, || nat_userspace::datapath::netns_cookie().unwrap()).join().unwrap();
    let root = nat_userspace::datapath::PinRoot::find(None, false).unwrap().expect("the bpffs natd pinned in");
    let own = root.path().join(format!("natd/netns-{cookie}/lan0+wan0/layout-{}", nat_userspace::datapath::STATE_LAYOUT));
    assert!(lab.terminate_natd().unwrap().success());
    LeftPinned { socket, sessions: before, _root: root, dir: own }
}

/// A state pinned by a natd from before a map was added (`DAEMON_ASLEEP`,
/// which tells the datapath when natd sleeps on the ring) is adopted: the
/// map is made empty and pinned, and the sessions carry over.
#[test]
fn a_state_pinned_before_a_map_was_added_is_adopted_with_the_map_made() {
    require_root!();
    let mut lab = NatLab::new(1, false).unwrap();
    let _server = EchoServer::start(&lab.server, ECHO_PORT);
    let LeftPinned { socket, sessions: before, _root, dir: own } = one_session_left_pinned(&mut lab, 40100);

    let added = own.join(nat_common::map_names::DAEMON_ASLEEP);
    std::fs::remove_file(&added).unwrap();
    lab.start_natd(&[]).unwrap();
    assert!(added.exists(), "the added map was not pinned");
    assert_eq!(sessions_of(&lab), before, "the sessions were not adopted");
    socket.send_to(b"b", SocketAddrV4::new(SERVER, ECHO_PORT)).unwrap();
    socket.recv(&mut [0u8; 64]).expect("the echo through the adopting natd");
}

/// A per-CPU array of `entries` u64s pinned at `pin`, entry `index` holding
/// `value` on CPU 0: what a natd whose COUNTERS was that size left (made
/// with the bpf(2) syscall, as no tool here makes a bare map).
fn pin_counters(pin: &std::path::Path, entries: u32, index: u32, value: u64) {
    const MAP_CREATE: libc::c_long = 0;
    const MAP_UPDATE_ELEM: libc::c_long = 2;
    const OBJ_PIN: libc::c_long = 6;
    const PERCPU_ARRAY: u32 = 6;
    let bpf = |cmd: libc::c_long, attr: &mut [u64; 16]| unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), std::mem::size_of_val(attr)) };
    // map_type, key_size, value_size, max_entries: four u32s.
    let mut create = [0u64; 16];
    create[0] = u64::from(PERCPU_ARRAY) | 4 << 32;
    create[1] = 8 | u64::from(entries) << 32;
    let fd = bpf(MAP_CREATE, &mut create);
    assert!(fd >= 0, "BPF_MAP_CREATE: {}", std::io::Error::last_os_error());
    let cpus = aya::util::nr_cpus().unwrap();
    let mut values = vec![0u64; cpus];
    values[0] = value;
    let key = index;
    let mut update = [0u64; 16];
    update[0] = fd as u64;
    update[1] = &key as *const u32 as u64;
    update[2] = values.as_ptr() as u64;
    assert_eq!(bpf(MAP_UPDATE_ELEM, &mut update), 0, "BPF_MAP_UPDATE_ELEM: {}", std::io::Error::last_os_error());
    let path = std::ffi::CString::new(pin.as_os_str().as_encoded_bytes()).unwrap();
    let mut obj_pin = [0u64; 16];
    obj_pin[0] = path.as_ptr() as u64;
    obj_pin[1] = fd as u64;
    assert_eq!(bpf(OBJ_PIN, &mut obj_pin), 0, "BPF_OBJ_PIN {}: {}", pin.display(), std::io::Error::last_os_error());
    unsafe { libc::close(fd as i32) };
}

/// A state pinned by a natd whose COUNTERS had no room for reasons added
/// since (53 entries, before `Reason::CAPACITY`): adopted, its counts
/// carried into a COUNTERS of this natd's size, and the sessions kept.
#[test]
fn a_state_whose_counters_are_fewer_is_adopted_with_its_counts_carried_over() {
    require_root!();
    let mut lab = NatLab::new(1, false).unwrap();
    let _server = EchoServer::start(&lab.server, ECHO_PORT);
    let LeftPinned { socket, sessions: before, _root, dir: own } = one_session_left_pinned(&mut lab, 40200);

    let counters = own.join(nat_common::map_names::COUNTERS);
    std::fs::remove_file(&counters).unwrap();
    pin_counters(&counters, 53, nat_common::Reason::TranslatedIn as u32, 1_000_000);
    lab.start_natd(&[]).unwrap();
    assert_eq!(aya::maps::MapInfo::from_pin(&counters).unwrap().max_entries(), nat_common::Reason::CAPACITY, "a COUNTERS of this natd's size");
    assert_eq!(sessions_of(&lab), before, "the sessions were not adopted");
    socket.send_to(b"b", SocketAddrV4::new(SERVER, ECHO_PORT)).unwrap();
    socket.recv(&mut [0u8; 64]).expect("the echo through the adopting natd");
    let translated_in = lab.stats().unwrap().get("translated_in").unwrap();
    assert!(translated_in > 1_000_000, "the old counts carried over, the new ones added: {translated_in}");
    assert!(lab.natd_log().contains("the pinned COUNTERS has 53 entries, this natd's 64: its counts carried over"), "{}", lab.natd_log());
}
