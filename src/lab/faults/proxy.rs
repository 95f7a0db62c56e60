//! The fault lab's network: one TCP proxy per seckill instance, between it
//! and Redis, whose link can be made slow or cut from outside the service.
//!
//! Its conditions, modelled on Toxiproxy's toxics (where they differ, it
//! says how):
//! - slow (`slow-net`, Toxiproxy's `latency`): every chunk, either way,
//!   arrives `latency ± jitter` after it was sent, in order, as over a slow
//!   link (not a sleep per chunk, which would add up under load);
//! - blackhole (`partition`): nothing crosses, either way, and nothing is
//!   dropped: what was sent waits and crosses when the link heals, as TCP
//!   retransmits across a partition shorter than its timeouts. Toxiproxy's
//!   nearest, `timeout` 0, drops the data and closes the connection when
//!   removed: a different fault (a partition long enough for TCP to give
//!   up). Here a connection ends when either side closes it (a client's
//!   timeout), with what was still held;
//! - reset (Toxiproxy's `reset_peer`, kept for tests): every connection is
//!   closed at once, and new ones as they come, while it lasts.
//!
//! Why not the `noxious` crate (a Rust port of Toxiproxy) or network
//! namespaces: `noxious` is a server driven over its own REST API, last
//! released in 2021 on tokio-util 0.6 and rand 0.8 (a second copy of each
//! here); namespaces need root and a veth pair per instance. The lab needs
//! two conditions (three with the reset) on loopback, set from the same process that judges the run:
//! about a hundred lines, tested below.

use std::time::Duration;

use rand::Rng;
use rand::SeedableRng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// The link's condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Passes everything at once.
    Up,
    /// As Toxiproxy's `latency`: each chunk is delayed by `latency ± jitter`.
    Slow { latency: Duration, jitter: Duration },
    /// Nothing crosses until it heals, and nothing is dropped.
    Blackhole,
    /// As Toxiproxy's `reset_peer`: connections are closed, new ones too.
    Reset,
}

/// A proxy to one Redis address; stops (and closes its connections) on drop.
pub struct FaultProxy {
    port: u16,
    link: watch::Sender<Link>,
    accept: JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `upstream`. `seed`
    /// draws the jitter, so a cell replays with the same delays.
    pub async fn start(upstream: std::net::SocketAddr, seed: u64) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let (link, _) = watch::channel(Link::Up);
        let for_accept = link.clone();
        let accept = tokio::spawn(async move {
            // Owned by the accept task: every connection ends with it.
            let mut connections = JoinSet::new();
            let mut n = 0u64;
            while let Ok((client, _)) = listener.accept().await {
                if *for_accept.borrow() == Link::Reset {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                for (from, to) in [(client_read, server_write), (server_read, client_write)] {
                    n += 1;
                    let rng = rand::rngs::StdRng::seed_from_u64(seed ^ n);
                    connections.spawn(pipe(from, to, for_accept.subscribe(), rng));
                }
                // Reap the finished ones so a long run does not grow the set.
                while connections.try_join_next().is_some() {}
            }
        });
        Ok(Self { port, link, accept })
    }

    /// `redis://` URL of the proxy, for an instance.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Sets the link's condition; it applies to the connections open now
    /// and to new ones.
    pub fn set(&self, link: Link) {
        self.link.send_replace(link);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// One direction of a connection: reads chunks and hands them, stamped with
/// when they may arrive, to a writer that waits for that instant.
async fn pipe(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut link: watch::Receiver<Link>,
    mut rng: rand::rngs::StdRng,
) {
    let (chunks, mut arriving) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let mut writer_link = link.clone();
    let writer = async move {
        while let Some((due, chunk)) = arriving.recv().await {
            tokio::time::sleep_until(due).await;
            // A blackhole holds what is in flight until it heals; a reset
            // ends the connection.
            loop {
                let now = *writer_link.borrow_and_update();
                match now {
                    Link::Blackhole => {
                        if writer_link.changed().await.is_err() {
                            return;
                        }
                    }
                    Link::Reset => return,
                    Link::Up | Link::Slow { .. } => break,
                }
            }
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
    };
    let reader = async move {
        let mut buf = vec![0u8; 16 * 1024];
        let mut last_due = Instant::now();
        loop {
            let read = tokio::select! {
                read = from.read(&mut buf) => read,
                // A reset cuts a connection that is idle, too.
                changed = link.changed() => {
                    if changed.is_err() || *link.borrow() == Link::Reset {
                        return;
                    }
                    continue;
                }
            };
            let n = match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let delay = match *link.borrow() {
                Link::Slow { latency, jitter } => {
                    let spread = jitter.as_micros() as i64;
                    let offset = if spread > 0 {
                        rng.random_range(-spread..=spread)
                    } else {
                        0
                    };
                    Duration::from_micros((latency.as_micros() as i64 + offset).max(0) as u64)
                }
                Link::Reset => return,
                Link::Up | Link::Blackhole => Duration::ZERO,
            };
            // In order: a chunk never overtakes the one before it.
            last_due = last_due.max(Instant::now() + delay);
            if chunks.send((last_due, buf[..n].to_vec())).is_err() {
                return;
            }
        }
    };
    // Whichever side ends first ends the connection's direction; the
    // other half is dropped with it.
    tokio::select! {
        () = writer => {}
        () = reader => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server, for the proxy to stand in front of.
    async fn echo() -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = stream.read(&mut buf).await {
                        if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn round_trip(stream: &mut TcpStream, bytes: &[u8]) -> std::io::Result<Vec<u8>> {
        stream.write_all(bytes).await?;
        let mut back = vec![0u8; bytes.len()];
        stream.read_exact(&mut back).await?;
        Ok(back)
    }

    #[tokio::test]
    async fn a_blackhole_holds_bytes_until_it_heals_and_loses_none() {
        let proxy = FaultProxy::start(echo().await, 1).await.unwrap();
        let mut stream = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
        assert_eq!(round_trip(&mut stream, b"before").await.unwrap(), b"before");
        proxy.set(Link::Blackhole);
        let held = tokio::time::timeout(
            Duration::from_millis(300),
            round_trip(&mut stream, b"during"),
        )
        .await;
        assert!(held.is_err(), "a blackhole let bytes through");
        proxy.set(Link::Up);
        // The bytes sent during the cut cross now, in order.
        let mut back = [0u8; 6];
        stream.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"during");
        assert_eq!(round_trip(&mut stream, b"after").await.unwrap(), b"after");
    }

    #[tokio::test]
    async fn a_slow_link_delays_each_way_and_keeps_the_order() {
        let proxy = FaultProxy::start(echo().await, 1).await.unwrap();
        let mut stream = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
        proxy.set(Link::Slow {
            latency: Duration::from_millis(100),
            jitter: Duration::from_millis(20),
        });
        let sent = std::time::Instant::now();
        assert_eq!(round_trip(&mut stream, b"abc").await.unwrap(), b"abc");
        // There and back: twice 80 ms at least.
        assert!(sent.elapsed() >= Duration::from_millis(160));
        for word in [&b"one"[..], b"two", b"six"] {
            stream.write_all(word).await.unwrap();
        }
        let mut back = [0u8; 9];
        stream.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"onetwosix");
    }

    #[tokio::test]
    async fn a_reset_cuts_open_connections_and_refuses_new_ones_until_it_heals() {
        let proxy = FaultProxy::start(echo().await, 1).await.unwrap();
        let mut open = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
        assert_eq!(round_trip(&mut open, b"x").await.unwrap(), b"x");
        proxy.set(Link::Reset);
        assert!(round_trip(&mut open, b"y").await.is_err());
        let mut new = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
        assert!(round_trip(&mut new, b"z").await.is_err());
        proxy.set(Link::Up);
        let mut healed = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
        assert_eq!(round_trip(&mut healed, b"ok").await.unwrap(), b"ok");
    }
}
