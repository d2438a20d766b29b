//! The external port space of one external address. The daemon is its
//! single owner: every external port in the maps was handed out here.
//!
//! Policy: keep the inside port when it is free and in range (what games and
//! VoIP expect), otherwise pick at random (RFC 6056 style: hard to guess,
//! never sequential). With parity kept (RFC 4787 REQ-4) a random port has
//! the inside port's parity whenever one of that parity is free, so RTP on an
//! even port and RTCP on the next odd one stay a pair; with class kept (REQ-3a) an inside port below 1024 gets
//! one from the low range, when one is configured. One space per protocol;
//! ICMP identifiers are the "ports" of ICMP echo (parity does not apply).
//!
//! A released port is held for a while before it can be handed out again, so
//! a new flow is not taken for the stray packets of the old one by a remote
//! peer still in TIME_WAIT.

use std::collections::VecDeque;

use nat_common::proto;

/// How many random probes before a deterministic sweep: the sweep guarantees
/// a free port is found whenever one exists, the probes keep it unpredictable.
const RANDOM_PROBES: u32 = 64;

/// Which properties of the inside port an allocated port keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortPolicy {
    /// RFC 4787 REQ-4: even stays even, odd stays odd.
    pub parity: bool,
    /// RFC 4787 REQ-3a: below 1024 stays below 1024 (needs `low`).
    pub class: bool,
    /// The ports below 1024 an inside port below 1024 gets, inclusive.
    pub low: Option<(u16, u16)>,
}

impl PortPolicy {
    /// Nothing kept but the inside port itself when it is free and in range.
    pub const NONE: PortPolicy = PortPolicy { parity: false, class: false, low: None };
}

pub struct PortAllocator {
    min: u16,
    max: u16,
    policy: PortPolicy,
    /// Allocated, held and queued ports: none can be handed out.
    taken: Taken,
    /// Released ports waiting out the hold, oldest first: (free at, proto, port).
    held: VecDeque<(u64, u8, u16)>,
    hold_ns: u64,
    /// Ports handed to the datapath's free queues, per protocol (`slot`) and
    /// parity: taken, but not yet in use by a flow.
    queued: [[usize; 2]; 5],
    /// The same ports, each.
    queued_ports: PortSet,
    rng: u64,
}

/// Ports per protocol as one bit each: 8 KiB a protocol, allocated on its
/// first port. Finding a free port in a nearly full range is a walk over
/// 64-port words. With a hash set of (protocol, port) it was a lookup per
/// taken port: at the end of a burst that nearly filled a 59,976-port range
/// a debug natd set up ~70 flows a second, each allocation a sweep.
#[derive(Default)]
struct PortSet {
    words: [Vec<u64>; 5],
}

/// 64-bit words of one protocol's bits.
const WORDS: usize = (u16::MAX as usize + 1) / 64;
/// The even and the odd ports of a word (a word starts at a multiple of 64).
const EVEN_PORTS: u64 = 0x5555_5555_5555_5555;
const ODD_PORTS: u64 = !EVEN_PORTS;

impl PortSet {
    fn contains(&self, proto: u8, port: u16) -> bool {
        self.words[slot(proto)].get(usize::from(port) / 64).is_some_and(|word| word >> (port % 64) & 1 != 0)
    }

    /// True when `port` was not in the set.
    fn insert(&mut self, proto: u8, port: u16) -> bool {
        let words = &mut self.words[slot(proto)];
        if words.is_empty() {
            words.resize(WORDS, 0);
        }
        let (word, bit) = (&mut words[usize::from(port) / 64], 1u64 << (port % 64));
        let new = *word & bit == 0;
        *word |= bit;
        new
    }

    /// True when `port` was in the set.
    fn remove(&mut self, proto: u8, port: u16) -> bool {
        let Some(word) = self.words[slot(proto)].get_mut(usize::from(port) / 64) else { return false };
        let bit = 1u64 << (port % 64);
        let was = *word & bit != 0;
        *word &= !bit;
        was
    }

    /// The lowest port of `lo..=hi` not in the set among those `mask`
    /// selects in each word (every port, or one parity).
    fn first_absent(&self, proto: u8, lo: u16, hi: u16, mask: u64) -> Option<u16> {
        let words = &self.words[slot(proto)];
        let (first, last) = (usize::from(lo) / 64, usize::from(hi) / 64);
        (first..=last).find_map(|w| {
            let mut absent = !words.get(w).copied().unwrap_or(0) & mask;
            if w == first {
                absent &= u64::MAX << (lo % 64);
            }
            if w == last {
                absent &= u64::MAX >> (63 - hi % 64);
            }
            // w < 1024: the port fits a u16.
            (absent != 0).then(|| (w * 64) as u16 + absent.trailing_zeros() as u16)
        })
    }

    #[cfg(test)]
    fn len(&self, proto: u8) -> usize {
        self.words[slot(proto)].iter().map(|word| word.count_ones() as usize).sum()
    }
}

/// The taken ports, with a count per protocol (so what is free is known
/// without a walk of every port: the queue refill asks at each wake-up).
#[derive(Default)]
struct Taken {
    ports: PortSet,
    per_protocol: [usize; 5],
}

impl Taken {
    fn insert(&mut self, (proto, port): (u8, u16)) -> bool {
        let new = self.ports.insert(proto, port);
        self.per_protocol[slot(proto)] += usize::from(new);
        new
    }

    fn remove(&mut self, &(proto, port): &(u8, u16)) -> bool {
        let gone = self.ports.remove(proto, port);
        self.per_protocol[slot(proto)] -= usize::from(gone);
        gone
    }

    fn contains(&self, &(proto, port): &(u8, u16)) -> bool {
        self.ports.contains(proto, port)
    }

    fn count(&self, proto: u8) -> usize {
        self.per_protocol[slot(proto)]
    }
}

/// Index of a protocol's counters.
const fn slot(proto: u8) -> usize {
    match proto {
        nat_common::proto::TCP => 0,
        nat_common::proto::UDP => 1,
        nat_common::proto::ICMP => 2,
        nat_common::proto::SCTP => 3,
        _ => 4,
    }
}

const fn parity_of(port: u16) -> usize {
    (port & 1) as usize
}

impl PortAllocator {
    pub fn new(min: u16, max: u16, hold_ns: u64, seed: u64) -> Self {
        Self::with_policy(min, max, PortPolicy::NONE, hold_ns, seed)
    }

    pub fn with_policy(min: u16, max: u16, policy: PortPolicy, hold_ns: u64, seed: u64) -> Self {
        assert!(min <= max, "port range {min}-{max} is empty");
        Self { min, max, policy, taken: Taken::default(), held: VecDeque::new(), hold_ns, queued: [[0; 2]; 5], queued_ports: PortSet::default(), rng: seed | 1 }
    }

    /// A reload's parity and class: for allocations from now on.
    pub fn set_parity_and_class(&mut self, parity: bool, class: bool) {
        self.policy.parity = parity;
        self.policy.class = class;
    }

    pub fn capacity(&self) -> u32 {
        let low = self.policy.low.map_or(0, |(lo, hi)| u32::from(hi - lo) + 1);
        u32::from(self.max - self.min) + 1 + low
    }

    /// Ports of `proto` allocated to live mappings.
    pub fn in_use(&self, proto: u8) -> usize {
        self.taken.count(proto) - self.held(proto) - self.queued(proto)
    }

    /// Ports of `proto` waiting in the datapath's free queues.
    pub fn queued(&self, proto: u8) -> usize {
        self.queued[slot(proto)].iter().sum()
    }

    /// Ports of `proto` and `parity` (0 even, 1 odd) waiting in their queue.
    pub fn queued_of(&self, proto: u8, parity: u16) -> usize {
        self.queued[slot(proto)][parity_of(parity)]
    }

    /// A random free port of `parity` for the datapath's free queue of `proto`.
    pub fn reserve(&mut self, proto: u8, parity: u16) -> Option<u16> {
        let port = self.pick(proto, self.min, self.max, Some(parity & 1))?;
        self.queued[slot(proto)][parity_of(port)] += 1;
        self.queued_ports.insert(proto, port);
        Some(port)
    }

    /// Whether `port` of the NAT range is free for `proto`.
    pub fn is_free(&self, proto: u8, port: u16) -> bool {
        (self.min..=self.max).contains(&port) && !self.taken.contains(&(proto, port))
    }

    /// Reserves exactly `port` for the datapath's free queue of `proto`, if
    /// it is free (see `is_free`).
    pub fn reserve_exact(&mut self, proto: u8, port: u16) -> bool {
        if !self.is_free(proto, port) {
            return false;
        }
        self.taken.insert((proto, port));
        self.queued[slot(proto)][parity_of(port)] += 1;
        self.queued_ports.insert(proto, port);
        true
    }

    /// Whether `port` waits in the datapath's free queue of `proto`.
    pub fn is_queued(&self, proto: u8, port: u16) -> bool {
        self.queued_ports.contains(proto, port)
    }

    /// A queued port of `proto` went to a flow (once: a second call for
    /// the same port changes nothing).
    pub fn claimed(&mut self, proto: u8, port: u16) {
        if self.queued_ports.remove(proto, port) {
            let queued = &mut self.queued[slot(proto)][parity_of(port)];
            *queued = queued.saturating_sub(1);
        }
    }

    /// A port `allocate` handed out that no mapping ever used: free at once,
    /// no hold.
    pub fn cancel(&mut self, proto: u8, port: u16) {
        self.taken.remove(&(proto, port));
    }

    /// A reserved port that never reached the queue.
    pub fn unreserve(&mut self, proto: u8, port: u16) {
        self.claimed(proto, port);
        self.cancel(proto, port);
    }

    /// Ports of `proto` released but still held back.
    pub fn held(&self, proto: u8) -> usize {
        self.held.iter().filter(|(_, p, _)| *p == proto).count()
    }

    /// Ports of `proto` that a new flow can get now (queued ones included).
    pub fn free(&self, proto: u8) -> usize {
        self.capacity() as usize - self.taken.count(proto) + self.queued(proto)
    }

    fn random(&mut self) -> u64 {
        // xorshift64*: the seed comes from the OS at start-up.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A free external port for `proto`, preferring `inside_port`. `None`
    /// when the range (of the inside port's class and parity, if kept) is
    /// exhausted for this protocol.
    pub fn allocate(&mut self, proto: u8, inside_port: u16) -> Option<u16> {
        let (lo, hi) = match self.policy.low {
            Some(low) if self.policy.class && inside_port < 1024 => low,
            _ => (self.min, self.max),
        };
        if (lo..=hi).contains(&inside_port) && self.taken.insert((proto, inside_port)) {
            return Some(inside_port);
        }
        // Parity is kept when a port of it is free; a flow that loses its
        // parity beats a flow refused.
        if self.policy.parity
            && proto != proto::ICMP
            && let Some(port) = self.pick(proto, lo, hi, Some(inside_port & 1))
        {
            return Some(port);
        }
        self.pick(proto, lo, hi, None)
    }

    /// A random free port in `lo..=hi`, of `parity` if given: random probes,
    /// then a sweep from a random start, wrapping at `hi`.
    fn pick(&mut self, proto: u8, lo: u16, hi: u16, parity: Option<u16>) -> Option<u16> {
        // Candidates are lo + step * k for k < count.
        let (first, step, mask) = match parity {
            Some(p) if lo & 1 == p => (lo, 2, if p == 0 { EVEN_PORTS } else { ODD_PORTS }),
            Some(_) if lo < hi => (lo + 1, 2, if lo & 1 == 0 { ODD_PORTS } else { EVEN_PORTS }),
            Some(_) => return None,
            None => (lo, 1, u64::MAX),
        };
        let count = u32::from(hi - first) / step + 1;
        let candidate = |k: u32| first + (k * step) as u16;
        for _ in 0..RANDOM_PROBES {
            let port = candidate((self.random() % u64::from(count)) as u32);
            if self.taken.insert((proto, port)) {
                return Some(port);
            }
        }
        let start = candidate((self.random() % u64::from(count)) as u32);
        let ports = &self.taken.ports;
        let port = ports.first_absent(proto, start, hi, mask).or_else(|| (start > first).then(|| ports.first_absent(proto, first, start - 1, mask)).flatten())?;
        self.taken.insert((proto, port));
        Some(port)
    }

    /// Gives `port` back; it becomes free `hold` after `now_ns`.
    pub fn release(&mut self, proto: u8, port: u16, now_ns: u64) {
        if self.hold_ns == 0 {
            self.taken.remove(&(proto, port));
        } else {
            self.held.push_back((now_ns + self.hold_ns, proto, port));
        }
    }

    /// A port a live mapping already holds (a datapath natd adopted).
    pub fn adopt(&mut self, proto: u8, port: u16) {
        self.taken.insert((proto, port));
    }

    /// A port the previous natd held back until `free_at` (ns, natd's
    /// clock), unless something holds it already. Call in `free_at` order.
    pub fn adopt_held(&mut self, free_at: u64, proto: u8, port: u16) {
        if self.taken.insert((proto, port)) {
            self.held.push_back((free_at, proto, port));
        }
    }

    /// The ports held back, oldest first: (free at, proto, port).
    pub fn held_ports(&self) -> impl Iterator<Item = (u64, u8, u16)> + '_ {
        self.held.iter().copied()
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
    use std::{
        collections::HashSet,
        time::{Duration, Instant},
    };

    use super::*;
    use nat_common::proto::{TCP, UDP};

    /// The sweep finds the last free ports of a full range wherever they
    /// are, keeping parity while a port of it is left, then the other.
    #[test]
    fn the_last_free_ports_of_a_nearly_full_range_are_found() {
        let keep = PortPolicy { parity: true, ..PortPolicy::NONE };
        let mut a = PortAllocator::with_policy(1024, 60999, keep, 0, 13);
        let last = [1024u16, 30001, 59998, 60999];
        for port in (1024..=60999).filter(|p| !last.contains(p)) {
            a.adopt(UDP, port);
        }
        let odd: HashSet<u16> = (0..2).map(|_| a.allocate(UDP, 5001).unwrap()).collect();
        assert_eq!(odd, HashSet::from([30001, 60999]));
        assert_eq!(a.allocate(UDP, 5003).map(|p| p & 1), Some(0), "no odd port left: an even one");
        assert!([1024, 59998].contains(&a.allocate(UDP, 5005).unwrap()));
        assert_eq!(a.allocate(UDP, 5007), None);
        assert_eq!(a.allocate(TCP, 5007), Some(5007), "TCP has its own ports");
    }

    /// A nearly full range costs a walk over 64-port words per allocation,
    /// not a set lookup per taken port: 2,000 allocations, each past random
    /// probes that all fail, take well under a second (a few ms here; with
    /// a hash set of the taken ports, 9.1 s in a debug build).
    #[test]
    fn an_allocation_in_a_nearly_full_range_is_a_walk_over_words() {
        let mut a = PortAllocator::new(1024, 60999, 0, 17);
        for port in 1024..=58999 {
            a.adopt(UDP, port);
        }
        let started = Instant::now();
        let got: HashSet<u16> = (0..2000).map(|_| a.allocate(UDP, 80).unwrap()).collect();
        let took = started.elapsed();
        assert_eq!(got, (59000..=60999).collect::<HashSet<u16>>());
        assert_eq!(a.allocate(UDP, 80), None);
        assert!(took < Duration::from_secs(1), "2,000 allocations took {took:?}");
    }

    /// The free count is kept, not walked for (the queue refill reads it
    /// at every wake-up): it must agree with a walk after any change.
    #[test]
    fn the_free_count_follows_every_change() {
        let mut a = PortAllocator::new(1000, 1099, 1_000, 7);
        let walked = |a: &PortAllocator, proto: u8| a.capacity() as usize - a.taken.ports.len(proto) + a.queued(proto);
        for i in 0..400u16 {
            let port = 1000 + (i * 37) % 100;
            match i % 6 {
                0 | 1 => drop(a.allocate(UDP, port)),
                2 => drop(a.reserve(UDP, i & 1)),
                3 => a.release(UDP, port, u64::from(i)),
                4 => a.claimed(UDP, port),
                _ => a.reclaim(u64::from(i) * 10),
            }
            a.allocate(TCP, port);
            for proto in [UDP, TCP] {
                assert_eq!(a.free(proto), walked(&a, proto), "step {i}");
            }
        }
    }

    #[test]
    fn keeps_the_inside_port_when_free_and_in_range() {
        let mut a = PortAllocator::new(20000, 29999, 0, 7);
        assert_eq!(a.allocate(UDP, 25000), Some(25000));
        // Another protocol has its own space.
        assert_eq!(a.allocate(TCP, 25000), Some(25000));
    }

    /// RFC 6056 / RFC 7857: external ports hard to guess, never sequential.
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

    /// RFC 4787 REQ-3, RFC 5382 REQ-7: no port overloading; RFC 6888 REQ-11.
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
        let q = a.reserve(UDP, 0).unwrap();
        assert_eq!(q, 1000, "the only even port of 1000-1002 but the other one: {q}");
        assert_eq!((a.in_use(UDP), a.queued(UDP), a.free(UDP)), (0, 1, 3));
        let direct = a.allocate(UDP, q).unwrap();
        assert_ne!(direct, q, "a queued port was allocated again");
        a.claimed(UDP, q);
        assert_eq!((a.in_use(UDP), a.queued(UDP), a.free(UDP)), (2, 0, 1));
    }

    /// RFC 6888 REQ-8: a freed port is held before reuse.
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

    /// RFC 4787 REQ-4: with parity kept, a port picked at random (the inside
    /// port taken or out of range) has the inside port's parity; without,
    /// both parities come up. Queued ports have the parity of their queue.
    #[test]
    fn parity_is_kept_when_asked() {
        let keep = PortPolicy { parity: true, ..PortPolicy::NONE };
        let mut a = PortAllocator::with_policy(20000, 20999, keep, 0, 11);
        for inside in [5000u16, 5001, 5002, 5003].into_iter().cycle().take(400) {
            let port = a.allocate(UDP, inside).unwrap();
            assert_eq!(port & 1, inside & 1, "inside {inside} got {port}");
        }
        // Odd ports all taken: an odd inside port gets an even one rather than none.
        let mut full = PortAllocator::with_policy(20000, 20003, keep, 0, 3);
        assert_eq!([full.allocate(UDP, 7001), full.allocate(UDP, 7003)].map(|p| p.unwrap() & 1), [1, 1]);
        assert_eq!(full.allocate(UDP, 7005).map(|p| p & 1), Some(0), "no fallback to the other parity");
        let mut b = PortAllocator::new(20000, 20999, 0, 11);
        let parities: HashSet<u16> = (0..64).map(|_| b.allocate(UDP, 5001).unwrap() & 1).collect();
        assert_eq!(parities.len(), 2, "parity off still kept parity");
        for parity in [0, 1] {
            assert_eq!(b.reserve(TCP, parity).unwrap() & 1, parity);
        }

    }

    /// RFC 4787 REQ-3a: with class kept, an inside port below 1024 gets one
    /// from the low range (the inside port itself when it is in it and free),
    /// and one above never does; without, every port comes from the NAT range.
    #[test]
    fn class_is_kept_when_asked_and_a_low_range_exists() {
        let keep = PortPolicy { parity: false, class: true, low: Some((600, 699)) };
        let mut a = PortAllocator::with_policy(20000, 29999, keep, 0, 5);
        assert_eq!(a.allocate(UDP, 650), Some(650));
        let ntp = a.allocate(UDP, 123).unwrap();
        assert!((600..=699).contains(&ntp), "123 got {ntp}");
        let high = a.allocate(UDP, 40000).unwrap();
        assert!((20000..=29999).contains(&high), "40000 got {high}");
        for _ in 0..99 {
            a.allocate(UDP, 123);
        }
        assert_eq!(a.allocate(UDP, 123), None, "the low range is full: no high port instead");
        let mut off = PortAllocator::with_policy(20000, 29999, PortPolicy { class: false, ..keep }, 0, 5);
        assert!((20000..=29999).contains(&off.allocate(UDP, 123).unwrap()));
    }
}
