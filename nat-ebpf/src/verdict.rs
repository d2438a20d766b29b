//! What a program does with a packet and why: every exit counts exactly one
//! reason (katran's per-reason stats, without logging on the hot path).

use aya_ebpf::{bindings::xdp_action, macros::map, maps::PerCpuArray};
use nat_common::{GatewayConfig, Reason};


/// Per-CPU `u64` counters indexed by `Reason`.
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Reason::CAPACITY, 0);

/// What the program does with a packet, and the counter that says why.
pub struct Verdict {
    pub action: u32,
    pub reason: Reason,
}

impl Verdict {
    pub const fn pass(reason: Reason) -> Self {
        Self { action: xdp_action::XDP_PASS, reason }
    }

    pub const fn drop(reason: Reason) -> Self {
        Self { action: xdp_action::XDP_DROP, reason }
    }

    pub const fn is_drop(&self) -> bool {
        self.action == xdp_action::XDP_DROP
    }
}

/// The one exit: count the reason, return the action.
///
/// The counter's key is the reason plus a zero the verifier cannot see
/// (`GatewayConfig::opaque_zero`). With a constant key, the verifier
/// (6.14+) proves the lookup cannot fail, and to do so marks the reason
/// precise back through every path that reaches here: two paths that differ
/// only in the reason they will count (a hit and a new flow, a forwarded
/// packet and a rebalanced one) were then never merged, and each walked the
/// whole send path again, a quarter of all instructions verified.
#[inline(always)]
pub fn finish(verdict: Verdict, cfg: &GatewayConfig) -> u32 {
    let key = verdict.reason as u32 | u32::from(cfg.opaque_zero);
    if let Some(counter) = COUNTERS.get_ptr_mut(key) {
        // SAFETY: this CPU's slot: no other writer.
        unsafe { *counter += 1 };
    }
    verdict.action
}
