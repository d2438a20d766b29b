//! Prometheus metrics (`--metrics`): scraped with curl from a LAN host's
//! namespace, counters that follow the traffic, and an exposition that
//! `promtool check metrics` accepts.

use std::{
    io::Write as _,
    net::SocketAddrV4,
    process::Stdio,
    thread,
    time::{Duration, Instant},
};

use nat_tests::{
    natlab::{EXTERNAL, EchoServer, GW_LAN, IO_TIMEOUT, NatLab, host_addr, udp_socket_in},
    netns::Netns,
    require_root,
};

use super::{SERVICE_PORT, run_bounded, tcp_request, udp_request};

const METRICS_PORT: u16 = 9469;

fn url(path: &str) -> String {
    format!("http://{GW_LAN}:{METRICS_PORT}{path}")
}

/// One scrape of /metrics from `host`, bounded.
fn scrape(host: &Netns) -> String {
    run_bounded(host, 10, &["curl", "-sS", "--fail", "--max-time", "5", &url("/metrics")])
}

/// The value of the sample `series` (name with its labels, as written).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Scrapes until `ready` holds for the exposition (the loop publishes once
/// a second), at most 10 s; returns the last scrape.
fn scrape_until(host: &Netns, what: &str, ready: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = scrape(host);
        if ready(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "{what} never showed in the metrics:\n{text}");
        thread::sleep(Duration::from_millis(200));
    }
}

/// `promtool check metrics` on `text`, run in `ns` (it only reads stdin).
fn promtool_check(ns: &Netns, text: &str) -> (bool, String) {
    let mut child = ns
        .command(&["timeout", "20", "promtool", "check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; `cargo xtask bootstrap` installs it)");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// The counters and gauges a LAN host scrapes follow a UDP and a TCP flow
/// through the gateway, scrapes go on while new flows are set up, the
/// output passes promtool, and other paths are 404.
#[test]
fn metrics_follow_the_traffic_and_pass_promtool() {
    require_root!();
    let mut lab = NatLab::new(2, false).unwrap();
    lab.start_natd(&["--metrics", &format!("{GW_LAN}:{METRICS_PORT}")]).unwrap();
    let _server = EchoServer::start(&lab.server, SERVICE_PORT);
    let (host, scraper) = (&lab.hosts[0], &lab.hosts[1]);
    let translated_out = "natd_datapath_packets_total{reason=\"translated_out\"}";

    let before = scrape_until(scraper, "a first snapshot", |t| value(t, translated_out).is_some());
    let out_before = value(&before, translated_out).unwrap();
    assert_eq!(value(&before, "natd_sessions{proto=\"udp\",state=\"active\"}"), Some(0.0), "{before}");

    // Scrapes in a loop from one host while the other sets up new flows:
    // each flow still gets its answer.
    let hammer = {
        let scraper = Netns { name: scraper.name.clone() };
        thread::spawn(move || {
            let mut sizes = Vec::new();
            for _ in 0..20 {
                sizes.push(scrape(&scraper).len());
            }
            std::mem::forget(scraper);
            sizes
        })
    };
    for port in [5001, 5002, 5003] {
        let reply = udp_request(host, port, b"m".to_vec()).join().unwrap();
        assert_eq!(reply.unwrap_or_else(|e| panic!("UDP from port {port}: {e}\n{}", lab.natd_log())), b"echo:m");
    }
    let (reply, _) = tcp_request(host, 5004, b"t".to_vec()).join().unwrap().unwrap_or_else(|e| panic!("TCP: {e}\n{}", lab.natd_log()));
    assert_eq!(reply, b"echo:t");
    let sizes = hammer.join().unwrap();
    assert!(sizes.iter().all(|n| *n > 1000), "every scrape answered in full: {sizes:?}");

    let after = scrape_until(scraper, "the UDP and TCP sessions", |t| {
        value(t, "natd_sessions{proto=\"udp\",state=\"active\"}") == Some(3.0)
            && value(t, "natd_mappings_created_total").is_some_and(|n| n >= 4.0)
            && value(t, translated_out).is_some_and(|n| n >= out_before + 3.0)
    });
    // What the README shows (`-- --nocapture`).
    println!("--- natd's /metrics, scraped from a LAN host ---\n{after}--- end ---");

    // What the traffic did, as `natd stats` and `natd status` tell it too.
    let tcp_sessions: f64 = ["opening", "established", "closing", "reset"]
        .iter()
        .filter_map(|state| value(&after, &format!("natd_sessions{{proto=\"tcp\",state=\"{state}\"}}")))
        .sum();
    assert_eq!(tcp_sessions, 1.0, "one TCP session:\n{after}");
    let udp_in_use = value(&after, &format!("natd_ports{{proto=\"udp\",external_ip=\"{EXTERNAL}\",state=\"in_use\"}}"));
    assert_eq!(udp_in_use, Some(3.0), "{after}");
    let stats = lab.stats().unwrap();
    let out_now = value(&after, translated_out).unwrap();
    assert!(out_now <= stats.get("translated_out").unwrap() as f64, "the scrape ({out_now}) is ahead of natd stats: {stats:?}");
    assert!(value(&after, "natd_datapath_packets_total{reason=\"translated_in\"}").unwrap() >= 5.0, "{after}");
    let status = lab.status().unwrap();
    let udp_status = status.ports.iter().find(|p| p.proto == "udp").unwrap();
    let udp_free = value(&after, &format!("natd_ports{{proto=\"udp\",external_ip=\"{EXTERNAL}\",state=\"free\"}}")).unwrap();
    assert_eq!(udp_free, udp_status.free as f64, "the same free ports as natd status");
    assert_eq!(value(&after, "natd_new_flows_refused_total{cause=\"no_port\"}"), Some(0.0));
    assert!(value(&after, "natd_aging_scan_duration_seconds_count").unwrap() >= 1.0, "{after}");
    assert!(value(&after, "natd_snapshot_age_seconds").unwrap() < 2.0, "the loop publishes every second:\n{after}");
    assert!(value(&after, "natd_snapshot_duration_seconds").unwrap() < 0.1, "copying a few sessions takes the loop far less:\n{after}");
    assert!(value(&after, "process_resident_memory_bytes").unwrap() > 1e6, "{after}");
    assert!(value(&after, "process_start_time_seconds").unwrap() > 1.6e9, "{after}");

    let (valid, report) = promtool_check(host, &after);
    assert!(valid, "promtool check metrics refused the exposition:\n{report}\n{after}");
    assert!(report.trim().is_empty(), "promtool found problems:\n{report}");

    let code = |path: &str| run_bounded(scraper, 10, &["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5", &url(path)]);
    assert_eq!(code("/"), "404");
    assert_eq!(code("/metrics/x"), "404");

    let scraper = Netns { name: scraper.name.clone() };
    assert_eq!(lab.stop_natd().unwrap().code(), Some(0));
    let gone = scraper.command(&["curl", "-s", "--max-time", "3", &url("/metrics")]).output().unwrap();
    assert!(!gone.status.success(), "natd stopped, but its metrics port still answers");
    // The lab removes the namespace.
    std::mem::forget(scraper);
}

/// `natd check` names a metrics address inside the NAT's port range, with
/// what is allowed.
#[test]
fn natd_check_names_a_bad_metrics_address() {
    require_root!();
    let lab = NatLab::new(1, false).unwrap();
    let config = lab.config_file(&format!("lan = \"lan0\"\nwan = \"wan0\"\nmetrics = \"{GW_LAN}:25000\"\n")).unwrap();
    let out = lab.natd_cli(&["check", "--config", config.to_str().unwrap()]).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("metrics = \"{GW_LAN}:25000\": port 25000 is in port_range 20000-32767")), "{stderr}");
    let config = lab.config_file(&format!("lan = \"lan0\"\nwan = \"wan0\"\nmetrics = \"{GW_LAN}:{METRICS_PORT}\"\n")).unwrap();
    let out = lab.natd_cli(&["check", "--config", config.to_str().unwrap()]).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(&format!("metrics: http://{GW_LAN}:{METRICS_PORT}/metrics")), "{stdout}");
    // The lab's interfaces are veths: their frames are tested.
    assert!(stdout.contains("partial_checksums auto: lan0 tested, wan0 tested"), "{stdout}");
}

/// A load-balanced UDP forward over two LAN servers: both up, and the new
/// flows from the WAN counted per server, active and in total.
#[test]
fn forward_servers_show_health_and_flows() {
    require_root!();
    let mut lab = NatLab::new(3, false).unwrap();
    let servers = [0, 1].map(|i| format!("{}:{SERVICE_PORT}", host_addr(i)));
    lab.start_natd_with_config(&format!(
        "metrics = \"{GW_LAN}:{METRICS_PORT}\"\n[[forward]]\nname = \"echo\"\nprotocol = \"udp\"\nport = {SERVICE_PORT}\nto = [\"{}\", \"{}\"]\n",
        servers[0], servers[1]
    ))
    .unwrap();
    let _echoes = [EchoServer::start(&lab.hosts[0], SERVICE_PORT), EchoServer::start(&lab.hosts[1], SERVICE_PORT)];
    const FLOWS: u16 = 8;
    for port in 0..FLOWS {
        let client = udp_socket_in(&lab.server, 6000 + port);
        client.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        client.send_to(b"f", SocketAddrV4::new(EXTERNAL, SERVICE_PORT)).unwrap();
        let mut buf = [0u8; 64];
        let (n, _) = client.recv_from(&mut buf).unwrap_or_else(|e| panic!("no echo through the forward: {e}\n{}", lab.natd_log()));
        assert_eq!(&buf[..n], b"echo:f");
    }
    let series = |name: &str, server: &str| format!("{name}{{forward=\"echo\",server=\"{server}\"}}");
    let total = |text: &str, name: &str| servers.iter().map(|s| value(text, &series(name, s)).unwrap_or(0.0)).sum::<f64>();
    // The forwards' figures are refreshed every 5 s.
    let text = scrape_until(&lab.hosts[2], "the forward's flows", |t| total(t, "natd_forward_server_new_flows_total") == f64::from(FLOWS));
    for server in &servers {
        assert_eq!(value(&text, &series("natd_forward_server_up", server)), Some(1.0), "{text}");
        assert_eq!(value(&text, &series("natd_forward_server_weight", server)), Some(1.0), "{text}");
    }
    assert_eq!(total(&text, "natd_forward_server_active_flows"), f64::from(FLOWS), "{text}");
    // The first packet to a server whose neighbour entry is not resolved
    // yet counts as no_neighbour_to_daemon, not forwarded_new_flow.
    let reason = |r: &str| value(&text, &format!("natd_datapath_packets_total{{reason=\"{r}\"}}")).unwrap();
    assert_eq!(reason("forwarded_new_flow") + reason("no_neighbour_to_daemon"), f64::from(FLOWS), "{text}");
    let (valid, report) = promtool_check(&lab.hosts[2], &text);
    assert!(valid && report.trim().is_empty(), "promtool:\n{report}\n{text}");
}
