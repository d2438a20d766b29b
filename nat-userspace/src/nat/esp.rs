//! IPsec ESP SAs through the NAT (RFC 4303; RFC 3715 §2.1 on why most NATs
//! let one inside host use ESP at a time): natd learns each SA from the
//! packets the datapath hands it (`miss_kind::ESP`) and installs it in
//! `ESP_OUT` / `ESP_IN`, so the SA's next packets stay in XDP.
//!
//! ESP has no ports. An inside host's outbound SA shows its SPI on its
//! first packet: (inside host, peer, SPI) names it, and it leaves from the
//! host's paired pool address (`pool_index`, as every mapping of the host).
//! The peer's inbound SPI shows only on the peer's first packet, which
//! names the external address and the peer but not the host. The rule
//! that binds it, deterministically: at most one outbound SA per (external
//! address, peer) is unanswered at a time, and the peer's first packet on
//! an unknown SPI answers that one. A second host's first packet to the
//! same peer on the same address is held (up to `HOLD_MAX`, at most
//! `HOLD_QUEUE_MAX` packets) until the first is answered, then learned in
//! turn; past the time it is dropped and counted. Several peers, or hosts
//! on other pool addresses, wait for nothing: each (external address, peer)
//! has its own unanswered SA. A rekey is a new SA, learned the same way;
//! the old pair ages out.
//!
//! What the rule cannot know: a peer that sends first on a new SA (before
//! the host it negotiated it with has sent on its own) while another
//! host's SA to it is unanswered is bound to that other host; and a host
//! whose SA is never answered keeps the other hosts' first SAs to that
//! peer waiting (and dropped after `HOLD_MAX`) until its SA ages out. NAT-T
//! (ESP in UDP 4500, RFC 3948) has none of this: its ports tell the hosts
//! apart, and it is the better path wherever the peers support it.
//!
//! This module is the rule and the table, with no kernel: the daemon
//! installs what it says in the datapath and sends the packets.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    net::Ipv4Addr,
    time::Duration,
};

use anyhow::{Result, ensure};
use nat_common::esp::{ESP_HEADER_LEN, EspKey, EspTarget, SPI_AT};

use crate::packet::Ipv4;

/// How long a packet of a second host's first SA to a peer is held while
/// another host's SA to that peer (on the same external address) is
/// unanswered. An IKE exchange that has just set SAs up is answered within
/// a round trip; 2 s covers a slow peer and stays below the seconds a
/// sender's own retransmission (IKE, or the protocol inside the tunnel)
/// waits, so a packet dropped here costs what a lost packet costs.
pub const HOLD_MAX: Duration = Duration::from_secs(2);

/// Packets held at once, every (external address, peer) together: held
/// packets are copies in natd's memory, and a host that floods a peer
/// while it waits must not grow them without bound.
pub const HOLD_QUEUE_MAX: usize = 256;

/// Outbound SAs one inside host may have installed at once: a host brings
/// up one SA per child SA of each tunnel, two for a while during a rekey,
/// so 64 is some 30 tunnels. Past it a new SA is refused and counted: one
/// host sending on random SPIs cannot fill `ESP_OUT` (`MAX_ESP_SAS`) or
/// the session slots for every other host.
pub const SAS_PER_HOST_MAX: usize = 64;

/// An SA as natd keys it: the local address (the inside host's for an
/// outbound SA, the external one for an inbound SA), the peer, the SPI
/// (host order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SaKey {
    pub local: Ipv4Addr,
    pub peer: Ipv4Addr,
    pub spi: u32,
}

impl SaKey {
    /// As the ESP maps key it.
    pub fn datapath(&self) -> EspKey {
        EspKey { local_be: be(self.local), peer_be: be(self.peer), spi_be: self.spi.to_be() }
    }

    pub fn of_datapath(key: &EspKey) -> Self {
        Self { local: from_be(key.local_be), peer: from_be(key.peer_be), spi: u32::from_be(key.spi_be) }
    }
}

/// An address in network order, as the maps hold it.
pub fn be(addr: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(addr.octets())
}

fn from_be(addr_be: u32) -> Ipv4Addr {
    Ipv4Addr::from(addr_be.to_ne_bytes())
}

/// The `ESP_AWAITED` key of (external address, peer).
pub fn awaited_key(external: Ipv4Addr, peer: Ipv4Addr) -> EspKey {
    SaKey { local: external, peer, spi: 0 }.datapath()
}

/// The map value for an SA whose local address becomes `addr`.
pub fn target(addr: Ipv4Addr, slot: u32) -> EspTarget {
    EspTarget { addr_be: be(addr), session: slot }
}

/// The SPI of an ESP packet (RFC 4303 §2), host order.
pub fn spi(packet: &Ipv4) -> Result<u32> {
    let payload = packet.payload();
    ensure!(payload.len() >= ESP_HEADER_LEN, "an ESP packet of {} bytes after its IPv4 header, short of the SPI and sequence number", payload.len());
    Ok(u32::from_be_bytes(payload[SPI_AT..SPI_AT + 4].try_into().unwrap()))
}

/// An outbound SA natd installed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutSa {
    pub external: Ipv4Addr,
    /// The LIVENESS slot of the SA pair.
    pub slot: u32,
    /// The peer's SPI bound to it, once answered.
    pub spi_in: Option<u32>,
    pub created_ns: u64,
}

/// An inbound SA bound to an inside host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InSa {
    pub inside: Ipv4Addr,
    /// The slot of the outbound SA it answered.
    pub slot: u32,
}

/// The one unanswered outbound SA of an (external address, peer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Unanswered {
    inside: Ipv4Addr,
    spi_out: u32,
    slot: u32,
}

/// A packet held while another host's SA to its peer is unanswered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    pub inside: Ipv4Addr,
    pub peer: Ipv4Addr,
    pub spi: u32,
    pub external: Ipv4Addr,
    /// The IPv4 packet, untranslated.
    pub packet: Vec<u8>,
    /// When it came (natd's clock, ns): held for `HOLD_MAX` from then.
    pub since_ns: u64,
}

/// What to do with an outbound ESP packet of no SA the datapath knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outbound {
    /// Its SA is installed (the packet missed before it was): send it from
    /// this external address.
    Send(Ipv4Addr),
    /// A new SA: install it from this external address with a slot of its
    /// own (`learned`), then send the packet.
    Learn(Ipv4Addr),
    /// Another host's SA to this peer on this address is unanswered: held.
    Held,
    /// The hold queue is full: dropped (counted).
    Dropped,
    /// The host has `SAS_PER_HOST_MAX` SAs: refused (counted).
    Refused,
}

/// What to do with an inbound ESP packet of no SA the datapath knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inbound {
    /// Its SA is bound (the packet missed before it was): send it to this host.
    Send(Ipv4Addr),
    /// The peer's first packet on a new SA, which answers this host's
    /// unanswered SA: bind it to the host and slot (`bound`), then send it.
    Bind { inside: Ipv4Addr, slot: u32 },
    /// No SA to this peer is unanswered on this address: dropped (counted).
    Unknown,
}

/// Counters for `natd stats`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EspCounters {
    /// Outbound SAs installed.
    pub learned: u64,
    /// Inbound SAs bound to the host whose SA they answered.
    pub bound: u64,
    /// SA pairs removed idle.
    pub expired: u64,
    /// Packets held while another host's SA to their peer was unanswered.
    pub held: u64,
    /// Held packets sent on once that SA was answered.
    pub held_sent: u64,
    /// Held packets dropped after `HOLD_MAX`.
    pub held_expired: u64,
    /// Packets dropped because the hold queue was full.
    pub held_dropped_full: u64,
    /// Inbound packets of no SA with no unanswered SA to bind them to.
    pub unknown_dropped: u64,
    /// New SAs refused: the host's `SAS_PER_HOST_MAX`, no session slot, or
    /// the map full.
    pub refused: u64,
}

impl EspCounters {
    /// Every counter by its `natd stats` name.
    pub fn named(&self) -> Vec<crate::control::Counter> {
        let counter = |name: &str, value| crate::control::Counter { name: name.to_string(), value };
        vec![
            counter("esp_sas_learned", self.learned),
            counter("esp_sas_bound", self.bound),
            counter("esp_sas_expired", self.expired),
            counter("esp_sas_refused", self.refused),
            counter("esp_held", self.held),
            counter("esp_held_sent", self.held_sent),
            counter("esp_held_expired", self.held_expired),
            counter("esp_held_dropped_full", self.held_dropped_full),
            counter("esp_unknown_dropped", self.unknown_dropped),
        ]
    }
}

/// One SA pair as `natd sessions` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SaView {
    pub inside: Ipv4Addr,
    pub external: Ipv4Addr,
    pub peer: Ipv4Addr,
    pub spi_out: u32,
    pub spi_in: Option<u32>,
    pub slot: u32,
}

/// What aging removes of one idle SA pair, for the datapath; the slot goes
/// back to the pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Removed {
    pub out: SaKey,
    pub external: Ipv4Addr,
    pub inbound: Vec<SaKey>,
    pub slot: u32,
}

/// The SAs natd installed, the unanswered one of each (external address,
/// peer), and the packets held for them.
#[derive(Default)]
pub struct EspSas {
    out: BTreeMap<SaKey, OutSa>,
    inbound: BTreeMap<SaKey, InSa>,
    unanswered: HashMap<(Ipv4Addr, Ipv4Addr), Unanswered>,
    held: VecDeque<Held>,
    pub counters: EspCounters,
}

impl EspSas {
    /// An outbound packet of `inside` to `peer` on SPI `spi` that missed;
    /// `external` is the host's paired pool address. `since_ns`: when it
    /// came (now, or when a held packet came, as it is tried again).
    pub fn outbound(&mut self, inside: Ipv4Addr, peer: Ipv4Addr, spi: u32, external: Ipv4Addr, packet: &[u8], since_ns: u64) -> Outbound {
        if let Some(sa) = self.out.get(&SaKey { local: inside, peer, spi }) {
            return Outbound::Send(sa.external);
        }
        match self.unanswered.get(&(external, peer)) {
            Some(unanswered) if unanswered.inside != inside => {
                if self.held.len() >= HOLD_QUEUE_MAX {
                    self.counters.held_dropped_full += 1;
                    return Outbound::Dropped;
                }
                self.held.push_back(Held { inside, peer, spi, external, packet: packet.to_vec(), since_ns });
                self.counters.held += 1;
                Outbound::Held
            }
            // None unanswered, or the host's own (its second SA to the
            // peer, or a rekey before the first was answered): the answer
            // goes to this host either way.
            _ if self.sas_of(inside) >= SAS_PER_HOST_MAX => {
                self.counters.refused += 1;
                Outbound::Refused
            }
            _ => Outbound::Learn(external),
        }
    }

    /// Outbound SAs `inside` has installed.
    fn sas_of(&self, inside: Ipv4Addr) -> usize {
        let first = SaKey { local: inside, peer: Ipv4Addr::UNSPECIFIED, spi: 0 };
        let last = SaKey { local: inside, peer: Ipv4Addr::BROADCAST, spi: u32::MAX };
        self.out.range(first..=last).count()
    }

    /// The daemon installed the outbound SA `Outbound::Learn` asked for,
    /// with `slot`. It is the unanswered SA of (external, peer) unless the
    /// host has one there already.
    pub fn learned(&mut self, inside: Ipv4Addr, peer: Ipv4Addr, spi: u32, external: Ipv4Addr, slot: u32, now_ns: u64) {
        self.out.insert(SaKey { local: inside, peer, spi }, OutSa { external, slot, spi_in: None, created_ns: now_ns });
        self.unanswered.entry((external, peer)).or_insert(Unanswered { inside, spi_out: spi, slot });
        self.counters.learned += 1;
    }

    /// An inbound packet from `peer` to `external` on SPI `spi` that missed.
    pub fn inbound(&mut self, external: Ipv4Addr, peer: Ipv4Addr, spi: u32) -> Inbound {
        if let Some(sa) = self.inbound.get(&SaKey { local: external, peer, spi }) {
            return Inbound::Send(sa.inside);
        }
        match self.unanswered.get(&(external, peer)) {
            Some(unanswered) => Inbound::Bind { inside: unanswered.inside, slot: unanswered.slot },
            None => {
                self.counters.unknown_dropped += 1;
                Inbound::Unknown
            }
        }
    }

    /// The daemon bound the inbound SA `Inbound::Bind` asked for: the
    /// unanswered SA of (external, peer) is answered. Returns the packets
    /// held for it, oldest first, to be tried again (`outbound`, with their
    /// `since_ns`): the first host's becomes the next unanswered SA.
    pub fn bound(&mut self, external: Ipv4Addr, peer: Ipv4Addr, spi: u32) -> Vec<Held> {
        let Some(answered) = self.unanswered.remove(&(external, peer)) else { return Vec::new() };
        self.inbound.insert(SaKey { local: external, peer, spi }, InSa { inside: answered.inside, slot: answered.slot });
        if let Some(sa) = self.out.get_mut(&SaKey { local: answered.inside, peer, spi: answered.spi_out }) {
            sa.spi_in = Some(spi);
        }
        self.counters.bound += 1;
        let (released, kept): (VecDeque<Held>, VecDeque<Held>) = self.held.drain(..).partition(|held| held.external == external && held.peer == peer);
        self.held = kept;
        released.into()
    }

    /// A held packet tried again went out (`Send` or `Learn`).
    pub fn held_sent(&mut self) {
        self.counters.held_sent += 1;
    }

    /// Drops the packets held longer than `HOLD_MAX`. Returns how many.
    pub fn expire_held(&mut self, now_ns: u64) -> usize {
        let before = self.held.len();
        let hold_ns = HOLD_MAX.as_nanos() as u64;
        self.held.retain(|held| now_ns.saturating_sub(held.since_ns) < hold_ns);
        let expired = before - self.held.len();
        self.counters.held_expired += expired as u64;
        expired
    }

    /// Whether an SA from `external` to `peer` awaits its first answer:
    /// the datapath hands the peer's packets on unknown SPIs to natd only
    /// then (`ESP_AWAITED`, keyed by `awaited_key`).
    pub fn awaits_answer(&self, external: Ipv4Addr, peer: Ipv4Addr) -> bool {
        self.unanswered.contains_key(&(external, peer))
    }

    /// Every (external address, peer) that awaits an answer.
    pub fn awaited(&self) -> impl Iterator<Item = (Ipv4Addr, Ipv4Addr)> + '_ {
        self.unanswered.keys().copied()
    }

    /// Packets held now.
    pub fn held_len(&self) -> usize {
        self.held.len()
    }

    /// The SA pairs idle past `timeout`: `last_seen(slot)` is when the
    /// datapath last stamped the pair's slot (either way). Removed from
    /// the table (the daemon removes them from the maps and frees the
    /// slots); an unanswered SA removed makes room for the next.
    pub fn expire(&mut self, timeout: Duration, now_ns: u64, mut last_seen: impl FnMut(u32) -> Result<u64>) -> Result<Vec<Removed>> {
        let timeout_ns = timeout.as_nanos() as u64;
        let mut idle = Vec::new();
        for (key, sa) in &self.out {
            let seen = last_seen(sa.slot)?.max(sa.created_ns);
            if now_ns.saturating_sub(seen) > timeout_ns {
                idle.push(*key);
            }
        }
        let removed: Vec<Removed> = idle.into_iter().filter_map(|key| self.remove(&key)).collect();
        self.counters.expired += removed.len() as u64;
        Ok(removed)
    }

    /// Removes an outbound SA and what shares its slot: the inbound SAs
    /// bound to it, and its claim as the unanswered SA.
    fn remove(&mut self, out: &SaKey) -> Option<Removed> {
        let sa = self.out.remove(out)?;
        let inbound: Vec<SaKey> = self.inbound.iter().filter(|(_, sa_in)| sa_in.slot == sa.slot).map(|(key, _)| *key).collect();
        for key in &inbound {
            self.inbound.remove(key);
        }
        self.unanswered.retain(|_, unanswered| unanswered.slot != sa.slot);
        Some(Removed { out: *out, external: sa.external, inbound, slot: sa.slot })
    }

    /// Takes over the SAs of an adopted datapath. An outbound SA no inbound
    /// one shares a slot with was unanswered: the lowest slot of each
    /// (external address, peer) is taken as the unanswered one.
    pub fn adopt(&mut self, out: &[(EspKey, EspTarget)], inbound: &[(EspKey, EspTarget)], now_ns: u64) {
        for (key, target) in inbound {
            self.inbound.insert(SaKey::of_datapath(key), InSa { inside: from_be(target.addr_be), slot: target.session });
        }
        let mut out: Vec<(SaKey, EspTarget)> = out.iter().map(|(key, target)| (SaKey::of_datapath(key), *target)).collect();
        out.sort_unstable_by_key(|(_, target)| target.session);
        for (key, target) in out {
            let external = from_be(target.addr_be);
            let spi_in = self.inbound.iter().find(|(_, sa)| sa.slot == target.session).map(|(key, _)| key.spi);
            if spi_in.is_none() {
                self.unanswered.entry((external, key.peer)).or_insert(Unanswered { inside: key.local, spi_out: key.spi, slot: target.session });
            }
            self.out.insert(key, OutSa { external, slot: target.session, spi_in, created_ns: now_ns });
        }
    }

    /// Every SA pair, by inside host, peer and SPI.
    pub fn views(&self) -> impl Iterator<Item = SaView> + '_ {
        self.out.iter().map(|(key, sa)| SaView { inside: key.local, external: sa.external, peer: key.peer, spi_out: key.spi, spi_in: sa.spi_in, slot: sa.slot })
    }

    /// Outbound SAs installed.
    pub fn len(&self) -> usize {
        self.out.len()
    }

    pub fn is_empty(&self) -> bool {
        self.out.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H1: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const H2: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
    const H3: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 3);
    const P: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
    const Q: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
    const E: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
    const F: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
    const S: u64 = 1_000_000_000;

    /// `outbound`, and `learned` with `slot` when it says Learn, as the daemon does.
    fn send(sas: &mut EspSas, inside: Ipv4Addr, peer: Ipv4Addr, spi: u32, external: Ipv4Addr, slot: u32, now: u64) -> Outbound {
        let outcome = sas.outbound(inside, peer, spi, external, &[inside.octets()[3]], now);
        if let Outbound::Learn(external) = outcome {
            sas.learned(inside, peer, spi, external, slot, now);
        }
        outcome
    }

    /// `inbound`, and `bound` when it says Bind; the released packets.
    fn answer(sas: &mut EspSas, external: Ipv4Addr, peer: Ipv4Addr, spi: u32) -> (Inbound, Vec<Held>) {
        let outcome = sas.inbound(external, peer, spi);
        let released = if let Inbound::Bind { .. } = outcome { sas.bound(external, peer, spi) } else { Vec::new() };
        (outcome, released)
    }

    #[test]
    fn a_first_sa_is_learned_and_the_peers_first_packet_answers_it() {
        let mut sas = EspSas::default();
        assert_eq!(send(&mut sas, H1, P, 0x100, E, 7, 0), Outbound::Learn(E));
        assert!(sas.awaits_answer(E, P) && !sas.awaits_answer(E, Q));
        assert_eq!(sas.outbound(H1, P, 0x100, E, &[], 0), Outbound::Send(E), "a later miss of the same SA is sent");
        assert_eq!(answer(&mut sas, E, P, 0x900), (Inbound::Bind { inside: H1, slot: 7 }, vec![]));
        assert_eq!(sas.inbound(E, P, 0x900), Inbound::Send(H1), "a later miss of the bound SA goes to its host");
        assert!(!sas.awaits_answer(E, P), "answered");
        let view = sas.views().next().unwrap();
        assert_eq!((view.spi_out, view.spi_in, view.slot), (0x100, Some(0x900), 7));
    }

    #[test]
    fn an_inbound_packet_with_nothing_unanswered_is_dropped() {
        let mut sas = EspSas::default();
        assert_eq!(sas.inbound(E, P, 0x900), Inbound::Unknown);
        send(&mut sas, H1, P, 0x100, E, 1, 0);
        answer(&mut sas, E, P, 0x900);
        assert_eq!(sas.inbound(E, P, 0x901), Inbound::Unknown, "answered already: a second unknown SPI is nobody's");
        assert_eq!(sas.inbound(F, P, 0x900), Inbound::Unknown, "another external address");
        assert_eq!(sas.counters.unknown_dropped, 3);
    }

    /// The rule: a second host's first SA to the same peer on the same
    /// address waits until the first is answered, then is learned in turn,
    /// and the next unknown SPI from the peer answers it.
    #[test]
    fn a_second_host_to_the_same_peer_is_held_until_the_first_is_answered() {
        let mut sas = EspSas::default();
        send(&mut sas, H1, P, 0x100, E, 1, 0);
        assert_eq!(send(&mut sas, H2, P, 0x200, E, 2, S / 10), Outbound::Held);
        assert_eq!(send(&mut sas, H2, P, 0x200, E, 2, S / 5), Outbound::Held, "its next packet too");
        assert_eq!(sas.held_len(), 2);
        let (outcome, released) = answer(&mut sas, E, P, 0x900);
        assert_eq!(outcome, Inbound::Bind { inside: H1, slot: 1 });
        assert_eq!(released.iter().map(|h| (h.inside, h.spi, h.since_ns)).collect::<Vec<_>>(), [(H2, 0x200, S / 10), (H2, 0x200, S / 5)], "oldest first");
        // The daemon tries them again: the first is learned, the second goes out on its SA.
        assert_eq!(send(&mut sas, H2, P, 0x200, E, 2, released[0].since_ns), Outbound::Learn(E));
        assert_eq!(send(&mut sas, H2, P, 0x200, E, 2, released[1].since_ns), Outbound::Send(E));
        assert_eq!(answer(&mut sas, E, P, 0x901).0, Inbound::Bind { inside: H2, slot: 2 });
        assert_eq!(sas.inbound(E, P, 0x900), Inbound::Send(H1));
        assert_eq!(sas.inbound(E, P, 0x901), Inbound::Send(H2));
    }

    /// Each (external address, peer) has its own unanswered SA: other peers,
    /// and hosts on other pool addresses, wait for nothing.
    #[test]
    fn other_peers_and_other_addresses_wait_for_nothing() {
        let mut sas = EspSas::default();
        send(&mut sas, H1, P, 0x100, E, 1, 0);
        assert_eq!(send(&mut sas, H2, Q, 0x200, E, 2, 0), Outbound::Learn(E), "another peer");
        assert_eq!(send(&mut sas, H3, P, 0x300, F, 3, 0), Outbound::Learn(F), "another pool address");
        assert_eq!(answer(&mut sas, E, Q, 0x902).0, Inbound::Bind { inside: H2, slot: 2 });
        assert_eq!(answer(&mut sas, F, P, 0x903).0, Inbound::Bind { inside: H3, slot: 3 });
        assert_eq!(answer(&mut sas, E, P, 0x901).0, Inbound::Bind { inside: H1, slot: 1 });
    }

    #[test]
    fn held_packets_are_dropped_after_the_hold_and_the_queue_is_bounded() {
        let mut sas = EspSas::default();
        send(&mut sas, H1, P, 0x100, E, 1, 0);
        send(&mut sas, H2, P, 0x200, E, 2, 0);
        assert_eq!(sas.expire_held(HOLD_MAX.as_nanos() as u64 - 1), 0, "within the hold");
        assert_eq!(sas.expire_held(HOLD_MAX.as_nanos() as u64), 1);
        assert_eq!(sas.counters.held_expired, 1);
        for _ in 0..HOLD_QUEUE_MAX {
            assert_eq!(send(&mut sas, H2, P, 0x200, E, 2, 5 * S), Outbound::Held);
        }
        assert_eq!(send(&mut sas, H2, P, 0x200, E, 2, 5 * S), Outbound::Dropped);
        assert_eq!(sas.counters.held_dropped_full, 1);
        assert!(answer(&mut sas, E, P, 0x900).1.len() == HOLD_QUEUE_MAX);
        assert_eq!(sas.held_len(), 0);
    }

    /// A rekey: the host's new SPI is learned as a new SA and the peer's
    /// next unknown SPI answers it; the old pair stays until it ages out.
    #[test]
    fn a_rekey_is_learned_like_a_new_sa() {
        let mut sas = EspSas::default();
        send(&mut sas, H1, P, 0x100, E, 1, 0);
        answer(&mut sas, E, P, 0x900);
        assert_eq!(send(&mut sas, H1, P, 0x101, E, 2, 10 * S), Outbound::Learn(E));
        assert_eq!(answer(&mut sas, E, P, 0x910).0, Inbound::Bind { inside: H1, slot: 2 });
        assert_eq!(sas.len(), 2);
        // The old pair idles past the timeout, the new one is in use.
        let removed = sas.expire(Duration::from_secs(300), 320 * S, |slot| Ok(if slot == 2 { 319 * S } else { 5 * S })).unwrap();
        assert_eq!(removed, [Removed { out: SaKey { local: H1, peer: P, spi: 0x100 }, external: E, inbound: vec![SaKey { local: E, peer: P, spi: 0x900 }], slot: 1 }]);
        assert_eq!(sas.inbound(E, P, 0x910), Inbound::Send(H1));
        assert_eq!(sas.counters.expired, 1);
    }

    /// A host's own second SA to a peer it is waiting on is not held: the
    /// answer goes to it whichever SA it answers.
    #[test]
    fn a_hosts_own_second_sa_is_not_held() {
        let mut sas = EspSas::default();
        send(&mut sas, H1, P, 0x100, E, 1, 0);
        assert_eq!(send(&mut sas, H1, P, 0x101, E, 2, 0), Outbound::Learn(E));
        assert_eq!(answer(&mut sas, E, P, 0x900).0, Inbound::Bind { inside: H1, slot: 1 }, "the first SA stays the unanswered one");
    }

    /// An unanswered SA that ages out makes room: the next host's first SA
    /// to that peer is learned at once.
    #[test]
    fn an_unanswered_sa_that_ages_out_makes_room() {
        let mut sas = EspSas::default();
        send(&mut sas, H1, P, 0x100, E, 1, 0);
        let removed = sas.expire(Duration::from_secs(300), 301 * S, |_| Ok(0)).unwrap();
        assert_eq!(removed, [Removed { out: SaKey { local: H1, peer: P, spi: 0x100 }, external: E, inbound: vec![], slot: 1 }]);
        assert!(!sas.awaits_answer(E, P), "nothing awaits an answer from the peer any more");
        assert_eq!(send(&mut sas, H2, P, 0x200, E, 2, 301 * S), Outbound::Learn(E));
        assert_eq!(sas.inbound(E, P, 0x900), Inbound::Bind { inside: H2, slot: 2 });
    }

    #[test]
    fn an_adopted_table_keeps_its_bindings_and_its_unanswered_sa() {
        let out = [
            (SaKey { local: H1, peer: P, spi: 0x100 }.datapath(), target(E, 1)),
            (SaKey { local: H2, peer: P, spi: 0x200 }.datapath(), target(E, 2)),
        ];
        let inbound = [(SaKey { local: E, peer: P, spi: 0x900 }.datapath(), target(H1, 1))];
        let mut sas = EspSas::default();
        sas.adopt(&out, &inbound, 0);
        assert_eq!(sas.inbound(E, P, 0x900), Inbound::Send(H1));
        assert_eq!(sas.inbound(E, P, 0x901), Inbound::Bind { inside: H2, slot: 2 });
        assert_eq!(sas.views().filter(|v| v.spi_in.is_some()).count(), 1);
    }

    /// One host cannot take every SA for itself: past its limit its new SAs
    /// are refused, another host's are not, and an SA it has still goes out.
    #[test]
    fn a_host_has_at_most_its_limit_of_sas() {
        let mut sas = EspSas::default();
        for spi in 0..SAS_PER_HOST_MAX as u32 {
            assert_eq!(send(&mut sas, H1, P, spi, E, spi, 0), Outbound::Learn(E));
            answer(&mut sas, E, P, 0x9000 + spi);
        }
        assert_eq!(send(&mut sas, H1, Q, 0x7777, E, 100, 0), Outbound::Refused);
        assert_eq!(sas.counters.refused, 1);
        assert_eq!(send(&mut sas, H1, P, 3, E, 101, 0), Outbound::Send(E), "an SA it has");
        assert_eq!(send(&mut sas, H2, P, 0x7777, E, 102, 0), Outbound::Learn(E), "another host");
    }

    #[test]
    fn the_spi_is_read_from_the_esp_header() {
        let mut ip = vec![0x45, 0, 0, 28, 0, 0, 0, 0, 64, 50, 0, 0, 10, 0, 0, 1, 198, 51, 100, 1];
        ip.extend_from_slice(&[0xc0, 0x01, 0x02, 0x03, 0, 0, 0, 1]);
        assert_eq!(spi(&Ipv4::read(&ip).unwrap()).unwrap(), 0xc001_0203);
        let mut short = ip[..24].to_vec();
        short[3] = 24;
        assert!(spi(&Ipv4::read(&short).unwrap()).is_err());
    }
}
