//! `metrics = "ADDR:PORT"` and `--metrics`: read, every mistake named with
//! its value and what is allowed, checked against the NAT's ports, the
//! proxies and the machine; a change needs a restart.

use super::*;

fn metrics_of(text: &str, flags: &Overrides) -> Option<std::net::SocketAddr> {
    let f = file(&format!("{INTERFACES}{text}"));
    Settings::from_sources(Some(&f.0), flags).unwrap_or_else(|e| panic!("{e}")).0.metrics
}

#[test]
fn off_by_default_read_from_the_file_and_the_flag() {
    assert_eq!(metrics_of("", &Overrides::default()), None);
    assert_eq!(metrics_of("metrics = \"10.77.1.1:9469\"\n", &Overrides::default()), Some("10.77.1.1:9469".parse().unwrap()));
    assert_eq!(metrics_of("metrics = \"[::1]:9469\"\n", &Overrides::default()), Some("[::1]:9469".parse().unwrap()));
    let flags = Overrides { metrics: Some("127.0.0.1:9100".into()), ..Overrides::default() };
    assert_eq!(metrics_of("metrics = \"10.77.1.1:9469\"\n", &flags), Some("127.0.0.1:9100".parse().unwrap()), "the flag wins");
}

#[test]
fn a_bad_address_names_the_field_the_value_and_what_is_allowed() {
    for (value, hint) in [("10.77.1.1", "ADDR:PORT"), ("lan0:9469", "ADDR:PORT"), ("10.77.1.1:70000", "ADDR:PORT"), ("10.77.1.1:0", "1-65535")] {
        let errs = errors(&format!("{INTERFACES}metrics = \"{value}\"\n"), &Overrides::default());
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].field, "metrics");
        assert_eq!(errs[0].value, format!("{value:?}"));
        assert!(errs[0].allowed.contains(hint), "{value}: {}", errs[0].allowed);
    }
    let errs = errors(&format!("{INTERFACES}metrics = 9469\n"), &Overrides::default());
    assert_eq!((errs[0].field.as_str(), errs[0].allowed.as_str()), ("metrics", "must be a string in quotes"));
    let flags = Overrides { metrics: Some("localhost".into()), ..Overrides::default() };
    let errs = errors(INTERFACES, &flags);
    assert_eq!(errs[0].field, "--metrics (metrics)", "the flag is named");
}

/// The datapath takes inbound packets to the NAT's ports; natd's own check
/// of listening services would also trip on natd's listener there.
#[test]
fn the_port_is_clear_of_the_nat_ranges_and_the_proxies() {
    let errs = errors(&format!("{INTERFACES}metrics = \"0.0.0.0:25000\"\n"), &Overrides::default());
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0].allowed.contains("port_range 20000-32767"), "{}", errs[0].allowed);
    let errs = errors(&format!("{INTERFACES}port_class = true\nlow_port_range = \"600-699\"\nmetrics = \"127.0.0.1:650\"\n"), &Overrides::default());
    assert!(errs.iter().any(|e| e.allowed.contains("low_port_range 600-699")), "{errs:?}");
    let proxy = "[[proxy]]\nkind = \"tls\"\nport = 8443\nexternal_ip = \"203.0.113.1\"\nnames = { \"a.example\" = \"10.77.1.5:443\" }\n";
    let errs = errors(&format!("{INTERFACES}external_ip = \"203.0.113.1\"\nmetrics = \"0.0.0.0:8443\"\n{proxy}"), &Overrides::default());
    assert!(errs.iter().any(|e| e.field == "metrics" && e.allowed.contains("proxy \"tls/8443\"")), "{errs:?}");
    assert!(metrics_of(&format!("external_ip = \"203.0.113.1\"\nmetrics = \"10.77.1.1:8443\"\n{proxy}"), &Overrides::default()).is_some(), "another address");
}

#[test]
fn a_change_needs_a_restart() {
    let env = test_environment(vec![Ipv4Addr::new(203, 0, 113, 1)]);
    let old = settings_of(RELOAD_BASE);
    let new = settings_of(&format!("{RELOAD_BASE}metrics = \"10.77.1.1:9469\"\n"));
    assert_eq!(fixed_changes(&old, &env, &new, &env), ["metrics: None -> Some(10.77.1.1:9469)"]);
    assert_eq!(fixed_changes(&new, &env, &new, &env), Vec::<String>::new());
}

#[test]
fn the_machine_check_wants_an_address_of_this_machine() {
    let lo = "lan = \"lo\"\nwan = \"lo\"\n";
    // lan = wan is an error of its own; only the metrics address matters here.
    let check = |metrics: &str| {
        let f = file(&format!("{lo}external_ip = \"203.0.113.1\"\nmetrics = \"{metrics}\"\n"));
        let settings = match Settings::from_sources(Some(&f.0), &Overrides::default()) {
            Ok((s, _)) => s,
            Err(ConfigErrors(errs)) => {
                assert!(errs.iter().all(|e| e.field != "metrics"), "{errs:?}");
                let mut s = settings_of(RELOAD_BASE);
                s.metrics = Some(metrics.parse().unwrap());
                s
            }
        };
        match Environment::check(&settings) {
            Ok(_) => Vec::new(),
            Err(ConfigErrors(errs)) => errs.into_iter().filter(|e| e.field == "metrics").collect::<Vec<_>>(),
        }
    };
    assert_eq!(check("127.0.0.1:9469"), Vec::new());
    assert_eq!(check("0.0.0.0:9469"), Vec::new());
    let errs = check("192.0.2.123:9469");
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].value, "\"192.0.2.123:9469\"");
    assert!(errs[0].allowed.contains("not an address of this machine"), "{}", errs[0].allowed);
}

/// A listener the WAN reaches is allowed, with a warning.
#[test]
fn a_listener_the_wan_reaches_is_warned_about() {
    let warnings_of = |text: &str| {
        let f = file(&format!("{INTERFACES}external_ip = \"203.0.113.1\"\n{text}"));
        Settings::from_sources(Some(&f.0), &Overrides::default()).unwrap_or_else(|e| panic!("{e}")).1
    };
    for addr in ["0.0.0.0:9469", "203.0.113.1:9469", "[::]:9469"] {
        let warnings = warnings_of(&format!("metrics = \"{addr}\"\n"));
        assert_eq!(warnings.len(), 1, "{addr}: {warnings:?}");
        assert!(warnings[0].contains("WAN side") && warnings[0].contains(addr), "{}", warnings[0]);
    }
    assert_eq!(warnings_of("metrics = \"10.77.1.1:9469\"\n"), Vec::<String>::new());
}
