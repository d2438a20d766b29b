//! Through the lab with the real natd, against the kernel's own NAT on the
//! same namespaces (../shared/BENCHMARK.md, figures 3 and 4):
//! - first-packet added latency (X): the round trip of a flow's first
//!   datagram (miss, hand-off to natd, allocation, map insert, send-on) minus
//!   the round trip of its second (fast path), per flow, p50/p99;
//! - new flows per second, X (natd's `mappings_created`) and K (conntrack
//!   entries): a burst of new flows, one datagram each, sent from prebuilt
//!   packets through a raw socket, faster than either gateway sets them up;
//! - TCP throughput, iperf3 -P 8, X and K interleaved.
//!
//! K is nftables masquerade on the gateway with XDP_PASS programs on its LAN
//! and WAN interfaces, so both modes have an XDP program on the same veths
//! (attaching XDP changes a veth's offloads).
//!
//! Usage: lab-bench [RUNS]  (root; writes target/bench/lab.{json,md})

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    process::Stdio,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use aya::{
    Ebpf,
    programs::{Xdp, XdpMode},
};
use nat_common::bench::names;
use nat_tests::{
    bench::{LinkCounters, attach_when_free, median, percentile},
    natlab::{EchoServer, NatLab, SERVER, host_addr, in_ns},
    packet::Frame,
};
use nat_userspace::{BENCH_OBJECT, nat::first_packet::KernelSender};

const ECHO_PORT: u16 = 7000;
const IPERF_PORT: &str = "5201";
const LATENCY_FLOWS: u16 = 2000;
/// Inside ports outside the NAT range, like a client's ephemeral ports: new
/// flows get a random external port (an inside port inside the range is
/// kept if free, which natd decides itself).
const LATENCY_FIRST_PORT: u16 = 33000;
const BURST_FLOWS: u16 = 20000;
const BURST_FIRST_PORT: u16 = 40000;
/// The K burst goes to another server port, so conntrack sees only new tuples.
const BURST_PORT_X: u16 = ECHO_PORT;
const BURST_PORT_K: u16 = ECHO_PORT + 1;
/// natd's settings here: a NAT range below the gateway namespace's
/// ephemeral range (32768-60999), and no per-host port quota: the one LAN
/// host stands for many (the burst alone opens more flows than the default
/// quota of 4,096, which would measure refusals, not set-ups).
const NATD_CONFIG: &str = "port_range = \"1024-32767\"\nports_per_host = 0\n";
const REPLY_TIMEOUT: Duration = Duration::from_secs(1);
const ETH_LEN: usize = 14;
const IPERF_SECONDS: &str = "3";

fn main() -> Result<()> {
    ensure!(nat_tests::netns::is_root(), "the lab benchmark creates namespaces and runs natd: run it as root");
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--burst") {
        let flows: u32 = args.get(1).context("--burst needs a number of flows")?.parse()?;
        return big_burst(flows);
    }
    let runs: usize = args.first().map(|s| s.parse()).transpose()?.unwrap_or(3);
    // Senders with full checksums, as frames from a wire.
    let mut lab = NatLab::new(1, false)?;
    let echo = EchoServer::start(&lab.server, ECHO_PORT);
    let mut kernel = KernelNat::new(&lab)?;

    lab.start_natd_with_config(NATD_CONFIG)?;
    let (added, first_p50, hit_p50) = first_packet_latency(&lab)?;
    let created_before = natd_created(&lab)?;
    let (stats_before, seen_before, rx_before) = (lab.stats()?, echo.udp_peers().len(), rx_packets(&lab, "lan0")?);
    let losses_before = Losses::read(&lab)?;
    let x_burst = burst(&lab, BURST_PORT_X, || natd_created(&lab).map(|n| n - created_before))?;
    // Where the burst went: what reached the gateway, every counter that
    // moved, and the first datagrams the server got (each flow's only one).
    let reached = rx_packets(&lab, "lan0")? - rx_before;
    let delivered = settled(|| echo.udp_peers().len()) - seen_before;
    let moved = counter_deltas(&stats_before, &lab.stats()?);
    let x_losses = Losses::read(&lab)?.since(&losses_before);
    lab.stop_natd()?;

    kernel.enable(&lab)?;
    // No socket on the K burst's port: a datagram delivered counts as NoPorts.
    let (k_noports_before, k_losses_before) = (nat_tests::natlab::snmp_counter(&lab.server, "Udp", "NoPorts")?, Losses::read(&lab)?);
    let k_burst = burst(&lab, BURST_PORT_K, || conntrack_count(&lab))?;
    let k_delivered = nat_tests::natlab::snmp_counter(&lab.server, "Udp", "NoPorts")? - k_noports_before;
    let k_losses = Losses::read(&lab)?.since(&k_losses_before);
    kernel.disable(&lab)?;

    let (mut x_gbps, mut k_gbps) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        lab.start_natd_with_config(NATD_CONFIG)?;
        x_gbps.push(iperf_tcp(&lab)?);
        lab.stop_natd()?;
        kernel.enable(&lab)?;
        k_gbps.push(iperf_tcp(&lab)?);
        kernel.disable(&lab)?;
    }
    drop(echo);
    let (x_tcp, k_tcp) = (median(&mut x_gbps), median(&mut k_gbps));

    let mut added = added;
    let (p50, p99) = (percentile(&mut added, 50.0), percentile(&mut added, 99.0));
    let json = format!(
        "{{\n  \"first_packet_added_us\": {{\"p50\": {p50:.1}, \"p99\": {p99:.1}}},\n  \
         \"first_packet_rtt_us_p50\": {first_p50:.1},\n  \"established_rtt_us_p50\": {hit_p50:.1},\n  \
         \"new_flows_per_s\": {{\"xdp_nat\": {:.0}, \"conntrack\": {:.0}}},\n  \
         \"new_flows_set_up\": {{\"xdp_nat\": {}, \"conntrack\": {}}},\n  \"burst_flows\": {BURST_FLOWS},\n  \
         \"burst_x\": {{\"reached_lan0\": {reached}, \"first_packets_delivered\": {delivered}, \"counters\": {{{}}}, {}}},\n  \
         \"burst_k\": {{\"first_packets_delivered\": {k_delivered}, {}}},\n  \
         \"tcp_gbps\": {{\"xdp_nat\": {x_tcp:.2}, \"nft_masquerade\": {k_tcp:.2}}},\n  \"tcp_runs\": {runs}\n}}\n",
        x_burst.rate,
        k_burst.rate,
        x_burst.created,
        k_burst.created,
        moved.iter().map(|(name, delta)| format!("\"{name}\": {delta}")).collect::<Vec<_>>().join(", "),
        x_losses.json(),
        k_losses.json()
    );
    let mut md = String::from("| figure | this NAT (X) | nftables masquerade (K) |\n|---|---|---|\n");
    writeln!(md, "| first-packet added latency p50 / p99 | {p50:.1} / {p99:.1} us | - |")?;
    writeln!(md, "| first datagram RTT p50 / established RTT p50 | {first_p50:.1} / {hit_p50:.1} us | - |")?;
    writeln!(
        md,
        "| new flows per second (burst of {BURST_FLOWS}: set up) | {:.0} ({}) | {:.0} ({}) |",
        x_burst.rate, x_burst.created, k_burst.rate, k_burst.created
    )?;
    writeln!(md, "| TCP throughput, iperf3 -P 8, median of {runs} | {x_tcp:.2} Gbit/s | {k_tcp:.2} Gbit/s |")?;
    let moved_text: Vec<String> = moved.iter().map(|(name, delta)| format!("{name} {delta}")).collect();
    writeln!(
        md,
        "\nX burst of {BURST_FLOWS}: {reached} reached lan0 (its rx_packets), {} set up, {delivered} first packets delivered to the server \
         ({}); counters that moved: {}. K burst: {k_delivered} first packets delivered ({}).",
        x_burst.created,
        x_losses.text(),
        moved_text.join(", "),
        k_losses.text()
    )?;
    nat_tests::bench::write_results("lab", &json, &md)?;
    Ok(())
}

/// Sequential new flows: (first RTT - second RTT) per flow, and the RTT medians.
fn first_packet_latency(lab: &NatLab) -> Result<(Vec<f64>, f64, f64)> {
    let samples = in_ns(&lab.hosts[0], move || -> Result<Vec<(f64, f64)>> {
        let mut samples = Vec::new();
        for port in LATENCY_FIRST_PORT..LATENCY_FIRST_PORT + LATENCY_FLOWS {
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
    let added = samples.iter().map(|(first, second)| first - second).collect();
    let mut firsts: Vec<f64> = samples.iter().map(|s| s.0).collect();
    let mut seconds: Vec<f64> = samples.iter().map(|s| s.1).collect();
    Ok((added, percentile(&mut firsts, 50.0), percentile(&mut seconds, 50.0)))
}

struct Burst {
    created: u64,
    rate: f64,
}

/// One datagram for each of BURST_FLOWS new flows, through a raw socket;
/// `created` counts what the gateway set up. Polls until it stops moving.
fn burst(lab: &NatLab, server_port: u16, created: impl Fn() -> Result<u64>) -> Result<Burst> {
    let sources: Vec<(Ipv4Addr, u16)> = (BURST_FIRST_PORT..BURST_FIRST_PORT + BURST_FLOWS).map(|port| (host_addr(0), port)).collect();
    burst_from(lab, &sources, server_port, created)
}

/// One datagram from each source (address, port) of host 0, as `burst`.
fn burst_from(lab: &NatLab, sources: &[(Ipv4Addr, u16)], server_port: u16, created: impl Fn() -> Result<u64>) -> Result<Burst> {
    let packets: Vec<Vec<u8>> = sources.iter().map(|&source| Frame::udp(source, (SERVER, server_port)).build()[ETH_LEN..].to_vec()).collect();
    let started = Instant::now();
    in_ns(&lab.hosts[0], move || -> Result<()> {
        let raw = KernelSender::new()?;
        for packet in &packets {
            raw.send_packet(packet)?;
        }
        Ok(())
    })
    .join()
    .expect("burst thread")?;
    let (mut last, mut last_change) = (0, started.elapsed());
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
        let now = created()?;
        if now != last {
            (last, last_change) = (now, started.elapsed());
        } else if started.elapsed() - last_change > Duration::from_millis(500) {
            break;
        }
    }
    Ok(Burst { created: last, rate: last as f64 / last_change.as_secs_f64() })
}

/// The pool of the big burst: two external addresses, each with the ports
/// 1024-60999 (the gateway namespace's own ephemeral ports moved above).
const BIG_POOL: [Ipv4Addr; 2] = [Ipv4Addr::new(203, 0, 113, 1), Ipv4Addr::new(203, 0, 113, 3)];
const BIG_PORTS: (u16, u16) = (1024, 60999);

/// `--burst N`: one burst of N new flows through natd (X only), from as
/// many inside addresses as the flows need (each its own external address
/// of the pool, by the paired-pool hash), each flow one datagram: what was
/// set up, and where every first datagram went. Writes lab-burst.{json,md}.
fn big_burst(flows: u32) -> Result<()> {
    let per_address = u32::from(BIG_PORTS.1 - BIG_PORTS.0) + 1;
    ensure!(flows <= per_address * BIG_POOL.len() as u32, "at most {} flows: the pool's ports", per_address * BIG_POOL.len() as u32);
    let lab = NatLab::new(1, false)?;
    let echo = EchoServer::start(&lab.server, ECHO_PORT);
    lab.gw.sysctl("net.ipv4.ip_local_port_range=61000 65000")?;
    lab.gw.ip(&["addr", "add", &format!("{}/24", BIG_POOL[1]), "dev", "wan0"])?;
    // Inside addresses of host 0, one per pool address (the hash decides).
    let mut inside: Vec<Ipv4Addr> = Vec::new();
    for want in 0..BIG_POOL.len() as u32 {
        let addr = (20u8..250)
            .map(|last| Ipv4Addr::new(10, 77, 1, last))
            .find(|a| nat_common::pool_index(u32::from_ne_bytes(a.octets()), BIG_POOL.len() as u32) == want && !inside.contains(a))
            .context("no inside address for a pool slot")?;
        lab.hosts[0].ip(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
        inside.push(addr);
    }
    let mut lab = lab;
    let pool: Vec<String> = BIG_POOL.iter().map(|a| format!("\"{a}\"")).collect();
    lab.start_natd_with_config(&format!(
        "port_range = \"{}-{}\"\nports_per_host = 0\nexternal_ip = [{}]\n",
        BIG_PORTS.0,
        BIG_PORTS.1,
        pool.join(", ")
    ))?;
    let sources: Vec<(Ipv4Addr, u16)> = (0..flows).map(|i| (inside[(i % inside.len() as u32) as usize], 1024 + (i / inside.len() as u32) as u16)).collect();
    let (stats_before, seen_before, rx_before, losses_before) = (lab.stats()?, echo.udp_peers().len(), rx_packets(&lab, "lan0")?, Losses::read(&lab)?);
    let created_before = natd_created(&lab)?;
    let x = burst_from(&lab, &sources, BURST_PORT_X, || natd_created(&lab).map(|n| n - created_before))?;
    let reached = rx_packets(&lab, "lan0")? - rx_before;
    let delivered = settled(|| echo.udp_peers().len()) - seen_before;
    let moved = counter_deltas(&stats_before, &lab.stats()?);
    let losses = Losses::read(&lab)?.since(&losses_before);
    drop(echo);
    let moved_json: Vec<String> = moved.iter().map(|(name, delta)| format!("\"{name}\": {delta}")).collect();
    let json = format!(
        "{{\n  \"burst_flows\": {flows},\n  \"inside_addresses\": {},\n  \"set_up\": {},\n  \"new_flows_per_s\": {:.0},\n  \
         \"reached_lan0\": {reached},\n  \"first_packets_delivered\": {delivered},\n  {},\n  \"counters\": {{{}}}\n}}\n",
        inside.len(),
        x.created,
        x.rate,
        losses.json(),
        moved_json.join(", ")
    );
    let moved_text: Vec<String> = moved.iter().map(|(name, delta)| format!("{name} {delta}")).collect();
    let md = format!(
        "Burst of {flows} new flows from {} inside addresses through natd: {} set up ({:.0}/s), {reached} reached lan0, {delivered} first packets \
         delivered to the server ({}); counters that moved: {}\n",
        inside.len(),
        x.created,
        x.rate,
        losses.text(),
        moved_text.join(", ")
    );
    print!("{md}");
    nat_tests::bench::write_results("lab-burst", &json, &md)
}

/// Where datagrams can be dropped outside the gateway's programs, counted
/// where the kernel counts them. The LAN is a bridge in the switch
/// namespace: host eth0 -> p0 -> br0 -> up0 -> lan0 (the gateway).
/// Before the gateway: the sending host's veth (its peer p0's backlog
/// full), the switch's port to the gateway, and lan0's receive drops.
/// After it: its WAN veth's transmit drops (an XDP redirect into a full
/// peer queue), the server's receive drops, and the server's UDP socket
/// buffer overflows.
struct Losses {
    sender_tx_dropped: u64,
    /// The switch's port to the gateway: a frame the gateway's full receive
    /// ring refuses (a veth with an XDP program takes frames into a ring of
    /// 256 its NAPI drains) is dropped here, on up0's transmit side; lan0
    /// counts nothing for it.
    switch_tx_dropped: u64,
    lan_rx_dropped: u64,
    wan_tx_dropped: u64,
    server_rx_dropped: u64,
    server_rcvbuf_errors: u64,
}

impl Losses {
    fn read(lab: &NatLab) -> Result<Self> {
        let stat = |ns: &nat_tests::netns::Netns, ifname: &str, name: &str| -> Result<u64> {
            Ok(ns.exec(&["cat", &format!("/sys/class/net/{ifname}/statistics/{name}")])?.trim().parse()?)
        };
        Ok(Self {
            sender_tx_dropped: stat(&lab.hosts[0], "eth0", "tx_dropped")?,
            switch_tx_dropped: stat(&lab.switch, "up0", "tx_dropped")?,
            lan_rx_dropped: stat(&lab.gw, "lan0", "rx_dropped")?,
            wan_tx_dropped: stat(&lab.gw, "wan0", "tx_dropped")?,
            server_rx_dropped: stat(&lab.server, "eth0", "rx_dropped")?,
            server_rcvbuf_errors: nat_tests::natlab::snmp_counter(&lab.server, "Udp", "RcvbufErrors")?,
        })
    }

    fn since(&self, before: &Self) -> Self {
        Self {
            sender_tx_dropped: self.sender_tx_dropped - before.sender_tx_dropped,
            switch_tx_dropped: self.switch_tx_dropped - before.switch_tx_dropped,
            lan_rx_dropped: self.lan_rx_dropped - before.lan_rx_dropped,
            wan_tx_dropped: self.wan_tx_dropped - before.wan_tx_dropped,
            server_rx_dropped: self.server_rx_dropped - before.server_rx_dropped,
            server_rcvbuf_errors: self.server_rcvbuf_errors - before.server_rcvbuf_errors,
        }
    }

    fn json(&self) -> String {
        format!(
            "\"sender_tx_dropped\": {}, \"switch_up0_tx_dropped\": {}, \"lan_rx_dropped\": {}, \"wan_tx_dropped\": {}, \"server_rx_dropped\": {}, \"server_udp_rcvbuf_errors\": {}",
            self.sender_tx_dropped, self.switch_tx_dropped, self.lan_rx_dropped, self.wan_tx_dropped, self.server_rx_dropped, self.server_rcvbuf_errors
        )
    }

    fn text(&self) -> String {
        format!(
            "lost before the gateway: the sender's eth0 tx_dropped {}, the switch's up0 tx_dropped {}, lan0 rx_dropped {}; \
             lost after the gateway: wan0 tx_dropped {}, server eth0 rx_dropped {}, server UDP RcvbufErrors {}",
            self.sender_tx_dropped, self.switch_tx_dropped, self.lan_rx_dropped, self.wan_tx_dropped, self.server_rx_dropped, self.server_rcvbuf_errors
        )
    }
}

/// `count` once it stops moving for 500 ms (at most 10 s): the echo
/// server reads a burst from its socket after the gateway sent it.
fn settled(count: impl Fn() -> usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = count();
    while Instant::now() < deadline {
        thread::sleep(Duration::from_millis(500));
        let now = count();
        if now == last {
            break;
        }
        last = now;
    }
    last
}

/// `rx_packets` of an interface of the gateway namespace.
fn rx_packets(lab: &NatLab, ifname: &str) -> Result<u64> {
    Ok(LinkCounters::read(&lab.gw, ifname)?.rx_packets)
}

/// Every `natd stats` counter (datapath and daemon) that changed, with by
/// how much.
fn counter_deltas(before: &nat_userspace::control::Stats, after: &nat_userspace::control::Stats) -> Vec<(String, u64)> {
    let old = |name: &str| before.get(name).unwrap_or(0);
    after.datapath.iter().chain(&after.daemon).filter(|c| c.value != old(&c.name)).map(|c| (c.name.clone(), c.value.wrapping_sub(old(&c.name)))).collect()
}

fn natd_created(lab: &NatLab) -> Result<u64> {
    lab.stats()?.get("mappings_created").context("mappings_created")
}

fn conntrack_count(lab: &NatLab) -> Result<u64> {
    Ok(lab.gw.exec(&["cat", "/proc/sys/net/netfilter/nf_conntrack_count"])?.trim().parse()?)
}

/// iperf3 -P 8 from the LAN host to the server; Gbit/s received.
fn iperf_tcp(lab: &NatLab) -> Result<f64> {
    let mut server = lab.server.command(&["iperf3", "-s", "-1", "-p", IPERF_PORT]).stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
    thread::sleep(Duration::from_millis(300));
    let out = lab.hosts[0].exec(&["iperf3", "-c", &SERVER.to_string(), "-p", IPERF_PORT, "-P", "8", "-t", IPERF_SECONDS, "-J"]);
    let _ = server.kill();
    let _ = server.wait();
    let report: serde_json::Value = serde_json::from_str(&out?)?;
    report["end"]["sum_received"]["bits_per_second"].as_f64().map(|bps| bps / 1e9).context("iperf3 report without sum_received")
}

/// Mode K on the lab's gateway: XDP_PASS on lan0 and wan0, nftables masquerade.
struct KernelNat {
    bench: Ebpf,
    lan0: u32,
    wan0: u32,
    links: Vec<aya::programs::xdp::XdpLinkId>,
}

impl KernelNat {
    fn new(lab: &NatLab) -> Result<Self> {
        let mut bench = Ebpf::load(BENCH_OBJECT)?;
        pass_program(&mut bench)?.load()?;
        Ok(Self { bench, lan0: lab.gw.ifindex("lan0")?, wan0: lab.gw.ifindex("wan0")?, links: Vec::new() })
    }

    fn enable(&mut self, lab: &NatLab) -> Result<()> {
        {
            let _in_gw = lab.gw.enter()?;
            for ifindex in [self.lan0, self.wan0] {
                let bench = &mut self.bench;
                let link = attach_when_free("XDP_PASS for the kernel's NAT", || Ok(pass_program(bench)?.attach_to_if_index(ifindex, XdpMode::Driver)?))?;
                self.links.push(link);
            }
        }
        // The kernel forwards only where forwarding is on (natd turns it off
        // again when it stops).
        for ifname in ["lan0", "wan0"] {
            lab.gw.sysctl(&format!("net.ipv4.conf.{ifname}.forwarding=1"))?;
        }
        lab.gw.exec(&["nft", "add", "table", "ip", "natbench"])?;
        lab.gw.exec(&["nft", "add chain ip natbench post { type nat hook postrouting priority 100 ; }"])?;
        lab.gw.exec(&["nft", "add", "rule", "ip", "natbench", "post", "oifname", "wan0", "masquerade"])?;
        Ok(())
    }

    fn disable(&mut self, lab: &NatLab) -> Result<()> {
        for link in std::mem::take(&mut self.links) {
            pass_program(&mut self.bench)?.detach(link)?;
        }
        lab.gw.exec(&["nft", "delete", "table", "ip", "natbench"])?;
        for ifname in ["lan0", "wan0"] {
            lab.gw.sysctl(&format!("net.ipv4.conf.{ifname}.forwarding=0"))?;
        }
        Ok(())
    }
}

fn pass_program(bench: &mut Ebpf) -> Result<&mut Xdp> {
    Ok(bench.program_mut(names::PASS).context("pass program")?.try_into()?)
}

fn round_trip(sock: &UdpSocket) -> Result<Duration> {
    let mut buf = [0u8; 64];
    let started = Instant::now();
    sock.send_to(b"ping", SocketAddrV4::new(SERVER, ECHO_PORT))?;
    sock.recv_from(&mut buf).context("no reply within 1 s")?;
    Ok(started.elapsed())
}

