//! natd's command line, and the commands that ask a serving natd (or check
//! a config file) and print what they learn.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

use crate::{
    config::{Environment, Forward, Overrides, Proxy, ProxyKind, ServerProtocol, Settings, XdpModeSetting},
    control::{self, ReloadOutcome, Request, Session, Stats, Status},
    nat::forwards::ForwardView,
    proxy::{ProxyView, Refusal},
};

#[derive(Parser)]
#[command(name = "natd", about = "XDP NAT gateway daemon", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Attach to the LAN and WAN interfaces and serve until SIGINT/SIGTERM.
    Run(Box<RunArgs>),
    /// Show whether natd serves in this network namespace (exit 1 if not).
    Status {
        #[arg(long)]
        json: bool,
    },
    /// List the live mappings, all or those that match every filter given.
    Sessions {
        #[arg(long)]
        json: bool,
        /// Only this protocol: tcp, udp, icmp or sctp.
        #[arg(long, value_name = "PROTO")]
        proto: Option<String>,
        /// Only this inside address, or address and port.
        #[arg(long, value_name = "ADDR[:PORT]")]
        inside: Option<String>,
        /// Only this external port, or address and port ("who had
        /// 203.0.113.1:24217").
        #[arg(long, value_name = "[ADDR:]PORT")]
        external: Option<String>,
    },
    /// Show the datapath's per-reason packet counters and the daemon's counters.
    Stats {
        #[arg(long)]
        json: bool,
    },
    /// List the inbound forwards: servers, weights, health, flows.
    Forwards {
        #[arg(long)]
        json: bool,
    },
    /// List the name-based proxies: names, servers, health, connections.
    Proxies {
        #[arg(long)]
        json: bool,
    },
    /// Re-read the config file of the natd serving here and apply the
    /// forwards, log level and WAN drop list without a restart (as SIGHUP
    /// does). Exits 1 when the new configuration is refused.
    Reload,
    /// Validate a config file against this machine and explain every error.
    Check {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Remove the gateway on these interfaces in this network namespace:
    /// detach its programs and remove every pin that SIGTERM left serving
    /// (every session is dropped). natd must not be running on them.
    Down(DownArgs),
}

/// Which gateway `natd down` removes: the interfaces of a config file, or
/// given as flags (flags win).
#[derive(Parser)]
pub struct DownArgs {
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[arg(long, value_name = "IF")]
    pub lan: Option<String>,
    #[arg(long, value_name = "IF")]
    pub wan: Option<String>,
    /// The bpffs natd was told to pin in (`pin_root`), if not the default.
    #[arg(long, value_name = "DIR")]
    pub pin_root: Option<PathBuf>,
}

/// Every flag overrides the same setting of the config file.
#[derive(Parser)]
pub struct RunArgs {
    /// TOML config file with any of the settings below and the timeouts.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The inside interface.
    #[arg(long, value_name = "IF")]
    pub lan: Option<String>,
    /// The outside interface.
    #[arg(long, value_name = "IF")]
    pub wan: Option<String>,
    /// Public address to translate to [default: the WAN interface's first IPv4 address].
    #[arg(long, value_name = "ADDR")]
    pub external_ip: Option<String>,
    /// External ports to allocate [default: 20000-32767, below Linux's
    /// ephemeral range so the gateway's own connections keep theirs].
    #[arg(long, value_name = "LO-HI")]
    pub port_range: Option<String>,
    /// XDP attach mode: native (driver) or generic (skb, slower, any driver) [default: native].
    #[arg(long, value_name = "MODE")]
    pub xdp_mode: Option<String>,
    /// Inbound filtering for every protocol: endpoint-independent,
    /// address-dependent or address-and-port-dependent [default:
    /// endpoint-independent; per protocol in the config file's [filtering]].
    #[arg(long, value_name = "MODE")]
    pub filtering: Option<String>,
    /// How much natd logs: trace, debug, info, warn or error [default: info].
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Forward a public port (or range LO-HI) of the first external address
    /// to inside servers, load balanced over several: PROTOCOL is tcp, udp
    /// or tcp+udp, each SERVER ADDR[:PORT]. Repeatable; adds to the config
    /// file's [[forward]] tables.
    #[arg(long, value_name = "PROTOCOL:PORT=SERVER[,SERVER...]")]
    pub forward: Vec<String>,
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics, e.g. the LAN
    /// address and 9469 [default: off].
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<String>,
    /// The bpffs where the datapath is pinned so that it outlives natd
    /// [default: /sys/fs/bpf, or /run/natd/bpffs, mounted if need be].
    #[arg(long, value_name = "DIR")]
    pub pin_root: Option<String>,
}

impl RunArgs {
    pub fn overrides(&self) -> Overrides {
        Overrides {
            lan: self.lan.clone(),
            wan: self.wan.clone(),
            external_ip: self.external_ip.clone(),
            port_range: self.port_range.clone(),
            xdp_mode: self.xdp_mode.clone(),
            filtering: self.filtering.clone(),
            log_level: self.log_level.clone(),
            forwards: self.forward.clone(),
            metrics: self.metrics.clone(),
            pin_root: self.pin_root.clone(),
        }
    }
}

/// Settings from the file and flags, checked against this machine, with
/// their warnings. Every error is reported at once; nothing has been
/// touched yet.
pub fn settings(file: Option<&Path>, flags: &Overrides) -> Result<(Settings, Environment, Vec<String>)> {
    let (settings, warnings) = Settings::from_sources(file, flags)?;
    let env = Environment::check(&settings)?;
    Ok((settings, env, warnings))
}

pub fn check(config: &Path) -> Result<()> {
    let (s, env, warnings) = settings(Some(config), &Overrides::default())?;
    for w in warnings {
        eprintln!("natd: warning: {w}");
    }
    println!("{}: OK", config.display());
    println!("  lan {} (ifindex {}), wan {} (ifindex {})", s.lan, env.lan_ifindex, s.wan, env.wan_ifindex);
    let pool: Vec<String> = env.external_ips.iter().map(|ip| ip.to_string()).collect();
    println!("  external_ip {}, port_range {}-{}, port_hold {} s", pool.join(", "), s.port_min, s.port_max, s.port_hold.as_secs());
    let low = s.low_port_range.map_or("none".to_string(), |(lo, hi)| format!("{lo}-{hi}"));
    println!("  port_parity {}, port_class {} (low_port_range {low})", s.port_parity, s.port_class);
    let quota = if s.ports_per_host == 0 { "no limit".to_string() } else { s.ports_per_host.to_string() };
    println!("  ports_per_host {quota}, max_sessions {}", s.max_sessions);
    let t = s.timeouts;
    println!(
        "  timeouts: udp {} s, icmp {} s, tcp_established {} s, tcp_opening {} s, tcp_closing {} s",
        t.udp.as_secs(),
        t.icmp.as_secs(),
        t.tcp_established.as_secs(),
        t.tcp_opening.as_secs(),
        t.tcp_closing.as_secs()
    );
    println!(
        "  timeouts: sctp_init {} s, sctp_established {} s, sctp_closing {} s, esp {} s",
        t.sctp_init.as_secs(),
        t.sctp_established.as_secs(),
        t.sctp_closing.as_secs(),
        t.esp.as_secs()
    );
    let f = s.filtering;
    println!("  filtering: tcp {}, udp {} (sctp as udp), icmp {}", f.tcp.name(), f.udp.name(), f.icmp.name());
    println!("  inside (translated sources): {}", env.inside_description());
    let (lan_wire, wan_wire) = env.off_the_wire(s.xdp_mode == XdpModeSetting::Native, s.partial_checksums);
    let tested = |wire: bool| if wire { "not tested (a NIC's, in native mode)" } else { "tested" };
    println!("  partial_checksums {}: {} {}, {} {}", s.partial_checksums.name(), s.lan, tested(lan_wire), s.wan, tested(wan_wire));
    println!("  wan_drop_sources: {} prefix(es)", s.wan_drop_sources.len());
    match s.metrics {
        Some(addr) => println!("  metrics: http://{addr}/metrics"),
        None => println!("  metrics: off"),
    }
    for forward in &s.forwards {
        println!("  {}", forward_line(forward, &env.external_ips));
    }
    for proxy in &s.proxies {
        for line in proxy_lines(proxy, &env.external_ips) {
            println!("  {line}");
        }
    }
    Ok(())
}

/// The line `natd check` and `natd proxies` add for `server_protocol = "http2"`.
const HTTP2_SERVERS: &str = "  servers spoken to in HTTP/2 (h2c, server_protocol = \"http2\")";

/// One proxy as `natd check` shows it: where it listens, its timeouts and
/// limit, each name with its servers, the default, the health check.
fn proxy_lines(proxy: &Proxy, pool: &[std::net::Ipv4Addr]) -> Vec<String> {
    let addr = proxy.external_addr(pool).map_or_else(|| "the first external address".to_string(), |ip| ip.to_string());
    let mut lines = vec![format!(
        "proxy {:?}: {} on {addr}:{}, proxy_protocol {}, hello_timeout {} s, connect_timeout {} s, idle_timeout {} s, max_connections {}; health: {}",
        proxy.name,
        proxy.kind.name(),
        proxy.port,
        proxy.proxy_protocol.map_or("none", |v| v.name()),
        proxy.hello_timeout.as_secs_f64(),
        proxy.connect_timeout.as_secs_f64(),
        proxy.idle_timeout.as_secs_f64(),
        proxy.max_connections,
        proxy.health_text()
    )];
    if proxy.kind == ProxyKind::Http && proxy.server_protocol == ServerProtocol::Http2 {
        lines.push(HTTP2_SERVERS.to_string());
    }
    for (name, servers) in proxy.server_sets() {
        let servers: Vec<String> = servers.iter().map(ToString::to_string).collect();
        lines.push(format!("  {name} -> {}", servers.join(", ")));
    }
    if proxy.default.is_none() {
        lines.push("  other names, no name, not TLS: refused (no default)".to_string());
    }
    if proxy.quic {
        lines.push(format!(
            "  quic: UDP {addr}:{} routed by the SNI of the QUIC Initial, then translated in XDP (forward \"quic/{}\" in natd forwards)",
            proxy.port, proxy.port
        ));
    }
    lines
}

/// One forward as `natd check` shows it: name, protocols, port(s),
/// external address, servers with weights, health check.
fn forward_line(forward: &Forward, pool: &[std::net::Ipv4Addr]) -> String {
    let addr = forward.external_addr(pool).map_or_else(|| "the first external address".to_string(), |ip| ip.to_string());
    let (first, last) = forward.ports;
    let servers: Vec<String> = forward
        .servers
        .iter()
        .map(|server| {
            let port = if first == last {
                format!(":{}", server.base_port(first))
            } else {
                format!(":{}-{}", server.base_port(first), server.port_for(last, first))
            };
            format!("{}{port} (weight {})", server.addr, server.weight)
        })
        .collect();
    let health = forward.health.describe();
    format!(
        "forward {:?}: {} {} on {addr} -> {}; health: {health}",
        forward.name,
        forward.protocol_name(),
        forward.ports_text(),
        servers.join(", ")
    )
}

/// Asks every natd of this network namespace; fails when there is none.
fn ask<T: serde::de::DeserializeOwned>(request: Request) -> Result<Vec<T>> {
    let daemons = control::running_daemons()?;
    if daemons.is_empty() {
        bail!("natd is not running in this network namespace");
    }
    daemons
        .iter()
        .map(|d| {
            let text = control::query(d, &request)?;
            serde_json::from_str(&text).with_context(|| format!("natd at @{d} answered {}", text.trim()))
        })
        .collect()
}

pub fn status(json: bool) -> Result<()> {
    let all: Vec<Status> = ask(Request::Status)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(());
    }
    for s in all {
        println!("natd serving (pid {}, up {} s)", s.pid, s.uptime_s);
        println!("  lan {}  wan {}  mode {}  external {}  ports {}", s.lan, s.wan, s.xdp_mode, s.external_ip, s.port_range);
        println!("  sessions {} of {}  refused flows {}", s.sessions, s.max_sessions, s.refused_flows);
        let f = &s.filtering;
        println!("  filtering: tcp {}  udp {}  icmp {}", f.tcp, f.udp, f.icmp);
        println!("  inside: {}", s.inside);
        if s.off_the_wire.is_empty() {
            println!("  partial checksums: tested on both sides (veth, tun, bond... or generic mode)");
        } else {
            println!("  partial checksums: not tested on {} (a NIC's frames, off a wire)", s.off_the_wire.join(", "));
        }
        for p in s.ports {
            println!("  {:<4} ports: {} in use, {} held, {} free", p.proto, p.in_use, p.held, p.free);
        }
    }
    Ok(())
}

pub fn sessions(json: bool, filter: control::SessionFilter) -> Result<()> {
    let rows: Vec<Session> = ask::<Vec<Session>>(Request::Sessions(filter))?.into_iter().flatten().collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!("{:<5} {:<21} {:<21} {:<21} {:<12} {:>8} {:>8}", "PROTO", "INSIDE", "EXTERNAL", "REMOTE", "STATE", "IDLE_S", "TIMEOUT");
    for r in &rows {
        let remote = r.remote.as_deref().unwrap_or("-");
        // An ESP SA pair's SPIs follow on the row (out to the peer, in from it).
        let spis = match (&r.spi_out, &r.spi_in) {
            (Some(out), Some(inbound)) => format!("  spi out {out} in {inbound}"),
            _ => String::new(),
        };
        println!("{:<5} {:<21} {:<21} {:<21} {:<12} {:>8} {:>8}{spis}", r.proto, r.inside, r.external, remote, r.state, r.idle_s, r.timeout_s);
    }
    let forwarded = rows.iter().filter(|r| r.remote.is_some()).count();
    println!("{} session(s), {forwarded} of them forwarded flows", rows.len());
    Ok(())
}

pub fn forwards(json: bool) -> Result<()> {
    let all: Vec<ForwardView> = ask::<Vec<ForwardView>>(Request::Forwards)?.into_iter().flatten().collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(());
    }
    if all.is_empty() {
        println!("no forwards");
    }
    for f in &all {
        println!("forward {:?}: {} {} on {}; health: {}", f.name, f.protocol, f.ports, f.external, f.health_check);
        println!("  {:<21} {:>6} {:<9} {:>8} {:>10} {:>10}  LAST FAILURE", "SERVER", "WEIGHT", "HEALTH", "FLOWS", "NEW/S", "CHANGED_S");
        for s in &f.servers {
            let failure = s.last_failure.as_deref().unwrap_or("-");
            println!(
                "  {:<21} {:>6} {:<9} {:>8} {:>10.1} {:>10}  {failure}",
                s.server, s.weight, s.health, s.active_flows, s.new_flows_per_s, s.health_changed_s
            );
        }
    }
    Ok(())
}

pub fn proxies(json: bool) -> Result<()> {
    let all: Vec<ProxyView> = ask::<Vec<ProxyView>>(Request::Proxies)?.into_iter().flatten().collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(());
    }
    if all.is_empty() {
        println!("no proxies");
    }
    for p in &all {
        println!(
            "proxy {:?}: {} on {}, proxy_protocol {}; hello_timeout {} s, idle_timeout {} s, max_connections {}; health: {}",
            p.name, p.kind, p.listen, p.proxy_protocol, p.hello_timeout_s, p.idle_timeout_s, p.max_connections, p.health_check
        );
        let reasons: Vec<String> =
            Refusal::KEYS.iter().filter_map(|key| p.refused_by.get(*key).filter(|n| **n > 0).map(|n| format!("{key} {n}"))).collect();
        let reasons = if reasons.is_empty() { String::new() } else { format!(" ({})", reasons.join(", ")) };
        println!("  connections: {} active, {} total, {} refused{reasons}", p.active, p.total, p.refused);
        if p.server_protocol == ServerProtocol::Http2.name() {
            println!("{HTTP2_SERVERS}");
        }
        if let Some(q) = &p.quic {
            println!(
                "  quic: {} connections routed and handed to XDP; natd read {} datagrams, sent {} on, ignored {}; {} ClientHellos being read",
                q.routed, q.datagrams, q.relayed, q.ignored, q.assembling
            );
        }
        println!("  {:<32} SERVERS", "NAME");
        for route in &p.routes {
            println!("  {:<32} {}", route.name, route.servers.join(", "));
        }
        println!("  {:<21} {:<17} {:>7} {:>8} {:>8}  LAST FAILURE", "SERVER", "HEALTH", "ACTIVE", "TOTAL", "FAILED");
        for s in &p.servers {
            let failure = s.last_failure.as_deref().unwrap_or("-");
            println!("  {:<21} {:<17} {:>7} {:>8} {:>8}  {failure}", s.server, s.health, s.active, s.total, s.connect_failures);
        }
    }
    Ok(())
}

/// Asks natd to reload; an error (exit 1) when it refused.
/// `natd down`: what a stopped natd left serving goes. Reads only `lan`,
/// `wan` and `pin_root` of a config file, so that it works when the rest
/// no longer validates (an interface gone).
pub fn down(args: &DownArgs) -> Result<()> {
    let file: toml::Table = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            toml::from_str(&text).with_context(|| format!("{} is not valid TOML", path.display()))?
        }
        None => toml::Table::new(),
    };
    let from_file = |key: &str| file.get(key).and_then(|v| v.as_str()).map(str::to_string);
    let (Some(lan), Some(wan)) = (args.lan.clone().or_else(|| from_file("lan")), args.wan.clone().or_else(|| from_file("wan"))) else {
        bail!("natd down needs the gateway's interfaces: --config FILE, or --lan IF --wan IF");
    };
    let pin_root = args.pin_root.clone().or_else(|| from_file("pin_root").map(PathBuf::from));
    // A natd serving them holds their locks: it must stop first, or
    // it would serve on with its programs gone.
    drop(control::InterfaceLocks::acquire(&[&lan, &wan]).context("natd down")?);
    let Some(root) = crate::datapath::PinRoot::find(pin_root.as_deref(), false)? else {
        println!("nothing pinned: no bpffs at /sys/fs/bpf or {}", crate::datapath::OWN_BPFFS);
        return Ok(());
    };
    for gone in root.remove_stale() {
        println!("removed the pins of a gateway whose interfaces are gone: {gone}");
    }
    let shown = root.shown.clone();
    match crate::datapath::StateDir::existing(root, &lan, &wan)? {
        Some(state) => {
            let where_ = state.shown.clone();
            // Forwarding off first: on, with no program attached, the
            // kernel would forward inside addresses untranslated.
            for path in crate::forwarding::Forwarding::restore_handed_over(crate::handover::Handover::take(&state).forwarding) {
                eprintln!("natd: warning: could not restore {path}");
            }
            let pins = state.remove()?;
            println!("removed the gateway on {lan} and {wan}: {} pins at {where_} (programs detached, sessions dropped)", pins.len());
        }
        None => println!("no gateway on {lan} and {wan} pinned in this network namespace (at {shown})"),
    }
    Ok(())
}

pub fn reload() -> Result<()> {
    let outcomes: Vec<ReloadOutcome> = ask(Request::Reload)?;
    let mut refused = false;
    for outcome in outcomes {
        if outcome.applied {
            println!("{}", outcome.message);
            for change in &outcome.changes {
                println!("  {change}");
            }
        } else {
            eprintln!("natd: {}", outcome.message);
            refused = true;
        }
    }
    if refused {
        bail!("the new configuration was refused; natd runs as before");
    }
    Ok(())
}

pub fn stats(json: bool) -> Result<()> {
    let all: Vec<Stats> = ask(Request::Stats)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(());
    }
    for s in all {
        for (title, counters) in [("datapath (packets, per reason):", &s.datapath), ("daemon:", &s.daemon)] {
            println!("{title}");
            for c in counters {
                println!("  {:<26} {}", c.name, c.value);
            }
        }
    }
    Ok(())
}
