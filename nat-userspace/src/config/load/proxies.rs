//! `[[proxy]]` tables: each one validated on its own (keys, port, kind,
//! names and servers, timeouts), then against the rest of the settings: the
//! NAT's port ranges, the TCP forwards, and the other proxies. Checks that
//! need the machine (servers on the LAN side, the address in the pool) are
//! `machine`'s.

use std::{
    fmt,
    net::{Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use nat_common::{forward::MAX_BACKENDS, proto};
use toml::Value;

use super::{ConfigError, MAX_TIMEOUT_S, Raw, SERVER_ALLOWED, UNICAST_ALLOWED, is_unicast, parse_server};
use crate::{
    config::schema::{
        DEFAULT_CONNECT_TIMEOUT, DEFAULT_HELLO_TIMEOUT, DEFAULT_MAX_CONNECTIONS, DEFAULT_PROXY_IDLE_TIMEOUT, Forward, HealthCheck, HealthKind,
        MAX_PROXY_CONNECTIONS, Proxy, ProxyKind, ProxyProtocolVersion, ProxyRoute, ServerProtocol,
    },
    proxy::names::validate_pattern,
};

const PROXY_KEYS: &[&str] =
    &["port", "kind", "names", "default", "proxy_protocol", "server_protocol", "external_ip", "hello_timeout", "connect_timeout", "idle_timeout", "max_connections", "quic"];
const KIND_ALLOWED: &str = "must be \"tls\" (route by the SNI of the TLS ClientHello) or \"http\" (route each request by its Host)";
const NAME_ALLOWED: &str = "a name is a host name (\"blue.example\") or a one-label wildcard (\"*.green.example\"), letters, digits and '-' only";
const SERVERS_ALLOWED: &str = "must be a server \"ADDR:PORT\" or a list of them, e.g. \"192.168.1.10:443\" or [\"192.168.1.12:443\", \"192.168.1.13:443\"]";

/// `proxy[N].KEY`, as errors name a proxy's fields.
fn field(index: usize, key: &str) -> String {
    if key.is_empty() { format!("proxy[{index}]") } else { format!("proxy[{index}].{key}") }
}

impl Raw {
    fn proxy_error(&mut self, index: usize, key: &str, value: impl fmt::Display, allowed: impl Into<String>) {
        self.errors.push(ConfigError { field: field(index, key), value: value.to_string(), allowed: allowed.into() });
    }
}

/// Every `[[proxy]]` of the file, each validated, then together with the
/// NAT's port ranges (`nat_ranges`: key and range), the forwards and one
/// another. `default_addr` is the first external address if the settings
/// name it.
pub(super) fn proxies(raw: &mut Raw, default_addr: Option<Ipv4Addr>, nat_ranges: &[(&str, Option<(u16, u16)>)], forwards: &[Forward]) -> Vec<Proxy> {
    let entries = std::mem::take(&mut raw.proxies);
    let mut found: Vec<(usize, Proxy)> = Vec::new();
    for (index, value) in entries.into_iter().enumerate() {
        let Value::Table(table) = value else {
            raw.proxy_error(index, "", &value, "must be a table: write each proxy as a [[proxy]] section");
            continue;
        };
        if let Some(proxy) = proxy(raw, index, &table) {
            found.push((index, proxy));
        }
    }
    let addr_text = |ip: Option<Ipv4Addr>| ip.or(default_addr).map_or_else(|| "the first external address".to_string(), |ip| ip.to_string());
    // An unset address is the first external one; when the file names no
    // pool only another unset one is known to be the same.
    let same_addr = |a: Option<Ipv4Addr>, b: Option<Ipv4Addr>| match (a.or(default_addr), b.or(default_addr)) {
        (Some(a), Some(b)) => a == b,
        (None, None) => true,
        _ => false,
    };
    for (i, (index, proxy)) in found.iter().enumerate() {
        let port = proxy.port;
        for (key, range) in nat_ranges {
            if let Some((lo, hi)) = range
                && (*lo..=*hi).contains(&port)
            {
                raw.proxy_error(
                    *index,
                    "port",
                    port,
                    format!(
                        "is in {key} {lo}-{hi}, the ports natd hands out to outbound flows: a proxy's port must lie outside it \
                         (the datapath takes those ports for NAT traffic); move the proxy or the range"
                    ),
                );
            }
        }
        // The proxy's own protocols: TCP, and UDP with quic.
        let claimed: &[u8] = if proxy.quic { &[proto::TCP, proto::UDP] } else { &[proto::TCP] };
        for forward in forwards {
            let (lo, hi) = forward.ports;
            let Some(&shared) = claimed.iter().find(|p| forward.protocols.contains(p)) else { continue };
            if (lo..=hi).contains(&port) && same_addr(forward.external_ip, proxy.external_ip) {
                raw.proxy_error(
                    *index,
                    "port",
                    port,
                    format!(
                        "is forwarded by forward {:?} ({} {} on {}): the datapath would send its packets to the forward's servers, never \
                         to the proxy; use another port for one of them",
                        forward.name,
                        proto::name(shared),
                        forward.ports_text(),
                        addr_text(forward.external_ip)
                    ),
                );
            }
        }
        if let Some((earlier, _)) = found[..i].iter().find(|(_, other)| other.port == port && same_addr(other.external_ip, proxy.external_ip)) {
            raw.proxy_error(
                *index,
                "port",
                port,
                format!(
                    "is the port of {} too, on {}: one proxy per address and port; put both proxies' names in one names table",
                    field(*earlier, ""),
                    addr_text(proxy.external_ip)
                ),
            );
        }
    }
    found.into_iter().map(|(_, proxy)| proxy).collect()
}

/// One proxy. None when its port or kind is not valid (nothing to compare
/// with the others); a proxy with other bad fields is still returned, its
/// errors recorded.
fn proxy(raw: &mut Raw, index: usize, table: &toml::Table) -> Option<Proxy> {
    for key in table.keys().filter(|k| !PROXY_KEYS.contains(&k.as_str())) {
        raw.proxy_error(index, key, "", format!("unknown key; known: {}", PROXY_KEYS.join(", ")));
    }
    let port = match table.get("port") {
        None => {
            raw.proxy_error(index, "port", "", "required: the public TCP port to listen on, e.g. 443");
            None
        }
        Some(Value::Integer(n)) if (1..=65535).contains(n) => Some(*n as u16),
        Some(other) => {
            raw.proxy_error(index, "port", other, "must be a port 1-65535, e.g. 443");
            None
        }
    };
    let kind = match table.get("kind") {
        None => {
            raw.proxy_error(index, "kind", "", KIND_ALLOWED);
            None
        }
        Some(Value::String(s)) if s == "tls" => Some(ProxyKind::Tls),
        Some(Value::String(s)) if s == "http" => Some(ProxyKind::Http),
        Some(other) => {
            raw.proxy_error(index, "kind", other, KIND_ALLOWED);
            None
        }
    };
    let external_ip = match table.get("external_ip") {
        None => None,
        Some(Value::String(s)) => match s.trim().parse::<Ipv4Addr>() {
            Ok(ip) if is_unicast(ip) => Some(ip),
            Ok(_) => {
                raw.proxy_error(index, "external_ip", format!("{s:?}"), UNICAST_ALLOWED);
                None
            }
            Err(_) => {
                raw.proxy_error(index, "external_ip", format!("{s:?}"), "must be an IPv4 address, e.g. \"203.0.113.1\"");
                None
            }
        },
        Some(other) => {
            raw.proxy_error(index, "external_ip", other, "must be an IPv4 address in quotes, e.g. \"203.0.113.1\"");
            None
        }
    };
    // Servers without a port take the proxy's (as a forward's do).
    let default_port = port.unwrap_or(443);

    let mut routes: Vec<ProxyRoute> = Vec::new();
    match table.get("names") {
        None => {}
        Some(Value::Table(names)) => {
            // Written forms, to name the earlier one when two are the same
            // name once case and a trailing dot are normalised away.
            let mut written: Vec<String> = Vec::new();
            for (name, value) in names {
                let key = format!("names.{name:?}");
                let pattern = match validate_pattern(name) {
                    Ok(pattern) => pattern.to_string(),
                    Err(why) => {
                        raw.proxy_error(index, &key, "", format!("{why}: {NAME_ALLOWED}"));
                        continue;
                    }
                };
                if let Some(j) = routes.iter().position(|r| r.pattern == pattern) {
                    let allowed = format!("is the same name as names.{:?}: matching ignores case and a trailing dot", written[j]);
                    raw.proxy_error(index, &key, "", allowed);
                    continue;
                }
                if let Some(servers) = servers(raw, index, &key, value, default_port) {
                    routes.push(ProxyRoute { pattern, servers });
                    written.push(name.clone());
                }
            }
        }
        Some(other) => raw.proxy_error(
            index,
            "names",
            other,
            "must be a table of names and their servers, e.g. { \"blue.example\" = \"192.168.1.10:443\", \"*.green.example\" = [\"192.168.1.12:443\", \"192.168.1.13:443\"] }",
        ),
    }
    let default = table.get("default").and_then(|value| servers(raw, index, "default", value, default_port));
    // A names value that is no table has had its error already.
    let no_names = match table.get("names") {
        None => true,
        Some(Value::Table(names)) => names.is_empty(),
        Some(_) => false,
    };
    if no_names && !table.contains_key("default") {
        raw.proxy_error(index, "names", "", "required: the names to route and their servers, and/or a default server; a proxy without either routes nothing");
    }

    let proxy_protocol = match table.get("proxy_protocol") {
        None => None,
        Some(Value::String(s)) if s == "v1" => Some(ProxyProtocolVersion::V1),
        Some(Value::String(s)) if s == "v2" => Some(ProxyProtocolVersion::V2),
        Some(other) => {
            raw.proxy_error(index, "proxy_protocol", other, "must be \"v1\" (text) or \"v2\" (binary); leave it out to send none");
            None
        }
    };
    let server_protocol = match table.get("server_protocol") {
        None => ServerProtocol::Http1,
        Some(Value::String(s)) if s == "http1" => ServerProtocol::Http1,
        Some(Value::String(s)) if s == "http2" => ServerProtocol::Http2,
        Some(other) => {
            raw.proxy_error(index, "server_protocol", other, "must be \"http1\" or \"http2\" (HTTP/2 with prior knowledge, for gRPC servers)");
            ServerProtocol::Http1
        }
    };
    if server_protocol == ServerProtocol::Http2 && kind == Some(ProxyKind::Tls) {
        raw.proxy_error(index, "server_protocol", "http2", "is for kind \"http\" only: a tls proxy passes the client's own bytes, whatever they speak");
    }
    let mut seconds = |key: &str, default: Duration| match table.get(key) {
        None => default,
        Some(v @ (Value::Integer(_) | Value::Float(_))) => {
            let s = v.as_float().unwrap_or_else(|| v.as_integer().unwrap_or_default() as f64);
            if s > 0.0 && s <= MAX_TIMEOUT_S as f64 {
                Duration::from_secs_f64(s)
            } else {
                raw.proxy_error(index, key, v, format!("must be seconds, above 0 and at most {MAX_TIMEOUT_S}"));
                default
            }
        }
        Some(other) => {
            raw.proxy_error(index, key, other, "must be a number of seconds, e.g. 5 or 0.5");
            default
        }
    };
    let hello_timeout = seconds("hello_timeout", DEFAULT_HELLO_TIMEOUT);
    let connect_timeout = seconds("connect_timeout", DEFAULT_CONNECT_TIMEOUT);
    let idle_timeout = seconds("idle_timeout", DEFAULT_PROXY_IDLE_TIMEOUT);
    let max_connections = match table.get("max_connections") {
        None => DEFAULT_MAX_CONNECTIONS,
        Some(Value::Integer(n)) if (1..=i64::from(MAX_PROXY_CONNECTIONS)).contains(n) => *n as u32,
        Some(other) => {
            raw.proxy_error(index, "max_connections", other, format!("must be a whole number of connections, 1-{MAX_PROXY_CONNECTIONS}"));
            DEFAULT_MAX_CONNECTIONS
        }
    };

    let quic = match table.get("quic") {
        None => false,
        Some(Value::Boolean(quic)) => *quic,
        Some(other) => {
            raw.proxy_error(index, "quic", other, "must be true or false");
            false
        }
    };
    if quic && kind == Some(ProxyKind::Http) {
        raw.proxy_error(index, "quic", "true", "is for kind \"tls\" only: QUIC is routed by the SNI of its TLS ClientHello");
    }
    if quic {
        let mut distinct: Vec<SocketAddrV4> = routes.iter().flat_map(|r| r.servers.iter().copied()).chain(default.iter().flatten().copied()).collect();
        distinct.sort();
        distinct.dedup();
        if distinct.len() > MAX_BACKENDS as usize {
            raw.proxy_error(
                index,
                "quic",
                "true",
                format!("a QUIC proxy has at most {MAX_BACKENDS} distinct servers (it is one forward in the datapath); this one has {}", distinct.len()),
            );
        }
    }
    let (port, kind) = (port?, kind?);
    let several = routes.iter().any(|r| r.servers.len() > 1) || default.as_ref().is_some_and(|d| d.len() > 1);
    let health = HealthCheck::of_kind(if several { HealthKind::Tcp } else { HealthKind::None });
    Some(Proxy {
        name: format!("{}/{port}", kind.name()),
        kind,
        port,
        external_ip,
        routes,
        default,
        proxy_protocol,
        server_protocol,
        hello_timeout,
        connect_timeout,
        idle_timeout,
        max_connections,
        quic,
        health,
    })
}

/// A name's (or the default's) servers: "ADDR[:PORT]" or a non-empty list
/// of them, each once. None (errors recorded) when any is bad.
fn servers(raw: &mut Raw, index: usize, key: &str, value: &Value, default_port: u16) -> Option<Vec<SocketAddrV4>> {
    let items: Vec<&Value> = match value {
        Value::String(_) => vec![value],
        Value::Array(items) if !items.is_empty() => items.iter().collect(),
        Value::Array(_) => {
            raw.proxy_error(index, key, "[]", "must list at least one server");
            return None;
        }
        other => {
            raw.proxy_error(index, key, other, SERVERS_ALLOWED);
            return None;
        }
    };
    let mut servers: Vec<SocketAddrV4> = Vec::new();
    let mut ok = true;
    for item in items {
        let Some(text) = item.as_str() else {
            raw.proxy_error(index, key, item, SERVERS_ALLOWED);
            ok = false;
            continue;
        };
        match parse_server(text) {
            Ok((addr, port)) => {
                let server = SocketAddrV4::new(addr, port.unwrap_or(default_port));
                if servers.contains(&server) {
                    raw.proxy_error(index, key, format!("{text:?}"), "is listed twice");
                    ok = false;
                } else {
                    servers.push(server);
                }
            }
            Err(why) => {
                let why = if why == SERVER_ALLOWED { why } else { format!("{why}; {SERVER_ALLOWED}") };
                raw.proxy_error(index, key, format!("{text:?}"), why);
                ok = false;
            }
        }
    }
    ok.then_some(servers)
}
