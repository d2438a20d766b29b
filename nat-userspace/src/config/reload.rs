//! What a reload may change while natd runs: the forwards, the log level
//! and the WAN drop list. Every other setting shapes what is loaded and
//! attached (interfaces, the port space, the address pool, timers the
//! datapath was told), and changing it means a restart. Proxies change
//! live whole: added, removed, or changed in place (`proxy::Proxies`).

use std::fmt::Debug;

use crate::config::{Environment, Settings};

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
    changes
}
