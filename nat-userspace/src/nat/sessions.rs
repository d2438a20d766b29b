//! natd's mirror of the live mappings, and what their liveness says: the
//! state of a TCP session, the timeout that applies, which ones expired.

use std::net::Ipv4Addr;

use anyhow::{Context as _, Result};
use nat_common::{CLOCK_TICK_NS, Endpoint, proto, tcp_flags};

use crate::{
    config::{Timeouts, sctp_state},
    datapath::Datapath,
};

/// natd's record of the live dynamic sessions, indexed by session slot
/// (the `LIVENESS` index each session has).
///
/// Four bytes a slot: the session's external endpoint, its address as a
/// position in the pool. The inside endpoint is not kept here: the
/// datapath's `INBOUND` entry of that external endpoint holds the inside
/// port and names the slot, and the slot's `LIVENESS` holds the inside
/// address, both mapped into natd (`Datapath::session_inside`). The lookup
/// by inside endpoint that a miss needs is `OUTBOUND`'s, in the kernel.
/// So at a million sessions natd's share is ~4 bytes a session, where a
/// hash map of inside endpoint to (external, slot, creation) cost 66
/// (capacity-bench).
///
/// Creation times (the mapping log's lifetimes) are kept only while
/// `log_mappings` is on, another 4 bytes a slot.
pub struct SessionTable {
    /// By slot: `packed(external)`; 0 is a slot with no session (protocol
    /// 0 is never translated). Allocated zeroed for every slot, so the
    /// pages are the kernel's zero page until a session is written to them.
    by_slot: Vec<u32>,
    /// The pool's addresses, network byte order, by position.
    pool_be: Vec<u32>,
    /// Slots at and past it hold no session: what the scans walk.
    end: usize,
    len: usize,
    /// natd's clock in seconds when each slot's session was made, plus one
    /// (0: made before creation times were kept).
    created_s: Option<Vec<u32>>,
}

impl SessionTable {
    /// For `capacity` slots, sessions on the external addresses `pool`.
    /// `creation_times`: keep when each session was made (`log_mappings`).
    pub fn new(capacity: u32, pool: &[Ipv4Addr], creation_times: bool) -> Self {
        let mut table = Self {
            by_slot: vec![0; capacity as usize],
            pool_be: pool.iter().map(|addr| u32::from_ne_bytes(addr.octets())).collect(),
            end: 0,
            len: 0,
            created_s: None,
        };
        table.keep_creation_times(creation_times);
        table
    }

    /// Starts (with all slots' times unknown) or stops keeping creation
    /// times: a reload of `log_mappings`.
    pub fn keep_creation_times(&mut self, on: bool) {
        match (on, self.created_s.is_some()) {
            (true, false) => self.created_s = Some(vec![0; self.by_slot.len()]),
            (false, true) => self.created_s = None,
            _ => {}
        }
    }

    /// Records session `slot`, mapped to `external`, made at `now_ns`
    /// (`coarse_now_ns`). An external address outside the pool, or a slot
    /// past the capacity, is an error: the datapath holds no such session.
    pub fn insert(&mut self, slot: u32, external: Endpoint, now_ns: u64) -> Result<()> {
        let packed = self.packed(&external).with_context(|| format!("{}:{} is not an external endpoint of the pool", external.addr(), external.port()))?;
        let entry = self.by_slot.get_mut(slot as usize).with_context(|| format!("session slot {slot} is past max_sessions"))?;
        if *entry == 0 {
            self.len += 1;
        }
        *entry = packed;
        self.end = self.end.max(slot as usize + 1);
        if let Some(created) = &mut self.created_s {
            created[slot as usize] = (now_ns / 1_000_000_000) as u32 + 1;
        }
        Ok(())
    }

    /// The external endpoint of session `slot`, if it has one.
    pub fn get(&self, slot: u32) -> Option<Endpoint> {
        self.unpacked(*self.by_slot.get(slot as usize)?)
    }

    /// Forgets session `slot`: its external endpoint and, if known, how long
    /// it lived at `now_ns`.
    pub fn remove(&mut self, slot: u32, now_ns: u64) -> Option<(Endpoint, Option<u64>)> {
        let entry = self.by_slot.get_mut(slot as usize)?;
        let packed = std::mem::take(entry);
        let external = self.unpacked(packed)?;
        self.len -= 1;
        let lifetime = self.created_s.as_mut().and_then(|created| {
            let made = std::mem::take(&mut created[slot as usize]);
            (made != 0).then(|| (now_ns / 1_000_000_000).saturating_sub(u64::from(made - 1)) * 1_000_000_000)
        });
        Some((external, lifetime))
    }

    pub const fn len(&self) -> usize {
        self.len
    }

    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every session: (slot, external endpoint), in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, Endpoint)> + '_ {
        self.by_slot[..self.end].iter().enumerate().filter_map(|(slot, &packed)| Some((slot as u32, self.unpacked(packed)?)))
    }

    /// port (network order) | pool position << 16 | protocol << 24.
    fn packed(&self, external: &Endpoint) -> Option<u32> {
        let position = self.pool_be.iter().position(|&addr| addr == external.addr_be)?;
        (external.proto != 0 && position <= u8::MAX as usize)
            .then(|| u32::from(external.port_be) | (position as u32) << 16 | u32::from(external.proto) << 24)
    }

    fn unpacked(&self, packed: u32) -> Option<Endpoint> {
        let proto_nr = (packed >> 24) as u8;
        if proto_nr == 0 {
            return None;
        }
        let addr_be = *self.pool_be.get((packed >> 16 & 0xff) as usize)?;
        Some(Endpoint::from_be(addr_be, packed as u16, proto_nr))
    }
}

/// The slots of the sessions idle past their timeout at `now`. Reads each
/// session's liveness in place (the LIVENESS array is mapped into this
/// process): no syscall per session.
pub fn expired_sessions(datapath: &Datapath, sessions: &SessionTable, timeouts: &Timeouts, now: u64) -> Result<Vec<u32>> {
    let mut expired = Vec::new();
    for (slot, external) in sessions.iter() {
        let live = datapath.liveness(slot)?;
        let (out, in_) = live.state_bits(external.proto);
        let timeout = timeouts.for_mapping(external.proto, out, in_);
        // The datapath stamps with the clock natd published, up to one tick
        // behind the packet: wait one tick more, so a session never expires
        // before its timeout (it may go up to two ticks after).
        if now.saturating_sub(live.last_seen_ns) > timeout.as_nanos() as u64 + CLOCK_TICK_NS {
            expired.push(slot);
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

    const POOL: [Ipv4Addr; 2] = [Ipv4Addr::new(203, 0, 113, 1), Ipv4Addr::new(203, 0, 113, 2)];
    const SECOND: u64 = 1_000_000_000;

    fn external(position: usize, port: u16, proto_nr: u8) -> Endpoint {
        Endpoint::new(POOL[position], port, proto_nr)
    }

    #[test]
    fn sessions_are_kept_by_slot_with_their_external_endpoint() {
        let mut table = SessionTable::new(16, &POOL, false);
        let (a, b, c) = (external(1, 40000, proto::TCP), external(0, 0, proto::ICMP), external(0, 65535, proto::SCTP));
        table.insert(3, a, 0).unwrap();
        table.insert(0, b, 0).unwrap();
        table.insert(15, c, 0).unwrap();
        assert_eq!((table.len(), table.get(3), table.get(0), table.get(15), table.get(4)), (3, Some(a), Some(b), Some(c), None));
        assert_eq!(table.iter().collect::<Vec<_>>(), [(0, b), (3, a), (15, c)], "in slot order");
        // A slot given again (never while in use) is overwritten, not counted twice.
        table.insert(3, external(0, 1, proto::UDP), 0).unwrap();
        assert_eq!((table.len(), table.get(3)), (3, Some(external(0, 1, proto::UDP))));
        assert_eq!(table.remove(3, 0), Some((external(0, 1, proto::UDP), None)));
        assert_eq!((table.remove(3, 0), table.remove(9, 0), table.len()), (None, None, 2));
        assert_eq!(table.iter().map(|(slot, _)| slot).collect::<Vec<_>>(), [0, 15]);
    }

    #[test]
    fn an_endpoint_off_the_pool_or_a_slot_past_the_capacity_is_refused() {
        let mut table = SessionTable::new(4, &POOL, false);
        let off_pool = table.insert(0, Endpoint::new(Ipv4Addr::new(198, 51, 100, 1), 1, proto::UDP), 0).unwrap_err();
        assert!(format!("{off_pool:#}").contains("198.51.100.1:1 is not an external endpoint of the pool"), "{off_pool:#}");
        let past = table.insert(4, external(0, 1, proto::UDP), 0).unwrap_err();
        assert!(format!("{past:#}").contains("slot 4 is past max_sessions"), "{past:#}");
        assert!(table.is_empty() && table.iter().next().is_none());
    }

    /// The mapping log's lifetimes: kept while `log_mappings` is on; a
    /// session made before it was turned on has none to give.
    #[test]
    fn lifetimes_are_known_for_sessions_made_while_creation_times_are_kept() {
        let mut table = SessionTable::new(4, &POOL, true);
        table.insert(0, external(0, 1, proto::UDP), 100 * SECOND + 7).unwrap();
        assert_eq!(table.remove(0, 161 * SECOND), Some((external(0, 1, proto::UDP), Some(61 * SECOND))));

        let mut table = SessionTable::new(4, &POOL, false);
        table.insert(0, external(0, 1, proto::UDP), 0).unwrap();
        table.keep_creation_times(true);
        table.insert(1, external(0, 2, proto::UDP), 5 * SECOND).unwrap();
        assert_eq!(table.remove(0, 9 * SECOND), Some((external(0, 1, proto::UDP), None)), "made before");
        assert_eq!(table.remove(1, 9 * SECOND), Some((external(0, 2, proto::UDP), Some(4 * SECOND))));
        table.insert(2, external(0, 3, proto::UDP), 0).unwrap();
        table.keep_creation_times(false);
        assert_eq!(table.remove(2, 9 * SECOND), Some((external(0, 3, proto::UDP), None)));
    }
}
