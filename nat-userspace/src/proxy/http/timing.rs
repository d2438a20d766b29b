//! A client connection's timing: when its next request head is due
//! (`hello_timeout`), and how long it may be silent (`idle_timeout`), kept
//! by its socket (`Watched`) and by its requests and responses.

use std::{
    io,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    time::Instant,
};

/// What bounds a connection's wait now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Expiry {
    /// A request head that is not whole yet: `hello_timeout`.
    Head,
    /// A keep-alive wait, or a request in progress that went silent:
    /// `idle_timeout`.
    Idle,
}

#[derive(Debug)]
struct State {
    /// The last byte read or written.
    moved: Instant,
    /// Requests whose head has arrived and whose response is not done
    /// (several at once on HTTP/2).
    in_flight: u32,
    /// Since when the connection waits for a request (the accept, or the
    /// end of the last response).
    waiting_since: Instant,
    /// The first byte of the next request's head, while it is not whole.
    head_started: Option<Instant>,
    requests: u64,
    /// Tunnels open: a 101 passed on (the connection's bytes are the
    /// tunnel's, never a request head), or WebSocket streams of an HTTP/2
    /// connection (RFC 8441).
    tunnels: u32,
}

/// A connection's timing, kept by its socket (`Watched`), its requests and
/// their responses (`Tracked`).
#[derive(Debug)]
pub(super) struct Activity(Mutex<State>);

impl Activity {
    pub(super) fn new() -> Self {
        let now = Instant::now();
        Self(Mutex::new(State { moved: now, in_flight: 0, waiting_since: now, head_started: None, requests: 0, tunnels: 0 }))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn moved(&self, read: bool) {
        let now = Instant::now();
        let mut s = self.state();
        s.moved = now;
        if read && s.in_flight == 0 && s.tunnels == 0 && s.head_started.is_none() {
            s.head_started = Some(now);
        }
    }

    pub(super) fn request_started(&self) {
        let mut s = self.state();
        s.in_flight += 1;
        s.head_started = None;
        s.requests += 1;
    }

    pub(super) fn tunnel_opened(&self) {
        self.state().tunnels += 1;
    }

    /// An HTTP/2 stream's tunnel ended; the connection goes on.
    pub(super) fn tunnel_closed(&self) {
        let now = Instant::now();
        let mut s = self.state();
        s.tunnels = s.tunnels.saturating_sub(1);
        s.moved = now;
        if s.in_flight == 0 && s.tunnels == 0 {
            s.waiting_since = now;
        }
    }

    pub(super) fn response_ended(&self) {
        let now = Instant::now();
        let mut s = self.state();
        s.in_flight = s.in_flight.saturating_sub(1);
        s.moved = now;
        if s.in_flight == 0 {
            s.waiting_since = now;
            s.head_started = None;
        }
    }

    pub(super) fn requests(&self) -> u64 {
        self.state().requests
    }

    /// When the connection is closed unless something happens first.
    pub(super) fn deadline(&self, hello: Duration, idle: Duration) -> (Instant, Expiry) {
        let s = self.state();
        if s.in_flight > 0 || s.tunnels > 0 {
            (s.moved + idle, Expiry::Idle)
        } else if s.requests == 0 {
            (s.waiting_since + hello, Expiry::Head)
        } else if let Some(started) = s.head_started {
            (started + hello, Expiry::Head)
        } else {
            (s.waiting_since + idle, Expiry::Idle)
        }
    }
}

/// The client's socket, noting every byte that moves.
pub(super) struct Watched {
    pub(super) stream: TcpStream,
    pub(super) activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.moved(true);
        }
        result
    }
}

impl AsyncWrite for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.stream).poll_write(cx, buf);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.moved(false);
        }
        result
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.moved(false);
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_bounded_by_hello_timeout_and_waits_and_silence_by_idle_timeout() {
        let (hello, idle) = (Duration::from_secs(5), Duration::from_secs(60));
        let activity = Activity::new();
        let accepted = activity.state().waiting_since;
        assert_eq!(activity.deadline(hello, idle), (accepted + hello, Expiry::Head), "the first head, from the accept, even before a byte");
        activity.moved(true);
        assert_eq!(activity.deadline(hello, idle), (accepted + hello, Expiry::Head), "its bytes do not extend it");
        activity.request_started();
        let moved = activity.state().moved;
        assert_eq!(activity.deadline(hello, idle), (moved + idle, Expiry::Idle), "a request in progress: silence");
        activity.response_ended();
        let ended = activity.state().waiting_since;
        assert_eq!(activity.deadline(hello, idle), (ended + idle, Expiry::Idle), "keep-alive: the wait for the next request");
        activity.moved(false);
        assert_eq!(activity.deadline(hello, idle), (ended + idle, Expiry::Idle), "a write starts no head");
        activity.moved(true);
        let started = activity.state().head_started.unwrap();
        assert_eq!(activity.deadline(hello, idle), (started + hello, Expiry::Head), "the next head, from its first byte");
        assert_eq!(activity.requests(), 1);

        let streams = Activity::new();
        streams.request_started();
        streams.request_started();
        streams.response_ended();
        streams.moved(true);
        let moved = streams.state().moved;
        assert_eq!(streams.deadline(hello, idle), (moved + idle, Expiry::Idle), "HTTP/2: one stream of two still open, its bytes start no head");
        streams.response_ended();
        let ended = streams.state().waiting_since;
        assert_eq!(streams.deadline(hello, idle), (ended + idle, Expiry::Idle), "both done: the wait for the next request");

        let tunnel = Activity::new();
        tunnel.request_started();
        tunnel.tunnel_opened();
        tunnel.response_ended();
        tunnel.moved(true);
        let moved = tunnel.state().moved;
        assert_eq!(tunnel.deadline(hello, idle), (moved + idle, Expiry::Idle), "a tunnel's bytes are no head: silence both ways bounds it");
        // An HTTP/2 stream's tunnel ending leaves a connection that waits
        // for its next request again.
        tunnel.tunnel_closed();
        let closed = tunnel.state().moved;
        assert_eq!(tunnel.deadline(hello, idle), (closed + idle, Expiry::Idle), "a keep-alive wait from the tunnel's end");
        tunnel.moved(true);
        assert_eq!(tunnel.deadline(hello, idle).1, Expiry::Head, "and its next bytes are a head again");
    }
}
