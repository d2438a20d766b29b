//! What natd's settings are: the types, their defaults, and every key a
//! config file may hold. Reading and validating them is `load`'s job,
//! checking them against the machine `machine`'s.

use std::{net::Ipv4Addr, time::Duration};

use nat_common::{CLOCK_TICK_NS, Prefix, proto, tcp_flags};

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
    ("port_hold", "seconds a freed external port waits before reuse"),
    ("ports_per_host", "external ports of one protocol one inside address may hold, 0 for no limit"),
    ("log_mappings", "true: log each mapping made and removed (inside and external endpoints, never destinations)"),
    ("log_level", "\"trace\", \"debug\", \"info\", \"warn\" or \"error\""),
    ("inside_prefixes", "routed inside networks behind an inside router, [\"A.B.C.D/LEN\", ...], besides the LAN interface's own prefixes"),
    ("wan_drop_sources", "prefixes whose packets the WAN side drops, [\"A.B.C.D/LEN\", ...] (bogons, known attackers)"),
    ("timeouts.udp", "UDP idle timeout, seconds"),
    ("timeouts.icmp", "ICMP echo idle timeout, seconds"),
    ("timeouts.tcp_established", "TCP established idle timeout, seconds"),
    ("timeouts.tcp_opening", "TCP idle timeout before the handshake completes, seconds"),
    ("timeouts.tcp_closing", "TCP idle timeout after FIN or RST, seconds"),
    ("timeouts.tcp_transitory", "sets tcp_opening and tcp_closing both (RFC 5382's transitory timer), seconds"),
    ("filtering.tcp", FILTERING_ALLOWED),
    ("filtering.udp", FILTERING_ALLOWED),
    ("filtering.icmp", FILTERING_ALLOWED),
];

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
    /// The mode of protocol `proto_nr` (ICMP's for anything but TCP and UDP).
    pub const fn of(&self, proto_nr: u8) -> FilteringMode {
        match proto_nr {
            proto::TCP => self.tcp,
            proto::UDP => self.udp,
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
    pub port_hold: Duration,
    pub ports_per_host: u32,
    pub log_mappings: bool,
    pub timeouts: Timeouts,
    pub filtering: Filtering,
    /// Inside networks routed behind an inside router (BCP 38): translated
    /// besides the LAN interface's own prefixes.
    pub inside_prefixes: Vec<Prefix>,
    /// Sources the WAN side drops on the operator's word (BCP 84).
    pub wan_drop_sources: Vec<Prefix>,
    /// How much natd logs (`logging::LEVELS`).
    pub log_level: String,
}

/// Idle timeouts (RFC 4787 REQ-5, RFC 5382 REQ-5, RFC 5508 REQ-2).
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub udp: Duration,
    pub icmp: Duration,
    pub tcp_established: Duration,
    /// Before the handshake completes (SYN seen, not yet ACKed both ways).
    pub tcp_opening: Duration,
    /// After a FIN or RST (RFC 7857: an RST'd mapping is held, not dropped
    /// at once, so a stray RST cannot end a live connection's mapping).
    pub tcp_closing: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            udp: Duration::from_secs(300),
            icmp: Duration::from_secs(60),
            tcp_established: Duration::from_secs(7440),
            tcp_opening: Duration::from_secs(240),
            tcp_closing: Duration::from_secs(240),
        }
    }
}

impl Timeouts {
    /// How long a filtering permit lets a remote in after the inside
    /// endpoint last sent to it: the protocol's idle timeout plus the clock
    /// tick aging also waits, so it never ends before the mapping would.
    pub fn permit_ttl_ns(&self, proto_nr: u8) -> u64 {
        let timeout = match proto_nr {
            proto::TCP => self.tcp_established,
            proto::UDP => self.udp,
            _ => self.icmp,
        };
        timeout.as_nanos() as u64 + CLOCK_TICK_NS
    }

    /// The timeout for a mapping given the TCP flags seen each way.
    pub fn for_mapping(&self, proto_nr: u8, flags_out: u8, flags_in: u8) -> Duration {
        match proto_nr {
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
            _ => self.udp,
        }
    }
}
