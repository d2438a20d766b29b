//! Types of the measurement-only programs (the load generator and the sink),
//! shared with the benchmark binaries. Not used by the gateway itself.

/// Length of the header the generator writes: Ethernet, IPv4 (no options), UDP.
pub const GEN_HEADER_LEN: usize = 14 + 20 + 8;

/// What the generator writes into every frame.
///
/// Live-frames test runs recycle pages without rewriting them, so the program
/// writes the whole header on every run; only the UDP source port varies,
/// `sport_base + (counter & flows_mask)`, which is how the flows differ.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct GenConfig {
    /// Ethernet + IPv4 + UDP header, IPv4 checksum valid, UDP checksum 0 (none).
    pub header: [u8; GEN_HEADER_LEN],
    pub _pad: [u8; 6],
    /// Number of flows minus one; the number of flows is a power of two.
    pub flows_mask: u32,
    /// First UDP source port, host byte order.
    pub sport_base: u16,
    pub _pad2: u16,
}
const _: () = assert!(core::mem::size_of::<GenConfig>() == 56);

/// Names in the bench object.
pub mod names {
    pub const GEN_CONFIG: &str = "GEN_CONFIG";
    pub const GEN_COUNTER: &str = "GEN_COUNTER";
    pub const SINK_COUNTER: &str = "SINK_COUNTER";
    pub const REDIRECT_PORT: &str = "REDIRECT_PORT";
    pub const GENERATE: &str = "generate";
    pub const SINK: &str = "sink";
    pub const REDIRECT_ONLY: &str = "redirect_only";
    pub const PASS: &str = "pass";
    pub const DROP_FLOOR: &str = "drop_floor";
}

#[cfg(feature = "user")]
// SAFETY: repr(C), Copy, explicit padding, size asserted, any bit pattern valid.
unsafe impl aya::Pod for GenConfig {}
