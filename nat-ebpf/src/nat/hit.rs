//! The hit path both programs share: a packet of a mapped flow is filtered,
//! routed, its session refreshed, rewritten and sent on.

use aya_ebpf::programs::XdpContext;
use nat_common::{Endpoint, GatewayConfig, LAST_SEEN_GRANULARITY_NS, Liveness, Mapping, Reason, forward::mapping_flags};

use crate::{
    ctx::clock,
    cut::{self, Step},
    inbound::forward,
    maps::LIVENESS,
    nat::{
        filter::{admit, remember_remote},
        fragment::record_first_fragment,
        icmp_errors::too_big,
    },
    packet::{
        Rewrite, Side,
        checksum::{finish_partial_checksum, has_partial_checksum},
        parse::{Fragment, Ipv4Packet},
        rewrite::{translate_both_with, translate_with},
    },
    proto::{
        L4,
        SctpCheck, sctp,
        tcp,
    },
    route::{Hop, deliver, next_hop},
    verdict::Verdict,
};

/// The hit path of either direction (`key`: the endpoint the mapping was
/// found by): filter by remote, then route, refresh the session, rewrite
/// `side` to the mapping's target and send.
#[inline(always)]
pub fn translate_and_forward(ctx: &XdpContext, pkt: &Ipv4Packet, cfg: &GatewayConfig, mapping: *const Mapping, side: Side, key: &Endpoint, translated: Reason) -> Verdict {
    // SAFETY: a value of the map, alive while the program runs.
    let mapping = unsafe { &*mapping };
    // First, where few paths lead (see `sctp::check_after`).
    let sctp_check = sctp_check_after(pkt, &Rewrite::One(side, mapping.target(key.proto)));
    let now = clock();
    match filter(cfg, mapping, pkt, side, key, now) {
        Ok(to) => send(ctx, pkt, cfg, &Rewrite::One(side, to), now, translated, Refresh::One(mapping, side), sctp_check),
        Err(filtered) => filtered,
    }
}

/// The CRC32c field an SCTP packet leaves with once `rewrite` is applied
/// (`sctp::check_after`); `SctpCheck::NONE`, and no length read, for any
/// other packet.
#[inline(always)]
pub fn sctp_check_after(pkt: &Ipv4Packet, rewrite: &Rewrite) -> SctpCheck {
    match pkt.sctp() {
        Some(header) => sctp::check_after(header, pkt.l4_len(), rewrite),
        None => SctpCheck::NONE,
    }
}

/// Filtering by remote on the hit path (RFC 4787 REQ-8): outbound, the
/// remote is remembered; inbound, it must have been. Returns the endpoint
/// the mapping translates `side` to. A backend's static mapping (a forward)
/// is not filtered: its packet is tracked on the forwarded flow it belongs
/// to, here, before the route: a SYN-ACK the gateway cannot route (to a
/// spoofed source) still tells natd's passive checks the server answers.
/// Its answers to the gateway itself (natd's health checks, passed up
/// untranslated by `send`) belong to no forwarded flow.
#[inline(always)]
pub fn filter(cfg: &GatewayConfig, mapping: &Mapping, pkt: &Ipv4Packet, side: Side, key: &Endpoint, now: u64) -> Result<Endpoint, Verdict> {
    let to = mapping.target(key.proto);
    if mapping.flags & mapping_flags::FORWARD != 0 {
        if !cfg.is_own(pkt.dst_be()) {
            forward::track_outbound(pkt, mapping, now);
        }
    } else {
        let (remote_addr_be, remote_port_be) = pkt.remote(side);
        match side {
            Side::Source => remember_remote(cfg, key, remote_addr_be, remote_port_be, now),
            Side::Destination => {
                if !admit(cfg, &to, remote_addr_be, remote_port_be, now) {
                    return Err(Verdict::drop(Reason::DropFiltered));
                }
            }
        }
    }
    Ok(to)
}

/// The sessions a packet refreshes once its route is known (`send`).
/// (Not a closure: LLVM made one a BPF subprogram, a call per packet.)
pub enum Refresh<'a> {
    None,
    /// The mapping it was translated by, on that side.
    One(&'a Mapping, Side),
    /// A hairpin: the sender's mapping, and the target's when it has one.
    Hairpin(&'a Mapping, Option<&'a Mapping>),
    /// An ESP SA pair's session slot (`proto::esp`): its timestamp alone.
    Session(u32),
}

/// Routes, rewrites and sends a packet being translated as `rewrite` says,
/// refreshing `sessions` once the route is known to take it. An SCTP
/// packet's CRC32c field becomes `sctp_check` (`sctp::check_after` for
/// this rewrite, computed by the caller).
///
/// The route is looked up before the rewrite, with the addresses and ports
/// the packet will have, so that a packet too big for the egress is still
/// exactly what its sender sent when the Fragmentation Needed error quotes
/// it (RFC 4787 REQ-13, RFC 792), partial checksum and TTL included, with
/// nothing to undo.
#[inline(always)]
pub fn send(ctx: &XdpContext, pkt: &Ipv4Packet, cfg: &GatewayConfig, rewrite: &Rewrite, now: u64, translated: Reason, sessions: Refresh, sctp_check: SctpCheck) -> Verdict {
    let came_in = rewrite.ingress();
    let from_wan = came_in == Side::Destination;
    // The next-hop cache's key: the interface of the side the packet came
    // in on, as natd wrote it, not the context's `ingress_ifindex`, three
    // dependent loads (rxq, device, index) on every hit. Each program runs
    // on its side's interface only.
    let ingress = if from_wan { cfg.wan_ifindex } else { cfg.lan_ifindex };
    let hop = next_hop(ctx, pkt, rewrite, ingress, now);
    match hop {
        Hop::TooBig(mtu) => return too_big(ctx, pkt, mtu, came_in),
        Hop::Refused(verdict) => return verdict,
        Hop::Routed { .. } => {}
    }
    if let Some(cut) = cut::after(Step::Routed) {
        return cut;
    }
    match sessions {
        Refresh::None => {}
        Refresh::One(mapping, side) => refresh(mapping, pkt, now, side),
        Refresh::Hairpin(sender, target) => {
            refresh(sender, pkt, now, Side::Source);
            if let Some(target) = target {
                refresh(target, pkt, now, Side::Destination);
            }
        }
        Refresh::Session(slot) => stamp(slot, now),
    }
    if let Some(cut) = cut::after(Step::Refreshed) {
        return cut;
    }
    // A first fragment: the incremental L4 update stays right for the whole
    // datagram (only pseudo-header address and port change); it never
    // carries a partial checksum (the sender's kernel completes it before
    // fragmenting), and the segment is not all here to sum anyway. Nor does
    // a frame off a wire (`GatewayConfig::wire_ingress`): testing for one
    // cost 2-3 ns a TCP/UDP hit.
    let first_fragment = pkt.fragment == Fragment::First;
    if first_fragment && let Rewrite::One(side, to) = rewrite {
        record_first_fragment(pkt, *side, to.addr_be, now);
    }
    let partial = !first_fragment && !cfg.off_the_wire(from_wan) && has_partial_checksum(pkt);
    match rewrite {
        Rewrite::One(side, to) => translate_with(pkt, *side, to, sctp_check),
        Rewrite::Both(source, destination) => translate_both_with(pkt, source, destination, sctp_check),
        Rewrite::Nothing => {}
    }
    if let Some(cut) = cut::after(Step::Rewritten) {
        return cut;
    }
    let translated = finish_if_partial(ctx, pkt, partial, translated);
    if let Some(cut) = cut::after(Step::ChecksumDone) {
        return cut;
    }
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
pub fn finish_if_partial(ctx: &XdpContext, pkt: &Ipv4Packet, partial: bool, translated: Reason) -> Reason {
    if partial && finish_partial_checksum(ctx, pkt).is_err() {
        return Reason::PartialChecksumTooLong;
    }
    translated
}

/// Records activity on a session with no state bits (an ESP SA pair's).
#[inline(always)]
pub fn stamp(slot: u32, now: u64) {
    let _ = stamped(slot, now);
}

/// The liveness of session `slot`, its timestamp brought to `now`: at most
/// one write per granule.
#[inline(always)]
fn stamped(slot: u32, now: u64) -> Option<&'static mut Liveness> {
    let live = LIVENESS.get_ptr_mut(slot)?;
    // SAFETY: the session's slot; the datapath's writes to it race only with
    // each other's timestamps and flag bits, which is what they record.
    let live = unsafe { &mut *live };
    if now.wrapping_sub(live.last_seen_ns) >= LAST_SEEN_GRANULARITY_NS {
        live.last_seen_ns = now;
    }
    Some(live)
}

/// Records activity on a mapping's session: at most one write per granule
/// for the timestamp, and one per new TCP flag (SCTP chunk kind) in this
/// direction. A
/// backend's static mapping has no session of its own (`filter` tracked
/// its packet on its forwarded flow).
#[inline(always)]
pub fn refresh(mapping: &Mapping, pkt: &Ipv4Packet, now: u64, side: Side) {
    if mapping.flags & mapping_flags::FORWARD != 0 {
        return;
    }
    let Some(live) = stamped(mapping.session, now) else {
        return;
    };
    match pkt.l4 {
        L4::Tcp(header) => tcp::record_flags(live, header, side),
        L4::Sctp(header) => sctp::record_chunk(live, header, side),
        _ => {}
    }
}
