//! The product end to end: the real `natd` binary on a gateway namespace,
//! several LAN hosts, a WAN server, real sockets and real clients (curl,
//! nginx, iperf3, ping, tcpdump). Each test builds its own lab and tears it
//! down, natd included, even when it fails.
//!
//! One module per feature, the attacks of `security` among them; the helpers
//! they share are here.

mod aging;
mod bad_input;
mod basics;
mod burst;
mod esp;
mod exhaustion_and_quota;
mod filtering;
mod forwards;
mod fragments;
mod generic_mode;
mod hairpin;
mod icmp;
mod inbound_unsolicited;
mod interface_loss;
mod logging;
mod metrics;
mod natt;
mod pmtu;
mod pools;
mod proxy;
mod proxy_http;
mod proxy_quic;
mod real_clients;
mod reload;
mod restart;
mod sctp;
mod security;
mod tcp;
mod traceroute;

use std::{
    collections::BTreeSet,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket},
    thread,
    time::{Duration, Instant},
};

use nat_tests::{
    natlab::{EXTERNAL, IO_TIMEOUT, SERVER, in_ns},
    netns::Netns,
};
use socket2::{Domain, Protocol, Socket, Type};

const SERVICE_PORT: u16 = 7000;

/// One UDP request from `source_port` in `host`; returns the reply.
fn udp_request(host: &Netns, source_port: u16, payload: Vec<u8>) -> thread::JoinHandle<Result<Vec<u8>, String>> {
    in_ns(host, move || {
        let sock = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, source_port)).map_err(|e| e.to_string())?;
        sock.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        // Sent once: the first packet of the flow must arrive without a retry.
        sock.send_to(&payload, SocketAddrV4::new(SERVER, SERVICE_PORT)).map_err(|e| e.to_string())?;
        let mut buf = [0u8; 2048];
        let (n, from) = sock.recv_from(&mut buf).map_err(|e| format!("no UDP reply: {e}"))?;
        if from != SocketAddr::from(SocketAddrV4::new(SERVER, SERVICE_PORT)) {
            return Err(format!("reply from {from}"));
        }
        Ok(buf[..n].to_vec())
    })
}

/// One TCP exchange from `source_port` in `host`; returns (reply, connect time).
fn tcp_request(host: &Netns, source_port: u16, payload: Vec<u8>) -> thread::JoinHandle<Result<(Vec<u8>, Duration), String>> {
    in_ns(host, move || {
        let sock = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).map_err(|e| e.to_string())?;
        sock.set_reuse_address(true).unwrap();
        sock.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, source_port).into()).map_err(|e| format!("bind: {e}"))?;
        let started = Instant::now();
        sock.connect_timeout(&SocketAddrV4::new(SERVER, SERVICE_PORT).into(), IO_TIMEOUT)
            .map_err(|e| format!("connect: {e}"))?;
        let connect_time = started.elapsed();
        let mut stream: TcpStream = sock.into();
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.write_all(&payload).map_err(|e| e.to_string())?;
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).map_err(|e| format!("reading the TCP reply: {e}"))?;
        Ok((reply, connect_time))
    })
}

fn ping(host: &Netns, id: &str, count: u32) -> thread::JoinHandle<Result<String, String>> {
    let (name, id) = (host.name.clone(), id.to_string());
    thread::spawn(move || {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &name, "ping", "-c", &count.to_string(), "-i", "0.2", "-W", "2", "-e", &id])
            .arg(SERVER.to_string())
            .output()
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() { Ok(text) } else { Err(text) }
    })
}

fn distinct_ports_on_external(peers: &[SocketAddr]) -> BTreeSet<u16> {
    for peer in peers {
        assert_eq!(peer.ip(), std::net::IpAddr::V4(EXTERNAL), "the server saw an address other than the gateway's: {peer}");
    }
    peers.iter().map(|p| p.port()).collect()
}

/// Runs `args` in `ns` under `timeout` (seconds) and returns its stdout;
/// fails with both outputs when it fails.
fn run_bounded(ns: &Netns, seconds: u32, args: &[&str]) -> String {
    let mut cmd = ns.command(&["timeout", &seconds.to_string()]);
    let out = cmd.args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{args:?} failed ({}):\n{stdout}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    stdout
}

/// The hops a traceroute or tracepath printed, in order: the first address
/// on each line that starts with a hop number ("2" or "2:"). tracepath prints
/// a hop again when a probe of it gets another answer (first the gateway's
/// "pmtu 1400", then the next hop once the probe fits): the last answer
/// counts. A silent hop ("*", "no reply") shows as "*".
fn hops(output: &str) -> Vec<String> {
    let mut hops: Vec<(String, String)> = Vec::new();
    // tracepath rewrites a line in place with carriage returns.
    for line in output.split(['\n', '\r']) {
        let mut words = line.split_whitespace();
        let Some(number) = words.next().map(|w| w.trim_end_matches(':')) else { continue };
        if number.parse::<u32>().is_err() {
            continue;
        }
        let addr = match words.next() {
            Some(w) if w.parse::<Ipv4Addr>().is_ok() => w.to_string(),
            _ => "*".to_string(),
        };
        match hops.iter_mut().find(|(n, _)| n == number) {
            Some(hop) if addr != "*" => hop.1 = addr,
            Some(_) => {}
            None => hops.push((number.to_string(), addr)),
        }
    }
    hops.into_iter().map(|(_, a)| a).collect()
}
