//! What the inbound benchmarks drive, each in a namespace a caller built
//! and owns: natd run from a config file, XDP_PASS programs (so the kernel
//! references get live frames on the same offloads as natd's veths),
//! nginx servers, HAProxy, wrk, and a steady stream of HTTP requests that
//! records when each one failed. Every process is stopped (and reaped) on
//! drop, also when the benchmark fails; files live in the temp dir under
//! names that carry the namespace's name (unique per run).

use std::{
    io::{Read as _, Write as _},
    mem::ManuallyDrop,
    net::{Ipv4Addr, SocketAddrV4, TcpStream},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use aya::{
    Ebpf,
    programs::{Xdp, XdpMode, xdp::XdpLinkId},
};
use nat_common::bench::names;
use nat_userspace::{BENCH_OBJECT, control::Stats, nat::forwards::ForwardView};

use crate::{
    natlab::{in_ns, natd_binary},
    netns::Netns,
};

static FILES: AtomicU32 = AtomicU32::new(0);

/// A private directory for one process's files: `<temp>/<ns>-<what>-<n>`.
fn private_dir(ns: &str, what: &str) -> Result<PathBuf> {
    let n = FILES.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("{ns}-{what}-{n}"));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// A `Netns` handle on a namespace someone else owns (never deleted by it).
fn borrowed(name: &str) -> ManuallyDrop<Netns> {
    ManuallyDrop::new(Netns { name: name.to_string() })
}

fn exec_in(ns: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).args(args);
    cmd
}

/// Sends `signal` to a child and waits up to `within` for it to exit; kills
/// it past that. Returns its exit status.
fn stop_child(child: &mut Child, signal: i32, within: Duration) -> Result<ExitStatus> {
    // `ip netns exec` execs the program: the child's pid is the program's.
    unsafe { libc::kill(child.id() as i32, signal) };
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("pid {} did not exit within {within:?} of signal {signal}: killed", child.id());
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// `natd run --lan LAN --wan WAN --config FILE` in a namespace.
pub struct Natd {
    child: Option<Child>,
    ns: String,
    path: PathBuf,
    dir: PathBuf,
}

impl Natd {
    /// Writes `config` (TOML) and starts natd with it; returns once it
    /// answers `natd status` (at most 10 s).
    pub fn start(ns: &Netns, lan: &str, wan: &str, config: &str) -> Result<Self> {
        let dir = private_dir(&ns.name, "natd")?;
        let config_path = dir.join("natd.toml");
        std::fs::write(&config_path, config)?;
        let log = std::fs::File::create(dir.join("natd.log"))?;
        let path = natd_binary()?;
        let child = exec_in(&ns.name, &[path.to_str().context("natd path")?, "run", "--lan", lan, "--wan", wan, "--config"])
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting natd")?;
        let mut natd = Self { child: Some(child), ns: ns.name.clone(), path, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = natd.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                natd.child = None;
                bail!("natd exited during start-up ({status}):\n{}", natd.log());
            }
            if natd.cli(&["status"])?.status.success() {
                return Ok(natd);
            }
            thread::sleep(Duration::from_millis(50));
        }
        bail!("natd did not answer `natd status` within 10 s:\n{}", natd.log())
    }

    /// Runs `natd ARGS` to completion in natd's namespace.
    pub fn cli(&self, args: &[&str]) -> Result<Output> {
        Ok(exec_in(&self.ns, &[self.path.to_str().context("natd path")?]).args(args).output()?)
    }

    fn query<T: serde::de::DeserializeOwned>(&self, what: &str) -> Result<T> {
        let out = self.cli(&[what, "--json"])?;
        ensure!(out.status.success(), "natd {what} failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).with_context(|| format!("natd {what} --json"))
    }

    pub fn forwards(&self) -> Result<Vec<ForwardView>> {
        self.query("forwards")
    }

    pub fn stats(&self) -> Result<Stats> {
        let mut all: Vec<Stats> = self.query("stats")?;
        all.pop().context("no natd in `natd stats`")
    }

    /// A datapath or daemon counter of `natd stats`, 0 when absent.
    pub fn counter(&self, name: &str) -> Result<u64> {
        Ok(self.stats()?.get(name).unwrap_or(0))
    }

    /// Waits until `natd forwards` shows `servers` servers up in all; how
    /// long that took. Fails naming what it showed last.
    pub fn wait_servers_up(&self, servers: usize, within: Duration) -> Result<Duration> {
        let started = Instant::now();
        loop {
            let views = self.forwards()?;
            let up = views.iter().flat_map(|f| &f.servers).filter(|s| s.health == "up").count();
            if up >= servers {
                return Ok(started.elapsed());
            }
            if started.elapsed() > within {
                bail!("{up} of {servers} servers up after {within:?}: {views:#?}\nnatd log:\n{}", self.log());
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("natd.log")).unwrap_or_default()
    }

    /// natd's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops natd with SIGINT (it detaches and puts back what it changed).
    pub fn stop(mut self) -> Result<ExitStatus> {
        let mut child = self.child.take().context("natd is not running")?;
        let status = stop_child(&mut child, libc::SIGINT, Duration::from_secs(10)).with_context(|| format!("stopping natd:\n{}", self.log()))?;
        ensure!(status.success(), "natd exited with {status}:\n{}", self.log());
        Ok(status)
    }
}

impl Drop for Natd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = stop_child(&mut child, libc::SIGINT, Duration::from_secs(10));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The bench object's XDP_PASS program, attached to interfaces of one
/// namespace while a kernel reference (nftables, HAProxy) runs: natd's
/// veths carry XDP programs, and attaching one changes a veth's offloads,
/// so the references get the same.
pub struct XdpPass {
    bench: Ebpf,
    links: Vec<XdpLinkId>,
}

impl XdpPass {
    pub fn load() -> Result<Self> {
        let mut bench = Ebpf::load(BENCH_OBJECT).context("loading the bench object")?;
        Self::program(&mut bench)?.load().context("loading the pass program")?;
        Ok(Self { bench, links: Vec::new() })
    }

    fn program(bench: &mut Ebpf) -> Result<&mut Xdp> {
        Ok(bench.program_mut(names::PASS).context("pass program")?.try_into()?)
    }

    /// Attaches to `ifnames` of `ns` (native mode).
    pub fn attach(&mut self, ns: &Netns, ifnames: &[&str]) -> Result<()> {
        let ifindexes = ifnames.iter().map(|i| ns.ifindex(i)).collect::<Result<Vec<_>>>()?;
        let _in_ns = ns.enter()?;
        for ifindex in ifindexes {
            let bench = &mut self.bench;
            let link = crate::bench::attach_when_free("XDP_PASS", || Ok(Self::program(bench)?.attach_to_if_index(ifindex, XdpMode::Driver)?))?;
            self.links.push(link);
        }
        Ok(())
    }

    pub fn detach(&mut self, ns: &Netns) -> Result<()> {
        let _in_ns = ns.enter()?;
        for link in std::mem::take(&mut self.links) {
            Self::program(&mut self.bench)?.detach(link)?;
        }
        Ok(())
    }
}

/// One nginx, a single process (`master_process off`, so killing it takes
/// the listening socket with it), answering every request with a short 200.
pub struct Nginx {
    child: Option<Child>,
    ns: String,
    dir: PathBuf,
    port: u16,
}

impl Nginx {
    /// Starts nginx on `port` of every address of `ns`; returns once it
    /// accepts connections (at most 5 s).
    pub fn start(ns: &Netns, port: u16) -> Result<Self> {
        let dir = private_dir(&ns.name, "nginx")?;
        let d = dir.display();
        let config = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 8192; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d};\n  keepalive_timeout 10;\n\
             \x20 server {{\n    listen {port} backlog=4096;\n    location / {{ return 200 \"ok\\n\"; }}\n  }}\n}}\n"
        );
        std::fs::write(dir.join("nginx.conf"), config)?;
        let mut nginx = Self { child: None, ns: ns.name.clone(), dir, port };
        nginx.spawn()?;
        Ok(nginx)
    }

    fn spawn(&mut self) -> Result<()> {
        let conf = self.dir.join("nginx.conf");
        let log = std::fs::File::create(self.dir.join("stderr.log"))?;
        let child = exec_in(&self.ns, &["nginx", "-p", self.dir.to_str().context("dir")?, "-e", "stderr", "-c", conf.to_str().context("conf")?])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting nginx")?;
        self.child = Some(child);
        let target = SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.port);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.child = None;
                bail!("nginx exited at start ({status}): {}", std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default());
            }
            let ns = borrowed(&self.ns);
            if in_ns(&ns, move || http_get(target, Duration::from_millis(200)).is_ok()).join().unwrap_or(false) {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(20));
        }
        bail!("nginx in {} does not answer on port {} after 5 s", self.ns, self.port)
    }

    /// SIGKILL, as a crash would: returns the moment the signal was sent,
    /// once the process is gone.
    pub fn kill(&mut self) -> Result<Instant> {
        let mut child = self.child.take().context("nginx is not running")?;
        let at = Instant::now();
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        child.wait()?;
        Ok(at)
    }

    /// Starts it again after `kill`.
    pub fn restart(&mut self) -> Result<()> {
        ensure!(self.child.is_none(), "nginx is running");
        self.spawn()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// HAProxy in `mode tcp`, one frontend on `bind`, round robin over
/// `servers`, each with `server_options` (the health checks).
pub struct Haproxy {
    child: Option<Child>,
    dir: PathBuf,
}

impl Haproxy {
    /// Starts it and returns once it listens (at most 5 s).
    pub fn start(ns: &Netns, bind: SocketAddrV4, servers: &[SocketAddrV4], server_options: &str) -> Result<Self> {
        let dir = private_dir(&ns.name, "haproxy")?;
        let mut config = String::from(
            // maxconn sets the file limit HAProxy asks for (about twice
            // it): under the 20,000 this machine allows.
            "global\n    maxconn 8000\n\
             defaults\n    mode tcp\n    timeout connect 1s\n    timeout client 10s\n    timeout server 10s\n",
        );
        config += &format!("frontend bench\n    bind {bind}\n    default_backend servers\nbackend servers\n    balance roundrobin\n");
        for (i, server) in servers.iter().enumerate() {
            config += &format!("    server s{i} {server} {server_options}\n");
        }
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, &config)?;
        let path = path.to_str().context("haproxy.cfg path")?.to_string();
        let check = exec_in(&ns.name, &["haproxy", "-c", "-q", "-f", &path]).output()?;
        ensure!(check.status.success(), "haproxy refuses its config: {}\n{config}", String::from_utf8_lossy(&check.stderr));
        let log = std::fs::File::create(dir.join("haproxy.log"))?;
        let child = exec_in(&ns.name, &["haproxy", "-db", "-f", &path]).stdout(Stdio::null()).stderr(log).spawn().context("starting haproxy")?;
        let mut haproxy = Self { child: Some(child), dir };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Some(status) = haproxy.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                haproxy.child = None;
                bail!("haproxy exited at start ({status}): {}", haproxy.log());
            }
            if in_ns(ns, move || TcpStream::connect_timeout(&bind.into(), Duration::from_millis(200)).is_ok()).join().unwrap_or(false) {
                return Ok(haproxy);
            }
            thread::sleep(Duration::from_millis(20));
        }
        bail!("haproxy does not listen on {bind} after 5 s: {}", haproxy.log())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("haproxy.log")).unwrap_or_default()
    }

    /// HAProxy's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn stop(mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            // SIGUSR1 would wait for the connections; SIGTERM stops at once.
            stop_child(&mut child, libc::SIGTERM, Duration::from_secs(5))?;
        }
        Ok(())
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = stop_child(&mut child, libc::SIGTERM, Duration::from_secs(5));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What one wrk run reported.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct WrkResult {
    pub requests_per_s: f64,
    pub requests: u64,
    pub seconds: f64,
    pub connect_errors: u64,
    pub read_errors: u64,
    pub write_errors: u64,
    pub timeouts: u64,
    pub non_2xx: u64,
    /// Request latency (connect to answer), ms: mean, 99th percentile, max.
    pub latency_avg_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_max_ms: f64,
}

/// A wrk duration ("850.00us", "5.01ms", "1.20s") in ms.
fn wrk_ms(text: &str) -> Option<f64> {
    let (number, factor) = if let Some(n) = text.strip_suffix("us") {
        (n, 1e-3)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix("m") {
        (n, 60e3)
    } else {
        (text.strip_suffix('s')?, 1e3)
    };
    number.parse::<f64>().ok().map(|v| v * factor)
}

impl WrkResult {
    pub fn errors(&self) -> u64 {
        self.connect_errors + self.read_errors + self.write_errors + self.timeouts + self.non_2xx
    }

    /// Reads wrk's report.
    pub fn parse(text: &str) -> Result<Self> {
        let mut r = Self::default();
        for line in text.lines().map(str::trim) {
            if line.starts_with("Latency Distribution") {
                continue;
            } else if let Some(v) = line.strip_prefix("Latency ") {
                let fields: Vec<&str> = v.split_whitespace().collect();
                r.latency_avg_ms = fields.first().and_then(|f| wrk_ms(f)).unwrap_or(0.0);
                r.latency_max_ms = fields.get(2).and_then(|f| wrk_ms(f)).unwrap_or(0.0);
            } else if let Some(v) = line.strip_prefix("99%") {
                r.latency_p99_ms = wrk_ms(v.trim()).unwrap_or(0.0);
            } else if let Some(v) = line.strip_prefix("Requests/sec:") {
                r.requests_per_s = v.trim().parse()?;
            } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
                r.non_2xx = v.trim().parse()?;
            } else if let Some(v) = line.strip_prefix("Socket errors:") {
                for part in v.split(',') {
                    let mut words = part.split_whitespace();
                    let (Some(kind), Some(n)) = (words.next(), words.next()) else { continue };
                    let n = n.parse()?;
                    match kind {
                        "connect" => r.connect_errors = n,
                        "read" => r.read_errors = n,
                        "write" => r.write_errors = n,
                        "timeout" => r.timeouts = n,
                        _ => {}
                    }
                }
            } else if let Some((n, rest)) = line.split_once(" requests in ") {
                r.requests = n.trim().parse()?;
                r.seconds = rest.split(|c: char| c == ',' || c.is_alphabetic()).next().unwrap_or("0").trim().parse().unwrap_or(0.0);
            }
        }
        ensure!(r.requests_per_s > 0.0 || r.requests == 0, "no Requests/sec in wrk's report:\n{text}");
        ensure!(text.contains("Requests/sec:"), "not a wrk report:\n{text}");
        Ok(r)
    }
}

/// wrk from `ns`, pinned to `cpu` with taskset, one thread, `connections`
/// connections, every request on a new connection (`Connection: close`).
pub fn wrk(ns: &Netns, cpu: usize, url: &str, connections: u32, seconds: u32) -> Result<WrkResult> {
    let out = exec_in(
        &ns.name,
        &["taskset", "-c", &cpu.to_string(), "wrk", "-t1", &format!("-c{connections}"), &format!("-d{seconds}s"), "--timeout", "2s", "--latency", "-H", "Connection: close", url],
    )
    .output()
    .context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success(), "wrk failed ({}): {}{text}", out.status, String::from_utf8_lossy(&out.stderr));
    WrkResult::parse(&text)
}

/// One HTTP/1.1 GET on a new connection (`Connection: close`): Ok when the
/// answer is a 200, else what went wrong. Every step within `timeout`.
pub fn http_get(target: SocketAddrV4, timeout: Duration) -> Result<(), String> {
    let mut conn = TcpStream::connect_timeout(&target.into(), timeout).map_err(|e| format!("connect: {e}"))?;
    conn.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    conn.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    conn.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n").map_err(|e| format!("write: {e}"))?;
    let mut answer = Vec::with_capacity(256);
    // A short answer: at most 64 KiB read, then the server closes.
    let mut buf = [0u8; 4096];
    while answer.len() < 65536 {
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("read: {e} (after {} bytes)", answer.len())),
        }
    }
    if answer.starts_with(b"HTTP/1.1 200") {
        Ok(())
    } else if answer.is_empty() {
        Err("closed without an answer".into())
    } else {
        Err(format!("answer {:?}", String::from_utf8_lossy(&answer[..answer.len().min(40)])))
    }
}

/// Waits until `want` GETs in a row through `target` from `ns` succeed
/// (at most `within`); how long that took.
pub fn wait_serving(ns: &Netns, target: SocketAddrV4, want: u32, within: Duration) -> Result<Duration> {
    let started = Instant::now();
    let mut in_a_row = 0;
    let mut last = String::new();
    while started.elapsed() < within {
        match in_ns(ns, move || http_get(target, Duration::from_millis(500))).join().unwrap_or_else(|_| Err("panicked".into())) {
            Ok(()) => {
                in_a_row += 1;
                if in_a_row >= want {
                    return Ok(started.elapsed());
                }
            }
            Err(e) => {
                in_a_row = 0;
                last = e;
                thread::sleep(Duration::from_millis(50));
            }
        }
    }
    bail!("{target} not serving after {within:?} (last: {last})")
}

/// One request of a `RequestStream`.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub start: Instant,
    pub end: Instant,
    /// `None`: a 200 came back.
    pub error: Option<String>,
}

/// Clients in a namespace, each sending GETs one after another (a new
/// connection each, `gap` apart), until `finish` or `limit` passes.
pub struct RequestStream {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<Vec<Outcome>>>,
}

impl RequestStream {
    pub fn start(ns: &Netns, target: SocketAddrV4, clients: usize, gap: Duration, timeout: Duration, limit: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..clients)
            .map(|_| {
                let stop = stop.clone();
                in_ns(ns, move || {
                    let started = Instant::now();
                    let mut outcomes = Vec::new();
                    // Bounded in time and in count.
                    while !stop.load(Ordering::Relaxed) && started.elapsed() < limit && outcomes.len() < 1_000_000 {
                        let start = Instant::now();
                        let error = http_get(target, timeout).err();
                        outcomes.push(Outcome { start, end: Instant::now(), error });
                        thread::sleep(gap);
                    }
                    outcomes
                })
            })
            .collect();
        Self { stop, threads }
    }

    /// Stops the clients; every request they made, in start order.
    pub fn finish(mut self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all: Vec<Outcome> = self.threads.drain(..).filter_map(|t| t.join().ok()).flatten().collect();
        all.sort_by_key(|o| o.start);
        all
    }
}

impl Drop for RequestStream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::WrkResult;

    #[test]
    fn reads_a_wrk_report() {
        let text = "Running 3s test @ http://203.0.113.1:8080/\n  1 threads and 50 connections\n  Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency     5.01ms    1.20ms    1.02s   80.00%\n    Req/Sec     9.80k   500.00    10.50k    70.00%\n  Latency Distribution\n     50%    4.00ms\n     99%  850.00us\n  29400 requests in 3.00s, 4.21MB read\n  Socket errors: connect 0, read 12, write 0, timeout 3\n  Non-2xx or 3xx responses: 2\nRequests/sec:   9800.12\nTransfer/sec:      1.40MB\n";
        let r = WrkResult::parse(text).unwrap();
        assert_eq!(r.requests, 29400);
        assert!((r.seconds - 3.0).abs() < 1e-9);
        assert!((r.requests_per_s - 9800.12).abs() < 1e-9);
        assert_eq!((r.connect_errors, r.read_errors, r.write_errors, r.timeouts, r.non_2xx), (0, 12, 0, 3, 2));
        assert_eq!(r.errors(), 17);
        for (got, want) in [(r.latency_avg_ms, 5.01), (r.latency_p99_ms, 0.85), (r.latency_max_ms, 1020.0)] {
            assert!((got - want).abs() < 1e-9, "{got} != {want}");
        }
    }
}
