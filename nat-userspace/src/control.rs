//! How `natd status|sessions|stats` reach a serving natd, and how a second
//! natd on the same interfaces is refused.
//!
//! Both use abstract Unix sockets. They belong to the network namespace, not
//! to a filesystem: every process of the namespace finds them, `ip netns exec`
//! included (which remounts /sys and so hides a bpffs pin under /sys/fs/bpf),
//! and the kernel removes them when the process exits, even on a crash. So
//! natd pins nothing and leaves nothing behind.
//!
//! - `xdp-nat/if/<ifname>`: one bound socket per interface natd serves. Binding
//!   fails with EADDRINUSE while another natd holds it: the interface lock.
//! - `xdp-nat/ctl/<pid>`: the control socket. A client sends one request line
//!   (`status`, `sessions`, `stats`, `forwards`, `proxies`, `reload`) and reads one JSON
//!   document.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{Ipv4Addr, SocketAddrV4},
    os::{
        linux::net::SocketAddrExt as _,
        unix::net::{SocketAddr, UnixDatagram, UnixListener, UnixStream},
    },
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow, bail};
use serde::{Deserialize, Serialize};

const LOCK_PREFIX: &str = "xdp-nat/if/";
const CONTROL_PREFIX: &str = "xdp-nat/ctl/";
/// A client that neither asks nor reads within this time is dropped.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);

fn abstract_addr(name: &str) -> std::io::Result<SocketAddr> {
    SocketAddr::from_abstract_name(name.as_bytes())
}

/// Held for as long as natd serves its interfaces.
pub struct InterfaceLocks {
    _sockets: Vec<UnixDatagram>,
}

impl InterfaceLocks {
    /// Takes the lock of every interface, or none.
    pub fn acquire(interfaces: &[&str]) -> Result<Self> {
        let mut sockets = Vec::new();
        for name in interfaces {
            match UnixDatagram::bind_addr(&abstract_addr(&format!("{LOCK_PREFIX}{name}"))?) {
                Ok(socket) => sockets.push(socket),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => bail!(
                    "interface {name} is already served by another natd in this network namespace \
                     (see `natd status`); stop it first"
                ),
                Err(e) => return Err(e).with_context(|| format!("taking the lock of interface {name}")),
            }
        }
        Ok(Self { _sockets: sockets })
    }
}

/// The control socket of this process, non-blocking for tokio.
pub fn bind_control() -> Result<tokio::net::UnixListener> {
    let name = format!("{CONTROL_PREFIX}{}", std::process::id());
    let listener = UnixListener::bind_addr(&abstract_addr(&name)?).with_context(|| format!("binding control socket @{name}"))?;
    listener.set_nonblocking(true)?;
    Ok(tokio::net::UnixListener::from_std(listener)?)
}

/// Control sockets of every natd in this network namespace, from
/// /proc/net/unix (which is per namespace).
pub fn running_daemons() -> Result<Vec<String>> {
    let table = std::fs::read_to_string("/proc/net/unix").context("reading /proc/net/unix")?;
    let mut names: Vec<String> = table
        .lines()
        .filter_map(|line| line.split_whitespace().nth(7))
        .filter_map(|path| path.strip_prefix('@'))
        .filter(|name| name.starts_with(CONTROL_PREFIX))
        .map(str::to_string)
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

/// Sends one request to one daemon and returns its JSON answer.
pub fn query(daemon: &str, request: &Request) -> Result<String> {
    let stream = UnixStream::connect_addr(&abstract_addr(daemon)?).with_context(|| format!("connecting to natd at @{daemon}"))?;
    stream.set_read_timeout(Some(CLIENT_TIMEOUT * 5))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    (&stream).write_all(format!("{}\n", request.line()).as_bytes())?;
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer).with_context(|| format!("reading natd's answer from @{daemon}"))?;
    if answer.is_empty() {
        bail!("natd at @{daemon} closed the connection without answering");
    }
    Ok(answer)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Status,
    /// The sessions that match (all, with the default filter).
    Sessions(SessionFilter),
    Stats,
    Forwards,
    Proxies,
    /// Re-read the config file and apply what may change live.
    Reload,
}

impl Request {
    /// The request as one line of the control protocol.
    pub fn line(&self) -> String {
        match self {
            Request::Sessions(filter) => format!("sessions{}", filter.words()),
            other => other.as_str().to_string(),
        }
    }

    pub const fn as_str(&self) -> &'static str {
        match self {
            Request::Status => "status",
            Request::Sessions(_) => "sessions",
            Request::Stats => "stats",
            Request::Forwards => "forwards",
            Request::Proxies => "proxies",
            Request::Reload => "reload",
        }
    }

    pub fn parse(line: &str) -> Result<Self> {
        let line = line.trim();
        if let Some(words) = line.strip_prefix("sessions") {
            return SessionFilter::parse_words(words).map(Request::Sessions);
        }
        match line {
            "status" => Ok(Request::Status),
            "stats" => Ok(Request::Stats),
            "forwards" => Ok(Request::Forwards),
            "proxies" => Ok(Request::Proxies),
            "reload" => Ok(Request::Reload),
            other => Err(anyhow!("unknown request {other:?}")),
        }
    }
}

/// Answer to `status`.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Status {
    pub pid: u32,
    pub lan: String,
    pub wan: String,
    pub external_ip: String,
    pub xdp_mode: String,
    pub port_range: String,
    pub uptime_s: u64,
    pub sessions: usize,
    /// The sessions the datapath holds (`max_sessions`, or an adopted
    /// datapath's size); 0 from a natd before it was reported.
    #[serde(default)]
    pub max_sessions: u32,
    pub ports: Vec<PortUsage>,
    pub refused_flows: u64,
    pub filtering: FilteringStatus,
    /// The inside prefixes, where each comes from: the sources translated.
    pub inside: String,
    /// The served interfaces whose frames come off a wire, not tested for
    /// partial checksums (`Environment::off_the_wire`).
    #[serde(default)]
    pub off_the_wire: Vec<String>,
}

/// The inbound filtering mode of each protocol, by its config name.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct FilteringStatus {
    pub tcp: String,
    pub udp: String,
    pub icmp: String,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct PortUsage {
    pub proto: String,
    pub in_use: usize,
    /// Released, waiting out the hold time.
    pub held: usize,
    pub free: usize,
}

/// Which sessions `natd sessions` lists: by protocol, inside address (and
/// port), external port (and address). The operator's question at 3 a.m.,
/// "who had 203.0.113.1:24217", is `natd sessions --external
/// 203.0.113.1:24217`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionFilter {
    pub proto: Option<String>,
    pub inside: Option<(Ipv4Addr, Option<u16>)>,
    pub external: Option<(Option<Ipv4Addr>, u16)>,
}

impl SessionFilter {
    /// From the command line's values; an error says which and what is allowed.
    pub fn new(proto: Option<&str>, inside: Option<&str>, external: Option<&str>) -> Result<Self> {
        let proto = proto
            .map(|p| match p.to_ascii_lowercase().as_str() {
                name @ ("tcp" | "udp" | "icmp" | "sctp" | "esp") => Ok(name.to_string()),
                other => Err(anyhow!("--proto {other:?}: must be tcp, udp, icmp, sctp or esp")),
            })
            .transpose()?;
        let inside = inside
            .map(|text| match text.parse::<SocketAddrV4>() {
                Ok(addr) => Ok((*addr.ip(), Some(addr.port()))),
                Err(_) => text.parse::<Ipv4Addr>().map(|ip| (ip, None)).map_err(|_| anyhow!("--inside {text:?}: must be ADDR or ADDR:PORT, e.g. 10.0.0.5 or 10.0.0.5:5353")),
            })
            .transpose()?;
        let external = external
            .map(|text| match text.parse::<SocketAddrV4>() {
                Ok(addr) => Ok((Some(*addr.ip()), addr.port())),
                Err(_) => text.parse::<u16>().map(|port| (None, port)).map_err(|_| anyhow!("--external {text:?}: must be PORT or ADDR:PORT, e.g. 24217 or 203.0.113.1:24217")),
            })
            .transpose()?;
        Ok(Self { proto, inside, external })
    }

    /// " proto=udp inside=10.0.0.5:5353 external=24217", empty for no filter.
    fn words(&self) -> String {
        let mut words = String::new();
        if let Some(proto) = &self.proto {
            words += &format!(" proto={proto}");
        }
        match self.inside {
            Some((ip, Some(port))) => words += &format!(" inside={ip}:{port}"),
            Some((ip, None)) => words += &format!(" inside={ip}"),
            None => {}
        }
        match self.external {
            Some((Some(ip), port)) => words += &format!(" external={ip}:{port}"),
            Some((None, port)) => words += &format!(" external={port}"),
            None => {}
        }
        words
    }

    fn parse_words(words: &str) -> Result<Self> {
        let (mut proto, mut inside, mut external) = (None, None, None);
        for word in words.split_whitespace() {
            match word.split_once('=') {
                Some(("proto", v)) => proto = Some(v),
                Some(("inside", v)) => inside = Some(v),
                Some(("external", v)) => external = Some(v),
                _ => bail!("unknown sessions filter {word:?}"),
            }
        }
        Self::new(proto, inside, external)
    }

    pub fn matches(&self, session: &Session) -> bool {
        if self.proto.as_ref().is_some_and(|p| *p != session.proto) {
            return false;
        }
        if let Some((ip, port)) = self.inside {
            // An ESP SA's inside is an address alone: it has no port.
            let inside = match session.inside.parse::<SocketAddrV4>() {
                Ok(inside) => (*inside.ip(), Some(inside.port())),
                Err(_) => match session.inside.parse::<Ipv4Addr>() {
                    Ok(ip) => (ip, None),
                    Err(_) => return false,
                },
            };
            if inside.0 != ip || port.is_some_and(|p| Some(p) != inside.1) {
                return false;
            }
        }
        if let Some((ip, port)) = self.external {
            let Ok(external) = session.external.parse::<SocketAddrV4>() else { return false };
            if external.port() != port || ip.is_some_and(|ip| ip != *external.ip()) {
                return false;
            }
        }
        true
    }
}

/// One row of `sessions`: a mapping, or a forwarded flow (with its remote
/// and its forward).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub proto: String,
    pub inside: String,
    pub external: String,
    /// A forwarded flow's remote (client) endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
    /// A forwarded flow's forward.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward: Option<String>,
    /// An ESP SA pair's SPIs (hex, as IKE tools show them): the one the
    /// inside host sends on, and the peer's, once its first packet bound
    /// it ("-" until then). Its remote is the peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spi_out: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spi_in: Option<String>,
    pub state: String,
    pub idle_s: u64,
    pub timeout_s: u64,
}

/// Answer to `reload`.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct ReloadOutcome {
    /// False: the new configuration was refused and nothing changed.
    pub applied: bool,
    /// Why it was refused, or what was applied, in words.
    pub message: String,
    pub changes: Vec<String>,
}

/// Answer to `stats`: the datapath's per-reason counters and the daemon's own.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Stats {
    pub datapath: Vec<Counter>,
    pub daemon: Vec<Counter>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Counter {
    pub name: String,
    pub value: u64,
}

impl Stats {
    pub fn get(&self, name: &str) -> Option<u64> {
        self.datapath.iter().chain(&self.daemon).find(|c| c.name == name).map(|c| c.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(proto: &str, inside: &str, external: &str) -> Session {
        Session { proto: proto.into(), inside: inside.into(), external: external.into(), remote: None, forward: None, spi_out: None, spi_in: None, state: "active".into(), idle_s: 0, timeout_s: 300 }
    }

    #[test]
    fn session_filters_travel_as_one_line_and_match_each_field() {
        let filter = SessionFilter::new(Some("UDP"), Some("10.0.0.5"), Some("203.0.113.1:24217")).unwrap();
        let request = Request::Sessions(filter.clone());
        assert_eq!(request.line(), "sessions proto=udp inside=10.0.0.5 external=203.0.113.1:24217");
        assert_eq!(Request::parse(&request.line()).unwrap(), request);
        assert_eq!(Request::parse("sessions").unwrap(), Request::Sessions(SessionFilter::default()));
        assert!(filter.matches(&row("udp", "10.0.0.5:5353", "203.0.113.1:24217")));
        assert!(!filter.matches(&row("tcp", "10.0.0.5:5353", "203.0.113.1:24217")), "another protocol");
        assert!(!filter.matches(&row("udp", "10.0.0.6:5353", "203.0.113.1:24217")), "another inside address");
        assert!(!filter.matches(&row("udp", "10.0.0.5:5353", "203.0.113.2:24217")), "another external address");
        assert!(!filter.matches(&row("udp", "10.0.0.5:5353", "203.0.113.1:24218")), "another external port");
        let by_port = SessionFilter::new(None, Some("10.0.0.5:5353"), Some("24217")).unwrap();
        assert!(by_port.matches(&row("tcp", "10.0.0.5:5353", "198.51.100.7:24217")));
        assert!(!by_port.matches(&row("tcp", "10.0.0.5:5354", "198.51.100.7:24217")));
        let esp = SessionFilter::new(Some("esp"), Some("10.0.0.5"), None).unwrap();
        assert!(esp.matches(&row("esp", "10.0.0.5", "203.0.113.1")), "an ESP SA's inside has no port");
        assert!(!esp.matches(&row("esp", "10.0.0.6", "203.0.113.1")));
        assert!(!SessionFilter::new(None, Some("10.0.0.5:500"), None).unwrap().matches(&row("esp", "10.0.0.5", "203.0.113.1")), "a port no ESP SA has");
        for (proto, inside, external, said) in [
            (Some("gre"), None, None, "--proto \"gre\": must be tcp, udp, icmp, sctp or esp"),
            (None, Some("10.0.0"), None, "--inside \"10.0.0\": must be ADDR or ADDR:PORT"),
            (None, None, Some("port"), "--external \"port\": must be PORT or ADDR:PORT"),
        ] {
            let e = SessionFilter::new(proto, inside, external).unwrap_err().to_string();
            assert!(e.contains(said), "{e}");
        }
    }
}
