//! Real clients through the gateway: curl to nginx, iperf3, ping, and a clean
//! WAN capture.

use std::{net::SocketAddrV4, process::Stdio, thread, time::Duration};

use nat_tests::{
    natlab::{KillOnDrop, NatLab, SERVER},
    require_root,
    servers::Nginx,
};

use super::ping;

/// Real clients through the gateway: curl to nginx, iperf3 TCP and UDP, ping;
/// a WAN capture shows no inside address; the gateway's own connection to the
/// server works while natd runs.
#[test]
fn real_clients_curl_nginx_iperf3_and_a_clean_wan_capture() {
    require_root!();
    let mut lab = NatLab::new(1, false).unwrap();
    lab.start_natd(&[]).unwrap();
    let host = &lab.hosts[0];

    // Captured where the WAN frames arrive: AF_PACKET on the gateway's wan0
    // does not see frames that XDP redirects out of it.
    let capture_file = std::env::temp_dir().join(format!("{}-wan.pcap", lab.gw.name));
    let mut capture = lab
        .server
        .command(&["tcpdump", "-i", "eth0", "-n", "-U", "-w", capture_file.to_str().unwrap(), "ip"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("tcpdump");
    let _nginx = Nginx::start(&lab.server, SocketAddrV4::new(SERVER, 80), "server").unwrap();
    thread::sleep(Duration::from_millis(500));

    // curl: 1 MiB over HTTP, compared byte for byte.
    let body = host.exec(&["curl", "-sS", "--max-time", "10", &format!("http://{SERVER}/blob")]).expect("curl through the gateway");
    assert_eq!(body.len(), Nginx::BLOB_LEN, "curl got a short body");
    assert_eq!(body, Nginx::blob_text(), "the body changed on the way");

    // iperf3 TCP and UDP, 2 s each.
    let iperf_server = lab.server.command(&["iperf3", "-s", "-p", "5201"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let _kill_iperf = KillOnDrop(iperf_server);
    thread::sleep(Duration::from_millis(300));
    let tcp = host.exec(&["iperf3", "-c", &SERVER.to_string(), "-p", "5201", "-t", "2", "-J"]).expect("iperf3 TCP");
    let tcp: serde_json::Value = serde_json::from_str(&tcp).unwrap();
    let tcp_bps = tcp["end"]["sum_received"]["bits_per_second"].as_f64().unwrap();
    assert!(tcp_bps > 1e6, "iperf3 TCP through the gateway: {tcp_bps} bit/s");
    let udp = host.exec(&["iperf3", "-c", &SERVER.to_string(), "-p", "5201", "-u", "-b", "20M", "-t", "2", "-J"]).expect("iperf3 UDP");
    let udp: serde_json::Value = serde_json::from_str(&udp).unwrap();
    let lost = udp["end"]["sum"]["lost_percent"].as_f64().unwrap();
    let packets = udp["end"]["sum"]["packets"].as_u64().unwrap();
    assert!(packets > 1000 && lost < 5.0, "iperf3 UDP: {packets} packets, {lost}% lost");

    let pinged = ping(host, "777", 3).join().unwrap().expect("ping");
    assert!(pinged.contains("3 received"), "{pinged}");

    // The gateway's own connection (an ephemeral port outside the NAT range).
    let own = lab.gw.exec(&["curl", "-sS", "--max-time", "5", "-o", "/dev/null", "-w", "%{http_code}", &format!("http://{SERVER}/blob")]);
    assert_eq!(own.expect("the gateway's own curl"), "200");

    thread::sleep(Duration::from_millis(300));
    unsafe { libc::kill(capture.id() as i32, libc::SIGINT) };
    let _ = capture.wait();
    let dump = lab.server.exec(&["tcpdump", "-n", "-r", capture_file.to_str().unwrap()]).unwrap();
    let _ = std::fs::remove_file(&capture_file);
    assert!(dump.lines().count() > 1000, "the capture saw too little: {} lines", dump.lines().count());
    let leaks: Vec<&str> = dump.lines().filter(|l| l.contains("10.77.1.")).take(5).collect();
    assert!(leaks.is_empty(), "inside addresses on the WAN:\n{}", leaks.join("\n"));
}
