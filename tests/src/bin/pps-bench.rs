//! End-to-end packets per second (../shared/BENCHMARK.md, figure 2):
//!
//! ```text
//! gen (g0) <-> (n0) nat (n1) <-> (s0) sink
//! ```
//!
//! The generator is an XDP program run through live-frames BPF_PROG_TEST_RUN
//! on g0 (pinned to CPU 0): it writes a whole UDP frame per run and sends it
//! with XDP_TX. On s0 an XDP program counts and drops. Between them, in the
//! nat namespace, one of four modes, interleaved run by run:
//! - X `xdp_nat`: this project's programs on n0 and n1, mappings pre-filled;
//! - K `nft_masquerade`: XDP_PASS on n0, kernel forwarding, nftables masquerade on n1;
//! - F `kernel_forward`: XDP_PASS on n0, kernel forwarding, no NAT;
//! - R `xdp_redirect`: an XDP program that redirects n0 -> n1 and does nothing else.
//!
//! n0 and s0 carry an XDP program in every mode, so offloads are the same.
//! The figure is what reaches the sink per second of generation.
//!
//! Usage: pps-bench [RUNS] [PACKETS_PER_RUN]  (root; writes target/bench/pps.{json,md})
//!
//! `PPS_MAX_SESSIONS=N`: X's session tables sized for N sessions, as natd's
//! `max_sessions = N` makes them (default: the most, 1,048,576).

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::Ipv4Addr,
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};
use aya::{
    Ebpf,
    maps::PerCpuArray,
    programs::{XdpMode, xdp::XdpLinkId},
};
use nat_common::{Endpoint, FreePort, GatewayConfig, Prefix, Reason, bench::names, proto};
use nat_tests::{
    bench::{GeneratorFrame, load_generator_topology, run_generator, xdp},
    mac,
    netns::Netns,
};
use nat_userspace::datapath::{Datapath, Side};

const GEN_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 10);
const NAT_LAN_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 1);
const EXTERNAL: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const SINK_ADDR: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
const G0_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0a, 0x01];
const N0_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0a, 0x02];
const N1_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0b, 0x01];
const S0_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0b, 0x02];
const SINK_PORT: u16 = 9;
/// Frame size on the wire without FCS: the classic 64-byte minimum.
const FRAME_LEN: usize = 60;
/// Frames the kernel sends per live-frames batch.
const BATCH: u32 = 64;
const FLOW_COUNTS: [u32; 3] = [1, 1024, 65536];
/// New flows per new-flow trial (at most a full free queue).
const NEW_FLOWS: u32 = 16384;
/// The program X's packets run through (generator -> n0: the LAN side).
const NAT_PROGRAM: &str = "nat_lan";
const NEW_FLOW_SPORT_BASE: u16 = 40000;
const NEW_FLOW_EXTERNAL_BASE: u16 = 1024;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Mode {
    XdpNat,
    NftMasquerade,
    KernelForward,
    XdpRedirect,
}

impl Mode {
    const ALL: [Mode; 4] = [Mode::XdpNat, Mode::NftMasquerade, Mode::KernelForward, Mode::XdpRedirect];
    const fn key(self) -> &'static str {
        match self {
            Mode::XdpNat => "xdp_nat",
            Mode::NftMasquerade => "nft_masquerade",
            Mode::KernelForward => "kernel_forward",
            Mode::XdpRedirect => "xdp_redirect",
        }
    }
}

struct Bench {
    generator_ns: Netns,
    nat: Netns,
    _sink: Netns,
    g0: u32,
    n0: u32,
    n1: u32,
    bench: Ebpf,
    /// Bench-object programs attached to n0 by the current mode.
    bench_links: Vec<(&'static str, XdpLinkId)>,
    datapath: Datapath,
    /// The datapath's ring: ClaimEvents of the new-flow trials are drained here.
    claims: aya::maps::RingBuf<aya::maps::MapData>,
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let runs: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(5);
    let packets: u32 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(1_000_000);
    ensure!(nat_tests::netns::is_root(), "the packet-rate benchmark creates namespaces and loads XDP programs: run it as root");
    let sessions = max_sessions()?;
    let mut b = Bench::new(sessions)?;

    // New flows first, while no packet-rate mapping holds the external ports.
    let (mut x_new, mut k_new) = (Vec::new(), Vec::new());
    for round in 0..runs {
        x_new.push(b.new_flows(Mode::XdpNat, (2 * round) as u8)?);
        k_new.push(b.new_flows(Mode::NftMasquerade, (2 * round + 1) as u8)?);
    }
    let (x_new, k_new) = (nat_tests::bench::median(&mut x_new), nat_tests::bench::median(&mut k_new));
    // Where X's time goes (one more trial each, kept out of the rates).
    let (x_new_timed, nat_ns_new) = b.in_programs(&[NAT_PROGRAM], |b| b.new_flows(Mode::XdpNat, (2 * runs) as u8))?;
    eprintln!("pps-bench: new flows done");

    let mut samples: BTreeMap<(u32, Mode), Vec<f64>> = BTreeMap::new();
    let mut timed = Vec::new();
    for flows in FLOW_COUNTS {
        b.set_flows(flows)?;
        for round in 0..runs {
            // Interleaved, and the order rotates so no mode always runs first.
            for i in 0..Mode::ALL.len() {
                let mode = Mode::ALL[(i + round) % Mode::ALL.len()];
                let pps = b.measure(mode, packets)?;
                samples.entry((flows, mode)).or_default().push(pps);
            }
        }
        for (mode, program) in [(Mode::XdpNat, NAT_PROGRAM), (Mode::XdpRedirect, names::REDIRECT_ONLY)] {
            let (pps, ns) = b.in_programs(&[program], |b| b.measure(mode, packets))?;
            timed.push((flows, mode, program, pps, ns));
        }
        eprintln!("pps-bench: {flows} flow(s) done");
    }

    let sessions = sessions.unwrap_or(nat_common::MAX_SESSIONS);
    let mut json = format!(
        "{{\n  \"runs\": {runs},\n  \"packets_per_run\": {packets},\n  \"max_sessions\": {sessions},\n  \"frame_len\": {FRAME_LEN},\n  \
         \"new_flows_per_s\": {{\"xdp_nat\": {x_new:.0}, \"conntrack\": {k_new:.0}}},\n  \"new_flows_per_trial\": {NEW_FLOWS}"
    );
    let mut md = if sessions == nat_common::MAX_SESSIONS {
        String::new()
    } else {
        format!("X's session tables sized for {sessions} sessions (PPS_MAX_SESSIONS; natd's `max_sessions`).\n\n")
    };
    md.push_str("| flows | xdp_nat (X) | nft_masquerade (K) | kernel_forward (F) | xdp_redirect (R) | X/K | X/R |\n|---|---|---|---|---|---|---|\n");
    for flows in FLOW_COUNTS {
        let m: BTreeMap<Mode, f64> = Mode::ALL.iter().map(|&mode| (mode, nat_tests::bench::median(&mut samples[&(flows, mode)].clone()))).collect();
        write!(json, ",\n  \"flows_{flows}\": {{")?;
        for (i, mode) in Mode::ALL.iter().enumerate() {
            write!(json, "{}\"{}\": {:.0}", if i > 0 { ", " } else { "" }, mode.key(), m[mode])?;
        }
        write!(json, "}}")?;
        let (f, x_k, x_r) = (m[&Mode::KernelForward], paired_ratio(&samples, flows, Mode::NftMasquerade), paired_ratio(&samples, flows, Mode::XdpRedirect));
        write!(json, ",\n  \"ratios_flows_{flows}\": {{\"x_k\": {x_k:.3}, \"x_r\": {x_r:.3}}}")?;
        writeln!(md, "| {flows} | {:.2} Mpps | {:.2} Mpps | {:.2} Mpps | {:.2} Mpps | {x_k:.2} | {x_r:.2} |", m[&Mode::XdpNat] / 1e6, m[&Mode::NftMasquerade] / 1e6, f / 1e6, m[&Mode::XdpRedirect] / 1e6)?;
    }
    writeln!(md, "\nNew flows per second, every packet a new flow ({NEW_FLOWS} per trial, median of {runs}): X {x_new:.0}, K (conntrack) {k_new:.0}, X/K {:.2}", x_new / k_new)?;
    // The program's share of each packet's time on the NAT's CPU (the
    // generator, veth and the redirect take the rest: both run on CPU 0).
    writeln!(
        md,
        "\nWhere a packet's time goes: one more trial of each, with the kernel's BPF run-time stats on (every program run, \
         the generator's and the sink's too, pays two clock reads for them, so these rates are lower than the table's; \
         compare the rows with each other): the time per packet the rate leaves (1/rate, on the generator's CPU, \
         where veth runs the NAT too), and the NAT program's own time per run.\n\n\
         | run | program | rate | ns per packet | ns in the program |\n|---|---|---|---|---|"
    )?;
    write!(json, ",\n  \"in_programs\": [{{\"run\": \"new_flows\", \"program\": \"{NAT_PROGRAM}\", \"per_s\": {x_new_timed:.0}, \"ns_per_run\": {nat_ns_new:.0}}}")?;
    writeln!(md, "| new flows | {NAT_PROGRAM} | {x_new_timed:.0}/s | {:.0} | {nat_ns_new:.0} |", 1e9 / x_new_timed)?;
    for (flows, mode, program, pps, ns) in &timed {
        write!(json, ", {{\"run\": \"{}_{flows}\", \"program\": \"{program}\", \"per_s\": {pps:.0}, \"ns_per_run\": {ns:.0}}}", mode.key())?;
        writeln!(md, "| {} at {flows} flows | {program} | {:.2} Mpps | {:.0} | {ns:.0} |", mode.key(), pps / 1e6, 1e9 / pps)?;
    }
    json.push_str("]\n}\n");
    nat_tests::bench::write_results("pps", &json, &md)?;
    Ok(())
}

/// `PPS_MAX_SESSIONS`, if set: the sessions X's tables are sized for.
fn max_sessions() -> Result<Option<u32>> {
    let Ok(text) = std::env::var("PPS_MAX_SESSIONS") else { return Ok(None) };
    let sessions: u32 = text.parse().with_context(|| format!("PPS_MAX_SESSIONS={text}: not a number of sessions"))?;
    ensure!((nat_common::MIN_SESSIONS..=nat_common::MAX_SESSIONS).contains(&sessions), "PPS_MAX_SESSIONS={sessions}: natd allows {}-{}", nat_common::MIN_SESSIONS, nat_common::MAX_SESSIONS);
    Ok(Some(sessions))
}

/// X's rate against `reference`'s: the median over rounds of the ratio
/// within each round (the two ran seconds apart), not the ratio of the
/// medians. A round the host slowed down slows both, and the ratio keeps
/// still where the rates move (`--quick`'s few rounds made X/R swing from
/// 0.62 to 0.91 between runs as ratios of medians).
fn paired_ratio(samples: &BTreeMap<(u32, Mode), Vec<f64>>, flows: u32, reference: Mode) -> f64 {
    let (x, other) = (&samples[&(flows, Mode::XdpNat)], &samples[&(flows, reference)]);
    let mut ratios: Vec<f64> = x.iter().zip(other).filter(|(_, r)| **r > 0.0).map(|(x, r)| x / r).collect();
    if ratios.is_empty() {
        return 0.0;
    }
    nat_tests::bench::median(&mut ratios)
}

impl Bench {
    /// `sessions`: X's session tables' size (`PPS_MAX_SESSIONS`), if not the most.
    fn new(sessions: Option<u32>) -> Result<Self> {
        let generator_ns = Netns::new("pg")?;
        let nat = Netns::new("pn")?;
        let sink = Netns::new("ps")?;
        generator_ns.ip(&["link", "add", "g0", "address", &mac(G0_MAC), "type", "veth", "peer", "name", "n0", "address", &mac(N0_MAC), "netns", &nat.name])?;
        nat.ip(&["link", "add", "n1", "address", &mac(N1_MAC), "type", "veth", "peer", "name", "s0", "address", &mac(S0_MAC), "netns", &sink.name])?;
        generator_ns.ip(&["addr", "add", &format!("{GEN_ADDR}/24"), "dev", "g0"])?;
        nat.ip(&["addr", "add", &format!("{NAT_LAN_ADDR}/24"), "dev", "n0"])?;
        nat.ip(&["addr", "add", &format!("{EXTERNAL}/24"), "dev", "n1"])?;
        sink.ip(&["addr", "add", &format!("{SINK_ADDR}/24"), "dev", "s0"])?;
        for (ns, ifname) in [(&generator_ns, "g0"), (&nat, "n0"), (&nat, "n1"), (&sink, "s0")] {
            ns.ip(&["link", "set", ifname, "up"])?;
        }
        nat.sysctl("net.ipv4.conf.all.forwarding=1")?;
        // Static neighbours: the sink drops ARP like everything else.
        nat.ip(&["neigh", "replace", &SINK_ADDR.to_string(), "lladdr", &mac(S0_MAC), "dev", "n1", "nud", "permanent"])?;
        nat.ip(&["neigh", "replace", &GEN_ADDR.to_string(), "lladdr", &mac(G0_MAC), "dev", "n0", "nud", "permanent"])?;
        let (g0, n0, n1, s0) = (generator_ns.ifindex("g0")?, nat.ifindex("n0")?, nat.ifindex("n1")?, sink.ifindex("s0")?);

        let bench = load_generator_topology(&generator_ns, &nat, n1, &sink, s0)?;
        let datapath = {
            let _in_nat = nat.enter()?;
            let mut dp = match sessions {
                Some(sessions) => Datapath::load_with_sessions(sessions)?,
                None => Datapath::load()?,
            };
            // Inside ports of the new-flow trials (40000+) are outside the range,
            // so they take the claim path rather than port preservation.
            dp.set_config(GatewayConfig::new(EXTERNAL, n1, 1024, 32767).with_lan_ifindex(n0).with_inside_prefix(Prefix::new(NAT_LAN_ADDR, 24), true))?;
            dp.add_tx_port(n0)?;
            dp.add_tx_port(n1)?;
            dp
        };
        let mut datapath = datapath;
        let claims = datapath.take_miss_ring()?;
        Ok(Self { generator_ns, nat, _sink: sink, g0, n0, n1, bench, bench_links: Vec::new(), datapath, claims })
    }

    /// Generator flows, and the NAT mappings for every one of them (the
    /// benchmark measures the hit path; new flows are flows-bench's job).
    fn set_flows(&mut self, flows: u32) -> Result<()> {
        self.write_generator(GEN_ADDR, SINK_PORT, flows, 0)?;
        for port in 0..flows {
            let port = port as u16;
            // Identity port mapping: every inside port is its own external port.
            let _ = self.datapath.insert_pair(
                Endpoint::new(GEN_ADDR, port, proto::UDP),
                Endpoint::new(EXTERNAL, port, proto::UDP),
                u32::from(port),
                0,
            );
        }
        Ok(())
    }

    /// The generator's frames: UDP from `source` to the sink's `dport`, `flows`
    /// source ports from `sport_base`.
    fn write_generator(&mut self, source: Ipv4Addr, dport: u16, flows: u32, sport_base: u16) -> Result<()> {
        GeneratorFrame { src_mac: G0_MAC, dst_mac: N0_MAC, source, destination: SINK_ADDR, dport, frame_len: FRAME_LEN, flows, sport_base }.write(&mut self.bench)
    }

    /// New flows per second, every generated packet a new flow from a fresh
    /// inside address. X: the datapath claims a queued free port per flow
    /// (the queue filled as natd keeps it); K: conntrack creates an entry per
    /// flow. Returns flows set up per second of generation.
    fn new_flows(&mut self, mode: Mode, trial: u8) -> Result<f64> {
        let source = Ipv4Addr::new(10, 77, 1, 50 + trial);
        // Its own destination port too: masquerade picks ports per destination,
        // so the trials do not eat the port space of the packet-rate runs.
        self.write_generator(source, SINK_PORT + 1 + u16::from(trial), NEW_FLOWS, NEW_FLOW_SPORT_BASE)?;
        let inside = |i: u32| Endpoint::new(source, NEW_FLOW_SPORT_BASE + i as u16, proto::UDP);
        if mode == Mode::XdpNat {
            let _in_nat = self.nat.enter()?;
            for i in 0..NEW_FLOWS {
                // Ports and slots above the identity mappings' of the packet-rate runs.
                let free = FreePort { session: 70_000 + i, port: NEW_FLOW_EXTERNAL_BASE + i as u16, _pad: 0 };
                self.datapath.push_free_port(proto::UDP, free)?;
            }
        }
        let links = self.enter(mode)?;
        let before = self.new_flow_count(mode)?;
        let elapsed = self.generate(NEW_FLOWS)?;
        std::thread::sleep(Duration::from_millis(20));
        let set_up = self.new_flow_count(mode)? - before;
        self.leave(mode, links)?;
        if mode == Mode::XdpNat {
            // Give the ports back for the next trial, and empty the ring of claims.
            for i in 0..NEW_FLOWS {
                let _ = self.datapath.remove_pair(inside(i));
            }
            while self.claims.next().is_some() {}
        }
        Ok(set_up as f64 / elapsed.as_secs_f64())
    }

    fn new_flow_count(&self, mode: Mode) -> Result<u64> {
        match mode {
            Mode::XdpNat => self.datapath.counter(Reason::TranslatedNewFlow),
            _ => Ok(self.nat.exec(&["cat", "/proc/sys/net/netfilter/nf_conntrack_count"])?.trim().parse()?),
        }
    }

    /// `run` with the kernel counting BPF run time: its result, and the ns
    /// per run of the programs named `programs` meanwhile.
    fn in_programs(&mut self, programs: &[&str], run: impl FnOnce(&mut Self) -> Result<f64>) -> Result<(f64, f64)> {
        let _stats = nat_tests::bench::BpfRunTimeStats::enable()?;
        let (time, runs) = nat_tests::bench::bpf_runs(programs)?;
        let result = run(self)?;
        let (time_after, runs_after) = nat_tests::bench::bpf_runs(programs)?;
        let runs = runs_after.saturating_sub(runs).max(1);
        Ok((result, time_after.saturating_sub(time).as_nanos() as f64 / runs as f64))
    }

    fn sink_count(&self) -> Result<u64> {
        let counter: PerCpuArray<_, u64> = PerCpuArray::try_from(self.bench.map(names::SINK_COUNTER).context("SINK_COUNTER")?)?;
        Ok(counter.get(&0, 0)?.iter().sum())
    }

    /// Sets the mode up, generates `packets`, tears the mode down; returns
    /// packets per second that reached the sink.
    fn measure(&mut self, mode: Mode, packets: u32) -> Result<f64> {
        let links = self.enter(mode)?;
        let before = self.sink_count()?;
        let elapsed = self.generate(packets)?;
        // Let the last batches drain through the queues.
        std::thread::sleep(Duration::from_millis(20));
        let delivered = self.sink_count()? - before;
        self.leave(mode, links)?;
        Ok(delivered as f64 / elapsed.as_secs_f64())
    }

    fn generate(&mut self, packets: u32) -> Result<Duration> {
        let _in_gen = self.generator_ns.enter()?;
        run_generator(xdp(&mut self.bench, names::GENERATE)?, self.g0, FRAME_LEN, packets, BATCH, 0)
    }

    fn enter(&mut self, mode: Mode) -> Result<Vec<Side>> {
        let _in_nat = self.nat.enter()?;
        match mode {
            Mode::XdpNat => {
                self.datapath.attach(Side::Lan, self.n0, XdpMode::Driver)?;
                self.datapath.attach(Side::Wan, self.n1, XdpMode::Driver)?;
                return Ok(vec![Side::Lan, Side::Wan]);
            }
            Mode::NftMasquerade => {
                self.nat.exec(&["nft", "add", "table", "ip", "natbench"])?;
                self.nat.exec(&["nft", "add chain ip natbench post { type nat hook postrouting priority 100 ; }"])?;
                self.nat.exec(&["nft", "add", "rule", "ip", "natbench", "post", "oifname", "n1", "masquerade"])?;
                let link = xdp(&mut self.bench, names::PASS)?.attach_to_if_index(self.n0, XdpMode::Driver)?;
                self.bench_links.push((names::PASS, link));
            }
            Mode::KernelForward => {
                let link = xdp(&mut self.bench, names::PASS)?.attach_to_if_index(self.n0, XdpMode::Driver)?;
                self.bench_links.push((names::PASS, link));
            }
            Mode::XdpRedirect => {
                let link = xdp(&mut self.bench, names::REDIRECT_ONLY)?.attach_to_if_index(self.n0, XdpMode::Driver)?;
                self.bench_links.push((names::REDIRECT_ONLY, link));
            }
        }
        Ok(Vec::new())
    }

    fn leave(&mut self, mode: Mode, sides: Vec<Side>) -> Result<()> {
        let _in_nat = self.nat.enter()?;
        for side in sides {
            self.datapath.detach(side)?;
        }
        for (name, link) in std::mem::take(&mut self.bench_links) {
            xdp(&mut self.bench, name)?.detach(link)?;
        }
        if mode == Mode::NftMasquerade {
            self.nat.exec(&["nft", "delete", "table", "ip", "natbench"])?;
        }
        Ok(())
    }
}

