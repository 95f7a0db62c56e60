//! The expiry: every `EXPIRY_INTERVAL_MS`, each instance expires the due
//! reserved orders of every item that was ever restocked with a payment
//! window ([`Lifecycle::expire_due`]). Any one instance suffices; more
//! instances repeat the same sweep (each order still expires once), so they
//! add availability, not throughput.
//!
//! Due orders are found in Redis, in each item's `deadlines` sorted set,
//! not in process memory: an instance that restarts, or a second one,
//! finds the same backlog. A sorted set rather than the order log's pending
//! entries because a deadline is a time, and the set answers "which are due
//! now" in one range read, in deadline order, whatever strategy appended the
//! order and whichever log (current or archived by a restock) holds it.
//! Every instance sweeps; `lifecycle.lua` moves each order once, so two
//! sweeps of one item at the same moment expire each order once between
//! them. A sweep cut short (the process killed) has either run its script
//! or not: there is nothing half-done to recover.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::domain::ItemId;
use crate::infra::redis_conn::RedisConn;
use crate::keys;
use crate::sale::lifecycle::Lifecycle;
use crate::sale::metrics::Metrics;

/// Due orders one script call expires: enough for a backlog to clear in a
/// few calls, few enough that one call holds Redis for well under a
/// millisecond.
const PER_CALL: u32 = 256;

/// Runs the sweeps until `closing` turns true.
pub fn spawn(
    redis: RedisConn,
    lifecycle: Lifecycle,
    metrics: Arc<Metrics>,
    every: Duration,
    mut closing: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = closing.wait_for(|closing| *closing) => return,
            }
            if let Err(err) = sweep(&redis, &lifecycle, &metrics).await {
                // Redis away: the orders stay due, and the next sweep (here
                // or on another instance) takes them.
                tracing::warn!(error = format!("{err:#}"), "expiry sweep failed");
            }
        }
    })
}

/// One sweep of every item ever restocked with a payment window
/// ([`keys::windowed_items`]). An item whose sweep fails (its keys of the
/// wrong type, written by hand) is logged and skipped: the others are
/// still swept. Fails only when the list cannot be read.
pub async fn sweep(
    redis: &RedisConn,
    lifecycle: &Lifecycle,
    metrics: &Metrics,
) -> anyhow::Result<()> {
    let ids: Vec<String> = redis::cmd("SMEMBERS")
        .arg(keys::windowed_items())
        .query_async(&mut redis.clone())
        .await?;
    for id in ids {
        let Ok(item) = ItemId::parse(&id) else {
            continue;
        };
        loop {
            let expired = match lifecycle.expire_due(&item, PER_CALL).await {
                Ok(expired) => expired,
                Err(err) => {
                    tracing::warn!(item = %item, error = format!("{err:#}"), "cannot expire the due orders of this item");
                    break;
                }
            };
            metrics.record_expired(&expired);
            if !expired.more {
                break;
            }
        }
    }
    Ok(())
}
