//! Starting and stopping the service: `serve` wires configuration into state and
//! `run` serves a router on a listener until a shutdown future resolves. Tests
//! call `run` with their own port-0 listener and stop signal.

use std::future::Future;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::redis_server::{RedisServer, RedisServerOptions};
use crate::state::{App, AppState};

/// Serves `state` on `listener` until `shutdown` resolves, then lets in-flight
/// requests finish (each is bounded by the request timeout).
pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    state.race.set_address(listener.local_addr()?);
    let closing = state.closing.clone();
    let app = crate::http::router(state);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        shutdown.await;
        closing.send_replace(true);
    })
    .await
    .context("HTTP server failed")
}

/// `seckill serve`: builds everything from `config` and serves until ctrl-c or
/// SIGTERM, then stops background work and the private Redis, if any.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    crate::telemetry::init(config.log_format);

    // Declared first so it is dropped (killed) last, after everything using it.
    let mut embedded = None;
    let redis_url = match &config.redis_url {
        Some(url) => url.clone(),
        None => {
            let server = RedisServer::start(RedisServerOptions {
                bin: config.redis_server_bin.clone(),
                dir: Some(config.embedded_redis_dir.clone()),
                append_only: Some(config.embedded_redis_fsync),
                ..RedisServerOptions::default()
            })?;
            tracing::info!(
                url = %server.url(),
                dir = %config.embedded_redis_dir.display(),
                fsync = ?config.embedded_redis_fsync,
                "no REDIS_URL: started a private redis-server (append-only file; stopped on exit)"
            );
            let url = server.url();
            embedded = Some(server);
            url
        }
    };

    let app = App::build(&config, &redis_url).await?;
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    tracing::info!(
        address = %listener.local_addr()?,
        worker = app.state.ids.worker(),
        default_strategy = %app.state.default_strategy,
        "seckill serving"
    );
    let served = run(listener, app.state.clone(), shutdown_signal()).await;
    app.shutdown().await;
    drop(embedded);
    tracing::info!("stopped");
    served
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
