//! natd's own counters, next to the datapath's per-reason ones.

use crate::control::Counter;

/// The daemon's own counters, next to the datapath's per-reason ones.
#[derive(Default, Debug, Clone, Copy)]
pub struct DaemonCounters {
    pub mappings_created: u64,
    pub mappings_expired: u64,
    /// New flows refused because every external port of the protocol is taken.
    pub refused_no_port: u64,
    /// New flows refused because the kernel maps are full.
    pub refused_map_full: u64,
    /// New flows refused because their host holds its quota of ports.
    pub refused_quota: u64,
    /// ICMP Destination Unreachable messages sent to refused hosts.
    pub refusals_notified: u64,
    /// First packets of new flows translated and sent on by the daemon.
    pub first_packets_sent: u64,
    /// New flows the datapath set up itself from a queued free port.
    pub claimed_in_datapath: u64,
    pub sent_through_kernel: u64,
    /// Packets longer than the egress MTU with DF clear that natd cut into
    /// fragments and sent (the datapath's `too_big_to_daemon`, and first
    /// packets natd sends itself).
    pub packets_cut: u64,
    pub handoff_errors: u64,
    /// Later fragments handed over before their first fragment was translated
    /// and parked (RFC 4787 REQ-14).
    pub fragments_parked: u64,
    /// Later fragments natd translated and sent on: parked ones released when
    /// their first fragment passed, and ones whose first fragment had passed
    /// by the time natd read them.
    pub fragments_sent: u64,
    /// SCTP first fragments dropped: no session to translate them by.
    pub sctp_first_fragments_unmapped: u64,
    /// Parked fragments dropped because their first fragment did not pass
    /// within `FRAG_TIMEOUT_NS` (inbound: also every fragment of the
    /// gateway's own fragmented traffic, which the kernel got as well).
    pub fragments_expired: u64,
    /// Fragments not parked because the park was full.
    pub fragments_dropped_full: u64,
    /// New flows to a forward with no server up, answered with a TCP RST or
    /// an ICMP Port Unreachable...
    pub no_server_answered: u64,
    /// ...or not answered, over the rate limit.
    pub no_server_unanswered: u64,
    /// Forwarded flows removed idle.
    pub forwarded_flows_expired: u64,
}

impl DaemonCounters {
    /// New flows refused, whatever the cause.
    pub fn refused(&self) -> u64 {
        self.refused_no_port + self.refused_map_full + self.refused_quota
    }

    /// Every counter by its `natd stats` name.
    pub fn named(&self) -> Vec<Counter> {
        let counter = |name: &str, value| Counter { name: name.to_string(), value };
        vec![
            counter("mappings_created", self.mappings_created),
            counter("mappings_expired", self.mappings_expired),
            counter("refused_no_port", self.refused_no_port),
            counter("refused_map_full", self.refused_map_full),
            counter("refused_quota", self.refused_quota),
            counter("refusals_notified", self.refusals_notified),
            counter("first_packets_sent", self.first_packets_sent),
            counter("claimed_in_datapath", self.claimed_in_datapath),
            counter("sent_through_kernel", self.sent_through_kernel),
            counter("packets_cut", self.packets_cut),
            counter("handoff_errors", self.handoff_errors),
            counter("fragments_parked", self.fragments_parked),
            counter("fragments_sent", self.fragments_sent),
            counter("sctp_first_fragments_unmapped", self.sctp_first_fragments_unmapped),
            counter("fragments_expired", self.fragments_expired),
            counter("fragments_dropped_full", self.fragments_dropped_full),
            counter("no_server_answered", self.no_server_answered),
            counter("no_server_unanswered", self.no_server_unanswered),
            counter("forwarded_flows_expired", self.forwarded_flows_expired),
        ]
    }
}
