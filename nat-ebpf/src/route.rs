//! Where a translated packet goes: route lookups (`bpf_fib_lookup`), the
//! per-CPU next-hop cache, MAC rewrite and the devmap redirect.

use core::{
    mem::MaybeUninit,
    ops::{Deref, DerefMut},
};

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_NOT_FWDED, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams, xdp_action},
    helpers::bpf_fib_lookup,
    macros::map,
    maps::{DevMapHash, PerCpuArray},
    programs::XdpContext,
};
use nat_common::{Endpoint, NEXT_HOP_CACHE_BITS, NEXT_HOP_TTL_NS, NextHop, Reason, icmp::IP_DF, miss_kind};

use crate::{
    ctx::config,
    cut::{self, Step},
    handoff::hand_over,
    packet::{Rewrite, Side, parse::Ipv4Packet, words, zero_in_words},
    verdict::Verdict,
};

/// Interfaces the programs redirect to, keyed by ifindex. Only the daemon's
/// LAN and WAN interfaces are in it: a route out of any other is refused.
#[map]
pub(crate) static TX_PORTS: DevMapHash = DevMapHash::with_max_entries(64, 0);

/// Route lookups of translated packets, reused for `NEXT_HOP_TTL_NS`. A
/// direct-mapped per-CPU array: an array lookup is inlined by the verifier and
/// costs a few ns where a hash lookup costs ~50; a collision only costs a
/// route lookup, and per-CPU slots are written without sharing cache lines.
#[map]
pub(crate) static NEXT_HOPS: PerCpuArray<NextHop> = PerCpuArray::with_max_entries(1 << NEXT_HOP_CACHE_BITS, 0);

pub(crate) const AF_INET: u8 = 2;

/// The destination address a packet leaves with after `rewrite`: all the
/// next-hop cache needs, so a hit reads nothing more of the packet.
#[inline(always)]
fn leaving_dst_be(rewrite: &Rewrite, pkt: &Ipv4Packet) -> u32 {
    match rewrite {
        Rewrite::One(Side::Destination, to) | Rewrite::Both(_, to) => to.addr_be,
        _ => pkt.dst_be(),
    }
}

/// The addresses and ports a packet leaves with, which the route lookup is
/// asked about: the packet's own, or what a translation will make of them.
#[derive(Clone, Copy)]
pub(crate) struct Leaving {
    src_be: u32,
    dst_be: u32,
    /// TCP/UDP ports, network order; 0 for other protocols.
    sport_be: u16,
    dport_be: u16,
    has_ports: bool,
}

impl Leaving {
    #[inline(always)]
    fn of(pkt: &Ipv4Packet) -> Self {
        let (sport_be, dport_be, has_ports) = match pkt.ports_be() {
            Some((sport_be, dport_be)) => (sport_be, dport_be, true),
            None => (0, 0, false),
        };
        Self { src_be: pkt.src_be(), dst_be: pkt.dst_be(), sport_be, dport_be, has_ports }
    }

    /// As the packet leaves after `rewrite`.
    #[inline(always)]
    fn after(self, rewrite: &Rewrite) -> Self {
        match rewrite {
            Rewrite::Nothing => self,
            Rewrite::One(side, to) => self.translated(*side, to),
            Rewrite::Both(source, destination) => {
                self.translated(Side::Source, source).translated(Side::Destination, destination)
            }
        }
    }

    #[inline(always)]
    fn translated(mut self, side: Side, to: &Endpoint) -> Self {
        match side {
            Side::Source => {
                self.src_be = to.addr_be;
                if self.has_ports {
                    self.sport_be = to.port_be;
                }
            }
            Side::Destination => {
                self.dst_be = to.addr_be;
                if self.has_ports {
                    self.dport_be = to.port_be;
                }
            }
        }
        self
    }
}

/// `bpf_fib_lookup`'s parameters, 8-byte aligned so that `zeroed_in` can
/// clear them a word at a time (`zero_in_words`).
#[repr(C, align(8))]
pub(crate) struct Fib(FibParams);

impl Fib {
    /// All zeros, in the caller's `slot` (`mem::zeroed` was a memset call,
    /// 64 rounds of a byte loop for each route lookup). Filled in place: a
    /// struct returned by value was copied, and LLVM made the copy of known
    /// zeros a memset call again.
    #[inline(always)]
    fn zeroed_in(slot: &mut MaybeUninit<Fib>) -> &mut Fib {
        // SAFETY: the slot is a whole `Fib`, 8-aligned (`align(8)`); a plain
        // C struct of integers and unions of integers: all zeros is valid,
        // and every byte is written.
        unsafe {
            zero_in_words(slot.as_mut_ptr());
            slot.assume_init_mut()
        }
    }
}

impl Deref for Fib {
    type Target = FibParams;
    #[inline(always)]
    fn deref(&self) -> &FibParams {
        &self.0
    }
}

impl DerefMut for Fib {
    #[inline(always)]
    fn deref_mut(&mut self) -> &mut FibParams {
        &mut self.0
    }
}

#[inline(always)]
pub(crate) fn fib_params<'a>(ctx: &XdpContext, pkt: &Ipv4Packet, leaving: &Leaving, slot: &'a mut MaybeUninit<Fib>) -> &'a mut Fib {
    let params = Fib::zeroed_in(slot);
    params.family = AF_INET;
    params.l4_protocol = pkt.proto();
    params.sport = leaving.sport_be;
    params.dport = leaving.dport_be;
    // Host order: the kernel compares it with the egress MTU.
    params.__bindgen_anon_1.tot_len = pkt.tot_len();
    params.__bindgen_anon_2.tos = pkt.tos();
    params.__bindgen_anon_3.ipv4_src = leaving.src_be;
    params.__bindgen_anon_4.ipv4_dst = leaving.dst_be;
    params.ifindex = ctx.ingress_ifindex() as u32;
    params
}

#[inline(always)]
pub(crate) fn lookup(ctx: &XdpContext, params: &mut Fib) -> i64 {
    // SAFETY: the helper reads and writes `params`, a whole struct of its size.
    unsafe {
        bpf_fib_lookup(
            ctx.ctx as *mut _,
            &mut params.0 as *mut FibParams,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    }
}

pub(crate) enum Route {
    /// The kernel would forward it out of the WAN interface.
    Wan,
    /// The kernel would forward it out of another interface.
    Inside,
    /// Local delivery, or not routable at all: the kernel does not forward it.
    Local,
}

/// Where the kernel would send the packet as it is. Asked without a length:
/// on FRAG_NEEDED the kernel returns before it fills in the egress
/// interface, so a too-big new flow would look routed back inside and be
/// passed to the kernel, which forwards it untranslated (fragmented, or
/// not). Whether it fits is for `next_hop` to tell, once translated.
#[inline(always)]
pub(crate) fn route_untranslated(ctx: &XdpContext, pkt: &Ipv4Packet) -> Route {
    let mut params = MaybeUninit::uninit();
    let params = fib_params(ctx, pkt, &Leaving::of(pkt), &mut params);
    params.__bindgen_anon_1.tot_len = 0;
    let rc = lookup(ctx, params) as u32;
    // NO_NEIGH still names the egress interface; every other failure means
    // the kernel would not forward it either.
    let routed = rc == BPF_FIB_LKUP_RET_SUCCESS || rc == BPF_FIB_LKUP_RET_NO_NEIGH;
    let wan = config().wan_ifindex;
    if !routed {
        Route::Local
    } else if wan != 0 && params.ifindex == wan {
        Route::Wan
    } else {
        Route::Inside
    }
}

/// A MAC address as three 16-bit words, as it lies in memory: copied
/// into the Ethernet header in three stores, not six byte stores (LLVM's
/// BPF backend does not merge byte accesses it cannot prove aligned).
#[derive(Clone, Copy)]
pub(crate) struct Mac([u16; 3]);

impl Mac {
    /// # Safety
    /// `bytes` is 2-aligned: the `smac` and `dmac` of `NextHop` and of
    /// `bpf_fib_lookup` lie at even offsets of 8-aligned structs.
    #[inline(always)]
    unsafe fn of(bytes: &[u8; 6]) -> Mac {
        // SAFETY: the caller's.
        Mac(unsafe { *(bytes.as_ptr() as *const [u16; 3]) })
    }

    /// # Safety
    /// `at` is 2-aligned, with six writable bytes in the frame.
    #[inline(always)]
    unsafe fn write(self, at: *mut u8) {
        for (i, word) in self.0.into_iter().enumerate() {
            // SAFETY: the caller's.
            unsafe { words::store16(at.add(2 * i), word) };
        }
    }
}

/// What the route lookup says about a packet.
pub(crate) enum Hop {
    /// Out of this CPU's next-hop cache entry `next`, read when the frame
    /// is sent (`deliver`): a pointer held across the rewrite, not its
    /// egress and six MAC words, which spilled to the stack and back.
    /// With a `handoff` other than `Handoff::SEND`, natd sends the
    /// translated frame through the kernel instead, and `next` is not read. One
    /// variant for all, so that the verifier sees one shape and walks the
    /// rewrite once for all.
    Routed { next: *const NextHop, handoff: u32 },
    /// Longer than the egress MTU, given in host order, with DF set.
    TooBig(u16),
    /// Not forwarded: no route (dropped), or a local destination (passed
    /// as it came: nothing is rewritten or refreshed for it).
    Refused(Verdict),
}

/// `Hop::Routed`'s `handoff`: `SEND`, redirected out of the next hop's
/// egress; or a packet natd sends through the kernel: its next hop's MAC
/// is not known yet (`miss_kind::NO_NEIGHBOUR`), or it is longer than the
/// egress MTU `mtu` with DF clear (`miss_kind::TOO_BIG`, the MTU in the
/// high 16 bits: one word carried across the rewrite, not two).
struct Handoff;

impl Handoff {
    const SEND: u32 = 0;
    const NO_NEIGHBOUR: u32 = miss_kind::NO_NEIGHBOUR;

    #[inline(always)]
    const fn too_big(mtu: u16) -> u32 {
        miss_kind::TOO_BIG | (mtu as u32) << 16
    }

    /// Hands the frame to natd as `handoff` says: its kind, and its MTU.
    #[inline(always)]
    fn hand(ctx: &XdpContext, pkt: &Ipv4Packet, handoff: u32) -> Verdict {
        hand_over(ctx, pkt, handoff & 0xffff, (handoff >> 16) as u16)
    }
}

/// Routes a packet translated already (an ICMP error) and sends it on.
#[inline(always)]
pub(crate) fn forward(ctx: &XdpContext, pkt: &Ipv4Packet, translated: Reason, now: u64) -> Verdict {
    let hop = next_hop(ctx, pkt, &Rewrite::Nothing, ctx.ingress_ifindex() as u32, now);
    deliver(ctx, pkt, hop, translated)
}

/// Sends a translated packet where the route lookup said: redirected out of
/// the egress interface, or through the daemon while the neighbour resolves
/// or to be fragmented. A packet too big here with DF set is an ICMP error,
/// which is never answered with another (RFC 1122 3.2.2): dropped.
#[inline(always)]
pub(crate) fn deliver(ctx: &XdpContext, pkt: &Ipv4Packet, hop: Hop, translated: Reason) -> Verdict {
    // SAFETY: this CPU's entry of `NEXT_HOPS`, as `next_hop` left it: XDP
    // runs with bottom halves off, so no other program run on this CPU
    // writes it in between. 8-aligned, its MACs at even offsets (`Mac::of`).
    let (egress_ifindex, smac, dmac) = match hop {
        Hop::Routed { next, handoff: Handoff::SEND } => unsafe { ((*next).egress_ifindex, Mac::of(&(*next).smac), Mac::of(&(*next).dmac)) },
        Hop::Routed { handoff, .. } => return Handoff::hand(ctx, pkt, handoff),
        Hop::TooBig(_) => return Verdict::drop(Reason::DropTooBigForEgress),
        Hop::Refused(verdict) => return verdict,
    };
    // SAFETY: `parse` checked the Ethernet header in the frame, which
    // starts it (2-aligned).
    unsafe {
        dmac.write(pkt.eth as *mut u8);
        smac.write((pkt.eth as *mut u8).add(6));
    }
    if let Some(cut) = cut::after(Step::MacsWritten) {
        return cut;
    }
    // The egress is one of the gateway's (`next_hop` checked): it fails only
    // when natd took it out of the devmap.
    match TX_PORTS.redirect(egress_ifindex, xdp_action::XDP_DROP as u64) {
        Ok(action) => Verdict { action, reason: translated },
        Err(_) => Verdict::drop(Reason::DropRedirectFailed),
    }
}

/// The next hop of the packet once `rewrite` is applied to it: from the
/// cache while the entry is fresh and the packet no longer than one the
/// route lookup has accepted, otherwise from `bpf_fib_lookup` (which also
/// checks the egress MTU, path-MTU exceptions included), and then cached.
/// Too long with DF clear, it is for natd to fragment (RFC 791: a router
/// fragments what does not fit); with DF set, `TooBig`.
/// `ingress` keys the cache: the interface the packet came in on (the
/// route lookup itself asks with the context's).
#[inline(always)]
pub(crate) fn next_hop(ctx: &XdpContext, pkt: &Ipv4Packet, rewrite: &Rewrite, ingress: u32, now: u64) -> Hop {
    let dst_be = leaving_dst_be(rewrite, pkt);
    let tot_len = pkt.tot_len();
    // Never missing: the index is masked to the array's size.
    let Some(slot) = NEXT_HOPS.get_ptr_mut(NextHop::slot(dst_be, ingress)) else {
        return Hop::Refused(Verdict::drop(Reason::DropNoRoute));
    };
    // SAFETY: this CPU's slot, written only while this program runs on it.
    let hop = unsafe { &*slot };
    if hop.answers(dst_be, ingress, now) && tot_len <= hop.max_len {
        return Hop::Routed { next: slot, handoff: Handoff::SEND };
    }

    let mut params = MaybeUninit::uninit();
    let params = fib_params(ctx, pkt, &Leaving::of(pkt).after(rewrite), &mut params);
    let rc = lookup(ctx, params) as u32;
    match rc {
        BPF_FIB_LKUP_RET_SUCCESS => {}
        BPF_FIB_LKUP_RET_NO_NEIGH => return Hop::Routed { next: slot, handoff: Handoff::NO_NEIGHBOUR },
        BPF_FIB_LKUP_RET_FRAG_NEEDED => {
            // The kernel wrote the MTU over tot_len (a union).
            // SAFETY: a union of two u16s.
            let mtu = unsafe { params.__bindgen_anon_1.mtu_result };
            return if pkt.frags() & IP_DF == 0 { Hop::Routed { next: slot, handoff: Handoff::too_big(mtu) } } else { Hop::TooBig(mtu) };
        }
        // For the gateway itself (natd's health checks answered from a
        // forwarded port, a mapped host's packet to the gateway's LAN
        // address): delivered untranslated. With forwarding off on the
        // ingress, the kernel forwards nothing either.
        BPF_FIB_LKUP_RET_NOT_FWDED => return Hop::Refused(Verdict::pass(Reason::PassLocal)),
        // Blackhole, unreachable, prohibited.
        _ => return Hop::Refused(Verdict::drop(Reason::DropNoRoute)),
    }
    // Out of a third interface: not the gateway's to send to (checked when
    // the hop is cached, not per packet).
    let cfg = config();
    if params.ifindex != cfg.lan_ifindex && params.ifindex != cfg.wan_ifindex {
        return Hop::Refused(Verdict::drop(Reason::DropEgressUnmanaged));
    }
    let mut hop = NextHop {
        dst_be,
        ingress_ifindex: ingress,
        egress_ifindex: params.ifindex,
        max_len: tot_len,
        smac: params.smac,
        dmac: params.dmac,
        _pad16: 0,
        _pad32: 0,
        expires_ns: now + NEXT_HOP_TTL_NS,
    };
    // SAFETY: as above.
    let old = unsafe { &mut *slot };
    // A longer packet to the same, still fresh hop widens what the entry
    // accepts without extending its life.
    if old.answers(dst_be, ingress, now)
        && old.egress_ifindex == hop.egress_ifindex
        && old.dmac == hop.dmac
        && old.max_len > hop.max_len
    {
        hop.max_len = old.max_len;
        hop.expires_ns = old.expires_ns;
    }
    *old = hop;
    Hop::Routed { next: slot, handoff: Handoff::SEND }
}
