//! The forward logic against tables in memory: what is written where, and
//! in which order, on install, reload, health changes and aging.

use std::{
    collections::HashMap,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use nat_common::{
    Endpoint,
    forward::{Backend, Flow, FlowKey, ForwardPort, MAGLEV_SIZE, NO_BACKEND, Signals, backend_state, mapping_flags},
    proto,
};
use tokio::sync::mpsc;

use super::*;
use crate::{
    config::{HealthCheck, HealthKind, Server, Timeouts},
    datapath::FlowTable,
};

/// What the datapath would hold, and the order of the state and table writes.
#[derive(Default)]
struct FakeTables {
    ports: HashMap<Endpoint, ForwardPort>,
    backends: HashMap<(u32, u32), Backend>,
    maglev: HashMap<u32, Vec<u32>>,
    signals: HashMap<(u32, u32), Signals>,
    statics: HashMap<Endpoint, StaticMapping>,
    flows: HashMap<FlowKey, (Flow, FlowTable)>,
    /// "state F/S N" and "maglev F" in the order written.
    writes: Vec<String>,
}

impl ForwardTables for FakeTables {
    fn set_forward_port(&mut self, external: Endpoint, port: ForwardPort) -> Result<()> {
        self.ports.insert(external, port);
        Ok(())
    }
    fn remove_forward_port(&mut self, external: &Endpoint) -> Result<()> {
        self.ports.remove(external);
        Ok(())
    }
    fn set_backend(&mut self, forward: u32, slot: u32, backend: Backend) -> Result<()> {
        self.writes.push(format!("state {forward}/{slot} {}", backend.state));
        self.backends.insert((forward, slot), backend);
        Ok(())
    }
    fn set_maglev(&mut self, forward: u32, slots: &mut dyn Iterator<Item = (u32, u32)>) -> Result<()> {
        let table = self.maglev.entry(forward).or_insert_with(|| vec![0; MAGLEV_SIZE as usize]);
        let mut any = false;
        for (index, slot) in slots {
            table[index as usize] = slot;
            any = true;
        }
        if any {
            self.writes.push(format!("maglev {forward}"));
        }
        Ok(())
    }
    fn signals(&self, forward: u32, slot: u32) -> Result<Signals> {
        Ok(self.signals.get(&(forward, slot)).copied().unwrap_or_default())
    }
    fn reset_signals(&mut self, forward: u32, slot: u32) -> Result<()> {
        self.signals.remove(&(forward, slot));
        Ok(())
    }
    fn insert_static_mapping(&mut self, mapping: &StaticMapping) -> Result<()> {
        self.statics.insert(mapping.server, *mapping);
        Ok(())
    }
    fn remove_static_mapping(&mut self, server: &Endpoint) -> Result<()> {
        self.statics.remove(server);
        Ok(())
    }
    fn forwarded_flows(&self) -> Result<Vec<(FlowKey, Flow, FlowTable)>> {
        Ok(self.flows.iter().map(|(k, (f, t))| (*k, *f, *t)).collect())
    }
    fn remove_forwarded_flow(&mut self, key: &FlowKey, _table: FlowTable) -> Result<()> {
        self.flows.remove(key);
        Ok(())
    }
}

impl FakeTables {
    fn state(&self, forward: u32, slot: u32) -> u8 {
        self.backends.get(&(forward, slot)).map_or(backend_state::EMPTY, |b| b.state)
    }

    /// Maglev slots per backend slot.
    fn shares(&self, forward: u32) -> HashMap<u32, usize> {
        let mut shares = HashMap::new();
        for slot in &self.maglev[&forward] {
            *shares.entry(*slot).or_default() += 1;
        }
        shares
    }

    fn flow(&mut self, remote_port: u16, forward: u16, backend: u16, last_seen_ns: u64) -> FlowKey {
        let remote = Endpoint::new(Ipv4Addr::new(198, 51, 100, 7), remote_port, proto::TCP);
        let key = FlowKey::new(&remote, &Endpoint::new(EXTERNAL, 8080, proto::TCP));
        let flags = tcp_flags::SYN | tcp_flags::ACK;
        let flow = Flow { last_seen_ns, forward, backend, offset: 0, tcp_flags_in: flags, tcp_flags_out: flags };
        self.flows.insert(key, (flow, FlowTable::Established));
        key
    }
}

const EXTERNAL: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);

fn server(last_octet: u8, weight: u32) -> Server {
    Server { addr: Ipv4Addr::new(10, 0, 0, last_octet), port: Some(80), weight }
}

fn forward(servers: Vec<Server>, kind: HealthKind) -> Forward {
    Forward {
        name: "web".into(),
        protocols: vec![proto::TCP],
        ports: (8080, 8080),
        external_ip: None,
        servers,
        health: HealthCheck { interval: Duration::from_secs(1), ..HealthCheck::of_kind(kind) },
        pinned: false,
    }
}

fn forwards() -> Forwards {
    // Kind "none" spawns no checker: the channel is never read.
    let (tx, _rx) = mpsc::channel(16);
    Forwards::new(tx)
}

fn apply(f: &mut Forwards, t: &mut FakeTables, wanted: &[Forward], now: Instant) -> Vec<String> {
    f.apply(t, wanted, &[EXTERNAL], now).unwrap()
}

#[test]
fn a_forward_installs_its_ports_backends_table_and_static_mappings() {
    let (mut f, mut t, now) = (forwards(), FakeTables::default(), Instant::now());
    let mut range = forward(vec![server(1, 1), server(2, 2), Server { port: None, ..server(3, 3) }], HealthKind::None);
    range.ports = (8000, 8009);
    range.protocols = vec![proto::TCP, proto::UDP];
    let changes = apply(&mut f, &mut t, &[range], now);
    assert_eq!(changes, ["forward \"web\" added: tcp+udp 8000-8009 on 203.0.113.1"]);

    assert_eq!(t.ports.len(), 20, "ten ports, two protocols");
    assert_eq!(t.ports[&Endpoint::new(EXTERNAL, 8003, proto::UDP)], ForwardPort::new(0, 3, 0));
    assert_eq!(t.backends[&(0, 1)], Backend { addr_be: u32::from_ne_bytes([10, 0, 0, 2]), base_port: 80, state: backend_state::UP, _pad: 0 });
    assert_eq!(t.backends[&(0, 2)].base_port, 8000, "no port given: the external port");

    // Every slot names a backend, shares follow the weights 1:2:3.
    let shares = t.shares(0);
    assert!(!shares.contains_key(&NO_BACKEND));
    let m = MAGLEV_SIZE as f64;
    for (slot, weight) in [(0, 1.0), (1, 2.0), (2, 3.0)] {
        let share = shares[&slot] as f64 / m;
        assert!((share - weight / 6.0).abs() < 0.02, "backend {slot}: {share}");
    }

    // A static mapping per server, protocol and port of the range.
    assert_eq!(t.statics.len(), 3 * 2 * 10);
    let s = t.statics[&Endpoint::new(Ipv4Addr::new(10, 0, 0, 2), 85, proto::TCP)];
    assert_eq!((s.external, s.forward, s.slot, s.offset), (Endpoint::new(EXTERNAL, 8005, proto::TCP), 0, 1, 5));
    assert_eq!(s.mapping().flags, mapping_flags::FORWARD);
    assert!(t.statics.contains_key(&Endpoint::new(Ipv4Addr::new(10, 0, 0, 3), 8009, proto::UDP)));
    let one = forward(vec![server(1, 1)], HealthKind::None);
    assert_eq!(Forwards::static_endpoints(&[one], &[EXTERNAL]), [Endpoint::new(Ipv4Addr::new(10, 0, 0, 1), 80, proto::TCP)]);
}

#[test]
fn a_server_with_checks_takes_no_flows_before_its_first_check_passes() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let _guard = rt.enter();
    let (mut f, mut t, now) = (forwards(), FakeTables::default(), Instant::now());
    // Loopback: the checkers' connects stay on this machine.
    let servers = vec![Server { addr: Ipv4Addr::LOCALHOST, port: Some(9), weight: 1 }];
    apply(&mut f, &mut t, &[forward(servers, HealthKind::Tcp)], now);
    assert_eq!(t.state(0, 0), backend_state::DOWN);
    assert_eq!(t.shares(0).keys().copied().collect::<Vec<_>>(), [NO_BACKEND], "no server up: no slot names one");

    let started = f.installed[0].as_ref().unwrap().backends[0].as_ref().unwrap().checker.as_ref().unwrap().started();
    let result = |ok, at| CheckResult { id: BackendId { forward: 0, slot: 0 }, ok, why: None, at };
    // A result older than the checker (a replaced one's) is not taken.
    f.check_result(&mut t, result(true, started - Duration::from_millis(1))).unwrap();
    assert_eq!(t.state(0, 0), backend_state::DOWN);
    f.check_result(&mut t, result(true, started + Duration::from_millis(1))).unwrap();
    assert_eq!(t.state(0, 0), backend_state::UP);
    assert_eq!(t.shares(0).keys().copied().collect::<Vec<_>>(), [0]);
    // Up: the state went before the table, so no new flow met a down backend.
    let writes = t.writes.join(", ");
    assert!(writes.ends_with("state 0/0 1, maglev 0"), "{writes}");
}

#[test]
fn passive_refusals_take_a_server_down_table_first_and_it_comes_back() {
    let (mut f, mut t, now) = (forwards(), FakeTables::default(), Instant::now());
    apply(&mut f, &mut t, &[forward(vec![server(1, 1), server(2, 1)], HealthKind::None)], now);
    t.writes.clear();
    // fall 2: two polls with new resets.
    for (i, resets) in [1, 2].into_iter().enumerate() {
        t.signals.insert((0, 1), Signals { resets, ..Signals::default() });
        f.poll(&mut t, now + SIGNALS_POLL * (i as u32 + 1)).unwrap();
    }
    assert_eq!(t.state(0, 1), backend_state::DOWN);
    assert_eq!(t.shares(0).keys().copied().collect::<Vec<_>>(), [0], "only the healthy server takes new flows");
    assert_eq!(t.writes, ["maglev 0", "state 0/1 2"], "out of the table before it is marked down");
    let views = f.views(&t, now).unwrap();
    let view = &views[0].servers[1];
    assert_eq!(view.health, "down");
    assert_eq!(view.last_failure.as_deref(), Some("passive: refused 1 connection(s) with a TCP RST"));

    // No active check: assumed up again every interval (rise 2).
    for s in 1..=2 {
        f.poll(&mut t, now + Duration::from_secs(2 * s)).unwrap();
    }
    assert_eq!(t.state(0, 1), backend_state::UP);
}

#[test]
fn a_reload_removes_adds_and_drains_servers_keeping_the_rest() {
    let (mut f, mut t, now) = (forwards(), FakeTables::default(), Instant::now());
    apply(&mut f, &mut t, &[forward(vec![server(1, 1), server(2, 1), server(3, 1)], HealthKind::None)], now);
    let on_2 = t.flow(40000, 0, 1, 0);
    let on_1 = t.flow(40001, 0, 0, 0);

    // Server 2 removed, server 4 added, server 3 drained.
    let changes = apply(&mut f, &mut t, &[forward(vec![server(1, 1), server(3, 0), server(4, 1)], HealthKind::None)], now);
    assert_eq!(
        changes,
        ["forward \"web\": server 10.0.0.2:80 removed", "forward \"web\": server 10.0.0.3:80 weight 1 -> 0", "forward \"web\": server 10.0.0.4:80 added"]
    );
    assert_eq!(t.state(0, 1), backend_state::EMPTY);
    assert!(!t.statics.contains_key(&Endpoint::new(Ipv4Addr::new(10, 0, 0, 2), 80, proto::TCP)));
    assert!(!t.flows.contains_key(&on_2), "the removed server's flows go");
    assert!(t.flows.contains_key(&on_1), "the others' stay");
    // Server 4 does not take the freed slot (its flows were only purged now).
    assert_eq!(t.backends[&(0, 3)].addr_be, u32::from_ne_bytes([10, 0, 0, 4]));
    assert_eq!(t.state(0, 2), backend_state::DRAINING);
    let shares = t.shares(0);
    assert!(!shares.contains_key(&2) && !shares.contains_key(&1), "neither drained nor removed take new flows");
}

/// Consistent hashing: when a server goes, the others keep the slots they
/// had (Maglev moves few beyond the removed server's own).
#[test]
fn removing_a_server_moves_few_other_slots() {
    let (mut f, mut t, now) = (forwards(), FakeTables::default(), Instant::now());
    let servers: Vec<Server> = (1..=4).map(|i| server(i, 1)).collect();
    apply(&mut f, &mut t, &[forward(servers.clone(), HealthKind::None)], now);
    let before = t.maglev[&0].clone();
    apply(&mut f, &mut t, &[forward(vec![servers[0], servers[2], servers[3]], HealthKind::None)], now);
    let after = &t.maglev[&0];
    let moved = before.iter().zip(after).filter(|(b, a)| **b != 1 && b != a).count();
    assert!(moved * 100 < MAGLEV_SIZE as usize * 4, "{moved} slots of the remaining servers moved");
    assert!(!after.contains(&1));
}

#[test]
fn a_removed_forward_leaves_nothing_and_its_slot_is_reused() {
    let (mut f, mut t, now) = (forwards(), FakeTables::default(), Instant::now());
    let web = forward(vec![server(1, 1)], HealthKind::None);
    apply(&mut f, &mut t, std::slice::from_ref(&web), now);
    let flow = t.flow(40000, 0, 0, 0);
    let mut other = web.clone();
    other.ports = (9090, 9090);
    other.name = "other".into();
    let changes = apply(&mut f, &mut t, &[other], now);
    assert_eq!(changes, ["forward \"web\" removed", "forward \"other\" added: tcp 9090 on 203.0.113.1"]);
    assert_eq!(t.ports.keys().map(|e| e.port()).collect::<Vec<_>>(), [9090]);
    assert!(!t.flows.contains_key(&flow));
    assert_eq!(t.statics.len(), 1);
    assert_eq!(f.views(&t, now).unwrap().len(), 1);

    let changes = apply(&mut f, &mut t, &[], now);
    assert_eq!(changes, ["forward \"other\" removed"]);
    assert!(t.ports.is_empty() && t.statics.is_empty());
    assert_eq!(t.state(0, 0), backend_state::EMPTY);
    assert_eq!(t.shares(0).keys().copied().collect::<Vec<_>>(), [NO_BACKEND]);
}

#[test]
fn a_renamed_forward_keeps_its_flows() {
    let (mut f, mut t, now) = (forwards(), FakeTables::default(), Instant::now());
    let web = forward(vec![server(1, 1)], HealthKind::None);
    apply(&mut f, &mut t, std::slice::from_ref(&web), now);
    let flow = t.flow(40000, 0, 0, 0);
    let renamed = Forward { name: "site".into(), ..web };
    assert_eq!(apply(&mut f, &mut t, &[renamed], now), ["forward \"web\" renamed \"site\""]);
    assert!(t.flows.contains_key(&flow));
}

#[test]
fn idle_flows_age_out_and_the_rest_are_counted() {
    let (mut f, mut t, now) = (forwards(), FakeTables::default(), Instant::now());
    apply(&mut f, &mut t, &[forward(vec![server(1, 1), server(2, 1)], HealthKind::None)], now);
    let timeouts = Timeouts { tcp_established: Duration::from_secs(100), ..Timeouts::default() };
    let now_ns = 1_000_000_000_000;
    let fresh = t.flow(40000, 0, 1, now_ns - 50_000_000_000);
    let stale = t.flow(40001, 0, 1, now_ns - 200_000_000_000);
    assert_eq!(f.age_flows(&mut t, &timeouts, now_ns).unwrap(), 1);
    assert!(t.flows.contains_key(&fresh) && !t.flows.contains_key(&stale));
    let view = f.views(&t, now).unwrap();
    assert_eq!((view[0].servers[0].active_flows, view[0].servers[1].active_flows), (0, 1));
}

/// `natd forwards`: new flows per second over the last seconds, from the
/// datapath's per-backend count read at the question.
#[test]
fn new_flows_per_second_come_from_the_datapath_count() {
    let (mut f, mut t, now) = (forwards(), FakeTables::default(), Instant::now());
    apply(&mut f, &mut t, &[forward(vec![server(1, 1)], HealthKind::None)], now);
    t.signals.insert((0, 0), Signals { flows: 100, ..Signals::default() });
    f.poll(&mut t, now).unwrap();
    t.signals.insert((0, 0), Signals { flows: 120, ..Signals::default() });
    let rate = f.views(&t, now + Duration::from_secs(2)).unwrap()[0].servers[0].new_flows_per_s;
    assert!((rate - 10.0).abs() < 1e-9, "{rate}");
}
