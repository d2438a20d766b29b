//! Map keys and values.
//!
//! Addresses and ports are kept in network byte order exactly as they sit in
//! the packet (`_be` fields: the in-memory bytes are the wire bytes), so the
//! datapath copies them without swapping; the helpers here convert at the edge.

use core::net::Ipv4Addr;

use crate::source::{MAX_INSIDE_PREFIXES, MAX_OWN_ADDRS, Prefix};

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
/// `OUTBOUND[inside] = Mapping{external}`, and inbound the same `Mapping{inside}`
/// made from the external endpoint's `InboundPort` and its session's
/// `Liveness` (`InboundPort::mapping`). The two always exist as a pair (the
/// reverse entry goes in first) and name the same session slot in `LIVENESS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mapping {
    /// Address to write into the packet, network byte order.
    pub addr_be: u32,
    /// Port (or ICMP identifier) to write, network byte order.
    pub port_be: u16,
    /// `forward::mapping_flags::*`.
    pub flags: u16,
    /// Index of the session's `Liveness` in the `LIVENESS` array.
    pub session: u32,
}
const _: () = assert!(core::mem::size_of::<Mapping>() == 12);

impl Mapping {
    pub const fn new(to: Endpoint, session: u32) -> Self {
        Self { addr_be: to.addr_be, port_be: to.port_be, flags: 0, session }
    }

    /// The endpoint this mapping translates to, with the given protocol.
    pub const fn target(&self, proto: u8) -> Endpoint {
        Endpoint::from_be(self.addr_be, self.port_be, proto)
    }
}

/// An external endpoint's entry in the `INBOUND` array, at
/// `GatewayConfig::inbound_index`: the external port space is natd's, so
/// the inbound table is an array indexed by (pool address, protocol, port)
/// rather than a hash map, 8 bytes a port instead of a hash element's 88
/// (issue 16), and a lookup is an address computation, not a hash. It
/// holds what the inside endpoint needs besides its address, which is in
/// the session's `Liveness` (one cache line for both on the hit path).
///
/// 8 bytes, written and cleared as one aligned store (natd writes through
/// its memory mapping of the array, the claim path as one u64), so a
/// packet never sees half an entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InboundPort {
    /// The session slot (`LIVENESS`).
    pub session: u32,
    /// The inside port (or ICMP identifier), network byte order.
    pub port_be: u16,
    /// `InboundPort::IN_USE`, and `forward::mapping_flags::*` above it.
    pub flags: u16,
}
const _: () = assert!(core::mem::size_of::<InboundPort>() == 8);

impl InboundPort {
    /// Set on every entry in use: an all-zero entry is a free port (slot 0,
    /// ICMP identifier 0 is a session like any other).
    pub const IN_USE: u16 = 1 << 15;

    /// The entry for the inside endpoint `inside` of session `session`.
    pub const fn new(inside: &Endpoint, session: u32) -> Self {
        Self { session, port_be: inside.port_be, flags: Self::IN_USE }
    }

    pub const fn in_use(&self) -> bool {
        self.flags & Self::IN_USE != 0
    }

    /// The entry as one u64, to store in one go.
    #[inline(always)]
    pub const fn bits(&self) -> u64 {
        self.session as u64 | (self.port_be as u64) << 32 | (self.flags as u64) << 48
    }

    /// The entry `bits` made (on this little-endian layout, the u64 at its address).
    #[inline(always)]
    pub const fn from_bits(bits: u64) -> Self {
        Self { session: bits as u32, port_be: (bits >> 32) as u16, flags: (bits >> 48) as u16 }
    }

    /// The inbound translation: to `inside_addr_be` (the session's
    /// `Liveness::inside_addr_be`) and this entry's port.
    pub const fn mapping(&self, inside_addr_be: u32) -> Mapping {
        Mapping { addr_be: inside_addr_be, port_be: self.port_be, flags: self.flags & !Self::IN_USE, session: self.session }
    }
}

/// Protocols with ports in `INBOUND`, and how many: TCP, UDP, ICMP echo, SCTP.
pub const INBOUND_PROTOCOLS: u32 = 4;

/// Entries of the `INBOUND` array: every port of every protocol of every
/// pool address (2,097,152 of 8 bytes: 16 MiB, 16 bytes a session at
/// `MAX_MAPPINGS`).
pub const INBOUND_PORTS: u32 = MAX_POOL_ADDRS as u32 * INBOUND_PROTOCOLS * 65536;

/// Where the entry of port `port_be` of `proto_nr` on the pool's address
/// number `pool_position` sits in `INBOUND`; `None` for a protocol without
/// ports.
#[inline(always)]
pub const fn inbound_index(pool_position: u32, proto_nr: u8, port_be: u16) -> Option<u32> {
    // The protocol's class without a branch per protocol (each would fork
    // the verifier's walk of everything after it): ICMP 0, TCP 1, UDP 2,
    // SCTP 3, checked against the protocol the class stands for.
    let class = ((proto_nr as u32 * 7) >> 3) & (INBOUND_PROTOCOLS - 1);
    if (INBOUND_CLASS_PROTOCOLS >> (class * 8)) & 0xff != proto_nr as u32 {
        return None;
    }
    // Bounded for the verifier whatever the caller proved.
    let position = pool_position & (MAX_POOL_ADDRS as u32 - 1);
    Some((((position * INBOUND_PROTOCOLS) + class) << 16) | u16::from_be(port_be) as u32)
}
const _: () = assert!(MAX_POOL_ADDRS.is_power_of_two());

/// The protocol of each class of `inbound_index`, a byte each from class 0.
const INBOUND_CLASS_PROTOCOLS: u32 =
    crate::proto::ICMP as u32 | (crate::proto::TCP as u32) << 8 | (crate::proto::UDP as u32) << 16 | (crate::proto::SCTP as u32) << 24;

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
    /// SCTP chunk types seen as the first chunk of a packet outbound and
    /// inbound (OR of `sctp_chunks::*`), written only when one is new.
    /// (Were `_pad` before SCTP: zero in sessions made before.)
    pub sctp_chunks_out: u8,
    pub sctp_chunks_in: u8,
    /// The session's inside address, network byte order: what an inbound
    /// packet's destination becomes (the rest is in its `InboundPort`).
    /// Written before the `INBOUND` entry that names this slot. 0 for a
    /// session without one (ESP's, forwards').
    pub inside_addr_be: u32,
}
const _: () = assert!(core::mem::size_of::<Liveness>() == 16);

impl Liveness {
    pub const fn new(now_ns: u64) -> Self {
        Self::of_inside(now_ns, 0)
    }

    /// A new session of the inside address `inside_addr_be`, last seen `now_ns`.
    pub const fn of_inside(now_ns: u64, inside_addr_be: u32) -> Self {
        Self { last_seen_ns: now_ns, tcp_flags_out: 0, tcp_flags_in: 0, sctp_chunks_out: 0, sctp_chunks_in: 0, inside_addr_be }
    }

    /// What a session of `proto_nr` recorded of its state, (outbound,
    /// inbound): SCTP chunk kinds for SCTP, TCP flags otherwise (zero for
    /// UDP and ICMP), as natd's timeouts and views read them.
    pub const fn state_bits(&self, proto_nr: u8) -> (u8, u8) {
        match proto_nr {
            crate::proto::SCTP => (self.sctp_chunks_out, self.sctp_chunks_in),
            _ => (self.tcp_flags_out, self.tcp_flags_in),
        }
    }
}

/// SCTP chunk types (RFC 9260 §3.2) as bits, the way `Liveness` records
/// them: only the kinds that move an association between opening,
/// established and closing.
pub mod sctp_chunks {
    /// INIT.
    pub const INIT: u8 = 0x01;
    /// INIT ACK.
    pub const INIT_ACK: u8 = 0x02;
    /// COOKIE ACK: the four-way handshake completed.
    pub const COOKIE_ACK: u8 = 0x04;
    /// DATA (or I-DATA, RFC 8260): user data flows.
    pub const DATA: u8 = 0x08;
    /// SHUTDOWN, SHUTDOWN ACK or SHUTDOWN COMPLETE.
    pub const SHUTDOWN: u8 = 0x10;
    /// ABORT.
    pub const ABORT: u8 = 0x20;

    /// The bit of a first chunk's type, 0 for types that change nothing.
    #[inline(always)]
    pub const fn bit(chunk_type: u8) -> u8 {
        match chunk_type {
            0 | 64 => DATA,
            1 => INIT,
            2 => INIT_ACK,
            6 => ABORT,
            7 | 8 | 14 => SHUTDOWN,
            11 => COOKIE_ACK,
            _ => 0,
        }
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

/// Bits of `GatewayConfig::wire_ingress`.
pub mod wire_ingress {
    pub const LAN: u8 = 1;
    pub const WAN: u8 = 2;
}

/// Gateway-wide settings the programs read from `CONFIG[0]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct GatewayConfig {
    /// The external address pool, network byte order: the first `pool_len`
    /// entries are used. Each inside host always gets the same one
    /// (`pool_index`, paired pooling).
    pub external_addrs_be: [u32; MAX_POOL_ADDRS],
    pub pool_len: u32,
    /// The WAN interface: LAN traffic routed there must be translated or dropped.
    pub wan_ifindex: u32,
    /// NAT port range, host byte order, inclusive. WAN packets to the external
    /// address inside this range without a mapping are dropped; outside it they
    /// belong to the gateway host and pass.
    pub port_min: u16,
    pub port_max: u16,
    /// Inbound filtering per protocol (`filtering::*`): TCP, UDP (and
    /// SCTP), ICMP echo.
    pub filtering_tcp: u8,
    pub filtering_udp: u8,
    pub filtering_icmp: u8,
    /// Keep the inside port's parity (RFC 4787 REQ-4): 1 on, 0 off.
    pub port_parity: u8,
    /// Keep the inside port's class (RFC 4787 REQ-3a), 1 on: an inside port
    /// below 1024 is left to natd, which maps it into the low port range.
    pub port_class: u8,
    /// Always 0. The programs add it to the key of their reason counters so
    /// the key is not a constant to the verifier (`nat-ebpf` `verdict`).
    pub opaque_zero: u8,
    /// `wire_ingress::LAN` and `::WAN`: set when that interface's frames
    /// come off a wire (a NIC's driver running the program natively), so
    /// none carries a partial checksum and the hit path skips the test for
    /// one (`nat-ebpf` `hit::send`). Unset, the safe default: a veth or tun
    /// peer's stack, or the generic mode's skbs, may hand over a segment
    /// whose checksum its TX offload was to finish.
    pub wire_ingress: u8,
    pub _pad: [u8; 5],
    /// How long a remote stays permitted after the inside endpoint last sent
    /// to it, per protocol (ns): the protocol's idle timeout, so a permit
    /// never outlives the mapping it was made for.
    pub permit_ttl_tcp_ns: u64,
    pub permit_ttl_udp_ns: u64,
    pub permit_ttl_icmp_ns: u64,
    /// External ports of one protocol one inside address may hold at once
    /// (RFC 6888 REQ-4); 0: no limit.
    pub ports_per_host: u32,
    /// The low port range (RFC 4787 REQ-3a), inclusive; 0-0: none. Like the
    /// NAT range, its unmapped ports on an external address are dropped.
    pub low_port_min: u16,
    pub low_port_max: u16,
    /// The gateway's IPv4 address on the LAN interface, network byte order:
    /// the source of the errors it sends into the LAN itself (Fragmentation
    /// Needed, RFC 4787 REQ-13). 0: none, such errors are not sent.
    pub lan_addr_be: u32,
    /// 1 when the operator's `WAN_DROP_SOURCES` list holds a prefix: only
    /// then does the WAN program look a source up in it.
    pub wan_drop_listed: u32,
    /// The inside prefixes (BCP 38): the LAN program translates and forwards
    /// only sources in the first `inside_len`, the WAN program drops every
    /// source in them (`crate::source`).
    pub inside: [Prefix; MAX_INSIDE_PREFIXES],
    pub inside_len: u32,
    /// Bit i set: `inside[i]` is a prefix of the LAN interface itself, whose
    /// network and broadcast addresses are no host's (RFC 1812 5.3.7).
    pub inside_connected: u32,
    /// The addresses of the gateway's own interfaces besides the external
    /// pool, network byte order, the first `own_len` used: no packet from
    /// either side may claim one as its source.
    pub own_addrs_be: [u32; MAX_OWN_ADDRS],
    pub own_len: u32,
    /// The LAN interface: with `wan_ifindex`, the only interfaces translated
    /// packets leave by.
    pub lan_ifindex: u32,
    /// One bit per first octet of an address: set when an address starting
    /// with it may be a source the WAN side refuses (special-purpose, inside,
    /// the gateway's own). Most sources on the WAN start with an octet none
    /// of those do, and the screen lets them by with one test. Derived from
    /// the fields above by `with_source_screen`.
    pub source_screen: [u64; 4],
}
const _: () = assert!(core::mem::size_of::<GatewayConfig>() == 304);

impl GatewayConfig {
    /// One external address, endpoint-independent filtering for every
    /// protocol, parity and class not kept, no quota.
    pub const fn new(external: Ipv4Addr, wan_ifindex: u32, port_min: u16, port_max: u16) -> Self {
        let mut external_addrs_be = [0; MAX_POOL_ADDRS];
        external_addrs_be[0] = u32::from_ne_bytes(external.octets());
        Self {
            external_addrs_be,
            pool_len: 1,
            wan_ifindex,
            port_min,
            port_max,
            filtering_tcp: filtering::ENDPOINT_INDEPENDENT,
            filtering_udp: filtering::ENDPOINT_INDEPENDENT,
            filtering_icmp: filtering::ENDPOINT_INDEPENDENT,
            port_parity: 0,
            port_class: 0,
            opaque_zero: 0,
            wire_ingress: 0,
            _pad: [0; 5],
            permit_ttl_tcp_ns: 0,
            permit_ttl_udp_ns: 0,
            permit_ttl_icmp_ns: 0,
            ports_per_host: 0,
            low_port_min: 0,
            low_port_max: 0,
            lan_addr_be: 0,
            wan_drop_listed: 0,
            inside: [Prefix { addr_be: 0, mask_be: 0 }; MAX_INSIDE_PREFIXES],
            inside_len: 0,
            inside_connected: 0,
            own_addrs_be: [0; MAX_OWN_ADDRS],
            own_len: 0,
            lan_ifindex: 0,
            source_screen: [0; 4],
        }
    }

    /// The same with one more inside prefix (`connected`: a prefix of the
    /// LAN interface itself). Beyond `MAX_INSIDE_PREFIXES` it is left out:
    /// natd refuses such a configuration before it gets here.
    pub const fn with_inside_prefix(mut self, prefix: Prefix, connected: bool) -> Self {
        let i = self.inside_len as usize;
        if i < MAX_INSIDE_PREFIXES {
            self.inside[i] = prefix;
            if connected {
                self.inside_connected |= 1 << i;
            }
            self.inside_len += 1;
        }
        self
    }

    /// The same with one more address of the gateway's own (up to `MAX_OWN_ADDRS`).
    pub const fn with_own_addr(mut self, addr: Ipv4Addr) -> Self {
        let i = self.own_len as usize;
        if i < MAX_OWN_ADDRS {
            self.own_addrs_be[i] = u32::from_ne_bytes(addr.octets());
            self.own_len += 1;
        }
        self
    }

    /// The same with the LAN interface's index set (`lan_ifindex`).
    pub const fn with_lan_ifindex(mut self, lan_ifindex: u32) -> Self {
        self.lan_ifindex = lan_ifindex;
        self
    }

    /// The same with the LAN interface's address set (`lan_addr_be`).
    pub const fn with_lan_addr(mut self, lan: Ipv4Addr) -> Self {
        self.lan_addr_be = u32::from_ne_bytes(lan.octets());
        self
    }

    /// The same with `wire_ingress` set for the sides whose frames come off
    /// a wire.
    pub const fn with_wire_ingress(mut self, lan: bool, wan: bool) -> Self {
        self.wire_ingress = (if lan { wire_ingress::LAN } else { 0 }) | if wan { wire_ingress::WAN } else { 0 };
        self
    }

    /// Whether a frame that came in on the WAN (`from_wan`) or the LAN side
    /// came off a wire, and so cannot carry a partial checksum.
    #[inline(always)]
    pub const fn off_the_wire(&self, from_wan: bool) -> bool {
        self.wire_ingress & if from_wan { wire_ingress::WAN } else { wire_ingress::LAN } != 0
    }

    /// Whether `port` (host order) is one natd hands out: in the NAT range or
    /// the low range.
    #[inline(always)]
    pub const fn is_nat_port(&self, port: u16) -> bool {
        (port >= self.port_min && port <= self.port_max) || (self.low_port_max != 0 && port >= self.low_port_min && port <= self.low_port_max)
    }

    /// Whether `addr_be` is one of the external addresses.
    #[inline(always)]
    pub fn is_external(&self, addr_be: u32) -> bool {
        self.pool_position(addr_be).is_some()
    }

    /// Where `addr_be` is in the pool, if it is an external address.
    /// `opaque_zero` makes the position unknown to the verifier, so the
    /// paths from each address join again after the scan.
    #[inline(always)]
    pub fn pool_position(&self, addr_be: u32) -> Option<u32> {
        let mut i = 0;
        while i < MAX_POOL_ADDRS {
            if i as u32 >= self.pool_len {
                return None;
            }
            if self.external_addrs_be[i] == addr_be {
                return Some(i as u32 | self.opaque_zero as u32);
            }
            i += 1;
        }
        None
    }

    /// The `INBOUND` entry of `external`: its address's position in the
    /// pool, its protocol and port. `None`: not a pool address, or a
    /// protocol without ports, so no mapping can exist.
    #[inline(always)]
    pub fn inbound_index(&self, external: &Endpoint) -> Option<u32> {
        inbound_index(self.pool_position(external.addr_be)?, external.proto, external.port_be)
    }

    /// The pool index of the external address an inside host is paired with.
    #[inline(always)]
    pub const fn pool_index(&self, host_addr_be: u32) -> u32 {
        pool_index(host_addr_be, self.pool_len)
    }

    /// The filtering mode and permit lifetime of `proto`. SCTP is filtered
    /// as UDP is (natd makes UDP's permits last SCTP's longest timeout too).
    /// Two tests, as before SCTP: a third (`UDP | SCTP`) forked the
    /// verifier's walk wherever the protocol comes from a packet (ICMP
    /// quotes), +50,000 instructions in nat_lan.
    #[inline(always)]
    pub const fn filtering(&self, proto_nr: u8) -> (u8, u64) {
        match proto_nr {
            crate::proto::TCP => (self.filtering_tcp, self.permit_ttl_tcp_ns),
            crate::proto::ICMP => (self.filtering_icmp, self.permit_ttl_icmp_ns),
            // UDP and SCTP, the only others with mappings.
            _ => (self.filtering_udp, self.permit_ttl_udp_ns),
        }
    }

    /// Whether any protocol filters by remote (the PERMITS map is used).
    pub const fn filters_by_remote(&self) -> bool {
        self.filtering_tcp != filtering::ENDPOINT_INDEPENDENT
            || self.filtering_udp != filtering::ENDPOINT_INDEPENDENT
            || self.filtering_icmp != filtering::ENDPOINT_INDEPENDENT
    }
}

/// The most external addresses a pool holds.
pub const MAX_POOL_ADDRS: usize = 8;
// `pool_index` bounds its result with a mask.
const _: () = assert!(MAX_POOL_ADDRS.is_power_of_two());

/// Paired address pooling (RFC 4787 REQ-2): the pool index of an inside
/// host's external address, from its address alone, so every protocol and
/// every flow of the host gets the same one, in the datapath and in natd
/// alike, without shared state. A multiplicative hash spreads neighbouring
/// addresses over the pool.
#[inline(always)]
pub const fn pool_index(host_addr_be: u32, pool_len: u32) -> u32 {
    if pool_len <= 1 {
        return 0;
    }
    let mixed = u32::from_be(host_addr_be).wrapping_mul(0x9e37_79b1);
    // The mask changes nothing (pool_len <= MAX_POOL_ADDRS, a power of two)
    // but bounds the index for the verifier, which keeps no range across a
    // remainder: with 32-bit arithmetic (BPF v3) it did not even know the
    // upper half of the register was zero, and refused the index.
    ((mixed >> 16) % pool_len) & (MAX_POOL_ADDRS as u32 - 1)
}

/// Inbound filtering behaviour (RFC 4787 section 5, RFC 5382 REQ-3). Mapping
/// is endpoint-independent in every mode; filtering decides which remotes may
/// send in through a mapping.
pub mod filtering {
    /// Anyone may send to the external endpoint while the mapping lives.
    pub const ENDPOINT_INDEPENDENT: u8 = 0;
    /// Only addresses the inside endpoint has sent to.
    pub const ADDRESS_DEPENDENT: u8 = 1;
    /// Only address-and-port pairs the inside endpoint has sent to.
    pub const ADDRESS_AND_PORT_DEPENDENT: u8 = 2;
}

/// A remote an inside endpoint has sent to, in the `PERMITS` map (value: the
/// clock when it last did). The remote port is 0 under address-dependent
/// filtering and for ICMP echo (a remote has no identifier of its own).
///
/// Keyed by the inside endpoint rather than the session slot or external
/// port, so a permit cannot leak to a later mapping of a different inside
/// endpoint; a later mapping of the same endpoint inherits it only within its
/// lifetime, as if the old mapping had lived on.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct PermitKey {
    pub inside: Endpoint,
    pub remote_addr_be: u32,
    pub remote_port_be: u16,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<PermitKey>() == 16);

impl PermitKey {
    /// The key `mode` files a remote under (`None` for endpoint-independent
    /// filtering: nothing is recorded or checked).
    #[inline(always)]
    pub const fn new(mode: u8, inside: Endpoint, remote_addr_be: u32, remote_port_be: u16) -> Option<Self> {
        let remote_port_be = match mode {
            filtering::ADDRESS_AND_PORT_DEPENDENT if inside.proto != crate::proto::ICMP => remote_port_be,
            filtering::ADDRESS_AND_PORT_DEPENDENT | filtering::ADDRESS_DEPENDENT => 0,
            _ => return None,
        };
        Some(Self { inside, remote_addr_be, remote_port_be, _pad: 0 })
    }
}

/// An inside address and a protocol: the unit of the per-host port quota.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct HostKey {
    pub addr_be: u32,
    pub proto: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<HostKey>() == 8);

impl HostKey {
    /// Built as one 64-bit word, the padding zero in it (see
    /// `FlowKey::new`: a `[0; 3]` became a memset call in BPF).
    #[inline(always)]
    pub const fn of(endpoint: &Endpoint) -> Self {
        let word = if cfg!(target_endian = "little") {
            endpoint.addr_be as u64 | (endpoint.proto as u64) << 32
        } else {
            (endpoint.addr_be as u64) << 32 | (endpoint.proto as u64) << 24
        };
        // SAFETY: 8 bytes of integers, every bit pattern valid; the word
        // lays the fields out at their repr(C) offsets (0, 4).
        unsafe { core::mem::transmute::<u64, Self>(word) }
    }
}

/// Inside hosts (per protocol) whose quota the datapath tracks itself; the
/// claims of further hosts go to natd, which tracks every host.
pub const MAX_QUOTA_HOSTS: u32 = 1 << 16;

/// Capacity of the `PERMITS` LRU map when a protocol filters by remote: one
/// remote per session on average. Under pressure the least recently used
/// permits go first, which can drop replies to a remote an inside endpoint
/// has not sent to for the longest time; mappings are never touched.
pub const MAX_PERMITS: u32 = 1 << 20;

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
    /// Padding as two integers: a `[0; 6]` compiled to a BPF call to a
    /// byte-loop memset on each route lookup.
    pub _pad16: u16,
    pub _pad32: u32,
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

/// Capacity of each free-port queue (natd keeps fewer queued,
/// `FREE_QUEUE_TARGET`; benchmarks fill more). There is one queue per
/// protocol and port parity (`free_queue_name`).
pub const FREE_QUEUE_CAPACITY: u32 = 32768;

/// The name of the free-port queue of a protocol and port parity (0 even, 1
/// odd): `FREE_<T|U|S|I><parity>`, as the eBPF object declares them.
pub const fn free_queue_name(proto_nr: u8, parity: u16) -> &'static str {
    match (proto_nr, parity & 1) {
        (crate::proto::TCP, 0) => "FREE_T0",
        (crate::proto::TCP, _) => "FREE_T1",
        (crate::proto::UDP, 0) => "FREE_U0",
        (crate::proto::UDP, _) => "FREE_U1",
        (crate::proto::SCTP, 0) => "FREE_S0",
        (crate::proto::SCTP, _) => "FREE_S1",
        (_, 0) => "FREE_I0",
        _ => "FREE_I1",
    }
}

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
    /// A later fragment (offset > 0) leaving for the WAN whose first fragment
    /// has not been translated (yet): natd parks it until that happens (the
    /// frame is untranslated; dropped in the datapath).
    pub const FRAGMENT_OUT: u32 = 4;
    /// The same from the WAN, for the external address: natd parks a copy
    /// (the frame also goes on to the kernel, as it may be the gateway's own).
    pub const FRAGMENT_IN: u32 = 5;
    /// A `FragEvent`: a parked datagram's first fragment was translated.
    pub const FRAGMENT_TRANSLATED: u32 = 6;
    /// A new flow to a forward with no backend up: natd answers it (a TCP
    /// RST, an ICMP Port Unreachable) from the forward's endpoint (the frame
    /// is untranslated; dropped in the datapath).
    pub const NO_SERVER: u32 = 7;
    /// An ESP packet of no SA the datapath knows, either way (the frame is
    /// untranslated; dropped in the datapath): natd learns the SA
    /// (`nat::esp`) and sends it on, holds it, or drops it.
    pub const ESP: u32 = 8;
    /// Translated, but longer than the egress MTU (`MissEvent::mtu`) with DF
    /// clear: natd cuts it into fragments (RFC 791) and sends them through
    /// the kernel, as a router fragments what it forwards.
    pub const TOO_BIG: u32 = 9;
}

/// Which way a fragmented datagram crosses the gateway (`FragKey::dir`).
pub mod frag_dir {
    /// LAN -> WAN: the source address is rewritten.
    pub const OUT: u8 = 1;
    /// WAN -> LAN: the destination address is rewritten.
    pub const IN: u8 = 2;
}

/// The identity of a fragmented datagram as it arrived at the gateway
/// (RFC 791: source, destination, protocol and identification tell the
/// fragments of one datagram apart), plus the direction. Key of `FRAGS`
/// (what its first fragment was translated to) and `PARKED` (natd holds
/// later fragments that came before it).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FragKey {
    /// Source address as received, network byte order.
    pub src_be: u32,
    /// Destination address as received, network byte order.
    pub dst_be: u32,
    /// IPv4 identification, network byte order.
    pub id_be: u16,
    pub proto: u8,
    /// `frag_dir::*`.
    pub dir: u8,
}
const _: () = assert!(core::mem::size_of::<FragKey>() == 12);

/// What the first fragment of a datagram was translated to, in `FRAGS`:
/// later fragments (no L4 header) get the same address rewrite.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragState {
    /// The address written into later fragments (the source outbound, the
    /// destination inbound), network byte order.
    pub addr_be: u32,
    pub _pad: u32,
    /// The clock (`map_names::CLOCK`) when the first fragment was translated.
    pub stamp_ns: u64,
}
const _: () = assert!(core::mem::size_of::<FragState>() == 16);

impl FragState {
    /// True while later fragments may still use this translation at `now_ns`.
    #[inline(always)]
    pub const fn fresh(&self, now_ns: u64) -> bool {
        now_ns.saturating_sub(self.stamp_ns) <= FRAG_TIMEOUT_NS
    }
}

/// How long the translation of a first fragment serves the later fragments
/// of its datagram (and how long natd parks fragments that came before their
/// first one). Linux gives a datagram 30 s to reassemble (`ipfrag_time`), but
/// the fragments of one datagram leave a sender back to back: a few seconds
/// cover any reordering a network causes, while a short life keeps a reused
/// IP identification (16 bits, per destination) from picking up an old
/// datagram's translation. On the published 1 s clock an entry serves between
/// 4 and 5 s.
pub const FRAG_TIMEOUT_NS: u64 = 5_000_000_000;

/// Capacity of the `FRAGS` LRU map: fragmented datagrams in flight within
/// `FRAG_TIMEOUT_NS`. Under pressure the oldest go first; a later fragment
/// that finds no entry goes to natd, like one that came too early.
pub const MAX_FRAGMENTED_DATAGRAMS: u32 = 1 << 14;

/// Capacity of the `PARKED` map: datagrams natd holds fragments of at once
/// (natd's own limits, `frag::PARK_*`, are lower).
pub const MAX_PARKED_DATAGRAMS: u32 = 1024;

/// The datapath translated the first fragment of a datagram natd parks later
/// fragments of (it has a `PARKED` entry): natd rewrites them to `addr_be`
/// and sends them on.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragEvent {
    /// `miss_kind::FRAGMENT_TRANSLATED`, at the same offset as `MissEvent::kind`.
    pub kind: u32,
    /// `FragState::addr_be` of the datagram.
    pub addr_be: u32,
    pub key: FragKey,
}
const _: () = assert!(core::mem::size_of::<FragEvent>() == 20);

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
    /// For `miss_kind::TOO_BIG`: the egress MTU the route lookup gave, to
    /// cut the packet to. 0 for every other kind. (Was padding, always 0.)
    pub mtu: u16,
    pub frame: [u8; MISS_FRAME_MAX],
}
const _: () = assert!(core::mem::size_of::<MissEvent>() == MissEvent::HEADER_LEN + MISS_FRAME_MAX);

impl MissEvent {
    /// Bytes before `frame`: a ring record is these and the frame, no more.
    pub const HEADER_LEN: usize = 16;

    /// The frame bytes, bounded by both `frame_len` and the buffer.
    pub fn frame(&self) -> &[u8] {
        let len = (self.frame_len as usize).min(MISS_FRAME_MAX);
        &self.frame[..len]
    }

    /// Bytes of a ring record that carries a frame of `frame_len` bytes.
    pub const fn record_len(frame_len: usize) -> usize {
        Self::HEADER_LEN + frame_len
    }

    /// The event a ring record holds: the header, then the frame, as long as
    /// the record (the datapath writes only the frame's bytes). `None`: a
    /// record too short for its header or for the frame it announces, or
    /// too long for the buffer.
    pub fn from_record(record: &[u8]) -> Option<Self> {
        let (header, frame) = (record.get(..Self::HEADER_LEN)?, &record[Self::HEADER_LEN..]);
        let word = |at: usize| u32::from_ne_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]]);
        let frame_len = word(8);
        if frame.len() > MISS_FRAME_MAX || (frame_len as usize) > frame.len() {
            return None;
        }
        let mut event = MissEvent {
            kind: word(0),
            ingress_ifindex: word(4),
            frame_len,
            l3_offset: u16::from_ne_bytes([header[12], header[13]]),
            mtu: u16::from_ne_bytes([header[14], header[15]]),
            frame: [0; MISS_FRAME_MAX],
        };
        event.frame[..frame.len()].copy_from_slice(frame);
        Some(event)
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), Copy, no padding the compiler adds (explicit `_pad`
    // fields, sizes asserted above), every bit pattern valid.
    unsafe impl aya::Pod for super::Endpoint {}
    unsafe impl aya::Pod for super::Mapping {}
    unsafe impl aya::Pod for super::Liveness {}
    unsafe impl aya::Pod for super::InboundPort {}
    unsafe impl aya::Pod for super::FreePort {}
    unsafe impl aya::Pod for super::GatewayConfig {}
    unsafe impl aya::Pod for super::MissEvent {}
    unsafe impl aya::Pod for super::NextHop {}
    unsafe impl aya::Pod for super::PermitKey {}
    unsafe impl aya::Pod for super::HostKey {}
    unsafe impl aya::Pod for super::FragKey {}
    unsafe impl aya::Pod for super::FragState {}
    unsafe impl aya::Pod for super::ClaimEvent {}
    unsafe impl aya::Pod for super::FragEvent {}
}

#[cfg(test)]
mod inbound_tests {
    use super::*;
    use crate::proto;

    #[test]
    fn every_port_of_every_protocol_and_pool_address_has_its_own_entry() {
        let mut seen = std::collections::HashSet::new();
        for position in 0..MAX_POOL_ADDRS as u32 {
            for proto_nr in proto::ALL {
                for port in [0u16, 1, 1024, 65535] {
                    let at = inbound_index(position, proto_nr, port.to_be()).unwrap();
                    assert!(at < INBOUND_PORTS);
                    assert!(seen.insert(at), "{position} {proto_nr} {port}");
                }
            }
        }
    }

    #[test]
    fn protocols_without_ports_have_no_entry() {
        for proto_nr in 0..=255u8 {
            assert_eq!(inbound_index(0, proto_nr, 0).is_some(), proto::ALL.contains(&proto_nr), "{proto_nr}");
        }
    }

    #[test]
    fn an_entry_is_one_u64_as_it_lies_in_memory() {
        let port = InboundPort { session: 0x0102_0304, port_be: 0x0506, flags: InboundPort::IN_USE | 1 };
        assert_eq!(InboundPort::from_bits(port.bits()), port);
        assert_eq!(port.bits().to_ne_bytes(), unsafe { core::mem::transmute::<InboundPort, [u8; 8]>(port) });
        assert!(!InboundPort::default().in_use());
        assert_eq!(port.mapping(7).flags, 1);
    }

    #[test]
    fn each_side_is_off_the_wire_only_when_set() {
        let cfg = GatewayConfig::new(core::net::Ipv4Addr::new(203, 0, 113, 1), 2, 1024, 65535);
        assert!(!cfg.off_the_wire(false) && !cfg.off_the_wire(true), "by default every frame is tested for a partial checksum");
        for (lan, wan) in [(true, false), (false, true), (true, true)] {
            let cfg = cfg.with_wire_ingress(lan, wan);
            assert_eq!((cfg.off_the_wire(false), cfg.off_the_wire(true)), (lan, wan));
        }
    }

    #[test]
    fn only_pool_addresses_have_entries() {
        let cfg = GatewayConfig::new(core::net::Ipv4Addr::new(203, 0, 113, 1), 2, 1024, 65535);
        assert!(cfg.inbound_index(&Endpoint::new(core::net::Ipv4Addr::new(203, 0, 113, 1), 5000, proto::UDP)).is_some());
        assert!(cfg.inbound_index(&Endpoint::new(core::net::Ipv4Addr::new(203, 0, 113, 2), 5000, proto::UDP)).is_none());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// The key built from a word is the struct literal, padding zero.
        #[test]
        fn a_host_key_from_a_word_is_its_fields(addr: u32, port: u16, proto: u8) {
            let literal = HostKey { addr_be: addr, proto, _pad: [0; 3] };
            proptest::prop_assert_eq!(HostKey::of(&Endpoint { addr_be: addr, port_be: port, proto, _pad: 0 }), literal);
        }
    }

    /// RFC 4787 REQ-2 (paired pooling): a host's pool address depends on its
    /// address alone, is in the pool, and a /24 spreads over the whole pool.
    #[test]
    fn pool_index_pairs_each_host_with_one_address_and_spreads_hosts() {
        let host = |i: u32| u32::from_ne_bytes(Ipv4Addr::from(0x0a4d_0100 + i).octets());
        for len in 1..=MAX_POOL_ADDRS as u32 {
            let mut per_address = [0u32; MAX_POOL_ADDRS];
            for i in 0..256 {
                let index = pool_index(host(i), len);
                assert!(index < len);
                assert_eq!(index, pool_index(host(i), len), "not deterministic");
                per_address[index as usize] += 1;
            }
            let fair = 256 / len;
            for (index, n) in per_address[..len as usize].iter().enumerate() {
                assert!(*n >= fair / 2, "pool of {len}: address {index} paired with {n} of 256 hosts");
            }
        }
        let mut config = GatewayConfig::new(Ipv4Addr::new(203, 0, 113, 1), 1, 20000, 29999);
        config.external_addrs_be[1] = u32::from_ne_bytes([198, 51, 100, 7]);
        assert!(config.is_external(u32::from_ne_bytes([203, 0, 113, 1])));
        assert!(!config.is_external(u32::from_ne_bytes([198, 51, 100, 7])), "beyond pool_len");
        config.pool_len = 2;
        assert!(config.is_external(u32::from_ne_bytes([198, 51, 100, 7])));
    }

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

#[cfg(test)]
mod hand_off_tests {
    extern crate std;
    use std::{vec, vec::Vec};

    use super::*;

    /// A record as the datapath writes it: the header, then the frame's bytes.
    fn record(kind: u32, ifindex: u32, frame: &[u8], l3_offset: u16) -> Vec<u8> {
        let mut record = Vec::new();
        for word in [kind, ifindex, frame.len() as u32] {
            record.extend_from_slice(&word.to_ne_bytes());
        }
        record.extend_from_slice(&l3_offset.to_ne_bytes());
        record.extend_from_slice(&[0, 0]);
        record.extend_from_slice(frame);
        record
    }

    #[test]
    fn a_record_as_long_as_its_frame_decodes_whole() {
        let frame: Vec<u8> = (0..60u8).collect();
        let bytes = record(miss_kind::NEW_FLOW, 7, &frame, 14);
        assert_eq!(bytes.len(), MissEvent::record_len(frame.len()));
        let event = MissEvent::from_record(&bytes).unwrap();
        assert_eq!((event.kind, event.ingress_ifindex, event.l3_offset), (miss_kind::NEW_FLOW, 7, 14));
        assert_eq!(event.frame(), &frame[..]);
        // The largest frame fits exactly, as a record of the old fixed size does.
        let full = vec![0xa5; MISS_FRAME_MAX];
        assert_eq!(MissEvent::from_record(&record(miss_kind::ESP, 1, &full, 14)).unwrap().frame(), &full[..]);
    }

    #[test]
    fn a_record_short_of_its_header_or_frame_or_too_long_is_refused() {
        let frame = [1u8; 40];
        let bytes = record(miss_kind::NEW_FLOW, 7, &frame, 14);
        assert!(MissEvent::from_record(&bytes[..MissEvent::HEADER_LEN - 1]).is_none());
        assert!(MissEvent::from_record(&bytes[..bytes.len() - 1]).is_none(), "frame cut short");
        let mut long = record(miss_kind::NEW_FLOW, 7, &[0; MISS_FRAME_MAX], 14);
        long.push(0);
        assert!(MissEvent::from_record(&long).is_none());
    }
}
