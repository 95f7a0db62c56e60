//! Start-up and shutdown: turns a [`Config`] and a Redis URL into the
//! [`AppState`] handlers share (connections, the database, the strategies,
//! the id generator and its worker lease, the persister, the live feed),
//! and stops the background work in order.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use deadpool_redis::{PoolConfig, Runtime, Timeouts};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::watch;

use crate::config::Config;
use crate::db::Db;
use crate::lease::{LeaseConfig, WorkerLease};
use crate::persister::{Persister, PersisterConfig};
use crate::purchase::{Purchases, Recorder};
use crate::sale::Sales;
use crate::state::{AdminPolicy, AppState, Shared};
use crate::stats::Stats;
use crate::strategy::{Registry, Wiring};

/// Refuses a Redis that may evict keys: an evicted buyers hash, fence, binding
/// or worker lease breaks the guarantees without a sound. A Redis that hides
/// `CONFIG` (some managed ones) cannot be checked: warned, not refused.
async fn refuse_evicting_redis(redis: &mut ConnectionManager, allow: bool) -> anyhow::Result<()> {
    let reply: redis::RedisResult<Vec<String>> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory-policy")
        .query_async(redis)
        .await;
    let policy = match reply {
        Ok(pair) => pair.get(1).cloned().unwrap_or_default(),
        Err(err) => {
            tracing::warn!(%err, "cannot read Redis maxmemory-policy; make sure it is noeviction");
            return Ok(());
        }
    };
    if policy == "noeviction" {
        return Ok(());
    }
    if allow {
        tracing::warn!(%policy, "Redis may evict keys (ALLOW_EVICTING_REDIS=true): a full Redis can silently break sales");
        return Ok(());
    }
    anyhow::bail!(
        "Redis maxmemory-policy is `{policy}`: it may evict the keys that guard a sale. Set it to noeviction (CONFIG SET maxmemory-policy noeviction), or start with ALLOW_EVICTING_REDIS=true to accept the risk"
    )
}

/// The state plus what must be stopped cleanly on shutdown.
pub struct App {
    pub state: AppState,
    lease: WorkerLease,
    persister: Option<Persister>,
    live: tokio::task::JoinHandle<()>,
}

impl App {
    /// Connects to Redis at `redis_url` and builds everything the handlers need.
    pub async fn build(config: &Config, redis_url: &str) -> anyhow::Result<Self> {
        let client = redis::Client::open(redis_url)
            .with_context(|| format!("invalid Redis URL `{redis_url}`"))?;
        let timeout = config.redis_timeout();
        let manager_config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(timeout))
            .set_connection_timeout(Some(timeout))
            // Reconnect quickly and give up soon: a request waiting on a
            // reconnect should get its 503 within the Redis timeout, and the
            // next request starts a fresh reconnect anyway.
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let redis = ConnectionManager::new_with_config(client, manager_config)
            .await
            .with_context(|| format!("cannot connect to Redis at {redis_url}"))?;

        refuse_evicting_redis(&mut redis.clone(), config.allow_evicting_redis).await?;

        let mut pool_config = deadpool_redis::Config::from_url(redis_url);
        pool_config.pool = Some(PoolConfig {
            max_size: config.redis_pool_size,
            timeouts: Timeouts {
                wait: Some(timeout),
                create: Some(timeout),
                recycle: Some(timeout),
            },
            ..PoolConfig::default()
        });
        let pool = pool_config
            .create_pool(Some(Runtime::Tokio1))
            .context("cannot build the Redis connection pool")?;

        let db = Db::connect(&config.database_url, config.db_max_connections).await?;
        if config.sql_for_update && db.backend() != crate::db::Backend::Postgres {
            tracing::warn!("SQL_FOR_UPDATE only applies to Postgres; ignored on SQLite");
        }
        let strategies = Registry::build(&Wiring {
            redis: redis.clone(),
            pool,
            redis_url,
            db: db.clone(),
            config,
        })?;
        let default_strategy = strategies
            .get(&config.default_strategy)
            .map_err(|msg| anyhow::anyhow!("DEFAULT_STRATEGY: {msg}"))?
            .kind();

        let lease = WorkerLease::acquire(
            redis.clone(),
            LeaseConfig::new(
                Duration::from_millis(config.worker_lease_ttl_ms.max(30)),
                config.worker_id,
            ),
        )
        .await?;
        let worker = lease.worker();

        let admin = match &config.admin_token {
            Some(token) if !token.is_empty() => AdminPolicy::Token(token.as_str().into()),
            _ => AdminPolicy::LoopbackOnly {
                bound_to_loopback: config.listen.ip().is_loopback(),
            },
        };

        let persister = if config.persister {
            let persister = Persister::start(
                redis_url,
                timeout,
                db.clone(),
                PersisterConfig {
                    batch: config.persister_batch.max(1),
                    block: Duration::from_millis(500),
                    claim_idle: Duration::from_millis(config.persister_claim_idle_ms),
                    drain_timeout: Duration::from_millis(config.persister_drain_ms),
                    consumer: format!(
                        "w{worker}-{}",
                        &uuid::Uuid::new_v4().simple().to_string()[..8]
                    ),
                },
            )
            .await?;
            Some(persister)
        } else {
            None
        };

        let (live_tx, live_rx) = watch::channel(Arc::<str>::from("{}"));
        let stats = Arc::new(Stats::default());
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let strategies = Arc::new(strategies);
        let purchases = Arc::new(Purchases::new(
            Arc::clone(&strategies),
            default_strategy,
            lease.minter(),
            crate::idempotency::Idempotency::new(
                redis.clone(),
                config.request_timeout(),
                Duration::from_secs(config.idempotency_ttl_s),
            ),
            Recorder::new(Arc::clone(&stats), Arc::clone(&metrics)),
        ));
        let state = AppState(Arc::new(Shared {
            sales: Sales::new(redis.clone(), db.clone()),
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
            request_timeout: config.request_timeout(),
            header_timeout: Duration::from_millis(config.header_timeout_ms.max(1)),
            max_connections: config.max_connections,
            live_streams: Arc::new(tokio::sync::Semaphore::new(config.max_live_streams)),
            closing: watch::channel(false).0,
            live: live_rx,
            race: crate::race::RaceControl::default(),
            static_dir: config.static_dir.clone(),
        }));
        let live = crate::live::spawn(state.clone(), live_tx);
        Ok(Self {
            state,
            lease,
            persister,
            live,
        })
    }

    /// Stops background work once the HTTP server has stopped: the persister
    /// drains the order logs into SQL, then the worker lease is released.
    pub async fn shutdown(self) {
        self.state.closing.send_replace(true);
        self.state
            .race
            .cancel("stopped: the server is shutting down");
        // The live task ends at its next tick; one stuck on a database that
        // stopped answering is not waited for.
        let mut live = self.live;
        if tokio::time::timeout(Duration::from_secs(2), &mut live)
            .await
            .is_err()
        {
            live.abort();
        }
        if let Some(persister) = self.persister {
            persister.drain_and_stop().await;
        }
        self.lease.release().await;
    }
}
