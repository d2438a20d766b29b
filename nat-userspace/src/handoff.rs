//! The user side of the miss hand-off: what the daemon does with a frame the
//! datapath put in the `MISSES` ring instead of forwarding it.
//!
//! - `NEW_FLOW`: once the daemon has inserted the mapping, `reinject` runs the
//!   LAN program on the frame again with BPF_PROG_TEST_RUN in live-frames mode,
//!   as if it had just arrived on its interface. This time it hits, and the
//!   program's own XDP_REDIRECT really transmits it: the first packet of a flow
//!   is delivered, translated by the same code as every other packet.
//! - `NO_NEIGHBOUR`: the frame is already translated. `KernelSender` sends its
//!   IPv4 packet through a raw socket; the kernel queues it on the neighbour
//!   entry, resolves the next hop with ARP, and transmits it. Later packets of
//!   the flow then find the neighbour and stay in XDP.

use std::{
    mem,
    net::Ipv4Addr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use aya::programs::{TestRun as _, TestRunAttrs, TestRunOptions};
use nat_common::MissEvent;

use crate::datapath::{Datapath, Side};

/// `struct xdp_md` as BPF_PROG_TEST_RUN takes it: the data span and the
/// interface the program believes the frame arrived on.
#[repr(C)]
#[derive(Default, Clone, Copy)]
pub struct XdpMd {
    pub data: u32,
    pub data_end: u32,
    pub data_meta: u32,
    pub ingress_ifindex: u32,
    pub rx_queue_index: u32,
    pub egress_ifindex: u32,
}

impl XdpMd {
    pub fn for_frame(frame: &[u8], ingress_ifindex: u32) -> Self {
        Self { data_end: frame.len() as u32, ingress_ifindex, ..Self::default() }
    }

    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: repr(C), six u32, no padding.
        unsafe { std::slice::from_raw_parts(self as *const Self as *const u8, mem::size_of::<Self>()) }
    }
}

/// Runs the LAN program on a missed frame again, for real (live frames): the
/// program's verdict takes effect, so a redirect transmits the frame.
pub fn reinject(datapath: &Datapath, event: &MissEvent) -> Result<()> {
    let frame = event.frame();
    let md = XdpMd::for_frame(frame, event.ingress_ifindex);
    datapath
        .program(Side::Lan)?
        .test_run(TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(md.as_bytes()),
            repeat: 1,
            attrs: TestRunAttrs::new().xdp_live_frames(1),
            ..TestRunOptions::new()
        })
        .with_context(|| format!("re-injecting a {}-byte frame on ifindex {}", frame.len(), event.ingress_ifindex))?;
    Ok(())
}

/// A raw IPv4 socket for sending translated packets through the kernel stack.
pub struct KernelSender {
    socket: OwnedFd,
}

impl KernelSender {
    pub fn new() -> Result<Self> {
        // IPPROTO_RAW implies IP_HDRINCL: the packet goes out with its own header.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::IPPROTO_RAW) };
        if fd < 0 {
            bail!("opening a raw IPv4 socket (needs CAP_NET_RAW): {}", std::io::Error::last_os_error());
        }
        Ok(Self { socket: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    /// Sends the IPv4 packet inside a `NO_NEIGHBOUR` event's frame.
    pub fn send(&self, event: &MissEvent) -> Result<()> {
        let frame = event.frame();
        let ip = frame
            .get(event.l3_offset as usize..)
            .filter(|ip| ip.len() >= 20)
            .ok_or_else(|| anyhow!("event frame too short for an IPv4 header"))?;
        let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
        ensure!(total >= 20 && total <= ip.len(), "event IPv4 total length {total} does not fit the frame");
        let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(dst.octets()) },
            sin_zero: [0; 8],
        };
        let sent = unsafe {
            libc::sendto(
                self.socket.as_raw_fd(),
                ip.as_ptr().cast(),
                total,
                0,
                (&addr as *const libc::sockaddr_in).cast(),
                mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            bail!("sending a translated packet to {dst} through the kernel: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }
}
