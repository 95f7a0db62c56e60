//! The persister: a background task that moves orders from the items' Redis
//! order logs (streams) into the SQL `orders` table.
//!
//! It reads with a consumer group (`persister`), so several instances share
//! the work and each entry goes to one of them. An entry is acknowledged
//! (`XACK`) only after the transaction holding it committed; the insert is
//! idempotent on `order_id`, so an entry delivered twice (after a crash between
//! commit and ack) is harmless. Entries left pending by a consumer that died
//! are reclaimed with `XAUTOCLAIM` once idle for `claim_idle`. On graceful
//! shutdown the HTTP server stops first, then the persister drains what is left.
//!
//! Which streams: the current order log of every item in the items index, and
//! the logs that restocks set aside (each item's archive set), which are
//! deleted once fully persisted.
//!
//! Nothing is dropped silently. An entry whose order id SQL already holds is
//! compared with the stored row: the same order (a redelivery) is acknowledged;
//! a different one (two orders minted with one id) is a conflict, counted
//! (`conflicts`, and the `seckill_persister_conflicts` metric), logged at
//! error level with both rows, and moved to the item's dead-letter stream by
//! the script that acknowledges it (`dead_letter.lua`), so it is kept exactly
//! once. An entry that cannot be read as an order (a bug, or a hand-made
//! entry) is kept there the same way (`unreadable`), never acknowledged away.
//! An instance of an earlier version, which knows only the five-field entry,
//! keeps this version's one-field entries there as unreadable; this
//! persister finds them (with its reclaim, every `claim_idle / 2`), stores
//! them and takes them out (`rescued`), so a mixed deployment during an
//! upgrade loses no order to SQL.
//!
//! The files, one concern each: `discovery.rs` finds the logs and joins
//! their groups, `read.rs` reads them (new entries, our own pending ones,
//! and those taken over from idle consumers), `store.rs` inserts a batch and
//! tells a redelivery from a conflict, `dead_letters.rs` keeps what cannot
//! be stored (the letter's format and `dead_letter.lua`), `rescue.rs` stores
//! the orders an earlier version kept as letters, and `archives.rs` deletes
//! the logs a restock set aside once they are persisted. This file holds the
//! public API, the task's lifecycle (start, steps, drain, stop) and its
//! status.

mod archives;
mod dead_letters;
mod discovery;
mod read;
mod rescue;
mod store;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::infra::redis_conn::{RedisConn, RedisTarget, Timeouts};
use crate::orders::db::Db;

/// The consumer group every instance's persister joins.
pub const GROUP: &str = "persister";

/// Tuning.
#[derive(Debug, Clone)]
pub struct PersisterConfig {
    /// Orders per read (entries of a `lua-batch` log hold several: its
    /// reads ask for fewer entries, [`Worker::entries_per_read`]) and per
    /// SQL transaction.
    pub batch: usize,
    /// The most orders one entry can hold (a `lua-batch` call's most): what
    /// a log not read yet is assumed to hold.
    pub largest_entry: usize,
    /// How long one blocking read waits for new entries. Also how soon a new
    /// item's stream is noticed.
    pub block: Duration,
    /// Pending entries idle this long are taken over (their consumer is
    /// presumed dead). Longer than any insert could take.
    pub claim_idle: Duration,
    /// Unique per process: the consumer name in the group.
    pub consumer: String,
    /// After a step that found some entries but less than a batch, wait
    /// this long before the next read, so more orders share one read, one
    /// SQL transaction and one acknowledgement (`PERSISTER_GATHER_MS`).
    /// Zero: read again at once.
    pub gather: Duration,
    /// How long the drain at shutdown may take (`PERSISTER_DRAIN_MS`). What
    /// it cannot move in time stays in Redis, pending, and reaches SQL after
    /// the next start.
    pub drain_timeout: Duration,
    /// The strategy (by name) that sells from SQL's stock: a return of one
    /// of its orders gives the unit back there ([`Db::apply_moves`]).
    pub stock_in_sql: &'static str,
}

/// What the persister has done, for `/api/persister` and `/metrics`.
#[derive(Debug, Default)]
pub struct PersisterStatus {
    running: AtomicBool,
    persisted: AtomicU64,
    batches: AtomicU64,
    reclaimed: AtomicU64,
    rescued: AtomicU64,
    conflicts: AtomicU64,
    unreadable: AtomicU64,
    moves: AtomicU64,
    moves_held: AtomicU64,
    errors: AtomicU64,
    last_error: Mutex<Option<String>>,
    rescue_errors: AtomicU64,
    last_rescue_error: Mutex<Option<String>>,
}

/// A copy of [`PersisterStatus`] for JSON.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PersisterReport {
    pub consumer: String,
    pub running: bool,
    /// Rows newly inserted into SQL by this instance.
    pub persisted: u64,
    pub batches: u64,
    /// Entries taken over from idle consumers.
    pub reclaimed: u64,
    /// Orders an earlier version's persister could not read (the one-field
    /// entry) and kept as dead letters, stored since by this instance.
    pub rescued: u64,
    /// Entries whose id SQL holds with different fields; each is in its
    /// item's dead-letter stream.
    pub conflicts: u64,
    /// Entries that could not be read as orders; each is in its item's
    /// dead-letter stream.
    pub unreadable: u64,
    /// Lifecycle moves (pay, cancel, expiry) applied to their SQL rows.
    pub moves: u64,
    /// Moves read before their order reached SQL, kept pending and applied
    /// again later (counted each time).
    pub moves_held: u64,
    /// Failed steps (each retried); logged at warn level. A log replaced
    /// by a restock under a read of it is no failure: not counted, logged
    /// at debug level.
    pub errors: u64,
    /// The message of the latest of `errors`.
    pub last_error: Option<String>,
    /// Failed looks through an item's dead letters for orders to rescue:
    /// orders may be stuck there. Logged at warn level. Not in `errors`:
    /// the step goes on, and a key that stays unreadable fails every pass,
    /// which would bury a real step failure's message.
    pub rescue_errors: u64,
    /// The message of the latest of `rescue_errors`.
    pub last_rescue_error: Option<String>,
}

/// Counts a failure in `count` and keeps its message in `last`.
fn record(count: &AtomicU64, last: &Mutex<Option<String>>, message: String) {
    count.fetch_add(1, Ordering::Relaxed);
    *last.lock().unwrap_or_else(|e| e.into_inner()) = Some(message);
}

/// The running task.
pub struct Persister {
    consumer: String,
    status: Arc<PersisterStatus>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Persister {
    /// Starts the task on its own Redis connection: its blocking reads must not
    /// hold up the purchases' shared connection.
    pub async fn start(
        target: &RedisTarget,
        redis_timeout: Duration,
        db: Db,
        config: PersisterConfig,
    ) -> anyhow::Result<Self> {
        let redis = target
            .connect(Timeouts {
                response: config.block + redis_timeout,
                connect: redis_timeout,
            })
            .await
            .context("persister cannot connect to Redis")?;
        let status = Arc::new(PersisterStatus::default());
        let (stop, stopped) = watch::channel(false);
        let consumer = config.consumer.clone();
        status.running.store(true, Ordering::SeqCst);
        let task = tokio::spawn(run(redis, db, config, Arc::clone(&status), stopped));
        Ok(Self {
            consumer,
            status,
            stop,
            task,
        })
    }

    pub fn report(&self) -> PersisterReport {
        report(&self.consumer, &self.status)
    }

    /// A cheap handle for reports, kept in the app state.
    pub fn handle(&self) -> PersisterHandle {
        PersisterHandle {
            consumer: self.consumer.clone(),
            status: Arc::clone(&self.status),
        }
    }

    /// Stops reading new work, persists what is already in the logs, and
    /// returns when done. Call after the HTTP server has stopped.
    pub async fn drain_and_stop(self) {
        let _ = self.stop.send(true);
        if let Err(err) = self.task.await {
            tracing::error!(%err, "persister task failed");
        }
    }
}

/// Read-only view of a running persister.
#[derive(Debug, Clone)]
pub struct PersisterHandle {
    consumer: String,
    status: Arc<PersisterStatus>,
}

impl PersisterHandle {
    pub fn report(&self) -> PersisterReport {
        report(&self.consumer, &self.status)
    }
}

fn report(consumer: &str, status: &PersisterStatus) -> PersisterReport {
    PersisterReport {
        consumer: consumer.to_owned(),
        running: status.running.load(Ordering::Relaxed),
        persisted: status.persisted.load(Ordering::Relaxed),
        batches: status.batches.load(Ordering::Relaxed),
        reclaimed: status.reclaimed.load(Ordering::Relaxed),
        rescued: status.rescued.load(Ordering::Relaxed),
        conflicts: status.conflicts.load(Ordering::Relaxed),
        unreadable: status.unreadable.load(Ordering::Relaxed),
        moves: status.moves.load(Ordering::Relaxed),
        moves_held: status.moves_held.load(Ordering::Relaxed),
        errors: status.errors.load(Ordering::Relaxed),
        last_error: status
            .last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone(),
        rescue_errors: status.rescue_errors.load(Ordering::Relaxed),
        last_rescue_error: status
            .last_rescue_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone(),
    }
}

/// After a failed step, wait this long before the next: Redis or the database
/// is likely down, and hammering it helps nobody.
const ERROR_BACKOFF: Duration = Duration::from_millis(500);

async fn run(
    redis: RedisConn,
    db: Db,
    config: PersisterConfig,
    status: Arc<PersisterStatus>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut worker = Worker {
        redis,
        hot: None,
        db,
        grouped: HashSet::new(),
        last_claim: None,
        rescued_up_to: HashMap::new(),
        own_pending_due: true,
        orders_per_entry: HashMap::new(),
        read_full: false,
        config,
    };
    // Set when the stop comes: the drain runs until nothing is left or
    // this passes, each step cut short at it (an insert waiting on a locked
    // database must not hold the process).
    let mut drain_deadline: Option<Instant> = None;
    let drain_timeout = worker.config.drain_timeout;
    loop {
        let draining = *stopped.borrow();
        let step = worker.step(!draining, &status);
        let result = if draining {
            let deadline = *drain_deadline.get_or_insert_with(|| Instant::now() + drain_timeout);
            match tokio::time::timeout_at(deadline.into(), step).await {
                Ok(result) => result,
                Err(_) => {
                    tracing::error!(
                        drain_ms = drain_timeout.as_millis() as u64,
                        "persister gives up draining at its bound; the orders left stay in Redis and reach SQL after the next start"
                    );
                    break;
                }
            }
        } else {
            // A stop cuts a running step short (an insert waiting on a
            // database that stopped answering included): its entries stay
            // pending under our name, and the drain reads them again.
            tokio::select! {
                result = step => result,
                _ = stopped.changed() => continue,
            }
        };
        match result {
            Ok(handled) => {
                if draining && handled == 0 {
                    break;
                }
                // Some orders, and no log read as many entries as asked:
                // wait for more to gather.
                let partial = handled > 0 && !worker.read_full;
                if !draining && partial && !worker.config.gather.is_zero() {
                    tokio::select! {
                        _ = stopped.changed() => {}
                        () = tokio::time::sleep(worker.config.gather) => {}
                    }
                }
            }
            // A restock replaced a log under a read of it: expected, and
            // no failure. Its groups are made afresh on the next step.
            Err(err) if step_met_replaced_log(&err) => {
                tracing::debug!(
                    error = format!("{err:#}"),
                    "an order log was replaced under the persister; reading again"
                );
                worker.grouped.clear();
            }
            Err(err) => {
                let message = format!("{err:#}");
                tracing::warn!(error = %message, "persister step failed; retrying");
                record(&status.errors, &status.last_error, message);
                // What failed is pending under our name: read it again next
                // time instead of waiting for it to idle into a reclaim.
                worker.own_pending_due = true;
                let backoff = match drain_deadline {
                    Some(deadline) => {
                        ERROR_BACKOFF.min(deadline.saturating_duration_since(Instant::now()))
                    }
                    None => ERROR_BACKOFF,
                };
                if draining {
                    tokio::time::sleep(backoff).await;
                } else {
                    tokio::select! {
                        _ = stopped.changed() => {}
                        () = tokio::time::sleep(backoff) => {}
                    }
                }
            }
        }
    }
    status.running.store(false, Ordering::SeqCst);
    tracing::info!("persister stopped");
}

/// Whether `err` says the order log read was replaced by a restock (renamed
/// aside and made anew): `NOGROUP`, its group is gone with it, or
/// `UNBLOCKED`, it went while a blocking `XREADGROUP` waited on it. The
/// sale goes on in the new log; nothing failed.
fn log_replaced(err: &redis::RedisError) -> bool {
    matches!(err.code(), Some("NOGROUP" | "UNBLOCKED"))
}

/// Whether a step failed only on a log replaced under it ([`log_replaced`]
/// anywhere in its causes): an `XAUTOCLAIM` of a log renamed aside since
/// the step listed it, a blocking read's reply.
fn step_met_replaced_log(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<redis::RedisError>()
            .is_some_and(log_replaced)
    })
}

/// How many entries one read of a log asks for: about `batch` orders'
/// worth, by the orders an entry of it held last time (`per_entry`, else
/// `largest`: a log not read yet is assumed to hold the largest entries a
/// batch can write). Reading `batch` entries of a `lua-batch` log, whatever
/// they held, peaked 23 MiB higher (wrk -c64,
/// `bench/results/2026-12-06-cost-v2/`).
fn entries_per_read(batch: usize, per_entry: Option<usize>, largest: usize) -> usize {
    (batch / per_entry.unwrap_or(largest).max(1)).max(1)
}

struct Worker {
    redis: RedisConn,
    /// The order log that last had entries: the one to block on when all
    /// are quiet.
    hot: Option<String>,
    db: Db,
    /// Streams whose consumer group we created or found.
    grouped: HashSet<String>,
    last_claim: Option<Instant>,
    /// Per dead-letter stream, the last letter [`Worker::rescue`] looked at:
    /// each pass reads only the letters after it.
    rescued_up_to: HashMap<String, String>,
    /// Read this consumer's own pending entries (`XREADGROUP ... 0`) next
    /// step: at start, after a failed step, and throughout the drain.
    own_pending_due: bool,
    /// Per order log, the orders an entry held in its last read (a
    /// `lua-batch` entry holds several), at least 1: a read asks for
    /// `batch` / this many entries ([`Worker::entries_per_read`]).
    orders_per_entry: HashMap<String, usize>,
    /// Set by a step in which some log gave as many entries as asked for:
    /// more may be waiting, so the next step does not wait to gather.
    read_full: bool,
    config: PersisterConfig,
}

impl Worker {
    /// How many entries of `log` one read asks for ([`entries_per_read`]).
    fn entries_per_read(&self, log: &str) -> usize {
        entries_per_read(
            self.config.batch,
            self.orders_per_entry.get(log).copied(),
            self.config.largest_entry,
        )
    }

    /// One round: find streams, reclaim idle entries when due, read new
    /// entries, persist and acknowledge. Returns how many orders (and
    /// unreadable entries) it handled.
    async fn step(&mut self, block: bool, status: &PersisterStatus) -> anyhow::Result<usize> {
        self.read_full = false;
        let (streams, archives, items) = self.discover().await?;
        let claim_due = !block
            || self
                .last_claim
                .is_none_or(|at| at.elapsed() >= self.config.claim_idle / 2);
        let mut handled = 0;
        // Every item, not only those with a log: an earlier version's dead
        // letters outlive the log they came from.
        if claim_due {
            handled += self.rescue(&items, status).await;
        }
        if streams.is_empty() {
            if claim_due {
                self.last_claim = Some(Instant::now());
            }
            if block {
                tokio::time::sleep(self.config.block).await;
            }
            return Ok(handled);
        }

        if self.own_pending_due || !block {
            // Cleared first: reading its own pending entries may hold a move
            // again (its order still not in SQL), which asks for the next
            // step to read them once more. A failed read sets it again.
            self.own_pending_due = false;
            handled += self.read_group(&streams, "0", false, status).await?;
        }

        if claim_due {
            handled += self.reclaim(&streams, status).await?;
            self.collect_archives(&archives).await?;
            // Logs gone (an archive persisted and deleted, a log renamed by
            // a restock) are forgotten here, with the archives, not on
            // every step.
            self.orders_per_entry.retain(|log, _| streams.contains(log));
            self.last_claim = Some(Instant::now());
        }

        handled += self.read_group(&streams, ">", block, status).await?;
        Ok(handled)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_read_asks_for_about_a_batch_of_orders() {
        use super::entries_per_read;
        // One order an entry (`lua`): a batch of entries.
        assert_eq!(entries_per_read(500, Some(1), 1000), 500);
        // A lua-batch log whose entries held 25 orders.
        assert_eq!(entries_per_read(500, Some(25), 1000), 20);
        // Not read yet: as if each entry held the most a batch can.
        assert_eq!(entries_per_read(500, None, 100), 5);
        // Always at least one entry.
        assert_eq!(entries_per_read(10, Some(64), 1000), 1);
        assert_eq!(entries_per_read(10, Some(0), 1000), 10);
    }

    /// A step's error as the persister sees it: a server's error reply,
    /// with the step's context.
    fn step_error(reply: &[u8]) -> anyhow::Error {
        let err = redis::parse_redis_value(reply)
            .and_then(redis::Value::extract_error)
            .expect_err("an error reply");
        anyhow::Error::new(err).context("XAUTOCLAIM seckill:{a}:orders")
    }

    #[test]
    fn a_replaced_log_is_told_by_the_error_code() {
        for replaced in [
            &b"-NOGROUP No such key 'k' or consumer group 'g'\r\n"[..],
            b"-UNBLOCKED the stream key no longer exists\r\n",
        ] {
            assert!(super::step_met_replaced_log(&step_error(replaced)));
        }
        let other = step_error(b"-ERR no NOGROUP here\r\n");
        assert!(
            !super::step_met_replaced_log(&other),
            "by code, not by text"
        );
    }
}
