//! The mapping log (RFC 6888 REQ-12..15) and the log of refused flows.

use std::time::{Duration, Instant};

use nat_common::{Endpoint, proto};

/// How often a refusal is logged at most: a full port space under load would
/// otherwise write a line per packet.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

pub struct MappingLog {
    /// `log_mappings`: one line per mapping made and removed.
    enabled: bool,
    last_refusal: Option<Instant>,
}

impl MappingLog {
    pub fn new(enabled: bool) -> Self {
        Self { enabled, last_refusal: None }
    }

    /// A reload's `log_mappings`.
    pub fn set_enabled(&mut self, enabled: bool) {
        self.enabled = enabled;
    }

    /// With `log_mappings`, one line per mapping made or removed, enough to
    /// tell which inside host held an external port when (wall clock, inside
    /// and external endpoints, lifetime), and never the destinations it
    /// talked to.
    pub fn mapping(&self, what: &str, inside: &Endpoint, external: &Endpoint, lifetime_ns: Option<u64>) {
        if !self.enabled {
            return;
        }
        let wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let lifetime = lifetime_ns.map_or(String::new(), |ns| format!(" lifetime_s={}", ns / 1_000_000_000));
        tracing::info!(
            target: "natd::mapping",
            "mapping {what} time={}.{:03} proto={} inside={}:{} external={}:{}{lifetime}",
            wall.as_secs(),
            wall.subsec_millis(),
            proto::name(inside.proto),
            inside.addr(),
            inside.port(),
            external.addr(),
            external.port()
        );
    }

    /// A new flow refused, at most one line per `REFUSAL_LOG_INTERVAL`.
    pub fn refusal(&mut self, inside: &Endpoint, why: &str, refused_so_far: u64) {
        let now = Instant::now();
        if self.last_refusal.is_none_or(|t| now - t >= REFUSAL_LOG_INTERVAL) {
            self.last_refusal = Some(now);
            tracing::warn!(
                "new flow from {}:{} ({}) refused: {why}; {refused_so_far} refused so far (natd stats); existing flows are unaffected",
                inside.addr(),
                inside.port(),
                proto::name(inside.proto)
            );
        }
    }
}
