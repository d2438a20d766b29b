//! SCTP (RFC 9260): ports translated like UDP's, with the CRC32c that
//! covers the whole packet carried along in O(1) (`nat_common::crc32c`),
//! and the association's state read from the first chunk's type.

use aya_ebpf::{
    macros::map,
    maps::{Array, ProgramArray},
    programs::XdpContext,
};
use nat_common::{
    Endpoint, Liveness, Reason,
    crc32c::{NIBBLE_TABLE_LEN, field_after_port_change_by_nibbles},
    proto::{SCTP_FIRST_CHUNK_TYPE_AT, Sctp, Transport},
    sctp_chunks,
};

use super::SctpCheck;
use crate::{
    packet::{Rewrite, Side},
    verdict::Verdict,
};

/// The SCTP programs, by `SctpProgram` index: natd loads them and files
/// them here (`nat_common::sctp_program_index`).
#[map]
static SCTP_PROGRAMS: ProgramArray = ProgramArray::with_max_entries(2, 0);

/// Which SCTP program, as indexed in `SCTP_PROGRAMS`.
#[derive(Clone, Copy)]
#[repr(u32)]
pub enum SctpProgram {
    Lan = nat_common::sctp_program_index::LAN,
    Wan = nat_common::sctp_program_index::WAN,
}

/// Hands an SCTP packet to the SCTP program of its side (a tail call: it
/// does not come back). Should that program be missing, the packet is
/// dropped and counted: never passed, as the kernel would forward it
/// untranslated.
#[inline(always)]
pub fn to_program(ctx: &XdpContext, program: SctpProgram) -> Verdict {
    // SAFETY: a tail call into an XDP program natd loaded for this; it runs
    // on the same frame and returns the verdict itself.
    unsafe { SCTP_PROGRAMS.tail_call(ctx, program as u32) };
    Verdict::drop(Reason::DropSctpNoProgram)
}

/// The nibble table of the CRC32c update (`crc32c::fill_nibble_table`),
/// filled by natd when it loads the programs. One value holding the whole
/// table: read with a constant key, the verifier knows the lookup succeeds,
/// and masked indexes need no bounds branch.
#[map]
static SCTP_NIBBLES: Array<[u32; NIBBLE_TABLE_LEN]> = Array::with_max_entries(1, 0);

/// The CRC32c field an SCTP packet leaves with once `rewrite` has changed
/// its ports (`crc32c::field_after_port_change_by_nibbles`, one port at a
/// time: four reads of the nibble table, about 30 instructions with no
/// branch, whatever the packet's length). The update xors in the difference
/// the new ports make, so a packet that arrived with a wrong CRC leaves with
/// one wrong by the same error (RFC 9260 §6.8: the NAT does not launder
/// corruption). The addresses are not in the CRC (no pseudo-header): an
/// address-only rewrite, or ports kept, leave it as it is. `NONE` for any
/// other packet.
///
/// Computed as soon as the mapping is known, before filtering and the route
/// lookup, and handed to the rewrite: the packet is not touched here, so one
/// the route refuses leaves as it came. Why a table and no multiply: the
/// verifier walks this once per state that reaches it, and a 16-step
/// multiply (~120 instructions, or the same in a BPF subprogram, static or
/// global) took nat_lan_sctp past the verifier's 1,000,000 instructions.
///
/// `header`: the packet's `Ipv4Packet::sctp`, `l4_len` its
/// `Ipv4Packet::l4_len` (taken apart, so that the protocols need nothing of
/// the parser that points at them; `nat::hit::sctp_check_after` takes the
/// packet).
#[inline(always)]
pub fn check_after(header: *mut u8, l4_len: u16, rewrite: &Rewrite) -> SctpCheck {
    let Some(table) = SCTP_NIBBLES.get(0) else {
        return SctpCheck::NONE;
    };
    let len = l4_len as usize;
    // SAFETY: `Ipv4Packet::sctp` checked SCTP_MIN_PACKET_LEN bytes: the
    // ports at 0..4 and the checksum at 8..12.
    let (ports, field) = unsafe { (*(header as *const [u8; 4]), *(header.wrapping_add(Sctp::CHECK_AT) as *const [u8; 4])) };
    let (source_port, destination_port) = ([ports[0], ports[1]], [ports[2], ports[3]]);
    let change_source = |field, to: &Endpoint| field_after_port_change_by_nibbles(field, source_port, to.port_be.to_ne_bytes(), len, true, table);
    let change_destination = |field, to: &Endpoint| field_after_port_change_by_nibbles(field, destination_port, to.port_be.to_ne_bytes(), len, false, table);
    SctpCheck(match rewrite {
        Rewrite::Nothing => field,
        Rewrite::One(Side::Source, to) => change_source(field, to),
        Rewrite::One(Side::Destination, to) => change_destination(field, to),
        Rewrite::Both(source, destination) => change_destination(change_source(field, source), destination),
    })
}

/// Sets the port of `side` to `to.port_be` and the CRC32c field to `check`
/// (`check_after` for this rewrite; `translate_both_with` sets it twice, to the
/// same value). `header`: from `Ipv4Packet::sctp`.
#[inline(always)]
pub fn rewrite_port(header: *mut u8, side: Side, to: &Endpoint, check: SctpCheck) {
    let port_at = if side == Side::Source { Sctp::SRC_PORT_AT } else { Sctp::DST_PORT_AT };
    // SAFETY: `Ipv4Packet::sctp` checked SCTP_MIN_PACKET_LEN bytes: the
    // ports at 0..4 and the checksum at 8..12.
    unsafe {
        *(header.wrapping_add(port_at) as *mut [u8; 2]) = to.port_be.to_ne_bytes();
        *(header.wrapping_add(Sctp::CHECK_AT) as *mut [u8; 4]) = check.0;
    }
}

/// Records the type of a packet's first chunk crossing on `side` in its
/// session's liveness, from which natd tells opening, established and
/// closing apart: a write only when a kind is new in that direction. Only
/// the first chunk is read (one byte at a fixed offset): bundled chunks
/// after it are not walked.
#[inline(always)]
pub fn record_chunk(live: &mut Liveness, header: *mut u8, side: Side) {
    // SAFETY: within the SCTP_MIN_PACKET_LEN bytes `parse` checked.
    let chunk = sctp_chunks::bit(unsafe { *header.wrapping_add(SCTP_FIRST_CHUNK_TYPE_AT) });
    if chunk == 0 {
        return;
    }
    // An INIT after a SHUTDOWN or ABORT starts a new association between
    // the same endpoints (the mapping outlives the last one by the closing
    // timeout): its state starts afresh, as TCP's after a FIN.
    let closed = (live.sctp_chunks_out | live.sctp_chunks_in) & (sctp_chunks::SHUTDOWN | sctp_chunks::ABORT) != 0;
    if closed && chunk == sctp_chunks::INIT {
        live.sctp_chunks_out = 0;
        live.sctp_chunks_in = 0;
    }
    let seen = match side {
        Side::Source => &mut live.sctp_chunks_out,
        Side::Destination => &mut live.sctp_chunks_in,
    };
    if *seen & chunk != chunk {
        *seen |= chunk;
    }
}
