//! Cutting an IPv4 packet into fragments (RFC 791 §3.2, "Fragmentation"),
//! for a packet longer than the egress MTU with DF clear: a router
//! fragments what it forwards (RFC 1812 §4.2.2.7, §5.2.6), and the gateway
//! forwards. The datapath cannot make several packets of one, so it hands
//! such a packet to natd, which sends the pieces through the kernel.

use anyhow::{Result, ensure};
use nat_common::checksum;

use super::{Ipv4, MIN_HEADER, MORE_FRAGMENTS, OFFSET_MASK};

/// The smallest MTU every IPv4 link has (RFC 791: 68 bytes), so the
/// smallest one a packet is cut for.
pub const MIN_MTU: usize = 68;

/// `datagram` cut into packets of at most `mtu` bytes: the first keeps the
/// whole header, options included; the others carry only the options
/// whose copied flag is set. Each piece's data is a multiple of 8 bytes
/// but the last's; offsets count from the datagram's own (it may be a
/// fragment already), and the last piece keeps its More Fragments flag.
/// One piece, as it is, when it fits.
pub fn fragments(datagram: &[u8], mtu: usize) -> Result<Vec<Vec<u8>>> {
    let packet = Ipv4::read(datagram)?;
    let datagram = packet.datagram();
    if datagram.len() <= mtu {
        return Ok(vec![datagram.to_vec()]);
    }
    let header = packet.header();
    ensure!(!packet.dont_fragment(), "a packet with DF set is not fragmented");
    // A header is at most 60 bytes: 68 leaves every piece 8 bytes of data.
    ensure!(mtu >= MIN_MTU, "an MTU of {mtu} bytes is below IPv4's minimum of {MIN_MTU}");
    let later_header = later_header(header);
    let payload = packet.payload();
    let first_offset = usize::from(packet.fragment_offset()) * 8;
    let last_more = if packet.more_fragments() { MORE_FRAGMENTS } else { 0 };
    let mut pieces = Vec::new();
    let mut at = 0;
    while at < payload.len() {
        let head: &[u8] = if at == 0 { header } else { &later_header };
        let room = (mtu - head.len()) / 8 * 8;
        let len = room.min(payload.len() - at);
        let last = at + len == payload.len();
        let more = if last { last_more } else { MORE_FRAGMENTS };
        let offset = (first_offset + at) / 8;
        ensure!(offset <= usize::from(OFFSET_MASK), "fragment offset {offset} past the 13 bits of the field");
        let mut piece = Vec::with_capacity(head.len() + len);
        piece.extend_from_slice(head);
        piece.extend_from_slice(&payload[at..at + len]);
        piece[0] = 0x40 | (head.len() / 4) as u8;
        let total = piece.len() as u16;
        piece[2..4].copy_from_slice(&total.to_be_bytes());
        piece[6..8].copy_from_slice(&(more | offset as u16).to_be_bytes());
        piece[10..12].fill(0);
        // Summed and stored in memory order (`checksum::checksum`).
        let check = checksum::checksum(&piece[..head.len()]);
        piece[10..12].copy_from_slice(&check.to_ne_bytes());
        pieces.push(piece);
        at += len;
    }
    Ok(pieces)
}

/// The header of every fragment after the first: the fixed part, and the
/// options whose copied flag (the type's high bit) is set, padded with
/// End of Option List to a whole number of words (RFC 791 §3.1).
fn later_header(header: &[u8]) -> Vec<u8> {
    const END: u8 = 0;
    const NOP: u8 = 1;
    const COPIED: u8 = 0x80;
    let mut out = header[..MIN_HEADER].to_vec();
    let options = &header[MIN_HEADER..];
    let mut at = 0;
    while at < options.len() {
        match options[at] {
            END => break,
            NOP => at += 1,
            kind => {
                // `Ipv4::read` does not check option lengths: a length that
                // runs past the header ends the list.
                let Some(&len) = options.get(at + 1) else { break };
                let len = usize::from(len);
                if len < 2 || at + len > options.len() {
                    break;
                }
                if kind & COPIED != 0 {
                    out.extend_from_slice(&options[at..at + len]);
                }
                at += len;
            }
        }
    }
    while !out.len().is_multiple_of(4) {
        out.push(END);
    }
    out
}

#[cfg(test)]
mod tests {
    use nat_common::icmp::IP_DF;
    use proptest::prelude::*;

    use super::*;

    /// A UDP-like datagram: `options` after the fixed header, then `len`
    /// bytes of data, with `flags` (offset included) in the flags word.
    fn datagram(options: &[u8], len: usize, flags: u16) -> Vec<u8> {
        let header_len = MIN_HEADER + options.len();
        let mut ip = vec![0x40 | (header_len / 4) as u8, 0, 0, 0, 0x12, 0x34, 0, 0, 63, 17, 0, 0, 203, 0, 113, 1, 198, 51, 100, 7];
        ip.extend_from_slice(options);
        ip[2..4].copy_from_slice(&((header_len + len) as u16).to_be_bytes());
        ip[6..8].copy_from_slice(&flags.to_be_bytes());
        let check = checksum::checksum(&ip);
        ip[10..12].copy_from_slice(&check.to_ne_bytes());
        ip.extend((0..len).map(|i| (i % 251) as u8));
        ip
    }

    fn flags_of(piece: &[u8]) -> (bool, usize) {
        let word = u16::from_be_bytes([piece[6], piece[7]]);
        (word & MORE_FRAGMENTS != 0, usize::from(word & OFFSET_MASK) * 8)
    }

    /// Puts `pieces` back together as a receiver does: the data at each
    /// offset, checking each piece's own header on the way.
    fn reassemble(pieces: &[Vec<u8>], mtu: usize) -> (Vec<u8>, usize, bool) {
        let mut data = Vec::new();
        let mut start = None;
        let mut last_more = false;
        for piece in pieces {
            assert!(piece.len() <= mtu, "a piece of {} bytes over an MTU of {mtu}", piece.len());
            let ip = Ipv4::read(piece).unwrap();
            assert!(checksum::verifies(ip.header(), 0), "each piece's header checksum");
            assert_eq!((piece[4], piece[5], piece[8], piece[9]), (0x12, 0x34, 63, 17), "identification, TTL and protocol of the datagram");
            let (more, offset) = flags_of(piece);
            let start = *start.get_or_insert(offset);
            assert_eq!(offset - start, data.len(), "pieces in order, none missing");
            data.extend_from_slice(ip.payload());
            last_more = more;
        }
        (data, start.unwrap(), last_more)
    }

    #[test]
    fn a_packet_that_fits_is_one_piece_as_it_is() {
        let ip = datagram(&[], 1000, 0);
        assert_eq!(fragments(&ip, 1400).unwrap(), std::slice::from_ref(&ip));
        assert_eq!(fragments(&ip, 1020).unwrap(), [ip]);
    }

    #[test]
    fn pieces_hold_multiples_of_8_bytes_and_all_but_the_last_say_more() {
        let ip = datagram(&[], 1480, 0);
        let pieces = fragments(&ip, 1400).unwrap();
        let shape: Vec<(usize, bool, usize)> = pieces.iter().map(|p| (p.len(), flags_of(p).0, flags_of(p).1)).collect();
        assert_eq!(shape, [(1396, true, 0), (124, false, 1376)], "1376 = (1400 - 20) / 8 * 8 bytes of data first");
        assert_eq!(reassemble(&pieces, 1400).0, ip[20..]);
    }

    #[test]
    fn a_fragment_is_cut_from_its_own_offset_and_keeps_its_more_fragments_flag() {
        let middle = datagram(&[], 1480, MORE_FRAGMENTS | 100);
        let pieces = fragments(&middle, 1000).unwrap();
        let (data, start, last_more) = reassemble(&pieces, 1000);
        assert_eq!((start, last_more, data.as_slice()), (800, true, &middle[20..]));
        let last = datagram(&[], 1480, 100);
        assert!(!reassemble(&fragments(&last, 1000).unwrap(), 1000).2, "the datagram's last fragment stays last");
    }

    #[test]
    fn options_go_whole_in_the_first_piece_and_only_copied_ones_in_the_others() {
        // Record Route (7, not copied), a NOP, Security (130, copied, 11 bytes), End.
        let mut options = vec![7, 7, 4, 0, 0, 0, 0, 1];
        options.extend_from_slice(&[130, 11, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0]);
        let ip = datagram(&options, 1000, 0);
        let pieces = fragments(&ip, 600).unwrap();
        assert_eq!(&pieces[0][20..40], &ip[20..40], "the first piece: every option");
        assert_eq!(pieces[0][0] & 0x0f, 10);
        for later in &pieces[1..] {
            assert_eq!(later[0] & 0x0f, 8, "20 bytes, the 11 of Security and a pad to 32");
            assert_eq!(&later[20..32], &[130, 11, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0]);
        }
        assert_eq!(reassemble(&pieces, 600).0, ip[40..]);
    }

    #[test]
    fn df_set_or_an_mtu_below_68_is_refused_and_68_takes_the_longest_header() {
        let df = datagram(&[], 1480, IP_DF);
        assert!(fragments(&df, 1400).unwrap_err().to_string().contains("DF set"));
        assert!(fragments(&datagram(&[], 1480, 0), 60).unwrap_err().to_string().contains("minimum of 68"));
        let longest = datagram(&[1u8; 40], 200, 0);
        let pieces = fragments(&longest, MIN_MTU).unwrap();
        assert_eq!(pieces[0].len(), 68, "60 bytes of header, 8 of data");
        assert_eq!(reassemble(&pieces, MIN_MTU).0, longest[60..]);
    }

    proptest! {
        #[test]
        fn pieces_reassemble_to_the_datagram(len in 0usize..9000, mtu in MIN_MTU..9100, offset in 0u16..100, more: bool) {
            let flags = offset | if more { MORE_FRAGMENTS } else { 0 };
            let ip = datagram(&[], len, flags);
            let pieces = fragments(&ip, mtu).unwrap();
            let (data, start, last_more) = reassemble(&pieces, mtu);
            prop_assert_eq!(data.as_slice(), &ip[20..]);
            prop_assert_eq!(start, usize::from(offset) * 8);
            prop_assert_eq!(last_more, more);
            for piece in &pieces[..pieces.len() - 1] {
                prop_assert_eq!(Ipv4::read(piece).unwrap().payload().len() % 8, 0);
            }
        }
    }
}
