//! Why each packet left the program the way it did.
//!
//! Every exit of the XDP programs increments exactly one counter in the
//! per-CPU `COUNTERS` array, indexed by one of these reasons (katran's
//! per-reason stats, without logging on the hot path).

/// Declares `Reason`, `Reason::ALL` and `Reason::name` from one list, so the
/// three cannot drift apart: each entry is `Variant = index => "stats_name"`.
macro_rules! reasons {
    ($($(#[$doc:meta])* $variant:ident = $index:literal => $name:literal,)*) => {
        /// Index into the `COUNTERS` per-CPU array. The discriminants are the
        /// map indices: append new reasons at the end, never renumber.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Reason {
            $($(#[$doc])* $variant = $index,)*
        }

        impl Reason {
            /// Every reason, in index order.
            pub const ALL: &'static [Reason] = &[$(Reason::$variant,)*];

            /// Stable snake_case name for `natd stats` and metrics.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Reason::$variant => $name,)*
                }
            }
        }
    };
}

reasons! {
    /// LAN -> WAN packet translated and redirected.
    TranslatedOut = 0 => "translated_out",
    /// WAN -> LAN packet translated and redirected.
    TranslatedIn = 1 => "translated_in",
    /// Not IPv4 (ARP, IPv6, ...): passed to the kernel untouched.
    PassNotIpv4 = 2 => "pass_not_ipv4",
    /// Addressed to the gateway itself, or routed by the kernel somewhere other
    /// than the WAN: passed untouched.
    PassLocal = 3 => "pass_local",
    /// TTL <= 1 on the LAN side: passed so the kernel answers Time Exceeded.
    PassTtlExpired = 4 => "pass_ttl_expired",
    /// WAN packet with no mapping, outside the NAT port range or not
    /// translatable: the gateway's own traffic, passed.
    PassNoMapping = 5 => "pass_no_mapping",
    /// Outbound miss: the packet was handed to the daemon to allocate a mapping.
    MissToDaemon = 6 => "miss_to_daemon",
    /// Translated, but the next hop has no neighbour entry yet: handed to the
    /// daemon, which sends it through the kernel so the neighbour gets resolved.
    NoNeighbourToDaemon = 7 => "no_neighbour_to_daemon",
    /// The miss ring was full: the packet was dropped (the sender retransmits).
    DropRingFull = 8 => "drop_ring_full",
    /// Frame shorter than a header it carries, or than the IPv4 total length.
    DropMalformed = 9 => "drop_malformed",
    /// LAN transit packet bound for the WAN that the gateway cannot translate
    /// (other protocol, ICMP other than echo, a first fragment too short for
    /// its L4 header, a fragmented ICMP error): dropped, never leaked.
    DropUntranslatable = 10 => "drop_untranslatable",
    /// WAN packet for the external address and a NAT port with no mapping.
    DropInboundNoMapping = 11 => "drop_inbound_no_mapping",
    /// WAN packet with a mapping but TTL <= 1.
    DropTtlExpired = 12 => "drop_ttl_expired",
    /// The route lookup failed for a translated packet (no route, blackhole,
    /// forwarding disabled...).
    DropNoRoute = 13 => "drop_no_route",
    /// The route's egress interface is not one the gateway redirects to.
    DropEgressUnmanaged = 14 => "drop_egress_unmanaged",
    /// Outbound packet whose frame is too large to hand to the daemon.
    DropTooBigForDaemon = 15 => "drop_too_big_for_daemon",
    /// `bpf_redirect_map` refused the packet: the egress interface left the
    /// devmap (natd stopping), or a redirect failed.
    DropRedirectFailed = 16 => "drop_redirect_failed",
    /// Larger than the egress MTU with DF set and not answered with
    /// Fragmentation Needed: an ICMP error (never answered with another, RFC
    /// 1122 3.2.2), no gateway address on that side, or a packet under 96
    /// bytes (a next-hop MTU below that is not served). (DF clear: see
    /// `TooBigToDaemon`.)
    DropTooBigForEgress = 17 => "drop_too_big_for_egress",
    /// WAN packet with no mapping, not for the external address, that the
    /// kernel would forward (to an inside host, or back out): unsolicited
    /// inbound traffic is not let in.
    DropInboundTransit = 18 => "drop_inbound_transit",
    /// Translated and forwarded (or handed to the daemon for a neighbour),
    /// but it carried a partial checksum (sender's TX offload) over an L4
    /// segment longer than `checksum::CSUM_MAX_LEN`: the datapath does not sum
    /// that much, so it left with the incremental update, which a receiver
    /// that verifies rejects. Counted instead of translated_out/translated_in.
    PartialChecksumTooLong = 19 => "partial_checksum_too_long",
    /// First packet of a new flow: the datapath claimed a free port the daemon
    /// had queued, installed the mapping and translated the packet.
    TranslatedNewFlow = 20 => "translated_new_flow",
    /// LAN packet for another inside host's mapping on the external address:
    /// translated both ways and sent back into the LAN (hairpinning).
    Hairpinned = 21 => "hairpinned",
    /// ICMP error from the WAN about a translated packet: the quoted packet
    /// reverted and the error forwarded to the inside host (RFC 5508).
    IcmpErrorIn = 22 => "icmp_error_in",
    /// An inside host's ICMP error about an inbound packet: the quoted packet
    /// set back to the external endpoint, sent from the external address.
    IcmpErrorOut = 23 => "icmp_error_out",
    /// WAN packet (or hairpinned LAN packet) for a mapping whose inside
    /// endpoint has not sent to this remote address (address-dependent
    /// filtering) or address and port (address-and-port-dependent): dropped.
    DropFiltered = 24 => "drop_filtered",
    /// A later fragment (no L4 header) of a datagram whose first fragment was
    /// translated outbound: source address rewritten the same way (RFC 4787 REQ-14).
    FragmentTranslatedOut = 25 => "fragment_translated_out",
    /// The same inbound: destination address rewritten to the inside host.
    FragmentTranslatedIn = 26 => "fragment_translated_in",
    /// A later fragment that came before its first fragment was translated (no
    /// state): handed to natd, which parks it until then. Outbound it is
    /// dropped here; inbound it also goes on to the kernel (it may be the
    /// gateway's own).
    FragmentToDaemon = 27 => "fragment_to_daemon",
    /// A later fragment whose first fragment was translated longer than
    /// `FRAG_TIMEOUT_NS` ago: the state is ignored and the fragment handed to
    /// natd as one with no state (it ages out there unless a first fragment
    /// comes).
    FragmentStateExpired = 28 => "fragment_state_expired",
    /// ICMP error about a mapped flow whose own checksum or quoted IPv4
    /// header checksum does not hold (RFC 5508 REQ-3): dropped untranslated.
    DropBadIcmpError = 29 => "drop_bad_icmp_error",
    /// DF packet too big for the egress: answered with ICMP Fragmentation
    /// Needed and the next-hop MTU out of the ingress port (RFC 4787 REQ-13).
    FragNeededSent = 30 => "frag_needed_sent",
    /// As `FragNeededSent`, but over the per-CPU rate limit: dropped silently.
    FragNeededRateLimited = 31 => "frag_needed_rate_limited",
    /// An inside host's ICMP error about a hairpinned packet: sent back into
    /// the LAN to the sender, from the external address, the quote set to
    /// what the sender sent (RFC 5508 REQ-7).
    IcmpErrorHairpinned = 32 => "icmp_error_hairpinned",
    /// IPv4 header that is not valid (RFC 1812 5.2.2): version other than 4,
    /// IHL below 5, total length shorter than the header, or options whose
    /// lengths run past the header.
    DropBadIpHeader = 33 => "drop_bad_ip_header",
    /// IPv4 header checksum does not hold (RFC 1812 5.2.2: a router must
    /// discard the packet).
    DropBadIpChecksum = 34 => "drop_bad_ip_checksum",
    /// TCP/UDP/ICMP echo header that does not fit the IPv4 payload: a UDP
    /// length below 8 or beyond the payload, a TCP data offset below 5 or
    /// beyond the payload, a header cut by the total length.
    DropBadL4Header = 35 => "drop_bad_l4_header",
    /// WAN packet from an inside address (BCP 84): forged, since inside hosts
    /// are behind the LAN interface.
    DropWanSourceInside = 36 => "drop_wan_source_inside",
    /// WAN packet from one of the gateway's own addresses: forged.
    DropWanSourceOwn = 37 => "drop_wan_source_own",
    /// WAN packet from 0/8, 127/8, 224/4 or 240/4 (RFC 6890).
    DropWanSourceMartian = 38 => "drop_wan_source_martian",
    /// WAN packet from a prefix the operator listed in `wan_drop_sources`.
    DropWanSourceListed = 39 => "drop_wan_source_listed",
    /// LAN packet from outside the inside prefixes (BCP 38), a special-purpose
    /// address included, that is not for the gateway itself: never
    /// translated, never forwarded.
    DropLanSourceNotInside = 40 => "drop_lan_source_not_inside",
    /// LAN packet from the gateway's own address or a LAN network or broadcast
    /// address (RFC 1812 5.3.7), not for the gateway itself.
    DropLanSourceReserved = 41 => "drop_lan_source_reserved",
    /// WAN packet of a forwarded flow sent to its backend.
    ForwardedIn = 42 => "forwarded_in",
    /// First packet of a forwarded flow: a backend picked (Maglev) and the
    /// flow filed half-open.
    ForwardedNewFlow = 43 => "forwarded_new_flow",
    /// A forwarded flow whose backend went down moved to another (a TCP
    /// client's new SYN, a UDP datagram).
    ForwardRebalanced = 44 => "forward_rebalanced",
    /// A new flow to a forward with no backend up: handed to natd, which
    /// answers with a TCP RST or an ICMP Port Unreachable.
    ForwardNoServer = 45 => "forward_no_server",
    /// A LAN host's packet to a forwarded port on the external address,
    /// hairpinned to the backend from the sender's external endpoint.
    HairpinnedToForward = 46 => "hairpinned_to_forward",
    /// SCTP packet longer than `proto::SCTP_MAX_PACKET_LEN` (9004 bytes,
    /// more than a 9000-byte jumbo frame holds): past the shift table, so a
    /// port rewrite could not carry its CRC32c along in O(1). Dropped on
    /// either side, translated or not.
    DropSctpTooLong = 47 => "drop_sctp_too_long",
    /// SCTP packet the main program could not hand to the SCTP program of
    /// its side (not loaded, or the tail call failed): dropped, never passed
    /// untranslated.
    DropSctpNoProgram = 48 => "drop_sctp_no_program",
    /// ESP packet of no SA the datapath knows (the first of an SA either
    /// way): handed to natd, which learns the SA or drops it
    /// (`nat::esp`). Never passed untranslated.
    EspToDaemon = 49 => "esp_to_daemon",
    /// ESP packet the main program could not hand to the ESP program of its
    /// side (not loaded, or the tail call failed): dropped, never passed
    /// untranslated.
    DropEspNoProgram = 50 => "drop_esp_no_program",
    /// ESP packet whose SPI is not within its datagram (fewer than 8 bytes
    /// of ESP header: SPI and sequence number, RFC 4303 §2): dropped.
    DropEspTruncated = 51 => "drop_esp_truncated",
    /// WAN ESP packet for an external address on an SPI of no SA, from a
    /// peer no inside host's SA awaits its first answer from
    /// (`ESP_AWAITED`): nobody to bind it to, dropped here rather than
    /// handed to natd, so a flood of made-up SPIs costs natd nothing.
    DropEspUnknownSpi = 52 => "drop_esp_unknown_spi",
    /// Translated, but longer than the egress MTU with DF clear: handed to
    /// natd, which cuts it into fragments (RFC 791) and sends them through
    /// the kernel (`miss_kind::TOO_BIG`).
    TooBigToDaemon = 53 => "too_big_to_daemon",
}

impl Reason {
    /// Number of reasons.
    pub const COUNT: u32 = Self::ALL.len() as u32;

    /// Entries of the `COUNTERS` map: room for the reasons a later natd
    /// adds, so that the map keeps its size and an upgrade adopts it as it
    /// is. (A datapath pinned with fewer, before this room was made, has
    /// its counters carried into a map of this size on adoption.)
    pub const CAPACITY: u32 = 64;
}

const _: () = assert!(Reason::COUNT <= Reason::CAPACITY, "more reasons than COUNTERS holds: raise CAPACITY (a layout change)");

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
        for &a in Reason::ALL {
            for &b in Reason::ALL {
                if a != b {
                    assert_ne!(a.name(), b.name());
                }
            }
        }
    }
}
