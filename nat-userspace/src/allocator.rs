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
    /// Ports handed to the datapath's free queues, per protocol (`slot`):
    /// taken, but not yet in use by a flow.
    queued: [usize; 4],
    rng: u64,
}

/// Index of a protocol's counters.
const fn slot(proto: u8) -> usize {
    match proto {
        nat_common::proto::TCP => 0,
        nat_common::proto::UDP => 1,
        nat_common::proto::ICMP => 2,
        _ => 3,
    }
}

impl PortAllocator {
    pub fn new(min: u16, max: u16, hold_ns: u64, seed: u64) -> Self {
        assert!(min <= max, "port range {min}-{max} is empty");
        Self { min, max, taken: HashSet::new(), held: VecDeque::new(), hold_ns, queued: [0; 4], rng: seed | 1 }
    }

    pub fn capacity(&self) -> u32 {
        u32::from(self.max - self.min) + 1
    }

    /// Ports of `proto` allocated to live mappings.
    pub fn in_use(&self, proto: u8) -> usize {
        self.taken.iter().filter(|(p, _)| *p == proto).count() - self.held(proto) - self.queued(proto)
    }

    /// Ports of `proto` waiting in the datapath's free queue.
    pub fn queued(&self, proto: u8) -> usize {
        self.queued[slot(proto)]
    }

    /// A random free port for the datapath's free queue of `proto`.
    pub fn reserve(&mut self, proto: u8) -> Option<u16> {
        // Port 0 is never in range: the pick is random, never the "inside port".
        let port = self.allocate(proto, 0)?;
        self.queued[slot(proto)] += 1;
        Some(port)
    }

    /// A queued port of `proto` went to a flow.
    pub fn claimed(&mut self, proto: u8) {
        self.queued[slot(proto)] = self.queued[slot(proto)].saturating_sub(1);
    }

    /// A port `allocate` handed out that no mapping ever used: free at once,
    /// no hold.
    pub fn cancel(&mut self, proto: u8, port: u16) {
        self.taken.remove(&(proto, port));
    }

    /// A reserved port that never reached the queue.
    pub fn unreserve(&mut self, proto: u8, port: u16) {
        self.claimed(proto);
        self.cancel(proto, port);
    }

    /// Ports of `proto` released but still held back.
    pub fn held(&self, proto: u8) -> usize {
        self.held.iter().filter(|(_, p, _)| *p == proto).count()
    }

    /// Ports of `proto` that a new flow can get now (queued ones included).
    pub fn free(&self, proto: u8) -> usize {
        self.capacity() as usize - self.taken.iter().filter(|(p, _)| *p == proto).count() + self.queued(proto)
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
    fn queued_ports_are_neither_in_use_nor_handed_out_twice() {
        let mut a = PortAllocator::new(1000, 1002, 0, 5);
        let q = a.reserve(UDP).unwrap();
        assert_eq!((a.in_use(UDP), a.queued(UDP), a.free(UDP)), (0, 1, 3));
        let direct = a.allocate(UDP, q).unwrap();
        assert_ne!(direct, q, "a queued port was allocated again");
        a.claimed(UDP);
        assert_eq!((a.in_use(UDP), a.queued(UDP), a.free(UDP)), (2, 0, 1));
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
