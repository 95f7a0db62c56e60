//! Service configuration: every knob is a `--flag` and an environment variable
//! (`.env.sample` lists them all with their defaults). [`Config`] groups them
//! by concern ([`HttpSettings`], [`RedisSettings`], [`LeaseSettings`],
//! [`StrategySettings`], [`OrderSettings`], [`LabSettings`]), flattened into
//! one command line, so every flag and variable keeps its name; each group
//! builds what its concern needs (its durations, the embedded Redis's
//! options, the persister's tuning), and [`Config::validate`] checks them
//! all before anything connects.
//!
//! One file on purpose: it is the one table of settings (each with its flag,
//! variable, default and why), their groups and their validation, about
//! 500 lines, with the tests of that validation after them.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;

use crate::infra::replica_wait::ReplicaWait;
use crate::infra::telemetry::LogFormat;

/// Most purchases per `lua-batch` script call, `LUA_BATCH_MAX`'s upper
/// bound: each purchase is four arguments, and the script unpacks the users
/// into one `HMGET` and the buyers with their new counts into one `HSET`
/// (two values each), within Lua's stack limit (8,000). Here, with the
/// other bounds of the settings; `strategy::lua_batch` uses it.
pub const MAX_LUA_BATCH: usize = 1000;

/// Settings for `seckill serve`.
#[derive(Debug, Clone, Args)]
pub struct Config {
    #[command(flatten)]
    pub http: HttpSettings,
    #[command(flatten)]
    pub redis: RedisSettings,
    #[command(flatten)]
    pub lease: LeaseSettings,
    #[command(flatten)]
    pub locks: StrategySettings,
    #[command(flatten)]
    pub orders: OrderSettings,
    #[command(flatten)]
    pub lab: LabSettings,
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "pretty")]
    pub log_format: LogFormat,
}

/// How the service listens and what bounds a request or a connection.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "HTTP")]
pub struct HttpSettings {
    /// Address the HTTP server binds to.
    #[arg(long, env = "LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Bearer token the admin endpoints require. Unset or empty: admin
    /// endpoints are only allowed while the server is bound to a loopback
    /// address.
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Upper bound on any request's time (ms). Kept well above the Redis timeout
    /// and the lock wait so it only fires when something is truly stuck.
    /// Above 0.
    #[arg(long, env = "REQUEST_TIMEOUT_MS", default_value_t = 10_000)]
    pub request_timeout_ms: u64,
    /// A connection must send a whole request head within this time (ms), or
    /// it is closed: bounds a half-sent request and an idle keep-alive
    /// connection alike. Above 0.
    #[arg(long, env = "HEADER_TIMEOUT_MS", default_value_t = 5_000)]
    pub header_timeout_ms: u64,
    /// A response whose write makes no progress for this long (ms) fails and
    /// its connection is closed, freeing its `MAX_CONNECTIONS` slot: bounds a
    /// client that sends requests but stops reading the answers. Progress
    /// resets the clock, so a slow reader still gets a large answer. Above 0.
    #[arg(long, env = "WRITE_TIMEOUT_MS", default_value_t = 10_000)]
    pub write_timeout_ms: u64,
    /// Open connections served at once; more wait in the listen backlog.
    /// Lowered at start to what the open-file limit leaves room for. Above 0.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 4_096)]
    pub max_connections: usize,
    /// Open connections served at once for one peer IP; a new one past it is
    /// closed at once, unread. Keeps one host from taking every
    /// `MAX_CONNECTIONS` slot. The default lets a load tool open 1,000
    /// connections from one machine; behind a reverse proxy every client
    /// shares the proxy's IP, so set it to `MAX_CONNECTIONS` there (at or
    /// above it, there is no per-peer cap). Above 0.
    #[arg(long, env = "MAX_CONNECTIONS_PER_IP", default_value_t = 1_024)]
    pub max_connections_per_ip: usize,
    /// Status-page live streams (`/api/stats/stream`) open at once; 503 past
    /// it. 0: the live stream is off (always 503).
    #[arg(long, env = "MAX_LIVE_STREAMS", default_value_t = 64)]
    pub max_live_streams: usize,
    /// Directory of the status page's files (`index.html`, script, styles).
    #[arg(long, env = "STATIC_DIR", default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/static"))]
    pub static_dir: std::path::PathBuf,
}

/// Which Redis, how it is reached, and how much a write must be confirmed.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Redis")]
pub struct RedisSettings {
    /// Redis to keep stock in. Unset: start a private `redis-server` child on a
    /// free loopback port, keeping its data in `EMBEDDED_REDIS_DIR`, and stop
    /// it on exit.
    #[arg(long, env = "REDIS_URL", conflicts_with = "redis_cluster_urls")]
    pub redis_url: Option<String>,
    /// Run on a Redis Cluster instead: comma-separated `redis://` URLs of
    /// seed nodes (any reachable one is enough). Each item's keys live in
    /// one slot, so items spread over the masters.
    #[arg(long, env = "REDIS_CLUSTER_URLS", value_delimiter = ',')]
    pub redis_cluster_urls: Vec<String>,
    /// Where the private `redis-server` keeps its append-only file; it starts
    /// again on the same files, so a restart resumes every sale.
    #[arg(long, env = "EMBEDDED_REDIS_DIR", default_value = "data/redis")]
    pub embedded_redis_dir: std::path::PathBuf,
    /// The private `redis-server`'s `appendfsync`: `always` (an acknowledged
    /// order survives a power cut) or `everysec` (faster; a power cut loses up
    /// to about the last second; a killed process loses nothing).
    #[arg(
        long,
        env = "EMBEDDED_REDIS_FSYNC",
        value_enum,
        default_value = "always"
    )]
    pub embedded_redis_fsync: crate::infra::redis_server::Fsync,
    /// The private `redis-server`'s memory limit (`maxmemory`: `2gb`,
    /// `512mb`; `0` for none). Full, it refuses writes (503) and evicts
    /// nothing.
    #[arg(long, env = "EMBEDDED_REDIS_MAXMEMORY", default_value = "2gb")]
    pub embedded_redis_maxmemory: String,
    /// Start even if Redis may evict keys (`maxmemory-policy` other than
    /// `noeviction`), with a warning. An evicted buyers hash, fence or lease
    /// silently breaks the guarantees, so this is refused by default.
    #[arg(long, env = "ALLOW_EVICTING_REDIS", default_value_t = false, action = clap::ArgAction::Set)]
    pub allow_evicting_redis: bool,
    /// The `redis-server` binary used when `REDIS_URL` is unset.
    #[arg(long, env = "REDIS_SERVER_BIN", default_value = "redis-server")]
    pub redis_server_bin: String,
    /// Dedicated Redis connections in the pool (used by `optimistic`, whose WATCH
    /// needs a connection of its own). Above 0.
    #[arg(long, env = "REDIS_POOL_SIZE", default_value_t = 64)]
    pub redis_pool_size: usize,
    /// Give up on a Redis command, or on connecting, after this long (ms): the
    /// purchase gets a 503 `unavailable` instead of hanging. Above 0. It also
    /// bounds background work (persister, lease renewal), so a value above
    /// `REQUEST_TIMEOUT_MS` is allowed; a request then ends at the request
    /// timeout instead.
    #[arg(long, env = "REDIS_TIMEOUT_MS", default_value_t = 2000)]
    pub redis_timeout_ms: u64,
    /// Before a purchase answers 201, wait until this many replicas hold its
    /// write (`WAIT`). If fewer confirm within `REDIS_WAIT_TIMEOUT_MS`, the
    /// buyer gets 503 `unconfirmed` with the order id: the order stands unless
    /// a failover loses it. 0: no wait.
    #[arg(long, env = "REDIS_WAIT_REPLICAS", default_value_t = 0)]
    pub redis_wait_replicas: u32,
    /// How long a purchase waits for `REDIS_WAIT_REPLICAS` replicas (ms); with
    /// replicas to wait for, above 0 (Redis reads 0 as "forever") and at
    /// least 100 ms below `REDIS_TIMEOUT_MS`, which would cut it short.
    #[arg(long, env = "REDIS_WAIT_TIMEOUT_MS", default_value_t = 500)]
    pub redis_wait_timeout_ms: u64,
}

/// The snowflake worker number this instance mints order ids with.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Worker lease")]
pub struct LeaseSettings {
    /// Snowflake worker number (0..=1023), leased in Redis like any other: an
    /// instance asking for a number another holds refuses to start. Unset:
    /// lease a free one, so instances sharing a Redis never share a number.
    #[arg(long, env = "WORKER_ID", value_parser = clap::value_parser!(u16).range(0..=1023))]
    pub worker_id: Option<u16>,
    /// Lifetime of the leased worker number (ms); renewed every third of it.
    /// At least 100 (refused at start below).
    #[arg(long, env = "WORKER_LEASE_TTL_MS", default_value_t = 30_000)]
    pub worker_lease_ttl_ms: u64,
}

/// The default strategy and each strategy's knobs: lock lifetimes and waits, retries, batches.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Strategies and locks")]
pub struct StrategySettings {
    /// Strategy used when a purchase names none.
    #[arg(long, env = "DEFAULT_STRATEGY", default_value = "lua")]
    pub default_strategy: String,
    /// `lock`: how long the stock lock lives before Redis expires it (ms;
    /// above 0).
    #[arg(long, env = "LOCK_TTL_MS", default_value_t = 1000)]
    pub lock_ttl_ms: u64,
    /// `lock`: extend the lock while its holder is alive (every third of the
    /// TTL), so a slow holder does not lose it. A holder that is paused
    /// stops extending too, which is what the fencing token is for.
    #[arg(long, env = "LOCK_WATCHDOG", default_value_t = false, action = clap::ArgAction::Set)]
    pub lock_watchdog: bool,
    /// How long a buyer may wait before a 503 `contention` (ms): for the `lock`
    /// and `redlock` locks, the gates' queues and the `lua-batch` queue.
    /// Above 0. Above `REQUEST_TIMEOUT_MS` it is allowed, but the request
    /// timeout answers first (503 `unavailable`, not `contention`).
    #[arg(long, env = "LOCK_WAIT_MS", default_value_t = 2000)]
    pub lock_wait_ms: u64,
    /// `redlock`: the lock nodes, comma-separated `redis://` URLs of independent
    /// Redis servers (quorum N/2+1). Unset: the main Redis (or Redis
    /// Cluster) alone.
    #[arg(long, env = "REDLOCK_URLS", value_delimiter = ',')]
    pub redlock_urls: Vec<String>,
    /// `optimistic`: how many times an aborted transaction is retried before a
    /// 503 `contention`. 0: no retry, one attempt.
    #[arg(long, env = "OPTIMISTIC_MAX_RETRIES", default_value_t = 100)]
    pub optimistic_max_retries: u32,
    /// `lua-batch`: the most purchases of one item sent in one script call
    /// (1 to 1000, refused at start outside). A purchase waits in the queue
    /// at most `LOCK_WAIT_MS`.
    #[arg(long, env = "LUA_BATCH_MAX", default_value_t = 64)]
    pub lua_batch_max: usize,
    /// `sql` on Postgres: lock the item row with `SELECT ... FOR UPDATE` before
    /// decrementing, instead of the conditional `UPDATE` alone.
    #[arg(long, env = "SQL_FOR_UPDATE", default_value_t = false, action = clap::ArgAction::Set)]
    pub sql_for_update: bool,
}

/// Where orders go (the database), how the persister moves them, and how long an Idempotency-Key is kept.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Orders and the persister")]
pub struct OrderSettings {
    /// How long a purchase's `Idempotency-Key` and its response are kept (s).
    /// Must outlast `REQUEST_TIMEOUT_MS`: a client retries after a timeout,
    /// and a record gone by then lets the retry buy again.
    #[arg(long, env = "IDEMPOTENCY_TTL_S", default_value_t = 86_400)]
    pub idempotency_ttl_s: u64,
    /// Database for orders and the `sql` strategy: `sqlite://path` (created if
    /// missing) or `postgres://...`.
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite://data/seckill.db")]
    pub database_url: String,
    /// Database connections in the pool. Above 0.
    #[arg(long, env = "DB_MAX_CONNECTIONS", default_value_t = 8)]
    pub db_max_connections: u32,
    /// Run the persister (order logs → SQL) in this instance. Several instances
    /// may all run it: they share the work through a consumer group.
    #[arg(long, env = "PERSISTER", default_value_t = true, action = clap::ArgAction::Set)]
    pub persister: bool,
    /// Persister: orders per read (fewer entries of a `lua-batch` log,
    /// whose entries hold several) and per SQL transaction. Above 0.
    #[arg(long, env = "PERSISTER_BATCH", default_value_t = 500)]
    pub persister_batch: usize,
    /// Persister: after a read that found less than a batch, wait this long
    /// (ms) before the next, so more orders share a read, a transaction and
    /// an acknowledgement. 0: read again at once.
    #[arg(long, env = "PERSISTER_GATHER_MS", default_value_t = 20)]
    pub persister_gather_ms: u64,
    /// Persister: entries left pending this long by a consumer are taken over
    /// (ms); the consumer is presumed dead. Above 0.
    #[arg(long, env = "PERSISTER_CLAIM_IDLE_MS", default_value_t = 30_000)]
    pub persister_claim_idle_ms: u64,
    /// Persister: how long the drain at shutdown may take (ms). Orders it
    /// cannot move in time (the database is down) stay in Redis and reach SQL
    /// after the next start. 0: no drain.
    #[arg(long, env = "PERSISTER_DRAIN_MS", default_value_t = 10_000)]
    pub persister_drain_ms: u64,
    /// How often this instance expires the reserved orders whose payment
    /// deadline passed (ms). Every instance may: each order expires once.
    /// 0: this instance expires none.
    #[arg(long, env = "EXPIRY_INTERVAL_MS", default_value_t = 100)]
    pub expiry_interval_ms: u64,
}

/// Knobs that exist to show a race, not to run a sale.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Lab")]
pub struct LabSettings {
    /// Lab knob: sleep this long between reading and writing the stock, in
    /// `naive` (so its oversell shows even at low load) and in `lock` while
    /// holding the lock (above `LOCK_TTL_MS` it shows what lock expiry does).
    #[arg(long, env = "RACE_WINDOW_MS", default_value_t = 0)]
    pub race_window_ms: u64,
    /// Whether `POST /api/faults` may run the fault lab (`seckill faults`
    /// as a child process: per cell its own Redis and two instances, CPU for
    /// minutes). false: it answers 404 `fault_lab_disabled`; the contract
    /// fuzzer runs with false.
    #[arg(long, env = "FAULT_LAB", default_value_t = true, action = clap::ArgAction::Set)]
    pub fault_lab: bool,
    /// The `seckill` binary the fault lab runs (default: this one). For
    /// tests, whose process is the test harness.
    #[arg(long, hide = true)]
    pub fault_lab_bin: Option<std::path::PathBuf>,
}

/// [`Config`] as a whole command (it is only `Args`).
#[derive(clap::Parser)]
struct Wrapper {
    #[command(flatten)]
    config: Config,
}

impl Config {
    /// The defaults, as `seckill serve` with no flags and no environment would
    /// see them. Tests start from this and override fields.
    pub fn defaults() -> Self {
        use clap::FromArgMatches;
        // Parsing an empty command line cannot fail: every field has a default
        // or is optional. Env vars are ignored here on purpose (`no_env`), so a
        // test's config does not depend on the shell it runs in.
        let matches = Self::command()
            .mut_args(|arg| arg.env(None::<&str>))
            .get_matches_from(["seckill"]);
        Wrapper::from_arg_matches(&matches)
            .expect("defaults parse")
            .config
    }

    /// The settings as a command of their own: their flags, variables and
    /// defaults, as clap reads them.
    fn command() -> clap::Command {
        <Wrapper as clap::CommandFactory>::command()
    }

    /// Refuses a setting that would turn its feature off or make it
    /// unusable while looking like a value: a zero TTL, wait or size, a
    /// timeout its bound leaves no room for. Settings where 0 (or empty)
    /// means "off" say so in their docs and are not checked here. Called
    /// before anything starts or connects.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let refuse = |env: &'static str, value: &dyn std::fmt::Display, why: &str| {
            Err(ConfigError {
                env,
                value: value.to_string(),
                why: why.to_owned(),
            })
        };
        const MIN_LEASE_TTL_MS: u64 = 100;
        let positive: [(&'static str, u64, &str); 13] = [
            (
                "LOCK_TTL_MS",
                self.locks.lock_ttl_ms,
                "Redis refuses a lock with no lifetime",
            ),
            (
                "LOCK_WAIT_MS",
                self.locks.lock_wait_ms,
                "every buyer who meets a held lock or a queue would get a 503 at once",
            ),
            (
                "REDIS_POOL_SIZE",
                self.redis.redis_pool_size as u64,
                "`optimistic` could never get a connection",
            ),
            (
                "REDIS_TIMEOUT_MS",
                self.redis.redis_timeout_ms,
                "every Redis command would time out",
            ),
            (
                "REQUEST_TIMEOUT_MS",
                self.http.request_timeout_ms,
                "every request would time out",
            ),
            (
                "IDEMPOTENCY_TTL_S",
                self.orders.idempotency_ttl_s,
                "a key's record would expire as it is written, and a retry would buy again",
            ),
            (
                "HEADER_TIMEOUT_MS",
                self.http.header_timeout_ms,
                "every connection would be closed before its first request",
            ),
            (
                "WRITE_TIMEOUT_MS",
                self.http.write_timeout_ms,
                "every response that meets a full socket buffer would be cut off",
            ),
            (
                "MAX_CONNECTIONS",
                self.http.max_connections as u64,
                "no connection would be served",
            ),
            (
                "MAX_CONNECTIONS_PER_IP",
                self.http.max_connections_per_ip as u64,
                "every connection would be closed",
            ),
            (
                "DB_MAX_CONNECTIONS",
                u64::from(self.orders.db_max_connections),
                "no order could reach the database",
            ),
            (
                "PERSISTER_BATCH",
                self.orders.persister_batch as u64,
                "the persister would move nothing",
            ),
            (
                "PERSISTER_CLAIM_IDLE_MS",
                self.orders.persister_claim_idle_ms,
                "each persister would take over the entries the others are writing",
            ),
        ];
        for (env, value, why) in positive {
            if value == 0 {
                return refuse(env, &value, &format!("must be above 0: {why}"));
            }
        }
        let max_batch = MAX_LUA_BATCH;
        if !(1..=max_batch).contains(&self.locks.lua_batch_max) {
            return refuse(
                "LUA_BATCH_MAX",
                &self.locks.lua_batch_max,
                &format!("must be 1 to {max_batch}: the script's arguments must fit Lua's stack"),
            );
        }
        if self.lease.worker_lease_ttl_ms < MIN_LEASE_TTL_MS {
            return refuse(
                "WORKER_LEASE_TTL_MS",
                &self.lease.worker_lease_ttl_ms,
                &format!(
                    "must be at least {MIN_LEASE_TTL_MS} ms: renewed every third of it, a shorter lease lapses at the first slow Redis reply and minting stops"
                ),
            );
        }
        // A client retries a purchase once it has given up on it, at the
        // earliest when the request timed out: a key kept no longer than
        // that is gone when the retry comes.
        if self.orders.idempotency_ttl_s.saturating_mul(1000) <= self.http.request_timeout_ms {
            return refuse(
                "IDEMPOTENCY_TTL_S",
                &self.orders.idempotency_ttl_s,
                &format!(
                    "must outlast REQUEST_TIMEOUT_MS ({} ms): a retry after a timed-out purchase would buy again",
                    self.http.request_timeout_ms
                ),
            );
        }
        // A `WAIT` is a reply like any other: the Redis timeout must outlast
        // it, or every slow confirmation would end as a dropped connection.
        if self.redis.redis_wait_replicas > 0
            && (self.redis.redis_wait_timeout_ms == 0
                || self.redis.redis_wait_timeout_ms.saturating_add(100)
                    >= self.redis.redis_timeout_ms)
        {
            return refuse(
                "REDIS_WAIT_TIMEOUT_MS",
                &self.redis.redis_wait_timeout_ms,
                &format!(
                    "with REDIS_WAIT_REPLICAS above 0, must be above 0 (Redis waits forever on 0) and at least 100 ms below REDIS_TIMEOUT_MS ({} ms)",
                    self.redis.redis_timeout_ms
                ),
            );
        }
        Ok(())
    }
}

/// A setting refused by [`Config::validate`], named as its environment
/// variable and its flag.
#[derive(Debug, thiserror::Error)]
#[error("{env} (--{flag}) = {value}: {why}", flag = env.to_lowercase().replace('_', "-"))]
pub struct ConfigError {
    pub env: &'static str,
    pub value: String,
    pub why: String,
}

impl StrategySettings {
    pub fn lock_ttl(&self) -> Duration {
        Duration::from_millis(self.lock_ttl_ms)
    }

    pub fn lock_wait(&self) -> Duration {
        Duration::from_millis(self.lock_wait_ms)
    }
}

impl RedisSettings {
    pub fn replica_wait(&self) -> ReplicaWait {
        ReplicaWait {
            replicas: self.redis_wait_replicas,
            timeout: Duration::from_millis(self.redis_wait_timeout_ms),
        }
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.redis_timeout_ms)
    }

    /// The private redis-server of the embedded mode (no `REDIS_URL`).
    pub fn embedded(&self) -> crate::infra::redis_server::RedisServerOptions {
        crate::infra::redis_server::RedisServerOptions {
            bin: self.redis_server_bin.clone(),
            dir: Some(self.embedded_redis_dir.clone()),
            append_only: Some(self.embedded_redis_fsync),
            maxmemory: self.embedded_redis_maxmemory.clone(),
            ..Default::default()
        }
    }
}

impl HttpSettings {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

impl OrderSettings {
    /// The persister's tuning, under consumer name `consumer`.
    /// `stock_in_sql`: the strategy (by name) whose stock is SQL's, which
    /// the persister returns units to (the catalogue's `sql`; named by the
    /// caller, since the catalogue's module reads this one).
    pub fn persister(
        &self,
        consumer: String,
        stock_in_sql: &'static str,
    ) -> crate::orders::persister::PersisterConfig {
        crate::orders::persister::PersisterConfig {
            stock_in_sql,
            batch: self.persister_batch,
            largest_entry: MAX_LUA_BATCH,
            // How soon a new item's order log is noticed.
            block: Duration::from_millis(500),
            claim_idle: Duration::from_millis(self.persister_claim_idle_ms),
            drain_timeout: Duration::from_millis(self.persister_drain_ms),
            gather: Duration::from_millis(self.persister_gather_ms),
            consumer,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documented_values() {
        let config = Config::defaults();
        assert_eq!(config.http.listen, "127.0.0.1:8080".parse().unwrap());
        assert!(config.redis.redis_url.is_none());
        assert!(config.redis.redis_cluster_urls.is_empty());
        assert_eq!(config.locks.default_strategy, "lua");
        assert_eq!(config.locks.lock_ttl_ms, 1000);
        assert_eq!(config.locks.optimistic_max_retries, 100);
        assert_eq!(config.orders.database_url, "sqlite://data/seckill.db");
        assert!(config.orders.persister && !config.locks.sql_for_update);
    }

    /// `.env.sample` lists every variable the settings read and no other;
    /// a value it sets is clap's default, and the others are commented out
    /// (examples).
    #[test]
    fn the_env_sample_is_the_settings() {
        let sample = include_str!("../.env.sample");
        let mut listed = std::collections::BTreeMap::new();
        for line in sample.lines() {
            let (commented, line) = match line.strip_prefix("# ") {
                Some(rest) => (true, rest),
                None => (false, line),
            };
            let Some((name, value)) = line.split_once('=') else {
                continue;
            };
            let is_name = name.starts_with(|c: char| c.is_ascii_uppercase())
                && name
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
            if is_name {
                let earlier = listed.insert(name.to_owned(), (commented, value.to_owned()));
                assert!(earlier.is_none(), "{name} is listed twice");
            }
        }
        let mut read = std::collections::BTreeMap::new();
        for arg in Config::command().get_arguments() {
            let Some(env) = arg.get_env() else { continue };
            let defaults: Vec<String> = arg
                .get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().into_owned())
                .collect();
            let default = (!defaults.is_empty()).then(|| defaults.join(","));
            read.insert(env.to_string_lossy().into_owned(), default);
        }
        // Read by the tracing subscriber (`infra::telemetry`), not by clap.
        read.insert("RUST_LOG".to_owned(), Some("info".to_owned()));
        assert_eq!(
            listed.keys().collect::<Vec<_>>(),
            read.keys().collect::<Vec<_>>(),
            ".env.sample against Config"
        );
        for (name, default) in &read {
            let (commented, value) = &listed[name];
            if !commented {
                assert_eq!(
                    Some(value),
                    default.as_ref(),
                    "{name}: a value .env.sample sets is clap's default (else comment it out, an example)"
                );
            }
        }
    }

    #[test]
    fn the_defaults_are_valid() {
        Config::defaults().validate().unwrap();
    }

    /// Each value that would turn a feature off or make it unusable is
    /// refused, naming its variable.
    #[test]
    fn values_that_disable_a_feature_are_refused_by_name() {
        type Tweak = fn(&mut Config);
        let bad: &[(&str, Tweak)] = &[
            ("LOCK_TTL_MS", |c| c.locks.lock_ttl_ms = 0),
            ("LOCK_WAIT_MS", |c| c.locks.lock_wait_ms = 0),
            ("REDIS_POOL_SIZE", |c| c.redis.redis_pool_size = 0),
            ("REDIS_TIMEOUT_MS", |c| c.redis.redis_timeout_ms = 0),
            ("REQUEST_TIMEOUT_MS", |c| c.http.request_timeout_ms = 0),
            ("IDEMPOTENCY_TTL_S", |c| c.orders.idempotency_ttl_s = 0),
            ("IDEMPOTENCY_TTL_S", |c| {
                c.orders.idempotency_ttl_s = 10;
                c.http.request_timeout_ms = 10_000;
            }),
            ("HEADER_TIMEOUT_MS", |c| c.http.header_timeout_ms = 0),
            ("WRITE_TIMEOUT_MS", |c| c.http.write_timeout_ms = 0),
            ("MAX_CONNECTIONS", |c| c.http.max_connections = 0),
            ("MAX_CONNECTIONS_PER_IP", |c| {
                c.http.max_connections_per_ip = 0
            }),
            ("DB_MAX_CONNECTIONS", |c| c.orders.db_max_connections = 0),
            ("PERSISTER_BATCH", |c| c.orders.persister_batch = 0),
            ("PERSISTER_CLAIM_IDLE_MS", |c| {
                c.orders.persister_claim_idle_ms = 0
            }),
            ("LUA_BATCH_MAX", |c| c.locks.lua_batch_max = 0),
            ("LUA_BATCH_MAX", |c| c.locks.lua_batch_max = 1001),
            ("WORKER_LEASE_TTL_MS", |c| c.lease.worker_lease_ttl_ms = 99),
            ("REDIS_WAIT_TIMEOUT_MS", |c| {
                c.redis.redis_wait_replicas = 1;
                c.redis.redis_wait_timeout_ms = 0;
            }),
            ("REDIS_WAIT_TIMEOUT_MS", |c| {
                c.redis.redis_wait_replicas = 1;
                c.redis.redis_wait_timeout_ms = 1_950;
                c.redis.redis_timeout_ms = 2_000;
            }),
        ];
        for (env, tweak) in bad {
            let mut config = Config::defaults();
            tweak(&mut config);
            let err = config.validate().expect_err(env);
            assert_eq!(err.env, *env, "{err}");
            let flag = env.to_lowercase().replace('_', "-");
            assert!(
                err.to_string().starts_with(&format!("{env} (--{flag}) = ")),
                "{err}"
            );
        }
    }

    /// Values whose 0 documents "off", and bounds the tests rely on, pass.
    #[test]
    fn documented_off_values_and_tight_test_bounds_pass() {
        type Tweak = fn(&mut Config);
        let fine: &[Tweak] = &[
            |c| c.redis.redis_wait_replicas = 0,
            |c| c.http.max_live_streams = 0,
            |c| c.locks.optimistic_max_retries = 0,
            |c| c.orders.persister_gather_ms = 0,
            |c| c.orders.persister_drain_ms = 0,
            |c| c.lab.race_window_ms = 0,
            |c| c.lab.fault_lab = false,
            // The request timeout answers first; it still bounds the request.
            |c| {
                c.http.request_timeout_ms = 1_000;
                c.redis.redis_timeout_ms = 30_000;
            },
            |c| c.lease.worker_lease_ttl_ms = 100,
            |c| c.locks.lua_batch_max = 1000,
            |c| {
                c.redis.redis_wait_replicas = 1;
                c.redis.redis_wait_timeout_ms = 1_899;
            },
        ];
        for tweak in fine {
            let mut config = Config::defaults();
            tweak(&mut config);
            config.validate().unwrap();
        }
    }
}
