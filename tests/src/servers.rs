//! Real servers for the namespace tests and benchmarks: nginx in a
//! namespace, which says who it is, logs who it saw, and can be stopped,
//! frozen and started again as a failing server would; `openssl s_server`
//! with a self-signed certificate of its own, for TLS.

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
    dir: PathBuf,
    child: Option<Child>,
}

impl QuicServer {
    /// Makes the certificate, starts the server in `ns` and waits (bounded)
    /// until it says it is ready.
    pub fn start(ns: &Netns, addr: SocketAddrV4, name: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("{}-quic-{}-{}", ns.name, addr.ip(), addr.port()));
        std::fs::create_dir_all(&dir)?;
        // ECDSA P-256: what QUIC servers commonly present.
        self_signed_certificate(&dir, name, &["ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"])?;
        let log = std::fs::File::create(dir.join("server.log"))?;
        let script = quic_peer_script();
        let listen = addr.to_string();
        let child = ns
            .command(&["python3", script.to_str().unwrap(), "server", "--listen", &listen, "--name", name, "--cert", "cert.pem", "--key", "key.pem"])
            .current_dir(&dir)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting the aioquic server (python3 with aioquic: cargo xtask bootstrap installs it)")?;
        let server = Self { name: name.to_string(), addr, dir, child: Some(child) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let log = std::fs::read_to_string(server.dir.join("server.log")).unwrap_or_default();
            if log.contains("ready") {
                return Ok(server);
            }
            if log.contains("Error") {
                bail!("the aioquic server {name} failed: {log}");
            }
            thread::sleep(Duration::from_millis(50));
        }
        bail!("the aioquic server {name} was not ready on {addr} within 10 s")
    }
}

impl Drop for QuicServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
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
