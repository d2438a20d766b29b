//! Name-based routing on one shared public port (issue 13, TLS).
//!
//! - `tls`, `names`, `proxy_protocol`: pure parsers and encoders (no I/O):
//!   the incremental ClientHello reader, name normalisation and the name
//!   table, PROXY protocol v1/v2 headers.

pub mod names;
pub mod proxy_protocol;
pub mod tls;

#[cfg(test)]
mod test_support;
