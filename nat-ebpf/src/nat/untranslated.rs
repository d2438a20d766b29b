//! Packets that are no translated flow: where they may go, and where not.
//! The kernel gets only what is for the gateway itself (or, from an inside
//! host, for another inside network): it would forward anything else
//! untranslated, inside addresses and all.

use aya_ebpf::programs::XdpContext;
use nat_common::{Reason, proto};

use crate::{
    ctx::config,
    nat::guard::lan_source_refusal,
    packet::parse::Ipv4Packet,
    route::{Route, route_untranslated},
    verdict::Verdict,
};

/// A LAN packet the gateway does not translate goes where the kernel would
/// send it only if that is the gateway itself, or back inside from an
/// inside host (routing between inside networks). Bound for the WAN it is
/// dropped: nothing leaves with an inside address. From a source the gateway
/// refuses (BCP 38) it is dropped under that reason wherever it would go but
/// the gateway itself.
#[inline(always)]
pub fn lan(pkt: &Ipv4Packet, route: Route) -> Verdict {
    if let Route::Local = route {
        return Verdict::pass(Reason::PassLocal);
    }
    if let Some(refused) = lan_source_refusal(pkt.src_be()) {
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
pub fn refused_lan_source(ctx: &XdpContext, pkt: &Ipv4Packet) -> Option<Verdict> {
    lan_source_refusal(pkt.src_be())?;
    let verdict = lan(pkt, route_untranslated(ctx, pkt));
    verdict.is_drop().then_some(verdict)
}

/// A WAN packet that is no translated flow. For the external address it is
/// the gateway host's own; for any other address it is passed only if the
/// gateway owns it: nothing that is not a translated flow is forwarded into
/// the LAN (an echo request to an inside host included).
#[inline(always)]
pub fn wan(ctx: &XdpContext, pkt: &Ipv4Packet) -> Verdict {
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
