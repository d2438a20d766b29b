//! WAN ingress: what `nat_wan` does with an IPv4 packet. Only mappings let
//! packets in; everything else is the gateway's own or dropped.

use aya_ebpf::programs::XdpContext;
use nat_common::Reason;

use crate::{
    maps::INBOUND,
    nat::{fragment::later_fragment, guard::wan_source_refusal, hit::translate_and_forward, icmp_errors::icmp_error_in, untranslated},
    packet::{
        Side,
        parse::{Fragment, Ipv4Packet},
    },
    proto::L4,
    verdict::Verdict,
};

#[inline(always)]
pub fn ipv4(ctx: &XdpContext, pkt: &Ipv4Packet) -> Verdict {
    // BCP 84, before anything is translated or passed.
    if let Some(refused) = wan_source_refusal(pkt) {
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
    if let Some(mapping) = INBOUND.get_ptr(external) {
        // The destination is the gateway's own address: the kernel would deliver
        // it locally instead of answering Time Exceeded.
        if pkt.ttl() <= 1 {
            return Verdict::drop(Reason::DropTtlExpired);
        }
        return translate_and_forward(ctx, pkt, mapping, Side::Destination, &external, Reason::TranslatedIn);
    }
    untranslated::wan(ctx, pkt)
}
