//! A TCP proxy between an app and its Redis that can hold Redis's replies
//! back: a command reaches Redis and runs, and its answer arrives after the
//! client gave up on it. That is the "reply lost after the write happened"
//! which `outcome_unknown` exists for, made on demand: from the first
//! request that carries a marker (a user id in a purchase script's
//! arguments, say), every reply waits until [`ReplyDelayProxy::release`].

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// Hold replies once a request carries these bytes (none: never).
type Marker = Arc<Mutex<Option<Vec<u8>>>>;

pub struct ReplyDelayProxy {
    /// `redis://` URL of the proxy, for the app.
    pub url: String,
    marker: Marker,
    /// True while replies are held.
    holding: watch::Sender<bool>,
    accept: JoinHandle<()>,
}

impl ReplyDelayProxy {
    /// Forwards to the Redis on `port` of loopback.
    pub async fn start(port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("redis://{}", listener.local_addr().unwrap());
        let marker = Marker::default();
        let (holding, _) = watch::channel(false);
        let (for_accept, marker_for_accept) = (holding.clone(), Arc::clone(&marker));
        let accept = tokio::spawn(async move {
            // Dropped with the accept task: every connection ends with it.
            let mut connections = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(("127.0.0.1", port)).await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                let marker = Arc::clone(&marker_for_accept);
                connections.spawn(requests(
                    client_read,
                    server_write,
                    marker,
                    for_accept.clone(),
                ));
                connections.spawn(replies(server_read, client_write, for_accept.subscribe()));
            }
        });
        Self {
            url,
            marker,
            holding,
            accept,
        }
    }

    /// Holds every reply, on every connection, from the first request that
    /// carries `marker` on, until [`Self::release`].
    pub fn hold_replies_after(&self, marker: &[u8]) {
        *self.marker.lock().unwrap() = Some(marker.to_vec());
    }

    /// Lets the held replies through, and the ones after them.
    pub fn release(&self) {
        *self.marker.lock().unwrap() = None;
        self.holding.send_replace(false);
    }
}

impl Drop for ReplyDelayProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn requests(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    marker: Marker,
    holding: watch::Sender<bool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let chunk = &buf[..n];
        let marked = marker
            .lock()
            .unwrap()
            .as_ref()
            .is_some_and(|m| chunk.windows(m.len()).any(|w| w == m.as_slice()));
        if marked {
            // Before the request goes on: its reply is the first held.
            holding.send_replace(true);
        }
        if to.write_all(chunk).await.is_err() {
            return;
        }
    }
}

async fn replies(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut holding: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if holding.wait_for(|held| !held).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
