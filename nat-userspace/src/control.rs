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
pub fn query(daemon: &str, request: Request) -> Result<String> {
    let stream = UnixStream::connect_addr(&abstract_addr(daemon)?).with_context(|| format!("connecting to natd at @{daemon}"))?;
    stream.set_read_timeout(Some(CLIENT_TIMEOUT * 5))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    (&stream).write_all(format!("{}\n", request.as_str()).as_bytes())?;
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer).with_context(|| format!("reading natd's answer from @{daemon}"))?;
    if answer.is_empty() {
        bail!("natd at @{daemon} closed the connection without answering");
    }
    Ok(answer)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    Status,
    Sessions,
    Stats,
    Forwards,
    Proxies,
    /// Re-read the config file and apply what may change live.
    Reload,
}

impl Request {
    pub const fn as_str(self) -> &'static str {
        match self {
            Request::Status => "status",
            Request::Sessions => "sessions",
            Request::Stats => "stats",
            Request::Forwards => "forwards",
            Request::Proxies => "proxies",
            Request::Reload => "reload",
        }
    }

    pub fn parse(line: &str) -> Result<Self> {
        match line.trim() {
            "status" => Ok(Request::Status),
            "sessions" => Ok(Request::Sessions),
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
    pub ports: Vec<PortUsage>,
    pub refused_flows: u64,
    pub filtering: FilteringStatus,
    /// The inside prefixes, where each comes from: the sources translated.
    pub inside: String,
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
