//! natd: the control plane of the XDP NAT gateway.

pub mod allocator;
pub mod config;
pub mod control;
pub mod daemon;
pub mod datapath;
pub mod forwarding;
pub mod frag;
pub mod handoff;
pub mod quota;

/// The compiled XDP programs (nat-ebpf), embedded at build time.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/nat"));

/// Measurement-only programs (the XDP_DROP floor), embedded for the benchmarks.
pub static BENCH_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench"));
