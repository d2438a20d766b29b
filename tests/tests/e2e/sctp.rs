//! SCTP end to end: two LAN hosts on one SCTP source port to one server at
//! once, through the real natd and XDP programs. The kernel here has no SCTP
//! (no CONFIG_IP_SCTP): the peers are `tests/scripts/sctp_peer.py` on raw
//! IPv4 sockets, with a CRC32c of their own that checks every packet they
//! receive.

use std::{io::Read as _, process::Stdio, thread};

use nat_tests::{
    natlab::{EXTERNAL, KillOnDrop, NatLab, SERVER},
    netns::Netns,
    require_root,
};

const PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/sctp_peer.py");
/// Debian's interpreter (the one first on PATH may be another).
const PYTHON: &str = "/usr/bin/python3";
const SERVER_PORT: &str = "3868";

/// draft-ietf-tsvwg-natsupp, RFC 9260 §6.8: two inside hosts, both on SCTP
/// source port 5000, reach one server at once; it sees two distinct external
/// ports on the gateway's address, every packet with a good CRC32c both ways,
/// and each host gets its own answer; natd shows two SCTP sessions.
#[test]
fn sctp_from_two_hosts_on_one_port() {
    require_root!();
    let mut lab = NatLab::new(2, false).unwrap();
    lab.start_natd(&[]).unwrap();
    let server = lab.server.command(&[PYTHON, PEER, "server", "2", "15"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut server = KillOnDrop(server);
    thread::sleep(std::time::Duration::from_millis(300));
    let clients: Vec<_> = (0..2)
        .map(|i| {
            let host = Netns { name: lab.hosts[i].name.clone() };
            thread::spawn(move || {
                let out = host.command(&[PYTHON, PEER, "client", &SERVER.to_string(), SERVER_PORT, &format!("host {i}")]).output();
                std::mem::forget(host);
                out.unwrap()
            })
        })
        .collect();
    for (i, client) in clients.into_iter().enumerate() {
        let out = client.join().unwrap();
        let answer: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("host {i}: {e}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)));
        assert_eq!(answer["reply"], format!("echo:host {i}"), "host {i}: {answer}\n{}", lab.natd_log());
        assert_eq!(answer["crc_ok"], true, "host {i}: the answer's CRC32c does not hold: {answer}");
        assert_eq!((answer["dport"].as_u64(), answer["vtag_ok"].as_bool()), (Some(5000), Some(true)), "host {i}: {answer}");
    }
    // It exits once both hosts were answered (or after 15 s).
    let mut printed = String::new();
    server.0.stdout.take().unwrap().read_to_string(&mut printed).unwrap();
    let seen: serde_json::Value = serde_json::from_str(&printed).unwrap_or_else(|e| panic!("server: {e}: {printed:?}"));
    assert_eq!(seen["bad_crc"], 0, "the server received packets with a bad CRC32c: {seen}");
    let peers = seen["peers"].as_object().unwrap();
    assert_eq!(peers.len(), 2, "two hosts, two external endpoints: {seen}");
    for peer in peers.keys() {
        assert!(peer.starts_with(&format!("{EXTERNAL}:")), "an inside address reached the server: {seen}");
    }
    let sessions = lab.sessions().unwrap();
    let sctp: Vec<_> = sessions.iter().filter(|s| s.proto == "sctp").collect();
    assert_eq!(sctp.len(), 2, "{sessions:?}");
    assert!(sctp.iter().all(|s| s.inside.ends_with(":5000")), "{sctp:?}");
    // INIT out, INIT ACK in: both associations are opening.
    assert!(sctp.iter().all(|s| s.state == "opening"), "{sctp:?}");
    let status = lab.status().unwrap();
    let ports = status.ports.iter().find(|p| p.proto == "sctp").unwrap_or_else(|| panic!("no SCTP in natd status: {:?}", status.ports));
    assert_eq!(ports.in_use, 2, "{ports:?}");
    assert_eq!(lab.stop_natd().unwrap().code(), Some(0));
}

/// SCTP datagrams larger than the link, fragmented by the senders'
/// kernels (DF clear), cross the gateway both ways: the first fragment,
/// whose CRC32c update needs the whole length, goes to natd and is
/// translated once the last fragment has told it; the server's and the
/// client's reassembled datagrams carry a good CRC32c, and the echo
/// matches, at two sizes (the second past the datapath's SCTP limit).
#[test]
fn fragmented_sctp_datagrams_are_translated_both_ways() {
    require_root!();
    let mut lab = NatLab::new(1, false).unwrap();
    lab.start_natd(&[]).unwrap();
    for size in [4000, 20000] {
        let server = lab.server.command(&[PYTHON, PEER, "server", "1", "15", "1"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let mut server = KillOnDrop(server);
        thread::sleep(std::time::Duration::from_millis(300));
        let out = lab.hosts[0].command(&[PYTHON, PEER, "client", &SERVER.to_string(), SERVER_PORT, "big", &size.to_string()]).output().unwrap();
        let answer: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)));
        assert_eq!(answer["crc_ok"], true, "{answer}");
        let big = &answer["big"];
        assert_eq!((big["crc_ok"].as_bool(), big["echoed"].as_bool()), (Some(true), Some(true)), "{size} bytes: the echo came back whole with a good CRC32c: {answer}\n{}", lab.natd_log());
        let mut printed = String::new();
        server.0.stdout.take().unwrap().read_to_string(&mut printed).unwrap();
        let seen: serde_json::Value = serde_json::from_str(&printed).unwrap_or_else(|e| panic!("server: {e}: {printed:?}"));
        assert_eq!((seen["bad_crc"].as_u64(), seen["big"].as_u64()), (Some(0), Some(1)), "{size} bytes: the server reassembled it with a good CRC32c: {seen}");
    }
    let stats = String::from_utf8_lossy(&lab.natd_cli(&["stats"]).unwrap().stdout).into_owned();
    assert!(stats.lines().any(|l| l.trim_start().starts_with("fragments_sent") && !l.trim_end().ends_with(" 0")), "natd sent the first fragments:\n{stats}");
}

/// usrsctp, a whole SCTP stack nobody in this project wrote (its own
/// association state machine and CRC32c), on raw IPv4 in each namespace:
/// two LAN hosts, both on SCTP source port 5000, run associations to the
/// server's echo service (port 7) at once, through the real natd and XDP
/// programs. Each host's association comes up, gets back exactly its own
/// lines and shuts down cleanly; tshark verifies the CRC32c of every SCTP
/// packet on both sides of the gateway (each host's and the server's
/// interface), and the WAN side shows only the gateway's address.
#[test]
fn usrsctp_associations_from_two_hosts_on_port_5000() {
    use nat_tests::natlab::Capture;
    const USRSCTP: &str = "/usr/lib/usrsctp";
    require_root!();
    let mut lab = NatLab::new(2, false).unwrap();
    lab.start_natd(&[]).unwrap();
    // On the hosts' and the server's interfaces: what XDP redirects on the
    // gateway never reaches a capture there.
    let captures = [
        ("LAN host 0", Capture::start(&lab.hosts[0], "eth0", "sctp").unwrap()),
        ("LAN host 1", Capture::start(&lab.hosts[1], "eth0", "sctp").unwrap()),
        ("WAN", Capture::start(&lab.server, "eth0", "sctp").unwrap()),
    ];
    let _echo = KillOnDrop(lab.server.command(&[&format!("{USRSCTP}/echo_server")]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap());
    thread::sleep(std::time::Duration::from_millis(300));
    let clients: Vec<_> = (0..2)
        .map(|i| {
            let mut client = lab.hosts[i]
                .command(&[&format!("{USRSCTP}/client"), &SERVER.to_string(), "7", "5000", "0", "0"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let mut stdin = client.stdin.take().unwrap();
            thread::spawn(move || {
                use std::io::Write as _;
                for n in 0..5 {
                    writeln!(stdin, "host {i} line {n}").unwrap();
                    thread::sleep(std::time::Duration::from_millis(100));
                }
                // The lines echoed back before stdin closes (and the client
                // shuts the association down).
                thread::sleep(std::time::Duration::from_millis(700));
                drop(stdin);
                client.wait_with_output().unwrap()
            })
        })
        .collect();
    for (i, client) in clients.into_iter().enumerate() {
        let out = client.join().unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(said.contains("SCTP_COMM_UP") && said.contains("SCTP_SHUTDOWN_COMP"), "host {i}: the association did not come up and close:\n{said}{}", String::from_utf8_lossy(&out.stderr));
        let echoed: Vec<&str> = said.lines().filter(|l| l.starts_with("host ")).collect();
        let expected: Vec<String> = (0..5).map(|n| format!("host {i} line {n}")).collect();
        assert_eq!(echoed, expected, "host {i} got back exactly its own lines:\n{said}");
    }
    let sessions = lab.sessions().unwrap();
    let sctp: Vec<_> = sessions.iter().filter(|s| s.proto == "sctp").collect();
    assert_eq!(sctp.len(), 2, "{sessions:?}");
    let crc = ["sctp.checksum:CRC 32c"];
    let fields = ["ip.src", "sctp.srcport", "sctp.checksum.status"];
    for (side, capture) in captures {
        let packets = capture.tshark_fields(&crc, &fields).unwrap();
        assert!(packets.len() >= 10, "{side}: too few SCTP packets captured: {packets:?}");
        // Wireshark's checksum status: 1 good (0 bad, 2 unverified).
        let not_good: Vec<&String> = packets.iter().filter(|p| p.split('\t').nth(2) != Some("1")).collect();
        assert!(not_good.is_empty(), "{side}: SCTP packets whose CRC32c tshark did not find good: {not_good:?}");
        if side == "WAN" {
            let inside: Vec<&String> = packets.iter().filter(|p| p.starts_with("10.77.1.")).collect();
            assert!(inside.is_empty(), "an inside address on the WAN: {inside:?}");
        }
        eprintln!("{side}: {} SCTP packets, every CRC32c good (tshark)", packets.len());
    }
}
