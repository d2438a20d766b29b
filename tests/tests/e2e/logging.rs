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
