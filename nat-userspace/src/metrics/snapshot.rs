//! What the packet loop publishes for scrapes: plain numbers copied from
//! the daemon, nothing the server thread has to ask the loop for.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anyhow::Result;
use nat_common::{counters::Reason, proto, tcp_flags};

use crate::{
    datapath::Datapath,
    nat::{
        counters::DaemonCounters,
        daemon::Daemon,
        sessions::{SessionTable, session_state},
    },
};

/// Upper bounds (seconds) of the aging scan histogram's buckets. A scan of
/// a few sessions takes microseconds; one of the full session table
/// (`MAX_SESSIONS`) tens of milliseconds; past the tick (1 s) the loop
/// falls behind.
pub const AGING_BUCKETS: [f64; 12] = [0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 1.0];

/// The states `natd sessions` shows for a TCP mapping (`session_state`).
const TCP_STATES: [&str; 4] = ["opening", "established", "closing", "reset"];
/// ... for an SCTP one (`config::sctp_state`, in TCP's words).
const SCTP_STATES: [&str; 4] = ["opening", "established", "closing", "aborted"];
/// ... and for the others.
const OTHER_STATE: &str = "active";

/// Everything a scrape shows that natd's loop knows.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// When the loop took it; `None` before the first one.
    pub taken: Option<Instant>,
    /// How long taking the previous snapshot kept the loop: what metrics
    /// cost it once a second.
    pub previous_took: Duration,
    /// The datapath's per-reason packet counters, every reason.
    pub datapath: Vec<(Reason, u64)>,
    pub daemon: DaemonCounters,
    /// What natd's ESP learning counted (`nat::esp`).
    pub esp: crate::nat::esp::EspCounters,
    /// Later fragments parked, waiting for their first fragment.
    pub fragments_waiting: u64,
    /// Mapping log lines lost (the file or syslog could not take them).
    pub mapping_log_lost: u64,
    /// Dynamic mappings by protocol and state, every known pair (zeros too).
    pub sessions: Vec<SessionCount>,
    /// The sessions the datapath's tables hold (`max_sessions`).
    pub sessions_max: u64,
    /// Ports per protocol and external address.
    pub ports: Vec<PortCount>,
    pub aging: ScanHistogram,
    /// Every server of every forward, as of the last flow-aging tick.
    pub forwards: Vec<ServerMetrics>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionCount {
    pub proto: &'static str,
    pub state: &'static str,
    pub count: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortCount {
    pub proto: &'static str,
    pub external: Ipv4Addr,
    pub in_use: u64,
    /// Released, waiting out `port_hold` before reuse.
    pub held: u64,
    pub free: u64,
}

/// One server of one forward.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerMetrics {
    pub forward: String,
    /// ADDR:PORT, as `natd forwards` shows it.
    pub server: String,
    /// "up", "down", "draining" or "unknown".
    pub health: String,
    pub weight: u32,
    pub active_flows: u64,
    /// Since the server was added to the forward.
    pub new_flows: u64,
}

/// The aging scans' durations, bucketed as `AGING_BUCKETS` (each count in
/// its own bucket, not cumulative), with their sum and count.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ScanHistogram {
    pub buckets: [u64; AGING_BUCKETS.len()],
    /// Scans longer than the last bound.
    pub over: u64,
    pub sum_s: f64,
    pub count: u64,
}

impl ScanHistogram {
    pub fn observe(&mut self, took: Duration) {
        let s = took.as_secs_f64();
        match AGING_BUCKETS.iter().position(|bound| s <= *bound) {
            Some(i) => self.buckets[i] += 1,
            None => self.over += 1,
        }
        self.sum_s += s;
        self.count += 1;
    }
}

impl Snapshot {
    /// Reads the daemon: the datapath's counters (one read of the per-CPU
    /// array per reason), natd's counters, and one pass over the sessions
    /// (their liveness is mapped into natd: no syscall per session).
    pub fn take(daemon: &Daemon, aging: &ScanHistogram, forwards: &[ServerMetrics], previous_took: Duration) -> Result<Self> {
        let mut sessions = session_counts(&daemon.datapath, &daemon.sessions)?;
        // ESP SA pairs (`nat::esp`), in the states `natd sessions` shows.
        let answered = daemon.esp.views().filter(|sa| sa.spi_in.is_some()).count() as u64;
        for (state, count) in [("unanswered", daemon.esp.len() as u64 - answered), ("established", answered)] {
            sessions.push(SessionCount { proto: proto::name(proto::ESP), state, count });
        }
        let mut ports = Vec::new();
        for p in proto::ALL {
            for (external, usage) in daemon.ports.usage_by_address(p) {
                ports.push(PortCount { proto: proto::name(p), external, in_use: usage.in_use as u64, held: usage.held as u64, free: usage.free as u64 });
            }
        }
        Ok(Self {
            taken: Some(Instant::now()),
            previous_took,
            datapath: daemon.datapath.counters()?,
            daemon: daemon.counters,
            esp: daemon.esp.counters,
            fragments_waiting: daemon.fragments.waiting() as u64,
            mapping_log_lost: daemon.mapping_log_lost(),
            sessions,
            sessions_max: u64::from(daemon.datapath.session_capacity()),
            ports,
            aging: aging.clone(),
            forwards: forwards.to_vec(),
        })
    }
}

/// Flag pairs a session can have seen: `tcp_flags::TRACKED` and the SCTP
/// chunk bits (`sctp_chunks`) lie in the low 6 bits of each direction's
/// byte.
const FLAG_BITS: u32 = 6;
const FLAG_MASK: u8 = (1 << FLAG_BITS) - 1;
const FLAG_PAIRS: usize = 1 << (2 * FLAG_BITS);
const _: () = assert!(tcp_flags::TRACKED <= FLAG_MASK && nat_common::sctp_chunks::ABORT <= FLAG_MASK);

/// The sessions by protocol and state, every known pair (zeros too): one
/// pass over the table, each session's liveness read in place (the
/// LIVENESS array is mapped into natd), as the aging scan does. Sessions
/// are tallied by the flags they have seen each way and `session_state`
/// names each distinct pair once: naming every session's state cost three
/// times the aging scan (190 ms per million sessions, release build).
pub fn session_counts(datapath: &Datapath, table: &SessionTable) -> Result<Vec<SessionCount>> {
    let mut tally = StateTally::default();
    for (slot, external) in table.iter() {
        let live = datapath.liveness(slot)?;
        tally.add(external.proto, live.tcp_flags_out, live.tcp_flags_in);
    }
    Ok(tally.counts())
}

/// `session_counts` of sessions given as (protocol, TCP flags seen out,
/// TCP flags seen in).
pub fn count_states(sessions: impl IntoIterator<Item = (u8, u8, u8)>) -> Vec<SessionCount> {
    let mut tally = StateTally::default();
    for (proto_nr, out, back) in sessions {
        tally.add(proto_nr, out, back);
    }
    tally.counts()
}

/// Sessions by protocol and the flags seen each way.
struct StateTally {
    /// Per protocol of `proto::ALL`, indexed by `flag_pair`.
    by_flags: Vec<[u64; FLAG_PAIRS]>,
    /// Protocols natd does not know (none yet), by name and state.
    others: Vec<SessionCount>,
}

impl Default for StateTally {
    fn default() -> Self {
        Self { by_flags: vec![[0; FLAG_PAIRS]; proto::ALL.len()], others: Vec::new() }
    }
}

impl StateTally {
    fn add(&mut self, proto_nr: u8, out: u8, back: u8) {
        let mask = if proto_nr == proto::SCTP { FLAG_MASK } else { tcp_flags::TRACKED };
        let (out, back) = (out & mask, back & mask);
        match proto::ALL.iter().position(|p| *p == proto_nr) {
            Some(i) => self.by_flags[i][usize::from(out) << FLAG_BITS | usize::from(back)] += 1,
            None => add_count(&mut self.others, proto::name(proto_nr), session_state(proto_nr, out, back), 1),
        }
    }

    /// Every known (protocol, state) pair, zeros too, then any other.
    fn counts(&self) -> Vec<SessionCount> {
        let mut counts: Vec<SessionCount> = proto::ALL
            .into_iter()
            .flat_map(|p| {
                let states: &[&'static str] = match p {
                    proto::TCP => &TCP_STATES,
                    proto::SCTP => &SCTP_STATES,
                    _ => &[OTHER_STATE],
                };
                states.iter().map(move |state| SessionCount { proto: proto::name(p), state, count: 0 })
            })
            .collect();
        for (p, tally) in proto::ALL.into_iter().zip(&self.by_flags) {
            for (pair, n) in tally.iter().enumerate().filter(|(_, n)| **n > 0) {
                add_count(&mut counts, proto::name(p), session_state(p, (pair >> FLAG_BITS) as u8, pair as u8 & FLAG_MASK), *n);
            }
        }
        for other in &self.others {
            add_count(&mut counts, other.proto, other.state, other.count);
        }
        counts
    }
}

fn add_count(counts: &mut Vec<SessionCount>, proto: &'static str, state: &'static str, n: u64) {
    match counts.iter_mut().find(|s| s.proto == proto && s.state == state) {
        Some(row) => row.count += n,
        None => counts.push(SessionCount { proto, state, count: n }),
    }
}

/// Every server of every forward, with its flows counted now (a walk of
/// the forwarded-flow tables: the flow-aging timer's cost, not every tick's).
pub fn forwards(daemon: &Daemon) -> Result<Vec<ServerMetrics>> {
    if daemon.forwards.is_empty() {
        return Ok(Vec::new());
    }
    let views = daemon.forwards.views(&daemon.datapath, Instant::now())?;
    Ok(views
        .into_iter()
        .flat_map(|forward| {
            forward.servers.into_iter().map(move |server| ServerMetrics {
                forward: forward.name.clone(),
                server: server.server,
                health: server.health,
                weight: server.weight,
                active_flows: server.active_flows,
                new_flows: server.new_flows,
            })
        })
        .collect())
}
