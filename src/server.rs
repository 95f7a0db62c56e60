//! Starting and stopping the service: `serve` wires configuration into state and
//! `run` serves a router on a listener until a shutdown future resolves. Tests
//! call `run` with their own port-0 listener and stop signal.

use std::future::Future;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::state::AppState;

/// Serves `state` on `listener` until `shutdown` resolves, then lets in-flight
/// requests finish (each is bounded by the request timeout).
pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = crate::http::router(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .context("HTTP server failed")
}

/// `seckill serve`: builds everything from `config` and serves until ctrl-c or SIGTERM.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    crate::telemetry::init(config.log_format);
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let state = AppState {
        request_timeout: config.request_timeout(),
    };
    tracing::info!(address = %listener.local_addr()?, "seckill serving");
    run(listener, state, shutdown_signal()).await
}

/// Resolves on ctrl-c or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(%err, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sig) => {
                sig.recv().await;
            }
            Err(err) => {
                tracing::error!(%err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown signal received; draining");
}
