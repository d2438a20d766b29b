//! How natd runs: what it was started with and what it found on the
//! machine, shared read-only by the daemon's jobs.

use std::{net::Ipv4Addr, path::PathBuf, time::Instant};

use crate::config::{Environment, Overrides, Settings};

/// How natd runs: what it was started with and what it found.
pub struct Run {
    pub settings: Settings,
    pub env: Environment,
    /// "native" or "generic": how the programs were attached.
    pub xdp_mode: &'static str,
    /// The gateway's address on the LAN: the source of its ICMP messages to
    /// inside hosts. `None`: the LAN interface has no IPv4 address, no
    /// messages are sent.
    pub lan_ip: Option<Ipv4Addr>,
    pub started: Instant,
    /// The config file and flags natd was started with: what a reload
    /// reads again.
    pub config_file: Option<PathBuf>,
    pub overrides: Overrides,
}
