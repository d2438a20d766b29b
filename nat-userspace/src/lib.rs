//! natd: the control plane of the XDP NAT gateway.
//!
//! - `config`: the settings (schema, loading and validation, the machine);
//! - `datapath`: the loaded programs and typed access to their maps;
//! - `nat`: the daemon and its jobs (ports, sessions, first packets,
//!   fragments, quotas, logs, views);
//! - `packet`: the one user-side reader and writer of IPv4 packets;
//! - `proxy`: name-based proxies on a shared public port (TLS SNI, HTTP
//!   Host, QUIC);
//! - `control`: how the client commands reach a serving natd;
//! - `metrics`: Prometheus metrics, served off the packet loop;
//! - `forwarding`: the sysctls natd turns on and puts back;
//! - `handover`: what a natd stopping with the datapath serving leaves the next;
//! - `interfaces`: the served interfaces watched through netlink;
//! - `logging`: natd's log lines;
//! - `cli` and `serve`: the command line, and `natd run`.

pub mod cli;
pub mod config;
pub mod control;
pub mod datapath;
pub mod forwarding;
pub mod handover;
pub mod interfaces;
pub mod logging;
pub mod metrics;
pub mod nat;
pub mod packet;
pub mod proxy;
pub mod serve;

/// The compiled XDP programs (nat-ebpf), embedded at build time.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/nat"));

/// Measurement-only programs (the XDP_DROP floor, the load generator, the
/// sink), for the tests and benchmarks only.
#[cfg(feature = "testing")]
pub static BENCH_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench"));
