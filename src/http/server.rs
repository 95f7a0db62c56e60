//! Serving HTTP: `run` serves the router on a listener until a shutdown
//! future resolves. [`crate::startup::serve`] calls it for the binary; tests
//! call it with their own port-0 listener and stop signal.
//!
//! `run` is its own accept loop over hyper's HTTP/1 connection builder rather
//! than `axum::serve`, for the limits a hostile client calls for:
//! - `HEADER_TIMEOUT_MS`: a connection that has not sent a whole request head
//!   within this time is closed. hyper starts this timer whenever it waits
//!   for a head, so it bounds a half-sent request and an idle keep-alive
//!   connection alike;
//! - `WRITE_TIMEOUT_MS`: a response whose write has made no progress for
//!   this long (the client stopped reading) fails, which ends the
//!   connection and frees its slot ([`super::write_timeout`]);
//! - `MAX_CONNECTIONS`: connections past it wait in the listen backlog until
//!   one closes;
//! - `MAX_CONNECTIONS_PER_IP`: a new connection from a peer that has this
//!   many open is closed at once, unread ([`super::per_peer`]), so one host
//!   cannot take every slot while the others wait in the backlog;
//! - shutdown: stop accepting, let each connection finish its request, and
//!   close whatever is still open after `REQUEST_TIMEOUT_MS`, so a client
//!   that never finishes cannot hold the process (and its persister's drain)
//!   hostage.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tower::ServiceExt;

use super::per_peer::PerPeer;
use super::write_timeout::WriteTimeout;
use crate::state::AppState;

/// Serves `state` on `listener` until `shutdown` resolves, then lets in-flight
/// requests finish, closing what is still open after the request timeout.
pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    state.race.set_address(listener.local_addr()?);
    let closing = state.closing.clone();
    let (header_timeout, write_timeout, grace) = (
        state.header_timeout,
        state.write_timeout,
        state.request_timeout,
    );
    let peers = PerPeer::new(state.max_connections_per_ip);
    let max_connections = within_open_file_limit(state.max_connections);
    let permits = Arc::new(Semaphore::new(max_connections));
    let app = crate::http::router(state);
    let (stop, stopping) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = Arc::clone(&permits).acquire_owned() => permit.context("connection limit closed")?,
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    tracing::warn!(%err, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(peer_slot) = peers.admit(peer.ip()) else {
            // Closed unread: answering would mean reading its request and
            // writing to it, on a connection of the one host we refuse to
            // spend on. Its global permit returns with `permit`.
            tracing::debug!(%peer, "MAX_CONNECTIONS_PER_IP reached; connection closed");
            continue;
        };
        while connections.try_join_next().is_some() {}
        let (app, mut stopping) = (app.clone(), stopping.clone());
        connections.spawn(async move {
            let _slots = (permit, peer_slot);
            let _ = stream.set_nodelay(true);
            let service =
                hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
                    request.extensions_mut().insert(ConnectInfo(peer));
                    app.clone().oneshot(request)
                });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout);
            let connection = builder.serve_connection(
                TokioIo::new(WriteTimeout::new(stream, write_timeout)),
                service,
            );
            tokio::pin!(connection);
            let served = tokio::select! {
                served = connection.as_mut() => served,
                () = async { let _ = stopping.wait_for(|stop| *stop).await; } => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(err) = served {
                tracing::debug!(%peer, %err, "connection ended with an error");
            }
        });
    }
    drop(listener);
    // Ends endless responses (the SSE feed), then every connection's
    // keep-alive; requests under way finish within the request timeout.
    closing.send_replace(true);
    stop.send_replace(true);
    let drained = tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = connections.len(),
            grace_ms = grace.as_millis() as u64,
            "connections still open after the grace period; closing them"
        );
        connections.abort_all();
        while connections.join_next().await.is_some() {}
    }
    Ok(())
}

/// Descriptors kept for Redis, the database, the persister and files.
const FD_RESERVE: u64 = 256;

/// `wanted` connections, or fewer if the open-file limit leaves no room for
/// them (after raising the soft limit to the hard one): running out of
/// descriptors would break the Redis and database connections instead.
fn within_open_file_limit(wanted: usize) -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on our own process with a valid struct.
    let soft = unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return wanted;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit.rlim_cur = limit.rlim_max;
            }
        }
        limit.rlim_cur
    };
    let room = usize::try_from(soft.saturating_sub(FD_RESERVE))
        .unwrap_or(usize::MAX)
        .max(1);
    if wanted > room {
        tracing::warn!(
            wanted,
            allowed = room,
            open_file_limit = soft,
            "MAX_CONNECTIONS lowered to what the open-file limit leaves room for"
        );
    }
    wanted.min(room)
}
