//! One proxy at work: the settings and routes a reload may replace, its
//! counters, the health checks of its servers, and what `natd proxies`
//! shows of it. Shared by its accept loop, its connections (TLS relay,
//! HTTP, QUIC router) and `Proxies`, which starts and stops it.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, SocketAddrV4},
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use serde::{Deserialize, Serialize};
use tokio::{
    runtime::Handle,
    task::AbortHandle,
    time::{self, MissedTickBehavior},
};

use crate::{
    config::{HealthKind, Proxy, ProxyKind},
    nat::{
        health::{HealthConfig, ServerHealth},
        probe::{self, Probe},
    },
    proxy::{
        route::{Refusal, Routes},
    },
};

/// What a reload may replace: the settings and the routes built from them.
/// A connection keeps the one it started with.
pub(super) struct Current {
    pub(super) proxy: Proxy,
    pub(super) routes: Routes,
}

/// One proxy at work.
pub(super) struct Service {
    /// The label, "KIND/PORT", fixed while natd runs.
    pub(super) name: String,
    pub(super) listen: SocketAddrV4,
    pub(super) current: RwLock<Arc<Current>>,
    /// The health checks of `current`'s servers, stopped when it is replaced.
    pub(super) checks: Mutex<Vec<AbortHandle>>,
    /// Client connections open now (reading a hello, or relayed).
    pub(super) active: AtomicU64,
    /// Client connections accepted since start.
    pub(super) total: AtomicU64,
    /// Refused connections, by `Refusal::index`.
    refused: [AtomicU64; Refusal::KEYS.len()],
    /// With `quic`: what its UDP socket saw and did.
    pub(super) quic: Option<QuicCounters>,
}

impl Service {
    /// A proxy's shared state, on `listen` (with a QUIC side: `quic`).
    pub(super) fn new(proxy: &Proxy, listen: SocketAddrV4, quic: bool) -> Self {
        Service {
            name: proxy.name.clone(),
            listen,
            current: RwLock::new(Arc::new(Current { proxy: proxy.clone(), routes: Routes::new(proxy) })),
            checks: Mutex::new(Vec::new()),
            active: AtomicU64::new(0),
            total: AtomicU64::new(0),
            refused: Default::default(),
            quic: quic.then(QuicCounters::default),
        }
    }

    /// A service with no socket, for the routing logic's tests.
    #[cfg(test)]
    pub(super) fn detached(proxy: &Proxy) -> Self {
        Self::new(proxy, SocketAddrV4::new(std::net::Ipv4Addr::new(203, 0, 113, 1), proxy.port), proxy.quic)
    }

    pub(super) fn name(&self) -> &str {
        &self.name
    }

    pub(super) fn refuse(&self, peer: SocketAddr, refusal: &Refusal) {
        self.refused[refusal.index()].fetch_add(1, Ordering::Relaxed);
        tracing::debug!("proxy {} on {}: refused {peer}: {refusal}", self.name, self.listen);
    }

    pub(super) fn current(&self) -> Arc<Current> {
        // A poisoned lock still holds a whole Arc: a panic cannot leave it half written.
        Arc::clone(&self.current.read().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    /// Starts the health checks of `current`'s checked servers on `runtime`,
    /// after stopping the previous ones.
    pub(super) fn start_checks(&self, current: &Arc<Current>, runtime: &Handle) {
        let mut checks = self.checks.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for check in checks.drain(..) {
            check.abort();
        }
        if current.proxy.health.kind == HealthKind::None {
            return;
        }
        for index in (0..current.routes.backends.len()).filter(|&i| current.routes.backends[i].checked) {
            checks.push(runtime.spawn(check(self.name.clone(), Arc::clone(current), index)).abort_handle());
        }
    }

    pub(super) fn view(&self) -> ProxyView {
        let current = self.current();
        let (proxy, routes) = (&current.proxy, &current.routes);
        let route_views = routes
            .sets
            .iter()
            .map(|set| RouteView { name: set.label.clone(), servers: set.members.iter().map(|&m| routes.backends[m].addr.to_string()).collect() })
            .collect();
        let servers = routes
            .backends
            .iter()
            .map(|b| ProxyServerView {
                server: b.addr.to_string(),
                health: b.health_text().to_string(),
                active: b.active.load(Ordering::Relaxed),
                total: b.total.load(Ordering::Relaxed),
                connect_failures: b.connect_failures.load(Ordering::Relaxed),
                last_failure: b.last_failure.lock().ok().and_then(|last| last.clone()),
            })
            .collect();
        let refused_by: BTreeMap<String, u64> =
            Refusal::KEYS.iter().zip(&self.refused).map(|(key, count)| (key.to_string(), count.load(Ordering::Relaxed))).collect();
        ProxyView {
            name: proxy.name.clone(),
            kind: proxy.kind.name().to_string(),
            listen: self.listen.to_string(),
            proxy_protocol: proxy.proxy_protocol.map_or("none", |v| v.name()).to_string(),
            server_protocol: if proxy.kind == ProxyKind::Http { proxy.server_protocol.name().to_string() } else { String::new() },
            hello_timeout_s: proxy.hello_timeout.as_secs_f64(),
            connect_timeout_s: proxy.connect_timeout.as_secs_f64(),
            idle_timeout_s: proxy.idle_timeout.as_secs_f64(),
            max_connections: proxy.max_connections,
            health_check: proxy.health_text(),
            routes: route_views,
            servers,
            active: self.active.load(Ordering::Relaxed),
            total: self.total.load(Ordering::Relaxed),
            refused: refused_by.values().sum(),
            refused_by,
            quic: self.quic.as_ref().map(QuicCounters::view),
        }
    }
}

/// The health checks of one server, as a forward's (`nat::health`'s
/// fall/rise over `probe`'s TCP connects), until a reload replaces
/// `current` (or natd stops).
async fn check(name: String, current: Arc<Current>, index: usize) {
    let check = &current.proxy.health;
    let backend = &current.routes.backends[index];
    let Ok(config) = HealthConfig::new(check.fall, check.rise) else { return };
    let mut health = ServerHealth::new(config, 1, Instant::now());
    if backend.is_up() {
        // A server a reload kept: up until `fall` checks say otherwise.
        health.record(true, Instant::now());
    }
    let mut ticks = time::interval(check.interval.max(probe::MIN_INTERVAL));
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let outcome = probe::check(&Probe::Tcp, backend.addr, check.timeout).await;
        if let Err(failure) = &outcome {
            backend.note_failure(format!("check: {failure}"));
        }
        if let Some(transition) = health.record(outcome.is_ok(), Instant::now()) {
            backend.set_status(transition.to);
            tracing::info!("proxy {name}: server {} is {}", backend.addr, backend.health_text());
        }
    }
}

/// What a QUIC proxy counts, for `natd proxies`.
#[derive(Debug, Default)]
pub(super) struct QuicCounters {
    /// Datagrams natd's socket read.
    pub(super) datagrams: AtomicU64,
    /// Connections routed and handed to the datapath.
    pub(super) routed: AtomicU64,
    /// Datagrams natd sent on to a server (the Initials it held, and
    /// stragglers within `HANDOFF_GRACE`).
    pub(super) relayed: AtomicU64,
    /// Datagrams that were no client Initial of a new connection (a packet
    /// of a connection the datapath no longer knows, garbage).
    pub(super) ignored: AtomicU64,
    /// ClientHellos being reassembled now.
    pub(super) assembling: AtomicU64,
}

/// `QuicCounters` as `natd proxies` shows them.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct QuicView {
    pub datagrams: u64,
    pub routed: u64,
    pub relayed: u64,
    pub ignored: u64,
    pub assembling: u64,
}

impl QuicCounters {
    pub(super) fn view(&self) -> QuicView {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        QuicView {
            datagrams: read(&self.datagrams),
            routed: read(&self.routed),
            relayed: read(&self.relayed),
            ignored: read(&self.ignored),
            assembling: read(&self.assembling),
        }
    }
}

/// One proxy as `natd proxies` shows it.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct ProxyView {
    pub name: String,
    pub kind: String,
    pub listen: String,
    pub proxy_protocol: String,
    /// kind "http": "http1" or "http2", how natd speaks to the servers;
    /// empty for kind "tls".
    #[serde(default)]
    pub server_protocol: String,
    pub hello_timeout_s: f64,
    pub connect_timeout_s: f64,
    pub idle_timeout_s: f64,
    pub max_connections: u32,
    pub health_check: String,
    /// Each name with its servers, then "default" if there is one.
    pub routes: Vec<RouteView>,
    pub servers: Vec<ProxyServerView>,
    /// Client connections open now.
    pub active: u64,
    /// Client connections accepted since start (refused ones included).
    pub total: u64,
    pub refused: u64,
    /// Refusals by reason (`Refusal::KEYS`), QUIC connections' included.
    pub refused_by: BTreeMap<String, u64>,
    /// With `quic = true`: the UDP side's counters.
    pub quic: Option<QuicView>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct RouteView {
    pub name: String,
    pub servers: Vec<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct ProxyServerView {
    pub server: String,
    /// "up", "down", "unknown" (not checked yet), "up (not checked)".
    pub health: String,
    pub active: u64,
    pub total: u64,
    pub connect_failures: u64,
    pub last_failure: Option<String>,
}
