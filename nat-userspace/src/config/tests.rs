//! Settings read, validated and turned into what the programs read.

use std::io::Write as _;

use std::{net::Ipv4Addr, path::Path, time::Duration};

use nat_common::Prefix;

use crate::config::{
    ConfigError, DEFAULT_PORT_HOLD, DEFAULT_PORT_RANGE, Environment, Filtering, FilteringMode, Overrides, Server, Settings, Timeouts, XdpModeSetting,
    parse_port_range, parse_prefix,
};

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

fn server(addr: [u8; 4], port: Option<u16>, weight: u32) -> Server {
    Server { addr: Ipv4Addr::from(addr), port, weight }
}

/// Issue 12: the offset rule. A server without a port gets the external
/// port; one with a port gets it for the range's first port, and the
/// offset into the range is kept.
#[test]
fn a_server_port_keeps_the_offset_into_the_range() {
    let same = server([10, 0, 0, 1], None, 1);
    let shifted = server([10, 0, 0, 2], Some(9000), 1);
    assert_eq!((same.port_for(8000, 8000), same.port_for(8001, 8000), same.port_for(8099, 8000)), (8000, 8001, 8099));
    assert_eq!((shifted.port_for(8000, 8000), shifted.port_for(8001, 8000), shifted.port_for(8099, 8000)), (9000, 9001, 9099));
    assert_eq!((shifted.base_port(8000), same.base_port(8000)), (9000, 8000));
    let single = server([10, 0, 0, 3], Some(80), 1);
    assert_eq!(single.port_for(8080, 8080), 80);
}
