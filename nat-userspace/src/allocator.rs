//! The external port space. The daemon is its single owner: every external
//! port in the maps was handed out here.
//!
//! Policy: keep the inside port when it is free and in range (what games and
//! VoIP expect), otherwise pick at random (RFC 6056 style: hard to guess,
//! never sequential). One space per protocol; ICMP identifiers are the
//! "ports" of ICMP echo.
//!
//! A released port is held for a while before it can be handed out again, so
//! a new flow is not taken for the stray packets of the old one by a remote
//! peer still in TIME_WAIT.

use std::collections::{HashSet, VecDeque};

/// How many random probes before a deterministic sweep: the sweep guarantees
/// a free port is found whenever one exists, the probes keep it unpredictable.
const RANDOM_PROBES: u32 = 64;

pub struct PortAllocator {
    min: u16,
    max: u16,
    /// Allocated and held ports: neither can be handed out.
    taken: HashSet<(u8, u16)>,
    /// Released ports waiting out the hold, oldest first: (free at, proto, port).
    held: VecDeque<(u64, u8, u16)>,
    hold_ns: u64,
    rng: u64,
}

impl PortAllocator {
    pub fn new(min: u16, max: u16, hold_ns: u64, seed: u64) -> Self {
        assert!(min <= max, "port range {min}-{max} is empty");
        Self { min, max, taken: HashSet::new(), held: VecDeque::new(), hold_ns, rng: seed | 1 }
    }

    pub fn capacity(&self) -> u32 {
        u32::from(self.max - self.min) + 1
    }

    /// Ports of `proto` allocated to live mappings.
    pub fn in_use(&self, proto: u8) -> usize {
        self.taken.iter().filter(|(p, _)| *p == proto).count() - self.held(proto)
    }

    /// Ports of `proto` released but still held back.
    pub fn held(&self, proto: u8) -> usize {
        self.held.iter().filter(|(_, p, _)| *p == proto).count()
    }

    /// Ports of `proto` that can be handed out now.
    pub fn free(&self, proto: u8) -> usize {
        self.capacity() as usize - self.taken.iter().filter(|(p, _)| *p == proto).count()
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
        if (self.min..=self.max).contains(&inside_port) && self.taken.insert((proto, inside_port)) {
            return Some(inside_port);
        }
        let span = self.capacity();
        for _ in 0..RANDOM_PROBES {
            let port = self.min + (self.random() % u64::from(span)) as u16;
            if self.taken.insert((proto, port)) {
                return Some(port);
            }
        }
        let start = (self.random() % u64::from(span)) as u32;
        (0..span)
            .map(|i| self.min + ((start + i) % span) as u16)
            .find(|&port| self.taken.insert((proto, port)))
    }

    /// Gives `port` back; it becomes free `hold` after `now_ns`.
    pub fn release(&mut self, proto: u8, port: u16, now_ns: u64) {
        if self.hold_ns == 0 {
            self.taken.remove(&(proto, port));
        } else {
            self.held.push_back((now_ns + self.hold_ns, proto, port));
        }
    }

    /// Returns to the pool every held port whose hold has ended by `now_ns`.
    pub fn reclaim(&mut self, now_ns: u64) {
        while let Some(&(free_at, proto, port)) = self.held.front() {
            if free_at > now_ns {
                break;
            }
            self.held.pop_front();
            self.taken.remove(&(proto, port));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nat_common::proto::{TCP, UDP};

    #[test]
    fn keeps_the_inside_port_when_free_and_in_range() {
        let mut a = PortAllocator::new(20000, 29999, 0, 7);
        assert_eq!(a.allocate(UDP, 25000), Some(25000));
        // Another protocol has its own space.
        assert_eq!(a.allocate(TCP, 25000), Some(25000));
    }

    #[test]
    fn a_taken_or_out_of_range_port_gets_a_random_one_in_range() {
        let mut a = PortAllocator::new(20000, 29999, 0, 7);
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
        let mut a = PortAllocator::new(1000, 1063, 0, 99);
        let mut seen = HashSet::new();
        for _ in 0..64 {
            assert!(seen.insert(a.allocate(UDP, 5).unwrap()));
        }
        assert_eq!(a.allocate(UDP, 5), None, "64 ports, 65th request");
        a.release(UDP, 1010, 0);
        assert_eq!(a.allocate(UDP, 5), Some(1010));
    }

    #[test]
    fn a_released_port_is_held_before_reuse() {
        let hold = 120_000_000_000;
        let mut a = PortAllocator::new(1000, 1001, hold, 3);
        let (p1, p2) = (a.allocate(UDP, 1000).unwrap(), a.allocate(UDP, 1001).unwrap());
        a.release(UDP, p1, 10);
        assert_eq!((a.in_use(UDP), a.held(UDP), a.free(UDP)), (1, 1, 0));
        a.reclaim(10 + hold - 1);
        assert_eq!(a.allocate(UDP, 1000), None, "still held");
        a.reclaim(10 + hold);
        assert_eq!((a.in_use(UDP), a.held(UDP), a.free(UDP)), (1, 0, 1));
        assert_eq!(a.allocate(UDP, 5), Some(p1));
        assert_ne!(p1, p2);
    }
}
