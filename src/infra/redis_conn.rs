//! The Redis the service runs on: one server (`REDIS_URL`, or the private
//! child) or a Redis Cluster (`REDIS_CLUSTER_URLS`). [`RedisTarget`] says
//! which; [`RedisConn`] is the shared multiplexed connection to it and
//! [`RedisPool`] the dedicated connections `WATCH` needs. Both speak
//! [`ConnectionLike`], so the rest of the service is written once.
//!
//! On a cluster, the `redis` crate routes each command, script and `MULTI`
//! transaction by its keys' slot and follows `MOVED`/`ASK` and failovers. A
//! pipeline goes to one node, that of its first keyed command, so a
//! pipeline whose commands sit in several slots is refused (CROSSSLOT): the
//! key schema ([`crate::keys`]) keeps each use in one slot, and work that
//! spans items sends one command per item ([`each`]). A keyless command
//! that must reach the node of some key (`UNWATCH`, `WAIT`) goes through
//! [`RoutesToKey`]. [`ReplicaWait`] is `REDIS_WAIT_REPLICAS`.

use std::time::Duration;

use anyhow::Context;
use futures_util::future::join_all;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, Slot, SlotAddr};
use redis::{Cmd, FromRedisValue, Pipeline, RedisFuture, RedisResult, Value};

/// Where the stock lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// One Redis server, by URL.
    Single(String),
    /// A Redis Cluster, by seed nodes (any reachable one is enough).
    Cluster(Vec<String>),
}

/// How patient a connection is.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Longest wait for one reply (a blocking read needs its block on top).
    pub response: Duration,
    /// Longest wait for a connection.
    pub connect: Duration,
}

impl RedisTarget {
    /// For logs and error messages.
    pub fn describe(&self) -> String {
        match self {
            Self::Single(url) => url.clone(),
            Self::Cluster(urls) => format!("the Redis Cluster at {}", urls.join(",")),
        }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// The multiplexed connection, reconnecting by itself.
    pub async fn connect(&self, timeouts: Timeouts) -> anyhow::Result<RedisConn> {
        match self {
            Self::Single(url) => {
                let client = redis::Client::open(url.as_str())
                    .with_context(|| format!("invalid Redis URL `{url}`"))?;
                let config = ConnectionManagerConfig::new()
                    .set_response_timeout(Some(timeouts.response))
                    .set_connection_timeout(Some(timeouts.connect))
                    // Reconnect quickly and give up soon: a request waiting
                    // on a reconnect should get its 503 within the Redis
                    // timeout, and the next request starts a fresh
                    // reconnect anyway.
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_millis(500));
                let conn = ConnectionManager::new_with_config(client, config)
                    .await
                    .with_context(|| format!("cannot connect to Redis at {url}"))?;
                Ok(RedisConn::Single(conn))
            }
            Self::Cluster(urls) => {
                let conn = cluster_client(urls, timeouts)?
                    .get_async_connection()
                    .await
                    .with_context(|| format!("cannot connect to {}", self.describe()))?;
                Ok(RedisConn::Cluster(conn))
            }
        }
    }

    /// Up to `size` dedicated connections, for work that holds connection
    /// state (`WATCH`).
    pub fn pool(&self, size: usize, timeout: Duration) -> anyhow::Result<RedisPool> {
        let pool = deadpool_redis::PoolConfig {
            max_size: size,
            timeouts: deadpool_redis::Timeouts {
                wait: Some(timeout),
                create: Some(timeout),
                recycle: Some(timeout),
            },
            ..deadpool_redis::PoolConfig::default()
        };
        let runtime = Some(deadpool_redis::Runtime::Tokio1);
        Ok(match self {
            Self::Single(url) => {
                let mut config = deadpool_redis::Config::from_url(url.as_str());
                config.pool = Some(pool);
                RedisPool::Single(
                    config
                        .create_pool(runtime)
                        .context("cannot build the Redis connection pool")?,
                )
            }
            Self::Cluster(urls) => {
                let mut config = deadpool_redis::cluster::Config::from_urls(urls.clone());
                config.pool = Some(pool);
                RedisPool::Cluster(
                    config
                        .create_pool(runtime)
                        .context("cannot build the Redis Cluster connection pool")?,
                )
            }
        })
    }
}

fn cluster_client(
    urls: &[String],
    timeouts: Timeouts,
) -> anyhow::Result<redis::cluster::ClusterClient> {
    redis::cluster::ClusterClientBuilder::new(urls.iter().map(String::as_str))
        .response_timeout(timeouts.response)
        .connection_timeout(timeouts.connect)
        // Retries (redirections, a failover) end within one response
        // timeout, so a request still gets its 503 in time.
        .overall_response_timeout(Some(timeouts.response))
        .build()
        .with_context(|| format!("invalid REDIS_CLUSTER_URLS `{}`", urls.join(",")))
}

/// The route of the master that owns `key`'s slot.
fn master_of(key: &str) -> RoutingInfo {
    RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::with_slot(
        Slot::for_key(key),
        SlotAddr::Master,
    )))
}

/// `ConnectionLike` for an enum of a `Single` and a `Cluster` connection:
/// each call goes to the one it holds.
macro_rules! delegate_connection_like {
    ($conn:ty) => {
        impl ConnectionLike for $conn {
            fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
                match self {
                    Self::Single(conn) => conn.req_packed_command(cmd),
                    Self::Cluster(conn) => conn.req_packed_command(cmd),
                }
            }

            fn req_packed_commands<'a>(
                &'a mut self,
                cmd: &'a Pipeline,
                offset: usize,
                count: usize,
            ) -> RedisFuture<'a, Vec<Value>> {
                match self {
                    Self::Single(conn) => conn.req_packed_commands(cmd, offset, count),
                    Self::Cluster(conn) => conn.req_packed_commands(cmd, offset, count),
                }
            }

            fn get_db(&self) -> i64 {
                match self {
                    Self::Single(conn) => conn.get_db(),
                    Self::Cluster(conn) => conn.get_db(),
                }
            }
        }
    };
}

/// The shared connection: one multiplexed connection to a single Redis, or
/// one per node of a cluster. Cloning shares it.
#[derive(Clone)]
pub enum RedisConn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// A connection that can send a keyless command to the master of a key's
/// slot, for commands about this connection's state there (on one Redis,
/// it just sends it).
pub trait RoutesToKey {
    fn route_to_key<T: FromRedisValue>(
        &mut self,
        cmd: &Cmd,
        key: &str,
    ) -> impl std::future::Future<Output = RedisResult<T>> + Send;
}

impl RoutesToKey for RedisConn {
    async fn route_to_key<T: FromRedisValue>(&mut self, cmd: &Cmd, key: &str) -> RedisResult<T> {
        match self {
            Self::Single(conn) => cmd.query_async(conn).await,
            Self::Cluster(conn) => route(conn, cmd, key).await,
        }
    }
}

impl RoutesToKey for PooledConn {
    async fn route_to_key<T: FromRedisValue>(&mut self, cmd: &Cmd, key: &str) -> RedisResult<T> {
        match self {
            Self::Single(conn) => cmd.query_async(&mut **conn).await,
            Self::Cluster(conn) => route(conn, cmd, key).await,
        }
    }
}

async fn route<T: FromRedisValue>(
    conn: &mut ClusterConnection,
    cmd: &Cmd,
    key: &str,
) -> RedisResult<T> {
    let value = conn.route_command(cmd.clone(), master_of(key)).await?;
    Ok(redis::from_redis_value(value)?)
}

/// `REDIS_WAIT_REPLICAS`: how many replicas must hold a purchase's write
/// before its buyer hears 201, and how long to wait for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaWait {
    pub replicas: u32,
    pub timeout: Duration,
}

impl ReplicaWait {
    /// Whether `replicas` replicas hold every write sent on `conn` so far
    /// to the master of `key` (`WAIT`, on that master: it counts this
    /// connection's writes only, so it must be the one that wrote). False
    /// also when the master cannot be asked: the write happened, its fate
    /// is unknown.
    pub async fn confirmed(&self, conn: &mut impl RoutesToKey, key: &str) -> bool {
        if self.replicas == 0 {
            return true;
        }
        let mut wait = redis::cmd("WAIT");
        wait.arg(self.replicas).arg(self.timeout.as_millis() as u64);
        match conn.route_to_key::<u32>(&wait, key).await {
            Ok(acked) => acked >= self.replicas,
            Err(err) => {
                tracing::warn!(%err, key, "WAIT for replicas failed");
                false
            }
        }
    }
}

delegate_connection_like!(RedisConn);

/// Sends each command on its own, all at once, and answers in their order:
/// for work across items, whose keys sit in different slots of a cluster.
/// On the multiplexed connection the commands still travel together.
pub async fn each<T: FromRedisValue>(
    conn: &RedisConn,
    cmds: impl IntoIterator<Item = Cmd>,
) -> Vec<RedisResult<T>> {
    join_all(cmds.into_iter().map(|cmd| {
        let mut conn = conn.clone();
        async move { cmd.query_async(&mut conn).await }
    }))
    .await
}

/// Dedicated connections: one Redis's, or cluster connections of their own.
#[derive(Clone)]
pub enum RedisPool {
    Single(deadpool_redis::Pool),
    Cluster(deadpool_redis::cluster::Pool),
}

impl RedisPool {
    pub async fn get(&self) -> Result<PooledConn, deadpool_redis::PoolError> {
        Ok(match self {
            Self::Single(pool) => PooledConn::Single(pool.get().await?),
            // Both pools' errors are deadpool's `PoolError<RedisError>`.
            Self::Cluster(pool) => PooledConn::Cluster(pool.get().await?),
        })
    }
}

/// A connection held by one user at a time, so it may carry state (`WATCH`).
/// On a cluster it holds a connection to every node of its own, and
/// `WATCH`, the reads and the `MULTI` transaction of one item all route to
/// the master of the item's slot.
pub enum PooledConn {
    Single(deadpool_redis::Connection),
    Cluster(deadpool_redis::cluster::Connection),
}

impl PooledConn {
    /// `UNWATCH` on the node that holds `key`, where the `WATCH` was sent
    /// (a keyless `UNWATCH` would go to every master).
    pub async fn unwatch(&mut self, key: &str) -> RedisResult<()> {
        self.route_to_key(&redis::cmd("UNWATCH"), key).await
    }

    /// Takes the connection out of its pool for good: it is closed when
    /// dropped instead of going back (it may still hold a `WATCH`).
    pub fn discard(self) {
        match self {
            Self::Single(conn) => drop(deadpool_redis::Connection::take(conn)),
            Self::Cluster(conn) => drop(deadpool_redis::cluster::Connection::take(conn)),
        }
    }
}

delegate_connection_like!(PooledConn);
