//! `cargo xtask bench`: every benchmark binary of the tests crate in one run,
//! then one summary, target/bench/results.{json,md} (../shared/BENCHMARK.md).
//! Each binary also leaves its own <name>.{json,md} with more detail.

use std::{
    fmt::Write as _,
    path::Path,
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, Result};
use serde_json::{Value, json};

use crate::run;

/// How long each part runs (each part's wall-clock seconds are in
/// results.json, `seconds`). `--quick` is issue 16's "stable ratios in
/// under 3 minutes": the outbound suite (about 75 s) keeps pps-bench's
/// seven paired runs, with fewer packets and fastpath rounds; inbound-bench
/// and proxy-bench, which start natd, HAProxy and nginx per round, take
/// one round with shorter windows (a 256 MiB download instead of 1 GiB, an
/// 8 s failover window instead of 12, two packet-rate runs instead of
/// seven). The full suite takes about 13 minutes (786 s at fb09319).
pub struct Plan {
    pub quick: bool,
    pub fastpath_rounds: u32,
    /// fastpath-bench's epochs (the programs loaded anew for each; the
    /// lowest epoch's cost is the figure, every epoch's is listed).
    pub fastpath_epochs: u32,
    pub pps_runs: u32,
    pub pps_packets: u32,
    pub lab_runs: u32,
    /// Flows of `lab-bench --burst` (issue 16's 100,000).
    pub hard_burst_flows: u32,
}

impl Plan {
    /// inbound-bench and proxy-bench plan their own sizes, full or
    /// `--quick` (see their headers): they are told only which.
    fn own_plan_args(&self) -> Vec<String> {
        if self.quick { vec!["--quick".to_string()] } else { Vec::new() }
    }

    pub fn new(quick: bool) -> Self {
        if quick {
            Self {
                quick,
                fastpath_rounds: 1000,
                fastpath_epochs: 5,
                pps_runs: 7,
                pps_packets: 150_000,
                lab_runs: 1,
                hard_burst_flows: 100_000,
            }
        } else {
            Self {
                quick,
                fastpath_rounds: 4000,
                fastpath_epochs: 10,
                pps_runs: 7,
                pps_packets: 1_000_000,
                lab_runs: 3,
                hard_burst_flows: 100_000,
            }
        }
    }
}

fn bench_bin(name: &str, args: &[String]) -> Result<()> {
    run(Command::new("cargo").args(["run", "--release", "--quiet", "-p", "nat-tests", "--bin", name, "--"]).args(args))
}

/// Wall-clock seconds each part of the suite took, in order (building
/// included), so that a plan's length is a figure of the run, not a guess.
#[derive(Default)]
struct Durations(Vec<(&'static str, f64)>);

impl Durations {
    fn time<T>(&mut self, part: &'static str, f: impl FnOnce() -> T) -> T {
        let started = Instant::now();
        let out = f();
        self.0.push((part, started.elapsed().as_secs_f64()));
        out
    }

    fn total(&self) -> f64 {
        self.0.iter().map(|(_, s)| s).sum()
    }

    fn to_json(&self) -> Value {
        let round = |s: f64| (s * 10.0).round() / 10.0;
        let parts: serde_json::Map<String, Value> = self.0.iter().map(|(part, s)| (part.to_string(), json!(round(*s)))).collect();
        json!({ "total": round(self.total()), "parts": parts })
    }
}

pub fn suite(plan: &Plan) -> Result<()> {
    let mut took = Durations::default();
    took.time("build", || run(Command::new("cargo").args(["build", "--release", "-p", "nat-userspace", "-p", "nat-tests", "--bins"])))?;
    took.time("fastpath", || bench_bin("fastpath-bench", &[plan.fastpath_rounds.to_string(), plan.fastpath_epochs.to_string()]))?;
    took.time("pps", || bench_bin("pps-bench", &[plan.pps_runs.to_string(), plan.pps_packets.to_string()]))?;
    took.time("lab", || bench_bin("lab-bench", &[plan.lab_runs.to_string()]))?;
    // The harder burst: inside ports natd would keep, so every first packet
    // is natd's until the miss ring is half full.
    took.time("lab_burst", || bench_bin("lab-bench", &["--burst".to_string(), plan.hard_burst_flows.to_string()]))?;
    took.time("capacity", || bench_bin("capacity-bench", &[]))?;
    // Inbound forwards: figures to report, not a gate. A failed part is
    // recorded in inbound.json with its error; if the binary fails outright
    // the summary says so instead of quoting an older run's file.
    let dir = Path::new("target/bench");
    let _ = std::fs::remove_file(dir.join("inbound.json"));
    if let Err(e) = took.time("inbound", || bench_bin("inbound-bench", &plan.own_plan_args())) {
        eprintln!("xtask: inbound-bench: {e:#}; the summary keeps what it recorded");
    }
    // The name-based proxy against HAProxy and nginx stream: figures to
    // report, as the inbound ones.
    let _ = std::fs::remove_file(dir.join("proxy.json"));
    if let Err(e) = took.time("proxy", || bench_bin("proxy-bench", &plan.own_plan_args())) {
        eprintln!("xtask: proxy-bench: {e:#}; the summary says it left no results");
    }
    summarize(dir, plan, &took)
}

fn read(dir: &Path, name: &str) -> Result<Value> {
    let path = dir.join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// "model, N vCPU, kernel X" of this machine.
fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| t.lines().find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())))
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpu}, {cpus} vCPU, kernel {}", kernel.trim())
}

fn summarize(dir: &Path, plan: &Plan, took: &Durations) -> Result<()> {
    let (fast, pps, lab, cap) = (read(dir, "fastpath")?, read(dir, "pps")?, read(dir, "lab")?, read(dir, "capacity")?);
    let hard_burst = read(dir, "lab-burst")?;
    // Every inbound figure with its samples (inbound-bench's own file), or
    // why there are none.
    let inbound = read(dir, "inbound").unwrap_or_else(|e| json!({ "error": format!("inbound-bench left no results: {e:#}") }));
    let proxy = read(dir, "proxy").unwrap_or_else(|e| json!({ "error": format!("proxy-bench left no results: {e:#}") }));
    // The headline packet rate is the 1,024-flow column (the table has 1 and 65,536 too).
    let flows = &pps["flows_1024"];
    let pps_of = |k: &str| flows[k].as_f64().unwrap_or(0.0);
    let fastpath_keys = ["tcp_out", "tcp_in", "udp_out", "udp_in", "icmp_out", "icmp_in", "tcp_out_veth", "tcp_in_veth", "miss", "drop_floor"];
    let fastpath_ns: serde_json::Map<String, Value> = fastpath_keys.iter().map(|k| (k.to_string(), fast[*k].clone())).collect();
    let results = json!({
        "machine": machine(),
        "runs": plan.pps_runs,
        "pps": {
            "xdp_nat": pps_of("xdp_nat"), "nft_masquerade": pps_of("nft_masquerade"),
            "kernel_forward": pps_of("kernel_forward"), "xdp_redirect": pps_of("xdp_redirect"),
        },
        // Paired within each round (pps-bench), 1,024 flows.
        "ratio": {
            "nat_vs_nft": pps["ratios_flows_1024"]["x_k"],
            "nat_vs_redirect": pps["ratios_flows_1024"]["x_r"],
        },
        "fastpath_ns": fastpath_ns,
        "tcp_gbps": lab["tcp_gbps"],
        // Every generated packet a new flow, the datapath's claim path against
        // conntrack, same generator; lab-bench's burst through natd is bounded
        // by its raw-socket sender (~100k packets/s) and kept beside it.
        "new_flows_per_s": pps["new_flows_per_s"],
        "new_flows_per_s_lab_burst": lab["new_flows_per_s"],
        "first_packet_added_us": lab["first_packet_added_us"],
        "bytes_per_session": cap["bytes_per_session"],
        "lab_burst": { "flows": lab["burst_flows"], "set_up": lab["new_flows_set_up"], "first_packets_delivered": lab["burst_x"]["first_packets_delivered"] },
        "lab_hard_burst": hard_burst,
        "speed_goals": speed_goals(&pps, &fast, &lab, &hard_burst, &cap, plan, took),
        // Wall-clock seconds of each part and of the whole (the summary's
        // own few ms aside).
        "seconds": took.to_json(),
        "sessions_held": cap["sessions_held"],
        "aging_scan_ms_per_million": cap["aging_scan_ms_per_million"],
        "pps_by_flows": pps,
        "inbound": inbound,
        "proxy": proxy,
        "plan": {
            "fastpath_rounds": plan.fastpath_rounds, "fastpath_epochs": plan.fastpath_epochs, "pps_runs": plan.pps_runs, "pps_packets_per_run": plan.pps_packets, "tcp_runs": plan.lab_runs,
            // As each binary ran it (its full or `--quick` plan).
            "inbound": inbound["plan"], "proxy": proxy["plan"],
        },
    });
    std::fs::write(dir.join("results.json"), serde_json::to_string_pretty(&results)? + "\n")?;

    let mut md = String::new();
    writeln!(md, "Machine: {}\n", results["machine"].as_str().unwrap_or(""))?;
    writeln!(md, "Issue 16's table:\n\n| figure | now | goal | met |\n|---|---|---|---|")?;
    for goal in results["speed_goals"].as_array().into_iter().flatten() {
        let met = if goal["met"].as_bool().unwrap_or(false) { "yes" } else { "no" };
        writeln!(md, "| {} | {} | {} | {met} |", text(&goal["figure"]), text(&goal["now"]), text(&goal["goal"]))?;
    }
    writeln!(md, "\nAll figures:\n\n| figure | this NAT | kernel / reference | goal |\n|---|---|---|---|")?;
    let mpps = |v: &Value| format!("{:.2} Mpps", v.as_f64().unwrap_or(0.0) / 1e6);
    let p = &results["pps"];
    writeln!(md, "| packets/s, 1,024 flows, 64 B (X vs K: nftables masquerade) | {} | {} | X/K >= 5 (is {}) |", mpps(&p["xdp_nat"]), mpps(&p["nft_masquerade"]), results["ratio"]["nat_vs_nft"])?;
    writeln!(md, "| packets/s vs XDP redirect without NAT (R) | {} | {} | X/R >= 0.90 (is {}) |", mpps(&p["xdp_nat"]), mpps(&p["xdp_redirect"]), results["ratio"]["nat_vs_redirect"])?;
    writeln!(md, "| packets/s, kernel forwarding without NAT (F) | - | {} | - |", mpps(&p["kernel_forward"]))?;
    let f = &results["fastpath_ns"];
    writeln!(md, "| fast-path ns per hit, tcp/udp/icmp out | {}/{}/{} | - | <= 40 |", f["tcp_out"], f["udp_out"], f["icmp_out"])?;
    writeln!(md, "| fast-path ns per hit, tcp/udp/icmp in | {}/{}/{} | - | <= 40 |", f["tcp_in"], f["udp_in"], f["icmp_in"])?;
    writeln!(md, "| fast-path ns per hit, tcp out/in from veths (partial-checksum test kept) | {}/{} | - | - |", f["tcp_out_veth"], f["tcp_in_veth"])?;
    writeln!(md, "| fast-path ns, miss (hand-off) | {} | - | - |", f["miss"])?;
    let t = &results["tcp_gbps"];
    writeln!(md, "| TCP Gbit/s, iperf3 -P 8 | {} | {} | - |", t["xdp_nat"], t["nft_masquerade"])?;
    let n = &results["new_flows_per_s"];
    writeln!(md, "| new flows/s, every packet a new flow (vs conntrack) | {} | {} | >= 2.5x |", n["xdp_nat"], n["conntrack"])?;
    let nb = &results["new_flows_per_s_lab_burst"];
    writeln!(md, "| new flows/s, lab burst from a raw socket (sender-bound) | {} | {} | - |", nb["xdp_nat"], nb["conntrack"])?;
    let l = &results["first_packet_added_us"];
    writeln!(md, "| first-packet added latency p50 / p99, us | {} / {} | - | p99 < 100 |", l["p50"], l["p99"])?;
    let b = &results["bytes_per_session"];
    writeln!(md, "| kernel bytes per session (vs conntrack object) | {} | {} | <= 128 |", b["xdp_nat"], b["conntrack"])?;
    writeln!(md, "| natd bytes per session at 1,000,000 (its table and port allocators) | {} | - | <= 64 |", b["natd"])?;
    writeln!(md, "| sessions held | {} | - | 1,000,000 |", results["sessions_held"])?;
    writeln!(md, "| aging scan, CPU ms per million sessions | {} | - | < 200 |", results["aging_scan_ms_per_million"])?;
    writeln!(md, "\n## Inbound forwards (inbound-bench)\n")?;
    match (results["inbound"]["error"].as_str(), std::fs::read_to_string(dir.join("inbound.md"))) {
        (None, Ok(inbound_md)) => md.push_str(&inbound_md),
        (Some(e), _) => writeln!(md, "No figures: {e}")?,
        (None, Err(e)) => writeln!(md, "No table: reading inbound.md: {e}")?,
    }
    writeln!(md, "\n## Name-based proxy (proxy-bench)\n")?;
    match (results["proxy"]["error"].as_str(), std::fs::read_to_string(dir.join("proxy.md"))) {
        (None, Ok(proxy_md)) => md.push_str(&proxy_md),
        (Some(e), _) => writeln!(md, "No figures: {e}")?,
        (None, Err(e)) => writeln!(md, "No table: reading proxy.md: {e}")?,
    }
    let parts: Vec<String> = took.0.iter().map(|(part, s)| format!("{part} {s:.0}")).collect();
    writeln!(md, "\nWall-clock seconds: {:.0} in all ({}).", took.total(), parts.join(", "))?;
    std::fs::write(dir.join("results.md"), &md)?;
    print!("{md}");
    println!("written to target/bench/results.{{json,md}}");
    Ok(())
}

fn text(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_string)
}

/// Issue 16's table, row by row: the figure as this run measured it, the
/// goal, and whether it is met.
fn speed_goals(pps: &Value, fast: &Value, lab: &Value, hard_burst: &Value, cap: &Value, plan: &Plan, took: &Durations) -> Value {
    let num = |v: &Value| v.as_f64().unwrap_or(0.0);
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    let mpps = |v: f64| format!("{:.2}", v / 1e6);
    // pps-bench's paired ratio (the median of each round's), with the
    // medians of the rates beside it.
    let pps_ratio = |flows: &str, reference: &str, key: &str, label: &str, goal: f64| {
        let (x, r) = (num(&pps[flows]["xdp_nat"]), num(&pps[flows][reference]));
        let paired = num(&pps[format!("ratios_{flows}")][key]);
        json!({
            "figure": format!("{label} packets/s, {} flows", flows.trim_start_matches("flows_")),
            "now": format!("{paired:.2} ({} vs {} Mpps)", mpps(x), mpps(r)),
            "goal": format!(">= {goal}"),
            "met": paired >= goal,
        })
    };
    let hits: Vec<f64> = ["tcp_out", "tcp_in", "udp_out", "udp_in", "icmp_out", "icmp_in"].iter().map(|k| num(&fast[*k])).collect();
    let (fastest, slowest) = hits.iter().fold((f64::MAX, 0f64), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let (new_x, new_k) = (num(&pps["new_flows_per_s"]["xdp_nat"]), num(&pps["new_flows_per_s"]["conntrack"]));
    let burst = |flows: &Value, set_up: &Value, delivered: &Value, rest: String| {
        let (flows, set_up, delivered) = (num(flows), num(set_up), num(delivered));
        json!({
            "figure": format!("lab burst of {flows} new flows: flows set up{rest}"),
            "now": format!("{set_up} of {flows}, {delivered} first packets delivered"),
            "goal": format!("{flows}, with every first packet delivered"),
            "met": flows > 0.0 && set_up == flows && delivered == flows,
        })
    };
    let kernel = num(&cap["bytes_per_session"]["xdp_nat"]);
    let natd = num(&cap["bytes_per_session"]["natd"]);
    // Issue 16: `--quick` gives its ratios in under 3 minutes. Only a quick
    // run says how long a quick run takes.
    let quick_time = plan.quick.then(|| {
        json!({
            "figure": "cargo xtask bench --quick, wall-clock seconds (build included)",
            "now": format!("{:.0}", took.total()),
            "goal": "< 180",
            "met": took.total() < 180.0,
        })
    });
    let mut goals = json!([
        pps_ratio("flows_1024", "xdp_redirect", "x_r", "X/R", 0.90),
        pps_ratio("flows_65536", "xdp_redirect", "x_r", "X/R", 0.75),
        pps_ratio("flows_1024", "nft_masquerade", "x_k", "X/K", 5.0),
        {
            "figure": "fast-path cost per hit, ns above the XDP_DROP floor (tcp/udp/icmp, out and in; LAN and WAN on NICs, with veths in brackets)",
            "now": format!("{fastest}-{slowest} (tcp out/in {}/{})", num(&fast["tcp_out_veth"]), num(&fast["tcp_in_veth"])),
            "goal": "<= 40",
            "met": slowest <= 40.0,
        },
        {
            "figure": "new flows/s, every packet new, X vs conntrack",
            "now": format!("{:.2}x ({new_x} vs {new_k})", ratio(new_x, new_k)),
            "goal": ">= 2.5x",
            "met": ratio(new_x, new_k) >= 2.5,
        },
        burst(&lab["burst_flows"], &lab["new_flows_set_up"]["xdp_nat"], &lab["burst_x"]["first_packets_delivered"], format!(" (conntrack: {})", lab["new_flows_set_up"]["conntrack"])),
        burst(&hard_burst["burst_flows"], &hard_burst["set_up"], &hard_burst["first_packets_delivered"], " from inside ports natd would keep".to_string()),
        { "figure": "kernel bytes per session", "now": format!("{kernel:.1}"), "goal": "<= 128", "met": kernel > 0.0 && kernel <= 128.0 },
        {
            "figure": "natd memory per session at 1,000,000 sessions",
            "now": format!("{natd:.1}"),
            "goal": "<= 64",
            "met": natd > 0.0 && natd <= 64.0,
        },
        {
            "figure": "kernel + natd bytes per session (conntrack all-in: 256)",
            "now": format!("{:.1}", kernel + natd),
            "goal": "<= 128 (half of 257)",
            "met": kernel + natd <= 128.0,
        },
    ]);
    if let (Some(row), Some(rows)) = (quick_time, goals.as_array_mut()) {
        rows.push(row);
    }
    goals
}
