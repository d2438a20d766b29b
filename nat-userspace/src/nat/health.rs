//! Per-server health, HAProxy-style: `fall` consecutive failed checks mark
//! a server down, `rise` consecutive good checks bring it back, so a single
//! lost probe or a single lucky one does not flap the Maglev table.
//!
//! Two inputs are combined:
//!
//! * **Check results** ([`ServerHealth::record`]) move the [`CheckState`]
//!   (Unknown, Up, Down).
//! * **The configured weight** ([`ServerHealth::set_weight`]): 0 means the
//!   operator is draining the server.
//!
//! The [`ServerStatus`] natd acts on is derived from both, with this
//! precedence: `Down` (checks say the server is gone; draining it changes
//! nothing) over `Draining` (weight 0) over the check state (`Up`, or
//! `Unknown` until the first check has run).  Only `Up` takes new flows
//! ([`ServerStatus::accepts_new_flows`]); a draining server keeps its
//! existing flows; what happens to the flows of a `Down` server is natd's
//! policy, not decided here.
//!
//! Transitions are reported on changes of the derived status, stamped with
//! the caller's `now`: this module never reads a clock, so tests and replays
//! are deterministic.
//!
//! The active checks come from `probe`; the passive signal from the
//! datapath's per-backend `Signals` counters, through [`passive_failure`].

use std::{fmt, time::Instant};

use nat_common::forward::{Signals, backend_state};

/// What the health checks alone say about a server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckState {
    /// No check has concluded yet (natd just started or the server was just
    /// added).  The server takes no new flows until its first check passes:
    /// sending traffic to a server nobody has seen answer risks a burst of
    /// failed connections.
    Unknown,
    /// The last `rise` checks passed (or the first check did).
    Up,
    /// The last `fall` checks failed.
    Down,
}

/// The status natd acts on: the check state combined with the weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerStatus {
    /// Not checked yet; no new flows.
    Unknown,
    /// Healthy with a weight above zero; takes new flows.
    Up,
    /// Checks fail; no new flows.
    Down,
    /// Weight 0 set by the operator; no new flows, existing flows continue.
    Draining,
}

impl ServerStatus {
    /// Whether the server gets Maglev slots (and so new flows).
    pub fn accepts_new_flows(self) -> bool {
        self == ServerStatus::Up
    }

    /// The `Backend::state` the datapath acts on.  `Unknown` is `DOWN`
    /// there: a server not checked yet takes no flows, as one that failed
    /// (`backend_state::DOWN` says so); `Draining` keeps its flows.
    pub fn backend_state(self) -> u8 {
        match self {
            ServerStatus::Up => backend_state::UP,
            ServerStatus::Unknown | ServerStatus::Down => backend_state::DOWN,
            ServerStatus::Draining => backend_state::DRAINING,
        }
    }
}

/// A change of [`ServerStatus`], for logs, metrics and table rebuilds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    pub from: ServerStatus,
    pub to: ServerStatus,
    pub at: Instant,
}

/// Thresholds, as HAProxy's `fall` and `rise` server options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthConfig {
    fall: u32,
    rise: u32,
}

/// `fall` or `rise` was 0: a threshold of zero results would change state
/// without any evidence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidHealthConfig;

impl fmt::Display for InvalidHealthConfig {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("health check fall and rise must be at least 1")
    }
}

impl std::error::Error for InvalidHealthConfig {}

impl HealthConfig {
    /// `fall` consecutive failures take a server down, `rise` consecutive
    /// successes bring a down server back.
    ///
    /// # Errors
    ///
    /// [`InvalidHealthConfig`] when either threshold is 0.
    pub fn new(fall: u32, rise: u32) -> Result<Self, InvalidHealthConfig> {
        if fall == 0 || rise == 0 {
            return Err(InvalidHealthConfig);
        }
        Ok(Self { fall, rise })
    }

    pub fn fall(&self) -> u32 {
        self.fall
    }

    pub fn rise(&self) -> u32 {
        self.rise
    }
}

impl Default for HealthConfig {
    /// HAProxy's defaults: `fall 3`, `rise 2`.
    fn default() -> Self {
        Self { fall: 3, rise: 2 }
    }
}

/// Health of one server.
#[derive(Clone, Debug)]
pub struct ServerHealth {
    config: HealthConfig,
    check_state: CheckState,
    consecutive_successes: u32,
    consecutive_failures: u32,
    weight: u32,
    last_change: Instant,
}

impl ServerHealth {
    /// A server not checked yet, with its configured weight; `now` becomes
    /// the time of the last change.
    pub fn new(config: HealthConfig, weight: u32, now: Instant) -> Self {
        Self {
            config,
            check_state: CheckState::Unknown,
            consecutive_successes: 0,
            consecutive_failures: 0,
            weight,
            last_change: now,
        }
    }

    /// Records the result of one active health check.
    ///
    /// From `Unknown` the first success goes `Up` at once (no reason to keep
    /// a fresh server idle for `rise` intervals) while `fall` failures go
    /// `Down`; from `Up`, `fall` consecutive failures go `Down`; from `Down`,
    /// `rise` consecutive successes go `Up`.  Any result resets the opposite
    /// counter, which is what makes the runs consecutive.
    pub fn record(&mut self, success: bool, now: Instant) -> Option<Transition> {
        let status_before = self.status();
        if success {
            self.consecutive_successes = self.consecutive_successes.saturating_add(1);
            self.consecutive_failures = 0;
        } else {
            self.consecutive_failures = self.consecutive_failures.saturating_add(1);
            self.consecutive_successes = 0;
        }
        self.check_state = match (self.check_state, success) {
            (CheckState::Unknown, true) => CheckState::Up,
            (CheckState::Unknown | CheckState::Up, false)
                if self.consecutive_failures >= self.config.fall =>
            {
                CheckState::Down
            }
            (CheckState::Down, true) if self.consecutive_successes >= self.config.rise => {
                CheckState::Up
            }
            (unchanged, _) => unchanged,
        };
        self.note_change(status_before, now)
    }

    /// Records the datapath's passive signal: connections to this server
    /// that were refused (e.g. answered with RST / ABORT) since the last
    /// check.  Any non-zero count is one failed check — the server answered,
    /// but not with service.  Zero carries no information (no traffic is not
    /// evidence of health) and changes nothing, so it neither counts as a
    /// success nor breaks a run of failures.
    pub fn record_passive_failures(
        &mut self,
        refused_since_last_check: u64,
        now: Instant,
    ) -> Option<Transition> {
        if refused_since_last_check == 0 {
            return None;
        }
        self.record(false, now)
    }

    /// Takes new `fall` and `rise` (a reload changed them), keeping the
    /// state and the runs counted so far: a reload does not send a healthy
    /// server back to `Unknown`.
    pub fn reconfigure(&mut self, config: HealthConfig) {
        self.config = config;
    }

    /// Sets the configured weight; 0 drains the server.
    pub fn set_weight(&mut self, weight: u32, now: Instant) -> Option<Transition> {
        let status_before = self.status();
        self.weight = weight;
        self.note_change(status_before, now)
    }

    /// The status natd acts on (see the module documentation for the
    /// precedence).
    pub fn status(&self) -> ServerStatus {
        match (self.check_state, self.weight) {
            (CheckState::Down, _) => ServerStatus::Down,
            (_, 0) => ServerStatus::Draining,
            (CheckState::Up, _) => ServerStatus::Up,
            (CheckState::Unknown, _) => ServerStatus::Unknown,
        }
    }

    /// The weight to give [`crate::nat::maglev::MaglevTable::build`]: the
    /// configured weight while `Up`, else 0 so the server gets no slots.
    pub fn effective_weight(&self) -> u32 {
        if self.status().accepts_new_flows() {
            self.weight
        } else {
            0
        }
    }

    /// What the checks alone say, ignoring the weight.
    pub fn check_state(&self) -> CheckState {
        self.check_state
    }

    /// The configured weight.
    pub fn weight(&self) -> u32 {
        self.weight
    }

    /// When [`ServerHealth::status`] last changed (or the server was
    /// created).
    pub fn last_change(&self) -> Instant {
        self.last_change
    }

    pub fn consecutive_successes(&self) -> u32 {
        self.consecutive_successes
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    pub fn config(&self) -> HealthConfig {
        self.config
    }

    fn note_change(&mut self, status_before: ServerStatus, now: Instant) -> Option<Transition> {
        let status_after = self.status();
        if status_after == status_before {
            return None;
        }
        self.last_change = now;
        Some(Transition {
            from: status_before,
            to: status_after,
            at: now,
        })
    }
}

/// What a backend's datapath counters say against it (`passive_failure`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PassiveFailure {
    /// It answered this many new connections with an RST.
    Refused(u64),
    /// It sent this many ICMP Destination Unreachable about its flows.
    Unreachable(u64),
    /// This many SYNs reached it a whole look ago, and not one SYN-ACK has
    /// come back since.
    Unanswered(u64),
}

impl fmt::Display for PassiveFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Refused(n) => write!(f, "passive: refused {n} connection(s) with a TCP RST"),
            Self::Unreachable(n) => write!(f, "passive: {n} ICMP destination unreachable from the server"),
            Self::Unanswered(n) => write!(f, "passive: {n} SYN(s) sent to the server got no SYN-ACK"),
        }
    }
}

/// Whether a backend's datapath counters say it failed, from three looks
/// at them (`older`, `last`, `now`, one poll apart): it refused connections
/// since the last look (RSTs before a handshake, or ICMP Destination
/// Unreachable about its flows), or SYNs reached it between the older look
/// and the last and not one SYN-ACK has come back since the older look.
/// Waiting a whole poll for the SYN-ACK means a SYN sent just before a look
/// and answered just after it is never taken for a dead server. Feed a
/// failure to [`ServerHealth::record`] as one failed check; `None` is no
/// evidence either way (no traffic, or traffic answered).
///
/// The counters only grow while the backend holds its slot; a counter
/// below its old value (the slot was reset for a new backend) is not
/// growth.
pub fn passive_failure(older: &Signals, last: &Signals, now: &Signals) -> Option<PassiveFailure> {
    let growth = |old: u64, new: u64| new.saturating_sub(old);
    if growth(last.resets, now.resets) > 0 {
        return Some(PassiveFailure::Refused(growth(last.resets, now.resets)));
    }
    if growth(last.unreachables, now.unreachables) > 0 {
        return Some(PassiveFailure::Unreachable(growth(last.unreachables, now.unreachables)));
    }
    let unanswered = growth(older.syns, last.syns);
    (unanswered > 0 && growth(older.syn_acks, now.syn_acks) == 0).then_some(PassiveFailure::Unanswered(unanswered))
}

#[cfg(test)]
mod tests {
    //! Every transition of the server health state machine, with timestamps.

    use std::time::{Duration, Instant};

    use nat_common::forward::{Signals, backend_state};

    use super::{
        CheckState, HealthConfig, InvalidHealthConfig, ServerHealth, ServerStatus, Transition,
        PassiveFailure, passive_failure,
    };

    /// A clock the tests advance by hand: the state machine only ever sees the
    /// `now` it is given.
    struct FakeClock {
        start: Instant,
        elapsed_seconds: u64,
    }

    impl FakeClock {
        fn new() -> Self {
            Self {
                start: Instant::now(),
                elapsed_seconds: 0,
            }
        }

        fn tick(&mut self) -> Instant {
            self.elapsed_seconds += 1;
            self.start + Duration::from_secs(self.elapsed_seconds)
        }
    }

    fn config(fall: u32, rise: u32) -> HealthConfig {
        HealthConfig::new(fall, rise).unwrap()
    }

    /// Records `count` identical results, asserting none of them transitions.
    fn record_quietly(health: &mut ServerHealth, success: bool, count: u32, clock: &mut FakeClock) {
        for _ in 0..count {
            assert_eq!(health.record(success, clock.tick()), None);
        }
    }

    /// A server brought Up by its first successful check.
    fn up_server(fall: u32, rise: u32, clock: &mut FakeClock) -> ServerHealth {
        let mut health = ServerHealth::new(config(fall, rise), 10, clock.tick());
        health.record(true, clock.tick()).unwrap();
        health
    }

    fn transition(from: ServerStatus, to: ServerStatus, at: Instant) -> Option<Transition> {
        Some(Transition { from, to, at })
    }

    #[test]
    fn new_server_is_unknown_and_takes_no_flows() {
        let mut clock = FakeClock::new();
        let created = clock.tick();
        let health = ServerHealth::new(HealthConfig::default(), 10, created);
        assert_eq!(health.status(), ServerStatus::Unknown);
        assert_eq!(health.check_state(), CheckState::Unknown);
        assert!(!health.status().accepts_new_flows());
        assert_eq!(health.effective_weight(), 0);
        assert_eq!(health.last_change(), created);
    }

    #[test]
    fn unknown_goes_up_on_first_success() {
        let mut clock = FakeClock::new();
        let mut health = ServerHealth::new(config(3, 5), 10, clock.tick());
        let now = clock.tick();
        assert_eq!(
            health.record(true, now),
            transition(ServerStatus::Unknown, ServerStatus::Up, now)
        );
        assert_eq!(health.last_change(), now);
        assert_eq!(health.effective_weight(), 10);
    }

    #[test]
    fn unknown_goes_down_after_fall_failures() {
        let mut clock = FakeClock::new();
        let mut health = ServerHealth::new(config(3, 2), 10, clock.tick());
        record_quietly(&mut health, false, 2, &mut clock);
        assert_eq!(health.status(), ServerStatus::Unknown);
        let now = clock.tick();
        assert_eq!(
            health.record(false, now),
            transition(ServerStatus::Unknown, ServerStatus::Down, now)
        );
        assert_eq!(health.last_change(), now);
    }

    #[test]
    fn unknown_with_some_failures_still_goes_up_on_a_success() {
        let mut clock = FakeClock::new();
        let mut health = ServerHealth::new(config(3, 2), 10, clock.tick());
        record_quietly(&mut health, false, 2, &mut clock);
        let now = clock.tick();
        assert_eq!(
            health.record(true, now),
            transition(ServerStatus::Unknown, ServerStatus::Up, now)
        );
    }

    #[test]
    fn up_goes_down_after_fall_consecutive_failures() {
        let mut clock = FakeClock::new();
        let mut health = up_server(3, 2, &mut clock);
        let went_up = health.last_change();
        record_quietly(&mut health, false, 2, &mut clock);
        assert_eq!(health.last_change(), went_up, "no change, no new timestamp");
        let now = clock.tick();
        assert_eq!(
            health.record(false, now),
            transition(ServerStatus::Up, ServerStatus::Down, now)
        );
        assert_eq!(health.effective_weight(), 0);
    }

    #[test]
    fn a_success_breaks_a_run_of_failures() {
        let mut clock = FakeClock::new();
        let mut health = up_server(3, 2, &mut clock);
        record_quietly(&mut health, false, 2, &mut clock);
        record_quietly(&mut health, true, 1, &mut clock);
        record_quietly(&mut health, false, 2, &mut clock);
        assert_eq!(health.status(), ServerStatus::Up);
        assert_eq!(health.consecutive_failures(), 2);
    }

    #[test]
    fn down_goes_up_after_rise_consecutive_successes() {
        let mut clock = FakeClock::new();
        let mut health = up_server(1, 3, &mut clock);
        health.record(false, clock.tick()).unwrap();
        assert_eq!(health.status(), ServerStatus::Down);
        record_quietly(&mut health, true, 2, &mut clock);
        let now = clock.tick();
        assert_eq!(
            health.record(true, now),
            transition(ServerStatus::Down, ServerStatus::Up, now)
        );
    }

    #[test]
    fn a_failure_breaks_a_run_of_successes_while_down() {
        let mut clock = FakeClock::new();
        let mut health = up_server(1, 3, &mut clock);
        health.record(false, clock.tick()).unwrap();
        record_quietly(&mut health, true, 2, &mut clock);
        record_quietly(&mut health, false, 1, &mut clock);
        record_quietly(&mut health, true, 2, &mut clock);
        assert_eq!(health.status(), ServerStatus::Down);
        assert!(health.record(true, clock.tick()).is_some());
    }

    #[test]
    fn repeated_results_in_a_settled_state_change_nothing() {
        let mut clock = FakeClock::new();
        let mut health = up_server(2, 2, &mut clock);
        record_quietly(&mut health, true, 10, &mut clock);
        record_quietly(&mut health, false, 1, &mut clock);
        health.record(false, clock.tick()).unwrap();
        record_quietly(&mut health, false, 10, &mut clock);
        assert_eq!(health.status(), ServerStatus::Down);
    }

    #[test]
    fn fall_and_rise_of_one_flip_on_every_result() {
        let mut clock = FakeClock::new();
        let mut health = up_server(1, 1, &mut clock);
        assert!(health.record(false, clock.tick()).is_some());
        assert!(health.record(true, clock.tick()).is_some());
        assert!(health.record(false, clock.tick()).is_some());
        assert_eq!(health.status(), ServerStatus::Down);
    }

    #[test]
    fn passive_refusals_count_as_failures() {
        let mut clock = FakeClock::new();
        let mut health = up_server(3, 2, &mut clock);
        assert_eq!(health.record_passive_failures(17, clock.tick()), None);
        assert_eq!(health.record(false, clock.tick()), None);
        let now = clock.tick();
        assert_eq!(
            health.record_passive_failures(1, now),
            transition(ServerStatus::Up, ServerStatus::Down, now)
        );
    }

    #[test]
    fn passive_refusals_reset_a_run_of_successes() {
        let mut clock = FakeClock::new();
        let mut health = up_server(1, 2, &mut clock);
        health.record(false, clock.tick()).unwrap();
        record_quietly(&mut health, true, 1, &mut clock);
        assert_eq!(health.record_passive_failures(3, clock.tick()), None);
        record_quietly(&mut health, true, 1, &mut clock);
        assert_eq!(health.status(), ServerStatus::Down);
    }

    #[test]
    fn zero_passive_refusals_carry_no_information() {
        let mut clock = FakeClock::new();
        let mut health = up_server(3, 2, &mut clock);
        record_quietly(&mut health, false, 2, &mut clock);
        assert_eq!(health.record_passive_failures(0, clock.tick()), None);
        assert_eq!(
            health.consecutive_failures(),
            2,
            "not reset by zero refusals"
        );
        let now = clock.tick();
        assert_eq!(
            health.record(false, now),
            transition(ServerStatus::Up, ServerStatus::Down, now)
        );
    }

    #[test]
    fn passive_refusals_take_unknown_down_not_up() {
        let mut clock = FakeClock::new();
        let mut health = ServerHealth::new(config(2, 2), 10, clock.tick());
        assert_eq!(health.record_passive_failures(5, clock.tick()), None);
        let now = clock.tick();
        assert_eq!(
            health.record_passive_failures(5, now),
            transition(ServerStatus::Unknown, ServerStatus::Down, now)
        );
    }

    #[test]
    fn weight_zero_drains_an_up_server_and_weight_restores_it() {
        let mut clock = FakeClock::new();
        let mut health = up_server(3, 2, &mut clock);
        let drained_at = clock.tick();
        assert_eq!(
            health.set_weight(0, drained_at),
            transition(ServerStatus::Up, ServerStatus::Draining, drained_at)
        );
        assert!(!health.status().accepts_new_flows());
        assert_eq!(health.effective_weight(), 0);
        assert_eq!(
            health.check_state(),
            CheckState::Up,
            "checks go on while draining"
        );
        let restored_at = clock.tick();
        assert_eq!(
            health.set_weight(4, restored_at),
            transition(ServerStatus::Draining, ServerStatus::Up, restored_at)
        );
        assert_eq!(health.effective_weight(), 4);
    }

    #[test]
    fn changing_a_nonzero_weight_is_not_a_transition() {
        let mut clock = FakeClock::new();
        let mut health = up_server(3, 2, &mut clock);
        let went_up = health.last_change();
        assert_eq!(health.set_weight(99, clock.tick()), None);
        assert_eq!(health.effective_weight(), 99);
        assert_eq!(health.last_change(), went_up);
    }

    #[test]
    fn a_draining_server_that_fails_goes_down_and_back_to_draining() {
        let mut clock = FakeClock::new();
        let mut health = up_server(2, 2, &mut clock);
        health.set_weight(0, clock.tick()).unwrap();
        record_quietly(&mut health, false, 1, &mut clock);
        let now = clock.tick();
        assert_eq!(
            health.record(false, now),
            transition(ServerStatus::Draining, ServerStatus::Down, now)
        );
        record_quietly(&mut health, true, 1, &mut clock);
        let now = clock.tick();
        assert_eq!(
            health.record(true, now),
            transition(ServerStatus::Down, ServerStatus::Draining, now)
        );
    }

    #[test]
    fn restoring_the_weight_of_a_down_server_keeps_it_down() {
        let mut clock = FakeClock::new();
        let mut health = up_server(1, 2, &mut clock);
        health.set_weight(0, clock.tick()).unwrap();
        health.record(false, clock.tick()).unwrap();
        assert_eq!(health.set_weight(0, clock.tick()), None);
        assert_eq!(health.set_weight(5, clock.tick()), None);
        assert_eq!(health.status(), ServerStatus::Down);
    }

    #[test]
    fn unknown_server_with_weight_zero_is_draining_until_weight_returns() {
        let mut clock = FakeClock::new();
        let created = clock.tick();
        let mut health = ServerHealth::new(config(3, 2), 0, created);
        assert_eq!(health.status(), ServerStatus::Draining);
        assert_eq!(
            health.record(true, clock.tick()),
            None,
            "Up underneath, still draining"
        );
        assert_eq!(health.check_state(), CheckState::Up);
        let now = clock.tick();
        assert_eq!(
            health.set_weight(1, now),
            transition(ServerStatus::Draining, ServerStatus::Up, now)
        );
    }

    #[test]
    fn draining_an_unknown_server_and_undraining_it_returns_to_unknown() {
        let mut clock = FakeClock::new();
        let mut health = ServerHealth::new(config(3, 2), 2, clock.tick());
        let now = clock.tick();
        assert_eq!(
            health.set_weight(0, now),
            transition(ServerStatus::Unknown, ServerStatus::Draining, now)
        );
        let now = clock.tick();
        assert_eq!(
            health.set_weight(2, now),
            transition(ServerStatus::Draining, ServerStatus::Unknown, now)
        );
    }

    #[test]
    fn zero_thresholds_are_rejected() {
        assert_eq!(HealthConfig::new(0, 2), Err(InvalidHealthConfig));
        assert_eq!(HealthConfig::new(3, 0), Err(InvalidHealthConfig));
        let defaults = HealthConfig::default();
        assert_eq!((defaults.fall(), defaults.rise()), (3, 2));
    }

    /// What the datapath is told for each status: only `Up` is `UP`, a
    /// server not checked yet is `DOWN` (no flows), draining keeps its flows.
    #[test]
    fn statuses_map_to_datapath_states() {
        assert_eq!(ServerStatus::Up.backend_state(), backend_state::UP);
        assert_eq!(ServerStatus::Unknown.backend_state(), backend_state::DOWN);
        assert_eq!(ServerStatus::Down.backend_state(), backend_state::DOWN);
        assert_eq!(ServerStatus::Draining.backend_state(), backend_state::DRAINING);
    }

    fn signals(syns: u64, syn_acks: u64, resets: u64, unreachables: u64) -> Signals {
        Signals { flows: syns, syns, syn_acks, resets, unreachables }
    }

    #[test]
    fn passive_failure_on_refusals() {
        let last = signals(10, 10, 2, 1);
        assert_eq!(passive_failure(&last, &last, &signals(10, 10, 3, 1)), Some(PassiveFailure::Refused(1)), "a reset");
        assert_eq!(passive_failure(&last, &last, &signals(10, 10, 2, 3)), Some(PassiveFailure::Unreachable(2)), "unreachables");
        assert_eq!(
            passive_failure(&last, &last, &signals(20, 20, 3, 1)),
            Some(PassiveFailure::Refused(1)),
            "a reset counts even while other SYNs are answered"
        );
    }

    #[test]
    fn passive_failure_on_unanswered_syns() {
        let older = signals(10, 9, 0, 0);
        let last = signals(13, 9, 0, 0);
        assert_eq!(passive_failure(&older, &last, &last), Some(PassiveFailure::Unanswered(3)), "SYNs a poll ago, no SYN-ACK since");
        assert_eq!(passive_failure(&older, &last, &signals(13, 10, 0, 0)), None, "a SYN-ACK came back: the server answers");
        assert_eq!(passive_failure(&older, &older, &signals(13, 9, 0, 0)), None, "SYNs since the last look only: their answers may be on the way");
    }

    #[test]
    fn no_traffic_or_answered_traffic_is_no_passive_failure() {
        let last = signals(10, 10, 2, 1);
        assert_eq!(passive_failure(&last, &last, &last), None, "nothing happened");
        assert_eq!(passive_failure(&last, &signals(15, 15, 2, 1), &signals(15, 15, 2, 1)), None, "every SYN answered");
        assert_eq!(passive_failure(&last, &last, &signals(10, 12, 2, 1)), None, "late SYN-ACKs alone");
        assert_eq!(passive_failure(&last, &last, &Signals::default()), None, "counters reset (slot reused) are not growth");
    }

    /// The daemon's loop: each poll with a passive failure counts once, like
    /// a failed check.
    #[test]
    fn passive_failures_feed_the_state_machine() {
        let mut clock = FakeClock::new();
        let mut health = up_server(2, 2, &mut clock);
        let readings = [signals(0, 0, 0, 0), signals(5, 5, 0, 0), signals(6, 5, 0, 0), signals(6, 5, 0, 0), signals(6, 5, 1, 0)];
        let mut transitions = Vec::new();
        for looks in readings.windows(3) {
            if passive_failure(&looks[0], &looks[1], &looks[2]).is_some() {
                transitions.extend(health.record(false, clock.tick()));
            }
        }
        assert_eq!(transitions.len(), 1);
        assert_eq!((transitions[0].from, transitions[0].to), (ServerStatus::Up, ServerStatus::Down));
    }
}
