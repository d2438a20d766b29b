//! Real servers for the namespace tests and benchmarks: nginx in a
//! namespace, which says who it is, logs who it saw, and can be stopped,
//! frozen and started again as a failing server would; `openssl s_server`
//! with a self-signed certificate of its own, for TLS; aioquic for QUIC;
//! Python's `h2` for WebSocket over HTTP/2 at an HTTP/2 server.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::PathBuf,
    process::{Child, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::netns::{Netns, run};

/// nginx (Debian nginx-light) on one address and port of a namespace: `/`
/// answers its name, `/blob` a 1 MiB file; the access log has one line per
/// request, the client's address first, then the request, and the
/// X-Forwarded-For, Forwarded and Host it came with (`requests`). One process (no master), so a
/// SIGSTOP freezes it whole.
pub struct Nginx {
    pub name: String,
    pub addr: SocketAddrV4,
    ns: String,
    dir: PathBuf,
    child: Option<Child>,
}

impl Nginx {
    pub const BLOB_LEN: usize = 1 << 20;

    /// The 1 MiB `/blob` body.
    pub fn blob_text() -> String {
        (0..Self::BLOB_LEN).map(|i| (b'a' + (i * 7 % 26) as u8) as char).collect()
    }

    /// Starts nginx in `ns` on `addr` and waits (bounded) until it accepts.
    pub fn start(ns: &Netns, addr: SocketAddrV4, name: &str) -> Result<Self> {
        Self::start_with(ns, addr, name, "", "$remote_addr")
    }

    /// `start`, with `listen ... proxy_protocol`: nginx reads a PROXY v1 or
    /// v2 header first, and its log (`clients`) has the address the header
    /// names, not the connection's.
    pub fn start_proxy_protocol(ns: &Netns, addr: SocketAddrV4, name: &str) -> Result<Self> {
        Self::start_with(ns, addr, name, " proxy_protocol", "$proxy_protocol_addr")
    }

    /// `start`, with `listen ... http2`: HTTP/2 with prior knowledge (h2c)
    /// only; the log's request line ends in "HTTP/2.0".
    pub fn start_http2(ns: &Netns, addr: SocketAddrV4, name: &str) -> Result<Self> {
        Self::start_with(ns, addr, name, " http2", "$remote_addr")
    }

    /// `listen`: what follows the address in nginx's `listen`; `client`:
    /// the variable the log takes the client's address from.
    fn start_with(ns: &Netns, addr: SocketAddrV4, name: &str, listen: &str, client: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("{}-nginx-{}-{}", ns.name, addr.ip(), addr.port()));
        std::fs::create_dir_all(dir.join("www"))?;
        std::fs::write(dir.join("www/blob"), Self::blob_text())?;
        std::fs::write(dir.join("www/trailed"), "trailed\n")?;
        let conf = format!(
            "daemon off; master_process off; pid {d}/nginx.pid; error_log {d}/error.log;\n\
             events {{ worker_connections 4096; }}\n\
             http {{ log_format who '{client} $request|$http_x_forwarded_for|$http_forwarded|$host'; access_log {d}/access.log who;\n\
             client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};\n\
             keepalive_timeout 300s; keepalive_requests 1000000;\n\
             server {{ listen {addr}{listen} reuseport backlog=4096; root {d}/www; default_type text/plain;\n\
             location = / {{ return 200 \"{name}\\n\"; }}\n\
             location = /trailer {{ add_trailer x-check done always; try_files /trailed =404; }} }} }}\n",
            d = dir.display()
        );
        std::fs::write(dir.join("nginx.conf"), conf)?;
        let mut nginx = Self { name: name.to_string(), addr, ns: ns.name.clone(), dir, child: None };
        nginx.spawn(ns)?;
        Ok(nginx)
    }

    fn spawn(&mut self, ns: &Netns) -> Result<()> {
        let conf = self.dir.join("nginx.conf");
        let child = ns
            .command(&["nginx", "-c", conf.to_str().context("nginx.conf path")?])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nginx (Debian nginx-light; `cargo xtask test` installs it)")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        let probe = format!("/dev/tcp/{}/{}", self.addr.ip(), self.addr.port());
        while Instant::now() < deadline {
            if ns.exec(&["bash", "-c", &format!("exec 3<>{probe}")]).is_ok() {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(20));
        }
        bail!("nginx {} did not accept on {} within 5 s: {}", self.name, self.addr, std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default())
    }

    /// Kills nginx: its port is closed (connections are refused) until
    /// `start_again`.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a stopped nginx again, with the same config and log.
    pub fn start_again(&mut self, ns: &Netns) -> Result<()> {
        assert_eq!(ns.name, self.ns, "nginx {} lives in {}", self.name, self.ns);
        self.stop();
        self.spawn(ns)
    }

    /// SIGSTOP: the kernel still completes handshakes into its backlog, but
    /// nothing is answered.
    pub fn freeze(&self) {
        self.signal(libc::SIGSTOP);
    }

    pub fn thaw(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, signal: i32) {
        if let Some(child) = &self.child {
            // `ip netns exec` execs nginx: the child's pid is nginx's.
            unsafe { libc::kill(child.id() as i32, signal) };
        }
    }

    /// The client address of every request logged so far.
    pub fn clients(&self) -> Vec<Ipv4Addr> {
        std::fs::read_to_string(self.dir.join("access.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|line| line.split(' ').next()?.parse().ok())
            .collect()
    }

    /// Every request logged so far.
    pub fn requests(&self) -> Vec<Logged> {
        std::fs::read_to_string(self.dir.join("access.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|line| {
                let (client, rest) = line.split_once(' ')?;
                // nginx writes a double quote and a backslash as \x22 and \x5C in its log.
                let mut fields = rest.split('|').map(|f| if f == "-" { String::new() } else { f.replace("\\x22", "\"").replace("\\x5C", "\\") });
                Some(Logged {
                    client: client.parse().ok()?,
                    request: fields.next()?,
                    x_forwarded_for: fields.next()?,
                    forwarded: fields.next()?,
                    host: fields.next()?,
                })
            })
            .collect()
    }
}

/// One line of nginx's access log; a header the request did not have is
/// empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    /// The connection's peer, or the PROXY header's client.
    pub client: Ipv4Addr,
    /// "GET / HTTP/1.1"
    pub request: String,
    pub x_forwarded_for: String,
    pub forwarded: String,
    pub host: String,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.thaw();
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `openssl s_server` on one address and port of a namespace, with a
/// self-signed certificate whose subject is CN=`name`; `GET /who` answers
/// `name`, `GET /blob` the 1 MiB `Nginx::blob_text()` (`-WWW` serves the
/// files of its directory). One connection at a time, as s_server serves
/// them.
pub struct TlsServer {
    pub name: String,
    pub addr: SocketAddrV4,
    dir: PathBuf,
    child: Option<Child>,
}

impl TlsServer {
    /// Makes the certificate, starts s_server in `ns` and waits (bounded)
    /// until it accepts.
    pub fn start(ns: &Netns, addr: SocketAddrV4, name: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("{}-tls-{}-{}", ns.name, addr.ip(), addr.port()));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("who"), format!("{name}\n"))?;
        std::fs::write(dir.join("blob"), Nginx::blob_text())?;
        self_signed_certificate(&dir, name, &["rsa:2048"])?;
        let accept = addr.to_string();
        let child = ns
            .command(&["openssl", "s_server", "-quiet", "-accept", &accept, "-cert", "cert.pem", "-key", "key.pem", "-WWW"])
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting openssl s_server")?;
        let server = Self { name: name.to_string(), addr, dir, child: Some(child) };
        let deadline = Instant::now() + Duration::from_secs(5);
        let probe = format!("exec 3<>/dev/tcp/{}/{}", addr.ip(), addr.port());
        while Instant::now() < deadline {
            if ns.exec(&["bash", "-c", &probe]).is_ok() {
                return Ok(server);
            }
            thread::sleep(Duration::from_millis(20));
        }
        bail!("openssl s_server {name} did not accept on {addr} within 5 s")
    }

    /// Kills s_server: its port is closed (connections are refused).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The QUIC peer script (aioquic): a server and a client.
pub fn quic_peer_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/quic_peer.py")
}

/// A QUIC server (aioquic, `scripts/quic_peer.py`) on one address and port
/// of a namespace, with a self-signed certificate of its own: a stream
/// "who" answers "NAME CLIENT_IP:PORT", the client's address as the server
/// saw it; "blob N" answers N bytes.
pub struct QuicServer {
    pub name: String,
    pub addr: SocketAddrV4,
    _process: ScriptServer,
}

impl QuicServer {
    /// Makes the certificate, starts the server in `ns` and waits (bounded)
    /// until it says it is ready.
    pub fn start(ns: &Netns, addr: SocketAddrV4, name: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("{}-quic-{}-{}", ns.name, addr.ip(), addr.port()));
        std::fs::create_dir_all(&dir)?;
        // ECDSA P-256: what QUIC servers commonly present.
        self_signed_certificate(&dir, name, &["ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"])?;
        let script = quic_peer_script();
        let listen = addr.to_string();
        let args = ["server", "--listen", &listen, "--name", name, "--cert", "cert.pem", "--key", "key.pem"];
        let process = ScriptServer::start(ns, dir, &script, &args, &format!("the aioquic server {name} on {addr}"), "aioquic")?;
        Ok(Self { name: name.to_string(), addr, _process: process })
    }
}

/// A Python test server (`python3 SCRIPT ARGS...`) in a namespace, run in
/// its own directory with its output in server.log there; killed, and its
/// directory removed, on drop.
struct ScriptServer {
    dir: PathBuf,
    child: Option<Child>,
}

impl ScriptServer {
    /// Starts it and waits (bounded) until it prints "ready" on a line of
    /// its own. `module`: what the script needs from PyPI, for the error.
    fn start(ns: &Netns, dir: PathBuf, script: &std::path::Path, args: &[&str], what: &str, module: &str) -> Result<Self> {
        let log = std::fs::File::create(dir.join("server.log"))?;
        let command: Vec<&str> = ["python3", script.to_str().context("the script's path")?].into_iter().chain(args.iter().copied()).collect();
        let child = ns
            .command(&command)
            .current_dir(&dir)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {what} (python3 with {module}: cargo xtask bootstrap installs it)"))?;
        let server = Self { dir, child: Some(child) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let log = server.log();
            if log.lines().any(|l| l.trim() == "ready") {
                return Ok(server);
            }
            if log.contains("Error") {
                bail!("{what} failed: {log}");
            }
            thread::sleep(Duration::from_millis(50));
        }
        bail!("{what} was not ready within 10 s: {}", server.log())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }
}

impl Drop for ScriptServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An HTTP/2 server (cleartext, prior knowledge; `scripts/h2_server.py`,
/// on Python's `h2`) on one address and port of a namespace, for
/// WebSocket over HTTP/2 (RFC 8441) at a server natd speaks HTTP/2 to: it
/// offers the extended CONNECT in its first SETTINGS unless started
/// without (`offers_extended_connect`), answers a WebSocket's CONNECT with
/// 200 and its stream's bytes with "NAME: " before them, any other request
/// with "NAME PATH"; `requests` gives every header block it got.
pub struct H2Server {
    process: ScriptServer,
}

impl H2Server {
    pub fn start(ns: &Netns, addr: SocketAddrV4, name: &str, offers_extended_connect: bool) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("{}-h2-{}-{}", ns.name, addr.ip(), addr.port()));
        std::fs::create_dir_all(&dir)?;
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/h2_server.py");
        let listen = addr.to_string();
        let mut args = vec!["--listen", &listen, "--name", name];
        if !offers_extended_connect {
            args.push("--no-connect-protocol");
        }
        let process = ScriptServer::start(ns, dir, &script, &args, &format!("the h2 server {name} on {addr}"), "h2")?;
        Ok(Self { process })
    }

    /// Every request's header block so far, in order, as (name, value).
    pub fn requests(&self) -> Vec<Vec<(String, String)>> {
        self.process
            .log()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| {
                let fields = v.get("headers")?.as_array()?;
                Some(fields.iter().filter_map(|f| Some((f.get(0)?.as_str()?.to_string(), f.get(1)?.as_str()?.to_string()))).collect())
            })
            .collect()
    }
}

/// key.pem and cert.pem in `dir`: a self-signed certificate for CN=`name`,
/// valid two days, its key made with `-newkey NEWKEY...`.
fn self_signed_certificate(dir: &std::path::Path, name: &str, newkey: &[&str]) -> Result<()> {
    let subject = format!("/CN={name}");
    let mut req = std::process::Command::new("openssl");
    req.args(["req", "-x509", "-newkey"]).args(newkey).args(["-nodes", "-keyout", "key.pem", "-out", "cert.pem", "-days", "2", "-subj", &subject]);
    run(req.current_dir(dir)).context("making a self-signed certificate").map(drop)
}
