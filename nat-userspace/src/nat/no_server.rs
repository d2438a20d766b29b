//! New flows to a forward with no server up: refused at once from the
//! forward's endpoint, as a closed port refuses them (a TCP RST, an ICMP
//! Port Unreachable), so a client fails fast rather than retrying into
//! silence. A token bucket bounds the answers for all clients together:
//! spoofed SYNs to a dead forward must not make the gateway a reflector
//! (the kernel bounds its own answers the same way, icmp_msgs_per_sec).

use std::time::Instant;

use nat_common::{icmp::ICMP_PORT_UNREACHABLE, proto};

use crate::packet::{Ipv4, destination_unreachable, tcp_reset};

/// Answers per second, all clients together...
pub const ANSWERS_PER_S: f64 = 1000.0;
/// ...with bursts of up to this many.
pub const ANSWER_BURST: f64 = 100.0;

/// The token bucket of the answers.
pub struct NoServerAnswers {
    tokens: f64,
    last: Option<Instant>,
}

impl Default for NoServerAnswers {
    fn default() -> Self {
        Self { tokens: ANSWER_BURST, last: None }
    }
}

impl NoServerAnswers {
    /// The answer to `refused` if the budget allows one now: `None` when
    /// over the budget, or when the packet is not to be answered (an RST).
    pub fn answer(&mut self, refused: &Ipv4, now: Instant) -> Option<Vec<u8>> {
        if !self.take(now) {
            return None;
        }
        match refused.proto() {
            proto::TCP => tcp_reset(refused.datagram()),
            _ => destination_unreachable(refused.dst(), refused.datagram(), ICMP_PORT_UNREACHABLE),
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        if let Some(last) = self.last {
            self.tokens = (self.tokens + now.saturating_duration_since(last).as_secs_f64() * ANSWERS_PER_S).min(ANSWER_BURST);
        }
        self.last = Some(now);
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn answers_are_bounded_by_a_token_bucket() {
        let mut answers = NoServerAnswers::default();
        let t0 = Instant::now();
        let burst = (0..1000).filter(|_| answers.take(t0)).count();
        assert_eq!(burst, ANSWER_BURST as usize, "a burst, then nothing");
        assert!(!answers.take(t0 + Duration::from_micros(500)), "half a token after 0.5 ms");
        assert!(answers.take(t0 + Duration::from_millis(1)), "one token a millisecond");
        let second = (0..5000).filter(|i| answers.take(t0 + Duration::from_millis(1) + Duration::from_micros(200 * i))).count();
        assert!((950..=1050).contains(&second), "about 1000 a second: {second} in 1 s");
    }
}
