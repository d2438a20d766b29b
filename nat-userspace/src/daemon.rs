//! The daemon's state: who holds which external port, and when it expires.

use std::{collections::HashMap, net::Ipv4Addr, time::Duration};

use anyhow::{Context as _, Result, bail};
use nat_common::{Endpoint, MissEvent, miss_kind, proto, tcp_flags};

use crate::{
    allocator::PortAllocator,
    datapath::Datapath,
    handoff::{KernelSender, reinject},
};

/// Idle timeouts (RFC 4787 REQ-5, RFC 5382 REQ-5, RFC 5508 REQ-2).
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub udp: Duration,
    pub icmp: Duration,
    pub tcp_established: Duration,
    /// Before the handshake completes, and after FIN or RST.
    pub tcp_transitory: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            udp: Duration::from_secs(300),
            icmp: Duration::from_secs(60),
            tcp_established: Duration::from_secs(7440),
            tcp_transitory: Duration::from_secs(240),
        }
    }
}

impl Timeouts {
    /// The timeout for a mapping given the TCP flags seen each way.
    pub fn for_mapping(&self, proto_nr: u8, flags_out: u8, flags_in: u8) -> Duration {
        match proto_nr {
            proto::TCP => {
                let closing = (flags_out | flags_in) & (tcp_flags::FIN | tcp_flags::RST) != 0;
                let established = flags_out & flags_in & tcp_flags::ACK != 0;
                if closing || !established { self.tcp_transitory } else { self.tcp_established }
            }
            proto::ICMP => self.icmp,
            _ => self.udp,
        }
    }
}

/// `CLOCK_MONOTONIC_COARSE` in ns: the clock of `bpf_ktime_get_coarse_ns`.
pub fn coarse_now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The inside endpoint of a missed frame (its source).
pub fn source_endpoint(event: &MissEvent) -> Option<Endpoint> {
    let ip = event.frame().get(event.l3_offset as usize..)?;
    let ihl = ((*ip.first()? & 0x0f) as usize) * 4;
    let l4 = ip.get(ihl..)?;
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let port = match ip[9] {
        proto::TCP | proto::UDP => u16::from_be_bytes([*l4.first()?, *l4.get(1)?]),
        proto::ICMP => u16::from_be_bytes([*l4.get(4)?, *l4.get(5)?]),
        _ => return None,
    };
    Some(Endpoint::new(src, port, ip[9]))
}

pub struct Daemon {
    datapath: Datapath,
    external: Ipv4Addr,
    ports: PortAllocator,
    /// inside endpoint -> external endpoint, mirror of the maps.
    sessions: HashMap<Endpoint, Endpoint>,
    sender: KernelSender,
    timeouts: Timeouts,
    pub refused: u64,
}

impl Daemon {
    pub fn new(datapath: Datapath, external: Ipv4Addr, port_min: u16, port_max: u16, timeouts: Timeouts) -> Result<Self> {
        let mut seed = [0u8; 8];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut seed))
            .context("seeding the port randomizer from /dev/urandom")?;
        Ok(Self {
            datapath,
            external,
            ports: PortAllocator::new(port_min, port_max, u64::from_ne_bytes(seed)),
            sessions: HashMap::new(),
            sender: KernelSender::new()?,
            timeouts,
            refused: 0,
        })
    }

    pub fn sessions(&self) -> &HashMap<Endpoint, Endpoint> {
        &self.sessions
    }

    pub fn handle(&mut self, event: &MissEvent) -> Result<()> {
        match event.kind {
            miss_kind::NEW_FLOW => self.new_flow(event),
            miss_kind::NO_NEIGHBOUR => self.sender.send(event),
            other => bail!("unknown miss event kind {other}"),
        }
    }

    fn new_flow(&mut self, event: &MissEvent) -> Result<()> {
        let Some(inside) = source_endpoint(event) else {
            bail!("miss event without a TCP/UDP/ICMP source");
        };
        // Several packets of one flow can miss before the mapping exists: the
        // later ones only need re-injecting (endpoint-independent mapping).
        if !self.sessions.contains_key(&inside) {
            let Some(port) = self.ports.allocate(inside.proto, inside.port()) else {
                self.refused += 1;
                bail!("no free external port for {}:{} (proto {}): flow refused", inside.addr(), inside.port(), inside.proto);
            };
            let external = Endpoint::new(self.external, port, inside.proto);
            if let Err(e) = self.datapath.insert_pair(inside, external, coarse_now_ns()) {
                self.ports.release(inside.proto, port);
                self.refused += 1;
                return Err(e);
            }
            self.sessions.insert(inside, external);
        }
        reinject(&self.datapath, event)
    }

    /// Removes every mapping idle past its timeout, both directions together,
    /// and returns its port to the pool.
    pub fn age(&mut self) -> Result<()> {
        let now = coarse_now_ns();
        let outbound = self.datapath.outbound()?;
        let inbound = self.datapath.inbound()?;
        let mut expired = Vec::new();
        for (inside, external) in &self.sessions {
            let (Ok(out), Ok(back)) = (outbound.get(inside, 0), inbound.get(external, 0)) else {
                expired.push(*inside);
                continue;
            };
            let last = out.last_seen_ns.max(back.last_seen_ns);
            let timeout = self.timeouts.for_mapping(inside.proto, out.tcp_flags_seen, back.tcp_flags_seen);
            if now.saturating_sub(last) > timeout.as_nanos() as u64 {
                expired.push(*inside);
            }
        }
        for inside in expired {
            if let Some(external) = self.sessions.remove(&inside) {
                self.datapath.remove_pair(inside)?;
                self.ports.release(inside.proto, external.port());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_is_transitory_until_acked_both_ways_and_after_fin_or_rst() {
        let t = Timeouts::default();
        let (ack, fin, syn) = (tcp_flags::ACK, tcp_flags::FIN, tcp_flags::SYN);
        assert_eq!(t.for_mapping(proto::TCP, syn, 0), t.tcp_transitory);
        assert_eq!(t.for_mapping(proto::TCP, syn | ack, syn | ack), t.tcp_established);
        assert_eq!(t.for_mapping(proto::TCP, ack | fin, ack), t.tcp_transitory);
        assert_eq!(t.for_mapping(proto::UDP, 0, 0), t.udp);
        assert_eq!(t.for_mapping(proto::ICMP, 0, 0), t.icmp);
    }
}
