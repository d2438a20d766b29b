//! Prometheus metrics (`metrics = "ADDR:PORT"`): natd serves the
//! Prometheus text format at `http://ADDR:PORT/metrics`.
//!
//! The packet loop never encodes, and never waits for, a scrape. Once a
//! tick (the aging timer) it copies what it knows into a `Snapshot`, plain
//! numbers, and swaps it into a shared slot; the forwards' figures, which
//! cost a walk of the flow tables, are refreshed on the flow-aging timer
//! that already walks them. The HTTP server runs on a thread of its own with
//! its own runtime: a scrape takes the latest snapshot (an `Arc` clone under
//! a lock held for nanoseconds), reads natd's own CPU and memory from /proc,
//! and encodes with `prometheus-client`. A stalled loop therefore still
//! answers scrapes, with `natd_snapshot_age_seconds` growing.
//!
//! - `snapshot`: what the loop publishes, and how it is taken;
//! - `encode`: the metric families, their names, help and labels;
//! - `process`: natd's CPU, memory and descriptors from /proc/self;
//! - `server`: the HTTP listener and its thread.

mod encode;
mod process;
mod server;
mod snapshot;

#[cfg(test)]
mod tests;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Result;

pub use encode::{CONTENT_TYPE, encode};
pub use process::ProcessStats;
pub use snapshot::{AGING_BUCKETS, PortCount, ScanHistogram, ServerMetrics, SessionCount, Snapshot, count_states, session_counts};

use crate::nat::daemon::Daemon;

/// The latest snapshot, shared between the loop (writer) and the server
/// (reader). Each side holds the lock only to swap or clone the `Arc`.
pub type Published = Arc<Mutex<Arc<Snapshot>>>;

/// The loop's side of the metrics: what it accumulates between snapshots
/// (the aging scans, the forwards' last figures) and the server it started.
pub struct Metrics {
    published: Published,
    aging: ScanHistogram,
    forwards: Vec<ServerMetrics>,
    /// How long the last `publish` took.
    publish_took: Duration,
    server: server::Server,
}

impl Metrics {
    /// Binds `addr` and starts serving on a thread of its own. A bind error
    /// names the setting and the address.
    pub fn start(addr: SocketAddr) -> Result<Self> {
        let published: Published = Arc::new(Mutex::new(Arc::new(Snapshot::default())));
        let server = server::Server::start(addr, Arc::clone(&published))?;
        tracing::info!("metrics: http://{}/metrics", server.addr);
        Ok(Self { published, aging: ScanHistogram::default(), forwards: Vec::new(), publish_took: Duration::ZERO, server })
    }

    /// Where the server listens.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// One aging scan (`Daemon::age`) took `took`.
    pub fn aged(&mut self, took: Duration) {
        self.aging.observe(took);
    }

    /// Refreshes the forwards' figures (health, flows); called on the flow
    /// aging timer, which walks the same tables.
    pub fn count_forwards(&mut self, daemon: &Daemon) {
        match snapshot::forwards(daemon) {
            Ok(forwards) => self.forwards = forwards,
            Err(e) => tracing::warn!("metrics: reading the forwards: {e:#}"),
        }
    }

    /// Takes a snapshot of `daemon` and publishes it for the next scrape.
    pub fn publish(&mut self, daemon: &Daemon) {
        let started = Instant::now();
        match Snapshot::take(daemon, &self.aging, &self.forwards, self.publish_took) {
            Ok(snapshot) => {
                let snapshot = Arc::new(snapshot);
                // The old snapshot is dropped after the lock is released.
                let _old = std::mem::replace(&mut *self.published.lock().unwrap_or_else(|poisoned| poisoned.into_inner()), snapshot);
            }
            Err(e) => tracing::warn!("metrics: taking a snapshot: {e:#}"),
        }
        self.publish_took = started.elapsed();
    }
}
