//! Forwarded packets: from the WAN to a backend (`inbound`), a backend's
//! packets back out (`track_outbound`, on the hit path of its static
//! mapping), and from the LAN to a forwarded port on the external address
//! (`hairpin`, RFC 4787 REQ-9 applied to forwards).

use aya_ebpf::programs::XdpContext;
use nat_common::{
    Endpoint, GatewayConfig, Mapping, Reason, proto,
    forward::{Backend, FlowKey, ForwardPort, static_backend},
    miss_kind,
};

use crate::{
    ctx::clock,
    handoff::hand_to_daemon,
    inbound::lb::{self, Inbound, Routed},
    packet::parse::Ipv4Packet,
    proto::{L4, tcp},
    verdict::Verdict,
};

/// The TCP flags of a packet, 0 for other protocols.
#[inline(always)]
fn flags_of(pkt: &Ipv4Packet) -> u8 {
    match pkt.l4 {
        L4::Tcp(header) => tcp::flags(header),
        _ => 0,
    }
}

/// Whether `external` can only be a forward's, never a mapping's: TCP or
/// UDP to a port outside the NAT ranges. Every mapping's external port is a
/// NAT port and no forward's is (`natd check` refuses one), so each packet
/// is looked up in one kind of table only.
#[inline(always)]
pub fn is_forwardable(cfg: &GatewayConfig, external: &Endpoint) -> bool {
    external.proto != proto::ICMP && !cfg.is_nat_port(u16::from_be(external.port_be))
}

/// Where a WAN packet to `external` (a port no mapping can have) goes: the
/// backend of its flow, or of a new flow if `external` is forwarded, and the
/// reason it counts under. The remote's address is kept: the server sees its
/// real client. `None`: not a forwarded flow. `Some(Err)`: no backend is up;
/// natd answers (a TCP RST, an ICMP Port Unreachable).
#[inline(always)]
pub fn inbound(ctx: &XdpContext, pkt: &Ipv4Packet, external: &Endpoint, now: u64) -> Option<Result<(Endpoint, Reason), Verdict>> {
    let Some(remote) = pkt.source() else {
        return Some(Err(Verdict::drop(Reason::DropUntranslatable)));
    };
    match lb::route_inbound(&FlowKey::new(&remote, external), flags_of(pkt), now, || lb::forward_port(external)) {
        Inbound::Routed(routed) => Some(Ok((routed.backend.endpoint(routed.offset, external.proto), reason_of(&routed)))),
        Inbound::NoBackend => Some(Err(hand_to_daemon(ctx, pkt, miss_kind::NO_SERVER))),
        Inbound::NotForwarded => None,
    }
}

#[inline(always)]
const fn reason_of(routed: &Routed) -> Reason {
    if routed.new {
        Reason::ForwardedNewFlow
    } else if routed.moved {
        Reason::ForwardRebalanced
    } else {
        Reason::ForwardedIn
    }
}

/// A packet from a backend on its forwarded port (its static mapping
/// `mapping` to the forward's external endpoint): the flow to the remote it
/// is sent to is refreshed, or filed when the server opens it.
#[inline(always)]
pub fn track_outbound(pkt: &Ipv4Packet, mapping: &Mapping, now: u64) {
    let Some(remote) = pkt.destination() else { return };
    let external = mapping.target(remote.proto);
    lb::track_outbound(&FlowKey::new(&remote, &external), mapping.session, flags_of(pkt), now);
}

/// A LAN host's packet to forward `port` on the external address, to be
/// hairpinned from the sender's external endpoint (`sender`), so the server
/// sees it as the Internet would and answers through the gateway: the
/// backend endpoint of its flow. `Err`: no backend is up (natd answers).
#[inline(always)]
pub fn hairpin_backend(ctx: &XdpContext, pkt: &Ipv4Packet, sender: &Endpoint, destination: &Endpoint, port: &ForwardPort) -> Result<Endpoint, Verdict> {
    let key = FlowKey::new(sender, destination);
    match lb::route_inbound(&key, flags_of(pkt), clock(), || Some(*port)) {
        Inbound::Routed(routed) => Ok(routed.backend.endpoint(routed.offset, destination.proto)),
        Inbound::NoBackend | Inbound::NotForwarded => Err(hand_to_daemon(ctx, pkt, miss_kind::NO_SERVER)),
    }
}

/// The backend endpoint of the forwarded flow an ICMP error from the WAN
/// quotes (the gateway's packet from `external` to `remote`), if tracked.
#[inline(always)]
pub fn quoted_backend(remote: &Endpoint, external: &Endpoint) -> Option<Endpoint> {
    let flow = lb::flow(&FlowKey::new(remote, external))?;
    let backend: Backend = lb::backend(u32::from(flow.forward), u32::from(flow.backend))?;
    Some(backend.endpoint(flow.offset, external.proto))
}

/// A backend refused one of its flows with an ICMP Destination Unreachable
/// (its static mapping `mapping`).
#[inline(always)]
pub fn count_unreachable(mapping: &Mapping) {
    let (forward, slot, _) = static_backend(mapping.session);
    lb::count_unreachable(forward, slot);
}
