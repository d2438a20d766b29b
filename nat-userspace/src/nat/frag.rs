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

use anyhow::{Context as _, Result};
use nat_common::{Endpoint, FRAG_TIMEOUT_NS, FragKey, FragState, MAX_PARKED_DATAGRAMS, MissEvent};

use crate::{
    datapath::Datapath,
    nat::{counters::DaemonCounters, first_packet::KernelSender, sessions::coarse_now_ns},
    packet::{Ipv4, Side, sctp_fragment_role, translate_fragment, translate_sctp_first_fragment},
};

/// Later fragments natd holds for their first fragment, and sends on once
/// it has been translated.
#[derive(Default)]
pub struct Fragments {
    park: Park,
}

impl Fragments {
    /// Fragments waiting for their first fragment.
    pub fn waiting(&self) -> usize {
        self.park.fragments()
    }

    /// A later fragment the datapath could not translate (yet): sent on at
    /// once if its first fragment has been translated meanwhile, otherwise
    /// parked until it is.
    pub fn later_fragment(&mut self, datapath: &mut Datapath, sender: &KernelSender, counters: &mut DaemonCounters, event: &MissEvent, dir: u8) -> Result<()> {
        let packet = Ipv4::of_event(event)?;
        let key = packet.frag_key(dir);
        let packet = packet.datagram().to_vec();
        if let Some(addr_be) = translation(datapath, &key)? {
            // An SCTP first fragment's ports would stay untranslated: this
            // one is a copy of one sent already.
            if matches!(sctp_fragment_role(&packet), Some((true, _))) {
                return Ok(());
            }
            return send_fragment(sender, counters, packet, dir, addr_be);
        }
        let now = coarse_now_ns();
        match self.park.park(key, packet, now) {
            Parking::Full => {
                counters.fragments_dropped_full += 1;
                return Ok(());
            }
            Parking::Added => {}
            Parking::NewDatagram => {
                if let Err(e) = datapath.mark_parked(key, now) {
                    // Without the mark the datapath would not report the first
                    // fragment; the tick's look-up still would.
                    tracing::warn!("{e:#}");
                }
            }
        }
        counters.fragments_parked += 1;
        // The first fragment may have passed between the look-up above and
        // the mark: the datapath writes FRAGS before it reads PARKED.
        if let Some(addr_be) = translation(datapath, &key)? {
            return self.release(datapath, sender, counters, &key, addr_be);
        }
        self.sctp_first_fragment(datapath, sender, counters, &key)
    }

    /// An SCTP datagram's first fragment waits in the park with the later
    /// ones (the datapath hands it over as one): the CRC32c update of its
    /// port rewrite needs the datagram's length, which only the last
    /// fragment tells. Once both are parked the first fragment is translated
    /// by its session's mapping and sent, its translation recorded for the
    /// datagram's fragments still on their way (`FRAGS`), and the parked
    /// ones released. Without a mapping (no session: a new flow's first
    /// packet is never a fragment of a DATA-sized datagram) it is dropped
    /// and counted, and the rest age out.
    fn sctp_first_fragment(&mut self, datapath: &mut Datapath, sender: &KernelSender, counters: &mut DaemonCounters, key: &FragKey) -> Result<()> {
        let Some(packets) = self.park.packets(key) else { return Ok(()) };
        let roles: Vec<Option<(bool, usize)>> = packets.iter().map(|p| sctp_fragment_role(p)).collect();
        let (Some(first_at), Some(sctp_len)) = (
            roles.iter().position(|r| matches!(r, Some((true, _)))),
            roles.iter().find_map(|r| match r {
                Some((false, len)) => Some(*len),
                _ => None,
            }),
        ) else {
            return Ok(());
        };
        let mut first = self.park.take_one(key, first_at);
        let Some(to) = sctp_translation(datapath, &first, key.dir)? else {
            counters.sctp_first_fragments_unmapped += 1;
            return Ok(());
        };
        translate_sctp_first_fragment(&mut first, key.dir, to, sctp_len).context("translating an SCTP first fragment")?;
        sender.send_packet(&first)?;
        counters.fragments_sent += 1;
        datapath.record_fragment(*key, FragState { addr_be: to.addr_be, _pad: 0, stamp_ns: coarse_now_ns() })?;
        self.release(datapath, sender, counters, key, to.addr_be)
    }

    /// natd sent a first fragment itself (a new flow it set up): its later
    /// fragments follow it as the datapath's would.
    pub fn first_fragment_sent(&mut self, datapath: &mut Datapath, sender: &KernelSender, counters: &mut DaemonCounters, key: FragKey, addr_be: u32) -> Result<()> {
        datapath.record_fragment(key, FragState { addr_be, _pad: 0, stamp_ns: coarse_now_ns() })?;
        self.release(datapath, sender, counters, &key, addr_be)
    }

    /// The first fragment of `key` was translated to `addr_be`: its parked
    /// fragments follow.
    pub fn release(&mut self, datapath: &mut Datapath, sender: &KernelSender, counters: &mut DaemonCounters, key: &FragKey, addr_be: u32) -> Result<()> {
        let packets = self.park.take(key);
        datapath.unmark_parked(key)?;
        for packet in packets {
            send_fragment(sender, counters, packet, key.dir, addr_be)?;
        }
        Ok(())
    }

    /// Once a tick: parked datagrams whose first fragment passed without a
    /// `FragEvent` reaching natd (ring full) are released; the ones parked
    /// longer than `FRAG_TIMEOUT_NS` are dropped.
    pub fn age(&mut self, datapath: &mut Datapath, sender: &KernelSender, counters: &mut DaemonCounters, now: u64) -> Result<()> {
        for key in self.park.keys() {
            if let Some(addr_be) = translation(datapath, &key)? {
                self.release(datapath, sender, counters, &key, addr_be)?;
            }
        }
        for (key, fragments) in self.park.expire(now) {
            datapath.unmark_parked(&key)?;
            counters.fragments_expired += fragments as u64;
        }
        Ok(())
    }
}

/// Where an SCTP first fragment's session translates it: outbound, its
/// source by OUTBOUND; inbound, its destination by INBOUND. `None`: no
/// session.
fn sctp_translation(datapath: &Datapath, first: &[u8], dir: u8) -> Result<Option<Endpoint>> {
    let packet = Ipv4::read(first)?;
    let (side, maps_out) = if dir == nat_common::frag_dir::OUT { (Side::Source, true) } else { (Side::Destination, false) };
    let Some(endpoint) = packet.endpoint(side) else { return Ok(None) };
    let mapping = if maps_out { datapath.outbound_mapping(&endpoint)? } else { datapath.inbound_mapping(&endpoint)? };
    Ok(mapping.map(|m| m.target(endpoint.proto)))
}

/// The address the first fragment of `key` was translated to, if that was
/// within `FRAG_TIMEOUT_NS`.
fn translation(datapath: &Datapath, key: &FragKey) -> Result<Option<u32>> {
    Ok(datapath.fragment_state(key)?.filter(|s| s.fresh(coarse_now_ns())).map(|s| s.addr_be))
}

fn send_fragment(sender: &KernelSender, counters: &mut DaemonCounters, mut packet: Vec<u8>, dir: u8, addr_be: u32) -> Result<()> {
    translate_fragment(&mut packet, dir, Ipv4Addr::from(addr_be.to_ne_bytes())).context("translating a parked fragment")?;
    sender.send_packet(&packet)?;
    counters.fragments_sent += 1;
    Ok(())
}

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

    /// The fragments parked for `key`, in arrival order.
    pub fn packets(&self, key: &FragKey) -> Option<&[Vec<u8>]> {
        self.datagrams.get(key).map(|p| p.packets.as_slice())
    }

    /// Takes the `at`th parked fragment of `key` out (`at` from `packets`).
    pub fn take_one(&mut self, key: &FragKey, at: usize) -> Vec<u8> {
        let parked = self.datagrams.get_mut(key).expect("a parked datagram");
        let packet = parked.packets.remove(at);
        self.fragments -= 1;
        self.bytes -= packet.len();
        if parked.packets.is_empty() {
            self.datagrams.remove(key);
        }
        packet
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

#[cfg(test)]
mod tests {
    use nat_common::frag_dir;

    use super::*;

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
