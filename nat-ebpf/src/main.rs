//! The XDP fast path: one program on the LAN interface, one on the WAN.
//! Each parses and checks the frame (`packet`), hands an IPv4 packet to its
//! side of the translation (`nat::lan`, `nat::wan`), and counts the one
//! reason it leaves for (`verdict`).
//!
//! LAN ingress: outbound mapping hit -> rewrite source, route, redirect to the
//! WAN. Miss -> a port natd queued is claimed here, or the packet goes to
//! natd (it allocates, then sends the packet on).
//! WAN ingress: inbound mapping hit -> rewrite destination, route, redirect
//! to the LAN. Miss -> the gateway's own traffic, passed to the kernel, or
//! dropped.
//!
//! SCTP packets go on to a program of their own per side (`nat_lan_sctp`,
//! `nat_wan_sctp`, by tail call): the same translation, for SCTP alone, so
//! the verifier walks its paths (and the CRC32c update on each) apart from
//! the main programs', within a budget of its own.
//!
//! ESP packets go the same way to `nat_lan_esp` and `nat_wan_esp`
//! (`proto::esp`): addresses translated by the SAs natd learned, by SPI.
#![no_std]
#![no_main]
// Atomic adds on map values: the BPF target has no `AtomicU64::fetch_add`.
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

// The panic handler.
use nat_ebpf as _;

mod atomic;
mod ctx;
mod cut;
mod handoff;
mod inbound;
mod maps;
mod nat;
mod packet;
mod proto;
mod route;
mod verdict;

use aya_ebpf::{macros::xdp, programs::XdpContext};
use nat_common::{
    Reason,
    proto::{ESP as ESP_NR, SCTP as SCTP_NR},
};

use crate::{
    ctx::config,
    packet::{
        Invalid,
        parse::{Frame, parse},
    },
    proto::{
        esp::{self, EspProgram},
        sctp::{self, SctpProgram},
    },
    verdict::{Verdict, finish},
};

// The configuration is read once per packet and handed down the hit path
// (each read is an array lookup the packet would pay again).
//
// `#[inline(always)]` reaches the inner function the `#[xdp]` macro wraps
// the body in; LLVM inlines that function on its own only while it is small,
// and past that size every packet paid a BPF-to-BPF call (~10 ns in
// fastpath-bench).
#[xdp]
#[inline(always)]
pub fn nat_lan(ctx: XdpContext) -> u32 {
    lan::<false>(&ctx)
}

#[xdp]
#[inline(always)]
pub fn nat_wan(ctx: XdpContext) -> u32 {
    wan::<false>(&ctx)
}

#[xdp]
#[inline(always)]
pub fn nat_lan_sctp(ctx: XdpContext) -> u32 {
    lan::<true>(&ctx)
}

#[xdp]
#[inline(always)]
pub fn nat_wan_sctp(ctx: XdpContext) -> u32 {
    wan::<true>(&ctx)
}

/// The ESP programs: parsed as the SCTP programs parse (no TCP, UDP or
/// ICMP header), an ESP packet is `L4::Other` there; `proto::esp` reads its
/// SPI.
#[xdp]
#[inline(always)]
pub fn nat_lan_esp(ctx: XdpContext) -> u32 {
    let cfg = config();
    let verdict = match parse::<true>(&ctx) {
        Ok(Frame::Ipv4(pkt)) => esp::lan(&ctx, &pkt, cfg),
        Ok(Frame::NotIpv4) => Verdict::pass(Reason::PassNotIpv4),
        Err(Invalid(reason)) => Verdict::drop(reason),
    };
    finish(verdict, cfg)
}

#[xdp]
#[inline(always)]
pub fn nat_wan_esp(ctx: XdpContext) -> u32 {
    let cfg = config();
    let verdict = match parse::<true>(&ctx) {
        Ok(Frame::Ipv4(pkt)) => esp::wan(&ctx, &pkt, cfg),
        Ok(Frame::NotIpv4) => Verdict::pass(Reason::PassNotIpv4),
        Err(Invalid(reason)) => Verdict::drop(reason),
    };
    finish(verdict, cfg)
}

/// A constant natd may set when it loads the programs (`NATD_PROGRAM_MARK`,
/// a test seam): programs that differ in it alone stand in for an upgrade in
/// the restart test (`bpf_link_update` under traffic). Read only for frames
/// that are not IPv4, off every translated packet's path.
#[unsafe(no_mangle)]
static PROGRAM_MARK: u32 = 0;

/// LAN ingress; `SCTP`: the SCTP program, which sees only SCTP packets.
#[inline(always)]
fn lan<const SCTP: bool>(ctx: &XdpContext) -> u32 {
    let cfg = config();
    let verdict = match parse::<SCTP>(ctx) {
        Ok(Frame::Ipv4(pkt)) if !SCTP && pkt.proto() == SCTP_NR => sctp::to_program(ctx, SctpProgram::Lan),
        Ok(Frame::Ipv4(pkt)) if !SCTP && pkt.proto() == ESP_NR => esp::to_program(ctx, EspProgram::Lan),
        Ok(Frame::Ipv4(pkt)) => nat::lan::ipv4(ctx, &pkt, cfg),
        Ok(Frame::NotIpv4) => {
            // SAFETY: a read of a constant; volatile, so that it stays.
            let _mark = unsafe { core::ptr::read_volatile(&PROGRAM_MARK) };
            Verdict::pass(Reason::PassNotIpv4)
        }
        Err(Invalid(reason)) => Verdict::drop(reason),
    };
    finish(verdict, cfg)
}

/// WAN ingress, as `lan`.
#[inline(always)]
fn wan<const SCTP: bool>(ctx: &XdpContext) -> u32 {
    let cfg = config();
    let verdict = match parse::<SCTP>(ctx) {
        Ok(Frame::Ipv4(pkt)) if !SCTP && pkt.proto() == SCTP_NR => sctp::to_program(ctx, SctpProgram::Wan),
        Ok(Frame::Ipv4(pkt)) if !SCTP && pkt.proto() == ESP_NR => esp::to_program(ctx, EspProgram::Wan),
        Ok(Frame::Ipv4(pkt)) => nat::wan::ipv4(ctx, &pkt, cfg),
        Ok(Frame::NotIpv4) => {
            // SAFETY: a read of a constant; volatile, so that it stays.
            let _mark = unsafe { core::ptr::read_volatile(&PROGRAM_MARK) };
            Verdict::pass(Reason::PassNotIpv4)
        }
        Err(Invalid(reason)) => Verdict::drop(reason),
    };
    finish(verdict, cfg)
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
