//! `natd reload` of the settings that change live (issue 15): a shorter
//! UDP timeout ages existing sessions by it; filtering switched both ways
//! lets a third party in and out; what cannot change live (an interface, the
//! parity) is refused with natd serving on; filtering by remote when natd
//! started without the table for it is refused, saying to restart.

use std::{
    net::{SocketAddrV4, UdpSocket},
    thread,
    time::{Duration, Instant},
};

use nat_tests::{
    natlab::{NatLab, SERVER, host_addr, udp_socket_in},
    require_root,
};

const INSIDE_PORT: u16 = 40000;
const SERVER_PORT: u16 = 7001;
const THIRD_PARTY_PORT: u16 = 7002;

/// Whether `socket` receives a datagram within 700 ms.
fn receives(socket: &UdpSocket) -> bool {
    socket.set_read_timeout(Some(Duration::from_millis(700))).unwrap();
    let mut buf = [0u8; 64];
    socket.recv_from(&mut buf).is_ok()
}

fn reload(lab: &NatLab, config: &str) -> (bool, String) {
    lab.config_file(config).unwrap();
    let out = lab.natd_cli(&["reload"]).unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

#[test]
fn timeouts_and_filtering_change_live_and_an_interface_change_is_refused() {
    require_root!();
    let mut lab = NatLab::new(1, false).unwrap();
    let interfaces = "lan = \"lan0\"\nwan = \"wan0\"\n";
    let config = |filtering: &str, udp_timeout: u32| format!("{interfaces}[filtering]\nudp = \"{filtering}\"\n[timeouts]\nudp = {udp_timeout}\n");
    let path = lab.config_file(&config("address-and-port-dependent", 300)).unwrap();
    lab.run_natd(&["--config", path.to_str().unwrap()]).unwrap();

    let inside = udp_socket_in(&lab.hosts[0], INSIDE_PORT);
    let _server = udp_socket_in(&lab.server, SERVER_PORT);
    let third = udp_socket_in(&lab.server, THIRD_PARTY_PORT);
    inside.send_to(b"out", SocketAddrV4::new(SERVER, SERVER_PORT)).unwrap();
    let external = lab.wait_external_of("udp", SocketAddrV4::new(host_addr(0), INSIDE_PORT), Duration::from_secs(2)).unwrap();
    third.send_to(b"in", external).unwrap();
    assert!(!receives(&inside), "address-and-port-dependent: another port of the server is filtered");

    let (ok, text) = reload(&lab, &config("endpoint-independent", 300));
    assert!(ok && text.contains("filtering: "), "{text}");
    third.send_to(b"in", external).unwrap();
    assert!(receives(&inside), "endpoint-independent after the reload: anyone may send to the mapping");
    let (ok, text) = reload(&lab, &config("address-and-port-dependent", 300));
    assert!(ok && text.contains("filtering: "), "{text}");
    third.send_to(b"in", external).unwrap();
    assert!(!receives(&inside), "and filtered again after the next reload");

    // What cannot change live: refused whole, natd serving as before.
    for (changed, name) in [(config("address-and-port-dependent", 300).replace("lan = \"lan0\"\nwan = \"wan0\"", "lan = \"wan0\"\nwan = \"lan0\""), "wan: \"wan0\" -> \"lan0\""), (format!("port_hold = 30\n{}", config("address-and-port-dependent", 300)), "port_hold")] {
        let (ok, text) = reload(&lab, &changed);
        assert!(!ok && text.contains("cannot change while natd runs") && text.contains(name), "{text}");
    }
    assert_eq!(lab.external_of("udp", SocketAddrV4::new(host_addr(0), INSIDE_PORT)).unwrap(), external, "the session is untouched");

    // A 2 s UDP timeout ages the existing session out from the next scan.
    let (ok, text) = reload(&lab, &config("address-and-port-dependent", 2));
    assert!(ok && text.contains("timeouts: "), "{text}");
    let started = Instant::now();
    let inside_endpoint = SocketAddrV4::new(host_addr(0), INSIDE_PORT);
    while lab.external_of("udp", inside_endpoint).is_ok() {
        assert!(started.elapsed() < Duration::from_secs(10), "the session outlived the new 2 s timeout by 8 s");
        thread::sleep(Duration::from_millis(200));
    }
    eprintln!("the session left {:?} after the reload to a 2 s timeout", started.elapsed());
}

#[test]
fn filtering_by_remote_needs_a_restart_when_natd_started_without_it() {
    require_root!();
    let mut lab = NatLab::new(1, false).unwrap();
    lab.start_natd_with_config("").unwrap();
    let (ok, text) = reload(&lab, "[filtering]\nudp = \"address-dependent\"\n");
    assert!(!ok && text.contains("restart natd to change filtering") && text.contains("nothing was changed"), "{text}");
    let (ok, text) = reload(&lab, "[timeouts]\nudp = 60\n");
    assert!(ok && text.contains("timeouts: "), "{text}");
}

/// Port class changes live, for new mappings: with it, an inside port
/// below 1024 gets one from `low_port_range`; after a reload turning it off,
/// the next such flow gets one from `port_range`, and the first keeps its own.
#[test]
fn port_class_changes_live_for_new_mappings() {
    require_root!();
    let mut lab = NatLab::new(1, false).unwrap();
    let base = "lan = \"lan0\"\nwan = \"wan0\"\nlow_port_range = \"600-700\"\n";
    lab.start_natd_with_config(base).unwrap();
    let server = udp_socket_in(&lab.server, 7001);
    server.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let first_port = |inside_port: u16| -> u16 {
        let inside = udp_socket_in(&lab.hosts[0], inside_port);
        inside.send_to(b"x", SocketAddrV4::new(SERVER, 7001)).unwrap();
        let mut buf = [0u8; 8];
        let (_, from) = server.recv_from(&mut buf).expect("the flow reached the server");
        from.port()
    };
    let before = first_port(500);
    assert!((600..=700).contains(&before), "port_class on: {before}");
    let (ok, text) = reload(&lab, &format!("{base}port_class = false\n"));
    assert!(ok && text.contains("port_class: true -> false"), "{text}");
    let after = first_port(501);
    assert!((20000..=32767).contains(&after), "port_class off: {after}");
    assert_eq!(lab.external_of("udp", SocketAddrV4::new(host_addr(0), 500)).unwrap().port(), before, "the first mapping kept its port");
}
