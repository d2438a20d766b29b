//! What a program does with a packet and why: every exit counts exactly one
//! reason (katran's per-reason stats, without logging on the hot path).

use aya_ebpf::{bindings::xdp_action, macros::map, maps::PerCpuArray};
use nat_common::Reason;

/// Per-CPU `u64` counters indexed by `Reason`.
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Reason::COUNT, 0);

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
#[inline(always)]
pub fn finish(verdict: Verdict) -> u32 {
    if let Some(counter) = COUNTERS.get_ptr_mut(verdict.reason as u32) {
        // SAFETY: this CPU's slot: no other writer.
        unsafe { *counter += 1 };
    }
    verdict.action
}
