//! What a reload may change while natd runs: the forwards and proxies
//! (added, removed, or changed in place), the log level, the WAN drop list,
//! the timeouts (existing sessions age by the new ones from the next scan),
//! filtering, `ports_per_host`, `log_mappings`, `partial_checksums`, and port parity and class
//! (for new mappings: the allocator's policy and the datapath's settings;
//! the free queues are per parity whatever the setting). The rest shapes
//! what is loaded and attached, and changing it means a restart: the
//! interfaces, the address pool, the port ranges and the hold, the session
//! tables' size (and that only once the pinned ones are gone), the XDP mode,
//! the inside prefixes, the metrics listener. Filtering by remote needs
//! the PERMITS table, which natd makes at start only if some protocol
//! filters by remote then (`Datapath::can_filter_by_remote`).

use std::fmt::Debug;

use crate::config::{Environment, Settings};

/// Adds "NAME: OLD -> NEW" to `changes` when the two differ (as written
/// by `Debug`).
fn changed(changes: &mut Vec<String>, name: &str, old: &dyn Debug, new: &dyn Debug) {
    let (old, new) = (format!("{old:?}"), format!("{new:?}"));
    if old != new {
        changes.push(format!("{name}: {old} -> {new}"));
    }
}

/// The settings a reload changes live that differ, each as "NAME: OLD ->
/// NEW" (the forwards, proxies and log level say their own).
pub fn live_changes(old: &Settings, new: &Settings) -> Vec<String> {
    let mut changes = Vec::new();
    let mut compare = |name: &str, a: &dyn Debug, b: &dyn Debug| changed(&mut changes, name, a, b);
    compare("timeouts", &old.timeouts, &new.timeouts);
    compare("filtering", &old.filtering, &new.filtering);
    compare("ports_per_host", &old.ports_per_host, &new.ports_per_host);
    compare("log_mappings", &old.log_mappings, &new.log_mappings);
    compare("port_parity", &old.port_parity, &new.port_parity);
    compare("port_class", &old.port_class, &new.port_class);
    compare("mapping_log", &old.mapping_log, &new.mapping_log);
    compare("on_interface_loss", &old.on_interface_loss, &new.on_interface_loss);
    compare("partial_checksums", &old.partial_checksums, &new.partial_checksums);
    changes
}

/// The settings that differ between the running configuration and a new
/// one and cannot change live, each as "NAME: OLD -> NEW". Empty: the new
/// configuration may be applied.
pub fn fixed_changes(old: &Settings, old_env: &Environment, new: &Settings, new_env: &Environment) -> Vec<String> {
    let mut changes = Vec::new();
    let mut compare = |name: &str, a: &dyn Debug, b: &dyn Debug| changed(&mut changes, name, a, b);
    compare("lan", &old.lan, &new.lan);
    compare("wan", &old.wan, &new.wan);
    compare("external_ip", &old_env.external_ips, &new_env.external_ips);
    compare("port_range", &(old.port_min, old.port_max), &(new.port_min, new.port_max));
    compare("low_port_range", &old.low_port_range, &new.low_port_range);
    compare("xdp_mode", &old.xdp_mode, &new.xdp_mode);
    compare("port_hold", &old.port_hold, &new.port_hold);
    compare("max_sessions", &old.max_sessions, &new.max_sessions);
    compare("metrics", &old.metrics, &new.metrics);
    compare("pin_root", &old.pin_root, &new.pin_root);
    compare("inside_prefixes", &old_env.inside_description(), &new_env.inside_description());
    changes
}
