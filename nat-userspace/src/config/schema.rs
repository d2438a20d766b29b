//! What natd's settings are: the types, their defaults, and every key a
//! config file may hold. Reading and validating them is `load`'s job,
//! checking them against the machine `machine`'s.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    time::Duration,
};

use nat_common::{CLOCK_TICK_NS, Prefix, proto, sctp_chunks, tcp_flags};

pub const DEFAULT_PORT_RANGE: (u16, u16) = (20000, 32767);
/// How long a freed external port stays out of the pool: longer than a remote
/// peer's TIME_WAIT (2 MSL, 60 s on Linux), so a new flow on the same port is
/// not taken for the old connection's stray segments.
pub const DEFAULT_PORT_HOLD: Duration = Duration::from_secs(120);
/// RFC 6888 REQ-4 asks for a default limit: a third of the default range per
/// protocol, so one host (a torrent client, a scanner) cannot take the ports
/// every other host needs.
pub const DEFAULT_PORTS_PER_HOST: u32 = 4096;

/// The levels `log_level` takes, most verbose first.
pub const LOG_LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error"];

/// The level natd logs at unless told otherwise.
pub const DEFAULT_LOG_LEVEL: &str = "info";

/// Every key a config file may hold, with its meaning, for errors and docs.
pub const KEYS: &[(&str, &str)] = &[
    ("lan", "inside interface name"),
    ("wan", "outside interface name"),
    ("external_ip", "public IPv4 address, or a list of up to 8 (default: the WAN interface's first address)"),
    ("port_range", "external ports to allocate, \"LO-HI\""),
    ("port_parity", "true: an external port has the inside port's parity (RFC 4787 REQ-4)"),
    ("port_class", "true: an inside port below 1024 gets one from low_port_range (RFC 4787 REQ-3a)"),
    ("low_port_range", "external ports below 1024 for inside ports below 1024, \"LO-HI\""),
    ("xdp_mode", "\"native\" or \"generic\""),
    ("partial_checksums", "\"auto\": frames are tested for a partial checksum (TX offload) but on a NIC's own interface in native mode; \"test\": every frame is (default: auto)"),
    ("port_hold", "seconds a freed external port waits before reuse"),
    ("ports_per_host", "external ports of one protocol one inside address may hold, 0 for no limit"),
    ("max_sessions", "sessions the datapath holds at once, 1024-1048576 (default 1048576): its session tables are sized for them, and a table near the sessions alive is faster than one sized for many more"),
    ("log_mappings", "true: log each mapping made and removed (inside and external endpoints, never destinations)"),
    ("on_interface_loss", "\"exit\": natd stops with an error when its LAN or WAN interface is deleted; \"wait\": it keeps its sessions and re-attaches when an interface of that name is back (default: exit)"),
    ("mapping_log", "where log_mappings writes: \"stderr\" (natd's log), an absolute file path (compact lines, appended), \"syslog\" or \"syslog:/SOCKET\" (compact lines)"),
    ("log_level", "\"trace\", \"debug\", \"info\", \"warn\" or \"error\""),
    ("inside_prefixes", "routed inside networks behind an inside router, [\"A.B.C.D/LEN\", ...], besides the LAN interface's own prefixes"),
    ("wan_drop_sources", "prefixes whose packets the WAN side drops, [\"A.B.C.D/LEN\", ...] (bogons, known attackers)"),
    ("pin_root", "a bpffs where the datapath's maps and links are pinned, so that it serves on while natd stops or restarts (default: /sys/fs/bpf, or /run/natd/bpffs, which natd mounts if need be)"),
    ("metrics", "\"ADDR:PORT\" where natd serves Prometheus metrics at /metrics, e.g. \"10.0.0.1:9469\" (default: off)"),
    ("timeouts.udp", "UDP idle timeout, seconds"),
    ("timeouts.icmp", "ICMP echo idle timeout, seconds"),
    ("timeouts.tcp_established", "TCP established idle timeout, seconds"),
    ("timeouts.tcp_opening", "TCP idle timeout before the handshake completes, seconds"),
    ("timeouts.tcp_closing", "TCP idle timeout after FIN or RST, seconds"),
    ("timeouts.tcp_transitory", "sets tcp_opening and tcp_closing both (RFC 5382's transitory timer), seconds"),
    ("timeouts.sctp_init", "SCTP idle timeout before the association is up (INIT, INIT ACK), seconds"),
    ("timeouts.sctp_established", "SCTP established idle timeout (after COOKIE ACK, or DATA both ways), seconds"),
    ("timeouts.sctp_closing", "SCTP idle timeout after SHUTDOWN or ABORT, seconds"),
    ("timeouts.esp", "IPsec ESP idle timeout of an SA pair (either way), seconds"),
    ("filtering.tcp", FILTERING_ALLOWED),
    ("filtering.udp", FILTERING_ALLOWED),
    ("filtering.icmp", FILTERING_ALLOWED),
    ("forward", "inbound port forwards, one [[forward]] table each (`natd run --forward PROTO:PORT=SERVER[,SERVER...]` adds more)"),
    ("forward.name", "a label for status and logs (default: \"PROTOCOL/PORT\", e.g. \"tcp/8080\")"),
    ("forward.protocol", "\"tcp\", \"udp\", \"tcp+udp\" or \"sctp\""),
    ("forward.port", "public port (a number) or range (\"LO-HI\", at most 4096 ports) on the external address"),
    ("forward.external_ip", "the external address forwarded (default: the first external address)"),
    ("forward.to", "servers, [\"ADDR[:PORT]\", ...] or { server = \"ADDR[:PORT]\", weight = 0-100 } each; several are load balanced"),
    ("forward.health.kind", "\"tcp\", \"http\", \"udp\" or \"none\" (default: tcp for several TCP servers, else none)"),
    ("forward.health.interval", "seconds between checks, >= 0.1"),
    ("forward.health.timeout", "seconds a check may take"),
    ("forward.health.fall", "consecutive failures that take a server down, 1-100"),
    ("forward.health.rise", "consecutive successes that bring it back up, 1-100"),
    ("forward.health.path", "the path an http check GETs, \"/...\""),
    ("forward.health.send", "the probe a udp check sends, text or \"hex:0a0b...\""),
    ("forward.health.expect", "what the answer to a udp check starts with, text or \"hex:...\" (default: any answer)"),
    ("proxy", "name-based proxies on a shared public port, one [[proxy]] table each"),
    ("proxy.port", "the public TCP port natd listens on, 1-65535, outside port_range and low_port_range"),
    ("proxy.kind", "\"tls\": route by the SNI of the TLS ClientHello, without terminating TLS; \"http\": route each HTTP/1.x request by its Host"),
    ("proxy.names", "{ \"NAME\" = \"ADDR[:PORT]\" or [\"ADDR[:PORT]\", ...] }: a host name or a one-label wildcard \"*.example.com\" each"),
    ("proxy.default", "server(s) for a name not in names, no name, or a non-TLS client (default: none: tls refuses such connections, http answers 421, or 400 without a Host)"),
    ("proxy.proxy_protocol", "\"v1\" or \"v2\": a PROXY protocol header to the server with the client's address (default: none)"),
    ("proxy.server_protocol", "kind \"http\": \"http1\" or \"http2\", how natd speaks to the servers; \"http2\" is HTTP/2 with prior knowledge (h2c), which gRPC servers need (default: http1)"),
    ("proxy.external_ip", "the address listened on (default: the first external address)"),
    ("proxy.hello_timeout", "seconds a client has to send its whole ClientHello; http: each request head, from its first byte (default: 5)"),
    ("proxy.connect_timeout", "seconds a connection to a server may take (default: 5)"),
    ("proxy.idle_timeout", "seconds a relayed connection may stay silent both ways; http: also a keep-alive wait for the next request (default: 600)"),
    ("proxy.quic", "kind \"tls\" only: true routes QUIC (UDP to the same port) by the SNI of its Initial packets, then the datapath translates the connection (default: false)"),
    ("proxy.max_connections", "concurrent connections at most, 1-1000000; more are closed at once (default: 4096)"),
];

/// A forward's port range spans this many ports at most.
pub const MAX_FORWARD_RANGE: u32 = 4096;
/// A server's weight at most (0: draining, no new flows).
pub const MAX_WEIGHT: u32 = 100;
pub const DEFAULT_WEIGHT: u32 = 1;
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(1);
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_FALL: u32 = 2;
pub const DEFAULT_RISE: u32 = 2;
pub const DEFAULT_HEALTH_PATH: &str = "/";

/// How long a proxy waits for the whole ClientHello: long enough for a
/// client on a slow mobile link, short enough that idle sockets (slowloris)
/// are shed quickly. HAProxy's documented `tcp-request inspect-delay` for SNI
/// routing is 5 s too.
pub const DEFAULT_HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// HAProxy's `timeout connect` in its examples.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// nginx stream's `proxy_timeout` default: 10 minutes without a byte either way.
pub const DEFAULT_PROXY_IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// Two file descriptors each: 8192 of natd's descriptors at most, which the
/// usual hard limit (524288 on systemd hosts) allows once natd raises its
/// soft limit.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 4096;
pub const MAX_PROXY_CONNECTIONS: u32 = 1_000_000;

pub(crate) const FILTERING_ALLOWED: &str =
    "\"endpoint-independent\", \"address-dependent\" or \"address-and-port-dependent\"";

/// Which remotes may send in through a mapping (RFC 4787 section 5, RFC 5382
/// REQ-3). Mapping stays endpoint-independent in every mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FilteringMode {
    /// Any remote, while the mapping lives. The default: RFC 4787 REQ-8 and
    /// RFC 5382 REQ-3 recommend it where application transparency matters
    /// most (games, VoIP and WebRTC reach peers without a relay), and an
    /// inside host is still reachable only on ports it opened itself.
    EndpointIndependent,
    /// Only remote addresses the inside endpoint has sent to.
    AddressDependent,
    /// Only remote address-and-port pairs the inside endpoint has sent to
    /// (the stricter choice RFC 4787 REQ-8 names; what conntrack does).
    AddressAndPortDependent,
}

impl FilteringMode {
    pub const fn name(self) -> &'static str {
        match self {
            FilteringMode::EndpointIndependent => "endpoint-independent",
            FilteringMode::AddressDependent => "address-dependent",
            FilteringMode::AddressAndPortDependent => "address-and-port-dependent",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [FilteringMode::EndpointIndependent, FilteringMode::AddressDependent, FilteringMode::AddressAndPortDependent]
            .into_iter()
            .find(|mode| mode.name() == s)
    }

    /// The datapath's value (`nat_common::filtering`).
    pub const fn datapath_value(self) -> u8 {
        match self {
            FilteringMode::EndpointIndependent => nat_common::filtering::ENDPOINT_INDEPENDENT,
            FilteringMode::AddressDependent => nat_common::filtering::ADDRESS_DEPENDENT,
            FilteringMode::AddressAndPortDependent => nat_common::filtering::ADDRESS_AND_PORT_DEPENDENT,
        }
    }
}

/// The filtering mode of each protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Filtering {
    pub tcp: FilteringMode,
    pub udp: FilteringMode,
    pub icmp: FilteringMode,
}

impl Filtering {
    /// The mode of protocol `proto_nr`: SCTP's is UDP's (as in the
    /// datapath, `GatewayConfig::filtering`), ICMP's for anything else.
    pub const fn of(&self, proto_nr: u8) -> FilteringMode {
        match proto_nr {
            proto::TCP => self.tcp,
            proto::UDP | proto::SCTP => self.udp,
            _ => self.icmp,
        }
    }
}

impl Default for Filtering {
    fn default() -> Self {
        let mode = FilteringMode::EndpointIndependent;
        Self { tcp: mode, udp: mode, icmp: mode }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpModeSetting {
    Native,
    Generic,
}

/// Which frames the fast path tests for a partial TCP/UDP checksum (one a
/// sender's TX offload was to finish), which it then finishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PartialChecksums {
    /// All but a NIC's own frames in native mode (`Environment::off_the_wire`):
    /// they come off a wire, whose checksums are whole.
    Auto,
    /// Every frame.
    Test,
}

impl PartialChecksums {
    /// As the config file spells it.
    pub const fn name(self) -> &'static str {
        match self {
            PartialChecksums::Auto => "auto",
            PartialChecksums::Test => "test",
        }
    }
}

/// The validated settings natd runs with.
#[derive(Clone, Debug)]
pub struct Settings {
    pub lan: String,
    pub wan: String,
    /// The external address pool; empty: the WAN interface's first address.
    pub external_ips: Vec<Ipv4Addr>,
    pub port_min: u16,
    pub port_max: u16,
    pub port_parity: bool,
    pub port_class: bool,
    pub low_port_range: Option<(u16, u16)>,
    pub xdp_mode: XdpModeSetting,
    pub partial_checksums: PartialChecksums,
    pub port_hold: Duration,
    pub ports_per_host: u32,
    /// Sessions the datapath holds: `OUTBOUND` and `LIVENESS` are made
    /// this size (`Datapath::load_for`).
    pub max_sessions: u32,
    pub log_mappings: bool,
    /// Where `log_mappings` writes.
    pub mapping_log: MappingLogTarget,
    /// What natd does when its LAN or WAN interface is deleted.
    pub on_interface_loss: InterfaceLoss,
    pub timeouts: Timeouts,
    pub filtering: Filtering,
    /// Inside networks routed behind an inside router (BCP 38): translated
    /// besides the LAN interface's own prefixes.
    pub inside_prefixes: Vec<Prefix>,
    /// Sources the WAN side drops on the operator's word (BCP 84).
    pub wan_drop_sources: Vec<Prefix>,
    /// How much natd logs (`logging::LEVELS`).
    pub log_level: String,
    /// Inbound port forwards, the file's first, then the flags'.
    pub forwards: Vec<Forward>,
    /// Name-based proxies (`[[proxy]]`), in the file's order.
    pub proxies: Vec<Proxy>,
    /// Where natd serves Prometheus metrics (`/metrics`); `None`: off.
    pub metrics: Option<SocketAddr>,
    /// The bpffs to pin the datapath in; `None`: natd finds or mounts one
    /// (`datapath::PinRoot::find`).
    pub pin_root: Option<std::path::PathBuf>,
}

impl Settings {
    /// What the datapath's forward tables hold: the forwards, then the
    /// QUIC proxies' UDP ports.
    pub fn datapath_forwards(&self) -> Vec<Forward> {
        self.forwards.iter().cloned().chain(self.proxies.iter().filter_map(Proxy::quic_forward)).collect()
    }
}

/// What natd does when a served interface is deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum InterfaceLoss {
    /// Stop with an error (a supervisor restarts natd once it is back).
    #[default]
    Exit,
    /// Keep the sessions; re-attach to the interface of the same name when
    /// it is back, with the addresses and prefixes natd started with.
    Wait,
}

/// Where the mapping log goes.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum MappingLogTarget {
    /// natd's own log (stderr), one readable line each.
    #[default]
    Stderr,
    /// Compact lines appended to a file.
    File(std::path::PathBuf),
    /// Compact lines to a syslog socket (RFC 3164 framing).
    Syslog(std::path::PathBuf),
}

/// The local syslog socket.
pub const SYSLOG_SOCKET: &str = "/dev/log";

/// How an http proxy speaks to its servers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ServerProtocol {
    /// HTTP/1.1, a connection a request at a time.
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge (h2c, RFC 9113 §3.3): one connection a
    /// server carries every stream of a client at once, trailers included,
    /// as gRPC needs.
    Http2,
}

impl ServerProtocol {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Http1 => "http1",
            Self::Http2 => "http2",
        }
    }
}

/// A name-based proxy: natd's own TCP listener on a public port that reads
/// the name a client asks for and relays the connection to that name's
/// server.
#[derive(Clone, Debug, PartialEq)]
pub struct Proxy {
    /// The label in status and logs: "KIND/PORT", e.g. "tls/443".
    pub name: String,
    pub kind: ProxyKind,
    pub port: u16,
    /// None: the first address of the external pool.
    pub external_ip: Option<Ipv4Addr>,
    /// The `names` table, each pattern in canonical form, ordered by the
    /// names as written (TOML tables are read sorted). Order does not
    /// change routing: an exact name beats a wildcard, and only one
    /// one-label wildcard can match a name.
    pub routes: Vec<ProxyRoute>,
    /// Servers for a name not in `routes`, no name, or a non-TLS client.
    pub default: Option<Vec<SocketAddrV4>>,
    pub proxy_protocol: Option<ProxyProtocolVersion>,
    /// kind "http" only: how natd speaks to the servers.
    pub server_protocol: ServerProtocol,
    pub hello_timeout: Duration,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: u32,
    /// kind "tls" only: UDP to the same port is QUIC, routed by the SNI of
    /// its Initial packets and then translated by the datapath
    /// (`quic_forward`).
    pub quic: bool,
    /// The check of the servers of a name (or the default) that has several
    /// to choose between: TCP connects with the forwards' default timing.
    /// A lone server is not checked: there is nothing to fail over to.
    pub health: HealthCheck,
}

impl Proxy {
    /// The address listened on, given the pool (None: no pool known).
    pub fn external_addr(&self, pool: &[Ipv4Addr]) -> Option<Ipv4Addr> {
        self.external_ip.or_else(|| pool.first().copied())
    }

    /// The check in words, as `natd check` and `natd proxies` show it.
    pub fn health_text(&self) -> String {
        match self.health.kind {
            HealthKind::None => "none (no name has several servers)".to_string(),
            _ => format!("{}, for the servers of a name that has several", self.health.describe()),
        }
    }

    /// The forward a QUIC proxy's UDP port is in the datapath: every server
    /// of the proxy once (UDP to the same port as its TCP), flows pinned by
    /// natd (`Forward::pinned`), no Maglev pick and no active check of its
    /// own (natd routes by the proxy's checked sets; a pinned flow stays on
    /// its server, which alone knows the connection).
    pub fn quic_forward(&self) -> Option<Forward> {
        if !self.quic {
            return None;
        }
        let mut servers: Vec<Server> = Vec::new();
        for (_, set) in self.server_sets() {
            for server in set {
                let server = Server { addr: *server.ip(), port: Some(server.port()), weight: DEFAULT_WEIGHT };
                if !servers.contains(&server) {
                    servers.push(server);
                }
            }
        }
        Some(Forward {
            name: format!("quic/{}", self.port),
            protocols: vec![proto::UDP],
            ports: (self.port, self.port),
            external_ip: self.external_ip,
            servers,
            health: HealthCheck::of_kind(HealthKind::None),
            pinned: true,
        })
    }

    /// Every server set: each route's, then the default's, labelled.
    pub fn server_sets(&self) -> impl Iterator<Item = (&str, &[SocketAddrV4])> {
        self.routes
            .iter()
            .map(|r| (r.pattern.as_str(), r.servers.as_slice()))
            .chain(self.default.as_deref().map(|servers| ("default", servers)))
    }
}

/// One entry of a proxy's `names`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyRoute {
    /// "blue.example" or "*.green.example", lower case, no trailing dot.
    pub pattern: String,
    /// At least one; several are picked in turn among those up.
    pub servers: Vec<SocketAddrV4>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyKind {
    /// By the SNI of the TLS ClientHello; TLS passes through untouched.
    Tls,
    /// By the Host of each HTTP/1.x request; natd serves the client.
    Http,
}

impl ProxyKind {
    pub const fn name(self) -> &'static str {
        match self {
            ProxyKind::Tls => "tls",
            ProxyKind::Http => "http",
        }
    }
}

/// The PROXY protocol header natd sends a server first (HAProxy's
/// proxy-protocol.txt).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyProtocolVersion {
    V1,
    V2,
}

impl ProxyProtocolVersion {
    pub const fn name(self) -> &'static str {
        match self {
            ProxyProtocolVersion::V1 => "v1",
            ProxyProtocolVersion::V2 => "v2",
        }
    }
}

/// An inbound port forward: a public port (or range) on an external address
/// sent to one inside server, or load balanced over several.
#[derive(Clone, Debug, PartialEq)]
pub struct Forward {
    /// The label in status and logs: given, or "PROTOCOL/PORT".
    pub name: String,
    /// `nat_common::proto` numbers: TCP, UDP or both (in that order).
    pub protocols: Vec<u8>,
    /// The public ports, an inclusive range (LO == HI for one port).
    pub ports: (u16, u16),
    /// None: the first address of the external pool.
    pub external_ip: Option<Ipv4Addr>,
    /// At least one, at most `nat_common::forward::MAX_BACKENDS`.
    pub servers: Vec<Server>,
    pub health: HealthCheck,
    /// natd routes each new flow itself and files it for the datapath
    /// (`port_flags::PINNED`): the UDP side of a QUIC proxy, never written
    /// in a `[[forward]]`.
    pub pinned: bool,
}

impl Forward {
    /// How many ports the range spans (per protocol).
    pub const fn port_count(&self) -> u32 {
        self.ports.1 as u32 - self.ports.0 as u32 + 1
    }

    /// "tcp", "udp" or "tcp+udp", as written in the settings.
    pub fn protocol_name(&self) -> String {
        let names: Vec<&str> = self.protocols.iter().map(|p| proto::name(*p)).collect();
        names.join("+")
    }

    /// "8080", or "8000-8099" for a range.
    pub fn ports_text(&self) -> String {
        let (lo, hi) = self.ports;
        if lo == hi { lo.to_string() } else { format!("{lo}-{hi}") }
    }

    /// The external address forwarded, given the pool (None: no pool known).
    pub fn external_addr(&self, pool: &[Ipv4Addr]) -> Option<Ipv4Addr> {
        self.external_ip.or_else(|| pool.first().copied())
    }

    /// Whether the two claim a common external endpoint: a protocol, an
    /// address (an unset one is `default`, the first external address; when
    /// that is unknown only another unset one equals it) and a port.
    pub fn overlaps(&self, other: &Forward, default: Option<Ipv4Addr>) -> bool {
        let addr = |f: &Forward| f.external_ip.or(default);
        let same_addr = match (addr(self), addr(other)) {
            (Some(a), Some(b)) => a == b,
            (None, None) => true,
            _ => false,
        };
        same_addr
            && self.protocols.iter().any(|p| other.protocols.contains(p))
            && self.ports.0 <= other.ports.1
            && other.ports.0 <= self.ports.1
    }
}

/// One server of a forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Server {
    pub addr: Ipv4Addr,
    /// The server port for the forward's first port (the others keep their
    /// offset from it); None: the same port as the external one.
    pub port: Option<u16>,
    /// Share of new flows, 0-100; 0: draining (no new flows, existing ones
    /// continue).
    pub weight: u32,
}

impl Server {
    /// The server port a packet to `external_port` goes to, in a forward
    /// whose range starts at `range_first`: the same port, or the server's
    /// port plus the offset into the range (8001 -> 9001 for a server
    /// given as ADDR:9000 on "8000-8099"). Validation keeps it below 65536.
    pub const fn port_for(&self, external_port: u16, range_first: u16) -> u16 {
        match self.port {
            None => external_port,
            Some(port) => port.wrapping_add(external_port.wrapping_sub(range_first)),
        }
    }

    /// The server port for the range's first port (`Backend::base_port`).
    pub const fn base_port(&self, range_first: u16) -> u16 {
        self.port_for(range_first, range_first)
    }
}

/// How natd tells whether a forward's servers are up.
#[derive(Clone, Debug, PartialEq)]
pub struct HealthCheck {
    pub kind: HealthKind,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive failures that take a server down.
    pub fall: u32,
    /// Consecutive successes that bring it back up.
    pub rise: u32,
    /// What an http check GETs.
    pub path: String,
    /// What a udp check sends.
    pub send: Vec<u8>,
    /// What the answer to a udp check must start with; None: any answer.
    pub expect: Option<Vec<u8>>,
}

impl HealthCheck {
    /// The check in words, as `natd check` and `natd forwards` show it.
    pub fn describe(&self) -> String {
        let what = match self.kind {
            HealthKind::None => return "none (passive signals only)".to_string(),
            HealthKind::Tcp => "tcp connect".to_string(),
            HealthKind::Http => format!("http GET {}", self.path),
            HealthKind::Udp => format!("udp probe of {} bytes ({})", self.send.len(), if self.expect.is_some() { "answer checked" } else { "any answer" }),
        };
        format!(
            "{what} every {} s, timeout {} s, down after {}, up after {}",
            self.interval.as_secs_f64(),
            self.timeout.as_secs_f64(),
            self.fall,
            self.rise
        )
    }

    /// A check of `kind` with the default timing.
    pub fn of_kind(kind: HealthKind) -> Self {
        Self {
            kind,
            interval: DEFAULT_HEALTH_INTERVAL,
            timeout: DEFAULT_HEALTH_TIMEOUT,
            fall: DEFAULT_FALL,
            rise: DEFAULT_RISE,
            path: DEFAULT_HEALTH_PATH.to_string(),
            send: Vec::new(),
            expect: None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HealthKind {
    /// A TCP connect to the server port.
    Tcp,
    /// An HTTP GET of `path`: a 2xx or 3xx status is up.
    Http,
    /// A datagram (`send`), and an answer (starting with `expect`) is up.
    Udp,
    /// No check: the servers are always up.
    None,
}

impl HealthKind {
    pub const fn name(self) -> &'static str {
        match self {
            HealthKind::Tcp => "tcp",
            HealthKind::Http => "http",
            HealthKind::Udp => "udp",
            HealthKind::None => "none",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [HealthKind::Tcp, HealthKind::Http, HealthKind::Udp, HealthKind::None].into_iter().find(|kind| kind.name() == s)
    }

    /// Without a `kind`: TCP connects when a TCP forward has several servers
    /// to choose between; none for one server (nothing to fail over to) and
    /// for UDP alone (a UDP service need not answer a probe).
    pub fn default_for(protocols: &[u8], servers: usize) -> Self {
        if servers > 1 && protocols.contains(&proto::TCP) { HealthKind::Tcp } else { HealthKind::None }
    }
}

/// Idle timeouts (RFC 4787 REQ-5, RFC 5382 REQ-5, RFC 5508 REQ-2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub udp: Duration,
    pub icmp: Duration,
    pub tcp_established: Duration,
    /// Before the handshake completes (SYN seen, not yet ACKed both ways).
    pub tcp_opening: Duration,
    /// After a FIN or RST (RFC 7857: an RST'd mapping is held, not dropped
    /// at once, so a stray RST cannot end a live connection's mapping).
    pub tcp_closing: Duration,
    /// SCTP before the association is up: INIT or INIT ACK seen, no COOKIE
    /// ACK and no DATA both ways yet.
    pub sctp_init: Duration,
    /// SCTP after COOKIE ACK, or DATA seen both ways.
    pub sctp_established: Duration,
    /// SCTP after a SHUTDOWN (ACK, COMPLETE) or an ABORT.
    pub sctp_closing: Duration,
    /// An ESP SA pair with no packet either way (`nat::esp`).
    pub esp: Duration,
}

/// ESP's default, UDP's: ESP is connectionless and has no keepalive of
/// its own, and 300 s is what RFC 4787 REQ-5 recommends for such mappings.
/// An SA carrying traffic never idles that long; IKE's liveness checks
/// (RFC 7296 §2.4) run over UDP and do not refresh it, and an SA a rekey
/// replaced (strongSwan's default lifetimes: an hour or so) is gone within
/// 5 minutes of its last packet, its slot free.
pub const DEFAULT_ESP: Duration = Duration::from_secs(300);

/// SCTP's defaults are Linux conntrack's (nf_conntrack_proto_sctp, as
/// `net.netfilter.nf_conntrack_sctp_timeout_*` reads on a 6.x kernel):
/// COOKIE_WAIT and COOKIE_ECHOED 3 s, ESTABLISHED 210 s (heartbeat interval
/// 30 s x path_max_retrans 5 + rto_max 60 s: an idle association
/// heartbeats well within it), SHUTDOWN_SENT/RECD/ACK_SENT 3 s.
pub const DEFAULT_SCTP_INIT: Duration = Duration::from_secs(3);
pub const DEFAULT_SCTP_ESTABLISHED: Duration = Duration::from_secs(210);
pub const DEFAULT_SCTP_CLOSING: Duration = Duration::from_secs(3);

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            udp: Duration::from_secs(300),
            icmp: Duration::from_secs(60),
            tcp_established: Duration::from_secs(7440),
            tcp_opening: Duration::from_secs(240),
            tcp_closing: Duration::from_secs(240),
            sctp_init: DEFAULT_SCTP_INIT,
            sctp_established: DEFAULT_SCTP_ESTABLISHED,
            sctp_closing: DEFAULT_SCTP_CLOSING,
            esp: DEFAULT_ESP,
        }
    }
}

impl Timeouts {
    /// How long a filtering permit lets a remote in after the inside
    /// endpoint last sent to it: the protocol's idle timeout plus the clock
    /// tick aging also waits, so it never ends before the mapping would.
    /// SCTP shares UDP's permits (`GatewayConfig::filtering`): they last the
    /// longer of the two timeouts.
    pub fn permit_ttl_ns(&self, proto_nr: u8) -> u64 {
        let timeout = match proto_nr {
            proto::TCP => self.tcp_established,
            proto::UDP | proto::SCTP => self.udp.max(self.sctp_established),
            _ => self.icmp,
        };
        timeout.as_nanos() as u64 + CLOCK_TICK_NS
    }

    /// The timeout for a mapping given the state bits seen each way
    /// (`Liveness::state_bits`): TCP flags, SCTP chunk kinds.
    pub fn for_mapping(&self, proto_nr: u8, flags_out: u8, flags_in: u8) -> Duration {
        match proto_nr {
            proto::SCTP => match sctp_state(flags_out, flags_in) {
                SctpState::Init => self.sctp_init,
                SctpState::Established => self.sctp_established,
                SctpState::Closing | SctpState::Aborted => self.sctp_closing,
            },
            proto::TCP => {
                let closing = (flags_out | flags_in) & (tcp_flags::FIN | tcp_flags::RST) != 0;
                let established = flags_out & flags_in & tcp_flags::ACK != 0;
                if closing {
                    self.tcp_closing
                } else if established {
                    self.tcp_established
                } else {
                    self.tcp_opening
                }
            }
            proto::ICMP => self.icmp,
            proto::ESP => self.esp,
            _ => self.udp,
        }
    }
}

/// Where an SCTP association stands, from the chunk kinds seen each way
/// (`sctp_chunks`; only packets' first chunks are recorded).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SctpState {
    /// INIT / INIT ACK (or nothing recorded yet: the first packet).
    Init,
    /// COOKIE ACK seen, or DATA both ways (an association whose handshake
    /// the gateway did not see, after a restart of natd's mapping).
    Established,
    /// SHUTDOWN, SHUTDOWN ACK or SHUTDOWN COMPLETE seen.
    Closing,
    /// ABORT seen.
    Aborted,
}

impl SctpState {
    /// The state as `natd sessions` shows it, in TCP's words.
    pub const fn name(self) -> &'static str {
        match self {
            SctpState::Init => "opening",
            SctpState::Established => "established",
            SctpState::Closing => "closing",
            SctpState::Aborted => "aborted",
        }
    }
}

/// The state of an SCTP session whose first chunks `out` and `in_` were seen.
pub const fn sctp_state(out: u8, in_: u8) -> SctpState {
    let seen = out | in_;
    if seen & sctp_chunks::ABORT != 0 {
        SctpState::Aborted
    } else if seen & sctp_chunks::SHUTDOWN != 0 {
        SctpState::Closing
    } else if seen & sctp_chunks::COOKIE_ACK != 0 || out & in_ & sctp_chunks::DATA != 0 {
        SctpState::Established
    } else {
        SctpState::Init
    }
}
