//! IPsec ESP (RFC 4303): no ports, so each SA is told apart by its SPI.
//! natd learns the SAs (`ESP_OUT`, `ESP_IN`) from the packets handed to
//! it; here, a packet of a known SA has its address rewritten (the IPv4
//! header checksum with it: ESP has no checksum of its own, and its
//! integrity check covers no IP address), its SA pair's session stamped,
//! and it is routed and sent as any other translated packet. Everything
//! else ESP that would cross the gateway goes to natd, never on untranslated.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, ProgramArray},
    programs::XdpContext,
};
use nat_common::{
    Endpoint, GatewayConfig, Reason,
    esp::{ESP_HEADER_LEN, EspKey, EspTarget, MAX_ESP_SAS, SPI_AT},
    miss_kind, proto,
};

use crate::{
    ctx::clock,
    handoff::hand_to_daemon,
    nat::{
        fragment::later_fragment,
        guard::{lan_source_refusal, wan_source_refusal},
        hit::{Refresh, send},
        untranslated::{self, refused_lan_source},
    },
    packet::{
        Rewrite, Side, ptr_at,
        parse::{Fragment, Ipv4Packet},
    },
    proto::SctpCheck,
    route::{Route, route_untranslated},
    verdict::Verdict,
};

/// The ESP programs, by `EspProgram` index: natd loads them and files them
/// here (`nat_common::esp_program_index`).
#[map]
static ESP_PROGRAMS: ProgramArray = ProgramArray::with_max_entries(2, 0);

/// (inside address, peer, outbound SPI) -> (external address, session
/// slot): the SAs inside hosts send on, learned by natd.
#[map]
pub(crate) static ESP_OUT: HashMap<EspKey, EspTarget> = HashMap::with_max_entries(MAX_ESP_SAS, 0);

/// (external address, peer, inbound SPI) -> (inside address, session
/// slot): the SAs peers send on, each bound by natd to the host whose SA
/// to that peer was the one unanswered when the peer's first packet came.
#[map]
pub(crate) static ESP_IN: HashMap<EspKey, EspTarget> = HashMap::with_max_entries(MAX_ESP_SAS, 0);

/// (external address, peer, SPI 0) -> 1 while an inside host's SA to that
/// peer from that address awaits its first answer (natd writes it): the
/// peer's packet on an unknown SPI can then be bound, and goes to natd;
/// from any other peer it is dropped here.
#[map]
pub(crate) static ESP_AWAITED: HashMap<EspKey, u32> = HashMap::with_max_entries(MAX_ESP_SAS, 0);

/// Which ESP program, as indexed in `ESP_PROGRAMS`.
#[derive(Clone, Copy)]
#[repr(u32)]
pub enum EspProgram {
    Lan = nat_common::esp_program_index::LAN,
    Wan = nat_common::esp_program_index::WAN,
}

/// Hands an ESP packet to the ESP program of its side (a tail call: it
/// does not come back). Should that program be missing, the packet is
/// dropped and counted: never passed, as the kernel would forward it
/// untranslated.
#[inline(always)]
pub fn to_program(ctx: &XdpContext, program: EspProgram) -> Verdict {
    // SAFETY: a tail call into an XDP program natd loaded for this; it runs
    // on the same frame and returns the verdict itself.
    unsafe { ESP_PROGRAMS.tail_call(ctx, program as u32) };
    Verdict::drop(Reason::DropEspNoProgram)
}

/// The SPI of a whole ESP packet or first fragment, network order; `Err`
/// when the datagram is too short to carry the ESP header.
#[inline(always)]
fn spi_be(ctx: &XdpContext, pkt: &Ipv4Packet) -> Result<u32, Verdict> {
    if (pkt.l4_len() as usize) < ESP_HEADER_LEN {
        return Err(Verdict::drop(Reason::DropEspTruncated));
    }
    // The header length is masked to 4 bits of words: a bounded offset.
    let at = pkt.l3_offset + pkt.header_len();
    match ptr_at::<[u8; ESP_HEADER_LEN]>(ctx, at) {
        // SAFETY: checked in the frame by `ptr_at`.
        Ok(header) => Ok(unsafe { u32::from_ne_bytes(*((header as *const u8).add(SPI_AT) as *const [u8; 4])) }),
        Err(_) => Err(Verdict::drop(Reason::DropEspTruncated)),
    }
}

/// LAN ingress, for ESP packets alone (`nat_lan_esp`). The checks before
/// the lookup are `nat::lan`'s, in its order.
#[inline(always)]
pub fn lan(ctx: &XdpContext, pkt: &Ipv4Packet, cfg: &GatewayConfig) -> Verdict {
    if pkt.ttl() <= 1 {
        return match refused_lan_source(ctx, pkt) {
            Some(refused) => refused,
            None => Verdict::pass(Reason::PassTtlExpired),
        };
    }
    if pkt.dst_is_special() {
        return Verdict::pass(Reason::PassLocal);
    }
    // ESP to an external address is the gateway's own (ESP is not
    // hairpinned).
    if cfg.is_external(pkt.dst_be()) {
        return Verdict::pass(Reason::PassLocal);
    }
    if pkt.fragment == Fragment::Later {
        return later_fragment(ctx, pkt, Side::Source);
    }
    let spi_be = match spi_be(ctx, pkt) {
        Ok(spi_be) => spi_be,
        Err(refused) => return refused,
    };
    let key = EspKey { local_be: pkt.src_be(), peer_be: pkt.dst_be(), spi_be };
    match ESP_OUT.get_ptr(&key) {
        // SAFETY: a value of the map, copied whole.
        Some(target) => translate(ctx, pkt, cfg, unsafe { *target }, Side::Source, Reason::TranslatedOut),
        // A new SA (or the first of a rekey): natd learns it, if the kernel
        // would route it to the WAN and its source may be translated.
        None => match route_untranslated(ctx, pkt) {
            Route::Wan if lan_source_refusal(pkt.src_be()).is_none() => hand_to_daemon(ctx, pkt, miss_kind::ESP),
            route => untranslated::lan(pkt, route),
        },
    }
}

/// WAN ingress, for ESP packets alone (`nat_wan_esp`), in `nat::wan`'s
/// order. ESP to an external address belongs to an SA natd bound, or goes
/// to natd to be bound when an SA to its peer awaits an answer, or is
/// dropped: the gateway's own IPsec has no place on the external addresses
/// (NAT-T's UDP does).
#[inline(always)]
pub fn wan(ctx: &XdpContext, pkt: &Ipv4Packet, cfg: &GatewayConfig) -> Verdict {
    if let Some(refused) = wan_source_refusal(pkt, cfg) {
        return Verdict::drop(refused);
    }
    if pkt.dst_is_special() {
        return Verdict::pass(Reason::PassLocal);
    }
    if pkt.fragment == Fragment::Later {
        return later_fragment(ctx, pkt, Side::Destination);
    }
    if !cfg.is_external(pkt.dst_be()) {
        return untranslated::wan(ctx, pkt);
    }
    let spi_be = match spi_be(ctx, pkt) {
        Ok(spi_be) => spi_be,
        Err(refused) => return refused,
    };
    let key = EspKey { local_be: pkt.dst_be(), peer_be: pkt.src_be(), spi_be };
    match ESP_IN.get_ptr(&key) {
        // The destination is the gateway's own address: the kernel would
        // deliver it instead of answering Time Exceeded.
        Some(_) if pkt.ttl() <= 1 => Verdict::drop(Reason::DropTtlExpired),
        // SAFETY: a value of the map, copied whole.
        Some(target) => translate(ctx, pkt, cfg, unsafe { *target }, Side::Destination, Reason::TranslatedIn),
        None if ESP_AWAITED.get_ptr(&EspKey { spi_be: 0, ..key }).is_some() => hand_to_daemon(ctx, pkt, miss_kind::ESP),
        None => Verdict::drop(Reason::DropEspUnknownSpi),
    }
}

/// An SA's packet: `side`'s address becomes the target's, the session of
/// the SA pair is stamped once the route takes it, and it is sent as every
/// translated packet is (`hit::send`: Fragmentation Needed, no-neighbour
/// hand-off, a first fragment's state for its later fragments).
#[inline(always)]
fn translate(ctx: &XdpContext, pkt: &Ipv4Packet, cfg: &GatewayConfig, target: EspTarget, side: Side, translated: Reason) -> Verdict {
    let to = Endpoint::from_be(target.addr_be, 0, proto::ESP);
    send(ctx, pkt, cfg, &Rewrite::One(side, to), clock(), translated, Refresh::Session(target.session), SctpCheck::NONE)
}
