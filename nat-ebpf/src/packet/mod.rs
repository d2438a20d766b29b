//! The packet: reading it within bounds (here), parsing and checking it
//! (`parse`), the rewrites of a translation (`rewrite`), and the full
//! checksums a TX-offloaded segment or an ICMP error needs (`checksum`).

pub mod checksum;
pub mod parse;
pub mod rewrite;

use core::mem;

use aya_ebpf::programs::XdpContext;
use nat_common::{Endpoint, Reason};

/// Which end of a packet a translation rewrites.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// LAN -> WAN: the inside source becomes the external endpoint.
    Source,
    /// WAN -> LAN: the external destination becomes the inside endpoint.
    Destination,
}

/// The rewrite a packet is routed for and then given: routes are looked
/// up before the packet is touched (`route::next_hop`, `hit::send`).
#[derive(Clone, Copy)]
pub enum Rewrite {
    /// Leaves as it is (translated already).
    Nothing,
    /// `translate(pkt, side, to)`.
    One(Side, Endpoint),
    /// `translate_both(pkt, source, destination)`.
    Both(Endpoint, Endpoint),
}

impl Rewrite {
    /// The side the packet came in on, for an error about it: the LAN for a
    /// source rewrite and a hairpin, the WAN for a destination rewrite.
    #[inline(always)]
    pub fn ingress(&self) -> Side {
        match self {
            Rewrite::One(Side::Destination, _) => Side::Destination,
            _ => Side::Source,
        }
    }
}

/// Header fields by 16-bit words. Every header starts 2-byte aligned
/// (frames do, and the Ethernet header, VLAN tags and IPv4 header are whole
/// 16-bit words), so every 16-bit field is aligned, and a 32-bit one (an
/// address) is two aligned words. A `[u8; N]` field is otherwise read and
/// written a byte at a time: LLVM's BPF backend never merges byte accesses
/// it cannot prove aligned, and an address cost four loads and six shifts
/// and ors.
pub mod words {
    /// The 16-bit word at `at`, as it lies in memory (network order).
    ///
    /// # Safety
    /// `at` is 2-aligned, and two bytes there are in the frame.
    #[inline(always)]
    pub unsafe fn load16(at: *const u8) -> u16 {
        // SAFETY: the caller's.
        unsafe { *(at as *const u16) }
    }

    /// # Safety
    /// As `load16`, and the bytes may be written.
    #[inline(always)]
    pub unsafe fn store16(at: *mut u8, value: u16) {
        // SAFETY: the caller's.
        unsafe { *(at as *mut u16) = value }
    }

    /// The 32-bit field at `at` as it lies in memory (`u32::from_ne_bytes`
    /// of its bytes), from two 16-bit words.
    ///
    /// # Safety
    /// `at` is 2-aligned, and four bytes there are in the frame.
    #[inline(always)]
    pub unsafe fn load32(at: *const u8) -> u32 {
        // SAFETY: the caller's.
        let (first, second) = unsafe { (load16(at) as u32, load16(at.add(2)) as u32) };
        if cfg!(target_endian = "little") { first | second << 16 } else { first << 16 | second }
    }

    /// # Safety
    /// As `load32`, and the bytes may be written.
    #[inline(always)]
    pub unsafe fn store32(at: *mut u8, value: u32) {
        let (first, second) = if cfg!(target_endian = "little") { (value as u16, (value >> 16) as u16) } else { ((value >> 16) as u16, value as u16) };
        // SAFETY: the caller's.
        unsafe {
            store16(at, first);
            store16(at.add(2), second);
        }
    }
}

/// Zeroes the `T` at `at` in 8-byte stores. `[0; N]`, `mem::zeroed()` and
/// struct literals with an array field compile to a call to
/// compiler-builtins' memset, a byte loop in BPF that the verifier also
/// walks again at every state reaching the call (nat-userspace's
/// `no_program_calls_a_byte_loop_mem_function` keeps such calls out).
///
/// # Safety
/// `at` is 8-aligned and writable for the whole `T`.
#[inline(always)]
pub unsafe fn zero_in_words<T>(at: *mut T) {
    const { assert!(mem::size_of::<T>() % 8 == 0) };
    let words = at.cast::<u64>();
    for i in 0..mem::size_of::<T>() / 8 {
        // SAFETY: within the `T`, 8-aligned (the caller's). Volatile so that
        // LLVM does not merge the stores back into a memset.
        unsafe { words.add(i).write_volatile(0) };
    }
}

/// Why a frame is refused before it is looked at further: the reason it is
/// dropped and counted under (`DropMalformed` for a frame cut short, the
/// `DropBad*` reasons for headers that lie).
pub struct Invalid(pub Reason);

pub const TRUNCATED: Invalid = Invalid(Reason::DropMalformed);
pub const BAD_IP_HEADER: Invalid = Invalid(Reason::DropBadIpHeader);
pub const BAD_L4_HEADER: Invalid = Invalid(Reason::DropBadL4Header);

/// A pointer to a `T` at `offset` bytes into the packet, if the whole `T` is
/// there: the one bounds check every header read goes through.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Result<*mut T, Invalid> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + mem::size_of::<T>() > end {
        return Err(TRUNCATED);
    }
    Ok((start + offset) as *mut T)
}

/// `value` read back through the stack: LLVM forgets what it knew about it,
/// the verifier (which tracks the stack slot) does not. For offsets whose
/// bounds check LLVM would otherwise prove redundant from an earlier check
/// (the datagram within the frame) and drop, leaving the verifier a read it
/// cannot prove safe.
#[inline(always)]
pub fn opaque(value: usize) -> usize {
    let slot = value;
    // SAFETY: a read of a local just written.
    unsafe { core::ptr::read_volatile(&slot) }
}

/// A copy of `value` the verifier does not tie to it. A plain copy shares
/// the verifier's id, so every comparison made on it narrows the original
/// too, and each way out of a test then walks the rest of the program as a
/// state of its own. An xor with an opaque zero gives the copy an id of its
/// own.
#[inline(always)]
pub fn unlinked(value: usize) -> usize {
    value ^ opaque(0)
}
