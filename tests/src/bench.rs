//! What the benchmark binaries share: where results go, CPU pinning, and
//! order statistics.

use std::{fmt::Write as _, path::PathBuf};

use anyhow::Result;

/// target/bench, where every benchmark writes `<name>.json` and `<name>.md`.
pub fn results_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench")
}

/// Writes `<name>.json` and `<name>.md` to target/bench and prints the table.
pub fn write_results(name: &str, json: &str, md: &str) -> Result<()> {
    let dir = results_dir();
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(format!("{name}.json")), json)?;
    std::fs::write(dir.join(format!("{name}.md")), md)?;
    let mut out = String::from(md);
    writeln!(out, "written to {}", dir.join(format!("{name}.{{json,md}}")).display())?;
    print!("{out}");
    Ok(())
}

/// Pins the calling thread to one CPU, so a figure is one core's work.
pub fn pin_to_cpu(cpu: usize) {
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// The p-th percentile (nearest rank) of `values`, which it sorts.
pub fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let index = ((p / 100.0) * (values.len() - 1) as f64).round() as usize;
    values[index]
}

pub fn median(values: &mut [f64]) -> f64 {
    percentile(values, 50.0)
}

/// The CPU model, from /proc/cpuinfo ("unknown CPU" when absent): quoted
/// with every table, as only ratios from one machine compare.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| t.lines().find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())))
        .unwrap_or_else(|| "unknown CPU".into())
}

/// The clock ticks /proc counts CPU time in, per second (`USER_HZ`).
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64
}

/// CPU time the whole machine has spent so far, from the `cpu` line of
/// /proc/stat: busy seconds (everything but idle and iowait) and, of them,
/// softirq seconds, where the packets' receive and the XDP programs run
/// and which no process's CPU time shows.
#[derive(Clone, Copy, Debug, Default)]
pub struct MachineCpu {
    pub busy: f64,
    pub softirq: f64,
}

impl MachineCpu {
    pub fn now() -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        let line = stat.lines().find(|l| l.starts_with("cpu ")).context("no cpu line in /proc/stat")?;
        // user nice system idle iowait irq softirq steal ...
        let ticks: Vec<u64> = line.split_whitespace().skip(1).map(|v| v.parse().unwrap_or(0)).collect();
        let total: u64 = ticks.iter().take(8).sum();
        let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
        let per_second = ticks_per_second();
        Ok(Self { busy: total.saturating_sub(idle) as f64 / per_second, softirq: ticks.get(6).copied().unwrap_or(0) as f64 / per_second })
    }

    /// What was spent since `before`.
    pub fn since(self, before: Self) -> Self {
        Self { busy: self.busy - before.busy, softirq: self.softirq - before.softirq }
    }
}

/// What one interface has sent and received so far (`ip -s -j link`). A
/// veth counts a GSO packet once, as the stack handed it over, so bytes
/// over packets is the size of the stack's packets, not of the segments a
/// wire would carry: on the gateway's WAN veth, how much each packet to the
/// client holds, and how many packets (mostly ACKs) the client sends back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkCounters {
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
}

impl LinkCounters {
    pub fn read(ns: &crate::netns::Netns, ifname: &str) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let out = ns.ip(&["-s", "-j", "link", "show", "dev", ifname])?;
        Self::parse(&out).with_context(|| format!("no counters for {ifname} in namespace {} in `ip -s -j link`: {out}", ns.name))
    }

    fn parse(json: &str) -> Option<Self> {
        let links: serde_json::Value = serde_json::from_str(json).ok()?;
        let stats = &links.get(0)?["stats64"];
        let field = |dir: &str, what: &str| stats[dir][what].as_u64();
        Some(Self { tx_packets: field("tx", "packets")?, tx_bytes: field("tx", "bytes")?, rx_packets: field("rx", "packets")?, rx_bytes: field("rx", "bytes")? })
    }

    /// What was counted since `before`.
    pub fn since(self, before: Self) -> Self {
        Self {
            tx_packets: self.tx_packets - before.tx_packets,
            tx_bytes: self.tx_bytes - before.tx_bytes,
            rx_packets: self.rx_packets - before.rx_packets,
            rx_bytes: self.rx_bytes - before.rx_bytes,
        }
    }

    /// Bytes per packet sent (0 when none was).
    pub fn tx_packet_bytes(self) -> f64 {
        if self.tx_packets == 0 { 0.0 } else { self.tx_bytes as f64 / self.tx_packets as f64 }
    }
}

/// Runs `attach`, an XDP attach, again while it fails with EBUSY, for at
/// most 2 s: right after a natd exits, its XDP program may still hold the
/// interface for a moment (seen once, in a full `cargo xtask bench`: the
/// kernel reference's XDP_PASS attach failed with "Device or resource
/// busy" just after natd's exit was reaped).
pub fn attach_when_free<T>(what: &str, mut attach: impl FnMut() -> anyhow::Result<T>) -> anyhow::Result<T> {
    use anyhow::Context as _;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match attach() {
            Err(e) if std::time::Instant::now() < deadline && is_busy(&e) => std::thread::sleep(std::time::Duration::from_millis(20)),
            other => return other.with_context(|| format!("attaching {what}")),
        }
    }
}

fn is_busy(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| cause.downcast_ref::<std::io::Error>().and_then(std::io::Error::raw_os_error) == Some(libc::EBUSY))
}

/// The machine a figure was measured on: CPU model, vCPUs, kernel.
pub fn machine_json() -> serde_json::Value {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    serde_json::json!({ "cpu": cpu_model(), "vcpus": cpus, "kernel": kernel.trim() })
}

/// What the load generator (the bench object's `generate`) writes into
/// every frame: Ethernet `src_mac` -> `dst_mac`, IPv4 `source` ->
/// `destination` (header checksum valid), UDP to `dport` with no checksum,
/// `frame_len` bytes on the wire; `flows` (a power of two, at most 65,536)
/// source ports from `sport_base` (wrapping).
pub struct GeneratorFrame {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub source: std::net::Ipv4Addr,
    pub destination: std::net::Ipv4Addr,
    pub dport: u16,
    pub frame_len: usize,
    pub flows: u32,
    pub sport_base: u16,
}

impl GeneratorFrame {
    pub fn config(&self) -> Result<nat_common::bench::GenConfig> {
        use nat_common::{bench::GEN_HEADER_LEN, checksum, proto};
        anyhow::ensure!(self.flows.is_power_of_two() && self.flows <= 65536, "flows must be a power of two up to 65,536");
        anyhow::ensure!(self.frame_len >= GEN_HEADER_LEN, "a frame holds at least the generator's header");
        let mut header = [0u8; GEN_HEADER_LEN];
        header[0..6].copy_from_slice(&self.dst_mac);
        header[6..12].copy_from_slice(&self.src_mac);
        header[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        let ip_len = (self.frame_len - 14) as u16;
        let ip = &mut header[14..34];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
        ip[8] = 64;
        ip[9] = proto::UDP;
        ip[12..16].copy_from_slice(&self.source.octets());
        ip[16..20].copy_from_slice(&self.destination.octets());
        let c = checksum::checksum(ip);
        ip[10..12].copy_from_slice(&c.to_ne_bytes());
        let udp = &mut header[34..42];
        udp[2..4].copy_from_slice(&self.dport.to_be_bytes());
        udp[4..6].copy_from_slice(&(ip_len - 20).to_be_bytes());
        Ok(nat_common::bench::GenConfig { header, _pad: [0; 6], flows_mask: self.flows - 1, sport_base: self.sport_base, _pad2: 0 })
    }

    /// Writes the frame into the generator's GEN_CONFIG map of `bench`.
    pub fn write(&self, bench: &mut aya::Ebpf) -> Result<()> {
        use anyhow::Context as _;
        let map = bench.map_mut(nat_common::bench::names::GEN_CONFIG).context("GEN_CONFIG")?;
        aya::maps::Array::try_from(map)?.set(0, self.config()?, 0)?;
        Ok(())
    }
}

/// Runs the generator program `generate` (loaded) `packets` times through
/// live-frames BPF_PROG_TEST_RUN as if on `ifindex` (the calling thread
/// must be in that interface's namespace), `batch` frames per kernel batch,
/// pinned to `cpu`. Returns the time it took.
pub fn run_generator(generate: &mut aya::programs::Xdp, ifindex: u32, frame_len: usize, packets: u32, batch: u32, cpu: usize) -> Result<std::time::Duration> {
    use anyhow::Context as _;
    use aya::programs::{TestRun as _, TestRunAttrs, TestRunOptions};
    // The thread's own CPUs come back afterwards: what it starts later
    // (servers, daemons) must not inherit the generator's CPU.
    let _restore = Affinity::of_this_thread();
    pin_to_cpu(cpu);
    let frame = vec![0u8; frame_len];
    let md = crate::XdpMd::for_frame(&frame, ifindex);
    let started = std::time::Instant::now();
    generate
        .test_run(TestRunOptions {
            data_in: Some(&frame),
            ctx_in: Some(md.as_bytes()),
            repeat: packets,
            attrs: TestRunAttrs::new().xdp_live_frames(batch),
            ..TestRunOptions::new()
        })
        .context("running the generator")?;
    Ok(started.elapsed())
}

/// Idle veth pairs in `ns`, up and quiet (no IPv6, so no neighbour
/// discovery), to attach programs to that must stay in the kernel's XDP
/// dispatcher: a test run of a program the dispatcher lacks adds it and
/// removes it after (`bpf_prog_change_xdp`), and each change rebuilds the
/// dispatcher and waits for an RCU grace period (`synchronize_rcu`) twice:
/// milliseconds a test run, asleep. A program the dispatcher already holds
/// (attached in native mode somewhere) only gains a user.
pub fn idle_veths(ns: &crate::netns::Netns, pairs: &[(&str, &str)]) -> Result<()> {
    for (a, b) in pairs {
        ns.ip(&["link", "add", a, "type", "veth", "peer", "name", b])?;
        for ifname in [a, b] {
            ns.sysctl(&format!("net.ipv6.conf.{ifname}.disable_ipv6=1"))?;
            ns.ip(&["link", "set", ifname, "up"])?;
        }
    }
    Ok(())
}

/// Keeps the generator (`names::GENERATE` of `bench`) in the kernel's XDP
/// dispatcher for as long as `ns` lives, attached to an idle veth there
/// (`idle_veths`): otherwise every `run_generator` call would wait two RCU
/// grace periods inside the time it is measured by.
fn hold_generator_in_the_xdp_dispatcher(ns: &crate::netns::Netns, bench: &mut aya::Ebpf) -> Result<()> {
    use anyhow::Context as _;
    idle_veths(ns, &[("genhold0", "genhold1")])?;
    let ifindex = ns.ifindex("genhold0")?;
    let _in_ns = ns.enter()?;
    xdp(bench, nat_common::bench::names::GENERATE)?.attach_to_if_index(ifindex, aya::programs::XdpMode::Driver).context("attaching the generator to genhold0")?;
    Ok(())
}

/// The calling thread's CPU affinity, put back on drop.
pub struct Affinity(libc::cpu_set_t);

impl Affinity {
    pub fn of_this_thread() -> Self {
        // SAFETY: a zeroed cpu_set_t is valid; sched_getaffinity fills it.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
                // Unknown: put back every CPU rather than leave a pin behind.
                for cpu in 0..libc::CPU_SETSIZE as usize {
                    libc::CPU_SET(cpu, &mut set);
                }
            }
            Self(set)
        }
    }
}

impl Drop for Affinity {
    fn drop(&mut self) {
        // SAFETY: a set read from (or filled for) this thread.
        unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &self.0) };
    }
}

/// The machine's CPU time so far, from /proc/stat's "cpu" line, in ticks:
/// (busy, total), busy being everything but idle and iowait.
pub fn cpu_ticks() -> Result<(u64, u64)> {
    use anyhow::Context as _;
    let text = std::fs::read_to_string("/proc/stat")?;
    let line = text.lines().find(|l| l.starts_with("cpu ")).context("no cpu line in /proc/stat")?;
    let fields: Vec<u64> = line.split_whitespace().skip(1).map(|f| f.parse().unwrap_or(0)).collect();
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    Ok((total - idle, total))
}

/// The share of the machine's CPU time that was busy between two
/// `cpu_ticks` readings (0 to 1).
pub fn busy_share(before: (u64, u64), after: (u64, u64)) -> f64 {
    let (busy, total) = (after.0.saturating_sub(before.0), after.1.saturating_sub(before.1));
    if total == 0 { 0.0 } else { busy as f64 / total as f64 }
}

/// A BPF map a process holds a descriptor of, as its /proc fdinfo shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapFdInfo {
    /// `bpf_map_type`: 1 hash, 2 array, ...
    pub map_type: u64,
    pub key_size: u64,
    pub value_size: u64,
    pub max_entries: u64,
    /// Bytes the kernel charges for the map.
    pub memlock: u64,
}

/// Every BPF map process `pid` holds a descriptor of (/proc/PID/fdinfo).
pub fn bpf_maps_of(pid: u32) -> Result<Vec<MapFdInfo>> {
    let mut maps = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))? {
        // A descriptor closed meanwhile is no map of the process any more.
        let Ok(text) = std::fs::read_to_string(entry?.path()) else { continue };
        let field = |name: &str| text.lines().find_map(|line| line.strip_prefix(name)?.trim().parse::<u64>().ok());
        if let (Some(map_type), Some(key_size), Some(value_size), Some(max_entries), Some(memlock)) =
            (field("map_type:"), field("key_size:"), field("value_size:"), field("max_entries:"), field("memlock:"))
        {
            maps.push(MapFdInfo { map_type, key_size, value_size, max_entries, memlock });
        }
    }
    Ok(maps)
}

/// CPU seconds (user + system, all threads) process `pid` has used.
pub fn process_cpu_seconds(pid: u32) -> Result<f64> {
    use anyhow::Context as _;
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The fields after the command name, which is in parentheses and may hold spaces.
    let rest = text.rsplit_once(')').context("unreadable /proc/PID/stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 here.
    let ticks: u64 = fields.get(11).and_then(|f| f.parse().ok()).unwrap_or(0) + fields.get(12).and_then(|f| f.parse().ok()).unwrap_or(0);
    Ok(ticks as f64 / ticks_per_second())
}

/// CPU seconds (user + system) of every child this process has waited
/// for so far (`RUSAGE_CHILDREN`): the difference around one client
/// program's run is that run's CPU.
pub fn children_cpu_seconds() -> f64 {
    // SAFETY: getrusage writes the struct it is given and nothing else.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// The CPU time the loaded BPF programs named `names` have run, summed
/// over every program of those names: what XDP programs cost, which no
/// process's CPU time shows (they run in softirq). Counted only while a
/// [`BpfRunTimeStats`] is held.
pub fn bpf_run_time(names: &[&str]) -> Result<std::time::Duration> {
    Ok(bpf_runs(names)?.0)
}

/// The CPU time and the number of runs of the loaded BPF programs named
/// `names`, as `bpf_run_time`.
pub fn bpf_runs(names: &[&str]) -> Result<(std::time::Duration, u64)> {
    let (mut time, mut runs) = (std::time::Duration::ZERO, 0);
    for program in aya::programs::loaded_programs() {
        let program = program?;
        if program.name_as_str().is_some_and(|name| names.contains(&name)) {
            time += program.run_time();
            runs += program.run_count();
        }
    }
    Ok((time, runs))
}

/// The kernel counts BPF programs' run time while this is held
/// (BPF_ENABLE_STATS; the counting stops when it is dropped, so nothing is
/// left switched on). Counting costs each program run two clock reads.
pub struct BpfRunTimeStats(#[allow(dead_code)] std::os::fd::OwnedFd);

impl BpfRunTimeStats {
    pub fn enable() -> Result<Self> {
        use anyhow::Context as _;
        let fd = aya::sys::enable_stats(aya::sys::Stats::RunTime).context("BPF_ENABLE_STATS (run time)")?;
        Ok(Self(fd))
    }
}

/// A program of the benchmark object, as XDP.
pub fn xdp<'a>(ebpf: &'a mut aya::Ebpf, name: &str) -> Result<&'a mut aya::programs::Xdp> {
    use anyhow::Context as _;
    Ok(ebpf.program_mut(name).with_context(|| format!("program {name} missing"))?.try_into()?)
}

/// The benchmark object of the generator topology, gen (g0) -> (n0) gateway
/// (n1) -> (s0) sink: every program loaded, the bare redirect sending out of
/// `n1` (the gateway's ifindex of it), and the sink, which counts and drops,
/// attached to `s0` in `sink`; the generator held in the XDP dispatcher
/// from an idle veth in `generator`.
pub fn load_generator_topology(generator: &crate::netns::Netns, gateway: &crate::netns::Netns, n1: u32, sink: &crate::netns::Netns, s0: u32) -> Result<aya::Ebpf> {
    use anyhow::Context as _;
    use aya::{maps::DevMap, programs::XdpMode};
    use nat_common::bench::names;
    let mut bench = aya::Ebpf::load(nat_userspace::BENCH_OBJECT).context("loading the bench object")?;
    for name in [names::GENERATE, names::SINK, names::REDIRECT_ONLY, names::PASS] {
        xdp(&mut bench, name)?.load().with_context(|| format!("loading {name}"))?;
    }
    {
        // A devmap resolves the ifindex in the caller's namespace.
        let _in_gateway = gateway.enter()?;
        DevMap::try_from(bench.map_mut(names::REDIRECT_PORT).context("REDIRECT_PORT")?)?.set(0, n1, None, 0)?;
    }
    {
        let _in_sink = sink.enter()?;
        xdp(&mut bench, names::SINK)?.attach_to_if_index(s0, XdpMode::Driver).context("attaching the sink")?;
    }
    // GENERATOR_NO_HOLD=1: the old way, every generator run timed with its
    // two RCU grace periods, to compare the figures.
    if std::env::var_os("GENERATOR_NO_HOLD").is_none() {
        hold_generator_in_the_xdp_dispatcher(generator, &mut bench)?;
    }
    Ok(bench)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A busy hook is tried again, anything else given up at once.
    #[test]
    fn attach_when_free_retries_only_while_busy() {
        let busy = || anyhow::Error::new(std::io::Error::from_raw_os_error(libc::EBUSY)).context("`bpf_link_create` failed");
        let mut tries = 0;
        let attached = attach_when_free("a test program", || {
            tries += 1;
            if tries < 3 { Err(busy()) } else { Ok(tries) }
        });
        assert_eq!(attached.unwrap(), 3);
        let mut tries = 0;
        let refused = attach_when_free("a test program", || -> anyhow::Result<()> {
            tries += 1;
            Err(anyhow::Error::new(std::io::Error::from_raw_os_error(libc::EINVAL)))
        });
        assert!(refused.is_err() && tries == 1, "{refused:?} after {tries}");
        assert!(format!("{:#}", refused.unwrap_err()).starts_with("attaching a test program"));
    }

    /// `ip -s -j link`'s counters, as iproute2 prints them.
    #[test]
    fn link_counters_come_from_ip_json() {
        let json = r#"[{"ifindex":3,"ifname":"wan0","stats64":{"rx":{"bytes":5000,"packets":40,"errors":0},"tx":{"bytes":1048576,"packets":16,"errors":0}}}]"#;
        let c = LinkCounters::parse(json).unwrap();
        assert_eq!(c, LinkCounters { tx_packets: 16, tx_bytes: 1 << 20, rx_packets: 40, rx_bytes: 5000 });
        assert_eq!(c.tx_packet_bytes(), 65536.0);
        assert_eq!(c.since(LinkCounters { tx_packets: 6, tx_bytes: 0, rx_packets: 40, rx_bytes: 0 }).tx_packets, 10);
        assert!(LinkCounters::parse("[]").is_none());
        assert!(LinkCounters::parse(r#"[{"ifname":"wan0"}]"#).is_none());
    }

    /// A thread that spins shows in the machine's busy time; softirq is a
    /// part of busy, never more.
    #[test]
    fn machine_cpu_counts_a_busy_thread() {
        let before = MachineCpu::now().unwrap();
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while started.elapsed() < std::time::Duration::from_millis(300) {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        let spent = MachineCpu::now().unwrap().since(before);
        assert!(spent.busy >= 0.2, "300 ms of spinning showed as {:.2} s busy", spent.busy);
        assert!((0.0..=spent.busy).contains(&spent.softirq), "{spent:?}");
    }
}
