//! The per-host port quota (RFC 6888 REQ-4) and what a refused host is told
//! (RFC 5508 REQ-8).
//!
//! The count of ports a host holds lives in two kernel maps so that neither
//! side overwrites the other: the datapath adds each mapping it claims to
//! `HOST_CLAIMS` atomically; natd keeps `HOST_RETURNS` = mappings released
//! minus mappings natd made itself. In use = claims - returns (wrapping).
//! The datapath refuses a claim past the quota and hands the packet here;
//! natd refuses its own allocations the same way.
//!
//! A refused new flow gets ICMP Destination Unreachable, code 13
//! (communication administratively prohibited), from the gateway's LAN
//! address, at most once a second per host and `REFUSAL_ICMP_PER_S` in all:
//! the application fails at once instead of retrying into silence, and a
//! host flooding new flows cannot turn natd into an ICMP amplifier.

use std::{
    collections::HashMap,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anyhow::Result;
use nat_common::{Endpoint, HostKey};

use crate::datapath::Datapath;

/// natd's side of the quota count.
pub struct HostQuota {
    /// Ports of one protocol an inside address may hold; 0: no limit.
    limit: u32,
    /// Mirror of `HOST_RETURNS` (natd is its only writer).
    returns: HashMap<HostKey, u64>,
}

impl HostQuota {
    pub fn new(limit: u32) -> Self {
        Self { limit, returns: HashMap::new() }
    }

    /// A reload's `ports_per_host`: new mappings are held to it; a host
    /// above it keeps what it holds.
    pub fn set_limit(&mut self, limit: u32) {
        self.limit = limit;
    }

    /// natd's side of the count as an adopted datapath holds it.
    pub fn adopt(&mut self, returns: Vec<(HostKey, u64)>) {
        self.returns = returns.into_iter().collect();
    }

    /// Ports of `inside`'s protocol its host holds now.
    pub fn in_use(&self, datapath: &Datapath, inside: &Endpoint) -> Result<u64> {
        let key = HostKey::of(inside);
        let returned = self.returns.get(&key).copied().unwrap_or(0);
        Ok(datapath.host_claims(key)?.wrapping_sub(returned))
    }

    /// Whether `inside`'s host may take one more port.
    pub fn allows(&self, datapath: &Datapath, inside: &Endpoint) -> Result<bool> {
        Ok(self.limit == 0 || self.in_use(datapath, inside)? < u64::from(self.limit))
    }

    /// natd made a mapping for `inside` (the datapath counted none).
    pub fn made(&mut self, datapath: &mut Datapath, inside: &Endpoint) -> Result<()> {
        self.adjust(datapath, inside, u64::wrapping_sub)
    }

    /// A mapping of `inside` ended, whoever made it.
    pub fn released(&mut self, datapath: &mut Datapath, inside: &Endpoint) -> Result<()> {
        self.adjust(datapath, inside, u64::wrapping_add)
    }

    fn adjust(&mut self, datapath: &mut Datapath, inside: &Endpoint, op: fn(u64, u64) -> u64) -> Result<()> {
        if self.limit == 0 {
            return Ok(());
        }
        let key = HostKey::of(inside);
        let value = op(self.returns.get(&key).copied().unwrap_or(0), 1);
        datapath.set_host_returns(key, value)?;
        self.returns.insert(key, value);
        Ok(())
    }
}

/// ICMP messages about refused flows, per second, for all hosts together.
pub const REFUSAL_ICMP_PER_S: u32 = 100;
/// At most one message per host in this interval.
const PER_HOST_INTERVAL: Duration = Duration::from_secs(1);

/// Rate limits for the ICMP answers to refused flows.
#[derive(Default)]
pub struct RefusalNotices {
    last_per_host: HashMap<Ipv4Addr, Instant>,
    second: Option<Instant>,
    sent_this_second: u32,
}

impl RefusalNotices {
    /// Whether a message to `host` may go out now; if so it is counted.
    pub fn admit(&mut self, host: Ipv4Addr, now: Instant) -> bool {
        if self.second.is_none_or(|start| now - start >= Duration::from_secs(1)) {
            self.second = Some(now);
            self.sent_this_second = 0;
            // Forget hosts whose interval is over: the table stays as small
            // as the set of hosts refused in the last second.
            self.last_per_host.retain(|_, last| now - *last < PER_HOST_INTERVAL);
        }
        if self.sent_this_second >= REFUSAL_ICMP_PER_S {
            return false;
        }
        if self.last_per_host.get(&host).is_some_and(|last| now - *last < PER_HOST_INTERVAL) {
            return false;
        }
        self.last_per_host.insert(host, now);
        self.sent_this_second += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 5508 REQ-8: refusal messages are rate-limited.
    #[test]
    fn refusal_notices_are_limited_per_host_and_in_all() {
        let mut notices = RefusalNotices::default();
        let t0 = Instant::now();
        let host = Ipv4Addr::new(10, 0, 0, 1);
        assert!(notices.admit(host, t0));
        assert!(!notices.admit(host, t0 + Duration::from_millis(500)), "twice in a second to one host");
        assert!(notices.admit(host, t0 + Duration::from_millis(1000)));
        let later = t0 + Duration::from_secs(5);
        let admitted = (0..1000u32).filter(|i| notices.admit(Ipv4Addr::from(0x0a01_0000 + i), later)).count();
        assert_eq!(admitted, REFUSAL_ICMP_PER_S as usize, "the overall limit per second");
    }
}
