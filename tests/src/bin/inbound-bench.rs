//! Inbound forwards against what a user would pick instead
//! (../shared/BENCHMARK.md, "Inbound and proxy"), three parts in one run,
//! each interleaved round by round with the order rotating:
//!
//! 1. Packets per second through a forward: pps-bench's topology reversed.
//!
//!    ```text
//!    gen (g0) 203.0.113.2 <-> (n0) nat (n1) <-> (s0) sink 10.77.1.10
//!                        WAN 203.0.113.1   LAN 10.77.1.1
//!    ```
//!
//!    The generator (live-frames BPF_PROG_TEST_RUN, CPU 0) sends 64-byte
//!    UDP frames to 203.0.113.1:8080 from 1,024 or 65,536 source ports; on
//!    s0 an XDP program counts and drops. In the nat namespace one of:
//!    - X `natd`: the real natd with `[[forward]] udp 8080 -> 10.77.1.10:9`,
//!      health kind none;
//!    - K `nft_dnat`: XDP_PASS on n0 (so live frames arrive), kernel
//!      forwarding, nftables `dnat to 10.77.1.10:9` in prerouting;
//!    - R `xdp_redirect`: XDP redirect n0 -> n1 and nothing else.
//!
//!    Each run first sends two packets per flow unmeasured (flows set up).
//!    X is measured twice per run: with the server silent (every flow
//!    half-open, in natd's LRU of unanswered flows), then after the server
//!    answered every flow once (AF_PACKET frames from s0) and two more
//!    packets per flow (established: natd's flow table). K's conntrack
//!    entries are answered the same way before it is measured.
//!
//! 2. New connections per second through a TCP forward balanced over three
//!    nginx servers (natlab: h0-h2 on the LAN, the client in srv on the
//!    WAN): wrk, one thread pinned to CPU 1, `Connection: close`, against
//!    - X `natd`: `[[forward]] tcp 8080` over the three, health kind tcp
//!      (defaults: 1 s interval, fall 2, rise 2);
//!    - H `haproxy`: HAProxy `mode tcp` in the gateway namespace, round
//!      robin, `check inter 1s fall 2 rise 2`;
//!    - K `nft_numgen`: nftables `dnat to numgen inc mod 3 map {...}`, no
//!      health checks.
//!
//!    K and H have XDP_PASS on the gateway's veths, as X has its programs.
//!
//! 3. Failover: clients in srv send GETs one after another through the
//!    forward; one nginx is killed (SIGKILL); the figure is the time from
//!    the kill to the start of the last request that failed. X: natd
//!    defaults (tcp check every 1 s, fall 2, and the datapath's passive
//!    signals); H: HAProxy with its default `check` (inter 2 s, fall 3,
//!    rise 2).
//!
//! Usage: inbound-bench [--quick] [--pps-runs N] [--pps-packets N]
//! [--conn-runs N] [--conn-seconds N] [--failover-trials N]
//! [--failover-window SECONDS] [--only pps,conn,failover]
//! (root; writes target/bench/inbound.{json,md}). A part that fails is
//! recorded with its error and the others still run; the exit status then
//! says so.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddrV4},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use aya::{
    Ebpf,
    maps::PerCpuArray,
    programs::{XdpMode, xdp::XdpLinkId},
};
use nat_common::bench::names;
use nat_tests::{
    bench::{BpfRunTimeStats, GeneratorFrame, bpf_run_time, busy_share, cpu_ticks, load_generator_topology, machine_json, median, process_cpu_seconds, run_generator, xdp},
    inbound::{Haproxy, Natd, Nginx, RequestStream, WrkResult, XdpPass, wait_serving, wrk},
    natlab::{EXTERNAL, NatLab, host_addr},
    netns::Netns,
};
use serde_json::{Value, json};

/// The CPU the packet generator runs on.
const GENERATOR_CPU: usize = 0;
/// The CPU wrk is pinned to (taskset).
const WRK_CPU: usize = 1;
/// natd's XDP programs, by their names in the kernel.
const NATD_PROGRAMS: [&str; 2] = ["nat_lan", "nat_wan"];

/// The sizes of one run.
#[derive(Clone, Debug)]
struct Plan {
    pps_runs: usize,
    pps_packets: u32,
    conn_runs: usize,
    conn_seconds: u32,
    failover_trials: usize,
    /// Seconds each failover trial watches after the kill: HAProxy's
    /// defaults take up to ~6 to mark a server down, and a failure in the
    /// window's last second marks a trial unrecovered.
    failover_window_s: u64,
    /// The parts to run (`--only pps,conn,failover`); all by default.
    parts: Vec<String>,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Self { pps_runs: 2, pps_packets: 300_000, conn_runs: 1, conn_seconds: 2, failover_trials: 1, failover_window_s: 8, parts: all_parts() }
        } else {
            Self { pps_runs: 7, pps_packets: 1_000_000, conn_runs: 3, conn_seconds: 5, failover_trials: 3, failover_window_s: 12, parts: all_parts() }
        }
    }

    fn from_args() -> Result<Self> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let mut plan = Self::new(args.iter().any(|a| a == "--quick"));
        let mut i = 0;
        while i < args.len() {
            let value = |i: usize| args.get(i + 1).with_context(|| format!("{} needs a value", args[i]));
            match args[i].as_str() {
                "--quick" => {}
                "--pps-runs" => plan.pps_runs = value(i)?.parse()?,
                "--pps-packets" => plan.pps_packets = value(i)?.parse()?,
                "--conn-runs" => plan.conn_runs = value(i)?.parse()?,
                "--conn-seconds" => plan.conn_seconds = value(i)?.parse()?,
                "--failover-trials" => plan.failover_trials = value(i)?.parse()?,
                "--failover-window" => plan.failover_window_s = value(i)?.parse()?,
                "--only" => {
                    plan.parts = value(i)?.split(',').map(str::to_string).collect();
                    ensure!(plan.parts.iter().all(|p| all_parts().contains(p)), "--only takes some of {:?}", all_parts());
                }
                other => bail!("unknown argument {other:?} (see the usage in the source's header)"),
            }
            i += if args[i] == "--quick" { 1 } else { 2 };
        }
        ensure!(plan.pps_runs > 0 && plan.conn_runs > 0 && plan.failover_trials > 0 && plan.conn_seconds > 0, "every count must be at least 1");
        ensure!(plan.failover_window_s >= 2, "--failover-window {}: give at least 2 seconds (a failure in the last one marks a trial unrecovered)", plan.failover_window_s);
        Ok(plan)
    }
}

fn all_parts() -> Vec<String> {
    ["pps", "conn", "failover"].map(String::from).to_vec()
}

fn main() -> Result<()> {
    let plan = Plan::from_args()?;
    ensure!(nat_tests::netns::is_root(), "the inbound benchmark creates namespaces, loads XDP programs and runs natd: run it as root");
    let started = Instant::now();
    let machine = machine_json();
    let mut failed = Vec::new();
    let mut part = |name: &str, run: &dyn Fn(&Plan) -> Result<Value>| {
        if !plan.parts.iter().any(|p| p == name) {
            return json!({ "error": "not run (--only)" });
        }
        let value = run(&plan).unwrap_or_else(|e| {
            eprintln!("inbound-bench: {name} failed: {e:#}");
            failed.push(name.to_string());
            json!({ "error": format!("{e:#}") })
        });
        eprintln!("inbound-bench: {name} done ({:.0} s)", started.elapsed().as_secs_f64());
        value
    };
    let pps = part("pps", &pps::run);
    let conn = part("conn", &lb::connections);
    let failover = part("failover", &lb::failover);

    let results = json!({
        "machine": machine,
        "generator_cpu": GENERATOR_CPU,
        "wrk_cpu": WRK_CPU,
        "plan": { "pps_runs": plan.pps_runs, "pps_packets_per_run": plan.pps_packets, "conn_runs": plan.conn_runs,
                  "conn_seconds": plan.conn_seconds, "failover_trials": plan.failover_trials, "failover_window_s": plan.failover_window_s },
        "goals": { "pps_x_vs_k": 4.0, "pps_x_vs_r": 0.85, "conn_x_vs_haproxy": 2.0, "failover_x_s": 2.0, "failover_haproxy_defaults_s": 6.0 },
        "pps": pps,
        "conn": conn,
        "failover": failover,
        "seconds": started.elapsed().as_secs(),
    });
    let md = markdown(&results)?;
    nat_tests::bench::write_results("inbound", &(serde_json::to_string_pretty(&results)? + "\n"), &md)?;
    ensure!(failed.is_empty(), "part(s) failed: {failed:?} (recorded in inbound.json)");
    Ok(())
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { (a / b * 100.0).round() / 100.0 } else { 0.0 }
}

fn median_of(values: &[f64]) -> f64 {
    if values.is_empty() { 0.0 } else { median(&mut values.to_vec()) }
}

/// A part's error as the table shows it: its first line.
fn outcome(error: &str) -> String {
    let first = error.lines().next().unwrap_or("");
    if first.starts_with("not run") { first.to_string() } else { format!("failed: {first}") }
}

fn markdown(r: &Value) -> Result<String> {
    let mut md = String::new();
    let m = &r["machine"];
    writeln!(md, "Machine: {}, {} vCPU, kernel {}. Generator on CPU {GENERATOR_CPU}; wrk pinned to CPU {WRK_CPU} (taskset).\n", m["cpu"].as_str().unwrap_or("?"), m["vcpus"], m["kernel"].as_str().unwrap_or("?"))?;
    let f = |v: &Value| v.as_f64().unwrap_or(0.0);
    writeln!(md, "| inbound figure | X natd | K / H reference | R / K reference | ratio | goal |\n|---|---|---|---|---|---|")?;
    let pps = &r["pps"];
    if let Some(e) = pps["error"].as_str() {
        writeln!(md, "| packets/s through a UDP forward | {} | | | | |", outcome(e))?;
    } else {
        for flows in pps::FLOW_COUNTS {
            let p = &pps[format!("flows_{flows}")];
            writeln!(
                md,
                "| packets/s, {flows} flows, 64 B, WAN -> LAN server (flows answered) | {:.2} Mpps | K nft DNAT {:.2} Mpps | R redirect {:.2} Mpps | X/K {:.2}, X/R {:.2} | X/K >= 4, X/R >= 0.85 |",
                f(&p["natd"]) / 1e6,
                f(&p["nft_dnat"]) / 1e6,
                f(&p["xdp_redirect"]) / 1e6,
                f(&p["x_vs_k"]),
                f(&p["x_vs_r"])
            )?;
            writeln!(
                md,
                "| packets/s, {flows} flows, server silent (X half-open) | {:.2} Mpps | K nft DNAT {:.2} Mpps | R redirect {:.2} Mpps | X/K {:.2}, X/R {:.2} | - |",
                f(&p["natd_half_open"]) / 1e6,
                f(&p["nft_dnat"]) / 1e6,
                f(&p["xdp_redirect"]) / 1e6,
                f(&p["x_half_open_vs_k"]),
                f(&p["x_half_open_vs_r"])
            )?;
        }
    }
    let c = &r["conn"];
    if let Some(e) = c["error"].as_str() {
        writeln!(md, "| new connections/s, 3 nginx | {} | | | | |", outcome(e))?;
    } else {
        writeln!(
            md,
            "| new connections/s, 3 nginx, wrk -c{} Connection: close | {:.0} | H HAProxy {:.0} | K nft numgen {:.0} | X/H {:.2}, X/K {:.2} | X/H >= 2 |",
            c["wrk_connections"],
            f(&c["natd"]),
            f(&c["haproxy"]),
            f(&c["nft_numgen"]),
            f(&c["x_vs_haproxy"]),
            f(&c["x_vs_nft"])
        )?;
    }
    let fo = &r["failover"];
    if let Some(e) = fo["error"].as_str() {
        writeln!(md, "| failover after a server is killed | {} | | | | |", outcome(e))?;
    } else {
        writeln!(
            md,
            "| failover: kill -> last failed request (s) | {:.2} | H HAProxy defaults {:.2} | - | - | X < 2 s (HAProxy defaults ~6 s) |",
            f(&fo["natd"]["seconds"]),
            f(&fo["haproxy"]["seconds"])
        )?;
    }
    if pps["error"].is_null() {
        writeln!(md, "\nPackets per second, median of {} runs of {} packets (delivered to the sink per second of generation):\n", r["plan"]["pps_runs"], r["plan"]["pps_packets_per_run"])?;
        writeln!(md, "| flows | X natd | X natd half-open | K nft DNAT | R redirect | X/K | X/R | delivered X / X half-open / K / R | X new-flow share (half-open) |\n|---|---|---|---|---|---|---|---|---|")?;
        for flows in pps::FLOW_COUNTS {
            let p = &pps[format!("flows_{flows}")];
            let d = &p["delivered_share"];
            let pct = |v: &Value| format!("{:.1}%", f(v) * 100.0);
            writeln!(
                md,
                "| {flows} | {:.2} Mpps | {:.2} Mpps | {:.2} Mpps | {:.2} Mpps | {:.2} | {:.2} | {} / {} / {} / {} | {} ({}) |",
                f(&p["natd"]) / 1e6,
                f(&p["natd_half_open"]) / 1e6,
                f(&p["nft_dnat"]) / 1e6,
                f(&p["xdp_redirect"]) / 1e6,
                f(&p["x_vs_k"]),
                f(&p["x_vs_r"]),
                pct(&d["natd"]),
                pct(&d["natd_half_open"]),
                pct(&d["nft_dnat"]),
                pct(&d["xdp_redirect"]),
                pct(&p["natd_new_flow_share"]["natd"]),
                pct(&p["natd_new_flow_share"]["natd_half_open"])
            )?;
        }
        writeln!(md, "\nX: every flow answered once by the server before the measured packets (the established-flow table); X half-open: the server never answered (the LRU of unanswered flows). K's conntrack entries are answered too.")?;
    }
    if c["error"].is_null() {
        writeln!(md, "\nNew connections per second, median of {} runs of {} s (errors: connect/read/write/timeout/non-2xx, summed over runs):\n", c["runs"], c["seconds"])?;
        writeln!(md, "| contender | conn/s | samples | latency avg / p99 / max, ms | machine CPU busy | gateway process CPU, ms per 1k conn | natd XDP CPU, ms per 1k conn | errors |\n|---|---|---|---|---|---|---|---|")?;
        for key in ["natd", "haproxy", "nft_numgen"] {
            let l = &c["latency_ms"];
            let process = c["gateway_process_cpu_ms_per_1k_conn"][key].as_f64().map_or("-".to_string(), |v| format!("{v:.1}"));
            let xdp = c["gateway_xdp_cpu_ms_per_1k_conn"][key].as_f64().map_or("-".to_string(), |v| format!("{v:.1}"));
            writeln!(
                md,
                "| {key} | {:.0} | {} | {:.2} / {:.2} / {:.0} | {:.0}% | {process} | {xdp} | {} |",
                f(&c[key]),
                c["samples"][key],
                f(&l["avg"][key]),
                f(&l["p99"][key]),
                f(&l["max"][key]),
                f(&c["cpu_busy_share"][key]) * 100.0,
                c["errors"][key]
            )?;
        }
        writeln!(md, "\nnatd's XDP CPU is its programs' run time (BPF_ENABLE_STATS, natd's runs only): natd's whole cost is the two columns summed; nftables has no process and its cost is the kernel's. Machine CPU busy counts everything on the machine.")?;
    }
    if fo["error"].is_null() {
        writeln!(md, "\nFailover, median of {} trial(s): one of 3 nginx killed during a stream of GETs ({} clients, one request at a time each):\n", fo["trials"], fo["clients"])?;
        writeln!(md, "| contender | health checks | kill -> last failed request start (s) | samples | failed / sent after the kill |\n|---|---|---|---|---|")?;
        for key in ["natd", "haproxy"] {
            let x = &fo[key];
            let (failed, sent): (Vec<String>, Vec<String>) = x["trials"].as_array().map(|t| t.iter().map(|t| (t["failed_after_kill"].to_string(), t["sent_after_kill"].to_string())).unzip()).unwrap_or_default();
            writeln!(md, "| {key} | {} | {:.2} | {} | {} / {} |", x["checks"].as_str().unwrap_or(""), f(&x["seconds"]), x["samples"], failed.join(","), sent.join(","))?;
        }
    }
    Ok(md)
}

/// Part 1: packets per second through a UDP forward.
mod pps {
    use super::*;
    use nat_tests::{mac, packet::Frame, wire::send_frames};

    pub const FLOW_COUNTS: [u32; 2] = [1024, 65536];
    const CLIENT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
    const WAN_ADDR: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
    const LAN_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 1);
    const BACKEND: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 10);
    const G0_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0c, 0x01];
    const N0_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0c, 0x02];
    const N1_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0d, 0x01];
    const S0_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0d, 0x02];
    const FORWARD_PORT: u16 = 8080;
    const BACKEND_PORT: u16 = 9;
    const FRAME_LEN: usize = 60;
    const BATCH: u32 = 64;
    const NATD_CONFIG: &str = "log_level = \"warn\"\n\n[[forward]]\nname = \"bench-udp\"\nprotocol = \"udp\"\nport = 8080\nto = [\"10.77.1.10:9\"]\n[forward.health]\nkind = \"none\"\n";

    /// The contenders, as the gateway is set up for them.
    #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
    enum Mode {
        Natd,
        NftDnat,
        XdpRedirect,
    }

    impl Mode {
        const ALL: [Mode; 3] = [Mode::Natd, Mode::NftDnat, Mode::XdpRedirect];
        const fn key(self) -> &'static str {
            match self {
                Mode::Natd => "natd",
                Mode::NftDnat => "nft_dnat",
                Mode::XdpRedirect => "xdp_redirect",
            }
        }
    }

    /// What is reported: X twice (flows half-open, as long as the server
    /// has not answered, and established once it has), K with its
    /// conntrack entries answered, R.
    #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
    enum Series {
        Natd,
        NatdHalfOpen,
        NftDnat,
        XdpRedirect,
    }

    impl Series {
        const ALL: [Series; 4] = [Series::Natd, Series::NatdHalfOpen, Series::NftDnat, Series::XdpRedirect];
        const fn key(self) -> &'static str {
            match self {
                Series::Natd => "natd",
                Series::NatdHalfOpen => "natd_half_open",
                Series::NftDnat => "nft_dnat",
                Series::XdpRedirect => "xdp_redirect",
            }
        }
    }


    struct Sample {
        pps: f64,
        delivered_share: f64,
        /// X only: forwarded packets that took the new-flow path.
        new_flow_share: Option<f64>,
    }

    struct Bench {
        generator: Netns,
        nat: Netns,
        sink: Netns,
        g0: u32,
        n0: u32,
        bench: Ebpf,
        links: Vec<(&'static str, XdpLinkId)>,
        natd: Option<Natd>,
        /// The server's answer to every flow of the generator (sent from the
        /// sink's side through the gateway).
        replies: Vec<Vec<u8>>,
    }

    pub fn run(plan: &Plan) -> Result<Value> {
        let mut b = Bench::new()?;
        let mut samples: BTreeMap<(u32, Series), Vec<Sample>> = BTreeMap::new();
        for flows in FLOW_COUNTS {
            // 1,024 flows: ports 1024-2047; 65,536: every port.
            let sport_base: u16 = if flows == 65536 { 0 } else { 1024 };
            GeneratorFrame { src_mac: G0_MAC, dst_mac: N0_MAC, source: CLIENT, destination: WAN_ADDR, dport: FORWARD_PORT, frame_len: FRAME_LEN, flows, sport_base }
                .write(&mut b.bench)?;
            b.replies = (0..flows)
                .map(|i| Frame::udp((BACKEND, BACKEND_PORT), (CLIENT, sport_base.wrapping_add(i as u16))).with_macs(S0_MAC, N1_MAC).build())
                .collect();
            for round in 0..plan.pps_runs {
                for i in 0..Mode::ALL.len() {
                    let mode = Mode::ALL[(i + round) % Mode::ALL.len()];
                    let measured = b.measure(mode, flows, plan.pps_packets).with_context(|| format!("{} at {flows} flows, round {round}", mode.key()))?;
                    for (series, sample) in measured {
                        samples.entry((flows, series)).or_default().push(sample);
                    }
                }
            }
            eprintln!("inbound-bench: {flows} flows done");
        }
        let mut out = json!({
            "frame_len": FRAME_LEN, "runs": plan.pps_runs, "packets_per_run": plan.pps_packets, "generator_cpu": GENERATOR_CPU,
            "forward": format!("udp {WAN_ADDR}:{FORWARD_PORT} -> {BACKEND}:{BACKEND_PORT}"),
            "series": {
                "natd": "X: natd, every flow answered once by the server (established: the flow table)",
                "natd_half_open": "X: natd, the server silent (half-open: the LRU of unanswered flows)",
                "nft_dnat": "K: XDP_PASS + nftables dnat, conntrack entries answered once",
                "xdp_redirect": "R: XDP redirect n0 -> n1, no other work",
            },
        });
        for flows in FLOW_COUNTS {
            let of = |series: Series| &samples[&(flows, series)];
            let pps = |series: Series| of(series).iter().map(|s| s.pps).collect::<Vec<_>>();
            let rate = |series: Series| median_of(&pps(series));
            let (x, xh, k, r) = (rate(Series::Natd), rate(Series::NatdHalfOpen), rate(Series::NftDnat), rate(Series::XdpRedirect));
            let delivered: serde_json::Map<String, Value> =
                Series::ALL.iter().map(|&s| (s.key().to_string(), json!(median_of(&of(s).iter().map(|s| s.delivered_share).collect::<Vec<_>>())))).collect();
            let new_share = |series: Series| median_of(&of(series).iter().filter_map(|s| s.new_flow_share).collect::<Vec<_>>());
            let samples: serde_json::Map<String, Value> = Series::ALL.iter().map(|&s| (s.key().to_string(), json!(pps(s).iter().map(|v| v.round()).collect::<Vec<_>>()))).collect();
            out[format!("flows_{flows}")] = json!({
                "natd": x.round(), "natd_half_open": xh.round(), "nft_dnat": k.round(), "xdp_redirect": r.round(),
                "x_vs_k": ratio(x, k), "x_vs_r": ratio(x, r),
                "x_half_open_vs_k": ratio(xh, k), "x_half_open_vs_r": ratio(xh, r),
                "delivered_share": delivered,
                "natd_new_flow_share": { "natd": new_share(Series::Natd), "natd_half_open": new_share(Series::NatdHalfOpen) },
                "samples": samples,
            });
        }
        Ok(out)
    }

    impl Bench {
        fn new() -> Result<Self> {
            let generator = Netns::new("ibg")?;
            let nat = Netns::new("ibn")?;
            let sink = Netns::new("ibs")?;
            generator.ip(&["link", "add", "g0", "address", &mac(G0_MAC), "type", "veth", "peer", "name", "n0", "address", &mac(N0_MAC), "netns", &nat.name])?;
            nat.ip(&["link", "add", "n1", "address", &mac(N1_MAC), "type", "veth", "peer", "name", "s0", "address", &mac(S0_MAC), "netns", &sink.name])?;
            generator.ip(&["addr", "add", &format!("{CLIENT}/24"), "dev", "g0"])?;
            nat.ip(&["addr", "add", &format!("{WAN_ADDR}/24"), "dev", "n0"])?;
            nat.ip(&["addr", "add", &format!("{LAN_ADDR}/24"), "dev", "n1"])?;
            sink.ip(&["addr", "add", &format!("{BACKEND}/24"), "dev", "s0"])?;
            for (ns, ifname) in [(&generator, "g0"), (&nat, "n0"), (&nat, "n1"), (&sink, "s0")] {
                ns.ip(&["link", "set", ifname, "up"])?;
            }
            nat.ip(&["route", "add", "default", "via", &CLIENT.to_string()])?;
            // Static neighbours: the sink drops ARP like everything else.
            nat.ip(&["neigh", "replace", &BACKEND.to_string(), "lladdr", &mac(S0_MAC), "dev", "n1", "nud", "permanent"])?;
            nat.ip(&["neigh", "replace", &CLIENT.to_string(), "lladdr", &mac(G0_MAC), "dev", "n0", "nud", "permanent"])?;
            let (g0, n0, n1, s0) = (generator.ifindex("g0")?, nat.ifindex("n0")?, nat.ifindex("n1")?, sink.ifindex("s0")?);

            let bench = load_generator_topology(&generator, &nat, n1, &sink, s0)?;
            Ok(Self { generator, nat, sink, g0, n0, bench, links: Vec::new(), natd: None, replies: Vec::new() })
        }

        fn sink_count(&self) -> Result<u64> {
            let counter: PerCpuArray<_, u64> = PerCpuArray::try_from(self.bench.map(names::SINK_COUNTER).context("SINK_COUNTER")?)?;
            Ok(counter.get(&0, 0)?.iter().sum())
        }

        fn generate(&mut self, packets: u32) -> Result<Duration> {
            let _in_gen = self.generator.enter()?;
            run_generator(xdp(&mut self.bench, names::GENERATE)?, self.g0, FRAME_LEN, packets, BATCH, GENERATOR_CPU)
        }

        /// Two packets of every flow, unmeasured: flows set up (X's flow
        /// tables, conntrack), or promoted once answered.
        fn warm_up(&mut self, flows: u32) -> Result<()> {
            self.generate(2 * flows)?;
            thread::sleep(Duration::from_millis(20));
            Ok(())
        }

        /// The server answers every flow once: AF_PACKET frames out of s0
        /// into the gateway's LAN side, whatever runs there.
        fn answer_every_flow(&self) -> Result<()> {
            send_frames(&self.sink, "s0", self.replies.clone(), Duration::ZERO)?;
            thread::sleep(Duration::from_millis(50));
            Ok(())
        }

        /// Forwarded packets so far in X: (new flows, packets of known flows).
        fn natd_forwarded(&self) -> Result<(u64, u64)> {
            let natd = self.natd.as_ref().context("natd not running")?;
            let stats = natd.stats()?;
            Ok((stats.get("forwarded_new_flow").unwrap_or(0), stats.get("forwarded_in").unwrap_or(0)))
        }

        fn measure(&mut self, mode: Mode, flows: u32, packets: u32) -> Result<Vec<(Series, Sample)>> {
            self.enter(mode)?;
            let result = self.measure_entered(mode, flows, packets);
            let left = self.leave(mode);
            let samples = result?;
            left?;
            Ok(samples)
        }

        fn measure_entered(&mut self, mode: Mode, flows: u32, packets: u32) -> Result<Vec<(Series, Sample)>> {
            self.warm_up(flows)?;
            Ok(match mode {
                Mode::Natd => {
                    let half_open = self.sample(packets)?;
                    self.answer_every_flow()?;
                    self.warm_up(flows)?;
                    vec![(Series::NatdHalfOpen, half_open), (Series::Natd, self.sample(packets)?)]
                }
                Mode::NftDnat => {
                    self.answer_every_flow()?;
                    self.warm_up(flows)?;
                    vec![(Series::NftDnat, self.sample(packets)?)]
                }
                Mode::XdpRedirect => vec![(Series::XdpRedirect, self.sample(packets)?)],
            })
        }

        /// Generates `packets`; what reached the sink per second of generation.
        fn sample(&mut self, packets: u32) -> Result<Sample> {
            let forwarded_before = if self.natd.is_some() { Some(self.natd_forwarded()?) } else { None };
            let before = self.sink_count()?;
            let elapsed = self.generate(packets)?;
            // Let the last batches drain through the queues.
            thread::sleep(Duration::from_millis(20));
            let delivered = self.sink_count()? - before;
            let new_flow_share = match forwarded_before {
                Some((new0, in0)) => {
                    let (new1, in1) = self.natd_forwarded()?;
                    let (new, known) = (new1 - new0, in1 - in0);
                    Some(if new + known > 0 { new as f64 / (new + known) as f64 } else { 0.0 })
                }
                None => None,
            };
            Ok(Sample { pps: delivered as f64 / elapsed.as_secs_f64(), delivered_share: delivered as f64 / f64::from(packets), new_flow_share })
        }

        fn enter(&mut self, mode: Mode) -> Result<()> {
            match mode {
                Mode::Natd => {
                    let natd = Natd::start(&self.nat, "n1", "n0", NATD_CONFIG)?;
                    natd.wait_servers_up(1, Duration::from_secs(5))?;
                    self.natd = Some(natd);
                }
                Mode::NftDnat => {
                    for ifname in ["n0", "n1"] {
                        self.nat.sysctl(&format!("net.ipv4.conf.{ifname}.forwarding=1"))?;
                    }
                    self.nat.exec(&["nft", "add", "table", "ip", "inbench"])?;
                    self.nat.exec(&["nft", "add chain ip inbench pre { type nat hook prerouting priority -100 ; }"])?;
                    self.nat.exec(&["nft", &format!("add rule ip inbench pre iifname n0 udp dport {FORWARD_PORT} dnat to {BACKEND}:{BACKEND_PORT}")])?;
                    let _in_nat = self.nat.enter()?;
                    let link = xdp(&mut self.bench, names::PASS)?.attach_to_if_index(self.n0, XdpMode::Driver)?;
                    self.links.push((names::PASS, link));
                }
                Mode::XdpRedirect => {
                    let _in_nat = self.nat.enter()?;
                    let link = xdp(&mut self.bench, names::REDIRECT_ONLY)?.attach_to_if_index(self.n0, XdpMode::Driver)?;
                    self.links.push((names::REDIRECT_ONLY, link));
                }
            }
            Ok(())
        }

        fn leave(&mut self, mode: Mode) -> Result<()> {
            if let Some(natd) = self.natd.take() {
                natd.stop()?;
            }
            {
                let _in_nat = self.nat.enter()?;
                for (name, link) in std::mem::take(&mut self.links) {
                    xdp(&mut self.bench, name)?.detach(link)?;
                }
            }
            if mode == Mode::NftDnat {
                self.nat.exec(&["nft", "delete", "table", "ip", "inbench"])?;
                for ifname in ["n0", "n1"] {
                    self.nat.sysctl(&format!("net.ipv4.conf.{ifname}.forwarding=0"))?;
                }
            }
            Ok(())
        }
    }
}

/// Parts 2 and 3: a TCP forward over three nginx servers.
mod lb {
    use super::*;

    const PORT: u16 = 8080;
    const SERVER_PORT: u16 = 80;
    const SERVERS: usize = 3;
    /// wrk's connections (one thread).
    const WRK_CONNECTIONS: u32 = 50;
    /// Failover: clients, the pause between one's requests, each step's
    /// timeout, the stream before the kill (the window after it is the
    /// plan's).
    const CLIENTS: usize = 4;
    const GAP: Duration = Duration::from_millis(5);
    const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
    const BEFORE_KILL: Duration = Duration::from_secs(2);
    /// The server killed.
    const VICTIM: usize = 1;
    /// The client namespace's TCP settings (see `Bench::new`).
    const CLIENT_SYSCTLS: [&str; 2] = ["net.ipv4.tcp_tw_reuse=1", "net.ipv4.ip_local_port_range=1024 65535"];

    #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
    enum Mode {
        Natd,
        Haproxy,
        NftNumgen,
    }

    impl Mode {
        const fn key(self) -> &'static str {
            match self {
                Mode::Natd => "natd",
                Mode::Haproxy => "haproxy",
                Mode::NftNumgen => "nft_numgen",
            }
        }
    }

    /// natd's health settings: the tcp check with natd's defaults.
    const NATD_CHECKS: &str = "tcp connect, natd defaults (every 1 s, timeout 1 s, fall 2, rise 2) + passive signals";
    /// HAProxy's in part 2, the same as natd's.
    const HAPROXY_SAME_CHECKS: &str = "check inter 1s fall 2 rise 2";
    /// HAProxy's in part 3: its defaults (inter 2s, fall 3, rise 2).
    const HAPROXY_DEFAULT_CHECKS: &str = "check";

    fn target() -> SocketAddrV4 {
        SocketAddrV4::new(EXTERNAL, PORT)
    }

    fn servers() -> Vec<SocketAddrV4> {
        (0..SERVERS).map(|i| SocketAddrV4::new(host_addr(i), SERVER_PORT)).collect()
    }

    fn natd_config() -> String {
        let to: Vec<String> = servers().iter().map(|s| format!("\"{s}\"")).collect();
        format!("log_level = \"info\"\n\n[[forward]]\nname = \"web\"\nprotocol = \"tcp\"\nport = {PORT}\nto = [{}]\n[forward.health]\nkind = \"tcp\"\n", to.join(", "))
    }

    /// The lab, its servers, and the contender running now.
    struct Bench {
        lab: NatLab,
        nginx: Vec<Nginx>,
        pass: XdpPass,
        natd: Option<Natd>,
        haproxy: Option<Haproxy>,
        nft: bool,
    }

    impl Bench {
        fn new() -> Result<Self> {
            // Senders with full checksums, as frames from a wire.
            let lab = NatLab::new(SERVERS, false)?;
            // The client as a load generator is set up: wrk often closes
            // first (it closes once it has read a `Connection: close`
            // answer, before the server's FIN), so its ports sit in
            // TIME_WAIT for 60 s; with the default range (and connect()
            // preferring even ports) a few runs exhaust them and connect()
            // then spends wrk's CPU searching: conn/s fell to ~200 for
            // every contender alike. Both settings are the client's own.
            for setting in CLIENT_SYSCTLS {
                lab.server.sysctl(setting)?;
            }
            let nginx = lab.hosts.iter().map(|h| Nginx::start(h, SERVER_PORT)).collect::<Result<Vec<_>>>()?;
            Ok(Self { lab, nginx, pass: XdpPass::load()?, natd: None, haproxy: None, nft: false })
        }

        /// Starts the contender and waits until requests go through.
        fn enter(&mut self, mode: Mode, haproxy_checks: &str) -> Result<()> {
            match mode {
                Mode::Natd => {
                    let natd = Natd::start(&self.lab.gw, "lan0", "wan0", &natd_config())?;
                    natd.wait_servers_up(SERVERS, Duration::from_secs(10))?;
                    self.natd = Some(natd);
                }
                Mode::Haproxy => {
                    self.pass.attach(&self.lab.gw, &["lan0", "wan0"])?;
                    self.haproxy = Some(Haproxy::start(&self.lab.gw, target(), &servers(), haproxy_checks)?);
                }
                Mode::NftNumgen => {
                    self.pass.attach(&self.lab.gw, &["lan0", "wan0"])?;
                    for ifname in ["lan0", "wan0"] {
                        self.lab.gw.sysctl(&format!("net.ipv4.conf.{ifname}.forwarding=1"))?;
                    }
                    let map: Vec<String> = servers().iter().enumerate().map(|(i, s)| format!("{i} : {}", s.ip())).collect();
                    let rules = format!(
                        "table ip lbbench {{\n  chain pre {{\n    type nat hook prerouting priority -100; policy accept;\n    \
                         iifname \"wan0\" ip daddr {EXTERNAL} tcp dport {PORT} dnat to numgen inc mod {SERVERS} map {{ {} }} : {SERVER_PORT}\n  }}\n}}\n",
                        map.join(", ")
                    );
                    let path = std::env::temp_dir().join(format!("{}-lbbench.nft", self.lab.gw.name));
                    std::fs::write(&path, rules)?;
                    let loaded = self.lab.gw.exec(&["nft", "-f", path.to_str().context("nft path")?]);
                    let _ = std::fs::remove_file(&path);
                    loaded?;
                    self.nft = true;
                }
            }
            // Enough in a row that every server answered at least once, most likely.
            wait_serving(&self.lab.server, target(), 6, Duration::from_secs(10)).with_context(|| format!("{} does not serve", mode.key()))?;
            Ok(())
        }

        fn leave(&mut self) -> Result<()> {
            let mut result = Ok(());
            if let Some(natd) = self.natd.take() {
                result = natd.stop().map(drop);
            }
            if let Some(haproxy) = self.haproxy.take() {
                result = result.and(haproxy.stop());
            }
            if std::mem::take(&mut self.nft) {
                result = result.and(self.lab.gw.exec(&["nft", "delete", "table", "ip", "lbbench"]).map(drop));
                for ifname in ["lan0", "wan0"] {
                    result = result.and(self.lab.gw.sysctl(&format!("net.ipv4.conf.{ifname}.forwarding=0")));
                }
            }
            result.and(self.pass.detach(&self.lab.gw))
        }

        fn with<T>(&mut self, mode: Mode, haproxy_checks: &str, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
            let entered = self.enter(mode, haproxy_checks);
            let result = entered.and_then(|()| f(self));
            let left = self.leave();
            let value = result?;
            left?;
            Ok(value)
        }
    }

    /// One measured wrk run and what the machine's CPUs did meanwhile.
    struct ConnSample {
        wrk: WrkResult,
        /// The machine's CPU time busy during the run (0 to 1, every CPU;
        /// anything else running on the machine included).
        busy_share: f64,
        /// The gateway process's CPU time (natd, HAProxy) per 1,000
        /// connections, ms; none for nftables (all in the kernel). natd's
        /// figure leaves out its XDP programs, which run in softirq.
        process_ms_per_1k: Option<f64>,
        /// natd's XDP programs' run time per 1,000 connections, ms.
        xdp_ms_per_1k: Option<f64>,
        /// X: `natd forwards` after the run (health, flows per server).
        natd_forwards: Option<Value>,
    }

    fn gateway_pid(b: &Bench) -> Option<u32> {
        b.natd.as_ref().and_then(Natd::pid).or_else(|| b.haproxy.as_ref().and_then(Haproxy::pid))
    }

    /// Part 2.
    pub fn connections(plan: &Plan) -> Result<Value> {
        let modes = [Mode::Natd, Mode::Haproxy, Mode::NftNumgen];
        let mut b = Bench::new()?;
        let url = format!("http://{}/", target());
        let mut samples: BTreeMap<Mode, Vec<ConnSample>> = BTreeMap::new();
        for round in 0..plan.conn_runs {
            for i in 0..modes.len() {
                let mode = modes[(i + round) % modes.len()];
                let sample = b
                    .with(mode, HAPROXY_SAME_CHECKS, |b| {
                        // One second unmeasured first: caches, conntrack and flow tables warm.
                        wrk(&b.lab.server, WRK_CPU, &url, WRK_CONNECTIONS, 1)?;
                        let pid = gateway_pid(b);
                        let process_before = pid.map(process_cpu_seconds).transpose()?;
                        // natd's XDP programs' run time, counted only in its
                        // own runs (counting costs each run two clock reads).
                        let stats = (mode == Mode::Natd).then(BpfRunTimeStats::enable).transpose()?;
                        let xdp_before = stats.as_ref().map(|_| bpf_run_time(&NATD_PROGRAMS)).transpose()?;
                        let cpu_before = cpu_ticks()?;
                        let wrk = wrk(&b.lab.server, WRK_CPU, &url, WRK_CONNECTIONS, plan.conn_seconds)?;
                        let busy_share = busy_share(cpu_before, cpu_ticks()?);
                        let xdp = xdp_before.map(|before| Ok::<_, anyhow::Error>(bpf_run_time(&NATD_PROGRAMS)?.saturating_sub(before))).transpose()?;
                        drop(stats);
                        let per_1k = |ms: f64| (wrk.requests > 0).then(|| ms / (wrk.requests as f64 / 1e3));
                        let process_ms_per_1k = match (pid, process_before) {
                            (Some(pid), Some(before)) => per_1k((process_cpu_seconds(pid)? - before) * 1e3),
                            _ => None,
                        };
                        let xdp_ms_per_1k = xdp.and_then(|d| per_1k(d.as_secs_f64() * 1e3));
                        let natd_forwards = b.natd.as_ref().map(|n| n.forwards()).transpose()?.map(|f| serde_json::to_value(f).unwrap_or(Value::Null));
                        Ok(ConnSample { wrk, busy_share, process_ms_per_1k, xdp_ms_per_1k, natd_forwards })
                    })
                    .with_context(|| format!("{} round {round}", mode.key()))?;
                eprintln!(
                    "inbound-bench: conn/s {} round {round}: {:.0} ({} errors, CPU busy {:.0}%)",
                    mode.key(),
                    sample.wrk.requests_per_s,
                    sample.wrk.errors(),
                    sample.busy_share * 100.0
                );
                samples.entry(mode).or_default().push(sample);
            }
        }
        let per_mode = |f: &dyn Fn(&ConnSample) -> Value| -> Value { modes.iter().map(|m| (m.key().to_string(), Value::Array(samples[m].iter().map(f).collect()))).collect::<serde_json::Map<_, _>>().into() };
        let median_per_mode = |f: &dyn Fn(&ConnSample) -> Option<f64>| -> Value {
            modes
                .iter()
                .map(|m| {
                    let values: Vec<f64> = samples[m].iter().filter_map(f).collect();
                    (m.key().to_string(), if values.is_empty() { Value::Null } else { json!((median_of(&values) * 1000.0).round() / 1000.0) })
                })
                .collect::<serde_json::Map<_, _>>()
                .into()
        };
        let rate = |mode: Mode| median_of(&samples[&mode].iter().map(|s| s.wrk.requests_per_s).collect::<Vec<_>>());
        let (x, h, k) = (rate(Mode::Natd), rate(Mode::Haproxy), rate(Mode::NftNumgen));
        let errors: serde_json::Map<String, Value> = modes.iter().map(|m| (m.key().to_string(), json!(samples[m].iter().map(|s| s.wrk.errors()).sum::<u64>()))).collect();
        Ok(json!({
            "natd": x.round(), "haproxy": h.round(), "nft_numgen": k.round(),
            "x_vs_haproxy": ratio(x, h), "x_vs_nft": ratio(x, k),
            "runs": plan.conn_runs, "seconds": plan.conn_seconds,
            "wrk": format!("taskset -c {WRK_CPU} wrk -t1 -c{WRK_CONNECTIONS} -d{}s --timeout 2s --latency -H 'Connection: close' {url}", plan.conn_seconds),
            "wrk_cpu": WRK_CPU, "wrk_connections": WRK_CONNECTIONS, "servers": SERVERS,
            "client_sysctls": CLIENT_SYSCTLS,
            "checks": { "natd": NATD_CHECKS, "haproxy": HAPROXY_SAME_CHECKS, "nft_numgen": "none" },
            "samples": per_mode(&|s| json!(s.wrk.requests_per_s.round())),
            "errors": errors,
            "latency_ms": {
                "avg": median_per_mode(&|s| Some(s.wrk.latency_avg_ms)),
                "p99": median_per_mode(&|s| Some(s.wrk.latency_p99_ms)),
                "max": median_per_mode(&|s| Some(s.wrk.latency_max_ms)),
            },
            "cpu_busy_share": median_per_mode(&|s| Some(s.busy_share)),
            "gateway_process_cpu_ms_per_1k_conn": median_per_mode(&|s| s.process_ms_per_1k),
            "gateway_xdp_cpu_ms_per_1k_conn": median_per_mode(&|s| s.xdp_ms_per_1k),
            "wrk_reports": per_mode(&|s| serde_json::to_value(&s.wrk).unwrap_or(Value::Null)),
            "natd_forwards_after_run": per_mode(&|s| s.natd_forwards.clone().unwrap_or(Value::Null))["natd"].clone(),
        }))
    }

    /// One failover trial's figures.
    struct Trial {
        /// Kill -> start of the last failed request.
        seconds: f64,
        /// Kill -> end of the last failed request.
        seconds_to_end: f64,
        failed_before_kill: usize,
        failed_after_kill: usize,
        sent_after_kill: usize,
        /// The last failure came within a second of the window's end: the
        /// contender may not have recovered at all.
        unrecovered: bool,
        errors: BTreeMap<String, usize>,
        /// What the contender logged about the victim (health transitions).
        log: Vec<String>,
    }

    /// Part 3.
    pub fn failover(plan: &Plan) -> Result<Value> {
        let modes = [Mode::Natd, Mode::Haproxy];
        let mut b = Bench::new()?;
        let mut trials: BTreeMap<Mode, Vec<Trial>> = BTreeMap::new();
        let window = Duration::from_secs(plan.failover_window_s);
        for round in 0..plan.failover_trials {
            for i in 0..modes.len() {
                let mode = modes[(i + round) % modes.len()];
                let trial = b.with(mode, HAPROXY_DEFAULT_CHECKS, |b| trial(b, window)).with_context(|| format!("{} trial {round}", mode.key()))?;
                eprintln!(
                    "inbound-bench: failover {} trial {round}: {:.2} s ({} of {} requests failed after the kill)",
                    mode.key(),
                    trial.seconds,
                    trial.failed_after_kill,
                    trial.sent_after_kill
                );
                trials.entry(mode).or_default().push(trial);
                b.nginx[VICTIM].restart()?;
            }
        }
        let mut out = json!({
            "trials": plan.failover_trials, "clients": CLIENTS, "gap_ms": GAP.as_millis() as u64,
            "request_timeout_s": REQUEST_TIMEOUT.as_secs_f64(), "window_after_kill_s": window.as_secs_f64(),
            "signal": "SIGKILL", "victim": servers()[VICTIM].to_string(),
            "measure": "time from the kill to the start of the last request that failed (connect, read or a non-200 answer)",
        });
        for mode in modes {
            let t = &trials[&mode];
            out[mode.key()] = json!({
                "checks": if mode == Mode::Natd { NATD_CHECKS } else { "HAProxy defaults: check (inter 2s, fall 3, rise 2), retries 3, no redispatch" },
                "seconds": median_of(&t.iter().map(|t| t.seconds).collect::<Vec<_>>()),
                "samples": t.iter().map(|t| (t.seconds * 1000.0).round() / 1000.0).collect::<Vec<_>>(),
                "trials": t.iter().map(|t| json!({
                    "seconds": t.seconds, "seconds_to_end_of_last_failure": t.seconds_to_end,
                    "failed_before_kill": t.failed_before_kill, "failed_after_kill": t.failed_after_kill,
                    "sent_after_kill": t.sent_after_kill, "unrecovered": t.unrecovered, "errors": t.errors, "log": t.log,
                })).collect::<Vec<_>>(),
            });
        }
        Ok(out)
    }

    /// One kill, watched for `window` after it.
    fn trial(b: &mut Bench, window: Duration) -> Result<Trial> {
        let stream = RequestStream::start(&b.lab.server, target(), CLIENTS, GAP, REQUEST_TIMEOUT, BEFORE_KILL + window + Duration::from_secs(10));
        thread::sleep(BEFORE_KILL);
        let log_before = contender_log(b).lines().count();
        let killed = b.nginx[VICTIM].kill()?;
        thread::sleep(window);
        let outcomes = stream.finish();
        let window_end = killed + window;
        let victim = host_addr(VICTIM).to_string();
        let log: Vec<String> = contender_log(b).lines().skip(log_before).filter(|l| l.contains(&victim) || l.contains(&format!("servers/s{VICTIM}"))).map(str::to_string).collect();
        let failed_before_kill = outcomes.iter().filter(|o| o.error.is_some() && o.end < killed).count();
        let after: Vec<_> = outcomes.iter().filter(|o| o.end >= killed).collect();
        let failures: Vec<_> = after.iter().filter(|o| o.error.is_some()).collect();
        let mut errors = BTreeMap::new();
        for f in &failures {
            // The kind, without the OS error number's details.
            let kind = f.error.as_deref().unwrap_or("").split(" (").next().unwrap_or("").to_string();
            *errors.entry(kind).or_insert(0) += 1;
        }
        ensure!(after.len() > 10, "only {} requests after the kill: the stream stalled", after.len());
        let last = failures.iter().max_by_key(|o| o.start);
        let since_kill = |t: Instant| t.saturating_duration_since(killed).as_secs_f64();
        let (seconds, seconds_to_end) = last.map_or((0.0, 0.0), |o| (since_kill(o.start), since_kill(o.end)));
        Ok(Trial {
            seconds,
            seconds_to_end,
            failed_before_kill,
            failed_after_kill: failures.len(),
            sent_after_kill: after.len(),
            unrecovered: last.is_some_and(|o| window_end.saturating_duration_since(o.start) < Duration::from_secs(1)),
            errors,
            log,
        })
    }

    fn contender_log(b: &Bench) -> String {
        match (&b.natd, &b.haproxy) {
            (Some(natd), _) => natd.log(),
            (_, Some(haproxy)) => haproxy.log(),
            _ => String::new(),
        }
    }
}
