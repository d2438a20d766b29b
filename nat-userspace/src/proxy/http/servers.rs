//! natd's connections to an http proxy's servers: HTTP/1.1 or HTTP/2
//! (`server_protocol`), a try at a request on one, what it takes to send
//! a request again, and the count of a server's open connections.

use std::{
    net::SocketAddrV4,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use http_body_util::{Either, Empty};
use hyper::{
    HeaderMap, Request, Response, Uri, Version,
    body::{Body as _, Incoming},
    client::conn::{TrySendError, http1 as client_http1, http2 as client_http2},
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{
    net::TcpStream,
    sync::{Notify, watch},
    time::{Instant, MissedTickBehavior, interval, timeout},
};

use super::Outgoing;
use crate::{
    config::ServerProtocol,
    proxy::{route::Backend, service::Service},
};

/// A connection to a server, as `server_protocol` says: HTTP/1.1, a
/// request at a time, or HTTP/2, every stream of the client at once.
pub(super) enum ServerSender {
    Http1(client_http1::SendRequest<Outgoing>),
    Http2(client_http2::SendRequest<Outgoing>, ConnectOffer),
}

impl ServerSender {
    pub(super) async fn ready(&mut self) -> hyper::Result<()> {
        match self {
            Self::Http1(sender) => sender.ready().await,
            Self::Http2(sender, _) => sender.ready().await,
        }
    }

    pub(super) fn speaks(&self) -> ServerProtocol {
        match self {
            Self::Http1(_) => ServerProtocol::Http1,
            Self::Http2(..) => ServerProtocol::Http2,
        }
    }

    /// Another handle on the same connection, for a concurrent request:
    /// HTTP/2 only (an HTTP/1.1 connection is taken, not shared).
    pub(super) fn shared(&self) -> Option<Self> {
        match self {
            Self::Http1(_) => None,
            Self::Http2(sender, offer) => Some(Self::Http2(sender.clone(), offer.clone())),
        }
    }

    pub(super) async fn try_send_request(&mut self, request: Request<Outgoing>) -> Result<Response<Incoming>, TrySendError<Request<Outgoing>>> {
        match self {
            Self::Http1(sender) => sender.try_send_request(request).await,
            Self::Http2(sender, _) => sender.try_send_request(request).await,
        }
    }

    /// Whether the server takes WebSocket over HTTP/2 as it comes (RFC 8441
    /// §3): an HTTP/2 server that offered the extended CONNECT, awaited at
    /// most `within` (see `ConnectOffer::offered`).
    pub(super) async fn takes_extended_connect(&self, within: Duration) -> bool {
        match self {
            Self::Http1(_) => false,
            Self::Http2(_, offer) => offer.offered(within).await,
        }
    }
}

/// Whether an HTTP/2 server has offered the extended CONNECT
/// (`SETTINGS_ENABLE_CONNECT_PROTOCOL`, RFC 8441 §3): natd may send
/// `:protocol` only then (§4). Only the connection's driver sees the
/// server's SETTINGS (`Http2Driver`); this asks it.
#[derive(Clone)]
pub(super) struct ConnectOffer {
    /// None until the driver knows: Some(true) once the server offered it,
    /// Some(false) if it had not by `connect_timeout` after the handshake.
    known: watch::Receiver<Option<bool>>,
    asked: Arc<Notify>,
}

impl ConnectOffer {
    /// Whether the server offered it: at once if that is known, else once
    /// the driver, asked, has seen it or given up (at most `within`). A
    /// connection that ends meanwhile has not.
    async fn offered(&self, within: Duration) -> bool {
        if let Some(known) = *self.known.borrow() {
            return known;
        }
        self.asked.notify_one();
        let mut known = self.known.clone();
        match timeout(within, known.wait_for(Option::is_some)).await {
            Ok(Ok(known)) => *known == Some(true),
            _ => false,
        }
    }
}

/// How often the driver looks at the server's SETTINGS while asked.
const LOOK_EVERY: Duration = Duration::from_millis(2);

/// An HTTP/2 server connection: what sends on it, and its driver, to be
/// run to the connection's end (`drive`).
pub(super) async fn http2_handshake(stream: TcpStream) -> hyper::Result<(ServerSender, Http2Driver)> {
    let (sender, connection) = client_http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
    let (known, offer) = watch::channel(None);
    let asked = Arc::new(Notify::new());
    Ok((ServerSender::Http2(sender, ConnectOffer { known: offer, asked: Arc::clone(&asked) }), Http2Driver { connection, known, asked }))
}

/// What runs an HTTP/2 server connection: hyper's driver, which alone
/// answers whether the server offered the extended CONNECT.
pub(super) struct Http2Driver {
    connection: client_http2::Connection<TokioIo<TcpStream>, Outgoing, TokioExecutor>,
    known: watch::Sender<Option<bool>>,
    asked: Arc<Notify>,
}

impl Http2Driver {
    /// Runs the connection until it ends. hyper reads the frames in a task
    /// of its own, and nothing wakes this one when the server's SETTINGS
    /// come: once asked, it looks every `LOOK_EVERY` until the server has
    /// offered the extended CONNECT or `settle` since the handshake has
    /// passed (the server's SETTINGS are its first frame; an offer in a
    /// later one is not looked for).
    pub(super) async fn drive(self, settle: Duration) -> hyper::Result<()> {
        let Self { connection, known, asked } = self;
        let settled_by = Instant::now() + settle;
        let mut connection = std::pin::pin!(connection);
        let mut looking = false;
        let mut look = interval(LOOK_EVERY);
        look.set_missed_tick_behavior(MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                ended = connection.as_mut() => return ended,
                () = asked.notified(), if known.borrow().is_none() => looking = true,
                _ = look.tick(), if looking => {
                    if connection.is_extended_connect_protocol_enabled() {
                        known.send_replace(Some(true));
                        looking = false;
                    } else if Instant::now() >= settled_by {
                        known.send_replace(Some(false));
                        looking = false;
                    }
                }
            }
        }
    }
}

/// Whether `Conn::sender` may take a connection this client opened before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pool {
    Reuse,
    /// A new connection: the request is being sent again.
    New,
}

/// A connection to a server, and whether it served this client before.
pub(super) struct Sender {
    pub(super) sender: ServerSender,
    pub(super) reused: bool,
}

/// One try at a request: the connection and the server it goes to.
pub(super) struct Attempt<'a> {
    pub(super) sender: Sender,
    pub(super) backend: &'a Backend,
}

impl Attempt<'_> {
    pub(super) fn sender_was_reused(&self) -> bool {
        self.sender.reused
    }

    /// Sends `request` (counted in its server's total). Err: the error, and
    /// the request when hyper gives it back, nothing of it sent.
    pub(super) async fn send(&mut self, request: Request<Outgoing>) -> Result<Response<Incoming>, (hyper::Error, Option<Request<Outgoing>>)> {
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
pub(super) struct Again(Option<(hyper::Method, Uri, Version, HeaderMap)>);

impl Again {
    /// The request as it goes to the server, and what sending it again takes.
    pub(super) fn keep(request: Request<Incoming>) -> (Request<Outgoing>, Again) {
        let (parts, body) = request.into_parts();
        if !(body.is_end_stream() && parts.method.is_idempotent()) {
            return (Request::from_parts(parts, Either::Left(body)), Again(None));
        }
        let again = Again(Some((parts.method.clone(), parts.uri.clone(), parts.version, parts.headers.clone())));
        (Request::from_parts(parts, Either::Right(Empty::new())), again)
    }

    pub(super) fn request(self) -> Option<Request<Outgoing>> {
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
pub(super) struct ServerConnection {
    pub(super) service: Arc<Service>,
    pub(super) addr: SocketAddrV4,
}

impl ServerConnection {
    /// A new connection to `backend`, counted in its `active` from here.
    pub(super) fn counted(service: &Arc<Service>, backend: &Backend) -> Self {
        backend.active.fetch_add(1, Ordering::Relaxed);
        Self { service: Arc::clone(service), addr: backend.addr }
    }
}

impl Drop for ServerConnection {
    fn drop(&mut self) {
        if let Some(backend) = self.service.current().routes.backends.iter().find(|b| b.addr == self.addr) {
            backend.active.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::test_support::rt;

    fn unknown_offer() -> (watch::Sender<Option<bool>>, Arc<Notify>, ConnectOffer) {
        let (known, receiver) = watch::channel(None);
        let asked = Arc::new(Notify::new());
        (known, Arc::clone(&asked), ConnectOffer { known: receiver, asked })
    }

    /// Not yet known: the driver is asked and its answer awaited; once
    /// known, answered at once; never known: false after `within`.
    #[test]
    fn an_offer_is_asked_of_the_driver_then_known() {
        rt().block_on(async {
            let (known, asked, offer) = unknown_offer();
            let driver = tokio::spawn(async move {
                asked.notified().await;
                known.send_replace(Some(true));
                known
            });
            assert!(offer.offered(Duration::from_secs(5)).await, "the driver's answer");
            let _known = driver.await.unwrap();
            let started = Instant::now();
            assert!(offer.offered(Duration::from_secs(5)).await);
            assert!(started.elapsed() < Duration::from_millis(100), "known, so not asked again");

            let (_known, _asked, silent) = unknown_offer();
            let started = Instant::now();
            assert!(!silent.offered(Duration::from_millis(200)).await, "no answer: not offered");
            assert!(started.elapsed() >= Duration::from_millis(200));

            let (known, _asked, ended) = unknown_offer();
            drop(known);
            assert!(!ended.offered(Duration::from_secs(5)).await, "a connection that ended has not offered it");
        });
    }
}
