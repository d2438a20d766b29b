//! What a reload may change while natd runs: the forwards, the log level
//! and the WAN drop list. Every other setting shapes what is loaded and
//! attached (interfaces, the port space, the address pool, timers the
//! datapath was told), and changing it means a restart. Of the proxies,
//! names, servers, the default, the PROXY protocol and the timeouts change
//! live; their listeners (kind, port, address) and limits need a restart.

use std::fmt::Debug;

use crate::config::{Environment, Proxy, Settings};

/// The settings that differ between the running configuration and a new
/// one and cannot change live, each as "NAME: OLD -> NEW". Empty: the new
/// configuration may be applied.
pub fn fixed_changes(old: &Settings, old_env: &Environment, new: &Settings, new_env: &Environment) -> Vec<String> {
    let mut changes = Vec::new();
    let mut compare = |name: &str, a: &dyn Debug, b: &dyn Debug| {
        let (a, b) = (format!("{a:?}"), format!("{b:?}"));
        if a != b {
            changes.push(format!("{name}: {a} -> {b}"));
        }
    };
    compare("lan", &old.lan, &new.lan);
    compare("wan", &old.wan, &new.wan);
    compare("external_ip", &old_env.external_ips, &new_env.external_ips);
    compare("port_range", &(old.port_min, old.port_max), &(new.port_min, new.port_max));
    compare("low_port_range", &old.low_port_range, &new.low_port_range);
    compare("port_parity", &old.port_parity, &new.port_parity);
    compare("port_class", &old.port_class, &new.port_class);
    compare("xdp_mode", &old.xdp_mode, &new.xdp_mode);
    compare("port_hold", &old.port_hold, &new.port_hold);
    compare("ports_per_host", &old.ports_per_host, &new.ports_per_host);
    compare("log_mappings", &old.log_mappings, &new.log_mappings);
    compare("timeouts", &old.timeouts, &new.timeouts);
    compare("filtering", &old.filtering, &new.filtering);
    compare("inside_prefixes", &old_env.inside_description(), &new_env.inside_description());
    // Matched in order: a reload that adds, removes or moves a proxy is
    // refused, rather than guessing which listener became which.
    let listeners = |proxies: &[Proxy]| -> Vec<String> {
        proxies
            .iter()
            .map(|p| {
                let addr = p.external_ip.map_or_else(|| "the first external address".to_string(), |ip| ip.to_string());
                let quic = if p.quic { " and quic" } else { "" };
                format!("{}{quic} on {addr}, max_connections {}", p.name, p.max_connections)
            })
            .collect()
    };
    compare("proxy", &listeners(&old.proxies), &listeners(&new.proxies));
    changes
}
