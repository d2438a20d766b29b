//! Which source addresses each side of the gateway accepts: anti-spoofing at
//! the edge of the inside network (BCP 38 / RFC 2827 on the LAN, BCP 84 /
//! RFC 3704 on the WAN), the special-purpose addresses of RFC 6890 that no
//! packet may come from, and the addresses RFC 1812 5.3.7 says a router must
//! not forward packets from.
//!
//! One policy for both sides of the kernel boundary: the XDP programs judge
//! every packet by it, natd its own first packets, the tests their tables.
//! The kernel's `rp_filter` cannot do this job: the programs translate and
//! redirect frames without the kernel's input path.

use crate::{GatewayConfig, Reason};

/// An IPv4 prefix in network byte order: `addr_be & mask_be == addr_be`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Prefix {
    /// The network address (host bits zero), network byte order.
    pub addr_be: u32,
    /// The netmask, network byte order.
    pub mask_be: u32,
}
const _: () = assert!(core::mem::size_of::<Prefix>() == 8);

impl Prefix {
    /// `addr`/`len`, host bits cleared. `len` above 32 is taken as 32.
    pub const fn new(addr: core::net::Ipv4Addr, len: u8) -> Self {
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - if len > 32 { 32 } else { len }) };
        let addr = u32::from_be_bytes(addr.octets()) & mask;
        Self { addr_be: addr.to_be(), mask_be: mask.to_be() }
    }

    /// Both operands are in network order, so the AND works on the wire
    /// bytes as they are: no swap on the per-packet path.
    #[inline(always)]
    pub const fn contains(&self, addr_be: u32) -> bool {
        addr_be & self.mask_be == self.addr_be
    }

    /// The prefix length (0-32).
    pub const fn len(&self) -> u8 {
        u32::from_be(self.mask_be).count_ones() as u8
    }

    pub const fn is_empty(&self) -> bool {
        self.mask_be == 0 && self.addr_be == 0
    }

    /// The network address, host order.
    pub const fn network(&self) -> core::net::Ipv4Addr {
        let o = self.addr_be.to_ne_bytes();
        core::net::Ipv4Addr::new(o[0], o[1], o[2], o[3])
    }

    /// Whether `addr_be` is this subnet's network or directed-broadcast
    /// address, which no host has (RFC 1812 5.3.7, RFC 919). A /31 (RFC
    /// 3021) and a /32 have neither.
    #[inline(always)]
    pub const fn is_network_or_broadcast(&self, addr_be: u32) -> bool {
        let host_bits = u32::from_be(!self.mask_be);
        host_bits > 1 && (addr_be == self.addr_be || addr_be == self.addr_be | !self.mask_be)
    }

    /// Whether the two prefixes share an address.
    pub const fn overlaps(&self, other: &Prefix) -> bool {
        let mask = self.mask_be & other.mask_be;
        self.addr_be & mask == other.addr_be & mask
    }
}

/// The most inside prefixes the datapath checks (connected and routed).
pub const MAX_INSIDE_PREFIXES: usize = 16;

/// The most addresses of the gateway's own interfaces the datapath knows,
/// besides the external pool.
pub const MAX_OWN_ADDRS: usize = 8;

/// The most prefixes an operator may list in `wan_drop_sources`.
pub const MAX_WAN_DROP_SOURCES: u32 = 1024;

/// RFC 6890 addresses no packet may come from on either side: "this
/// network" 0/8, loopback 127/8, multicast 224/4 and reserved 240/4 (which
/// holds the limited broadcast 255.255.255.255). One byte decides: the first
/// octet sits first in memory whatever the host's byte order.
#[inline(always)]
pub const fn is_martian(addr_be: u32) -> bool {
    let first = addr_be.to_ne_bytes()[0];
    first == 0 || first == 127 || first >= 224
}

impl GatewayConfig {
    /// Whether `addr_be` lies in an inside prefix.
    #[inline(always)]
    pub fn is_inside(&self, addr_be: u32) -> bool {
        let mut i = 0;
        while i < MAX_INSIDE_PREFIXES {
            if i as u32 >= self.inside_len {
                return false;
            }
            if self.inside[i].contains(addr_be) {
                return true;
            }
            i += 1;
        }
        false
    }

    /// Whether `addr_be` is one of the gateway's own addresses: the external
    /// pool or an address of its LAN or WAN interface.
    #[inline(always)]
    pub fn is_own(&self, addr_be: u32) -> bool {
        if self.is_external(addr_be) {
            return true;
        }
        let mut i = 0;
        while i < MAX_OWN_ADDRS {
            if i as u32 >= self.own_len {
                return false;
            }
            if self.own_addrs_be[i] == addr_be {
                return true;
            }
            i += 1;
        }
        false
    }

    /// Whether `addr_be` is the network or broadcast address of a prefix of
    /// the LAN interface itself (routed inside prefixes are the inside
    /// router's business: their edges may be hosts behind it).
    #[inline(always)]
    fn is_lan_network_or_broadcast(&self, addr_be: u32) -> bool {
        let mut i = 0;
        while i < MAX_INSIDE_PREFIXES {
            if i as u32 >= self.inside_len {
                return false;
            }
            if self.inside_connected & (1 << i) != 0 && self.inside[i].is_network_or_broadcast(addr_be) {
                return true;
            }
            i += 1;
        }
        false
    }

    /// BCP 38: why a LAN packet's source may not be translated or forwarded,
    /// `None` when it may. Only inside prefixes are translated; within them,
    /// the gateway's own addresses and the LAN's network and broadcast
    /// addresses are no inside host's (RFC 1812 5.3.7). An inside host that
    /// invented such sources would otherwise have the gateway relay for it,
    /// and take a fresh port quota for every address it made up.
    #[inline(always)]
    pub fn lan_source_refusal(&self, src_be: u32) -> Option<Reason> {
        if is_martian(src_be) || !self.is_inside(src_be) {
            return Some(Reason::DropLanSourceNotInside);
        }
        if self.is_own(src_be) || self.is_lan_network_or_broadcast(src_be) {
            return Some(Reason::DropLanSourceReserved);
        }
        None
    }

    /// BCP 84: why a WAN packet's source is refused before anything else is
    /// done with it, `None` when it may come in. The operator's own list
    /// (`wan_drop_sources`) is a map the datapath checks after this.
    #[inline(always)]
    pub fn wan_source_refusal(&self, src_be: u32) -> Option<Reason> {
        // Every WAN packet pays for this: the screen answers for most
        // sources with one bit (the full check cost ~12 ns a packet).
        let first = src_be.to_ne_bytes()[0];
        if self.source_screen[(first >> 6) as usize] & (1 << (first & 63)) == 0 {
            return None;
        }
        self.wan_source_refusal_unscreened(src_be)
    }

    /// `wan_source_refusal` without the screen.
    #[inline(always)]
    pub fn wan_source_refusal_unscreened(&self, src_be: u32) -> Option<Reason> {
        if is_martian(src_be) {
            return Some(Reason::DropWanSourceMartian);
        }
        if self.is_inside(src_be) {
            return Some(Reason::DropWanSourceInside);
        }
        if self.is_own(src_be) {
            return Some(Reason::DropWanSourceOwn);
        }
        None
    }
}

impl GatewayConfig {
    /// The same with `source_screen` derived from the special-purpose
    /// blocks, the inside prefixes and the gateway's own addresses: every
    /// first octet an address `wan_source_refusal` refuses can start with.
    /// Whoever writes CONFIG[0] calls this last.
    pub const fn with_source_screen(mut self) -> Self {
        let mut screen = [0u64; 4];
        let mut octet = 0u32;
        while octet < 256 {
            let addr_be = u32::from_ne_bytes([octet as u8, 0, 0, 0]);
            if is_martian(addr_be) {
                screen[(octet >> 6) as usize] |= 1 << (octet & 63);
            }
            octet += 1;
        }
        let mut i = 0;
        while i < MAX_INSIDE_PREFIXES && i < self.inside_len as usize {
            // A prefix shorter than /8 spans several first octets.
            let p = self.inside[i];
            let low = p.addr_be.to_ne_bytes()[0] as u32;
            let high = (p.addr_be | !p.mask_be).to_ne_bytes()[0] as u32;
            let mut octet = low;
            while octet <= high {
                screen[(octet >> 6) as usize] |= 1 << (octet & 63);
                octet += 1;
            }
            i += 1;
        }
        let mut i = 0;
        while i < crate::MAX_POOL_ADDRS + MAX_OWN_ADDRS {
            let addr_be = if i < crate::MAX_POOL_ADDRS {
                if i < self.pool_len as usize { self.external_addrs_be[i] } else { 0 }
            } else if i - crate::MAX_POOL_ADDRS < self.own_len as usize {
                self.own_addrs_be[i - crate::MAX_POOL_ADDRS]
            } else {
                0
            };
            let octet = addr_be.to_ne_bytes()[0] as u32;
            screen[(octet >> 6) as usize] |= 1 << (octet & 63);
            i += 1;
        }
        self.source_screen = screen;
        self
    }
}

#[cfg(test)]
mod tests {
    use core::net::Ipv4Addr;

    use super::*;

    fn be(a: [u8; 4]) -> u32 {
        u32::from_ne_bytes(a)
    }

    fn config() -> GatewayConfig {
        GatewayConfig::new(Ipv4Addr::new(203, 0, 113, 1), 2, 20000, 29999)
            .with_inside_prefix(Prefix::new(Ipv4Addr::new(10, 77, 1, 0), 24), true)
            .with_inside_prefix(Prefix::new(Ipv4Addr::new(10, 88, 0, 0), 16), false)
            .with_own_addr(Ipv4Addr::new(10, 77, 1, 1))
            .with_source_screen()
    }

    proptest::proptest! {
        /// The screen never lets by a source the full check refuses, for
        /// any inside prefixes, pool and own addresses.
        #[test]
        fn the_screen_hides_no_refusal(
            prefixes in proptest::collection::vec((proptest::prelude::any::<u32>(), 1u8..=32), 0..=MAX_INSIDE_PREFIXES),
            own in proptest::collection::vec(proptest::prelude::any::<u32>(), 0..=MAX_OWN_ADDRS),
            pool in proptest::collection::vec(proptest::prelude::any::<u32>(), 1..=crate::MAX_POOL_ADDRS),
            probes in proptest::collection::vec(proptest::prelude::any::<u32>(), 64),
        ) {
            let mut c = GatewayConfig::new(Ipv4Addr::from(pool[0]), 2, 20000, 29999);
            for (i, addr) in pool.iter().enumerate() {
                c.external_addrs_be[i] = addr.to_be();
            }
            c.pool_len = pool.len() as u32;
            for (addr, len) in &prefixes {
                c = c.with_inside_prefix(Prefix::new(Ipv4Addr::from(*addr), *len), false);
            }
            for addr in &own {
                c = c.with_own_addr(Ipv4Addr::from(*addr));
            }
            let c = c.with_source_screen();
            // The probes, and the edges of every prefix and every address.
            let mut sources: std::vec::Vec<u32> = probes.iter().map(|a| a.to_be()).collect();
            for p in &c.inside[..c.inside_len as usize] {
                sources.extend([p.addr_be, p.addr_be | !p.mask_be]);
            }
            sources.extend(&c.own_addrs_be[..c.own_len as usize]);
            sources.extend(&c.external_addrs_be[..c.pool_len as usize]);
            for src in sources {
                proptest::prop_assert_eq!(c.wan_source_refusal(src), c.wan_source_refusal_unscreened(src));
            }
        }
    }

    #[test]
    fn prefixes_hold_their_addresses_in_wire_order() {
        let p = Prefix::new(Ipv4Addr::new(10, 77, 1, 99), 24);
        assert_eq!(p.network(), Ipv4Addr::new(10, 77, 1, 0), "host bits cleared");
        assert_eq!(p.len(), 24);
        assert!(p.contains(be([10, 77, 1, 200])));
        assert!(!p.contains(be([10, 77, 2, 1])));
        assert!(Prefix::new(Ipv4Addr::UNSPECIFIED, 0).contains(be([198, 51, 100, 1])), "/0 holds everything");
        assert!(p.is_network_or_broadcast(be([10, 77, 1, 0])) && p.is_network_or_broadcast(be([10, 77, 1, 255])));
        assert!(!p.is_network_or_broadcast(be([10, 77, 1, 1])));
        let p31 = Prefix::new(Ipv4Addr::new(192, 0, 2, 0), 31);
        assert!(!p31.is_network_or_broadcast(be([192, 0, 2, 0])), "RFC 3021: both /31 addresses are hosts");
        assert!(p.overlaps(&Prefix::new(Ipv4Addr::new(10, 77, 0, 0), 16)));
        assert!(!p.overlaps(&Prefix::new(Ipv4Addr::new(10, 78, 0, 0), 16)));
    }

    /// RFC 6890: 0/8, 127/8, 224/4, 240/4 (with 255.255.255.255).
    #[test]
    fn martians_are_the_special_purpose_sources() {
        for a in [[0, 0, 0, 0], [0, 1, 2, 3], [127, 0, 0, 1], [224, 0, 0, 5], [239, 255, 255, 250], [240, 0, 0, 1], [255, 255, 255, 255]] {
            assert!(is_martian(be(a)), "{a:?}");
        }
        for a in [[1, 0, 0, 0], [10, 0, 0, 5], [126, 255, 255, 255], [128, 0, 0, 1], [223, 255, 255, 255]] {
            assert!(!is_martian(be(a)), "{a:?}");
        }
    }

    /// BCP 38 / RFC 1812 5.3.7 on the LAN: only inside hosts are translated.
    #[test]
    fn lan_sources_must_be_inside_hosts() {
        let c = config();
        assert_eq!(c.lan_source_refusal(be([10, 77, 1, 10])), None);
        assert_eq!(c.lan_source_refusal(be([10, 88, 7, 0])), None, "a routed prefix's edges may be hosts behind the inside router");
        for (src, why) in [
            ([10, 0, 0, 5], Reason::DropLanSourceNotInside),
            ([0, 0, 0, 0], Reason::DropLanSourceNotInside),
            ([127, 0, 0, 1], Reason::DropLanSourceNotInside),
            ([224, 0, 0, 5], Reason::DropLanSourceNotInside),
            ([198, 51, 100, 10], Reason::DropLanSourceNotInside),
            ([10, 77, 1, 255], Reason::DropLanSourceReserved),
            ([10, 77, 1, 0], Reason::DropLanSourceReserved),
            ([10, 77, 1, 1], Reason::DropLanSourceReserved),
            ([203, 0, 113, 1], Reason::DropLanSourceNotInside),
        ] {
            assert_eq!(c.lan_source_refusal(be(src)), Some(why), "{src:?}");
        }
        // An external address inside an inside prefix is still the gateway's.
        let mut c = config();
        c.external_addrs_be[0] = be([10, 77, 1, 2]);
        assert_eq!(c.lan_source_refusal(be([10, 77, 1, 2])), Some(Reason::DropLanSourceReserved));
    }

    /// BCP 84 on the WAN: martians, inside and own sources are refused.
    #[test]
    fn wan_sources_must_be_outside() {
        let c = config();
        assert_eq!(c.wan_source_refusal(be([198, 51, 100, 10])), None);
        for (src, why) in [
            ([0, 0, 0, 0], Reason::DropWanSourceMartian),
            ([127, 0, 0, 1], Reason::DropWanSourceMartian),
            ([255, 255, 255, 255], Reason::DropWanSourceMartian),
            ([10, 77, 1, 11], Reason::DropWanSourceInside),
            ([10, 88, 200, 1], Reason::DropWanSourceInside),
            ([203, 0, 113, 1], Reason::DropWanSourceOwn),
            ([10, 77, 1, 1], Reason::DropWanSourceInside),
        ] {
            assert_eq!(c.wan_source_refusal(be(src)), Some(why), "{src:?}");
        }
    }
}
