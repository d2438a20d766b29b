//! What natd does to the heads it passes on, and its own answers: the
//! host a request is routed by, the request as its server gets it
//! (hop-by-hop headers, `Forwarded`, `X-Forwarded-For`, HTTP/2 to
//! HTTP/1.1), the protocols an upgrade asks for, and the refusals.

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    HeaderMap, Request, Response, StatusCode, Uri, Version,
    header::{self, HeaderName, HeaderValue},
};

use crate::{config::ServerProtocol, proxy::route::Refusal};

/// The comma-separated elements of every `name` field (RFC 9110 §5.6.1),
/// trimmed, empty ones left out; a field that is not text has none.
fn tokens(headers: &HeaderMap, name: HeaderName) -> impl Iterator<Item = &str> {
    headers.get_all(name).into_iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).map(str::trim).filter(|t| !t.is_empty())
}

/// The protocols a request asks to switch to (RFC 9110 §7.8), as its
/// `Upgrade` lists them, `h2c` left out: None when it asks for none, or
/// only for `h2c`, or is not HTTP/1.1 (HTTP/1.0 has no upgrade).
pub(super) fn upgrade_asked<B>(request: &Request<B>) -> Option<HeaderValue> {
    if request.version() != Version::HTTP_11 {
        return None;
    }
    let headers = request.headers();
    if !tokens(headers, header::CONNECTION).any(|token| token.eq_ignore_ascii_case("upgrade")) {
        return None;
    }
    let protocols: Vec<&str> = tokens(headers, header::UPGRADE).filter(|p| !p.eq_ignore_ascii_case("h2c")).collect();
    if protocols.is_empty() {
        return None;
    }
    HeaderValue::from_str(&protocols.join(", ")).ok()
}

/// The host a request names, as written, port dropped: the authority of
/// an absolute-form target, else the Host header. None: neither (or an
/// empty Host).
pub(super) fn request_host<B>(request: &Request<B>) -> Result<Option<String>, Refusal> {
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

pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = tokens(headers, header::CONNECTION).filter_map(|token| HeaderName::from_bytes(token.as_bytes()).ok()).collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// The request as its server gets it, spoken `to` it: hop-by-hop headers
/// dropped, and the client named in `X-Forwarded-For` (appended) and
/// `Forwarded` (a new element, RFC 7239: `host` is the Host as received).
/// - HTTP/1.1: HTTP/1.1 for an HTTP/2 request, its cookie fields joined
///   into one (RFC 9113 §8.2.3); origin-form target, Host set to what it
///   was routed by.
/// - HTTP/2: the target in absolute form (`:scheme` and `:authority` come
///   from it), no Host; the client's `TE: trailers` kept, the one TE an
///   HTTP/2 server takes (RFC 9113 §8.2.2) and one gRPC servers want.
pub(super) fn prepare<B>(request: &mut Request<B>, peer: SocketAddr, to: ServerProtocol) {
    let takes_trailers = tokens(request.headers(), header::TE).any(|t| t.eq_ignore_ascii_case("trailers"));
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
    if to == ServerProtocol::Http2 {
        for_http2(request, takes_trailers);
    }
}

/// An HTTP/1.1-shaped request (`prepare`) as an HTTP/2 server gets it.
fn for_http2<B>(request: &mut Request<B>, takes_trailers: bool) {
    *request.version_mut() = Version::HTTP_2;
    if let Some(host) = request.headers_mut().remove(header::HOST)
        && let Ok(host) = host.to_str()
    {
        let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
        if let Ok(uri) = format!("http://{host}{path}").parse::<Uri>() {
            *request.uri_mut() = uri;
        }
    }
    if takes_trailers {
        request.headers_mut().insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// An IPv4-mapped IPv6 peer as the IPv4 address it is.
pub(super) fn client_ip(peer: SocketAddr) -> IpAddr {
    match peer.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// RFC 7239 §6: an IPv6 node is bracketed, and so quoted.
pub(super) fn forwarded_node(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("\"[{v6}]\""),
    }
}

/// A token as is, anything else as a quoted-string (RFC 7239 §4).
pub(super) fn forwarded_value(value: &str) -> String {
    let token = !value.is_empty() && value.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if token { value.to_string() } else { format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\"")) }
}

/// Sets `name` to its existing values joined, then `value`: one field, so
/// a server that reads only the first line still sees the whole list.
pub(super) fn append(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    let mut parts: Vec<String> = headers.get_all(&name).iter().filter_map(|v| v.to_str().ok()).map(str::to_string).collect();
    parts.push(value.to_string());
    if let Ok(joined) = HeaderValue::from_str(&parts.join(", ")) {
        headers.insert(name, joined);
    }
}

/// 501 (RFC 9110 §15.6.2) for a request natd understands but does not
/// carry, such as an extended CONNECT for another protocol than WebSocket.
pub(super) fn not_implemented(what: &str) -> Response<Full<Bytes>> {
    plain(StatusCode::NOT_IMPLEMENTED, format!("{what} is not carried here\n"))
}

/// natd's own answer to a request it does not pass on.
pub(super) fn refusal_response(refusal: &Refusal) -> Response<Full<Bytes>> {
    let (status, body) = match refusal {
        Refusal::UnknownName(host) => (StatusCode::MISDIRECTED_REQUEST, format!("no site {host:?} here\n")),
        Refusal::NoName | Refusal::NoHost => (StatusCode::BAD_REQUEST, "the request names no host\n".to_string()),
        Refusal::BadRequest(why) => (StatusCode::BAD_REQUEST, format!("{why}\n")),
        Refusal::NoServerUp(_) => (StatusCode::SERVICE_UNAVAILABLE, "no server is up for this site\n".to_string()),
        _ => (StatusCode::BAD_GATEWAY, "the site's server did not answer\n".to_string()),
    };
    plain(status, body)
}

/// A short plain-text answer of natd's own.
fn plain(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

#[cfg(test)]
mod tests {
    use hyper::body::Body as _;

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
        prepare(&mut fresh, peer, ServerProtocol::Http1);
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
        prepare(&mut relayed, "[::ffff:198.51.100.7]:1".parse().unwrap(), ServerProtocol::Http1);
        let headers = relayed.headers();
        assert_eq!(headers["x-forwarded-for"], "192.0.2.1, 192.0.2.2, 192.0.2.3, 198.51.100.7", "appended, a mapped address as IPv4");
        assert_eq!(headers["forwarded"], "for=192.0.2.1, for=198.51.100.7;host=\"red.example:8080\";proto=http", "host as received, quoted for its ':'");
        assert_eq!(relayed.uri(), "/p", "origin form to the server");
        assert_eq!(headers["host"], "red.example:8080");

        let mut h2 = request("http://blue.example/c", Version::HTTP_2, &[("cookie", "a=1"), ("cookie", "b=2")]);
        prepare(&mut h2, peer, ServerProtocol::Http1);
        assert_eq!(h2.version(), Version::HTTP_11, "servers are spoken to in HTTP/1.1");
        assert_eq!((h2.uri().to_string(), &h2.headers()["host"]), ("/c".to_string(), &HeaderValue::from_static("blue.example")), ":authority becomes Host");
        assert_eq!(h2.headers().get_all("cookie").iter().collect::<Vec<_>>(), ["a=1; b=2"], "RFC 9113 §8.2.3: one cookie field");

        let mut v6 = request("/", Version::HTTP_10, &[]);
        prepare(&mut v6, "[2001:db8::7]:1".parse().unwrap(), ServerProtocol::Http1);
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
}
