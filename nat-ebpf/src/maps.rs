//! The maps several parts of the programs share: the mapping pair, the
//! sessions' liveness and the ring to natd. Maps one part owns live with it.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, RingBuf},
};
use nat_common::{BPF_F_MMAPABLE, Endpoint, Liveness, MAX_MAPPINGS, MAX_SESSIONS, MISS_RING_BYTES, Mapping};

/// inside endpoint -> external endpoint (LAN ingress lookups). A mapping is
/// never evicted: a plain hash, full means new flows are refused.
#[map]
pub static OUTBOUND: HashMap<Endpoint, Mapping> = HashMap::with_max_entries(MAX_MAPPINGS, 0);

/// external endpoint -> inside endpoint (WAN ingress lookups).
#[map]
pub static INBOUND: HashMap<Endpoint, Mapping> = HashMap::with_max_entries(MAX_MAPPINGS, 0);

/// Per-session liveness, indexed by `Mapping::session`. Memory-mappable: the
/// daemon's aging scan reads it in place, without a syscall per session.
#[map]
pub static LIVENESS: Array<Liveness> = Array::with_max_entries(MAX_SESSIONS, BPF_F_MMAPABLE);

/// Events for natd: packets handed over (`MissEvent`), claims
/// (`ClaimEvent`), translated first fragments (`FragEvent`).
#[map]
pub static MISSES: RingBuf = RingBuf::with_byte_size(MISS_RING_BYTES, 0);
