//! Conformance with clients nobody in this project wrote: the verdicts of
//! other people's NAT test tools, run through the real natd in the lab.

use std::{
    process::Stdio,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use nat_tests::{
    natlab::{KillOnDrop, NatLab, SERVER},
    netns::Netns,
    require_root,
};

/// The server's second address: RFC 5780 behaviour discovery needs a STUN
/// server with two, to answer from the other one on CHANGE-REQUEST.
const SERVER_ALT: &str = "203.0.113.3";

/// `turnserver` (coturn) in STUN-only mode on both server addresses, killed on drop.
struct StunServer(KillOnDrop);

impl StunServer {
    fn start(server: &Netns) -> Result<Self> {
        server.ip(&["addr", "add", &format!("{SERVER_ALT}/24"), "dev", "eth0"])?;
        let child = server
            .command(&[
                "turnserver", "-n", "--no-cli", "--stun-only", "--no-tls", "--no-dtls",
                "-L", &SERVER.to_string(), "-L", SERVER_ALT,
                "--listening-port", "3478", "--alt-listening-port", "3479",
                "--log-file", "stdout", "--simple-log", "--no-stdout-log",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting turnserver (Debian package coturn)")?;
        let mut stun = Self(KillOnDrop(child));
        // Listening on both addresses and both ports, bounded.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let sockets = server.exec(&["ss", "-Hlun"])?;
            if [SERVER.to_string(), SERVER_ALT.to_string()].iter().all(|a| sockets.contains(&format!("{a}:3478")) && sockets.contains(&format!("{a}:3479"))) {
                return Ok(stun);
            }
            if let Some(status) = stun.0.0.try_wait()? {
                bail!("turnserver exited at start-up: {status}");
            }
            if Instant::now() > deadline {
                bail!("turnserver did not listen on {SERVER} and {SERVER_ALT}, ports 3478-3479, within 10 s:\n{sockets}");
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

/// RFC 5780 behaviour discovery as the oracle for RFC 4787 REQ-1 and REQ-8:
/// coturn's `turnutils_natdiscovery` on a LAN host, against `turnserver` on
/// two WAN-side addresses, finds endpoint-independent mapping and exactly
/// the filtering natd was started with, for each of the three modes.
#[test]
fn nat_behaviour_discovery_finds_eim_and_the_configured_filtering() {
    require_root!();
    let modes = [
        ("endpoint-independent", "NAT with Endpoint Independent Filtering!"),
        ("address-dependent", "NAT with Address Dependent Filtering!"),
        ("address-and-port-dependent", "NAT with Address and Port Dependent Filtering!"),
    ];
    for (mode, verdict) in modes {
        let mut lab = NatLab::new(1, true).unwrap();
        let _stun = StunServer::start(&lab.server).unwrap();
        lab.start_natd(&["--filtering", mode]).unwrap();
        assert_eq!(lab.status().unwrap().filtering.udp, mode);
        let out = lab.hosts[0]
            .command(&["timeout", "60", "turnutils_natdiscovery", "-m", "-f", &SERVER.to_string()])
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{mode}: turnutils_natdiscovery failed ({}):\n{report}", out.status);
        assert!(report.contains("NAT with Endpoint Independent Mapping!"), "{mode}: mapping is not endpoint-independent:\n{report}");
        let found: Vec<&str> = report.lines().filter(|l| l.contains("Filtering!")).collect();
        assert_eq!(found, [verdict], "{mode}: the filtering found:\n{report}");
        let filtered = lab.stats().unwrap().datapath.into_iter().find(|c| c.name == "drop_filtered").unwrap().value;
        assert_eq!(filtered > 0, mode != "endpoint-independent", "{mode}: drop_filtered = {filtered}");
    }
}
