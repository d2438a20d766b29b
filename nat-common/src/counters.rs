//! Why each packet left the program the way it did.
//!
//! Every exit of the XDP programs increments exactly one counter in the
//! per-CPU `COUNTERS` array, indexed by one of these reasons (katran's
//! per-reason stats, without logging on the hot path).

/// Index into the `COUNTERS` per-CPU array. The discriminants are the map
/// indices: append new reasons at the end, never renumber.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// LAN -> WAN packet translated and redirected.
    TranslatedOut = 0,
    /// WAN -> LAN packet translated and redirected.
    TranslatedIn = 1,
    /// Not IPv4 (ARP, IPv6, ...): passed to the kernel untouched.
    PassNotIpv4 = 2,
    /// Addressed to the gateway itself, or routed by the kernel somewhere other
    /// than the WAN: passed untouched.
    PassLocal = 3,
    /// TTL <= 1 on the LAN side: passed so the kernel answers Time Exceeded.
    PassTtlExpired = 4,
    /// WAN packet with no mapping, outside the NAT port range or not
    /// translatable: the gateway's own traffic, passed.
    PassNoMapping = 5,
    /// Outbound miss: the packet was handed to the daemon to allocate a mapping.
    MissToDaemon = 6,
    /// Translated, but the next hop has no neighbour entry yet: handed to the
    /// daemon, which sends it through the kernel so the neighbour gets resolved.
    NoNeighbourToDaemon = 7,
    /// The miss ring was full: the packet was dropped (the sender retransmits).
    DropRingFull = 8,
    /// Frame or header truncated, or an IPv4 header that is not valid.
    DropMalformed = 9,
    /// LAN transit packet bound for the WAN that the gateway cannot translate
    /// (other protocol, ICMP other than echo, a first fragment too short for
    /// its L4 header, a fragmented ICMP error): dropped, never leaked.
    DropUntranslatable = 10,
    /// WAN packet for the external address and a NAT port with no mapping.
    DropInboundNoMapping = 11,
    /// WAN packet with a mapping but TTL <= 1.
    DropTtlExpired = 12,
    /// The route lookup failed for a translated packet (no route, blackhole,
    /// forwarding disabled...).
    DropNoRoute = 13,
    /// The route's egress interface is not one the gateway redirects to.
    DropEgressUnmanaged = 14,
    /// Outbound packet whose frame is too large to hand to the daemon.
    DropTooBigForDaemon = 15,
    /// `bpf_redirect_map` refused the packet.
    DropRedirectFailed = 16,
    /// Larger than the egress MTU and not answered with Fragmentation Needed:
    /// DF clear (the gateway does not fragment), an ICMP error (never answered
    /// with another, RFC 1122 3.2.2), no gateway address on that side, or a
    /// packet under 96 bytes (a next-hop MTU below that is not served).
    DropTooBigForEgress = 17,
    /// WAN packet with no mapping, not for the external address, that the
    /// kernel would forward (to an inside host, or back out): unsolicited
    /// inbound traffic is not let in.
    DropInboundTransit = 18,
    /// Translated and forwarded (or handed to the daemon for a neighbour),
    /// but it carried a partial checksum (sender's TX offload) over an L4
    /// segment longer than `checksum::CSUM_MAX_LEN`: the datapath does not sum
    /// that much, so it left with the incremental update, which a receiver
    /// that verifies rejects. Counted instead of translated_out/translated_in.
    PartialChecksumTooLong = 19,
    /// First packet of a new flow: the datapath claimed a free port the daemon
    /// had queued, installed the mapping and translated the packet.
    TranslatedNewFlow = 20,
    /// LAN packet for another inside host's mapping on the external address:
    /// translated both ways and sent back into the LAN (hairpinning).
    Hairpinned = 21,
    /// ICMP error from the WAN about a translated packet: the quoted packet
    /// reverted and the error forwarded to the inside host (RFC 5508).
    IcmpErrorIn = 22,
    /// An inside host's ICMP error about an inbound packet: the quoted packet
    /// set back to the external endpoint, sent from the external address.
    IcmpErrorOut = 23,
    /// WAN packet (or hairpinned LAN packet) for a mapping whose inside
    /// endpoint has not sent to this remote address (address-dependent
    /// filtering) or address and port (address-and-port-dependent): dropped.
    DropFiltered = 24,
    /// A later fragment (no L4 header) of a datagram whose first fragment was
    /// translated outbound: source address rewritten the same way (RFC 4787 REQ-14).
    FragmentTranslatedOut = 25,
    /// The same inbound: destination address rewritten to the inside host.
    FragmentTranslatedIn = 26,
    /// A later fragment that came before its first fragment was translated (no
    /// state): handed to natd, which parks it until then. Outbound it is
    /// dropped here; inbound it also goes on to the kernel (it may be the
    /// gateway's own).
    FragmentToDaemon = 27,
    /// A later fragment whose first fragment was translated longer than
    /// `FRAG_TIMEOUT_NS` ago: the state is ignored and the fragment handed to
    /// natd as one with no state (it ages out there unless a first fragment
    /// comes).
    FragmentStateExpired = 28,
    /// ICMP error about a mapped flow whose own checksum or quoted IPv4
    /// header checksum does not hold (RFC 5508 REQ-3): dropped untranslated.
    DropBadIcmpError = 29,
    /// DF packet too big for the egress: answered with ICMP Fragmentation
    /// Needed and the next-hop MTU out of the ingress port (RFC 4787 REQ-13).
    FragNeededSent = 30,
    /// As `FragNeededSent`, but over the per-CPU rate limit: dropped silently.
    FragNeededRateLimited = 31,
    /// An inside host's ICMP error about a hairpinned packet: sent back into
    /// the LAN to the sender, from the external address, the quote set to
    /// what the sender sent (RFC 5508 REQ-7).
    IcmpErrorHairpinned = 32,
}

impl Reason {
    /// Every reason, in index order.
    pub const ALL: [Reason; 33] = [
        Reason::TranslatedOut,
        Reason::TranslatedIn,
        Reason::PassNotIpv4,
        Reason::PassLocal,
        Reason::PassTtlExpired,
        Reason::PassNoMapping,
        Reason::MissToDaemon,
        Reason::NoNeighbourToDaemon,
        Reason::DropRingFull,
        Reason::DropMalformed,
        Reason::DropUntranslatable,
        Reason::DropInboundNoMapping,
        Reason::DropTtlExpired,
        Reason::DropNoRoute,
        Reason::DropEgressUnmanaged,
        Reason::DropTooBigForDaemon,
        Reason::DropRedirectFailed,
        Reason::DropTooBigForEgress,
        Reason::DropInboundTransit,
        Reason::PartialChecksumTooLong,
        Reason::TranslatedNewFlow,
        Reason::Hairpinned,
        Reason::IcmpErrorIn,
        Reason::IcmpErrorOut,
        Reason::DropFiltered,
        Reason::FragmentTranslatedOut,
        Reason::FragmentTranslatedIn,
        Reason::FragmentToDaemon,
        Reason::FragmentStateExpired,
        Reason::DropBadIcmpError,
        Reason::FragNeededSent,
        Reason::FragNeededRateLimited,
        Reason::IcmpErrorHairpinned,
    ];

    /// Number of entries in the `COUNTERS` map.
    pub const COUNT: u32 = Self::ALL.len() as u32;

    /// Stable snake_case name for `natd stats` and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::TranslatedOut => "translated_out",
            Reason::TranslatedIn => "translated_in",
            Reason::PassNotIpv4 => "pass_not_ipv4",
            Reason::PassLocal => "pass_local",
            Reason::PassTtlExpired => "pass_ttl_expired",
            Reason::PassNoMapping => "pass_no_mapping",
            Reason::MissToDaemon => "miss_to_daemon",
            Reason::NoNeighbourToDaemon => "no_neighbour_to_daemon",
            Reason::DropRingFull => "drop_ring_full",
            Reason::DropMalformed => "drop_malformed",
            Reason::DropUntranslatable => "drop_untranslatable",
            Reason::DropInboundNoMapping => "drop_inbound_no_mapping",
            Reason::DropTtlExpired => "drop_ttl_expired",
            Reason::DropNoRoute => "drop_no_route",
            Reason::DropEgressUnmanaged => "drop_egress_unmanaged",
            Reason::DropTooBigForDaemon => "drop_too_big_for_daemon",
            Reason::DropRedirectFailed => "drop_redirect_failed",
            Reason::DropTooBigForEgress => "drop_too_big_for_egress",
            Reason::DropInboundTransit => "drop_inbound_transit",
            Reason::PartialChecksumTooLong => "partial_checksum_too_long",
            Reason::TranslatedNewFlow => "translated_new_flow",
            Reason::Hairpinned => "hairpinned",
            Reason::IcmpErrorIn => "icmp_error_in",
            Reason::IcmpErrorOut => "icmp_error_out",
            Reason::DropFiltered => "drop_filtered",
            Reason::FragmentTranslatedOut => "fragment_translated_out",
            Reason::FragmentTranslatedIn => "fragment_translated_in",
            Reason::FragmentToDaemon => "fragment_to_daemon",
            Reason::FragmentStateExpired => "fragment_state_expired",
            Reason::DropBadIcmpError => "drop_bad_icmp_error",
            Reason::FragNeededSent => "frag_needed_sent",
            Reason::FragNeededRateLimited => "frag_needed_rate_limited",
            Reason::IcmpErrorHairpinned => "icmp_error_hairpinned",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_are_dense_and_in_order() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{} is out of order", r.name());
        }
    }

    #[test]
    fn names_are_unique() {
        for a in Reason::ALL {
            for b in Reason::ALL {
                if a != b {
                    assert_ne!(a.name(), b.name());
                }
            }
        }
    }
}
