//! The source checks at the edge of the inside network (BCP 38 on the LAN,
//! BCP 84 on the WAN, RFC 6890, RFC 1812 5.3.7; the policy itself is
//! `nat_common::source`, shared with natd and the tests).

use aya_ebpf::{
    macros::map,
    maps::{LpmTrie, lpm_trie::Key as LpmKey},
};
use nat_common::{GatewayConfig, MAX_WAN_DROP_SOURCES, Reason};

use crate::{ctx::config, packet::parse::Ipv4Packet};

/// The prefixes the operator listed in `wan_drop_sources` (value unused):
/// WAN packets from them are dropped before anything else (BCP 84). Looked
/// up only when the list is not empty (`GatewayConfig::wan_drop_listed`).
#[map]
static WAN_DROP_SOURCES: LpmTrie<u32, u8> = LpmTrie::with_max_entries(MAX_WAN_DROP_SOURCES, 0);

/// BCP 84: why a WAN packet's source is refused, `None` when it may come
/// in: not from inside, from the gateway itself, from special-purpose space
/// or from a prefix the operator listed. The kernel's rp_filter never sees
/// what the programs translate, so this is the only check.
#[inline(always)]
pub fn wan_source_refusal(pkt: &Ipv4Packet, cfg: &GatewayConfig) -> Option<Reason> {
    let src_be = pkt.src_be();
    if let Some(refused) = cfg.wan_source_refusal(src_be) {
        return Some(refused);
    }
    if cfg.wan_drop_listed != 0 && WAN_DROP_SOURCES.get(LpmKey::new(32, src_be)).is_some() {
        return Some(Reason::DropWanSourceListed);
    }
    None
}

/// BCP 38: why a LAN packet's source may not be translated or forwarded,
/// `None` when it may.
#[inline(always)]
pub fn lan_source_refusal(src_be: u32) -> Option<Reason> {
    config().lan_source_refusal(src_be)
}
