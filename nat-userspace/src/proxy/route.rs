//! A proxy's routing: the name table from its `names`, the server set of
//! each name and of the default, and the servers to try for a connection.
//! Shared by the connections of one proxy (atomics, no lock on the way of a
//! connection but the one a failure's words take).

use std::{
    fmt,
    net::SocketAddrV4,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering},
    },
};

use crate::{
    config::Proxy,
    nat::health::ServerStatus,
    proxy::names::NameTable,
};

/// Why a connection was closed without being relayed. Each is counted and
/// logged at debug.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// `max_connections` were open already.
    MaxConnections,
    /// No whole ClientHello within `hello_timeout`.
    HelloTimeout,
    /// The client closed (or reset) before its ClientHello was whole.
    ClientClosed,
    /// It looked like TLS but was no valid ClientHello.
    BadHello(String),
    /// Not TLS, and no default to send it to.
    NotTls,
    /// A name not in `names`, and no default.
    UnknownName(String),
    /// A ClientHello without SNI (http: an HTTP/1.0 request without Host),
    /// and no default.
    NoName,
    /// http: an HTTP/1.1 request without Host (RFC 9112 §3.2: always
    /// 400). Counted as `no_name`.
    NoHost,
    /// Every server of the set is down (or not checked yet).
    NoServerUp(String),
    /// Every server up was tried and none accepted the connection.
    ConnectFailed(String),
    /// natd's own side failed (the client's socket, the PROXY header).
    Local(String),
    /// http: a request natd cannot route (Host twice, not text, a head
    /// hyper could not parse); answered 400.
    BadRequest(String),
    /// http: the server took the connection but failed the request (closed
    /// or reset before its response head); answered 502.
    ServerFailed(String),
}

impl Refusal {
    /// The keys `natd proxies` counts refusals under, in `index` order.
    pub const KEYS: [&'static str; 12] = [
        "max_connections",
        "hello_timeout",
        "client_closed",
        "bad_hello",
        "not_tls",
        "unknown_name",
        "no_name",
        "no_server_up",
        "connect_failed",
        "local_error",
        "bad_request",
        "server_failed",
    ];

    pub fn index(&self) -> usize {
        match self {
            Refusal::MaxConnections => 0,
            Refusal::HelloTimeout => 1,
            Refusal::ClientClosed => 2,
            Refusal::BadHello(_) => 3,
            Refusal::NotTls => 4,
            Refusal::UnknownName(_) => 5,
            Refusal::NoName | Refusal::NoHost => 6,
            Refusal::NoServerUp(_) => 7,
            Refusal::ConnectFailed(_) => 8,
            Refusal::Local(_) => 9,
            Refusal::BadRequest(_) => 10,
            Refusal::ServerFailed(_) => 11,
        }
    }

    pub fn key(&self) -> &'static str {
        Self::KEYS[self.index()]
    }

    /// Whether the client is told with a TLS alert (unrecognized_name, RFC
    /// 6066 §3) before the close: it spoke TLS and asked for a name this
    /// proxy does not serve. Every other refusal is a plain close, as
    /// HAProxy and nginx stream do.
    pub fn alerts(&self) -> bool {
        matches!(self, Refusal::UnknownName(_) | Refusal::NoName)
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::MaxConnections => write!(f, "max_connections reached"),
            Refusal::HelloTimeout => write!(f, "no whole ClientHello (http: request head) within hello_timeout"),
            Refusal::ClientClosed => write!(f, "the client closed before its ClientHello (http: first request head) was whole"),
            Refusal::BadHello(why) => write!(f, "not a valid ClientHello: {why}"),
            Refusal::NotTls => write!(f, "not TLS, and no default"),
            Refusal::UnknownName(name) => write!(f, "name {name:?} is not in names, and no default"),
            Refusal::NoName => write!(f, "no SNI in the ClientHello (http: no Host in an HTTP/1.0 request), and no default"),
            Refusal::NoHost => write!(f, "an HTTP/1.1 request without Host"),
            Refusal::NoServerUp(set) => write!(f, "no server of {set} is up"),
            Refusal::ConnectFailed(why) => write!(f, "no server accepted: {why}"),
            Refusal::Local(why) => write!(f, "natd could not relay it: {why}"),
            Refusal::BadRequest(why) => write!(f, "a bad request: {why}"),
            Refusal::ServerFailed(why) => write!(f, "the server failed the request: {why}"),
        }
    }
}

/// The health of a server as `route` reads it (one byte, so connections
/// read it without a lock).
const UNKNOWN: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

/// One server of a proxy (a server in several sets is one `Backend`).
#[derive(Debug)]
pub struct Backend {
    pub addr: SocketAddrV4,
    /// Whether health checks run for it: it is in a set of several.
    pub checked: bool,
    status: AtomicU8,
    pub active: AtomicU64,
    pub total: AtomicU64,
    pub connect_failures: AtomicU64,
    /// The last failed check or connection, in words.
    pub last_failure: Mutex<Option<String>>,
}

impl Backend {
    fn new(addr: SocketAddrV4, checked: bool) -> Self {
        Self {
            addr,
            checked,
            // A server not checked is up: it is alone in its sets, and a
            // connection to it fails on its own when it is not.
            status: AtomicU8::new(if checked { UNKNOWN } else { UP }),
            active: AtomicU64::new(0),
            total: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            last_failure: Mutex::new(None),
        }
    }

    pub fn is_up(&self) -> bool {
        self.status.load(Ordering::Relaxed) == UP
    }

    /// From the health checks (`nat::health`): only Up takes connections,
    /// as a forward's server.
    pub fn set_status(&self, status: ServerStatus) {
        let value = if status.accepts_new_flows() {
            UP
        } else if status == ServerStatus::Unknown {
            UNKNOWN
        } else {
            DOWN
        };
        self.status.store(value, Ordering::Relaxed);
    }

    /// "up", "down", "unknown" (not checked yet), or "up (not checked)".
    pub fn health_text(&self) -> &'static str {
        match (self.checked, self.status.load(Ordering::Relaxed)) {
            (false, _) => "up (not checked)",
            (true, UP) => "up",
            (true, DOWN) => "down",
            _ => "unknown",
        }
    }

    pub fn note_failure(&self, why: String) {
        if let Ok(mut last) = self.last_failure.lock() {
            *last = Some(why);
        }
    }
}

/// The servers of one name (or of the default).
#[derive(Debug)]
pub struct ServerSet {
    /// The pattern, or "default".
    pub label: String,
    /// Indexes into `Routes::backends`.
    pub members: Vec<usize>,
    /// Round-robin position: where the next connection starts looking.
    next: AtomicUsize,
}

/// Where one proxy sends a connection.
#[derive(Debug)]
pub struct Routes {
    table: NameTable<usize>,
    pub sets: Vec<ServerSet>,
    /// The default's index in `sets`.
    default: Option<usize>,
    /// Shared with the routes a reload replaces, for the servers that stay.
    pub backends: Vec<Arc<Backend>>,
}

impl Routes {
    pub fn new(proxy: &Proxy) -> Self {
        Self::build(proxy, None)
    }

    /// The routes of a reloaded `proxy`: a server of `old` that stays, and
    /// stays checked or not, keeps its health and counters.
    pub fn carried_over(proxy: &Proxy, old: &Routes) -> Self {
        Self::build(proxy, Some(old))
    }

    fn build(proxy: &Proxy, old: Option<&Routes>) -> Self {
        let mut backends: Vec<Backend> = Vec::new();
        let mut routes = Routes { table: NameTable::new(), sets: Vec::new(), default: None, backends: Vec::new() };
        for (label, servers) in proxy.server_sets() {
            let mut members = Vec::with_capacity(servers.len());
            for server in servers {
                let index = match backends.iter().position(|b| b.addr == *server) {
                    Some(index) => index,
                    None => {
                        backends.push(Backend::new(*server, false));
                        backends.len() - 1
                    }
                };
                members.push(index);
            }
            if members.len() > 1 {
                for &m in &members {
                    backends[m] = Backend::new(backends[m].addr, true);
                }
            }
            let set = routes.sets.len();
            routes.sets.push(ServerSet { label: label.to_string(), members, next: AtomicUsize::new(0) });
            // server_sets() yields the routes first, then the default.
            if set == proxy.routes.len() {
                routes.default = Some(set);
            } else {
                // Validated patterns (config::load): inserting cannot fail.
                let _ = routes.table.insert(label, set);
            }
        }
        let kept = |b: &Backend| old.and_then(|old| old.backends.iter().find(|o| o.addr == b.addr && o.checked == b.checked)).map(Arc::clone);
        routes.backends = backends.into_iter().map(|b| kept(&b).unwrap_or_else(|| Arc::new(b))).collect();
        routes
    }

    /// The set for a ClientHello's server name (None: it sent none): an
    /// exact name, else the one-label wildcard, else the default.
    pub fn for_name(&self, sni: Option<&str>) -> Result<usize, Refusal> {
        let found = sni.and_then(|name| self.table.get(name).copied());
        found.or(self.default).ok_or_else(|| match sni {
            Some(name) => Refusal::UnknownName(name.to_string()),
            None => Refusal::NoName,
        })
    }

    /// The set for a client whose first bytes are not TLS: the default's.
    pub fn for_non_tls(&self) -> Result<usize, Refusal> {
        self.default.ok_or(Refusal::NotTls)
    }

    /// The servers of `set` that are up, in the order to try them: round
    /// robin over the members, so connections spread evenly, and a server
    /// that fails to connect is followed by the others.
    pub fn candidates(&self, set: usize) -> Result<Vec<&Backend>, Refusal> {
        let set = &self.sets[set];
        let n = set.members.len();
        let start = set.next.fetch_add(1, Ordering::Relaxed);
        let up: Vec<&Backend> = (0..n).map(|k| self.backends[set.members[(start + k) % n]].as_ref()).filter(|b| b.is_up()).collect();
        if up.is_empty() { Err(Refusal::NoServerUp(set.label.clone())) } else { Ok(up) }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::config::{HealthCheck, HealthKind, ProxyKind, ProxyRoute};

    fn server(last: u8) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(192, 168, 1, last), 443)
    }

    fn proxy(routes: &[(&str, &[u8])], default: Option<&[u8]>) -> Proxy {
        Proxy {
            name: "tls/443".into(),
            kind: ProxyKind::Tls,
            port: 443,
            external_ip: None,
            routes: routes.iter().map(|(p, s)| ProxyRoute { pattern: p.to_string(), servers: s.iter().map(|l| server(*l)).collect() }).collect(),
            default: default.map(|d| d.iter().map(|l| server(*l)).collect()),
            proxy_protocol: None,
            server_protocol: Default::default(),
            hello_timeout: std::time::Duration::from_secs(5),
            connect_timeout: std::time::Duration::from_secs(5),
            idle_timeout: std::time::Duration::from_secs(600),
            max_connections: 10,
            quic: false,
            health: HealthCheck::of_kind(HealthKind::None),
        }
    }

    fn first(routes: &Routes, set: usize) -> SocketAddrV4 {
        routes.candidates(set).unwrap()[0].addr
    }

    #[test]
    fn names_route_exact_first_then_one_label_wildcard_then_default() {
        let routes = Routes::new(&proxy(&[("blue.example", &[10]), ("*.green.example", &[12]), ("a.green.example", &[13])], Some(&[14])));
        let to = |name: Option<&str>| first(&routes, routes.for_name(name).unwrap());
        assert_eq!(to(Some("blue.example")), server(10));
        assert_eq!(to(Some("BLUE.Example.")), server(10), "case and one trailing dot are ignored");
        assert_eq!(to(Some("x.green.example")), server(12));
        assert_eq!(to(Some("a.green.example")), server(13), "an exact name beats the wildcard");
        assert_eq!(to(Some("x.y.green.example")), server(14), "a wildcard stands for one label only");
        assert_eq!(to(Some("green.example")), server(14), "nor for none");
        assert_eq!(to(Some("red.example")), server(14));
        assert_eq!(to(None), server(14));
        assert_eq!(first(&routes, routes.for_non_tls().unwrap()), server(14));
    }

    #[test]
    fn without_a_default_unknown_names_no_name_and_non_tls_are_refused() {
        let routes = Routes::new(&proxy(&[("blue.example", &[10])], None));
        assert_eq!(routes.for_name(Some("red.example")), Err(Refusal::UnknownName("red.example".into())));
        assert_eq!(routes.for_name(None), Err(Refusal::NoName));
        assert_eq!(routes.for_non_tls(), Err(Refusal::NotTls));
        assert!(Refusal::NoName.alerts() && Refusal::UnknownName(String::new()).alerts());
        assert!(!Refusal::NotTls.alerts() && !Refusal::HelloTimeout.alerts());
    }

    #[test]
    fn several_servers_are_checked_and_taken_in_turn_among_those_up() {
        let routes = Routes::new(&proxy(&[("blue.example", &[10]), ("*.green.example", &[12, 13, 10])], None));
        let green = routes.for_name(Some("a.green.example")).unwrap();
        assert!(routes.backends.iter().all(|b| b.checked), "10 is in a set of several too: {:?}", routes.backends);
        assert_eq!(routes.backends.len(), 3, "a server in two sets is one backend");
        assert_eq!(routes.candidates(green).err(), Some(Refusal::NoServerUp("*.green.example".into())), "not checked yet: none up");
        for b in &routes.backends {
            b.set_status(ServerStatus::Up);
        }
        let picks: Vec<SocketAddrV4> = (0..6).map(|_| first(&routes, green)).collect();
        let mut round: Vec<SocketAddrV4> = picks[..3].to_vec();
        round.sort();
        assert_eq!(round, [server(10), server(12), server(13)], "each once a round: {picks:?}");
        assert_eq!(picks[..3], picks[3..], "in the same order: {picks:?}");
        let thirteen = routes.backends.iter().find(|b| b.addr == server(13)).unwrap();
        thirteen.set_status(ServerStatus::Down);
        let order: Vec<SocketAddrV4> = routes.candidates(green).unwrap().iter().map(|b| b.addr).collect();
        assert!(!order.contains(&server(13)) && order.len() == 2, "a down server is skipped: {order:?}");
        assert_eq!(thirteen.health_text(), "down");
    }

    #[test]
    fn a_reload_keeps_the_health_and_counters_of_the_servers_that_stay() {
        let old = Routes::new(&proxy(&[("*.green.example", &[12, 13])], None));
        for b in &old.backends {
            b.set_status(ServerStatus::Up);
            b.total.store(5, Ordering::Relaxed);
        }
        let new = Routes::carried_over(&proxy(&[("*.green.example", &[12, 14]), ("blue.example", &[13])], None), &old);
        let twelve = new.backends.iter().find(|b| b.addr == server(12)).unwrap();
        assert!(twelve.is_up() && twelve.total.load(Ordering::Relaxed) == 5, "12 stays in a checked set: kept");
        let fourteen = new.backends.iter().find(|b| b.addr == server(14)).unwrap();
        assert_eq!(fourteen.health_text(), "unknown", "a new server waits for its first check");
        let thirteen = new.backends.iter().find(|b| b.addr == server(13)).unwrap();
        assert_eq!((thirteen.health_text(), thirteen.total.load(Ordering::Relaxed)), ("up (not checked)", 0), "alone now: not checked, a new backend");
        assert_eq!(first(&new, new.for_name(Some("blue.example")).unwrap()), server(13));
    }

    #[test]
    fn a_lone_server_is_not_checked_and_is_up() {
        let routes = Routes::new(&proxy(&[("blue.example", &[10])], Some(&[14])));
        assert!(routes.backends.iter().all(|b| !b.checked && b.is_up()));
        assert_eq!(routes.backends[0].health_text(), "up (not checked)");
    }
}
