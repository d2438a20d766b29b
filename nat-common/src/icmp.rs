//! ICMP messages the gateway writes itself: Destination Unreachable /
//! Fragmentation Needed (RFC 792, RFC 1191) for a DF packet too big for the
//! egress after translation (RFC 4787 REQ-13), and the rate limit on them;
//! natd's Destination Unreachable for a refused flow (RFC 5508 REQ-8) is
//! built by the same function.

use crate::checksum::{add, fold};

/// ICMP Destination Unreachable.
pub const ICMP_DEST_UNREACHABLE: u8 = 3;
/// Code 4: fragmentation needed and DF set (RFC 792), with the next-hop MTU
/// in the low 16 bits of the second word (RFC 1191).
pub const ICMP_FRAG_NEEDED: u8 = 4;
/// Code 3: port unreachable (natd's answer to a flow to a forward with no
/// server up).
pub const ICMP_PORT_UNREACHABLE: u8 = 3;
/// Code 13: communication administratively prohibited (RFC 1812).
pub const ICMP_ADMIN_PROHIBITED: u8 = 13;

/// TTL of the errors the gateway sends.
pub const ERROR_TTL: u8 = 64;

/// Outer IPv4 header (20, no options) plus ICMP header (8): what the error
/// puts in front of the quoted packet.
pub const FRAG_NEEDED_HEADERS_LEN: usize = 28;

/// The IPv4 "don't fragment" bit in the flags/offset word (host order).
pub const IP_DF: u16 = 0x4000;

/// Bytes of the offending packet's L4 header that an error quotes after its
/// IPv4 header (RFC 792).
pub const QUOTED_L4_LEN: usize = 8;

/// The outer IPv4 and ICMP headers of a Fragmentation Needed error from
/// `src` to `dst` (wire order bytes) reporting `mtu` (host order), in front of
/// a quote of `quote_len` bytes whose words sum (one's complement, memory
/// order, not folded) to `quote_sum`. Every checksum is filled in.
#[inline(always)]
pub const fn frag_needed_headers(src: [u8; 4], dst: [u8; 4], mtu: u16, quote_len: u16, quote_sum: u32) -> [u8; FRAG_NEEDED_HEADERS_LEN] {
    unreachable_headers(src, dst, ICMP_FRAG_NEEDED, mtu, quote_len, quote_sum)
}

/// The outer IPv4 and ICMP headers of a Destination Unreachable of `code`
/// (with `mtu` in the second word, 0 unless Fragmentation Needed), as
/// `frag_needed_headers` describes.
///
/// The outer header: TOS 0, ID 0 with DF set (an atomic datagram, RFC 6864:
/// the ID means nothing), TTL `ERROR_TTL`, protocol ICMP.
#[inline(always)]
pub const fn unreachable_headers(src: [u8; 4], dst: [u8; 4], code: u8, mtu: u16, quote_len: u16, quote_sum: u32) -> [u8; FRAG_NEEDED_HEADERS_LEN] {
    let mut h = [0u8; FRAG_NEEDED_HEADERS_LEN];
    let tot_len = (FRAG_NEEDED_HEADERS_LEN as u16 + quote_len).to_be_bytes();
    let df = IP_DF.to_be_bytes();
    h[0] = 0x45;
    h[2] = tot_len[0];
    h[3] = tot_len[1];
    h[6] = df[0];
    h[7] = df[1];
    h[8] = ERROR_TTL;
    h[9] = crate::proto::ICMP;
    h[12] = src[0];
    h[13] = src[1];
    h[14] = src[2];
    h[15] = src[3];
    h[16] = dst[0];
    h[17] = dst[1];
    h[18] = dst[2];
    h[19] = dst[3];
    let ip_check = (!fold(sum_words_20(&h))).to_ne_bytes();
    h[10] = ip_check[0];
    h[11] = ip_check[1];

    h[20] = ICMP_DEST_UNREACHABLE;
    h[21] = code;
    let mtu = mtu.to_be_bytes();
    h[26] = mtu[0];
    h[27] = mtu[1];
    let icmp_sum = add(
        add(u16::from_ne_bytes([h[20], h[21]]) as u32, u16::from_ne_bytes([h[26], h[27]]) as u32),
        quote_sum,
    );
    let icmp_check = (!fold(icmp_sum)).to_ne_bytes();
    h[22] = icmp_check[0];
    h[23] = icmp_check[1];
    h
}

/// Sum of the first 20 bytes (the IPv4 header) as memory-order words.
#[inline(always)]
const fn sum_words_20(h: &[u8; FRAG_NEEDED_HEADERS_LEN]) -> u32 {
    let mut sum = 0u32;
    let mut i = 0;
    while i < 20 {
        sum += u16::from_ne_bytes([h[i], h[i + 1]]) as u32;
        i += 2;
    }
    sum
}

/// Fragmentation Needed errors a CPU may send back to back.
pub const FRAG_NEEDED_BURST: u64 = 20;
/// Sustained Fragmentation Needed errors per second and CPU. Path-MTU
/// discovery needs one per flow and path change; Linux's own limit
/// (net.ipv4.icmp_msgs_per_sec) is 1000 per second for the whole host.
pub const FRAG_NEEDED_PER_SEC: u64 = 100;

/// A token bucket as a GCRA (RFC 2697's single-rate idea, one timestamp):
/// `tat_ns` is when the bucket would be full again. One per CPU in the
/// `ICMP_RATE` per-CPU array, so no two writers share it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateLimit {
    /// Theoretical arrival time of the next message, ns, on the clock `allow` gets.
    pub tat_ns: u64,
}
const _: () = assert!(core::mem::size_of::<RateLimit>() == 8);

impl RateLimit {
    /// Interval between messages at the sustained rate.
    pub const COST_NS: u64 = 1_000_000_000 / FRAG_NEEDED_PER_SEC;

    /// True (and the message counted) when one more message may go at `now_ns`:
    /// at most `FRAG_NEEDED_BURST` back to back, then one per `COST_NS`.
    #[inline(always)]
    pub const fn allow(&mut self, now_ns: u64) -> bool {
        let tat = if self.tat_ns > now_ns { self.tat_ns } else { now_ns };
        let next = tat + Self::COST_NS;
        if next - now_ns > FRAG_NEEDED_BURST * Self::COST_NS {
            return false;
        }
        self.tat_ns = next;
        true
    }
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for RateLimit {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::{sum_words, verifies};

    #[test]
    fn frag_needed_headers_checksum_with_the_quote() {
        let quote: [u8; 28] = core::array::from_fn(|i| (i * 37 + 5) as u8);
        let h = frag_needed_headers([10, 77, 1, 1], [10, 77, 1, 10], 1400, 28, sum_words(&quote, 0));
        assert!(verifies(&h[..20], 0), "outer IPv4 checksum");
        let mut icmp = h[20..].to_vec();
        icmp.extend_from_slice(&quote);
        assert!(verifies(&icmp, 0), "ICMP checksum over header and quote");
        assert_eq!(u16::from_be_bytes([h[2], h[3]]), 56);
        assert_eq!((h[8], h[9], h[20], h[21]), (64, 1, 3, 4));
        assert_eq!(u16::from_be_bytes([h[26], h[27]]), 1400);
        assert_eq!(&h[12..20], &[10, 77, 1, 1, 10, 77, 1, 10]);
    }

    #[test]
    fn rate_limit_allows_a_burst_then_the_rate() {
        let mut r = RateLimit::default();
        let t0 = 5_000_000_000;
        for i in 0..FRAG_NEEDED_BURST {
            assert!(r.allow(t0), "message {i} of the burst refused");
        }
        assert!(!r.allow(t0), "a message beyond the burst went");
        assert!(!r.allow(t0 + RateLimit::COST_NS - 1));
        assert!(r.allow(t0 + RateLimit::COST_NS), "the rate did not refill");
        assert!(!r.allow(t0 + RateLimit::COST_NS));
        // Idle long enough: the whole burst again, never more.
        let later = t0 + 100 * RateLimit::COST_NS;
        let sent = (0..2 * FRAG_NEEDED_BURST).filter(|_| r.allow(later)).count() as u64;
        assert_eq!(sent, FRAG_NEEDED_BURST);
    }
}
