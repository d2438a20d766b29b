//! Reading the settings: an optional TOML file, command-line flags over it,
//! and one validation pass that reports every error at once, each naming
//! the field (and the flag it came from), the value it got, and what is
//! allowed. Nothing here looks at the machine (`machine` does).

use std::{
    collections::BTreeMap,
    fmt,
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    time::Duration,
};

use nat_common::{
    MAX_SESSIONS, MIN_SESSIONS, Prefix,
    forward::{MAX_BACKENDS, MAX_FORWARDS},
    proto,
};
use toml::Value;

use crate::config::schema::{
    DEFAULT_FALL, DEFAULT_HEALTH_INTERVAL, DEFAULT_HEALTH_PATH, DEFAULT_HEALTH_TIMEOUT, DEFAULT_LOG_LEVEL, DEFAULT_PORT_HOLD, DEFAULT_PORT_RANGE,
    DEFAULT_PORTS_PER_HOST, DEFAULT_RISE, DEFAULT_WEIGHT, FILTERING_ALLOWED, Filtering, FilteringMode, Forward, HealthCheck, HealthKind, KEYS, LOG_LEVELS,
    MAX_FORWARD_RANGE, MAX_WEIGHT, InterfaceLoss, MappingLogTarget, PartialChecksums, Proxy, SYSLOG_SOCKET, Server, Settings, Timeouts, XdpModeSetting,
};

mod proxies;

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
    pub log_level: Option<String>,
    /// `--metrics ADDR:PORT`.
    pub metrics: Option<String>,
    /// `--pin-root DIR`.
    pub pin_root: Option<String>,
    /// `--forward PROTO:PORT=SERVER[,SERVER...]`, each one forward more
    /// besides the file's.
    pub forwards: Vec<String>,
}

/// Where a value came from, so the error names what the user typed.
#[derive(Clone, Copy)]
enum Origin {
    File,
    Flag(&'static str),
}

struct Raw {
    values: BTreeMap<String, (Value, Origin)>,
    /// `[[forward]]` tables of the file, then `--forward` values.
    forwards: Vec<(Value, Origin)>,
    /// `[[proxy]]` tables of the file.
    proxies: Vec<Value>,
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

    /// A whole number within `min..=max`, `default` when absent; anything
    /// else is an error that says `allowed`.
    fn whole_number(&mut self, key: &str, min: u32, max: u32, default: u32, allowed: &str) -> u32 {
        match self.values.get(key).cloned() {
            None => default,
            Some((Value::Integer(n), _)) if (i64::from(min)..=i64::from(max)).contains(&n) => n as u32,
            Some((other, _)) => {
                self.error(key, &other, allowed);
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
        let mut raw = Raw { values: BTreeMap::new(), forwards: Vec::new(), proxies: Vec::new(), errors: Vec::new(), warnings: Vec::new() };
        if let Some(path) = file {
            read_file(path, &mut raw);
        }
        let flag_values = [
            ("lan", "--lan", &flags.lan),
            ("wan", "--wan", &flags.wan),
            ("external_ip", "--external-ip", &flags.external_ip),
            ("port_range", "--port-range", &flags.port_range),
            ("xdp_mode", "--xdp-mode", &flags.xdp_mode),
            ("log_level", "--log-level", &flags.log_level),
            ("metrics", "--metrics", &flags.metrics),
            ("pin_root", "--pin-root", &flags.pin_root),
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
        for forward in &flags.forwards {
            raw.forwards.push((Value::String(forward.clone()), Origin::Flag("--forward")));
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
            Value::Array(items) if full == "forward" => raw.forwards.extend(items.into_iter().map(|item| (item, Origin::File))),
            value if full == "forward" => raw.errors.push(ConfigError {
                field: full,
                value: value.to_string(),
                allowed: "must be forward tables: write each one as a [[forward]] section (two brackets)".into(),
            }),
            Value::Array(items) if full == "proxy" => raw.proxies.extend(items),
            value if full == "proxy" => raw.errors.push(ConfigError {
                field: full,
                value: value.to_string(),
                allowed: "must be proxy tables: write each one as a [[proxy]] section (two brackets)".into(),
            }),
            value if !is_section_key(&full) && KEYS.iter().any(|(k, _)| *k == full) => {
                raw.values.insert(full, (value, Origin::File));
            }
            _ => {
                let known: Vec<&str> = KEYS.iter().map(|(k, _)| *k).filter(|k| !is_section_key(k)).collect();
                raw.errors.push(ConfigError {
                    field: full,
                    value: String::new(),
                    allowed: format!("unknown setting; known: {}", known.join(", ")),
                });
            }
        }
    }
}

/// A key of a `[[forward]]` or `[[proxy]]` table, not a top-level one.
fn is_section_key(key: &str) -> bool {
    key.starts_with("forward.") || key.starts_with("proxy.")
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
    let ports_per_host = raw.whole_number("ports_per_host", 0, 65535, DEFAULT_PORTS_PER_HOST, "must be a whole number of ports, 0-65535 (0: no limit)");
    let max_sessions =
        raw.whole_number("max_sessions", MIN_SESSIONS, MAX_SESSIONS, MAX_SESSIONS, &format!("must be a whole number of sessions, {MIN_SESSIONS}-{MAX_SESSIONS}"));
    let defaults = Timeouts::default();
    // The transitory timer of RFC 5382: both, unless set one by one.
    let transitory = raw.values.contains_key("timeouts.tcp_transitory").then(|| raw.seconds("timeouts.tcp_transitory", 1, defaults.tcp_opening));
    let timeouts = Timeouts {
        udp: raw.seconds("timeouts.udp", 1, defaults.udp),
        icmp: raw.seconds("timeouts.icmp", 1, defaults.icmp),
        tcp_established: raw.seconds("timeouts.tcp_established", 1, defaults.tcp_established),
        tcp_opening: raw.seconds("timeouts.tcp_opening", 1, transitory.unwrap_or(defaults.tcp_opening)),
        tcp_closing: raw.seconds("timeouts.tcp_closing", 1, transitory.unwrap_or(defaults.tcp_closing)),
        sctp_init: raw.seconds("timeouts.sctp_init", 1, defaults.sctp_init),
        sctp_established: raw.seconds("timeouts.sctp_established", 1, defaults.sctp_established),
        sctp_closing: raw.seconds("timeouts.sctp_closing", 1, defaults.sctp_closing),
        esp: raw.seconds("timeouts.esp", 1, defaults.esp),
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
    let on_interface_loss = match raw.string("on_interface_loss").as_deref() {
        None | Some("exit") => InterfaceLoss::Exit,
        Some("wait") => InterfaceLoss::Wait,
        Some(other) => {
            raw.error("on_interface_loss", format!("{other:?}"), "must be \"exit\" (stop with an error) or \"wait\" (re-attach when the interface is back)");
            InterfaceLoss::Exit
        }
    };
    let mapping_log = match raw.string("mapping_log") {
        None => MappingLogTarget::Stderr,
        Some(text) => match mapping_log_target(&text) {
            Ok(target) => target,
            Err(why) => {
                raw.error("mapping_log", format!("{text:?}"), why);
                MappingLogTarget::Stderr
            }
        },
    };
    let port_class = raw.boolean("port_class", true);
    let low_port_range = raw.string("low_port_range").and_then(|s| match parse_range(&s, 1, LOWEST_NAT_PORT - 1) {
        Ok(range) => Some(range),
        Err(why) => {
            raw.error("low_port_range", format!("{s:?}"), why);
            None
        }
    });
    let log_level = match raw.string("log_level") {
        None => DEFAULT_LOG_LEVEL.to_string(),
        Some(level) if LOG_LEVELS.contains(&level.as_str()) => level,
        Some(other) => {
            raw.error("log_level", format!("{other:?}"), format!("must be one of {}", LOG_LEVELS.join(", ")));
            DEFAULT_LOG_LEVEL.to_string()
        }
    };
    let inside_prefixes = prefixes(raw, "inside_prefixes", nat_common::MAX_INSIDE_PREFIXES);
    let wan_drop_sources = prefixes(raw, "wan_drop_sources", nat_common::MAX_WAN_DROP_SOURCES as usize);
    let forwards = forwards(raw, external_ips.first().copied());
    let nat_ranges = [("port_range", Some((port_min, port_max))), ("low_port_range", low_port_range)];
    let proxies = proxies::proxies(raw, external_ips.first().copied(), &nat_ranges, &forwards);
    let metrics = metrics(raw, &nat_ranges, &proxies, &external_ips);
    let pin_root = raw.string("pin_root").and_then(|text| {
        let path = std::path::PathBuf::from(&text);
        if path.is_absolute() {
            Some(path)
        } else {
            raw.error("pin_root", format!("{text:?}"), "must be an absolute path to a bpffs, e.g. \"/sys/fs/bpf\"");
            None
        }
    });

    let partial_checksums = match raw.string("partial_checksums").as_deref() {
        None | Some("auto") => PartialChecksums::Auto,
        Some("test") => PartialChecksums::Test,
        Some(other) => {
            raw.error(
                "partial_checksums",
                format!("{other:?}"),
                "must be \"auto\" (not tested on a NIC's own interface in native mode) or \"test\" (every frame tested)",
            );
            PartialChecksums::Auto
        }
    };

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
        partial_checksums,
        port_hold,
        ports_per_host,
        max_sessions,
        log_mappings,
        mapping_log,
        on_interface_loss,
        timeouts,
        filtering,
        inside_prefixes,
        wan_drop_sources,
        log_level,
        forwards,
        proxies,
        metrics,
        pin_root,
    }
}

/// `metrics = "ADDR:PORT"`: where natd serves Prometheus metrics, clear of
/// the ports the datapath takes for NAT traffic and of the proxies' ports.
fn metrics(raw: &mut Raw, nat_ranges: &[(&str, Option<(u16, u16)>)], proxies: &[Proxy], external_ips: &[Ipv4Addr]) -> Option<SocketAddr> {
    let text = raw.string("metrics")?;
    let addr = match parse_metrics_addr(&text) {
        Ok(addr) => addr,
        Err(why) => {
            raw.error("metrics", format!("{text:?}"), why);
            return None;
        }
    };
    let port = addr.port();
    for (key, range) in nat_ranges {
        if let Some((lo, hi)) = range
            && (*lo..=*hi).contains(&port)
        {
            raw.error(
                "metrics",
                format!("{text:?}"),
                format!(
                    "port {port} is in {key} {lo}-{hi}, the ports natd hands out to outbound flows (the datapath takes \
                     inbound packets to them for NAT traffic): pick a port outside it, e.g. 9469"
                ),
            );
        }
    }
    for proxy in proxies {
        let proxy_addr = proxy.external_ip.or(external_ips.first().copied()).map(std::net::IpAddr::V4);
        if proxy.port == port && (addr.ip().is_unspecified() || proxy_addr.is_none_or(|ip| ip == addr.ip())) {
            raw.error("metrics", format!("{text:?}"), format!("port {port} is proxy {:?}'s: pick another port", proxy.name));
        }
    }
    // The WAN program passes packets for the gateway's own ports outside
    // the NAT's ranges to the kernel: such a listener answers the Internet.
    let external = match addr.ip() {
        std::net::IpAddr::V4(ip) => external_ips.contains(&ip),
        std::net::IpAddr::V6(_) => false,
    };
    if addr.ip().is_unspecified() || external {
        raw.warnings.push(format!(
            "metrics = {text:?} can be scraped from the WAN side too, and has no authentication: listen on the LAN address, or drop port {port} from the WAN in nftables"
        ));
    }
    Some(addr)
}

/// "ADDR:PORT" (an IPv6 address in brackets), port 1-65535.
pub fn parse_metrics_addr(text: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = text.trim().parse().map_err(|_| {
        "must be ADDR:PORT, e.g. \"10.0.0.1:9469\" (the gateway's LAN address), \"127.0.0.1:9469\" or \"0.0.0.0:9469\" \
         (every address); an IPv6 address in brackets, \"[::1]:9469\""
            .to_string()
    })?;
    if addr.port() == 0 {
        return Err("needs a port, 1-65535: Prometheus must know where to scrape".into());
    }
    Ok(addr)
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

/// The keys of a `[[forward]]` table, of its `[forward.health]` table and of
/// a server given as a table.
const FORWARD_KEYS: &[&str] = &["name", "protocol", "port", "external_ip", "to", "health"];
const HEALTH_KEYS: &[&str] = &["kind", "interval", "timeout", "fall", "rise", "path", "send", "expect"];
const SERVER_KEYS: &[&str] = &["server", "weight"];
/// A forward's name at most, in characters.
const MAX_FORWARD_NAME: usize = 64;
/// The longest health check timing, seconds.
const MAX_HEALTH_S: f64 = 3600.0;
const MIN_HEALTH_INTERVAL_S: f64 = 0.1;
/// A udp probe (and expected answer) at most: one datagram on a 1500-byte MTU.
const MAX_PROBE_LEN: usize = 1472;

const FORWARD_FLAG_ALLOWED: &str =
    "must be PROTOCOL:PORT=SERVER[,SERVER...] with PROTOCOL tcp, udp, tcp+udp or sctp, PORT a port or a range LO-HI and each SERVER ADDR[:PORT], e.g. tcp:8080=192.168.1.10:80,192.168.1.11:80";
const PROTOCOL_ALLOWED: &str = "must be \"tcp\", \"udp\", \"tcp+udp\" or \"sctp\"";
const SERVER_ALLOWED: &str = "must be \"ADDR\" or \"ADDR:PORT\", an IPv4 address and a port 1-65535, e.g. \"192.168.1.10:80\"";
const UNICAST_ALLOWED: &str = "must be a unicast IPv4 address (not 0.0.0.0, loopback, multicast or broadcast)";

/// Where a forward's errors point: `forward[1] "web".to[2]` in the file,
/// `--forward (forward[3].to[0])` for a flag. N counts the file's forwards
/// first, then the flags', as `Settings::forwards` holds them.
struct At {
    index: usize,
    /// The name the forward was given, once read.
    name: Option<String>,
    flag: bool,
}

impl At {
    fn field(&self, key: &str) -> String {
        let mut field = format!("forward[{}]", self.index);
        if let Some(name) = &self.name {
            field = format!("{field} {name:?}");
        }
        if !key.is_empty() {
            field = format!("{field}.{key}");
        }
        if self.flag { format!("--forward ({field})") } else { field }
    }
}

impl Raw {
    fn forward_error(&mut self, at: &At, key: &str, value: impl fmt::Display, allowed: impl Into<String>) {
        self.errors.push(ConfigError { field: at.field(key), value: value.to_string(), allowed: allowed.into() });
    }

    fn unknown_keys(&mut self, at: &At, prefix: &str, table: &toml::Table, known: &[&str]) {
        for key in table.keys().filter(|k| !known.contains(&k.as_str())) {
            self.forward_error(at, &format!("{prefix}{key}"), "", format!("unknown key; known: {}", known.join(", ")));
        }
    }
}

/// Every forward of the file and the flags, each validated, then together:
/// how many, and that no two claim one external endpoint. `default_addr`
/// is the first external address if the settings name it.
fn forwards(raw: &mut Raw, default_addr: Option<Ipv4Addr>) -> Vec<Forward> {
    let entries = std::mem::take(&mut raw.forwards);
    if entries.len() > MAX_FORWARDS as usize {
        raw.errors.push(ConfigError {
            field: "forward".into(),
            value: format!("{} forwards", entries.len()),
            allowed: format!("at most {MAX_FORWARDS} forwards (a port range counts once)"),
        });
    }
    let mut found: Vec<(At, bool, Forward)> = Vec::new();
    for (index, (value, origin)) in entries.into_iter().enumerate() {
        let mut at = At { index, name: None, flag: matches!(origin, Origin::Flag(_)) };
        let table = match (value, origin) {
            (Value::Table(table), Origin::File) => table,
            (Value::String(text), Origin::Flag(_)) => match flag_forward(&text) {
                Some(table) => table,
                None => {
                    raw.forward_error(&at, "", format!("{text:?}"), FORWARD_FLAG_ALLOWED);
                    continue;
                }
            },
            (other, _) => {
                raw.forward_error(&at, "", &other, "must be a table: write each forward as a [[forward]] section");
                continue;
            }
        };
        if let Some(forward) = forward(raw, &mut at, table) {
            let named = at.name.is_some();
            found.push((at, named, forward));
        }
    }
    for (i, (at, named, forward)) in found.iter().enumerate() {
        if let Some((other, _, _)) = found[..i].iter().find(|(_, _, earlier)| earlier.overlaps(forward, default_addr)) {
            raw.forward_error(at, "port", forward.ports_text(), overlap_allowed(&other.field(""), forward, default_addr));
        }
        let same_name = found[..i].iter().find(|(_, earlier_named, earlier)| (*named || *earlier_named) && earlier.name == forward.name);
        if let Some((other, _, _)) = same_name {
            let allowed = format!("is the name of {} too: names tell forwards apart in status and logs", other.field(""));
            raw.forward_error(at, "name", format!("{:?}", forward.name), allowed);
        }
    }
    found.into_iter().map(|(_, _, forward)| forward).collect()
}

/// What an overlap error says: which forward already has the endpoint.
pub(crate) fn overlap_allowed(other: &str, forward: &Forward, default_addr: Option<Ipv4Addr>) -> String {
    let addr = forward.external_ip.or(default_addr).map_or_else(|| "the first external address".to_string(), |ip| ip.to_string());
    format!(
        "overlaps {other}: {} {} on {addr} is forwarded there already; a protocol, external address and port go to one forward only",
        forward.protocol_name(),
        forward.ports_text()
    )
}

/// `tcp:8080=192.168.1.10:80,192.168.1.11:80` as the table the file would
/// hold, so both are validated (and their errors worded) alike.
fn flag_forward(text: &str) -> Option<toml::Table> {
    let (left, servers) = text.split_once('=')?;
    let (protocol, port) = left.split_once(':')?;
    let mut table = toml::Table::new();
    table.insert("protocol".into(), Value::String(protocol.trim().to_string()));
    table.insert("port".into(), Value::String(port.trim().to_string()));
    let servers = servers.split(',').map(|s| Value::String(s.trim().to_string())).collect();
    table.insert("to".into(), Value::Array(servers));
    Some(table)
}

/// One forward. None when its protocol, port or external address is not
/// valid (there is nothing to compare with the others); a forward with
/// bad servers or health is still returned, its errors recorded.
fn forward(raw: &mut Raw, at: &mut At, table: toml::Table) -> Option<Forward> {
    match table.get("name") {
        None => {}
        Some(Value::String(name))
            if (1..=MAX_FORWARD_NAME).contains(&name.chars().count()) && !name.chars().any(char::is_control) =>
        {
            at.name = Some(name.clone())
        }
        Some(other) => {
            raw.forward_error(at, "name", other, format!("must be a name in quotes, 1-{MAX_FORWARD_NAME} characters without control characters"))
        }
    }
    raw.unknown_keys(at, "", &table, FORWARD_KEYS);

    let protocols = match table.get("protocol") {
        None => {
            raw.forward_error(at, "protocol", "", format!("required: {PROTOCOL_ALLOWED}"));
            None
        }
        Some(Value::String(s)) if s == "tcp" => Some(vec![proto::TCP]),
        Some(Value::String(s)) if s == "udp" => Some(vec![proto::UDP]),
        Some(Value::String(s)) if s == "tcp+udp" => Some(vec![proto::TCP, proto::UDP]),
        Some(Value::String(s)) if s == "sctp" => Some(vec![proto::SCTP]),
        Some(other) => {
            raw.forward_error(at, "protocol", other, PROTOCOL_ALLOWED);
            None
        }
    };

    let ports = match table.get("port") {
        None => {
            raw.forward_error(at, "port", "", "required: the public port, e.g. 8080, or a range, e.g. \"8000-8099\"");
            None
        }
        Some(Value::Integer(n)) if (1..=65535).contains(n) => Some((*n as u16, *n as u16)),
        Some(Value::String(s)) => match parse_forward_ports(s) {
            Ok(ports) => Some(ports),
            Err(why) => {
                raw.forward_error(at, "port", format!("{s:?}"), why);
                None
            }
        },
        Some(other) => {
            raw.forward_error(at, "port", other, "must be a port 1-65535, e.g. 8080, or a range in quotes, e.g. \"8000-8099\"");
            None
        }
    };

    let external_ip = match table.get("external_ip") {
        None => Ok(None),
        Some(Value::String(s)) => match s.trim().parse::<Ipv4Addr>() {
            Ok(ip) if is_unicast(ip) => Ok(Some(ip)),
            Ok(_) => Err((format!("{s:?}"), UNICAST_ALLOWED)),
            Err(_) => Err((format!("{s:?}"), "must be an IPv4 address, e.g. \"203.0.113.1\"")),
        },
        Some(other) => Err((other.to_string(), "must be an IPv4 address in quotes, e.g. \"203.0.113.1\"")),
    };
    if let Err((value, allowed)) = &external_ip {
        raw.forward_error(at, "external_ip", value, *allowed);
    }

    let servers = servers(raw, at, table.get("to"), ports);
    let health = health(raw, at, table.get("health"), protocols.as_deref(), servers.len());

    let (Some(protocols), Some(ports), Ok(external_ip)) = (protocols, ports, external_ip) else {
        return None;
    };
    let mut forward = Forward { name: String::new(), protocols, ports, external_ip, servers, health, pinned: false };
    forward.name = at.name.clone().unwrap_or_else(|| format!("{}/{}", forward.protocol_name(), forward.ports_text()));
    Some(forward)
}

fn is_unicast(ip: Ipv4Addr) -> bool {
    !(ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() || ip.is_loopback())
}

/// A forward's public ports: "PORT" or "LO-HI", 1 <= LO <= HI <= 65535,
/// at most MAX_FORWARD_RANGE ports.
pub fn parse_forward_ports(s: &str) -> Result<(u16, u16), String> {
    let allowed = || "must be a port 1-65535 or a range \"LO-HI\", e.g. 8080 or \"8000-8099\"".to_string();
    let (lo, hi) = match s.split_once('-') {
        Some((lo, hi)) => (lo.trim().parse::<u16>().map_err(|_| allowed())?, hi.trim().parse::<u16>().map_err(|_| allowed())?),
        None => {
            let port = s.trim().parse::<u16>().map_err(|_| allowed())?;
            (port, port)
        }
    };
    if lo == 0 {
        return Err("port 0 is no port: must be 1-65535".into());
    }
    if lo > hi {
        return Err("LO is above HI: must be \"LO-HI\" with LO <= HI".into());
    }
    let count = u32::from(hi) - u32::from(lo) + 1;
    if count > MAX_FORWARD_RANGE {
        return Err(format!("spans {count} ports: a range may span at most {MAX_FORWARD_RANGE}"));
    }
    Ok((lo, hi))
}

/// "ADDR" or "ADDR:PORT": a unicast address, and a port 1-65535 if given.
pub fn parse_server(text: &str) -> Result<(Ipv4Addr, Option<u16>), String> {
    let (addr, port) = match text.split_once(':') {
        Some((addr, port)) => (addr, Some(port.trim().parse::<u16>().ok().filter(|p| *p != 0).ok_or(SERVER_ALLOWED)?)),
        None => (text, None),
    };
    let addr = addr.trim().parse::<Ipv4Addr>().map_err(|_| SERVER_ALLOWED)?;
    if !is_unicast(addr) {
        return Err(UNICAST_ALLOWED.into());
    }
    Ok((addr, port))
}

/// A forward's `to`: each server a string or a { server, weight } table.
fn servers(raw: &mut Raw, at: &At, value: Option<&Value>, ports: Option<(u16, u16)>) -> Vec<Server> {
    let items = match value {
        None => {
            raw.forward_error(at, "to", "", "required: the server(s) to forward to, e.g. to = [\"192.168.1.10:80\"]");
            return Vec::new();
        }
        Some(Value::Array(items)) => items,
        Some(other) => {
            raw.forward_error(at, "to", other, "must be a list of servers, e.g. [\"192.168.1.10:80\", \"192.168.1.11:80\"]");
            return Vec::new();
        }
    };
    if items.is_empty() {
        raw.forward_error(at, "to", "[]", "must list at least one server");
    }
    let mut servers: Vec<Server> = Vec::new();
    for (k, item) in items.iter().enumerate() {
        let key = format!("to[{k}]");
        let (text, text_key, weight) = match item {
            Value::String(text) => (text.clone(), key.clone(), DEFAULT_WEIGHT),
            Value::Table(table) => {
                raw.unknown_keys(at, &format!("{key}."), table, SERVER_KEYS);
                let weight = match table.get("weight") {
                    None => DEFAULT_WEIGHT,
                    Some(Value::Integer(w)) if (0..=i64::from(MAX_WEIGHT)).contains(w) => *w as u32,
                    Some(other) => {
                        let allowed = format!("must be a whole number 0-{MAX_WEIGHT} (0: draining, no new flows)");
                        raw.forward_error(at, &format!("{key}.weight"), other, allowed);
                        DEFAULT_WEIGHT
                    }
                };
                match table.get("server") {
                    Some(Value::String(text)) => (text.clone(), format!("{key}.server"), weight),
                    None => {
                        raw.forward_error(at, &format!("{key}.server"), "", format!("required: {SERVER_ALLOWED}"));
                        continue;
                    }
                    Some(other) => {
                        raw.forward_error(at, &format!("{key}.server"), other, SERVER_ALLOWED);
                        continue;
                    }
                }
            }
            other => {
                let allowed = "must be a server \"ADDR[:PORT]\" or a table { server = \"ADDR[:PORT]\", weight = N }";
                raw.forward_error(at, &key, other, allowed);
                continue;
            }
        };
        let (addr, port) = match parse_server(&text) {
            Ok(server) => server,
            Err(why) => {
                raw.forward_error(at, &text_key, format!("{text:?}"), why);
                continue;
            }
        };
        if let (Some(port), Some((lo, hi))) = (port, ports) {
            let last = u32::from(port) + u32::from(hi - lo);
            if last > 65535 {
                let allowed = format!(
                    "the range's last port {hi} would go to server port {last}, past 65535: a server port is the one for the range's first port {lo}"
                );
                raw.forward_error(at, &text_key, format!("{text:?}"), allowed);
                continue;
            }
        }
        let server = Server { addr, port, weight };
        // Without a port a server takes the range's first port for the first.
        let base = |s: &Server| ports.map_or(s.port, |(lo, _)| Some(s.base_port(lo)));
        if let Some(j) = servers.iter().position(|s| s.addr == addr && base(s) == base(&server)) {
            raw.forward_error(at, &text_key, format!("{text:?}"), format!("is the same server as {}", at.field(&format!("to[{j}]"))));
            continue;
        }
        servers.push(server);
    }
    if servers.len() > MAX_BACKENDS as usize {
        raw.forward_error(at, "to", format!("{} servers", servers.len()), format!("at most {MAX_BACKENDS} servers per forward"));
    }
    if !servers.is_empty() && servers.iter().all(|s| s.weight == 0) {
        let allowed = "every weight is 0 (draining): no server could take a new flow; give at least one a weight of 1-100";
        raw.forward_error(at, "to", value.map_or_else(String::new, Value::to_string), allowed);
    }
    servers
}

/// A forward's `[forward.health]`, with the defaults for what it leaves out.
fn health(raw: &mut Raw, at: &At, value: Option<&Value>, protocols: Option<&[u8]>, servers: usize) -> HealthCheck {
    let default_kind = protocols.map_or(HealthKind::None, |p| HealthKind::default_for(p, servers));
    let table = match value {
        None => return HealthCheck::of_kind(default_kind),
        Some(Value::Table(table)) => table,
        Some(other) => {
            raw.forward_error(at, "health", other, "must be a table: a [forward.health] section with kind, interval, timeout...");
            return HealthCheck::of_kind(default_kind);
        }
    };
    raw.unknown_keys(at, "health.", table, HEALTH_KEYS);
    // An unknown kind is reported once, not again by every key that
    // depends on it.
    let (kind, kind_known) = match table.get("kind") {
        None => (default_kind, true),
        Some(Value::String(s)) if HealthKind::parse(s).is_some() => (HealthKind::parse(s).unwrap_or(default_kind), true),
        Some(other) => {
            let allowed = "must be \"tcp\" (connect), \"http\" (GET path, 2xx/3xx is up), \"udp\" (send a probe, an answer is up) or \"none\"";
            raw.forward_error(at, "health.kind", other, allowed);
            (default_kind, false)
        }
    };
    if let Some(protocols) = protocols {
        let kind_value = format!("{:?}", kind.name());
        if matches!(kind, HealthKind::Tcp | HealthKind::Http) && !protocols.contains(&proto::TCP) {
            let allowed = "a tcp or http check needs a TCP service and the forward is udp only: use \"udp\" or \"none\"";
            raw.forward_error(at, "health.kind", kind_value, allowed);
        } else if kind == HealthKind::Udp && !protocols.contains(&proto::UDP) {
            let allowed = "a udp check needs a UDP service and the forward is tcp only: use \"tcp\", \"http\" or \"none\"";
            raw.forward_error(at, "health.kind", kind_value, allowed);
        }
    }

    let mut seconds = |key: &str, min: f64, min_included: bool, default: Duration| match table.get(key) {
        None => default,
        Some(v @ (Value::Integer(_) | Value::Float(_))) => {
            let s = v.as_float().unwrap_or_else(|| v.as_integer().unwrap_or_default() as f64);
            let above_min = if min_included { s >= min } else { s > min };
            if above_min && s <= MAX_HEALTH_S {
                Duration::from_secs_f64(s)
            } else {
                let lowest = if min_included { format!("at least {min}") } else { format!("above {min}") };
                raw.forward_error(at, &format!("health.{key}"), v, format!("must be seconds, {lowest} and at most {MAX_HEALTH_S}"));
                default
            }
        }
        Some(other) => {
            raw.forward_error(at, &format!("health.{key}"), other, "must be a number of seconds, e.g. 1 or 0.5");
            default
        }
    };
    let interval = seconds("interval", MIN_HEALTH_INTERVAL_S, true, DEFAULT_HEALTH_INTERVAL);
    let timeout = seconds("timeout", 0.0, false, DEFAULT_HEALTH_TIMEOUT);
    let mut count = |key: &str, default: u32| match table.get(key) {
        None => default,
        Some(Value::Integer(n)) if (1..=100).contains(n) => *n as u32,
        Some(other) => {
            raw.forward_error(at, &format!("health.{key}"), other, "must be a whole number of checks, 1-100");
            default
        }
    };
    let fall = count("fall", DEFAULT_FALL);
    let rise = count("rise", DEFAULT_RISE);

    let only_for = |wanted: HealthKind| format!("is for kind = \"{}\" only, and kind is \"{}\"", wanted.name(), kind.name());
    let path = match table.get("path") {
        None => DEFAULT_HEALTH_PATH.to_string(),
        Some(v) if kind_known && kind != HealthKind::Http => {
            raw.forward_error(at, "health.path", v, only_for(HealthKind::Http));
            DEFAULT_HEALTH_PATH.to_string()
        }
        Some(Value::String(path)) if path.starts_with('/') && !path.chars().any(|c| c.is_whitespace() || c.is_control()) => path.clone(),
        Some(other) => {
            raw.forward_error(at, "health.path", other, "must be a path starting with '/', without spaces, e.g. \"/healthz\"");
            DEFAULT_HEALTH_PATH.to_string()
        }
    };
    let mut payload = |key: &str, min_len: usize| match table.get(key) {
        None => None,
        Some(v) if kind_known && kind != HealthKind::Udp => {
            raw.forward_error(at, &format!("health.{key}"), v, only_for(HealthKind::Udp));
            None
        }
        Some(Value::String(s)) => match parse_payload(s) {
            Ok(bytes) if (min_len..=MAX_PROBE_LEN).contains(&bytes.len()) => Some(bytes),
            Ok(bytes) => {
                let allowed = format!("is {} bytes: must be {min_len}-{MAX_PROBE_LEN} (one datagram)", bytes.len());
                raw.forward_error(at, &format!("health.{key}"), format!("{s:?}"), allowed);
                None
            }
            Err(why) => {
                raw.forward_error(at, &format!("health.{key}"), format!("{s:?}"), why);
                None
            }
        },
        Some(other) => {
            raw.forward_error(at, &format!("health.{key}"), other, "must be text in quotes, or \"hex:\" and hex digits, e.g. \"hex:0a0b\"");
            None
        }
    };
    let send = payload("send", 1);
    let expect = payload("expect", 0);
    if kind == HealthKind::Udp && !table.contains_key("send") {
        raw.forward_error(at, "health.send", "", "required for kind = \"udp\": the probe to send, text or \"hex:0a0b...\"");
    }

    if kind != HealthKind::None && timeout > interval {
        raw.warnings.push(format!(
            "{} = {} s is longer than the interval, {} s: a check of a server may still wait when the next one starts",
            at.field("health.timeout"),
            timeout.as_secs_f64(),
            interval.as_secs_f64()
        ));
    }
    let unused: Vec<&str> = ["interval", "timeout", "fall", "rise"].into_iter().filter(|k| table.contains_key(*k)).collect();
    if kind == HealthKind::None && !unused.is_empty() {
        raw.warnings.push(format!(
            "{}: kind is \"none\", nothing is checked, so these keys have no effect: {}; set kind (\"tcp\", \"http\" or \"udp\") to check the servers",
            at.field("health"),
            unused.join(", ")
        ));
    }
    HealthCheck { kind, interval, timeout, fall, rise, path, send: send.unwrap_or_default(), expect }
}

/// A probe or expected answer: the text's bytes, or "hex:0a0b..." decoded.
pub fn parse_payload(s: &str) -> Result<Vec<u8>, String> {
    let Some(hex) = s.strip_prefix("hex:") else {
        return Ok(s.as_bytes().to_vec());
    };
    let digits: Vec<char> = hex.chars().collect();
    if !digits.len().is_multiple_of(2) || !digits.iter().all(char::is_ascii_hexdigit) {
        return Err("\"hex:\" must be followed by pairs of hex digits, e.g. \"hex:0a0b\"".into());
    }
    Ok(digits.chunks(2).map(|pair| (pair[0].to_digit(16).unwrap_or(0) * 16 + pair[1].to_digit(16).unwrap_or(0)) as u8).collect())
}

/// `mapping_log`: "stderr", "syslog", "syslog:/SOCKET", or an absolute file
/// path in a directory that exists.
fn mapping_log_target(text: &str) -> Result<MappingLogTarget, String> {
    let absolute = |path: &str, what: &str| -> Result<std::path::PathBuf, String> {
        let path = std::path::PathBuf::from(path);
        if !path.is_absolute() {
            return Err(format!("{what} must be an absolute path, e.g. \"/var/log/natd/mappings.log\""));
        }
        match path.parent() {
            Some(dir) if dir.is_dir() => Ok(path),
            _ => Err(format!("{what}'s directory does not exist: create it first")),
        }
    };
    match text {
        "stderr" => Ok(MappingLogTarget::Stderr),
        "syslog" => Ok(MappingLogTarget::Syslog(SYSLOG_SOCKET.into())),
        _ => match text.strip_prefix("syslog:") {
            Some(socket) => absolute(socket, "the syslog socket").map(MappingLogTarget::Syslog),
            None if text.starts_with('/') => absolute(text, "the file").map(MappingLogTarget::File),
            None => Err("must be \"stderr\", an absolute file path, \"syslog\" or \"syslog:/SOCKET\"".into()),
        },
    }
}
