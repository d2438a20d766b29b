//! The external port space natd owns: one `PortAllocator` per pool address,
//! the session slots of the LIVENESS array, the free ports queued for the
//! datapath to claim, and setting a mapping up when natd allocates itself.

use std::net::Ipv4Addr;

use anyhow::{Context as _, Result};
use nat_common::{ClaimEvent, Endpoint, FreePort, pool_index, proto};

use crate::{
    config::{Environment, Settings},
    control::PortUsage,
    datapath::Datapath,
    nat::{
        alloc::{PortAllocator, PortPolicy},
        quota::HostQuota,
    },
};

/// Free ports (and session slots) kept queued per protocol and parity for
/// the datapath to claim, a quarter of the port range within these bounds
/// (and at most a quarter of the ports still free, `refill_free_queues`):
/// a burst of twice this many new flows of one protocol is set up without
/// natd. At a fixed 512, a 20,000-flow burst from clients on ephemeral
/// ports (which natd would otherwise see one by one) claimed 1,024 in XDP
/// and lost 8,508 first packets to a full miss ring. With an eighth, a
/// 100,000-flow burst (`lab-bench --burst`) set up 83,480 to 100,000 in
/// four runs (the queue ran dry, then the ring filled); with a quarter,
/// 100,000 in 7 of 8 (98,788 in the other), once natd's set-up wrote
/// INBOUND in place (before, natd spent such a burst refilling: 79,283).
/// The queued ports stay usable: the datapath hands them out.
pub const FREE_QUEUE_MIN: usize = 512;
pub const FREE_QUEUE_MAX: usize = 16384;

/// How many random ports of one parity are tried for one free on every pool
/// address before the queue is left short (a busy pool).
const COLUMN_PROBES: usize = 16;

/// What became of a request for a mapping.
pub enum SetUp {
    /// Installed in both maps.
    Made { external: Endpoint, slot: u32 },
    /// Another packet of the flow had the datapath claim a port meanwhile:
    /// its mapping serves.
    Claimed(Endpoint),
    /// Refused (nothing is evicted to make room), and why.
    Refused(Refusal),
}

/// Why a new flow was refused.
pub enum Refusal {
    /// The host holds its `ports_per_host` of this protocol.
    Quota,
    /// Every external port of the protocol is in use or held.
    NoPort,
    /// Every session slot is in use, or a map is full.
    MapFull(String),
}

pub struct Ports {
    /// One port space per external address, in pool order.
    pools: Vec<PortAllocator>,
    external_ips: Vec<Ipv4Addr>,
    slots: SlotPool,
    /// Ports kept queued per protocol and parity.
    queue_target: usize,
}

impl Ports {
    /// `sessions`: the slots the datapath's `LIVENESS` has (`max_sessions`,
    /// or the size an adopted datapath was made with).
    pub fn new(settings: &Settings, env: &Environment, sessions: u32) -> Result<Self> {
        let mut seed = [0u8; 8];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut seed))
            .context("seeding the port randomizer from /dev/urandom")?;
        let policy = PortPolicy { parity: settings.port_parity, class: settings.port_class, low: settings.low_port_range };
        let hold_ns = settings.port_hold.as_nanos() as u64;
        let pools = (0..env.external_ips.len())
            .map(|i| {
                let seed = u64::from_ne_bytes(seed).wrapping_add(i as u64);
                PortAllocator::with_policy(settings.port_min, settings.port_max, policy, hold_ns, seed)
            })
            .collect();
        let range = usize::from(settings.port_max - settings.port_min) + 1;
        let queue_target = (range / 4).clamp(FREE_QUEUE_MIN, FREE_QUEUE_MAX);
        Ok(Self { pools, external_ips: env.external_ips.clone(), slots: SlotPool::with_capacity(sessions), queue_target })
    }

    /// The pool index of an external endpoint's address.
    pub fn pool_of(&self, external: &Endpoint) -> Option<usize> {
        self.external_ips.iter().position(|ip| *ip == external.addr())
    }

    /// The datapath installed a mapping from a queued free port. The port
    /// was queued on every pool address: the claiming host's address now
    /// uses it, the others get it back.
    pub fn claimed(&mut self, claim: &ClaimEvent) {
        self.queued_port_taken(claim.inside.proto, claim.external.port(), self.pool_of(&claim.external));
    }

    /// A port from a free queue went to a flow on pool address `taken_on`
    /// (the datapath's claim, or natd's `take_back_queued`): that address
    /// now uses it, the others, which reserved it too, get it back.
    fn queued_port_taken(&mut self, proto_nr: u8, port: u16, taken_on: Option<usize>) {
        if !self.pools.iter().any(|pool| pool.is_queued(proto_nr, port)) {
            // From a queue this natd did not fill: claimed in the moment it
            // adopted the datapath. The port is that mapping's; the other
            // addresses never reserved it for this natd.
            if let Some(pool) = taken_on {
                self.pools[pool].adopt(proto_nr, port);
            }
            return;
        }
        for (index, pool) in self.pools.iter_mut().enumerate() {
            if Some(index) == taken_on {
                pool.claimed(proto_nr, port);
            } else {
                pool.unreserve(proto_nr, port);
            }
        }
    }

    /// Keeps each protocol's free queues filled with random free ports, so
    /// new flows are set up in the datapath without waiting for natd.
    /// Returns the first error a push met (the queue is left short).
    pub fn refill_free_queues(&mut self, datapath: &mut Datapath) -> Result<()> {
        for proto_nr in proto::ALL {
            // At most a quarter of what the pool can still give, per
            // parity: natd's own set-ups keep at least half of it. A
            // quarter of the range queued at a nearly full pool starved
            // them (411 of a 100,000-flow burst refused, no port, on 2
            // addresses of 59,976 ports: the queue's ports are reserved on
            // every address).
            let available = self.pools.iter().map(|pool| pool.free(proto_nr)).min().unwrap_or(0);
            // Each queued port holds a session slot too: with a small
            // `max_sessions`, a queue of a quarter of the ports would hold
            // every slot. At most a sixteenth of the free slots per queue
            // (four protocols, two parities: at most half of them in all).
            let target = self.queue_target.min(available / 4).min(self.slots.free() as usize / 16);
            for parity in [0, 1] {
                while self.pools[0].queued_of(proto_nr, parity) < target {
                    let Some(slot) = self.slots.take() else { return Ok(()) };
                    let Some(port) = self.reserve_column(proto_nr, parity) else {
                        self.slots.give_back(slot);
                        break;
                    };
                    if let Err(e) = datapath.push_free_port(proto_nr, FreePort { session: slot, port, _pad: 0 }) {
                        for pool in &mut self.pools {
                            pool.unreserve(proto_nr, port);
                        }
                        self.slots.give_back(slot);
                        return Err(e);
                    }
                }
            }
        }
        Ok(())
    }

    /// A random port of `parity` free on every pool address, reserved on all
    /// of them: the datapath claims a queued port on the address of whichever
    /// host takes it. `None` when no such port turned up in a few tries (a
    /// busy pool): new flows then take natd's path until ports free up.
    fn reserve_column(&mut self, proto_nr: u8, parity: u16) -> Option<u16> {
        let (first, rest) = self.pools.split_first_mut()?;
        for _ in 0..COLUMN_PROBES {
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

    /// Allocates an external port and a session slot for `inside` and
    /// installs the mapping pair, within the host's quota. A live mapping
    /// is never evicted to make room.
    pub fn set_up(&mut self, datapath: &mut Datapath, quota: &mut HostQuota, inside: Endpoint, now_ns: u64) -> Result<SetUp> {
        if !quota.allows(datapath, &inside)? {
            return Ok(SetUp::Refused(Refusal::Quota));
        }
        // Paired pooling: the host's address, as the datapath picks it.
        let pool = pool_index(inside.addr_be, self.pools.len() as u32) as usize;
        let port = match self.pools[pool].allocate(inside.proto, inside.port()) {
            Some(port) => port,
            None => match self.take_back_queued(datapath, inside.proto, pool, inside.port())? {
                Some(port) => port,
                None => return Ok(SetUp::Refused(Refusal::NoPort)),
            },
        };
        let external = Endpoint::new(self.external_ips[pool], port, inside.proto);
        let slot = match self.slots.take() {
            Some(slot) => slot,
            None => match self.take_back_queued_slot(datapath)? {
                Some(slot) => slot,
                None => {
                    self.pools[pool].cancel(inside.proto, port);
                    return Ok(SetUp::Refused(Refusal::MapFull("every session slot is in use (max_sessions)".into())));
                }
            },
        };
        if let Err(e) = datapath.insert_pair(inside, external, slot, now_ns) {
            self.pools[pool].cancel(inside.proto, port);
            self.slots.give_back(slot);
            // A later packet of this flow may have claimed a queued port in
            // the datapath meanwhile (its ClaimEvent is still in the ring):
            // then this one goes out on that mapping.
            if let Some(mapping) = datapath.outbound_mapping(&inside)? {
                return Ok(SetUp::Claimed(mapping.target(inside.proto)));
            }
            return Ok(SetUp::Refused(Refusal::MapFull(format!("{e:#}"))));
        }
        quota.made(datapath, &inside)?;
        Ok(SetUp::Made { external, slot })
    }

    /// Every port of the pool address is taken, some by the datapath's free
    /// queues: one comes back from a queue (the inside port's parity
    /// first) and is `pool`'s allocation, so a flow is never refused while
    /// a port waits in a queue. The queues reserve a port on every pool
    /// address and may hold half of what is free: without this, a
    /// 100,000-flow burst on 2 addresses of 59,976 ports refused 411 to
    /// 463 flows as the pool filled.
    fn take_back_queued(&mut self, datapath: &mut Datapath, proto_nr: u8, pool: usize, inside_port: u16) -> Result<Option<u16>> {
        for parity in [inside_port & 1, !inside_port & 1] {
            let Some(free) = datapath.pop_free_port(proto_nr, parity)? else { continue };
            self.slots.give_back(free.session);
            self.queued_port_taken(proto_nr, free.port, Some(pool));
            return Ok(Some(free.port));
        }
        Ok(None)
    }

    /// Every session slot is in use, some by queued ports: one queued port
    /// comes out of its queue, taken by no address (every one gets it
    /// back), and its slot is the caller's, so a flow is never refused
    /// while a slot waits in a queue.
    fn take_back_queued_slot(&mut self, datapath: &mut Datapath) -> Result<Option<u32>> {
        for proto_nr in proto::ALL {
            for parity in [0, 1] {
                let Some(free) = datapath.pop_free_port(proto_nr, parity)? else { continue };
                self.queued_port_taken(proto_nr, free.port, None);
                return Ok(Some(free.session));
            }
        }
        Ok(None)
    }

    /// A session slot for a session with no port (an ESP SA pair,
    /// `nat::esp`), from the pool the mappings' slots come from.
    pub fn take_slot(&mut self) -> Option<u32> {
        self.slots.take()
    }

    /// A slot `take_slot` gave, free again.
    pub fn give_back_slot(&mut self, slot: u32) {
        self.slots.give_back(slot);
    }

    /// A slot a portless session of an adopted datapath uses.
    pub fn adopt_slot(&mut self, slot: u32) {
        self.slots.adopt(slot);
    }

    /// A mapping ended: its port is held before reuse, its slot free.
    pub fn release(&mut self, external: &Endpoint, slot: u32, now_ns: u64) {
        if let Some(pool) = self.pool_of(external) {
            self.pools[pool].release(external.proto, external.port(), now_ns);
        }
        self.slots.give_back(slot);
    }

    /// Returns ports whose hold is over to the pool.
    pub fn reclaim(&mut self, now_ns: u64) {
        for pool in &mut self.pools {
            pool.reclaim(now_ns);
        }
    }

    /// A reload's `port_parity` and `port_class`, for new mappings (live
    /// ones keep their ports).
    pub fn set_parity_and_class(&mut self, parity: bool, class: bool) {
        for pool in &mut self.pools {
            pool.set_parity_and_class(parity, class);
        }
    }

    /// A live mapping of an adopted datapath: its port and slot are in use.
    /// A port outside the pool or range (the settings changed across the
    /// restart) is left to the mapping and never handed out meanwhile.
    pub fn adopt(&mut self, external: &Endpoint, slot: u32) {
        if let Some(pool) = self.pool_of(external) {
            self.pools[pool].adopt(external.proto, external.port());
        }
        self.slots.adopt(slot);
    }

    /// Ports the previous natd held back (`held_ports`), by pool address.
    pub fn adopt_held(&mut self, held: &[HeldPort]) {
        for port in held {
            if let Some(pool) = self.external_ips.iter().position(|ip| *ip == port.addr) {
                self.pools[pool].adopt_held(port.free_at_ns, port.proto, port.port);
            }
        }
    }

    /// The ports held back before reuse, so that a restart keeps holding
    /// them (natd writes them out when it stops with the datapath serving).
    pub fn held_ports(&self) -> Vec<HeldPort> {
        let mut held: Vec<HeldPort> = self
            .external_ips
            .iter()
            .zip(&self.pools)
            .flat_map(|(addr, pool)| pool.held_ports().map(|(free_at_ns, proto, port)| HeldPort { addr: *addr, proto, port, free_at_ns }))
            .collect();
        held.sort_by_key(|h| h.free_at_ns);
        held
    }

    /// Ports of `proto_nr` in use, held and free on each pool address, in
    /// pool order (metrics).
    pub fn usage_by_address(&self, proto_nr: u8) -> Vec<(Ipv4Addr, PortUsage)> {
        self.external_ips
            .iter()
            .zip(&self.pools)
            .map(|(ip, pool)| {
                let usage = PortUsage {
                    proto: proto::name(proto_nr).to_string(),
                    in_use: pool.in_use(proto_nr),
                    held: pool.held(proto_nr),
                    free: pool.free(proto_nr),
                };
                (*ip, usage)
            })
            .collect()
    }

    /// Ports of `proto_nr` in use, held and free, all pool addresses together.
    pub fn usage(&self, proto_nr: u8) -> PortUsage {
        PortUsage {
            proto: proto::name(proto_nr).to_string(),
            in_use: self.pools.iter().map(|pool| pool.in_use(proto_nr)).sum(),
            held: self.pools.iter().map(|pool| pool.held(proto_nr)).sum(),
            free: self.pools.iter().map(|pool| pool.free(proto_nr)).sum(),
        }
    }
}

/// A port held back before reuse, as written out across a restart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HeldPort {
    pub addr: Ipv4Addr,
    pub proto: u8,
    pub port: u16,
    /// When it may be reused, natd's clock (ns; the clock resumes across
    /// a restart, see `sessions::resume_clock`).
    pub free_at_ns: u64,
}

/// Session slots of the LIVENESS array: handed out once, reused after release.
pub struct SlotPool {
    free: Vec<u32>,
    next_unused: u32,
    /// The array's size: slots at and past it do not exist.
    capacity: u32,
}

impl SlotPool {
    pub fn with_capacity(capacity: u32) -> Self {
        Self { free: Vec::new(), next_unused: 0, capacity }
    }

    /// A slot a live session of an adopted datapath uses. Slots below it
    /// that no adopted session uses become free (adoption is done before
    /// any slot is handed out).
    pub fn adopt(&mut self, slot: u32) {
        if slot >= self.capacity {
            return;
        }
        if slot >= self.next_unused {
            self.free.extend(self.next_unused..slot);
            self.next_unused = slot + 1;
        } else if let Some(at) = self.free.iter().position(|&s| s == slot) {
            self.free.swap_remove(at);
        }
    }

    pub fn take(&mut self) -> Option<u32> {
        self.free.pop().or_else(|| {
            (self.next_unused < self.capacity).then(|| {
                self.next_unused += 1;
                self.next_unused - 1
            })
        })
    }

    pub fn give_back(&mut self, slot: u32) {
        self.free.push(slot);
    }

    /// Slots not handed out.
    pub fn free(&self) -> u32 {
        self.free.len() as u32 + (self.capacity - self.next_unused)
    }
}

#[cfg(test)]
mod tests {
    use nat_common::MAX_SESSIONS;

    use super::*;

    #[test]
    fn adopted_slots_are_in_use_and_the_gaps_free() {
        let mut pool = SlotPool::with_capacity(MAX_SESSIONS);
        for slot in [5, 2, 9] {
            pool.adopt(slot);
        }
        let mut handed: Vec<u32> = std::iter::from_fn(|| pool.take()).take(8).collect();
        handed.sort_unstable();
        assert_eq!(handed, [0, 1, 3, 4, 6, 7, 8, 10], "every slot but the adopted ones, then on past them");
    }

    #[test]
    fn session_slots_are_reused_and_run_out() {
        let mut pool = SlotPool::with_capacity(MAX_SESSIONS);
        assert_eq!((pool.take(), pool.take()), (Some(0), Some(1)));
        pool.give_back(0);
        assert_eq!(pool.take(), Some(0));
        pool.next_unused = MAX_SESSIONS;
        assert_eq!(pool.take(), None, "past MAX_SESSIONS");
    }

    #[test]
    fn a_smaller_pool_runs_out_at_its_capacity() {
        let mut pool = SlotPool::with_capacity(3);
        let handed: Vec<u32> = std::iter::from_fn(|| pool.take()).take(5).collect();
        assert_eq!(handed, [0, 1, 2], "slots 0-2, then none");
        pool.adopt(7);
        assert_eq!(pool.take(), None, "a slot past the capacity is not adopted");
        pool.give_back(1);
        assert_eq!(pool.take(), Some(1));
    }
}
