//! New flows through the real natd (../shared/BENCHMARK.md, figure 4):
//! - first-packet added latency: the round trip of a flow's first datagram
//!   (miss, hand-off to natd, allocation, map insert, re-injection) minus the
//!   round trip of its second (fast path), per flow, p50/p99;
//! - mappings per second: a burst of new flows, one datagram each, sent from
//!   prebuilt packets through a raw socket (faster than natd, so natd is what
//!   is measured); natd's `mappings_created` counter over time.
//!
//! Usage: flows-bench [LATENCY_FLOWS] [BURST_FLOWS]
//! (root; writes target/bench/flows.{json,md})

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use nat_tests::{
    natlab::{NatLab, SERVER, host_addr, in_ns},
    packet::Frame,
};
use nat_userspace::handoff::KernelSender;

const ECHO_PORT: u16 = 7000;
/// Inside source ports of the latency flows and of the burst: outside the NAT
/// range, so every flow gets a randomly allocated external port.
const LATENCY_FIRST_PORT: u16 = 33000;
const BURST_FIRST_PORT: u16 = 40000;
/// Below the gateway namespace's ephemeral range (32768-60999).
const NAT_RANGE: &str = "1024-32767";
const REPLY_TIMEOUT: Duration = Duration::from_secs(1);
const ETH_LEN: usize = 14;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let latency_flows: u16 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(2000);
    let burst_flows: u16 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(20000);
    ensure!(nat_tests::netns::is_root(), "the flows benchmark creates namespaces and runs natd: run it as root");
    ensure!(u32::from(BURST_FIRST_PORT) + u32::from(burst_flows) <= 65535, "at most {} burst flows", 65535 - BURST_FIRST_PORT);
    ensure!(LATENCY_FIRST_PORT + latency_flows <= BURST_FIRST_PORT, "at most {} latency flows", BURST_FIRST_PORT - LATENCY_FIRST_PORT);

    // Senders with full checksums, as frames from a wire.
    let mut lab = NatLab::new(1, false)?;
    lab.start_natd(&["--port-range", NAT_RANGE])?;
    let stop = Arc::new(AtomicBool::new(false));
    let echo = echo_server(&lab, stop.clone())?;

    // Latency: sequential flows, first and second datagram of each.
    let added_us = in_ns(&lab.hosts[0], move || -> Result<Vec<(f64, f64)>> {
        let mut samples = Vec::new();
        for port in LATENCY_FIRST_PORT..LATENCY_FIRST_PORT + latency_flows {
            let sock = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))?;
            sock.set_read_timeout(Some(REPLY_TIMEOUT))?;
            let first = round_trip(&sock).with_context(|| format!("first datagram of flow {port}"))?;
            let second = round_trip(&sock).with_context(|| format!("second datagram of flow {port}"))?;
            samples.push((first.as_secs_f64() * 1e6, second.as_secs_f64() * 1e6));
        }
        Ok(samples)
    })
    .join()
    .expect("latency thread")?;
    let mut added: Vec<f64> = added_us.iter().map(|(first, second)| first - second).collect();
    let mut firsts: Vec<f64> = added_us.iter().map(|(first, _)| *first).collect();
    let mut seconds: Vec<f64> = added_us.iter().map(|(_, second)| *second).collect();

    // Burst: one datagram per new flow, prebuilt, through a raw socket; no retries.
    let packets: Vec<Vec<u8>> = (BURST_FIRST_PORT..BURST_FIRST_PORT + burst_flows)
        .map(|port| Frame::udp((host_addr(0), port), (SERVER, ECHO_PORT)).build()[ETH_LEN..].to_vec())
        .collect();
    let created_before = lab.stats()?.get("mappings_created").context("mappings_created")?;
    let started = Instant::now();
    let sent = in_ns(&lab.hosts[0], move || -> Result<u32> {
        let raw = KernelSender::new()?;
        for packet in &packets {
            raw.send_packet(packet)?;
        }
        Ok(packets.len() as u32)
    })
    .join()
    .expect("burst thread")?;
    let send_time = started.elapsed();
    // Poll until the counter stops moving (bounded).
    let (mut last, mut last_change) = (created_before, started.elapsed());
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
        let now = lab.stats()?.get("mappings_created").unwrap_or(last);
        if now != last {
            (last, last_change) = (now, started.elapsed());
        } else if started.elapsed() - last_change > Duration::from_millis(500) {
            break;
        }
    }
    let created = last - created_before;
    let stats = lab.stats()?;
    let ring_full = stats.get("drop_ring_full").unwrap_or(0);
    let mappings_per_s = created as f64 / last_change.as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let _ = echo.join();

    let (p50, p99) = (percentile(&mut added, 50.0), percentile(&mut added, 99.0));
    let (first_p50, hit_p50) = (percentile(&mut firsts, 50.0), percentile(&mut seconds, 50.0));
    let json = format!(
        "{{\n  \"latency_flows\": {latency_flows},\n  \"first_packet_added_us\": {{\"p50\": {p50:.1}, \"p99\": {p99:.1}}},\n  \
         \"first_packet_rtt_us_p50\": {first_p50:.1},\n  \"established_rtt_us_p50\": {hit_p50:.1},\n  \
         \"burst_flows_sent\": {sent},\n  \"burst_send_s\": {:.3},\n  \"mappings_created\": {created},\n  \
         \"drop_ring_full\": {ring_full},\n  \"new_flows_per_s\": {mappings_per_s:.0}\n}}\n",
        send_time.as_secs_f64()
    );
    let mut md = String::from("| figure | value |\n|---|---|\n");
    writeln!(md, "| first-packet added latency p50 | {p50:.1} us |")?;
    writeln!(md, "| first-packet added latency p99 | {p99:.1} us |")?;
    writeln!(md, "| first datagram RTT p50 / established RTT p50 | {first_p50:.1} / {hit_p50:.1} us |")?;
    writeln!(md, "| new mappings per second (burst of {sent}, {created} created, {ring_full} ring-full drops) | {mappings_per_s:.0} |")?;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("flows.json"), &json)?;
    std::fs::write(dir.join("flows.md"), &md)?;
    print!("{md}");
    println!("written to {}", dir.join("flows.{json,md}").display());
    Ok(())
}

fn round_trip(sock: &UdpSocket) -> Result<Duration> {
    let mut buf = [0u8; 64];
    let started = Instant::now();
    sock.send_to(b"ping", SocketAddrV4::new(SERVER, ECHO_PORT))?;
    sock.recv_from(&mut buf).context("no reply within 1 s")?;
    Ok(started.elapsed())
}

fn echo_server(lab: &NatLab, stop: Arc<AtomicBool>) -> Result<thread::JoinHandle<()>> {
    let sock = in_ns(&lab.server, || UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, ECHO_PORT)))
        .join()
        .expect("bind thread")?;
    sock.set_read_timeout(Some(Duration::from_millis(100)))?;
    Ok(thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((n, peer)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(&buf[..n], peer);
            }
        }
    }))
}

fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let index = ((p / 100.0) * (values.len() - 1) as f64).round() as usize;
    values[index]
}
