//! When the world changes under natd (issue 15): a served interface
//! deleted makes natd say so and exit non-zero, whichever side; the WAN
//! address natd translates to removed is said loudly while natd keeps
//! serving; with `on_interface_loss = "wait"`, natd keeps its sessions
//! and re-attaches to the interface come back.

use std::{
    net::{SocketAddr, SocketAddrV4},
    time::Duration,
};

use nat_tests::{
    natlab::{EXTERNAL, GW_LAN, NatLab, SERVER, host_addr, udp_socket_in},
    require_root,
};

#[test]
fn a_deleted_interface_stops_natd_with_an_error_naming_it() {
    require_root!();
    for ifname in ["lan0", "wan0"] {
        let mut lab = NatLab::new(1, false).unwrap();
        lab.start_natd(&[]).unwrap();
        assert_eq!(lab.wait_natd_exit(Duration::from_millis(300)).unwrap(), None, "natd serves");
        lab.gw.ip(&["link", "del", ifname]).unwrap();
        let status = lab.wait_natd_exit(Duration::from_secs(5)).unwrap().unwrap_or_else(|| panic!("natd still runs 5 s after {ifname} was deleted"));
        assert!(!status.success(), "{status}");
        let log = lab.natd_log();
        assert!(log.contains(&format!("interface {ifname} (index")) && log.contains("was deleted or left the namespace: natd stops"), "{log}");
    }
}

#[test]
fn the_wan_address_removed_is_said_loudly_and_natd_keeps_serving() {
    require_root!();
    let mut lab = NatLab::new(1, false).unwrap();
    lab.start_natd(&[]).unwrap();
    let prefix = format!("{EXTERNAL}/24");
    // The new address stays when the first goes (it keeps the WAN route).
    lab.gw.sysctl("net.ipv4.conf.wan0.promote_secondaries=1").unwrap();
    lab.gw.ip(&["addr", "add", "203.0.113.77/24", "dev", "wan0"]).unwrap();
    lab.gw.ip(&["addr", "del", &prefix, "dev", "wan0"]).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while !lab.natd_log().contains("was removed: natd keeps translating to it") {
        assert!(std::time::Instant::now() < deadline, "{}", lab.natd_log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(lab.natd_log().contains("the WAN interface gained 203.0.113.77; natd translates to 203.0.113.1 until it is restarted"), "{}", lab.natd_log());
    assert_eq!(lab.wait_natd_exit(Duration::from_millis(300)).unwrap(), None, "natd serves on");
    // Outbound flows are still translated to the address natd started with.
    let inside = udp_socket_in(&lab.hosts[0], 40000);
    let _server = udp_socket_in(&lab.server, 7001);
    inside.send_to(b"out", SocketAddrV4::new(SERVER, 7001)).unwrap();
    let external = lab.wait_external_of("udp", SocketAddrV4::new(host_addr(0), 40000), Duration::from_secs(2)).unwrap();
    assert_eq!(*external.ip(), EXTERNAL);
}

/// `on_interface_loss = "wait"`: the LAN interface deleted, natd keeps its
/// sessions and waits; the interface made again (a new index), natd
/// re-attaches, and the LAN host's flow goes on from the same external
/// port, both ways.
#[test]
fn with_wait_natd_re_attaches_to_an_interface_that_comes_back_and_keeps_its_sessions() {
    require_root!();
    let mut lab = NatLab::new(1, false).unwrap();
    lab.start_natd_with_config("on_interface_loss = \"wait\"\n").unwrap();
    let inside = udp_socket_in(&lab.hosts[0], 40000);
    inside.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let server = udp_socket_in(&lab.server, 7001);
    server.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let exchange = |label: &[u8]| -> Result<SocketAddr, String> {
        inside.send_to(label, SocketAddrV4::new(SERVER, 7001)).map_err(|e| e.to_string())?;
        let mut buf = [0u8; 64];
        let (_, from) = server.recv_from(&mut buf).map_err(|e| format!("the server got nothing: {e}"))?;
        server.send_to(b"back", from).map_err(|e| e.to_string())?;
        inside.recv_from(&mut buf).map_err(|e| format!("the answer did not come back: {e}"))?;
        Ok(from)
    };
    let before = exchange(b"one").unwrap();
    assert_eq!(before.ip(), std::net::IpAddr::V4(EXTERNAL));

    lab.gw.ip(&["link", "del", "lan0"]).unwrap();
    assert_eq!(lab.wait_natd_exit(Duration::from_secs(1)).unwrap(), None, "natd waits: {}", lab.natd_log());
    // The LAN link again, as the lab made it: a new veth, a new index.
    lab.switch.ip(&["link", "add", "up0", "type", "veth", "peer", "name", "lan0", "netns", &lab.gw.name]).unwrap();
    lab.switch.ip(&["link", "set", "up0", "master", "br0", "up"]).unwrap();
    lab.switch.exec(&["ethtool", "-K", "up0", "gro", "on"]).unwrap();
    lab.gw.ip(&["addr", "add", &format!("{GW_LAN}/24"), "dev", "lan0"]).unwrap();
    lab.gw.ip(&["link", "set", "lan0", "up"]).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !lab.natd_log().contains("natd re-attached its lan program") {
        assert!(std::time::Instant::now() < deadline, "{}", lab.natd_log());
        std::thread::sleep(Duration::from_millis(50));
    }
    // The bridge learns the new port; the host's first datagram may be early.
    let mut after = exchange(b"two");
    for _ in 0..3 {
        if after.is_ok() {
            break;
        }
        after = exchange(b"again");
    }
    assert_eq!(after.unwrap(), before, "the same external endpoint after the re-attach: the session was kept");
    assert_eq!(lab.sessions().unwrap().len(), 1);
}
