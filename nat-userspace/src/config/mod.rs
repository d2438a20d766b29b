//! natd's settings, in three stages, all before anything is attached:
//! - `schema`: what the settings are, with their defaults;
//! - `load`: reading a TOML file and flags over it, every value validated
//!   (syntax, types, ranges) and every error reported at once;
//! - `machine`: the values against this machine (interfaces exist, the WAN
//!   has an address, the NAT port range leaves the gateway's own ephemeral
//!   ports and listening services alone, forwards claim free ports and
//!   name inside servers), and what the programs are told;
//! - `reload`: what a reload may change while natd runs.

pub mod load;
pub mod machine;
pub mod reload;
pub mod schema;

pub use load::{ConfigError, ConfigErrors, Overrides, parse_forward_ports, parse_payload, parse_port_range, parse_prefix, parse_server};
pub use machine::{Environment, first_ipv4, ifindex, interface_addresses, is_nic};
pub use schema::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_FALL, DEFAULT_HELLO_TIMEOUT, DEFAULT_MAX_CONNECTIONS, DEFAULT_PROXY_IDLE_TIMEOUT, DEFAULT_HEALTH_INTERVAL, DEFAULT_HEALTH_PATH, DEFAULT_HEALTH_TIMEOUT, DEFAULT_LOG_LEVEL, DEFAULT_PORT_HOLD, DEFAULT_PORT_RANGE,
    DEFAULT_PORTS_PER_HOST, DEFAULT_RISE, DEFAULT_WEIGHT, Filtering, FilteringMode, Forward, HealthCheck, HealthKind, KEYS, LOG_LEVELS, MAX_FORWARD_RANGE,
    InterfaceLoss, MAX_WEIGHT, MappingLogTarget, PartialChecksums, Proxy, ProxyKind, ProxyProtocolVersion, ProxyRoute, SctpState, Server, ServerProtocol, Settings, Timeouts, XdpModeSetting,
    sctp_state,
};

#[cfg(test)]
mod tests;
