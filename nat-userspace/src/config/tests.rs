//! Settings read, validated and turned into what the programs read.

use std::io::Write as _;

use std::{net::Ipv4Addr, path::Path, time::Duration};

use nat_common::Prefix;

use nat_common::proto::{TCP, UDP};

use crate::config::{
    ConfigError, ConfigErrors, DEFAULT_PORT_HOLD, DEFAULT_PORT_RANGE, Environment, Filtering, FilteringMode, Forward, HealthCheck, HealthKind, Overrides, Server,
    PartialChecksums, Settings, Timeouts, XdpModeSetting, parse_port_range, parse_prefix,
    reload::fixed_changes,
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

/// A machine with a LAN on 10.77.1.0/24 (the gateway at .1) and a WAN on
/// 203.0.113.0/24.
fn test_environment(external_ips: Vec<Ipv4Addr>) -> Environment {
    Environment {
        lan_ifindex: 1,
        wan_ifindex: 2,
        external_ips,
        lan_prefixes: vec![Prefix::new(Ipv4Addr::new(10, 77, 1, 0), 24)],
        routed_prefixes: Vec::new(),
        own_addrs: vec![Ipv4Addr::new(10, 77, 1, 1)],
        wan_prefixes: vec![Prefix::new(Ipv4Addr::new(203, 0, 113, 0), 24)],
        lan_is_nic: false,
        wan_is_nic: false,
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
        partial_checksums = "test"
        port_hold = 5
        [timeouts]
        udp = 30
        icmp = 10
        tcp_established = 600
        tcp_transitory = 20
        sctp_init = 5
        sctp_established = 900
        sctp_closing = 7
        esp = 45
        "#,
    );
    let (s, warnings) = Settings::from_sources(Some(&f.0), &Overrides::default()).unwrap();
    assert_eq!((s.lan.as_str(), s.wan.as_str()), ("eth1", "eth0"));
    assert_eq!(s.external_ips, [Ipv4Addr::new(203, 0, 113, 7)]);
    assert_eq!((s.port_min, s.port_max), (40000, 40099));
    assert_eq!(s.xdp_mode, XdpModeSetting::Generic);
    assert_eq!(s.partial_checksums, PartialChecksums::Test);
    assert_eq!(s.port_hold, Duration::from_secs(5));
    assert_eq!(s.timeouts.udp, Duration::from_secs(30));
    assert_eq!((s.timeouts.tcp_opening, s.timeouts.tcp_closing), (Duration::from_secs(20), Duration::from_secs(20)), "tcp_transitory sets both");
    assert_eq!(
        (s.timeouts.sctp_init, s.timeouts.sctp_established, s.timeouts.sctp_closing),
        (Duration::from_secs(5), Duration::from_secs(900), Duration::from_secs(7))
    );
    assert_eq!(s.timeouts.esp, Duration::from_secs(45));
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
    assert_eq!(s.partial_checksums, PartialChecksums::Auto);
    assert!(warnings.is_empty());
}

/// Only a NIC's own interface in native mode, with `partial_checksums`
/// left at auto, has its frames taken off a wire (no partial-checksum test).
#[test]
fn frames_come_off_a_wire_only_from_a_nic_in_native_mode_on_auto() {
    let env = Environment { lan_is_nic: true, wan_is_nic: false, ..test_environment(vec![Ipv4Addr::new(203, 0, 113, 1)]) };
    assert_eq!(env.off_the_wire(true, PartialChecksums::Auto), (true, false));
    assert_eq!(env.off_the_wire(false, PartialChecksums::Auto), (false, false), "generic mode: any skb may carry one");
    assert_eq!(env.off_the_wire(true, PartialChecksums::Test), (false, false), "the operator's word");
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
        partial_checksums = "never"
        port_hold = -1
        colour = "blue"
        [timeouts]
        udp = "long"
        tcp_establshed = 10
        "#,
        &Overrides::default(),
    );
    let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
    for expected in ["wan", "external_ip", "port_range", "xdp_mode", "partial_checksums", "port_hold", "colour", "timeouts.udp", "timeouts.tcp_establshed"] {
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
    assert_eq!(s.partial_checksums, PartialChecksums::Auto);
    let d = Timeouts::default();
    assert_eq!(
        (s.timeouts.udp, s.timeouts.icmp, s.timeouts.tcp_established, s.timeouts.tcp_opening, s.timeouts.tcp_closing),
        (d.udp, d.icmp, d.tcp_established, d.tcp_opening, d.tcp_closing)
    );
    assert_eq!((s.timeouts.sctp_init, s.timeouts.sctp_established, s.timeouts.sctp_closing), (d.sctp_init, d.sctp_established, d.sctp_closing));        assert_eq!(s.filtering, Filtering::default());
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

const INTERFACES: &str = "lan = \"a\"\nwan = \"b\"\n";

fn forwards_of(text: &str, flags: &Overrides) -> (Vec<Forward>, Vec<String>) {
    let f = file(&format!("{INTERFACES}{text}"));
    let (s, warnings) = Settings::from_sources(Some(&f.0), flags).unwrap();
    (s.forwards, warnings)
}

fn flags(forwards: &[&str]) -> Overrides {
    Overrides { forwards: forwards.iter().map(|f| f.to_string()).collect(), ..Overrides::default() }
}

fn server(addr: [u8; 4], port: Option<u16>, weight: u32) -> Server {
    Server { addr: Ipv4Addr::from(addr), port, weight }
}

/// Whether one error has exactly `field` and `value` and says `what`.
fn has(errs: &[ConfigError], field: &str, value: &str, what: &str) -> bool {
    errs.iter().any(|e| e.field == field && e.value == value && e.allowed.contains(what))
}

/// Issue 12: a port forward, a load-balanced service with weights and a
/// health table, a range with and without server ports; the defaults filled
/// in (the name, the health kind by protocol and server count).
#[test]
fn forwards_are_read_with_their_defaults() {
    let (forwards, warnings) = forwards_of(
        r#"
        [[forward]]
        protocol = "tcp"
        port = 8080
        to = ["10.77.1.10:80"]

        [[forward]]
        name = "web"
        protocol = "tcp"
        port = 443
        external_ip = "203.0.113.1"
        to = ["10.77.1.11:8443", { server = "10.77.1.12:8443", weight = 2 }, { server = "10.77.1.13:8443", weight = 0 }]
        [forward.health]
        kind = "http"
        interval = 0.5
        timeout = 0.25
        fall = 3
        rise = 5
        path = "/healthz"

        [[forward]]
        protocol = "tcp+udp"
        port = "8100-8199"
        to = ["10.77.1.20", "10.77.1.21:9000"]

        [[forward]]
        protocol = "udp"
        port = 53
        to = ["10.77.1.30", "10.77.1.31"]

        [[forward]]
        name = "game"
        protocol = "udp"
        port = 27015
        to = ["10.77.1.40", "10.77.1.41"]
        health = { kind = "udp", send = "hex:ffffffff54", expect = "pong" }
        "#,
        &Overrides::default(),
    );
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(forwards.len(), 5);
    assert_eq!(
        forwards[0],
        Forward {
            name: "tcp/8080".into(),
            protocols: vec![TCP],
            ports: (8080, 8080),
            external_ip: None,
            servers: vec![server([10, 77, 1, 10], Some(80), 1)],
            health: HealthCheck::of_kind(HealthKind::None),
            pinned: false,
        },
        "one server: no health check"
    );
    let web = &forwards[1];
    assert_eq!((web.name.as_str(), web.external_ip), ("web", Some(Ipv4Addr::new(203, 0, 113, 1))));
    assert_eq!(
        web.servers,
        [server([10, 77, 1, 11], Some(8443), 1), server([10, 77, 1, 12], Some(8443), 2), server([10, 77, 1, 13], Some(8443), 0)]
    );
    assert_eq!(
        web.health,
        HealthCheck {
            kind: HealthKind::Http,
            interval: Duration::from_millis(500),
            timeout: Duration::from_millis(250),
            fall: 3,
            rise: 5,
            path: "/healthz".into(),
            send: Vec::new(),
            expect: None,
        }
    );
    let range = &forwards[2];
    assert_eq!((range.name.as_str(), range.protocols.as_slice(), range.ports), ("tcp+udp/8100-8199", [TCP, UDP].as_slice(), (8100, 8199)));
    assert_eq!(range.servers, [server([10, 77, 1, 20], None, 1), server([10, 77, 1, 21], Some(9000), 1)]);
    assert_eq!(range.health, HealthCheck::of_kind(HealthKind::Tcp), "several TCP servers: TCP connects, the default timing");
    assert_eq!(
        (range.health.interval, range.health.timeout, range.health.fall, range.health.rise, range.health.path.as_str()),
        (Duration::from_secs(1), Duration::from_secs(1), 2, 2, "/")
    );
    assert_eq!(range.port_count(), 100);
    assert_eq!(forwards[3].health.kind, HealthKind::None, "UDP alone: no check unless asked");
    let game = &forwards[4].health;
    assert_eq!((game.kind, game.send.as_slice(), game.expect.as_deref()), (HealthKind::Udp, [0xff, 0xff, 0xff, 0xff, 0x54].as_slice(), Some(b"pong".as_slice())));
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
    // The last port of a range may reach 65535 exactly.
    let (forwards, _) = forwards_of("[[forward]]\nprotocol = \"tcp\"\nport = \"1000-1009\"\nto = [\"10.0.0.1:65526\"]\n", &Overrides::default());
    assert_eq!(forwards[0].servers[0].port_for(1009, 1000), 65535);
}

/// Issue 12: `--forward PROTOCOL:PORT=SERVER[,SERVER...]`, repeatable,
/// adds forwards after the file's, with the same defaults.
#[test]
fn forward_flags_add_to_the_file() {
    let text = "[[forward]]\nname = \"ssh\"\nprotocol = \"tcp\"\nport = 2222\nto = [\"10.77.1.5:22\"]\n";
    let (forwards, _) = forwards_of(text, &flags(&["tcp:8080=10.77.1.10:80,10.77.1.11:80", "tcp+udp:5000-5009=10.77.1.12", "udp:53 = 10.77.1.13:5353"]));
    let names: Vec<&str> = forwards.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["ssh", "tcp/8080", "tcp+udp/5000-5009", "udp/53"]);
    assert_eq!(forwards[1].servers, [server([10, 77, 1, 10], Some(80), 1), server([10, 77, 1, 11], Some(80), 1)]);
    assert_eq!(forwards[1].health.kind, HealthKind::Tcp);
    assert_eq!((forwards[2].protocols.as_slice(), forwards[2].ports), ([TCP, UDP].as_slice(), (5000, 5009)));
    assert_eq!(forwards[2].servers, [server([10, 77, 1, 12], None, 1)]);
    assert_eq!(forwards[2].health.kind, HealthKind::None);
    assert_eq!((forwards[3].protocols.as_slice(), forwards[3].servers[0].port), ([UDP].as_slice(), Some(5353)));
    assert!(forwards.iter().all(|f| f.external_ip.is_none()));

    let flagged = Settings::from_sources(None, &Overrides { lan: Some("a".into()), wan: Some("b".into()), ..flags(&["udp:69=10.77.1.2"]) }).unwrap().0;
    assert_eq!(flagged.forwards.len(), 1, "flags alone, without a file");
}

/// Issue 12: every mistake in a forward, at once, each naming the field
/// (`forward[N]`, its name if given, the key), the value and what is
/// allowed; the flag's errors name `--forward`.
#[test]
fn every_forward_error_is_named_with_field_and_value() {
    let errs = errors(
        &format!(
            r#"{INTERFACES}
            [[forward]]
            protocol = "gre"
            port = 0
            to = ["10.77.1.10:80"]
            colour = "blue"

            [[forward]]
            name = "web"
            port = "9000-8000"
            to = ["10.77.1.10:80", "10.77.1.10:80", "10.77.1.11:eighty", "10.77.1", {{ server = "10.77.1.12:80", weight = 101 }}, {{ weight = 2 }}, {{ server = "10.77.1.13", wieght = 1 }}, 7]
            [forward.health]
            kind = "icmp"
            interval = 0.05
            timeout = 0
            fall = 0
            rise = 101
            path = "health"
            retries = 3

            [[forward]]
            name = "range"
            protocol = "tcp"
            port = "1000-6000"

            [[forward]]
            name = "overflow"
            protocol = "tcp"
            port = "60000-60099"
            external_ip = "224.0.0.1"
            to = ["10.77.1.10:65500", "10.77.1.11"]

            [[forward]]
            name = "drained"
            protocol = "tcp"
            port = 7000
            to = [{{ server = "10.77.1.10", weight = 0 }}, {{ server = "10.77.1.11", weight = 0 }}]
            health = {{ kind = "tcp", send = "ping", expect = "pong" }}

            [[forward]]
            name = "udp-probe"
            protocol = "udp"
            port = 7001
            to = ["10.77.1.10", "10.77.1.11"]
            health = {{ kind = "udp", expect = "hex:0g" }}

            [[forward]]
            name = "mismatch"
            protocol = "udp"
            port = 7002
            to = ["10.77.1.10"]
            health = {{ kind = "http", path = "/" }}

            [[forward]]
            name = "pathless"
            protocol = "tcp"
            port = 7004
            to = ["10.77.1.10"]
            health = {{ path = "/" }}

            [[forward]]
            protocol = "tcp"
            port = 7003
            to = "10.77.1.10:80"
            "#
        ),
        &flags(&["tcp/8080=10.0.0.1", "tcp:8081=10.77.1.10:80,", "icmp:80-70=10.77.1.10"]),
    );
    let expected: &[(&str, &str, &str)] = &[
        ("forward[0].protocol", "\"gre\"", "must be \"tcp\", \"udp\", \"tcp+udp\" or \"sctp\""),
        ("forward[0].port", "0", "must be a port 1-65535"),
        ("forward[0].colour", "", "unknown key; known: name, protocol, port, external_ip, to, health"),
        ("forward[1] \"web\".protocol", "", "required"),
        ("forward[1] \"web\".port", "\"9000-8000\"", "LO is above HI"),
        ("forward[1] \"web\".to[1]", "\"10.77.1.10:80\"", "is the same server as forward[1] \"web\".to[0]"),
        ("forward[1] \"web\".to[2]", "\"10.77.1.11:eighty\"", "must be \"ADDR\" or \"ADDR:PORT\""),
        ("forward[1] \"web\".to[3]", "\"10.77.1\"", "must be \"ADDR\" or \"ADDR:PORT\""),
        ("forward[1] \"web\".to[4].weight", "101", "must be a whole number 0-100"),
        ("forward[1] \"web\".to[5].server", "", "required"),
        ("forward[1] \"web\".to[6].wieght", "", "unknown key; known: server, weight"),
        ("forward[1] \"web\".to[7]", "7", "must be a server"),
        ("forward[1] \"web\".health.kind", "\"icmp\"", "must be \"tcp\" (connect)"),
        ("forward[1] \"web\".health.interval", "0.05", "at least 0.1"),
        ("forward[1] \"web\".health.timeout", "0", "above 0"),
        ("forward[1] \"web\".health.fall", "0", "1-100"),
        ("forward[1] \"web\".health.rise", "101", "1-100"),
        ("forward[1] \"web\".health.retries", "", "unknown key"),
        ("forward[1] \"web\".health.path", "\"health\"", "must be a path starting with '/'"),
        ("forward[2] \"range\".port", "\"1000-6000\"", "spans 5001 ports: a range may span at most 4096"),
        ("forward[2] \"range\".to", "", "required"),
        ("forward[3] \"overflow\".external_ip", "\"224.0.0.1\"", "unicast"),
        ("forward[3] \"overflow\".to[0]", "\"10.77.1.10:65500\"", "the range's last port 60099 would go to server port 65599, past 65535"),
        ("forward[4] \"drained\".to", "[{ server = \"10.77.1.10\", weight = 0 }, { server = \"10.77.1.11\", weight = 0 }]", "every weight is 0"),
        ("forward[4] \"drained\".health.send", "\"ping\"", "is for kind = \"udp\" only, and kind is \"tcp\""),
        ("forward[4] \"drained\".health.expect", "\"pong\"", "is for kind = \"udp\" only"),
        ("forward[5] \"udp-probe\".health.send", "", "required for kind = \"udp\""),
        ("forward[5] \"udp-probe\".health.expect", "\"hex:0g\"", "pairs of hex digits"),
        ("forward[6] \"mismatch\".health.kind", "\"http\"", "the forward is udp only"),
        ("forward[7] \"pathless\".health.path", "\"/\"", "is for kind = \"http\" only, and kind is \"none\""),
        ("forward[8].to", "\"10.77.1.10:80\"", "must be a list of servers"),
        ("--forward (forward[9])", "\"tcp/8080=10.0.0.1\"", "must be PROTOCOL:PORT=SERVER[,SERVER...]"),
        ("--forward (forward[10].to[1])", "\"\"", "must be \"ADDR\" or \"ADDR:PORT\""),
        ("--forward (forward[11].protocol)", "\"icmp\"", "must be \"tcp\", \"udp\", \"tcp+udp\" or \"sctp\""),
        ("--forward (forward[11].port)", "\"80-70\"", "LO is above HI"),
    ];
    for (field, value, what) in expected {
        assert!(has(&errs, field, value, what), "no error {field} = {value}: ...{what}...; got:\n{}", ConfigErrors(errs.clone()));
    }
    assert_eq!(errs.len(), expected.len(), "exactly these errors:\n{}", ConfigErrors(errs.clone()));
    let one = errs.iter().find(|e| e.field == "forward[0].protocol").unwrap();
    assert_eq!(one.to_string(), "forward[0].protocol = \"gre\": must be \"tcp\", \"udp\", \"tcp+udp\" or \"sctp\"");
}

/// Issue 12: the limits of the datapath's tables: forwards, and servers of
/// one forward.
#[test]
fn too_many_forwards_or_servers() {
    let many: String = (0..65).map(|i| format!("[[forward]]\nprotocol = \"tcp\"\nport = {}\nto = [\"10.0.0.1\"]\n", 1000 + i)).collect();
    let errs = errors(&format!("{INTERFACES}{many}"), &Overrides::default());
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(has(&errs, "forward", "65 forwards", "at most 64 forwards"), "{errs:?}");

    let servers: Vec<String> = (1..=33).map(|i| format!("\"10.0.0.{i}\"")).collect();
    let errs = errors(&format!("{INTERFACES}[[forward]]\nprotocol = \"tcp\"\nport = 80\nto = [{}]\n", servers.join(", ")), &Overrides::default());
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(has(&errs, "forward[0].to", "33 servers", "at most 32 servers per forward"), "{errs:?}");

    let errs = errors(&format!("{INTERFACES}[forward]\nprotocol = \"tcp\"\n"), &Overrides::default());
    assert!(errs[0].field == "forward" && errs[0].allowed.contains("[[forward]]"), "{errs:?}");
}

/// Issue 12: one protocol, address and port goes to one forward: overlaps
/// between the file and the flags are found, an unset external_ip being
/// the pool's first address; other protocols, addresses or ports are fine.
#[test]
fn overlapping_forwards_are_refused() {
    let text = r#"
        external_ip = ["203.0.113.1", "203.0.113.2"]
        [[forward]]
        name = "web"
        protocol = "tcp"
        port = "8000-8099"
        to = ["10.77.1.10"]
        [[forward]]
        protocol = "udp"
        port = 8050
        external_ip = "203.0.113.1"
        to = ["10.77.1.11"]
        [[forward]]
        protocol = "tcp"
        port = 8050
        external_ip = "203.0.113.2"
        to = ["10.77.1.12"]
        "#;
    assert_eq!(forwards_of(text, &Overrides::default()).0.len(), 3, "other protocol, other address: no overlap");
    let errs = errors(&format!("{INTERFACES}{text}"), &flags(&["tcp+udp:8099-8100=10.77.1.13", "tcp:9000=10.77.1.14"]));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].field, "--forward (forward[3].port)");
    assert_eq!(errs[0].value, "8099-8100");
    assert!(errs[0].allowed.starts_with("overlaps forward[0] \"web\": tcp+udp 8099-8100 on 203.0.113.1"), "{}", errs[0]);

    let errs = errors(&format!("{INTERFACES}{text}"), &flags(&["udp:8050=10.77.1.13"]));
    assert!(has(&errs, "--forward (forward[3].port)", "8050", "overlaps forward[1]"), "None is the first external address: {errs:?}");

    let errs = errors(&format!("{INTERFACES}{text}"), &flags(&["udp:8050=10.77.1.13", "udp:8040-8060=10.77.1.14"]));
    assert_eq!(errs.len(), 2, "{errs:?}");
}

/// Issue 12: the forwards against the machine, every problem at once: a
/// port natd hands out or a local service listens on, an external_ip not
/// in the pool, a server on the WAN side (an external or own address, the
/// WAN's network) or outside every inside prefix.
#[test]
fn forwards_are_checked_against_the_machine() {
    let text = r#"
        external_ip = ["203.0.113.1", "203.0.113.2"]
        low_port_range = "600-699"
        [[forward]]
        name = "nat"
        protocol = "tcp"
        port = "19990-20009"
        to = ["10.77.1.10"]
        [[forward]]
        name = "low"
        protocol = "udp"
        port = 650
        to = ["10.77.1.10"]
        [[forward]]
        name = "elsewhere"
        protocol = "tcp"
        port = 8080
        external_ip = "198.51.100.9"
        to = ["203.0.113.2:80", "10.77.1.1:80", "203.0.113.50:80", "192.168.9.9:80", "10.77.1.255:80", "10.77.1.10:80"]
        [[forward]]
        name = "listened"
        protocol = "tcp+udp"
        port = "5300-5399"
        to = ["10.77.1.53"]
        [[forward]]
        name = "fine"
        protocol = "tcp"
        port = 443
        external_ip = "203.0.113.2"
        to = ["10.77.1.11", "10.88.0.5"]
        "#;
    let f = file(&format!("{INTERFACES}{text}"));
    let (s, _) = Settings::from_sources(Some(&f.0), &Overrides::default()).unwrap();
    let mut env = test_environment(s.external_ips.clone());
    env.routed_prefixes = vec![Prefix::new(Ipv4Addr::new(10, 88, 0, 0), 16)];
    let listeners = [
        (UDP, Ipv4Addr::UNSPECIFIED, 5353),
        (TCP, Ipv4Addr::new(203, 0, 113, 1), 5300),
        (TCP, Ipv4Addr::new(203, 0, 113, 2), 5301),
        (TCP, Ipv4Addr::new(203, 0, 113, 1), 443),
    ];
    let errs = env.forward_errors(&s, &listeners);
    let expected: &[(&str, &str, &str)] = &[
        ("forward[0] \"nat\".port", "19990-20009", "overlaps port_range 20000-32767, the ports natd hands out"),
        ("forward[1] \"low\".port", "650", "overlaps low_port_range 600-699"),
        ("forward[2] \"elsewhere\".external_ip", "198.51.100.9", "is not in the external pool (203.0.113.1, 203.0.113.2)"),
        ("forward[2] \"elsewhere\".to[0]", "\"203.0.113.2:80\"", "is an external address"),
        ("forward[2] \"elsewhere\".to[1]", "\"10.77.1.1:80\"", "is one of the gateway's own addresses"),
        ("forward[2] \"elsewhere\".to[2]", "\"203.0.113.50:80\"", "is on the WAN side, in the WAN interface's network 203.0.113.0/24"),
        ("forward[2] \"elsewhere\".to[3]", "\"192.168.9.9:80\"", "is outside every inside prefix (10.77.1.0/24 (lan), 10.88.0.0/16 (routed))"),
        ("forward[2] \"elsewhere\".to[4]", "\"10.77.1.255:80\"", "is the network or broadcast address of the LAN prefix 10.77.1.0/24"),
        ("forward[3] \"listened\".port", "5300-5399", "contains udp port 5353, where a local service listens on 0.0.0.0"),
        ("forward[3] \"listened\".port", "5300-5399", "contains tcp port 5300, where a local service listens on 203.0.113.1"),
    ];
    for (field, value, what) in expected {
        assert!(has(&errs, field, value, what), "no error {field} = {value}: ...{what}...; got:\n{}", ConfigErrors(errs.clone()));
    }
    assert_eq!(errs.len(), expected.len(), "a listener on another pool address or another port is no collision:\n{}", ConfigErrors(errs.clone()));

    // The pool's first address named by the WAN, not the file: an overlap
    // the file could not see.
    let f = file(&format!(
        "{INTERFACES}[[forward]]\nprotocol = \"tcp\"\nport = 80\nto = [\"10.77.1.10\"]\n[[forward]]\nprotocol = \"tcp\"\nport = 80\nexternal_ip = \"203.0.113.1\"\nto = [\"10.77.1.11\"]\n"
    ));
    let (s, _) = Settings::from_sources(Some(&f.0), &Overrides::default()).unwrap();
    let errs = test_environment(vec![Ipv4Addr::new(203, 0, 113, 1)]).forward_errors(&s, &[]);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(has(&errs, "forward[1] \"tcp/80\".port", "80", "overlaps forward[0] \"tcp/80\": tcp 80 on 203.0.113.1"), "{errs:?}");
    assert!(test_environment(vec![Ipv4Addr::new(203, 0, 113, 2), Ipv4Addr::new(203, 0, 113, 1)]).forward_errors(&s, &[]).is_empty());
}

/// Issue 12: the datapath holds MAX_FORWARD_PORTS forwarded endpoints;
/// each port of a range counts once per protocol.
#[test]
fn forwarded_ports_in_all_are_bounded() {
    let pool: Vec<String> = (1..=8).map(|i| format!("\"203.0.113.{i}\"")).collect();
    let mut text = format!("{INTERFACES}external_ip = [{}]\n", pool.join(", "));
    for i in 1..=8 {
        for lo in [33000u32, 37096] {
            text += &format!("[[forward]]\nprotocol = \"tcp+udp\"\nport = \"{lo}-{}\"\nexternal_ip = \"203.0.113.{i}\"\nto = [\"10.77.1.10\"]\n", lo + 4095);
        }
    }
    let f = file(&text);
    let (s, _) = Settings::from_sources(Some(&f.0), &Overrides::default()).unwrap();
    let env = test_environment(s.external_ips.clone());
    let errs = env.forward_errors(&s, &[]);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(has(&errs, "forward", "131072 forwarded ports", "at most 65536 in all"), "{errs:?}");
}

/// Issue 12: a health timeout longer than its interval is allowed, with a
/// warning; so is a timing set for no check at all.
#[test]
fn odd_health_timing_is_warned_about() {
    let (_, warnings) = forwards_of(
        "[[forward]]\nname = \"slow\"\nprotocol = \"tcp\"\nport = 80\nto = [\"10.0.0.1\", \"10.0.0.2\"]\nhealth = { interval = 1, timeout = 2.5 }\n\
         [[forward]]\nprotocol = \"tcp\"\nport = 81\nto = [\"10.0.0.1\"]\nhealth = { fall = 5 }\n",
        &Overrides::default(),
    );
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(warnings[0].starts_with("forward[0] \"slow\".health.timeout = 2.5 s is longer than the interval, 1 s"), "{warnings:?}");
    assert!(warnings[1].starts_with("forward[1].health: kind is \"none\", nothing is checked, so these keys have no effect: fall;"), "{warnings:?}");
}

/// The example config's commented forwards, uncommented, are valid and
/// mean what its comments say.
#[test]
fn the_example_forwards_are_valid() {
    let example = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/natd.toml")).unwrap();
    let start = example.find("# [[forward]]").expect("the example shows forwards");
    let uncommented: String = example[start..].lines().map(|line| format!("{}\n", line.trim_start_matches('#').trim_start())).collect();
    let f = file(&format!("{example}\n{uncommented}"));
    let (s, warnings) = Settings::from_sources(Some(&f.0), &Overrides::default()).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    let names: Vec<&str> = s.forwards.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["ssh", "web", "tcp+udp/8000-8099", "game"]);
    let kinds: Vec<HealthKind> = s.forwards.iter().map(|f| f.health.kind).collect();
    assert_eq!(kinds, [HealthKind::None, HealthKind::Http, HealthKind::Tcp, HealthKind::Udp]);
    assert_eq!(s.forwards[2].servers[1].port_for(8001, 8000), 9001);
    let proxies: Vec<(&str, usize, bool)> = s.proxies.iter().map(|p| (p.name.as_str(), p.routes.len(), p.default.is_some())).collect();
    assert_eq!(proxies, [("tls/8443", 2, true)]);
}

fn settings_of(text: &str) -> Settings {
    let f = file(text);
    Settings::from_sources(Some(&f.0), &Overrides::default()).unwrap().0
}

const RELOAD_BASE: &str = "lan = \"lan0\"\nwan = \"wan0\"\n";

#[test]
fn forwards_log_level_and_drop_list_change_live() {
    let env = test_environment(vec![Ipv4Addr::new(203, 0, 113, 1)]);
    let old = settings_of(RELOAD_BASE);
    let new = settings_of(&format!(
        "{RELOAD_BASE}log_level = \"debug\"\nwan_drop_sources = [\"192.0.2.0/24\"]\n[[forward]]\nprotocol = \"tcp\"\nport = 8080\nto = [\"10.77.1.5:80\"]\n"
    ));
    assert_eq!(fixed_changes(&old, &env, &new, &env), Vec::<String>::new());
}

#[test]
fn what_cannot_change_live_is_refused_by_name() {
    let env = test_environment(vec![Ipv4Addr::new(203, 0, 113, 1)]);
    let old = settings_of(RELOAD_BASE);
    let new = settings_of("lan = \"lan1\"\nwan = \"wan0\"\nport_range = \"30000-40000\"\nport_parity = false\nport_hold = 30\n[timeouts]\nudp = 60\n");
    let changes = fixed_changes(&old, &env, &new, &env);
    assert_eq!(changes, ["lan: \"lan0\" -> \"lan1\"", "port_range: (20000, 32767) -> (30000, 40000)", "port_hold: 120s -> 30s"], "timeouts and parity change live");
    assert!(super::reload::live_changes(&old, &new).contains(&"port_parity: true -> false".to_string()));
    let moved = test_environment(vec![Ipv4Addr::new(203, 0, 113, 9)]);
    assert_eq!(fixed_changes(&old, &env, &old, &moved), ["external_ip: [203.0.113.1] -> [203.0.113.9]"]);
}

#[test]
fn timeouts_filtering_quota_the_mapping_log_and_partial_checksums_change_live_and_say_so() {
    let env = test_environment(vec![Ipv4Addr::new(203, 0, 113, 1)]);
    let old = settings_of(RELOAD_BASE);
    let new = settings_of(&format!(
        "{RELOAD_BASE}ports_per_host = 100\nlog_mappings = true\npartial_checksums = \"test\"\n[timeouts]\nudp = 60\n[filtering]\nudp = \"address-and-port-dependent\"\n"
    ));
    assert_eq!(fixed_changes(&old, &env, &new, &env), Vec::<String>::new());
    let live = super::reload::live_changes(&old, &new);
    let names: Vec<&str> = live.iter().map(|c| c.split(':').next().unwrap()).collect();
    assert_eq!(names, ["timeouts", "filtering", "ports_per_host", "log_mappings", "partial_checksums"], "{live:?}");
    assert!(live[2].ends_with("-> 100"), "{live:?}");
    assert!(super::reload::live_changes(&old, &old).is_empty());
}

mod metrics;
mod proxies;

#[test]
fn an_sctp_forward_is_read_from_the_file_and_the_flag_with_no_check_by_default() {
    let (s, _) = Settings::from_sources(
        Some(&file(&format!("{RELOAD_BASE}[[forward]]\nprotocol = \"sctp\"\nport = 3868\nto = [\"10.77.1.10\", \"10.77.1.11\"]\n")).0),
        &Overrides { forwards: vec!["sctp:2905=10.77.1.12".into()], ..Overrides::default() },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let protocols: Vec<(&str, String, HealthKind)> = s.forwards.iter().map(|f| (f.name.as_str(), f.protocol_name(), f.health.kind)).collect();
    assert_eq!(protocols, [("sctp/3868", "sctp".to_string(), HealthKind::None), ("sctp/2905", "sctp".to_string(), HealthKind::None)]);
    let errs = errors(&format!("{RELOAD_BASE}[[forward]]\nprotocol = \"sctp\"\nport = 3868\nto = [\"10.77.1.10\", \"10.77.1.11\"]\nhealth = {{ kind = \"tcp\" }}\n"), &Overrides::default());
    assert!(errs.iter().any(|e| e.field.ends_with("health.kind")), "a TCP check of SCTP servers is refused: {errs:#?}");
}

#[test]
fn max_sessions_defaults_to_the_maps_ceiling_is_bounded_and_needs_a_restart() {
    assert_eq!(settings_of(RELOAD_BASE).max_sessions, nat_common::MAX_SESSIONS);
    let small = settings_of(&format!("{RELOAD_BASE}max_sessions = 2048\n"));
    assert_eq!(small.max_sessions, 2048);
    for bad in ["1023", "1048577", "\"many\""] {
        let errs = errors(&format!("lan = \"a\"\nwan = \"b\"\nmax_sessions = {bad}\n"), &Overrides::default());
        assert_eq!(errs.len(), 1, "{bad}: {errs:?}");
        assert_eq!(errs[0].field, "max_sessions");
        assert!(errs[0].allowed.contains("1024-1048576"), "{errs:?}");
    }
    let env = test_environment(vec![Ipv4Addr::new(203, 0, 113, 1)]);
    let old = settings_of(RELOAD_BASE);
    assert_eq!(fixed_changes(&old, &env, &small, &env), ["max_sessions: 1048576 -> 2048"]);
}
