//! IPv4 options (RFC 791 3.1): whether an options area is well formed.
//!
//! RFC 1812 5.2.2 has a router drop a header it cannot make sense of; an
//! option whose length runs past the header would otherwise have the bytes
//! after it read as options, and the L4 header read from the wrong place.

/// The longest options area: IHL 15 is 60 bytes, 20 of them fixed.
pub const MAX_OPTIONS_LEN: usize = 40;

/// Option kinds that are a single byte: End of Option List and No
/// Operation. Every other option has a length byte that counts itself and
/// the kind byte.
const OPTION_END: u8 = 0;
const OPTION_NOP: u8 = 1;

/// Whether the options in the first `len` bytes of `options` (zero past
/// them) are well formed: every length at least 2 and ending within the
/// header; after End of Option List the rest is padding.
///
/// For the datapath: one pass over the positions, each a constant (the steps
/// are written out: a loop counter would address the bytes, and the verifier
/// would follow every option layout separately), tracking where the next
/// option starts. `next` is only compared, never used to address memory, so
/// the verifier keeps it imprecise and merges the paths it splits.
#[inline(always)]
pub fn fit(options: &[u8; MAX_OPTIONS_LEN], len: usize) -> bool {
    let mut walk = Walk { next: 0, ended: false, well_formed: true };
    macro_rules! steps {
        ($($at:literal)*) => { $(walk.step::<$at>(options);)* };
    }
    steps!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31 32 33 34 35 36 37 38 39);
    const _: () = assert!(MAX_OPTIONS_LEN == 40);
    // An End of Option List past `len` is the zero padding: the option
    // before it ran past the header.
    len <= MAX_OPTIONS_LEN && walk.well_formed && walk.next <= len
}

/// Where `fit` stands after each position.
struct Walk {
    /// Where the next option starts; after End of Option List, where that was.
    next: usize,
    /// End of Option List seen: the rest is padding.
    ended: bool,
    /// No option so far had a length below 2.
    well_formed: bool,
}

impl Walk {
    #[inline(always)]
    fn step<const AT: usize>(&mut self, options: &[u8; MAX_OPTIONS_LEN]) {
        if self.ended || self.next != AT {
            return;
        }
        match options[AT] {
            OPTION_END => self.ended = true,
            OPTION_NOP => self.next = AT + 1,
            _ => {
                let len = if AT + 1 < MAX_OPTIONS_LEN { options[(AT + 1) % MAX_OPTIONS_LEN] as usize } else { 0 };
                self.well_formed &= len >= 2;
                self.next = AT + if len == 0 { 1 } else { len };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// RFC 791 read plainly: walk the options one by one.
    fn reference(options: &[u8], len: usize) -> bool {
        let mut at = 0;
        while at < len {
            match options[at] {
                OPTION_END => return true,
                OPTION_NOP => at += 1,
                _ => {
                    let Some(&option_len) = options.get(at + 1).filter(|_| at + 1 < len) else { return false };
                    if option_len < 2 || at + option_len as usize > len {
                        return false;
                    }
                    at += option_len as usize;
                }
            }
        }
        true
    }

    fn area(bytes: &[u8]) -> [u8; MAX_OPTIONS_LEN] {
        let mut a = [0; MAX_OPTIONS_LEN];
        a[..bytes.len()].copy_from_slice(bytes);
        a
    }

    #[test]
    fn real_options_fit_and_lies_do_not() {
        // NOP NOP NOP EOL; Router Alert (RFC 2113); record route with room
        // for two addresses and padding; a timestamp filling the area.
        assert!(fit(&area(&[1, 1, 1, 0]), 4));
        assert!(fit(&area(&[148, 4, 0, 0]), 4));
        assert!(fit(&area(&[7, 11, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0]), 12));
        let mut timestamp = [0u8; 40];
        (timestamp[0], timestamp[1]) = (68, 40);
        assert!(fit(&timestamp, 40));
        assert!(!fit(&area(&[1, 7, 10, 0]), 4), "length past the header");
        assert!(!fit(&area(&[1, 7, 1, 0]), 4), "length below 2");
        assert!(!fit(&area(&[1, 1, 1, 7]), 4), "length byte past the header");
        assert!(!fit(&area(&[0x13, 0x88, 0x01, 0xbb]), 4), "UDP ports read as options");
    }

    proptest! {
        /// The written-out walk agrees with a plain one on any bytes.
        #[test]
        fn agrees_with_a_plain_walk(bytes in proptest::collection::vec(any::<u8>(), 1..=10), small in proptest::bool::ANY) {
            let len = bytes.len() * 4;
            let mut area = [0u8; MAX_OPTIONS_LEN];
            for (i, b) in bytes.iter().enumerate() {
                // Small kinds and lengths make the interesting layouts likely.
                area[4 * i] = if small { b % 4 } else { *b };
                area[4 * i + 1] = if small { b % 9 } else { b.rotate_left(3) };
                area[4 * i + 2] = if small { b % 3 } else { b.rotate_left(5) };
                area[4 * i + 3] = if small { b % 5 } else { b.rotate_left(1) };
            }
            prop_assert_eq!(fit(&area, len), reference(&area[..len], len));
        }
    }
}
