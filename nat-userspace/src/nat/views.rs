//! What `natd status`, `sessions`, `stats` and `forwards` show: read from
//! the daemon, never written.

use std::{net::Ipv4Addr, time::Instant};

use anyhow::{Result, bail};
use nat_common::{Endpoint, proto, tcp_flags};

use crate::{
    control::{Counter, FilteringStatus, Request, Session, Stats, Status},
    datapath::{FlowTable, ForwardTables as _},
    nat::{
        daemon::Daemon,
        sessions::{coarse_now_ns, session_state},
    },
};

/// The JSON answer to a control request.
pub fn answer(daemon: &Daemon, request: Request) -> Result<String> {
    Ok(match request {
        Request::Status => serde_json::to_string(&status(daemon))?,
        Request::Sessions(filter) => {
            let mut rows = session_rows(daemon)?;
            rows.retain(|row| filter.matches(row));
            serde_json::to_string(&rows)?
        }
        Request::Stats => serde_json::to_string(&stats(daemon)?)?,
        Request::Forwards => serde_json::to_string(&daemon.forwards.views(&daemon.datapath, Instant::now())?)?,
        // Changes the daemon: `serve` answers it.
        Request::Reload => bail!("reload is not a view"),
        // Not the daemon's: `serve` holds the proxies.
        Request::Proxies => bail!("the proxies are not the daemon's"),
    })
}

pub fn status(daemon: &Daemon) -> Status {
    let run = &daemon.run;
    let (settings, env) = (&run.settings, &run.env);
    let filtering = settings.filtering;
    Status {
        pid: std::process::id(),
        lan: settings.lan.clone(),
        wan: settings.wan.clone(),
        external_ip: env.external_ips.iter().map(Ipv4Addr::to_string).collect::<Vec<_>>().join(", "),
        xdp_mode: run.xdp_mode.to_string(),
        port_range: format!("{}-{}", settings.port_min, settings.port_max),
        uptime_s: run.started.elapsed().as_secs(),
        sessions: daemon.sessions.len(),
        max_sessions: daemon.datapath.session_capacity(),
        ports: proto::ALL.into_iter().map(|p| daemon.ports.usage(p)).collect(),
        refused_flows: daemon.counters.refused(),
        filtering: FilteringStatus {
            tcp: filtering.tcp.name().to_string(),
            udp: filtering.udp.name().to_string(),
            icmp: filtering.icmp.name().to_string(),
        },
        inside: env.inside_description(),
        off_the_wire: {
            let (lan, wan) = env.off_the_wire(run.xdp_mode == "native", settings.partial_checksums);
            [(lan, &settings.lan), (wan, &settings.wan)].into_iter().filter(|(wire, _)| *wire).map(|(_, name)| name.clone()).collect()
        },
    }
}

/// The live mappings, most recently active first.
pub fn session_rows(daemon: &Daemon) -> Result<Vec<Session>> {
    let now = coarse_now_ns();
    let timeouts = &daemon.run.settings.timeouts;
    let mut rows = Vec::with_capacity(daemon.sessions.len());
    for (slot, external) in daemon.sessions.iter() {
        // Its INBOUND entry names it, unless the maps were changed from
        // outside natd: such a session is left out of the view.
        let Some(inside) = daemon.datapath.session_inside(slot, &external)? else { continue };
        let inside = &inside;
        let live = daemon.datapath.liveness(slot)?;
        let (state_out, state_in) = live.state_bits(inside.proto);
        let timeout = timeouts.for_mapping(inside.proto, state_out, state_in);
        rows.push(Session {
            proto: proto::name(inside.proto).to_string(),
            inside: endpoint_text(inside),
            external: endpoint_text(&external),
            remote: None,
            forward: None,
            spi_out: None,
            spi_in: None,
            state: session_state(inside.proto, state_out, state_in).to_string(),
            idle_s: now.saturating_sub(live.last_seen_ns) / 1_000_000_000,
            timeout_s: timeout.as_secs(),
        });
    }
    rows.extend(forwarded_flow_rows(daemon, now)?);
    rows.extend(esp_rows(daemon, now)?);
    rows.sort_by(|a, b| a.idle_s.cmp(&b.idle_s).then_with(|| a.inside.cmp(&b.inside)));
    Ok(rows)
}

/// The forwarded flows, as sessions: the server inside, the forward's
/// endpoint outside, and the remote client.
fn forwarded_flow_rows(daemon: &Daemon, now: u64) -> Result<Vec<Session>> {
    let timeouts = &daemon.run.settings.timeouts;
    let mut rows = Vec::new();
    for (key, flow, table) in daemon.datapath.forwarded_flows()? {
        let Some(view) = daemon.forwards.flow_view(&key, flow.forward, flow.backend, flow.offset) else { continue };
        let (flags_out, flags_in) = (flow.tcp_flags_out & tcp_flags::TRACKED, flow.tcp_flags_in & tcp_flags::TRACKED);
        let state = match table {
            FlowTable::HalfOpen if key.proto == proto::TCP => "opening",
            FlowTable::HalfOpen => "half-open",
            FlowTable::Established => session_state(key.proto, flags_out, flags_in),
        };
        let external = Endpoint::from_be(key.external_addr_be, key.external_port_be, key.proto);
        let remote = Endpoint::from_be(key.remote_addr_be, key.remote_port_be, key.proto);
        rows.push(Session {
            proto: proto::name(key.proto).to_string(),
            inside: endpoint_text(&view.server),
            external: endpoint_text(&external),
            remote: Some(endpoint_text(&remote)),
            forward: Some(view.forward),
            spi_out: None,
            spi_in: None,
            state: state.to_string(),
            idle_s: now.saturating_sub(flow.last_seen_ns) / 1_000_000_000,
            timeout_s: timeouts.for_mapping(key.proto, flags_out, flags_in).as_secs(),
        });
    }
    Ok(rows)
}

/// The ESP SA pairs (`nat::esp`): addresses alone (ESP has no ports), the
/// peer as the remote, and both SPIs; "unanswered" until the peer's first
/// packet bound its SPI.
fn esp_rows(daemon: &Daemon, now: u64) -> Result<Vec<Session>> {
    let timeout = daemon.run.settings.timeouts.esp;
    let mut rows = Vec::new();
    for sa in daemon.esp.views() {
        let live = daemon.datapath.liveness(sa.slot)?;
        rows.push(Session {
            proto: proto::name(proto::ESP).to_string(),
            inside: sa.inside.to_string(),
            external: sa.external.to_string(),
            remote: Some(sa.peer.to_string()),
            forward: None,
            spi_out: Some(format!("0x{:08x}", sa.spi_out)),
            spi_in: Some(sa.spi_in.map_or_else(|| "-".to_string(), |spi| format!("0x{spi:08x}"))),
            state: if sa.spi_in.is_some() { "established" } else { "unanswered" }.to_string(),
            idle_s: now.saturating_sub(live.last_seen_ns) / 1_000_000_000,
            timeout_s: timeout.as_secs(),
        });
    }
    Ok(rows)
}

fn endpoint_text(endpoint: &Endpoint) -> String {
    format!("{}:{}", endpoint.addr(), endpoint.port())
}

pub fn stats(daemon: &Daemon) -> Result<Stats> {
    let counter = |name: &str, value| Counter { name: name.to_string(), value };
    let mut natd = vec![counter("sessions", daemon.sessions.len() as u64)];
    natd.extend(daemon.counters.named());
    natd.push(counter("fragments_waiting", daemon.fragments.waiting() as u64));
    natd.push(counter("esp_sas", daemon.esp.len() as u64));
    natd.extend(daemon.esp.counters.named());
    natd.push(counter("esp_held_now", daemon.esp.held_len() as u64));
    natd.push(counter("mapping_log_lost", daemon.mapping_log_lost()));
    Ok(Stats {
        datapath: daemon.datapath.counters()?.into_iter().map(|(r, v)| counter(r.name(), v)).collect(),
        daemon: natd,
    })
}
