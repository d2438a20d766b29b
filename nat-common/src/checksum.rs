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

/// The pseudo-header sum a receiver starts a TCP/UDP check with.
pub fn pseudo_header_sum(src: [u8; 4], dst: [u8; 4], proto: u8, l4_len: u16) -> u32 {
    let mut pseudo = [0u8; 12];
    pseudo[..4].copy_from_slice(&src);
    pseudo[4..8].copy_from_slice(&dst);
    pseudo[9] = proto;
    pseudo[10..12].copy_from_slice(&l4_len.to_be_bytes());
    sum_words(&pseudo, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
    }
}
