//! The Redis the service runs on: one server (`REDIS_URL`, or the private
//! child) or a Redis Cluster (`REDIS_CLUSTER_URLS`). [`RedisTarget`] says
//! which; [`RedisConn`] is the shared multiplexed connection to it and
//! [`RedisPool`] the dedicated connections that `WATCH` and `WAIT` need.
//! Both speak [`ConnectionLike`], so the rest of the service is written
//! once.
//!
//! On a cluster, the `redis` crate routes each command, script and `MULTI`
//! transaction by its keys' slot. After a `MOVED` or a failover it refreshes
//! its slot map, but the command that met it fails (no retries: see
//! `cluster_client`). A pipeline goes to one node, that of its first keyed command, so a
//! pipeline whose commands sit in several slots is refused (CROSSSLOT): the
//! key schema ([`crate::keys`]) keeps each use in one slot, and work that
//! spans items sends one command per item ([`each`]). A keyless command
//! that must reach the node of some key goes in a pipeline behind a keyed
//! one (`WAIT`, see [`ReplicaWait`]) or is routed there (`UNWATCH`).
//!
//! [`ReplicaWait`]: super::replica_wait::ReplicaWait

use std::time::Duration;

use anyhow::Context;
use futures_util::future::join_all;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{
    MultipleNodeRoutingInfo, Route, RoutingInfo, SingleNodeRoutingInfo, Slot, SlotAddr,
};
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
    /// state (`WATCH`) or blocks its connection (`WAIT`). `timeout` bounds
    /// the wait for one, its making, and each reply on it.
    pub fn pool(&self, size: usize, timeout: Duration) -> anyhow::Result<RedisPool> {
        let config = deadpool::managed::PoolConfig {
            max_size: size,
            timeouts: deadpool::managed::Timeouts {
                wait: Some(timeout),
                create: Some(timeout),
                recycle: Some(timeout),
            },
            ..deadpool::managed::PoolConfig::default()
        };
        fn build<M: deadpool::managed::Manager>(
            manager: M,
            config: deadpool::managed::PoolConfig,
        ) -> anyhow::Result<deadpool::managed::Pool<M>> {
            deadpool::managed::Pool::builder(manager)
                .config(config)
                .runtime(deadpool::Runtime::Tokio1)
                .build()
                .context("cannot build the Redis connection pool")
        }
        let timeouts = Timeouts {
            response: timeout,
            connect: timeout,
        };
        Ok(match self {
            Self::Single(url) => {
                // deadpool-redis's manager, given our timeouts: its
                // recycle (`UNWATCH`, `PING`) finds a broken connection,
                // which to one Redis does not reconnect by itself.
                let connection = redis::AsyncConnectionConfig::new()
                    .set_response_timeout(Some(timeouts.response))
                    .set_connection_timeout(Some(timeouts.connect));
                let manager = deadpool_redis::Manager::new_with_config(url.as_str(), connection)
                    .with_context(|| format!("invalid Redis URL `{url}`"))?;
                RedisPool::Single(build(manager, config)?)
            }
            Self::Cluster(urls) => RedisPool::Cluster(build(
                ClusterManager(cluster_client(urls, timeouts)?),
                config,
            )?),
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
        .overall_response_timeout(Some(timeouts.response))
        // No retries: the client cannot tell a command Redis never ran (a
        // `MOVED`) from one whose reply was lost (a dropped connection), and
        // running a purchase script twice sells twice under one order id,
        // or sends `EXEC` on a connection without its `WATCH`. A failed
        // command is a 503, as on one Redis; the client still refreshes its
        // slot map, so the next command finds the new owner.
        .retries(0)
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

/// Sends a keyless command to the master of `key`'s slot.
async fn route<T: FromRedisValue>(
    conn: &mut ClusterConnection,
    cmd: &Cmd,
    key: &str,
) -> RedisResult<T> {
    let value = conn.route_command(cmd.clone(), master_of(key)).await?;
    Ok(redis::from_redis_value(value)?)
}

impl RedisConn {
    /// `cmd`'s reply from every node it writes to: the one Redis, or each
    /// master of the cluster, by address. A node's error is its own entry.
    pub async fn on_every_node<T: FromRedisValue>(
        &mut self,
        cmd: &Cmd,
    ) -> RedisResult<Vec<(String, RedisResult<T>)>> {
        match self {
            Self::Single(conn) => Ok(vec![(String::new(), cmd.query_async(conn).await)]),
            Self::Cluster(conn) => {
                let all = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllNodes, None));
                // Without a response policy the client answers a map of
                // node address to that node's reply (or its error).
                let by_node: std::collections::HashMap<String, Value> =
                    redis::from_redis_value(conn.route_command(cmd.clone(), all).await?)?;
                Ok(by_node
                    .into_iter()
                    .map(|(node, reply)| {
                        let reply = match reply {
                            Value::ServerError(err) => Err(err.into()),
                            reply => redis::from_redis_value(reply).map_err(Into::into),
                        };
                        (node, reply)
                    })
                    .collect())
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
    Single(deadpool::managed::Pool<deadpool_redis::Manager>),
    Cluster(deadpool::managed::Pool<ClusterManager>),
}

/// Why no dedicated connection could be had.
pub type PoolError = deadpool::managed::PoolError<redis::RedisError>;

/// Makes the pool's cluster connections from our own client (timeouts, no
/// retries).
pub struct ClusterManager(redis::cluster::ClusterClient);

impl deadpool::managed::Manager for ClusterManager {
    type Type = ClusterConnection;
    type Error = redis::RedisError;

    async fn create(&self) -> Result<ClusterConnection, redis::RedisError> {
        self.0.get_async_connection().await
    }

    /// Nothing to check: a cluster connection reconnects to a node by
    /// itself, and a command on a broken one fails with a 503. (A `PING`
    /// here, at every checkout, went to every master: three round trips
    /// before each `WAIT`.)
    async fn recycle(
        &self,
        _: &mut ClusterConnection,
        _: &deadpool::managed::Metrics,
    ) -> deadpool::managed::RecycleResult<redis::RedisError> {
        Ok(())
    }
}

impl RedisPool {
    pub async fn get(&self) -> Result<PooledConn, PoolError> {
        Ok(match self {
            Self::Single(pool) => PooledConn::Single(pool.get().await?),
            Self::Cluster(pool) => PooledConn::Cluster(pool.get().await?),
        })
    }
}

/// A connection held by one user at a time, so it may carry state (`WATCH`).
/// On a cluster it holds a connection to every node of its own, and
/// `WATCH`, the reads and the `MULTI` transaction of one item all route to
/// the master of the item's slot.
pub enum PooledConn {
    Single(deadpool::managed::Object<deadpool_redis::Manager>),
    Cluster(deadpool::managed::Object<ClusterManager>),
}

impl PooledConn {
    /// `UNWATCH` on the node that holds `key`, where the `WATCH` was sent
    /// (a keyless `UNWATCH` would go to every master).
    pub async fn unwatch(&mut self, key: &str) -> RedisResult<()> {
        let unwatch = redis::cmd("UNWATCH");
        match self {
            Self::Single(conn) => unwatch.exec_async(&mut **conn).await,
            Self::Cluster(conn) => route(conn, &unwatch, key).await,
        }
    }

    /// Takes the connection out of its pool for good: it is closed when
    /// dropped instead of going back (it may still hold a `WATCH`).
    pub fn discard(self) {
        match self {
            Self::Single(conn) => drop(deadpool::managed::Object::take(conn)),
            Self::Cluster(conn) => drop(deadpool::managed::Object::take(conn)),
        }
    }
}

delegate_connection_like!(PooledConn);
