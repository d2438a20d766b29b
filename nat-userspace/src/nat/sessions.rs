//! natd's mirror of the live mappings, and what their liveness says: the
//! state of a TCP session, the timeout that applies, which ones expired.

use std::collections::HashMap;

use anyhow::Result;
use nat_common::{CLOCK_TICK_NS, Endpoint, proto, tcp_flags};

use crate::{
    config::{Timeouts, sctp_state},
    datapath::Datapath,
};

/// A live session as natd keeps it: where the inside endpoint is mapped to,
/// and its slot in the LIVENESS array. 16 bytes, 24 with its key: at a
/// million sessions the table's buckets cost ~52 bytes a session (a u64
/// creation time made it ~69).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionEntry {
    pub external: Endpoint,
    pub slot: u32,
    /// natd's clock in whole seconds when the mapping was made (the mapping
    /// log gives lifetimes in seconds).
    pub created_s: u32,
}
const _: () = assert!(std::mem::size_of::<SessionEntry>() == 16);

impl SessionEntry {
    /// Made at `now_ns` (`coarse_now_ns`).
    pub const fn new(external: Endpoint, slot: u32, now_ns: u64) -> Self {
        Self { external, slot, created_s: (now_ns / 1_000_000_000) as u32 }
    }

    /// How long it has lived at `now_ns`, to the second.
    pub const fn lifetime_ns(&self, now_ns: u64) -> u64 {
        (now_ns / 1_000_000_000).saturating_sub(self.created_s as u64) * 1_000_000_000
    }
}

/// inside endpoint -> session. foldhash: the aging scan walks every session
/// every second, and SipHash would be most of its cost.
pub type SessionTable = HashMap<Endpoint, SessionEntry, foldhash::fast::RandomState>;

/// The sessions idle past their timeout at `now`. Reads each session's
/// liveness in place (the LIVENESS array is mapped into this process): no
/// syscall per session.
pub fn expired_sessions(datapath: &Datapath, sessions: &SessionTable, timeouts: &Timeouts, now: u64) -> Result<Vec<Endpoint>> {
    let mut expired = Vec::new();
    for (inside, entry) in sessions {
        let live = datapath.liveness(entry.slot)?;
        let (out, in_) = live.state_bits(inside.proto);
        let timeout = timeouts.for_mapping(inside.proto, out, in_);
        // The datapath stamps with the clock natd published, up to one tick
        // behind the packet: wait one tick more, so a session never expires
        // before its timeout (it may go up to two ticks after).
        if now.saturating_sub(live.last_seen_ns) > timeout.as_nanos() as u64 + CLOCK_TICK_NS {
            expired.push(*inside);
        }
    }
    Ok(expired)
}

/// What `natd sessions` shows as the state, from the TCP flags (SCTP chunk
/// kinds) seen each way (`Liveness::state_bits`).
pub fn session_state(proto_nr: u8, flags_out: u8, flags_in: u8) -> &'static str {
    if proto_nr == proto::SCTP {
        return sctp_state(flags_out, flags_in).name();
    }
    if proto_nr != proto::TCP {
        return "active";
    }
    let seen = flags_out | flags_in;
    if seen & tcp_flags::RST != 0 {
        "reset"
    } else if seen & tcp_flags::FIN != 0 {
        "closing"
    } else if flags_out & flags_in & tcp_flags::ACK != 0 {
        "established"
    } else {
        "opening"
    }
}

/// The time natd keeps and publishes to the programs (`CLOCK`), in ns:
/// `CLOCK_MONOTONIC_COARSE` less the time no natd ran (`resume_clock`).
/// The programs stamp sessions with the value natd published last, so while
/// natd is down the clock stands still, and a restart resumes it where it
/// stood: no session expires for the minutes natd was away.
pub fn coarse_now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    (ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64).saturating_sub(CLOCK_PAUSED_NS.load(std::sync::atomic::Ordering::Relaxed))
}

/// How long the clock stood still while no natd ran (see `coarse_now_ns`).
static CLOCK_PAUSED_NS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Resumes the clock of an adopted datapath at `published`, the last value
/// the previous natd published: `coarse_now_ns` continues from there.
/// Returns the pause (ns). A clock ahead of this one (a reboot cannot leave
/// pins, so it is another natd's bug) resumes at the present.
pub fn resume_clock(published: u64) -> u64 {
    use std::sync::atomic::Ordering::Relaxed;
    CLOCK_PAUSED_NS.store(0, Relaxed);
    let pause = coarse_now_ns().saturating_sub(published);
    CLOCK_PAUSED_NS.store(pause, Relaxed);
    pause
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// RFC 5382 REQ-5 / RFC 7857: separate opening and closing timers;
    /// established once both sides have ACKed; FIN or RST: closing.
    #[test]
    fn tcp_has_opening_established_and_closing_timers() {
        let t = Timeouts::default();
        let (ack, fin, syn) = (tcp_flags::ACK, tcp_flags::FIN, tcp_flags::SYN);
        let t = Timeouts { tcp_opening: Duration::from_secs(75), tcp_closing: Duration::from_secs(240), ..t };
        assert_eq!(t.for_mapping(proto::TCP, syn, 0), t.tcp_opening);
        assert_eq!(t.for_mapping(proto::TCP, syn, syn), t.tcp_opening, "simultaneous open, not yet ACKed");
        assert_eq!(t.for_mapping(proto::TCP, syn | ack, syn | ack), t.tcp_established);
        assert_eq!(t.for_mapping(proto::TCP, ack | fin, ack), t.tcp_closing);
        assert_eq!(t.for_mapping(proto::TCP, syn | ack, syn | ack | tcp_flags::RST), t.tcp_closing, "RST: held 4 min (RFC 7857)");
        assert_eq!(t.for_mapping(proto::UDP, 0, 0), t.udp);
        assert_eq!(t.for_mapping(proto::ICMP, 0, 0), t.icmp);
    }

    /// SCTP's timers follow the first chunks seen each way: INIT / INIT
    /// ACK opening, established after COOKIE ACK or DATA both ways (DATA
    /// one way is not yet), SHUTDOWN* or ABORT closing; a new INIT after a
    /// close is recorded afresh by the datapath, so only the bits matter here.
    #[test]
    fn sctp_timers_follow_the_chunks_seen() {
        use nat_common::sctp_chunks::{ABORT, COOKIE_ACK, DATA, INIT, INIT_ACK, SHUTDOWN};
        let t = Timeouts::default();
        assert_eq!((t.sctp_init, t.sctp_established, t.sctp_closing), (Duration::from_secs(3), Duration::from_secs(210), Duration::from_secs(3)), "Linux conntrack's");
        let t = Timeouts { sctp_init: Duration::from_secs(11), sctp_established: Duration::from_secs(222), sctp_closing: Duration::from_secs(33), ..t };
        let sctp = proto::SCTP;
        assert_eq!(t.for_mapping(sctp, 0, 0), t.sctp_init, "nothing recorded: natd made the mapping for the INIT");
        assert_eq!(t.for_mapping(sctp, INIT, INIT_ACK), t.sctp_init);
        assert_eq!(t.for_mapping(sctp, INIT | DATA, INIT_ACK), t.sctp_init, "DATA one way only");
        assert_eq!(t.for_mapping(sctp, INIT, INIT_ACK | COOKIE_ACK), t.sctp_established);
        assert_eq!(t.for_mapping(sctp, DATA, DATA), t.sctp_established, "a handshake the gateway did not see");
        assert_eq!(t.for_mapping(sctp, INIT | DATA | SHUTDOWN, INIT_ACK | COOKIE_ACK | DATA), t.sctp_closing);
        assert_eq!(t.for_mapping(sctp, INIT, ABORT), t.sctp_closing);
        assert_eq!(session_state(sctp, 0, 0), "opening");
        assert_eq!(session_state(sctp, INIT, INIT_ACK | COOKIE_ACK), "established");
        assert_eq!(session_state(sctp, SHUTDOWN, COOKIE_ACK), "closing");
        assert_eq!(session_state(sctp, ABORT | SHUTDOWN, 0), "aborted");
        // The chunk types RFC 9260 §3.2 (and RFC 8260's I-DATA) number.
        let bits: Vec<u8> = [0, 1, 2, 3, 6, 7, 8, 11, 14, 64].map(nat_common::sctp_chunks::bit).to_vec();
        assert_eq!(bits, [DATA, INIT, INIT_ACK, 0, ABORT, SHUTDOWN, SHUTDOWN, COOKIE_ACK, SHUTDOWN, DATA]);
        // SCTP is filtered as UDP: its permits last the longer of the two.
        assert_eq!(t.permit_ttl_ns(sctp), t.permit_ttl_ns(proto::UDP));
        assert_eq!(t.permit_ttl_ns(proto::UDP), t.udp.max(t.sctp_established).as_nanos() as u64 + CLOCK_TICK_NS);
    }

    /// RFC 7857: the TCP state `natd sessions` shows.
    #[test]
    fn session_states_follow_the_flags_seen() {
        let (ack, fin, syn, rst) = (tcp_flags::ACK, tcp_flags::FIN, tcp_flags::SYN, tcp_flags::RST);
        assert_eq!(session_state(proto::TCP, syn, 0), "opening");
        assert_eq!(session_state(proto::TCP, syn | ack, syn | ack), "established");
        assert_eq!(session_state(proto::TCP, syn | ack | fin, syn | ack), "closing");
        assert_eq!(session_state(proto::TCP, syn, rst | ack), "reset");
        assert_eq!(session_state(proto::UDP, 0, 0), "active");
    }
}
