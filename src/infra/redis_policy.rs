//! What the service asks of the Redis it runs on: no eviction
//! (`maxmemory-policy noeviction`), checked at start-up on every node.

use super::redis_conn::RedisConn;

/// Refuses a Redis that may evict keys: an evicted buyers hash, fence, binding
/// or worker lease breaks the guarantees without a sound. On a cluster every
/// master is asked; its replicas are not (the cluster client does not
/// connect to them), though one promoted by a failover keeps its own
/// setting. A Redis that hides `CONFIG` (some managed ones) cannot be
/// checked: warned, not refused.
pub async fn refuse_evicting_redis(redis: &mut RedisConn, allow: bool) -> anyhow::Result<()> {
    let mut get = redis::cmd("CONFIG");
    get.arg("GET").arg("maxmemory-policy");
    let replies: Vec<(String, redis::RedisResult<Vec<String>>)> = match redis
        .on_every_node(&get)
        .await
    {
        Ok(replies) => replies,
        Err(err) => {
            tracing::warn!(%err, "cannot read Redis maxmemory-policy; make sure it is noeviction");
            return Ok(());
        }
    };
    let mut evicting = None;
    for (node, reply) in replies {
        match reply {
            Ok(pair) => match pair.get(1) {
                Some(policy) if policy == "noeviction" => {}
                other => evicting = Some(other.cloned().unwrap_or_default()),
            },
            // One node that hides CONFIG must not hide the others.
            Err(err) => {
                tracing::warn!(%err, node, "cannot read this Redis node's maxmemory-policy; make sure it is noeviction")
            }
        }
    }
    let Some(policy) = evicting else {
        return Ok(());
    };
    if allow {
        tracing::warn!(%policy, "Redis may evict keys (ALLOW_EVICTING_REDIS=true): a full Redis can silently break sales");
        return Ok(());
    }
    anyhow::bail!(
        "Redis maxmemory-policy is `{policy}`: it may evict the keys that guard a sale. Set it to noeviction (CONFIG SET maxmemory-policy noeviction, on every node of a cluster), or start with ALLOW_EVICTING_REDIS=true to accept the risk"
    )
}
