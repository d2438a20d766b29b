//! WAN ingress: what `nat_wan` does with an IPv4 packet. Only mappings let
//! packets in; everything else is the gateway's own or dropped.

use aya_ebpf::programs::XdpContext;
use nat_common::{GatewayConfig, Reason};

use crate::{
    ctx::clock,
    cut::{self, Step},
    inbound::forward,
    maps::inbound,
    nat::{
        fragment::later_fragment,
        guard::wan_source_refusal,
        hit::{Refresh, filter, sctp_check_after, send},
        icmp_errors::icmp_error_in,
        untranslated,
    },
    packet::{
        Rewrite, Side,
        parse::{Fragment, Ipv4Packet},
    },
    proto::L4,
    verdict::Verdict,
};

#[inline(always)]
pub fn ipv4(ctx: &XdpContext, pkt: &Ipv4Packet, cfg: &GatewayConfig) -> Verdict {
    if let Some(cut) = cut::after(Step::Parsed) {
        return cut;
    }
    // BCP 84, before anything is translated or passed.
    if let Some(refused) = wan_source_refusal(pkt, cfg) {
        return Verdict::drop(refused);
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
        return untranslated::wan(ctx, pkt);
    };
    let now = clock();
    // A mapping's packet, or a forwarded one: one send for both (each copy
    // of it is a large part of what the verifier walks). The port says
    // which table: the hit path pays nothing for forwards.
    let forwardable = forward::is_forwardable(cfg, &external);
    if let Some(cut) = cut::after(Step::Checked) {
        return cut;
    }
    let mapping = if forwardable { None } else { inbound(cfg, &external) };
    let (to, translated, sessions) = match &mapping {
        Some(mapping) => {
            if let Some(cut) = cut::after(Step::LookedUp) {
                return cut;
            }
            match filter(cfg, mapping, pkt, Side::Destination, &external, now) {
                Ok(to) => (to, Reason::TranslatedIn, Refresh::One(mapping, Side::Destination)),
                Err(filtered) => return filtered,
            }
        }
        None if forwardable => match forward::inbound(ctx, pkt, &external, now) {
            Some(Ok((to, translated))) => {
                if let Some(cut) = cut::after(Step::LookedUp) {
                    return cut;
                }
                (to, translated, Refresh::None)
            }
            Some(Err(refused)) => return refused,
            None => return untranslated::wan(ctx, pkt),
        },
        None => return untranslated::wan(ctx, pkt),
    };
    // The destination is the gateway's own address: the kernel would deliver
    // it locally instead of answering Time Exceeded.
    if pkt.ttl() <= 1 {
        return Verdict::drop(Reason::DropTtlExpired);
    }
    let rewrite = Rewrite::One(Side::Destination, to);
    let sctp_check = sctp_check_after(pkt, &rewrite);
    send(ctx, pkt, cfg, &rewrite, now, translated, sessions, sctp_check)
}
