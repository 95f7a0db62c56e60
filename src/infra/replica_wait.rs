//! Replica confirmation: with `REDIS_WAIT_REPLICAS`, a purchase's buyer hears
//! 201 only once that many replicas hold its write (`WAIT`, asked on a
//! dedicated connection of the [`RedisPool`]).

use std::time::Duration;

use super::redis_conn::RedisPool;

/// `REDIS_WAIT_REPLICAS`: how many replicas must hold a purchase's write
/// before its buyer hears 201, and how long to wait for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaWait {
    pub replicas: u32,
    pub timeout: Duration,
}

impl ReplicaWait {
    /// Whether `replicas` replicas hold every write the master of `marker`
    /// took so far. `WAIT` counts the writes of the connection it is asked
    /// on, so it goes on a dedicated connection right after a write of its
    /// own there (`INCR marker`): a replica stream keeps the master's order,
    /// so a replica that has the marker has everything written before it,
    /// by any connection. (Asked on the shared connection instead, `WAIT`
    /// would hold up every command queued behind it for as long as it
    /// waits.) False also when the master cannot be asked: the write
    /// happened, its fate is unknown.
    pub async fn confirmed(&self, pool: &RedisPool, marker: &str) -> bool {
        if self.replicas == 0 {
            return true;
        }
        // Boxed: the pool checkout and the pipeline make a future of
        // kilobytes, which every purchase's future would carry, and move
        // through each layer of the router, even with no replica to ask.
        Box::pin(self.ask(pool, marker)).await
    }

    async fn ask(&self, pool: &RedisPool, marker: &str) -> bool {
        let mut conn = match pool.get().await {
            Ok(conn) => conn,
            Err(err) => {
                tracing::warn!(%err, "no connection to WAIT for replicas on");
                return false;
            }
        };
        let mut wait = redis::pipe();
        wait.cmd("INCR")
            .arg(marker)
            .ignore()
            .cmd("WAIT")
            .arg(self.replicas)
            .arg(self.timeout.as_millis() as u64);
        match wait.query_async::<(u32,)>(&mut conn).await {
            Ok((acked,)) => acked >= self.replicas,
            Err(err) => {
                tracing::warn!(%err, marker, "WAIT for replicas failed");
                // Redis may still be waiting on it: not for the next user.
                conn.discard();
                false
            }
        }
    }
}
