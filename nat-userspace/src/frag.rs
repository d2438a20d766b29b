//! Later fragments that came before their first fragment (RFC 4787 REQ-14).
//!
//! A later fragment (offset > 0) carries no ports: the datapath translates it
//! by its datagram's identity once the first fragment has been translated
//! (`FRAGS`). XDP cannot hold a packet until then, so one that comes first is
//! handed to natd, which parks it here, in a buffer bounded by datagrams,
//! fragments and bytes, for at most `FRAG_TIMEOUT_NS`. When the datapath
//! translates the first fragment of a parked datagram it says so through the
//! ring (`FragEvent`; natd also looks every parked datagram up once a tick, in
//! case the ring was full), and natd rewrites the parked fragments the same
//! way and sends them through its raw socket. The receiver reassembles the
//! datagram as usual: fragments may arrive in any order.

use std::{collections::HashMap, net::Ipv4Addr};

use anyhow::{Result, ensure};
use nat_common::{FRAG_TIMEOUT_NS, FragKey, MAX_PARKED_DATAGRAMS, frag_dir};

use crate::handoff::{Side, rewrite_address};

/// Datagrams natd parks fragments of at once.
pub const PARK_MAX_DATAGRAMS: usize = 128;
/// Fragments parked at once, all datagrams together.
pub const PARK_MAX_FRAGMENTS: usize = 512;
/// Bytes parked at once (IPv4 packets, headers included).
pub const PARK_MAX_BYTES: usize = 512 * 1024;
const _: () = assert!(PARK_MAX_DATAGRAMS <= MAX_PARKED_DATAGRAMS as usize);

/// What `Park::park` did with a fragment.
#[derive(Debug, PartialEq, Eq)]
pub enum Parking {
    /// The first parked fragment of its datagram.
    NewDatagram,
    /// Added to a datagram already parked.
    Added,
    /// Not parked: a limit is reached. Dropped (the datagram is lost; the
    /// sender's application retries, as after any loss).
    Full,
}

struct Parked {
    /// natd's clock (CLOCK_MONOTONIC_COARSE, ns) when the datagram's first
    /// fragment was parked: the whole datagram ages out together.
    since_ns: u64,
    packets: Vec<Vec<u8>>,
}

/// The parked fragments, by datagram identity.
#[derive(Default)]
pub struct Park {
    datagrams: HashMap<FragKey, Parked>,
    fragments: usize,
    bytes: usize,
}

impl Park {
    /// Parks one IPv4 packet (a later fragment) of datagram `key`.
    pub fn park(&mut self, key: FragKey, packet: Vec<u8>, now_ns: u64) -> Parking {
        let new = !self.datagrams.contains_key(&key);
        if (new && self.datagrams.len() >= PARK_MAX_DATAGRAMS)
            || self.fragments >= PARK_MAX_FRAGMENTS
            || self.bytes + packet.len() > PARK_MAX_BYTES
        {
            return Parking::Full;
        }
        self.fragments += 1;
        self.bytes += packet.len();
        self.datagrams.entry(key).or_insert_with(|| Parked { since_ns: now_ns, packets: Vec::new() }).packets.push(packet);
        if new { Parking::NewDatagram } else { Parking::Added }
    }

    /// Takes every parked fragment of `key` out of the park.
    pub fn take(&mut self, key: &FragKey) -> Vec<Vec<u8>> {
        let Some(parked) = self.datagrams.remove(key) else { return Vec::new() };
        self.fragments -= parked.packets.len();
        self.bytes -= parked.packets.iter().map(Vec::len).sum::<usize>();
        parked.packets
    }

    /// Removes the datagrams parked longer than `FRAG_TIMEOUT_NS`: their first
    /// fragment did not come (or was not translated) in time. Returns their
    /// identities and how many fragments each had.
    pub fn expire(&mut self, now_ns: u64) -> Vec<(FragKey, usize)> {
        let old: Vec<FragKey> = self
            .datagrams
            .iter()
            .filter(|(_, p)| now_ns.saturating_sub(p.since_ns) > FRAG_TIMEOUT_NS)
            .map(|(k, _)| *k)
            .collect();
        old.into_iter().map(|k| (k, self.take(&k).len())).collect()
    }

    /// The identities of the parked datagrams.
    pub fn keys(&self) -> Vec<FragKey> {
        self.datagrams.keys().copied().collect()
    }

    pub fn fragments(&self) -> usize {
        self.fragments
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// The identity of the datagram an IPv4 packet (`ip`, from its header on)
/// belongs to, as the datapath files it for direction `dir`.
pub fn frag_key_of(ip: &[u8], dir: u8) -> Option<FragKey> {
    let ip = ip.get(..20)?;
    Some(FragKey {
        src_be: u32::from_ne_bytes(ip[12..16].try_into().ok()?),
        dst_be: u32::from_ne_bytes(ip[16..20].try_into().ok()?),
        id_be: u16::from_ne_bytes([ip[4], ip[5]]),
        proto: ip[9],
        dir,
    })
}

/// Rewrites a later fragment (`ip`, from its IPv4 header on) as the datapath
/// does: the source (`frag_dir::OUT`) or destination (`frag_dir::IN`) address
/// becomes `to`, the TTL drops by one, and the IPv4 header checksum follows
/// incrementally (RFC 1624). The payload is not touched: it has no L4 header.
pub fn translate_fragment(ip: &mut [u8], dir: u8, to: Ipv4Addr) -> Result<()> {
    ensure!(ip.len() >= 20 && ip[0] >> 4 == 4, "not an IPv4 packet");
    ensure!(ip[8] > 1, "TTL expired");
    let side = if dir == frag_dir::OUT { Side::Source } else { Side::Destination };
    rewrite_address(ip, side, u32::from_ne_bytes(to.octets()), true);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nat_common::checksum;

    fn fragment(src: [u8; 4], dst: [u8; 4], id: u16, offset_words: u16, payload: usize) -> Vec<u8> {
        let mut ip = vec![0u8; 20 + payload];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&((20 + payload) as u16).to_be_bytes());
        ip[4..6].copy_from_slice(&id.to_be_bytes());
        ip[6..8].copy_from_slice(&offset_words.to_be_bytes());
        ip[8] = 64;
        ip[9] = 17;
        ip[12..16].copy_from_slice(&src);
        ip[16..20].copy_from_slice(&dst);
        for (i, b) in ip[20..].iter_mut().enumerate() {
            *b = i as u8;
        }
        let c = checksum::checksum(&ip[..20]);
        ip[10..12].copy_from_slice(&c.to_ne_bytes());
        ip
    }

    /// RFC 4787 REQ-14: a parked fragment leaves as the datapath would have
    /// sent it: address and TTL rewritten, header checksum equal to one
    /// computed from scratch, payload untouched.
    #[test]
    fn translated_fragments_match_a_from_scratch_build() {
        let inside = [10, 77, 1, 10];
        let (external, remote) = ([203, 0, 113, 1], [198, 51, 100, 10]);
        let mut out = fragment(inside, remote, 0xbeef, 185, 100);
        let key = frag_key_of(&out, frag_dir::OUT).unwrap();
        assert_eq!((key.src_be.to_ne_bytes(), key.dst_be.to_ne_bytes(), u16::from_be(key.id_be)), (inside, remote, 0xbeef));
        translate_fragment(&mut out, frag_dir::OUT, Ipv4Addr::from(external)).unwrap();
        let mut want = fragment(external, remote, 0xbeef, 185, 100);
        want[8] = 63;
        want[10..12].fill(0);
        let c = checksum::checksum(&want[..20]);
        want[10..12].copy_from_slice(&c.to_ne_bytes());
        assert_eq!(out, want);

        let mut inbound = fragment(remote, external, 7, 0x2000 | 185, 64);
        translate_fragment(&mut inbound, frag_dir::IN, Ipv4Addr::from(inside)).unwrap();
        assert_eq!(&inbound[16..20], &inside);
        assert!(checksum::verifies(&inbound[..20], 0));
        let mut dying = fragment(remote, external, 7, 185, 8);
        dying[8] = 1;
        assert!(translate_fragment(&mut dying, frag_dir::IN, Ipv4Addr::from(inside)).is_err());
    }

    /// RFC 4787 REQ-14: the park is bounded by datagrams, fragments and
    /// bytes, and ages whole datagrams out after FRAG_TIMEOUT_NS.
    #[test]
    fn the_park_is_bounded_and_ages_out() {
        let mut park = Park::default();
        let key = |id: u16| FragKey { src_be: 1, dst_be: 2, id_be: id, proto: 17, dir: frag_dir::IN };
        assert_eq!(park.park(key(0), vec![0; 100], 0), Parking::NewDatagram);
        assert_eq!(park.park(key(0), vec![0; 100], 1), Parking::Added);
        assert_eq!((park.fragments(), park.bytes()), (2, 200));
        for id in 1..PARK_MAX_DATAGRAMS as u16 {
            assert_eq!(park.park(key(id), vec![0; 10], 2), Parking::NewDatagram);
        }
        assert_eq!(park.park(key(9999), vec![0; 10], 2), Parking::Full, "datagram limit");
        assert_eq!(park.park(key(0), vec![0; PARK_MAX_BYTES], 2), Parking::Full, "byte limit");
        assert_eq!(park.take(&key(0)).len(), 2);
        assert_eq!(park.fragments(), PARK_MAX_DATAGRAMS - 1);
        assert!(park.expire(FRAG_TIMEOUT_NS).is_empty(), "not older than the timeout yet");
        let expired = park.expire(FRAG_TIMEOUT_NS + 3);
        assert_eq!(expired.len(), PARK_MAX_DATAGRAMS - 1);
        assert_eq!((park.fragments(), park.bytes()), (0, 0));

        let mut park = Park::default();
        for i in 0..PARK_MAX_FRAGMENTS {
            assert_ne!(park.park(key((i % 4) as u16), vec![0; 8], 0), Parking::Full);
        }
        assert_eq!(park.park(key(0), vec![0; 8], 0), Parking::Full, "fragment limit");
    }
}
