//! Active health checks of forward backends: one probe ([`check`]) and the
//! loop that repeats it per backend ([`Checker`]).
//!
//! A check either passes or says why not in words an operator can act on
//! ([`ProbeFailure`]); the daemon feeds the results into `health`'s fall/rise
//! state machine, so a single lost probe does not take a server out.
//!
//! Each check has one deadline, `timeout` after it starts, for all of its
//! steps (connect, send, answer): whichever step a dead or overloaded
//! server stalls, it holds its check loop for at most `timeout`.

use std::{
    fmt, io,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpStream, UdpSocket},
    sync::mpsc,
    task::JoinHandle,
    time::{self, MissedTickBehavior},
};

/// How a backend is checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// A TCP connection is accepted (the three-way handshake completes).
    Tcp,
    /// An HTTP/1.1 `GET path` is answered with a 2xx or 3xx status.
    Http {
        /// The request target, origin-form (RFC 9112 §3.2.1): starts with
        /// `/`, may carry a query.
        path: String,
        /// The `Host` header; the server's `address:port` when `None`.
        host: Option<String>,
    },
    /// A datagram `send` is answered with a datagram (starting with
    /// `expect`, when set).
    Udp { send: Vec<u8>, expect: Option<Vec<u8>> },
}

impl Probe {
    /// Whether the probe can be sent at all: an HTTP path with spaces or
    /// control characters, or a host that is not plain ASCII, would make a
    /// malformed request (or smuggle header lines into it).  The same rule
    /// for the path as the config's `health.path`; non-ASCII characters in
    /// it are sent percent-encoded (RFC 3986 §2.1).  Config loading may
    /// call this; [`check`] does, and fails every check of an invalid probe
    /// with [`ProbeFailure::InvalidProbe`].
    pub fn validate(&self) -> Result<()> {
        if let Probe::Http { path, host } = self {
            if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
                bail!("HTTP check path {path:?} is not a path starting with '/' without spaces or control characters");
            }
            // Visible ASCII (RFC 9110 §5.6.2 VCHAR): a host name, an
            // address, either with a port; no IDNA here.
            if let Some(host) = host
                && (host.is_empty() || !host.bytes().all(|byte| byte.is_ascii_graphic()) || host.contains('/'))
            {
                bail!("HTTP check host {host:?} is not an ASCII host name or host:port");
            }
        }
        Ok(())
    }
}

/// Why a check failed.
#[derive(Debug)]
pub enum ProbeFailure {
    /// The server's host answered that nothing listens on the port: a TCP
    /// RST to the SYN, or ICMP Port Unreachable to the UDP probe (which a
    /// connected UDP socket reports as `ECONNREFUSED`).
    Refused,
    /// No answer within the check's timeout; `waiting_for` names the step.
    TimedOut { after: Duration, waiting_for: &'static str },
    /// The HTTP status was not 2xx or 3xx.
    BadStatus(u16),
    /// The server answered, but not what the probe expects.
    UnexpectedAnswer(String),
    /// Any other socket error (no route to the server, reset mid-answer...).
    Io { during: &'static str, error: io::Error },
    /// The probe itself is malformed (see [`Probe::validate`]).
    InvalidProbe(String),
}

impl fmt::Display for ProbeFailure {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Refused => formatter.write_str("refused: nothing listens on the port (or a firewall rejects the check)"),
            Self::TimedOut { after, waiting_for } => {
                write!(formatter, "timed out after {after:?} {waiting_for} (server down, overloaded, or the check dropped on the way)")
            }
            Self::BadStatus(status) => write!(formatter, "bad status {status} (the HTTP check wants 2xx or 3xx)"),
            Self::UnexpectedAnswer(what) => write!(formatter, "unexpected answer: {what}"),
            Self::Io { during, error } => write!(formatter, "io error {during}: {error}"),
            Self::InvalidProbe(why) => write!(formatter, "invalid check: {why}"),
        }
    }
}

impl std::error::Error for ProbeFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// A status line longer than this is not one a health check needs to read
/// (the part that matters is the first 12 bytes).
const MAX_STATUS_LINE: usize = 1024;

/// Bytes of an unexpected answer quoted in the failure.
const QUOTED_ANSWER: usize = 64;

/// Runs one check of `server`, all of it within `timeout`.
pub async fn check(probe: &Probe, server: SocketAddrV4, timeout: Duration) -> Result<(), ProbeFailure> {
    probe.validate().map_err(|error| ProbeFailure::InvalidProbe(format!("{error:#}")))?;
    let deadline = time::Instant::now() + timeout;
    let step = Step { deadline, timeout };
    match probe {
        Probe::Tcp => step.connect(server).await.map(drop),
        Probe::Http { path, host } => check_http(&step, server, path, host.as_deref()).await,
        Probe::Udp { send, expect } => check_udp(&step, server, send, expect.as_deref()).await,
    }
}

/// The shared deadline of one check's steps.
struct Step {
    deadline: time::Instant,
    timeout: Duration,
}

impl Step {
    /// Runs one I/O step before the deadline; a refusal is
    /// [`ProbeFailure::Refused`], any other error names the step.
    async fn run<T>(&self, waiting_for: &'static str, io: impl Future<Output = io::Result<T>>) -> Result<T, ProbeFailure> {
        match time::timeout_at(self.deadline, io).await {
            Err(_elapsed) => Err(ProbeFailure::TimedOut { after: self.timeout, waiting_for }),
            Ok(Err(error)) if error.kind() == io::ErrorKind::ConnectionRefused => Err(ProbeFailure::Refused),
            Ok(Err(error)) => Err(ProbeFailure::Io { during: waiting_for, error }),
            Ok(Ok(value)) => Ok(value),
        }
    }

    async fn connect(&self, server: SocketAddrV4) -> Result<TcpStream, ProbeFailure> {
        self.run("connecting", TcpStream::connect(SocketAddr::V4(server))).await
    }
}

/// The one request the HTTP check sends. `Connection: close` so the server
/// does not hold the connection open for more requests (RFC 9112 §9.6).
fn http_request(server: SocketAddrV4, path: &str, host: Option<&str>) -> String {
    let host = host.map_or_else(|| server.to_string(), str::to_owned);
    let mut target = String::with_capacity(path.len());
    for byte in path.bytes() {
        if byte.is_ascii() {
            target.push(char::from(byte));
        } else {
            target.push_str(&format!("%{byte:02X}"));
        }
    }
    format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nUser-Agent: natd-health\r\n\r\n")
}

async fn check_http(step: &Step, server: SocketAddrV4, path: &str, host: Option<&str>) -> Result<(), ProbeFailure> {
    let mut stream = step.connect(server).await?;
    let request = http_request(server, path, host);
    step.run("sending the HTTP request", stream.write_all(request.as_bytes())).await?;
    let line = step.run("waiting for the HTTP status line", read_line(&mut stream)).await?;
    match parse_status_line(&line) {
        Some(status) if (200..400).contains(&status) => Ok(()),
        Some(status) => Err(ProbeFailure::BadStatus(status)),
        None if line.is_empty() => Err(ProbeFailure::UnexpectedAnswer("the connection closed without an HTTP status line".into())),
        None => Err(ProbeFailure::UnexpectedAnswer(format!("not an HTTP status line: {}", quote(&line)))),
    }
}

/// Reads up to the first line feed, the end of the stream, or
/// `MAX_STATUS_LINE` bytes, whichever comes first.
async fn read_line(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut line = Vec::with_capacity(128);
    let mut buffer = [0u8; 256];
    while line.len() < MAX_STATUS_LINE && !line.contains(&b'\n') {
        let read = stream.read(&mut buffer).await?;
        if read == 0 {
            break;
        }
        line.extend_from_slice(&buffer[..read]);
    }
    if let Some(end) = line.iter().position(|&byte| byte == b'\n') {
        line.truncate(end);
    }
    Ok(line)
}

/// The status code of an HTTP/1.x status line (RFC 9112 §4: `HTTP-version
/// SP status-code SP [reason-phrase]`, the version `HTTP/` DIGIT `.`
/// DIGIT, the code three digits). Lenient where it does not matter: the
/// reason phrase and the space before it may be missing. An interim 1xx
/// answer is reported as such (a check sends nothing that asks for one).
fn parse_status_line(line: &[u8]) -> Option<u16> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    match line {
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor, b' ', digits @ ..] if major.is_ascii_digit() && minor.is_ascii_digit() => {
            let (code, rest) = digits.split_at_checked(3)?;
            if !code.iter().all(u8::is_ascii_digit) || !(rest.is_empty() || rest[0] == b' ') {
                return None;
            }
            Some(code.iter().fold(0u16, |value, digit| value * 10 + u16::from(digit - b'0')))
        }
        _ => None,
    }
}

async fn check_udp(step: &Step, server: SocketAddrV4, send: &[u8], expect: Option<&[u8]>) -> Result<(), ProbeFailure> {
    // A fresh ephemeral socket per check, connected: the kernel hands it
    // only the server's datagrams (a late answer to an earlier check went
    // to that check's socket, now closed), and an ICMP Port Unreachable for
    // it surfaces as ECONNREFUSED on the next send or receive.
    let socket = step.run("opening a UDP socket", UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))).await?;
    step.run("connecting the UDP socket", socket.connect(SocketAddr::V4(server))).await?;
    step.run("sending the UDP check", socket.send(send)).await?;
    // Longer answers are cut to what is compared and quoted.
    let mut answer = vec![0u8; expect.map_or(0, <[u8]>::len).max(QUOTED_ANSWER)];
    let length = step.run("waiting for a UDP answer", socket.recv(&mut answer)).await?;
    answer.truncate(length);
    match expect {
        Some(expect) if !answer.starts_with(expect) => Err(ProbeFailure::UnexpectedAnswer(format!(
            "the UDP answer {} does not start with {}",
            quote(&answer),
            quote(expect)
        ))),
        _ => Ok(()),
    }
}

/// Bytes for a log line: printable ASCII as is, the rest escaped, at most
/// `QUOTED_ANSWER` bytes.
fn quote(bytes: &[u8]) -> String {
    let shown = &bytes[..bytes.len().min(QUOTED_ANSWER)];
    let more = if bytes.len() > shown.len() { "..." } else { "" };
    format!("\"{}\"{more}", shown.escape_ascii())
}

/// A backend as the checks and the daemon name it: the forward's index and
/// the backend's slot in it (`BACKENDS[forward * MAX_BACKENDS + slot]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendId {
    pub forward: u16,
    pub slot: u16,
}

/// One check's outcome, as a [`Checker`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckResult {
    pub id: BackendId,
    pub ok: bool,
    /// The [`ProbeFailure`] in words, when the check failed.
    pub why: Option<String>,
    /// When the check ended.
    pub at: Instant,
}

/// Checks below this interval are spaced this far apart: a zero interval
/// (a configuration slip) must not turn a checker into a busy loop.
pub const MIN_INTERVAL: Duration = Duration::from_millis(10);

/// The check loop of one backend, run as its own tokio task.
pub struct Checker {
    id: BackendId,
    server: SocketAddrV4,
    probe: Probe,
    interval: Duration,
    timeout: Duration,
    tx: mpsc::Sender<CheckResult>,
}

impl Checker {
    /// Starts checking `server` with `probe` every `interval` (at least
    /// [`MIN_INTERVAL`]), each check given `timeout`, and sends every
    /// result to `tx`. The first check runs at once: a server takes new
    /// flows only once its first check passes. Checks never overlap: one
    /// slower than the interval delays the next. The loop ends when the
    /// handle is dropped (or aborted) or the receiver is gone.
    ///
    /// Must be called within a tokio runtime.
    pub fn spawn(
        id: BackendId,
        server: SocketAddrV4,
        probe: Probe,
        interval: Duration,
        timeout: Duration,
        tx: mpsc::Sender<CheckResult>,
    ) -> CheckerHandle {
        let started = Instant::now();
        let checker = Checker { id, server, probe, interval: interval.max(MIN_INTERVAL), timeout, tx };
        CheckerHandle { id, started, task: tokio::spawn(checker.run()) }
    }

    async fn run(self) {
        // The first tick completes at once; Delay: after a slow check the
        // next waits a whole interval rather than firing a burst.
        let mut ticks = time::interval(self.interval);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let outcome = check(&self.probe, self.server, self.timeout).await;
            let result = CheckResult { id: self.id, ok: outcome.is_ok(), why: outcome.err().map(|failure| failure.to_string()), at: Instant::now() };
            if self.tx.send(result).await.is_err() {
                return;
            }
        }
    }
}

/// Owns a [`Checker`]'s task: dropping the handle (or [`CheckerHandle::abort`])
/// stops the checks, at once if one is in flight (its sockets close).
///
/// Results sent before the stop stay in the channel. When a backend's
/// settings change on reload and a new checker takes over the same
/// [`BackendId`], [`CheckerHandle::stop`] the old one first and ignore
/// results whose `at` is before the new handle's [`CheckerHandle::started`]:
/// those are the old checker's.
#[derive(Debug)]
pub struct CheckerHandle {
    id: BackendId,
    started: Instant,
    task: JoinHandle<()>,
}

impl CheckerHandle {
    pub fn id(&self) -> BackendId {
        self.id
    }

    /// When [`Checker::spawn`] was called: every result of this checker
    /// ends at or after it.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Stops the checks (the same as dropping the handle).
    pub fn abort(self) {
        drop(self);
    }

    /// Stops the checks and waits until the task is gone: after this, the
    /// checker sends nothing more.
    pub async fn stop(mut self) {
        self.task.abort();
        // Cancelled (or ended because the receiver went away): either way
        // the task is over; the result says nothing more.
        let _ = (&mut self.task).await;
    }

    /// Whether the loop has ended (its receiver is gone, or it was stopped).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

impl Drop for CheckerHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read, Write},
        net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
        sync::mpsc as std_mpsc,
        thread,
        time::{Duration, Instant},
    };

    use tokio::sync::mpsc;

    use super::{BackendId, CheckResult, Checker, MIN_INTERVAL, Probe, ProbeFailure, check, http_request, parse_status_line};

    const TIMEOUT: Duration = Duration::from_millis(500);
    /// How long a test helper thread waits for anything before it gives up.
    const HELPER_PATIENCE: Duration = Duration::from_secs(5);

    fn loopback(port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)
    }

    fn v4(listener: &TcpListener) -> SocketAddrV4 {
        match listener.local_addr().unwrap() {
            SocketAddr::V4(address) => address,
            other => panic!("not IPv4: {other}"),
        }
    }

    /// A loopback TCP port nothing listens on: bound, then closed. (Another
    /// process could take it in between; on loopback, within a test, that
    /// is not worth guarding against.)
    fn closed_tcp_port() -> SocketAddrV4 {
        let listener = TcpListener::bind(loopback(0)).unwrap();
        v4(&listener)
    }

    /// The next connection to `listener`, waiting at most `HELPER_PATIENCE`
    /// (polled: std's accept has no timeout of its own).
    fn accept_within(listener: &TcpListener) -> Option<TcpStream> {
        listener.set_nonblocking(true).unwrap();
        let started = Instant::now();
        while started.elapsed() < HELPER_PATIENCE {
            match listener.accept() {
                Ok((stream, _)) => {
                    stream.set_nonblocking(false).unwrap();
                    stream.set_read_timeout(Some(HELPER_PATIENCE)).unwrap();
                    return Some(stream);
                }
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => thread::sleep(Duration::from_millis(5)),
                Err(error) => panic!("accept: {error}"),
            }
        }
        None
    }

    fn http() -> Probe {
        Probe::Http { path: "/healthz".into(), host: None }
    }

    /// A loopback HTTP server that answers each of `answers` to one
    /// connection, in order, then ends; it hands each request it read to
    /// the returned channel. Every wait is bounded.
    fn http_responder(answers: Vec<&'static [u8]>) -> (SocketAddrV4, std_mpsc::Receiver<Vec<u8>>, thread::JoinHandle<()>) {
        let listener = TcpListener::bind(loopback(0)).unwrap();
        let address = v4(&listener);
        let (requests, received) = std_mpsc::channel();
        let thread = thread::spawn(move || {
            for answer in answers {
                let Some(mut stream) = accept_within(&listener) else { return };
                // Read the whole request before answering and closing:
                // closing with unread data would reset the connection and
                // could lose the answer.
                let mut request = Vec::new();
                let mut buffer = [0u8; 512];
                while !request.ends_with(b"\r\n\r\n") && request.len() < 4096 {
                    match stream.read(&mut buffer) {
                        Ok(0) | Err(_) => break,
                        Ok(read) => request.extend_from_slice(&buffer[..read]),
                    }
                }
                requests.send(request).unwrap();
                stream.write_all(answer).unwrap();
            }
        });
        (address, received, thread)
    }

    #[tokio::test]
    async fn tcp_up_against_a_listener() {
        let listener = TcpListener::bind(loopback(0)).unwrap();
        assert!(check(&Probe::Tcp, v4(&listener), TIMEOUT).await.is_ok());
    }

    #[tokio::test]
    async fn tcp_refused_by_a_closed_port() {
        let failure = check(&Probe::Tcp, closed_tcp_port(), TIMEOUT).await.unwrap_err();
        assert!(matches!(failure, ProbeFailure::Refused), "{failure:?}");
        assert!(failure.to_string().starts_with("refused"), "{failure}");
    }

    /// 2xx and 3xx are up (RFC 9110 §15.3, §15.4: the server handled the
    /// request, or points elsewhere, which still means it serves); 5xx and
    /// anything that is not an HTTP status line are down.
    #[tokio::test]
    async fn http_status_decides() {
        let (server, requests, responder) = http_responder(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            b"HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
            b"SSH-2.0-OpenSSH_9.6\r\n",
            b"",
        ]);
        assert!(check(&http(), server, TIMEOUT).await.is_ok(), "200");
        assert!(check(&http(), server, TIMEOUT).await.is_ok(), "302");
        let failure = check(&http(), server, TIMEOUT).await.unwrap_err();
        assert!(matches!(failure, ProbeFailure::BadStatus(503)), "{failure:?}");
        assert!(failure.to_string().starts_with("bad status 503"), "{failure}");
        let failure = check(&http(), server, TIMEOUT).await.unwrap_err();
        assert!(matches!(failure, ProbeFailure::UnexpectedAnswer(_)), "{failure:?}");
        assert!(failure.to_string().contains("SSH-2.0"), "the answer is quoted: {failure}");
        let failure = check(&http(), server, TIMEOUT).await.unwrap_err();
        assert!(matches!(failure, ProbeFailure::UnexpectedAnswer(_)), "closed without answering: {failure:?}");
        responder.join().unwrap();

        let request = requests.recv_timeout(HELPER_PATIENCE).unwrap();
        let expected = format!("GET /healthz HTTP/1.1\r\nHost: {server}\r\nConnection: close\r\nUser-Agent: natd-health\r\n\r\n");
        assert_eq!(String::from_utf8(request).unwrap(), expected);
    }

    /// The config accepts any path without spaces or control characters;
    /// what is not ASCII goes out percent-encoded (RFC 9112 §3.2: the
    /// request target is ASCII).
    #[test]
    fn non_ascii_paths_are_percent_encoded() {
        let probe = Probe::Http { path: "/état?q=ü".into(), host: None };
        assert!(probe.validate().is_ok());
        let request = http_request(loopback(80), "/état?q=ü", None);
        assert!(request.starts_with("GET /%C3%A9tat?q=%C3%BC HTTP/1.1\r\nHost: 127.0.0.1:80\r\n"), "{request:?}");
    }

    #[tokio::test]
    async fn http_host_header_is_the_configured_host() {
        let (server, requests, responder) = http_responder(vec![b"HTTP/1.0 204 No Content\r\n\r\n"]);
        let probe = Probe::Http { path: "/status?full=1".into(), host: Some("app.example".into()) };
        assert!(check(&probe, server, TIMEOUT).await.is_ok());
        responder.join().unwrap();
        let request = String::from_utf8(requests.recv_timeout(HELPER_PATIENCE).unwrap()).unwrap();
        assert!(request.starts_with("GET /status?full=1 HTTP/1.1\r\nHost: app.example\r\n"), "{request:?}");
    }

    /// A server that accepts and never answers fails the check when the
    /// timeout ends, not later.
    #[tokio::test]
    async fn http_silent_server_times_out() {
        let listener = TcpListener::bind(loopback(0)).unwrap();
        let server = v4(&listener);
        let silent = thread::spawn(move || {
            let Some(mut stream) = accept_within(&listener) else { return };
            // Hold the connection, reading, until the check gives up and
            // closes it (or the patience ends).
            let mut buffer = [0u8; 512];
            while matches!(stream.read(&mut buffer), Ok(read) if read > 0) {}
        });
        let timeout = Duration::from_millis(300);
        let started = Instant::now();
        let failure = check(&http(), server, timeout).await.unwrap_err();
        let took = started.elapsed();
        assert!(matches!(failure, ProbeFailure::TimedOut { waiting_for: "waiting for the HTTP status line", .. }), "{failure:?}");
        assert!(failure.to_string().starts_with("timed out after 300ms waiting for the HTTP status line"), "{failure}");
        assert!(took >= timeout && took < timeout + Duration::from_millis(700), "took {took:?}");
        silent.join().unwrap();
    }

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r"), Some(200));
        assert_eq!(parse_status_line(b"HTTP/1.0 404 Not Found"), Some(404));
        assert_eq!(parse_status_line(b"HTTP/1.1 204"), Some(204), "no reason phrase");
        assert_eq!(parse_status_line(b"HTTP/1.1 301 \r"), Some(301), "empty reason phrase");
        for garbage in [&b""[..], b"HTTP/1.1", b"HTTP/1.1 20", b"HTTP/1.1 2000 OK", b"HTTP/1.1 2x0 OK", b"HTTP/2 200", b"http/1.1 200 OK", b"SSH-2.0-OpenSSH"] {
            assert_eq!(parse_status_line(garbage), None, "{:?}", garbage.escape_ascii().to_string());
        }
    }

    #[tokio::test]
    async fn malformed_http_probes_are_refused_before_sending() {
        let listener = TcpListener::bind(loopback(0)).unwrap();
        for probe in [
            Probe::Http { path: "healthz".into(), host: None },
            Probe::Http { path: "/a b".into(), host: None },
            Probe::Http { path: "/\r\nX-Injected: 1".into(), host: None },
            Probe::Http { path: "/".into(), host: Some("a\r\nb".into()) },
            Probe::Http { path: "/".into(), host: Some(String::new()) },
            Probe::Http { path: "/".into(), host: Some("bücher.example".into()) },
        ] {
            assert!(probe.validate().is_err(), "{probe:?}");
            let failure = check(&probe, v4(&listener), TIMEOUT).await.unwrap_err();
            assert!(matches!(failure, ProbeFailure::InvalidProbe(_)), "{failure:?}");
        }
        assert!(http().validate().is_ok());
        assert!(Probe::Tcp.validate().is_ok());
    }

    /// A loopback UDP echo server for `count` datagrams (each wait bounded).
    fn udp_echo(count: usize) -> (SocketAddrV4, thread::JoinHandle<()>) {
        let socket = UdpSocket::bind(loopback(0)).unwrap();
        socket.set_read_timeout(Some(HELPER_PATIENCE)).unwrap();
        let SocketAddr::V4(address) = socket.local_addr().unwrap() else { unreachable!() };
        let thread = thread::spawn(move || {
            let mut buffer = [0u8; 1500];
            for _ in 0..count {
                let Ok((length, from)) = socket.recv_from(&mut buffer) else { return };
                socket.send_to(&buffer[..length], from).unwrap();
            }
        });
        (address, thread)
    }

    #[tokio::test]
    async fn udp_answers_with_and_without_expect() {
        let (server, echo) = udp_echo(3);
        let plain = Probe::Udp { send: b"ping".to_vec(), expect: None };
        assert!(check(&plain, server, TIMEOUT).await.is_ok());
        let matching = Probe::Udp { send: b"PING 42".to_vec(), expect: Some(b"PING".to_vec()) };
        assert!(check(&matching, server, TIMEOUT).await.is_ok());
        let other = Probe::Udp { send: b"ping".to_vec(), expect: Some(b"pong".to_vec()) };
        let failure = check(&other, server, TIMEOUT).await.unwrap_err();
        assert!(matches!(failure, ProbeFailure::UnexpectedAnswer(_)), "{failure:?}");
        assert!(failure.to_string().contains("\"ping\" does not start with \"pong\""), "{failure}");
        echo.join().unwrap();
    }

    /// Nothing listens: the host's ICMP Port Unreachable reaches the
    /// connected socket as ECONNREFUSED, a refusal, well before the timeout.
    #[tokio::test]
    async fn udp_refused_by_a_closed_port() {
        // A port held bound, so that no other test's socket takes it
        // meanwhile (a port freed here was once taken by a parallel test's
        // silent socket, and the probe timed out), and connected elsewhere,
        // so that it takes no datagram of the probe's: for the probe
        // nothing listens there.
        let holder = UdpSocket::bind(loopback(0)).unwrap();
        holder.connect(loopback(9)).unwrap();
        let SocketAddr::V4(closed) = holder.local_addr().unwrap() else { unreachable!() };
        let started = Instant::now();
        let failure = check(&Probe::Udp { send: b"ping".to_vec(), expect: None }, closed, Duration::from_secs(2)).await.unwrap_err();
        assert!(matches!(failure, ProbeFailure::Refused), "{failure:?}");
        assert!(started.elapsed() < Duration::from_secs(1), "refused at once, not timed out");
    }

    #[tokio::test]
    async fn udp_silence_times_out() {
        // Bound and never read: the datagram is queued, no answer comes.
        let silent = UdpSocket::bind(loopback(0)).unwrap();
        let SocketAddr::V4(server) = silent.local_addr().unwrap() else { unreachable!() };
        let failure = check(&Probe::Udp { send: b"ping".to_vec(), expect: None }, server, Duration::from_millis(200)).await.unwrap_err();
        assert!(matches!(failure, ProbeFailure::TimedOut { waiting_for: "waiting for a UDP answer", .. }), "{failure:?}");
    }

    const ID: BackendId = BackendId { forward: 3, slot: 7 };

    async fn next_result(rx: &mut mpsc::Receiver<CheckResult>, within: Duration) -> CheckResult {
        tokio::time::timeout(within, rx.recv()).await.expect("a result in time").expect("the checker is running")
    }

    /// The first check runs at once, later ones every interval; when the
    /// server goes away the failures say why; dropping the handle ends the
    /// checks (the checker's sender goes with its task, so the channel
    /// closes).
    #[tokio::test]
    async fn checker_reports_then_stops_when_dropped() {
        let listener = TcpListener::bind(loopback(0)).unwrap();
        let server = v4(&listener);
        let (tx, mut rx) = mpsc::channel(16);
        let spawned = Instant::now();
        let handle = Checker::spawn(ID, server, Probe::Tcp, Duration::from_millis(50), Duration::from_millis(200), tx);
        assert_eq!(handle.id(), ID);

        let first = next_result(&mut rx, Duration::from_millis(200)).await;
        assert_eq!((first.id, first.ok, first.why.as_deref()), (ID, true, None));
        assert!(first.at >= handle.started() && first.at - spawned < Duration::from_millis(200));
        let second = next_result(&mut rx, Duration::from_millis(500)).await;
        assert!(second.ok);
        assert!(second.at - first.at >= Duration::from_millis(40), "about one interval apart: {:?}", second.at - first.at);

        drop(listener);
        let mut failure = None;
        for _ in 0..20 {
            let result = next_result(&mut rx, Duration::from_millis(500)).await;
            if !result.ok {
                failure = Some(result);
                break;
            }
        }
        let failure = failure.expect("a failure within 20 results");
        assert!(failure.why.as_deref().unwrap().starts_with("refused"), "{failure:?}");

        drop(handle);
        // At most the results already queued, then the channel closes.
        let mut drained = 0;
        let closed = tokio::time::timeout(Duration::from_secs(1), async {
            while rx.recv().await.is_some() {
                drained += 1;
            }
        })
        .await;
        assert!(closed.is_ok(), "checks went on after the handle was dropped ({drained} results)");
        assert!(drained <= 16, "{drained}");
    }

    /// "The first check runs at once" does not depend on the interval.
    #[tokio::test]
    async fn checker_first_check_does_not_wait_for_the_interval() {
        let listener = TcpListener::bind(loopback(0)).unwrap();
        let (tx, mut rx) = mpsc::channel(4);
        let handle = Checker::spawn(ID, v4(&listener), Probe::Tcp, Duration::from_secs(3600), TIMEOUT, tx);
        assert!(next_result(&mut rx, Duration::from_millis(200)).await.ok);
        assert!(tokio::time::timeout(Duration::from_millis(200), rx.recv()).await.is_err(), "the second waits an interval");
        handle.stop().await;
        assert!(rx.recv().await.is_none(), "stopped: the sender is gone");
    }

    /// A zero interval is spaced to MIN_INTERVAL, not a busy loop.
    #[tokio::test]
    async fn checker_zero_interval_is_bounded() {
        let listener = TcpListener::bind(loopback(0)).unwrap();
        let (tx, mut rx) = mpsc::channel(64);
        let handle = Checker::spawn(ID, v4(&listener), Probe::Tcp, Duration::ZERO, TIMEOUT, tx);
        let first = next_result(&mut rx, Duration::from_millis(200)).await;
        let second = next_result(&mut rx, Duration::from_millis(500)).await;
        assert!(second.at - first.at >= MIN_INTERVAL - Duration::from_millis(2), "{:?}", second.at - first.at);
        handle.abort();
    }

    /// The checker ends by itself once nobody reads its results.
    #[tokio::test]
    async fn checker_ends_when_the_receiver_is_gone() {
        let listener = TcpListener::bind(loopback(0)).unwrap();
        let (tx, rx) = mpsc::channel(1);
        let handle = Checker::spawn(ID, v4(&listener), Probe::Tcp, Duration::from_millis(20), TIMEOUT, tx);
        drop(rx);
        for _ in 0..50 {
            if handle.is_finished() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the checker still runs a second after its receiver went away");
    }
}
