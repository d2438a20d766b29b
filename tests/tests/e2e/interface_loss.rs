//! When the world changes under natd (issue 15): a served interface
//! deleted makes natd say so and exit non-zero, whichever side; the WAN
//! address natd translates to removed is said loudly while natd keeps
//! serving.

use std::{net::SocketAddrV4, time::Duration};

use nat_tests::{
    natlab::{EXTERNAL, NatLab, SERVER, host_addr, udp_socket_in},
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
