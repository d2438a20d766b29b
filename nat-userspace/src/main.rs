//! natd: loads the XDP programs on the LAN and WAN interfaces, allocates
//! external ports when the fast path misses, and ages mappings out.

use std::{net::Ipv4Addr, process::Command, time::Duration};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::programs::XdpMode;
use clap::{Parser, Subcommand, ValueEnum};
use nat_common::GatewayConfig;
use nat_userspace::{
    daemon::{Daemon, Timeouts},
    datapath::{Datapath, Side},
};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};

#[derive(Parser)]
#[command(name = "natd", about = "XDP NAT gateway daemon")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Attach to the LAN and WAN interfaces and serve until SIGINT/SIGTERM.
    Run(RunArgs),
}

#[derive(Parser)]
struct RunArgs {
    /// The inside interface.
    #[arg(long)]
    lan: String,
    /// The outside interface.
    #[arg(long)]
    wan: String,
    /// Public address to translate to (default: the WAN interface's first IPv4 address).
    #[arg(long)]
    external_ip: Option<Ipv4Addr>,
    /// External ports to allocate, LO-HI. The default stays below Linux's
    /// ephemeral range (32768-60999), so the gateway's own connections keep theirs.
    #[arg(long, default_value = "20000-32767", value_parser = parse_port_range)]
    port_range: (u16, u16),
    /// XDP attach mode: native (driver) or generic (skb, slower, any driver).
    #[arg(long, value_enum, default_value_t = Mode::Native)]
    xdp_mode: Mode,
}

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    Native,
    Generic,
}

fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let (lo, hi) = s.split_once('-').ok_or_else(|| format!("--port-range {s:?}: expected LO-HI, e.g. 20000-32767"))?;
    let lo: u16 = lo.trim().parse().map_err(|_| format!("--port-range: {lo:?} is not a port (1-65535)"))?;
    let hi: u16 = hi.trim().parse().map_err(|_| format!("--port-range: {hi:?} is not a port (1-65535)"))?;
    if lo == 0 || lo > hi {
        return Err(format!("--port-range {s}: need 1 <= LO <= HI"));
    }
    Ok((lo, hi))
}

fn ifindex(name: &str, role: &str) -> Result<u32> {
    let c = std::ffi::CString::new(name).map_err(|_| anyhow!("--{role}: bad interface name {name:?}"))?;
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => bail!("--{role} {name}: no such interface in this network namespace (see `ip link`)"),
        i => Ok(i),
    }
}

/// The first IPv4 address of an interface.
fn primary_ipv4(ifname: &str) -> Result<Ipv4Addr> {
    let out = Command::new("ip").args(["-4", "-o", "addr", "show", "dev", ifname]).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| {
            anyhow!("--wan {ifname} has no IPv4 address: add one (ip addr add ADDR/LEN dev {ifname}) or pass --external-ip")
        })
}

/// XDP redirects and `bpf_fib_lookup` need IPv4 forwarding on both interfaces.
fn enable_forwarding(ifname: &str) -> Result<()> {
    let path = format!("/proc/sys/net/ipv4/conf/{ifname}/forwarding");
    std::fs::write(&path, "1").with_context(|| format!("enabling IPv4 forwarding ({path})"))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Run(args) => run(args).await,
    }
}

async fn run(args: RunArgs) -> Result<()> {
    // Everything is validated before anything is attached.
    let lan = ifindex(&args.lan, "lan")?;
    let wan = ifindex(&args.wan, "wan")?;
    if lan == wan {
        bail!("--lan and --wan are the same interface ({})", args.lan);
    }
    let external = match args.external_ip {
        Some(ip) => ip,
        None => primary_ipv4(&args.wan)?,
    };
    let (port_min, port_max) = args.port_range;

    enable_forwarding(&args.lan)?;
    enable_forwarding(&args.wan)?;
    let mut datapath = Datapath::load()?;
    datapath.set_config(GatewayConfig::new(external, wan, port_min, port_max))?;
    datapath.add_tx_port(lan)?;
    datapath.add_tx_port(wan)?;
    let mode = attach(&mut datapath, lan, wan, args.xdp_mode)?;
    eprintln!(
        "natd: serving: lan {} wan {} external {external} ports {port_min}-{port_max} mode {mode}",
        args.lan, args.wan
    );

    // SAFETY: the ring owns its fd for as long as the AsyncFd holds the ring.
    let ring = unsafe { AsyncFd::register(datapath.take_miss_ring()?) }
        .map_err(|e| anyhow!("registering the miss ring with the event loop: {e}"))?;
    let mut daemon = Daemon::new(datapath, external, port_min, port_max, Timeouts::default())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut aging = tokio::time::interval(Duration::from_secs(1));
    let mut ring = ring;
    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                while let Some(item) = guard.get_inner_mut().next() {
                    let event = unsafe { std::ptr::read_unaligned(item.as_ptr() as *const nat_common::MissEvent) };
                    drop(item);
                    if let Err(e) = daemon.handle(&event) {
                        eprintln!("natd: {e:#}");
                    }
                }
                guard.clear_ready();
            }
            _ = aging.tick() => daemon.age()?,
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    eprintln!("natd: stopping; detaching from {} and {}", args.lan, args.wan);
    Ok(())
}

/// Native first; generic only when asked, or (with a warning) when the driver
/// has no native XDP.
fn attach(dp: &mut Datapath, lan: u32, wan: u32, mode: Mode) -> Result<&'static str> {
    // Both or neither: a LAN program left attached after the WAN attach failed
    // would block the generic retry and outlive the error.
    let try_mode = |dp: &mut Datapath, m: XdpMode| -> Result<()> {
        let lan_link = dp.attach(Side::Lan, lan, m)?;
        if let Err(e) = dp.attach(Side::Wan, wan, m) {
            dp.detach(Side::Lan, lan_link)?;
            return Err(e);
        }
        Ok(())
    };
    match mode {
        Mode::Generic => try_mode(dp, XdpMode::Skb).map(|()| "generic"),
        Mode::Native => match try_mode(dp, XdpMode::Driver) {
            Ok(()) => Ok("native"),
            Err(e) => {
                eprintln!("natd: WARNING: native XDP failed ({e:#}); falling back to generic mode, which is much slower");
                try_mode(dp, XdpMode::Skb).map(|()| "generic")
            }
        },
    }
}
