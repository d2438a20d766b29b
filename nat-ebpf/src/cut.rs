//! Cut-down programs for timing the hit path step by step (issue 16:
//! "profile it with test runs of cut-down programs"). Built with
//! `NAT_EBPF_CUT_AFTER=N` in the environment, the programs end a packet
//! after hit-path step N with XDP_REDIRECT, so that fastpath-bench times
//! the steps before it; `cargo xtask bench --hit-steps` builds each (in
//! target/hit-steps, never target/release) and lays the figures side by
//! side. In every other build `CUT_AFTER` is `None` and each cut point
//! compiles to nothing.
//!
//! Steps 1 to 3 are in each direction's own path (`nat::lan`, `nat::wan`;
//! a forwarded flow's lookup is its `forward::inbound`), 4 to 8 in the
//! `send` both directions share.

use aya_ebpf::bindings::xdp_action;
use nat_common::Reason;

use crate::verdict::Verdict;

/// The steps of a hit, in the order a packet takes them.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Ethernet, VLAN tags, the IPv4 checks and header checksum, the L4 header.
    Parsed = 1,
    /// What comes before the mapping lookup: TTL, special destinations,
    /// the pool's addresses, ICMP errors, fragments, the endpoint (inbound:
    /// BCP 84 sources and whether the port is forwarded).
    Checked = 2,
    /// The mapping found: `OUTBOUND`'s hash outbound, `INBOUND`'s array
    /// inbound, a forwarded flow's entry (its backend picked if new).
    LookedUp = 3,
    /// Filtering by remote, the clock, the next-hop cache.
    Routed = 4,
    /// The session's liveness stamp.
    Refreshed = 5,
    /// Addresses, TTL, ports and both checksums rewritten. (Cut here, the
    /// partial-checksum test has no use and is compiled out: its time falls
    /// into the next step.)
    Rewritten = 6,
    /// The partial-checksum test and, for a partial checksum, its finish.
    ChecksumDone = 7,
    /// The MACs written; what follows is the redirect and the count.
    MacsWritten = 8,
}

/// The step after which a packet stops, from the build's environment.
const CUT_AFTER: Option<u32> = match option_env!("NAT_EBPF_CUT_AFTER") {
    Some(value) => parse_step(value.as_bytes()),
    None => None,
};

/// "1" to "8": that step; anything else (the harness's "none") cuts nothing.
const fn parse_step(value: &[u8]) -> Option<u32> {
    match value {
        [digit @ b'1'..=b'8'] => Some((*digit - b'0') as u32),
        _ => None,
    }
}

/// `Some` (the packet leaves here, redirected) when this build cuts after
/// `step`.
#[inline(always)]
pub fn after(step: Step) -> Option<Verdict> {
    match CUT_AFTER {
        Some(cut) if cut == step as u32 => Some(Verdict { action: xdp_action::XDP_REDIRECT, reason: Reason::TranslatedOut }),
        _ => None,
    }
}
