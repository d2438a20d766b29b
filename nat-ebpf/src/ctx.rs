//! What the programs read of natd's state on every packet: the settings and
//! the clock it publishes.

use aya_ebpf::{macros::map, maps::Array};
use nat_common::GatewayConfig;

/// One `GatewayConfig` at index 0, written by natd.
#[map]
static CONFIG: Array<GatewayConfig> = Array::with_max_entries(1, 0);

/// `CLOCK_MONOTONIC_COARSE` in ns, written by the daemon every second: the
/// time the programs stamp mappings with and expire cached next hops by.
/// Reading it is an inlined array access; `bpf_ktime_get_coarse_ns` is a
/// helper call that cost ~35 ns per packet here, twice per hit.
#[map]
static CLOCK: Array<u64> = Array::with_max_entries(1, 0);

/// What `config()` answers should CONFIG[0] be missing (an array always
/// has its entries; the verifier wants the branch): no inside prefixes and
/// no external address, so nothing is translated.
static NO_CONFIG: GatewayConfig = GatewayConfig::new(core::net::Ipv4Addr::UNSPECIFIED, 0, 0, 0);

/// The settings natd wrote, read in place: a copy would move all of it
/// through the stack on every call.
#[inline(always)]
pub fn config() -> &'static GatewayConfig {
    CONFIG.get(0).unwrap_or(&NO_CONFIG)
}

/// The clock natd published last (0 before the first tick).
#[inline(always)]
pub fn clock() -> u64 {
    CLOCK.get(0).copied().unwrap_or(0)
}
