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
//! deprecates that upgrade anyway).
//!
//! Timeouts: `hello_timeout` bounds each request head, from its first byte
//! (the first request's from the accept); `idle_timeout` bounds a keep-alive
//! wait for the next request, the silence both ways while a request is
//! served, and the silence both ways of a tunnel.

use std::{
    collections::HashMap,
    convert::Infallible,
    io,
    net::{IpAddr, SocketAddr, SocketAddrV4},
    pin::Pin,
    sync::{Arc, Mutex, atomic::Ordering},
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{Either, Empty, Full};
use hyper::{
    HeaderMap, Request, Response, StatusCode, Uri, Version,
    body::{Body, Frame, Incoming, SizeHint},
    client::conn::http1 as client_http1,
    header::{self, HeaderName, HeaderValue},
    service::service_fn,
    upgrade::OnUpgrade,
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf},
    net::TcpStream,
    task::JoinHandle,
    time::{Instant, sleep_until, timeout},
};

use crate::proxy::{
    names::normalize_dns_name,
    relay::{self, End},
    route::{Backend, Refusal},
    service::Service,
};

/// The body natd answers with: the server's, or a short one of its own.
type Answer = Either<Incoming, Full<Bytes>>;
/// A request's body as natd sends it to a server: the client's, or none
/// (a request without one, which natd can send again).
type Outgoing = Either<Incoming, Empty<Bytes>>;
type ServerSender = client_http1::SendRequest<Outgoing>;
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
    builder.http2().max_concurrent_streams(MAX_STREAMS);
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
            Ok((response, back)) => (response.map(Either::Left), back),
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
    async fn forward(&self, mut request: Request<Incoming>) -> Result<(Response<Incoming>, Option<(SocketAddrV4, ServerSender)>), Refusal> {
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
        let upgrade = upgrade_asked(&request);
        prepare(&mut request, self.peer);
        let client_upgrade = upgrade.map(|protocols| {
            let headers = request.headers_mut();
            headers.insert(header::UPGRADE, protocols);
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            hyper::upgrade::on(&mut request)
        });
        let candidates = routes.candidates(set)?;
        let (request, again) = Again::keep(request);
        let (sender, backend) = self.sender(candidates.clone(), &current.proxy, host.as_deref(), Pool::Reuse).await?;
        let mut attempt = Attempt { sender, backend: routes.backend(backend) };
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
                attempt = Attempt { sender, backend: routes.backend(backend) };
                attempt.send(request).await.map_err(|(error, _)| {
                    let why = format!("{}: {error}", attempt.backend.addr);
                    attempt.backend.note_failure(format!("request: {why}"));
                    Refusal::ServerFailed(why)
                })?
            }
        };
        let Attempt { sender, backend } = attempt;
        let sender = sender.sender;
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
            self.activity.tunnel_opened();
            backend.active.fetch_add(1, Ordering::Relaxed);
            let server = ServerConnection { service: Arc::clone(&self.service), addr: backend.addr };
            let relaying = Tunnel(tokio::spawn(tunnel(client_upgrade, server_upgrade, server)));
            *self.tunnel.lock().unwrap_or_else(|p| p.into_inner()) = Some(relaying);
            return Ok((response, None));
        }
        strip_hop_by_hop(response.headers_mut());
        Ok((response, Some((backend.addr, sender))))
    }

    /// A connection to a server of `candidates`: with `Pool::Reuse`, one of
    /// this client's that is still open, else a new one to the first that
    /// accepts.
    async fn sender(&self, candidates: Vec<&Backend>, proxy: &crate::config::Proxy, host: Option<&str>, pool: Pool) -> Result<(Sender, SocketAddrV4), Refusal> {
        for backend in candidates.iter().filter(|_| pool == Pool::Reuse) {
            let open = self.servers.lock().unwrap_or_else(|p| p.into_inner()).remove(&backend.addr);
            if let Some(mut sender) = open
                && sender.ready().await.is_ok()
            {
                return Ok((Sender { sender, reused: true }, backend.addr));
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
        let (sender, connection) = client_http1::handshake(TokioIo::new(stream)).await.map_err(|e| Refusal::ServerFailed(format!("{}: {e}", backend.addr)))?;
        backend.active.fetch_add(1, Ordering::Relaxed);
        let server = ServerConnection { service: Arc::clone(&self.service), addr: backend.addr };
        tokio::spawn(async move {
            // Ends at a 101 too, the socket handed to the tunnel, which
            // counts itself as the server's connection while it lasts.
            let _ = connection.with_upgrades().await;
            drop(server);
        });
        Ok((Sender { sender, reused: false }, backend.addr))
    }
}

/// Whether `Conn::sender` may take a connection this client opened before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pool {
    Reuse,
    /// A new connection: the request is being sent again.
    New,
}

/// A connection to a server, and whether it served this client before.
struct Sender {
    sender: ServerSender,
    reused: bool,
}

/// One try at a request: the connection and the server it goes to.
struct Attempt {
    sender: Sender,
    backend: Arc<Backend>,
}

impl Attempt {
    fn sender_was_reused(&self) -> bool {
        self.sender.reused
    }

    /// Sends `request` (counted in its server's total). Err: the error, and
    /// the request when hyper gives it back, nothing of it sent.
    async fn send(&mut self, request: Request<Outgoing>) -> Result<Response<Incoming>, (hyper::Error, Option<Request<Outgoing>>)> {
        self.backend.total.fetch_add(1, Ordering::Relaxed);
        self.sender.sender.try_send_request(request).await.map_err(|mut e| {
            let unsent = e.take_message();
            (e.into_error(), unsent)
        })
    }
}

/// What it takes to send a request again after it was sent whole: for one
/// without a body and with an idempotent method (RFC 9110 §9.2.2), its
/// head; nothing for any other.
struct Again(Option<(hyper::Method, Uri, Version, HeaderMap)>);

impl Again {
    /// The request as it goes to the server, and what sending it again takes.
    fn keep(request: Request<Incoming>) -> (Request<Outgoing>, Again) {
        let (parts, body) = request.into_parts();
        if !(body.is_end_stream() && parts.method.is_idempotent()) {
            return (Request::from_parts(parts, Either::Left(body)), Again(None));
        }
        let again = Again(Some((parts.method.clone(), parts.uri.clone(), parts.version, parts.headers.clone())));
        (Request::from_parts(parts, Either::Right(Empty::new())), again)
    }

    fn request(self) -> Option<Request<Outgoing>> {
        let (method, uri, version, headers) = self.0?;
        let mut request = Request::new(Either::Right(Empty::new()));
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        *request.version_mut() = version;
        *request.headers_mut() = headers;
        Some(request)
    }
}

/// A connection to the server at `addr`, counted in its `active` while
/// this lives: on drop, one fewer of the routes in force then (none, if a
/// reload removed it; the same counters while it stays).
struct ServerConnection {
    service: Arc<Service>,
    addr: SocketAddrV4,
}

impl Drop for ServerConnection {
    fn drop(&mut self) {
        if let Some(backend) = self.service.current().routes.backends.iter().find(|b| b.addr == self.addr) {
            backend.active.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Relays an upgraded connection both ways once hyper has handed over
/// both sockets (the client's after the 101 is written, with anything it
/// sent behind the request; the server's with anything behind the 101).
/// Ends when both sides have closed, or at the first error; `server` is
/// counted until then, or until the task is stopped.
async fn tunnel(client: OnUpgrade, server: OnUpgrade, _counted: ServerConnection) -> io::Result<(u64, u64)> {
    let (client, server) = tokio::try_join!(client, server).map_err(io::Error::other)?;
    let (mut client, mut server) = (TokioIo::new(client), TokioIo::new(server));
    tokio::io::copy_bidirectional(&mut client, &mut server).await
}

/// The protocols a request asks to switch to (RFC 9110 §7.8), as its
/// `Upgrade` lists them, `h2c` left out: None when it asks for none, or
/// only for `h2c`, or is not HTTP/1.1 (HTTP/1.0 has no upgrade).
fn upgrade_asked<B>(request: &Request<B>) -> Option<HeaderValue> {
    if request.version() != Version::HTTP_11 {
        return None;
    }
    let headers = request.headers();
    let connection_says_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    if !connection_says_upgrade {
        return None;
    }
    let protocols: Vec<&str> = headers
        .get_all(header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty() && !p.eq_ignore_ascii_case("h2c"))
        .collect();
    if protocols.is_empty() {
        return None;
    }
    HeaderValue::from_str(&protocols.join(", ")).ok()
}

/// The host a request names, as written, port dropped: the authority of
/// an absolute-form target, else the Host header. None: neither (or an
/// empty Host).
fn request_host<B>(request: &Request<B>) -> Result<Option<String>, Refusal> {
    if let Some(authority) = request.uri().authority() {
        return Ok(Some(authority.host().trim_start_matches('[').trim_end_matches(']').to_string()));
    }
    let mut hosts = request.headers().get_all(header::HOST).iter();
    let Some(host) = hosts.next() else { return Ok(None) };
    if hosts.next().is_some() {
        return Err(Refusal::BadRequest("Host appears more than once".into()));
    }
    let text = host.to_str().map_err(|_| Refusal::BadRequest("Host is not text".into()))?.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let name = if let Some(rest) = text.strip_prefix('[') {
        // An IPv6 literal, "[::1]:8080".
        rest.split(']').next().unwrap_or_default()
    } else {
        match text.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => text,
        }
    };
    Ok(Some(name.to_string()))
}

/// Hop-by-hop headers (RFC 9110 §7.6.1): they concern one connection, not
/// the request; hyper frames each side's body itself.
const HOP_BY_HOP: [&str; 8] = ["connection", "keep-alive", "proxy-connection", "proxy-authenticate", "te", "trailer", "transfer-encoding", "upgrade"];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// The request as its server gets it: HTTP/1.1 for an HTTP/2 one, its
/// cookie fields joined into one (RFC 9113 §8.2.3), origin-form target,
/// Host set to what it was routed by, hop-by-hop headers dropped, and the
/// client named in `X-Forwarded-For` (appended) and `Forwarded` (a new
/// element, RFC 7239: `host` is the Host as received).
fn prepare<B>(request: &mut Request<B>, peer: SocketAddr) {
    if request.version() == Version::HTTP_2 {
        *request.version_mut() = Version::HTTP_11;
        let cookies: Vec<String> = request.headers().get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).map(str::to_string).collect();
        if cookies.len() > 1
            && let Ok(joined) = HeaderValue::from_str(&cookies.join("; "))
        {
            request.headers_mut().insert(header::COOKIE, joined);
        }
    }
    let uri = request.uri();
    if uri.authority().is_some() {
        let authority = uri.authority().map(|a| a.as_str().to_string());
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
        if let Ok(origin) = path.parse::<Uri>() {
            *request.uri_mut() = origin;
        }
        if let Some(value) = authority.and_then(|a| HeaderValue::from_str(&a).ok()) {
            request.headers_mut().insert(header::HOST, value);
        }
    }
    let headers = request.headers_mut();
    strip_hop_by_hop(headers);
    let client = client_ip(peer);
    append(headers, HeaderName::from_static("x-forwarded-for"), &client.to_string());
    let mut element = format!("for={}", forwarded_node(client));
    if let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()).filter(|h| !h.is_empty()) {
        element.push_str(&format!(";host={}", forwarded_value(host)));
    }
    element.push_str(";proto=http");
    append(headers, header::FORWARDED, &element);
}

/// An IPv4-mapped IPv6 peer as the IPv4 address it is.
fn client_ip(peer: SocketAddr) -> IpAddr {
    match peer.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// RFC 7239 §6: an IPv6 node is bracketed, and so quoted.
fn forwarded_node(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("\"[{v6}]\""),
    }
}

/// A token as is, anything else as a quoted-string (RFC 7239 §4).
fn forwarded_value(value: &str) -> String {
    let token = !value.is_empty() && value.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if token { value.to_string() } else { format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\"")) }
}

/// Sets `name` to its existing values joined, then `value`: one field, so
/// a server that reads only the first line still sees the whole list.
fn append(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    let mut parts: Vec<String> = headers.get_all(&name).iter().filter_map(|v| v.to_str().ok()).map(str::to_string).collect();
    parts.push(value.to_string());
    if let Ok(joined) = HeaderValue::from_str(&parts.join(", ")) {
        headers.insert(name, joined);
    }
}

/// natd's own answer to a request it does not pass on.
fn refusal_response(refusal: &Refusal) -> Response<Full<Bytes>> {
    let (status, body) = match refusal {
        Refusal::UnknownName(host) => (StatusCode::MISDIRECTED_REQUEST, format!("no site {host:?} here\n")),
        Refusal::NoName | Refusal::NoHost => (StatusCode::BAD_REQUEST, "the request names no host\n".to_string()),
        Refusal::BadRequest(why) => (StatusCode::BAD_REQUEST, format!("{why}\n")),
        Refusal::NoServerUp(_) => (StatusCode::SERVICE_UNAVAILABLE, "no server is up for this site\n".to_string()),
        _ => (StatusCode::BAD_GATEWAY, "the site's server did not answer\n".to_string()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
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

/// What bounds a connection's wait now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expiry {
    /// A request head that is not whole yet: `hello_timeout`.
    Head,
    /// A keep-alive wait, or a request in progress that went silent:
    /// `idle_timeout`.
    Idle,
}

#[derive(Debug)]
struct State {
    /// The last byte read or written.
    moved: Instant,
    /// Requests whose head has arrived and whose response is not done
    /// (several at once on HTTP/2).
    in_flight: u32,
    /// Since when the connection waits for a request (the accept, or the
    /// end of the last response).
    waiting_since: Instant,
    /// The first byte of the next request's head, while it is not whole.
    head_started: Option<Instant>,
    requests: u64,
    /// A 101 was passed on: the bytes are a tunnel's, never a request head.
    tunnel: bool,
}

/// A connection's timing, kept by its socket (`Watched`), its requests and
/// their responses (`Tracked`).
#[derive(Debug)]
struct Activity(Mutex<State>);

impl Activity {
    fn new() -> Self {
        let now = Instant::now();
        Self(Mutex::new(State { moved: now, in_flight: 0, waiting_since: now, head_started: None, requests: 0, tunnel: false }))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn moved(&self, read: bool) {
        let now = Instant::now();
        let mut s = self.state();
        s.moved = now;
        if read && s.in_flight == 0 && !s.tunnel && s.head_started.is_none() {
            s.head_started = Some(now);
        }
    }

    fn request_started(&self) {
        let mut s = self.state();
        s.in_flight += 1;
        s.head_started = None;
        s.requests += 1;
    }

    fn tunnel_opened(&self) {
        self.state().tunnel = true;
    }

    fn response_ended(&self) {
        let now = Instant::now();
        let mut s = self.state();
        s.in_flight = s.in_flight.saturating_sub(1);
        s.moved = now;
        if s.in_flight == 0 {
            s.waiting_since = now;
            s.head_started = None;
        }
    }

    fn requests(&self) -> u64 {
        self.state().requests
    }

    /// When the connection is closed unless something happens first.
    fn deadline(&self, hello: Duration, idle: Duration) -> (Instant, Expiry) {
        let s = self.state();
        if s.in_flight > 0 || s.tunnel {
            (s.moved + idle, Expiry::Idle)
        } else if s.requests == 0 {
            (s.waiting_since + hello, Expiry::Head)
        } else if let Some(started) = s.head_started {
            (started + hello, Expiry::Head)
        } else {
            (s.waiting_since + idle, Expiry::Idle)
        }
    }
}

/// The client's socket, noting every byte that moves.
struct Watched {
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.moved(true);
        }
        result
    }
}

impl AsyncWrite for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.stream).poll_write(cx, buf);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.moved(false);
        }
        result
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.moved(false);
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(target: &str, version: Version, headers: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::builder().uri(target).version(version);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap()
    }

    fn host_of(target: &str, headers: &[(&str, &str)]) -> Result<Option<String>, Refusal> {
        request_host(&request(target, Version::HTTP_11, headers))
    }

    #[test]
    fn the_host_is_the_absolute_targets_authority_else_the_host_header_without_its_port() {
        assert_eq!(host_of("/", &[("host", "Blue.Example")]), Ok(Some("Blue.Example".into())));
        assert_eq!(host_of("/", &[("host", "blue.example:8080")]), Ok(Some("blue.example".into())));
        assert_eq!(host_of("/", &[("host", "[2001:db8::1]:80")]), Ok(Some("2001:db8::1".into())));
        assert_eq!(host_of("/", &[("host", "203.0.113.1")]), Ok(Some("203.0.113.1".into())));
        assert_eq!(host_of("http://red.example:80/x", &[("host", "blue.example")]), Ok(Some("red.example".into())), "RFC 9112 §3.2.2: the target's authority wins");
        assert_eq!(host_of("/", &[]), Ok(None));
        assert_eq!(host_of("/", &[("host", "")]), Ok(None));
        assert_eq!(host_of("/", &[("host", "a.example"), ("host", "b.example")]), Err(Refusal::BadRequest("Host appears more than once".into())));
    }

    #[test]
    fn the_server_gets_the_client_in_forwarded_and_x_forwarded_for_and_no_hop_by_hop_headers() {
        let peer: SocketAddr = "198.51.100.7:40000".parse().unwrap();
        let mut fresh = request("/a?b=c", Version::HTTP_11, &[("host", "blue.example"), ("connection", "keep-alive, x-secret"), ("x-secret", "1"), ("te", "trailers"), ("upgrade", "websocket")]);
        prepare(&mut fresh, peer);
        let headers = fresh.headers();
        assert_eq!(headers["x-forwarded-for"], "198.51.100.7");
        assert_eq!(headers["forwarded"], "for=198.51.100.7;host=blue.example;proto=http");
        assert_eq!(headers["host"], "blue.example");
        for gone in ["connection", "x-secret", "te", "upgrade", "keep-alive"] {
            assert!(!headers.contains_key(gone), "{gone} is hop-by-hop: {headers:?}");
        }
        assert_eq!(fresh.uri(), "/a?b=c");

        let mut relayed = request(
            "http://red.example:8080/p",
            Version::HTTP_11,
            &[("host", "red.example:8080"), ("x-forwarded-for", "192.0.2.1, 192.0.2.2"), ("x-forwarded-for", "192.0.2.3"), ("forwarded", "for=192.0.2.1")],
        );
        prepare(&mut relayed, "[::ffff:198.51.100.7]:1".parse().unwrap());
        let headers = relayed.headers();
        assert_eq!(headers["x-forwarded-for"], "192.0.2.1, 192.0.2.2, 192.0.2.3, 198.51.100.7", "appended, a mapped address as IPv4");
        assert_eq!(headers["forwarded"], "for=192.0.2.1, for=198.51.100.7;host=\"red.example:8080\";proto=http", "host as received, quoted for its ':'");
        assert_eq!(relayed.uri(), "/p", "origin form to the server");
        assert_eq!(headers["host"], "red.example:8080");

        let mut h2 = request("http://blue.example/c", Version::HTTP_2, &[("cookie", "a=1"), ("cookie", "b=2")]);
        prepare(&mut h2, peer);
        assert_eq!(h2.version(), Version::HTTP_11, "servers are spoken to in HTTP/1.1");
        assert_eq!((h2.uri().to_string(), &h2.headers()["host"]), ("/c".to_string(), &HeaderValue::from_static("blue.example")), ":authority becomes Host");
        assert_eq!(h2.headers().get_all("cookie").iter().collect::<Vec<_>>(), ["a=1; b=2"], "RFC 9113 §8.2.3: one cookie field");

        let mut v6 = request("/", Version::HTTP_10, &[]);
        prepare(&mut v6, "[2001:db8::7]:1".parse().unwrap());
        assert_eq!(v6.headers()["forwarded"], "for=\"[2001:db8::7]\";proto=http", "RFC 7239 §6: IPv6 quoted; no Host, no host");
        assert_eq!(forwarded_value("a \"b\""), "\"a \\\"b\\\"\"", "a non-token quoted, its quotes escaped");
    }

    #[test]
    fn an_upgrade_is_asked_by_connection_and_upgrade_together_h2c_never() {
        let asked = |version, headers: &[(&str, &str)]| upgrade_asked(&request("/", version, headers)).map(|v| v.to_str().unwrap().to_string());
        let websocket = [("connection", "Upgrade"), ("upgrade", "websocket")];
        assert_eq!(asked(Version::HTTP_11, &websocket), Some("websocket".into()));
        assert_eq!(asked(Version::HTTP_11, &[("connection", "keep-alive, UPGRADE"), ("upgrade", "websocket")]), Some("websocket".into()), "a token of the list, any case");
        assert_eq!(asked(Version::HTTP_10, &websocket), None, "HTTP/1.0 has no upgrade");
        assert_eq!(asked(Version::HTTP_11, &[("upgrade", "websocket")]), None, "Upgrade without Connection: upgrade is not a request to switch");
        assert_eq!(asked(Version::HTTP_11, &[("connection", "upgrade")]), None, "nothing to switch to");
        assert_eq!(asked(Version::HTTP_11, &[("connection", "Upgrade, HTTP2-Settings"), ("upgrade", "h2c")]), None, "h2c would take the connection past the routing by Host");
        assert_eq!(asked(Version::HTTP_11, &[("connection", "upgrade"), ("upgrade", "h2c, websocket")]), Some("websocket".into()));
    }

    #[test]
    fn refusals_answer_421_400_503_or_502_with_a_short_body() {
        let status = |r: Refusal| refusal_response(&r).status();
        assert_eq!(status(Refusal::UnknownName("x.example".into())), StatusCode::MISDIRECTED_REQUEST);
        assert_eq!(status(Refusal::NoName), StatusCode::BAD_REQUEST);
        assert_eq!(status(Refusal::NoHost), StatusCode::BAD_REQUEST);
        assert_eq!(Refusal::NoHost.key(), "no_name");
        assert_eq!(status(Refusal::BadRequest("Host appears more than once".into())), StatusCode::BAD_REQUEST);
        assert_eq!(status(Refusal::NoServerUp("default".into())), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(status(Refusal::ConnectFailed("x".into())), StatusCode::BAD_GATEWAY);
        assert_eq!(status(Refusal::ServerFailed("x".into())), StatusCode::BAD_GATEWAY);
        assert!(refusal_response(&Refusal::UnknownName("x.example".into())).body().size_hint().exact().is_some_and(|n| n < 100));
    }

    #[test]
    fn heads_are_bounded_by_hello_timeout_and_waits_and_silence_by_idle_timeout() {
        let (hello, idle) = (Duration::from_secs(5), Duration::from_secs(60));
        let activity = Activity::new();
        let accepted = activity.state().waiting_since;
        assert_eq!(activity.deadline(hello, idle), (accepted + hello, Expiry::Head), "the first head, from the accept, even before a byte");
        activity.moved(true);
        assert_eq!(activity.deadline(hello, idle), (accepted + hello, Expiry::Head), "its bytes do not extend it");
        activity.request_started();
        let moved = activity.state().moved;
        assert_eq!(activity.deadline(hello, idle), (moved + idle, Expiry::Idle), "a request in progress: silence");
        activity.response_ended();
        let ended = activity.state().waiting_since;
        assert_eq!(activity.deadline(hello, idle), (ended + idle, Expiry::Idle), "keep-alive: the wait for the next request");
        activity.moved(false);
        assert_eq!(activity.deadline(hello, idle), (ended + idle, Expiry::Idle), "a write starts no head");
        activity.moved(true);
        let started = activity.state().head_started.unwrap();
        assert_eq!(activity.deadline(hello, idle), (started + hello, Expiry::Head), "the next head, from its first byte");
        assert_eq!(activity.requests(), 1);

        let streams = Activity::new();
        streams.request_started();
        streams.request_started();
        streams.response_ended();
        streams.moved(true);
        let moved = streams.state().moved;
        assert_eq!(streams.deadline(hello, idle), (moved + idle, Expiry::Idle), "HTTP/2: one stream of two still open, its bytes start no head");
        streams.response_ended();
        let ended = streams.state().waiting_since;
        assert_eq!(streams.deadline(hello, idle), (ended + idle, Expiry::Idle), "both done: the wait for the next request");

        let tunnel = Activity::new();
        tunnel.request_started();
        tunnel.tunnel_opened();
        tunnel.response_ended();
        tunnel.moved(true);
        let moved = tunnel.state().moved;
        assert_eq!(tunnel.deadline(hello, idle), (moved + idle, Expiry::Idle), "a tunnel's bytes are no head: silence both ways bounds it");
    }
}
