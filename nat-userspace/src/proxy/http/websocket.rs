//! WebSocket over HTTP/2 (RFC 8441), as HAProxy carries it. To servers
//! spoken to in HTTP/1.1, a client's extended CONNECT (`:protocol =
//! websocket`) becomes an HTTP/1.1 opening handshake (RFC 6455 §4.1) to
//! its host's server, and the server's 101 a 200 on the client's stream,
//! whose DATA frames then carry the WebSocket's bytes. To servers spoken
//! to in HTTP/2, it goes as it came, once the server has offered the
//! extended CONNECT in its SETTINGS, and the server's 200 opens the
//! stream both ways.
//!
//! An HTTP/2 client sends no `Sec-WebSocket-Key` (RFC 8441 §5), so natd
//! makes one and checks the server's `Sec-WebSocket-Accept` against it: a
//! 101 without the right one is not a WebSocket server's (RFC 6455 §4.1,
//! the client's duty, which natd takes on for the server side).

use base64::{Engine as _, engine::general_purpose::STANDARD};
use hyper::{
    Method, Request, Response, StatusCode, Version,
    ext::Protocol,
    header::{self, HeaderName, HeaderValue},
};
use sha1::{Digest as _, Sha1};

/// RFC 6455 §1.3: what a server appends to the key before hashing it.
const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The headers of a server's 101 the client's 200 keeps (RFC 8441 §5: the
/// rest of the handshake is HTTP/1.1's own).
const ANSWERED: [&str; 2] = ["sec-websocket-protocol", "sec-websocket-extensions"];

/// What an HTTP/2 request opens with the extended CONNECT (RFC 8441 §4):
/// its `:protocol`, or None for any other request.
pub(super) fn extended_connect<B>(request: &Request<B>) -> Option<&Protocol> {
    (request.method() == Method::CONNECT && request.version() == Version::HTTP_2).then(|| request.extensions().get::<Protocol>()).flatten()
}

/// Whether natd carries `protocol` over an extended CONNECT: WebSocket only
/// (others, such as RFC 9298's connect-udp, get 501).
pub(super) fn is_websocket(protocol: &Protocol) -> bool {
    protocol.as_str().eq_ignore_ascii_case("websocket")
}

/// How a client's WebSocket over HTTP/2 reaches its server.
pub(super) enum Carried {
    /// To a server spoken to in HTTP/1.1: as the opening handshake natd
    /// makes for it.
    AsHandshake(Handshake),
    /// To a server spoken to in HTTP/2: as the client sent it (`:protocol`
    /// kept), if that server offers the extended CONNECT.
    AsStream,
}

/// One opening handshake natd makes for an HTTP/2 client.
pub(super) struct Handshake {
    key: String,
}

impl Handshake {
    /// A fresh key: 16 random bytes, base64 (RFC 6455 §4.1).
    pub(super) fn new() -> Result<Self, getrandom::Error> {
        let mut nonce = [0u8; 16];
        getrandom::fill(&mut nonce)?;
        Ok(Self { key: STANDARD.encode(nonce) })
    }

    /// The extended CONNECT, already shaped for an HTTP/1.1 server
    /// (`prepare`: origin form, Host), as the GET that asks to upgrade.
    pub(super) fn to_http1<B>(&self, request: &mut Request<B>) {
        *request.method_mut() = Method::GET;
        request.extensions_mut().remove::<Protocol>();
        let headers = request.headers_mut();
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        if let Ok(key) = HeaderValue::from_str(&self.key) {
            headers.insert(header::SEC_WEBSOCKET_KEY, key);
        }
    }

    /// Whether the server's 101 accepted this handshake's key.
    pub(super) fn accepted<B>(&self, response: &Response<B>) -> bool {
        let upgrade = response.headers().get(header::UPGRADE).and_then(|v| v.to_str().ok());
        let accept = response.headers().get(header::SEC_WEBSOCKET_ACCEPT).and_then(|v| v.to_str().ok());
        upgrade.is_some_and(|u| u.trim().eq_ignore_ascii_case("websocket")) && accept.map(str::trim) == Some(accept_for(&self.key).as_str())
    }
}

/// The client's answer to a server's 101: 200 on its stream, with the
/// subprotocol and extensions the server chose.
pub(super) fn answer<B, A>(switching: &Response<B>, body: A) -> Response<A> {
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::OK;
    for name in ANSWERED {
        let name = HeaderName::from_static(name);
        for value in switching.headers().get_all(&name) {
            response.headers_mut().append(name.clone(), value.clone());
        }
    }
    response
}

/// `Sec-WebSocket-Accept` for `key` (RFC 6455 §4.2.2).
fn accept_for(key: &str) -> String {
    let mut hash = Sha1::new();
    hash.update(key.as_bytes());
    hash.update(ACCEPT_GUID.as_bytes());
    STANDARD.encode(hash.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6455 §1.3's example.
    #[test]
    fn the_accept_is_the_rfcs() {
        assert_eq!(accept_for("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    fn connect(protocol: Option<&'static str>) -> Request<()> {
        let mut request = Request::builder().method(Method::CONNECT).version(Version::HTTP_2).uri("http://blue.example/chat").body(()).unwrap();
        if let Some(protocol) = protocol {
            request.extensions_mut().insert(Protocol::from_static(protocol));
        }
        request
    }

    #[test]
    fn only_an_http2_connect_with_a_protocol_is_extended() {
        assert_eq!(extended_connect(&connect(Some("websocket"))).map(Protocol::as_str), Some("websocket"));
        assert!(extended_connect(&connect(None)).is_none(), "a plain CONNECT");
        let mut get = connect(Some("websocket"));
        *get.method_mut() = Method::GET;
        assert!(extended_connect(&get).is_none());
        assert!(is_websocket(&Protocol::from_static("WebSocket")) && !is_websocket(&Protocol::from_static("connect-udp")));
    }

    #[test]
    fn the_handshake_asks_to_upgrade_with_a_fresh_key_and_checks_the_accept() {
        let (one, other) = (Handshake::new().unwrap(), Handshake::new().unwrap());
        assert_ne!(one.key, other.key);
        assert_eq!(STANDARD.decode(&one.key).unwrap().len(), 16);
        let mut request = connect(Some("websocket"));
        one.to_http1(&mut request);
        assert_eq!(request.method(), Method::GET);
        assert!(request.extensions().get::<Protocol>().is_none());
        let headers = request.headers();
        assert_eq!((headers["upgrade"].to_str().unwrap(), headers["connection"].to_str().unwrap()), ("websocket", "upgrade"));
        assert_eq!(headers["sec-websocket-key"].to_str().unwrap(), one.key);

        let switching = |accept: &str| {
            Response::builder().status(101).header("upgrade", "websocket").header("sec-websocket-accept", accept).header("sec-websocket-protocol", "chat").body(()).unwrap()
        };
        assert!(one.accepted(&switching(&accept_for(&one.key))));
        assert!(!one.accepted(&switching(&accept_for(&other.key))), "another key's accept");
        assert!(!one.accepted(&Response::builder().status(101).header("sec-websocket-accept", accept_for(&one.key)).body(()).unwrap()), "no Upgrade: websocket");

        let answered = answer(&switching(&accept_for(&one.key)), ());
        assert_eq!(answered.status(), StatusCode::OK);
        assert_eq!(answered.headers()["sec-websocket-protocol"], "chat");
        assert!(answered.headers().get("sec-websocket-accept").is_none() && answered.headers().get("upgrade").is_none());
    }
}
