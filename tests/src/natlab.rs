//! The whole product under test: LAN hosts on a bridge, a gateway running the
//! real `natd` binary, and a WAN server, each in its own namespace.
//!
//! ```text
//! h0 (10.77.1.10) --+
//! h1 (10.77.1.11) --+-- sw (bridge) -- lan0 [gw: natd] wan0 -- srv (203.0.113.2)
//! h2 (10.77.1.12) --+                    10.77.1.1   203.0.113.1
//! ```
//!
//! `NatLab::with_router` puts a router namespace between the gateway and the
//! server instead, for paths longer than one hop:
//!
//! ```text
//! ... lan0 [gw: natd] wan0 -- eth0 [rt] eth1 -- srv (198.51.100.10)
//!                203.0.113.1   203.0.113.2  198.51.100.1
//! ```
//!
//! Everything is removed on drop, natd first (SIGINT, so it detaches), also
//! when the test fails.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, UdpSocket},
    path::PathBuf,
    process::{Child, Output, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use nat_userspace::control::{Session, Stats, Status};

use crate::netns::Netns;

pub const GW_LAN: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 1);
pub const EXTERNAL: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
pub const SERVER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
/// With a router: the router's WAN-side address is `SERVER`'s, the server
/// sits behind it.
pub const ROUTER: Ipv4Addr = SERVER;
pub const ROUTER_SERVER_SIDE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
pub const ROUTED_SERVER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);

/// The address of LAN host `i`.
pub const fn host_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 1, 10 + i as u8)
}

/// The natd binary of this build profile: next to this executable (a bench
/// binary in target/<profile>) or one level up (a test in target/<profile>/deps).
/// `cargo xtask test` and `cargo xtask bench` build it first; `NATD` overrides.
pub fn natd_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("NATD") {
        return Ok(path.into());
    }
    let exe = std::env::current_exe()?;
    let candidates: Vec<PathBuf> = exe.ancestors().skip(1).take(2).map(|dir| dir.join("natd")).collect();
    candidates.iter().find(|p| p.exists()).cloned().with_context(|| {
        format!(
            "natd not found at {}: run `cargo xtask test` (it builds natd first) or `cargo build -p nat-userspace`",
            candidates[0].display()
        )
    })
}

pub struct NatLab {
    pub hosts: Vec<Netns>,
    pub gw: Netns,
    pub server: Netns,
    /// The router between the gateway and the server (`with_router`).
    pub router: Option<Netns>,
    /// The server's address: `SERVER`, or `ROUTED_SERVER` behind a router.
    pub server_addr: Ipv4Addr,
    /// The LAN's bridge.
    pub switch: Netns,
    natd: Option<Child>,
    natd_log: PathBuf,
    natd_path: PathBuf,
    /// Skip `natd down` on drop (`leave_pins`).
    leave_pins: bool,
    /// Environment the next natd starts with (`set_natd_env`).
    natd_env: Vec<(String, String)>,
}

impl NatLab {
    /// Builds the topology. `tx_offload` is the TX checksum offload setting of
    /// every sender (LAN hosts and server).
    pub fn new(hosts: usize, tx_offload: bool) -> Result<Self> {
        Self::build(hosts, tx_offload, None)
    }

    /// The topology with a router namespace between the gateway and the
    /// server (see the module doc), forwarding with its kernel. The router's
    /// side of the router-server link has MTU `link_mtu`; the server's side
    /// keeps 1500, as a host behind a narrower tunnel would, so the TCP
    /// handshake's MSS does not reveal the narrow link: only path-MTU
    /// discovery can (the router answers Fragmentation Needed).
    pub fn with_router(hosts: usize, tx_offload: bool, link_mtu: u32) -> Result<Self> {
        Self::build(hosts, tx_offload, Some(link_mtu))
    }

    fn build(hosts: usize, tx_offload: bool, router_link_mtu: Option<u32>) -> Result<Self> {
        let sw = Netns::new("sw")?;
        let gw = Netns::new("gw")?;
        let server = Netns::new("srv")?;
        let router = match router_link_mtu {
            Some(_) => Some(Netns::new("rt")?),
            None => None,
        };
        let mut lab_hosts = Vec::new();
        sw.ip(&["link", "add", "br0", "type", "bridge"])?;
        for i in 0..hosts {
            let host = Netns::new(&format!("h{i}"))?;
            let port = format!("p{i}");
            sw.ip(&["link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &host.name])?;
            sw.ip(&["link", "set", &port, "master", "br0", "up"])?;
            host.ip(&["addr", "add", &format!("{}/24", host_addr(i)), "dev", "eth0"])?;
            host.ip(&["link", "set", "eth0", "up"])?;
            host.ip(&["route", "add", "default", "via", &GW_LAN.to_string()])?;
            lab_hosts.push(host);
        }
        sw.ip(&["link", "add", "up0", "type", "veth", "peer", "name", "lan0", "netns", &gw.name])?;
        sw.ip(&["link", "set", "up0", "master", "br0", "up"])?;
        sw.ip(&["link", "set", "br0", "up"])?;
        let wan_peer = router.as_ref().unwrap_or(&server);
        gw.ip(&["link", "add", "wan0", "type", "veth", "peer", "name", "eth0", "netns", &wan_peer.name])?;
        gw.ip(&["addr", "add", &format!("{GW_LAN}/24"), "dev", "lan0"])?;
        gw.ip(&["addr", "add", &format!("{EXTERNAL}/24"), "dev", "wan0"])?;
        for (ns, ifname) in [(&gw, "lan0"), (&gw, "wan0")] {
            ns.ip(&["link", "set", ifname, "up"])?;
        }
        let server_addr = match (&router, router_link_mtu) {
            (Some(rt), Some(mtu)) => {
                rt.ip(&["link", "add", "eth1", "mtu", &mtu.to_string(), "type", "veth", "peer", "name", "eth0", "netns", &server.name])?;
                rt.ip(&["addr", "add", &format!("{ROUTER}/24"), "dev", "eth0"])?;
                rt.ip(&["addr", "add", &format!("{ROUTER_SERVER_SIDE}/24"), "dev", "eth1"])?;
                for ifname in ["eth0", "eth1"] {
                    rt.ip(&["link", "set", ifname, "up"])?;
                }
                rt.sysctl("net.ipv4.conf.all.forwarding=1")?;
                // The gateway's redirects into the router's veth arrive only with NAPI.
                rt.exec(&["ethtool", "-K", "eth0", "gro", "on"])?;
                gw.ip(&["route", "add", "198.51.100.0/24", "via", &ROUTER.to_string()])?;
                server.ip(&["addr", "add", &format!("{ROUTED_SERVER}/24"), "dev", "eth0"])?;
                server.ip(&["link", "set", "eth0", "up"])?;
                server.ip(&["route", "add", "default", "via", &ROUTER_SERVER_SIDE.to_string()])?;
                ROUTED_SERVER
            }
            _ => {
                server.ip(&["addr", "add", &format!("{SERVER}/24"), "dev", "eth0"])?;
                server.ip(&["link", "set", "eth0", "up"])?;
                SERVER
            }
        };
        // XDP redirects into a veth arrive only where the receiving end runs
        // NAPI: GRO on the bridge port and the server.
        sw.exec(&["ethtool", "-K", "up0", "gro", "on"])?;
        server.exec(&["ethtool", "-K", "eth0", "gro", "on"])?;
        let tx = if tx_offload { "on" } else { "off" };
        for ns in lab_hosts.iter().chain([&server]) {
            ns.exec(&["ethtool", "-K", "eth0", "tx", tx])?;
        }
        let natd_log = std::env::temp_dir().join(format!("{}-natd.log", gw.name));
        Ok(Self {
            hosts: lab_hosts,
            gw,
            server,
            router,
            server_addr,
            switch: sw,
            natd: None,
            natd_log,
            natd_path: natd_binary()?,
            leave_pins: false,
            natd_env: Vec::new(),
        })
    }

    /// Writes a config file for natd and returns its path (removed with the lab's
    /// temp files by the OS; named after the gateway namespace, so unique).
    pub fn config_file(&self, text: &str) -> Result<PathBuf> {
        let path = std::env::temp_dir().join(format!("{}-natd.toml", self.gw.name));
        std::fs::write(&path, text)?;
        Ok(path)
    }

    /// Runs `natd ARGS` to completion in the gateway namespace.
    pub fn natd_cli(&self, args: &[&str]) -> Result<Output> {
        let mut cmd = self.gw.command(&[self.natd_path.to_str().context("natd path")?]);
        Ok(cmd.args(args).output()?)
    }

    /// Starts `natd run --lan lan0 --wan wan0 EXTRA...` and waits until it
    /// answers `natd status` (bounded).
    pub fn start_natd(&mut self, extra: &[&str]) -> Result<()> {
        let args: Vec<&str> = ["--lan", "lan0", "--wan", "wan0"].into_iter().chain(extra.iter().copied()).collect();
        self.run_natd(&args)
    }

    /// Starts `natd run ARGS` (nothing added: the config file names the
    /// interfaces) and waits until it answers.
    pub fn run_natd(&mut self, args: &[&str]) -> Result<()> {
        let log = std::fs::File::create(&self.natd_log)?;
        let mut cmd = self.gw.command(&[self.natd_path.to_str().context("natd path")?]);
        cmd.arg("run").args(args).stdout(Stdio::null()).stderr(log);
        cmd.envs(self.natd_env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        self.natd = Some(cmd.spawn().context("starting natd")?);
        // natd answers once the verifier has walked its programs (about a
        // million instructions): seconds of CPU, more when parallel tests
        // and builds share the machine's two cores.
        let deadline = Instant::now() + NATD_START_LIMIT;
        while Instant::now() < deadline {
            if let Some(status) = self.natd.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.natd = None;
                bail!("natd exited during start-up ({status}):\n{}", self.natd_log());
            }
            if self.natd_cli(&["status"])?.status.success() {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(50));
        }
        bail!("natd did not answer `natd status` within {} s:\n{}", NATD_START_LIMIT.as_secs(), self.natd_log())
    }

    /// Writes `config` (TOML) to the lab's config file and starts natd with it.
    pub fn start_natd_with_config(&mut self, config: &str) -> Result<()> {
        let path = self.config_file(config)?;
        self.start_natd(&["--config", path.to_str().context("config path")?])
    }

    /// Stops natd with SIGINT (the datapath goes with it) and returns its
    /// exit status.
    pub fn stop_natd(&mut self) -> Result<std::process::ExitStatus> {
        self.signal_and_wait(libc::SIGINT, "SIGINT")
    }

    /// Stops natd with SIGTERM, which leaves the datapath serving (pinned),
    /// and returns its exit status.
    pub fn terminate_natd(&mut self) -> Result<std::process::ExitStatus> {
        self.signal_and_wait(libc::SIGTERM, "SIGTERM")
    }

    fn signal_and_wait(&mut self, signal: i32, name: &str) -> Result<std::process::ExitStatus> {
        let mut child = self.natd.take().context("natd is not running")?;
        // `ip netns exec` execs natd, so the child's pid is natd's.
        unsafe { libc::kill(child.id() as i32, signal) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("natd did not stop within 10 s of {name}");
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// natd's exit status if it exits on its own within `within` (None: it
    /// still runs).
    pub fn wait_natd_exit(&mut self, within: Duration) -> Result<Option<std::process::ExitStatus>> {
        let child = self.natd.as_mut().context("natd is not running")?;
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait()? {
                self.natd = None;
                return Ok(Some(status));
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(None)
    }

    /// Variables the natds started from now on get in their environment
    /// (this process's own would reach every parallel test's natd).
    pub fn set_natd_env(&mut self, vars: &[(&str, &str)]) {
        self.natd_env = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    }

    /// The lab goes without `natd down`, as after a crashed test: its pins
    /// stay behind its deleted namespaces, for the next natd to find.
    pub fn leave_pins(&mut self) {
        self.leave_pins = true;
    }

    /// Kills natd with SIGKILL, as a crash or the OOM killer would: it
    /// cleans nothing up. Returns once it is gone.
    pub fn kill_natd(&mut self) -> Result<()> {
        let mut child = self.natd.take().context("natd is not running")?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// Sends natd a signal (SIGHUP: reload).
    pub fn signal_natd(&self, signal: i32) -> Result<()> {
        let child = self.natd.as_ref().context("natd is not running")?;
        // `ip netns exec` execs natd, so the child's pid is natd's.
        if unsafe { libc::kill(child.id() as i32, signal) } != 0 {
            bail!("signalling natd: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// `natd forwards --json`.
    pub fn forwards(&self) -> Result<Vec<nat_userspace::nat::forwards::ForwardView>> {
        self.query("forwards")
    }

    /// `natd proxies --json`.
    pub fn proxies(&self) -> Result<Vec<nat_userspace::proxy::ProxyView>> {
        self.query("proxies")
    }

    pub fn natd_log(&self) -> String {
        std::fs::read_to_string(&self.natd_log).unwrap_or_default()
    }

    fn query<T: serde::de::DeserializeOwned>(&self, what: &str) -> Result<T> {
        let out = self.natd_cli(&[what, "--json"])?;
        if !out.status.success() {
            bail!("natd {what} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    pub fn sessions(&self) -> Result<Vec<Session>> {
        self.query("sessions")
    }

    /// The external endpoint natd gave the `proto` ("udp", "tcp", "icmp")
    /// session of `inside`, from `natd sessions`; an error naming the
    /// sessions there are when it has none.
    pub fn external_of(&self, proto: &str, inside: SocketAddrV4) -> Result<SocketAddrV4> {
        self.wait_external_of(proto, inside, Duration::ZERO)
    }

    /// `external_of`, asking again every 20 ms for up to `within` while natd
    /// has not made the session yet.
    pub fn wait_external_of(&self, proto: &str, inside: SocketAddrV4, within: Duration) -> Result<SocketAddrV4> {
        let inside_end = inside.to_string();
        let deadline = Instant::now() + within;
        loop {
            let sessions = self.sessions()?;
            if let Some(s) = sessions.iter().find(|s| s.proto == proto && s.inside == inside_end) {
                return s.external.parse().with_context(|| format!("the external endpoint of {s:?}"));
            }
            if Instant::now() >= deadline {
                bail!("no {proto} session for {inside_end} (waited {within:?}): {sessions:?}");
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn status(&self) -> Result<Status> {
        let mut all: Vec<Status> = self.query("status")?;
        all.pop().context("no natd in status")
    }

    pub fn stats(&self) -> Result<Stats> {
        let mut all: Vec<Stats> = self.query("stats")?;
        all.pop().context("no natd in stats")
    }

    /// True when an XDP program is attached to any interface of the gateway.
    pub fn xdp_attached(&self) -> Result<bool> {
        Ok(self.gw.ip(&["link", "show"])?.contains("xdp"))
    }
}

impl Drop for NatLab {
    fn drop(&mut self) {
        if self.natd.is_some() {
            let _ = self.stop_natd();
        }
        // What a SIGTERM or a kill left serving (pins), before the
        // namespaces go.
        if !self.leave_pins {
            let _ = self.natd_cli(&["down", "--lan", "lan0", "--wan", "wan0"]);
        }
        let _ = std::fs::remove_file(&self.natd_log);
        let _ = std::fs::remove_file(std::env::temp_dir().join(format!("{}-natd.toml", self.gw.name)));
    }
}

/// Runs `f` on a thread inside `ns` (sockets opened there belong to it).
pub fn in_ns<T: Send + 'static>(ns: &Netns, f: impl FnOnce() -> T + Send + 'static) -> thread::JoinHandle<T> {
    let name = ns.name.clone();
    thread::spawn(move || {
        let ns = Netns { name };
        let guard = ns.enter().expect("entering the namespace");
        let out = f();
        drop(guard);
        // The namespace belongs to the lab, not to this thread.
        std::mem::forget(ns);
        out
    })
}

/// Reads a counter of /proc/net/snmp in `ns` (e.g. ("Udp", "InCsumErrors")).
pub fn snmp_counter(ns: &Netns, group: &str, name: &str) -> Result<u64> {
    let text = ns.exec(&["cat", "/proc/net/snmp"])?;
    let mut lines = text.lines().filter(|l| l.starts_with(&format!("{group}:")));
    let (Some(header), Some(values)) = (lines.next(), lines.next()) else { bail!("no {group} in /proc/net/snmp") };
    let index = header.split_whitespace().position(|h| h == name).with_context(|| format!("no {group} {name}"))?;
    Ok(values.split_whitespace().nth(index).context("short snmp line")?.parse()?)
}

/// How long the lab's sockets wait for an answer.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// How long `NatLab::run_natd` waits for natd to answer.
pub const NATD_START_LIMIT: Duration = Duration::from_secs(30);

/// A UDP socket bound to `port` on every address of `ns`.
pub fn udp_socket_in(ns: &Netns, port: u16) -> UdpSocket {
    in_ns(ns, move || UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)).expect("binding a UDP socket"))
        .join()
        .unwrap()
}

/// A UDP and TCP echo service on the server that records who it saw.
pub struct EchoServer {
    stop: Arc<AtomicBool>,
    udp_peers: Arc<Mutex<Vec<SocketAddr>>>,
    tcp_peers: Arc<Mutex<Vec<SocketAddr>>>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl EchoServer {
    pub fn start(server: &Netns, port: u16) -> Self {
        let (udp, tcp) = in_ns(server, move || {
            let any = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port);
            (UdpSocket::bind(any).unwrap(), TcpListener::bind(any).unwrap())
        })
        .join()
        .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let udp_peers = Arc::new(Mutex::new(Vec::new()));
        let tcp_peers = Arc::new(Mutex::new(Vec::new()));
        udp.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        // Room for a burst of new flows (lab-bench: 100,000 first datagrams
        // at once): the default buffer overflows, and the server, not the
        // gateway, would lose them. FORCE: past net.core.rmem_max (root).
        let rcvbuf: libc::c_int = 128 << 20;
        // SAFETY: setsockopt on a live socket with an int option.
        unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&udp),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&raw const rcvbuf).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        tcp.set_nonblocking(true).unwrap();
        let udp_thread = {
            let (stop, peers) = (stop.clone(), udp_peers.clone());
            thread::spawn(move || {
                // Room for a datagram bigger than the MTU (the fragment tests).
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, peer)) = udp.recv_from(&mut buf) {
                        peers.lock().unwrap().push(peer);
                        let reply = [b"echo:".as_slice(), &buf[..n]].concat();
                        let _ = udp.send_to(&reply, peer);
                    }
                }
            })
        };
        let tcp_thread = {
            let (stop, peers) = (stop.clone(), tcp_peers.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match tcp.accept() {
                        Ok((mut conn, peer)) => {
                            peers.lock().unwrap().push(peer);
                            conn.set_nonblocking(false).unwrap();
                            conn.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                            let mut buf = [0u8; 256];
                            if let Ok(n) = conn.read(&mut buf) {
                                let _ = conn.write_all(&[b"echo:".as_slice(), &buf[..n]].concat());
                            }
                        }
                        Err(_) => thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        };
        Self { stop, udp_peers, tcp_peers, threads: vec![udp_thread, tcp_thread] }
    }

    pub fn udp_peers(&self) -> Vec<SocketAddr> {
        self.udp_peers.lock().unwrap().clone()
    }

    pub fn tcp_peers(&self) -> Vec<SocketAddr> {
        self.tcp_peers.lock().unwrap().clone()
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A TCP echo service that keeps every connection open and echoes all it
/// reads, for flows that must survive what a test does to the gateway.
pub struct StreamEcho {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl StreamEcho {
    pub fn start(server: &Netns, port: u16) -> Self {
        let listener = in_ns(server, move || TcpListener::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)).unwrap()).join().unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((mut conn, _)) => {
                            conn.set_nonblocking(false).unwrap();
                            conn.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
                            let stop = stop.clone();
                            thread::spawn(move || {
                                let mut buf = [0u8; 4096];
                                while !stop.load(Ordering::Relaxed) {
                                    match conn.read(&mut buf) {
                                        Ok(0) => return,
                                        Ok(n) => {
                                            if conn.write_all(&buf[..n]).is_err() {
                                                return;
                                            }
                                        }
                                        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                                        Err(_) => return,
                                    }
                                }
                            });
                        }
                        Err(_) => thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        };
        Self { stop, thread: Some(thread) }
    }
}

impl Drop for StreamEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A conversation from `host` over one TCP connection to `to`: `rounds`
/// 16-byte messages, `gap` apart, each echoed back. Returns how many came
/// back whole, and the longest wait for one.
pub fn tcp_conversation(host: &Netns, to: SocketAddrV4, rounds: u32, gap: Duration) -> thread::JoinHandle<Result<(u32, Duration), String>> {
    in_ns(host, move || {
        let mut conn = std::net::TcpStream::connect_timeout(&to.into(), IO_TIMEOUT).map_err(|e| format!("connect: {e}"))?;
        conn.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let (mut echoed, mut longest) = (0, Duration::ZERO);
        for i in 0..rounds {
            let message = [i as u8; 16];
            let sent = Instant::now();
            conn.write_all(&message).map_err(|e| format!("round {i}: {e}"))?;
            let mut back = [0u8; 16];
            if conn.read_exact(&mut back).is_ok() && back == message {
                echoed += 1;
            }
            longest = longest.max(sent.elapsed());
            thread::sleep(gap);
        }
        Ok((echoed, longest))
    })
}

/// A UDP stream from `source_port` in `host` to `to`: `count` datagrams,
/// `gap` apart. Returns how many echoes came back.
pub fn udp_stream(host: &Netns, source_port: u16, to: SocketAddrV4, count: u32, gap: Duration) -> thread::JoinHandle<Result<u32, String>> {
    in_ns(host, move || {
        let sock = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, source_port)).map_err(|e| e.to_string())?;
        sock.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
        let mut echoed = 0;
        let mut buf = [0u8; 256];
        for i in 0..count {
            sock.send_to(&i.to_be_bytes(), to).map_err(|e| e.to_string())?;
            let deadline = Instant::now() + gap;
            while Instant::now() < deadline {
                if sock.recv(&mut buf).is_ok() {
                    echoed += 1;
                }
            }
        }
        sock.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        while sock.recv(&mut buf).is_ok() {
            echoed += 1;
        }
        Ok(echoed)
    })
}

/// tcpdump on an interface of a lab namespace, writing a file, read back
/// as text once stopped. Removed on drop.
pub struct Capture {
    child: Option<Child>,
    file: PathBuf,
    /// The namespace's name (the lab owns the namespace).
    ns: String,
}

impl Capture {
    /// Starts capturing `filter` on `ifname` in `ns`, and waits until tcpdump runs.
    pub fn start(ns: &Netns, ifname: &str, filter: &str) -> Result<Self> {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let file = std::env::temp_dir().join(format!("{}-{ifname}-{n}.pcap", ns.name));
        // Immediate mode: without it libpcap hands packets over in blocks
        // (up to 1 s late), and those of the last block before `finish`'s
        // SIGINT never reach the file.
        let mut args = vec!["tcpdump", "-i", ifname, "-n", "-U", "--immediate-mode", "-w", file.to_str().context("capture path")?];
        args.extend(filter.split_whitespace());
        let child = ns.command(&args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().context("starting tcpdump")?;
        // tcpdump creates the file once it listens.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !file.exists() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        thread::sleep(Duration::from_millis(200));
        Ok(Self { child: Some(child), file, ns: ns.name.clone() })
    }

    /// Stops the capture and returns one line per packet.
    pub fn finish(mut self) -> Result<Vec<String>> {
        self.stop();
        let text = crate::netns::run(std::process::Command::new("ip").args(["netns", "exec", &self.ns, "tcpdump", "-n", "-r"]).arg(&self.file))?;
        Ok(text.lines().map(str::to_string).collect())
    }
}

impl Capture {
    fn stop(&mut self) {
        thread::sleep(Duration::from_millis(200));
        if let Some(mut child) = self.child.take() {
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            let _ = child.wait();
        }
    }

    /// Stops the capture and reads it with tshark: one line per packet, the
    /// `fields` tab-separated, with tshark's `prefs` (`-o NAME:VALUE`).
    pub fn tshark_fields(mut self, prefs: &[&str], fields: &[&str]) -> Result<Vec<String>> {
        self.stop();
        let mut cmd = std::process::Command::new("tshark");
        cmd.arg("-n").arg("-r").arg(&self.file).args(["-T", "fields"]);
        for pref in prefs {
            cmd.args(["-o", pref]);
        }
        for field in fields {
            cmd.args(["-e", field]);
        }
        let text = crate::netns::run(&mut cmd)?;
        Ok(text.lines().map(str::to_string).collect())
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.file);
    }
}

/// A child process (a server a test started) killed and reaped on drop.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
