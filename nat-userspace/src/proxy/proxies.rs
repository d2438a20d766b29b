//! The proxies of a running natd: their sockets, bound before anything is
//! attached at start and before anything changes on a reload (a port
//! another service holds fails the start, or refuses the reload, with its
//! name), served on a runtime of their own so that relaying never delays
//! the packet loop; each proxy's accept loop and QUIC router; a reload's
//! proxies added, removed, or changed in place.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    sync::{
        Arc,
        atomic::Ordering,
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context as _, Result};
use tokio::{
    net::{TcpListener, TcpSocket, UdpSocket},
    runtime::{Handle, Runtime},
    sync::oneshot,
    task::AbortHandle,
    time,
};

use crate::{
    config::{Proxy, ProxyKind},
    datapath::Datapath,
    nat::first_packet::KernelSender,
    proxy::{
        http::{self, Served},
        quic_router,
        relay::{self, End},
        route::{Refusal, Routes},
        service::{Current, ProxyView, Service},
    },
};

/// The listen backlog: a burst of new clients waits in the kernel rather
/// than being refused (std's 128 is short for a public port).
const BACKLOG: u32 = 4096;
/// After an accept error (out of file descriptors, most likely), so the
/// loop does not spin while it lasts.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);
/// Descriptors natd needs besides its proxies' connections.
const OWN_DESCRIPTORS: u64 = 1024;

/// The proxies natd serves; stopped (listeners and connections closed) on
/// drop.
pub struct Proxies {
    running: Vec<Running>,
    /// The proxies' runtime: sockets are registered with it, tasks and
    /// health checks spawned on it.
    runtime: Handle,
    pool: Vec<Ipv4Addr>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// One proxy at work and the tasks that serve its sockets.
struct Running {
    service: Arc<Service>,
    /// Its accept loop (which owns the listener) and, with quic, its UDP
    /// router (which owns the socket): aborted, they close the sockets.
    tasks: Vec<AbortHandle>,
}

impl Running {
    /// Closes its sockets and stops its checks. Open connections finish as
    /// they began (their tasks hold the service).
    fn stop(self) {
        for task in self.tasks {
            task.abort();
        }
        for check in self.service.checks.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).drain(..) {
            check.abort();
        }
    }
}

/// A proxy's identity across reloads: its sockets (address, port, kind,
/// and whether it has a UDP one). Everything else changes in place.
type Identity = (Option<Ipv4Addr>, u16, ProxyKind, bool);

fn identity(proxy: &Proxy, pool: &[Ipv4Addr]) -> Identity {
    (proxy.external_addr(pool), proxy.port, proxy.kind, proxy.quic)
}

/// A reload's proxies with the sockets of the new ones bound: nothing is
/// served from them until `Proxies::commit`, and dropping it closes them.
pub struct Prepared {
    wanted: Vec<Proxy>,
    /// The new proxies' sockets, by index into `wanted`.
    bound: Vec<(usize, Bound)>,
}

impl Proxies {
    /// Starts the proxies' thread and runtime, then binds and serves every
    /// proxy (`Proxies::prepare`). An error names the proxy and the
    /// address; nothing is left listening.
    pub fn start(proxies: &[Proxy], pool: &[Ipv4Addr], datapath: &Datapath) -> Result<Self> {
        // The runtime is made, and dropped, on the proxies' thread: a tokio
        // runtime may not be dropped where natd's own runtime runs.
        let (ready, made) = std::sync::mpsc::channel::<Result<Handle>>();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("natd-proxy".into())
            .spawn(move || match runtime() {
                Ok(runtime) => {
                    let _ = ready.send(Ok(runtime.handle().clone()));
                    // Until natd stops; dropping the runtime then cancels
                    // every task, which closes every socket.
                    runtime.block_on(async move {
                        let _ = stopped.await;
                    });
                }
                Err(e) => {
                    let _ = ready.send(Err(e));
                }
            })
            .context("starting the proxies' thread")?;
        let runtime = match made.recv() {
            Ok(Ok(runtime)) => runtime,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => {
                let _ = thread.join();
                anyhow::bail!("the proxies' thread ended before its runtime ran");
            }
        };
        let mut proxies_ = Self { running: Vec::new(), runtime, pool: pool.to_vec(), stop: Some(stop), thread: Some(thread) };
        let prepared = proxies_.prepare(proxies, datapath)?;
        proxies_.commit(prepared);
        Ok(proxies_)
    }

    /// Binds the sockets of the proxies of `wanted` that are not served
    /// yet (a new address, port, kind or quic), on their external address
    /// (the pool's first when they name none). A QUIC proxy files the flows
    /// it routes in `datapath`'s maps. Nothing changes for the proxies
    /// served; an error names the proxy and the address.
    pub fn prepare(&self, wanted: &[Proxy], datapath: &Datapath) -> Result<Prepared> {
        let serving: Vec<Identity> = self.running.iter().map(|r| identity(&r.service.current().proxy, &self.pool)).collect();
        let mut bound = Vec::new();
        // Tokio sockets are registered with the runtime that serves them.
        let _entered = self.runtime.enter();
        for (index, proxy) in wanted.iter().enumerate() {
            if !serving.contains(&identity(proxy, &self.pool)) {
                bound.push((index, bind_proxy(proxy, &self.pool, datapath)?));
            }
        }
        Ok(Prepared { wanted: wanted.to_vec(), bound })
    }

    /// Serves `prepared`: stops the proxies no longer wanted (their
    /// sockets close; open connections finish), starts the new ones, and
    /// gives the others their new names, servers, default, PROXY protocol,
    /// timeouts and max_connections, which the next connection takes. A
    /// server that stays keeps its health and counters. Returns the
    /// changes, in words.
    pub fn commit(&mut self, prepared: Prepared) -> Vec<String> {
        let Prepared { wanted, mut bound } = prepared;
        let mut changes = Vec::new();
        let mut old: Vec<Running> = std::mem::take(&mut self.running);
        for (index, proxy) in wanted.iter().enumerate() {
            let id = identity(proxy, &self.pool);
            if let Some(at) = old.iter().position(|r| identity(&r.service.current().proxy, &self.pool) == id) {
                let running = old.remove(at);
                if let Some(change) = self.update(&running.service, proxy) {
                    changes.push(change);
                }
                self.running.push(running);
            } else if let Some(at) = bound.iter().position(|(i, _)| *i == index) {
                let (_, new) = bound.remove(at);
                changes.push(format!("proxy {} added, listening on {}{}", proxy.name, new.service.listen, if proxy.quic { " (tcp, and udp for quic)" } else { "" }));
                self.running.push(self.serve(new));
            }
        }
        for running in old {
            changes.push(format!("proxy {} on {} removed", running.service.name, running.service.listen));
            running.stop();
        }
        raise_descriptor_limit(wanted.iter().map(|p| 2 * u64::from(p.max_connections)).sum::<u64>() + OWN_DESCRIPTORS);
        changes
    }

    /// A served proxy's new settings, if they differ.
    fn update(&self, service: &Arc<Service>, proxy: &Proxy) -> Option<String> {
        let old = service.current();
        if old.proxy == *proxy {
            return None;
        }
        let current = Arc::new(Current { proxy: proxy.clone(), routes: Routes::carried_over(proxy, &old.routes) });
        *service.current.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::clone(&current);
        service.start_checks(&current, &self.runtime);
        let names: Vec<String> = current.routes.sets.iter().map(|set| set.label.clone()).collect();
        Some(format!("proxy {}: now {}", service.name, names.join(", ")))
    }

    /// Starts serving a bound proxy: its accept loop, its UDP router, its
    /// health checks.
    fn serve(&self, bound: Bound) -> Running {
        let Bound { service, listener, quic } = bound;
        service.start_checks(&service.current(), &self.runtime);
        let mut tasks = vec![self.runtime.spawn(accept(Arc::clone(&service), listener)).abort_handle()];
        if let Some((socket, handoff)) = quic {
            tasks.push(self.runtime.spawn(quic_router::serve(Arc::clone(&service), socket, handoff)).abort_handle());
        }
        let proxy = &service.current().proxy;
        tracing::info!(
            "proxy {} listening on {}{}: {} name(s){}",
            service.name,
            service.listen,
            if proxy.quic { " (tcp, and udp for quic)" } else { "" },
            proxy.routes.len(),
            if proxy.default.is_some() { " and a default" } else { "" }
        );
        Running { service, tasks }
    }

    /// What `natd proxies` shows.
    pub fn views(&self) -> Vec<ProxyView> {
        self.running.iter().map(|r| r.service.view()).collect()
    }
}

impl Drop for Proxies {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One proxy with its listener, and with `quic` its UDP socket and what
/// hands its flows to the datapath.
struct Bound {
    service: Arc<Service>,
    listener: TcpListener,
    quic: Option<(UdpSocket, quic_router::KernelHandoff)>,
}

/// The proxies' runtime: one worker per CPU, so a relay's two directions
/// and the other clients proceed in parallel and one core does not bound
/// the proxies.
fn runtime() -> Result<Runtime> {
    let workers = std::thread::available_parallelism().map_or(1, usize::from);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name("natd-proxy-worker")
        .enable_all()
        .build()
        .context("the proxies' runtime")
}

/// A proxy's sockets, in the runtime entered by the caller.
fn bind_proxy(proxy: &Proxy, pool: &[Ipv4Addr], datapath: &Datapath) -> Result<Bound> {
    let addr = proxy.external_addr(pool).with_context(|| format!("proxy {:?}: no external address to listen on", proxy.name))?;
    let listen = SocketAddrV4::new(addr, proxy.port);
    let listener = bind(listen).with_context(|| {
        format!("proxy {:?}: cannot listen on {listen} (another service on the port, or the address is not this machine's)", proxy.name)
    })?;
    let quic = if proxy.quic {
        let pins = datapath.flow_pins().with_context(|| format!("proxy {:?}: the datapath's forward maps", proxy.name))?;
        let sender = KernelSender::new().with_context(|| format!("proxy {:?}: the socket QUIC Initials are sent on with", proxy.name))?;
        let socket = bind_udp(listen).with_context(|| {
            format!("proxy {:?}: cannot bind UDP {listen} for quic (another service on the port, or the address is not this machine's)", proxy.name)
        })?;
        Some((socket, quic_router::KernelHandoff { pins, sender, external: listen }))
    } else {
        None
    };
    let service = Service::new(proxy, listen, quic.is_some());
    Ok(Bound { service: Arc::new(service), listener, quic })
}

fn bind(listen: SocketAddrV4) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    // A restarted natd must not wait out its old connections' TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(listen.into())?;
    socket.listen(BACKLOG)
}

fn bind_udp(listen: SocketAddrV4) -> std::io::Result<UdpSocket> {
    let socket = std::net::UdpSocket::bind(listen)?;
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket)
}

/// A client connection's place under `max_connections`, given back on drop.
struct Slot(Arc<Service>);

impl Slot {
    /// A place, if fewer than the current `max_connections` are open
    /// (a reload may lower it: then no new one until enough have closed).
    fn take(service: &Arc<Service>) -> Option<Self> {
        let max = u64::from(service.current().proxy.max_connections);
        if service.active.fetch_add(1, Ordering::Relaxed) >= max {
            service.active.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Self(Arc::clone(service)))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn accept(service: Arc<Service>, listener: TcpListener) {
    loop {
        let (client, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!("proxy {} on {}: accept failed: {e}; retrying", service.name, service.listen);
                time::sleep(ACCEPT_RETRY).await;
                continue;
            }
        };
        service.total.fetch_add(1, Ordering::Relaxed);
        let Some(slot) = Slot::take(&service) else {
            // Closed at once: a client past the limit costs no more than this.
            service.refuse(peer, &Refusal::MaxConnections);
            continue;
        };
        let service = Arc::clone(&service);
        tokio::spawn(async move {
            let current = service.current();
            let name = &service.name;
            if current.proxy.kind == ProxyKind::Http {
                drop(current);
                // Boxed: hyper's HTTP/1 and HTTP/2 connection state is
                // kilobytes, and a task is allocated at its future's largest
                // state, so inline it would cost every TLS connection as much
                // (proxy-bench: 3,330 against 2,370 resident bytes per idle
                // connection).
                match Box::pin(http::serve(Arc::clone(&service), client, peer)).await {
                    Ok(Served { requests, end: End::Closed(Ok(())) }) => tracing::debug!("proxy {name}: {peer} closed after {requests} request(s)"),
                    Ok(Served { requests, end: End::Closed(Err(e)) }) => tracing::debug!("proxy {name}: {peer} ended after {requests} request(s): {e}"),
                    Ok(Served { requests, end: End::Idle }) => tracing::debug!("proxy {name}: {peer} closed after {requests} request(s) and a timeout"),
                    Err(refusal) => service.refuse(peer, &refusal),
                }
                drop(slot);
                return;
            }
            match relay::relay(&current.proxy, &current.routes, client, peer).await {
                Ok((server, End::Closed(Ok(())))) => tracing::debug!("proxy {name}: {peer} -> {server} closed"),
                Ok((server, End::Closed(Err(e)))) => tracing::debug!("proxy {name}: {peer} -> {server} ended: {e}"),
                Ok((server, End::Idle)) => tracing::debug!("proxy {name}: {peer} -> {server} closed after idle_timeout"),
                Err(refusal) => service.refuse(peer, &refusal),
            }
            drop(slot);
        });
    }
}

/// Raises the soft limit on open files to the hard one: each relayed
/// connection holds two descriptors, and the usual soft limit (1024) would
/// refuse clients long before `max_connections`.
fn raise_descriptor_limit(wanted: u64) {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: a valid rlimit to fill in and read back.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    if limit.rlim_cur < wanted {
        tracing::warn!(
            "natd may open {} files, fewer than the proxies' max_connections need ({wanted}): raise its limit (ulimit -n, LimitNOFILE=) or lower max_connections",
            limit.rlim_cur
        );
    }
}
