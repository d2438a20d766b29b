//! `natd run`: the start-up sequence (settings, locks, programs, daemon,
//! forwarding), the event loop, reloads, and the shutdown in reverse order.

use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use sd_notify::NotifyState;
use aya::{
    maps::{MapData, RingBuf},
    programs::XdpMode,
};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
    sync::{mpsc, oneshot},
};

use crate::{
    cli::{self, RunArgs},
    config::{
        Environment, InterfaceLoss, Settings, XdpModeSetting, first_ipv4, is_nic,
        reload::{fixed_changes, live_changes},
    },
    control::{self, CLIENT_TIMEOUT, InterfaceLocks, ReloadOutcome, Request},
    datapath::{Attached, Datapath, PinRoot, Side, StateDir},
    forwarding::Forwarding,
    handover::Handover,
    interfaces::{Change, Served, Watch},
    logging::{self, LogLevel},
    metrics::Metrics,
    nat::{
        daemon::Daemon,
        forwards::{FLOW_AGING, SIGNALS_POLL},
        probe::CheckResult,
        run::Run,
        sessions::{coarse_now_ns, resume_clock},
        views,
    },
    proxy::Proxies,
};

/// How much of the miss ring natd handles before it looks at its other
/// work again (control requests, the clock it publishes, aging): this many
/// records, or this long, whichever comes first. Draining the ring in one
/// go held `natd stats` for over 10 s while natd set up a burst of 100,000
/// flows, for as long as the datapath kept handing off; the time bound
/// keeps the turn short when each record costs more (a nearly full port
/// range, a debug build).
const MISS_BATCH: usize = 1024;
const MISS_BATCH_TIME: Duration = Duration::from_millis(20);

/// How often natd looks in the ring for the claims the datapath made. A
/// claim wakes no one (nat-ebpf `new_flow::claim`): the flow is set up
/// already, and natd only takes note of it, on this poll or with the next
/// record that wakes it. Waking natd for each claim cost every first
/// packet ~20 us at the median on a 2-vCPU host (lab-bench's first-packet
/// added latency: p50 19.9-21.7 us against 1.2-1.4 without).
const CLAIMS_POLL: Duration = Duration::from_millis(20);
/// The longest wait between looks while no claims come (`ClaimsPoll`).
const CLAIMS_POLL_IDLE: Duration = Duration::from_millis(320);

/// The claims poll's period: `CLAIMS_POLL` while the ring carries records,
/// doubled after each look that finds none, up to `CLAIMS_POLL_IDLE`, so
/// that an idle gateway's natd wakes a few times a second, not fifty
/// (months of it, on a box that may run on batteries or share its CPUs).
/// Nothing waits on it for long: a claim is a flow set up already, and
/// the hand-off that follows once the free queues run low wakes natd at
/// once (forced while it sleeps, `DAEMON_ASLEEP`), which brings the period
/// back to `CLAIMS_POLL`.
#[derive(Debug)]
struct ClaimsPoll {
    period: Duration,
}

impl ClaimsPoll {
    fn new() -> Self {
        Self { period: CLAIMS_POLL }
    }

    /// The wait before the next look, after one that found `records`.
    fn after(&mut self, records: usize) -> Duration {
        self.period = if records > 0 { CLAIMS_POLL } else { (self.period * 2).min(CLAIMS_POLL_IDLE) };
        self.period
    }
}

pub async fn run(args: RunArgs) -> Result<()> {
    if let Some(step) = crate::CUT_DOWN_BUILD {
        anyhow::bail!(
            "this natd was built with NAT_EBPF_CUT_AFTER={step}: its XDP programs are cut down to time the hit path and translate nothing whole. \
             Build it again without that variable (`cargo xtask build`)"
        );
    }
    let overrides = args.overrides();
    let (settings, env, warnings) = cli::settings(args.config.as_deref(), &overrides)?;
    let log = logging::init(&settings.log_level);
    for w in warnings {
        tracing::warn!("{w}");
    }
    // Before anything is attached: a second natd stops here.
    let _locks = InterfaceLocks::acquire(&[&settings.lan, &settings.wan])?;

    // The source of the errors the gateway sends into the LAN itself
    // (Fragmentation Needed, RFC 4787 REQ-13; refused flows, RFC 5508 REQ-8).
    let lan_ip = first_ipv4(&settings.lan);
    // Whether frames come off a wire is known once the mode is: until then
    // every frame is tested for a partial checksum.
    let gateway_config = datapath_config(&settings, &env, lan_ip, false);
    if lan_ip.is_none() {
        tracing::warn!("{} has no IPv4 address: LAN hosts get no Fragmentation Needed or refusal messages from the gateway", settings.lan);
    }
    let (state, adopt) = datapath_state(&settings, &env)?;
    let mut datapath = Datapath::load_for(&gateway_config, settings.max_sessions, state, adopt)?;
    if datapath.session_capacity() != settings.max_sessions {
        tracing::warn!(
            "max_sessions is {}, but the adopted datapath's session tables hold {}: they keep that size (every session carries over); \
             the new size takes effect after `natd down` and a start",
            settings.max_sessions,
            datapath.session_capacity()
        );
    }
    let held = if adopt {
        let paused = resume_clock(datapath.clock()?);
        tracing::info!(
            "adopting the datapath serving {} and {} (pinned at {}); its clock stood still for {:.1} s and resumes",
            settings.lan,
            settings.wan,
            datapath.state().map_or("?", |s| s.shown.as_str()),
            paused as f64 / 1e9
        );
        datapath.state().map(Handover::take)
    } else {
        // A handover without a serving datapath is stale.
        if let Some(state) = datapath.state() {
            drop(Handover::take(state));
        }
        None
    };
    // Bound before anything is attached: a port another service holds stops
    // the start here, with nothing to undo (a loaded program is unloaded
    // with `datapath`).
    let mut proxies = Proxies::start(&settings.proxies, &env.external_ips, &datapath)?;
    // Its own thread; bound before anything is attached, like the proxies.
    let mut metrics = settings.metrics.map(Metrics::start).transpose()?;
    datapath.set_config(gateway_config)?;
    datapath.set_wan_drop_sources(&settings.wan_drop_sources)?;
    datapath.set_clock(coarse_now_ns())?;
    datapath.add_tx_port(env.lan_ifindex)?;
    datapath.add_tx_port(env.wan_ifindex)?;
    let ring = datapath.take_miss_ring()?;
    // From here on an error drops `datapath`, which detaches both programs.
    let mode = attach(&mut datapath, env.lan_ifindex, env.wan_ifindex, settings.xdp_mode)?;
    let config = datapath_config(&settings, &env, lan_ip, mode == "native");
    if config.wire_ingress != 0 {
        datapath.set_config(config)?;
        for (name, from_wan) in [(&settings.lan, false), (&settings.wan, true)] {
            if config.off_the_wire(from_wan) {
                tracing::info!("{name} is a NIC's own interface in native mode: its frames come off a wire and are not tested for a partial checksum");
            }
        }
    }
    let control = control::bind_control()?;
    let mut watch = Watch::new(
        Served { role: "lan", name: settings.lan.clone(), ifindex: env.lan_ifindex },
        Served { role: "wan", name: settings.wan.clone(), ifindex: env.wan_ifindex },
        settings.external_ips.is_empty(),
    )?;
    // SAFETY: the ring owns its fd for as long as the AsyncFd holds the ring.
    let mut ring = unsafe { AsyncFd::register(ring) }.map_err(|e| anyhow!("registering the miss ring with the event loop: {e}"))?;

    let (lan, wan) = (settings.lan.clone(), settings.wan.clone());
    let serving = format!(
        "serving: lan {lan} wan {wan} external {} ports {}-{} mode {mode} (pid {})",
        env.external_ips.iter().map(|ip| ip.to_string()).collect::<Vec<_>>().join(","),
        settings.port_min,
        settings.port_max,
        std::process::id()
    );
    let (checks_tx, mut checks) = mpsc::channel::<CheckResult>(256);
    let run = Run { settings, env, xdp_mode: mode, lan_ip, started: Instant::now(), config_file: args.config.clone(), overrides };
    let handed_over_forwarding = held.as_ref().map(|h| h.forwarding.clone()).unwrap_or_default();
    let mut daemon = Daemon::new(datapath, run, checks_tx, held.map(|h| h.held_ports))?;
    // Only now: with forwarding on and no program attached the kernel would
    // forward inside addresses to the WAN. Restored before the daemon, which
    // detaches the programs, is dropped.
    let mut forwarding = Forwarding::enable(&[&lan, &wan])?;
    forwarding.adopt(handed_over_forwarding);
    // Serving: from here the pins stay when natd stops (SIGTERM), however it stops.
    daemon.datapath.keep_pins();
    tracing::info!("{serving}");
    tell_systemd(&[NotifyState::Ready, NotifyState::Status(&serving)]);

    let (requests_tx, mut requests) = mpsc::channel::<(Request, oneshot::Sender<String>)>(16);
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    // Each tick publishes the clock to the datapath and ages mappings out.
    let mut aging = tokio::time::interval(Duration::from_nanos(nat_common::CLOCK_TICK_NS));
    let mut claims_poll = ClaimsPoll::new();
    let claims_due = tokio::time::sleep(CLAIMS_POLL);
    tokio::pin!(claims_due);
    let mut passive_signals = tokio::time::interval(SIGNALS_POLL);
    let mut flow_aging = tokio::time::interval(FLOW_AGING);
    // Set when natd must stop with an error (a served interface is gone).
    let mut failure = None;
    // SIGINT: the datapath goes with natd; SIGTERM: it serves on.
    let mut tear_down = false;
    // Served interfaces gone that natd waits for (on_interface_loss = "wait").
    let mut waiting: Vec<Served> = Vec::new();
    // natd waits on the ring from here: a record it must act on wakes it
    // even behind claims an earlier natd left unread.
    daemon.datapath.set_daemon_asleep(true);
    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                daemon.datapath.set_daemon_asleep(false);
                // A batch at a time: the rest waits for the next turn of
                // the loop (the ring stays ready), so that control requests,
                // the clock and aging are served during a burst.
                let taken = take_in_batch(&mut daemon, guard.get_inner_mut());
                let mut drained = taken.drained;
                claims_due.as_mut().reset(tokio::time::Instant::now() + claims_poll.after(taken.records));
                if drained {
                    // Asleep from here on: a record natd must act on wakes
                    // it even behind unread claims. One more look at the
                    // ring closes the window between the last read and the
                    // flag.
                    daemon.datapath.set_daemon_asleep(true);
                    if let Some(item) = guard.get_inner_mut().next() {
                        daemon.datapath.set_daemon_asleep(false);
                        daemon.handle_event(&item);
                        drained = false;
                    }
                }
                daemon.refill_free_queues();
                if drained {
                    guard.clear_ready();
                } else {
                    // The ring is ready again at once, and the loop would
                    // not return to the runtime: the tasks that read
                    // control requests, and the timers, run now.
                    drop(guard);
                    tokio::task::yield_now().await;
                }
            }
            _ = &mut claims_due => {
                let taken = take_in_batch(&mut daemon, ring.get_mut());
                // More than a batch of claims: the next one at once, after
                // what else is waiting.
                let wait = if taken.drained { claims_poll.after(taken.records) } else { Duration::ZERO };
                claims_due.as_mut().reset(tokio::time::Instant::now() + wait);
                daemon.refill_free_queues();
            }
            _ = aging.tick() => {
                let started = Instant::now();
                daemon.age()?;
                let aged = started.elapsed();
                daemon.flush_mapping_log();
                if let Some(metrics) = metrics.as_mut() {
                    metrics.aged(aged);
                    metrics.publish(&daemon);
                }
            }
            _ = passive_signals.tick() => daemon.poll_forwards(),
            _ = flow_aging.tick() => {
                daemon.age_forwarded_flows()?;
                if let Some(metrics) = metrics.as_mut() {
                    metrics.count_forwards(&daemon);
                }
            }
            Some(result) = checks.recv() => daemon.check_result(result),
            accepted = control.accept() => {
                if let Ok((stream, _)) = accepted {
                    tokio::spawn(serve_client(stream, requests_tx.clone()));
                }
            }
            Some((request, reply)) = requests.recv() => {
                // What the datapath told natd is in the answer: a flow whose
                // claim natd has not polled for yet is a session too.
                take_in_batch(&mut daemon, ring.get_mut());
                let answer = match request {
                    Request::Reload => serde_json::to_string(&reload(&mut daemon, &mut proxies, log.as_ref())).map_err(anyhow::Error::from),
                    Request::Proxies => serde_json::to_string(&proxies.views()).map_err(anyhow::Error::from),
                    view => views::answer(&daemon, view),
                };
                let _ = reply.send(answer.unwrap_or_else(|e| serde_json::json!({ "error": format!("{e:#}") }).to_string()));
            }
            _ = sighup.recv() => {
                reload(&mut daemon, &mut proxies, log.as_ref());
            }
            changes = watch.next() => match changes {
                Ok(changes) => {
                    for change in changes {
                        let text = change.describe(&daemon.run.env.external_ips);
                        match &change {
                            Change::Deleted(gone) if daemon.run.settings.on_interface_loss == InterfaceLoss::Wait => {
                                tracing::error!(
                                    "the {} interface {} (index {}) was deleted or left the namespace: natd keeps its sessions and re-attaches \
                                     when an interface named {} is back (on_interface_loss = \"wait\"); nothing crosses the gateway meanwhile",
                                    gone.role, gone.name, gone.ifindex, gone.name
                                );
                                waiting.push(gone.clone());
                            }
                            Change::Deleted(_) => {
                                tracing::error!("{text}");
                                failure = Some(anyhow!(text));
                            }
                            Change::Returned(back) if waiting.iter().any(|w| w.role == back.role) => match reattach(&mut daemon, &mut forwarding, back) {
                                Ok(mode) => {
                                    tracing::warn!("{text}: natd re-attached its {} program ({mode} mode); sessions are as they were", back.role);
                                    watch.follow(back);
                                    waiting.retain(|w| w.role != back.role);
                                }
                                Err(e) => tracing::error!("{text}, but re-attaching failed, natd waits on: {e:#}"),
                            },
                            Change::Returned(_) => {}
                            Change::WanAddress { .. } => tracing::error!("{text}"),
                        }
                    }
                    if failure.is_some() {
                        break;
                    }
                }
                // ENOBUFS: notifications were lost; the next ones still come.
                Err(e) => tracing::warn!("watching the interfaces: {e:#}"),
            },
            _ = sigint.recv() => {
                tear_down = true;
                break;
            }
            _ = sigterm.recv() => break,
        }
    }
    tell_systemd(&[NotifyState::Stopping]);
    // No natd sleeps on the ring now: a datapath that serves on keeps the
    // ring's own wake-up rule, not one forced wake-up (an interrupt) per
    // hand-off for no reader; the next natd says it sleeps once it does.
    daemon.datapath.set_daemon_asleep(false);
    daemon.flush_mapping_log();
    match daemon.datapath.state() {
        // An interface gone (on_interface_loss = "exit"): the gateway cannot
        // serve, and goes whole.
        Some(state) if !tear_down && failure.is_none() => {
            // bpf_fib_lookup needs forwarding on: it stays on while the
            // datapath serves, and `natd down` puts it back.
            let handover = Handover { held_ports: daemon.ports.held_ports(), forwarding: forwarding.hand_over() };
            if let Err(e) = handover.write(state) {
                tracing::warn!("{e:#}: the next natd may reuse {} held ports before their hold is over", handover.held_ports.len());
            }
            tracing::info!(
                "stopping. The datapath serves on, pinned at {}: established flows keep flowing and new ones take \
                 the queued ports until natd runs again (`natd down` removes it and restores IPv4 forwarding)",
                state.shown
            );
        }
        _ => {
            for path in forwarding.restore() {
                tracing::warn!("could not restore {path}: the kernel may forward LAN traffic untranslated");
            }
            if let Err(e) = daemon.datapath.unpin_all() {
                tracing::warn!("removing the datapath's pins: {e:#}");
            }
            tracing::info!("stopping; IPv4 forwarding restored on {lan} and {wan}, detaching");
        }
    }
    match failure {
        Some(failure) => Err(failure),
        None => Ok(()),
    }
}

/// Attaches a side's program to its interface come back, and points the
/// datapath at the new index: redirects, the configuration, forwarding on
/// it. The environment natd started with (addresses, prefixes) stands. The
/// XDP mode is the one natd runs in (the other side's), so both sides
/// keep one mode; a failure leaves natd waiting.
fn reattach(daemon: &mut Daemon, forwarding: &mut Forwarding, back: &Served) -> Result<&'static str> {
    let side = if back.role == "lan" { Side::Lan } else { Side::Wan };
    let (mode, xdp_mode) = match daemon.run.xdp_mode {
        "generic" => ("generic", XdpMode::Skb),
        _ => ("native", XdpMode::Driver),
    };
    // The device back may be another kind than the one that went: whether
    // its frames come off a wire is asked again, and written before its
    // program runs.
    let nic = is_nic(back.ifindex, &back.name);
    match side {
        Side::Lan => daemon.run.env.lan_is_nic = nic,
        Side::Wan => daemon.run.env.wan_is_nic = nic,
    }
    daemon.datapath.set_config(datapath_config(&daemon.run.settings, &daemon.run.env, daemon.run.lan_ip, mode == "native"))?;
    daemon.datapath.attach(side, back.ifindex, xdp_mode)?;
    daemon.datapath.add_tx_port(back.ifindex)?;
    match side {
        Side::Lan => daemon.run.env.lan_ifindex = back.ifindex,
        Side::Wan => daemon.run.env.wan_ifindex = back.ifindex,
    }
    daemon.datapath.set_config(datapath_config(&daemon.run.settings, &daemon.run.env, daemon.run.lan_ip, mode == "native"))?;
    // After the program, as at start: forwarding on with no program
    // attached would forward inside addresses untranslated.
    forwarding.enable_also(&back.name)?;
    Ok(mode)
}

/// Tells the service manager (systemd, `Type=notify`) natd's state, when
/// it started natd (NOTIFY_SOCKET set); otherwise nothing.
fn tell_systemd(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!("telling systemd {states:?}: {e}");
    }
}

/// What the programs read (`CONFIG`), from the settings and the machine.
/// `native`: the programs run in the NICs' drivers, so a NIC's frames come
/// off a wire (`GatewayConfig::wire_ingress`); in generic mode any skb may
/// carry a partial checksum.
fn datapath_config(settings: &Settings, env: &Environment, lan_ip: Option<std::net::Ipv4Addr>, native: bool) -> nat_common::GatewayConfig {
    let (lan_wire, wan_wire) = env.off_the_wire(native, settings.partial_checksums);
    let config = settings.gateway_config(env).with_wire_ingress(lan_wire, wan_wire);
    match lan_ip {
        Some(ip) => config.with_lan_addr(ip),
        None => config,
    }
}

/// Reads the config file natd was started with (and its flags) again and
/// applies what may change live: the forwards, the proxies' names, servers
/// and timeouts, the log level, the WAN drop list. A new configuration that
/// is invalid, or that changes a setting
/// only a restart can change, is refused whole, and what runs stays as it
/// was. The outcome is logged as well as returned (SIGHUP has no one to
/// answer).
fn reload(daemon: &mut Daemon, proxies: &mut Proxies, log: Option<&LogLevel>) -> ReloadOutcome {
    if let Ok(now) = NotifyState::monotonic_usec_now() {
        tell_systemd(&[NotifyState::Reloading, now]);
    }
    let outcome = try_reload(daemon, proxies, log);
    tell_systemd(&[NotifyState::Ready, NotifyState::Status(&outcome.message)]);
    if outcome.applied {
        tracing::info!("{}", outcome.message);
        for change in &outcome.changes {
            tracing::info!("  {change}");
        }
    } else {
        tracing::warn!("{}", outcome.message);
    }
    outcome
}

fn try_reload(daemon: &mut Daemon, proxies: &mut Proxies, log: Option<&LogLevel>) -> ReloadOutcome {
    let refused = |message: String| ReloadOutcome { applied: false, message, changes: Vec::new() };
    let source = daemon.run.config_file.as_ref().map_or_else(|| "the command line".to_string(), |path| path.display().to_string());
    let (settings, env, warnings) = match cli::settings(daemon.run.config_file.as_deref(), &daemon.run.overrides) {
        Ok(read) => read,
        Err(e) => return refused(format!("reload refused, {source} is not valid; nothing was changed:\n{e:#}")),
    };
    let fixed = fixed_changes(&daemon.run.settings, &daemon.run.env, &settings, &env);
    if !fixed.is_empty() {
        return refused(format!(
            "reload refused, these settings cannot change while natd runs (restart natd to change them); nothing was changed:\n  {}",
            fixed.join("\n  ")
        ));
    }
    let config = datapath_config(&settings, &env, daemon.run.lan_ip, daemon.run.xdp_mode == "native");
    if config.filters_by_remote() && !daemon.datapath.can_filter_by_remote() {
        return refused(format!(
            "reload refused, filtering {:?} -> {:?} filters by remote, which needs the PERMITS table natd makes at start only when \
             some protocol filters by remote then; restart natd to change filtering; nothing was changed",
            daemon.run.settings.filtering, settings.filtering
        ));
    }
    for w in warnings {
        tracing::warn!("{w}");
    }
    // The new proxies' sockets first: a port another service holds refuses
    // the reload before anything changed.
    let prepared = match proxies.prepare(&settings.proxies, &daemon.datapath) {
        Ok(prepared) => prepared,
        Err(e) => return refused(format!("reload refused, a new proxy cannot listen; nothing was changed:\n{e:#}")),
    };
    let mut changes = match daemon.apply_forwards(&settings.datapath_forwards()) {
        Ok(changes) => changes,
        Err(e) => {
            return ReloadOutcome {
                applied: false,
                message: format!("reload failed while applying the forwards, some may be applied: {e:#}"),
                changes: Vec::new(),
            };
        }
    };
    changes.extend(proxies.commit(prepared));
    if settings.log_level != daemon.run.settings.log_level {
        match log.map(|log| log.set(&settings.log_level)) {
            Some(Err(e)) => tracing::warn!("{e:#}"),
            _ => changes.push(format!("log_level {} -> {}", daemon.run.settings.log_level, settings.log_level)),
        }
    }
    let live = live_changes(&daemon.run.settings, &settings);
    if !live.is_empty() {
        // Filtering and the permits' lifetimes (from the timeouts) are the
        // programs' to read; a packet that reads CONFIG while it is written
        // sees each field old or new.
        if let Err(e) = daemon.datapath.set_config(config) {
            return ReloadOutcome { applied: false, message: format!("reload failed while writing the datapath's settings, some are applied: {e:#}"), changes };
        }
        if let Err(e) = daemon.apply_live_settings(&settings) {
            return ReloadOutcome { applied: false, message: format!("reload failed while applying the mapping log settings, the others are applied: {e:#}"), changes };
        }
        changes.extend(live);
    }
    if settings.wan_drop_sources != daemon.run.settings.wan_drop_sources {
        match daemon.datapath.set_wan_drop_sources(&settings.wan_drop_sources) {
            Ok(()) => changes.push(format!("wan_drop_sources: {} prefix(es)", settings.wan_drop_sources.len())),
            Err(e) => tracing::warn!("applying wan_drop_sources: {e:#}"),
        }
    }
    let count = changes.len();
    daemon.run.settings = settings;
    daemon.run.env = env;
    ReloadOutcome { applied: true, message: format!("reloaded {source}: {count} change(s)"), changes }
}

/// Hands natd at most a batch of the ring's records (`MISS_BATCH`, or
/// `MISS_BATCH_TIME`).
fn take_in_batch(daemon: &mut Daemon, ring: &mut RingBuf<MapData>) -> Taken {
    let started = Instant::now();
    for records in 0..MISS_BATCH {
        let Some(item) = ring.next() else { return Taken { records, drained: true } };
        daemon.handle_event(&item);
        if started.elapsed() >= MISS_BATCH_TIME {
            return Taken { records: records + 1, drained: false };
        }
    }
    Taken { records: MISS_BATCH, drained: false }
}

/// What one batch took from the ring.
struct Taken {
    records: usize,
    /// The ring was empty at the end (else the batch's bound stopped it).
    drained: bool,
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
/// has no native XDP. An adopted datapath's links keep their mode: their
/// programs are replaced in place.
fn attach(dp: &mut Datapath, lan: u32, wan: u32, mode: XdpModeSetting) -> Result<&'static str> {
    // Both or neither: a LAN program left attached after the WAN attach failed
    // would block the generic retry and outlive the error.
    let try_mode = |dp: &mut Datapath, m: XdpMode| -> Result<&'static str> {
        let lan_link = dp.attach(Side::Lan, lan, m)?;
        match dp.attach(Side::Wan, wan, m) {
            Ok(wan_link) => {
                if let (Attached::Replaced(_), Attached::Replaced(_)) = (lan_link, wan_link) {
                    tracing::info!("replaced the programs of the pinned links on both interfaces in place (bpf_link_update)");
                }
                Ok(wan_link.mode())
            }
            Err(e) => {
                // A replaced link served before natd came, and serves on.
                if let Attached::New(_) = lan_link {
                    dp.detach(Side::Lan)?;
                }
                Err(e)
            }
        }
    };
    match mode {
        XdpModeSetting::Generic => try_mode(dp, XdpMode::Skb),
        XdpModeSetting::Native => match try_mode(dp, XdpMode::Driver) {
            Ok(mode) => Ok(mode),
            Err(e) => {
                tracing::warn!("native XDP failed ({e:#}); falling back to generic mode, which is much slower");
                try_mode(dp, XdpMode::Skb)
            }
        },
    }
}

/// Where the datapath is pinned so that it outlives natd, and whether a
/// datapath already serves these interfaces there (then it is adopted).
/// Pins of gateways whose interfaces are gone are removed on the way.
fn datapath_state(settings: &Settings, env: &Environment) -> Result<(Option<StateDir>, bool)> {
    let Some(root) = PinRoot::find(settings.pin_root.as_deref(), true)? else {
        tracing::warn!(
            "no bpffs to pin the datapath in (none at /sys/fs/bpf or {}, and none could be mounted): it goes with natd, \
             and a restart drops every session; set pin_root to a bpffs",
            crate::datapath::OWN_BPFFS
        );
        return Ok((None, false));
    };
    for gone in root.remove_stale() {
        tracing::info!("removed the pins of a gateway whose interfaces are gone: {gone}");
    }
    let state = StateDir::open(root, &settings.lan, &settings.wan)?;
    let adopt = state.serves(env.lan_ifindex, env.wan_ifindex);
    if !adopt && state.has_maps() {
        tracing::info!("the pins at {} serve no interface (natd stopped before attaching, or the interfaces were re-made): starting clean", state.shown);
    }
    if !adopt {
        state.clear()?;
    }
    Ok((Some(state), adopt))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_claims_poll_backs_off_while_nothing_comes_and_is_quick_again_at_the_first_record() {
        let mut poll = ClaimsPoll::new();
        let idle: Vec<u128> = (0..6).map(|_| poll.after(0).as_millis()).collect();
        assert_eq!(idle, [40, 80, 160, 320, 320, 320]);
        assert_eq!(poll.after(1), CLAIMS_POLL);
        assert_eq!(poll.after(0).as_millis(), 40);
    }
}
