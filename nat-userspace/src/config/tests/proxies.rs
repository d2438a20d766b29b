//! `[[proxy]]` tables (issue 13): read with their defaults, every bad
//! field named with its value, and checked against the NAT's port ranges,
//! the forwards, the other proxies and the machine.

use std::net::SocketAddrV4;

use super::*;
use crate::config::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_HELLO_TIMEOUT, DEFAULT_MAX_CONNECTIONS, DEFAULT_PROXY_IDLE_TIMEOUT, Proxy, ProxyKind, ProxyProtocolVersion, ProxyRoute, ServerProtocol,
};

fn proxies_of(text: &str) -> Vec<Proxy> {
    let f = file(&format!("{INTERFACES}{text}"));
    let (s, warnings) = Settings::from_sources(Some(&f.0), &Overrides::default()).unwrap_or_else(|e| panic!("{e}"));
    assert!(warnings.is_empty(), "{warnings:?}");
    s.proxies
}

fn proxy_errors(text: &str) -> Vec<ConfigError> {
    errors(&format!("{INTERFACES}{text}"), &Overrides::default())
}

fn addr(text: &str) -> SocketAddrV4 {
    text.parse().unwrap()
}

#[test]
fn a_proxy_is_read_with_every_option_and_its_defaults() {
    let proxies = proxies_of(
        r#"
        [[proxy]]
        port = 443
        kind = "tls"
        names = { "blue.example" = "192.168.1.10:443", "Red.Example." = "192.168.1.11", "*.green.example" = ["192.168.1.12:443", "192.168.1.13:8443"] }
        default = "192.168.1.14:443"
        proxy_protocol = "v2"
        external_ip = "203.0.113.1"
        hello_timeout = 2.5
        connect_timeout = 1
        idle_timeout = 60
        max_connections = 100

        [[proxy]]
        port = 8443
        kind = "tls"
        names = { "blue.example" = "192.168.1.10:443" }
        "#,
    );
    assert_eq!(proxies.len(), 2);
    let p = &proxies[0];
    assert_eq!((p.name.as_str(), p.kind, p.port), ("tls/443", ProxyKind::Tls, 443));
    assert_eq!(
        p.routes,
        [
            ProxyRoute { pattern: "*.green.example".into(), servers: vec![addr("192.168.1.12:443"), addr("192.168.1.13:8443")] },
            ProxyRoute { pattern: "red.example".into(), servers: vec![addr("192.168.1.11:443")] },
            ProxyRoute { pattern: "blue.example".into(), servers: vec![addr("192.168.1.10:443")] },
        ],
        "in the order of the names as written, in canonical form, a server without a port on the proxy's"
    );
    assert_eq!(p.default, Some(vec![addr("192.168.1.14:443")]));
    assert_eq!(p.proxy_protocol, Some(ProxyProtocolVersion::V2));
    assert_eq!(p.external_ip, Some(Ipv4Addr::new(203, 0, 113, 1)));
    assert_eq!((p.hello_timeout, p.connect_timeout, p.idle_timeout), (Duration::from_millis(2500), Duration::from_secs(1), Duration::from_secs(60)));
    assert_eq!(p.max_connections, 100);
    assert_eq!(p.health.kind, HealthKind::Tcp, "a name with several servers is checked");

    let q = &proxies[1];
    assert_eq!((q.name.as_str(), q.default.as_ref(), q.proxy_protocol, q.external_ip), ("tls/8443", None, None, None));
    assert_eq!((q.hello_timeout, q.connect_timeout, q.idle_timeout), (DEFAULT_HELLO_TIMEOUT, DEFAULT_CONNECT_TIMEOUT, DEFAULT_PROXY_IDLE_TIMEOUT));
    assert_eq!(q.max_connections, DEFAULT_MAX_CONNECTIONS);
    assert_eq!(q.health.kind, HealthKind::None, "a lone server is not checked");
}

#[test]
fn an_http_proxy_is_read_with_its_servers_on_its_port_and_the_same_defaults() {
    let proxies = proxies_of(
        r#"
        [[proxy]]
        port = 80
        kind = "http"
        names = { "blue.example" = "192.168.1.10", "*.green.example" = ["192.168.1.12:8080", "192.168.1.13"] }
        default = "192.168.1.14"
        proxy_protocol = "v1"
        "#,
    );
    let p = &proxies[0];
    assert_eq!((p.name.as_str(), p.kind, p.port, p.kind.name()), ("http/80", ProxyKind::Http, 80, "http"));
    assert_eq!(
        p.routes,
        [
            ProxyRoute { pattern: "*.green.example".into(), servers: vec![addr("192.168.1.12:8080"), addr("192.168.1.13:80")] },
            ProxyRoute { pattern: "blue.example".into(), servers: vec![addr("192.168.1.10:80")] },
        ],
        "a server without a port takes the proxy's, 80"
    );
    assert_eq!(p.default, Some(vec![addr("192.168.1.14:80")]));
    assert_eq!(p.proxy_protocol, Some(ProxyProtocolVersion::V1), "each connection to a server carries the header of the client it serves");
    assert_eq!((p.hello_timeout, p.idle_timeout, p.max_connections), (DEFAULT_HELLO_TIMEOUT, DEFAULT_PROXY_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS));
    assert_eq!(p.health.kind, HealthKind::Tcp, "a name with several servers is checked, as for tls");
    assert_eq!(p.server_protocol, ServerProtocol::Http1, "servers spoken to in HTTP/1.1 by default");
}

#[test]
fn http_proxy_servers_may_be_spoken_to_in_http2_and_only_those() {
    let two = |kind: &str, protocol: &str| format!("[[proxy]]\nport = 80\nkind = \"{kind}\"\nserver_protocol = \"{protocol}\"\ndefault = \"192.168.1.10:80\"\n");
    assert_eq!(proxies_of(&two("http", "http2"))[0].server_protocol, ServerProtocol::Http2);
    assert_eq!(proxies_of(&two("http", "http1"))[0].server_protocol, ServerProtocol::Http1);
    assert!(has(&proxy_errors(&two("http", "h2")), "proxy[0].server_protocol", "\"h2\"", "must be \"http1\" or \"http2\""));
    assert!(has(&proxy_errors(&two("tls", "http2")), "proxy[0].server_protocol", "http2", "is for kind \"http\" only"));
}

#[test]
fn an_http_and_a_tls_proxy_cannot_share_a_port() {
    let errs = proxy_errors(
        r#"
        [[proxy]]
        port = 8443
        kind = "tls"
        names = { "blue.example" = "192.168.1.10:443" }

        [[proxy]]
        port = 8443
        kind = "http"
        names = { "red.example" = "192.168.1.11:80" }
        "#,
    );
    assert!(has(&errs, "proxy[1].port", "8443", "is the port of proxy[0] too"), "{errs:#?}");
}

#[test]
fn bad_proxy_fields_are_named_with_their_values() {
    let errs = proxy_errors(
        r#"
        [[proxy]]
        port = 70000
        kind = "tls"
        names = { "blue.example" = "192.168.1.10:443" }

        [[proxy]]
        port = 444
        kind = "https"
        names = { "blue.example" = "192.168.1.10:443" }

        [[proxy]]
        port = 445
        kind = "tls"
        names = { "a..example" = "192.168.1.10:443", "a.*.example" = "192.168.1.10:443", "x*.example" = "192.168.1.10:443", "*" = "192.168.1.10:443", "c.example" = [], "d.example" = "nowhere", "e.example" = ["192.168.1.10:443", "192.168.1.10:443"], "Blue.example" = "192.168.1.10:443", "blue.example." = "192.168.1.11:443" }
        proxy_protocol = "v3"
        hello_timeout = 0
        idle_timeout = "10s"
        max_connections = 0
        external_ip = "224.0.0.1"
        colour = "blue"

        [[proxy]]
        port = 446
        kind = "tls"
        "#,
    );
    assert!(has(&errs, "proxy[0].port", "70000", "must be a port 1-65535"), "{errs:#?}");
    assert!(has(&errs, "proxy[1].kind", "\"https\"", "must be \"tls\" (route by the SNI of the TLS ClientHello) or \"http\""), "{errs:#?}");
    assert!(has(&errs, "proxy[2].names.\"a..example\"", "", "empty label"), "{errs:#?}");
    assert!(has(&errs, "proxy[2].names.\"a.*.example\"", "", "left-most"), "{errs:#?}");
    assert!(has(&errs, "proxy[2].names.\"x*.example\"", "", "whole label"), "{errs:#?}");
    assert!(has(&errs, "proxy[2].names.\"*\"", "", "use a default route"), "{errs:#?}");
    assert!(has(&errs, "proxy[2].names.\"c.example\"", "[]", "at least one server"), "{errs:#?}");
    assert!(has(&errs, "proxy[2].names.\"d.example\"", "\"nowhere\"", "\"ADDR:PORT\""), "{errs:#?}");
    assert!(has(&errs, "proxy[2].names.\"e.example\"", "\"192.168.1.10:443\"", "is listed twice"), "{errs:#?}");
    assert!(has(&errs, "proxy[2].names.\"blue.example.\"", "", "is the same name as names.\"Blue.example\""), "{errs:#?}");
    assert!(has(&errs, "proxy[2].proxy_protocol", "\"v3\"", "\"v1\""), "{errs:#?}");
    assert!(has(&errs, "proxy[2].hello_timeout", "0", "above 0"), "{errs:#?}");
    assert!(has(&errs, "proxy[2].idle_timeout", "\"10s\"", "number of seconds"), "{errs:#?}");
    assert!(has(&errs, "proxy[2].max_connections", "0", "1-1000000"), "{errs:#?}");
    assert!(has(&errs, "proxy[2].external_ip", "\"224.0.0.1\"", "unicast"), "{errs:#?}");
    assert!(has(&errs, "proxy[2].colour", "", "unknown key"), "{errs:#?}");
    assert!(has(&errs, "proxy[3].names", "", "routes nothing"), "{errs:#?}");
    assert_eq!(errs.len(), 17, "{errs:#?}");
}

#[test]
fn a_proxy_port_must_be_clear_of_the_nat_ranges_the_tcp_forwards_and_other_proxies() {
    let errs = proxy_errors(
        r#"
        low_port_range = "100-499"
        [[forward]]
        name = "web"
        protocol = "tcp"
        port = "8000-8099"
        to = ["10.77.1.10:80"]
        [[forward]]
        protocol = "udp"
        port = 9443
        to = ["10.77.1.10"]

        [[proxy]]
        port = 25000
        kind = "tls"
        default = "10.77.1.10:443"
        [[proxy]]
        port = 443
        kind = "tls"
        default = "10.77.1.10:443"
        [[proxy]]
        port = 8080
        kind = "tls"
        default = "10.77.1.10:443"
        [[proxy]]
        port = 9443
        kind = "tls"
        default = "10.77.1.10:443"
        [[proxy]]
        port = 9443
        kind = "tls"
        default = "10.77.1.11:443"
        [[proxy]]
        port = 9443
        kind = "tls"
        external_ip = "203.0.113.9"
        default = "10.77.1.11:443"
        "#,
    );
    assert!(has(&errs, "proxy[0].port", "25000", "is in port_range 20000-32767"), "{errs:#?}");
    assert!(has(&errs, "proxy[1].port", "443", "is in low_port_range 100-499"), "{errs:#?}");
    assert!(has(&errs, "proxy[2].port", "8080", "is forwarded by forward \"web\" (tcp 8000-8099"), "{errs:#?}");
    assert!(has(&errs, "proxy[4].port", "9443", "is the port of proxy[3] too"), "{errs:#?}");
    // A UDP forward on the port takes nothing from a TCP listener; another
    // address is another endpoint (no pool named: only unset addresses are
    // known to be the same).
    assert_eq!(errs.len(), 4, "{errs:#?}");
}

#[test]
fn proxy_servers_must_be_inside_hosts_and_the_address_in_the_pool() {
    let f = file(&format!(
        "{INTERFACES}[[proxy]]\nport = 443\nkind = \"tls\"\nexternal_ip = \"203.0.113.9\"\nnames = {{ \"blue.example\" = \"203.0.113.50:443\", \"red.example\" = [\"10.77.1.11:443\", \"10.77.1.1:443\"] }}\ndefault = \"8.8.8.8:443\"\n"
    ));
    let (s, _) = Settings::from_sources(Some(&f.0), &Overrides::default()).unwrap();
    let errs = test_environment(vec![Ipv4Addr::new(203, 0, 113, 1)]).proxy_errors(&s);
    assert!(has(&errs, "proxy[0].external_ip", "203.0.113.9", "is not in the external pool (203.0.113.1)"), "{errs:#?}");
    assert!(has(&errs, "proxy[0].names.\"blue.example\"", "\"203.0.113.50:443\"", "is on the WAN side"), "{errs:#?}");
    assert!(has(&errs, "proxy[0].names.\"red.example\"", "\"10.77.1.1:443\"", "gateway's own addresses"), "{errs:#?}");
    assert!(has(&errs, "proxy[0].default", "\"8.8.8.8:443\"", "outside every inside prefix"), "{errs:#?}");
    assert_eq!(errs.len(), 4, "{errs:#?}");
}

#[test]
fn a_reload_may_change_add_and_remove_proxies() {
    let env = test_environment(vec![Ipv4Addr::new(203, 0, 113, 1)]);
    let proxy = "[[proxy]]\nport = 443\nkind = \"tls\"\nnames = { \"blue.example\" = \"10.77.1.10:443\" }\n";
    let old = settings_of(&format!("{RELOAD_BASE}{proxy}"));
    let live = settings_of(&format!(
        "{RELOAD_BASE}{}default = \"10.77.1.12:443\"\nproxy_protocol = \"v1\"\nhello_timeout = 2\nidle_timeout = 30\nmax_connections = 10\n",
        proxy.replace("\"10.77.1.10:443\"", "[\"10.77.1.10:443\", \"10.77.1.11:443\"], \"red.example\" = \"10.77.1.11:443\"")
    ));
    assert_ne!(old.proxies, live.proxies);
    assert_eq!(fixed_changes(&old, &env, &live, &env), Vec::<String>::new());
    let moved = settings_of(&format!("{RELOAD_BASE}{}", proxy.replace("443\nkind", "8443\nkind")));
    assert_eq!(fixed_changes(&old, &env, &moved, &env), Vec::<String>::new(), "a proxy moved is one removed and one added");
    assert_eq!(fixed_changes(&old, &env, &settings_of(RELOAD_BASE), &env), Vec::<String>::new());
}

#[test]
fn quic_is_for_tls_proxies_and_claims_the_udp_port_too() {
    let proxies = proxies_of(
        r#"
        [[proxy]]
        port = 443
        kind = "tls"
        quic = true
        names = { "blue.example" = "10.77.1.10:443", "*.green.example" = ["10.77.1.12:443", "10.77.1.10:443"] }
        default = "10.77.1.14:8443"
        [[proxy]]
        port = 4443
        kind = "tls"
        default = "10.77.1.14:443"
        "#,
    );
    assert!(proxies[0].quic && !proxies[1].quic, "off unless asked for");
    let forward = proxies[0].quic_forward().expect("a quic proxy is a forward in the datapath");
    assert_eq!((forward.name.as_str(), forward.protocols.as_slice(), forward.ports, forward.pinned), ("quic/443", &[nat_common::proto::UDP][..], (443, 443), true));
    let servers: Vec<String> = forward.servers.iter().map(|s| format!("{}:{}", s.addr, s.port.unwrap())).collect();
    assert_eq!(servers, ["10.77.1.12:443", "10.77.1.10:443", "10.77.1.14:8443"], "every server once (names in order), with its own port");
    assert_eq!(forward.health.kind, HealthKind::None, "a pinned flow stays on its server; the proxy's checks pick among the servers up");
    assert!(proxies[1].quic_forward().is_none());

    let errs = proxy_errors(
        r#"
        [[forward]]
        protocol = "udp"
        port = 9443
        to = ["10.77.1.10"]
        [[proxy]]
        port = 9443
        kind = "tls"
        quic = true
        default = "10.77.1.10:443"
        [[proxy]]
        port = 80
        kind = "http"
        quic = true
        default = "10.77.1.10:80"
        [[proxy]]
        port = 8443
        kind = "tls"
        quic = "yes"
        default = "10.77.1.10:443"
        "#,
    );
    assert!(has(&errs, "proxy[0].port", "9443", "is forwarded by forward \"udp/9443\" (udp 9443"), "{errs:#?}");
    assert!(has(&errs, "proxy[1].quic", "true", "is for kind \"tls\" only"), "{errs:#?}");
    assert!(has(&errs, "proxy[2].quic", "\"yes\"", "must be true or false"), "{errs:#?}");
    assert_eq!(errs.len(), 3, "{errs:#?}");
}
