//! Inbound filtering by remote (RFC 4787 REQ-8, RFC 5382 REQ-3): the remotes
//! each inside endpoint has sent to, and whether one may send back.

use aya_ebpf::{macros::map, maps::LruHashMap};
use nat_common::{Endpoint, GatewayConfig, LAST_SEEN_GRANULARITY_NS, MAX_PERMITS, PermitKey};

/// The remotes each inside endpoint has sent to, with the clock when it last
/// did: what address-dependent and address-and-port-dependent filtering let
/// in. Filled on the outbound path, only for protocols that filter by remote
/// (natd shrinks the map to one entry when none does). LRU: bounded, and a
/// mapping never depends on it.
#[map]
pub(crate) static PERMITS: LruHashMap<PermitKey, u64> = LruHashMap::with_max_entries(MAX_PERMITS, 0);

/// Outbound: `inside` sent to the remote, which may now send back through
/// its mapping under address(-and-port)-dependent filtering. At most one
/// write per granule; nothing at all under endpoint-independent filtering.
#[inline(always)]
pub(crate) fn remember_remote(cfg: &GatewayConfig, inside: &Endpoint, remote_addr_be: u32, remote_port_be: u16, now: u64) {
    let (mode, _) = cfg.filtering(inside.proto);
    let Some(key) = PermitKey::new(mode, *inside, remote_addr_be, remote_port_be) else {
        return;
    };
    match PERMITS.get_ptr_mut(key) {
        // SAFETY: a value of the map, written racily by design (a timestamp).
        Some(sent) => unsafe {
            if now.saturating_sub(*sent) >= LAST_SEEN_GRANULARITY_NS {
                *sent = now;
            }
        },
        None => {
            let _ = PERMITS.insert(key, now, 0);
        }
    }
}

/// Inbound: whether the remote may send to `inside` (RFC 4787 REQ-8, RFC
/// 5382 REQ-3): always under endpoint-independent filtering, else only if
/// `inside` sent to it within the protocol's timeout. An admitted packet
/// keeps its permit alive, as it keeps the mapping alive.
#[inline(always)]
pub(crate) fn admit(cfg: &GatewayConfig, inside: &Endpoint, remote_addr_be: u32, remote_port_be: u16, now: u64) -> bool {
    let (mode, ttl) = cfg.filtering(inside.proto);
    let Some(key) = PermitKey::new(mode, *inside, remote_addr_be, remote_port_be) else {
        return true;
    };
    let Some(sent) = PERMITS.get_ptr_mut(key) else {
        return false;
    };
    // SAFETY: a value of the map, written racily by design (a timestamp).
    unsafe {
        // natd stamps the permits of the first packets it sends with its own
        // clock, up to a tick ahead of the one it published: not stale.
        let age = now.saturating_sub(*sent);
        if age > ttl {
            return false;
        }
        if age >= LAST_SEEN_GRANULARITY_NS {
            *sent = now;
        }
    }
    true
}
