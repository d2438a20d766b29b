//! Relaying with splice(2): each direction moves bytes socket -> pipe ->
//! socket inside the kernel, so the payload never crosses into natd's
//! memory (what HAProxy does with `option splice-auto`).
//!
//! Each side's end of data is passed on as a shutdown of the other side's
//! write half, as `copy_bidirectional` does; an error on either direction
//! (a reset) ends both.
//!
//! A direction's pipe that is empty when the direction ends (at its end of
//! data, or at a reset between two reads, as most do) is kept for a next
//! relay (`PIPES_KEPT` a thread, as HAProxy keeps pipes up to `maxpipes`):
//! making and closing two pipes was six of a relayed TLS connection's ~34
//! system calls in natd (strace over `proxy-bench`'s handshakes), and a
//! kept pipe costs one (FIONREAD, to know it is empty). A pipe that holds
//! bytes is closed.

use std::{
    cell::RefCell,
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use tokio::{io::Interest, net::TcpStream, time::Instant};

/// Bytes one splice call may move: the pipe's default capacity (16 pages).
const CHUNK: usize = 64 * 1024;

/// Empty pipes each proxy thread keeps for its next relays: at most 16
/// (32 descriptors, and a few KiB of kernel memory each), enough for the
/// connections a busy proxy opens between two of its relays' ends.
const PIPES_KEPT: usize = 16;

thread_local! {
    /// This thread's kept pipes. Per thread, so taking one locks nothing;
    /// a relay may end on another thread than it began, and its pipes are
    /// kept there.
    static KEPT: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
}

/// A non-blocking pipe: what a direction's bytes pass through.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    /// A kept pipe, or a new one.
    fn take() -> io::Result<Self> {
        KEPT.try_with(|kept| kept.borrow_mut().pop()).ok().flatten().map_or_else(Self::new, Ok)
    }

    fn new() -> io::Result<Self> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: pipe2 fills two descriptors, which are then owned here.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fresh descriptors nothing else owns.
        Ok(unsafe { Self { read: OwnedFd::from_raw_fd(fds[0]), write: OwnedFd::from_raw_fd(fds[1]) } })
    }

    /// Keeps this pipe for a next relay if it is empty (its next relay
    /// would get what it holds) and fewer than `PIPES_KEPT` are kept; else
    /// closes it.
    fn keep_if_empty(self) {
        let mut queued: libc::c_int = 0;
        // SAFETY: FIONREAD writes the bytes the pipe holds into the int.
        let asked = unsafe { libc::ioctl(self.read.as_raw_fd(), libc::FIONREAD, &mut queued) };
        if asked != 0 || queued != 0 {
            return;
        }
        // A thread that is ending has no kept pipes any more: this one closes.
        let _ = KEPT.try_with(|kept| {
            let mut kept = kept.borrow_mut();
            if kept.len() < PIPES_KEPT {
                kept.push(self);
            }
        });
    }
}

/// A direction's pipe, kept if empty (`Pipe::keep_if_empty`) however the
/// direction ends: done, failed, or dropped midway (the other direction
/// failed, or the idle timeout).
struct Lease(Option<Pipe>);

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(pipe) = self.0.take() {
            pipe.keep_if_empty();
        }
    }
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: descriptors alive for the call, no offsets (sockets and pipes).
    let n = unsafe {
        libc::splice(from, std::ptr::null_mut(), to, std::ptr::null_mut(), len, libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK)
    };
    if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
}

/// One direction until `from` ends (then `to`'s write half is shut down)
/// or fails; notes in `last_read_ms` when bytes last came in.
async fn pump(from: &TcpStream, to: &TcpStream, last_read_ms: &AtomicU64, epoch: Instant) -> io::Result<()> {
    let lease = Lease(Some(Pipe::take()?));
    let pipe = lease.0.as_ref().expect("a lease holds its pipe until dropped");
    loop {
        // The pipe is empty here: EAGAIN can only mean the socket has no data.
        let n = loop {
            from.readable().await?;
            match from.try_io(Interest::READABLE, || splice(from.as_raw_fd(), pipe.write.as_raw_fd(), CHUNK)) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            // SAFETY: a live socket; SHUT_WR passes the end of data on.
            if unsafe { libc::shutdown(to.as_raw_fd(), libc::SHUT_WR) } != 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::NotConnected {
                    return Err(e);
                }
            }
            return Ok(());
        }
        last_read_ms.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        let mut left = n;
        while left > 0 {
            to.writable().await?;
            match to.try_io(Interest::WRITABLE, || splice(pipe.read.as_raw_fd(), to.as_raw_fd(), left)) {
                Ok(moved) => left -= moved,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// Both directions with splice until both have ended, one fails, or no
/// byte came in for `idle`. Ok(true): ended by the idle timeout.
pub(super) async fn splice_until_idle(client: &TcpStream, server: &TcpStream, idle: Duration) -> io::Result<bool> {
    let epoch = Instant::now();
    let last_read_ms = AtomicU64::new(0);
    let both = async { tokio::try_join!(pump(client, server, &last_read_ms, epoch), pump(server, client, &last_read_ms, epoch)) };
    tokio::pin!(both);
    loop {
        let seen = last_read_ms.load(Ordering::Relaxed);
        tokio::select! {
            result = &mut both => return result.map(|_| false),
            () = tokio::time::sleep_until(epoch + Duration::from_millis(seen) + idle) => {
                if last_read_ms.load(Ordering::Relaxed) == seen {
                    return Ok(true);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;
    use crate::proxy::test_support::{pair, rt};

    /// 8 MiB each way, byte for byte, each side's close passed on.
    #[test]
    fn both_directions_arrive_whole_and_closes_are_passed_on() {
        rt().block_on(async {
            let (mut client, natd_client) = pair().await;
            let (mut server, natd_server) = pair().await;
            let relay = tokio::spawn(async move { splice_until_idle(&natd_client, &natd_server, Duration::from_secs(10)).await });
            let data: Vec<u8> = (0..8 << 20).map(|i: u32| (i * 7 % 251) as u8).collect();
            let up = data.clone();
            let (mut server_read, mut server_write) = server.split();
            let (mut client_read, mut client_write) = client.split();
            let (to_server, at_server, to_client, at_client) = tokio::join!(
                async {
                    client_write.write_all(&up).await.unwrap();
                    client_write.shutdown().await.unwrap();
                },
                async {
                    let mut got = Vec::new();
                    server_read.read_to_end(&mut got).await.unwrap();
                    got
                },
                async {
                    server_write.write_all(&data).await.unwrap();
                    server_write.shutdown().await.unwrap();
                },
                async {
                    let mut got = Vec::new();
                    client_read.read_to_end(&mut got).await.unwrap();
                    got
                }
            );
            let ((), ()) = (to_server, to_client);
            assert!(at_server == data && at_client == data, "{} and {} bytes", at_server.len(), at_client.len());
            assert!(!relay.await.unwrap().unwrap(), "ended by the closes, not idle");
        });
    }

    /// The fds of this thread's kept pipes, and whether each is empty.
    fn kept() -> Vec<(RawFd, bool)> {
        KEPT.with_borrow(|kept| {
            kept.iter()
                .map(|p| {
                    let mut queued: libc::c_int = 0;
                    // SAFETY: FIONREAD writes the bytes queued into the int.
                    unsafe { libc::ioctl(p.read.as_raw_fd(), libc::FIONREAD, &mut queued) };
                    (p.read.as_raw_fd(), queued == 0)
                })
                .collect()
        })
    }

    /// A relay ended by both closes keeps its two (empty) pipes, and the
    /// next relay takes them instead of making new ones; a relay ended by a
    /// reset keeps no pipe with bytes in it.
    #[test]
    fn pipes_of_a_relay_that_ended_are_kept_empty_and_taken_again() {
        rt().block_on(async {
            KEPT.with_borrow_mut(Vec::clear);
            let relay_once = || async {
                let (mut client, natd_client) = pair().await;
                let (mut server, natd_server) = pair().await;
                let relay = tokio::spawn(async move { splice_until_idle(&natd_client, &natd_server, Duration::from_secs(10)).await });
                client.write_all(b"hello").await.unwrap();
                let mut got = [0u8; 5];
                server.read_exact(&mut got).await.unwrap();
                client.shutdown().await.unwrap();
                server.shutdown().await.unwrap();
                let mut rest = Vec::new();
                client.read_to_end(&mut rest).await.unwrap();
                relay.await.unwrap().unwrap();
            };
            relay_once().await;
            let first = kept();
            assert_eq!(first.len(), 2, "both directions' pipes kept: {first:?}");
            assert!(first.iter().all(|&(_, empty)| empty), "{first:?}");
            relay_once().await;
            let mut again: Vec<RawFd> = kept().iter().map(|&(fd, _)| fd).collect();
            let mut before: Vec<RawFd> = first.iter().map(|&(fd, _)| fd).collect();
            again.sort();
            before.sort();
            assert_eq!(again, before, "the second relay took the kept pipes and gave them back");

            // A server that resets while the client's bytes are on their way.
            let (mut client, natd_client) = pair().await;
            let (server, natd_server) = pair().await;
            let relay = tokio::spawn(async move { splice_until_idle(&natd_client, &natd_server, Duration::from_secs(10)).await });
            server.set_zero_linger().unwrap();
            drop(server);
            let _ = client.write_all(&vec![7u8; 1 << 20]).await;
            assert!(tokio::time::timeout(Duration::from_secs(2), relay).await.unwrap().unwrap().is_err());
            assert!(kept().iter().all(|&(_, empty)| empty), "no pipe kept with bytes in it: {:?}", kept());
            assert!(kept().len() <= 2, "a failed relay keeps no more than it took: {:?}", kept());
        });
    }

    #[test]
    fn a_relay_that_goes_quiet_ends_after_the_idle_timeout_and_a_busy_one_does_not() {
        rt().block_on(async {
            let (mut client, natd_client) = pair().await;
            let (mut server, natd_server) = pair().await;
            let relay = tokio::spawn(async move { splice_until_idle(&natd_client, &natd_server, Duration::from_millis(300)).await });
            // Bytes every 100 ms keep it alive past the timeout.
            for _ in 0..6 {
                client.write_all(b"x").await.unwrap();
                let mut byte = [0u8; 1];
                server.read_exact(&mut byte).await.unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert!(!relay.is_finished(), "a connection with traffic is not idle");
            let started = Instant::now();
            assert!(relay.await.unwrap().unwrap(), "ended by the idle timeout");
            assert!(started.elapsed() >= Duration::from_millis(150), "ended {:?} after the last byte", started.elapsed());
        });
    }

    #[test]
    fn a_reset_ends_both_directions() {
        rt().block_on(async {
            let (client, natd_client) = pair().await;
            let (_server, natd_server) = pair().await;
            let relay = tokio::spawn(async move { splice_until_idle(&natd_client, &natd_server, Duration::from_secs(10)).await });
            // SO_LINGER 0: the close is a reset.
            client.set_zero_linger().unwrap();
            drop(client);
            let result = tokio::time::timeout(Duration::from_secs(2), relay).await.expect("ended at once").unwrap();
            assert!(result.is_err(), "{result:?}");
        });
    }
}
