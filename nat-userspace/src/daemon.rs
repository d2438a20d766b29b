//! The daemon's state: who holds which external port, and when it expires.

use std::{
    collections::HashMap,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use nat_common::{
    CLOCK_TICK_NS, ClaimEvent, Endpoint, FragEvent, FragKey, FragState, FreePort, MAX_SESSIONS, MissEvent, PermitKey, frag_dir, miss_kind,
    icmp::ICMP_ADMIN_PROHIBITED, pool_index, proto, tcp_flags,
};

use crate::{
    allocator::{PortAllocator, PortPolicy},
    config::{Filtering, FilteringMode},
    control::{Counter, FilteringStatus, PortUsage, Request, Session, Stats, Status},
    datapath::Datapath,
    frag::{Park, Parking, frag_key_of, translate_fragment},
    handoff::{KernelSender, event_packet, translate_destination, translate_source},
    quota::{HostQuota, RefusalNotices, destination_unreachable},
};

/// Idle timeouts (RFC 4787 REQ-5, RFC 5382 REQ-5, RFC 5508 REQ-2).
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub udp: Duration,
    pub icmp: Duration,
    pub tcp_established: Duration,
    /// Before the handshake completes (SYN seen, not yet ACKed both ways).
    pub tcp_opening: Duration,
    /// After a FIN or RST (RFC 7857: an RST'd mapping is held, not dropped
    /// at once, so a stray RST cannot end a live connection's mapping).
    pub tcp_closing: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            udp: Duration::from_secs(300),
            icmp: Duration::from_secs(60),
            tcp_established: Duration::from_secs(7440),
            tcp_opening: Duration::from_secs(240),
            tcp_closing: Duration::from_secs(240),
        }
    }
}

impl Timeouts {
    /// How long a filtering permit lets a remote in after the inside
    /// endpoint last sent to it: the protocol's idle timeout plus the clock
    /// tick aging also waits, so it never ends before the mapping would.
    pub fn permit_ttl_ns(&self, proto_nr: u8) -> u64 {
        let timeout = match proto_nr {
            proto::TCP => self.tcp_established,
            proto::UDP => self.udp,
            _ => self.icmp,
        };
        timeout.as_nanos() as u64 + CLOCK_TICK_NS
    }

    /// The timeout for a mapping given the TCP flags seen each way.
    pub fn for_mapping(&self, proto_nr: u8, flags_out: u8, flags_in: u8) -> Duration {
        match proto_nr {
            proto::TCP => {
                let closing = (flags_out | flags_in) & (tcp_flags::FIN | tcp_flags::RST) != 0;
                let established = flags_out & flags_in & tcp_flags::ACK != 0;
                if closing {
                    self.tcp_closing
                } else if established {
                    self.tcp_established
                } else {
                    self.tcp_opening
                }
            }
            proto::ICMP => self.icmp,
            _ => self.udp,
        }
    }
}

/// `CLOCK_MONOTONIC_COARSE` in ns: the clock of `bpf_ktime_get_coarse_ns`.
pub fn coarse_now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The inside endpoint of a missed frame (its source).
pub fn source_endpoint(event: &MissEvent) -> Option<Endpoint> {
    let ip = event.frame().get(event.l3_offset as usize..)?;
    let ihl = ((*ip.first()? & 0x0f) as usize) * 4;
    let l4 = ip.get(ihl..)?;
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let port = match ip[9] {
        proto::TCP | proto::UDP => u16::from_be_bytes([*l4.first()?, *l4.get(1)?]),
        proto::ICMP => u16::from_be_bytes([*l4.get(4)?, *l4.get(5)?]),
        _ => return None,
    };
    Some(Endpoint::new(src, port, ip[9]))
}

/// The remote a missed outbound IPv4 packet (`ip`) is sent to: its
/// destination address and, for TCP/UDP, port (both network byte order).
fn remote_of(ip: &[u8]) -> Option<(u32, u16)> {
    let ihl = ((*ip.first()? & 0x0f) as usize) * 4;
    let addr_be = u32::from_ne_bytes(ip.get(16..20)?.try_into().ok()?);
    let port_be = match ip[9] {
        proto::TCP | proto::UDP => u16::from_ne_bytes(ip.get(ihl + 2..ihl + 4)?.try_into().ok()?),
        _ => 0,
    };
    Some((addr_be, port_be))
}

/// What the daemon was started with, for `natd status`.
#[derive(Clone, Debug)]
pub struct RunInfo {
    pub lan: String,
    pub wan: String,
    pub xdp_mode: &'static str,
    /// The external address pool; each inside host is paired with one
    /// (`nat_common::pool_index`).
    pub external_ips: Vec<Ipv4Addr>,
    pub port_min: u16,
    pub port_max: u16,
    /// What an allocated port keeps of the inside port (parity, class).
    pub port_policy: PortPolicy,
    pub port_hold: Duration,
    pub timeouts: Timeouts,
    pub filtering: Filtering,
    /// External ports per protocol one inside address may hold; 0: no limit.
    pub ports_per_host: u32,
    /// Log every mapping made and removed (RFC 6888 REQ-12..15).
    pub log_mappings: bool,
    /// The gateway's address on the LAN: the source of its ICMP messages to
    /// inside hosts. `None`: the LAN interface has no IPv4 address, no
    /// messages are sent.
    pub lan_ip: Option<Ipv4Addr>,
    /// The inside prefixes (BCP 38), as `natd status` shows them.
    pub inside: String,
}

impl RunInfo {
    fn filtering_of(&self, proto_nr: u8) -> FilteringMode {
        match proto_nr {
            proto::TCP => self.filtering.tcp,
            proto::UDP => self.filtering.udp,
            _ => self.filtering.icmp,
        }
    }
}

/// The daemon's own counters, next to the datapath's per-reason ones.
#[derive(Default, Debug, Clone, Copy)]
pub struct DaemonCounters {
    pub mappings_created: u64,
    pub mappings_expired: u64,
    /// New flows refused because every external port of the protocol is taken.
    pub refused_no_port: u64,
    /// New flows refused because the kernel maps are full.
    pub refused_map_full: u64,
    /// New flows refused because their host holds its quota of ports.
    pub refused_quota: u64,
    /// ICMP Destination Unreachable messages sent to refused hosts.
    pub refusals_notified: u64,
    /// First packets of new flows translated and sent on by the daemon.
    pub first_packets_sent: u64,
    /// New flows the datapath set up itself from a queued free port.
    pub claimed_in_datapath: u64,
    pub sent_through_kernel: u64,
    pub handoff_errors: u64,
    /// Later fragments handed over before their first fragment was translated
    /// and parked (RFC 4787 REQ-14).
    pub fragments_parked: u64,
    /// Later fragments natd translated and sent on: parked ones released when
    /// their first fragment passed, and ones whose first fragment had passed
    /// by the time natd read them.
    pub fragments_sent: u64,
    /// Parked fragments dropped because their first fragment did not pass
    /// within `FRAG_TIMEOUT_NS` (inbound: also every fragment of the
    /// gateway's own fragmented traffic, which the kernel got as well).
    pub fragments_expired: u64,
    /// Fragments not parked because the park was full.
    pub fragments_dropped_full: u64,
}

/// Free ports (and session slots) kept queued per protocol and parity for
/// the datapath to claim: a burst of twice this many new flows of one
/// protocol is set up without the daemon.
pub const FREE_QUEUE_TARGET: usize = 512;

/// How often a refusal is logged at most: a full port space under load would
/// otherwise write a line per packet.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

pub struct Daemon {
    datapath: Datapath,
    info: RunInfo,
    started: Instant,
    /// One port space per external address, in pool order.
    pools: Vec<PortAllocator>,
    /// Mirror of the maps.
    sessions: SessionTable,
    slots: SlotPool,
    sender: KernelSender,
    quota: HostQuota,
    notices: RefusalNotices,
    pub counters: DaemonCounters,
    last_refusal_log: Option<Instant>,
    /// Later fragments waiting for their first fragment.
    park: Park,
}

impl Daemon {
    pub fn new(datapath: Datapath, info: RunInfo) -> Result<Self> {
        let mut seed = [0u8; 8];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut seed))
            .context("seeding the port randomizer from /dev/urandom")?;
        let mut daemon = Self {
            datapath,
            pools: info
                .external_ips
                .iter()
                .enumerate()
                .map(|(i, _)| {
                    let seed = u64::from_ne_bytes(seed).wrapping_add(i as u64);
                    PortAllocator::with_policy(info.port_min, info.port_max, info.port_policy, info.port_hold.as_nanos() as u64, seed)
                })
                .collect(),
            quota: HostQuota::new(info.ports_per_host),
            info,
            started: Instant::now(),
            sessions: SessionTable::default(),
            slots: SlotPool::default(),
            sender: KernelSender::new()?,
            notices: RefusalNotices::default(),
            counters: DaemonCounters::default(),
            last_refusal_log: None,
            park: Park::default(),
        };
        daemon.refill_free_queues();
        Ok(daemon)
    }

    /// One item of the ring: a `MissEvent` or a `ClaimEvent`, told apart by
    /// their common first field.
    pub fn handle_event(&mut self, item: &[u8]) {
        let Some(kind) = item.get(..4).map(|k| u32::from_ne_bytes(k.try_into().unwrap())) else { return };
        let result = match kind {
            miss_kind::CLAIMED if item.len() >= size_of::<ClaimEvent>() => {
                // SAFETY: the datapath wrote a whole ClaimEvent; it is Copy and any bit pattern is valid.
                let claim = unsafe { std::ptr::read_unaligned(item.as_ptr() as *const ClaimEvent) };
                self.claimed(&claim);
                Ok(())
            }
            miss_kind::NEW_FLOW | miss_kind::NO_NEIGHBOUR if item.len() >= size_of::<MissEvent>() => {
                // SAFETY: as above, for a whole MissEvent.
                let event = unsafe { std::ptr::read_unaligned(item.as_ptr() as *const MissEvent) };
                if kind == miss_kind::NEW_FLOW {
                    self.new_flow(&event)
                } else {
                    self.sender.send(&event).map(|()| self.counters.sent_through_kernel += 1)
                }
            }
            miss_kind::FRAGMENT_OUT | miss_kind::FRAGMENT_IN if item.len() >= size_of::<MissEvent>() => {
                // SAFETY: as above.
                let event = unsafe { std::ptr::read_unaligned(item.as_ptr() as *const MissEvent) };
                let dir = if kind == miss_kind::FRAGMENT_OUT { frag_dir::OUT } else { frag_dir::IN };
                self.later_fragment(&event, dir)
            }
            miss_kind::FRAGMENT_TRANSLATED if item.len() >= size_of::<FragEvent>() => {
                // SAFETY: as above, for a whole FragEvent.
                let event = unsafe { std::ptr::read_unaligned(item.as_ptr() as *const FragEvent) };
                self.release(&event.key, event.addr_be)
            }
            other => Err(anyhow!("ring event of kind {other} and {} bytes not understood", item.len())),
        };
        if let Err(e) = result {
            self.counters.handoff_errors += 1;
            eprintln!("natd: {e:#}");
        }
    }

    /// The datapath installed a mapping from a queued free port.
    fn claimed(&mut self, claim: &ClaimEvent) {
        // The port was queued on every pool address: the claiming host's
        // address now uses it, the others get it back.
        let claimed_on = self.pool_of(&claim.external);
        for (index, pool) in self.pools.iter_mut().enumerate() {
            if Some(index) == claimed_on {
                pool.claimed(claim.inside.proto, claim.external.port());
            } else {
                pool.unreserve(claim.inside.proto, claim.external.port());
            }
        }
        self.sessions.insert(claim.inside, SessionEntry { external: claim.external, slot: claim.session, created_ns: coarse_now_ns() });
        self.log_mapping("created", &claim.inside, &claim.external, None);
        self.counters.mappings_created += 1;
        self.counters.claimed_in_datapath += 1;
    }

    /// Keeps each protocol's free queue filled with random free ports, so new
    /// flows are set up in the datapath without waiting for the daemon.
    pub fn refill_free_queues(&mut self) {
        for proto_nr in [proto::TCP, proto::UDP, proto::ICMP] {
            for parity in [0, 1] {
                while self.pools[0].queued_of(proto_nr, parity) < FREE_QUEUE_TARGET {
                    let Some(slot) = self.slots.take() else { return };
                    let Some(port) = self.reserve_column(proto_nr, parity) else {
                        self.slots.give_back(slot);
                        break;
                    };
                    if let Err(e) = self.datapath.push_free_port(proto_nr, FreePort { session: slot, port, _pad: 0 }) {
                        for pool in &mut self.pools {
                            pool.unreserve(proto_nr, port);
                        }
                        self.slots.give_back(slot);
                        eprintln!("natd: {e:#}");
                        break;
                    }
                }
            }
        }
    }

    /// A random port of `parity` free on every pool address, reserved on all
    /// of them: the datapath claims a queued port on the address of whichever
    /// host takes it. `None` when no such port turned up in a few tries (a
    /// busy pool): new flows then take natd's path until ports free up.
    fn reserve_column(&mut self, proto_nr: u8, parity: u16) -> Option<u16> {
        const PROBES: usize = 16;
        let (first, rest) = self.pools.split_first_mut()?;
        for _ in 0..PROBES {
            let port = first.reserve(proto_nr, parity)?;
            if rest.iter().all(|pool| pool.is_free(proto_nr, port)) {
                for pool in rest.iter_mut() {
                    pool.reserve_exact(proto_nr, port);
                }
                return Some(port);
            }
            first.unreserve(proto_nr, port);
        }
        None
    }

    /// A new flow the datapath could not claim a port for: set it up (unless
    /// an earlier packet of it did), then send its packet on.
    fn new_flow(&mut self, event: &MissEvent) -> Result<()> {
        let Some(inside) = source_endpoint(event) else {
            bail!("miss event without a TCP/UDP/ICMP source");
        };
        // Several packets of one flow can miss before the mapping exists: the
        // later ones only need sending on (endpoint-independent mapping).
        let external = match self.sessions.get(&inside) {
            Some(entry) => entry.external,
            None => match self.set_up(inside)? {
                Some(external) => external,
                None => return self.notify_refusal(event),
            },
        };
        // The first packet goes on now, not after the sender's retransmit timer.
        let mut packet = event_packet(event)?.to_vec();
        // The reply must pass filtering as if the datapath had sent it.
        let remote = remote_of(&packet);
        if let Some((addr_be, port_be)) = remote
            && let Some(key) = PermitKey::new(self.info.filtering_of(inside.proto).datapath_value(), inside, addr_be, port_be)
        {
            self.datapath.remember_remote(key, coarse_now_ns())?;
        }
        if let Some((addr_be, port_be)) = remote
            && self.info.external_ips.iter().any(|ip| addr_be.to_ne_bytes() == ip.octets())
        {
            return self.hairpin_first_packet(packet, external, Endpoint::from_be(addr_be, port_be, inside.proto));
        }
        let first_fragment = frag_key_of(&packet, frag_dir::OUT).filter(|_| u16::from_be_bytes([packet[6], packet[7]]) & 0x2000 != 0);
        translate_source(&mut packet, external)?;
        self.sender.send_packet(&packet)?;
        self.counters.first_packets_sent += 1;
        // A first fragment: its later fragments follow it as the datapath's would.
        if let Some(key) = first_fragment {
            self.datapath.record_fragment(key, FragState { addr_be: external.addr_be, _pad: 0, stamp_ns: coarse_now_ns() })?;
            self.release(&key, external.addr_be)?;
        }
        Ok(())
    }

    /// A later fragment the datapath could not translate (yet): sent on at
    /// once if its first fragment has been translated meanwhile, otherwise
    /// parked until it is.
    fn later_fragment(&mut self, event: &MissEvent, dir: u8) -> Result<()> {
        let ip = event_packet(event)?;
        let total = usize::from(u16::from_be_bytes([ip[2], ip[3]])).min(ip.len());
        let packet = ip[..total].to_vec();
        let key = frag_key_of(&packet, dir).context("fragment without an IPv4 header")?;
        if let Some(addr_be) = self.translation(&key)? {
            return self.send_fragment(packet, dir, addr_be);
        }
        let now = coarse_now_ns();
        match self.park.park(key, packet, now) {
            Parking::Full => {
                self.counters.fragments_dropped_full += 1;
                return Ok(());
            }
            Parking::Added => {}
            Parking::NewDatagram => {
                if let Err(e) = self.datapath.mark_parked(key, now) {
                    // Without the mark the datapath would not report the first
                    // fragment; the tick's look-up still would.
                    eprintln!("natd: {e:#}");
                }
            }
        }
        self.counters.fragments_parked += 1;
        // The first fragment may have passed between the look-up above and
        // the mark: the datapath writes FRAGS before it reads PARKED.
        if let Some(addr_be) = self.translation(&key)? {
            self.release(&key, addr_be)?;
        }
        Ok(())
    }

    /// The address the first fragment of `key` was translated to, if that
    /// was within `FRAG_TIMEOUT_NS`.
    fn translation(&self, key: &FragKey) -> Result<Option<u32>> {
        Ok(self.datapath.fragment_state(key)?.filter(|s| s.fresh(coarse_now_ns())).map(|s| s.addr_be))
    }

    /// The first fragment of `key` was translated to `addr_be`: its parked
    /// fragments follow.
    fn release(&mut self, key: &FragKey, addr_be: u32) -> Result<()> {
        let packets = self.park.take(key);
        self.datapath.unmark_parked(key)?;
        for packet in packets {
            self.send_fragment(packet, key.dir, addr_be)?;
        }
        Ok(())
    }

    fn send_fragment(&mut self, mut packet: Vec<u8>, dir: u8, addr_be: u32) -> Result<()> {
        translate_fragment(&mut packet, dir, Ipv4Addr::from(addr_be.to_ne_bytes()))?;
        self.sender.send_packet(&packet)?;
        self.counters.fragments_sent += 1;
        Ok(())
    }

    /// Once a tick: parked datagrams whose first fragment passed without a
    /// `FragEvent` reaching natd (ring full) are released; the ones parked
    /// longer than `FRAG_TIMEOUT_NS` are dropped.
    fn age_fragments(&mut self, now: u64) -> Result<()> {
        for key in self.park.keys() {
            if let Some(addr_be) = self.translation(&key)? {
                self.release(&key, addr_be)?;
            }
        }
        for (key, fragments) in self.park.expire(now) {
            self.datapath.unmark_parked(&key)?;
            self.counters.fragments_expired += fragments as u64;
        }
        Ok(())
    }

    /// A new flow's first packet for another inside host's mapping on an
    /// external address (RFC 4787 REQ-9): translated both ways, as the
    /// datapath hairpins the packets after it, and sent into the LAN, if the
    /// target's filtering lets the sender's external endpoint in. Without a
    /// target mapping the packet was for the gateway itself, whose kernel the
    /// datapath already passes such packets to.
    fn hairpin_first_packet(&mut self, mut packet: Vec<u8>, external: Endpoint, target_external: Endpoint) -> Result<()> {
        let Ok(target) = self.datapath.inbound()?.get(&target_external, 0) else {
            return Ok(());
        };
        let target_inside = target.target(target_external.proto);
        let mode = self.info.filtering_of(target_inside.proto).datapath_value();
        if let Some(key) = PermitKey::new(mode, target_inside, external.addr_be, external.port_be) {
            let ttl = self.info.timeouts.permit_ttl_ns(target_inside.proto);
            let fresh = self.datapath.permit(&key)?.is_some_and(|sent| coarse_now_ns().saturating_sub(sent) <= ttl);
            if !fresh {
                return Ok(());
            }
        }
        translate_source(&mut packet, external)?;
        translate_destination(&mut packet, target_inside)?;
        self.sender.send_packet(&packet)?;
        self.counters.first_packets_sent += 1;
        Ok(())
    }

    /// Allocates an external port and a session slot for `inside` and installs
    /// the mapping pair. `None`: refused (counted and logged); a live mapping
    /// is never evicted to make room.
    fn set_up(&mut self, inside: Endpoint) -> Result<Option<Endpoint>> {
        if !self.quota.allows(&self.datapath, &inside)? {
            self.counters.refused_quota += 1;
            let why = format!("the host holds its {} {} ports (ports_per_host)", self.info.ports_per_host, proto_name(inside.proto));
            self.log_refusal(inside, &why);
            return Ok(None);
        }
        // Paired pooling: the host's address, as the datapath picks it.
        let pool = pool_index(inside.addr_be, self.pools.len() as u32) as usize;
        let Some(port) = self.pools[pool].allocate(inside.proto, inside.port()) else {
            self.counters.refused_no_port += 1;
            self.log_refusal(inside, "every external port of this protocol is in use or held");
            return Ok(None);
        };
        let external = Endpoint::new(self.info.external_ips[pool], port, inside.proto);
        let Some(slot) = self.slots.take() else {
            self.pools[pool].cancel(inside.proto, port);
            self.counters.refused_map_full += 1;
            self.log_refusal(inside, "every session slot is in use");
            return Ok(None);
        };
        if let Err(e) = self.datapath.insert_pair(inside, external, slot, coarse_now_ns()) {
            self.pools[pool].cancel(inside.proto, port);
            self.slots.give_back(slot);
            // A later packet of this flow may have claimed a queued port in
            // the datapath meanwhile (its ClaimEvent is still in the ring):
            // then this one goes out on that mapping.
            if let Ok(mapping) = self.datapath.outbound()?.get(&inside, 0) {
                return Ok(Some(mapping.target(inside.proto)));
            }
            self.counters.refused_map_full += 1;
            self.log_refusal(inside, &format!("{e:#}"));
            return Ok(None);
        }
        self.sessions.insert(inside, SessionEntry { external, slot, created_ns: coarse_now_ns() });
        self.log_mapping("created", &inside, &external, None);
        self.quota.made(&mut self.datapath, &inside)?;
        self.counters.mappings_created += 1;
        Ok(Some(external))
    }

    /// The pool index of an external endpoint's address.
    fn pool_of(&self, external: &Endpoint) -> Option<usize> {
        self.info.external_ips.iter().position(|ip| *ip == external.addr())
    }

    /// RFC 5508 REQ-8: a host whose new flow was refused hears so at once
    /// (Destination Unreachable, administratively prohibited), rate-limited.
    fn notify_refusal(&mut self, event: &MissEvent) -> Result<()> {
        let Some(lan_ip) = self.info.lan_ip else { return Ok(()) };
        let refused = event_packet(event)?;
        let host = Ipv4Addr::new(refused[12], refused[13], refused[14], refused[15]);
        if !self.notices.admit(host, Instant::now()) {
            return Ok(());
        }
        if let Some(message) = destination_unreachable(lan_ip, refused, ICMP_ADMIN_PROHIBITED) {
            self.sender.send_packet(&message)?;
            self.counters.refusals_notified += 1;
        }
        Ok(())
    }

    /// RFC 6888 REQ-12..15: with `log_mappings`, one line per mapping made
    /// or removed, enough to tell which inside host held an external port
    /// when (wall clock, inside and external endpoints, lifetime), and never
    /// the destinations it talked to.
    fn log_mapping(&self, what: &str, inside: &Endpoint, external: &Endpoint, lifetime_ns: Option<u64>) {
        if !self.info.log_mappings {
            return;
        }
        let wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let lifetime = lifetime_ns.map_or(String::new(), |ns| format!(" lifetime_s={}", ns / 1_000_000_000));
        eprintln!(
            "natd: mapping {what} time={}.{:03} proto={} inside={}:{} external={}:{}{lifetime}",
            wall.as_secs(),
            wall.subsec_millis(),
            proto_name(inside.proto),
            inside.addr(),
            inside.port(),
            external.addr(),
            external.port()
        );
    }

    fn log_refusal(&mut self, inside: Endpoint, why: &str) {
        let now = Instant::now();
        if self.last_refusal_log.is_none_or(|t| now - t >= REFUSAL_LOG_INTERVAL) {
            self.last_refusal_log = Some(now);
            let refused = self.counters.refused_no_port + self.counters.refused_map_full + self.counters.refused_quota;
            eprintln!(
                "natd: new flow from {}:{} ({}) refused: {why}; {refused} refused so far (natd stats); \
                 existing flows are unaffected",
                inside.addr(),
                inside.port(),
                proto_name(inside.proto)
            );
        }
    }

    /// Removes every mapping idle past its timeout, both directions together,
    /// and holds its port before it returns to the pool.
    pub fn age(&mut self) -> Result<()> {
        let now = coarse_now_ns();
        self.datapath.set_clock(now)?;
        for pool in &mut self.pools {
            pool.reclaim(now);
        }
        self.refill_free_queues();
        self.age_fragments(now)?;
        let expired = expired_sessions(&self.datapath, &self.sessions, &self.info.timeouts, now)?;
        for inside in expired {
            if let Some(entry) = self.sessions.remove(&inside) {
                self.datapath.remove_pair(inside)?;
                if let Some(pool) = self.pool_of(&entry.external) {
                    self.pools[pool].release(inside.proto, entry.external.port(), now);
                }
                self.slots.give_back(entry.slot);
                self.quota.released(&mut self.datapath, &inside)?;
                self.log_mapping("removed", &inside, &entry.external, Some(now.saturating_sub(entry.created_ns)));
                self.counters.mappings_expired += 1;
            }
        }
        Ok(())
    }

    /// The JSON answer to a control request.
    pub fn answer(&self, request: Request) -> Result<String> {
        Ok(match request {
            Request::Status => serde_json::to_string(&self.status())?,
            Request::Sessions => serde_json::to_string(&self.session_rows()?)?,
            Request::Stats => serde_json::to_string(&self.stats()?)?,
        })
    }

    pub fn status(&self) -> Status {
        let info = &self.info;
        Status {
            pid: std::process::id(),
            lan: info.lan.clone(),
            wan: info.wan.clone(),
            external_ip: info.external_ips.iter().map(Ipv4Addr::to_string).collect::<Vec<_>>().join(", "),
            xdp_mode: info.xdp_mode.to_string(),
            port_range: format!("{}-{}", info.port_min, info.port_max),
            uptime_s: self.started.elapsed().as_secs(),
            sessions: self.sessions.len(),
            ports: [proto::TCP, proto::UDP, proto::ICMP]
                .into_iter()
                .map(|p| PortUsage {
                    proto: proto_name(p).to_string(),
                    in_use: self.pools.iter().map(|pool| pool.in_use(p)).sum(),
                    held: self.pools.iter().map(|pool| pool.held(p)).sum(),
                    free: self.pools.iter().map(|pool| pool.free(p)).sum(),
                })
                .collect(),
            refused_flows: self.counters.refused_no_port + self.counters.refused_map_full + self.counters.refused_quota,
            inside: info.inside.clone(),
            filtering: FilteringStatus {
                tcp: info.filtering.tcp.name().to_string(),
                udp: info.filtering.udp.name().to_string(),
                icmp: info.filtering.icmp.name().to_string(),
            },
        }
    }

    /// The live mappings, most recently active first.
    pub fn session_rows(&self) -> Result<Vec<Session>> {
        let now = coarse_now_ns();
        let mut rows = Vec::with_capacity(self.sessions.len());
        for (inside, entry) in &self.sessions {
            let live = self.datapath.liveness(entry.slot)?;
            let timeout = self.info.timeouts.for_mapping(inside.proto, live.tcp_flags_out, live.tcp_flags_in);
            rows.push(Session {
                proto: proto_name(inside.proto).to_string(),
                inside: format!("{}:{}", inside.addr(), inside.port()),
                external: format!("{}:{}", entry.external.addr(), entry.external.port()),
                state: session_state(inside.proto, live.tcp_flags_out, live.tcp_flags_in).to_string(),
                idle_s: now.saturating_sub(live.last_seen_ns) / 1_000_000_000,
                timeout_s: timeout.as_secs(),
            });
        }
        rows.sort_by(|a, b| a.idle_s.cmp(&b.idle_s).then_with(|| a.inside.cmp(&b.inside)));
        Ok(rows)
    }

    pub fn stats(&self) -> Result<Stats> {
        let c = self.counters;
        let counter = |name: &str, value| Counter { name: name.to_string(), value };
        Ok(Stats {
            datapath: self.datapath.counters()?.into_iter().map(|(r, v)| counter(r.name(), v)).collect(),
            daemon: vec![
                counter("sessions", self.sessions.len() as u64),
                counter("mappings_created", c.mappings_created),
                counter("mappings_expired", c.mappings_expired),
                counter("refused_no_port", c.refused_no_port),
                counter("refused_map_full", c.refused_map_full),
                counter("refused_quota", c.refused_quota),
                counter("refusals_notified", c.refusals_notified),
                counter("first_packets_sent", c.first_packets_sent),
                counter("claimed_in_datapath", c.claimed_in_datapath),
                counter("sent_through_kernel", c.sent_through_kernel),
                counter("handoff_errors", c.handoff_errors),
                counter("fragments_parked", c.fragments_parked),
                counter("fragments_sent", c.fragments_sent),
                counter("fragments_expired", c.fragments_expired),
                counter("fragments_dropped_full", c.fragments_dropped_full),
                counter("fragments_waiting", self.park.fragments() as u64),
            ],
        })
    }
}

/// A live session as the daemon keeps it: where the inside endpoint is
/// mapped to, and its slot in the LIVENESS array.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionEntry {
    pub external: Endpoint,
    pub slot: u32,
    /// `coarse_now_ns` when the mapping was made (for the mapping log).
    pub created_ns: u64,
}

/// inside endpoint -> session. foldhash: the aging scan walks every session
/// every second, and SipHash would be most of its cost.
pub type SessionTable = HashMap<Endpoint, SessionEntry, foldhash::fast::RandomState>;

/// The sessions idle past their timeout at `now`. Reads each session's
/// liveness in place (the LIVENESS array is mapped into this process): no
/// syscall per session.
pub fn expired_sessions(datapath: &Datapath, sessions: &SessionTable, timeouts: &Timeouts, now: u64) -> Result<Vec<Endpoint>> {
    let mut expired = Vec::new();
    for (inside, entry) in sessions {
        let live = datapath.liveness(entry.slot)?;
        let timeout = timeouts.for_mapping(inside.proto, live.tcp_flags_out, live.tcp_flags_in);
        // The datapath stamps with the clock natd published, up to one tick
        // behind the packet: wait one tick more, so a session never expires
        // before its timeout (it may go up to two ticks after).
        if now.saturating_sub(live.last_seen_ns) > timeout.as_nanos() as u64 + CLOCK_TICK_NS {
            expired.push(*inside);
        }
    }
    Ok(expired)
}

/// Session slots of the LIVENESS array: handed out once, reused after release.
#[derive(Default)]
pub struct SlotPool {
    free: Vec<u32>,
    next_unused: u32,
}

impl SlotPool {
    pub fn take(&mut self) -> Option<u32> {
        self.free.pop().or_else(|| {
            (self.next_unused < MAX_SESSIONS).then(|| {
                self.next_unused += 1;
                self.next_unused - 1
            })
        })
    }

    pub fn give_back(&mut self, slot: u32) {
        self.free.push(slot);
    }
}

pub const fn proto_name(p: u8) -> &'static str {
    match p {
        proto::TCP => "tcp",
        proto::UDP => "udp",
        proto::ICMP => "icmp",
        _ => "other",
    }
}

/// What `natd sessions` shows as the state, from the TCP flags seen each way.
pub fn session_state(proto_nr: u8, flags_out: u8, flags_in: u8) -> &'static str {
    if proto_nr != proto::TCP {
        return "active";
    }
    let seen = flags_out | flags_in;
    if seen & tcp_flags::RST != 0 {
        "reset"
    } else if seen & tcp_flags::FIN != 0 {
        "closing"
    } else if flags_out & flags_in & tcp_flags::ACK != 0 {
        "established"
    } else {
        "opening"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 5382 REQ-5 / RFC 7857: separate opening and closing timers;
    /// established once both sides have ACKed; FIN or RST: closing.
    #[test]
    fn tcp_has_opening_established_and_closing_timers() {
        let t = Timeouts::default();
        let (ack, fin, syn) = (tcp_flags::ACK, tcp_flags::FIN, tcp_flags::SYN);
        let t = Timeouts { tcp_opening: Duration::from_secs(75), tcp_closing: Duration::from_secs(240), ..t };
        assert_eq!(t.for_mapping(proto::TCP, syn, 0), t.tcp_opening);
        assert_eq!(t.for_mapping(proto::TCP, syn, syn), t.tcp_opening, "simultaneous open, not yet ACKed");
        assert_eq!(t.for_mapping(proto::TCP, syn | ack, syn | ack), t.tcp_established);
        assert_eq!(t.for_mapping(proto::TCP, ack | fin, ack), t.tcp_closing);
        assert_eq!(t.for_mapping(proto::TCP, syn | ack, syn | ack | tcp_flags::RST), t.tcp_closing, "RST: held 4 min (RFC 7857)");
        assert_eq!(t.for_mapping(proto::UDP, 0, 0), t.udp);
        assert_eq!(t.for_mapping(proto::ICMP, 0, 0), t.icmp);
    }

    #[test]
    fn session_slots_are_reused_and_run_out() {
        let mut pool = SlotPool::default();
        assert_eq!((pool.take(), pool.take()), (Some(0), Some(1)));
        pool.give_back(0);
        assert_eq!(pool.take(), Some(0));
        pool.next_unused = MAX_SESSIONS;
        assert_eq!(pool.take(), None, "past MAX_SESSIONS");
    }

    /// RFC 7857: the TCP state `natd sessions` shows.
    #[test]
    fn session_states_follow_the_flags_seen() {
        let (ack, fin, syn, rst) = (tcp_flags::ACK, tcp_flags::FIN, tcp_flags::SYN, tcp_flags::RST);
        assert_eq!(session_state(proto::TCP, syn, 0), "opening");
        assert_eq!(session_state(proto::TCP, syn | ack, syn | ack), "established");
        assert_eq!(session_state(proto::TCP, syn | ack | fin, syn | ack), "closing");
        assert_eq!(session_state(proto::TCP, syn, rst | ack), "reset");
        assert_eq!(session_state(proto::UDP, 0, 0), "active");
    }
}
