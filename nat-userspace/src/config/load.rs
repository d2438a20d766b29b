//! Reading the settings: an optional TOML file, command-line flags over it,
//! and one validation pass that reports every error at once, each naming
//! the field (and the flag it came from), the value it got, and what is
//! allowed. Nothing here looks at the machine (`machine` does).

use std::{collections::BTreeMap, fmt, net::Ipv4Addr, path::Path, time::Duration};

use nat_common::Prefix;
use toml::Value;

use crate::config::schema::{
    DEFAULT_LOG_LEVEL, DEFAULT_PORT_HOLD, DEFAULT_PORT_RANGE, DEFAULT_PORTS_PER_HOST, FILTERING_ALLOWED, LOG_LEVELS, Filtering, FilteringMode, KEYS, Settings, Timeouts,
    XdpModeSetting,
};

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
            ("log_level", "--log-level", &flags.log_level),
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
        log_level,
        forwards: Vec::new(),
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
