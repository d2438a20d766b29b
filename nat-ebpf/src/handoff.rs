//! Packets handed to the daemon through the ring.

use aya_ebpf::{bindings::BPF_RB_FORCE_WAKEUP, helpers::bpf_xdp_load_bytes, macros::map, maps::PerCpuArray, programs::XdpContext};
use nat_common::{MISS_FRAME_MAX, MissEvent, Reason, miss_kind};

use crate::{
    maps::{DAEMON_ASLEEP, MISSES},
    packet::parse::Ipv4Packet,
    verdict::Verdict,
};

/// Copies the frame into the miss ring for the daemon and drops it here; the
/// daemon sets the flow up and sends the packet on (new flow), or sends it
/// through the kernel (no neighbour).
#[inline(always)]
pub(crate) fn hand_to_daemon(ctx: &XdpContext, pkt: &Ipv4Packet, kind: u32) -> Verdict {
    hand_over(ctx, pkt, kind, 0)
}

/// `hand_to_daemon` with the event's `mtu`: for `miss_kind::TOO_BIG`, the
/// egress MTU natd cuts the packet to.
#[inline(always)]
pub(crate) fn hand_over(ctx: &XdpContext, pkt: &Ipv4Packet, kind: u32, mtu: u16) -> Verdict {
    let handed = match kind {
        miss_kind::NEW_FLOW => Reason::MissToDaemon,
        miss_kind::NO_SERVER => Reason::ForwardNoServer,
        miss_kind::ESP => Reason::EspToDaemon,
        miss_kind::TOO_BIG => Reason::TooBigToDaemon,
        _ => Reason::NoNeighbourToDaemon,
    };
    match copy_to_daemon(ctx, pkt, kind, mtu) {
        Ok(()) => Verdict::drop(handed),
        Err(failed) => Verdict::drop(failed),
    }
}

/// A hand-off is built here, then copied into the ring as long as its frame:
/// the ring reserves only fixed sizes, and a 2 KiB record for every first
/// packet let ~8,000 hand-offs fill 16 MiB (see `MISS_RING_BYTES`).
#[map]
static HANDOFF: PerCpuArray<MissEvent> = PerCpuArray::with_max_entries(1, 0);

/// Copies the frame into the miss ring as a `MissEvent` of `kind` (and
/// `mtu`, 0 but for `miss_kind::TOO_BIG`), a record of its header and the
/// frame's bytes. `Err`: the reason it could not be.
#[inline(always)]
pub(crate) fn copy_to_daemon(ctx: &XdpContext, pkt: &Ipv4Packet, kind: u32, mtu: u16) -> Result<(), Reason> {
    let frame_len = ctx.data_end() - ctx.data();
    if frame_len > MISS_FRAME_MAX {
        return Err(Reason::DropTooBigForDaemon);
    }
    let event = HANDOFF.get_ptr_mut(0).ok_or(Reason::DropMalformed)?;
    let len = copy_len(frame_len);
    // SAFETY: this CPU's scratch event (XDP runs to completion, no other
    // program of this CPU uses it meanwhile); the helper writes at most
    // `len` <= MISS_FRAME_MAX bytes into its frame.
    let copied = unsafe {
        (*event).kind = kind;
        (*event).ingress_ifindex = ctx.ingress_ifindex() as u32;
        (*event).frame_len = frame_len as u32;
        (*event).l3_offset = pkt.l3_offset as u16;
        (*event).mtu = mtu;
        bpf_xdp_load_bytes(ctx.ctx as *mut _, 0, (*event).frame.as_mut_ptr() as *mut _, len)
    };
    if copied != 0 {
        return Err(Reason::DropMalformed);
    }
    // SAFETY: the header and the `len` bytes of frame just written, within
    // the event (HEADER_LEN + len <= size_of::<MissEvent>()).
    let record = unsafe { core::slice::from_raw_parts(event as *const u8, MissEvent::record_len(len as usize)) };
    MISSES.output::<[u8]>(record, wakeup_flags()).map_err(|_| Reason::DropRingFull)
}

/// The ring's wake-up flag for a record natd must act on soon (a hand-off,
/// a translated first fragment). Claims wake no one (`new_flow::claim`),
/// and the ring's own rule wakes the reader only when it had read all
/// before the new record: behind an unread claim, this record would wait
/// for natd's next poll of the ring (every 20 ms). So while natd sleeps the
/// wake-up is forced. While natd reads, the ring's rule is kept: a forced
/// wake-up for every record (an interrupt each) slowed the gateway's
/// receive path in a burst of 100,000 new flows until the lab's switch
/// dropped 7,000 to 48,000 first packets at its port to the gateway.
#[inline(always)]
pub(crate) fn wakeup_flags() -> u64 {
    match DAEMON_ASLEEP.get(0) {
        Some(&asleep) if asleep != 0 => u64::from(BPF_RB_FORCE_WAKEUP),
        _ => 0,
    }
}

/// `frame_len` (1..=MISS_FRAME_MAX, a power of two) in a form the verifier can
/// bound: LLVM turns a plain `0 < len <= MAX` test into one unsigned compare
/// the verifier cannot see through, so the range is rebuilt with a mask.
#[inline(always)]
pub(crate) fn copy_len(frame_len: usize) -> u32 {
    const _: () = assert!(MISS_FRAME_MAX.is_power_of_two());
    (((frame_len as u32).wrapping_sub(1)) & (MISS_FRAME_MAX as u32 - 1)) + 1
}
