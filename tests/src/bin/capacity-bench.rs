//! Sessions at scale (../shared/BENCHMARK.md, figures 5 and 6): a million
//! sessions held in the maps, kernel memory per session (the maps' memlock
//! against the conntrack slab object), natd's own memory per session (the
//! resident growth of its session table and port allocators as natd keeps
//! them), and the CPU time of natd's aging scan over all of them.
//!
//! Usage: capacity-bench [SESSIONS]  (root; writes target/bench/capacity.{json,md})

use std::{fmt::Write as _, net::Ipv4Addr, time::Instant};

use anyhow::{Context as _, Result, ensure};
use nat_common::{Endpoint, INBOUND_PORTS, MAX_MAPPINGS, MAX_POOL_ADDRS, proto};
use nat_tests::{TestGateway, addr};
use nat_userspace::{
    config::Timeouts,
    nat::{
        alloc::PortAllocator,
        sessions::{SessionTable, expired_sessions},
    },
};

/// Aging scans timed; the median is reported.
const SCANS: usize = 5;

fn main() -> Result<()> {
    let sessions: u32 = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(1_000_000);
    ensure!(sessions <= MAX_MAPPINGS, "at most {MAX_MAPPINGS} sessions fit the maps");
    ensure!(nat_tests::netns::is_root(), "the capacity benchmark loads BPF maps: run it as root");
    let mut gw = TestGateway::new("cap")?;
    // A full pool: a million sessions need the ports of several addresses.
    let mut config = nat_tests::fixture_config(gw.wan_ifindex);
    let pool: Vec<Ipv4Addr> = (0..MAX_POOL_ADDRS as u32).map(|position| Ipv4Addr::from(0xcb00_7101 + position)).collect();
    for (addr_be, addr) in config.external_addrs_be.iter_mut().zip(&pool) {
        *addr_be = u32::from_ne_bytes(addr.octets());
    }
    config.pool_len = MAX_POOL_ADDRS as u32;
    gw.datapath.set_config(config)?;

    // Inside hosts 10.0.0.0/8 x 16 ports; external ports of TCP and UDP
    // over the pool's 8 addresses (203.0.113.1-8): a million distinct pairs.
    let session = |i: u32| {
        let proto_nr = if (i >> 16) & 1 == 0 { proto::UDP } else { proto::TCP };
        let inside = Endpoint::new(Ipv4Addr::from(0x0a00_0000 | (i >> 4)), 1024 + (i & 15) as u16, proto_nr);
        let external = Endpoint::new(Ipv4Addr::from(0xcb00_7101 + (i >> 17)), (i & 0xffff) as u16, proto_nr);
        (inside, external)
    };
    let started = Instant::now();
    for i in 0..sessions {
        let (inside, external) = session(i);
        gw.datapath.insert_pair(inside, external, i, 0).with_context(|| format!("session {i}"))?;
    }
    let insert_s = started.elapsed().as_secs_f64();
    // natd's side, as it keeps it: the session table (made for the maps'
    // capacity, as natd makes it, without the mapping log's creation times),
    // and each external address's port allocator with the session's port
    // taken.
    // Freed heap memory still resident would be reused unseen: handed back
    // first, so the growth is all the table's and the allocators'.
    // SAFETY: glibc's malloc_trim only returns free memory to the kernel.
    unsafe { libc::malloc_trim(0) };
    let rss_before = resident_bytes()?;
    let mut table = SessionTable::new(gw.datapath.session_capacity(), &pool, false);
    let mut allocators: Vec<PortAllocator> = (0..=(sessions - 1) >> 17).map(|a| PortAllocator::new(1, 65535, 0, u64::from(a) + 1)).collect();
    for i in 0..sessions {
        let (_, external) = session(i);
        table.insert(i, external, 0)?;
        allocators[(i >> 17) as usize].adopt(external.proto, external.port());
    }
    let natd_bytes = resident_bytes()?.saturating_sub(rss_before) as f64 / f64::from(sessions);
    let held = gw.datapath.outbound()?.keys().count();
    ensure!(held == sessions as usize, "{held} of {sessions} sessions in the map");
    // The table keeps no inside endpoints: each is found from the maps.
    ensure!(table.len() == sessions as usize, "{} of {sessions} sessions in natd's table", table.len());
    for (slot, external) in table.iter() {
        let inside = gw.datapath.session_inside(slot, &external)?;
        ensure!(inside == Some(session(slot).0), "session {slot}: the maps give {inside:?} as its inside endpoint");
    }

    // A session deep in the table still translates.
    // The last UDP session whose port is in the NAT range (the WAN program
    // leaves the others to the gateway host).
    let (inside, external) = (0..sessions)
        .rev()
        .map(session)
        .find(|(inside, external)| inside.proto == proto::UDP && (addr::PORT_MIN..=addr::PORT_MAX).contains(&external.port()))
        .context("no UDP session in the NAT port range")?;
    let probe = nat_tests::packet::Frame::udp((inside.addr(), inside.port()), (addr::REMOTE, 53)).with_macs(addr::LAN_HOST_MAC, addr::LAN_GW_MAC);
    let run = gw.run(nat_userspace::datapath::Side::Lan, &probe.build())?;
    ensure!(run.action == nat_tests::xdp_action::REDIRECT, "a session deep in the table did not translate out: {}", run.action);
    let reply = nat_tests::packet::Frame::udp((addr::REMOTE, 53), (external.addr(), external.port())).with_macs(addr::WAN_NEXT_HOP_MAC, addr::WAN_GW_MAC);
    let run = gw.run(nat_userspace::datapath::Side::Wan, &reply.build())?;
    ensure!(run.action == nat_tests::xdp_action::REDIRECT, "a session deep in the table did not translate in: {}", run.action);

    let mut scan_cpu_ms = Vec::new();
    let mut scan_wall_ms = Vec::new();
    for _ in 0..SCANS {
        let (cpu0, wall0) = (thread_cpu_ns(), Instant::now());
        let expired = expired_sessions(&gw.datapath, &table, &Timeouts::default(), 1)?;
        scan_cpu_ms.push((thread_cpu_ns() - cpu0) as f64 / 1e6);
        scan_wall_ms.push(wall0.elapsed().as_secs_f64() * 1e3);
        ensure!(expired.is_empty(), "{} sessions expired at t=1 ns", expired.len());
    }
    scan_cpu_ms.sort_by(|a, b| a.total_cmp(b));
    scan_wall_ms.sort_by(|a, b| a.total_cmp(b));
    let per_million = |ms: f64| ms * 1e6 / f64::from(sessions);
    let (scan_cpu, scan_wall) = (per_million(scan_cpu_ms[SCANS / 2]), per_million(scan_wall_ms[SCANS / 2]));

    let map_bytes = mapping_maps_memlock()?;
    let nat_bytes = map_bytes as f64 / f64::from(MAX_MAPPINGS);
    let conntrack_bytes = conntrack_object_size()?;

    let json = format!(
        "{{\n  \"sessions_held\": {held},\n  \"insert_s\": {insert_s:.2},\n  \
         \"bytes_per_session\": {{\"xdp_nat\": {nat_bytes:.1}, \"conntrack\": {conntrack_bytes}, \"natd\": {natd_bytes:.1}}},\n  \
         \"mapping_maps_memlock_bytes\": {map_bytes},\n  \
         \"aging_scan_ms_per_million\": {scan_cpu:.0},\n  \"aging_scan_wall_ms_per_million\": {scan_wall:.0}\n}}\n"
    );
    let mut md = String::from("| figure | value |\n|---|---|\n");
    writeln!(md, "| sessions held | {held} (inserted in {insert_s:.1} s, both directions) |")?;
    writeln!(md, "| kernel bytes per session, this NAT (OUTBOUND + INBOUND + LIVENESS memlock / {MAX_MAPPINGS}: {map_bytes} bytes) | {nat_bytes:.1} |")?;
    writeln!(md, "| kernel bytes per session, conntrack (nf_conntrack slab object) | {conntrack_bytes} |")?;
    writeln!(md, "| natd bytes per session (resident growth of its session table and port allocators / {sessions}) | {natd_bytes:.1} |")?;
    writeln!(md, "| aging scan CPU per million sessions | {scan_cpu:.0} ms (wall {scan_wall:.0} ms) |")?;
    nat_tests::bench::write_results("capacity", &json, &md)?;
    Ok(())
}

/// This process's resident memory (/proc/self/statm).
fn resident_bytes() -> Result<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm")?;
    let pages: u64 = statm.split_whitespace().nth(1).context("short statm")?.parse()?;
    Ok(pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64)
}

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// memlock of what a session occupies in the kernel: OUTBOUND (a hash map
/// of MAX_MAPPINGS entries), the LIVENESS array (MAX_SESSIONS slots) and
/// the INBOUND array (every port of the pool's addresses, INBOUND_PORTS
/// entries), from /proc/self/fdinfo. All are preallocated: this is what a
/// full table costs.
fn mapping_maps_memlock() -> Result<u64> {
    // map_type 1: hash, 2: array.
    let ours: Vec<_> = nat_tests::bench::bpf_maps_of(std::process::id())?
        .into_iter()
        .filter(|map| matches!(map.map_type, 1 | 2) && (map.max_entries == u64::from(MAX_MAPPINGS) || map.max_entries == u64::from(INBOUND_PORTS)))
        .collect();
    ensure!(ours.len() == 3, "found {} session maps in /proc/self/fdinfo, expected 3 (OUTBOUND, INBOUND, LIVENESS)", ours.len());
    Ok(ours.iter().map(|map| map.memlock).sum())
}

/// Object size of the nf_conntrack slab, from /proc/slabinfo.
fn conntrack_object_size() -> Result<u64> {
    let text = std::fs::read_to_string("/proc/slabinfo").context("reading /proc/slabinfo")?;
    let line = text.lines().find(|l| l.starts_with("nf_conntrack ")).context("no nf_conntrack slab (conntrack never used on this machine?)")?;
    Ok(line.split_whitespace().nth(3).context("short slabinfo line")?.parse()?)
}
