//! ICMP errors: translated both ways and hairpinned (RFC 5508), and
//! Fragmentation Needed sent by the gateway itself (RFC 4787 REQ-13).

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_csum_diff, bpf_ktime_get_ns, bpf_xdp_adjust_tail, bpf_xdp_get_buff_len, bpf_xdp_load_bytes, bpf_xdp_store_bytes},
    macros::map,
    maps::PerCpuArray,
    programs::XdpContext,
};
use nat_common::{
    Endpoint, Reason,
    forward::mapping_flags,
    icmp::{FRAG_NEEDED_HEADERS_LEN, IP_DF, QUOTED_L4_LEN, RateLimit, frag_needed_headers},
    proto,
};

use crate::{
    ctx::{clock, config},
    inbound::forward,
    maps::{OUTBOUND, inbound},
    nat::{filter::admit, untranslated},
    packet::{
        Side,
        checksum::icmp_error_checksums_hold,
        parse::Ipv4Packet,
        rewrite::{translate, translate_both},
    },
    proto::icmp::Quoted,
    route::{TX_PORTS, forward},
    verdict::Verdict,
};

/// The rate limit of the Fragmentation Needed errors this CPU sends.
#[map]
pub(crate) static ICMP_RATE: PerCpuArray<RateLimit> = PerCpuArray::with_max_entries(1, 0);

/// An inside host's ICMP error about an inbound packet (RFC 5508 REQ-4/5, the
/// other way): the quoted packet's destination is a mapped inside endpoint;
/// it is set back to the external endpoint the remote sent to, and the error
/// leaves from the external address. `None`: not about a mapped flow, handled
/// as any untranslatable packet (dropped if bound for the WAN).
#[inline(always)]
pub(crate) fn icmp_error_out(ctx: &XdpContext, pkt: &Ipv4Packet, quoted: &Quoted) -> Option<Verdict> {
    let inside = quoted.endpoint(Side::Destination)?;
    let mapping = OUTBOUND.get_ptr(inside)?;
    if !icmp_error_checksums_hold(ctx, pkt, quoted) {
        return Some(Verdict::drop(Reason::DropBadIcmpError));
    }
    // SAFETY: a value of the map, alive while the program runs.
    let mapping = unsafe { &*mapping };
    let external = mapping.target(inside.proto);
    // A backend refusing a forwarded flow: a passive health signal.
    if mapping.flags & mapping_flags::FORWARD != 0 && quoted.is_refusal() {
        forward::count_unreachable(mapping);
    }
    quoted.rewrite(Side::Destination, &external);
    translate(pkt, Side::Source, &external);
    Some(forward(ctx, pkt, Reason::IcmpErrorOut, clock()))
}

/// RFC 5508 REQ-7 (hairpinned ICMP errors): an inside host's error about a
/// packet hairpinned to it. It got that packet from the sender's external
/// endpoint, so it answers to the external address and quotes (sender's
/// external endpoint -> its own inside endpoint). The error goes back into
/// the LAN to the sender as the outside view of the target would send it:
/// from the external address, to the sender's inside address, quoting what
/// the sender sent (its inside endpoint -> the target's external endpoint).
/// An error quoting anything else is the gateway's own, passed.
#[inline(always)]
pub(crate) fn icmp_error_hairpinned(ctx: &XdpContext, pkt: &Ipv4Packet, quoted: &Quoted) -> Verdict {
    let (Some(sender_external), Some(target_inside)) = (quoted.endpoint(Side::Source), quoted.endpoint(Side::Destination)) else {
        return Verdict::pass(Reason::PassLocal);
    };
    let (Some(sender), Some(target)) = (inbound(config(), &sender_external), OUTBOUND.get_ptr(target_inside)) else {
        return Verdict::pass(Reason::PassLocal);
    };
    if !icmp_error_checksums_hold(ctx, pkt, quoted) {
        return Verdict::drop(Reason::DropBadIcmpError);
    }
    let inner_proto = quoted.proto();
    // SAFETY: a value of the map, alive while the program runs.
    let target = unsafe { &*target };
    let (sender_inside, target_external) = (sender.target(inner_proto), target.target(inner_proto));
    // A backend refusing a client hairpinned to its forward: the passive
    // signal `icmp_error_out` counts for a client on the Internet.
    if target.flags & mapping_flags::FORWARD != 0 && quoted.is_refusal() {
        forward::count_unreachable(target);
    }
    quoted.rewrite(Side::Destination, &target_external);
    quoted.rewrite(Side::Source, &sender_inside);
    // Only the outer addresses (and the TTL) change: ports are the quote's.
    // From the target's external address, where the sender sent to.
    let from = Endpoint::from_be(target_external.addr_be, 0, proto::ICMP);
    let to = Endpoint::from_be(sender_inside.addr_be, 0, proto::ICMP);
    translate_both(pkt, &from, &to);
    forward(ctx, pkt, Reason::IcmpErrorHairpinned, clock())
}

/// An ICMP error from the WAN about a packet the gateway translated (RFC 5508
/// REQ-4/5): the quoted packet's source is an external endpoint with a mapping.
/// The error goes to the inside host with the quoted packet reverted to what
/// that host sent, so traceroute and path-MTU discovery work from inside. It
/// never refreshes or removes the mapping. Errors about the gateway's own
/// packets pass to the kernel; any other is no translated flow (`untranslated::wan`).
#[inline(always)]
pub(crate) fn icmp_error_in(ctx: &XdpContext, pkt: &Ipv4Packet, quoted: &Quoted) -> Verdict {
    let inner_proto = quoted.proto();
    // The quoted ports, or an echo request's identifier (its remote has none).
    let Some((port_be, remote_port_be)) = quoted.sent_ports_be() else {
        return untranslated::wan(ctx, pkt);
    };
    let remote_be = quoted.inner_dst_be();
    let external = Endpoint::from_be(quoted.inner_src_be(), port_be, inner_proto);
    // About a mapping's packet, or a forwarded flow's (a backend's reply).
    let (inside, filtered) = match inbound(config(), &external) {
        Some(mapping) => (mapping.target(inner_proto), true),
        None => match forward::quoted_backend(&Endpoint::from_be(remote_be, remote_port_be, inner_proto), &external) {
            Some(backend) => (backend, false),
            None => return untranslated::wan(ctx, pkt),
        },
    };
    if pkt.ttl() <= 1 {
        return Verdict::drop(Reason::DropTtlExpired);
    }
    if !icmp_error_checksums_hold(ctx, pkt, quoted) {
        return Verdict::drop(Reason::DropBadIcmpError);
    }
    // Filtered by what the error is about, not by who sends it: a router on
    // the way may report on a flow to a remote the inside host chose.
    if filtered && !admit(config(), &inside, remote_be, remote_port_be, clock()) {
        return Verdict::drop(Reason::DropFiltered);
    }
    quoted.rewrite(Side::Source, &inside);
    translate(pkt, Side::Destination, &inside);
    forward(ctx, pkt, Reason::IcmpErrorIn, clock())
}

/// The longest IPv4 header and the 8 L4 bytes an error quotes after it.
pub(crate) const QUOTE_MAX: usize = 60 + QUOTED_L4_LEN;

/// The shortest too-big packet answered: the quote buffer is read from it
/// and written back `FRAG_NEEDED_HEADERS_LEN` further on, both within it.
/// (A next-hop MTU under 96 bytes is not one the gateway serves.)
pub(crate) const TOO_BIG_MIN_LEN: u16 = (FRAG_NEEDED_HEADERS_LEN + QUOTE_MAX) as u16;

/// A packet longer than the egress MTU once translated (RFC 4787 REQ-13).
/// With DF set it is answered with ICMP Destination Unreachable /
/// Fragmentation Needed and the next-hop MTU, from the gateway's address on
/// the side it came from (`ingress`: `Side::Source` for the LAN, where natd
/// configures the LAN interface's address, `Side::Destination` for the WAN,
/// the external address it was sent to), sent back out of the port it came in on. (Without
/// DF, `next_hop` has it fragmented by natd.)
///
/// Never XDP_PASSed: the kernel's forward path checks the device MTU, not
/// learned path MTUs (ip_forward_use_pmtu=0), so it could forward a packet
/// the route lookup refused, untranslated, with the inside address.
#[inline(always)]
pub(crate) fn too_big(ctx: &XdpContext, pkt: &Ipv4Packet, mtu: u16, ingress: Side) -> Verdict {
    if pkt.frags() & IP_DF == 0 || pkt.tot_len() < TOO_BIG_MIN_LEN {
        return Verdict::drop(Reason::DropTooBigForEgress);
    }
    let cfg = config();
    let source_be = match ingress {
        Side::Source => cfg.lan_addr_be,
        // The external address it was sent to (it is not rewritten yet).
        Side::Destination => pkt.dst_be(),
    };
    if source_be == 0 {
        return Verdict::drop(Reason::DropTooBigForEgress);
    }
    let Some(rate) = ICMP_RATE.get_ptr_mut(0) else {
        return Verdict::drop(Reason::DropTooBigForEgress);
    };
    // The real clock, not the published one: the published clock moves once
    // a second, this path is rare.
    // SAFETY: this CPU's slot: no other writer.
    if !unsafe { (*rate).allow(bpf_ktime_get_ns()) } {
        return Verdict::drop(Reason::FragNeededRateLimited);
    }
    let ingress = ctx.ingress_ifindex() as u32;
    if write_frag_needed(ctx, pkt, source_be, mtu).is_err() {
        return Verdict::drop(Reason::DropTooBigForEgress);
    }
    // Back out of the ingress port through the devmap rather than XDP_TX: a
    // veth queues XDP_TX frames for its peer but wakes the peer only when it
    // runs an XDP program (veth_xdp_flush), so behind a veth with GRO alone
    // the error would wait for unrelated traffic. A redirect is flushed
    // (XDP_XMIT_FLUSH) like every other packet the gateway forwards.
    match TX_PORTS.redirect(ingress, xdp_action::XDP_DROP as u64) {
        Ok(action) => Verdict { action, reason: Reason::FragNeededSent },
        Err(_) => Verdict::drop(Reason::DropEgressUnmanaged),
    }
}

/// Turns the frame in place into a Fragmentation Needed error about it, from
/// `source_be` to its sender, MACs swapped (back to the previous hop), VLAN
/// tags kept: the quote (IPv4 header with options, 8 L4 bytes, untouched)
/// moves `FRAG_NEEDED_HEADERS_LEN` bytes on, the new headers go in front of
/// it and the tail is cut. The caller checked the length. Packet pointers
/// are not valid afterwards.
#[inline(always)]
pub(crate) fn write_frag_needed(ctx: &XdpContext, pkt: &Ipv4Packet, source_be: u32, mtu: u16) -> Result<(), ()> {
    let l3 = pkt.l3_offset;
    let sender = pkt.src_be().to_ne_bytes();
    let quote_len = pkt.header_len() + QUOTED_L4_LEN;
    // Back to the previous hop.
    // SAFETY: `parse` checked the Ethernet header in the frame.
    unsafe { core::ptr::swap(&raw mut (*pkt.eth).src_addr, &raw mut (*pkt.eth).dst_addr) };
    // Left unwritten until the helper fills all of it: zeroed first, it was
    // a call to a byte-loop memset (LLVM's BPF backend), and the helper
    // takes uninitialised memory.
    let mut quote = core::mem::MaybeUninit::<[u8; QUOTE_MAX]>::uninit();
    // SAFETY: the helpers read and write within `quote` and `headers`, sized
    // for what they are asked; packet offsets are checked by the helpers.
    unsafe {
        let raw = ctx.ctx as *mut _;
        if bpf_xdp_load_bytes(raw, l3 as u32, quote.as_mut_ptr() as *mut _, QUOTE_MAX as u32) != 0 {
            return Err(());
        }
        // Every byte written by the load.
        let quote = quote.assume_init_mut();
        let ret = bpf_csum_diff(core::ptr::null_mut(), 0, quote.as_mut_ptr() as *mut u32, quote_len as u32, 0);
        if ret < 0 {
            return Err(());
        }
        let mut headers = frag_needed_headers(source_be.to_ne_bytes(), sender, mtu, quote_len as u16, ret as u32);
        let at = (l3 + FRAG_NEEDED_HEADERS_LEN) as u32;
        if bpf_xdp_store_bytes(raw, at, quote.as_mut_ptr() as *mut _, QUOTE_MAX as u32) != 0
            || bpf_xdp_store_bytes(raw, l3 as u32, headers.as_mut_ptr() as *mut _, FRAG_NEEDED_HEADERS_LEN as u32) != 0
        {
            return Err(());
        }
        let new_len = (l3 + FRAG_NEEDED_HEADERS_LEN + quote_len) as i32;
        // Not `data_end - data`: the verifier refuses arithmetic on pkt_end.
        let old_len = bpf_xdp_get_buff_len(raw) as i32;
        if bpf_xdp_adjust_tail(raw, new_len - old_len) != 0 {
            return Err(());
        }
    }
    Ok(())
}
