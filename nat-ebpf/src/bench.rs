//! Programs used only to measure (see ../shared/BENCHMARK.md): the floor the
//! fast path's cost is reported against, and the load generator, the sink and
//! the reference programs of the end-to-end packet-rate benchmark.
#![no_std]
#![no_main]

// The panic handler.
use nat_ebpf as _;
use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{Array, DevMap, PerCpuArray},
    programs::XdpContext,
};
use nat_common::bench::{GEN_HEADER_LEN, GenConfig};

#[map]
static GEN_CONFIG: Array<GenConfig> = Array::with_max_entries(1, 0);

#[map]
static GEN_COUNTER: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[map]
static SINK_COUNTER: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Index 0: the interface `redirect_only` sends everything to.
#[map]
static REDIRECT_PORT: DevMap = DevMap::with_max_entries(1, 0);

/// Does nothing but drop: its test-run duration is the harness's own overhead
/// (the "floor"), subtracted from every fast-path figure.
#[xdp]
pub fn drop_floor(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

/// The load generator, run through live-frames BPF_PROG_TEST_RUN on the
/// generator's veth: writes a whole UDP frame and transmits it (XDP_TX).
#[xdp]
pub fn generate(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + GEN_HEADER_LEN > ctx.data_end() {
        return xdp_action::XDP_ABORTED;
    }
    let Some(cfg) = GEN_CONFIG.get(0) else {
        return xdp_action::XDP_ABORTED;
    };
    let Some(counter) = GEN_COUNTER.get_ptr_mut(0) else {
        return xdp_action::XDP_ABORTED;
    };
    let n = unsafe {
        *counter += 1;
        *counter
    };
    let sport = cfg.sport_base.wrapping_add((n as u32 & cfg.flows_mask) as u16);
    let frame = start as *mut u8;
    unsafe {
        // Pages come back dirty: every byte of the header is written each run.
        core::ptr::copy_nonoverlapping(cfg.header.as_ptr(), frame, GEN_HEADER_LEN);
        // UDP source port: the header's bytes 34-35.
        let port = sport.to_be_bytes();
        *frame.add(34) = port[0];
        *frame.add(35) = port[1];
    }
    xdp_action::XDP_TX
}

/// Counts and drops: the far end of the packet-rate benchmark.
#[xdp]
pub fn sink(_ctx: XdpContext) -> u32 {
    if let Some(counter) = SINK_COUNTER.get_ptr_mut(0) {
        unsafe { *counter += 1 };
    }
    xdp_action::XDP_DROP
}

/// Redirects every frame to one interface with no other work: how fast this
/// machine can forward in XDP at all (mode R of the benchmark).
#[xdp]
pub fn redirect_only(_ctx: XdpContext) -> u32 {
    REDIRECT_PORT.redirect(0, 0).unwrap_or(xdp_action::XDP_ABORTED)
}

/// Lets frames arrive on a veth (live frames need an XDP program on the
/// receiving end) and hands them to the kernel: modes K and F.
#[xdp]
pub fn pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
