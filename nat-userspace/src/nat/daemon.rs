//! The daemon: the thin owner of natd's state that wires the jobs together.
//! Each job is a module of its own: the ring's events (`events`), the port
//! space and setting mappings up (`ports`), the sessions and their aging
//! (`sessions`), first packets (`first_packet`), parked fragments (`frag`),
//! the per-host quota and refusal messages (`quota`), the mapping log
//! (`maplog`), the inbound forwards and their health (`forwards`), the
//! IPsec ESP SAs learned from their packets (`esp`); `views`
//! answers status, sessions, stats and forwards from it.

use std::{net::Ipv4Addr, time::Instant};

use anyhow::{Context as _, Result, anyhow};
use nat_common::{
    ClaimEvent, Endpoint, MissEvent, frag_dir,
    icmp::ICMP_ADMIN_PROHIBITED,
    pool_index, proto,
};
use tokio::sync::mpsc;

use crate::{
    datapath::Datapath,
    nat::{
        counters::DaemonCounters,
        esp::{self, EspSas, Inbound, Outbound, SaKey},
        events::RingEvent,
        first_packet::{KernelSender, Sent, send_first_packet},
        forwards::Forwards,
        frag::Fragments,
        maplog::MappingLog,
        no_server::NoServerAnswers,
        ports::{HeldPort, Ports, Refusal, SetUp},
        run::Run,
        quota::{HostQuota, RefusalNotices},
        probe::CheckResult,
        sessions::{SessionTable, coarse_now_ns, expired_sessions},
    },
    config::Forward,
    packet::{Ipv4, Side, destination_unreachable, translate_address},
};

pub struct Daemon {
    pub datapath: Datapath,
    pub run: Run,
    pub ports: Ports,
    /// The dynamic sessions, by slot (the maps hold the rest of them).
    pub sessions: SessionTable,
    sender: KernelSender,
    quota: HostQuota,
    notices: RefusalNotices,
    pub fragments: Fragments,
    log: MappingLog,
    pub counters: DaemonCounters,
    pub forwards: Forwards,
    no_server_answers: NoServerAnswers,
    /// The ESP SAs natd learned, and the packets it holds for them.
    pub esp: EspSas,
}

impl Daemon {
    /// `checks`: where the forwards' health checkers send their results.
    /// `adopted`: the datapath was adopted from a previous natd, with the
    /// ports it held back; its state is taken over before anything is queued.
    pub fn new(datapath: Datapath, run: Run, checks: mpsc::Sender<CheckResult>, adopted: Option<Vec<HeldPort>>) -> Result<Self> {
        let ports = Ports::new(&run.settings, &run.env, datapath.session_capacity())?;
        let sessions = SessionTable::new(datapath.session_capacity(), &run.env.external_ips, run.settings.log_mappings);
        let mut daemon = Self {
            datapath,
            ports,
            quota: HostQuota::new(run.settings.ports_per_host),
            log: MappingLog::new(run.settings.log_mappings, &run.settings.mapping_log)?,
            run,
            sessions,
            sender: KernelSender::new()?,
            notices: RefusalNotices::default(),
            fragments: Fragments::default(),
            counters: DaemonCounters::default(),
            forwards: Forwards::new(checks),
            no_server_answers: NoServerAnswers::default(),
            esp: EspSas::default(),
        };
        let adopting = adopted.is_some();
        if let Some(held) = adopted {
            let adoption = daemon.adopt(&held)?;
            tracing::info!("{adoption}");
            let up = daemon.datapath.backends_up()?;
            daemon.forwards.adopt_health(up);
        }
        daemon.refill_free_queues();
        let forwards = daemon.run.settings.datapath_forwards();
        for change in daemon.apply_forwards(&forwards)? {
            tracing::info!("{change}");
        }
        if adopting {
            // The same settings install the same forwards at the same
            // indexes, so established forwarded flows go on; what the
            // previous natd's settings had beyond them goes.
            let statics = Forwards::static_endpoints(&forwards, &daemon.run.env.external_ips);
            let pruned = daemon.datapath.prune_forwards(&daemon.forwards.installed_ports(), &statics)?;
            if pruned > 0 {
                tracing::info!("removed {pruned} forward ports and static mappings the previous natd's settings had and these do not");
            }
        }
        Ok(daemon)
    }

    /// Takes over the state of an adopted datapath: its sessions (and their
    /// ports, slots and quota counts), the ports the previous natd held
    /// back. The free ports it queued are taken back first, so that the
    /// datapath claims only ports this natd queues; a claim made meanwhile
    /// is in OUTBOUND or still in the ring, and `claimed` takes it once.
    fn adopt(&mut self, held: &[HeldPort]) -> Result<String> {
        let drained = self.datapath.drain_free_queues()?;
        let mut live = Vec::new();
        for entry in self.datapath.outbound()?.iter() {
            let (inside, mapping) = entry.context("reading OUTBOUND")?;
            // Forwards' static mappings are the forwards' (re-applied from the settings).
            if mapping.flags & nat_common::forward::mapping_flags::FORWARD == 0 {
                live.push((inside, mapping));
            }
        }
        // In slot order: `SlotPool::adopt` is then O(1) each.
        live.sort_unstable_by_key(|(_, mapping)| mapping.session);
        let now = coarse_now_ns();
        for (inside, mapping) in &live {
            let external = mapping.target(inside.proto);
            self.ports.adopt(&external, mapping.session);
            // `Datapath::set_config` removed the sessions of addresses that
            // left the pool: every one left is the pool's.
            self.sessions.insert(mapping.session, external, now).with_context(|| format!("adopting the session of {}:{}", inside.addr(), inside.port()))?;
        }
        let (esp_out, esp_in) = self.datapath.esp_sas()?;
        for (_, target) in &esp_out {
            self.ports.adopt_slot(target.session);
        }
        self.esp.adopt(&esp_out, &esp_in, now);
        let awaited: Vec<_> = self.esp.awaited().collect();
        for (external, peer) in awaited {
            self.datapath.set_esp_awaited(esp::awaited_key(external, peer), true)?;
        }
        self.ports.adopt_held(held);
        self.quota.adopt(self.datapath.host_returns()?);
        Ok(format!(
            "adopted the serving datapath: {} sessions, {} ESP SAs, {} ports held back before reuse; {drained} queued free ports taken back",
            live.len(),
            esp_out.len(),
            held.len()
        ))
    }

    /// Makes the datapath serve `wanted` (at start, and on a reload). A
    /// dynamic mapping a server holds on its forwarded port goes first: the
    /// port is the forward's from now on.
    pub fn apply_forwards(&mut self, wanted: &[Forward]) -> Result<Vec<String>> {
        let now = coarse_now_ns();
        for server in Forwards::static_endpoints(wanted, &self.run.env.external_ips) {
            if let Some(slot) = self.session_of(&server)? {
                self.remove_session(slot, now)?;
            }
        }
        self.forwards.apply(&mut self.datapath, wanted, &self.run.env.external_ips, Instant::now())
    }

    /// A reload's settings that change how natd allocates and logs:
    /// `ports_per_host`, `port_parity`, `port_class`, `log_mappings` and
    /// `mapping_log` (the datapath's side of parity and class is its
    /// CONFIG, which the reload writes; timeouts are read
    /// at each aging scan, so they apply to existing sessions from the next
    /// one).
    pub fn apply_live_settings(&mut self, settings: &crate::config::Settings) -> Result<()> {
        self.quota.set_limit(settings.ports_per_host);
        self.sessions.keep_creation_times(settings.log_mappings);
        self.ports.set_parity_and_class(settings.port_parity, settings.port_class);
        self.log.reconfigure(settings.log_mappings, &settings.mapping_log)
    }

    /// Mapping log lines a file or syslog did not take.
    pub fn mapping_log_lost(&self) -> u64 {
        self.log.lost
    }

    /// Writes out the mapping log's buffered lines (each aging tick, and on
    /// the way out).
    pub fn flush_mapping_log(&mut self) {
        self.log.flush();
    }

    /// One active health check's result.
    pub fn check_result(&mut self, result: CheckResult) {
        if let Err(e) = self.forwards.check_result(&mut self.datapath, result) {
            tracing::warn!("applying a health check result: {e:#}");
        }
    }

    /// Reads the forwards' passive health signals (every `SIGNALS_POLL`).
    pub fn poll_forwards(&mut self) {
        if let Err(e) = self.forwards.poll(&mut self.datapath, Instant::now()) {
            tracing::warn!("reading the forwards' passive signals: {e:#}");
        }
    }

    /// Removes the forwarded flows idle past their timeout (every
    /// `FLOW_AGING`).
    pub fn age_forwarded_flows(&mut self) -> Result<()> {
        let removed = self.forwards.age_flows(&mut self.datapath, &self.run.settings.timeouts, coarse_now_ns())?;
        self.counters.forwarded_flows_expired += removed as u64;
        Ok(())
    }

    /// One item of the ring.
    pub fn handle_event(&mut self, item: &[u8]) {
        let result = RingEvent::decode(item).and_then(|event| match event {
            RingEvent::Claimed(claim) => {
                self.claimed(&claim);
                Ok(())
            }
            RingEvent::NewFlow(event) => self.new_flow(&event),
            RingEvent::NoNeighbour(event) => {
                let packet = Ipv4::of_event(&event)?;
                self.sender.send_packet(packet.datagram()).map(|()| self.counters.sent_through_kernel += 1)
            }
            RingEvent::Fragment(event, dir) => self.fragments.later_fragment(&mut self.datapath, &self.sender, &mut self.counters, &event, dir),
            RingEvent::FragmentTranslated(event) => {
                self.fragments.release(&mut self.datapath, &self.sender, &mut self.counters, &event.key, event.addr_be)
            }
            RingEvent::NoServer(event) => self.no_server(&event),
            RingEvent::Esp(event) => self.esp_packet(&event),
            RingEvent::TooBig(event) => {
                let packet = Ipv4::of_event(&event)?;
                self.sender.send_cut(packet.datagram(), event.mtu)
            }
        });
        self.counters.packets_cut = self.sender.packets_cut();
        if let Err(e) = result {
            self.counters.handoff_errors += 1;
            tracing::warn!("{e:#}");
        }
    }

    /// Keeps the datapath's free-port queues filled.
    pub fn refill_free_queues(&mut self) {
        if let Err(e) = self.ports.refill_free_queues(&mut self.datapath) {
            tracing::warn!("{e:#}");
        }
    }

    /// The datapath installed a mapping from a queued free port.
    fn claimed(&mut self, claim: &ClaimEvent) {
        // Made while no natd ran, and adopted from OUTBOUND already.
        if self.sessions.get(claim.session) == Some(claim.external) {
            return;
        }
        self.ports.claimed(claim);
        if let Err(e) = self.sessions.insert(claim.session, claim.external, coarse_now_ns()) {
            tracing::warn!("the datapath's claim for {}:{}: {e:#}", claim.inside.addr(), claim.inside.port());
            return;
        }
        self.log.mapping("created", &claim.inside, &claim.external, None);
        self.counters.mappings_created += 1;
        self.counters.claimed_in_datapath += 1;
    }

    /// A new flow the datapath could not claim a port for: set it up (unless
    /// an earlier packet of it did), then send its packet on.
    fn new_flow(&mut self, event: &MissEvent) -> Result<()> {
        let packet = Ipv4::of_event(event)?;
        let inside = packet.endpoint(Side::Source).ok_or_else(|| anyhow!("miss event without a TCP/UDP/SCTP/ICMP source"))?;
        // Several packets of one flow can miss before the mapping exists: the
        // later ones only need sending on (endpoint-independent mapping).
        let external = match self.datapath.outbound_mapping(&inside)? {
            Some(mapping) => mapping.target(inside.proto),
            None => match self.set_up(inside)? {
                Some(external) => external,
                None => return self.notify_refusal(packet.datagram()),
            },
        };
        // The first packet goes on now, not after the sender's retransmit timer.
        let first_fragment = packet.is_first_fragment().then(|| packet.frag_key(nat_common::frag_dir::OUT));
        let now = coarse_now_ns();
        let sent = send_first_packet(&mut self.datapath, &self.sender, &self.run, packet.datagram(), inside, external, now)?;
        if let Sent::Forwarded = sent {
            self.counters.first_packets_sent += 1;
        }
        // A first fragment: its later fragments follow it as the datapath's would.
        if let Some(key) = first_fragment {
            self.fragments.first_fragment_sent(&mut self.datapath, &self.sender, &mut self.counters, key, external.addr_be)?;
        }
        Ok(())
    }

    /// Sets a mapping up for `inside` and records it; `None` when refused
    /// (counted and logged).
    fn set_up(&mut self, inside: Endpoint) -> Result<Option<Endpoint>> {
        let now = coarse_now_ns();
        let refusal = match self.ports.set_up(&mut self.datapath, &mut self.quota, inside, now)? {
            SetUp::Made { external, slot } => {
                self.sessions.insert(slot, external, now)?;
                self.log.mapping("created", &inside, &external, None);
                self.counters.mappings_created += 1;
                return Ok(Some(external));
            }
            SetUp::Claimed(external) => return Ok(Some(external)),
            SetUp::Refused(refusal) => refusal,
        };
        let why = match refusal {
            Refusal::Quota => {
                self.counters.refused_quota += 1;
                format!("the host holds its {} {} ports (ports_per_host)", self.run.settings.ports_per_host, proto::name(inside.proto))
            }
            Refusal::NoPort => {
                self.counters.refused_no_port += 1;
                "every external port of this protocol is in use or held".to_string()
            }
            Refusal::MapFull(why) => {
                self.counters.refused_map_full += 1;
                why
            }
        };
        self.log.refusal(&inside, &why, self.counters.refused());
        Ok(None)
    }

    /// RFC 5508 REQ-8: a host whose new flow was refused hears so at once
    /// (Destination Unreachable, administratively prohibited), rate-limited.
    fn notify_refusal(&mut self, refused: &[u8]) -> Result<()> {
        let Some(lan_ip) = self.run.lan_ip else { return Ok(()) };
        let host = Ipv4::read(refused)?.src();
        if !self.notices.admit(host, Instant::now()) {
            return Ok(());
        }
        if let Some(message) = destination_unreachable(lan_ip, refused, ICMP_ADMIN_PROHIBITED) {
            self.sender.send_packet(&message)?;
            self.counters.refusals_notified += 1;
        }
        Ok(())
    }

    /// A new flow to a forward with no server up (`no_server`).
    fn no_server(&mut self, event: &MissEvent) -> Result<()> {
        let packet = Ipv4::of_event(event)?;
        match self.no_server_answers.answer(&packet, Instant::now()) {
            Some(answer) => {
                self.sender.send_packet(&answer)?;
                self.counters.no_server_answered += 1;
            }
            None => self.counters.no_server_unanswered += 1,
        }
        Ok(())
    }

    /// An ESP packet of no SA the datapath knows (`nat::esp`): one for an
    /// external address came from a peer, any other from an inside host
    /// (the datapath hands over only ESP bound across the gateway).
    fn esp_packet(&mut self, event: &MissEvent) -> Result<()> {
        let packet = Ipv4::of_event(event)?;
        let spi = esp::spi(&packet)?;
        let now = coarse_now_ns();
        if self.run.env.external_ips.contains(&packet.dst()) {
            return self.esp_inbound(packet.datagram(), packet.dst(), packet.src(), spi, now);
        }
        self.esp_outbound(packet.datagram(), packet.src(), packet.dst(), spi, now, now).map(|_| ())
    }

    /// An inside host's ESP packet: sent from its paired pool address on
    /// its SA, learned as a new SA, or held. Returns whether it was sent.
    fn esp_outbound(&mut self, datagram: &[u8], inside: Ipv4Addr, peer: Ipv4Addr, spi: u32, since_ns: u64, now: u64) -> Result<bool> {
        let pool = &self.run.env.external_ips;
        let paired = pool[pool_index(esp::be(inside), pool.len() as u32) as usize];
        let external = match self.esp.outbound(inside, peer, spi, paired, datagram, since_ns) {
            Outbound::Send(external) => external,
            Outbound::Learn(external) => {
                let Some(slot) = self.ports.take_slot() else {
                    self.esp.counters.refused += 1;
                    tracing::warn!("ESP SA 0x{spi:08x} from {inside} to {peer} refused: every session slot is in use");
                    return Ok(false);
                };
                let key = SaKey { local: inside, peer, spi };
                if let Err(e) = self.datapath.insert_esp_out(key.datapath(), esp::target(external, slot), now) {
                    self.ports.give_back_slot(slot);
                    self.esp.counters.refused += 1;
                    return Err(e.context(format!("installing the ESP SA 0x{spi:08x} from {inside} to {peer}")));
                }
                self.esp.learned(inside, peer, spi, external, slot, now);
                // Before the packet leaves: the peer's answer must reach natd.
                self.sync_awaited(external, peer)?;
                external
            }
            Outbound::Held | Outbound::Dropped | Outbound::Refused => return Ok(false),
        };
        self.send_esp(datagram, Side::Source, external, frag_dir::OUT)?;
        Ok(true)
    }

    /// A peer's ESP packet to an external address: sent to the host its SA
    /// is bound to; the first of a new SA is bound to the host whose SA to
    /// the peer is the unanswered one, and the packets held behind that SA
    /// are tried again; with none unanswered it is dropped (counted).
    fn esp_inbound(&mut self, datagram: &[u8], external: Ipv4Addr, peer: Ipv4Addr, spi: u32, now: u64) -> Result<()> {
        let inside = match self.esp.inbound(external, peer, spi) {
            Inbound::Send(inside) => inside,
            Inbound::Bind { inside, slot } => {
                let key = SaKey { local: external, peer, spi };
                self.datapath
                    .insert_esp_in(key.datapath(), esp::target(inside, slot))
                    .with_context(|| format!("binding the ESP SA 0x{spi:08x} from {peer} to {inside}"))?;
                let released = self.esp.bound(external, peer, spi);
                self.sync_awaited(external, peer)?;
                self.send_esp(datagram, Side::Destination, inside, frag_dir::IN)?;
                for held in released {
                    match self.esp_outbound(&held.packet, held.inside, held.peer, held.spi, held.since_ns, now) {
                        Ok(true) => self.esp.held_sent(),
                        Ok(false) => {}
                        Err(e) => tracing::warn!("{e:#}"),
                    }
                }
                return Ok(());
            }
            Inbound::Unknown => return Ok(()),
        };
        self.send_esp(datagram, Side::Destination, inside, frag_dir::IN)
    }

    /// Tells the datapath whether an SA from `external` to `peer` awaits
    /// its first answer (`ESP_AWAITED`).
    fn sync_awaited(&mut self, external: Ipv4Addr, peer: Ipv4Addr) -> Result<()> {
        self.datapath.set_esp_awaited(esp::awaited_key(external, peer), self.esp.awaits_answer(external, peer))
    }

    /// Sends an ESP packet with `side`'s address rewritten to `to`; a first
    /// fragment's later fragments follow it as the datapath's would.
    fn send_esp(&mut self, datagram: &[u8], side: Side, to: Ipv4Addr, dir: u8) -> Result<()> {
        let read = Ipv4::read(datagram)?;
        let first_fragment = read.is_first_fragment().then(|| read.frag_key(dir));
        let mut packet = datagram.to_vec();
        translate_address(&mut packet, side, to)?;
        self.sender.send_packet(&packet)?;
        if let Some(key) = first_fragment {
            self.fragments.first_fragment_sent(&mut self.datapath, &self.sender, &mut self.counters, key, esp::be(to))?;
        }
        Ok(())
    }

    /// Once a tick: publishes the clock, returns held ports, refills the
    /// queues, ages parked fragments, and removes every mapping idle past
    /// its timeout, both directions together, its port held before reuse.
    pub fn age(&mut self) -> Result<()> {
        let now = coarse_now_ns();
        self.datapath.set_clock(now)?;
        self.ports.reclaim(now);
        self.refill_free_queues();
        self.fragments.age(&mut self.datapath, &self.sender, &mut self.counters, now)?;
        let expired = expired_sessions(&self.datapath, &self.sessions, &self.run.settings.timeouts, now)?;
        for slot in expired {
            // One session that cannot be removed does not keep the others.
            match self.remove_session(slot, now) {
                Ok(()) => self.counters.mappings_expired += 1,
                Err(e) => tracing::warn!("{e:#}"),
            }
        }
        self.age_esp(now)
    }

    /// Drops the ESP packets held too long, and removes the SA pairs idle
    /// past `timeouts.esp`, both directions, their slots free.
    fn age_esp(&mut self, now: u64) -> Result<()> {
        self.esp.expire_held(now);
        let datapath = &self.datapath;
        let removed = self.esp.expire(self.run.settings.timeouts.esp, now, |slot| Ok(datapath.liveness(slot)?.last_seen_ns))?;
        for sa in removed {
            self.datapath.remove_esp_out(&sa.out.datapath())?;
            for key in &sa.inbound {
                self.datapath.remove_esp_in(&key.datapath())?;
            }
            self.ports.give_back_slot(sa.slot);
            self.sync_awaited(sa.external, sa.out.peer)?;
        }
        Ok(())
    }

    /// The slot of `inside`'s dynamic session, if it has one (a lookup in
    /// `OUTBOUND`: natd keeps no index by inside endpoint).
    fn session_of(&self, inside: &Endpoint) -> Result<Option<u32>> {
        let Some(mapping) = self.datapath.outbound_mapping(inside)? else { return Ok(None) };
        Ok((self.sessions.get(mapping.session) == Some(mapping.target(inside.proto))).then_some(mapping.session))
    }

    /// Removes the dynamic mapping of session `slot`, both directions, its
    /// port held before reuse.
    fn remove_session(&mut self, slot: u32, now: u64) -> Result<()> {
        let Some((external, lifetime)) = self.sessions.remove(slot, now) else { return Ok(()) };
        let Some(inside) = self.datapath.session_inside(slot, &external)? else {
            // The entry that names the inside endpoint is gone: the mapping
            // cannot be found to remove. The slot and port stay out of use
            // (given again, they would be shared with whatever is left).
            return Err(anyhow!("session slot {slot} ({}:{}): its INBOUND entry does not name it; slot and port left unused", external.addr(), external.port()));
        };
        self.datapath.remove_pair(inside).with_context(|| format!("removing the mapping of {}:{}", inside.addr(), inside.port()))?;
        self.ports.release(&external, slot, now);
        self.quota.released(&mut self.datapath, &inside)?;
        self.log.mapping("removed", &inside, &external, lifetime);
        Ok(())
    }
}
