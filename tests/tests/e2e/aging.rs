//! Aging: idle mappings removed on time, their ports back after the hold.

use std::{
    thread,
    time::{Duration, Instant},
};

use nat_tests::{
    natlab::{EchoServer, NatLab},
    require_root,
};

use super::{SERVICE_PORT, udp_request};

/// RFC 4787 REQ-5, RFC 6888 REQ-8: timers and the port hold.
///
/// Short timeouts: the mapping disappears on time and its port returns to
/// the pool after the hold.
#[test]
fn aging_removes_idle_mappings_on_time_and_frees_their_ports() {
    require_root!();
    let mut lab = NatLab::new(1, false).unwrap();
    lab.start_natd_with_config("port_hold = 1\n[timeouts]\nudp = 2\nicmp = 2\n").unwrap();
    let _server = EchoServer::start(&lab.server, SERVICE_PORT);
    assert_eq!(udp_request(&lab.hosts[0], 6100, b"a".to_vec()).join().unwrap().unwrap(), b"echo:a");
    let sent = Instant::now();
    assert_eq!(lab.sessions().unwrap().len(), 1);
    assert_eq!(lab.status().unwrap().ports.iter().find(|p| p.proto == "udp").unwrap().in_use, 1);

    let deadline = sent + Duration::from_secs(8);
    while !lab.sessions().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the mapping outlived its 2 s timeout by far: {:?}", lab.sessions().unwrap());
        thread::sleep(Duration::from_millis(100));
    }
    let gone_after = sent.elapsed();
    assert!(gone_after >= Duration::from_secs(2), "removed after {gone_after:?}, before its 2 s timeout");
    thread::sleep(Duration::from_millis(2500));
    let udp = lab.status().unwrap().ports.into_iter().find(|p| p.proto == "udp").unwrap();
    assert_eq!((udp.in_use, udp.held), (0, 0), "the port did not return to the pool: {udp:?}");
    assert_eq!(lab.stats().unwrap().get("mappings_expired"), Some(1));
}
