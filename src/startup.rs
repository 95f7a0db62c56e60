//! Start-up and shutdown: turns a [`Config`] and a Redis URL into the
//! [`AppState`] handlers share (connections, the database, the strategies,
//! the id generator and its worker lease, the persister, the live feed),
//! and stops the background work in order. [`serve`] is the whole life of
//! the binary: Redis (a private child unless `REDIS_URL` or
//! `REDIS_CLUSTER_URLS`), the state, HTTP,
//! and the shutdown.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Config;
use crate::http::server::run;
use crate::infra::redis_conn::{RedisConn, RedisTarget, Timeouts};
use crate::infra::redis_policy::refuse_evicting_redis;
use crate::infra::redis_server::RedisServer;
use crate::orders::db::Db;
use crate::orders::lease::{LeaseConfig, WorkerLease, seed_fresh_horizons};
use crate::orders::lookup::OrderLookup;
use crate::orders::persister::Persister;
use crate::sale::Sales;
use crate::sale::lifecycle::Lifecycle;
use crate::sale::purchase::{PurchaseWiring, Purchases, Recorder};
use crate::sale::stats::Stats;
use crate::state::{AdminPolicy, AppState, Shared};
use crate::strategy::{Registry, StrategyKind, Wiring};

/// The shared connection to `target`, with `REDIS_TIMEOUT_MS` for both
/// connecting and each reply.
async fn connect(config: &Config, target: &RedisTarget) -> anyhow::Result<RedisConn> {
    let timeout = config.redis.timeout();
    target
        .connect(Timeouts {
            response: timeout,
            connect: timeout,
        })
        .await
}

/// The state plus what must be stopped cleanly on shutdown.
pub struct App {
    pub state: AppState,
    lease: WorkerLease,
    persister: Option<Persister>,
    live: tokio::task::JoinHandle<()>,
    /// `None` with `EXPIRY_INTERVAL_MS=0`.
    expiry: Option<tokio::task::JoinHandle<()>>,
}

impl App {
    /// Validates `config` ([`Config::validate`]), connects to the Redis (or
    /// Redis Cluster) of `target` and builds everything the handlers need.
    pub async fn build(config: &Config, target: &RedisTarget) -> anyhow::Result<Self> {
        config.validate()?;
        let timeout = config.redis.timeout();
        let redis = connect(config, target).await?;

        refuse_evicting_redis(&mut redis.clone(), config.redis.allow_evicting_redis).await?;

        let pool = target.pool(config.redis.redis_pool_size, timeout)?;
        let replicas = config.redis.replica_wait();

        let db = Db::connect(
            &config.orders.database_url,
            config.orders.db_max_connections,
        )
        .await?;
        if config.locks.sql_for_update && db.backend() != crate::orders::db::Backend::Postgres {
            tracing::warn!("SQL_FOR_UPDATE only applies to Postgres; ignored on SQLite");
        }
        let strategies = Registry::build(&Wiring {
            redis: redis.clone(),
            pool: pool.clone(),
            db: db.clone(),
            config,
        })?;
        let default_strategy = strategies
            .get(&config.locks.default_strategy)
            .map_err(|msg| anyhow::anyhow!("DEFAULT_STRATEGY: {msg}"))?
            .kind();

        let lease = WorkerLease::acquire(
            redis.clone(),
            LeaseConfig::new(
                Duration::from_millis(config.lease.worker_lease_ttl_ms),
                config.lease.worker_id,
            ),
        )
        .await?;
        let worker = lease.worker();

        let admin = match &config.http.admin_token {
            Some(token) if !token.is_empty() => AdminPolicy::Token(token.as_str().into()),
            _ => AdminPolicy::LoopbackOnly {
                bound_to_loopback: config.http.listen.ip().is_loopback(),
            },
        };

        let persister = if config.orders.persister {
            let persister = Persister::start(
                target,
                timeout,
                db.clone(),
                config.orders.persister(
                    format!(
                        "w{worker}-{}",
                        &uuid::Uuid::new_v4().simple().to_string()[..8]
                    ),
                    StrategyKind::Sql.as_str(),
                ),
            )
            .await?;
            Some(persister)
        } else {
            None
        };

        let (live_tx, live_rx) = watch::channel(Arc::<str>::from("{}"));
        let stats = Arc::new(Stats::default());
        let metrics = Arc::new(crate::sale::metrics::Metrics::new());
        let strategies = Arc::new(strategies);
        let purchases = Arc::new(Purchases::new(
            Arc::clone(&strategies),
            default_strategy,
            PurchaseWiring {
                ids: lease.minter(),
                idempotency: crate::sale::idempotency::Idempotency::new(
                    redis.clone(),
                    config.http.request_timeout(),
                    Duration::from_secs(config.orders.idempotency_ttl_s),
                ),
                recorder: Recorder::new(Arc::clone(&stats), Arc::clone(&metrics)),
                pool,
                replicas,
                lookup: OrderLookup::new(redis.clone(), db.clone(), config.http.request_timeout()),
                request_timeout: config.http.request_timeout(),
            },
        ));
        let state = AppState(Arc::new(Shared {
            sales: Sales::new(redis.clone(), db.clone()),
            lifecycle: Lifecycle::new(redis.clone()),
            purchases,
            db,
            redis,
            stats,
            metrics,
            strategies,
            default_strategy,
            ids: lease.minter(),
            admin,
            persister: persister.as_ref().map(Persister::handle),
            request_timeout: config.http.request_timeout(),
            header_timeout: Duration::from_millis(config.http.header_timeout_ms),
            write_timeout: Duration::from_millis(config.http.write_timeout_ms),
            max_connections: config.http.max_connections,
            max_connections_per_ip: config.http.max_connections_per_ip,
            live_streams: Arc::new(tokio::sync::Semaphore::new(config.http.max_live_streams)),
            closing: watch::channel(false).0,
            live: live_rx,
            race: crate::lab::race::RaceControl::default(),
            faults: crate::lab::fault_control::FaultControl::new(
                config.lab.fault_lab,
                config.lab.fault_lab_bin.clone(),
            ),
            static_dir: config.http.static_dir.clone(),
        }));
        let live = crate::http::live_feed::spawn(state.clone(), live_tx);
        let expiry = (config.orders.expiry_interval_ms > 0).then(|| {
            crate::sale::expiry::spawn(
                state.redis.clone(),
                state.lifecycle.clone(),
                Arc::clone(&state.metrics),
                Duration::from_millis(config.orders.expiry_interval_ms),
                state.closing.subscribe(),
            )
        });
        Ok(Self {
            state,
            lease,
            persister,
            live,
            expiry,
        })
    }

    /// Stops background work once the HTTP server has stopped: the persister
    /// drains the order logs into SQL, then the worker lease is released.
    pub async fn shutdown(self) {
        self.state.closing.send_replace(true);
        self.state
            .race
            .cancel("stopped: the server is shutting down");
        // Waited for (bounded): the lab's Redis and instances must be gone
        // before this process is.
        self.state
            .faults
            .stop("stopped: the server is shutting down")
            .await;
        // The live task ends at its next tick; one stuck on a database that
        // stopped answering is not waited for.
        let mut live = self.live;
        if tokio::time::timeout(Duration::from_secs(2), &mut live)
            .await
            .is_err()
        {
            live.abort();
        }
        // A sweep is one script per call: stopping between two loses
        // nothing.
        if let Some(expiry) = self.expiry {
            expiry.abort();
        }
        if let Some(persister) = self.persister {
            persister.drain_and_stop().await;
        }
        self.lease.release().await;
    }
}

/// `seckill serve`: builds everything from `config` and serves until ctrl-c or
/// SIGTERM, then stops background work and the private Redis, if any.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    crate::infra::telemetry::init(config.log_format);
    // Before the private Redis starts: a refused setting starts nothing.
    config.validate()?;

    // Declared first so it is dropped (killed) last, after everything using it.
    let mut embedded = None;
    let target = match &config.redis.redis_url {
        _ if !config.redis.redis_cluster_urls.is_empty() => {
            RedisTarget::Cluster(config.redis.redis_cluster_urls.clone())
        }
        Some(url) => RedisTarget::Single(url.clone()),
        None => {
            let server = RedisServer::start(config.redis.embedded())?;
            tracing::info!(
                url = %server.url(),
                dir = %config.redis.embedded_redis_dir.display(),
                fsync = ?config.redis.embedded_redis_fsync,
                "no REDIS_URL: started a private redis-server (append-only file; stopped on exit)"
            );
            let target = RedisTarget::Single(server.url());
            embedded = Some(server);
            // Known fresh, as far as worker numbers go: it listens on a
            // random loopback port for this process alone, and the data
            // directory's lock proves every earlier seckill on these files
            // has exited, so no holder of a number can still be minting.
            // A horizon its append-only file kept stays (`SET NX`); one it
            // lost needs no wait (see `orders::lease`).
            seed_fresh_horizons(&connect(&config, &target).await?).await?;
            target
        }
    };

    let app = App::build(&config, &target).await?;
    let listener = TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.http.listen))?;
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
