//! Token locks: a key that holds its owner's random token while it is held,
//! with a TTL so a dead owner's lock ends by itself. Every change after the
//! take compares the token first (in a script), so an owner whose lock
//! expired never renews or deletes the next owner's lock.
//!
//! Three users, one set of primitives:
//! - the `lock` strategy: [`add_acquire_fenced`] (the lock plus a fencing
//!   token), [`renew`] (its watchdog), [`add_unlock`] and
//!   [`add_release_unused`];
//! - the `redlock` strategy, on each node: [`try_take`] and [`unlock`];
//! - the snowflake worker lease ([`crate::orders::lease`]), whose lock carries a
//!   horizon key beside it: [`take_with_horizon`], [`renew_with_horizon`],
//!   [`release_with_horizon`].
//!
//! Waiting for a lock that is held is [`Backoff`]'s job.

mod backoff;

use std::sync::LazyLock;
use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::{Pipeline, RedisResult, Script};

pub use backoff::Backoff;

const ACQUIRE_FENCED_LUA: &str = include_str!("acquire_fenced.lua");
const UNLOCK_LUA: &str = include_str!("unlock.lua");
const RENEW_LUA: &str = include_str!("renew.lua");
const RELEASE_UNUSED_LUA: &str = include_str!("release_unused.lua");

/// Scripts called on their own, by `EVALSHA` (loaded on `NOSCRIPT`). Inside
/// a pipeline a `NOSCRIPT` could not be retried, so pipelines send `EVAL`
/// with the source, and Redis caches the compiled script by its hash.
static RENEW: LazyLock<Script> = LazyLock::new(|| Script::new(RENEW_LUA));
static RAISE_HORIZON: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("raise_horizon.lua")));
static TAKE_WITH_HORIZON: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("take_with_horizon.lua")));
static RENEW_WITH_HORIZON: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("renew_with_horizon.lua")));
static RELEASE_WITH_HORIZON: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("release_with_horizon.lua")));

/// A fresh owner token: random, so no two takers ever share one, after the
/// taker's process id, so an operator (or the fault lab) reading a held
/// lock with `GET` can tell which process holds it, as Redisson's
/// `<client>:<thread>` values do. Nothing compares tokens but for equality.
pub fn new_token() -> String {
    format!("{}-{}", *PROCESS_ID, uuid::Uuid::new_v4().simple())
}

/// This process's id, read once: `getpid` is a system call, and a lock is
/// taken on every purchase of the lock strategies.
static PROCESS_ID: LazyLock<u32> = LazyLock::new(std::process::id);

/// The process id in a [`new_token`]'s token; `None` for any other value.
pub fn holder_pid(token: &str) -> Option<u32> {
    let (pid, random) = token.split_once('-')?;
    (random.len() == 32).then_some(())?;
    pid.parse().ok()
}

fn millis(ttl: Duration) -> u64 {
    ttl.as_millis() as u64
}

/// `SET key token NX PX ttl`: whether the lock is now ours.
pub async fn try_take(
    redis: &mut impl ConnectionLike,
    key: &str,
    token: &str,
    ttl: Duration,
) -> RedisResult<bool> {
    let set: Option<String> = redis::cmd("SET")
        .arg(key)
        .arg(token)
        .arg("NX")
        .arg("PX")
        .arg(millis(ttl))
        .query_async(redis)
        .await?;
    Ok(set.is_some())
}

/// Adds `acquire_fenced.lua` to `pipe`: take `lock` and, if taken, the next
/// number of the `fence` counter. Its reply reads as `Option<i64>`: the
/// fencing token, or nil while someone else holds the lock.
pub fn add_acquire_fenced(
    pipe: &mut Pipeline,
    lock: &str,
    fence: &str,
    token: &str,
    ttl: Duration,
) {
    pipe.cmd("EVAL")
        .arg(ACQUIRE_FENCED_LUA)
        .arg(2)
        .arg(lock)
        .arg(fence)
        .arg(token)
        .arg(millis(ttl));
}

/// Compare-and-delete, on its own: whether the lock was still ours.
///
/// `EVAL` with the source, not `EVALSHA`: one round trip always. After a
/// node restarts, `EVALSHA` costs three (NOSCRIPT, load, retry), and a
/// Redlock release runs under a per-node timeout of a few milliseconds: a
/// release that times out leaves the lock held for its whole TTL.
pub async fn unlock(redis: &mut impl ConnectionLike, key: &str, token: &str) -> RedisResult<bool> {
    let deleted: i64 = redis::cmd("EVAL")
        .arg(UNLOCK_LUA)
        .arg(1)
        .arg(key)
        .arg(token)
        .query_async(redis)
        .await?;
    Ok(deleted == 1)
}

/// Adds the compare-and-delete to `pipe`; its reply reads as `i64`, 1 if the
/// lock was still ours.
pub fn add_unlock(pipe: &mut Pipeline, key: &str, token: &str) {
    pipe.cmd("EVAL").arg(UNLOCK_LUA).arg(1).arg(key).arg(token);
}

/// Compare-and-extend: whether the lock was still ours (and now lives `ttl`).
pub async fn renew(
    redis: &mut impl ConnectionLike,
    key: &str,
    token: &str,
    ttl: Duration,
) -> RedisResult<bool> {
    let extended: i64 = RENEW
        .key(key)
        .arg(token)
        .arg(millis(ttl))
        .invoke_async(redis)
        .await?;
    Ok(extended == 1)
}

/// Adds `release_unused.lua` to `pipe`: release a fenced lock whose holder
/// wrote nothing, handing its fencing token back. Its reply reads as `i64`,
/// 1 if the lock was still ours.
pub fn add_release_unused(pipe: &mut Pipeline, lock: &str, fence: &str, token: &str, fenced: i64) {
    pipe.cmd("EVAL")
        .arg(RELEASE_UNUSED_LUA)
        .arg(2)
        .arg(lock)
        .arg(fence)
        .arg(token)
        .arg(fenced);
}

/// Takes `key` if free and reads its `horizon` key in the same step: `None`
/// when held; when the lock is now ours, `Some` of the horizon, itself
/// `None` when the horizon key is missing (how far it was used is unknown).
pub async fn take_with_horizon(
    redis: &mut impl ConnectionLike,
    key: &str,
    horizon: &str,
    token: &str,
    ttl: Duration,
) -> RedisResult<Option<Option<u64>>> {
    let taken: Option<i64> = TAKE_WITH_HORIZON
        .key(key)
        .key(horizon)
        .arg(token)
        .arg(millis(ttl))
        .invoke_async(redis)
        .await?;
    Ok(taken.map(|horizon| u64::try_from(horizon).ok()))
}

/// Extends a lock we still hold and raises its horizon to `horizon_ms`;
/// whether the lock was still ours.
pub async fn renew_with_horizon(
    redis: &mut impl ConnectionLike,
    key: &str,
    horizon: &str,
    token: &str,
    ttl: Duration,
    horizon_ms: u64,
) -> RedisResult<bool> {
    let renewed: i64 = RENEW_WITH_HORIZON
        .key(key)
        .key(horizon)
        .arg(token)
        .arg(millis(ttl))
        .arg(horizon_ms)
        .invoke_async(redis)
        .await?;
    Ok(renewed == 1)
}

/// Raises the horizon key `horizon` to `horizon_ms`, never lowering it.
pub async fn raise_horizon(
    redis: &mut impl ConnectionLike,
    horizon: &str,
    horizon_ms: u64,
) -> RedisResult<()> {
    let _: i64 = RAISE_HORIZON
        .key(horizon)
        .arg(horizon_ms)
        .invoke_async(redis)
        .await?;
    Ok(())
}

/// Releases a lock we still hold, leaving `last_ms` as its horizon; whether
/// the lock was still ours.
pub async fn release_with_horizon(
    redis: &mut impl ConnectionLike,
    key: &str,
    horizon: &str,
    token: &str,
    last_ms: u64,
) -> RedisResult<bool> {
    let released: i64 = RELEASE_WITH_HORIZON
        .key(key)
        .key(horizon)
        .arg(token)
        .arg(last_ms)
        .invoke_async(redis)
        .await?;
    Ok(released == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_names_its_holders_process_and_is_never_reused() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert_eq!(holder_pid(&a), Some(std::process::id()));
        assert_eq!(holder_pid("not-a-token"), None);
        assert_eq!(holder_pid(""), None);
    }
}
