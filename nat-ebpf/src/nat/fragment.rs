//! Fragments (RFC 4787 REQ-14): later fragments carry no ports and follow
//! their first fragment's translation by datagram identity.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, LruHashMap},
    programs::XdpContext,
};
use nat_common::{Endpoint, FragEvent, FragKey, FragState, MAX_FRAGMENTED_DATAGRAMS, MAX_PARKED_DATAGRAMS, Reason, frag_dir, miss_kind};

use crate::{
    ctx::{clock, config},
    handoff::copy_to_daemon,
    maps::MISSES,
    nat::untranslated,
    packet::{Side, parse::Ipv4Packet, rewrite::translate},
    route::{Route, forward, route_untranslated},
    verdict::Verdict,
};

/// What the first fragment of each recent fragmented datagram was translated
/// to, keyed by the datagram's identity as it arrived: later fragments carry
/// no ports and are translated by identity (RFC 4787 REQ-14). LRU and aged by
/// its stamp (`FRAG_TIMEOUT_NS`): bounded, nothing to clean up, and a mapping
/// never depends on it.
#[map]
pub(crate) static FRAGS: LruHashMap<FragKey, FragState> = LruHashMap::with_max_entries(MAX_FRAGMENTED_DATAGRAMS, 0);

/// Datagrams the daemon parks later fragments of (they came before their
/// first fragment), written by the daemon. When the first fragment of one is
/// translated the daemon is told through the ring, so the parked fragments
/// follow it at once. Read only for first fragments.
#[map]
pub(crate) static PARKED: HashMap<FragKey, u64> = HashMap::with_max_entries(MAX_PARKED_DATAGRAMS, 0);

#[inline(always)]
pub(crate) const fn frag_direction(side: Side) -> u8 {
    match side {
        Side::Source => frag_dir::OUT,
        Side::Destination => frag_dir::IN,
    }
}

/// A first fragment is being translated: its datagram's later fragments
/// will be rewritten to `addr_be` by identity. If the daemon parks some that
/// came first, it is told (the write to `FRAGS` comes before the read of
/// `PARKED`, and the daemon writes `PARKED` before it reads `FRAGS`: one of
/// the two sees the other). A full ring costs only latency: the daemon also
/// looks its parked datagrams up every tick.
#[inline(always)]
pub(crate) fn record_first_fragment(pkt: &Ipv4Packet, side: Side, addr_be: u32, now: u64) {
    let key = pkt.frag_key(frag_direction(side));
    let _ = FRAGS.insert(key, FragState { addr_be, _pad: 0, stamp_ns: now }, 0);
    if PARKED.get_ptr(key).is_some()
        && let Some(mut event) = MISSES.reserve::<FragEvent>(0)
    {
        event.write(FragEvent { kind: miss_kind::FRAGMENT_TRANSLATED, addr_be, key });
        event.submit(crate::handoff::wakeup_flags());
    }
}

/// A later fragment (offset > 0: no L4 header). Its datagram's first
/// fragment was translated within `FRAG_TIMEOUT_NS`: the same address rewrite
/// (source outbound, destination inbound), IPv4 checksum and TTL, and the
/// same forwarding. Otherwise it goes to the daemon to wait for its first
/// fragment: outbound when it is bound for the WAN (never leaked with the
/// inside source), inbound when it is for the external address (a copy: the
/// kernel gets it too, as it may belong to the gateway's own traffic and
/// nothing here can tell).
#[inline(always)]
pub(crate) fn later_fragment(ctx: &XdpContext, pkt: &Ipv4Packet, side: Side) -> Verdict {
    let key = pkt.frag_key(frag_direction(side));
    let now = clock();
    let mut no_state = Reason::FragmentToDaemon;
    if let Some(state) = FRAGS.get_ptr(key) {
        // SAFETY: a value of the map, copied whole.
        let state = unsafe { *state };
        if state.fresh(now) {
            // Inbound, the destination is the gateway's own address: the
            // kernel would deliver it instead of answering Time Exceeded.
            if pkt.ttl() <= 1 {
                return Verdict::drop(Reason::DropTtlExpired);
            }
            translate(pkt, side, &Endpoint::from_be(state.addr_be, 0, key.proto));
            let translated = match side {
                Side::Source => Reason::FragmentTranslatedOut,
                Side::Destination => Reason::FragmentTranslatedIn,
            };
            return forward(ctx, pkt, translated, now);
        }
        no_state = Reason::FragmentStateExpired;
    }
    match side {
        Side::Source => match route_untranslated(ctx, pkt) {
            // Only a source that may be translated is worth parking (BCP 38):
            // no first fragment of another would ever be translated.
            Route::Wan if config().lan_source_refusal(key.src_be).is_none() => match copy_to_daemon(ctx, pkt, miss_kind::FRAGMENT_OUT, 0) {
                Ok(()) => Verdict::drop(no_state),
                Err(failed) => Verdict::drop(failed),
            },
            route => untranslated::lan(pkt, route),
        },
        Side::Destination => {
            if !config().is_external(key.dst_be) {
                return untranslated::wan(ctx, pkt);
            }
            match copy_to_daemon(ctx, pkt, miss_kind::FRAGMENT_IN, 0) {
                Ok(()) => Verdict::pass(no_state),
                // Still the kernel's, if it is the gateway's own.
                Err(failed) => Verdict::pass(failed),
            }
        }
    }
}
