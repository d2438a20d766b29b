//! natd's runtime: the daemon that owns the port space and every decision
//! that is not per packet, one job per module.

pub mod alloc;
pub mod counters;
pub mod daemon;
pub mod esp;
pub mod events;
pub mod first_packet;
pub mod forwards;
pub mod frag;
pub mod health;
pub mod maglev;
pub mod maplog;
pub mod no_server;
pub mod ports;
pub mod probe;
pub mod quota;
pub mod run;
pub mod sessions;
pub mod views;
