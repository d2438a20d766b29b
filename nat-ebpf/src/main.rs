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
//!
//! Layout: this file holds the programs, the maps every part uses and the
//! hit path; `new_flow` (claims and quotas), `filter` (filtering by remote),
//! `icmp_errors`, `fragment`, `route` (next hop, redirect) and `handoff` (to
//! the daemon) hold one concern each, with their own maps. They see this
//! file's imports and items through `use super::*`: one prelude for the
//! program, whose parts are all inlined into the two entry points.
#![no_std]
#![no_main]
// Atomic adds on map values: the BPF target has no `AtomicU64::fetch_add`.
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

// The panic handler.
use nat_ebpf as _;
mod filter;
mod fragment;
mod handoff;
mod icmp_errors;
mod new_flow;
mod parse;
mod rewrite;
mod route;

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_NOEXIST,
        BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams, xdp_action,
    },
    helpers::{bpf_csum_diff, bpf_fib_lookup, bpf_ktime_get_ns, bpf_xdp_adjust_tail, bpf_xdp_get_buff_len, bpf_xdp_load_bytes, bpf_xdp_store_bytes},
    macros::{map, xdp},
    maps::{Array, DevMapHash, HashMap, LpmTrie, LruHashMap, PerCpuArray, Queue, RingBuf, lpm_trie::Key as LpmKey},
    programs::XdpContext,
};
use nat_common::{
    BPF_F_MMAPABLE, ClaimEvent, Endpoint, FREE_QUEUE_CAPACITY, FragEvent, FragKey, FragState, FreePort, GatewayConfig, HostKey, LAST_SEEN_GRANULARITY_NS, Liveness, MAX_FRAGMENTED_DATAGRAMS, MAX_MAPPINGS, MAX_PARKED_DATAGRAMS, MAX_PERMITS, MAX_QUOTA_HOSTS, MAX_SESSIONS, MISS_FRAME_MAX,
    MAX_WAN_DROP_SOURCES, MISS_RING_BYTES, Mapping, MissEvent, NEXT_HOP_CACHE_BITS, NEXT_HOP_TTL_NS, NextHop, PermitKey, Reason,
    frag_dir, miss_kind, proto, tcp_flags,
    icmp::{FRAG_NEEDED_HEADERS_LEN, IP_DF, QUOTED_L4_LEN, RateLimit, frag_needed_headers},
};

use crate::{
    filter::{admit, remember_remote},
    fragment::{later_fragment, record_first_fragment},
    handoff::{copy_to_daemon, hand_to_daemon},
    icmp_errors::{icmp_error_hairpinned, icmp_error_in, icmp_error_out, too_big},
    new_flow::claim,
    route::{Hop, Rewrite, Route, TX_PORTS, deliver, forward, next_hop, route_untranslated},
    parse::{Fragment, Frame, ICMP_ECHO_REQUEST, Invalid, Ipv4Packet, L4, Quoted, parse},
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

#[map]
static MISSES: RingBuf = RingBuf::with_byte_size(MISS_RING_BYTES, 0);

/// The prefixes the operator listed in `wan_drop_sources` (value unused):
/// WAN packets from them are dropped before anything else (BCP 84). Looked
/// up only when the list is not empty (`GatewayConfig::wan_drop_listed`).
#[map]
static WAN_DROP_SOURCES: LpmTrie<u32, u8> = LpmTrie::with_max_entries(MAX_WAN_DROP_SOURCES, 0);

/// What `config()` answers should CONFIG[0] be missing (an array always
/// has its entries; the verifier wants the branch): no inside prefixes and
/// no external address, so nothing is translated.
static NO_CONFIG: GatewayConfig = GatewayConfig::new(core::net::Ipv4Addr::UNSPECIFIED, 0, 0, 0);

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
        Err(Invalid(reason)) => Verdict::drop(reason),
    };
    finish(verdict)
}

#[xdp]
#[inline(always)]
pub fn nat_wan(ctx: XdpContext) -> u32 {
    let verdict = match parse(&ctx) {
        Ok(Frame::Ipv4(pkt)) => wan_ipv4(&ctx, &pkt),
        Ok(Frame::NotIpv4) => Verdict::pass(Reason::PassNotIpv4),
        Err(Invalid(reason)) => Verdict::drop(reason),
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

/// The settings natd wrote, read in place: a copy would move all of it
/// through the stack on every call.
#[inline(always)]
fn config() -> &'static GatewayConfig {
    match CONFIG.get(0) {
        Some(cfg) => cfg,
        None => &NO_CONFIG,
    }
}

#[inline(always)]
fn lan_ipv4(ctx: &XdpContext, pkt: &Ipv4Packet) -> Verdict {
    // The kernel never forwards these: it answers Time Exceeded itself, or
    // delivers them locally. (From a forged source the answer would go to
    // whoever was named: not for sources the gateway refuses.)
    if pkt.ttl() <= 1 {
        return match refused_lan_source(ctx, pkt) {
            Some(refused) => refused,
            None => Verdict::pass(Reason::PassTtlExpired),
        };
    }
    // Broadcast and multicast (DHCP from 0.0.0.0 among them) are the
    // gateway's own to receive, whatever the source.
    if pkt.dst_is_special() {
        return Verdict::pass(Reason::PassLocal);
    }
    if config().is_external(pkt.dst_be()) {
        return to_external_address(ctx, pkt);
    }

    if let L4::IcmpError(quoted) = &pkt.l4
        && config().lan_source_refusal(pkt.src_be()).is_none()
        && let Some(verdict) = icmp_error_out(ctx, pkt, quoted)
    {
        return verdict;
    }
    if pkt.fragment == Fragment::Later {
        return later_fragment(ctx, pkt, Side::Source);
    }

    let Some(inside) = pkt.source() else {
        return untranslated(pkt, route_untranslated(ctx, pkt));
    };
    let (mapping, translated) = match OUTBOUND.get_ptr(inside) {
        // A mapping exists only for a source that passed BCP 38 when its
        // first packet did: a hit needs no check.
        Some(mapping) => (mapping, Reason::TranslatedOut),
        // A new flow, if the kernel would route it to the WAN and its source
        // may be translated.
        None => match route_untranslated(ctx, pkt) {
            Route::Wan if config().lan_source_refusal(inside.addr_be).is_none() => match claim(&inside) {
                Some(mapping) => (mapping, Reason::TranslatedNewFlow),
                None => return hand_to_daemon(ctx, pkt, miss_kind::NEW_FLOW),
            },
            route => return untranslated(pkt, route),
        },
    };
    translate_and_forward(ctx, pkt, mapping, Side::Source, &inside, translated)
}

/// A LAN packet the gateway does not translate goes where the kernel would
/// send it only if that is the gateway itself, or back inside from an
/// inside host (routing between inside networks). Bound for the WAN it is
/// dropped: nothing leaves with an inside address. From a source the gateway
/// refuses (BCP 38) it is dropped under that reason wherever it would go but
/// the gateway itself.
#[inline(always)]
fn untranslated(pkt: &Ipv4Packet, route: Route) -> Verdict {
    if let Route::Local = route {
        return Verdict::pass(Reason::PassLocal);
    }
    if let Some(refused) = config().lan_source_refusal(pkt.src_be()) {
        return Verdict::drop(refused);
    }
    match route {
        Route::Wan => Verdict::drop(Reason::DropUntranslatable),
        _ => Verdict::pass(Reason::PassLocal),
    }
}

/// `Some(drop)` when a LAN packet comes from a source the gateway refuses
/// and is not for the gateway itself (BCP 38); `None` otherwise.
#[inline(always)]
fn refused_lan_source(ctx: &XdpContext, pkt: &Ipv4Packet) -> Option<Verdict> {
    config().lan_source_refusal(pkt.src_be())?;
    match untranslated(pkt, route_untranslated(ctx, pkt)) {
        Verdict { action: xdp_action::XDP_DROP, reason } => Some(Verdict::drop(reason)),
        _ => None,
    }
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
        // A source the gateway refuses is not hairpinned: the packet is for
        // the gateway's own address, and the kernel's to deliver.
        None if config().lan_source_refusal(inside.addr_be).is_some() => return Verdict::pass(Reason::PassLocal),
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
    remember_remote(cfg, &inside, destination.addr_be, destination.port_be, now);
    if !admit(cfg, &inside_target, external.addr_be, external.port_be, now) {
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

#[inline(always)]
fn wan_ipv4(ctx: &XdpContext, pkt: &Ipv4Packet) -> Verdict {
    // BCP 84, before anything is translated or passed: no packet from the
    // WAN comes from inside, from the gateway itself or from a
    // special-purpose address. The kernel's rp_filter never sees what the
    // programs translate.
    let src_be = pkt.src_be();
    if let Some(refused) = config().wan_source_refusal(src_be) {
        return Verdict::drop(refused);
    }
    if config().wan_drop_listed != 0 && WAN_DROP_SOURCES.get(LpmKey::new(32, src_be)).is_some() {
        return Verdict::drop(Reason::DropWanSourceListed);
    }
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
        return wan_miss(ctx, pkt);
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

/// A WAN packet that is no translated flow. For the external address it is
/// the gateway host's own; for any other address it is passed only if the
/// gateway owns it: nothing that is not a translated flow is forwarded into
/// the LAN (an echo request to an inside host included).
#[inline(always)]
fn wan_miss(ctx: &XdpContext, pkt: &Ipv4Packet) -> Verdict {
    let cfg = config();
    if cfg.is_external(pkt.dst_be()) {
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
        Side::Source => remember_remote(cfg, key, remote_addr_be, remote_port_be, now),
        Side::Destination => {
            if !admit(cfg, &to, remote_addr_be, remote_port_be, now) {
                return Verdict::drop(Reason::DropFiltered);
            }
        }
    }
    let hop = next_hop(ctx, pkt, &Rewrite::One(side, to), now);
    if let Hop::TooBig(mtu) = hop {
        return too_big(ctx, pkt, mtu, side);
    }
    refresh(mapping, pkt, now, side);
    // A first fragment: the incremental L4 update stays right for the whole
    // datagram (only pseudo-header address and port change); it never
    // carries a partial checksum (the sender's kernel completes it before
    // fragmenting), and the segment is not all here to sum anyway.
    let first_fragment = pkt.fragment == Fragment::First;
    if first_fragment {
        record_first_fragment(pkt, side, to.addr_be, now);
    }
    let partial = !first_fragment && has_partial_checksum(pkt);
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

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
