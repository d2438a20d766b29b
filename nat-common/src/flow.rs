//! Map keys and values.
//!
//! Addresses and ports are kept in network byte order exactly as they sit in
//! the packet (`_be` fields: the in-memory bytes are the wire bytes), so the
//! datapath copies them without swapping; the helpers here convert at the edge.

use core::net::Ipv4Addr;

/// One side of a flow: address, port (the identifier for ICMP echo) and protocol.
///
/// Key of both mapping maps. Mapping is endpoint-independent (RFC 4787 REQ-1,
/// RFC 5382 REQ-1): the remote endpoint is not part of the key.
/// - `OUTBOUND`: the inside endpoint, i.e. the source of a LAN packet.
/// - `INBOUND`: the external endpoint, i.e. the destination of a WAN packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    /// IPv4 address, network byte order.
    pub addr_be: u32,
    /// TCP/UDP port or ICMP echo identifier, network byte order.
    pub port_be: u16,
    /// IPv4 protocol number (`crate::proto`).
    pub proto: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<Endpoint>() == 8);

impl Endpoint {
    pub const fn new(addr: Ipv4Addr, port: u16, proto: u8) -> Self {
        Self::from_be(u32::from_ne_bytes(addr.octets()), port.to_be(), proto)
    }

    /// From fields as they sit in a packet (network byte order).
    pub const fn from_be(addr_be: u32, port_be: u16, proto: u8) -> Self {
        Self { addr_be, port_be, proto, _pad: 0 }
    }

    pub const fn addr(&self) -> Ipv4Addr {
        let o = self.addr_be.to_ne_bytes();
        Ipv4Addr::new(o[0], o[1], o[2], o[3])
    }

    /// Port (or ICMP identifier) in host byte order.
    pub const fn port(&self) -> u16 {
        u16::from_be(self.port_be)
    }
}

/// The translation one direction applies.
///
/// `OUTBOUND[inside] = Mapping{external}` and `INBOUND[external] = Mapping{inside}`
/// always exist as a pair (the daemon inserts the reverse entry first), and
/// both name the same session slot in `LIVENESS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mapping {
    /// Address to write into the packet, network byte order.
    pub addr_be: u32,
    /// Port (or ICMP identifier) to write, network byte order.
    pub port_be: u16,
    pub _pad: u16,
    /// Index of the session's `Liveness` in the `LIVENESS` array.
    pub session: u32,
}
const _: () = assert!(core::mem::size_of::<Mapping>() == 12);

impl Mapping {
    pub const fn new(to: Endpoint, session: u32) -> Self {
        Self { addr_be: to.addr_be, port_be: to.port_be, _pad: 0, session }
    }

    /// The endpoint this mapping translates to, with the given protocol.
    pub const fn target(&self, proto: u8) -> Endpoint {
        Endpoint::from_be(self.addr_be, self.port_be, proto)
    }
}

/// What the daemon ages a session by, one per session in the `LIVENESS`
/// array, written by the datapath and read by the daemon through a shared
/// memory mapping of the array: the aging scan makes no syscall per session.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Liveness {
    /// Last packet in either direction, on the clock the daemon publishes
    /// (CLOCK_MONOTONIC_COARSE, ns). Written at most once per
    /// `LAST_SEEN_GRANULARITY_NS`.
    pub last_seen_ns: u64,
    /// TCP flags seen outbound and inbound (OR of `tcp_flags::*`), written only
    /// when a new flag appears.
    pub tcp_flags_out: u8,
    pub tcp_flags_in: u8,
    pub _pad: [u8; 6],
}
const _: () = assert!(core::mem::size_of::<Liveness>() == 16);

impl Liveness {
    pub const fn new(now_ns: u64) -> Self {
        Self { last_seen_ns: now_ns, tcp_flags_out: 0, tcp_flags_in: 0, _pad: [0; 6] }
    }
}

/// TCP flag bits as in the TCP header's flags byte, kept in `Liveness`.
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
    /// The flags the datapath records: the ones that change a flow's state.
    pub const TRACKED: u8 = FIN | SYN | RST | ACK;
}

/// Gateway-wide settings the programs read from `CONFIG[0]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct GatewayConfig {
    /// The public address inbound lookups answer for, network byte order.
    pub external_addr_be: u32,
    /// The WAN interface: LAN traffic routed there must be translated or dropped.
    pub wan_ifindex: u32,
    /// NAT port range, host byte order, inclusive. WAN packets to the external
    /// address inside this range without a mapping are dropped; outside it they
    /// belong to the gateway host and pass.
    pub port_min: u16,
    pub port_max: u16,
    pub _pad: u32,
    /// The gateway's IPv4 address on the LAN interface, network byte order:
    /// the source of the errors it sends into the LAN itself (Fragmentation
    /// Needed, RFC 4787 REQ-13). 0: none, such errors are not sent.
    pub lan_addr_be: u32,
}
const _: () = assert!(core::mem::size_of::<GatewayConfig>() == 20);

impl GatewayConfig {
    pub const fn new(external: Ipv4Addr, wan_ifindex: u32, port_min: u16, port_max: u16) -> Self {
        Self {
            external_addr_be: u32::from_ne_bytes(external.octets()),
            wan_ifindex,
            port_min,
            port_max,
            _pad: 0,
            lan_addr_be: 0,
        }
    }

    /// The same with the LAN interface's address set (`lan_addr_be`).
    pub const fn with_lan_addr(mut self, lan: Ipv4Addr) -> Self {
        self.lan_addr_be = u32::from_ne_bytes(lan.octets());
        self
    }
}

/// A `bpf_fib_lookup` result the datapath reuses for `NEXT_HOP_TTL_NS`: the
/// route and neighbour lookups are most of a hit's cost. One slot of the
/// direct-mapped, per-CPU `NEXT_HOPS` cache, tagged with what it answers for.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NextHop {
    /// Destination address of the translated packet, network byte order.
    pub dst_be: u32,
    /// The interface it came in on (route lookups depend on it).
    pub ingress_ifindex: u32,
    pub egress_ifindex: u32,
    /// The largest IPv4 total length the route lookup has accepted for this
    /// destination (host order). A longer packet gets a real lookup, which
    /// checks it against the egress MTU.
    pub max_len: u16,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
    pub _pad: [u8; 6],
    /// `bpf_ktime_get_coarse_ns` after which the entry is looked up again;
    /// 0: the slot is empty.
    pub expires_ns: u64,
}
const _: () = assert!(core::mem::size_of::<NextHop>() == 40);

impl NextHop {
    /// True while the entry is fresh and is the one for this destination and
    /// ingress (a direct-mapped slot may hold another).
    #[inline(always)]
    pub const fn answers(&self, dst_be: u32, ingress_ifindex: u32, now_ns: u64) -> bool {
        self.dst_be == dst_be && self.ingress_ifindex == ingress_ifindex && now_ns < self.expires_ns
    }

    /// The cache slot of a destination: a multiplicative hash, so that nearby
    /// addresses spread over the slots.
    #[inline(always)]
    pub const fn slot(dst_be: u32, ingress_ifindex: u32) -> u32 {
        let h = (dst_be ^ ingress_ifindex.wrapping_mul(0x9e37_79b9)).wrapping_mul(0x9e37_79b1);
        h >> (32 - NEXT_HOP_CACHE_BITS)
    }
}

/// log2 of the number of slots of the next-hop cache (per CPU).
pub const NEXT_HOP_CACHE_BITS: u32 = 12;

/// How long a cached next hop is used before the route is looked up again:
/// the longest a route or neighbour change goes unnoticed by the fast path.
pub const NEXT_HOP_TTL_NS: u64 = 1_000_000_000;

/// An external port and a session slot the daemon has set aside for the
/// datapath: a new flow pops one from its protocol's free queue, installs the
/// mapping pair itself and forwards its first packet without waiting.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FreePort {
    pub session: u32,
    /// Host byte order.
    pub port: u16,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<FreePort>() == 8);

/// Capacity of each protocol's free-port queue (natd keeps fewer queued,
/// `FREE_QUEUE_TARGET`; benchmarks fill more).
pub const FREE_QUEUE_CAPACITY: u32 = 32768;

/// What the datapath reports when it has claimed a `FreePort` for a new flow,
/// so the daemon learns every mapping it owns.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClaimEvent {
    /// `miss_kind::CLAIMED`, at the same offset as `MissEvent::kind`.
    pub kind: u32,
    pub session: u32,
    pub inside: Endpoint,
    pub external: Endpoint,
}
const _: () = assert!(core::mem::size_of::<ClaimEvent>() == 24);

/// What a ring event asks of the daemon (its first `u32`).
pub mod miss_kind {
    /// No outbound mapping: allocate one, then send the frame's packet on
    /// (the frame is untranslated).
    pub const NEW_FLOW: u32 = 1;
    /// Translated, but the next hop's MAC is unknown: send the (translated) IPv4
    /// packet through the kernel, which resolves the neighbour.
    pub const NO_NEIGHBOUR: u32 = 2;
    /// A `ClaimEvent`: the datapath installed a mapping from a free port.
    pub const CLAIMED: u32 = 3;
}

/// Largest frame the datapath hands to the daemon: a 1500-byte IPv4 packet
/// with Ethernet and two VLAN tags fits, with room to spare. A power of two,
/// so the eBPF side can bound the copy with a mask.
pub const MISS_FRAME_MAX: usize = 2048;

/// A packet handed from the datapath to the daemon through the `MISSES` ring.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct MissEvent {
    /// `miss_kind::*`.
    pub kind: u32,
    /// Interface the frame arrived on.
    pub ingress_ifindex: u32,
    /// Bytes of `frame` that hold the packet.
    pub frame_len: u32,
    /// Offset of the IPv4 header in `frame` (after Ethernet and VLAN tags).
    pub l3_offset: u16,
    pub _pad: u16,
    pub frame: [u8; MISS_FRAME_MAX],
}
const _: () = assert!(core::mem::size_of::<MissEvent>() == 16 + MISS_FRAME_MAX);

impl MissEvent {
    /// The frame bytes, bounded by both `frame_len` and the buffer.
    pub fn frame(&self) -> &[u8] {
        let len = (self.frame_len as usize).min(MISS_FRAME_MAX);
        &self.frame[..len]
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), Copy, no padding the compiler adds (explicit `_pad`
    // fields, sizes asserted above), every bit pattern valid.
    unsafe impl aya::Pod for super::Endpoint {}
    unsafe impl aya::Pod for super::Mapping {}
    unsafe impl aya::Pod for super::Liveness {}
    unsafe impl aya::Pod for super::FreePort {}
    unsafe impl aya::Pod for super::GatewayConfig {}
    unsafe impl aya::Pod for super::MissEvent {}
    unsafe impl aya::Pod for super::NextHop {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_keeps_wire_order() {
        let e = Endpoint::new(Ipv4Addr::new(192, 0, 2, 1), 0x1234, crate::proto::UDP);
        // The key's bytes are exactly the packet's bytes.
        assert_eq!(e.addr_be.to_ne_bytes(), [192, 0, 2, 1]);
        assert_eq!(e.port_be.to_ne_bytes(), [0x12, 0x34]);
        assert_eq!(e.addr(), Ipv4Addr::new(192, 0, 2, 1));
        assert_eq!(e.port(), 0x1234);
    }

    #[test]
    fn mapping_target_round_trips() {
        let e = Endpoint::new(Ipv4Addr::new(203, 0, 113, 7), 40000, crate::proto::TCP);
        assert_eq!(Mapping::new(e, 5).target(crate::proto::TCP), e);
    }
}
