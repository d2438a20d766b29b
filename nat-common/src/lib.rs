//! Plain data shared by the XDP programs (`nat-ebpf`) and the daemon (`natd`).
//!
//! Everything that crosses the kernel/user boundary is defined here once:
//! map keys and values, the per-reason counter indices, the names of the maps,
//! and the pure arithmetic both sides rely on (checksums, tuple reversal).
//!
//! Rules for map types (see DESIGN.md): `#[repr(C)]`, `Copy`, explicit `_pad`
//! fields that are always zero, no `bool`/enum/`Option` inside, byte order in
//! the field name, and a compile-time size assertion next to each.
#![no_std]

// The host tests use std's collections.
#[cfg(test)]
extern crate std;

pub mod bench;
pub mod checksum;
pub mod counters;
pub mod crc32c;
pub mod esp;
pub mod flow;
pub mod forward;
pub mod icmp;
pub mod ipv4_options;
pub mod proto;
pub mod source;

pub use counters::Reason;
pub use source::{MAX_INSIDE_PREFIXES, MAX_OWN_ADDRS, MAX_WAN_DROP_SOURCES, Prefix, is_martian};
pub use flow::{
    ClaimEvent, Endpoint, FRAG_TIMEOUT_NS, FREE_QUEUE_CAPACITY, FragEvent, FragKey, FragState, FreePort, GatewayConfig, HostKey, INBOUND_PORTS, INBOUND_PROTOCOLS, InboundPort, Liveness, MAX_FRAGMENTED_DATAGRAMS, MAX_PARKED_DATAGRAMS, MAX_PERMITS, MAX_POOL_ADDRS, MAX_QUOTA_HOSTS, MISS_FRAME_MAX, Mapping, MissEvent, NEXT_HOP_CACHE_BITS, NEXT_HOP_TTL_NS, NextHop, PermitKey, filtering, frag_dir, free_queue_name, inbound_index, miss_kind, pool_index, sctp_chunks, tcp_flags, wire_ingress,
};

/// Names of the maps in the eBPF object, so the daemon and the tests
/// cannot drift from the kernel side.
pub mod map_names {
    /// inside endpoint -> external endpoint (LAN ingress lookups).
    pub const OUTBOUND: &str = "OUTBOUND";
    /// Array of `InboundPort`s by `inbound_index` (WAN ingress lookups).
    pub const INBOUND: &str = "INBOUND";
    /// One `GatewayConfig` at index 0.
    pub const CONFIG: &str = "CONFIG";
    /// Per-CPU `u64` counters indexed by `Reason`.
    pub const COUNTERS: &str = "COUNTERS";
    /// Devmap (hash) of the interfaces the programs may redirect to, keyed by ifindex.
    pub const TX_PORTS: &str = "TX_PORTS";
    /// Ring buffer of `MissEvent`s: packets handed to the daemon.
    pub const MISSES: &str = "MISSES";
    /// One `u32`, memory-mappable: 1 while the daemon sleeps until the ring
    /// wakes it, 0 while it reads (and in a state made before it existed).
    pub const DAEMON_ASLEEP: &str = "DAEMON_ASLEEP";
    // Queues of `FreePort`s the daemon keeps filled, one per protocol and
    // port parity: see `free_queue_name`.
    /// `Liveness` per session, indexed by `Mapping::session`; memory-mappable.
    pub const LIVENESS: &str = "LIVENESS";
    /// One `u64`: CLOCK_MONOTONIC_COARSE in ns, published by the daemon.
    pub const CLOCK: &str = "CLOCK";
    /// Per-CPU direct-mapped cache of route lookups (`NextHop` slots).
    pub const NEXT_HOPS: &str = "NEXT_HOPS";
    /// LRU hash `PermitKey` -> last-sent clock (ns): the remotes each inside
    /// endpoint has sent to, for address(-and-port)-dependent filtering.
    pub const PERMITS: &str = "PERMITS";
    /// Hash `HostKey` -> u64: mappings the datapath claimed for each inside
    /// host and protocol (only the datapath writes, atomically).
    pub const HOST_CLAIMS: &str = "HOST_CLAIMS";
    /// Hash `HostKey` -> u64: natd's side of the same count, mappings it
    /// released minus those it made itself (only natd writes). A host holds
    /// `HOST_CLAIMS - HOST_RETURNS` ports, wrapping arithmetic.
    pub const HOST_RETURNS: &str = "HOST_RETURNS";
    /// LRU hash `FragKey` -> `FragState`: what the first fragment of each
    /// recent fragmented datagram was translated to (RFC 4787 REQ-14).
    pub const FRAGS: &str = "FRAGS";
    /// Hash `FragKey` -> clock (ns): datagrams natd parks later fragments of,
    /// written by natd; the datapath tells natd when their first fragment passes.
    pub const PARKED: &str = "PARKED";
    /// Per-CPU `icmp::RateLimit` of the Fragmentation Needed errors the datapath sends.
    pub const ICMP_RATE: &str = "ICMP_RATE";
    /// Hash external endpoint -> `forward::ForwardPort`: the forwarded ports.
    pub const FORWARDS: &str = "FORWARDS";
    /// Array of `forward::Backend`, `forward * MAX_BACKENDS + slot`.
    pub const BACKENDS: &str = "BACKENDS";
    /// Array of backend slots (`u32`), `forward * MAGLEV_SIZE + slot`.
    pub const MAGLEV: &str = "MAGLEV";
    /// Hash `forward::FlowKey` -> `forward::Flow`: established forwarded flows.
    pub const FLOWS: &str = "FLOWS";
    /// LRU hash `forward::FlowKey` -> `forward::Flow`: half-open ones.
    pub const PENDING: &str = "PENDING";
    /// Array of `forward::Signals`, as `BACKENDS`: passive health signals.
    pub const SIGNALS: &str = "SIGNALS";
    /// LPM trie of the prefixes the operator listed in `wan_drop_sources`:
    /// WAN packets from them are dropped (BCP 84).
    pub const WAN_DROP_SOURCES: &str = "WAN_DROP_SOURCES";
    /// Array of one `[u32; crc32c::NIBBLE_TABLE_LEN]`, filled by natd when
    /// it loads the programs (`crc32c::fill_nibble_table`): the SCTP port
    /// rewrite's O(1) CRC32c update.
    pub const SCTP_NIBBLES: &str = "SCTP_NIBBLES";
    /// Program array of the SCTP programs (`sctp_program_index`), which the
    /// main programs hand SCTP packets to.
    pub const SCTP_PROGRAMS: &str = "SCTP_PROGRAMS";
    /// Hash `esp::EspKey` (inside address, peer, outbound SPI) ->
    /// `esp::EspTarget` (external address, session slot): the outbound SAs
    /// natd learned.
    pub const ESP_OUT: &str = "ESP_OUT";
    /// Hash `esp::EspKey` (external address, peer, inbound SPI) ->
    /// `esp::EspTarget` (inside address, session slot): the inbound SAs
    /// natd bound to an inside host.
    pub const ESP_IN: &str = "ESP_IN";
    /// Hash `esp::EspKey` (external address, peer, SPI 0) -> 1: the
    /// (external address, peer) pairs with an outbound SA awaiting its
    /// first answer, written by natd. An unknown inbound SPI goes to natd
    /// only from such a peer.
    pub const ESP_AWAITED: &str = "ESP_AWAITED";
    /// Program array of the ESP programs (`esp_program_index`), which the
    /// main programs hand ESP packets to.
    pub const ESP_PROGRAMS: &str = "ESP_PROGRAMS";
}

/// Where each ESP program sits in `map_names::ESP_PROGRAMS`.
pub mod esp_program_index {
    pub const LAN: u32 = 0;
    pub const WAN: u32 = 1;
}

/// Where each SCTP program sits in `map_names::SCTP_PROGRAMS`.
pub mod sctp_program_index {
    pub const LAN: u32 = 0;
    pub const WAN: u32 = 1;
}

/// Names of the XDP programs in the eBPF object.
pub mod program_names {
    pub const LAN: &str = "nat_lan";
    pub const WAN: &str = "nat_wan";
    /// The SCTP programs the main ones hand SCTP packets to (tail calls).
    pub const LAN_SCTP: &str = "nat_lan_sctp";
    pub const WAN_SCTP: &str = "nat_wan_sctp";
    /// The ESP programs the main ones hand ESP packets to (tail calls).
    pub const LAN_ESP: &str = "nat_lan_esp";
    pub const WAN_ESP: &str = "nat_wan_esp";
}

/// `BPF_F_MMAPABLE`: an array the daemon maps into its memory.
pub const BPF_F_MMAPABLE: u32 = 1 << 10;

/// Capacity of each mapping map. A mapping is never evicted to make room
/// (plain hash maps, not LRU): when full, new flows are refused and counted.
pub const MAX_MAPPINGS: u32 = 1 << 20;

/// Capacity of the `LIVENESS` array: one slot per session (a session is one
/// entry in each mapping map). The object's size, and the most natd makes
/// `OUTBOUND` and `LIVENESS` (`max_sessions`).
pub const MAX_SESSIONS: u32 = MAX_MAPPINGS;

/// The fewest sessions `max_sessions` may ask the datapath to hold.
pub const MIN_SESSIONS: u32 = 1024;

/// Size of the miss ring buffer in bytes (a power of two, a multiple of the page size).
/// A hand-off's record is as long as its frame (`MissEvent::HEADER_LEN` plus
/// the frame, plus the ring's 8-byte header, rounded up to 8): about 100
/// bytes for a small first packet, so 16 MiB holds ~160,000 of them while
/// natd is behind a burst, or 8,000 full-sized frames. Kernel memory, once.
/// (With every record 2 KiB, the ring held ~8,000 hand-offs and a burst of
/// 100,000 new flows lost first packets `drop_ring_full` once the claim
/// queue ran dry.)
pub const MISS_RING_BYTES: u32 = 16 << 20;

/// How much of the miss ring natd may leave unread while new flows whose
/// inside port it could keep are still handed to it; past this, natd is
/// behind, and such a flow claims a queued port in the datapath instead, so
/// its first packet goes on now rather than waiting in the ring (about 5,000
/// small first packets, a tenth of a second of natd's work). The rest of the
/// ring takes hand-offs that cannot be claimed (queue empty, no neighbour).
pub const MISS_HANDOFF_BACKLOG_BYTES: u32 = 512 << 10;

/// How often the daemon publishes the clock (`map_names::CLOCK`): the
/// resolution of last-seen stamps and next-hop expiry.
pub const CLOCK_TICK_NS: u64 = 1_000_000_000;

/// The datapath rewrites `Liveness::last_seen_ns` at most once per this interval,
/// so a busy flow costs a map write once a second, not once a packet.
pub const LAST_SEEN_GRANULARITY_NS: u64 = 1_000_000_000;
