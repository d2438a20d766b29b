//! The exposition without root: names, types, labels and values of a
//! hand-made snapshot; /proc parsing; the HTTP server on loopback while
//! the caller's runtime is blocked.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use nat_common::{counters::Reason, proto, sctp_chunks, tcp_flags};

use super::{
    PortCount, ScanHistogram, ServerMetrics, SessionCount, Snapshot, count_states, encode,
    process::{ProcessStats, parse},
    server::Server,
};
use crate::nat::{counters::DaemonCounters, sessions::session_state};

fn snapshot(taken: Instant) -> Snapshot {
    let mut aging = ScanHistogram::default();
    for micros in [30, 40, 200, 3_000] {
        aging.observe(Duration::from_micros(micros));
    }
    aging.observe(Duration::from_secs(2));
    Snapshot {
        taken: Some(taken),
        previous_took: Duration::from_micros(250),
        datapath: Reason::ALL.iter().map(|r| (*r, *r as u64 * 10)).collect(),
        daemon: DaemonCounters { mappings_created: 7, refused_quota: 2, refused_no_port: 1, first_packets_sent: 5, ..Default::default() },
        esp: crate::nat::esp::EspCounters { learned: 3, held: 1, ..Default::default() },
        fragments_waiting: 3,
        mapping_log_lost: 11,
        sessions: vec![
            SessionCount { proto: "tcp", state: "established", count: 4 },
            SessionCount { proto: "udp", state: "active", count: 2 },
        ],
        sessions_max: 1 << 20,
        ports: vec![PortCount { proto: "udp", external: Ipv4Addr::new(203, 0, 113, 1), in_use: 2, held: 1, free: 97 }],
        aging,
        forwards: vec![ServerMetrics {
            forward: "web".into(),
            server: "10.0.0.5:80".into(),
            health: "up".into(),
            weight: 1,
            active_flows: 6,
            new_flows: 40,
        }],
    }
}

fn exposition(snapshot: &Snapshot, process: Option<&ProcessStats>, now: Instant) -> String {
    let mut out = String::new();
    encode(&mut out, snapshot, process, now).unwrap();
    out
}

/// The sample lines (not comments) of `text`.
fn samples(text: &str) -> Vec<&str> {
    text.lines().filter(|l| !l.starts_with('#')).collect()
}

fn has_type(text: &str, name: &str, kind: &str) -> bool {
    text.lines().any(|l| l == format!("# TYPE {name} {kind}"))
}

#[test]
fn every_datapath_reason_is_a_labelled_counter() {
    let now = Instant::now();
    let text = exposition(&snapshot(now), None, now);
    assert!(has_type(&text, "natd_datapath_packets_total", "counter"), "{text}");
    for reason in Reason::ALL {
        let line = format!("natd_datapath_packets_total{{reason=\"{}\"}} {}", reason.name(), *reason as u64 * 10);
        assert!(samples(&text).contains(&line.as_str()), "missing {line}\n{text}");
    }
}

#[test]
fn daemon_counters_refusals_and_gauges() {
    let now = Instant::now();
    let text = exposition(&snapshot(now), None, now);
    let lines = samples(&text);
    for expected in [
        "natd_mappings_created_total 7",
        "natd_first_packets_sent_total 5",
        "natd_new_flows_refused_total{cause=\"quota\"} 2",
        "natd_new_flows_refused_total{cause=\"no_port\"} 1",
        "natd_new_flows_refused_total{cause=\"map_full\"} 0",
        "natd_fragments_waiting 3",
        "natd_mapping_log_lost_total 11",
        "natd_sessions{proto=\"tcp\",state=\"established\"} 4",
        "natd_sessions{proto=\"udp\",state=\"active\"} 2",
        "natd_sessions_max 1048576",
        "natd_ports{proto=\"udp\",external_ip=\"203.0.113.1\",state=\"in_use\"} 2",
        "natd_ports{proto=\"udp\",external_ip=\"203.0.113.1\",state=\"held\"} 1",
        "natd_ports{proto=\"udp\",external_ip=\"203.0.113.1\",state=\"free\"} 97",
        "natd_forward_server_up{forward=\"web\",server=\"10.0.0.5:80\"} 1",
        "natd_forward_server_weight{forward=\"web\",server=\"10.0.0.5:80\"} 1",
        "natd_forward_server_active_flows{forward=\"web\",server=\"10.0.0.5:80\"} 6",
        "natd_forward_server_new_flows_total{forward=\"web\",server=\"10.0.0.5:80\"} 40",
        "natd_snapshot_age_seconds 0.0",
        "natd_snapshot_duration_seconds 0.00025",
    ] {
        assert!(lines.contains(&expected), "missing {expected}\n{text}");
    }
    for (name, kind) in [
        ("natd_mappings_created_total", "counter"),
        ("natd_new_flows_refused_total", "counter"),
        ("natd_sessions", "gauge"),
        ("natd_sessions_max", "gauge"),
        ("natd_ports", "gauge"),
        ("natd_forward_server_up", "gauge"),
        ("natd_forward_server_new_flows_total", "counter"),
        ("natd_aging_scan_duration_seconds", "histogram"),
        ("natd_build_info", "gauge"),
    ] {
        assert!(has_type(&text, name, kind), "no TYPE {name} {kind}\n{text}");
    }
    // Every daemon counter has a metric: a counter added to
    // `DaemonCounters` without one fails here.
    for counter in DaemonCounters::default().named() {
        let covered = super::encode::DAEMON_COUNTERS.iter().any(|(key, _, _)| *key == counter.name)
            || super::encode::REFUSALS.iter().any(|(key, _)| *key == counter.name);
        assert!(covered, "daemon counter {} has no metric", counter.name);
    }
    for counter in crate::nat::esp::EspCounters::default().named() {
        assert!(super::encode::ESP_COUNTERS.iter().any(|(key, _, _)| *key == counter.name), "ESP counter {} has no metric", counter.name);
    }
    assert!(text.contains("natd_esp_sas_learned_total 3"), "{text}");
}

#[test]
fn aging_histogram_buckets_are_cumulative_in_seconds() {
    let now = Instant::now();
    let text = exposition(&snapshot(now), None, now);
    let lines = samples(&text);
    for expected in [
        "natd_aging_scan_duration_seconds_bucket{le=\"5e-05\"} 2",
        "natd_aging_scan_duration_seconds_bucket{le=\"0.00025\"} 3",
        "natd_aging_scan_duration_seconds_bucket{le=\"0.005\"} 4",
        "natd_aging_scan_duration_seconds_bucket{le=\"1\"} 4",
        "natd_aging_scan_duration_seconds_bucket{le=\"+Inf\"} 5",
        "natd_aging_scan_duration_seconds_count 5",
    ] {
        assert!(lines.contains(&expected), "missing {expected}\n{text}");
    }
    let sum = lines.iter().find_map(|l| l.strip_prefix("natd_aging_scan_duration_seconds_sum ")).unwrap();
    assert!((sum.parse::<f64>().unwrap() - 2.00327).abs() < 1e-9, "{sum}");
}

#[test]
fn names_follow_the_conventions() {
    let now = Instant::now();
    let process = ProcessStats { cpu_seconds: 1.5, resident_bytes: 4096, virtual_bytes: 8192, start_time_seconds: 1e9, open_fds: 9, max_fds: 1024, threads: 3 };
    let text = exposition(&snapshot(now), Some(&process), now);
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let words: Vec<&str> = line.split(' ').collect();
        let (name, kind) = (words[2], words[3]);
        assert!(name.starts_with("natd_") || name.starts_with("process_"), "{line}");
        assert_eq!(name.ends_with("_total"), kind == "counter", "only counters end in _total: {line}");
        assert!(!name.contains("_ms") && !name.contains("milli") && !name.contains("_kb"), "base units: {line}");
    }
    for expected in [
        "process_cpu_seconds_total 1.5",
        "process_resident_memory_bytes 4096",
        "process_virtual_memory_bytes 8192",
        "process_open_fds 9",
        "process_max_fds 1024",
        "process_threads 3",
    ] {
        assert!(samples(&text).contains(&expected), "missing {expected}\n{text}");
    }
    // Every family has HELP and TYPE once.
    let helps = text.lines().filter(|l| l.starts_with("# HELP ")).count();
    let types = text.lines().filter(|l| l.starts_with("# TYPE ")).count();
    assert_eq!(helps, types);
}

#[test]
fn no_forwards_no_forward_families_and_no_snapshot_no_age() {
    let now = Instant::now();
    let text = exposition(&Snapshot::default(), None, now);
    assert!(!text.contains("natd_forward_server"), "{text}");
    assert!(!text.contains("natd_snapshot_age_seconds") && !text.contains("natd_snapshot_duration_seconds"), "{text}");
    assert!(!text.contains("process_"), "no /proc figures, no process metrics: {text}");
    assert!(text.contains("natd_build_info{version=\""), "{text}");
}

#[test]
fn snapshot_age_grows_when_the_loop_stalls() {
    let taken = Instant::now();
    let text = exposition(&snapshot(taken), None, taken + Duration::from_millis(7500));
    assert!(samples(&text).contains(&"natd_snapshot_age_seconds 7.5"), "{text}");
}

#[test]
fn proc_self_figures() {
    // A command name with spaces and a parenthesis, as proc(5) allows.
    let stat = "4242 (natd (x) y) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 50 0 0 20 0 5 0 12345 104857600 2560 18446744073709551615";
    let statm = "25600 2560 300 100 0 5000 0";
    let proc_stat = "cpu  1 2 3\nbtime 1700000000\nprocesses 42\n";
    let stats = parse(stat, statm, proc_stat, 100, 4096).unwrap();
    assert_eq!(stats.cpu_seconds, 3.0, "(250 + 50) ticks at 100/s");
    assert_eq!(stats.threads, 5);
    assert_eq!(stats.virtual_bytes, 104_857_600);
    assert_eq!(stats.resident_bytes, 2560 * 4096);
    assert_eq!(stats.start_time_seconds, 1_700_000_000.0 + 123.45);
    assert!(parse("garbage", statm, proc_stat, 100, 4096).is_err());

    let me = ProcessStats::read().unwrap();
    assert!(me.resident_bytes > 0 && me.open_fds > 0 && me.threads >= 1 && me.max_fds > 0, "{me:?}");
}

/// Sends one HTTP/1.1 request and returns (status line, body).
fn http(addr: SocketAddr, method: &str, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(stream, "{method} {path} HTTP/1.1\r\nHost: natd\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (head.lines().next().unwrap_or_default().to_string(), body.to_string())
}

/// The server answers on its own thread: a scrape completes while the
/// thread that started it (the packet loop's runtime) is blocked.
#[test]
fn scrapes_are_served_while_the_loop_is_blocked() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let published = Arc::new(Mutex::new(Arc::new(snapshot(Instant::now()))));
        let server = Server::start("127.0.0.1:0".parse().unwrap(), Arc::clone(&published)).unwrap();
        let addr = server.addr;
        let scraper = std::thread::spawn(move || (http(addr, "GET", "/metrics"), http(addr, "GET", "/"), http(addr, "POST", "/metrics")));
        // Blocks this runtime's only thread until the scrapes are done.
        let ((status, body), (missing, _), (post, _)) = scraper.join().unwrap();
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(body.contains("natd_mappings_created_total 7"), "{body}");
        assert!(body.contains("process_resident_memory_bytes "), "{body}");
        assert_eq!(missing, "HTTP/1.1 404 Not Found");
        assert_eq!(post, "HTTP/1.1 405 Method Not Allowed");
        drop(server);
        assert!(TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err(), "the listener outlived the server");
    });
}

#[test]
fn a_taken_port_names_the_setting() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let published = Arc::new(Mutex::new(Arc::new(Snapshot::default())));
    let err = Server::start(addr, published).err().expect("the port is taken");
    assert!(format!("{err:#}").starts_with(&format!("metrics = \"{addr}\": cannot listen there")), "{err:#}");
}

/// Tallied by flags, named once per pair: the same counts as naming each
/// session's state, every known pair listed (zeros too), untracked flag
/// bits ignored, a protocol natd does not know still counted.
#[test]
fn sessions_are_counted_by_protocol_and_state() {
    let (syn, ack, fin, rst, psh) = (tcp_flags::SYN, tcp_flags::ACK, tcp_flags::FIN, tcp_flags::RST, 0x08);
    let sessions = [
        (proto::TCP, syn, 0),
        (proto::TCP, syn | ack, syn | ack),
        (proto::TCP, syn | ack | psh, syn | ack),
        (proto::TCP, syn | ack | fin, syn | ack),
        (proto::TCP, syn, rst | ack),
        (proto::UDP, 0, 0),
        (proto::UDP, 0, 0),
        (proto::SCTP, sctp_chunks::INIT, sctp_chunks::INIT_ACK),
        (proto::SCTP, sctp_chunks::DATA, sctp_chunks::DATA),
        (proto::SCTP, sctp_chunks::DATA, sctp_chunks::ABORT),
        (253, 0, 0),
    ];
    let counts = count_states(sessions);
    let count = |p: &str, state: &str| counts.iter().find(|c| c.proto == p && c.state == state).map(|c| c.count);
    for (p, out, back) in sessions.iter().filter(|(p, _, _)| *p != 253) {
        let expected = sessions.iter().filter(|(q, o, b)| q == p && session_state(*q, *o, *b) == session_state(*p, *out, *back)).count() as u64;
        assert_eq!(count(proto::name(*p), session_state(*p, *out, *back)), Some(expected), "{counts:?}");
    }
    assert_eq!(count("tcp", "established"), Some(2), "PSH is not tracked: {counts:?}");
    assert_eq!(count("icmp", "active"), Some(0), "every known pair, zeros too: {counts:?}");
    assert_eq!(count("tcp", "opening"), Some(1));
    assert_eq!((count("sctp", "opening"), count("sctp", "established"), count("sctp", "aborted"), count("sctp", "closing")), (Some(1), Some(1), Some(1), Some(0)), "DATA and ABORT lie outside TCP's tracked bits: {counts:?}");
    assert_eq!(count("other", "active"), Some(1), "{counts:?}");
    assert_eq!(counts.iter().map(|c| c.count).sum::<u64>(), sessions.len() as u64);
}
