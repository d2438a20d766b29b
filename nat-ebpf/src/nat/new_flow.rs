//! New flows set up in the datapath: a free port the daemon queued is
//! claimed for the inside endpoint, within its host's port quota, and the
//! daemon told through the ring.

use core::ptr::{read_volatile, write_volatile};

use aya_ebpf::{
    bindings::{BPF_NOEXIST, BPF_RB_NO_WAKEUP},
    macros::map,
    maps::{HashMap, Queue},
};
use nat_common::{ClaimEvent, Endpoint, FREE_QUEUE_CAPACITY, FreePort, HostKey, InboundPort, Liveness, MAX_QUOTA_HOSTS, MISS_HANDOFF_BACKLOG_BYTES, Mapping, inbound_index, miss_kind, proto};

use crate::{
    atomic::atomic_add,
    ctx::{clock, config},
    maps::{INBOUND, LIVENESS, MISSES, OUTBOUND},
};

/// Declares the free-port queues and `free_queue`, which picks one. aya-ebpf
/// has no map-in-map, so each queue is a static of its own.
macro_rules! free_queues {
    ($($name:ident = ($proto:path, $parity:literal),)*) => {
        $(
            #[map]
            static $name: Queue<FreePort> = Queue::with_max_entries(FREE_QUEUE_CAPACITY, 0);
        )*

        #[inline(always)]
        fn free_queue(proto_nr: u8, parity: u16) -> Option<&'static Queue<FreePort>> {
            match (proto_nr, parity) {
                $(($proto, $parity) => Some(&$name),)*
                _ => None,
            }
        }
    };
}

// External ports (and session slots) set aside by the daemon for new flows to
// claim in the datapath: one queue per protocol and port parity (so an inside
// port finds one of its own parity, RFC 4787 REQ-4). natd queues only ports
// free on every pool address, so a host takes one on its paired address
// (REQ-2) from the same queue; natd frees the other addresses' copies when
// it learns of the claim. (Queues per address were tried: the verifier walked
// the rest of the program once per address and hit its 1M-instruction limit.)
// Names as `nat_common::free_queue_name`.
free_queues! {
    FREE_T0 = (proto::TCP, 0),
    FREE_T1 = (proto::TCP, 1),
    FREE_U0 = (proto::UDP, 0),
    FREE_U1 = (proto::UDP, 1),
    FREE_S0 = (proto::SCTP, 0),
    FREE_S1 = (proto::SCTP, 1),
    FREE_I0 = (proto::ICMP, 0),
    FREE_I1 = (proto::ICMP, 1),
}

/// The per-host port quota (RFC 6888 REQ-4), counted from both sides
/// without either overwriting the other: the datapath adds its claims here
/// atomically, natd keeps its releases (minus the mappings it made itself)
/// in HOST_RETURNS. In use: claims - returns. Entries are never removed (a
/// removal could race a claim and lose it); a host past MAX_QUOTA_HOSTS has
/// its new flows set up by natd, which counts every host.
#[map]
pub(crate) static HOST_CLAIMS: HashMap<HostKey, u64> = HashMap::with_max_entries(MAX_QUOTA_HOSTS, 0);

#[map]
pub(crate) static HOST_RETURNS: HashMap<HostKey, u64> = HashMap::with_max_entries(MAX_QUOTA_HOSTS, 0);

/// The new flow of `inside` takes a free external port the daemon queued for
/// its protocol: the mapping pair is installed here (reverse entry first, both
/// NOEXIST, as the daemon does) and the first packet goes on without waiting.
/// The daemon learns of the claim through the ring, and a claim it cannot
/// learn of is not made. `None`: the daemon decides (queue empty, ring full,
/// or an inside port inside the NAT range, which the daemon keeps if free,
/// while it keeps up with the ring).
#[inline(always)]
pub(crate) fn claim(inside: &Endpoint) -> Option<*const Mapping> {
    let cfg = config();
    let port = u16::from_be(inside.port_be);
    // natd decides an inside port it may keep (in the NAT range), unless it
    // is behind a burst: then the flow takes a queued port here, as any
    // other (a flow that loses its port beats a first packet that waits or
    // is dropped, as for parity). And natd decides a port whose class is
    // kept (below 1024: the low port range is natd's).
    let keepable = port >= cfg.port_min && port <= cfg.port_max;
    if (keepable && natd_keeps_up()) || (cfg.port_class != 0 && port < 1024) {
        return None;
    }
    let index = cfg.pool_index(inside.addr_be);
    let external_addr_be = *cfg.external_addrs_be.get(index as usize)?;
    // Parity kept: the inside port's. Not kept: a bit that has nothing to do
    // with it, so parity matches only by chance.
    let parity = if cfg.port_parity != 0 { port & 1 } else { (port >> 1) & 1 };
    let quota = take_quota(inside, cfg.ports_per_host)?;
    let Some(free) = pop_free(inside.proto, parity) else {
        give_back_quota(quota);
        return None;
    };
    let Some(mut event) = MISSES.reserve::<ClaimEvent>(0) else {
        push_free(inside.proto, &free);
        give_back_quota(quota);
        return None;
    };
    let external = Endpoint::from_be(external_addr_be, free.port.to_be(), inside.proto);
    let entry = inbound_index(index, inside.proto, external.port_be).and_then(|at| INBOUND.get_ptr_mut(at)).map(|entry| entry.cast::<u64>());
    // SAFETY (the entry's loads and stores): an 8-byte, 8-aligned entry of
    // the array, read and written whole.
    let Some(entry) = entry.filter(|entry| !InboundPort::from_bits(unsafe { read_volatile(*entry) }).in_use()) else {
        // The daemon queues only ports absent from INBOUND: not reached. The
        // port is left out of the queue rather than retried forever.
        event.discard(0);
        give_back_quota(quota);
        return None;
    };
    // The session's liveness (and inside address) first: the entry names it.
    if let Some(live) = LIVENESS.get_ptr_mut(free.session) {
        // SAFETY: the slot of a session natd handed out for this claim alone.
        unsafe { *live = Liveness::of_inside(clock(), inside.addr_be) };
    }
    unsafe { write_volatile(entry, InboundPort::new(inside, free.session).bits()) };
    if OUTBOUND.insert(inside, Mapping::new(external, free.session), BPF_NOEXIST as u64).is_err() {
        // Another CPU claimed for this endpoint first: give the port back
        // and use the winner's mapping.
        unsafe { write_volatile(entry, 0) };
        push_free(inside.proto, &free);
        event.discard(0);
        give_back_quota(quota);
        return OUTBOUND.get_ptr(inside);
    }
    event.write(ClaimEvent { kind: miss_kind::CLAIMED, session: free.session, inside: *inside, external });
    // natd only takes note of a claim (its port, its session, the mapping
    // log): it is not woken for it, and reads it on its next poll of the
    // ring or with the next record that wakes it. A wake-up for each claim
    // cost each first packet ~20 us at the median on a 2-vCPU host
    // (natd's work competing with the packet's way).
    event.submit(u64::from(BPF_RB_NO_WAKEUP));
    OUTBOUND.get_ptr(inside)
}

/// Whether natd keeps up: what it has not read of the miss ring is below
/// `MISS_HANDOFF_BACKLOG_BYTES`. Past that, natd is behind a burst, and a
/// flow is better claimed here than queued for it: its first packet goes on
/// now, and the queue natd refills absorbs the burst. lab-bench --burst
/// 100000 (inside ports natd would keep), when the backlog was half of a
/// ring of 2 KiB records: 100,000 set up in most runs, but once the claims
/// had emptied the queue, the ring filled and first packets were dropped
/// `drop_ring_full` (820 in one of six runs).
#[inline(always)]
fn natd_keeps_up() -> bool {
    MISSES.query(aya_ebpf::bindings::BPF_RB_AVAIL_DATA as u64) < u64::from(MISS_HANDOFF_BACKLOG_BYTES)
}

/// A free port of `parity`, or of the other parity when none is left (a
/// flow that loses its parity beats a flow refused). Only scalars leave this
/// function: a queue pointer kept alive past it would make the verifier walk
/// the rest of the claim once per queue.
#[inline(always)]
pub(crate) fn pop_free(proto_nr: u8, parity: u16) -> Option<FreePort> {
    if let Some(free) = free_queue(proto_nr, parity)?.pop().ok().flatten() {
        return Some(free);
    }
    free_queue(proto_nr, parity ^ 1)?.pop().ok().flatten()
}

/// Gives a popped port back to its queue (the one of its parity).
#[inline(always)]
pub(crate) fn push_free(proto_nr: u8, free: &FreePort) {
    if let Some(queue) = free_queue(proto_nr, free.port & 1) {
        let _ = queue.push(free, 0);
    }
}

/// Counts one more port for the inside host of `inside` if its quota allows
/// (`Some(counter)`, or `Some(null)` without a quota). `None`: over quota, or
/// a host the datapath cannot track: natd decides (and answers a refusal
/// with ICMP, RFC 5508 REQ-8).
#[inline(always)]
pub(crate) fn take_quota(inside: &Endpoint, ports_per_host: u32) -> Option<*mut u64> {
    if ports_per_host == 0 {
        return Some(core::ptr::null_mut());
    }
    let key = HostKey::of(inside);
    let claims = match HOST_CLAIMS.get_ptr_mut(key) {
        Some(claims) => claims,
        None => {
            // NOEXIST: another CPU's first claim for this host may win.
            let _ = HOST_CLAIMS.insert(key, 0, BPF_NOEXIST as u64);
            HOST_CLAIMS.get_ptr_mut(key)?
        }
    };
    // SAFETY: a map value natd writes whole; a stale read only delays a claim.
    let returned = unsafe { HOST_RETURNS.get(key).copied().unwrap_or(0) };
    // Claims for one host race on every CPU. BPF ISA v1 (what bpf-linker
    // targets) has an atomic add but no fetch-and-add: the count is read
    // after the add instead. Atomic adds are globally ordered, so the k-th
    // claim reads at least k and no more than the quota are let through (on
    // x86, where the add is a full barrier; a weaker memory model can let one
    // more through per CPU racing on the same host).
    atomic_add(claims, 1);
    // SAFETY: a value of the map, read after this CPU's atomic add.
    let claimed = unsafe { core::ptr::read_volatile(claims) };
    if claimed.wrapping_sub(returned) > ports_per_host as u64 {
        give_back_quota(claims);
        return None;
    }
    Some(claims)
}

/// Undoes `take_quota` for a claim that did not happen.
#[inline(always)]
pub(crate) fn give_back_quota(claims: *mut u64) {
    if !claims.is_null() {
        atomic_add(claims, u64::MAX);
    }
}
