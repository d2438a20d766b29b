//! The external port space. The daemon is its single owner: every external
//! port in the maps was handed out here.
//!
//! Policy: keep the inside port when it is free and in range (what games and
//! VoIP expect), otherwise pick at random (RFC 6056 style: hard to guess,
//! never sequential). One space per protocol; ICMP identifiers are the
//! "ports" of ICMP echo.

use std::collections::HashSet;

/// How many random probes before a deterministic sweep: the sweep guarantees
/// a free port is found whenever one exists, the probes keep it unpredictable.
const RANDOM_PROBES: u32 = 64;

pub struct PortAllocator {
    min: u16,
    max: u16,
    in_use: HashSet<(u8, u16)>,
    rng: u64,
}

impl PortAllocator {
    pub fn new(min: u16, max: u16, seed: u64) -> Self {
        assert!(min <= max, "port range {min}-{max} is empty");
        Self { min, max, in_use: HashSet::new(), rng: seed | 1 }
    }

    pub fn capacity(&self) -> u32 {
        u32::from(self.max - self.min) + 1
    }

    pub fn in_use(&self, proto: u8) -> usize {
        self.in_use.iter().filter(|(p, _)| *p == proto).count()
    }

    fn random(&mut self) -> u64 {
        // xorshift64*: the seed comes from the OS at start-up.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A free external port for `proto`, preferring `inside_port`. `None`
    /// when the range is exhausted for this protocol.
    pub fn allocate(&mut self, proto: u8, inside_port: u16) -> Option<u16> {
        if (self.min..=self.max).contains(&inside_port) && self.in_use.insert((proto, inside_port)) {
            return Some(inside_port);
        }
        let span = self.capacity();
        for _ in 0..RANDOM_PROBES {
            let port = self.min + (self.random() % u64::from(span)) as u16;
            if self.in_use.insert((proto, port)) {
                return Some(port);
            }
        }
        let start = (self.random() % u64::from(span)) as u32;
        (0..span)
            .map(|i| self.min + ((start + i) % span) as u16)
            .find(|&port| self.in_use.insert((proto, port)))
    }

    pub fn release(&mut self, proto: u8, port: u16) {
        self.in_use.remove(&(proto, port));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nat_common::proto::{TCP, UDP};

    #[test]
    fn keeps_the_inside_port_when_free_and_in_range() {
        let mut a = PortAllocator::new(20000, 29999, 7);
        assert_eq!(a.allocate(UDP, 25000), Some(25000));
        // Another protocol has its own space.
        assert_eq!(a.allocate(TCP, 25000), Some(25000));
    }

    #[test]
    fn a_taken_or_out_of_range_port_gets_a_random_one_in_range() {
        let mut a = PortAllocator::new(20000, 29999, 7);
        a.allocate(UDP, 25000);
        let second = a.allocate(UDP, 25000).unwrap();
        assert_ne!(second, 25000);
        assert!((20000..=29999).contains(&second));
        let low = a.allocate(UDP, 53).unwrap();
        assert!((20000..=29999).contains(&low));
        // Not sequential.
        let next = a.allocate(UDP, 53).unwrap();
        assert_ne!(next.abs_diff(low), 1, "{low} then {next}");
    }

    #[test]
    fn never_two_endpoints_on_one_port_and_exhaustion_is_reported() {
        let mut a = PortAllocator::new(1000, 1063, 99);
        let mut seen = HashSet::new();
        for _ in 0..64 {
            assert!(seen.insert(a.allocate(UDP, 5).unwrap()));
        }
        assert_eq!(a.allocate(UDP, 5), None, "64 ports, 65th request");
        a.release(UDP, 1010);
        assert_eq!(a.allocate(UDP, 5), Some(1010));
    }
}
