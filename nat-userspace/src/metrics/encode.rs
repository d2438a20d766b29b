//! The metric families a scrape shows, encoded by `prometheus-client` in
//! the Prometheus text format (0.0.4) from a snapshot and natd's process
//! figures. Names follow the Prometheus conventions: `natd_` prefix, base
//! units (seconds, bytes), `_total` on counters (the encoder appends it);
//! natd's own CPU and memory use the standard `process_` names every
//! client library's process collector exports, so existing dashboards and
//! alerts work unchanged.

use std::{collections::HashMap, fmt, time::Instant};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet, prometheus_text},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::{Registry, Unit},
};

use crate::metrics::{
    process::ProcessStats,
    snapshot::{AGING_BUCKETS, ScanHistogram, Snapshot},
};

/// The `Content-Type` of what `encode` writes.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// natd's ESP learning (`EspCounters::named`): metric name (before
/// `_total`) and help.
pub(super) const ESP_COUNTERS: &[(&str, &str, &str)] = &[
    ("esp_sas_learned", "natd_esp_sas_learned", "ESP: outbound SAs natd learned and installed"),
    ("esp_sas_bound", "natd_esp_sas_bound", "ESP: inbound SAs bound to the host whose SA they answered"),
    ("esp_sas_expired", "natd_esp_sas_expired", "ESP: SA pairs removed after timeouts.esp idle"),
    ("esp_sas_refused", "natd_esp_sas_refused", "ESP: new SAs refused (the host's 64, no session slot, or the map full)"),
    ("esp_held", "natd_esp_held", "ESP: packets held while another host's SA to their peer was unanswered"),
    ("esp_held_sent", "natd_esp_held_sent", "ESP: held packets sent on once that SA was answered"),
    ("esp_held_expired", "natd_esp_held_expired", "ESP: held packets dropped after 2 s"),
    ("esp_held_dropped_full", "natd_esp_held_dropped_full", "ESP: packets dropped because the hold queue was full"),
    ("esp_unknown_dropped", "natd_esp_unknown_dropped", "ESP: inbound packets of no SA with no unanswered SA to bind them to"),
];

/// natd's own counters (`DaemonCounters::named`): metric name (before
/// `_total`) and help. The three refusal counters are one family with a
/// `cause` label (`REFUSALS`).
pub(super) const DAEMON_COUNTERS: &[(&str, &str, &str)] = &[
    ("mappings_created", "natd_mappings_created", "Dynamic mappings made, by natd or by the datapath from a queued free port"),
    ("mappings_expired", "natd_mappings_expired", "Dynamic mappings removed after their idle timeout"),
    (
        "refusals_notified",
        "natd_refusals_notified",
        "ICMP administratively prohibited messages sent to hosts whose new flow was refused (rate-limited)",
    ),
    (
        "first_packets_sent",
        "natd_first_packets_sent",
        "First packets of new flows handed to natd, set up by natd and sent on",
    ),
    (
        "claimed_in_datapath",
        "natd_mappings_claimed_in_datapath",
        "New mappings the datapath made itself from a queued free port, without a hand-off",
    ),
    (
        "sent_through_kernel",
        "natd_sent_through_kernel",
        "Translated packets natd sent through the kernel because the next hop had no neighbour entry yet",
    ),
    (
        "packets_cut",
        "natd_packets_cut_into_fragments",
        "Packets longer than the egress MTU with DF clear that natd cut into fragments (RFC 791) and sent through the kernel",
    ),
    ("handoff_errors", "natd_handoff_errors", "Packets handed to natd that it could not handle (each one logged)"),
    ("fragments_parked", "natd_fragments_parked", "Later fragments parked until their first fragment is translated"),
    ("fragments_sent", "natd_fragments_sent", "Fragments natd translated and sent on (later ones parked for their first, and SCTP first fragments)"),
    ("sctp_first_fragments_unmapped", "natd_sctp_first_fragments_unmapped", "SCTP first fragments dropped: no session to translate them by"),
    ("fragments_expired", "natd_fragments_expired", "Parked fragments dropped because their first fragment did not come in time"),
    ("fragments_dropped_full", "natd_fragments_dropped_full", "Fragments not parked because the park was full"),
    ("no_server_answered", "natd_no_server_answered", "New flows to a forward with no server up, answered with a TCP RST or ICMP port unreachable"),
    ("no_server_unanswered", "natd_no_server_unanswered", "New flows to a forward with no server up, not answered (over the rate limit)"),
    ("forwarded_flows_expired", "natd_forwarded_flows_expired", "Forwarded flows removed after their idle timeout"),
];

/// `DaemonCounters::named` name -> the `cause` of `natd_new_flows_refused_total`.
pub(super) const REFUSALS: &[(&str, &str)] = &[("refused_no_port", "no_port"), ("refused_map_full", "map_full"), ("refused_quota", "quota")];

/// Writes every metric of `snapshot` and `process` (as of `now`) in the
/// Prometheus text format.
/// `process`: `None` when /proc could not be read (its metrics are left
/// out rather than shown as zeros).
pub fn encode(out: &mut String, snapshot: &Snapshot, process: Option<&ProcessStats>, now: Instant) -> fmt::Result {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape { snapshot: snapshot.clone(), process: process.cloned(), now }));
    prometheus_text::encode(out, &registry)
}

/// One scrape's figures, encoded by the registry.
#[derive(Debug)]
struct Scrape {
    snapshot: Snapshot,
    process: Option<ProcessStats>,
    now: Instant,
}

impl Collector for Scrape {
    fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
        let s = &self.snapshot;
        let e = &mut e;

        family(e, "natd_build_info", "natd's version; always 1", MetricType::Gauge, &[([("version", env!("CARGO_PKG_VERSION"))], ConstGauge::new(1i64))])?;
        if let Some(taken) = s.taken {
            let age = self.now.saturating_duration_since(taken).as_secs_f64();
            single(
                e,
                "natd_snapshot_age",
                "Seconds since natd's packet loop last published these figures (once a second): more means the loop is stalled",
                Some(&Unit::Seconds),
                &ConstGauge::new(age),
            )?;
            single(
                e,
                "natd_snapshot_duration",
                "How long the packet loop took to copy the previous snapshot for metrics (their cost to the loop, once a second)",
                Some(&Unit::Seconds),
                &ConstGauge::new(s.previous_took.as_secs_f64()),
            )?;
        }

        let packets: Vec<_> = s.datapath.iter().map(|(reason, n)| ([("reason", reason.name())], ConstCounter::new(*n))).collect();
        family(
            e,
            "natd_datapath_packets",
            "Packets the XDP programs handled, by why they left the program the way they did (exactly one reason per packet; see `natd stats`)",
            MetricType::Counter,
            &packets,
        )?;

        let named = s.daemon.named();
        let value = |name: &str| named.iter().find(|c| c.name == name).map_or(0, |c| c.value);
        for (key, metric, help) in DAEMON_COUNTERS {
            single(e, metric, help, None, &ConstCounter::new(value(key)))?;
        }
        let esp = s.esp.named();
        for (key, metric, help) in ESP_COUNTERS {
            let value = esp.iter().find(|c| c.name == *key).map_or(0, |c| c.value);
            single(e, metric, help, None, &ConstCounter::new(value))?;
        }
        let refused: Vec<_> = REFUSALS.iter().map(|(key, cause)| ([("cause", *cause)], ConstCounter::new(value(key)))).collect();
        family(
            e,
            "natd_new_flows_refused",
            "New outbound flows refused, by cause: no_port (every external port of the protocol in use or held), \
             map_full (every session slot in use, or a kernel map full), quota (the host holds its ports_per_host)",
            MetricType::Counter,
            &refused,
        )?;
        single(
            e,
            "natd_mapping_log_lost",
            "Mapping log lines lost because the file or syslog of mapping_log could not take them",
            None,
            &ConstCounter::new(s.mapping_log_lost),
        )?;
        single(e, "natd_fragments_waiting", "Later fragments parked now, waiting for their first fragment", None, &ConstGauge::new(s.fragments_waiting))?;

        let sessions: Vec<_> = s.sessions.iter().map(|row| ([("proto", row.proto), ("state", row.state)], ConstGauge::new(row.count))).collect();
        family(
            e,
            "natd_sessions",
            "Dynamic mappings (sessions) now, by protocol and state as `natd sessions` shows it",
            MetricType::Gauge,
            &sessions,
        )?;
        single(
            e,
            "natd_sessions_max",
            "Sessions the datapath's tables hold (max_sessions): new flows past it are refused (natd_new_flows_refused_total, cause map_full)",
            None,
            &ConstGauge::new(s.sessions_max),
        )?;

        let mut ports = Vec::new();
        for row in &s.ports {
            let external = row.external.to_string();
            for (state, n) in [("in_use", row.in_use), ("held", row.held), ("free", row.free)] {
                ports.push(([("proto", row.proto.to_string()), ("external_ip", external.clone()), ("state", state.to_string())], ConstGauge::new(n)));
            }
        }
        family(
            e,
            "natd_ports",
            "External ports now, by protocol, external address and state: in_use (a mapping holds it), held (released, \
             waiting out port_hold), free (a new flow can get it); the three add up to the port range",
            MetricType::Gauge,
            &ports,
        )?;

        let aging = e.encode_descriptor(
            "natd_aging_scan_duration",
            "How long one aging scan of natd's loop took (clock, held ports, free queues, fragments, every session's timeout)",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        Histogram(&s.aging).encode(aging)?;

        let labels = |forward: &str, server: &str| [("forward", forward.to_string()), ("server", server.to_string())];
        let up: Vec<_> = s.forwards.iter().map(|f| (labels(&f.forward, &f.server), ConstGauge::new(i64::from(f.health == "up")))).collect();
        family(
            e,
            "natd_forward_server_up",
            "1 when the forward's server is up (its health checks pass and it takes new flows), 0 when down, draining or not yet checked",
            MetricType::Gauge,
            &up,
        )?;
        let weight: Vec<_> = s.forwards.iter().map(|f| (labels(&f.forward, &f.server), ConstGauge::new(f.weight))).collect();
        family(e, "natd_forward_server_weight", "The server's weight in its forward (0: draining, no new flows)", MetricType::Gauge, &weight)?;
        let active: Vec<_> = s.forwards.iter().map(|f| (labels(&f.forward, &f.server), ConstGauge::new(f.active_flows))).collect();
        family(
            e,
            "natd_forward_server_active_flows",
            "Forwarded flows to the server now, half-open ones included (counted every 5 s)",
            MetricType::Gauge,
            &active,
        )?;
        let new: Vec<_> = s.forwards.iter().map(|f| (labels(&f.forward, &f.server), ConstCounter::new(f.new_flows))).collect();
        family(
            e,
            "natd_forward_server_new_flows",
            "New flows sent to the server since it was added to the forward (counted every 5 s)",
            MetricType::Counter,
            &new,
        )?;

        let Some(p) = &self.process else { return Ok(()) };
        single(e, "process_cpu", "User and system CPU time natd spent", Some(&Unit::Seconds), &ConstCounter::new(p.cpu_seconds))?;
        single(e, "process_resident_memory", "natd's resident memory size", Some(&Unit::Bytes), &ConstGauge::new(p.resident_bytes))?;
        single(e, "process_virtual_memory", "natd's virtual memory size", Some(&Unit::Bytes), &ConstGauge::new(p.virtual_bytes))?;
        single(
            e,
            "process_start_time",
            "When natd started, seconds since the Unix epoch",
            Some(&Unit::Seconds),
            &ConstGauge::new(p.start_time_seconds),
        )?;
        single(e, "process_open_fds", "natd's open file descriptors", None, &ConstGauge::new(p.open_fds))?;
        single(e, "process_max_fds", "natd's limit of open file descriptors", None, &ConstGauge::new(p.max_fds))?;
        single(e, "process_threads", "natd's threads", None, &ConstGauge::new(p.threads))?;
        Ok(())
    }
}

/// One metric without labels.
fn single(e: &mut DescriptorEncoder, name: &str, help: &str, unit: Option<&Unit>, metric: &impl EncodeMetric) -> fmt::Result {
    metric.encode(e.encode_descriptor(name, help, unit, metric.metric_type())?)
}

/// One family, a metric per label set. An empty family (no forwards) is
/// left out, as client libraries leave out a family without children.
fn family<L: EncodeLabelSet, M: EncodeMetric>(e: &mut DescriptorEncoder, name: &str, help: &str, kind: MetricType, rows: &[(L, M)]) -> fmt::Result {
    if rows.is_empty() {
        return Ok(());
    }
    let mut metric = e.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in rows {
        value.encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

/// The aging scans as a Prometheus histogram (the crate's own histogram
/// type lives behind a lock the loop would share with scrapes; the loop
/// keeps plain counts instead).
struct Histogram<'a>(&'a ScanHistogram);

impl EncodeMetric for Histogram<'_> {
    fn encode(&self, mut encoder: MetricEncoder) -> fmt::Result {
        let h = self.0;
        let mut buckets: Vec<(f64, u64)> = AGING_BUCKETS.iter().copied().zip(h.buckets.iter().copied()).collect();
        buckets.push((f64::INFINITY, h.over));
        encoder.encode_histogram::<NoLabelSet>(h.sum_s, h.count, &buckets, None::<&HashMap<usize, _>>)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}
