//! natd's settings, in three stages, all before anything is attached:
//! - `schema`: what the settings are, with their defaults;
//! - `load`: reading a TOML file and flags over it, every value validated
//!   (syntax, types, ranges) and every error reported at once;
//! - `machine`: the values against this machine (interfaces exist, the WAN
//!   has an address, the NAT port range leaves the gateway's own ephemeral
//!   ports and listening services alone), and what the programs are told.

pub mod load;
pub mod machine;
pub mod schema;

pub use load::{ConfigError, ConfigErrors, Overrides, parse_port_range, parse_prefix};
pub use machine::{Environment, first_ipv4, ifindex, interface_addresses};
pub use schema::{
    DEFAULT_LOG_LEVEL, DEFAULT_PORT_HOLD, DEFAULT_PORT_RANGE, DEFAULT_PORTS_PER_HOST, Filtering, FilteringMode, KEYS, LOG_LEVELS, Settings, Timeouts,
    XdpModeSetting,
};

#[cfg(test)]
mod tests;
