//! Name-based routing on one shared public port (issue 13, TLS): natd's own
//! listener on the external address reads the TLS ClientHello, picks the
//! server of the name it asks for, and relays the connection there without
//! terminating TLS.
//!
//! - `tls`, `names`, `proxy_protocol`: pure parsers and encoders (no I/O):
//!   the incremental ClientHello reader, name normalisation and the name
//!   table, PROXY protocol v1/v2 headers;
//! - `route`: a proxy's names, server sets and the pick among servers up;
//! - `relay`: one client connection, from its first byte to its close;
//! - `http`: `kind = "http"`: hyper serves the client, each request is
//!   routed by its Host;
//! - `quic`, `quic_router`: `quic = true`: the Initial reader (a pure
//!   parser), and the UDP socket that routes a connection by its SNI and
//!   hands it to the datapath as a forwarded flow;
//! - `service`: one proxy at work: its settings and routes, counters,
//!   health checks, and what `natd proxies` shows;
//! - `proxies`: the set natd serves: sockets, runtime, accept loops, a
//!   reload's additions and removals.
//!
//! The XDP program passes packets for the external address's ports that
//! are neither NAT ports nor forwarded to the kernel (`nat_ebpf::nat::wan`,
//! `untranslated::wan`), so a plain socket receives them; `natd check`
//! keeps proxy ports out of the NAT ranges and the forwards.

mod http;
pub mod names;
pub mod proxy_protocol;
pub mod quic;
mod quic_router;
mod relay;
mod route;
mod proxies;
mod service;
mod splice;
pub mod tls;

#[cfg(test)]
mod test_support;

pub use proxies::Proxies;
pub use route::{Refusal, Routes};
pub use service::{ProxyServerView, ProxyView, QuicView, RouteView};
