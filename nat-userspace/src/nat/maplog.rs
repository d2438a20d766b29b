//! The mapping log (RFC 6888 REQ-12..15) and the log of refused flows.
//!
//! A mapping's lines go to natd's own log (readable, `natd: mapping made
//! ...`), or, compact, to a file or a syslog socket, one line per mapping
//! made and one per mapping removed:
//!
//! ```text
//! 1764500000.123 + udp 10.0.0.5:5353 203.0.113.1:20001
//! 1764500300.456 - udp 10.0.0.5:5353 203.0.113.1:20001 300
//! ```
//!
//! (wall-clock seconds, made or removed, protocol, inside, external, and on
//! removal the lifetime in seconds): what a CGN operator's log pipeline
//! ingests per port, as port-block loggers do per block. Never the
//! destinations a host talked to.

use std::{
    fs::File,
    io::{BufWriter, Write as _},
    os::unix::net::UnixDatagram,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use nat_common::{Endpoint, proto};

use crate::config::MappingLogTarget;

/// How often a refusal is logged at most: a full port space under load would
/// otherwise write a line per packet.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// syslog priority: facility daemon (3), severity info (6).
const SYSLOG_DAEMON_INFO: u8 = 3 * 8 + 6;

pub struct MappingLog {
    /// `log_mappings`: one line per mapping made and removed.
    enabled: bool,
    sink: Sink,
    last_refusal: Option<Instant>,
    /// Lines a file or syslog did not take (full disk, syslog not reading).
    pub lost: u64,
}

/// Where the lines go.
enum Sink {
    Log,
    /// Buffered: the packet loop does not wait on the disk for every line;
    /// flushed every aging tick (1 s) and on exit.
    File(BufWriter<File>),
    Syslog(UnixDatagram),
}

impl Sink {
    fn open(target: &MappingLogTarget) -> Result<Self> {
        Ok(match target {
            MappingLogTarget::Stderr => Sink::Log,
            MappingLogTarget::File(path) => {
                let file = File::options().create(true).append(true).open(path).with_context(|| format!("opening mapping_log {}", path.display()))?;
                Sink::File(BufWriter::new(file))
            }
            MappingLogTarget::Syslog(path) => {
                let socket = UnixDatagram::unbound().context("a socket for syslog")?;
                socket.connect(path).with_context(|| format!("connecting to syslog at {} (mapping_log)", path.display()))?;
                // A syslog that stops reading must not stall the packet loop.
                socket.set_nonblocking(true)?;
                Sink::Syslog(socket)
            }
        })
    }
}

impl MappingLog {
    pub fn new(enabled: bool, target: &MappingLogTarget) -> Result<Self> {
        Ok(Self { enabled, sink: Sink::open(target)?, last_refusal: None, lost: 0 })
    }

    /// A reload's `log_mappings` and `mapping_log` (a file is reopened:
    /// after logrotate moved it, lines go to the new one).
    pub fn reconfigure(&mut self, enabled: bool, target: &MappingLogTarget) -> Result<()> {
        self.flush();
        self.sink = Sink::open(target)?;
        self.enabled = enabled;
        Ok(())
    }

    /// Writes out what a file sink holds (every aging tick, and on exit).
    pub fn flush(&mut self) {
        if let Sink::File(file) = &mut self.sink
            && file.flush().is_err()
        {
            self.lost += 1;
        }
    }

    /// With `log_mappings`, one line per mapping made or removed, enough to
    /// tell which inside host held an external port when (wall clock, inside
    /// and external endpoints, lifetime), and never the destinations it
    /// talked to.
    pub fn mapping(&mut self, what: &str, inside: &Endpoint, external: &Endpoint, lifetime_ns: Option<u64>) {
        if !self.enabled {
            return;
        }
        let wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        if let Sink::Log = self.sink {
            let lifetime = lifetime_ns.map_or(String::new(), |ns| format!(" lifetime_s={}", ns / 1_000_000_000));
            tracing::info!(
                target: "natd::mapping",
                "mapping {what} time={}.{:03} proto={} inside={}:{} external={}:{}{lifetime}",
                wall.as_secs(),
                wall.subsec_millis(),
                proto::name(inside.proto),
                inside.addr(),
                inside.port(),
                external.addr(),
                external.port()
            );
            return;
        }
        let line = compact_line(wall, what == "created", inside, external, lifetime_ns);
        let written = match &mut self.sink {
            Sink::Log => unreachable!("handled above"),
            Sink::File(file) => file.write_all(line.as_bytes()).is_ok(),
            Sink::Syslog(socket) => {
                let message = format!("<{SYSLOG_DAEMON_INFO}>natd[{}]: {}", std::process::id(), line.trim_end());
                socket.send(message.as_bytes()).is_ok()
            }
        };
        if !written {
            self.lost += 1;
        }
    }

    /// A new flow refused, at most one line per `REFUSAL_LOG_INTERVAL`.
    pub fn refusal(&mut self, inside: &Endpoint, why: &str, refused_so_far: u64) {
        let now = Instant::now();
        if self.last_refusal.is_none_or(|t| now - t >= REFUSAL_LOG_INTERVAL) {
            self.last_refusal = Some(now);
            tracing::warn!(
                "new flow from {}:{} ({}) refused: {why}; {refused_so_far} refused so far (natd stats); existing flows are unaffected",
                inside.addr(),
                inside.port(),
                proto::name(inside.proto)
            );
        }
    }
}

/// One compact line (newline-terminated).
fn compact_line(wall: Duration, made: bool, inside: &Endpoint, external: &Endpoint, lifetime_ns: Option<u64>) -> String {
    let lifetime = lifetime_ns.map_or(String::new(), |ns| format!(" {}", ns / 1_000_000_000));
    format!(
        "{}.{:03} {} {} {}:{} {}:{}{lifetime}\n",
        wall.as_secs(),
        wall.subsec_millis(),
        if made { '+' } else { '-' },
        proto::name(inside.proto),
        inside.addr(),
        inside.port(),
        external.addr(),
        external.port()
    )
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn compact_lines_carry_time_direction_endpoints_and_lifetime() {
        let inside = Endpoint::new(Ipv4Addr::new(10, 0, 0, 5), 5353, proto::UDP);
        let external = Endpoint::new(Ipv4Addr::new(203, 0, 113, 1), 20001, proto::UDP);
        let made = compact_line(Duration::from_millis(1_764_500_000_123), true, &inside, &external, None);
        assert_eq!(made, "1764500000.123 + udp 10.0.0.5:5353 203.0.113.1:20001\n");
        let removed = compact_line(Duration::from_millis(1_764_500_300_456), false, &inside, &external, Some(300_200_000_000));
        assert_eq!(removed, "1764500300.456 - udp 10.0.0.5:5353 203.0.113.1:20001 300\n");
    }

    #[test]
    fn a_file_gets_the_lines_on_flush_and_syslog_gets_framed_datagrams() {
        let dir = std::env::temp_dir().join(format!("natd-maplog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (inside, external) = (Endpoint::new(Ipv4Addr::new(10, 0, 0, 5), 40000, proto::TCP), Endpoint::new(Ipv4Addr::new(203, 0, 113, 1), 20002, proto::TCP));

        let path = dir.join("mappings.log");
        let mut log = MappingLog::new(true, &MappingLogTarget::File(path.clone())).unwrap();
        log.mapping("created", &inside, &external, None);
        log.flush();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.ends_with(" + tcp 10.0.0.5:40000 203.0.113.1:20002\n"), "{text:?}");

        let socket_path = dir.join("log.sock");
        let syslog = UnixDatagram::bind(&socket_path).unwrap();
        let mut log = MappingLog::new(true, &MappingLogTarget::Syslog(socket_path)).unwrap();
        log.mapping("removed", &inside, &external, Some(7_000_000_000));
        let mut buf = [0u8; 512];
        let n = syslog.recv(&mut buf).unwrap();
        let message = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(message.starts_with(&format!("<30>natd[{}]: ", std::process::id())) && message.ends_with(" - tcp 10.0.0.5:40000 203.0.113.1:20002 7"), "{message}");
        log.enabled = false;
        log.mapping("created", &inside, &external, None);
        assert_eq!((log.lost, syslog.set_nonblocking(true).map(|()| syslog.recv(&mut buf).is_err()).unwrap()), (0, true), "off: nothing sent");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
