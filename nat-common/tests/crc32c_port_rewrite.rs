//! Property tests for the O(1) port-rewrite update and the GF(2) helpers it
//! is built from, checked against full recomputation and against the
//! `crc32c` crate.

use nat_common::crc32c::{
    POLY_ONE_REFLECTED, SHIFT_TABLE_LEN, SHIFT_TABLE_MAX_N, crc_linear_4, crc32c, fill_shift_table,
    gf2_mulmod, read_sctp_checksum, sctp_checksum, shift_table_index, update_for_port_rewrite,
    write_sctp_checksum, x8n_mod_p,
};
use proptest::collection::vec;
use proptest::prelude::{
    Just, Strategy, any, prop_assert_eq, prop_assert_ne, prop_oneof, proptest,
};

/// SplitMix64: a tiny deterministic generator so the exhaustive-length test
/// is reproducible without a dependency.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn fill(&mut self, bytes: &mut [u8]) {
        for chunk in bytes.chunks_mut(8) {
            let word = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }

    fn ports(&mut self) -> [u8; 4] {
        (self.next_u64() as u32).to_le_bytes()
    }
}

fn shift_table() -> Vec<u32> {
    let mut table = vec![0u32; SHIFT_TABLE_LEN];
    fill_shift_table(&mut table);
    table
}

/// `crc_linear` (zero preset, no final xor) of arbitrary data, bit by bit:
/// the definition, written independently of the crate's table and helpers.
fn crc_linear_bitwise(data: &[u8]) -> u32 {
    let mut register = 0u32;
    for &byte in data {
        register ^= u32::from(byte);
        for _ in 0..8 {
            register = if register & 1 == 1 {
                (register >> 1) ^ 0x82F6_3B78
            } else {
                register >> 1
            };
        }
    }
    register
}

/// Rewrites the ports of `packet` using the O(1) update; returns the new
/// CRC value written into the field.
fn rewrite_ports_incrementally(packet: &mut [u8], new_ports: [u8; 4], table: &[u32]) -> u32 {
    let old_ports: [u8; 4] = packet[0..4].try_into().unwrap();
    let old_check = read_sctp_checksum(packet).unwrap();
    let shift = table[shift_table_index(packet.len()).unwrap()];
    let new_check = update_for_port_rewrite(old_check, old_ports, new_ports, shift);
    packet[0..4].copy_from_slice(&new_ports);
    write_sctp_checksum(packet, new_check).unwrap();
    new_check
}

/// For EVERY SCTP length from 12 to 9004 (the table's reach, beyond a
/// 9000-byte jumbo frame): a random valid packet keeps a valid checksum
/// after a random port rewrite, and a corrupted packet stays wrong by the
/// same error.  Deterministic, one packet per length.
#[test]
fn every_length_update_equals_full_recompute_and_preserves_errors() {
    let table = shift_table();
    let mut rng = SplitMix64(EXHAUSTIVE_TEST_SEED);
    let max_len = SHIFT_TABLE_MAX_N as usize + 4;
    let mut buffer = vec![0u8; max_len];
    for len in 12..=max_len {
        let packet = &mut buffer[..len];
        rng.fill(packet);
        let valid_crc = sctp_checksum(packet);
        write_sctp_checksum(packet, valid_crc).unwrap();

        // Valid packet: the updated field equals the full recomputation.
        let mut valid = packet.to_vec();
        let new_ports = rng.ports();
        let updated = rewrite_ports_incrementally(&mut valid, new_ports, &table);
        assert_eq!(updated, sctp_checksum(&valid), "length {len}");
        assert_eq!(
            updated,
            reference_crc32c::crc32c(&zero_field(&valid)),
            "length {len}"
        );

        // Corrupted packet: flip a random non-zero pattern into a random
        // byte (the ports and the field itself included) before the NAT
        // sees it.
        let mut corrupted = packet.to_vec();
        let position = (rng.next_u64() % len as u64) as usize;
        let flip = (rng.next_u64() % 255 + 1) as u8;
        corrupted[position] ^= flip;
        let error_before = read_sctp_checksum(&corrupted).unwrap() ^ sctp_checksum(&corrupted);
        assert_ne!(error_before, 0, "CRC32c detects every single-byte error");
        let updated = rewrite_ports_incrementally(&mut corrupted, rng.ports(), &table);
        assert_eq!(
            updated ^ sctp_checksum(&corrupted),
            error_before,
            "length {len}"
        );
    }
}

/// Fixed so a failure names a reproducible packet.
const EXHAUSTIVE_TEST_SEED: u64 = 0x5C7B_C8C3_2C00_0001;

fn zero_field(packet: &[u8]) -> Vec<u8> {
    let mut copy = packet.to_vec();
    copy[8..12].fill(0);
    copy
}

/// Lengths the proptests draw from: the edges (4 = ports only, 12 = bare
/// common header, 16 = smallest real packet, around 1500 and the table end)
/// are weighted as heavily as the whole range.
fn sctp_length() -> impl Strategy<Value = usize> {
    let max_len = SHIFT_TABLE_MAX_N as usize + 4;
    prop_oneof![
        4usize..=20,
        1490usize..=1510,
        (max_len - 20)..=max_len,
        Just(12usize),
        Just(16usize),
        Just(1500usize),
        Just(max_len),
        4usize..=max_len,
    ]
}

fn packet_of_some_length() -> impl Strategy<Value = Vec<u8>> {
    sctp_length().prop_flat_map(|len| vec(any::<u8>(), len))
}

proptest! {
    #[test]
    fn table_crc_matches_reference_crate(data in vec(any::<u8>(), 0..=9004)) {
        prop_assert_eq!(crc32c(&data), reference_crc32c::crc32c(&data));
    }

    /// Also covers lengths 4..12, below a common header: the algebra only
    /// needs the four port bytes to exist (the field positions present are
    /// zeroed identically before and after).
    #[test]
    fn update_equals_full_recompute(
        mut packet in packet_of_some_length(),
        new_ports in any::<[u8; 4]>(),
    ) {
        let old_ports: [u8; 4] = packet[0..4].try_into().unwrap();
        let old_check = sctp_checksum(&packet);
        let shift = x8n_mod_p((packet.len() - 4) as u32);
        let new_check = update_for_port_rewrite(old_check, old_ports, new_ports, shift);
        packet[0..4].copy_from_slice(&new_ports);
        prop_assert_eq!(new_check, sctp_checksum(&packet));
    }

    /// A packet whose field is wrong by `error` leaves the update wrong by
    /// the same `error`: the receiver still rejects it.
    #[test]
    fn corrupted_packet_stays_wrong_by_the_same_error(
        mut packet in packet_of_some_length().prop_filter("needs a checksum field", |p| p.len() >= 12),
        new_ports in any::<[u8; 4]>(),
        error in 1u32..,
    ) {
        let table = shift_table();
        let bad_check = sctp_checksum(&packet) ^ error;
        write_sctp_checksum(&mut packet, bad_check).unwrap();
        let updated = rewrite_ports_incrementally(&mut packet, new_ports, &table);
        prop_assert_eq!(updated ^ sctp_checksum(&packet), error);
        prop_assert_ne!(updated, sctp_checksum(&packet));
    }

    #[test]
    fn crc_linear_4_matches_bitwise_definition(bytes in any::<[u8; 4]>()) {
        prop_assert_eq!(crc_linear_4(bytes), crc_linear_bitwise(&bytes));
    }

    /// `crc_linear(delta || 0^n) = crc_linear(delta) · x^(8n)`: the identity
    /// the update rests on, checked against the bitwise definition.
    #[test]
    fn appending_zeros_is_multiplication_by_x8n(delta in any::<[u8; 4]>(), n in 0usize..=2000) {
        let mut message = delta.to_vec();
        message.resize(4 + n, 0);
        prop_assert_eq!(
            crc_linear_bitwise(&message),
            gf2_mulmod(crc_linear_4(delta), x8n_mod_p(n as u32))
        );
    }

    /// The full CRC is affine: crc(A ^ B) = crc(A) ^ crc(B) ^ crc(0^L).
    #[test]
    fn crc_is_affine(pair in (1usize..=600).prop_flat_map(|len| (vec(any::<u8>(), len), vec(any::<u8>(), len)))) {
        let (a, b) = pair;
        let xored: Vec<u8> = a.iter().zip(&b).map(|(x, y)| x ^ y).collect();
        let zeros = vec![0u8; a.len()];
        prop_assert_eq!(crc32c(&xored), crc32c(&a) ^ crc32c(&b) ^ crc32c(&zeros));
    }

    #[test]
    fn gf2_mulmod_is_a_commutative_ring_product(a in any::<u32>(), b in any::<u32>(), c in any::<u32>()) {
        prop_assert_eq!(gf2_mulmod(a, b), gf2_mulmod(b, a));
        prop_assert_eq!(gf2_mulmod(gf2_mulmod(a, b), c), gf2_mulmod(a, gf2_mulmod(b, c)));
        prop_assert_eq!(gf2_mulmod(a, b ^ c), gf2_mulmod(a, b) ^ gf2_mulmod(a, c));
        prop_assert_eq!(gf2_mulmod(a, POLY_ONE_REFLECTED), a);
    }

    #[test]
    fn square_and_multiply_adds_exponents(m in 0u32..100_000, n in 0u32..100_000) {
        prop_assert_eq!(x8n_mod_p(m + n), gf2_mulmod(x8n_mod_p(m), x8n_mod_p(n)));
    }

    #[test]
    fn unchanged_ports_leave_the_checksum_alone(check in any::<u32>(), ports in any::<[u8; 4]>(), shift in any::<u32>()) {
        prop_assert_eq!(update_for_port_rewrite(check, ports, ports, shift), check);
    }
}

#[test]
fn shift_table_matches_square_and_multiply_everywhere() {
    let table = shift_table();
    assert_eq!(table.len(), 9001);
    assert_eq!(table[0], POLY_ONE_REFLECTED);
    for (n, &entry) in table.iter().enumerate() {
        assert_eq!(entry, x8n_mod_p(n as u32), "n = {n}");
    }
}

/// Two successive rewrites (e.g. SNAT on the way out, the reverse on the
/// way back) compose: going there and back restores the original field.
#[test]
fn rewrite_and_reverse_restores_the_original_checksum() {
    let table = shift_table();
    let mut rng = SplitMix64(7);
    for len in [12usize, 16, 28, 1500, 9004] {
        let mut packet = vec![0u8; len];
        rng.fill(&mut packet);
        let original = packet.clone();
        let original_ports: [u8; 4] = packet[0..4].try_into().unwrap();
        rewrite_ports_incrementally(&mut packet, rng.ports(), &table);
        rewrite_ports_incrementally(&mut packet, original_ports, &table);
        assert_eq!(packet, original);
    }
}
