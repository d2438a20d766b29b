//! Known-answer tests that pin the CRC32c value AND the byte order of the
//! SCTP checksum field against data produced by other implementations.
//!
//! Sources, each independent of this crate:
//! * RFC 3720 §B.4 (iSCSI uses the same CRC32c and the same field order).
//! * Two packets captured from real SCTP stacks, dissected by Wireshark, from
//!   WebRTC's dcSCTP test suite (`net/dcsctp/packet/sctp_packet_test.cc`,
//!   tests `DeserializeSimplePacketFromCapture`, `DeserializePacketWithTwoChunks`,
//!   `DeserializePacketWithWrongChecksum`), which dcSCTP parses with checksum
//!   verification on.
//! * Two packets built by scapy (`test/scapy/layers/sctp.uts`, "Chunk Init -
//!   build" and "SCTPChunkSACK - build"), SCTP part only.
//! * An INIT built by hand for this test; its field bytes were computed with a
//!   separate bit-at-a-time CRC32c written in Python, not with this crate.

use nat_common::crc32c::{
    crc_from_field_bytes, crc_to_field_bytes, crc32c, fill_sctp_checksum, read_sctp_checksum,
    sctp_checksum, shift_table_index, update_for_port_rewrite,
    updated_checksum_field_for_port_rewrite, verify_sctp_checksum, write_sctp_checksum, x8n_mod_p,
};

/// INIT chunk, 104 bytes, captured and dissected by Wireshark ("Checksum:
/// 0xaa019d33" is Wireshark printing the wire bytes aa 01 9d 33).
const CAPTURED_INIT: [u8; 104] = [
    0x13, 0x88, 0x13, 0x88, 0x00, 0x00, 0x00, 0x00, 0xaa, 0x01, 0x9d, 0x33, //
    0x01, 0x00, 0x00, 0x5a, 0x0e, 0xdd, 0xca, 0x08, 0x00, 0x02, 0x00, 0x00, //
    0x03, 0xe8, 0x03, 0xe8, 0x55, 0x08, 0x36, 0x37, 0x80, 0x00, 0x00, 0x04, //
    0xc0, 0x00, 0x00, 0x04, 0x80, 0x08, 0x00, 0x09, 0xc0, 0x0f, 0xc1, 0x80, //
    0x82, 0x00, 0x00, 0x00, 0x80, 0x02, 0x00, 0x24, 0xc5, 0xa8, 0x61, 0x55, //
    0x09, 0x0e, 0x6f, 0x42, 0x00, 0x50, 0x63, 0x4c, 0xc8, 0xd6, 0xb9, 0x08, //
    0xdf, 0xd5, 0x3e, 0x17, 0xc9, 0x9c, 0xb1, 0x43, 0x28, 0x4e, 0xaf, 0x64, //
    0x68, 0x2a, 0xc2, 0x97, 0x80, 0x04, 0x00, 0x06, 0x00, 0x01, 0x00, 0x00, //
    0x80, 0x03, 0x00, 0x06, 0x80, 0xc1, 0x00, 0x00,
];

/// COOKIE ACK + SACK in one packet, 32 bytes, captured (Wireshark shows
/// checksum bytes c0 6e 8b 36).
const CAPTURED_COOKIE_ACK_SACK: [u8; 32] = [
    0x04, 0xd2, 0x10, 0xe1, 0x69, 0x7e, 0x3a, 0x4e, 0xc0, 0x6e, 0x8b, 0x36, //
    0x0b, 0x00, 0x00, 0x04, 0x03, 0x00, 0x00, 0x10, 0xae, 0xa9, 0x52, 0x52, //
    0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
];

/// A captured SACK whose checksum field is wrong (dcSCTP must reject it).
const CAPTURED_SACK_WITH_WRONG_CHECKSUM: [u8; 28] = [
    0x13, 0x88, 0x13, 0x88, 0x0e, 0xdd, 0xca, 0x08, 0x2a, 0x81, 0xf5, 0x31, //
    0x03, 0x00, 0x00, 0x10, 0x55, 0x08, 0x36, 0x40, 0x00, 0x02, 0x00, 0x00, //
    0x00, 0x00, 0x00, 0x00,
];

/// scapy: `SCTP()/SCTPChunkInit(params=[SCTPChunkParamIPv4Addr()])`, 40 bytes;
/// scapy's test asserts `chksum == 0x402c0b5f`, its big-endian reading of the
/// wire bytes 40 2c 0b 5f.
const SCAPY_INIT: [u8; 40] = [
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x40, 0x2c, 0x0b, 0x5f, //
    0x01, 0x00, 0x00, 0x1c, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, //
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x05, 0x00, 0x08, //
    0x7f, 0x00, 0x00, 0x01,
];

/// scapy: `SCTP()/SCTPChunkSACK(gap_ack_list=["7:28"])`, 32 bytes.
const SCAPY_SACK: [u8; 32] = [
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x3b, 0x01, 0xd4, 0x04, //
    0x03, 0x00, 0x00, 0x14, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, //
    0x00, 0x01, 0x00, 0x00, 0x00, 0x07, 0x00, 0x1c,
];

/// Hand-built INIT: sport 40000, dport 36412 (S1AP), verification tag 0,
/// INIT chunk length 26 (initiate tag 0x1a2b3c4d, a_rwnd 106496, 10 outbound
/// / 65535 inbound streams, initial TSN 0x1a2b3c4d, Supported Address Types
/// = IPv4) plus 2 bytes of chunk padding.  Checksum field zero here.
const HAND_BUILT_INIT_WITHOUT_CHECKSUM: [u8; 40] = [
    0x9c, 0x40, 0x8e, 0x3c, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, //
    0x01, 0x00, 0x00, 0x1a, 0x1a, 0x2b, 0x3c, 0x4d, 0x00, 0x01, 0xa0, 0x00, //
    0x00, 0x0a, 0xff, 0xff, 0x1a, 0x2b, 0x3c, 0x4d, 0x00, 0x0c, 0x00, 0x06, //
    0x00, 0x05, 0x00, 0x00,
];

/// Field bytes for [`HAND_BUILT_INIT_WITHOUT_CHECKSUM`], from the independent
/// Python bitwise CRC32c (value 0x19ff6e53, stored low byte first).
const HAND_BUILT_INIT_FIELD: [u8; 4] = [0x53, 0x6e, 0xff, 0x19];

fn field_bytes(packet: &[u8]) -> [u8; 4] {
    packet[8..12].try_into().unwrap()
}

fn big_endian_reading_verifies(packet: &[u8]) -> bool {
    u32::from_be_bytes(field_bytes(packet)) == sctp_checksum(packet)
}

#[test]
fn iscsi_rfc3720_vectors_in_field_order() {
    let zeros = [0u8; 32];
    let ones = [0xffu8; 32];
    let ascending: Vec<u8> = (0u8..32).collect();
    let descending: Vec<u8> = (0u8..32).rev().collect();
    let vectors: [(&[u8], [u8; 4]); 4] = [
        (&zeros, [0xaa, 0x36, 0x91, 0x8a]),
        (&ones, [0x43, 0xab, 0xa8, 0x62]),
        (&ascending, [0x4e, 0x79, 0xdd, 0x46]),
        (&descending, [0x5c, 0xdb, 0x3f, 0x11]),
    ];
    for (data, wire) in vectors {
        assert_eq!(crc_to_field_bytes(crc32c(data)), wire);
        assert_eq!(crc32c(data), reference_crc32c::crc32c(data));
    }
}

#[test]
fn captured_init_checksum_verifies_little_endian_only() {
    assert!(verify_sctp_checksum(&CAPTURED_INIT));
    assert_eq!(sctp_checksum(&CAPTURED_INIT), 0x339d_01aa);
    assert_eq!(
        crc_to_field_bytes(sctp_checksum(&CAPTURED_INIT)),
        [0xaa, 0x01, 0x9d, 0x33]
    );
    assert!(!big_endian_reading_verifies(&CAPTURED_INIT));
}

#[test]
fn captured_two_chunk_packet_verifies_little_endian_only() {
    assert!(verify_sctp_checksum(&CAPTURED_COOKIE_ACK_SACK));
    assert!(!big_endian_reading_verifies(&CAPTURED_COOKIE_ACK_SACK));
}

#[test]
fn captured_packet_with_wrong_checksum_is_rejected() {
    assert!(!verify_sctp_checksum(&CAPTURED_SACK_WITH_WRONG_CHECKSUM));
    // The capture differs from a valid packet in one field byte (0x31 vs 0x32).
    let true_crc = sctp_checksum(&CAPTURED_SACK_WITH_WRONG_CHECKSUM);
    assert_eq!(crc_to_field_bytes(true_crc), [0x2a, 0x81, 0xf5, 0x32]);
}

#[test]
fn scapy_built_packets_verify_little_endian_only() {
    for packet in [&SCAPY_INIT[..], &SCAPY_SACK[..]] {
        assert!(verify_sctp_checksum(packet));
        assert!(!big_endian_reading_verifies(packet));
    }
}

#[test]
fn hand_built_init_gets_the_independently_computed_field() {
    let mut packet = HAND_BUILT_INIT_WITHOUT_CHECKSUM;
    let crc = fill_sctp_checksum(&mut packet).unwrap();
    assert_eq!(crc, 0x19ff_6e53);
    assert_eq!(field_bytes(&packet), HAND_BUILT_INIT_FIELD);
    assert!(verify_sctp_checksum(&packet));

    // The reference crate over the field-zeroed packet agrees.
    assert_eq!(
        reference_crc32c::crc32c(&HAND_BUILT_INIT_WITHOUT_CHECKSUM),
        crc
    );
}

#[test]
fn field_content_is_ignored_when_computing() {
    let mut packet = CAPTURED_INIT;
    let expected = sctp_checksum(&packet);
    write_sctp_checksum(&mut packet, 0x1234_5678).unwrap();
    assert_eq!(sctp_checksum(&packet), expected);
    assert_eq!(read_sctp_checksum(&packet), Some(0x1234_5678));
}

#[test]
fn field_helpers_round_trip_and_reject_short_buffers() {
    assert_eq!(
        crc_from_field_bytes(crc_to_field_bytes(0xdead_beef)),
        0xdead_beef
    );
    assert_eq!(read_sctp_checksum(&[0u8; 11]), None);
    assert!(write_sctp_checksum(&mut [0u8; 11], 1).is_err());
    assert!(!verify_sctp_checksum(&[0u8; 11]));
    // Short buffers still get a defined checksum, never a panic.
    for len in 0..12 {
        let _ = sctp_checksum(&vec![0xa5; len]);
    }
}

/// The NAT case on a real packet: rewrite the source port of the captured
/// INIT from 5000 to 40123 with the O(1) update and check that a receiver
/// would accept it.
#[test]
fn captured_init_port_rewrite_stays_valid() {
    let mut packet = CAPTURED_INIT;
    let old_ports: [u8; 4] = packet[0..4].try_into().unwrap();
    let new_ports = [0x9c, 0xbb, 0x13, 0x88]; // 40123 -> 5000
    let shift = x8n_mod_p(shift_table_index(packet.len()).unwrap() as u32);

    let new_field =
        updated_checksum_field_for_port_rewrite(field_bytes(&packet), old_ports, new_ports, shift);
    packet[0..4].copy_from_slice(&new_ports);
    packet[8..12].copy_from_slice(&new_field);

    assert!(verify_sctp_checksum(&packet));
}

/// The same on the captured packet with a bad checksum: after the rewrite it
/// is still bad, by exactly the same error, so the receiver still drops it.
#[test]
fn captured_bad_checksum_stays_bad_after_port_rewrite() {
    let mut packet = CAPTURED_SACK_WITH_WRONG_CHECKSUM;
    let error_before = read_sctp_checksum(&packet).unwrap() ^ sctp_checksum(&packet);
    assert_ne!(error_before, 0);

    let old_ports: [u8; 4] = packet[0..4].try_into().unwrap();
    let new_ports = [0x13, 0x88, 0xc3, 0x50]; // dport 5000 -> 50000
    let shift = x8n_mod_p(shift_table_index(packet.len()).unwrap() as u32);
    let new_check = update_for_port_rewrite(
        read_sctp_checksum(&packet).unwrap(),
        old_ports,
        new_ports,
        shift,
    );
    packet[0..4].copy_from_slice(&new_ports);
    write_sctp_checksum(&mut packet, new_check).unwrap();

    assert!(!verify_sctp_checksum(&packet));
    assert_eq!(new_check ^ sctp_checksum(&packet), error_before);
}

/// RFC 9653 zero checksum: the field-level helper leaves an all-zero field
/// alone; the value-level function does the plain algebra.
#[test]
fn zero_checksum_field_is_preserved_by_field_helper() {
    let shift = x8n_mod_p(100);
    let old_ports = [0x13, 0x88, 0x13, 0x88];
    let new_ports = [0x9c, 0x40, 0x13, 0x88];
    assert_eq!(
        updated_checksum_field_for_port_rewrite([0; 4], old_ports, new_ports, shift),
        [0; 4]
    );
    assert_ne!(update_for_port_rewrite(0, old_ports, new_ports, shift), 0);
}
