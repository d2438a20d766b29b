//! IPsec ESP (RFC 4303) through the NAT: no ports, so an SA is told apart
//! by its Security Parameter Index, which each receiver picks. Outbound,
//! (inside address, peer, SPI) names an SA; inbound, (external address,
//! peer, SPI). natd learns both (`nat::esp` in natd: the inbound SPI shows
//! only in the peer's first packet); the ESP programs translate the
//! addresses of the SAs it installed.

/// Bytes of ESP header a packet must carry to be translated: the SPI and
/// the sequence number (RFC 4303 §2).
pub const ESP_HEADER_LEN: usize = 8;

/// Offset of the SPI in the ESP header.
pub const SPI_AT: usize = 0;

/// Capacity of `ESP_OUT` and of `ESP_IN`: SAs at once through the gateway.
/// A live SA is never evicted to make room (plain hash maps).
pub const MAX_ESP_SAS: u32 = 1 << 14;

/// Key of `ESP_OUT` and `ESP_IN`. Outbound: the inside host's address, the
/// peer's, the SPI of the SA the host sends on. Inbound: the external
/// address, the peer's, the SPI of the SA the peer sends on.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EspKey {
    /// The inside address (outbound) or the external address (inbound),
    /// network byte order.
    pub local_be: u32,
    /// The peer's address, network byte order.
    pub peer_be: u32,
    /// The SPI as it sits in the packet, network byte order.
    pub spi_be: u32,
}
const _: () = assert!(core::mem::size_of::<EspKey>() == 12);

/// Value of `ESP_OUT` and `ESP_IN`: the address the packet's local side is
/// rewritten to (the external address outbound, the inside one inbound),
/// and the `LIVENESS` slot the SA pair stamps both ways.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EspTarget {
    /// Network byte order.
    pub addr_be: u32,
    /// Index into `LIVENESS`, from natd's session slots.
    pub session: u32,
}
const _: () = assert!(core::mem::size_of::<EspTarget>() == 8);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), Copy, no padding (sizes asserted above), every bit
    // pattern valid.
    unsafe impl aya::Pod for super::EspKey {}
    unsafe impl aya::Pod for super::EspTarget {}
}
