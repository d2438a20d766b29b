//! Inbound: public ports forwarded to inside servers, one server or several
//! load balanced (`nat_common::forward` explains the design). `lb` keeps the
//! forwarded flows and picks backends; `forward` carries the packets: from
//! the WAN to a backend, a backend's replies back out, and hairpins from
//! the LAN to a forwarded port.

pub mod forward;
pub mod lb;
