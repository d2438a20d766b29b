//! The name-based TLS proxy against HAProxy and nginx stream
//! (../shared/BENCHMARK.md, "Inbound and proxy"; issue 13), all in one run,
//! round by round with the order rotating.
//!
//! ```text
//! client (srv) 203.0.113.2 <-> gateway (gw) 203.0.113.1 <-> nginx TLS (h0) 10.77.1.10:443
//! ```
//!
//! One natd runs in the gateway namespace for the whole run (its XDP
//! programs attached, so every contender's packets take the same path in),
//! with its TLS proxy on 443 and a TCP `[[forward]]` on 7443 to the same
//! server (the baseline: routed in XDP, no proxy). Beside it, in the same
//! namespace, each listening on the external address:
//! - X `natd`: `[[proxy]] kind = "tls"`, the server by SNI, the same
//!   server as `default`;
//! - H `haproxy`: `mode tcp`, `tcp-request inspect-delay 5s`,
//!   `req.ssl_sni` choosing the backend, the same server as default_backend
//!   (port 8443);
//! - N `nginx_stream`: `ssl_preread on`, a map of
//!   `$ssl_preread_server_name` with the same default (port 9443);
//! - H' `haproxy_splice`: the same HAProxy process, a second frontend
//!   (port 8444) whose backend has `option splice-request` and
//!   `option splice-response`: HAProxy relaying with splice(2), as natd
//!   does, for the throughput figures only (handshakes do not splice).
//!   HAProxy's default, H, copies through its buffers; issue 13 asks natd
//!   to keep the payload out of user space, so H' is the like-for-like
//!   reference and H the goal's.
//!
//! The server: nginx with an ECDSA P-256 certificate, no session cache and
//! no tickets, `/` a 3-byte answer, `/big` 1 GiB.
//!
//! After one untimed pass of every contender (`Bench::warm_up`), figures,
//! each the median over the rounds (the client programs, s_time and curl,
//! pinned to CPU `CLIENT_CPU` with taskset):
//! 1. New TLS connections per second: `openssl s_time -new` (every
//!    connection a full handshake, no reuse) for `--conn-seconds`;
//!    s_time sends no SNI, so every contender reads the whole ClientHello
//!    and takes its default route (same server).
//! 2. Throughput of one 1 GiB transfer (`--download-mib`; `--quick` takes
//!    256 MiB): curl over TLS with SNI. The file is read once before
//!    anything is timed (page cache, see `start_server`).
//! 3. Added latency: a ClientHello with SNI written on a new connection, the
//!    time from connect() to the first byte of the server's answer, p50 and
//!    p99 of `--latency-samples` in a row, minus the same through the XDP
//!    forward.
//! 4. Memory per idle connection: `--idle-connections` connections, each
//!    with its ClientHello relayed and the server's first flight back, then
//!    idle; the growth of the proxy's resident memory (VmRSS) over their
//!    number, each proxy started anew for it (an allocator keeps what it
//!    freed: a process measured twice would show no growth the second
//!    time). Kernel socket and pipe memory is not in it, for any of them.
//! 5. The proxy's own CPU (user + system time of its process) per 1,000
//!    connections of (1) and per GiB of (2): what each costs the gateway,
//!    a steadier figure than the rates on a machine whose two CPUs also
//!    run the client and the server.
//! 6. The whole machine's CPU per GiB of (2), softirq apart (/proc/stat):
//!    what a relay costs the client, the server and the kernel's packet
//!    work, which (5) does not show.
//! 7. Where (6) goes, per GiB of (2): the client's (curl's) and the
//!    server's (nginx's) CPU, each with the softirq work that ran in its
//!    turn; and on the gateway's WAN veth, the mean size of the packets the
//!    gateway's stack sends the client (a veth counts a GSO packet once)
//!    and the packets the client sends back. These show why a relay that
//!    splices costs this lab more than one that copies: the client, on the
//!    same two CPUs, receives the gateway's received pages by reference.
//!
//! Usage: proxy-bench [--quick] [--runs N] [--conn-seconds N]
//! [--download-mib N] [--latency-samples N] [--idle-connections N] (root;
//! writes target/bench/proxy.{json,md}).

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::{Read as _, Write as _},
    net::{SocketAddrV4, TcpStream},
    path::PathBuf,
    process::{Child, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use nat_tests::{
    bench::{LinkCounters, MachineCpu, children_cpu_seconds, machine_json, median, percentile, process_cpu_seconds},
    tls::client_hello,
    inbound::Natd,
    natlab::{EXTERNAL, NatLab, host_addr, in_ns},
    netns::{Netns, run},
};
use serde_json::{Value, json};

const NAME: &str = "bench.example";
const SERVER_PORT: u16 = 443;
/// The server's big file: the longest download there is.
const BIG_LEN: u64 = 1 << 30;
const MIB: u64 = 1 << 20;
const WARM_UP_BYTES: u64 = 128 << 20;
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// The CPU the client programs (s_time, curl) are pinned to (taskset), as
/// ../shared/BENCHMARK.md asks and inbound-bench pins wrk.
const CLIENT_CPU: u32 = 1;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Mode {
    Natd,
    Haproxy,
    NginxStream,
    /// The baseline: natd's XDP forward of the same server, no proxy.
    Forward,
    /// HAProxy relaying with splice (throughput only).
    HaproxySplice,
}

impl Mode {
    const ALL: [Mode; 5] = [Mode::Natd, Mode::Haproxy, Mode::NginxStream, Mode::Forward, Mode::HaproxySplice];
    /// The contenders whose handshakes and latency are timed: H' differs
    /// from H only once data flows.
    const HANDSHAKING: [Mode; 4] = [Mode::Natd, Mode::Haproxy, Mode::NginxStream, Mode::Forward];

    fn key(self) -> &'static str {
        match self {
            Mode::Natd => "natd",
            Mode::Haproxy => "haproxy",
            Mode::NginxStream => "nginx_stream",
            Mode::Forward => "xdp_forward",
            Mode::HaproxySplice => "haproxy_splice",
        }
    }

    fn port(self) -> u16 {
        match self {
            Mode::Natd => 443,
            Mode::Haproxy => 8443,
            Mode::NginxStream => 9443,
            Mode::Forward => 7443,
            Mode::HaproxySplice => 8444,
        }
    }

    fn target(self) -> SocketAddrV4 {
        SocketAddrV4::new(EXTERNAL, self.port())
    }
}

#[derive(Clone, Debug)]
struct Plan {
    runs: usize,
    conn_seconds: u32,
    /// The timed download's length (issue 13: 1 GiB).
    download_mib: u64,
    latency_samples: usize,
    idle_connections: usize,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Self { runs: 1, conn_seconds: 2, download_mib: 256, latency_samples: 300, idle_connections: 300 }
        } else {
            // Five rounds: one sample moves by about a fifth from round to
            // round here.
            Self { runs: 5, conn_seconds: 5, download_mib: BIG_LEN / MIB, latency_samples: 1000, idle_connections: 2000 }
        }
    }

    fn from_args() -> Result<Self> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let mut plan = Self::new(args.iter().any(|a| a == "--quick"));
        let mut i = 0;
        while i < args.len() {
            let value = |i: usize| args.get(i + 1).with_context(|| format!("{} needs a value", args[i]));
            match args[i].as_str() {
                "--quick" => {}
                "--runs" => plan.runs = value(i)?.parse()?,
                "--conn-seconds" => plan.conn_seconds = value(i)?.parse()?,
                "--download-mib" => plan.download_mib = value(i)?.parse()?,
                "--latency-samples" => plan.latency_samples = value(i)?.parse()?,
                "--idle-connections" => plan.idle_connections = value(i)?.parse()?,
                other => bail!("unknown argument {other:?} (see the usage in the source's header)"),
            }
            i += if args[i] == "--quick" { 1 } else { 2 };
        }
        ensure!(plan.runs > 0 && plan.conn_seconds > 0 && plan.latency_samples > 1 && plan.idle_connections > 0, "every count must be at least 1");
        ensure!(
            (1..=BIG_LEN / MIB).contains(&plan.download_mib),
            "--download-mib {}: the server's file is {} MiB; give 1 to {0}",
            plan.download_mib,
            BIG_LEN / MIB
        );
        Ok(plan)
    }

    fn download_bytes(&self) -> u64 {
        self.download_mib * MIB
    }

    /// "1 GiB" or "256 MiB", for the tables.
    fn download_size(&self) -> String {
        if self.download_bytes() == BIG_LEN { "1 GiB".to_string() } else { format!("{} MiB", self.download_mib) }
    }
}

/// A process of the benchmark's in a namespace, killed (and reaped) on drop.
struct Process {
    child: Option<Child>,
    dir: PathBuf,
    what: String,
}

impl Process {
    fn spawn(ns: &Netns, args: &[&str], dir: PathBuf, what: &str) -> Result<Self> {
        let log = std::fs::File::create(dir.join(format!("{what}.log")))?;
        let child = ns.command(args).current_dir(&dir).stdout(Stdio::null()).stderr(log).spawn().with_context(|| format!("starting {what}"))?;
        Ok(Self { child: Some(child), dir, what: what.to_string() })
    }

    /// Waits (at most 5 s) until `addr` accepts in `ns`.
    fn wait_listening(&mut self, ns: &Netns, addr: SocketAddrV4) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("{} exited at start ({status}): {}", self.what, self.log());
            }
            if in_ns(ns, move || TcpStream::connect_timeout(&addr.into(), Duration::from_millis(200)).is_ok()).join().unwrap_or(false) {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(20));
        }
        bail!("{} does not listen on {addr} after 5 s: {}", self.what, self.log())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join(format!("{}.log", self.what))).unwrap_or_default()
    }

    fn pid(&self) -> Option<u32> {
        // `ip netns exec` execs the program: the child's pid is its own.
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn private_dir(ns: &Netns, what: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("{}-proxybench-{what}", ns.name));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The TLS server on h0: nginx, ECDSA P-256, no resumption.
fn start_server(ns: &Netns) -> Result<Process> {
    let dir = private_dir(ns, "server")?;
    let mut req = std::process::Command::new("openssl");
    req.args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "key.pem", "-out", "cert.pem", "-days", "2"])
        .args(["-subj", &format!("/CN={NAME}")]);
    run(req.current_dir(&dir)).context("making the server's certificate")?;
    std::fs::create_dir_all(dir.join("www"))?;
    // Sparse: 1 GiB of zeros that costs no disk.
    std::fs::File::create(dir.join("www/big"))?.set_len(BIG_LEN)?;
    // Read once before anything is timed. On a disk file system the first
    // read of a hole allocates its page-cache pages, and made the first
    // download of a run ~40% slower than the rest (0.81-0.95 Gbit/s against
    // 1.3-1.7): the contender that came first (natd, in round 0) paid it.
    let read = std::io::copy(&mut std::fs::File::open(dir.join("www/big"))?, &mut std::io::sink())?;
    ensure!(read == BIG_LEN, "read {read} bytes of the server's {BIG_LEN}-byte file");
    let addr = SocketAddrV4::new(host_addr(0), SERVER_PORT);
    let conf = format!(
        "daemon off; master_process off; worker_rlimit_nofile 20000; pid {d}/nginx.pid; error_log {d}/error.log;\n\
         events {{ worker_connections 9000; }}\n\
         http {{ access_log off; client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};\n\
         keepalive_timeout 600s; client_header_timeout 600s;\n\
         server {{ listen {addr} ssl backlog=4096; root {d}/www; default_type application/octet-stream;\n\
         ssl_certificate {d}/cert.pem; ssl_certificate_key {d}/key.pem; ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache off; ssl_session_tickets off;\n\
         location = / {{ return 200 \"ok\\n\"; }} }} }}\n",
        d = dir.display()
    );
    std::fs::write(dir.join("nginx.conf"), conf)?;
    let conf = dir.join("nginx.conf");
    let mut server = Process::spawn(ns, &["nginx", "-c", conf.to_str().context("path")?], dir, "server")?;
    server.wait_listening(ns, addr)?;
    Ok(server)
}

fn server() -> SocketAddrV4 {
    SocketAddrV4::new(host_addr(0), SERVER_PORT)
}

fn natd_config() -> String {
    let s = server();
    format!(
        "log_level = \"info\"\n\n[[proxy]]\nport = {}\nkind = \"tls\"\nnames = {{ \"{NAME}\" = \"{s}\" }}\ndefault = \"{s}\"\nmax_connections = 8000\n\n\
         [[forward]]\nname = \"baseline\"\nprotocol = \"tcp\"\nport = {}\nto = [\"{s}\"]\n",
        Mode::Natd.port(),
        Mode::Forward.port()
    )
}

fn start_haproxy(ns: &Netns) -> Result<Process> {
    let dir = private_dir(ns, "haproxy")?;
    let (bind, bind_splice, s) = (Mode::Haproxy.target(), Mode::HaproxySplice.target(), server());
    let config = format!(
        // maxconn and maxpipes set the file limit HAProxy asks for (about
        // twice the one plus twice the other): under the 20,000 this
        // machine allows. One download at a time splices.
        "global\n    maxconn 8000\n    maxpipes 64\n\
         defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 600s\n    timeout server 600s\n\
         frontend sni\n    bind {bind}\n    tcp-request inspect-delay 5s\n    tcp-request content accept if {{ req.ssl_hello_type 1 }}\n\
         \x20   use_backend site if {{ req.ssl_sni -i {NAME} }}\n    default_backend site\n\
         backend site\n    server s0 {s}\n\
         frontend sni_splice\n    bind {bind_splice}\n    tcp-request inspect-delay 5s\n    tcp-request content accept if {{ req.ssl_hello_type 1 }}\n\
         \x20   use_backend site_splice if {{ req.ssl_sni -i {NAME} }}\n    default_backend site_splice\n\
         backend site_splice\n    option splice-request\n    option splice-response\n    server s0 {s}\n"
    );
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, &config)?;
    let path = path.to_str().context("path")?.to_string();
    let mut haproxy = Process::spawn(ns, &["haproxy", "-db", "-f", &path], dir, "haproxy")?;
    haproxy.wait_listening(ns, bind)?;
    Ok(haproxy)
}

const STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

fn start_nginx_stream(ns: &Netns) -> Result<Process> {
    ensure!(std::path::Path::new(STREAM_MODULE).exists(), "{STREAM_MODULE} is missing: apt-get install libnginx-mod-stream (cargo xtask bootstrap does)");
    let dir = private_dir(ns, "stream")?;
    let (listen, s) = (Mode::NginxStream.target(), server());
    let conf = format!(
        "load_module {STREAM_MODULE};\n\
         daemon off; master_process off; worker_rlimit_nofile 20000; pid {d}/nginx.pid; error_log {d}/error.log;\n\
         events {{ worker_connections 9000; }}\n\
         stream {{ map $ssl_preread_server_name $site {{ {NAME} {s}; default {s}; }}\n\
         server {{ listen {listen} backlog=4096; ssl_preread on; preread_timeout 5s; proxy_pass $site; proxy_timeout 600s; }} }}\n",
        d = dir.display()
    );
    std::fs::write(dir.join("nginx.conf"), conf)?;
    let conf = dir.join("nginx.conf");
    let mut nginx = Process::spawn(ns, &["nginx", "-c", conf.to_str().context("path")?], dir, "stream")?;
    nginx.wait_listening(ns, listen)?;
    Ok(nginx)
}

/// Connects to `target`, writes the ClientHello and reads the first bytes
/// of the server's answer (a handshake record): the open connection and
/// the time from connect() to that first byte.
fn hello_exchange(target: SocketAddrV4, hello: &[u8]) -> Result<(TcpStream, Duration)> {
    let started = Instant::now();
    let mut stream = TcpStream::connect_timeout(&target.into(), IO_TIMEOUT).with_context(|| format!("connect {target}"))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.write_all(hello)?;
    let mut first = [0u8; 1];
    let n = stream.read(&mut first).with_context(|| format!("reading the server's answer through {target}"))?;
    let elapsed = started.elapsed();
    ensure!(n == 1 && first[0] == 22, "through {target}: not a handshake record back ({n} bytes, {first:?})");
    Ok((stream, elapsed))
}

/// Raises this process's open-files limit to its hard limit.
fn raise_nofile() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

fn rss_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")?;
    Ok(kb * 1024)
}

/// What one timed download showed, per GiB where it is a cost.
struct Transfer {
    gbps: f64,
    /// The proxy's own process.
    proxy_cpu_s_per_gib: f64,
    /// curl, and the server's nginx. With tick-based accounting (this
    /// kernel has no IRQ_TIME_ACCOUNTING) a process's time includes the
    /// softirq work that ran while it was on the CPU: these say whose
    /// turn it was, which is where a relay's packet work lands.
    client_cpu_s_per_gib: f64,
    server_cpu_s_per_gib: f64,
    /// Every CPU, softirq apart.
    machine: MachineCpu,
    /// The mean size of what the gateway's stack handed its WAN veth for
    /// the client (a GSO packet counts once): a copy fills 64 KB packets
    /// from fresh pages, a splice sends the received packets' own pieces,
    /// at most 17 to a packet.
    packet_to_client_bytes: f64,
    /// Packets the client sent back (its ACKs, mostly): each one more
    /// receive, XDP run and ACK processed on the gateway.
    packets_from_client_per_gib: f64,
}

struct Bench {
    lab: NatLab,
    server: Process,
    natd: Option<Natd>,
    haproxy: Option<Process>,
    stream: Option<Process>,
}

impl Bench {
    fn new() -> Result<Self> {
        let lab = NatLab::new(1, false)?;
        for setting in ["net.ipv4.tcp_tw_reuse=1", "net.ipv4.ip_local_port_range=1024 65535"] {
            lab.server.sysctl(setting)?;
        }
        let server = start_server(&lab.hosts[0])?;
        let natd = Natd::start(&lab.gw, "lan0", "wan0", &natd_config())?;
        let haproxy = start_haproxy(&lab.gw)?;
        let stream = start_nginx_stream(&lab.gw)?;
        let bench = Self { lab, server, natd: Some(natd), haproxy: Some(haproxy), stream: Some(stream) };
        for mode in Mode::ALL {
            bench.latency(mode, 3).with_context(|| format!("{} does not reach the server", mode.key()))?;
        }
        Ok(bench)
    }

    fn pid(&self, mode: Mode) -> Option<u32> {
        match mode {
            Mode::Natd => self.natd.as_ref().and_then(Natd::pid),
            Mode::Haproxy | Mode::HaproxySplice => self.haproxy.as_ref().and_then(Process::pid),
            Mode::NginxStream => self.stream.as_ref().and_then(Process::pid),
            Mode::Forward => None,
        }
    }

    /// CPU seconds `mode`'s own process has used so far (0 for the forward,
    /// which has none: its packets are the XDP program's).
    fn proxy_cpu(&self, mode: Mode) -> Result<f64> {
        self.pid(mode).map_or(Ok(0.0), process_cpu_seconds)
    }

    /// CPU seconds the server's nginx (one process) has used so far.
    fn server_cpu(&self) -> Result<f64> {
        process_cpu_seconds(self.server.pid().context("the server's nginx has exited")?)
    }

    /// A client program run in the client's namespace, pinned to
    /// `CLIENT_CPU`: its stdout.
    fn client(&self, args: &[&str]) -> Result<String> {
        let cpu = CLIENT_CPU.to_string();
        self.lab.server.exec(&[&["taskset", "-c", cpu.as_str()], args].concat())
    }

    /// New full TLS handshakes per second (s_time -new), and the proxy's
    /// CPU milliseconds per 1,000 of them.
    fn connections(&self, mode: Mode, seconds: u32) -> Result<(f64, f64)> {
        let connect = mode.target().to_string();
        let cpu_before = self.proxy_cpu(mode)?;
        let started = Instant::now();
        let out = self.client(&["openssl", "s_time", "-connect", &connect, "-new", "-time", &seconds.to_string()])?;
        let wall = started.elapsed().as_secs_f64();
        // "1234 connections in 3.21s; 384.42 connections/user sec, ..."
        let count: f64 = out
            .lines()
            .find(|l| l.contains("connections in") && l.contains("real seconds"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("no count in s_time's output: {out}"))?;
        ensure!(count > 0.0, "s_time made no connection: {out}");
        let cpu = self.proxy_cpu(mode)? - cpu_before;
        Ok((count / wall, cpu * 1e6 / count))
    }

    /// One timed download of `bytes` over TLS.
    fn throughput(&self, mode: Mode, bytes: u64) -> Result<Transfer> {
        let machine_before = MachineCpu::now()?;
        let wan_before = LinkCounters::read(&self.lab.gw, "wan0")?;
        let server_before = self.server_cpu()?;
        let client_before = children_cpu_seconds();
        let (gbps, cpu) = self.download(mode, bytes)?;
        let client = children_cpu_seconds() - client_before;
        let server = self.server_cpu()? - server_before;
        let wan = LinkCounters::read(&self.lab.gw, "wan0")?.since(wan_before);
        let machine = MachineCpu::now()?.since(machine_before);
        let per_gib = BIG_LEN as f64 / bytes as f64;
        Ok(Transfer {
            gbps,
            proxy_cpu_s_per_gib: cpu * per_gib,
            client_cpu_s_per_gib: client * per_gib,
            server_cpu_s_per_gib: server * per_gib,
            machine: MachineCpu { busy: machine.busy * per_gib, softirq: machine.softirq * per_gib },
            packet_to_client_bytes: wan.tx_packet_bytes(),
            packets_from_client_per_gib: wan.rx_packets as f64 * per_gib,
        })
    }

    /// The first `bytes` of the big file over TLS: Gbit/s, and the proxy's
    /// CPU seconds.
    fn download(&self, mode: Mode, bytes: u64) -> Result<(f64, f64)> {
        let port = mode.port();
        let cpu_before = self.proxy_cpu(mode)?;
        let resolve = format!("{NAME}:{port}:{EXTERNAL}");
        let url = format!("https://{NAME}:{port}/big");
        let range = format!("0-{}", bytes - 1);
        let out = self.client(&["curl", "-sS", "-k", "--max-time", "120", "--resolve", &resolve, "-r", &range, "-o", "/dev/null", "-w", "%{size_download} %{time_total}", &url])?;
        let mut fields = out.split_whitespace();
        let size: f64 = fields.next().and_then(|v| v.parse().ok()).context("curl's size")?;
        let time: f64 = fields.next().and_then(|v| v.parse().ok()).context("curl's time")?;
        ensure!(size as u64 == bytes, "{size} bytes of {bytes}");
        Ok((size * 8.0 / time / 1e9, self.proxy_cpu(mode)? - cpu_before))
    }

    /// `samples` ClientHello -> first byte times, microseconds.
    fn latency(&self, mode: Mode, samples: usize) -> Result<Vec<f64>> {
        let target = mode.target();
        in_ns(&self.lab.server, move || -> Result<Vec<f64>> {
            let hello = client_hello(Some(NAME), 0, 16384);
            (0..samples).map(|_| hello_exchange(target, &hello).map(|(_, t)| t.as_secs_f64() * 1e6)).collect()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the latency client panicked"))?
    }

    /// One untimed pass of every contender, a second of handshakes and
    /// 128 MiB: the first of a run was the slowest whoever it was (natd,
    /// first in round 0, got 390 connections/s and 1.11 Gbit/s there,
    /// against 463-601 and 1.32-1.70 in its other rounds), as the client,
    /// the server and the gateway's kernel warm up.
    fn warm_up(&self) -> Result<()> {
        for mode in Mode::ALL {
            self.connections(mode, 1).with_context(|| format!("warming up {}", mode.key()))?;
            self.download(mode, WARM_UP_BYTES).with_context(|| format!("warming up {}", mode.key()))?;
        }
        Ok(())
    }

    /// Starts `mode`'s process anew: a heap that never held connections
    /// (an allocator keeps what it freed, so a second measurement in the
    /// same process would see no growth), warmed by one relayed connection.
    fn restart(&mut self, mode: Mode) -> Result<()> {
        match mode {
            Mode::Natd => {
                if let Some(natd) = self.natd.take() {
                    natd.stop()?;
                }
                self.natd = Some(Natd::start(&self.lab.gw, "lan0", "wan0", &natd_config())?);
            }
            Mode::Haproxy | Mode::HaproxySplice => {
                drop(self.haproxy.take());
                self.haproxy = Some(start_haproxy(&self.lab.gw)?);
            }
            Mode::NginxStream => {
                drop(self.stream.take());
                self.stream = Some(start_nginx_stream(&self.lab.gw)?);
            }
            Mode::Forward => bail!("the forward has no process of its own"),
        }
        self.latency(mode, 1)?;
        Ok(())
    }

    /// Resident bytes the proxy grows by per idle relayed connection.
    fn memory(&self, mode: Mode, connections: usize) -> Result<f64> {
        let pid = self.pid(mode).context("no process")?;
        let before = rss_bytes(pid)?;
        let target = mode.target();
        let (held_tx, held) = std::sync::mpsc::channel::<Result<usize>>();
        let (release_tx, release) = std::sync::mpsc::channel::<()>();
        let client = in_ns(&self.lab.server, move || {
            raise_nofile();
            let hello = client_hello(Some(NAME), 0, 16384);
            let open: Result<Vec<TcpStream>> = (0..connections).map(|_| hello_exchange(target, &hello).map(|(s, _)| s)).collect();
            match open {
                Ok(streams) => {
                    let _ = held_tx.send(Ok(streams.len()));
                    let _ = release.recv();
                    drop(streams);
                }
                Err(e) => drop(held_tx.send(Err(e))),
            }
        });
        let held = held.recv_timeout(Duration::from_secs(120)).context("the idle connections were not opened in 120 s")?;
        let measured = held.and_then(|n| {
            thread::sleep(Duration::from_millis(500));
            let after = rss_bytes(pid)?;
            Ok(after.saturating_sub(before) as f64 / n as f64)
        });
        let _ = release_tx.send(());
        let _ = client.join();
        // The proxies notice the closes; the next measurement starts clean.
        thread::sleep(Duration::from_millis(500));
        measured
    }
}

fn main() -> Result<()> {
    let plan = Plan::from_args()?;
    ensure!(nat_tests::netns::is_root(), "the proxy benchmark creates namespaces and runs natd, HAProxy and nginx: run it as root");
    raise_nofile();
    let started = Instant::now();
    let mut bench = Bench::new()?;
    eprintln!("proxy-bench: set up ({:.0} s)", started.elapsed().as_secs_f64());
    bench.warm_up()?;
    eprintln!("proxy-bench: warmed up ({:.0} s)", started.elapsed().as_secs_f64());
    let mut conn: BTreeMap<Mode, Vec<f64>> = BTreeMap::new();
    let mut transfers: BTreeMap<Mode, Vec<Transfer>> = BTreeMap::new();
    let mut latency: BTreeMap<Mode, Vec<f64>> = BTreeMap::new();
    let mut memory: BTreeMap<Mode, Vec<f64>> = BTreeMap::new();
    let mut conn_cpu: BTreeMap<Mode, Vec<f64>> = BTreeMap::new();
    for round in 0..plan.runs {
        for i in 0..Mode::ALL.len() {
            let mode = Mode::ALL[(i + round) % Mode::ALL.len()];
            let what = |part: &str| format!("{part} through {}, round {round}", mode.key());
            let handshakes = Mode::HANDSHAKING.contains(&mode);
            if handshakes {
                let (rate, cpu) = bench.connections(mode, plan.conn_seconds).with_context(|| what("connections/s"))?;
                conn.entry(mode).or_default().push(rate);
                conn_cpu.entry(mode).or_default().push(cpu);
            }
            transfers.entry(mode).or_default().push(bench.throughput(mode, plan.download_bytes()).with_context(|| what("throughput"))?);
            if handshakes {
                latency.entry(mode).or_default().extend(bench.latency(mode, plan.latency_samples).with_context(|| what("latency"))?);
            }
            eprintln!("proxy-bench: {} round {round} done ({:.0} s)", mode.key(), started.elapsed().as_secs_f64());
        }
    }
    // Memory last: each measurement in a process started for it.
    let proxies = [Mode::Natd, Mode::Haproxy, Mode::NginxStream];
    for round in 0..plan.runs {
        for i in 0..proxies.len() {
            let mode = proxies[(i + round) % proxies.len()];
            bench.restart(mode).with_context(|| format!("restarting {}", mode.key()))?;
            memory.entry(mode).or_default().push(bench.memory(mode, plan.idle_connections).with_context(|| format!("memory of {}, round {round}", mode.key()))?);
        }
        eprintln!("proxy-bench: memory round {round} done ({:.0} s)", started.elapsed().as_secs_f64());
    }
    // One figure of every download, per contender, in round order.
    let of_transfers = |figure: fn(&Transfer) -> f64| -> BTreeMap<Mode, Vec<f64>> { transfers.iter().map(|(&mode, all)| (mode, all.iter().map(figure).collect())).collect() };
    let gbps = of_transfers(|t| t.gbps);
    let gib_cpu = of_transfers(|t| t.proxy_cpu_s_per_gib);
    let gib_machine = of_transfers(|t| t.machine.busy);
    let gib_softirq = of_transfers(|t| t.machine.softirq);
    let gib_client = of_transfers(|t| t.client_cpu_s_per_gib);
    let gib_server = of_transfers(|t| t.server_cpu_s_per_gib);
    let to_client_bytes = of_transfers(|t| t.packet_to_client_bytes);
    let from_client_packets = of_transfers(|t| t.packets_from_client_per_gib);
    let med = |samples: &BTreeMap<Mode, Vec<f64>>, mode: Mode| samples.get(&mode).map_or(0.0, |v| median(&mut v.clone()));
    let pct = |mode: Mode, p: f64| latency.get(&mode).map_or(0.0, |v| percentile(&mut v.clone(), p));
    let round2 = |v: f64| (v * 100.0).round() / 100.0;
    let ratio = |a: f64, b: f64| if b > 0.0 { round2(a / b) } else { 0.0 };
    let per_mode = |f: &dyn Fn(Mode) -> Value, modes: &[Mode]| -> Value { modes.iter().map(|&m| (m.key().to_string(), f(m))).collect::<serde_json::Map<_, _>>().into() };
    let results = json!({
        "machine": machine_json(),
        "plan": { "runs": plan.runs, "conn_seconds": plan.conn_seconds, "latency_samples_per_run": plan.latency_samples, "idle_connections": plan.idle_connections, "download_bytes": plan.download_bytes(), "download_size": plan.download_size() },
        "setup": {
            "server": format!("nginx {}:{SERVER_PORT}, TLS 1.2/1.3, ECDSA P-256, no session cache or tickets", host_addr(0)),
            "natd": format!("[[proxy]] kind = \"tls\" on {}", Mode::Natd.target()),
            "haproxy": format!("mode tcp, inspect-delay 5s, req.ssl_sni on {}", Mode::Haproxy.target()),
            "nginx_stream": format!("ssl_preread on, map $ssl_preread_server_name on {}", Mode::NginxStream.target()),
            "xdp_forward": format!("natd [[forward]] tcp on {} (baseline, no proxy)", Mode::Forward.target()),
            "haproxy_splice": format!("the same HAProxy, option splice-request and splice-response, on {} (throughput only)", Mode::HaproxySplice.target()),
            "connections": format!("openssl s_time -new pinned to CPU {CLIENT_CPU} (no SNI: each proxy parses the ClientHello and takes its default, the same server)"),
            "throughput": format!("curl pinned to CPU {CLIENT_CPU}, one {} download over TLS with SNI", plan.download_size()),
            "latency": "connect() to the first byte of the server's answer to a ClientHello with SNI",
            "proxy_cpu": "user + system time of the proxy's own process (/proc/<pid>/stat) over the timed part, per 1,000 connections and per GiB relayed (the download's, scaled to a GiB); kernel work done for it in softirq context on other CPUs is not in it",
            "client_server_cpu": "user + system time of curl (getrusage of the waited child) and of the server's nginx over the download, per GiB; this kernel counts a softirq's time to the process it interrupted (no IRQ_TIME_ACCOUNTING), so these include the packet work that ran in their turn",
            "wan_packets": "the gateway's WAN veth over the download (ip -s link): the mean bytes of a packet the gateway's stack sent the client (a GSO packet counts once) and the packets the client sent back per GiB",
            "machine_cpu": "busy time of all CPUs (/proc/stat: all but idle and iowait) over the download, per GiB: the proxy, the client, the server and every softirq; softirq apart, where the packets are received and the XDP programs run",
            "warm_up": "the server's 1 GiB file is read once (page cache), then every contender gets one untimed second of handshakes and 128 MiB, before anything is timed",
            "memory": "VmRSS growth of the proxy's process, started anew for each measurement, over idle relayed connections (their ClientHello relayed, the server's first flight back)",
        },
        "new_tls_conn_per_s": per_mode(&|m| json!(med(&conn, m).round() as i64), &Mode::HANDSHAKING),
        "new_tls_conn_per_s_samples": per_mode(&|m| json!(conn.get(&m)), &Mode::HANDSHAKING),
        "throughput_gbps": per_mode(&|m| json!(round2(med(&gbps, m))), &Mode::ALL),
        "throughput_gbps_samples": per_mode(&|m| json!(gbps.get(&m)), &Mode::ALL),
        "latency_us": per_mode(&|m| json!({ "p50": pct(m, 50.0).round() as i64, "p99": pct(m, 99.0).round() as i64 }), &Mode::HANDSHAKING),
        "added_latency_us": per_mode(&|m| json!({ "p50": (pct(m, 50.0) - pct(Mode::Forward, 50.0)).round() as i64, "p99": (pct(m, 99.0) - pct(Mode::Forward, 99.0)).round() as i64 }), &proxies),
        "proxy_cpu_ms_per_1000_connections": per_mode(&|m| json!(med(&conn_cpu, m).round() as i64), &proxies),
        "proxy_cpu_s_per_gib": per_mode(&|m| json!(round2(med(&gib_cpu, m))), &[&proxies[..], &[Mode::HaproxySplice]].concat()),
        "machine_cpu_s_per_gib": per_mode(&|m| json!(round2(med(&gib_machine, m))), &Mode::ALL),
        "machine_softirq_s_per_gib": per_mode(&|m| json!(round2(med(&gib_softirq, m))), &Mode::ALL),
        "client_cpu_s_per_gib": per_mode(&|m| json!(round2(med(&gib_client, m))), &Mode::ALL),
        "server_cpu_s_per_gib": per_mode(&|m| json!(round2(med(&gib_server, m))), &Mode::ALL),
        "wan_packet_to_client_bytes": per_mode(&|m| json!(med(&to_client_bytes, m).round() as i64), &Mode::ALL),
        "wan_packets_from_client_per_gib": per_mode(&|m| json!(med(&from_client_packets, m).round() as i64), &Mode::ALL),
        "idle_bytes_per_connection": per_mode(&|m| json!(med(&memory, m).round() as i64), &proxies),
        "idle_bytes_per_connection_samples": per_mode(&|m| json!(memory.get(&m)), &proxies),
        "ratio": {
            "conn_x_vs_haproxy": ratio(med(&conn, Mode::Natd), med(&conn, Mode::Haproxy)),
            "throughput_x_vs_haproxy": ratio(med(&gbps, Mode::Natd), med(&gbps, Mode::Haproxy)),
            "memory_x_vs_haproxy": ratio(med(&memory, Mode::Natd), med(&memory, Mode::Haproxy)),
            "cpu_per_connection_x_vs_haproxy": ratio(med(&conn_cpu, Mode::Natd), med(&conn_cpu, Mode::Haproxy)),
            "cpu_per_gib_x_vs_haproxy": ratio(med(&gib_cpu, Mode::Natd), med(&gib_cpu, Mode::Haproxy)),
            "throughput_x_vs_haproxy_splice": ratio(med(&gbps, Mode::Natd), med(&gbps, Mode::HaproxySplice)),
            "cpu_per_gib_x_vs_haproxy_splice": ratio(med(&gib_cpu, Mode::Natd), med(&gib_cpu, Mode::HaproxySplice)),
            "machine_cpu_per_gib_x_vs_haproxy": ratio(med(&gib_machine, Mode::Natd), med(&gib_machine, Mode::Haproxy)),
        },
        "goals": { "conn_x_vs_haproxy": ">= 1", "throughput_x_vs_haproxy": ">= 1", "memory_x_vs_haproxy": "<= 1" },
        "seconds": started.elapsed().as_secs(),
    });
    let md = markdown(&results)?;
    nat_tests::bench::write_results("proxy", &(serde_json::to_string_pretty(&results)? + "\n"), &md)?;
    Ok(())
}

fn markdown(r: &Value) -> Result<String> {
    let mut md = String::new();
    let m = &r["machine"];
    writeln!(md, "Machine: {}, {} vCPU, kernel {}. {} round(s), order rotating.\n", m["cpu"].as_str().unwrap_or("?"), m["vcpus"], m["kernel"].as_str().unwrap_or("?"), r["plan"]["runs"])?;
    let f = |v: &Value| v.as_f64().unwrap_or(0.0);
    writeln!(md, "| proxy figure | X natd | H HAProxy | N nginx stream | F XDP forward (no proxy) | X/H | goal |\n|---|---|---|---|---|---|---|")?;
    let row = |md: &mut String, label: &str, key: &str, unit: &str, ratio: &str, goal: &str| -> Result<()> {
        let v = &r[key];
        let fw = if v["xdp_forward"].is_null() { "-".to_string() } else { format!("{}{unit}", v["xdp_forward"]) };
        writeln!(md, "| {label} | {}{unit} | {}{unit} | {}{unit} | {fw} | {:.2} | {goal} |", v["natd"], v["haproxy"], v["nginx_stream"], f(&r["ratio"][ratio]))?;
        Ok(())
    };
    row(&mut md, "new TLS connections/s (s_time -new)", "new_tls_conn_per_s", "", "conn_x_vs_haproxy", "X/H >= 1")?;
    row(&mut md, &format!("throughput, {} over TLS", r["plan"]["download_size"].as_str().unwrap_or("?")), "throughput_gbps", " Gbit/s", "throughput_x_vs_haproxy", "X/H >= 1")?;
    // H': the like-for-like reference, HAProxy relaying with splice too.
    writeln!(
        md,
        "| throughput, H' = HAProxy with splice (X/H') | {} Gbit/s | {} Gbit/s | - | - | {:.2} | - |",
        r["throughput_gbps"]["natd"], r["throughput_gbps"]["haproxy_splice"], f(&r["ratio"]["throughput_x_vs_haproxy_splice"])
    )?;
    let l = &r["latency_us"];
    let a = &r["added_latency_us"];
    writeln!(
        md,
        "| ClientHello -> first byte, p50 / p99 (added over F) | {} / {} us (+{} / +{}) | {} / {} us (+{} / +{}) | {} / {} us (+{} / +{}) | {} / {} us | - | - |",
        l["natd"]["p50"], l["natd"]["p99"], a["natd"]["p50"], a["natd"]["p99"],
        l["haproxy"]["p50"], l["haproxy"]["p99"], a["haproxy"]["p50"], a["haproxy"]["p99"],
        l["nginx_stream"]["p50"], l["nginx_stream"]["p99"], a["nginx_stream"]["p50"], a["nginx_stream"]["p99"],
        l["xdp_forward"]["p50"], l["xdp_forward"]["p99"]
    )?;
    row(&mut md, "the proxy's CPU per 1,000 new connections", "proxy_cpu_ms_per_1000_connections", " ms", "cpu_per_connection_x_vs_haproxy", "-")?;
    row(&mut md, "the proxy's CPU per GiB relayed", "proxy_cpu_s_per_gib", " s", "cpu_per_gib_x_vs_haproxy", "-")?;
    writeln!(
        md,
        "| the proxy's CPU per GiB, H' = HAProxy with splice (X/H') | {} s | {} s | - | - | {:.2} | - |",
        r["proxy_cpu_s_per_gib"]["natd"], r["proxy_cpu_s_per_gib"]["haproxy_splice"], f(&r["ratio"]["cpu_per_gib_x_vs_haproxy_splice"])
    )?;
    row(&mut md, "the whole machine's CPU per GiB (all processes and softirq)", "machine_cpu_s_per_gib", " s", "machine_cpu_per_gib_x_vs_haproxy", "-")?;
    let soft = &r["machine_softirq_s_per_gib"];
    writeln!(
        md,
        "| of which softirq | {} s | {} s | {} s | {} s | - | - |",
        soft["natd"], soft["haproxy"], soft["nginx_stream"], soft["xdp_forward"]
    )?;
    for (label, key) in [("the client's (curl's) CPU per GiB", "client_cpu_s_per_gib"), ("the server's (nginx's) CPU per GiB", "server_cpu_s_per_gib")] {
        let v = &r[key];
        writeln!(md, "| {label}; H' | {} s | {} s; H' {} s | {} s | {} s | - | - |", v["natd"], v["haproxy"], v["haproxy_splice"], v["nginx_stream"], v["xdp_forward"])?;
    }
    let (to, from) = (&r["wan_packet_to_client_bytes"], &r["wan_packets_from_client_per_gib"]);
    writeln!(
        md,
        "| mean packet to the client (WAN veth, GSO counted once); H' | {} B | {} B; H' {} B | {} B | {} B | - | - |",
        to["natd"], to["haproxy"], to["haproxy_splice"], to["nginx_stream"], to["xdp_forward"]
    )?;
    writeln!(
        md,
        "| packets from the client per GiB (ACKs); H' | {} | {}; H' {} | {} | {} | - | - |",
        from["natd"], from["haproxy"], from["haproxy_splice"], from["nginx_stream"], from["xdp_forward"]
    )?;
    row(&mut md, &format!("resident bytes per idle connection ({})", r["plan"]["idle_connections"]), "idle_bytes_per_connection", " B", "memory_x_vs_haproxy", "X/H <= 1")?;
    writeln!(md, "\nSetup: {}", r["setup"].as_object().map(|o| o.iter().map(|(k, v)| format!("{k}: {}", v.as_str().unwrap_or(""))).collect::<Vec<_>>().join("; ")).unwrap_or_default())?;
    Ok(md)
}
