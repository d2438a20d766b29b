//! The XDP fast path: one program on the LAN interface, one on the WAN.
//!
//! LAN ingress: outbound mapping hit -> rewrite source, route, redirect to the
//! WAN. Miss -> a port the daemon queued is claimed here, or the packet goes
//! to the daemon (it allocates, then sends the packet on).
//! WAN ingress: inbound mapping hit -> rewrite destination, route, redirect
//! to the LAN. Miss -> the gateway's own traffic, passed to the kernel.
//!
//! Fragments (RFC 4787 REQ-14): a first fragment is translated like a whole
//! packet and its translation recorded by the datagram's identity (`FRAGS`);
//! later fragments get the same address rewrite by identity. One that comes
//! before its first fragment goes to the daemon, which parks it until the
//! first fragment has been translated (`PARKED`, `FragEvent`).
//!
//! Invariant: nothing the LAN program lets through reaches the WAN with an
//! inside source address. Transit traffic the kernel would route to the WAN is
//! translated, handed to the daemon, or dropped; it is never XDP_PASSed.
#![no_std]
#![no_main]
// Atomic adds on map values: the BPF target has no `AtomicU64::fetch_add`.
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

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
    maps::{Array, DevMapHash, HashMap, LruHashMap, PerCpuArray, Queue, RingBuf},
    programs::XdpContext,
};
use nat_common::{
    BPF_F_MMAPABLE, ClaimEvent, Endpoint, FREE_QUEUE_CAPACITY, FragEvent, FragKey, FragState, FreePort, GatewayConfig, HostKey, LAST_SEEN_GRANULARITY_NS, Liveness, MAX_FRAGMENTED_DATAGRAMS, MAX_MAPPINGS, MAX_PARKED_DATAGRAMS, MAX_PERMITS, MAX_QUOTA_HOSTS, MAX_SESSIONS, MISS_FRAME_MAX,
    MISS_RING_BYTES, Mapping, MissEvent, NEXT_HOP_CACHE_BITS, NEXT_HOP_TTL_NS, NextHop, PermitKey, Reason,
    frag_dir, miss_kind, proto, tcp_flags,
    icmp::{FRAG_NEEDED_HEADERS_LEN, IP_DF, QUOTED_L4_LEN, RateLimit, frag_needed_headers},
};

use crate::{
    parse::{Fragment, Frame, ICMP_ECHO_REQUEST, Ipv4Packet, L4, Quoted, parse},
    rewrite::{Side, finish_partial_checksum, has_partial_checksum, icmp_error_checksums_hold, rewrite_quoted, translate, translate_both},
};

#[map]
static OUTBOUND: HashMap<Endpoint, Mapping> = HashMap::with_max_entries(MAX_MAPPINGS, 0);

#[map]
static INBOUND: HashMap<Endpoint, Mapping> = HashMap::with_max_entries(MAX_MAPPINGS, 0);

#[map]
static CONFIG: Array<GatewayConfig> = Array::with_max_entries(1, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Reason::COUNT, 0);

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
    FREE_I0 = (proto::ICMP, 0),
    FREE_I1 = (proto::ICMP, 1),
}

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

/// The remotes each inside endpoint has sent to, with the clock when it last
/// did: what address-dependent and address-and-port-dependent filtering let
/// in. Filled on the outbound path, only for protocols that filter by remote
/// (natd shrinks the map to one entry when none does). LRU: bounded, and a
/// mapping never depends on it.
#[map]
static PERMITS: LruHashMap<PermitKey, u64> = LruHashMap::with_max_entries(MAX_PERMITS, 0);

/// The per-host port quota (RFC 6888 REQ-4), counted from both sides
/// without either overwriting the other: the datapath adds its claims here
/// atomically, natd keeps its releases (minus the mappings it made itself)
/// in HOST_RETURNS. In use: claims - returns. Entries are never removed (a
/// removal could race a claim and lose it); a host past MAX_QUOTA_HOSTS has
/// its new flows set up by natd, which counts every host.
#[map]
static HOST_CLAIMS: HashMap<HostKey, u64> = HashMap::with_max_entries(MAX_QUOTA_HOSTS, 0);
#[map]
static HOST_RETURNS: HashMap<HostKey, u64> = HashMap::with_max_entries(MAX_QUOTA_HOSTS, 0);

/// What the first fragment of each recent fragmented datagram was translated
/// to, keyed by the datagram's identity as it arrived: later fragments carry
/// no ports and are translated by identity (RFC 4787 REQ-14). LRU and aged by
/// its stamp (`FRAG_TIMEOUT_NS`): bounded, nothing to clean up, and a mapping
/// never depends on it.
#[map]
static FRAGS: LruHashMap<FragKey, FragState> = LruHashMap::with_max_entries(MAX_FRAGMENTED_DATAGRAMS, 0);

/// Datagrams the daemon parks later fragments of (they came before their
/// first fragment), written by the daemon. When the first fragment of one is
/// translated the daemon is told through the ring, so the parked fragments
/// follow it at once. Read only for first fragments.
#[map]
static PARKED: HashMap<FragKey, u64> = HashMap::with_max_entries(MAX_PARKED_DATAGRAMS, 0);

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
    if config().is_external(dst_be) {
        return to_external_address(ctx, pkt);
    }

    if let L4::IcmpError(quoted) = &pkt.l4
        && let Some(verdict) = icmp_error_out(ctx, pkt, quoted)
    {
        return verdict;
    }
    if pkt.fragment == Fragment::Later {
        return later_fragment(ctx, pkt, Side::Source);
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
        return translate_and_forward(ctx, pkt, mapping, Side::Source, &inside, translated);
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
fn icmp_error_out(ctx: &XdpContext, pkt: &Ipv4Packet, quoted: &Quoted) -> Option<Verdict> {
    let (inner_proto, inner_dst) = unsafe { ((*quoted.error).inner.proto, (*quoted.error).inner.dst_addr) };
    if inner_proto != proto::TCP && inner_proto != proto::UDP {
        return None;
    }
    let l4 = unsafe { *quoted.l4 };
    let inside = Endpoint::from_be(u32::from_ne_bytes(inner_dst), u16::from_ne_bytes([l4[2], l4[3]]), inner_proto);
    let mapping = OUTBOUND.get_ptr(inside)?;
    if !icmp_error_checksums_hold(ctx, pkt, quoted) {
        return Some(Verdict::drop(Reason::DropBadIcmpError));
    }
    let external = unsafe { (*mapping).target(inner_proto) };
    rewrite_quoted(quoted, Side::Destination, &external);
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
    if let L4::IcmpError(quoted) = &pkt.l4 {
        return icmp_error_hairpinned(ctx, pkt, quoted);
    }
    let (Some(inside), Some(destination)) = (pkt.source(), pkt.destination()) else {
        return Verdict::pass(Reason::PassLocal);
    };
    // Hairpinned fragments are not translated (a later fragment would need
    // both addresses from the first): the kernel gets them, as the gateway's.
    if pkt.fragment != Fragment::No {
        return Verdict::pass(Reason::PassLocal);
    }
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
            // natd sets the mapping up and hairpins this first packet itself.
            None => return hand_to_daemon(ctx, pkt, miss_kind::NEW_FLOW),
        },
    };
    let now = clock();
    let cfg = config();
    let (external, inside_target) = unsafe { ((*mapping).target(inside.proto), (*target).target(inside.proto)) };
    // The sender is the target's remote, as if it were on the Internet: it
    // passes the target's filter only if the target has sent to it.
    remember_remote(&cfg, &inside, destination.addr_be, destination.port_be, now);
    if !admit(&cfg, &inside_target, external.addr_be, external.port_be, now) {
        return Verdict::drop(Reason::DropFiltered);
    }
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
fn icmp_error_hairpinned(ctx: &XdpContext, pkt: &Ipv4Packet, quoted: &Quoted) -> Verdict {
    let error = quoted.error;
    let (inner_proto, inner_src, inner_dst) = unsafe { ((*error).inner.proto, (*error).inner.src_addr, (*error).inner.dst_addr) };
    if inner_proto != proto::TCP && inner_proto != proto::UDP {
        return Verdict::pass(Reason::PassLocal);
    }
    let l4 = unsafe { *quoted.l4 };
    let sender_external = Endpoint::from_be(u32::from_ne_bytes(inner_src), u16::from_ne_bytes([l4[0], l4[1]]), inner_proto);
    let target_inside = Endpoint::from_be(u32::from_ne_bytes(inner_dst), u16::from_ne_bytes([l4[2], l4[3]]), inner_proto);
    let (Some(sender), Some(target)) = (INBOUND.get_ptr(sender_external), OUTBOUND.get_ptr(target_inside)) else {
        return Verdict::pass(Reason::PassLocal);
    };
    if !icmp_error_checksums_hold(ctx, pkt, quoted) {
        return Verdict::drop(Reason::DropBadIcmpError);
    }
    let (sender_inside, target_external) = unsafe { ((*sender).target(inner_proto), (*target).target(inner_proto)) };
    rewrite_quoted(quoted, Side::Destination, &target_external);
    rewrite_quoted(quoted, Side::Source, &sender_inside);
    // Only the outer addresses (and the TTL) change: ports are the quote's.
    // From the target's external address, where the sender sent to.
    let from = Endpoint::from_be(target_external.addr_be, 0, proto::ICMP);
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
    // natd decides an inside port it may keep (in the NAT range) and one
    // whose class is kept (below 1024: the low port range is natd's).
    if (port >= cfg.port_min && port <= cfg.port_max) || (cfg.port_class != 0 && port < 1024) {
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
    if INBOUND.insert(external, Mapping::new(*inside, free.session), BPF_NOEXIST as u64).is_err() {
        // The daemon queues only ports absent from INBOUND: not reached. The
        // port is left out of the queue rather than retried forever.
        event.discard(0);
        give_back_quota(quota);
        return None;
    }
    if OUTBOUND.insert(inside, Mapping::new(external, free.session), BPF_NOEXIST as u64).is_err() {
        // Another CPU claimed for this endpoint first: give the port back
        // and use the winner's mapping.
        let _ = INBOUND.remove(external);
        push_free(inside.proto, &free);
        event.discard(0);
        give_back_quota(quota);
        return OUTBOUND.get_ptr(inside);
    }
    if let Some(live) = LIVENESS.get_ptr_mut(free.session) {
        unsafe { *live = Liveness::new(clock()) };
    }
    event.write(ClaimEvent { kind: miss_kind::CLAIMED, session: free.session, inside: *inside, external });
    event.submit(0);
    OUTBOUND.get_ptr(inside)
}

/// A free port of `parity`, or of the other parity when none is left (a
/// flow that loses its parity beats a flow refused). Only scalars leave this
/// function: a queue pointer kept alive past it would make the verifier walk
/// the rest of the claim once per queue.
#[inline(always)]
fn pop_free(proto_nr: u8, parity: u16) -> Option<FreePort> {
    if let Some(free) = free_queue(proto_nr, parity)?.pop().ok().flatten() {
        return Some(free);
    }
    free_queue(proto_nr, parity ^ 1)?.pop().ok().flatten()
}

/// Gives a popped port back to its queue (the one of its parity).
#[inline(always)]
fn push_free(proto_nr: u8, free: &FreePort) {
    if let Some(queue) = free_queue(proto_nr, free.port & 1) {
        let _ = queue.push(free, 0);
    }
}

/// Counts one more port for the inside host of `inside` if its quota allows
/// (`Some(counter)`, or `Some(null)` without a quota). `None`: over quota, or
/// a host the datapath cannot track: natd decides (and answers a refusal
/// with ICMP, RFC 5508 REQ-8).
#[inline(always)]
fn take_quota(inside: &Endpoint, ports_per_host: u32) -> Option<*mut u64> {
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
    let returned = unsafe { HOST_RETURNS.get(key).copied().unwrap_or(0) };
    // Claims for one host race on every CPU. BPF ISA v1 (what bpf-linker
    // targets) has an atomic add but no fetch-and-add: the count is read
    // after the add instead. Atomic adds are globally ordered, so the k-th
    // claim reads at least k and no more than the quota are let through (on
    // x86, where the add is a full barrier; a weaker memory model can let one
    // more through per CPU racing on the same host).
    atomic_add(claims, 1);
    let claimed = unsafe { core::ptr::read_volatile(claims) };
    if claimed.wrapping_sub(returned) > ports_per_host as u64 {
        give_back_quota(claims);
        return None;
    }
    Some(claims)
}

/// Undoes `take_quota` for a claim that did not happen.
#[inline(always)]
fn give_back_quota(claims: *mut u64) {
    if !claims.is_null() {
        atomic_add(claims, u64::MAX);
    }
}

/// `*counter += delta` (wrapping), atomically: a BPF XADD, whose result
/// ISA v1 cannot return. (The host build, for clippy, uses the std atomic.)
#[inline(always)]
fn atomic_add(counter: *mut u64, delta: u64) {
    #[cfg(target_arch = "bpf")]
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(counter, delta);
    }
    #[cfg(not(target_arch = "bpf"))]
    unsafe { core::sync::atomic::AtomicU64::from_ptr(counter) }.fetch_add(delta, core::sync::atomic::Ordering::Relaxed);
}

#[inline(always)]
fn wan_ipv4(ctx: &XdpContext, pkt: &Ipv4Packet) -> Verdict {
    if pkt.dst_is_special() {
        return Verdict::pass(Reason::PassLocal);
    }
    if let L4::IcmpError(quoted) = &pkt.l4 {
        return icmp_error_in(ctx, pkt, quoted);
    }
    if pkt.fragment == Fragment::Later {
        return later_fragment(ctx, pkt, Side::Destination);
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
        return translate_and_forward(ctx, pkt, mapping, Side::Destination, &external, Reason::TranslatedIn);
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
fn icmp_error_in(ctx: &XdpContext, pkt: &Ipv4Packet, quoted: &Quoted) -> Verdict {
    let (inner_proto, inner_src) = unsafe { ((*quoted.error).inner.proto, (*quoted.error).inner.src_addr) };
    let l4 = unsafe { *quoted.l4 };
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
    if !icmp_error_checksums_hold(ctx, pkt, quoted) {
        return Verdict::drop(Reason::DropBadIcmpError);
    }
    let inside = unsafe { (*mapping).target(inner_proto) };
    // Filtered by what the error is about, not by who sends it: a router on
    // the way may report on a flow to a remote the inside host chose.
    let quoted_dst_port_be = match inner_proto {
        proto::TCP | proto::UDP => u16::from_ne_bytes([l4[2], l4[3]]),
        _ => 0,
    };
    let quoted_dst_be = unsafe { u32::from_ne_bytes((*quoted.error).inner.dst_addr) };
    if !admit(&config(), &inside, quoted_dst_be, quoted_dst_port_be, clock()) {
        return Verdict::drop(Reason::DropFiltered);
    }
    rewrite_quoted(quoted, Side::Source, &inside);
    translate(pkt, Side::Destination, &inside);
    forward(ctx, pkt, Reason::IcmpErrorIn, clock())
}

/// A WAN packet without a mapping.
#[inline(always)]
fn wan_miss(ctx: &XdpContext, pkt: &Ipv4Packet) -> Verdict {
    let cfg = config();
    let dst_be = unsafe { u32::from_ne_bytes((*pkt.ip).dst_addr) };
    if cfg.is_external(dst_be) {
        // A NAT port on the external address belongs to no local socket: drop
        // it rather than let the kernel answer with RST or Port Unreachable.
        // Anything else is the gateway host's own traffic.
        if let Some(external) = pkt.destination() {
            let port = u16::from_be(external.port_be);
            if external.proto != proto::ICMP && cfg.is_nat_port(port) {
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

/// The hit path of either direction (`key`: the endpoint the mapping was
/// found by): filter by remote, route, refresh the session, rewrite `side`
/// to the mapping's target, finish a partial checksum, redirect.
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
    key: &Endpoint,
    translated: Reason,
) -> Verdict {
    let to = unsafe { (*mapping).target(key.proto) };
    let now = clock();
    let cfg = config();
    let (remote_addr_be, remote_port_be) = pkt.remote(side);
    match side {
        Side::Source => remember_remote(&cfg, key, remote_addr_be, remote_port_be, now),
        Side::Destination => {
            if !admit(&cfg, &to, remote_addr_be, remote_port_be, now) {
                return Verdict::drop(Reason::DropFiltered);
            }
        }
    }
    let hop = next_hop(ctx, pkt, &Rewrite::One(side, to), now);
    if let Hop::TooBig(mtu) = hop {
        return too_big(ctx, pkt, mtu, side);
    }
    refresh(mapping, pkt, now, side);
    if pkt.fragment == Fragment::First {
        // The incremental L4 update stays right for the whole datagram (only
        // pseudo-header address and port change); a fragment never carries a
        // partial checksum (the sender's kernel completes it before
        // fragmenting), and the segment is not all here to sum anyway.
        record_first_fragment(pkt, side, to.addr_be, now);
        translate(pkt, side, &to);
        return deliver(ctx, pkt, hop, translated);
    }
    let partial = has_partial_checksum(pkt);
    translate(pkt, side, &to);
    let translated = finish_if_partial(ctx, pkt, partial, translated);
    deliver(ctx, pkt, hop, translated)
}

#[inline(always)]
const fn frag_direction(side: Side) -> u8 {
    match side {
        Side::Source => frag_dir::OUT,
        Side::Destination => frag_dir::IN,
    }
}

/// A first fragment is being translated: its datagram's later fragments
/// will be rewritten to `addr_be` by identity. If the daemon parks some that
/// came first, it is told (the write to `FRAGS` comes before the read of
/// `PARKED`, and the daemon writes `PARKED` before it reads `FRAGS`: one of
/// the two sees the other). A full ring costs only latency: the daemon also
/// looks its parked datagrams up every tick.
#[inline(always)]
fn record_first_fragment(pkt: &Ipv4Packet, side: Side, addr_be: u32, now: u64) {
    let key = pkt.frag_key(frag_direction(side));
    let _ = FRAGS.insert(key, FragState { addr_be, _pad: 0, stamp_ns: now }, 0);
    if PARKED.get_ptr(key).is_some()
        && let Some(mut event) = MISSES.reserve::<FragEvent>(0)
    {
        event.write(FragEvent { kind: miss_kind::FRAGMENT_TRANSLATED, addr_be, key });
        event.submit(0);
    }
}

/// A later fragment (offset > 0: no L4 header). Its datagram's first
/// fragment was translated within `FRAG_TIMEOUT_NS`: the same address rewrite
/// (source outbound, destination inbound), IPv4 checksum and TTL, and the
/// same forwarding. Otherwise it goes to the daemon to wait for its first
/// fragment: outbound when it is bound for the WAN (never leaked with the
/// inside source), inbound when it is for the external address (a copy: the
/// kernel gets it too, as it may belong to the gateway's own traffic and
/// nothing here can tell).
#[inline(always)]
fn later_fragment(ctx: &XdpContext, pkt: &Ipv4Packet, side: Side) -> Verdict {
    let key = pkt.frag_key(frag_direction(side));
    let now = clock();
    let mut no_state = Reason::FragmentToDaemon;
    if let Some(state) = FRAGS.get_ptr(key) {
        let state = unsafe { *state };
        if state.fresh(now) {
            // Inbound, the destination is the gateway's own address: the
            // kernel would deliver it instead of answering Time Exceeded.
            if pkt.ttl() <= 1 {
                return Verdict::drop(Reason::DropTtlExpired);
            }
            translate(pkt, side, &Endpoint::from_be(state.addr_be, 0, key.proto));
            let translated = match side {
                Side::Source => Reason::FragmentTranslatedOut,
                Side::Destination => Reason::FragmentTranslatedIn,
            };
            return forward(ctx, pkt, translated, now);
        }
        no_state = Reason::FragmentStateExpired;
    }
    match side {
        Side::Source => match route_untranslated(ctx, pkt) {
            Route::Wan => match copy_to_daemon(ctx, pkt, miss_kind::FRAGMENT_OUT) {
                Ok(()) => Verdict::drop(no_state),
                Err(failed) => Verdict::drop(failed),
            },
            Route::Local | Route::Inside => Verdict::pass(Reason::PassLocal),
        },
        Side::Destination => {
            if !config().is_external(key.dst_be) {
                return wan_miss(ctx, pkt);
            }
            match copy_to_daemon(ctx, pkt, miss_kind::FRAGMENT_IN) {
                Ok(()) => Verdict::pass(no_state),
                // Still the kernel's, if it is the gateway's own.
                Err(failed) => Verdict::pass(failed),
            }
        }
    }
}

/// Outbound: `inside` sent to the remote, which may now send back through
/// its mapping under address(-and-port)-dependent filtering. At most one
/// write per granule; nothing at all under endpoint-independent filtering.
#[inline(always)]
fn remember_remote(cfg: &GatewayConfig, inside: &Endpoint, remote_addr_be: u32, remote_port_be: u16, now: u64) {
    let (mode, _) = cfg.filtering(inside.proto);
    let Some(key) = PermitKey::new(mode, *inside, remote_addr_be, remote_port_be) else {
        return;
    };
    match PERMITS.get_ptr_mut(key) {
        Some(sent) => unsafe {
            if now.saturating_sub(*sent) >= LAST_SEEN_GRANULARITY_NS {
                *sent = now;
            }
        },
        None => {
            let _ = PERMITS.insert(key, now, 0);
        }
    }
}

/// Inbound: whether the remote may send to `inside` (RFC 4787 REQ-8, RFC
/// 5382 REQ-3): always under endpoint-independent filtering, else only if
/// `inside` sent to it within the protocol's timeout. An admitted packet
/// keeps its permit alive, as it keeps the mapping alive.
#[inline(always)]
fn admit(cfg: &GatewayConfig, inside: &Endpoint, remote_addr_be: u32, remote_port_be: u16, now: u64) -> bool {
    let (mode, ttl) = cfg.filtering(inside.proto);
    let Some(key) = PermitKey::new(mode, *inside, remote_addr_be, remote_port_be) else {
        return true;
    };
    let Some(sent) = PERMITS.get_ptr_mut(key) else {
        return false;
    };
    unsafe {
        // natd stamps the permits of the first packets it sends with its own
        // clock, up to a tick ahead of the one it published: not stale.
        let age = now.saturating_sub(*sent);
        if age > ttl {
            return false;
        }
        if age >= LAST_SEEN_GRANULARITY_NS {
            *sent = now;
        }
    }
    true
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
            // A bare SYN after a FIN or RST is a new connection between the
            // same endpoints (the mapping outlives the last one by the
            // transitory timeout): its state starts afresh, or an idle but
            // established connection would age out on the closing timer.
            let closed = ((*live).tcp_flags_out | (*live).tcp_flags_in) & (tcp_flags::FIN | tcp_flags::RST) != 0;
            if closed && flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN {
                (*live).tcp_flags_out = 0;
                (*live).tcp_flags_in = 0;
            }
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
/// the external address it was sent to), sent back out of the port it came in on. Without
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
        // The external address it was sent to (it is not rewritten yet).
        Side::Destination => unsafe { u32::from_ne_bytes((*pkt.ip).dst_addr) },
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
    match copy_to_daemon(ctx, pkt, kind) {
        Ok(()) => Verdict::drop(handed),
        Err(failed) => Verdict::drop(failed),
    }
}

/// Copies the frame into the miss ring as a `MissEvent` of `kind`. `Err`:
/// the reason it could not be.
#[inline(always)]
fn copy_to_daemon(ctx: &XdpContext, pkt: &Ipv4Packet, kind: u32) -> Result<(), Reason> {
    let frame_len = ctx.data_end() - ctx.data();
    if frame_len > MISS_FRAME_MAX {
        return Err(Reason::DropTooBigForDaemon);
    }
    let Some(mut entry) = MISSES.reserve::<MissEvent>(0) else {
        return Err(Reason::DropRingFull);
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
        return Err(Reason::DropMalformed);
    }
    entry.submit(0);
    Ok(())
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
