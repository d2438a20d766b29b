//! natd's connections to an http proxy's servers: HTTP/1.1 or HTTP/2
//! (`server_protocol`), a try at a request on one, what it takes to send
//! a request again, and the count of a server's open connections.

use std::{
    net::SocketAddrV4,
    sync::{Arc, atomic::Ordering},
};

use http_body_util::{Either, Empty};
use hyper::{
    HeaderMap, Request, Response, Uri, Version,
    body::{Body as _, Incoming},
    client::conn::{TrySendError, http1 as client_http1, http2 as client_http2},
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
    Http2(client_http2::SendRequest<Outgoing>),
}

impl ServerSender {
    pub(super) async fn ready(&mut self) -> hyper::Result<()> {
        match self {
            Self::Http1(sender) => sender.ready().await,
            Self::Http2(sender) => sender.ready().await,
        }
    }

    pub(super) fn speaks(&self) -> ServerProtocol {
        match self {
            Self::Http1(_) => ServerProtocol::Http1,
            Self::Http2(_) => ServerProtocol::Http2,
        }
    }

    /// Another handle on the same connection, for a concurrent request:
    /// HTTP/2 only (an HTTP/1.1 connection is taken, not shared).
    pub(super) fn shared(&self) -> Option<Self> {
        match self {
            Self::Http1(_) => None,
            Self::Http2(sender) => Some(Self::Http2(sender.clone())),
        }
    }

    pub(super) async fn try_send_request(&mut self, request: Request<Outgoing>) -> Result<Response<Incoming>, TrySendError<Request<Outgoing>>> {
        match self {
            Self::Http1(sender) => sender.try_send_request(request).await,
            Self::Http2(sender) => sender.try_send_request(request).await,
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
