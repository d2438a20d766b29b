//! Mapping logs (`log_mappings`) without destinations.

use std::{
    thread,
    time::{Duration, Instant},
};

use nat_tests::{
    natlab::{EchoServer, NatLab, SERVER},
    require_root,
};

use super::{SERVICE_PORT, udp_request};

/// RFC 6888 REQ-12..15: with `log_mappings`, natd logs each mapping made and
/// removed, datapath-claimed or its own, with the time, inside and external
/// endpoints and lifetime, and never a destination address or port.
#[test]
fn mappings_are_logged_without_destinations() {
    require_root!();
    let mut lab = NatLab::new(1, true).unwrap();
    lab.start_natd_with_config("log_mappings = true\n[timeouts]\nudp = 2\n").unwrap();
    let _server = EchoServer::start(&lab.server, SERVICE_PORT);
    for port in [6001, 25000] {
        assert_eq!(udp_request(&lab.hosts[0], port, b"l".to_vec()).join().unwrap().unwrap(), b"echo:l");
    }
    let externals: Vec<String> = lab.sessions().unwrap().into_iter().map(|s| s.external).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !lab.sessions().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the mappings never expired");
        thread::sleep(Duration::from_millis(200));
    }
    let log = lab.natd_log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("natd: mapping ")).collect();
    assert_eq!(lines.len(), 4, "two made, two removed:\n{log}");
    for external in &externals {
        for what in ["created", "removed"] {
            assert!(
                lines.iter().any(|l| l.contains(&format!("mapping {what} ")) && l.contains(&format!("external={external}")) && l.contains("inside=10.77.1.10:")),
                "no `{what}` line for {external}:\n{log}"
            );
        }
    }
    assert!(lines.iter().all(|l| l.contains(" time=") && !l.contains(&SERVER.to_string()) && !l.contains(&SERVICE_PORT.to_string())), "{log}");
    assert!(lines.iter().filter(|l| l.contains("removed")).all(|l| l.contains(" lifetime_s=")), "{log}");
}

/// `mapping_log`: the compact lines go to a file (flushed within a second),
/// made and removed with the lifetime, never a destination; a reload moves
/// them to a syslog socket (RFC 3164 framing, facility daemon).
#[test]
fn mapping_logs_go_compact_to_a_file_and_after_a_reload_to_syslog() {
    require_root!();
    let mut lab = NatLab::new(1, true).unwrap();
    let dir = std::env::temp_dir().join(format!("{}-maplog", lab.gw.name));
    std::fs::create_dir_all(&dir).unwrap();
    let (file, socket_path) = (dir.join("mappings.log"), dir.join("syslog.sock"));
    let config = |target: &std::path::Path, syslog: bool| {
        format!("log_mappings = true\nmapping_log = \"{}{}\"\n[timeouts]\nudp = 2\n", if syslog { "syslog:" } else { "" }, target.display())
    };
    lab.start_natd_with_config(&config(&file, false)).unwrap();
    let _server = EchoServer::start(&lab.server, SERVICE_PORT);
    assert_eq!(udp_request(&lab.hosts[0], 6001, b"l".to_vec()).join().unwrap().unwrap(), b"echo:l");
    let external = lab.sessions().unwrap()[0].external.clone();
    let inside = lab.sessions().unwrap()[0].inside.clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    let removed = loop {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains(" - udp ")) {
            assert!(text.lines().any(|l| l.ends_with(&format!(" + udp {inside} {external}"))), "{text}");
            break line.to_string();
        }
        assert!(Instant::now() < deadline, "no removal line within 10 s: {text:?}");
        thread::sleep(Duration::from_millis(100));
    };
    let fields: Vec<&str> = removed.split(' ').collect();
    assert_eq!(fields[1..5], ["-", "udp", inside.as_str(), external.as_str()], "{removed}");
    let lifetime: u64 = fields[5].parse().unwrap();
    assert!((2..=5).contains(&lifetime), "{removed}");
    assert!(!std::fs::read_to_string(&file).unwrap().contains(&SERVER.to_string()), "never a destination");

    let syslog = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    syslog.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    lab.config_file(&config(&socket_path, true)).unwrap();
    let out = lab.natd_cli(&["reload"]).unwrap();
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("mapping_log: "), "{out:?}");
    assert_eq!(udp_request(&lab.hosts[0], 6002, b"l".to_vec()).join().unwrap().unwrap(), b"echo:l");
    let mut buf = [0u8; 512];
    let n = syslog.recv(&mut buf).expect("a syslog line within 5 s");
    let message = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(message.starts_with("<30>natd[") && message.contains(" + udp "), "{message}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `natd sessions` filters: "who had EXTERNAL:PORT" in one command, by
/// protocol and by inside address too.
#[test]
fn sessions_are_filtered_by_protocol_inside_and_external() {
    require_root!();
    let mut lab = NatLab::new(2, false).unwrap();
    lab.start_natd(&[]).unwrap();
    let _server = EchoServer::start(&lab.server, SERVICE_PORT);
    for host in 0..2 {
        assert_eq!(udp_request(&lab.hosts[host], 6001, b"f".to_vec()).join().unwrap().unwrap(), b"echo:f");
    }
    let all = lab.sessions().unwrap();
    assert_eq!(all.len(), 2, "{all:?}");
    let wanted = &all[0];
    let out = lab.natd_cli(&["sessions", "--json", "--external", &wanted.external]).unwrap();
    let found: Vec<nat_userspace::control::Session> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].inside, wanted.inside);
    let host = wanted.inside.split(':').next().unwrap();
    let out = lab.natd_cli(&["sessions", "--proto", "udp", "--inside", host]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&wanted.inside) && text.contains("1 session(s)"), "{text}");
    let out = lab.natd_cli(&["sessions", "--proto", "tcp"]).unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 session(s)"));
    let bad = lab.natd_cli(&["sessions", "--external", "nope"]).unwrap();
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("must be PORT or ADDR:PORT"), "{bad:?}");
}
