//! natd: loads the XDP programs on the LAN and WAN interfaces, allocates
//! external ports when the fast path misses, ages mappings out, and answers
//! `status`, `sessions` and `stats` from other processes.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::programs::XdpMode;
use clap::{Parser, Subcommand};
use nat_userspace::{
    allocator::PortPolicy,
    config::{Environment, Overrides, Settings, XdpModeSetting},
    control::{self, CLIENT_TIMEOUT, InterfaceLocks, Request, Session, Stats, Status},
    daemon::{Daemon, RunInfo},
    datapath::{Datapath, Side},
    forwarding::Forwarding,
};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
    sync::{mpsc, oneshot},
};

#[derive(Parser)]
#[command(name = "natd", about = "XDP NAT gateway daemon", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Attach to the LAN and WAN interfaces and serve until SIGINT/SIGTERM.
    Run(RunArgs),
    /// Show whether natd serves in this network namespace (exit 1 if not).
    Status {
        #[arg(long)]
        json: bool,
    },
    /// List the live mappings.
    Sessions {
        #[arg(long)]
        json: bool,
    },
    /// Show the datapath's per-reason packet counters and the daemon's counters.
    Stats {
        #[arg(long)]
        json: bool,
    },
    /// Validate a config file against this machine and explain every error.
    Check {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
}

/// Every flag overrides the same setting of the config file.
#[derive(Parser)]
struct RunArgs {
    /// TOML config file with any of the settings below and the timeouts.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The inside interface.
    #[arg(long, value_name = "IF")]
    lan: Option<String>,
    /// The outside interface.
    #[arg(long, value_name = "IF")]
    wan: Option<String>,
    /// Public address to translate to [default: the WAN interface's first IPv4 address].
    #[arg(long, value_name = "ADDR")]
    external_ip: Option<String>,
    /// External ports to allocate [default: 20000-32767, below Linux's
    /// ephemeral range so the gateway's own connections keep theirs].
    #[arg(long, value_name = "LO-HI")]
    port_range: Option<String>,
    /// XDP attach mode: native (driver) or generic (skb, slower, any driver) [default: native].
    #[arg(long, value_name = "MODE")]
    xdp_mode: Option<String>,
    /// Inbound filtering for every protocol: endpoint-independent,
    /// address-dependent or address-and-port-dependent [default:
    /// endpoint-independent; per protocol in the config file's [filtering]].
    #[arg(long, value_name = "MODE")]
    filtering: Option<String>,
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Cmd::Run(args) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(run(args))),
        Cmd::Status { json } => status(json),
        Cmd::Sessions { json } => sessions(json),
        Cmd::Stats { json } => stats(json),
        Cmd::Check { config } => check(&config),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("natd: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Settings from the file and flags, checked against this machine. Every
/// error is reported at once; nothing has been touched yet.
fn settings(file: Option<&std::path::Path>, flags: &Overrides) -> Result<(Settings, Environment)> {
    let (settings, warnings) = Settings::from_sources(file, flags)?;
    for w in warnings {
        eprintln!("natd: warning: {w}");
    }
    let env = Environment::check(&settings)?;
    Ok((settings, env))
}

fn check(config: &std::path::Path) -> Result<()> {
    let (s, env) = settings(Some(config), &Overrides::default())?;
    println!("{}: OK", config.display());
    println!("  lan {} (ifindex {}), wan {} (ifindex {})", s.lan, env.lan_ifindex, s.wan, env.wan_ifindex);
    let pool: Vec<String> = env.external_ips.iter().map(|ip| ip.to_string()).collect();
    println!("  external_ip {}, port_range {}-{}, port_hold {} s", pool.join(", "), s.port_min, s.port_max, s.port_hold.as_secs());
    let low = s.low_port_range.map_or("none".to_string(), |(lo, hi)| format!("{lo}-{hi}"));
    println!("  port_parity {}, port_class {} (low_port_range {low})", s.port_parity, s.port_class);
    let quota = if s.ports_per_host == 0 { "no limit".to_string() } else { s.ports_per_host.to_string() };
    println!("  ports_per_host {quota}");
    let t = s.timeouts;
    println!(
        "  timeouts: udp {} s, icmp {} s, tcp_established {} s, tcp_opening {} s, tcp_closing {} s",
        t.udp.as_secs(),
        t.icmp.as_secs(),
        t.tcp_established.as_secs(),
        t.tcp_opening.as_secs(),
        t.tcp_closing.as_secs()
    );
    let f = s.filtering;
    println!("  filtering: tcp {}, udp {}, icmp {}", f.tcp.name(), f.udp.name(), f.icmp.name());
    println!("  inside (translated sources): {}", inside_description(&env));
    println!("  wan_drop_sources: {} prefix(es)", s.wan_drop_sources.len());
    Ok(())
}

/// The inside prefixes, each marked with where it comes from.
fn inside_description(env: &Environment) -> String {
    let prefixes: Vec<String> = env
        .inside_prefixes()
        .map(|(p, connected)| format!("{}/{} ({})", p.network(), p.len(), if connected { "lan" } else { "routed" }))
        .collect();
    prefixes.join(", ")
}

async fn run(args: RunArgs) -> Result<()> {
    let flags = Overrides {
        lan: args.lan,
        wan: args.wan,
        external_ip: args.external_ip,
        port_range: args.port_range,
        xdp_mode: args.xdp_mode,
        filtering: args.filtering,
    };
    let (settings, env) = settings(args.config.as_deref(), &flags)?;
    // Before anything is attached: a second natd stops here.
    let _locks = InterfaceLocks::acquire(&[&settings.lan, &settings.wan])?;

    // The source of the errors the gateway sends into the LAN itself
    // (Fragmentation Needed, RFC 4787 REQ-13; refused flows, RFC 5508 REQ-8).
    let lan_ip = nat_userspace::config::first_ipv4(&settings.lan);
    let mut gateway_config = settings.gateway_config(&env);
    match lan_ip {
        Some(ip) => gateway_config = gateway_config.with_lan_addr(ip),
        None => eprintln!(
            "natd: warning: {} has no IPv4 address: LAN hosts get no Fragmentation Needed or refusal messages from the gateway",
            settings.lan
        ),
    }
    let mut datapath = Datapath::load_for(&gateway_config)?;
    datapath.set_config(gateway_config)?;
    datapath.set_wan_drop_sources(&settings.wan_drop_sources)?;
    datapath.set_clock(nat_userspace::daemon::coarse_now_ns())?;
    datapath.add_tx_port(env.lan_ifindex)?;
    datapath.add_tx_port(env.wan_ifindex)?;
    let ring = datapath.take_miss_ring()?;
    // From here on an error drops `datapath`, which detaches both programs.
    let mode = attach(&mut datapath, env.lan_ifindex, env.wan_ifindex, settings.xdp_mode)?;
    let control = control::bind_control()?;
    // SAFETY: the ring owns its fd for as long as the AsyncFd holds the ring.
    let mut ring = unsafe { AsyncFd::register(ring) }.map_err(|e| anyhow!("registering the miss ring with the event loop: {e}"))?;

    let info = RunInfo {
        lan: settings.lan.clone(),
        wan: settings.wan.clone(),
        xdp_mode: mode,
        external_ips: env.external_ips.clone(),
        port_min: settings.port_min,
        port_max: settings.port_max,
        port_policy: PortPolicy { parity: settings.port_parity, class: settings.port_class, low: settings.low_port_range },
        port_hold: settings.port_hold,
        timeouts: settings.timeouts,
        filtering: settings.filtering,
        ports_per_host: settings.ports_per_host,
        log_mappings: settings.log_mappings,
        lan_ip,
        inside: inside_description(&env),
    };
    let mut daemon = Daemon::new(datapath, info)?;
    // Only now: with forwarding on and no program attached the kernel would
    // forward inside addresses to the WAN. Dropped (restored) before the
    // daemon, which detaches the programs.
    let mut forwarding = Forwarding::enable(&[&settings.lan, &settings.wan])?;
    eprintln!(
        "natd: serving: lan {} wan {} external {} ports {}-{} mode {mode} (pid {})",
        settings.lan,
        settings.wan,
        env.external_ips.iter().map(|ip| ip.to_string()).collect::<Vec<_>>().join(","),
        settings.port_min,
        settings.port_max,
        std::process::id()
    );

    let (requests_tx, mut requests) = mpsc::channel::<(Request, oneshot::Sender<String>)>(16);
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    // Each tick publishes the clock to the datapath and ages mappings out.
    let mut aging = tokio::time::interval(Duration::from_nanos(nat_common::CLOCK_TICK_NS));
    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                while let Some(item) = guard.get_inner_mut().next() {
                    daemon.handle_event(&item);
                }
                guard.clear_ready();
                daemon.refill_free_queues();
            }
            _ = aging.tick() => daemon.age()?,
            accepted = control.accept() => {
                if let Ok((stream, _)) = accepted {
                    tokio::spawn(serve_client(stream, requests_tx.clone()));
                }
            }
            Some((request, reply)) = requests.recv() => {
                let answer = daemon.answer(request).unwrap_or_else(|e| serde_json::json!({ "error": format!("{e:#}") }).to_string());
                let _ = reply.send(answer);
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    eprintln!("natd: stopping; IPv4 forwarding restored on {} and {}, detaching", settings.lan, settings.wan);
    for path in forwarding.restore() {
        eprintln!("natd: warning: could not restore {path}: the kernel may forward LAN traffic untranslated");
    }
    Ok(())
}

/// Reads one request line, has the main loop answer it, writes the answer.
/// A client that stalls costs a task, never the packet loop.
async fn serve_client(stream: tokio::net::UnixStream, requests: mpsc::Sender<(Request, oneshot::Sender<String>)>) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read);
    let Ok(Ok(_)) = tokio::time::timeout(CLIENT_TIMEOUT, reader.read_line(&mut line)).await else { return };
    let answer = match Request::parse(&line) {
        Ok(request) => {
            let (reply_tx, reply) = oneshot::channel();
            if requests.send((request, reply_tx)).await.is_err() {
                return;
            }
            reply.await.unwrap_or_default()
        }
        Err(e) => serde_json::json!({ "error": e.to_string() }).to_string(),
    };
    let _ = tokio::time::timeout(CLIENT_TIMEOUT, write.write_all(format!("{answer}\n").as_bytes())).await;
}

/// Native first; generic only when asked, or (with a warning) when the driver
/// has no native XDP.
fn attach(dp: &mut Datapath, lan: u32, wan: u32, mode: XdpModeSetting) -> Result<&'static str> {
    // Both or neither: a LAN program left attached after the WAN attach failed
    // would block the generic retry and outlive the error.
    let try_mode = |dp: &mut Datapath, m: XdpMode| -> Result<()> {
        let lan_link = dp.attach(Side::Lan, lan, m)?;
        if let Err(e) = dp.attach(Side::Wan, wan, m) {
            dp.detach(Side::Lan, lan_link)?;
            return Err(e);
        }
        Ok(())
    };
    match mode {
        XdpModeSetting::Generic => try_mode(dp, XdpMode::Skb).map(|()| "generic"),
        XdpModeSetting::Native => match try_mode(dp, XdpMode::Driver) {
            Ok(()) => Ok("native"),
            Err(e) => {
                eprintln!("natd: WARNING: native XDP failed ({e:#}); falling back to generic mode, which is much slower");
                try_mode(dp, XdpMode::Skb).map(|()| "generic")
            }
        },
    }
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
            let text = control::query(d, request)?;
            serde_json::from_str(&text).with_context(|| format!("natd at @{d} answered {}", text.trim()))
        })
        .collect()
}

fn status(json: bool) -> Result<()> {
    let all: Vec<Status> = ask(Request::Status)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(());
    }
    for s in all {
        println!("natd serving (pid {}, up {} s)", s.pid, s.uptime_s);
        println!("  lan {}  wan {}  mode {}  external {}  ports {}", s.lan, s.wan, s.xdp_mode, s.external_ip, s.port_range);
        println!("  sessions {}  refused flows {}", s.sessions, s.refused_flows);
        let f = &s.filtering;
        println!("  filtering: tcp {}  udp {}  icmp {}", f.tcp, f.udp, f.icmp);
        println!("  inside: {}", s.inside);
        for p in s.ports {
            println!("  {:<4} ports: {} in use, {} held, {} free", p.proto, p.in_use, p.held, p.free);
        }
    }
    Ok(())
}

fn sessions(json: bool) -> Result<()> {
    let rows: Vec<Session> = ask::<Vec<Session>>(Request::Sessions)?.into_iter().flatten().collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!("{:<5} {:<21} {:<21} {:<12} {:>8} {:>8}", "PROTO", "INSIDE", "EXTERNAL", "STATE", "IDLE_S", "TIMEOUT");
    for r in &rows {
        println!("{:<5} {:<21} {:<21} {:<12} {:>8} {:>8}", r.proto, r.inside, r.external, r.state, r.idle_s, r.timeout_s);
    }
    println!("{} session(s)", rows.len());
    Ok(())
}

fn stats(json: bool) -> Result<()> {
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
