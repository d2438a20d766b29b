//! Internet checksum arithmetic (RFC 1071) and incremental updates (RFC 1624).
//!
//! Words are taken in memory order (`u16::from_ne_bytes` of the two wire
//! bytes). One's complement addition is byte-order independent, so a checksum
//! computed over memory-order words and stored back in memory order is the
//! wire checksum on any host: neither side ever swaps.

/// Folds a 32-bit one's complement accumulator to 16 bits.
#[inline(always)]
pub const fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// RFC 1624, eqn. 3: `HC' = ~(~HC + ~m + m')` for one 16-bit word changing
/// from `old` to `new`. Unlike eqn. 2 it never produces a -0 the receiver
/// would compute differently.
#[inline(always)]
pub const fn replace16(check: u16, old: u16, new: u16) -> u16 {
    let sum = (!check as u32) + (!old as u32) + (new as u32);
    !fold(sum)
}

/// `replace16` for a 32-bit field (an IPv4 address), given in memory order.
#[inline(always)]
pub const fn replace32(check: u16, old: u32, new: u32) -> u16 {
    let o = old.to_ne_bytes();
    let n = new.to_ne_bytes();
    let sum = (!check as u32)
        + (!u16::from_ne_bytes([o[0], o[1]]) as u32)
        + (!u16::from_ne_bytes([o[2], o[3]]) as u32)
        + (u16::from_ne_bytes([n[0], n[1]]) as u32)
        + (u16::from_ne_bytes([n[2], n[3]]) as u32);
    !fold(sum)
}

/// The UDP checksum after an incremental update. A zero checksum means "none"
/// (RFC 768) and stays zero; a computed zero is sent as all ones.
#[inline(always)]
pub const fn udp_fixup(before: u16, updated: u16) -> u16 {
    if before == 0 {
        0
    } else if updated == 0 {
        0xffff
    } else {
        updated
    }
}

/// One's complement sum of `data` (odd length padded with a zero byte),
/// added to `initial`. Not folded.
pub fn sum_words(data: &[u8], initial: u32) -> u32 {
    let mut sum = initial as u64;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u16::from_ne_bytes([c[0], c[1]]) as u64;
    }
    if let [last] = chunks.remainder() {
        sum += u16::from_ne_bytes([*last, 0]) as u64;
    }
    while sum >> 32 != 0 {
        sum = (sum & 0xffff_ffff) + (sum >> 32);
    }
    sum as u32
}

/// The Internet checksum of `data` (for the IPv4 header and ICMP: the data with
/// its checksum field zeroed).
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum_words(data, 0))
}

/// The TCP/UDP checksum of `segment` (checksum field zeroed) with the IPv4
/// pseudo-header. Returns the raw result; a UDP sender maps 0 to 0xffff.
pub fn l4_checksum(src: [u8; 4], dst: [u8; 4], proto: u8, segment: &[u8]) -> u16 {
    let mut pseudo = [0u8; 12];
    pseudo[..4].copy_from_slice(&src);
    pseudo[4..8].copy_from_slice(&dst);
    pseudo[9] = proto;
    pseudo[10..12].copy_from_slice(&(segment.len() as u16).to_be_bytes());
    !fold(sum_words(segment, sum_words(&pseudo, 0)))
}

/// True when `data` (checksum field included) sums to all ones: the receiver's
/// check (RFC 1071).
pub fn verifies(data: &[u8], initial: u32) -> bool {
    fold(sum_words(data, initial)) == 0xffff
}

/// The pseudo-header sum a receiver starts a TCP/UDP check with (RFC 793,
/// RFC 768): addresses as they sit in the header, `l4_len` in host order. Not
/// folded.
#[inline(always)]
pub const fn pseudo_header_sum(src: [u8; 4], dst: [u8; 4], proto: u8, l4_len: u16) -> u32 {
    pseudo_header_sum_of(u32::from_ne_bytes(src), u32::from_ne_bytes(dst), proto, l4_len)
}

/// `pseudo_header_sum` of the addresses as loaded (`u32::from_ne_bytes` of
/// their bytes, network order): each address is its two 16-bit words,
/// whichever half of the u32 each is in. Plain arithmetic so the datapath,
/// which reads an address as two aligned words, uses it too.
#[inline(always)]
pub const fn pseudo_header_sum_of(src_be: u32, dst_be: u32, proto: u8, l4_len: u16) -> u32 {
    (src_be & 0xffff) + (src_be >> 16) + (dst_be & 0xffff) + (dst_be >> 16)
        // The protocol is the second byte of its word (the first is zero).
        + u16::from_ne_bytes([0, proto]) as u32
        + u16::from_ne_bytes(l4_len.to_be_bytes()) as u32
}

/// One's complement sum (not folded) of `N` bytes (an even `N`) taken as
/// 16-bit words in memory order, summed by their place in a word
/// (`word_sum`).
#[inline(always)]
pub const fn sum_bytes<const N: usize>(bytes: &[u8; N]) -> u32 {
    const { assert!(N.is_multiple_of(2) && N <= 256) };
    let (mut first, mut second) = (0u32, 0u32);
    let mut i = 0;
    while i < N {
        first += bytes[i] as u32;
        second += bytes[i + 1] as u32;
        i += 2;
    }
    word_sum(first, second)
}

/// One's complement sum (not folded) of `N` 16-bit words as loaded, native
/// order: the same sum `sum_bytes` gives for their bytes.
#[inline(always)]
pub const fn sum_words16<const N: usize>(words: &[u16; N]) -> u32 {
    // Under 2^23: no carry out of the u32.
    const { assert!(N <= 128) };
    let mut sum = 0u32;
    let mut i = 0;
    while i < N {
        sum += words[i] as u32;
        i += 1;
    }
    sum
}

/// The sum of 16-bit words in memory order, from the sum of their first
/// bytes and the sum of their second bytes (each under 2^24): a word is
/// `first + (second << 8)` on a little-endian host, the shifts swap on big
/// endian. For bytes read one at a time (the IP options the datapath copies
/// out of the packet), this saves assembling words.
#[inline(always)]
pub const fn word_sum(first: u32, second: u32) -> u32 {
    const FIRST_SHIFT: u32 = if cfg!(target_endian = "little") { 0 } else { 8 };
    const SECOND_SHIFT: u32 = 8 - FIRST_SHIFT;
    (first << FIRST_SHIFT) + (second << SECOND_SHIFT)
}

/// One's complement addition of two 32-bit partial sums (end-around carry):
/// chains the sums of separate parts (pseudo-header, pieces of a segment).
#[inline(always)]
pub const fn add(a: u32, b: u32) -> u32 {
    let (sum, carry) = a.overflowing_add(b);
    // a + b < 2^33 - 1, so the low half is at most 2^32 - 2 when it carries.
    sum + carry as u32
}

/// True when a TCP or UDP checksum field holds the folded pseudo-header sum
/// and nothing else, not complemented: what a Linux sender with TX checksum
/// offload leaves for the NIC to finish (CHECKSUM_PARTIAL, the field is
/// `~tcp_v4_check(len, saddr, daddr, 0)`). XDP cannot see `ip_summed`, and a
/// redirected frame reaches the receiver as CHECKSUM_NONE, so the datapath
/// must finish it. A full checksum equal to this by chance (1 in 65536) cannot
/// be told apart; recomputing it gives the same value, so that is harmless.
#[inline(always)]
pub const fn is_partial(check: u16, pseudo: u32) -> bool {
    check == fold(pseudo)
}

/// The full TCP/UDP checksum of a segment whose words (checksum field zeroed)
/// sum to `segment`, under the pseudo-header sum `pseudo`. A computed zero is
/// sent as all ones for UDP, where zero means "no checksum" (RFC 768).
#[inline(always)]
pub const fn finish(pseudo: u32, segment: u32, udp: bool) -> u16 {
    let check = !fold(add(pseudo, segment));
    if udp && check == 0 { 0xffff } else { check }
}

/// `bpf_csum_diff` sums at most this many bytes per call (its scratch buffer
/// holds 128 words), and only whole 4-byte words.
pub const CSUM_CHUNK: usize = 512;

/// Whole chunks the datapath sums at most: the L4 segment of a 9000-byte
/// jumbo frame (8980 bytes behind a minimal IPv4 header) fits in 18.
pub const CSUM_MAX_CHUNKS: usize = 18;

/// The longest L4 segment whose checksum the datapath computes in full.
pub const CSUM_MAX_LEN: usize = CSUM_CHUNK * CSUM_MAX_CHUNKS;

const _: () = {
    const JUMBO_MTU: usize = 9000;
    const IPV4_MIN_HEADER: usize = 20;
    assert!(CSUM_MAX_LEN >= JUMBO_MTU - IPV4_MIN_HEADER);
    assert!(CSUM_CHUNK.is_multiple_of(4) && CSUM_CHUNK <= 512);
};

/// The pieces summed after the whole chunks, largest first: one for each set
/// bit of `len % CSUM_CHUNK` that is a multiple of 4, each with one constant
/// size the verifier can check. The last 1-3 bytes are summed by hand.
pub const CSUM_TAIL_PIECES: [usize; 7] = [256, 128, 64, 32, 16, 8, 4];

// Together the pieces cover every remainder below a chunk that is a
// multiple of 4.
const _: () = {
    let mut total = 0;
    let mut i = 0;
    while i < CSUM_TAIL_PIECES.len() {
        total += CSUM_TAIL_PIECES[i];
        i += 1;
    }
    assert!(total == CSUM_CHUNK - 4);
};

/// Where the piece of `size` bytes (a power of two below `CSUM_CHUNK`) starts
/// in a segment of `len` bytes: after the whole chunks and every larger piece,
/// which are exactly the bits of `len` above `size`. The segment has that
/// piece when `len & size != 0`. Computed from `len` alone, not from the
/// pieces taken before it, so the verifier sees the same offset whichever
/// pieces came first and its states merge.
#[inline(always)]
pub const fn piece_offset(len: usize, size: usize) -> usize {
    len & !(2 * size - 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// `sum_bytes` is the word sum `sum_words` computes, folded alike.
        #[test]
        fn sum_bytes_is_the_word_sum(bytes in proptest::array::uniform20(any::<u8>())) {
            prop_assert_eq!(fold(sum_bytes(&bytes)), fold(sum_words(&bytes, 0)));
        }

        /// The pseudo-header summed from loaded addresses is the word sum of
        /// the RFC 793 pseudo-header's 12 bytes, to the bit.
        #[test]
        fn pseudo_header_sum_of_is_the_pseudo_headers_word_sum(src in any::<[u8; 4]>(), dst in any::<[u8; 4]>(), proto in any::<u8>(), len in any::<u16>()) {
            let mut pseudo = [0u8; 12];
            pseudo[..4].copy_from_slice(&src);
            pseudo[4..8].copy_from_slice(&dst);
            pseudo[9] = proto;
            pseudo[10..].copy_from_slice(&len.to_be_bytes());
            prop_assert_eq!(pseudo_header_sum_of(u32::from_ne_bytes(src), u32::from_ne_bytes(dst), proto, len), sum_words(&pseudo, 0));
        }

        /// The header summed as loaded 16-bit words is the byte sum, to the bit.
        #[test]
        fn sum_words16_is_sum_bytes(bytes in proptest::array::uniform20(any::<u8>())) {
            let words: [u16; 10] = core::array::from_fn(|i| u16::from_ne_bytes([bytes[2 * i], bytes[2 * i + 1]]));
            prop_assert_eq!(sum_words16(&words), sum_bytes(&bytes));
        }
    }

    /// RFC 1071 section 3 example, in memory order on this host.
    #[test]
    fn rfc1071_example() {
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum_words(&data, 0)).to_ne_bytes(), [0xdd, 0xf2]);
    }

    /// RFC 1624 section 4: eqn. 3 gives 0x0000, not the -0 of eqn. 2.
    #[test]
    fn rfc1624_example_no_negative_zero() {
        let hc = u16::from_be(0xdd2f);
        let m = u16::from_be(0x5555);
        let m2 = u16::from_be(0x3285);
        assert_eq!(u16::from_be(replace16(hc, m, m2)), 0x0000);
    }

    #[test]
    fn udp_zero_checksum_stays_zero() {
        assert_eq!(udp_fixup(0, replace16(0, 1, 2)), 0);
        assert_eq!(udp_fixup(0x1234, 0), 0xffff);
        assert_eq!(udp_fixup(0x1234, 0x5678), 0x5678);
    }

    fn word(data: &[u8], at: usize) -> u16 {
        u16::from_ne_bytes([data[at], data[at + 1]])
    }
    fn addr(data: &[u8], at: usize) -> u32 {
        u32::from_ne_bytes(data[at..at + 4].try_into().unwrap())
    }

    /// The datapath's summation, on the host: whole chunks, then the pieces,
    /// then 2 and 1 bytes by hand (a lone last byte padded with zero).
    fn sum_in_pieces(seg: &[u8]) -> u32 {
        let len = seg.len();
        let mut sum = 0u32;
        for i in 0..CSUM_MAX_CHUNKS {
            if (i + 1) * CSUM_CHUNK > len {
                break;
            }
            sum = sum_words(&seg[i * CSUM_CHUNK..(i + 1) * CSUM_CHUNK], sum);
        }
        for size in CSUM_TAIL_PIECES {
            if len & size != 0 {
                let at = piece_offset(len, size);
                sum = add(sum, sum_words(&seg[at..at + size], 0));
            }
        }
        if len & 2 != 0 {
            let at = piece_offset(len, 2);
            sum = add(sum, u16::from_ne_bytes([seg[at], seg[at + 1]]) as u32);
        }
        if len & 1 != 0 {
            sum = add(sum, u16::from_ne_bytes([seg[len - 1], 0]) as u32);
        }
        sum
    }

    proptest! {
        /// An IPv4 header whose source address and TTL change: the incremental
        /// checksum equals a full recomputation.
        #[test]
        fn ipv4_header_incremental_matches_full(
            mut hdr in proptest::collection::vec(any::<u8>(), 20..=60),
            new_src in any::<[u8; 4]>(),
            ttl in 2u8..=255,
        ) {
            let len = hdr.len() & !3;
            hdr.truncate(len);
            hdr[0] = 0x40 | (len / 4) as u8;
            hdr[8] = ttl;
            hdr[10] = 0; hdr[11] = 0;
            let c = checksum(&hdr);
            hdr[10..12].copy_from_slice(&c.to_ne_bytes());
            prop_assert!(verifies(&hdr, 0));

            let old_src = addr(&hdr, 12);
            let old_ttl_word = word(&hdr, 8);
            hdr[12..16].copy_from_slice(&new_src);
            hdr[8] = ttl - 1;
            let mut inc = replace32(word(&hdr, 10), old_src, addr(&hdr, 12));
            inc = replace16(inc, old_ttl_word, word(&hdr, 8));
            hdr[10..12].copy_from_slice(&inc.to_ne_bytes());
            prop_assert!(verifies(&hdr, 0));

            hdr[10] = 0; hdr[11] = 0;
            let full = checksum(&hdr);
            // 0x0000 and 0xffff are the same number in one's complement.
            prop_assert!(inc == full || (inc | full) == 0xffff && (inc & full) == 0,
                "incremental {inc:#06x} full {full:#06x}");
        }

        /// A TCP or UDP segment whose address (pseudo-header) and port change.
        #[test]
        fn l4_incremental_matches_full(
            seg in proptest::collection::vec(any::<u8>(), 8..200),
            src in any::<[u8; 4]>(), dst in any::<[u8; 4]>(),
            new_addr in any::<[u8; 4]>(), new_port in any::<u16>(),
            udp in any::<bool>(), rewrite_source in any::<bool>(),
        ) {
            let (proto, check_at) = if udp { (17u8, 6usize) } else { (6u8, 16usize) };
            let mut seg = seg;
            if seg.len() < check_at + 2 { seg.resize(check_at + 2, 0); }
            seg[check_at] = 0; seg[check_at + 1] = 0;
            let c = l4_checksum(src, dst, proto, &seg);
            let c = if udp && c == 0 { 0xffff } else { c };
            seg[check_at..check_at + 2].copy_from_slice(&c.to_ne_bytes());

            let (port_at, old_addr) = if rewrite_source { (0, src) } else { (2, dst) };
            let old_port = word(&seg, port_at);
            seg[port_at..port_at + 2].copy_from_slice(&new_port.to_ne_bytes());
            let mut inc = replace32(c, u32::from_ne_bytes(old_addr), u32::from_ne_bytes(new_addr));
            inc = replace16(inc, old_port, new_port);
            if udp { inc = udp_fixup(c, inc); }
            seg[check_at..check_at + 2].copy_from_slice(&inc.to_ne_bytes());

            let (s, d) = if rewrite_source { (new_addr, dst) } else { (src, new_addr) };
            let init = pseudo_header_sum(s, d, proto, seg.len() as u16);
            prop_assert!(verifies(&seg, init), "checksum {inc:#06x} does not verify");
            prop_assert!(!udp || inc != 0, "a UDP checksum must never become 0");
        }

        /// ICMP echo: only the identifier changes, no pseudo-header.
        #[test]
        fn icmp_identifier_incremental_matches_full(
            mut msg in proptest::collection::vec(any::<u8>(), 8..120),
            new_id in any::<u16>(),
        ) {
            msg[2] = 0; msg[3] = 0;
            let c = checksum(&msg);
            msg[2..4].copy_from_slice(&c.to_ne_bytes());
            let old_id = word(&msg, 4);
            msg[4..6].copy_from_slice(&new_id.to_ne_bytes());
            let inc = replace16(c, old_id, new_id);
            msg[2..4].copy_from_slice(&inc.to_ne_bytes());
            prop_assert!(verifies(&msg, 0));
        }

        /// The byte-wise pseudo-header sum equals the sum of the 12-byte
        /// pseudo-header's words (RFC 793 section 3.1).
        #[test]
        fn pseudo_header_sum_matches_the_header_layout(
            src in any::<[u8; 4]>(), dst in any::<[u8; 4]>(), proto in any::<u8>(), len in any::<u16>(),
        ) {
            let mut pseudo = [0u8; 12];
            pseudo[..4].copy_from_slice(&src);
            pseudo[4..8].copy_from_slice(&dst);
            pseudo[9] = proto;
            pseudo[10..12].copy_from_slice(&len.to_be_bytes());
            prop_assert_eq!(fold(pseudo_header_sum(src, dst, proto, len)), fold(sum_words(&pseudo, 0)));
        }

        /// Every length up to the bound: the pieces tile the segment exactly.
        #[test]
        fn pieces_sum_to_the_whole(seg in proptest::collection::vec(any::<u8>(), 0..=CSUM_MAX_LEN)) {
            prop_assert_eq!(fold(sum_in_pieces(&seg)), fold(sum_words(&seg, 0)));
        }

        #[test]
        fn add_is_ones_complement_addition(a in any::<u32>(), b in any::<u32>()) {
            let wide = a as u64 + b as u64;
            let folded = (wide & 0xffff_ffff) + (wide >> 32);
            prop_assert_eq!(add(a, b) as u64, folded);
        }

        /// A segment sent with TX offload (field = pseudo-header sum) is seen
        /// as partial, and `finish` over the translated pseudo-header gives a
        /// checksum the receiver accepts.
        #[test]
        fn partial_checksum_is_detected_and_finished(
            seg in proptest::collection::vec(any::<u8>(), 8..1600),
            src in any::<[u8; 4]>(), dst in any::<[u8; 4]>(), new_src in any::<[u8; 4]>(),
            udp in any::<bool>(),
        ) {
            let (proto, check_at) = if udp { (17u8, 6usize) } else { (6u8, 16usize) };
            let mut seg = seg;
            if seg.len() < check_at + 2 { seg.resize(check_at + 2, 0); }
            let len = seg.len() as u16;
            let partial = fold(pseudo_header_sum(src, dst, proto, len));
            seg[check_at..check_at + 2].copy_from_slice(&partial.to_ne_bytes());
            let check = u16::from_ne_bytes([seg[check_at], seg[check_at + 1]]);
            prop_assert!(is_partial(check, pseudo_header_sum(src, dst, proto, len)));

            seg[check_at] = 0; seg[check_at + 1] = 0;
            let pseudo = pseudo_header_sum(new_src, dst, proto, len);
            let full = finish(pseudo, sum_in_pieces(&seg), udp);
            seg[check_at..check_at + 2].copy_from_slice(&full.to_ne_bytes());
            prop_assert!(verifies(&seg, pseudo));
            prop_assert!(!udp || full != 0);
            let reference = l4_checksum(new_src, dst, proto, &{
                let mut z = seg.clone(); z[check_at] = 0; z[check_at + 1] = 0; z
            });
            prop_assert!(full == reference || udp && reference == 0 && full == 0xffff);
        }

        /// A full checksum that happens to equal the pseudo-header sum is
        /// taken for a partial one; finishing it gives the same value back.
        #[test]
        fn coincidental_full_checksum_is_finished_unchanged(
            seg in proptest::collection::vec(any::<u8>(), 22..400),
            src in any::<[u8; 4]>(), dst in any::<[u8; 4]>(),
        ) {
            // TCP: the checksum at 16, and the first payload word at 20 chosen
            // so that the full checksum comes out as the pseudo-header sum.
            let mut seg = seg;
            seg[16..22].fill(0);
            let pseudo = pseudo_header_sum(src, dst, 6, seg.len() as u16);
            let target = fold(pseudo);
            // The full checksum is !fold(pseudo + sum): it can never be all ones.
            prop_assume!(target != 0xffff);
            let rest = fold(add(pseudo, sum_words(&seg, 0)));
            let word = fold(add(!target as u32, !rest as u32));
            seg[20..22].copy_from_slice(&word.to_ne_bytes());
            let full = l4_checksum(src, dst, 6, &seg);
            prop_assert_eq!(full, target);
            prop_assert!(is_partial(full, pseudo));
            prop_assert_eq!(finish(pseudo, sum_words(&seg, 0), false), full);
        }
    }
}
