//! `--xdp-mode generic` carries the same traffic.

use nat_tests::{
    natlab::{EchoServer, NatLab},
    require_root,
};

use super::{SERVICE_PORT, ping, tcp_request, udp_request};

/// `--xdp-mode generic` (skb mode, for drivers without native XDP) carries
/// the same traffic, and `natd status` says which mode serves.
#[test]
fn generic_mode_carries_udp_tcp_and_ping() {
    require_root!();
    let mut lab = NatLab::new(1, true).unwrap();
    lab.start_natd(&["--xdp-mode", "generic"]).unwrap();
    assert_eq!(lab.status().unwrap().xdp_mode, "generic");
    let _server = EchoServer::start(&lab.server, SERVICE_PORT);
    assert_eq!(udp_request(&lab.hosts[0], 6300, b"g".to_vec()).join().unwrap().unwrap(), b"echo:g");
    let (reply, _) = tcp_request(&lab.hosts[0], 6301, b"g".to_vec()).join().unwrap().unwrap();
    assert_eq!(reply, b"echo:g");
    let pinged = ping(&lab.hosts[0], "99", 2).join().unwrap().expect("ping");
    assert!(pinged.contains("2 received"), "{pinged}");
    assert!(lab.gw.ip(&["link", "show", "lan0"]).unwrap().contains("xdpgeneric"), "not attached in generic mode");
}
