//! The XDP fast path: one program on the LAN interface, one on the WAN.
//!
//! LAN ingress: outbound mapping hit -> rewrite source, route, redirect to the
//! WAN. Miss -> a port the daemon queued is claimed here, or the packet goes
//! to the daemon (it allocates, then sends the packet on).
//! WAN ingress: inbound mapping hit -> rewrite destination, route, redirect
//! to the LAN. Miss -> the gateway's own traffic, passed to the kernel.
//!
//! Invariant: nothing the LAN program lets through reaches the WAN with an
//! inside source address. Transit traffic the kernel would route to the WAN is
//! translated, handed to the daemon, or dropped; it is never XDP_PASSed.
#![no_std]
#![no_main]

// The panic handler.
use nat_ebpf as _;
mod parse;
mod rewrite;

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_NOEXIST,
        BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams, xdp_action,
    },
    helpers::{bpf_csum_diff, bpf_fib_lookup, bpf_ktime_get_ns, bpf_xdp_adjust_tail, bpf_xdp_get_buff_len, bpf_xdp_load_bytes, bpf_xdp_store_bytes},
    macros::{map, xdp},
    maps::{Array, DevMapHash, HashMap, PerCpuArray, Queue, RingBuf},
    programs::XdpContext,
};
use nat_common::{
    BPF_F_MMAPABLE, ClaimEvent, Endpoint, FREE_QUEUE_CAPACITY, FreePort, GatewayConfig, LAST_SEEN_GRANULARITY_NS, Liveness, MAX_MAPPINGS, MAX_SESSIONS, MISS_FRAME_MAX,
    MISS_RING_BYTES, Mapping, MissEvent, NEXT_HOP_CACHE_BITS, NEXT_HOP_TTL_NS, NextHop, Reason,
    miss_kind, proto, tcp_flags,
    icmp::{FRAG_NEEDED_HEADERS_LEN, IP_DF, QUOTED_L4_LEN, RateLimit, frag_needed_headers},
};

use crate::{
    parse::{Frame, ICMP_ECHO_REQUEST, IcmpError, Ipv4Packet, L4, parse},
    rewrite::{Side, finish_partial_checksum, has_partial_checksum, rewrite_quoted, translate, translate_both},
};

#[map]
static OUTBOUND: HashMap<Endpoint, Mapping> = HashMap::with_max_entries(MAX_MAPPINGS, 0);

#[map]
static INBOUND: HashMap<Endpoint, Mapping> = HashMap::with_max_entries(MAX_MAPPINGS, 0);

#[map]
static CONFIG: Array<GatewayConfig> = Array::with_max_entries(1, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Reason::COUNT, 0);

/// External ports (and session slots) set aside by the daemon for new flows
/// to claim in the datapath, one queue per protocol.
#[map]
static FREE_TCP: Queue<FreePort> = Queue::with_max_entries(FREE_QUEUE_CAPACITY, 0);
#[map]
static FREE_UDP: Queue<FreePort> = Queue::with_max_entries(FREE_QUEUE_CAPACITY, 0);
#[map]
static FREE_ICMP: Queue<FreePort> = Queue::with_max_entries(FREE_QUEUE_CAPACITY, 0);

/// Per-session liveness, indexed by `Mapping::session`. Memory-mappable: the
/// daemon's aging scan reads it in place, without a syscall per session.
#[map]
static LIVENESS: Array<Liveness> = Array::with_max_entries(MAX_SESSIONS, BPF_F_MMAPABLE);

/// `CLOCK_MONOTONIC_COARSE` in ns, written by the daemon every second: the
/// time the programs stamp mappings with and expire cached next hops by.
/// Reading it is an inlined array access; `bpf_ktime_get_coarse_ns` is a
/// helper call that cost ~35 ns per packet here, twice per hit.
#[map]
static CLOCK: Array<u64> = Array::with_max_entries(1, 0);

/// Interfaces the programs redirect to, keyed by ifindex. Only the daemon's
/// LAN and WAN interfaces are in it: a route out of any other is refused.
#[map]
static TX_PORTS: DevMapHash = DevMapHash::with_max_entries(64, 0);

#[map]
static MISSES: RingBuf = RingBuf::with_byte_size(MISS_RING_BYTES, 0);

/// Route lookups of translated packets, reused for `NEXT_HOP_TTL_NS`. A
/// direct-mapped per-CPU array: an array lookup is inlined by the verifier and
/// costs a few ns where a hash lookup costs ~50; a collision only costs a
/// route lookup, and per-CPU slots are written without sharing cache lines.
#[map]
static NEXT_HOPS: PerCpuArray<NextHop> = PerCpuArray::with_max_entries(1 << NEXT_HOP_CACHE_BITS, 0);

/// The rate limit of the Fragmentation Needed errors this CPU sends.
#[map]
static ICMP_RATE: PerCpuArray<RateLimit> = PerCpuArray::with_max_entries(1, 0);

/// What the program does with a packet, and the counter that says why.
struct Verdict {
    action: u32,
    reason: Reason,
}

impl Verdict {
    const fn pass(reason: Reason) -> Self {
        Self { action: xdp_action::XDP_PASS, reason }
    }
    const fn drop(reason: Reason) -> Self {
        Self { action: xdp_action::XDP_DROP, reason }
    }
}

/// The one exit: count the reason, return the action.
#[inline(always)]
fn finish(verdict: Verdict) -> u32 {
    if let Some(counter) = COUNTERS.get_ptr_mut(verdict.reason as u32) {
        // Per-CPU slot: no other writer.
        unsafe { *counter += 1 };
    }
    verdict.action
}

// `#[inline(always)]` reaches the inner function the `#[xdp]` macro wraps
// the body in; LLVM inlines that function on its own only while it is small,
// and past that size every packet paid a BPF-to-BPF call (~10 ns in
// fastpath-bench).
#[xdp]
#[inline(always)]
pub fn nat_lan(ctx: XdpContext) -> u32 {
    let verdict = match parse(&ctx) {
        Ok(Frame::Ipv4(pkt)) => lan_ipv4(&ctx, &pkt),
        Ok(Frame::NotIpv4) => Verdict::pass(Reason::PassNotIpv4),
        Err(_) => Verdict::drop(Reason::DropMalformed),
    };
    finish(verdict)
}

#[xdp]
#[inline(always)]
pub fn nat_wan(ctx: XdpContext) -> u32 {
    let verdict = match parse(&ctx) {
        Ok(Frame::Ipv4(pkt)) => wan_ipv4(&ctx, &pkt),
        Ok(Frame::NotIpv4) => Verdict::pass(Reason::PassNotIpv4),
        Err(_) => Verdict::drop(Reason::DropMalformed),
    };
    finish(verdict)
}

#[inline(always)]
fn clock() -> u64 {
    match CLOCK.get(0) {
        Some(now) => *now,
        None => 0,
    }
}

#[inline(always)]
fn config() -> GatewayConfig {
    match CONFIG.get(0) {
        Some(cfg) => *cfg,
        None => GatewayConfig::default(),
    }
}

#[inline(always)]
fn lan_ipv4(ctx: &XdpContext, pkt: &Ipv4Packet) -> Verdict {
    // The kernel never forwards these: it answers Time Exceeded itself, or
    // delivers them locally.
    if pkt.ttl() <= 1 {
        return Verdict::pass(Reason::PassTtlExpired);
    }
    if pkt.dst_is_special() {
        return Verdict::pass(Reason::PassLocal);
    }
    let dst_be = unsafe { u32::from_ne_bytes((*pkt.ip).dst_addr) };
    if dst_be == config().external_addr_be {
        return to_external_address(ctx, pkt);
    }

    if let L4::IcmpError(error) = pkt.l4
        && let Some(verdict) = icmp_error_out(ctx, pkt, error)
    {
        return verdict;
    }

    if let Some(inside) = pkt.source() {
        let (mapping, translated) = match OUTBOUND.get_ptr(inside) {
            Some(mapping) => (mapping, Reason::TranslatedOut),
            // A new flow, if the kernel would route it to the WAN.
            None => match route_untranslated(ctx, pkt) {
                Route::Wan => match claim(&inside) {
                    Some(mapping) => (mapping, Reason::TranslatedNewFlow),
                    None => return hand_to_daemon(ctx, pkt, miss_kind::NEW_FLOW),
                },
                Route::Local | Route::Inside => return Verdict::pass(Reason::PassLocal),
            },
        };
        return translate_and_forward(ctx, pkt, mapping, Side::Source, inside.proto, translated);
    }

    // Not translatable: where would the kernel send it?
    match route_untranslated(ctx, pkt) {
        Route::Wan => Verdict::drop(Reason::DropUntranslatable),
        Route::Local | Route::Inside => Verdict::pass(Reason::PassLocal),
    }
}

/// An inside host's ICMP error about an inbound packet (RFC 5508 REQ-4/5, the
/// other way): the quoted packet's destination is a mapped inside endpoint;
/// it is set back to the external endpoint the remote sent to, and the error
/// leaves from the external address. `None`: not about a mapped flow, handled
/// as any untranslatable packet (dropped if bound for the WAN).
#[inline(always)]
fn icmp_error_out(ctx: &XdpContext, pkt: &Ipv4Packet, error: *mut IcmpError) -> Option<Verdict> {
    let (inner_vihl, inner_proto, inner_dst) = unsafe { ((*error).inner.vihl, (*error).inner.proto, (*error).inner.dst_addr) };
    if inner_vihl != 0x45 || (inner_proto != proto::TCP && inner_proto != proto::UDP) {
        return None;
    }
    let l4 = unsafe { (*error).inner_l4 };
    let inside = Endpoint::from_be(u32::from_ne_bytes(inner_dst), u16::from_ne_bytes([l4[2], l4[3]]), inner_proto);
    let mapping = OUTBOUND.get_ptr(inside)?;
    let external = unsafe { (*mapping).target(inner_proto) };
    rewrite_quoted(error, Side::Destination, &external);
    translate(pkt, Side::Source, &external);
    Some(forward(ctx, pkt, Reason::IcmpErrorOut, clock()))
}

/// A LAN packet for the gateway's external address. For another inside
/// host's TCP/UDP mapping it is hairpinned (RFC 4787 REQ-9, RFC 5382 REQ-8):
/// source translated to the sender's external endpoint, destination to the
/// target's inside one, and sent back into the LAN, so the target sees the
/// sender as the Internet would. So is the target's ICMP error about such a
/// packet (RFC 5508 REQ-7). Anything else is for the gateway itself.
#[inline(always)]
fn to_external_address(ctx: &XdpContext, pkt: &Ipv4Packet) -> Verdict {
    if let L4::IcmpError(error) = pkt.l4 {
        return icmp_error_hairpinned(ctx, pkt, error);
    }
    let (Some(inside), Some(destination)) = (pkt.source(), pkt.destination()) else {
        return Verdict::pass(Reason::PassLocal);
    };
    // Echo requests to the external address are the gateway's to answer.
    if inside.proto == proto::ICMP {
        return Verdict::pass(Reason::PassLocal);
    }
    let Some(target) = INBOUND.get_ptr(destination) else {
        return Verdict::pass(Reason::PassLocal);
    };
    let mapping = match OUTBOUND.get_ptr(inside) {
        Some(mapping) => mapping,
        None => match claim(&inside) {
            Some(mapping) => mapping,
            // natd sets the mapping up; this first packet is not sent on by
            // it (its raw socket would deliver it to the gateway itself) and
            // the sender's retransmit is hairpinned here.
            None => return hand_to_daemon(ctx, pkt, miss_kind::NEW_FLOW),
        },
    };
    let now = clock();
    let (external, inside_target) = unsafe { ((*mapping).target(inside.proto), (*target).target(inside.proto)) };
    let hop = next_hop(ctx, pkt, &Rewrite::Both(external, inside_target), now);
    if let Hop::TooBig(mtu) = hop {
        return too_big(ctx, pkt, mtu, Side::Source);
    }
    refresh(mapping, pkt, now, Side::Source);
    refresh(target, pkt, now, Side::Destination);
    let partial = has_partial_checksum(pkt);
    translate_both(pkt, &external, &inside_target);
    let translated = finish_if_partial(ctx, pkt, partial, Reason::Hairpinned);
    deliver(ctx, pkt, hop, translated)
}

/// RFC 5508 REQ-7 (hairpinned ICMP errors): an inside host's error about a
/// packet hairpinned to it. It got that packet from the sender's external
/// endpoint, so it answers to the external address and quotes (sender's
/// external endpoint -> its own inside endpoint). The error goes back into
/// the LAN to the sender as the outside view of the target would send it:
/// from the external address, to the sender's inside address, quoting what
/// the sender sent (its inside endpoint -> the target's external endpoint).
/// An error quoting anything else is the gateway's own, passed.
#[inline(always)]
fn icmp_error_hairpinned(ctx: &XdpContext, pkt: &Ipv4Packet, error: *mut IcmpError) -> Verdict {
    let (inner_vihl, inner_proto, inner_src, inner_dst) =
        unsafe { ((*error).inner.vihl, (*error).inner.proto, (*error).inner.src_addr, (*error).inner.dst_addr) };
    if inner_vihl != 0x45 || (inner_proto != proto::TCP && inner_proto != proto::UDP) {
        return Verdict::pass(Reason::PassLocal);
    }
    let l4 = unsafe { (*error).inner_l4 };
    let sender_external = Endpoint::from_be(u32::from_ne_bytes(inner_src), u16::from_ne_bytes([l4[0], l4[1]]), inner_proto);
    let target_inside = Endpoint::from_be(u32::from_ne_bytes(inner_dst), u16::from_ne_bytes([l4[2], l4[3]]), inner_proto);
    let (Some(sender), Some(target)) = (INBOUND.get_ptr(sender_external), OUTBOUND.get_ptr(target_inside)) else {
        return Verdict::pass(Reason::PassLocal);
    };
    let (sender_inside, target_external) = unsafe { ((*sender).target(inner_proto), (*target).target(inner_proto)) };
    rewrite_quoted(error, Side::Destination, &target_external);
    rewrite_quoted(error, Side::Source, &sender_inside);
    // Only the outer addresses (and the TTL) change: ports are the quote's.
    let from = Endpoint::from_be(config().external_addr_be, 0, proto::ICMP);
    let to = Endpoint::from_be(sender_inside.addr_be, 0, proto::ICMP);
    translate_both(pkt, &from, &to);
    forward(ctx, pkt, Reason::IcmpErrorHairpinned, clock())
}

/// The new flow of `inside` takes a free external port the daemon queued for
/// its protocol: the mapping pair is installed here (reverse entry first, both
/// NOEXIST, as the daemon does) and the first packet goes on without waiting.
/// The daemon learns of the claim through the ring, and a claim it cannot
/// learn of is not made. `None`: the daemon decides (queue empty, ring full,
/// or an inside port inside the NAT range, which the daemon keeps if free).
#[inline(always)]
fn claim(inside: &Endpoint) -> Option<*const Mapping> {
    let cfg = config();
    let port = u16::from_be(inside.port_be);
    if port >= cfg.port_min && port <= cfg.port_max {
        return None;
    }
    let queue = match inside.proto {
        proto::TCP => &FREE_TCP,
        proto::UDP => &FREE_UDP,
        _ => &FREE_ICMP,
    };
    let free = queue.pop().ok().flatten()?;
    let Some(mut event) = MISSES.reserve::<ClaimEvent>(0) else {
        let _ = queue.push(&free, 0);
        return None;
    };
    let external = Endpoint::from_be(cfg.external_addr_be, free.port.to_be(), inside.proto);
    if INBOUND.insert(&external, &Mapping::new(*inside, free.session), BPF_NOEXIST as u64).is_err() {
        // The daemon queues only ports absent from INBOUND: not reached. The
        // port is left out of the queue rather than retried forever.
        event.discard(0);
        return None;
    }
    if OUTBOUND.insert(inside, &Mapping::new(external, free.session), BPF_NOEXIST as u64).is_err() {
        // Another CPU claimed for this endpoint first: give the port back
        // and use the winner's mapping.
        let _ = INBOUND.remove(&external);
        let _ = queue.push(&free, 0);
        event.discard(0);
        return OUTBOUND.get_ptr(inside);
    }
    if let Some(live) = LIVENESS.get_ptr_mut(free.session) {
        unsafe { *live = Liveness::new(clock()) };
    }
    event.write(ClaimEvent { kind: miss_kind::CLAIMED, session: free.session, inside: *inside, external });
    event.submit(0);
    OUTBOUND.get_ptr(inside)
}

#[inline(always)]
fn wan_ipv4(ctx: &XdpContext, pkt: &Ipv4Packet) -> Verdict {
    if pkt.dst_is_special() {
        return Verdict::pass(Reason::PassLocal);
    }
    if let L4::IcmpError(error) = pkt.l4 {
        return icmp_error_in(ctx, pkt, error);
    }
    let Some(external) = pkt.destination() else {
        return Verdict::pass(Reason::PassNoMapping);
    };
    if let Some(mapping) = INBOUND.get_ptr(external) {
        // The destination is the gateway's own address: the kernel would deliver
        // it locally instead of answering Time Exceeded.
        if pkt.ttl() <= 1 {
            return Verdict::drop(Reason::DropTtlExpired);
        }
        return translate_and_forward(ctx, pkt, mapping, Side::Destination, external.proto, Reason::TranslatedIn);
    }

    wan_miss(ctx, pkt)
}

/// An ICMP error from the WAN about a packet the gateway translated (RFC 5508
/// REQ-4/5): the quoted packet's source is an external endpoint with a mapping.
/// The error goes to the inside host with the quoted packet reverted to what
/// that host sent, so traceroute and path-MTU discovery work from inside. It
/// never refreshes or removes the mapping. Errors about the gateway's own
/// packets pass to the kernel.
#[inline(always)]
fn icmp_error_in(ctx: &XdpContext, pkt: &Ipv4Packet, error: *mut IcmpError) -> Verdict {
    let (inner_vihl, inner_proto, inner_src) = unsafe { ((*error).inner.vihl, (*error).inner.proto, (*error).inner.src_addr) };
    // Quoted IPv4 options would move the quoted ports: left to the kernel.
    if inner_vihl != 0x45 {
        return Verdict::pass(Reason::PassNoMapping);
    }
    let l4 = unsafe { (*error).inner_l4 };
    let port_be = match inner_proto {
        proto::TCP | proto::UDP => u16::from_ne_bytes([l4[0], l4[1]]),
        proto::ICMP if l4[0] == ICMP_ECHO_REQUEST => u16::from_ne_bytes([l4[4], l4[5]]),
        _ => return Verdict::pass(Reason::PassNoMapping),
    };
    let external = Endpoint::from_be(u32::from_ne_bytes(inner_src), port_be, inner_proto);
    let Some(mapping) = INBOUND.get_ptr(external) else {
        return Verdict::pass(Reason::PassNoMapping);
    };
    if pkt.ttl() <= 1 {
        return Verdict::drop(Reason::DropTtlExpired);
    }
    let inside = unsafe { (*mapping).target(inner_proto) };
    rewrite_quoted(error, Side::Source, &inside);
    translate(pkt, Side::Destination, &inside);
    forward(ctx, pkt, Reason::IcmpErrorIn, clock())
}

/// A WAN packet without a mapping.
#[inline(always)]
fn wan_miss(ctx: &XdpContext, pkt: &Ipv4Packet) -> Verdict {
    let cfg = config();
    let dst_be = unsafe { u32::from_ne_bytes((*pkt.ip).dst_addr) };
    if dst_be == cfg.external_addr_be {
        // A NAT port on the external address belongs to no local socket: drop
        // it rather than let the kernel answer with RST or Port Unreachable.
        // Anything else is the gateway host's own traffic.
        if let Some(external) = pkt.destination() {
            let port = u16::from_be(external.port_be);
            if external.proto != proto::ICMP && port >= cfg.port_min && port <= cfg.port_max {
                return Verdict::drop(Reason::DropInboundNoMapping);
            }
        }
        return Verdict::pass(Reason::PassNoMapping);
    }
    // For another address: the kernel delivers it if the gateway owns it, but
    // would forward it untranslated if it names an inside host (someone on
    // the WAN side routing the inside prefix at us). Unsolicited inbound
    // traffic reaches no LAN host: only mappings let packets in.
    match route_untranslated(ctx, pkt) {
        Route::Local => Verdict::pass(Reason::PassNoMapping),
        Route::Wan | Route::Inside => Verdict::drop(Reason::DropInboundTransit),
    }
}

/// The hit path of either direction: route, refresh the session, rewrite
/// `side` to the mapping's target, finish a partial checksum, redirect.
///
/// The route is looked up before the rewrite, with the addresses and ports
/// the packet will have (`Rewrite`), so that a packet too big for the egress
/// is still exactly what its sender sent when the Fragmentation Needed error
/// quotes it (RFC 4787 REQ-13, RFC 792), partial checksum and TTL
/// included, with nothing to undo. (Translating first and undoing the
/// rewrite on FRAG_NEEDED was tried: no cheaper per hit in fastpath-bench.)
#[inline(always)]
fn translate_and_forward(
    ctx: &XdpContext,
    pkt: &Ipv4Packet,
    mapping: *const Mapping,
    side: Side,
    proto_nr: u8,
    translated: Reason,
) -> Verdict {
    let to = unsafe { (*mapping).target(proto_nr) };
    let now = clock();
    let hop = next_hop(ctx, pkt, &Rewrite::One(side, to), now);
    if let Hop::TooBig(mtu) = hop {
        return too_big(ctx, pkt, mtu, side);
    }
    refresh(mapping, pkt, now, side);
    let partial = has_partial_checksum(pkt);
    translate(pkt, side, &to);
    let translated = finish_if_partial(ctx, pkt, partial, translated);
    deliver(ctx, pkt, hop, translated)
}

/// A sender with TX checksum offload (a local socket over a veth) leaves a
/// partial L4 checksum for the NIC to finish; after XDP_REDIRECT the receiver
/// gets the frame as CHECKSUM_NONE and verifies it, and the daemon sends a
/// no-neighbour frame as it is. So the checksum is finished here, before the
/// frame is forwarded or copied to the ring. Returns the reason the verdict
/// counts on success: `translated`, or `PartialChecksumTooLong` when the
/// segment was too long to sum and kept the incremental update.
#[inline(always)]
fn finish_if_partial(ctx: &XdpContext, pkt: &Ipv4Packet, partial: bool, translated: Reason) -> Reason {
    if partial && finish_partial_checksum(ctx, pkt).is_err() {
        return Reason::PartialChecksumTooLong;
    }
    translated
}

/// Records activity on a mapping's session: at most one write per granule
/// for the timestamp, and one per new TCP flag in this direction.
#[inline(always)]
fn refresh(mapping: *const Mapping, pkt: &Ipv4Packet, now: u64, side: Side) {
    let Some(live) = LIVENESS.get_ptr_mut(unsafe { (*mapping).session }) else {
        return;
    };
    unsafe {
        if now.wrapping_sub((*live).last_seen_ns) >= LAST_SEEN_GRANULARITY_NS {
            (*live).last_seen_ns = now;
        }
        if let L4::Tcp(_) = pkt.l4 {
            let flags = rewrite::tcp_flags(pkt) & tcp_flags::TRACKED;
            let seen = match side {
                Side::Source => &mut (*live).tcp_flags_out,
                Side::Destination => &mut (*live).tcp_flags_in,
            };
            if *seen & flags != flags {
                *seen |= flags;
            }
        }
    }
}

const AF_INET: u8 = 2;

/// The rewrite a packet is routed for: routes are looked up before the
/// packet is touched (see `translate_and_forward`).
#[derive(Clone, Copy)]
enum Rewrite {
    /// Leaves as it is (translated already).
    Nothing,
    /// `translate(pkt, side, to)`.
    One(Side, Endpoint),
    /// `translate_both(pkt, source, destination)`.
    Both(Endpoint, Endpoint),
}

impl Rewrite {
    /// The destination address the packet leaves with: all the next-hop
    /// cache needs, so a hit reads nothing more of the packet.
    #[inline(always)]
    fn dst_be(&self, pkt: &Ipv4Packet) -> u32 {
        match self {
            Rewrite::One(Side::Destination, to) | Rewrite::Both(_, to) => to.addr_be,
            _ => u32::from_ne_bytes(unsafe { (*pkt.ip).dst_addr }),
        }
    }
}

/// The addresses and ports a packet leaves with, which the route lookup is
/// asked about: the packet's own, or what a translation will make of them.
#[derive(Clone, Copy)]
struct Leaving {
    src_be: u32,
    dst_be: u32,
    /// TCP/UDP ports, network order; 0 for other protocols.
    sport_be: u16,
    dport_be: u16,
    has_ports: bool,
}

impl Leaving {
    #[inline(always)]
    fn of(pkt: &Ipv4Packet) -> Self {
        let (sport_be, dport_be, has_ports) = match pkt.l4 {
            L4::Tcp(tcp) => unsafe { (u16::from_ne_bytes((*tcp).source), u16::from_ne_bytes((*tcp).dest), true) },
            L4::Udp(udp) => unsafe { (u16::from_ne_bytes((*udp).src), u16::from_ne_bytes((*udp).dst), true) },
            _ => (0, 0, false),
        };
        let (src, dst) = unsafe { ((*pkt.ip).src_addr, (*pkt.ip).dst_addr) };
        Self { src_be: u32::from_ne_bytes(src), dst_be: u32::from_ne_bytes(dst), sport_be, dport_be, has_ports }
    }

    /// As the packet leaves after `rewrite`.
    #[inline(always)]
    fn after(self, rewrite: &Rewrite) -> Self {
        match rewrite {
            Rewrite::Nothing => self,
            Rewrite::One(side, to) => self.translated(*side, to),
            Rewrite::Both(source, destination) => {
                self.translated(Side::Source, source).translated(Side::Destination, destination)
            }
        }
    }

    #[inline(always)]
    fn translated(mut self, side: Side, to: &Endpoint) -> Self {
        match side {
            Side::Source => {
                self.src_be = to.addr_be;
                if self.has_ports {
                    self.sport_be = to.port_be;
                }
            }
            Side::Destination => {
                self.dst_be = to.addr_be;
                if self.has_ports {
                    self.dport_be = to.port_be;
                }
            }
        }
        self
    }
}

#[inline(always)]
fn fib_params(ctx: &XdpContext, pkt: &Ipv4Packet, leaving: &Leaving) -> FibParams {
    let mut params: FibParams = unsafe { core::mem::zeroed() };
    unsafe {
        let ip = pkt.ip;
        params.family = AF_INET;
        params.l4_protocol = (*ip).proto;
        params.sport = leaving.sport_be;
        params.dport = leaving.dport_be;
        // Host order: the kernel compares it with the egress MTU.
        params.__bindgen_anon_1.tot_len = u16::from_be_bytes((*ip).tot_len);
        params.__bindgen_anon_2.tos = (*ip).tos;
        params.__bindgen_anon_3.ipv4_src = leaving.src_be;
        params.__bindgen_anon_4.ipv4_dst = leaving.dst_be;
        params.ifindex = ctx.ingress_ifindex() as u32;
    }
    params
}

#[inline(always)]
fn lookup(ctx: &XdpContext, params: &mut FibParams) -> i64 {
    unsafe {
        bpf_fib_lookup(
            ctx.ctx as *mut _,
            params as *mut FibParams,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    }
}

enum Route {
    /// The kernel would forward it out of the WAN interface.
    Wan,
    /// The kernel would forward it out of another interface.
    Inside,
    /// Local delivery, or not routable at all: the kernel does not forward it.
    Local,
}

/// Where the kernel would send the packet as it is. Asked without a length:
/// on FRAG_NEEDED the kernel returns before it fills in the egress
/// interface, so a too-big new flow would look routed back inside and be
/// passed to the kernel, which forwards it untranslated (fragmented, or
/// not). Whether it fits is for `next_hop` to tell, once translated.
#[inline(always)]
fn route_untranslated(ctx: &XdpContext, pkt: &Ipv4Packet) -> Route {
    let mut params = fib_params(ctx, pkt, &Leaving::of(pkt));
    params.__bindgen_anon_1.tot_len = 0;
    let rc = lookup(ctx, &mut params) as u32;
    // NO_NEIGH still names the egress interface; every other failure means
    // the kernel would not forward it either.
    let routed = rc == BPF_FIB_LKUP_RET_SUCCESS || rc == BPF_FIB_LKUP_RET_NO_NEIGH;
    let wan = config().wan_ifindex;
    if !routed {
        Route::Local
    } else if wan != 0 && params.ifindex == wan {
        Route::Wan
    } else {
        Route::Inside
    }
}

/// What the route lookup says about a packet.
enum Hop {
    /// Out of `egress_ifindex` with these MACs (only what `deliver` needs:
    /// the hop is kept across the rewrite).
    Ready { egress_ifindex: u32, smac: [u8; 6], dmac: [u8; 6] },
    /// Routed, but the next hop's MAC is not known yet.
    NoNeighbour,
    /// Longer than the egress MTU, given in host order.
    TooBig(u16),
    /// Not forwarded: no route, a local destination, forwarding off...
    Refused(Verdict),
}

/// Routes a packet translated already (an ICMP error) and sends it on.
#[inline(always)]
fn forward(ctx: &XdpContext, pkt: &Ipv4Packet, translated: Reason, now: u64) -> Verdict {
    let hop = next_hop(ctx, pkt, &Rewrite::Nothing, now);
    deliver(ctx, pkt, hop, translated)
}

/// Sends a translated packet where the route lookup said: redirected out of
/// the egress interface, or through the daemon while the neighbour resolves.
/// A packet too big here is an ICMP error, which is never answered with
/// another (RFC 1122 3.2.2): dropped.
#[inline(always)]
fn deliver(ctx: &XdpContext, pkt: &Ipv4Packet, hop: Hop, translated: Reason) -> Verdict {
    let (egress_ifindex, smac, dmac) = match hop {
        Hop::Ready { egress_ifindex, smac, dmac } => (egress_ifindex, smac, dmac),
        Hop::NoNeighbour => return hand_to_daemon(ctx, pkt, miss_kind::NO_NEIGHBOUR),
        Hop::TooBig(_) => return Verdict::drop(Reason::DropTooBigForEgress),
        Hop::Refused(verdict) => return verdict,
    };
    unsafe {
        (*pkt.eth).dst_addr = dmac;
        (*pkt.eth).src_addr = smac;
    }
    match TX_PORTS.redirect(egress_ifindex, xdp_action::XDP_DROP as u64) {
        Ok(action) => Verdict { action, reason: translated },
        Err(_) => Verdict::drop(Reason::DropEgressUnmanaged),
    }
}

/// The next hop of the packet once `rewrite` is applied to it: from the
/// cache while the entry is fresh and the packet no longer than one the
/// route lookup has accepted, otherwise from `bpf_fib_lookup` (which also
/// checks the egress MTU, path-MTU exceptions included), and then cached.
#[inline(always)]
fn next_hop(ctx: &XdpContext, pkt: &Ipv4Packet, rewrite: &Rewrite, now: u64) -> Hop {
    let dst_be = rewrite.dst_be(pkt);
    let ingress = ctx.ingress_ifindex() as u32;
    let tot_len = unsafe { u16::from_be_bytes((*pkt.ip).tot_len) };
    let slot = NEXT_HOPS.get_ptr_mut(NextHop::slot(dst_be, ingress));
    if let Some(slot) = slot {
        let hop = unsafe { &*slot };
        if hop.answers(dst_be, ingress, now) && tot_len <= hop.max_len {
            return Hop::Ready { egress_ifindex: hop.egress_ifindex, smac: hop.smac, dmac: hop.dmac };
        }
    }

    let mut params = fib_params(ctx, pkt, &Leaving::of(pkt).after(rewrite));
    let rc = lookup(ctx, &mut params) as u32;
    match rc {
        BPF_FIB_LKUP_RET_SUCCESS => {}
        BPF_FIB_LKUP_RET_NO_NEIGH => return Hop::NoNeighbour,
        // The kernel wrote the MTU over tot_len (a union).
        BPF_FIB_LKUP_RET_FRAG_NEEDED => return Hop::TooBig(unsafe { params.__bindgen_anon_1.mtu_result }),
        // NOT_FWDED (a local destination), blackhole, unreachable, forwarding off.
        _ => return Hop::Refused(Verdict::drop(Reason::DropNoRoute)),
    }
    let mut hop = NextHop {
        dst_be,
        ingress_ifindex: ingress,
        egress_ifindex: params.ifindex,
        max_len: tot_len,
        smac: params.smac,
        dmac: params.dmac,
        _pad: [0; 6],
        expires_ns: now + NEXT_HOP_TTL_NS,
    };
    if let Some(slot) = slot {
        let old = unsafe { &mut *slot };
        // A longer packet to the same, still fresh hop widens what the entry
        // accepts without extending its life.
        if old.answers(dst_be, ingress, now)
            && old.egress_ifindex == hop.egress_ifindex
            && old.dmac == hop.dmac
            && old.max_len > hop.max_len
        {
            hop.max_len = old.max_len;
            hop.expires_ns = old.expires_ns;
        }
        *old = hop;
    }
    Hop::Ready { egress_ifindex: hop.egress_ifindex, smac: hop.smac, dmac: hop.dmac }
}

/// The longest IPv4 header and the 8 L4 bytes an error quotes after it.
const QUOTE_MAX: usize = 60 + QUOTED_L4_LEN;

/// The shortest too-big packet answered: the quote buffer is read from it
/// and written back `FRAG_NEEDED_HEADERS_LEN` further on, both within it.
/// (A next-hop MTU under 96 bytes is not one the gateway serves.)
const TOO_BIG_MIN_LEN: u16 = (FRAG_NEEDED_HEADERS_LEN + QUOTE_MAX) as u16;

/// A packet longer than the egress MTU once translated (RFC 4787 REQ-13).
/// With DF set it is answered with ICMP Destination Unreachable /
/// Fragmentation Needed and the next-hop MTU, from the gateway's address on
/// the side it came from (`ingress`: `Side::Source` for the LAN, where natd
/// configures the LAN interface's address, `Side::Destination` for the WAN,
/// the external address), sent back out of the port it came in on. Without
/// DF it is dropped: the gateway does not fragment.
///
/// Never XDP_PASSed: the kernel's forward path checks the device MTU, not
/// learned path MTUs (ip_forward_use_pmtu=0), so it could forward a packet
/// the route lookup refused, untranslated, with the inside address.
#[inline(always)]
fn too_big(ctx: &XdpContext, pkt: &Ipv4Packet, mtu: u16, ingress: Side) -> Verdict {
    let (frags, tot_len) = unsafe { (u16::from_be_bytes((*pkt.ip).frags), u16::from_be_bytes((*pkt.ip).tot_len)) };
    if frags & IP_DF == 0 || tot_len < TOO_BIG_MIN_LEN {
        return Verdict::drop(Reason::DropTooBigForEgress);
    }
    let cfg = config();
    let source_be = match ingress {
        Side::Source => cfg.lan_addr_be,
        Side::Destination => cfg.external_addr_be,
    };
    if source_be == 0 {
        return Verdict::drop(Reason::DropTooBigForEgress);
    }
    let Some(rate) = ICMP_RATE.get_ptr_mut(0) else {
        return Verdict::drop(Reason::DropTooBigForEgress);
    };
    // Per-CPU slot: no other writer. The real clock, not the published
    // one: the published clock moves once a second, this path is rare.
    if !unsafe { (*rate).allow(bpf_ktime_get_ns()) } {
        return Verdict::drop(Reason::FragNeededRateLimited);
    }
    let ingress = ctx.ingress_ifindex() as u32;
    if write_frag_needed(ctx, pkt, source_be, mtu).is_err() {
        return Verdict::drop(Reason::DropTooBigForEgress);
    }
    // Back out of the ingress port through the devmap rather than XDP_TX: a
    // veth queues XDP_TX frames for its peer but wakes the peer only when it
    // runs an XDP program (veth_xdp_flush), so behind a veth with GRO alone
    // the error would wait for unrelated traffic. A redirect is flushed
    // (XDP_XMIT_FLUSH) like every other packet the gateway forwards.
    match TX_PORTS.redirect(ingress, xdp_action::XDP_DROP as u64) {
        Ok(action) => Verdict { action, reason: Reason::FragNeededSent },
        Err(_) => Verdict::drop(Reason::DropEgressUnmanaged),
    }
}

/// Turns the frame in place into a Fragmentation Needed error about it, from
/// `source_be` to its sender, MACs swapped (back to the previous hop), VLAN
/// tags kept: the quote (IPv4 header with options, 8 L4 bytes, untouched)
/// moves `FRAG_NEEDED_HEADERS_LEN` bytes on, the new headers go in front of
/// it and the tail is cut. The caller checked the length. Packet pointers
/// are not valid afterwards.
#[inline(always)]
fn write_frag_needed(ctx: &XdpContext, pkt: &Ipv4Packet, source_be: u32, mtu: u16) -> Result<(), ()> {
    let l3 = pkt.l3_offset;
    let (vihl, sender) = unsafe { ((*pkt.ip).vihl, (*pkt.ip).src_addr) };
    let quote_len = ((vihl & 0x0f) as usize) * 4 + QUOTED_L4_LEN;
    // Back to the previous hop.
    unsafe { core::ptr::swap(&raw mut (*pkt.eth).src_addr, &raw mut (*pkt.eth).dst_addr) };
    let mut quote = [0u8; QUOTE_MAX];
    unsafe {
        let raw = ctx.ctx as *mut _;
        if bpf_xdp_load_bytes(raw, l3 as u32, quote.as_mut_ptr() as *mut _, QUOTE_MAX as u32) != 0 {
            return Err(());
        }
        let ret = bpf_csum_diff(core::ptr::null_mut(), 0, quote.as_mut_ptr() as *mut u32, quote_len as u32, 0);
        if ret < 0 {
            return Err(());
        }
        let mut headers = frag_needed_headers(source_be.to_ne_bytes(), sender, mtu, quote_len as u16, ret as u32);
        let at = (l3 + FRAG_NEEDED_HEADERS_LEN) as u32;
        if bpf_xdp_store_bytes(raw, at, quote.as_mut_ptr() as *mut _, QUOTE_MAX as u32) != 0
            || bpf_xdp_store_bytes(raw, l3 as u32, headers.as_mut_ptr() as *mut _, FRAG_NEEDED_HEADERS_LEN as u32) != 0
        {
            return Err(());
        }
        let new_len = (l3 + FRAG_NEEDED_HEADERS_LEN + quote_len) as i32;
        // Not `data_end - data`: the verifier refuses arithmetic on pkt_end.
        let old_len = bpf_xdp_get_buff_len(raw) as i32;
        if bpf_xdp_adjust_tail(raw, new_len - old_len) != 0 {
            return Err(());
        }
    }
    Ok(())
}

/// Copies the frame into the miss ring for the daemon and drops it here; the
/// daemon sets the flow up and sends the packet on (new flow), or sends it
/// through the kernel (no neighbour).
#[inline(always)]
fn hand_to_daemon(ctx: &XdpContext, pkt: &Ipv4Packet, kind: u32) -> Verdict {
    let handed = if kind == miss_kind::NEW_FLOW {
        Reason::MissToDaemon
    } else {
        Reason::NoNeighbourToDaemon
    };
    let frame_len = ctx.data_end() - ctx.data();
    if frame_len > MISS_FRAME_MAX {
        return Verdict::drop(Reason::DropTooBigForDaemon);
    }
    let Some(mut entry) = MISSES.reserve::<MissEvent>(0) else {
        return Verdict::drop(Reason::DropRingFull);
    };
    let event = entry.as_mut_ptr();
    let copied = unsafe {
        (*event).kind = kind;
        (*event).ingress_ifindex = ctx.ingress_ifindex() as u32;
        (*event).frame_len = frame_len as u32;
        (*event).l3_offset = pkt.l3_offset as u16;
        (*event)._pad = 0;
        bpf_xdp_load_bytes(
            ctx.ctx as *mut _,
            0,
            (*event).frame.as_mut_ptr() as *mut _,
            copy_len(frame_len),
        )
    };
    if copied != 0 {
        entry.discard(0);
        return Verdict::drop(Reason::DropMalformed);
    }
    entry.submit(0);
    Verdict::drop(handed)
}

/// `frame_len` (1..=MISS_FRAME_MAX, a power of two) in a form the verifier can
/// bound: LLVM turns a plain `0 < len <= MAX` test into one unsigned compare
/// the verifier cannot see through, so the range is rebuilt with a mask.
#[inline(always)]
fn copy_len(frame_len: usize) -> u32 {
    const _: () = assert!(MISS_FRAME_MAX.is_power_of_two());
    (((frame_len as u32).wrapping_sub(1)) & (MISS_FRAME_MAX as u32 - 1)) + 1
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
