//! The maps several parts of the programs share: the mapping pair, the
//! sessions' liveness and the ring to natd. Maps one part owns live with it.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, RingBuf},
};
use nat_common::{BPF_F_MMAPABLE, Endpoint, GatewayConfig, INBOUND_PORTS, InboundPort, Liveness, MAX_MAPPINGS, inbound_index, MAX_SESSIONS, MISS_RING_BYTES, Mapping};

/// inside endpoint -> external endpoint (LAN ingress lookups). A mapping is
/// never evicted: a plain hash, full means new flows are refused.
#[map]
pub static OUTBOUND: HashMap<Endpoint, Mapping> = HashMap::with_max_entries(MAX_MAPPINGS, 0);

/// external endpoint -> inside port and session (WAN ingress lookups), by
/// `GatewayConfig::inbound_index`: an array, since natd owns the external
/// port space (see `InboundPort`). Memory-mappable: natd writes its entries
/// in place, each one aligned 8-byte store.
#[map]
pub static INBOUND: Array<InboundPort> = Array::with_max_entries(INBOUND_PORTS, BPF_F_MMAPABLE);

/// Per-session liveness, indexed by `Mapping::session`. Memory-mappable: the
/// daemon's aging scan reads it in place, without a syscall per session.
#[map]
pub static LIVENESS: Array<Liveness> = Array::with_max_entries(MAX_SESSIONS, BPF_F_MMAPABLE);

/// Events for natd: packets handed over (`MissEvent`), claims
/// (`ClaimEvent`), translated first fragments (`FragEvent`).
#[map]
pub static MISSES: RingBuf = RingBuf::with_byte_size(MISS_RING_BYTES, 0);

/// 1 while natd sleeps until the ring wakes it (it writes this through its
/// memory mapping as it goes to sleep and as it wakes): see
/// `handoff::wakeup_flags`.
#[map]
pub static DAEMON_ASLEEP: Array<u32> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// The inbound translation of `external`, if it has a mapping: its port's
/// `INBOUND` entry, with the inside address from its session's liveness
/// (the cache line the hit path stamps anyway).
///
/// A slot is reused only after natd removed its entry, as a preallocated
/// hash map reuses an element: a packet that read the entry just before
/// may see the next session's address, the race every BPF map lookup has.
#[inline(always)]
pub fn inbound(cfg: &GatewayConfig, external: &Endpoint) -> Option<Mapping> {
    inbound_at(cfg.pool_position(external.addr_be)?, external)
}

/// `inbound` of an endpoint whose address is the pool's `position`th.
#[inline(always)]
pub fn inbound_at(position: u32, external: &Endpoint) -> Option<Mapping> {
    let entry = INBOUND.get_ptr(inbound_index(position, external.proto, external.port_be)?);
    // A missing entry (never: the index is in range) reads as a free port.
    // Written as a value on both paths: with none on the missing one, LLVM
    // spilled whatever register it had there, and the verifier refuses a
    // read of a register never written.
    let bits = match entry {
        // SAFETY: an 8-byte entry of the array (8-aligned); one load, so
        // never half of a store natd or another CPU makes.
        Some(entry) => unsafe { core::ptr::read_volatile(entry.cast::<u64>()) },
        None => crate::packet::opaque(0) as u64,
    };
    let port = InboundPort::from_bits(bits);
    if !port.in_use() {
        return None;
    }
    let live = LIVENESS.get(port.session)?;
    Some(port.mapping(live.inside_addr_be))
}
