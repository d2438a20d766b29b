//! LAN ingress: what `nat_lan` does with an IPv4 packet.
//!
//! Invariant: nothing it lets through reaches the WAN with an inside source
//! address. Transit traffic the kernel would route to the WAN is translated,
//! handed to natd, or dropped; it is never passed.

use aya_ebpf::programs::XdpContext;
use nat_common::{GatewayConfig, Reason, forward::mapping_flags, miss_kind, proto};

use crate::{
    ctx::clock,
    cut::{self, Step},
    handoff::hand_to_daemon,
    maps::{OUTBOUND, inbound_at},
    nat::{
        filter::{admit, remember_remote},
        fragment::later_fragment,
        guard::lan_source_refusal,
        hit::{Refresh, sctp_check_after, send, translate_and_forward},
        icmp_errors::{icmp_error_hairpinned, icmp_error_out},
        new_flow::claim,
        untranslated::{self, refused_lan_source},
    },
    inbound::{
        forward::{self, hairpin_backend},
        lb::forward_port,
    },
    packet::{
        Rewrite, Side,
        parse::{Fragment, Ipv4Packet},
    },
    proto::L4,
    route::{Route, route_untranslated},
    verdict::Verdict,
};

#[inline(always)]
pub fn ipv4(ctx: &XdpContext, pkt: &Ipv4Packet, cfg: &GatewayConfig) -> Verdict {
    if let Some(cut) = cut::after(Step::Parsed) {
        return cut;
    }
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
    if let Some(position) = cfg.pool_position(pkt.dst_be()) {
        return to_external_address(ctx, pkt, cfg, position);
    }

    if let L4::IcmpError(quoted) = &pkt.l4
        && lan_source_refusal(pkt.src_be()).is_none()
        && let Some(verdict) = icmp_error_out(ctx, pkt, quoted)
    {
        return verdict;
    }
    if pkt.fragment == Fragment::Later {
        return later_fragment(ctx, pkt, Side::Source);
    }

    let Some(inside) = pkt.source() else {
        return untranslated::lan(pkt, route_untranslated(ctx, pkt));
    };
    if let Some(cut) = cut::after(Step::Checked) {
        return cut;
    }
    let (mapping, translated) = match OUTBOUND.get_ptr(inside) {
        // A mapping exists only for a source that passed BCP 38 when its
        // first packet did: a hit needs no check.
        Some(mapping) => {
            if let Some(cut) = cut::after(Step::LookedUp) {
                return cut;
            }
            (mapping, Reason::TranslatedOut)
        }
        // A new flow, if the kernel would route it to the WAN and its source
        // may be translated.
        None => match route_untranslated(ctx, pkt) {
            Route::Wan if lan_source_refusal(inside.addr_be).is_none() => match claim(&inside) {
                Some(mapping) => (mapping, Reason::TranslatedNewFlow),
                None => return hand_to_daemon(ctx, pkt, miss_kind::NEW_FLOW),
            },
            route => return untranslated::lan(pkt, route),
        },
    };
    translate_and_forward(ctx, pkt, cfg, mapping, Side::Source, &inside, translated)
}

/// A LAN packet for the gateway's external address. For another inside
/// host's TCP/UDP mapping, or a forwarded port, it is hairpinned (RFC 4787
/// REQ-9, RFC 5382 REQ-8): source translated to the sender's external
/// endpoint, destination to the target's inside one (the forward's
/// backend), and sent back into the LAN, so the target sees the sender as
/// the Internet would. So is the target's ICMP error about such a packet
/// (RFC 5508 REQ-7). Anything else is for the gateway itself.
#[inline(always)]
fn to_external_address(ctx: &XdpContext, pkt: &Ipv4Packet, cfg: &GatewayConfig, position: u32) -> Verdict {
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
    let target = inbound_at(position, &destination);
    let forward = if target.is_none() { forward_port(&destination) } else { None };
    if target.is_none() && forward.is_none() {
        return Verdict::pass(Reason::PassLocal);
    }
    let mapping = match OUTBOUND.get_ptr(inside) {
        Some(mapping) => mapping,
        // A source the gateway refuses is not hairpinned: the packet is for
        // the gateway's own address, and the kernel's to deliver.
        None if lan_source_refusal(inside.addr_be).is_some() => return Verdict::pass(Reason::PassLocal),
        None => match claim(&inside) {
            Some(mapping) => mapping,
            // natd sets the mapping up (and hairpins this first packet itself
            // to a mapping; to a forward the sender's retry finds it set up).
            None => return hand_to_daemon(ctx, pkt, miss_kind::NEW_FLOW),
        },
    };
    let now = clock();
    // SAFETY: values of the maps, alive while the program runs.
    let mapping = unsafe { &*mapping };
    let external = mapping.target(inside.proto);
    // The sender is the target's remote, as if it were on the Internet.
    remember_remote(cfg, &inside, destination.addr_be, destination.port_be, now);
    // To a forward: the flow's backend; to a mapping: its inside endpoint,
    // if the target's filter lets the sender in (only if the target has
    // sent to it). One send for both: each copy of it is a large part of
    // what the verifier walks.
    let (to, target, hairpinned) = match (forward, &target) {
        (Some(port), _) => match hairpin_backend(ctx, pkt, &external, &destination, &port) {
            Ok(server) => (server, None, Reason::HairpinnedToForward),
            Err(verdict) => return verdict,
        },
        (None, Some(target)) => {
            let inside_target = target.target(inside.proto);
            if !admit(cfg, &inside_target, external.addr_be, external.port_be, now) {
                return Verdict::drop(Reason::DropFiltered);
            }
            // A backend answering a client hairpinned to its forward: the
            // packet belongs to that forwarded flow as an answer to the
            // Internet does (`hit::filter`), so the handshake promotes the
            // flow and the SYN-ACK counts for the passive checks (its SYN
            // did, on the way in).
            if mapping.flags & mapping_flags::FORWARD != 0 {
                forward::track_outbound(pkt, mapping, now);
            }
            (inside_target, Some(target), Reason::Hairpinned)
        }
        (None, None) => return Verdict::pass(Reason::PassLocal),
    };
    let rewrite = Rewrite::Both(external, to);
    let sctp_check = sctp_check_after(pkt, &rewrite);
    send(ctx, pkt, cfg, &rewrite, now, hairpinned, Refresh::Hairpin(mapping, target), sctp_check)
}
