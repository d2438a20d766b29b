//! Programs used only to measure: the baseline the fast path's cost is
//! reported against (see ../shared/BENCHMARK.md).
#![no_std]
#![no_main]

// The panic handler.
use nat_ebpf as _;
use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

/// Does nothing but drop: its test-run duration is the harness's own overhead
/// (the "floor"), subtracted from every fast-path figure.
#[xdp]
pub fn drop_floor(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
