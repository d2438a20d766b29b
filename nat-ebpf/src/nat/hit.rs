//! The hit path both programs share: a packet of a mapped flow is filtered,
//! routed, its session refreshed, rewritten and sent on.

use aya_ebpf::programs::XdpContext;
use nat_common::{Endpoint, LAST_SEEN_GRANULARITY_NS, Mapping, Reason};

use crate::{
    ctx::{clock, config},
    maps::LIVENESS,
    nat::{
        filter::{admit, remember_remote},
        fragment::record_first_fragment,
        icmp_errors::too_big,
    },
    packet::{
        Side,
        checksum::{finish_partial_checksum, has_partial_checksum},
        parse::{Fragment, Ipv4Packet},
        rewrite::translate,
    },
    proto::{L4, tcp},
    route::{Hop, Rewrite, deliver, next_hop},
    verdict::Verdict,
};

/// The hit path of either direction (`key`: the endpoint the mapping was
/// found by): filter by remote, route, refresh the session, rewrite `side`
/// to the mapping's target, finish a partial checksum, redirect.
///
/// The route is looked up before the rewrite, with the addresses and ports
/// the packet will have (`Rewrite`), so that a packet too big for the egress
/// is still exactly what its sender sent when the Fragmentation Needed error
/// quotes it (RFC 4787 REQ-13, RFC 792), partial checksum and TTL
/// included, with nothing to undo.
#[inline(always)]
pub fn translate_and_forward(ctx: &XdpContext, pkt: &Ipv4Packet, mapping: *const Mapping, side: Side, key: &Endpoint, translated: Reason) -> Verdict {
    // SAFETY: a value of the map, copied.
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
pub fn finish_if_partial(ctx: &XdpContext, pkt: &Ipv4Packet, partial: bool, translated: Reason) -> Reason {
    if partial && finish_partial_checksum(ctx, pkt).is_err() {
        return Reason::PartialChecksumTooLong;
    }
    translated
}

/// Records activity on a mapping's session: at most one write per granule
/// for the timestamp, and one per new TCP flag in this direction.
#[inline(always)]
pub fn refresh(mapping: *const Mapping, pkt: &Ipv4Packet, now: u64, side: Side) {
    // SAFETY: a value of the map.
    let Some(live) = LIVENESS.get_ptr_mut(unsafe { (*mapping).session }) else {
        return;
    };
    // SAFETY: the session's slot; the datapath's writes to it race only with
    // each other's timestamps and flag bits, which is what they record.
    let live = unsafe { &mut *live };
    if now.wrapping_sub(live.last_seen_ns) >= LAST_SEEN_GRANULARITY_NS {
        live.last_seen_ns = now;
    }
    if let L4::Tcp(header) = pkt.l4 {
        tcp::record_flags(live, header, side);
    }
}
