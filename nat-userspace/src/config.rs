//! natd's settings: an optional TOML file, command-line flags over it, and one
//! validation pass that reports every error at once, each naming the field,
//! the value it got, and what is allowed.
//!
//! Two stages, both run before anything is attached:
//! - `Settings::from_sources`: the values themselves (syntax, types, ranges).
//! - `Environment::check`: the values against this machine (interfaces exist,
//!   the WAN has an address, the NAT port range leaves the gateway's own
//!   ephemeral ports and listening services alone).

use std::{collections::BTreeMap, fmt, net::Ipv4Addr, path::Path, time::Duration};

use nat_common::Prefix;
use toml::Value;

use crate::daemon::Timeouts;

/// Linux's IFNAMSIZ minus the terminating NUL.
const MAX_IFNAME_LEN: usize = 15;
/// Ports below this are the well-known services' (RFC 6335): never handed out.
const LOWEST_NAT_PORT: u16 = 1024;
/// The longest accepted idle timeout or hold time: a week.
const MAX_TIMEOUT_S: u64 = 7 * 24 * 3600;
/// Below the RFC 4787 REQ-5 / RFC 5382 REQ-5 / RFC 5508 REQ-2 minimums a NAT
/// breaks applications; allowed (tests, labs) but warned about.
const RFC_MINIMUMS_S: [(&str, u64); 6] =
    [("udp", 120), ("icmp", 60), ("tcp_established", 7440), ("tcp_opening", 240), ("tcp_closing", 240), ("tcp_transitory", 240)];

pub const DEFAULT_PORT_RANGE: (u16, u16) = (20000, 32767);
/// How long a freed external port stays out of the pool: longer than a remote
/// peer's TIME_WAIT (2 MSL, 60 s on Linux), so a new flow on the same port is
/// not taken for the old connection's stray segments.
pub const DEFAULT_PORT_HOLD: Duration = Duration::from_secs(120);
/// RFC 6888 REQ-4 asks for a default limit: a third of the default range per
/// protocol, so one host (a torrent client, a scanner) cannot take the ports
/// every other host needs.
pub const DEFAULT_PORTS_PER_HOST: u32 = 4096;

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

const FILTERING_ALLOWED: &str =
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

    fn parse(s: &str) -> Option<Self> {
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
}

impl Settings {
    /// What the XDP programs read from `CONFIG[0]`.
    pub fn gateway_config(&self, env: &Environment) -> nat_common::GatewayConfig {
        let mut config = nat_common::GatewayConfig::new(env.external_ips[0], env.wan_ifindex, self.port_min, self.port_max)
            .with_lan_ifindex(env.lan_ifindex);
        for (slot, ip) in config.external_addrs_be.iter_mut().zip(&env.external_ips) {
            *slot = u32::from_ne_bytes(ip.octets());
        }
        config.pool_len = env.external_ips.len() as u32;
        config.port_parity = u8::from(self.port_parity);
        config.port_class = u8::from(self.port_class && self.low_port_range.is_some());
        (config.low_port_min, config.low_port_max) = self.low_port_range.unwrap_or((0, 0));
        config.filtering_tcp = self.filtering.tcp.datapath_value();
        config.filtering_udp = self.filtering.udp.datapath_value();
        config.filtering_icmp = self.filtering.icmp.datapath_value();
        config.permit_ttl_tcp_ns = self.timeouts.permit_ttl_ns(nat_common::proto::TCP);
        config.permit_ttl_udp_ns = self.timeouts.permit_ttl_ns(nat_common::proto::UDP);
        config.permit_ttl_icmp_ns = self.timeouts.permit_ttl_ns(nat_common::proto::ICMP);
        config.ports_per_host = self.ports_per_host;
        for (prefix, connected) in env.inside_prefixes() {
            config = config.with_inside_prefix(prefix, connected);
        }
        for addr in &env.own_addrs {
            config = config.with_own_addr(*addr);
        }
        config.wan_drop_listed = u32::from(!self.wan_drop_sources.is_empty());
        config
    }
}

/// One problem with one setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The key as written in the file (`timeouts.udp`), with the flag if it
    /// came from the command line.
    pub field: String,
    pub value: String,
    pub allowed: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.value.is_empty() {
            write!(f, "{}: {}", self.field, self.allowed)
        } else {
            write!(f, "{} = {}: {}", self.field, self.value, self.allowed)
        }
    }
}

/// All errors of one validation, printed one per line.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} configuration error(s):", self.0.len())?;
        for e in &self.0 {
            write!(f, "\n  - {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Values from the command line; each one overrides the file's.
#[derive(Default, Debug, Clone)]
pub struct Overrides {
    pub lan: Option<String>,
    pub wan: Option<String>,
    pub external_ip: Option<String>,
    pub port_range: Option<String>,
    pub xdp_mode: Option<String>,
    /// One filtering mode for every protocol (`filtering.*`).
    pub filtering: Option<String>,
}

/// Where a value came from, so the error names what the user typed.
#[derive(Clone, Copy)]
enum Origin {
    File,
    Flag(&'static str),
}

struct Raw {
    values: BTreeMap<String, (Value, Origin)>,
    errors: Vec<ConfigError>,
    warnings: Vec<String>,
}

impl Raw {
    fn field(&self, key: &str) -> String {
        match self.values.get(key) {
            Some((_, Origin::Flag(flag))) => format!("{flag} ({key})"),
            _ => key.to_string(),
        }
    }

    fn error(&mut self, key: &str, value: impl fmt::Display, allowed: impl Into<String>) {
        let field = self.field(key);
        self.errors.push(ConfigError { field, value: value.to_string(), allowed: allowed.into() });
    }

    fn string(&mut self, key: &str) -> Option<String> {
        match self.values.get(key).cloned() {
            None => None,
            Some((Value::String(s), _)) => Some(s),
            Some((other, _)) => {
                self.error(key, &other, "must be a string in quotes");
                None
            }
        }
    }

    fn boolean(&mut self, key: &str, default: bool) -> bool {
        match self.values.get(key).cloned() {
            None => default,
            Some((Value::Boolean(b), _)) => b,
            Some((other, _)) => {
                self.error(key, &other, "must be true or false");
                default
            }
        }
    }

    fn seconds(&mut self, key: &str, min: u64, default: Duration) -> Duration {
        match self.values.get(key).cloned() {
            None => default,
            Some((Value::Integer(n), _)) if (min as i64..=MAX_TIMEOUT_S as i64).contains(&n) => {
                Duration::from_secs(n as u64)
            }
            Some((other, _)) => {
                self.error(key, &other, format!("must be a whole number of seconds, {min}-{MAX_TIMEOUT_S}"));
                default
            }
        }
    }
}

impl Settings {
    /// Reads `file` (if any), applies the flags over it and validates the
    /// result. Returns the settings and warnings, or every error found.
    pub fn from_sources(file: Option<&Path>, flags: &Overrides) -> Result<(Settings, Vec<String>), ConfigErrors> {
        let mut raw = Raw { values: BTreeMap::new(), errors: Vec::new(), warnings: Vec::new() };
        if let Some(path) = file {
            read_file(path, &mut raw);
        }
        let flag_values = [
            ("lan", "--lan", &flags.lan),
            ("wan", "--wan", &flags.wan),
            ("external_ip", "--external-ip", &flags.external_ip),
            ("port_range", "--port-range", &flags.port_range),
            ("xdp_mode", "--xdp-mode", &flags.xdp_mode),
        ];
        for (key, flag, value) in flag_values {
            if let Some(v) = value {
                raw.values.insert(key.to_string(), (Value::String(v.clone()), Origin::Flag(flag)));
            }
        }
        if let Some(mode) = &flags.filtering {
            for key in ["filtering.tcp", "filtering.udp", "filtering.icmp"] {
                raw.values.insert(key.to_string(), (Value::String(mode.clone()), Origin::Flag("--filtering")));
            }
        }
        let settings = validate(&mut raw);
        if raw.errors.is_empty() {
            Ok((settings, raw.warnings))
        } else {
            Err(ConfigErrors(raw.errors))
        }
    }
}

fn read_file(path: &Path, raw: &mut Raw) {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            raw.errors.push(ConfigError {
                field: "--config".into(),
                value: path.display().to_string(),
                allowed: format!("cannot be read: {e}"),
            });
            return;
        }
    };
    let table: toml::Table = match text.parse() {
        Ok(t) => t,
        Err(e) => {
            raw.errors.push(ConfigError {
                field: path.display().to_string(),
                value: String::new(),
                allowed: format!("not valid TOML: {}", e.to_string().trim_end()),
            });
            return;
        }
    };
    flatten("", table, raw);
}

/// `timeouts = { udp = 30 }` becomes `timeouts.udp`; unknown keys are errors
/// (a typo must not silently fall back to a default).
fn flatten(prefix: &str, table: toml::Table, raw: &mut Raw) {
    for (key, value) in table {
        let full = if prefix.is_empty() { key } else { format!("{prefix}.{key}") };
        match value {
            Value::Table(inner) if full == "timeouts" || full == "filtering" => flatten(&full, inner, raw),
            value if KEYS.iter().any(|(k, _)| *k == full) => {
                raw.values.insert(full, (value, Origin::File));
            }
            _ => {
                let known: Vec<&str> = KEYS.iter().map(|(k, _)| *k).collect();
                raw.errors.push(ConfigError {
                    field: full,
                    value: String::new(),
                    allowed: format!("unknown setting; known: {}", known.join(", ")),
                });
            }
        }
    }
}

fn validate(raw: &mut Raw) -> Settings {
    let lan = interface(raw, "lan");
    let wan = interface(raw, "wan");
    if !lan.is_empty() && lan == wan {
        raw.error("wan", &wan, "must differ from lan: the gateway needs an inside and an outside interface");
    }

    let external_ips = external_ips(raw);

    let (port_min, port_max) = match raw.string("port_range") {
        None => DEFAULT_PORT_RANGE,
        Some(s) => parse_port_range(&s).unwrap_or_else(|why| {
            raw.error("port_range", format!("{s:?}"), why);
            DEFAULT_PORT_RANGE
        }),
    };

    let xdp_mode = match raw.string("xdp_mode").as_deref() {
        None | Some("native") => XdpModeSetting::Native,
        Some("generic") => XdpModeSetting::Generic,
        Some(other) => {
            raw.error("xdp_mode", format!("{other:?}"), "must be \"native\" (driver) or \"generic\" (skb, slower)");
            XdpModeSetting::Native
        }
    };

    let port_hold = raw.seconds("port_hold", 0, DEFAULT_PORT_HOLD);
    let ports_per_host = match raw.values.get("ports_per_host").cloned() {
        None => DEFAULT_PORTS_PER_HOST,
        Some((Value::Integer(n), _)) if (0..=65535).contains(&n) => n as u32,
        Some((other, _)) => {
            raw.error("ports_per_host", &other, "must be a whole number of ports, 0-65535 (0: no limit)");
            DEFAULT_PORTS_PER_HOST
        }
    };
    let defaults = Timeouts::default();
    // The transitory timer of RFC 5382: both, unless set one by one.
    let transitory = raw.values.contains_key("timeouts.tcp_transitory").then(|| raw.seconds("timeouts.tcp_transitory", 1, defaults.tcp_opening));
    let timeouts = Timeouts {
        udp: raw.seconds("timeouts.udp", 1, defaults.udp),
        icmp: raw.seconds("timeouts.icmp", 1, defaults.icmp),
        tcp_established: raw.seconds("timeouts.tcp_established", 1, defaults.tcp_established),
        tcp_opening: raw.seconds("timeouts.tcp_opening", 1, transitory.unwrap_or(defaults.tcp_opening)),
        tcp_closing: raw.seconds("timeouts.tcp_closing", 1, transitory.unwrap_or(defaults.tcp_closing)),
    };
    for (name, minimum) in RFC_MINIMUMS_S {
        let key = format!("timeouts.{name}");
        if let Some((Value::Integer(n), _)) = raw.values.get(&key)
            && (*n as u64) < minimum
        {
            raw.warnings.push(format!(
                "{key} = {n} is below the RFC minimum of {minimum} s: long-lived idle flows will break"
            ));
        }
    }

    let mut filtering_of = |key: &str| match raw.string(key) {
        None => FilteringMode::EndpointIndependent,
        Some(s) => FilteringMode::parse(&s).unwrap_or_else(|| {
            raw.error(key, format!("{s:?}"), format!("must be {FILTERING_ALLOWED}"));
            FilteringMode::EndpointIndependent
        }),
    };
    let filtering = Filtering {
        tcp: filtering_of("filtering.tcp"),
        udp: filtering_of("filtering.udp"),
        icmp: filtering_of("filtering.icmp"),
    };

    let port_parity = raw.boolean("port_parity", true);
    let log_mappings = raw.boolean("log_mappings", false);
    let port_class = raw.boolean("port_class", true);
    let low_port_range = raw.string("low_port_range").and_then(|s| match parse_range(&s, 1, LOWEST_NAT_PORT - 1) {
        Ok(range) => Some(range),
        Err(why) => {
            raw.error("low_port_range", format!("{s:?}"), why);
            None
        }
    });
    let inside_prefixes = prefixes(raw, "inside_prefixes", nat_common::MAX_INSIDE_PREFIXES);
    let wan_drop_sources = prefixes(raw, "wan_drop_sources", nat_common::MAX_WAN_DROP_SOURCES as usize);

    Settings {
        lan,
        wan,
        external_ips,
        port_min,
        port_max,
        port_parity,
        port_class,
        low_port_range,
        xdp_mode,
        port_hold,
        ports_per_host,
        log_mappings,
        timeouts,
        filtering,
        inside_prefixes,
        wan_drop_sources,
    }
}

/// A list of prefixes under `key`: "A.B.C.D/LEN" each (a bare address is a
/// /32), at most `max`, no special-purpose address space (RFC 6890).
fn prefixes(raw: &mut Raw, key: &str, max: usize) -> Vec<Prefix> {
    let items = match raw.values.get(key).cloned() {
        None => return Vec::new(),
        Some((Value::Array(items), _)) => items,
        Some((other, _)) => {
            raw.error(key, &other, "must be a list of prefixes in quotes, e.g. [\"10.20.0.0/16\"]");
            return Vec::new();
        }
    };
    let mut found = Vec::new();
    for item in items {
        let Some(text) = item.as_str() else {
            raw.error(key, &item, "each entry must be a prefix in quotes, e.g. \"10.20.0.0/16\"");
            continue;
        };
        match parse_prefix(text) {
            Ok(prefix) if found.contains(&prefix) => raw.error(key, format!("{text:?}"), "is listed twice"),
            Ok(prefix) => found.push(prefix),
            Err(why) => raw.error(key, format!("{text:?}"), why),
        }
    }
    if found.len() > max {
        raw.error(key, format!("{} prefixes", found.len()), format!("at most {max}"));
        found.truncate(max);
    }
    found
}

/// "A.B.C.D/LEN" (or "A.B.C.D", a /32) with no host bits set, outside the
/// special-purpose blocks no packet may come from (0/8, 127/8, 224/4, 240/4).
pub fn parse_prefix(text: &str) -> Result<Prefix, String> {
    let (addr, len) = match text.split_once('/') {
        Some((addr, len)) => (addr, len.trim().parse::<u8>().ok().filter(|l| *l <= 32)),
        None => (text, Some(32)),
    };
    let (Ok(addr), Some(len)) = (addr.trim().parse::<Ipv4Addr>(), len) else {
        return Err("must be an IPv4 prefix \"A.B.C.D/LEN\" with LEN 0-32, e.g. \"10.20.0.0/16\"".into());
    };
    let prefix = Prefix::new(addr, len);
    if prefix.network() != addr {
        return Err(format!("has host bits set: the prefix is {}/{len}", prefix.network()));
    }
    let special = [(Ipv4Addr::new(0, 0, 0, 0), 8), (Ipv4Addr::new(127, 0, 0, 0), 8), (Ipv4Addr::new(224, 0, 0, 0), 3)];
    if special.iter().any(|&(addr, len)| prefix.overlaps(&Prefix::new(addr, len))) {
        return Err("overlaps special-purpose space (0/8, 127/8, 224/4, 240/4), which no packet may come from and the gateway drops anyway".into());
    }
    Ok(prefix)
}

/// `external_ip`: one address (a string; `--external-ip` takes a
/// comma-separated list) or a list of up to MAX_POOL_ADDRS distinct ones.
fn external_ips(raw: &mut Raw) -> Vec<Ipv4Addr> {
    let texts: Vec<String> = match raw.values.get("external_ip").cloned() {
        None => return Vec::new(),
        Some((Value::String(s), _)) => s.split(',').map(|t| t.trim().to_string()).collect(),
        Some((Value::Array(items), _)) => items.iter().map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string)).collect(),
        Some((other, _)) => {
            raw.error("external_ip", &other, "must be an IPv4 address in quotes, or a list of them");
            return Vec::new();
        }
    };
    let mut ips = Vec::new();
    for text in texts {
        match text.parse::<Ipv4Addr>() {
            Ok(ip) if ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() || ip.is_loopback() => {
                raw.error("external_ip", &text, "must be a unicast IPv4 address (not 0.0.0.0, loopback, multicast or broadcast)")
            }
            Ok(ip) if ips.contains(&ip) => raw.error("external_ip", &text, "is listed twice"),
            Ok(ip) => ips.push(ip),
            Err(_) => raw.error("external_ip", format!("{text:?}"), "must be an IPv4 address, e.g. 203.0.113.1"),
        }
    }
    if ips.len() > nat_common::MAX_POOL_ADDRS {
        let max = nat_common::MAX_POOL_ADDRS;
        raw.error("external_ip", format!("{} addresses", ips.len()), format!("at most {max} addresses in the pool"));
        ips.truncate(max);
    }
    ips
}

fn interface(raw: &mut Raw, key: &str) -> String {
    let flag = if key == "lan" { "--lan" } else { "--wan" };
    match raw.string(key) {
        None => {
            raw.errors.push(ConfigError {
                field: key.into(),
                value: String::new(),
                allowed: format!("required: give {flag} IF or `{key} = \"IF\"` in the config file"),
            });
            String::new()
        }
        Some(name) if name.is_empty() || name.len() > MAX_IFNAME_LEN || name.contains(['/', ' ', '\0']) => {
            raw.error(key, format!("{name:?}"), format!("must be an interface name of 1-{MAX_IFNAME_LEN} characters without '/' or spaces"));
            String::new()
        }
        Some(name) => name,
    }
}

/// "LO-HI" with LOWEST_NAT_PORT <= LO <= HI <= 65535.
pub fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    parse_range(s, LOWEST_NAT_PORT, 65535)
}

/// "LO-HI" with `min <= LO <= HI <= max`.
fn parse_range(s: &str, min: u16, max: u16) -> Result<(u16, u16), String> {
    let allowed = format!("must be \"LO-HI\" with {min} <= LO <= HI <= {max}, e.g. \"{}-{}\"", min.max(20000.min(max)), max.min(32767));
    let (lo, hi) = s.split_once('-').ok_or_else(|| allowed.clone())?;
    let (Ok(lo), Ok(hi)) = (lo.trim().parse::<u16>(), hi.trim().parse::<u16>()) else {
        return Err(allowed);
    };
    if lo < min || lo > hi || hi > max {
        return Err(allowed);
    }
    Ok((lo, hi))
}

/// What natd needs from the machine, read from the network namespace it runs in.
pub struct Environment {
    pub lan_ifindex: u32,
    pub wan_ifindex: u32,
    /// The external address pool (at least one).
    pub external_ips: Vec<Ipv4Addr>,
    /// The prefixes of the LAN interface's addresses: inside by default.
    pub lan_prefixes: Vec<Prefix>,
    /// `inside_prefixes` of the settings: routed inside networks.
    pub routed_prefixes: Vec<Prefix>,
    /// Every IPv4 address of the LAN and WAN interfaces: no packet from
    /// either side may claim one as its source.
    pub own_addrs: Vec<Ipv4Addr>,
}

impl Environment {
    /// Every inside prefix, with whether it is one of the LAN interface's
    /// own (whose network and broadcast addresses are no host's).
    pub fn inside_prefixes(&self) -> impl Iterator<Item = (Prefix, bool)> + '_ {
        self.lan_prefixes.iter().map(|p| (*p, true)).chain(self.routed_prefixes.iter().map(|p| (*p, false)))
    }
}

impl Environment {
    /// Checks the settings against this network namespace: every problem is
    /// reported, none is fixed behind the user's back.
    pub fn check(settings: &Settings) -> Result<Environment, ConfigErrors> {
        let mut errors = Vec::new();
        let mut err = |field: &str, value: &str, allowed: String| {
            errors.push(ConfigError { field: field.into(), value: value.into(), allowed })
        };
        let lan_ifindex = ifindex(&settings.lan);
        let wan_ifindex = ifindex(&settings.wan);
        for (key, name, index) in [("lan", &settings.lan, lan_ifindex), ("wan", &settings.wan, wan_ifindex)] {
            if index.is_none() {
                err(key, name, "no such interface in this network namespace (see `ip link`)".into());
            }
        }
        let external_ips = match settings.external_ips.first() {
            Some(_) => Some(settings.external_ips.clone()),
            None if wan_ifindex.is_some() => {
                let found = first_ipv4(&settings.wan);
                if found.is_none() {
                    err(
                        "wan",
                        &settings.wan,
                        format!(
                            "has no IPv4 address to translate to: add one (ip addr add ADDR/LEN dev {}) or set external_ip / --external-ip",
                            settings.wan
                        ),
                    );
                }
                found.map(|ip| vec![ip])
            }
            None => None,
        };

        let range = format!("{}-{}", settings.port_min, settings.port_max);
        if let Some((lo, hi)) = ephemeral_range()
            && settings.port_min <= hi
            && lo <= settings.port_max
        {
            err(
                "port_range",
                &range,
                format!(
                    "overlaps the kernel's ephemeral ports {lo}-{hi} (net.ipv4.ip_local_port_range): the gateway's own \
                     connections would collide with NAT mappings; pick a range outside it"
                ),
            );
        }
        let ranges = [("port_range", Some((settings.port_min, settings.port_max))), ("low_port_range", settings.low_port_range)];
        for (proto, port) in listening_ports(external_ips.as_deref().unwrap_or_default()) {
            for (key, range) in ranges {
                if let Some((lo, hi)) = range
                    && (lo..=hi).contains(&port)
                {
                    err(
                        key,
                        &format!("{lo}-{hi}"),
                        format!(
                            "contains {proto} port {port}, where a local service listens: inbound packets for it would \
                             be taken for NAT traffic; move the service or the range"
                        ),
                    );
                }
            }
        }

        // BCP 38: the sources the LAN side translates. The LAN interface's
        // own prefixes always; routed ones on the operator's word.
        let lan_addrs = interface_addresses(&settings.lan);
        let wan_addrs = interface_addresses(&settings.wan);
        let mut lan_prefixes: Vec<Prefix> = Vec::new();
        for (addr, len) in &lan_addrs {
            let prefix = Prefix::new(*addr, *len);
            if !lan_prefixes.contains(&prefix) {
                lan_prefixes.push(prefix);
            }
        }
        if lan_ifindex.is_some() && lan_prefixes.is_empty() && settings.inside_prefixes.is_empty() {
            err(
                "lan",
                &settings.lan,
                format!(
                    "has no IPv4 address, and inside_prefixes is empty: no inside source would be translated; add an \
                     address (ip addr add ADDR/LEN dev {}) or list the inside networks in inside_prefixes",
                    settings.lan
                ),
            );
        }
        let inside_count = lan_prefixes.len() + settings.inside_prefixes.len();
        if inside_count > nat_common::MAX_INSIDE_PREFIXES {
            err(
                "inside_prefixes",
                &format!("{} prefixes with the LAN interface's {}", inside_count, lan_prefixes.len()),
                format!("at most {} inside prefixes in all: merge routed networks into shorter prefixes", nat_common::MAX_INSIDE_PREFIXES),
            );
        }
        let wan_prefixes: Vec<Prefix> = wan_addrs.iter().map(|(addr, len)| Prefix::new(*addr, *len)).collect();
        for inside in &settings.inside_prefixes {
            let text = format!("{}/{}", inside.network(), inside.len());
            if let Some(wan) = wan_prefixes.iter().find(|wan| wan.overlaps(inside)) {
                err(
                    "inside_prefixes",
                    &text,
                    format!("overlaps the WAN interface's network {}/{}: inside networks lie behind the LAN interface", wan.network(), wan.len()),
                );
            }
            if let Some(ip) = external_ips.iter().flatten().find(|ip| inside.contains(u32::from_ne_bytes(ip.octets()))) {
                err("inside_prefixes", &text, format!("holds the external address {ip}: it must be outside every inside network"));
            }
        }
        let mut own_addrs: Vec<Ipv4Addr> = Vec::new();
        for (addr, _) in lan_addrs.iter().chain(&wan_addrs) {
            let in_pool = external_ips.iter().flatten().any(|ip| ip == addr);
            if !in_pool && !own_addrs.contains(addr) {
                own_addrs.push(*addr);
            }
        }
        if own_addrs.len() > nat_common::MAX_OWN_ADDRS {
            err(
                "lan",
                &format!("{} and {}: {} addresses", settings.lan, settings.wan, own_addrs.len()),
                format!("the LAN and WAN interfaces may hold at most {} IPv4 addresses besides the external ones", nat_common::MAX_OWN_ADDRS),
            );
        }

        match (lan_ifindex, wan_ifindex, external_ips) {
            (Some(lan_ifindex), Some(wan_ifindex), Some(external_ips)) if errors.is_empty() => Ok(Environment {
                lan_ifindex,
                wan_ifindex,
                external_ips,
                lan_prefixes,
                routed_prefixes: settings.inside_prefixes.clone(),
                own_addrs,
            }),
            _ => Err(ConfigErrors(errors)),
        }
    }
}

pub fn ifindex(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => None,
        i => Some(i),
    }
}

/// The first IPv4 address of an interface.
pub fn first_ipv4(ifname: &str) -> Option<Ipv4Addr> {
    interface_addresses(ifname).first().map(|(addr, _)| *addr)
}

/// Every IPv4 address of an interface with its prefix length, from
/// `getifaddrs`, in the kernel's order (the primary address first).
pub fn interface_addresses(ifname: &str) -> Vec<(Ipv4Addr, u8)> {
    let mut addrs: *mut libc::ifaddrs = std::ptr::null_mut();
    if unsafe { libc::getifaddrs(&mut addrs) } != 0 {
        return Vec::new();
    }
    let mut found = Vec::new();
    let mut cursor = addrs;
    while !cursor.is_null() {
        // SAFETY: getifaddrs returned a valid list, freed below.
        let entry = unsafe { &*cursor };
        cursor = entry.ifa_next;
        if entry.ifa_addr.is_null() || unsafe { (*entry.ifa_addr).sa_family } != libc::AF_INET as u16 {
            continue;
        }
        // SAFETY: a NUL-terminated name owned by the list.
        let name = unsafe { std::ffi::CStr::from_ptr(entry.ifa_name) };
        if name.to_bytes() != ifname.as_bytes() {
            continue;
        }
        // SAFETY: AF_INET entries hold sockaddr_in addresses (the netmask too, when set).
        let addr = unsafe { &*(entry.ifa_addr as *const libc::sockaddr_in) };
        let len = if entry.ifa_netmask.is_null() {
            32
        } else {
            let mask = unsafe { &*(entry.ifa_netmask as *const libc::sockaddr_in) };
            u32::from_be(mask.sin_addr.s_addr).count_ones() as u8
        };
        found.push((Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)), len));
    }
    unsafe { libc::freeifaddrs(addrs) };
    found
}

/// `net.ipv4.ip_local_port_range` of this namespace.
fn ephemeral_range() -> Option<(u16, u16)> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut it = text.split_whitespace().map(|w| w.parse::<u16>());
    Some((it.next()?.ok()?, it.next()?.ok()?))
}

/// TCP listeners and bound UDP sockets on the wildcard or `external` address,
/// from /proc/net/{tcp,udp} (per network namespace).
fn listening_ports(external: &[Ipv4Addr]) -> Vec<(&'static str, u16)> {
    const TCP_LISTEN: &str = "0A";
    let mut ports = Vec::new();
    for (proto, path) in [("tcp", "/proc/net/tcp"), ("udp", "/proc/net/udp")] {
        let Ok(text) = std::fs::read_to_string(path) else { continue };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state)) = (fields.get(1), fields.get(3)) else { continue };
            if proto == "tcp" && *state != TCP_LISTEN {
                continue;
            }
            let Some((addr_hex, port_hex)) = local.split_once(':') else { continue };
            let (Ok(addr), Ok(port)) = (u32::from_str_radix(addr_hex, 16), u16::from_str_radix(port_hex, 16)) else {
                continue;
            };
            // /proc prints the network-order bytes read as a host integer.
            let addr = Ipv4Addr::from(u32::from_be(addr));
            if addr.is_unspecified() || external.contains(&addr) {
                ports.push((proto, port));
            }
        }
    }
    ports
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    /// A config file in the temp dir, removed on drop.
    struct TempFile(std::path::PathBuf);

    fn file(text: &str) -> TempFile {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("natd-config-test-{}-{n}.toml", std::process::id()));
        std::fs::File::create(&path).unwrap().write_all(text.as_bytes()).unwrap();
        TempFile(path)
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// A machine with a LAN on 10.77.1.0/24 (the gateway at .1).
    fn test_environment(external_ips: Vec<Ipv4Addr>) -> Environment {
        Environment {
            lan_ifindex: 1,
            wan_ifindex: 2,
            external_ips,
            lan_prefixes: vec![Prefix::new(Ipv4Addr::new(10, 77, 1, 0), 24)],
            routed_prefixes: Vec::new(),
            own_addrs: vec![Ipv4Addr::new(10, 77, 1, 1)],
        }
    }

    fn errors(text: &str, flags: &Overrides) -> Vec<ConfigError> {
        let f = file(text);
        Settings::from_sources(Some(&f.0), flags).unwrap_err().0
    }

    #[test]
    fn a_full_file_is_read_and_flags_override_it() {
        let f = file(
            r#"
            lan = "eth1"
            wan = "eth0"
            external_ip = "203.0.113.7"
            port_range = "40000-40099"
            xdp_mode = "generic"
            port_hold = 5
            [timeouts]
            udp = 30
            icmp = 10
            tcp_established = 600
            tcp_transitory = 20
            "#,
        );
        let (s, warnings) = Settings::from_sources(Some(&f.0), &Overrides::default()).unwrap();
        assert_eq!((s.lan.as_str(), s.wan.as_str()), ("eth1", "eth0"));
        assert_eq!(s.external_ips, [Ipv4Addr::new(203, 0, 113, 7)]);
        assert_eq!((s.port_min, s.port_max), (40000, 40099));
        assert_eq!(s.xdp_mode, XdpModeSetting::Generic);
        assert_eq!(s.port_hold, Duration::from_secs(5));
        assert_eq!(s.timeouts.udp, Duration::from_secs(30));
        assert_eq!((s.timeouts.tcp_opening, s.timeouts.tcp_closing), (Duration::from_secs(20), Duration::from_secs(20)), "tcp_transitory sets both");
        assert_eq!(warnings.len(), 4, "every timeout is below its RFC minimum: {warnings:?}");

        let flags = Overrides { wan: Some("wan0".into()), port_range: Some("50000-50010".into()), ..Default::default() };
        let (s, _) = Settings::from_sources(Some(&f.0), &flags).unwrap();
        assert_eq!((s.lan.as_str(), s.wan.as_str()), ("eth1", "wan0"));
        assert_eq!((s.port_min, s.port_max), (50000, 50010));
    }

    /// RFC 4787 REQ-5, RFC 5382 REQ-5, RFC 5508 REQ-2: default timers.
    #[test]
    fn defaults_apply_to_what_is_not_set() {
        let flags = Overrides { lan: Some("a".into()), wan: Some("b".into()), ..Default::default() };
        let (s, warnings) = Settings::from_sources(None, &flags).unwrap();
        assert_eq!((s.port_min, s.port_max), DEFAULT_PORT_RANGE);
        assert_eq!(s.port_hold, DEFAULT_PORT_HOLD);
        assert_eq!(s.timeouts.tcp_established, Duration::from_secs(7440));
        assert_eq!(s.xdp_mode, XdpModeSetting::Native);
        assert!(warnings.is_empty());
    }

    #[test]
    fn every_error_is_reported_with_field_value_and_what_is_allowed() {
        let errs = errors(
            r#"
            lan = "eth1"
            wan = "eth1"
            external_ip = "300.1.2.3"
            port_range = "9000-100"
            xdp_mode = "fast"
            port_hold = -1
            colour = "blue"
            [timeouts]
            udp = "long"
            tcp_establshed = 10
            "#,
            &Overrides::default(),
        );
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        for expected in ["wan", "external_ip", "port_range", "xdp_mode", "port_hold", "colour", "timeouts.udp", "timeouts.tcp_establshed"] {
            assert!(fields.contains(&expected), "no error for {expected}: {errs:#?}");
        }
        let range = errs.iter().find(|e| e.field == "port_range").unwrap();
        assert_eq!(range.value, "\"9000-100\"");
        assert!(range.allowed.contains("LO <= HI"), "{range}");
    }

    #[test]
    fn missing_interfaces_and_bad_flags_name_the_flag() {
        let errs = Settings::from_sources(None, &Overrides { port_range: Some("1-2".into()), ..Default::default() })
            .unwrap_err()
            .0;
        let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert!(text.iter().any(|e| e.starts_with("lan: required")), "{text:?}");
        assert!(text.iter().any(|e| e.starts_with("wan: required")), "{text:?}");
        assert!(text.iter().any(|e| e.starts_with("--port-range (port_range) = \"1-2\"")), "{text:?}");
    }

    #[test]
    fn toml_syntax_errors_say_where() {
        let errs = errors("lan = \"eth1\nwan = 3", &Overrides::default());
        assert!(errs[0].allowed.contains("not valid TOML") && errs[0].allowed.contains("line"), "{errs:?}");
    }

    #[test]
    fn the_example_config_is_valid_and_spells_out_the_defaults() {
        let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/natd.toml");
        let (s, warnings) = Settings::from_sources(Some(Path::new(example)), &Overrides::default()).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!((s.port_min, s.port_max), DEFAULT_PORT_RANGE);
        assert_eq!(s.port_hold, DEFAULT_PORT_HOLD);
        let d = Timeouts::default();
        assert_eq!(
            (s.timeouts.udp, s.timeouts.icmp, s.timeouts.tcp_established, s.timeouts.tcp_opening, s.timeouts.tcp_closing),
            (d.udp, d.icmp, d.tcp_established, d.tcp_opening, d.tcp_closing)
        );        assert_eq!(s.filtering, Filtering::default());
    }

    /// RFC 4787 REQ-2 / REQ-3a / REQ-4 settings: a pool as a list or a
    /// comma-separated flag, parity and class switches, the low range below
    /// 1024; each mistake named.
    #[test]
    fn pool_parity_and_class_settings() {
        let f = file("lan = \"a\"\nwan = \"b\"\nexternal_ip = [\"203.0.113.1\", \"198.51.100.7\"]\nport_parity = false\nlow_port_range = \"600-699\"\n");
        let (s, _) = Settings::from_sources(Some(&f.0), &Overrides::default()).unwrap();
        assert_eq!(s.external_ips, [Ipv4Addr::new(203, 0, 113, 1), Ipv4Addr::new(198, 51, 100, 7)]);
        assert_eq!((s.port_parity, s.port_class, s.low_port_range), (false, true, Some((600, 699))));
        let env = test_environment(s.external_ips.clone());
        let config = s.gateway_config(&env);
        assert_eq!((config.pool_len, config.port_parity, config.port_class), (2, 0, 1));
        assert_eq!(config.external_addrs_be[1], u32::from_ne_bytes([198, 51, 100, 7]));

        let flags = Overrides { external_ip: Some("203.0.113.1, 203.0.113.5".into()), ..Overrides::default() };
        let (s, _) = Settings::from_sources(Some(&f.0), &flags).unwrap();
        assert_eq!(s.external_ips.len(), 2);

        let nine: Vec<String> = (1..=9).map(|i| format!("\"203.0.113.{i}\"")).collect();
        let bad = format!(
            "lan = \"a\"\nwan = \"b\"\nexternal_ip = [{}, \"203.0.113.1\"]\nport_class = \"yes\"\nlow_port_range = \"900-1100\"\n",
            nine.join(", ")
        );
        let errs = errors(&bad, &Overrides::default());
        let said = |field: &str, what: &str| errs.iter().any(|e| e.field == field && e.to_string().contains(what));
        assert!(said("external_ip", "listed twice"), "{errs:#?}");
        assert!(said("external_ip", "at most 8"), "{errs:#?}");
        assert!(said("port_class", "true or false"), "{errs:#?}");
        assert!(said("low_port_range", "HI <= 1023"), "{errs:#?}");
    }

    /// RFC 4787 REQ-8 / RFC 5382 REQ-3: filtering is selectable per protocol
    /// in the file, `--filtering` sets every protocol, a bad value names the
    /// key and the three choices, and what the datapath gets matches.
    #[test]
    fn filtering_is_chosen_per_protocol_and_reaches_the_datapath() {
        let f = file("lan = \"a\"\nwan = \"b\"\n[filtering]\ntcp = \"address-and-port-dependent\"\nudp = \"address-dependent\"\n");
        let (s, _) = Settings::from_sources(Some(&f.0), &Overrides::default()).unwrap();
        assert_eq!(
            (s.filtering.tcp, s.filtering.udp, s.filtering.icmp),
            (FilteringMode::AddressAndPortDependent, FilteringMode::AddressDependent, FilteringMode::EndpointIndependent)
        );
        let env = test_environment(vec![Ipv4Addr::new(203, 0, 113, 1)]);
        let config = s.gateway_config(&env);
        assert_eq!((config.filtering_tcp, config.filtering_udp, config.filtering_icmp), (2, 1, 0));
        assert_eq!(config.permit_ttl_udp_ns, 301_000_000_000, "UDP permits live the UDP timeout and one clock tick");
        assert!(config.filters_by_remote());

        let flags = Overrides { filtering: Some("address-dependent".into()), ..Overrides::default() };
        let (s, _) = Settings::from_sources(Some(&f.0), &flags).unwrap();
        assert!([s.filtering.tcp, s.filtering.udp, s.filtering.icmp].iter().all(|m| *m == FilteringMode::AddressDependent));

        let errs = errors("lan = \"a\"\nwan = \"b\"\n[filtering]\nudp = \"full-cone\"\n", &Overrides::default());
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!((errs[0].field.as_str(), errs[0].value.as_str()), ("filtering.udp", "\"full-cone\""));
        assert!(errs[0].allowed.contains("address-and-port-dependent"), "{}", errs[0]);
        let flags = Overrides { filtering: Some("strict".into()), ..Overrides::default() };
        let errs = errors("lan = \"a\"\nwan = \"b\"\n", &flags);
        assert!(errs.iter().all(|e| e.field.starts_with("--filtering")), "{errs:?}");
    }

    /// BCP 38 / BCP 84 settings: routed inside prefixes join the LAN's own
    /// (which alone have their network and broadcast addresses refused), the
    /// operator's WAN drop list switches its lookup on, and every mistake is
    /// named with the value and the fix.
    #[test]
    fn inside_prefixes_and_wan_drop_sources() {
        let f = file("lan = \"a\"\nwan = \"b\"\ninside_prefixes = [\"10.88.0.0/16\"]\nwan_drop_sources = [\"198.18.0.0/15\", \"192.0.2.7\"]\n");
        let (s, _) = Settings::from_sources(Some(&f.0), &Overrides::default()).unwrap();
        assert_eq!(s.inside_prefixes, [Prefix::new(Ipv4Addr::new(10, 88, 0, 0), 16)]);
        assert_eq!(s.wan_drop_sources, [Prefix::new(Ipv4Addr::new(198, 18, 0, 0), 15), Prefix::new(Ipv4Addr::new(192, 0, 2, 7), 32)]);
        let mut env = test_environment(vec![Ipv4Addr::new(203, 0, 113, 1)]);
        env.routed_prefixes = s.inside_prefixes.clone();
        let config = s.gateway_config(&env);
        assert_eq!((config.inside_len, config.inside_connected, config.wan_drop_listed), (2, 0b01, 1));
        let be = |a: [u8; 4]| u32::from_ne_bytes(a);
        assert_eq!(config.lan_source_refusal(be([10, 88, 3, 4])), None);
        assert_eq!(config.lan_source_refusal(be([10, 88, 0, 0])), None, "a routed prefix's edges are the inside router's business");
        assert_eq!(config.lan_source_refusal(be([10, 77, 1, 255])), Some(nat_common::Reason::DropLanSourceReserved));
        assert_eq!(config.lan_source_refusal(be([10, 77, 1, 1])), Some(nat_common::Reason::DropLanSourceReserved));
        assert_eq!(config.lan_source_refusal(be([192, 168, 0, 9])), Some(nat_common::Reason::DropLanSourceNotInside));

        let errs = errors(
            "lan = \"a\"\nwan = \"b\"\ninside_prefixes = [\"10.88.0.1/16\", \"127.0.0.0/8\", \"10.9.0.0/33\", 7]\nwan_drop_sources = \"1.2.3.0/24\"\n",
            &Overrides::default(),
        );
        let said = |field: &str, what: &str| errs.iter().any(|e| e.field == field && e.to_string().contains(what));
        assert!(said("inside_prefixes", "host bits set: the prefix is 10.88.0.0/16"), "{errs:#?}");
        assert!(said("inside_prefixes", "special-purpose"), "{errs:#?}");
        assert!(said("inside_prefixes", "LEN 0-32"), "{errs:#?}");
        assert!(said("inside_prefixes", "in quotes"), "{errs:#?}");
        assert!(said("wan_drop_sources", "must be a list"), "{errs:#?}");
        assert_eq!(parse_prefix("0.0.0.0/0").unwrap_err(), parse_prefix("240.0.0.0/4").unwrap_err(), "a /0 spans special-purpose space");
    }

    #[test]
    fn port_ranges() {
        assert_eq!(parse_port_range("20000-32767"), Ok((20000, 32767)));
        assert_eq!(parse_port_range("1024-1024"), Ok((1024, 1024)));
        assert!(parse_port_range("80-90").is_err());
        assert!(parse_port_range("30000").is_err());
        assert!(parse_port_range("30000-70000").is_err());
    }
}
