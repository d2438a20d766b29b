//! `kind = "http"`: natd serves HTTP itself (hyper) on the proxy's port,
//! HTTP/1.x and HTTP/2 with prior knowledge (a client that opens with the
//! HTTP/2 preface, RFC 9113 §3.3), and routes each request by its Host, so
//! a keep-alive connection whose next request names another host reaches
//! that host's server, and so do the concurrent streams of one HTTP/2
//! connection. Servers are spoken to in HTTP/1.1.
//!
//! Per request: the host is the absolute-form target's authority, else the
//! Host header (RFC 9112 §3.2), its port dropped, matched in the proxy's
//! name table as a TLS proxy matches an SNI. An unknown host goes to the
//! default, or gets 421 (Misdirected Request); an HTTP/1.1 request without
//! Host gets 400 (RFC 9112 §3.2 requires it), an HTTP/1.0 one goes to the
//! default or gets 400. natd adds `Forwarded` (RFC 7239) and appends the
//! client's address to `X-Forwarded-For`, drops the hop-by-hop headers, and
//! passes the request to a server of the host's set, picked in turn among
//! those up. The connections to servers belong to the client connection
//! (each opened with the PROXY header when the proxy asks for one, since it
//! names this client), and are reused while it lasts: a connection goes
//! back to the client's pool once its response has been passed on whole.
//!
//! A connection natd reuses may close under a request: the server's own
//! keep-alive timeout ran out as the request went, or it closes idle
//! connections when it likes (RFC 9112 §9.3.1 lets it). The request goes
//! once more, on a new connection, when nothing of it was sent (hyper
//! gives it back), or when it has no body and repeating it is safe (an
//! idempotent method, RFC 9110 §9.2.2): what nginx does for an idempotent
//! request (`proxy_next_upstream error`), and what clients do themselves.
//! Any other failure, or one on a new connection, is a 502.
//!
//! Upgrades (WebSocket, RFC 6455; RFC 9110 §7.8): a request that asks to
//! switch protocols goes to its host's server with its `Upgrade` and
//! `Connection: upgrade`, as HAProxy and nginx pass them. When the server
//! answers 101, the client connection and that server connection become
//! one tunnel, relayed both ways until either closes: no later request is
//! routed on it (there are none, the bytes are the new protocol's). An
//! upgrade to `h2c` is not passed on: HTTP/2 over the tunnel would carry
//! every later request to the first one's server, past the routing by
//! Host, so the request is served as plain HTTP/1.1 (RFC 9113 §3.1
//! deprecates that upgrade anyway). An HTTP/2 client opens a WebSocket
//! with the extended CONNECT (RFC 8441, `websocket`): its stream becomes
//! the tunnel, the connection's other streams go on.
//!
//! Timeouts: `hello_timeout` bounds each request head, from its first byte
//! (the first request's from the accept); `idle_timeout` bounds a keep-alive
//! wait for the next request, the silence both ways while a request is
//! served, and the silence both ways of a tunnel.

mod headers;
mod servers;
mod timing;
mod websocket;

use std::{
    collections::HashMap,
    convert::Infallible,
    io,
    net::{SocketAddr, SocketAddrV4},
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{Either, Empty, Full};
use hyper::{
    Request, Response, StatusCode, Version,
    body::{Body, Frame, Incoming, SizeHint},
    client::conn::http1 as client_http1,
    header::{self, HeaderValue},
    service::service_fn,
    upgrade::OnUpgrade,
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::{
    io::AsyncWriteExt as _,
    net::TcpStream,
    task::{JoinHandle, JoinSet},
    time::{Instant, sleep_until, timeout},
};

use self::{
    headers::{not_implemented, prepare, refusal_response, request_host, strip_hop_by_hop, upgrade_asked},
    servers::{Again, Attempt, Pool, Sender, ServerConnection, ServerSender, http2_handshake},
    timing::{Activity, Expiry, Watched},
    websocket::{Carried, Handshake},
};
use crate::{
    config::ServerProtocol,
    proxy::{
        names::normalize_dns_name,
        relay::{self, End},
        route::{Backend, Refusal},
        service::Service,
    },
};

/// The body natd answers with: the server's, or a short one of its own.
type Answer = Either<Incoming, Full<Bytes>>;
/// A request's body as natd sends it to a server: the client's, or none
/// (a request without one, which natd can send again).
type Outgoing = Either<Incoming, Empty<Bytes>>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Streams one HTTP/2 client may have open at once (nginx's
/// `http2_max_concurrent_streams`).
const MAX_STREAMS: u32 = 128;

/// How often at least a connection's timeouts are looked at, at most.
const MAX_TICK: Duration = Duration::from_secs(1);
const MIN_TICK: Duration = Duration::from_millis(10);

/// How one client connection ended.
pub(super) struct Served {
    /// Requests whose head arrived.
    pub requests: u64,
    pub end: End,
}

/// Serves one client connection of an http proxy until it closes or times
/// out. Err when the first request's head never came whole (nothing was
/// served).
pub(super) async fn serve(service: Arc<Service>, client: TcpStream, peer: SocketAddr) -> Result<Served, Refusal> {
    let local = client.local_addr().map_err(|e| Refusal::Local(format!("the client's socket: {e}")))?;
    let _ = client.set_nodelay(true);
    let activity = Arc::new(Activity::new());
    let conn = Arc::new(Conn {
        service: Arc::clone(&service),
        peer,
        local,
        activity: Arc::clone(&activity),
        servers: Mutex::new(HashMap::new()),
        tunnel: Mutex::new(None),
        stream_tunnels: Mutex::new(JoinSet::new()),
    });
    let io = TokioIo::new(Watched { stream: client, activity: Arc::clone(&activity) });
    let handler = {
        let conn = Arc::clone(&conn);
        service_fn(move |request| {
            let conn = Arc::clone(&conn);
            async move { Ok::<_, Infallible>(Conn::handle(&conn, request).await) }
        })
    };
    // natd's own watch below bounds the heads and the idle times.
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().keep_alive(true).header_read_timeout(None);
    let mut http2 = builder.http2();
    http2.max_concurrent_streams(MAX_STREAMS);
    // WebSocket over HTTP/2 (RFC 8441): natd carries it to servers spoken
    // to in HTTP/1.1, and to those in HTTP/2 that offer it themselves
    // (a 501 for a server that does not).
    http2.enable_connect_protocol();
    let connection = builder.serve_connection_with_upgrades(io, handler);
    tokio::pin!(connection);
    // The tunnel the connection became after a 101, once hyper let it go.
    let mut tunnel: Option<Tunnel> = None;
    loop {
        let (hello, idle) = {
            let current = service.current();
            (current.proxy.hello_timeout, current.proxy.idle_timeout)
        };
        let (deadline, expiry) = activity.deadline(hello, idle);
        let now = Instant::now();
        if now >= deadline {
            let requests = activity.requests();
            return match expiry {
                Expiry::Head if requests == 0 => Err(Refusal::HelloTimeout),
                Expiry::Head | Expiry::Idle => Ok(Served { requests, end: End::Idle }),
            };
        }
        let tick = (hello.min(idle) / 4).clamp(MIN_TICK, MAX_TICK);
        let requests = activity.requests();
        if let Some(relaying) = &mut tunnel {
            tokio::select! {
                relayed = &mut relaying.0 => {
                    let end = relayed.map_err(io::Error::other).and_then(|result| result.map(|_| ()));
                    return Ok(Served { requests, end: End::Closed(end) });
                }
                _ = sleep_until(deadline.min(now + tick)) => {}
            }
            continue;
        }
        tokio::select! {
            result = &mut connection => {
                // hyper has handed the socket over to a 101's tunnel: the
                // connection lasts as long as it does.
                if result.is_ok()
                    && let Some(relaying) = conn.tunnel.lock().unwrap_or_else(|p| p.into_inner()).take()
                {
                    tunnel = Some(relaying);
                    continue;
                }
                let hyper_error = result.as_ref().err().and_then(|e| e.downcast_ref::<hyper::Error>());
                return match hyper_error {
                    Some(e) if requests == 0 && e.is_incomplete_message() => Err(Refusal::ClientClosed),
                    Some(e) if requests == 0 && e.is_parse() => Err(Refusal::BadRequest(e.to_string())),
                    _ => Ok(Served { requests, end: End::Closed(result.map_err(io::Error::other)) }),
                };
            }
            _ = sleep_until(deadline.min(now + tick)) => {}
        }
    }
}

/// One client connection: who it is, and its connections to servers.
struct Conn {
    service: Arc<Service>,
    peer: SocketAddr,
    local: SocketAddr,
    activity: Arc<Activity>,
    /// Open connections to servers, for the next requests of this client.
    servers: Mutex<HashMap<SocketAddrV4, ServerSender>>,
    /// The relay of an upgraded connection (a 101 passed on), for `serve`
    /// to wait on once hyper lets the client's socket go.
    tunnel: Mutex<Option<Tunnel>>,
    /// The relays of HTTP/2 streams that carry a WebSocket (RFC 8441): the
    /// connection goes on serving its other streams; they stop with it.
    stream_tunnels: Mutex<JoinSet<io::Result<(u64, u64)>>>,
}

/// The relay task of an upgraded connection, stopped when dropped: it
/// never outlives the client connection's slot (`max_connections`).
struct Tunnel(JoinHandle<io::Result<(u64, u64)>>);

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Conn {
    async fn handle(conn: &Arc<Self>, request: Request<Incoming>) -> Response<Tracked> {
        conn.activity.request_started();
        let (response, back) = match conn.forward(request).await {
            Ok((response, back)) => (response, back),
            Err(refusal) => {
                conn.service.refuse(conn.peer, &refusal);
                (refusal_response(&refusal).map(Either::Right), None)
            }
        };
        let back = back.map(|(addr, sender)| Back { conn: Arc::clone(conn), addr, sender });
        response.map(|inner| Tracked { inner, activity: Arc::clone(&conn.activity), back })
    }

    /// The server's response, and the connection it came on unless that
    /// became a tunnel: for the pool once the response is passed on.
    async fn forward(&self, mut request: Request<Incoming>) -> Result<(Response<Answer>, Option<(SocketAddrV4, ServerSender)>), Refusal> {
        // Each request takes the routes in force when it arrives.
        let current = self.service.current();
        let routes = &current.routes;
        let host = request_host(&request)?;
        let set = match &host {
            None if request.version() >= Version::HTTP_11 => return Err(Refusal::NoHost),
            None => routes.for_name(None)?,
            // Not a DNS name (an address, say): only the default takes it.
            Some(host) => match normalize_dns_name(host) {
                Ok(name) => routes.for_name(Some(&name))?,
                Err(_) => routes.for_name(None).map_err(|_| Refusal::UnknownName(host.clone()))?,
            },
        };
        // WebSocket over HTTP/2 goes to an HTTP/1.1 server as its opening
        // handshake, to an HTTP/2 one as it came; any other extended
        // CONNECT natd cannot carry.
        let websocket = match websocket::extended_connect(&request) {
            None => None,
            Some(protocol) if websocket::is_websocket(protocol) => Some(match current.proxy.server_protocol {
                ServerProtocol::Http1 => Carried::AsHandshake(Handshake::new().map_err(|e| Refusal::Local(format!("a Sec-WebSocket-Key: {e}")))?),
                ServerProtocol::Http2 => Carried::AsStream,
            }),
            Some(protocol) => return Ok((not_implemented(&format!("CONNECT for {:?}", protocol.as_str())).map(Either::Right), None)),
        };
        // An HTTP/2 server cannot switch protocols (RFC 9113 §8.6): the
        // request goes as a plain one, as an h2c upgrade does.
        let upgrade = upgrade_asked(&request).filter(|_| websocket.is_none() && current.proxy.server_protocol == ServerProtocol::Http1);
        let stream_upgrade = websocket.as_ref().map(|_| hyper::upgrade::on(&mut request));
        prepare(&mut request, self.peer, current.proxy.server_protocol);
        if let Some(Carried::AsHandshake(handshake)) = &websocket {
            handshake.to_http1(&mut request);
        }
        let client_upgrade = upgrade.map(|protocols| {
            let headers = request.headers_mut();
            headers.insert(header::UPGRADE, protocols);
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            hyper::upgrade::on(&mut request)
        });
        let candidates = routes.candidates(set)?;
        let (request, again) = Again::keep(request);
        let (sender, backend) = self.sender(candidates.clone(), &current.proxy, host.as_deref(), Pool::Reuse).await?;
        let mut attempt = Attempt { sender, backend };
        if let Some(refused) = self.unoffered(websocket.as_ref(), &attempt, &current.proxy).await {
            return Ok((refused, None));
        }
        let mut response = match attempt.send(request).await {
            Ok(response) => response,
            Err((error, unsent)) => {
                let failed = format!("{}: {error}", attempt.backend.addr);
                let repeat = match (attempt.sender_was_reused(), unsent) {
                    (true, Some(unsent)) => Some(unsent),
                    (true, None) => again.request(),
                    (false, _) => None,
                };
                let Some(request) = repeat else {
                    attempt.backend.note_failure(format!("request: {failed}"));
                    return Err(Refusal::ServerFailed(failed));
                };
                tracing::debug!("proxy {}: {} -> {failed} on a reused connection: sent again on a new one", self.service.name, self.peer);
                let (sender, backend) = self.sender(candidates, &current.proxy, host.as_deref(), Pool::New).await?;
                attempt = Attempt { sender, backend };
                if let Some(refused) = self.unoffered(websocket.as_ref(), &attempt, &current.proxy).await {
                    return Ok((refused, None));
                }
                attempt.send(request).await.map_err(|(error, _)| {
                    let why = format!("{}: {error}", attempt.backend.addr);
                    attempt.backend.note_failure(format!("request: {why}"));
                    Refusal::ServerFailed(why)
                })?
            }
        };
        let Attempt { sender, backend } = attempt;
        let sender = sender.sender;
        match (&websocket, stream_upgrade) {
            // The server switched: once its accept is checked, the tunnel
            // takes this server connection for itself.
            (Some(Carried::AsHandshake(handshake)), Some(stream)) if response.status() == StatusCode::SWITCHING_PROTOCOLS => {
                if !handshake.accepted(&response) {
                    let why = format!("{}: a 101 without the Sec-WebSocket-Accept of natd's key", backend.addr);
                    backend.note_failure(format!("request: {why}"));
                    return Err(Refusal::ServerFailed(why));
                }
                return Ok((self.stream_tunnel(stream, response, Some(backend)), None));
            }
            // A success that is no 101 is a server that did not switch: the
            // client's 2xx would open a tunnel to nothing (RFC 8441 §5).
            (Some(Carried::AsHandshake(_)), _) if response.status().is_success() => {
                let why = format!("{}: {} to a WebSocket handshake, not 101", backend.addr, response.status());
                backend.note_failure(format!("request: {why}"));
                return Err(Refusal::ServerFailed(why));
            }
            // An HTTP/2 server's 200 opens the stream (hyper hands over a
            // CONNECT's stream on 200 only): one stream of a connection
            // that counts itself.
            (Some(Carried::AsStream), Some(stream)) if response.status() == StatusCode::OK => {
                return Ok((self.stream_tunnel(stream, response, None), None));
            }
            _ => {}
        }
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            let Some(client_upgrade) = client_upgrade else {
                return Err(Refusal::ServerFailed(format!("{}: 101 to a request that asked for no upgrade", backend.addr)));
            };
            // The server connection is the tunnel's now: never reused.
            let protocols = response.headers().get(header::UPGRADE).cloned();
            let server_upgrade = hyper::upgrade::on(&mut response);
            strip_hop_by_hop(response.headers_mut());
            if let Some(protocols) = protocols {
                response.headers_mut().insert(header::UPGRADE, protocols);
            }
            response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            let server = self.tunnel_opened(Some(backend));
            let relaying = Tunnel(tokio::spawn(tunnel(client_upgrade, server_upgrade, server)));
            *self.tunnel.lock().unwrap_or_else(|p| p.into_inner()) = Some(relaying);
            return Ok((response.map(Either::Left), None));
        }
        strip_hop_by_hop(response.headers_mut());
        Ok((response.map(Either::Left), Some((backend.addr, sender))))
    }

    /// A WebSocket over HTTP/2 is open at its server (a checked 101 from an
    /// HTTP/1.1 server, a 200 from an HTTP/2 one): the client's stream and
    /// the server's side are relayed as one tunnel, while the client's
    /// connection serves its other streams. `own`: the server whose
    /// connection the tunnel takes for itself, counted as that server's
    /// while it lasts (none for an HTTP/2 server's stream: its connection
    /// counts itself). The stream's answer: 200.
    fn stream_tunnel(&self, stream: OnUpgrade, mut opened: Response<Incoming>, own: Option<&Backend>) -> Response<Answer> {
        let server_upgrade = hyper::upgrade::on(&mut opened);
        let server = self.tunnel_opened(own);
        let activity = Arc::clone(&self.activity);
        let mut tunnels = self.stream_tunnels.lock().unwrap_or_else(|p| p.into_inner());
        // The ended ones' results are of no use: reaped here, so the set
        // holds only the open.
        while tunnels.try_join_next().is_some() {}
        tunnels.spawn(async move {
            let relayed = tunnel(stream, server_upgrade, server).await;
            activity.tunnel_closed();
            relayed
        });
        websocket::answer(&opened, Either::Right(Full::new(Bytes::new())))
    }

    /// 501 for a WebSocket that goes as it came (`Carried::AsStream`) to a
    /// server that has not offered the extended CONNECT (RFC 8441 §4: no
    /// `:protocol` before it does); its SETTINGS are awaited at most
    /// `connect_timeout`. None: the request may go.
    async fn unoffered(&self, websocket: Option<&Carried>, attempt: &Attempt<'_>, proxy: &crate::config::Proxy) -> Option<Response<Answer>> {
        if !matches!(websocket, Some(Carried::AsStream)) || attempt.sender.sender.takes_extended_connect(proxy.connect_timeout).await {
            return None;
        }
        let what = format!("WebSocket over HTTP/2 to {}, which does not offer the extended CONNECT (RFC 8441),", attempt.backend.addr);
        Some(not_implemented(&what).map(Either::Right))
    }

    /// A tunnel opens: the client's connection is timed as one, and a
    /// server connection the tunnel takes for itself (`own`) is counted as
    /// that server's while the tunnel lasts.
    fn tunnel_opened(&self, own: Option<&Backend>) -> Option<ServerConnection> {
        self.activity.tunnel_opened();
        own.map(|backend| ServerConnection::counted(&self.service, backend))
    }

    /// A connection to a server of `candidates`: with `Pool::Reuse`, one of
    /// this client's that is still open, else a new one to the first that
    /// accepts.
    async fn sender<'b>(&self, candidates: Vec<&'b Backend>, proxy: &crate::config::Proxy, host: Option<&str>, pool: Pool) -> Result<(Sender, &'b Backend), Refusal> {
        for backend in candidates.iter().filter(|_| pool == Pool::Reuse) {
            // An HTTP/2 connection stays in the pool for the client's other
            // streams; an HTTP/1.1 one is taken until its response is done.
            let open = {
                let mut servers = self.servers.lock().unwrap_or_else(|p| p.into_inner());
                match servers.get(&backend.addr).and_then(ServerSender::shared) {
                    Some(shared) => Some(shared),
                    None => servers.remove(&backend.addr),
                }
            };
            // One opened before a reload changed `server_protocol` is let go.
            if let Some(mut sender) = open
                && sender.speaks() == proxy.server_protocol
                && sender.ready().await.is_ok()
            {
                return Ok((Sender { sender, reused: true }, *backend));
            }
        }
        let (mut stream, backend) = relay::connect(candidates, proxy.connect_timeout).await?;
        let _ = stream.set_nodelay(true);
        if let Some(version) = proxy.proxy_protocol {
            let header = relay::header(version, self.peer, self.local, host).map_err(Refusal::Local)?;
            timeout(proxy.connect_timeout, stream.write_all(&header))
                .await
                .map_err(|_| Refusal::ServerFailed(format!("{}: the PROXY header was not taken within connect_timeout", backend.addr)))?
                .map_err(|e| Refusal::ServerFailed(format!("{}: the PROXY header: {e}", backend.addr)))?;
        }
        let failed = |e: hyper::Error| Refusal::ServerFailed(format!("{}: {e}", backend.addr));
        let server = ServerConnection::counted(&self.service, backend);
        let sender = match proxy.server_protocol {
            ServerProtocol::Http1 => {
                let (sender, connection) = client_http1::handshake(TokioIo::new(stream)).await.map_err(failed)?;
                tokio::spawn(async move {
                    // Ends at a 101 too, the socket handed to the tunnel, which
                    // counts itself as the server's connection while it lasts.
                    let _ = connection.with_upgrades().await;
                    drop(server);
                });
                ServerSender::Http1(sender)
            }
            ServerProtocol::Http2 => {
                let (sender, driver) = http2_handshake(stream).await.map_err(failed)?;
                let settle = proxy.connect_timeout;
                tokio::spawn(async move {
                    let _ = driver.drive(settle).await;
                    drop(server);
                });
                // At once, for the client's concurrent streams.
                if let Some(shared) = sender.shared() {
                    self.servers.lock().unwrap_or_else(|p| p.into_inner()).insert(backend.addr, shared);
                }
                sender
            }
        };
        Ok((Sender { sender, reused: false }, backend))
    }
}

/// Relays an upgraded connection both ways once hyper has handed over
/// both sides (the client's after the 101 or its stream's 200 is written,
/// with anything it sent behind the request; the server's with anything
/// behind its answer). Ends when both sides have closed, or at the first
/// error; the server connection the tunnel took, if any, is counted until
/// then, or until the task is stopped.
async fn tunnel(client: OnUpgrade, server: OnUpgrade, _counted: Option<ServerConnection>) -> io::Result<(u64, u64)> {
    let (client, server) = tokio::try_join!(client, server).map_err(io::Error::other)?;
    let (mut client, mut server) = (TokioIo::new(client), TokioIo::new(server));
    tokio::io::copy_bidirectional(&mut client, &mut server).await
}

/// A response body that tells the connection's watch when it is done (or
/// dropped): the connection then waits for its next request; and gives
/// the server connection it came on back to the client's pool.
struct Tracked {
    inner: Answer,
    activity: Arc<Activity>,
    back: Option<Back>,
}

/// A server connection to give back to `conn`'s pool once its response
/// is passed on. hyper's client closes it if the response's body was not
/// read to its end (the client went away), so a connection in the pool
/// is idle, or closed and skipped.
struct Back {
    conn: Arc<Conn>,
    addr: SocketAddrV4,
    sender: ServerSender,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.activity.response_ended();
        if let Some(Back { conn, addr, sender }) = self.back.take() {
            conn.servers.lock().unwrap_or_else(|p| p.into_inner()).insert(addr, sender);
        }
    }
}
