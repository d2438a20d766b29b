//! Inbound forwards and the L4 load balancer: what natd writes and the
//! programs read.
//!
//! A forward is a service on an external endpoint (or a range of ports) with
//! one or more backends (inside servers). A WAN packet to a forwarded port
//! that belongs to no flow yet picks a healthy backend from the forward's
//! Maglev table (natd builds it, with weights, over the backends that are
//! up); the flow then stays on that backend for its life (`FLOWS`), even
//! when the set changes. Half-open flows (a TCP SYN, a UDP datagram not yet
//! answered) live in a bounded LRU table and move to the non-evicting flow
//! table once the handshake completes: a SYN flood churns only the LRU, and
//! an evicted half-open flow re-hashes to the same backend.
//!
//! Every backend endpoint also has a static outbound mapping
//! (`OUTBOUND[server:port] = external:port`, flag `mapping_flags::FORWARD`):
//! replies leave from the forward's external endpoint, and so do
//! connections the server opens from its forwarded port.

/// Forwards (services) at most; a port range counts once.
pub const MAX_FORWARDS: u32 = 64;

/// Backends of one forward at most.
pub const MAX_BACKENDS: u32 = 32;

/// Slots of a forward's Maglev table: a prime, about 128 per backend at
/// the most backends (Maglev wants the table much larger than the set).
pub const MAGLEV_SIZE: u32 = 4099;

/// External endpoints (protocol, address, port) forwarded at most: each port
/// of a range is one.
pub const MAX_FORWARD_PORTS: u32 = 1 << 16;

/// Established forwarded flows at most (never evicted; full: new flows stay
/// in the half-open table).
pub const MAX_FORWARD_FLOWS: u32 = 1 << 18;

/// Half-open forwarded flows at most (LRU: a flood evicts only these).
pub const MAX_PENDING_FLOWS: u32 = 1 << 16;

/// A Maglev slot or flow that names no backend.
pub const NO_BACKEND: u32 = u32::MAX;

/// What `FORWARDS[external endpoint]` holds: which forward, and where in
/// its port range the port lies (a backend's port is its base port plus
/// this offset).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForwardPort {
    /// Index of the forward (`< MAX_FORWARDS`).
    pub forward: u32,
    /// Port minus the range's first port, host order (0 for a single port).
    pub offset: u16,
    /// `port_flags::*`.
    pub flags: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<ForwardPort>() == 8);

impl ForwardPort {
    pub const fn new(forward: u32, offset: u16, flags: u8) -> Self {
        Self { forward, offset, flags, _pad: 0 }
    }

    /// Whether natd, not the Maglev table, picks the backend of a new flow.
    #[inline(always)]
    pub const fn is_pinned(&self) -> bool {
        self.flags & port_flags::PINNED != 0
    }
}

/// What `ForwardPort::flags` holds.
pub mod port_flags {
    /// New flows are routed by natd, not by the Maglev table: the programs
    /// translate only the flows natd has filed (it pins them in `PENDING`)
    /// and pass the first packets of any other to the kernel, where natd's
    /// socket reads them. A QUIC proxy's UDP port: natd routes a connection
    /// by the SNI of its Initial packets, then the flow is a forwarded one.
    pub const PINNED: u8 = 1;
}

/// One backend of a forward, in `BACKENDS[forward * MAX_BACKENDS + slot]`.
/// Slots are stable while the backend is configured: a flow names its
/// backend by slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    /// Server address, network byte order.
    pub addr_be: u32,
    /// The server port for the forward's first external port, host order.
    pub base_port: u16,
    /// `backend_state::*`.
    pub state: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<Backend>() == 8);

impl Backend {
    /// The server endpoint for a port `offset` into the forward's range.
    #[inline(always)]
    pub const fn endpoint(&self, offset: u16, proto: u8) -> crate::Endpoint {
        crate::Endpoint::from_be(self.addr_be, self.base_port.wrapping_add(offset).to_be(), proto)
    }

    /// Whether a flow may stay on it: up, or draining (weight 0: no new
    /// flows, existing ones continue).
    #[inline(always)]
    pub const fn keeps_flows(&self) -> bool {
        self.state == backend_state::UP || self.state == backend_state::DRAINING
    }
}

/// What a backend slot is.
pub mod backend_state {
    /// No backend in this slot.
    pub const EMPTY: u8 = 0;
    /// Healthy: takes new flows (as its Maglev slots say) and keeps its own.
    pub const UP: u8 = 1;
    /// Failed its checks (or has not passed its first): takes no flows; a
    /// TCP SYN or a UDP datagram of one of its flows picks another backend.
    pub const DOWN: u8 = 2;
    /// Weight 0: no new flows, existing flows continue.
    pub const DRAINING: u8 = 3;
}

/// A forwarded flow's identity: the remote (client) endpoint and the
/// forward's external endpoint it came to. The same key finds the flow
/// from either side: inbound from (source, destination), outbound from
/// (destination, the static mapping's external endpoint).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Remote address and port, network byte order.
    pub remote_addr_be: u32,
    /// External address and port, network byte order.
    pub external_addr_be: u32,
    pub remote_port_be: u16,
    pub external_port_be: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 16);

impl FlowKey {
    /// Built as two 64-bit words, the padding zero in them: as a struct
    /// literal, the `[0; 3]` compiled to a BPF call to a byte-loop memset on
    /// every forwarded packet (LLVM's BPF backend calls memset even for
    /// three bytes).
    #[inline(always)]
    pub const fn new(remote: &crate::Endpoint, external: &crate::Endpoint) -> Self {
        let (addrs, rest) = if cfg!(target_endian = "little") {
            (
                remote.addr_be as u64 | (external.addr_be as u64) << 32,
                remote.port_be as u64 | (external.port_be as u64) << 16 | (external.proto as u64) << 32,
            )
        } else {
            (
                (remote.addr_be as u64) << 32 | external.addr_be as u64,
                (remote.port_be as u64) << 48 | (external.port_be as u64) << 32 | (external.proto as u64) << 24,
            )
        };
        // SAFETY: 16 bytes of integers, every bit pattern valid; the words
        // lay the fields out at their repr(C) offsets (0, 4, 8, 10, 12).
        unsafe { core::mem::transmute::<[u64; 2], Self>([addrs, rest]) }
    }

    /// A hash of the remote end, for the Maglev pick: the same client
    /// endpoint picks the same backend while the table stays the same
    /// (an evicted half-open flow finds its backend again). A
    /// multiply-xorshift mix: cheap in the datapath, spread enough for a
    /// table of a few thousand slots.
    #[inline(always)]
    pub const fn pick_hash(&self) -> u32 {
        let mut h = (self.remote_addr_be as u64) << 32 | (self.remote_port_be as u64) << 16 | self.external_port_be as u64;
        h ^= (self.proto as u64) << 56 ^ (self.external_addr_be as u64).rotate_left(17);
        h = h.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        h ^= h >> 29;
        h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        (h >> 32) as u32
    }
}

/// A forwarded flow, in `FLOWS` (established) or `PENDING` (half-open).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    /// Last packet either way, on the clock natd publishes (ns).
    pub last_seen_ns: u64,
    /// The forward and the backend slot the flow is on.
    pub forward: u16,
    pub backend: u16,
    /// Port offset into the forward's range (as `ForwardPort::offset`).
    pub offset: u16,
    /// TCP flags seen from the remote (inbound) and from the server.
    pub tcp_flags_in: u8,
    pub tcp_flags_out: u8,
}
const _: () = assert!(core::mem::size_of::<Flow>() == 16);

/// What the datapath counts per backend for natd's passive health checks,
/// in `SIGNALS[forward * MAX_BACKENDS + slot]`, added to atomically.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Signals {
    /// New flows sent to the backend (picked for it, or moved to it), every
    /// protocol: what `natd forwards` shows as new flows per second.
    pub flows: u64,
    /// TCP SYNs of new flows sent to the backend.
    pub syns: u64,
    /// SYN-ACKs from it.
    pub syn_acks: u64,
    /// RSTs from it before a handshake completed (connection refused).
    pub resets: u64,
    /// ICMP Destination Unreachable from it about one of its flows.
    pub unreachables: u64,
}
const _: () = assert!(core::mem::size_of::<Signals>() == 40);

/// What `Mapping::session` holds for a backend's static mapping (flag
/// `mapping_flags::FORWARD`), which has no session slot: the forward, the
/// backend slot and the port's offset in the forward's range.
#[inline(always)]
pub const fn static_backend_session(forward: u32, slot: u32, offset: u16) -> u32 {
    (forward << 24) | ((slot & 0xff) << 16) | offset as u32
}

/// The (forward, backend slot, offset) of `static_backend_session`.
#[inline(always)]
pub const fn static_backend(session: u32) -> (u32, u32, u16) {
    (session >> 24, (session >> 16) & 0xff, session as u16)
}

const _: () = assert!(MAX_FORWARDS <= 256 && MAX_BACKENDS <= 256);

/// Bits of `Mapping::flags`.
pub mod mapping_flags {
    /// A backend's static outbound mapping: never aged, not filtered, and
    /// its packets belong to forwarded flows.
    pub const FORWARD: u16 = 1;
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), Copy, explicit padding, sizes asserted, any bit
    // pattern valid.
    unsafe impl aya::Pod for super::ForwardPort {}
    unsafe impl aya::Pod for super::Backend {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::Flow {}
    unsafe impl aya::Pod for super::Signals {}
}

#[cfg(test)]
mod tests {
    use core::net::Ipv4Addr;

    use super::*;
    use crate::{Endpoint, proto};

    proptest::proptest! {
        /// The key built from words is the struct literal, padding zero.
        #[test]
        fn a_flow_key_from_words_is_its_fields(ra: u32, rp: u16, ea: u32, ep: u16, pr: u8) {
            let (remote, external) = (Endpoint { addr_be: ra, port_be: rp, proto: pr, _pad: 0 }, Endpoint { addr_be: ea, port_be: ep, proto: pr, _pad: 0 });
            let literal = FlowKey { remote_addr_be: ra, external_addr_be: ea, remote_port_be: rp, external_port_be: ep, proto: pr, _pad: [0; 3] };
            proptest::prop_assert_eq!(FlowKey::new(&remote, &external), literal);
        }
    }

    #[test]
    fn a_static_mapping_names_its_backend() {
        for (forward, slot, offset) in [(0, 0, 0), (63, 31, 4095), (7, 3, 100)] {
            assert_eq!(static_backend(static_backend_session(forward, slot, offset)), (forward, slot, offset));
        }
    }

    #[test]
    fn a_backend_port_follows_the_range_offset() {
        let b = Backend { addr_be: u32::from_ne_bytes([192, 168, 1, 10]), base_port: 8000, state: backend_state::UP, _pad: 0 };
        assert_eq!(b.endpoint(0, proto::TCP), Endpoint::new(Ipv4Addr::new(192, 168, 1, 10), 8000, proto::TCP));
        assert_eq!(b.endpoint(99, proto::TCP).port(), 8099);
        assert!(b.keeps_flows());
        assert!(!Backend { state: backend_state::DOWN, ..b }.keeps_flows());
    }

    /// The pick spreads clients over a Maglev table evenly enough: 64k
    /// client ports over 4099 slots, no slot more than twice the mean.
    #[test]
    fn pick_hashes_spread_clients() {
        let external = Endpoint::new(Ipv4Addr::new(203, 0, 113, 1), 8080, proto::TCP);
        let mut counts = [0u32; MAGLEV_SIZE as usize];
        for port in 0..65536u32 {
            let remote = Endpoint::new(Ipv4Addr::new(198, 51, 100, (port % 200) as u8), port as u16, proto::TCP);
            counts[(FlowKey::new(&remote, &external).pick_hash() % MAGLEV_SIZE) as usize] += 1;
        }
        let mean = 65536 / MAGLEV_SIZE;
        assert!(counts.iter().all(|c| *c <= 2 * mean + 8), "max {}", counts.iter().max().unwrap());
    }
}
