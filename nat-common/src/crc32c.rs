//! SCTP checksum (CRC32c) and its O(1) update for a NAT port rewrite.
//!
//! # The checksum (RFC 9260 §6.8 and its CRC32c appendix)
//!
//! SCTP protects the whole SCTP packet (12-byte common header plus all
//! chunks; no IP pseudo-header) with CRC32c, the Castagnoli polynomial
//!
//! ```text
//! P(x) = x^32 + x^28 + x^27 + x^26 + x^25 + x^23 + x^22 + x^20 + x^19
//!      + x^18 + x^14 + x^13 + x^11 + x^10 + x^9 + x^8 + x^6 + 1
//! ```
//!
//! (0x1EDC6F41 MSB-first, 0x82F63B78 bit-reflected), computed with the
//! checksum field taken as zero, initial register 0xFFFFFFFF and a final
//! complement.  The bits of every byte enter least-significant first, which
//! is why software uses the "reflected" register below.
//!
//! # Byte order of the checksum field
//!
//! The value returned by [`crc32c`] / [`sctp_checksum`] is the usual
//! reflected-register CRC (the number the `crc32c` crate, the Linux kernel's
//! `crc32c()` and the CRC catalogue's "CRC-32/ISCSI" give, e.g. 0xE3069283 for
//! `"123456789"`).  The field carries that value **least-significant byte
//! first** ([`crc_to_field_bytes`] = `u32::to_le_bytes`).  Why: in the
//! reflected register bit 0 holds the coefficient of x^31, so the low byte
//! holds x^31..x^24 — the highest-order terms of the remainder, which go on
//! the wire first, in the same LSB-first bit order as the data.  It is the same
//! convention as iSCSI's CRC32c (RFC 3720 §B.4 vectors) and what Linux does
//! (`sctp_compute_cksum()` returns `cpu_to_le32(~crc32c(...))`).  The tests
//! check it against packets captured from real SCTP stacks (dcSCTP's test
//! suite, dissected by Wireshark) and against packets built by scapy; reading
//! the field big-endian fails all of them.
//!
//! On the XDP side (`bpfel`, a little-endian machine) a plain `u32` load of
//! the field therefore yields the CRC value directly, and a plain store
//! writes it back in wire order.
//!
//! # The O(1) port-rewrite update
//!
//! Work in `GF(2)[x]` modulo P.  Let `crc_linear(M)` be the CRC with zero
//! initial register and no final xor: `crc_linear(M) = M(x)·x^32 mod P`.  It
//! is linear: `crc_linear(A ^ B) = crc_linear(A) ^ crc_linear(B)` for
//! equal-length A and B.  The real CRC differs from it by a term that depends
//! only on the length L (the 0xFFFFFFFF preset and the final complement), so
//! for two equal-length packets
//!
//! ```text
//! crc(A) ^ crc(B) = crc_linear(A ^ B)
//! ```
//!
//! A port rewrite changes only bytes 0..4, so `A ^ B = delta || 0^(L-4)`
//! with `delta = old_ports ^ new_ports`.  Appending one zero byte multiplies
//! the remainder by x^8, hence
//!
//! ```text
//! crc(new) = crc(old) ^ crc_linear(delta) · x^(8·(L-4))  mod P
//! ```
//!
//! The four-byte form ([`update_for_port_rewrite`]) reads `x^(8·(L-4)) mod
//! P` from a table ([`fill_shift_table`]) or computes it ([`x8n_mod_p`]),
//! computes `crc_linear(delta)` with 32 shift steps ([`crc_linear_4`]) and
//! multiplies with 32 more ([`gf2_mulmod`]): whatever the packet length,
//! instead of a table lookup per byte over up to 9000 bytes.  natd uses it
//! for the first packets it sends itself.
//!
//! One port at a time (what a NAT rewrites) the update narrows:
//! [`field_after_port_change`] folds `crc_linear` into the table index and
//! needs a 16-step multiply, and [`field_after_port_change_by_nibbles`]
//! replaces the multiply by four reads of a 2 MiB table of `v(x)·x^(4q)`
//! ([`fill_nibble_table`]): about 30 BPF instructions, no loop, no branch.
//! That is what the XDP programs run.  The verifier walks the update once per
//! state that reaches it, thousands of times, and the multiply's ~120
//! instructions (or the loop of [`gf2_mulmod`], which LLVM turns for BPF into
//! one that exits once the remaining coefficients are zero) took the SCTP
//! program past the verifier's 1,000,000 instructions.
//!
//! Because the update is "xor in the difference" and never looks at the
//! payload, a packet that arrived with a wrong checksum leaves with a wrong
//! checksum, off by exactly the same error syndrome: the NAT does not launder
//! corruption into a valid packet.  A NAT that recomputes the CRC in full
//! after rewriting (FreeBSD pf's SCTP NAT does, for instance) would certify
//! whatever bits it received, damaged or not.
//!
//! Address-only rewrites need no checksum work at all: unlike TCP and UDP,
//! SCTP's checksum covers no pseudo-header, so the IP addresses are not in it.
//!
//! # Datapath constraints honoured here
//!
//! The hot functions ([`crc_linear_4`], [`gf2_mulmod`],
//! [`update_for_port_rewrite`], [`updated_checksum_field_for_port_rewrite`])
//! are `const fn` and `#[inline(always)]`, loop a constant 32 times with no
//! data-dependent branch (selection is by masks; the only `if` is the
//! zero-field check), touch no memory, cannot panic (no indexing, division
//! or overflowing arithmetic), and need no stack beyond registers.
//! [`field_after_port_change_by_nibbles`] indexes its table with masks (no
//! bounds branch) and has no loop at all.  The byte-at-a-time functions are
//! for the host.

/// CRC32c generator polynomial P(x) without its x^32 term, bit-reflected
/// (bit 31 holds the coefficient of x^0, bit 0 that of x^31).
pub const CRC32C_POLY_REFLECTED: u32 = 0x82F6_3B78;

/// The polynomial 1 (= x^0) in the reflected representation.
pub const POLY_ONE_REFLECTED: u32 = 0x8000_0000;

/// The polynomial x^8 in the reflected representation (bit 31 - 8).
pub const POLY_X8_REFLECTED: u32 = 0x0080_0000;

/// Preset to all ones (RFC 9260 §6.8); with a zero preset, leading zero
/// bytes would not change the CRC.
const CRC32C_INITIAL_REGISTER: u32 = 0xFFFF_FFFF;

/// RFC 9260 §6.8: the remainder is complemented before it is stored.
const CRC32C_FINAL_XOR: u32 = 0xFFFF_FFFF;

/// Length of the SCTP common header (RFC 9260 §3.1).
pub const SCTP_COMMON_HEADER_LEN: usize = 12;

/// Offset of the 32-bit checksum field in the SCTP common header.
pub const SCTP_CHECKSUM_OFFSET: usize = 8;

/// Size of the checksum field.
pub const SCTP_CHECKSUM_LEN: usize = 4;

/// Bytes 0..4 of an SCTP packet are the source and destination ports; this
/// is how many leading bytes a port rewrite may change.
pub const SCTP_PORTS_LEN: usize = 4;

/// Largest shift exponent n (as in x^(8n)) kept in the shift table.  n is
/// L - 4 for an SCTP packet of L bytes; 9000 covers SCTP packets of up to
/// 9004 bytes, i.e. anything that fits a 9000-byte jumbo MTU.
pub const SHIFT_TABLE_MAX_N: u32 = 9000;

/// Number of entries in the shift table: n = 0..=[`SHIFT_TABLE_MAX_N`].
/// At 4 bytes per entry the BPF array map holds 36,004 bytes.
pub const SHIFT_TABLE_LEN: usize = SHIFT_TABLE_MAX_N as usize + 1;

/// Byte-at-a-time lookup table for the host: `CRC32C_TABLE[b]` is
/// `crc_linear` of the single byte `b`, i.e. `b` (reflected) times x^32 mod P,
/// so that one table lookup replaces eight [`mul_x_mod_p`] steps.
/// 1 KiB, built at compile time by [`build_crc32c_table`]; the datapath does
/// not use it.
pub const CRC32C_TABLE: [u32; 256] = build_crc32c_table();

/// Multiplies a reflected polynomial by x modulo P.
///
/// Shifting right raises every degree by one; the coefficient that falls out
/// of bit 0 is the x^32 term, and x^32 ≡ P(x) - x^32 (mod P), which is the
/// reflected polynomial constant.  The mask form (`0 - low_bit`) avoids a
/// branch so the verifier sees straight-line code.
#[must_use]
#[inline(always)]
pub const fn mul_x_mod_p(polynomial: u32) -> u32 {
    let overflow_mask = (polynomial & 1).wrapping_neg();
    (polynomial >> 1) ^ (CRC32C_POLY_REFLECTED & overflow_mask)
}

/// Multiplies a reflected polynomial by x^8 modulo P: appending one zero
/// byte to a message multiplies its `crc_linear` by exactly this.
#[must_use]
#[inline(always)]
pub const fn mul_x8_mod_p(polynomial: u32) -> u32 {
    let mut product = polynomial;
    let mut step = 0;
    while step < 8 {
        product = mul_x_mod_p(product);
        step += 1;
    }
    product
}

/// Builds [`CRC32C_TABLE`].  Entry b is the register after feeding byte b
/// into a zero register: the byte sits in bits 0..8 (x^31..x^24 reflected)
/// and eight multiplications by x reduce it modulo P.
#[must_use]
pub const fn build_crc32c_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut byte = 0usize;
    while byte < 256 {
        table[byte] = mul_x8_mod_p(byte as u32);
        byte += 1;
    }
    table
}

/// Feeds `data` into a CRC32c register, one table lookup per byte.
#[inline]
fn advance_register(mut register: u32, data: &[u8]) -> u32 {
    for &byte in data {
        // The low register byte meets the next message byte (both hold
        // x^31..x^24); the table reduces that byte and the rest of the
        // register shifts down by eight degrees.
        let table_index = usize::from((register as u8) ^ byte);
        register = (register >> 8) ^ CRC32C_TABLE[table_index];
    }
    register
}

/// CRC32c of `data` as RFC 9260 §6.8 defines it (preset all ones, reflected,
/// final complement).  Returns the numeric CRC value; store it in an SCTP
/// header with [`crc_to_field_bytes`] / [`write_sctp_checksum`].
///
/// Host-side: one table lookup per byte, so its running time grows with the
/// data and it does not belong in the XDP program.
#[must_use]
pub fn crc32c(data: &[u8]) -> u32 {
    advance_register(CRC32C_INITIAL_REGISTER, data) ^ CRC32C_FINAL_XOR
}

/// The SCTP checksum of `packet` (common header + chunks, without the IP
/// header), with the 4 bytes at offset 8 taken as zero whatever they hold,
/// as RFC 9260 §6.8 prescribes for both sender and receiver.
///
/// Returns the numeric CRC value (field bytes = its little-endian bytes).
/// A buffer shorter than [`SCTP_COMMON_HEADER_LEN`] is not an SCTP packet;
/// the function still returns a well-defined value (the checksum-field
/// positions it does have count as zero) rather than panicking.
#[must_use]
pub fn sctp_checksum(packet: &[u8]) -> u32 {
    let (before_field, field_and_after) = packet
        .split_at_checked(SCTP_CHECKSUM_OFFSET)
        .unwrap_or((packet, &[]));
    let (field, after_field) = field_and_after
        .split_at_checked(SCTP_CHECKSUM_LEN)
        .unwrap_or((field_and_after, &[]));

    let mut register = advance_register(CRC32C_INITIAL_REGISTER, before_field);
    for _ in field {
        register = advance_register(register, &[0]);
    }
    register = advance_register(register, after_field);
    register ^ CRC32C_FINAL_XOR
}

/// Wire bytes of the checksum field for a CRC value: least-significant byte
/// first (see the module documentation for why and how it was verified).
#[must_use]
#[inline(always)]
pub const fn crc_to_field_bytes(crc: u32) -> [u8; 4] {
    crc.to_le_bytes()
}

/// The CRC value held in the wire bytes of a checksum field; inverse of
/// [`crc_to_field_bytes`].
#[must_use]
#[inline(always)]
pub const fn crc_from_field_bytes(field: [u8; 4]) -> u32 {
    u32::from_le_bytes(field)
}

/// The buffer is too short to hold an SCTP common header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketTooShort;

/// Reads the checksum field of an SCTP packet as a CRC value, or `None` if
/// the buffer is shorter than the common header.
#[must_use]
pub fn read_sctp_checksum(packet: &[u8]) -> Option<u32> {
    let field: [u8; 4] = packet
        .get(SCTP_CHECKSUM_OFFSET..SCTP_CHECKSUM_OFFSET + SCTP_CHECKSUM_LEN)?
        .try_into()
        .ok()?;
    Some(crc_from_field_bytes(field))
}

/// Stores a CRC value into the checksum field in wire order.
///
/// # Errors
///
/// [`PacketTooShort`] when the buffer ends before the checksum field.
pub fn write_sctp_checksum(packet: &mut [u8], crc: u32) -> Result<(), PacketTooShort> {
    let field: &mut [u8; 4] = packet
        .get_mut(SCTP_CHECKSUM_OFFSET..SCTP_CHECKSUM_OFFSET + SCTP_CHECKSUM_LEN)
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or(PacketTooShort)?;
    *field = crc_to_field_bytes(crc);
    Ok(())
}

/// Computes the checksum of `packet` and writes it into its field, as a
/// sender does; returns the CRC value written.
///
/// # Errors
///
/// [`PacketTooShort`] when the buffer ends before the checksum field.
pub fn fill_sctp_checksum(packet: &mut [u8]) -> Result<u32, PacketTooShort> {
    let crc = sctp_checksum(packet);
    write_sctp_checksum(packet, crc)?;
    Ok(crc)
}

/// True when the packet's checksum field matches its contents (the
/// receiver's check of RFC 9260 §6.8).  False for buffers shorter than the
/// common header.
#[must_use]
pub fn verify_sctp_checksum(packet: &[u8]) -> bool {
    read_sctp_checksum(packet) == Some(sctp_checksum(packet))
}

/// `crc_linear` (zero initial register, no final xor) of exactly four bytes,
/// without a table: the 4-byte `delta` of a port rewrite.
///
/// With a zero register, feeding four bytes one at a time (xor a byte into
/// the low 8 bits, shift 8 times) equals xoring all four at once into the
/// register as a little-endian word and shifting 32 times: a byte placed 8k
/// bits higher reaches the low bits exactly when its turn would come, and
/// the reduction steps are linear, so they do not care when it was added.
///
/// Datapath cost: 32 iterations of shift/and/neg/and/xor, branch-free.
#[must_use]
#[inline(always)]
pub const fn crc_linear_4(bytes: [u8; 4]) -> u32 {
    let mut register = u32::from_le_bytes(bytes);
    let mut step = 0;
    while step < 32 {
        register = mul_x_mod_p(register);
        step += 1;
    }
    register
}

/// Carry-less product `a(x)·b(x) mod P` of two reflected polynomials.
///
/// Walks the coefficients of `a` from x^0 (bit 31) to x^31 (bit 0) while
/// `b_times_x_power` runs through b·x^0, b·x^1, …, b·x^31 (mod P); the
/// product is the xor of the terms whose coefficient in `a` is 1.  The
/// select is a mask, not a branch.  This is zlib's `multmodp` with the early
/// exit removed so the trip count is always 32.
///
/// Datapath cost: 32 iterations of about eight ALU instructions.
#[must_use]
#[inline(always)]
pub const fn gf2_mulmod(a: u32, b: u32) -> u32 {
    let mut product = 0u32;
    let mut remaining_a = a;
    let mut b_times_x_power = b;
    let mut step = 0;
    while step < 32 {
        let coefficient_mask = (remaining_a >> 31).wrapping_neg();
        product ^= b_times_x_power & coefficient_mask;
        remaining_a <<= 1;
        b_times_x_power = mul_x_mod_p(b_times_x_power);
        step += 1;
    }
    product
}

/// x^(8n) mod P in the reflected representation: the factor by which n
/// trailing zero bytes multiply a `crc_linear` value.
///
/// Square-and-multiply over the 32 bits of n (x^8, x^16, x^32, … by repeated
/// squaring), so at most 64 [`gf2_mulmod`] calls; constant trip count, so it
/// is usable anywhere, but the datapath reads the precomputed table instead.
#[must_use]
pub const fn x8n_mod_p(n: u32) -> u32 {
    let mut result = POLY_ONE_REFLECTED;
    let mut power_of_x8 = POLY_X8_REFLECTED;
    let mut remaining_n = n;
    let mut bit = 0;
    while bit < 32 {
        if remaining_n & 1 == 1 {
            result = gf2_mulmod(result, power_of_x8);
        }
        power_of_x8 = gf2_mulmod(power_of_x8, power_of_x8);
        remaining_n >>= 1;
        bit += 1;
    }
    result
}

/// Fills `table[n] = x^(8n) mod P` for every index of `table` (use a table
/// of [`SHIFT_TABLE_LEN`] entries for the BPF array map).  Each entry is the
/// previous one times x^8, eight shift steps, so a full table costs about
/// 72,000 steps.
pub fn fill_shift_table(table: &mut [u32]) {
    let mut power = POLY_ONE_REFLECTED;
    for entry in table.iter_mut() {
        *entry = power;
        power = mul_x8_mod_p(power);
    }
}

/// Index into the shift table for an SCTP packet of `sctp_packet_len` bytes
/// (L - 4, the number of bytes that follow the port fields), or `None` when
/// the packet is shorter than the ports or longer than the table covers.
///
/// L must come from the IP header (IPv4 total length minus header length,
/// IPv6 payload length minus extension headers), not from the end of the
/// frame: Ethernet pads short frames, and the padding is not part of the
/// SCTP packet — a 16-byte COOKIE ACK in IPv4 is padded by 10 bytes.
#[must_use]
#[inline(always)]
pub const fn shift_table_index(sctp_packet_len: usize) -> Option<usize> {
    if sctp_packet_len < SCTP_PORTS_LEN {
        return None;
    }
    let index = sctp_packet_len - SCTP_PORTS_LEN;
    if index < SHIFT_TABLE_LEN {
        Some(index)
    } else {
        None
    }
}

/// The CRC value after the first four bytes of the packet (source and
/// destination ports, in wire order) change from `old_ports` to `new_ports`.
///
/// * `old_check`: the CRC **value** currently in the field — what
///   [`read_sctp_checksum`] / [`crc_from_field_bytes`] return, and what a
///   native `u32` load of the field gives on little-endian BPF.  Returns a
///   CRC value in the same sense.  For wire bytes use
///   [`updated_checksum_field_for_port_rewrite`].
/// * `shift`: `x^(8·(L-4)) mod P` for the SCTP packet length L, i.e.
///   `table[L - 4]` from [`fill_shift_table`] (or [`x8n_mod_p`]`(L - 4)`).
///
/// `new = old ^ crc_linear(delta)·x^(8(L-4))`; see the module documentation
/// for the derivation.  If `old_check` was wrong, the result is wrong by the
/// same error.  Cost: one [`crc_linear_4`] and one [`gf2_mulmod`], whatever
/// L is.
#[must_use]
#[inline(always)]
pub const fn update_for_port_rewrite(
    old_check: u32,
    old_ports: [u8; 4],
    new_ports: [u8; 4],
    shift: u32,
) -> u32 {
    let port_delta = (u32::from_le_bytes(old_ports) ^ u32::from_le_bytes(new_ports)).to_le_bytes();
    old_check ^ gf2_mulmod(crc_linear_4(port_delta), shift)
}

/// The new wire bytes of the checksum field after a port rewrite, given its
/// old wire bytes; otherwise as [`update_for_port_rewrite`].
///
/// An all-zero field is returned unchanged.  RFC 9653 lets endpoints that
/// negotiated an alternate error detection method send a checksum of zero,
/// which their peer accepts as "not computed"; xoring a delta into it would
/// turn that accepted zero into a wrong non-zero CRC and the peer would drop
/// the packet.  For a packet without that extension a zero field is (but
/// for a 2^-32 chance) already a wrong CRC, and it stays wrong.
#[must_use]
#[inline(always)]
pub const fn updated_checksum_field_for_port_rewrite(
    old_field: [u8; 4],
    old_ports: [u8; 4],
    new_ports: [u8; 4],
    shift: u32,
) -> [u8; 4] {
    let old_check = crc_from_field_bytes(old_field);
    if old_check == 0 {
        return old_field;
    }
    crc_to_field_bytes(update_for_port_rewrite(
        old_check, old_ports, new_ports, shift,
    ))
}

/// Slots of the datapath's shift table: x^(8n) mod P for n = 0..SHIFT_SLOTS,
/// one map value the XDP program indexes with a mask (a power of two: no
/// bounds branch). It covers `SHIFT_TABLE_MAX_N` plus the 4 + 2 bytes the
/// one-port update below indexes past the packet length.
pub const SHIFT_SLOTS: usize = 16384;
const _: () = assert!(SHIFT_SLOTS.is_power_of_two() && SHIFT_SLOTS > SHIFT_TABLE_LEN + SCTP_PORTS_LEN + 2);

/// The shift-table slot for rewriting one port of an SCTP packet of
/// `sctp_packet_len` bytes (the source port: `source`), for
/// [`field_after_port_change`]: x^(8L) for the destination port, x^(8(L+2))
/// for the source port (see there), masked into the table.
#[must_use]
#[inline(always)]
pub const fn port_change_slot(sctp_packet_len: usize, source: bool) -> usize {
    (sctp_packet_len + if source { 2 } else { 0 }) & (SHIFT_SLOTS - 1)
}

/// [`updated_checksum_field_for_port_rewrite`] for a change of one 16-bit
/// port, in about 120 branch-free BPF instructions: the XDP program's form.
///
/// `shift` is `x^(8n) mod P` at [`port_change_slot`].  Why that slot: the
/// change of the 4 port bytes, read as the register `r = delta` (little
/// endian), moves the CRC by `crc_linear(delta)·x^(8(L-4)) = r·x^32·x^(8(L-4))
/// = r·x^(8L)`.  One port changes 16 bits of r.  The destination port is
/// bytes 2..4: bits 16..31 of r, the coefficients of x^15..x^0, so `r` is a
/// polynomial of degree < 16 and the product needs 16 steps with x^(8L).
/// The source port is bytes 0..2: bits 0..15, the coefficients of
/// x^31..x^16, that is `r = r'·x^16` with `r' = r << 16` of degree < 16:
/// the product is `r'·x^(8(L+2))`.  Either way the multiplier's nonzero
/// coefficients are its 16 lowest, and a 16-step multiply suffices; there
/// is no `crc_linear` step at all (folded into the table index).
///
/// An all-zero field stays zero (RFC 9653, as in
/// [`updated_checksum_field_for_port_rewrite`]), by a mask, not a branch.
/// A wrong CRC stays wrong by the same error.
#[must_use]
#[inline(always)]
pub const fn field_after_port_change(old_field: [u8; 4], old_port: [u8; 2], new_port: [u8; 2], shift: u32) -> [u8; 4] {
    let old_check = crc_from_field_bytes(old_field);
    // The port's change, at bits 16..31 of the register (x^15..x^0).
    let multiplier = (((old_port[0] ^ new_port[0]) as u32) | (((old_port[1] ^ new_port[1]) as u32) << 8)) << 16;
    let mut change = 0u32;
    let mut shift_times_x_power = shift;
    macro_rules! step {
        ($($i:literal)*) => {$(
            change ^= shift_times_x_power & ((multiplier >> (31 - $i)) & 1).wrapping_neg();
            shift_times_x_power = mul_x_mod_p(shift_times_x_power);
        )*};
    }
    step!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14);
    change ^= shift_times_x_power & ((multiplier >> 16) & 1).wrapping_neg();
    // All ones unless the field is zero.
    let keep_zero = ((old_check | old_check.wrapping_neg()) >> 31).wrapping_neg();
    crc_to_field_bytes(old_check ^ (change & keep_zero))
}

/// Rows of the nibble table ([`fill_nibble_table`]): row q holds
/// `v(x)·x^(4q) mod P` for the 16 polynomials v of degree < 4.  A power of
/// two, so an index is masked into the table; it covers the rows a one-port
/// change of any SCTP packet up to `SHIFT_TABLE_MAX_N + 4` bytes reads
/// (q < 2·(L + 2) + 4).
pub const NIBBLE_ROWS: usize = 32768;
const _: () = assert!(NIBBLE_ROWS.is_power_of_two() && NIBBLE_ROWS > 2 * (SHIFT_TABLE_LEN + SCTP_PORTS_LEN + 2) + 4);

/// Entries of the nibble table: 16 per row (2 MiB of `u32`s, one BPF map value).
pub const NIBBLE_TABLE_LEN: usize = NIBBLE_ROWS * 16;

/// Fills the nibble table: entry `16·q + i` is the polynomial whose
/// coefficients of x^0..x^3 are the bits 3..0 of i (the order they have in
/// the reflected register, bit 31 down), times x^(4q), mod P.
pub fn fill_nibble_table(table: &mut [u32]) {
    let mut power = POLY_ONE_REFLECTED;
    for row in table.chunks_exact_mut(16) {
        let x1 = mul_x_mod_p(power);
        let x2 = mul_x_mod_p(x1);
        let x3 = mul_x_mod_p(x2);
        let terms = [x3, x2, x1, power];
        for (i, entry) in row.iter_mut().enumerate() {
            *entry = (0..4).filter(|bit| i & (1 << bit) != 0).fold(0, |sum, bit| sum ^ terms[bit]);
        }
        power = mul_x_mod_p(x3);
    }
}

/// [`field_after_port_change`] by table: four lookups in the nibble table
/// instead of the 16-step multiply, about 30 BPF instructions, no branch.
/// What the XDP program runs: the verifier walks the update once per path
/// that reaches a rewrite, thousands of times in the SCTP programs, and the
/// multiply's ~120 instructions there took it past its 1,000,000.
///
/// The change multiplies the port's 16-bit difference (coefficients x^0 to
/// x^15, see [`field_after_port_change`]) by x^(8m), m = L for the
/// destination port and L + 2 for the source port.  Split the difference
/// into four nibbles n_k (coefficients x^(4k)..x^(4k+3)):
/// `Σ n_k(x)·x^(4k)·x^(8m) = Σ n_k(x)·x^(4(2m+k))`, one table row each.
#[must_use]
#[inline(always)]
pub fn field_after_port_change_by_nibbles(old_field: [u8; 4], old_port: [u8; 2], new_port: [u8; 2], sctp_packet_len: usize, source: bool, table: &[u32; NIBBLE_TABLE_LEN]) -> [u8; 4] {
    let old_check = crc_from_field_bytes(old_field);
    let multiplier = (((old_port[0] ^ new_port[0]) as u32) | (((old_port[1] ^ new_port[1]) as u32) << 8)) << 16;
    let first_row = 2 * (sctp_packet_len + if source { 2 } else { 0 });
    let entry = |k: usize| {
        let nibble = ((multiplier >> (28 - 4 * k)) & 0xf) as usize;
        table[((((first_row + k) & (NIBBLE_ROWS - 1)) << 4) | nibble) & (NIBBLE_TABLE_LEN - 1)]
    };
    let change = entry(0) ^ entry(1) ^ entry(2) ^ entry(3);
    let keep_zero = ((old_check | old_check.wrapping_neg()) >> 31).wrapping_neg();
    crc_to_field_bytes(old_check ^ (change & keep_zero))
}

#[cfg(test)]
mod tests {
    use super::{
        CRC32C_POLY_REFLECTED, CRC32C_TABLE, POLY_ONE_REFLECTED, POLY_X8_REFLECTED,
        SHIFT_TABLE_LEN, crc_linear_4, crc32c, gf2_mulmod, mul_x_mod_p, shift_table_index,
        x8n_mod_p,
    };

    #[test]
    fn catalogue_check_value() {
        // CRC-32/ISCSI "check" entry of the CRC catalogue.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn empty_input_is_zero() {
        // Preset all ones, complemented at the end, nothing in between.
        assert_eq!(crc32c(&[]), 0);
    }

    #[test]
    fn table_matches_known_entries() {
        assert_eq!(CRC32C_TABLE[0], 0);
        // Entries of the published reflected Castagnoli table.  Byte 0x80 is
        // x^24 in the register; times x^8 that is x^32 ≡ P - x^32.
        assert_eq!(CRC32C_TABLE[1], 0xF26B_8303);
        assert_eq!(CRC32C_TABLE[128], CRC32C_POLY_REFLECTED);
        assert_eq!(CRC32C_TABLE[255], 0xAD7D_5351);
    }

    #[test]
    fn x_to_the_32_reduces_to_the_polynomial_constant() {
        // x^32 ≡ P(x) - x^32, which is exactly what the constant encodes.
        assert_eq!(x8n_mod_p(4), CRC32C_POLY_REFLECTED);
        assert_eq!(x8n_mod_p(0), POLY_ONE_REFLECTED);
        assert_eq!(x8n_mod_p(1), POLY_X8_REFLECTED);
        // x^31 is the reflected bit 0; one more x overflows into P.
        assert_eq!(mul_x_mod_p(1), CRC32C_POLY_REFLECTED);
    }

    #[test]
    fn one_is_the_multiplicative_identity() {
        for value in [0, 1, 0xDEAD_BEEF, CRC32C_POLY_REFLECTED, u32::MAX] {
            assert_eq!(gf2_mulmod(POLY_ONE_REFLECTED, value), value);
            assert_eq!(gf2_mulmod(value, POLY_ONE_REFLECTED), value);
            assert_eq!(gf2_mulmod(0, value), 0);
        }
    }

    /// The one-port form against the four-byte form and a full
    /// recomputation, at every packet length the datapath translates.
    #[test]
    fn one_port_update_is_the_four_byte_update() {
        use super::{SCTP_PORTS_LEN, SHIFT_TABLE_MAX_N, field_after_port_change, fill_shift_table, port_change_slot, sctp_checksum, updated_checksum_field_for_port_rewrite, write_sctp_checksum, SHIFT_SLOTS};
        let mut table = std::vec![0u32; SHIFT_SLOTS];
        fill_shift_table(&mut table);
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u32
        };
        let longest = SHIFT_TABLE_MAX_N as usize + SCTP_PORTS_LEN;
        let mut packet = std::vec![0u8; longest];
        for byte in packet.iter_mut() {
            *byte = next() as u8;
        }
        for len in 12..=longest {
            let packet = &mut packet[..len];
            let good = sctp_checksum(packet);
            // Every fifth packet arrives with a wrong CRC.
            let error = if len % 5 == 0 { next() | 1 } else { 0 };
            write_sctp_checksum(packet, good ^ error).unwrap();
            let source = len % 2 == 0;
            let at = if source { 0 } else { 2 };
            let old_ports: [u8; 4] = packet[..4].try_into().unwrap();
            let new_port = (next() as u16).to_ne_bytes();
            let field: [u8; 4] = packet[8..12].try_into().unwrap();
            let got = field_after_port_change(field, [old_ports[at], old_ports[at + 1]], new_port, table[port_change_slot(len, source)]);
            let mut new_ports = old_ports;
            new_ports[at..at + 2].copy_from_slice(&new_port);
            assert_eq!(got, updated_checksum_field_for_port_rewrite(field, old_ports, new_ports, table[len - 4]), "length {len}");
            packet[at..at + 2].copy_from_slice(&new_port);
            assert_eq!(u32::from_le_bytes(got), sctp_checksum(packet) ^ error, "length {len}: off by anything but the error it came with");
        }
        assert_eq!(field_after_port_change([0; 4], [1, 2], [3, 4], table[100]), [0; 4], "RFC 9653 zero stays zero");
    }

    /// The nibble-table form is the multiply form, at every length and for
    /// both ports.
    #[test]
    fn nibble_update_is_the_multiply_update() {
        use super::{NIBBLE_TABLE_LEN, SCTP_PORTS_LEN, SHIFT_SLOTS, SHIFT_TABLE_MAX_N, field_after_port_change, field_after_port_change_by_nibbles, fill_nibble_table, fill_shift_table, port_change_slot};
        let mut shifts = std::vec![0u32; SHIFT_SLOTS];
        fill_shift_table(&mut shifts);
        let mut nibbles: std::boxed::Box<[u32; NIBBLE_TABLE_LEN]> = std::vec![0u32; NIBBLE_TABLE_LEN].into_boxed_slice().try_into().unwrap();
        fill_nibble_table(&mut nibbles[..]);
        let mut state = 0x0123_4567_89AB_CDEFu64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u32
        };
        for len in 12..=SHIFT_TABLE_MAX_N as usize + SCTP_PORTS_LEN {
            for source in [true, false] {
                let (field, old, new) = (next().to_ne_bytes(), (next() as u16).to_ne_bytes(), (next() as u16).to_ne_bytes());
                assert_eq!(
                    field_after_port_change_by_nibbles(field, old, new, len, source, &nibbles),
                    field_after_port_change(field, old, new, shifts[port_change_slot(len, source)]),
                    "length {len}, source {source}"
                );
            }
        }
    }

    #[test]
    fn linear_crc_of_zero_is_zero() {
        assert_eq!(crc_linear_4([0; 4]), 0);
    }

    #[test]
    fn shift_index_bounds() {
        assert_eq!(shift_table_index(3), None);
        assert_eq!(shift_table_index(4), Some(0));
        assert_eq!(shift_table_index(12), Some(8));
        assert_eq!(shift_table_index(9004), Some(9000));
        assert_eq!(shift_table_index(9005), None);
        assert_eq!(SHIFT_TABLE_LEN, 9001);
    }

    #[test]
    fn functions_are_usable_in_const_context() {
        // The datapath may want compile-time constants (e.g. for fixed
        // lengths); this fails to compile if a hot function stops being const.
        const SHIFT_FOR_16_BYTES: u32 = x8n_mod_p(12);
        const DELTA_CRC: u32 = crc_linear_4([0x13, 0x88, 0, 0]);
        const PRODUCT: u32 = gf2_mulmod(DELTA_CRC, SHIFT_FOR_16_BYTES);
        assert_eq!(
            PRODUCT,
            gf2_mulmod(crc_linear_4([0x13, 0x88, 0, 0]), x8n_mod_p(12))
        );
    }
}
