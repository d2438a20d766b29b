//! The forwards natd serves: what each configured forward has in the
//! datapath (its ports, its backends and their Maglev table, the backends'
//! static mappings), the health of every backend (active checks and the
//! datapath's passive signals), and a new set of forwards applied live.
//!
//! Identity across a reload: a forward is its protocols, ports and external
//! address (its name is a label); a backend is its address and port within
//! its forward. What keeps its identity keeps its index, its slot, its
//! health and its flows.

use std::{
    collections::{HashMap, VecDeque},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow};
use nat_common::{
    Endpoint,
    forward::{Backend, FlowKey, ForwardPort, MAGLEV_SIZE, port_flags, MAX_BACKENDS, MAX_FORWARDS, NO_BACKEND, Signals, backend_state},
    tcp_flags,
};
use tokio::sync::mpsc;

use crate::{
    config::{Forward, HealthCheck, HealthKind, Server, Timeouts},
    datapath::{ForwardTables, StaticMapping},
    nat::{
        health::{HealthConfig, ServerHealth, ServerStatus, Transition, passive_failure},
        maglev::{BackendKey, MaglevTable},
        probe::{BackendId, CheckResult, Checker, CheckerHandle, Probe},
    },
};

/// How often the datapath's passive signals are read: a server that
/// refuses connections goes down within `fall` polls, long before the next
/// active check would tell.
pub const SIGNALS_POLL: Duration = Duration::from_millis(250);

/// How often forwarded flows are aged (and counted per backend).
pub const FLOW_AGING: Duration = Duration::from_secs(5);

/// The window new flows per second are measured over.
const RATE_WINDOW: Duration = Duration::from_secs(5);

/// The forwards natd serves, by their index in the datapath's tables.
pub struct Forwards {
    installed: Vec<Option<Installed>>,
    /// Servers (address, checked port) an adopted datapath had up: they
    /// start up, so a restart refuses no new flow while their first check
    /// runs. Used by the first `apply` only.
    adopted_up: std::collections::HashSet<(Ipv4Addr, u16)>,
    /// Where the checkers send their results (the main loop reads them).
    results: mpsc::Sender<CheckResult>,
}

/// One forward as installed.
struct Installed {
    config: Forward,
    external: Ipv4Addr,
    backends: Vec<Option<Member>>,
    /// The forward's Maglev table as the datapath holds it.
    maglev: Vec<u32>,
}

/// One backend of an installed forward.
struct Member {
    server: Server,
    /// The server port the active checks go to.
    check_port: u16,
    health: ServerHealth,
    checker: Option<CheckerHandle>,
    /// Why the last check (active or passive) failed; `None` after a pass.
    last_failure: Option<String>,
    /// The state last written to `BACKENDS`.
    written_state: u8,
    /// The signals at the last two polls (the older first).
    signals: [Signals; 2],
    /// (when, `Signals::flows`) samples over `RATE_WINDOW`.
    flow_samples: VecDeque<(Instant, u64)>,
    /// With no active check (kind "none"): when it was last assumed up.
    assumed_up: Instant,
}

/// What `natd forwards` shows of one forward.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq)]
pub struct ForwardView {
    pub name: String,
    pub protocol: String,
    pub ports: String,
    pub external: String,
    /// The health check, in words.
    pub health_check: String,
    pub servers: Vec<ServerView>,
}

#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq)]
pub struct ServerView {
    /// ADDR:PORT (the port for the range's first port).
    pub server: String,
    pub weight: u32,
    /// "up", "down", "draining", or "unknown" before the first check.
    pub health: String,
    pub active_flows: u64,
    pub new_flows_per_s: f64,
    /// New flows sent to the server since it was added (the datapath's
    /// count): metrics' counter.
    #[serde(default)]
    pub new_flows: u64,
    /// Seconds since the health last changed (or the server was added).
    pub health_changed_s: u64,
    /// Why the last failed check failed, while it is the last word.
    pub last_failure: Option<String>,
}

/// A forwarded flow as `natd sessions` shows it.
pub struct FlowView {
    pub forward: String,
    pub server: Endpoint,
}

impl Forwards {
    pub fn new(results: mpsc::Sender<CheckResult>) -> Self {
        Self { installed: (0..MAX_FORWARDS).map(|_| None).collect(), adopted_up: Default::default(), results }
    }

    /// The inside endpoints `wanted` gives static mappings: a dynamic
    /// mapping on one of them must go before the forward is applied.
    pub fn static_endpoints(wanted: &[Forward], pool: &[Ipv4Addr]) -> Vec<Endpoint> {
        let mut endpoints = Vec::new();
        for forward in wanted {
            if forward.external_addr(pool).is_none() {
                continue;
            }
            for server in &forward.servers {
                for_each_port(forward, server, |server_endpoint, _, _| endpoints.push(server_endpoint));
            }
        }
        endpoints
    }

    /// The servers an adopted datapath had up (address, checked port):
    /// the next `apply` starts them up.
    pub fn adopt_health(&mut self, up: impl IntoIterator<Item = (Ipv4Addr, u16)>) {
        self.adopted_up = up.into_iter().collect();
    }

    /// The external endpoints of every installed forward's ports.
    pub fn installed_ports(&self) -> std::collections::HashSet<Endpoint> {
        let mut ports = std::collections::HashSet::new();
        for installed in self.installed.iter().flatten() {
            let (first, last) = installed.config.ports;
            for &proto_nr in &installed.config.protocols {
                ports.extend((first..=last).map(|port| Endpoint::new(installed.external, port, proto_nr)));
            }
        }
        ports
    }

    /// Makes the datapath serve `wanted`: removes the forwards and backends
    /// no longer wanted, adds the new ones, updates weights, names and
    /// health settings in place. Returns what changed, in words.
    pub fn apply(&mut self, tables: &mut dyn ForwardTables, wanted: &[Forward], pool: &[Ipv4Addr], now: Instant) -> Result<Vec<String>> {
        let mut changes = Vec::new();
        let key = |f: &Forward| (f.protocols.clone(), f.ports, f.external_addr(pool), f.pinned);
        // Gone first: their ports and slots may be taken by what comes.
        let mut purged: Vec<(u32, Option<u32>)> = Vec::new();
        for index in 0..self.installed.len() {
            let Some(installed) = &self.installed[index] else { continue };
            if !wanted.iter().any(|w| key(w) == (installed.config.protocols.clone(), installed.config.ports, Some(installed.external), installed.config.pinned)) {
                let installed = self.installed[index].take().expect("checked above");
                changes.push(format!("forward {:?} removed", installed.config.name));
                uninstall_forward(tables, index as u32, installed)?;
                purged.push((index as u32, None));
            }
        }
        for forward in wanted {
            let external = forward.external_addr(pool).ok_or_else(|| anyhow!("forward {:?}: no external address to forward on", forward.name))?;
            let existing = self.installed.iter().position(|i| i.as_ref().is_some_and(|i| key(&i.config) == key(forward) && i.external == external));
            match existing {
                Some(index) => {
                    let installed = self.installed[index].as_mut().expect("found above");
                    let removed = update_forward(tables, index as u32, installed, forward, &self.results, now, &mut changes)?;
                    purged.extend(removed.into_iter().map(|slot| (index as u32, Some(slot))));
                }
                None => {
                    let index = self
                        .installed
                        .iter()
                        .position(Option::is_none)
                        .ok_or_else(|| anyhow!("forward {:?}: all {MAX_FORWARDS} forwards are in use", forward.name))?;
                    let installed = install_forward(tables, index as u32, forward, external, &self.results, &self.adopted_up, now)?;
                    changes.push(format!("forward {:?} added: {} {} on {external}", forward.name, forward.protocol_name(), forward.ports_text()));
                    self.installed[index] = Some(installed);
                }
            }
        }
        if !purged.is_empty() {
            purge_flows(tables, &purged)?;
        }
        self.adopted_up.clear();
        Ok(changes)
    }

    /// One active check's result. A result of a checker that was replaced
    /// (a reload) is ignored.
    pub fn check_result(&mut self, tables: &mut dyn ForwardTables, result: CheckResult) -> Result<()> {
        let (index, slot) = (u32::from(result.id.forward), u32::from(result.id.slot));
        let Some(installed) = self.installed.get_mut(index as usize).and_then(Option::as_mut) else { return Ok(()) };
        let name = installed.config.name.clone();
        let Some(member) = installed.backends.get_mut(slot as usize).and_then(Option::as_mut) else { return Ok(()) };
        if member.checker.as_ref().is_none_or(|checker| result.at < checker.started()) {
            return Ok(());
        }
        member.last_failure = result.why.clone();
        if let Some(transition) = member.health.record(result.ok, result.at) {
            log_transition(&name, &member.server, &transition, result.why.as_deref());
            sync(tables, index, installed)?;
        }
        Ok(())
    }

    /// Reads the passive signals (every `SIGNALS_POLL`): a backend that
    /// refused connections or left SYNs unanswered counts one failed check.
    /// Backends without active checks are assumed up again every interval.
    pub fn poll(&mut self, tables: &mut dyn ForwardTables, now: Instant) -> Result<()> {
        for (index, entry) in self.installed.iter_mut().enumerate() {
            let Some(installed) = entry else { continue };
            let mut changed = false;
            let check = installed.config.health.clone();
            for (slot, member) in installed.backends.iter_mut().enumerate() {
                let Some(member) = member else { continue };
                let signals = tables.signals(index as u32, slot as u32)?;
                member.sample_flows(now, signals.flows);
                let failure = passive_failure(&member.signals[0], &member.signals[1], &signals);
                member.signals = [member.signals[1], signals];
                let mut transition = None;
                if let Some(failure) = failure {
                    let why = failure.to_string();
                    transition = member.health.record(false, now).map(|t| (t, why.clone()));
                    member.last_failure = Some(why);
                } else if check.kind == HealthKind::None && now.duration_since(member.assumed_up) >= check.interval {
                    // No check to bring it back: assumed up again, so a
                    // server taken down by passive signals is retried.
                    member.assumed_up = now;
                    transition = member.health.record(true, now).map(|t| (t, String::new()));
                }
                if let Some((transition, why)) = transition {
                    log_transition(&installed.config.name, &member.server, &transition, Some(why.as_str()).filter(|w| !w.is_empty()));
                    changed = true;
                }
            }
            if changed {
                sync(tables, index as u32, installed)?;
            }
        }
        Ok(())
    }

    /// Removes the forwarded flows idle past their timeout (the mappings'
    /// timeouts by protocol and TCP state). Returns how many were removed.
    pub fn age_flows(&mut self, tables: &mut dyn ForwardTables, timeouts: &Timeouts, now_ns: u64) -> Result<usize> {
        let mut removed = 0;
        for (key, flow, table) in tables.forwarded_flows()? {
            let timeout = flow_timeout(timeouts, &key, flow.tcp_flags_out, flow.tcp_flags_in);
            // The datapath stamps with the clock natd published, up to one
            // tick behind: one tick more, as for mappings.
            if now_ns.saturating_sub(flow.last_seen_ns) > timeout.as_nanos() as u64 + nat_common::CLOCK_TICK_NS {
                tables.remove_forwarded_flow(&key, table)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// The forward and server endpoint of a forwarded flow, if its forward
    /// is installed.
    pub fn flow_view(&self, key: &FlowKey, forward: u16, backend: u16, offset: u16) -> Option<FlowView> {
        let installed = self.installed.get(usize::from(forward))?.as_ref()?;
        let member = installed.backends.get(usize::from(backend))?.as_ref()?;
        let port = member.server.base_port(installed.config.ports.0).wrapping_add(offset);
        Some(FlowView { forward: installed.config.name.clone(), server: Endpoint::new(member.server.addr, port, key.proto) })
    }

    /// What `natd forwards` shows; the flows are counted now.
    pub fn views(&self, tables: &dyn ForwardTables, now: Instant) -> Result<Vec<ForwardView>> {
        let mut flows: HashMap<(u16, u16), u64> = HashMap::new();
        for (_, flow, _) in tables.forwarded_flows()? {
            *flows.entry((flow.forward, flow.backend)).or_default() += 1;
        }
        let new_flows = |index: u16, slot: u16| tables.signals(u32::from(index), u32::from(slot)).map_or(0, |s| s.flows);
        Ok(self
            .installed
            .iter()
            .enumerate()
            .filter_map(|(index, installed)| Some((index as u16, installed.as_ref()?)))
            .map(|(index, installed)| {
                let config = &installed.config;
                ForwardView {
                    name: config.name.clone(),
                    protocol: config.protocol_name(),
                    ports: config.ports_text(),
                    external: installed.external.to_string(),
                    health_check: config.health.describe(),
                    servers: installed
                        .backends
                        .iter()
                        .enumerate()
                        .filter_map(|(slot, member)| Some((slot as u16, member.as_ref()?)))
                        .map(|(slot, member)| ServerView {
                            server: format!("{}:{}", member.server.addr, member.server.base_port(config.ports.0)),
                            weight: member.server.weight,
                            health: status_name(member.health.status()).to_string(),
                            active_flows: flows.get(&(index, slot)).copied().unwrap_or(0),
                            new_flows_per_s: member.flow_rate(now, new_flows(index, slot)),
                            new_flows: new_flows(index, slot),
                            health_changed_s: now.saturating_duration_since(member.health.last_change()).as_secs(),
                            last_failure: member.last_failure.clone(),
                        })
                        .collect(),
                }
            })
            .collect())
    }

    /// How many forwards are installed.
    pub fn len(&self) -> usize {
        self.installed.iter().flatten().count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Member {
    /// `first_port`: the forward's first external port (the server's port
    /// for it is the one checked).
    /// `assume_up`: an adopted datapath had it up (see `Forwards::adopted_up`).
    fn new(server: Server, first_port: u16, check: &HealthCheck, results: &mpsc::Sender<CheckResult>, id: BackendId, assume_up: bool, now: Instant) -> Self {
        let config = health_config(check);
        let mut health = ServerHealth::new(config, server.weight, now);
        if check.kind == HealthKind::None || assume_up {
            // Nothing checks it: up at once (passive signals can still take
            // it down for a while).
            health.record(true, now);
        }
        let mut member = Self {
            server,
            check_port: server.base_port(first_port),
            health,
            checker: None,
            last_failure: None,
            written_state: backend_state::EMPTY,
            signals: [Signals::default(); 2],
            flow_samples: VecDeque::new(),
            assumed_up: now,
        };
        member.start_checks(check, results, id);
        member
    }

    /// (Re)starts the active checks; the old checker's results that are
    /// still queued are told apart by `CheckerHandle::started`.
    fn start_checks(&mut self, check: &HealthCheck, results: &mpsc::Sender<CheckResult>, id: BackendId) {
        self.checker = probe_of(check).map(|probe| {
            let target = SocketAddrV4::new(self.server.addr, self.check_port);
            Checker::spawn(id, target, probe, check.interval, check.timeout, results.clone())
        });
    }

    fn sample_flows(&mut self, now: Instant, flows: u64) {
        self.flow_samples.push_back((now, flows));
        while self.flow_samples.front().is_some_and(|(at, _)| now.duration_since(*at) > RATE_WINDOW) {
            self.flow_samples.pop_front();
        }
    }

    /// New flows per second from the oldest sample in the window to
    /// `flows` now.
    fn flow_rate(&self, now: Instant, flows: u64) -> f64 {
        match self.flow_samples.front() {
            Some((t0, n0)) if now > *t0 => flows.saturating_sub(*n0) as f64 / now.duration_since(*t0).as_secs_f64(),
            _ => 0.0,
        }
    }
}

/// Calls `each(server endpoint, external port, offset)` for every protocol
/// and port of `forward` on `server`.
fn for_each_port(forward: &Forward, server: &Server, mut each: impl FnMut(Endpoint, u16, u16)) {
    let (first, last) = forward.ports;
    for &proto_nr in &forward.protocols {
        for port in first..=last {
            let offset = port - first;
            each(Endpoint::new(server.addr, server.port_for(port, first), proto_nr), port, offset);
        }
    }
}

fn install_forward(
    tables: &mut dyn ForwardTables,
    index: u32,
    forward: &Forward,
    external: Ipv4Addr,
    results: &mpsc::Sender<CheckResult>,
    adopted_up: &std::collections::HashSet<(Ipv4Addr, u16)>,
    now: Instant,
) -> Result<Installed> {
    let mut installed = Installed {
        config: forward.clone(),
        external,
        backends: (0..MAX_BACKENDS).map(|_| None).collect(),
        // A map of arrays starts zeroed.
        maglev: vec![0; MAGLEV_SIZE as usize],
    };
    for (slot, server) in forward.servers.iter().enumerate() {
        tables.reset_signals(index, slot as u32)?;
        let assume_up = adopted_up.contains(&(server.addr, server.base_port(forward.ports.0)));
        installed.backends[slot] = Some(Member::new(*server, forward.ports.0, &forward.health, results, backend_id(index, slot as u32), assume_up, now));
    }
    // The backends and their table before the ports: the datapath never
    // finds a forward without them.
    sync(tables, index, &mut installed)?;
    let (first, last) = forward.ports;
    for &proto_nr in &forward.protocols {
        for port in first..=last {
            let port_entry = ForwardPort::new(index, port - first, if forward.pinned { port_flags::PINNED } else { 0 });
            tables
                .set_forward_port(Endpoint::new(external, port, proto_nr), port_entry)
                .with_context(|| format!("forward {:?}: installing port {port}", forward.name))?;
        }
    }
    for (slot, server) in forward.servers.iter().enumerate() {
        install_static_mappings(tables, index, slot as u32, forward, server, external)?;
    }
    Ok(installed)
}

fn install_static_mappings(tables: &mut dyn ForwardTables, index: u32, slot: u32, forward: &Forward, server: &Server, external: Ipv4Addr) -> Result<()> {
    let mut result = Ok(());
    for_each_port(forward, server, |server_endpoint, port, offset| {
        if result.is_ok() {
            let mapping = StaticMapping { server: server_endpoint, external: Endpoint::new(external, port, server_endpoint.proto), forward: index, slot, offset };
            result = tables.insert_static_mapping(&mapping).with_context(|| format!("forward {:?}: server {}", forward.name, server.addr));
        }
    });
    result
}

fn remove_static_mappings(tables: &mut dyn ForwardTables, forward: &Forward, server: &Server) -> Result<()> {
    let mut result = Ok(());
    for_each_port(forward, server, |server_endpoint, _, _| {
        if result.is_ok() {
            result = tables.remove_static_mapping(&server_endpoint);
        }
    });
    result
}

fn uninstall_forward(tables: &mut dyn ForwardTables, index: u32, installed: Installed) -> Result<()> {
    let config = &installed.config;
    // The ports first: from then on no packet reaches the backends.
    let (first, last) = config.ports;
    for &proto_nr in &config.protocols {
        for port in first..=last {
            tables.remove_forward_port(&Endpoint::new(installed.external, port, proto_nr))?;
        }
    }
    for (slot, member) in installed.backends.iter().enumerate() {
        if let Some(member) = member {
            remove_static_mappings(tables, config, &member.server)?;
            tables.set_backend(index, slot as u32, Backend::default())?;
        }
    }
    let mut cleared = installed.maglev.iter().enumerate().filter(|(_, s)| **s != NO_BACKEND).map(|(i, _)| (i as u32, NO_BACKEND));
    tables.set_maglev(index, &mut cleared)
}

/// Applies a new configuration to an installed forward with the same
/// identity. Returns the slots of the backends removed (their flows go).
fn update_forward(
    tables: &mut dyn ForwardTables,
    index: u32,
    installed: &mut Installed,
    forward: &Forward,
    results: &mpsc::Sender<CheckResult>,
    now: Instant,
    changes: &mut Vec<String>,
) -> Result<Vec<u32>> {
    let name = forward.name.clone();
    if installed.config.name != name {
        changes.push(format!("forward {:?} renamed {name:?}", installed.config.name));
    }
    let health_changed = installed.config.health != forward.health;
    let same_server = |a: &Server, b: &Server| a.addr == b.addr && a.port == b.port;
    let mut removed = Vec::new();
    for slot in 0..installed.backends.len() {
        let Some(member) = &installed.backends[slot] else { continue };
        if !forward.servers.iter().any(|s| same_server(s, &member.server)) {
            let member = installed.backends[slot].take().expect("checked above");
            changes.push(format!("forward {name:?}: server {} removed", server_text(&installed.config, &member.server)));
            remove_static_mappings(tables, &installed.config, &member.server)?;
            tables.set_backend(index, slot as u32, Backend::default())?;
            removed.push(slot as u32);
        }
    }
    let mut added = Vec::new();
    for server in &forward.servers {
        let kept = installed.backends.iter_mut().flatten().find(|m| same_server(&m.server, server));
        match kept {
            Some(member) => {
                if member.server.weight != server.weight {
                    changes.push(format!("forward {name:?}: server {} weight {} -> {}", server_text(forward, server), member.server.weight, server.weight));
                    member.server.weight = server.weight;
                    if let Some(t) = member.health.set_weight(server.weight, now) {
                        log_transition(&name, server, &t, None);
                    }
                }
            }
            None => {
                // A slot not freed by this reload: a removed backend's flows
                // are purged only after it.
                let slot = (0..installed.backends.len())
                    .find(|s| installed.backends[*s].is_none() && !removed.contains(&(*s as u32)))
                    .ok_or_else(|| anyhow!("forward {name:?}: all {MAX_BACKENDS} backend slots are in use"))?;
                tables.reset_signals(index, slot as u32)?;
                installed.backends[slot] = Some(Member::new(*server, forward.ports.0, &forward.health, results, backend_id(index, slot as u32), false, now));
                changes.push(format!("forward {name:?}: server {} added", server_text(forward, server)));
                added.push((slot as u32, *server));
            }
        }
    }
    if health_changed {
        changes.push(format!("forward {name:?}: health check now {}", forward.health.describe()));
        for (slot, member) in installed.backends.iter_mut().enumerate() {
            if let Some(member) = member {
                member.health.reconfigure(health_config(&forward.health));
                member.start_checks(&forward.health, results, backend_id(index, slot as u32));
            }
        }
    }
    installed.config = forward.clone();
    sync(tables, index, installed)?;
    for (slot, server) in added {
        install_static_mappings(tables, index, slot, forward, &server, installed.external)?;
    }
    Ok(removed)
}

/// Writes a forward's backend states and Maglev table after a change of
/// health, weight or membership. A backend coming up is marked up before
/// the table sends it flows; one going down is taken out of the table
/// before it is marked down: in between, a new flow must never pick a
/// backend the datapath would refuse (it would get a reset).
fn sync(tables: &mut dyn ForwardTables, index: u32, installed: &mut Installed) -> Result<()> {
    let first_port = installed.config.ports.0;
    let state_of = |m: &Member| m.health.status().backend_state();
    let backend_of = |m: &Member| Backend { addr_be: u32::from_ne_bytes(m.server.addr.octets()), base_port: m.server.base_port(first_port), state: state_of(m), _pad: 0 };
    for (slot, member) in installed.backends.iter_mut().enumerate() {
        if let Some(member) = member
            && state_of(member) != member.written_state
            && state_of(member) == backend_state::UP
        {
            tables.set_backend(index, slot as u32, backend_of(member))?;
            member.written_state = backend_state::UP;
        }
    }
    let slots = maglev_slots(installed, first_port)?;
    let mut changed = slots.iter().zip(&installed.maglev).enumerate().filter(|(_, (new, old))| new != old).map(|(i, (new, _))| (i as u32, *new));
    tables.set_maglev(index, &mut changed)?;
    installed.maglev = slots;
    for (slot, member) in installed.backends.iter_mut().enumerate() {
        if let Some(member) = member
            && state_of(member) != member.written_state
        {
            tables.set_backend(index, slot as u32, backend_of(member))?;
            member.written_state = state_of(member);
        }
    }
    Ok(())
}

/// The forward's Maglev table over its backends that take new flows, with
/// their weights; slot values are backend slots.
fn maglev_slots(installed: &Installed, first_port: u16) -> Result<Vec<u32>> {
    let used = installed.backends.iter().rposition(Option::is_some).map_or(0, |last| last + 1);
    let input: Vec<(BackendKey, u32)> = (0..used)
        .map(|slot| match &installed.backends[slot] {
            Some(member) => {
                let addr = SocketAddr::V4(SocketAddrV4::new(member.server.addr, member.server.base_port(first_port)));
                (BackendKey::from_socket_addr(addr), member.health.effective_weight())
            }
            None => (BackendKey::from_bytes(format!("empty slot {slot}")), 0),
        })
        .collect();
    if input.is_empty() {
        return Ok(vec![NO_BACKEND; MAGLEV_SIZE as usize]);
    }
    Ok(MaglevTable::build(&input, MAGLEV_SIZE).context("building a Maglev table")?.into_slots())
}

/// Removes the flows of removed forwards (`(forward, None)`) and backends.
fn purge_flows(tables: &mut dyn ForwardTables, gone: &[(u32, Option<u32>)]) -> Result<()> {
    for (key, flow, table) in tables.forwarded_flows()? {
        let (forward, backend) = (u32::from(flow.forward), u32::from(flow.backend));
        if gone.iter().any(|(f, b)| *f == forward && b.is_none_or(|b| b == backend)) {
            tables.remove_forwarded_flow(&key, table)?;
        }
    }
    Ok(())
}

/// How long a forwarded flow lives idle: the mappings' timeouts.
fn flow_timeout(timeouts: &Timeouts, key: &FlowKey, flags_out: u8, flags_in: u8) -> Duration {
    timeouts.for_mapping(key.proto, flags_out & tcp_flags::TRACKED, flags_in & tcp_flags::TRACKED)
}

fn backend_id(index: u32, slot: u32) -> BackendId {
    BackendId { forward: index as u16, slot: slot as u16 }
}

fn health_config(check: &HealthCheck) -> HealthConfig {
    // Validated (1-100 each) when the settings were read.
    HealthConfig::new(check.fall, check.rise).unwrap_or_default()
}

/// The active check a forward's health settings ask for.
fn probe_of(check: &HealthCheck) -> Option<Probe> {
    match check.kind {
        HealthKind::Tcp => Some(Probe::Tcp),
        HealthKind::Http => Some(Probe::Http { path: check.path.clone(), host: None }),
        HealthKind::Udp => Some(Probe::Udp { send: check.send.clone(), expect: check.expect.clone() }),
        HealthKind::None => None,
    }
}

fn status_name(status: ServerStatus) -> &'static str {
    match status {
        ServerStatus::Unknown => "unknown",
        ServerStatus::Up => "up",
        ServerStatus::Down => "down",
        ServerStatus::Draining => "draining",
    }
}

fn server_text(forward: &Forward, server: &Server) -> String {
    format!("{}:{}", server.addr, server.base_port(forward.ports.0))
}

fn log_transition(forward: &str, server: &Server, transition: &Transition, why: Option<&str>) {
    let (from, to) = (status_name(transition.from), status_name(transition.to));
    let addr = server.addr;
    match (transition.to, why) {
        (ServerStatus::Down, Some(why)) => tracing::warn!("forward {forward:?}: server {addr} {from} -> {to}: {why}"),
        (ServerStatus::Down, None) => tracing::warn!("forward {forward:?}: server {addr} {from} -> {to}"),
        _ => tracing::info!("forward {forward:?}: server {addr} {from} -> {to}"),
    }
}

#[cfg(test)]
mod tests;
