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

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use redis::Script;
use redis::streams::StreamAutoClaimReply;
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::domain::ItemId;
use crate::infra::redis_conn::{self, RedisConn, RedisTarget, Timeouts};
use crate::keys::{self, ItemKeys};
use crate::orders::db::{Db, OrderRecord};
use crate::orders::order_log::{self, Entry, ReadReply};
use crate::orders::snowflake::OrderId;

/// The consumer group every instance's persister joins.
pub const GROUP: &str = "persister";

const DEAD_LETTER_LUA: &str = include_str!("dead_letter.lua");

/// Tuning.
#[derive(Debug, Clone)]
pub struct PersisterConfig {
    /// Entries per read and per SQL transaction.
    pub batch: usize,
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
                let partial = handled > 0 && handled < worker.config.batch;
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
    config: PersisterConfig,
}

impl Worker {
    /// One round: find streams, reclaim idle entries when due, read new
    /// entries, persist and acknowledge. Returns how many entries it handled.
    async fn step(&mut self, block: bool, status: &PersisterStatus) -> anyhow::Result<usize> {
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
            handled += self.read_group(&streams, "0", false, status).await?;
            self.own_pending_due = false;
        }

        if claim_due {
            handled += self.reclaim(&streams, status).await?;
            self.collect_archives(&archives).await?;
            self.last_claim = Some(Instant::now());
        }

        handled += self.read_group(&streams, ">", block, status).await?;
        Ok(handled)
    }

    /// Reads `streams` from `from` (`>`: new entries; `0`: this consumer's
    /// pending ones), each order log on its own `XREADGROUP` (one command
    /// naming several logs would span cluster slots), all in one round trip,
    /// persisting what they return. When nothing came and `block` is set, it
    /// waits on the log that last had entries, the sale in progress, so its
    /// orders are picked up at once; the others are looked at again next step
    /// (at most [`PersisterConfig::block`] later).
    async fn read_group(
        &mut self,
        streams: &[String],
        from: &str,
        block: bool,
        status: &PersisterStatus,
    ) -> anyhow::Result<usize> {
        // Each log on its own (on a cluster they sit in different slots),
        // with its own reply: one log replaced since we grouped it must not
        // hold up the others.
        let replies: Vec<redis::RedisResult<ReadReply>> = redis_conn::each(
            &self.redis,
            streams
                .iter()
                .map(|stream| self.xreadgroup(stream, from, None)),
        )
        .await;
        let mut handled = self.persist_replies(replies, status).await?;
        if handled == 0 && block && from == ">" {
            let hot = self
                .hot
                .as_ref()
                .filter(|hot| streams.contains(hot))
                .or(streams.first())
                .cloned();
            if let Some(hot) = hot {
                let wait = self.xreadgroup(&hot, from, Some(self.config.block));
                let reply = wait.query_async(&mut self.redis).await;
                handled = self.persist_replies(vec![reply], status).await?;
            }
        }
        Ok(handled)
    }

    /// `XREADGROUP` of one order log, blocking for `block` if given.
    fn xreadgroup(&self, stream: &str, from: &str, block: Option<Duration>) -> redis::Cmd {
        let mut read = redis::cmd("XREADGROUP");
        read.arg("GROUP")
            .arg(GROUP)
            .arg(&self.config.consumer)
            .arg("COUNT")
            .arg(self.config.batch);
        if let Some(block) = block {
            read.arg("BLOCK").arg(block.as_millis() as u64);
        }
        read.arg("STREAMS").arg(stream).arg(from);
        read
    }

    /// Persists the entries of `XREADGROUP` replies; remembers the last log
    /// that had any as the one to wait on. A log replaced since we grouped
    /// it ([`log_replaced`]) counts as work, so a drain looks again, with fresh
    /// groups, instead of stopping there; any other error fails the step,
    /// after the other logs' entries are stored.
    async fn persist_replies(
        &mut self,
        replies: Vec<redis::RedisResult<ReadReply>>,
        status: &PersisterStatus,
    ) -> anyhow::Result<usize> {
        let mut handled = 0;
        let mut failed = None;
        for reply in replies {
            let reply = match reply {
                Ok(reply) => reply,
                Err(err) if log_replaced(&err) => {
                    self.grouped.clear();
                    handled += 1;
                    continue;
                }
                Err(err) => {
                    failed.get_or_insert(err);
                    continue;
                }
            };
            for (key, entries) in reply.0 {
                if entries.is_empty() {
                    continue;
                }
                handled += entries.len();
                self.persist(&key, &entries, status).await?;
                // Only a live log gets more orders: an archived one being
                // caught up is no sale in progress.
                let live =
                    keys::item_of(&key).is_some_and(|item| ItemKeys::new(&item).orders == key);
                if live {
                    self.hot = Some(key);
                }
            }
        }
        match failed {
            Some(err) => Err(err).context("XREADGROUP failed"),
            None => Ok(handled),
        }
    }

    /// The streams to read (those with a group) and the archived logs.
    async fn discover(&mut self) -> anyhow::Result<(Vec<String>, Vec<String>, Vec<ItemId>)> {
        // One command per set: the index, the legacy archive set and each
        // item's archive set sit in different slots of a cluster.
        let smembers = |key: String| {
            let mut cmd = redis::cmd("SMEMBERS");
            cmd.arg(key);
            cmd
        };
        let [items, legacy]: [redis::RedisResult<Vec<String>>; 2] = redis_conn::each(
            &self.redis,
            [
                smembers(keys::items_index()),
                smembers(keys::legacy_order_archives()),
            ],
        )
        .await
        .try_into()
        .map_err(|_| anyhow::anyhow!("two replies expected"))?;
        let ids: Vec<ItemId> = items
            .context("cannot list order logs")?
            .iter()
            .filter_map(|id| ItemId::parse(id).ok())
            .collect();
        let items: Vec<ItemKeys> = ids.iter().map(ItemKeys::new).collect();
        let mut archives = legacy.context("cannot list order logs")?;
        let per_item: Vec<redis::RedisResult<Vec<String>>> = redis_conn::each(
            &self.redis,
            items.iter().map(|keys| smembers(keys.archives.clone())),
        )
        .await;
        for listed in per_item {
            archives.extend(listed.context("cannot list archived order logs")?);
        }
        let mut streams = Vec::with_capacity(items.len() + archives.len());
        let candidates = items
            .into_iter()
            .map(|keys| keys.orders)
            .chain(archives.iter().cloned());
        for key in candidates {
            if self.grouped.contains(&key) || self.create_group(&key).await? {
                self.grouped.insert(key.clone());
                streams.push(key);
            }
        }
        Ok((streams, archives, ids))
    }

    /// Creates the group at the start of the stream. False when the stream
    /// does not exist yet (no order so far): nothing to read, and creating the
    /// key ourselves would change an item that saw no purchase.
    async fn create_group(&mut self, key: &str) -> anyhow::Result<bool> {
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(key)
            .arg(GROUP)
            .arg("0")
            .query_async(&mut self.redis)
            .await;
        match created {
            Ok(()) => Ok(true),
            Err(err) if err.code() == Some("BUSYGROUP") => Ok(true),
            Err(err) if err.to_string().contains("requires the key to exist") => Ok(false),
            Err(err) => Err(err).with_context(|| format!("XGROUP CREATE {key}")),
        }
    }

    /// Takes over entries pending longer than `claim_idle` (their consumer
    /// died or is stuck) and persists them.
    async fn reclaim(
        &mut self,
        streams: &[String],
        status: &PersisterStatus,
    ) -> anyhow::Result<usize> {
        let mut total = 0;
        for key in streams {
            let mut cursor = "0-0".to_owned();
            loop {
                let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
                    .arg(key)
                    .arg(GROUP)
                    .arg(&self.config.consumer)
                    .arg(self.config.claim_idle.as_millis() as u64)
                    .arg(&cursor)
                    .arg("COUNT")
                    .arg(self.config.batch)
                    .query_async(&mut self.redis)
                    .await
                    .with_context(|| format!("XAUTOCLAIM {key}"))?;
                if !reply.claimed.is_empty() {
                    tracing::info!(stream = %key, entries = reply.claimed.len(), "reclaimed idle order-log entries");
                    total += reply.claimed.len();
                    status
                        .reclaimed
                        .fetch_add(reply.claimed.len() as u64, Ordering::Relaxed);
                    let claimed: Vec<Entry> = reply.claimed.into_iter().map(Entry::from).collect();
                    self.persist(key, &claimed, status).await?;
                }
                if reply.next_stream_id == "0-0" {
                    break;
                }
                cursor = reply.next_stream_id;
            }
        }
        Ok(total)
    }

    /// Orders that an instance of an earlier version, beside this one on
    /// the same Redis, could not read (it knows only the five-field entry,
    /// see [`order_log`]) and kept as unreadable dead letters: their raw
    /// [`order_log::ORDER`] field is an order after all. Each is stored, then
    /// taken out of the dead letters; one whose id SQL holds with other
    /// fields stays there, counted and logged as a conflict. Each pass reads
    /// each item's letters after the last one it looked at, a page at a
    /// time. Never fails the step: what it cannot read is logged, counted in
    /// `rescue_errors`, and left.
    async fn rescue(&mut self, items: &[ItemId], status: &PersisterStatus) -> usize {
        let letters: Vec<String> = items
            .iter()
            .map(|i| ItemKeys::new(i).dead_letters)
            .collect();
        let reads: Vec<redis::RedisResult<Vec<Letter>>> = redis_conn::each(
            &self.redis,
            letters.iter().map(|key| {
                let from = self
                    .rescued_up_to
                    .get(key)
                    .map_or_else(|| "-".to_owned(), |id| format!("({id}"));
                let mut read = redis::cmd("XRANGE");
                read.arg(key)
                    .arg(from)
                    .arg("+")
                    .arg("COUNT")
                    .arg(RESCUE_PAGE);
                read
            }),
        )
        .await;
        let mut rescued = 0;
        for ((item, key), read) in items.iter().zip(&letters).zip(reads) {
            let done = match read {
                Ok(page) => self.rescue_page(item, key, page, status).await,
                Err(err) => Err(anyhow::Error::new(err).context(format!("XRANGE {key}"))),
            };
            match done {
                Ok(n) => rescued += n,
                Err(err) => {
                    // Not the step's failure (the new orders still flow),
                    // but orders may be stuck in these letters: the report
                    // must show it, not only the log.
                    let message = format!(
                        "cannot look through {item}'s dead letters for orders an earlier version kept: {err:#}"
                    );
                    tracing::warn!(%item, error = %message, "rescue failed");
                    record(&status.rescue_errors, &status.last_rescue_error, message);
                }
            }
        }
        status.rescued.fetch_add(rescued as u64, Ordering::Relaxed);
        rescued
    }

    /// One page of `key`'s letters: stores the orders among them, deletes
    /// their letters, and moves the cursor past the page.
    async fn rescue_page(
        &mut self,
        item: &ItemId,
        key: &str,
        page: Vec<Letter>,
        status: &PersisterStatus,
    ) -> anyhow::Result<usize> {
        let Some(last) = page.last().map(|(id, _)| id.clone()) else {
            return Ok(0);
        };
        let mut ids = Vec::new();
        let mut orders = Vec::new();
        for (id, fields) in &page {
            if let Some(order) = earlier_versions_order(item, fields) {
                ids.push(id.as_str());
                orders.push(order);
            }
        }
        let mut rescued = 0;
        if !orders.is_empty() {
            let new = self
                .db
                .insert_orders(&orders)
                .await
                .context("cannot insert rescued orders")?;
            let conflicts = self.conflicts(&orders, &new).await?;
            let conflicting: HashSet<usize> = conflicts.iter().map(|(i, _)| *i).collect();
            for (index, stored) in &conflicts {
                tracing::error!(
                    stream = %key,
                    letter = ids[*index],
                    log_order = ?orders[*index],
                    sql_order = ?stored,
                    "order id conflict in a dead letter an earlier version kept: SQL holds a different order under this id; the letter stays"
                );
            }
            status
                .conflicts
                .fetch_add(conflicts.len() as u64, Ordering::Relaxed);
            let stored: Vec<&str> = (0..ids.len())
                .filter(|i| !conflicting.contains(i))
                .map(|i| ids[i])
                .collect();
            if !stored.is_empty() {
                // Counted by what this call deleted: another instance
                // rescuing the same letters counts the rest.
                let deleted: u64 = redis::cmd("XDEL")
                    .arg(key)
                    .arg(&stored)
                    .query_async(&mut self.redis)
                    .await
                    .with_context(|| format!("XDEL {key}"))?;
                rescued = deleted as usize;
                let inserted = new.iter().filter(|n| **n).count() as u64;
                status.persisted.fetch_add(inserted, Ordering::Relaxed);
                tracing::warn!(
                    %item,
                    rescued,
                    "stored orders an earlier version's persister had kept as unreadable dead letters"
                );
            }
        }
        self.rescued_up_to.insert(key.to_owned(), last);
        Ok(rescued)
    }

    /// Inserts the entries in one transaction, then acknowledges them. Those
    /// it cannot store (unreadable, or a conflicting id) go to the item's
    /// dead-letter stream instead, each with its own acknowledgement.
    async fn persist(
        &mut self,
        key: &str,
        entries: &[Entry],
        status: &PersisterStatus,
    ) -> anyhow::Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        // Only our own logs are listed, so a key that names no item is a
        // bug: its entries are kept as dead letters, never stored under a
        // made-up item.
        let item = keys::item_of(key);
        let mut orders = Vec::with_capacity(entries.len());
        let mut parsed = Vec::with_capacity(entries.len());
        let mut letters = Vec::new();
        for entry in entries {
            let order = item
                .as_ref()
                .ok_or_else(|| format!("the order log's key `{key}` names no item"))
                .and_then(|item| order_log::parse(item, entry));
            match order {
                Ok(order) => {
                    orders.push(order);
                    parsed.push(entry);
                }
                // Only this service writes these streams: an entry it cannot
                // read is a bug, logged loudly and kept, not a reason to
                // stall the log.
                Err(err) => {
                    tracing::error!(stream = %key, id = %entry.id, %err, "unreadable order-log entry moved to the dead-letter stream");
                    letters.push((
                        entry.id.as_str(),
                        unreadable_fields(key, entry, &err),
                        false,
                    ));
                }
            }
        }
        let new = self
            .db
            .insert_orders(&orders)
            .await
            .context("cannot insert orders")?;
        let inserted = new.iter().filter(|n| **n).count() as u64;
        for (index, stored) in self.conflicts(&orders, &new).await? {
            let (entry, order) = (parsed[index], &orders[index]);
            tracing::error!(
                stream = %key,
                entry = %entry.id,
                log_order = ?order,
                sql_order = ?stored,
                "order id conflict: SQL holds a different order under this id; entry moved to the dead-letter stream"
            );
            letters.push((
                entry.id.as_str(),
                dead_letter_fields(key, &entry.id, order, &stored),
                true,
            ));
        }

        let mut handled = HashSet::new();
        if !letters.is_empty() {
            // No item, no dead-letter stream: the entries stay pending in
            // their log (kept, retried, logged) until someone looks.
            let dead_letters = item
                .as_ref()
                .map(|item| ItemKeys::new(item).dead_letters)
                .ok_or_else(|| {
                    anyhow::anyhow!("no dead-letter stream for {key}: it names no item")
                })?;
            let script = Script::new(DEAD_LETTER_LUA);
            for (id, fields, conflict) in letters {
                let kept: i64 = script
                    .key(key)
                    .key(&dead_letters)
                    .arg(GROUP)
                    .arg(id)
                    .arg(fields)
                    .invoke_async(&mut self.redis)
                    .await
                    .with_context(|| format!("cannot move {id} of {key} to the dead letters"))?;
                let counter = if conflict {
                    &status.conflicts
                } else {
                    &status.unreadable
                };
                counter.fetch_add(kept.max(0) as u64, Ordering::Relaxed);
                handled.insert(id);
            }
        }
        let ids: Vec<&str> = entries
            .iter()
            .map(|e| e.id.as_str())
            .filter(|id| !handled.contains(id))
            .collect();
        if !ids.is_empty() {
            let _: u64 = redis::cmd("XACK")
                .arg(key)
                .arg(GROUP)
                .arg(&ids)
                .query_async(&mut self.redis)
                .await
                .with_context(|| format!("XACK {key}"))?;
        }
        status.persisted.fetch_add(inserted, Ordering::Relaxed);
        status.batches.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The orders not inserted whose id SQL holds with different fields, by
    /// index in `orders`, with the stored row. Not inserted but identical is a
    /// redelivery (a crash between commit and acknowledgement): harmless.
    async fn conflicts(
        &self,
        orders: &[OrderRecord],
        new: &[bool],
    ) -> anyhow::Result<Vec<(usize, OrderRecord)>> {
        let skipped: Vec<usize> = (0..orders.len()).filter(|&i| !new[i]).collect();
        if skipped.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<OrderId> = skipped.iter().map(|&i| orders[i].order_id).collect();
        let stored: HashMap<OrderId, OrderRecord> = self
            .db
            .orders_by_id(&ids)
            .await
            .context("cannot read back orders not inserted")?
            .into_iter()
            .map(|row| (row.order_id, row))
            .collect();
        let mut conflicts = Vec::new();
        for i in skipped {
            match stored.get(&orders[i].order_id) {
                Some(row) if *row == orders[i] => {}
                Some(row) => conflicts.push((i, row.clone())),
                // Not inserted, yet not there: only a concurrent delete could
                // do that, and nothing deletes orders. Refuse to acknowledge.
                None => anyhow::bail!(
                    "order {} was neither inserted nor found in SQL",
                    orders[i].order_id
                ),
            }
        }
        Ok(conflicts)
    }

    /// Deletes archived logs that are fully persisted (nothing pending, nothing
    /// unread), so restocks do not grow Redis forever.
    async fn collect_archives(&mut self, archives: &[String]) -> anyhow::Result<()> {
        for key in archives {
            let groups: redis::RedisResult<Vec<std::collections::HashMap<String, redis::Value>>> =
                redis::cmd("XINFO")
                    .arg("GROUPS")
                    .arg(key)
                    .query_async(&mut self.redis)
                    .await;
            let done = match groups {
                Ok(groups) => groups.iter().any(|g| {
                    let field = |name: &str| {
                        g.get(name)
                            .and_then(|v| redis::from_redis_value_ref::<i64>(v).ok())
                    };
                    g.get("name")
                        .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
                        .as_deref()
                        == Some(GROUP)
                        && field("pending") == Some(0)
                        && field("lag") == Some(0)
                }),
                // The archive key is gone already. Only that: any other
                // error must not lead to deleting an archive.
                Err(err) if err.to_string().contains("no such key") => true,
                Err(err) => return Err(err).context("XINFO GROUPS"),
            };
            if done {
                // The archive and its item's set share a slot; the legacy
                // set is elsewhere on a cluster, so it is told on its own.
                let mut forget = redis::pipe();
                forget.cmd("DEL").arg(key).ignore();
                if let Some(item) = keys::item_of(key) {
                    forget
                        .cmd("SREM")
                        .arg(ItemKeys::new(&item).archives)
                        .arg(key)
                        .ignore();
                }
                let _: () = forget
                    .query_async(&mut self.redis)
                    .await
                    .context("cannot delete a persisted archive")?;
                let _: () = redis::cmd("SREM")
                    .arg(keys::legacy_order_archives())
                    .arg(key)
                    .query_async(&mut self.redis)
                    .await
                    .context("cannot delete a persisted archive")?;
                self.grouped.remove(key);
            }
        }
        Ok(())
    }
}

/// A dead letter's field saying why it is one.
const REASON: &str = "reason";
/// How the reason of an entry that is not an order begins.
const UNREADABLE: &str = "unreadable";
/// A dead letter's fields naming the log and the entry it came from.
const STREAM: &str = "stream";
const ENTRY_ID: &str = "entry_id";

/// The dead-letter field keeping an unreadable entry's field `name`.
fn raw_field(name: &str) -> String {
    format!("raw_{name}")
}

/// A dead letter as `XRANGE` gives it: its id and its fields, as bytes (one
/// that is no text must not fail the others' reading).
type Letter = (String, Vec<(Vec<u8>, Vec<u8>)>);

/// Letters per dead-letter stream and rescue pass.
const RESCUE_PAGE: usize = 1000;

/// The order in a dead letter exactly as an earlier version keeps a
/// one-field entry (its reason, the log, the entry id, the raw `order`
/// field, nothing else), if that field is an order. Anything else, such as
/// this version's own unreadable letters, is none of the rescue's business.
fn earlier_versions_order(item: &ItemId, fields: &[(Vec<u8>, Vec<u8>)]) -> Option<OrderRecord> {
    let reason = format!(
        "{UNREADABLE}: missing field `{}`",
        order_log::legacy::ORDER_ID
    );
    let raw_order = raw_field(order_log::ORDER);
    let mut found = HashMap::new();
    for (name, value) in fields {
        let name = std::str::from_utf8(name).ok()?;
        let value = std::str::from_utf8(value).ok()?;
        let expected = [REASON, STREAM, ENTRY_ID, raw_order.as_str()];
        if !expected.contains(&name) || found.insert(name, value).is_some() {
            return None;
        }
    }
    if found.len() != 4 || found.get(REASON) != Some(&reason.as_str()) {
        return None;
    }
    order_log::parse_value(item, found.get(raw_order.as_str())?).ok()
}

/// A dead letter for an entry that is not an order: its raw fields.
fn unreadable_fields(stream: &str, entry: &Entry, err: &str) -> Vec<(String, String)> {
    let mut fields = vec![
        (REASON.to_owned(), format!("{UNREADABLE}: {err}")),
        (STREAM.to_owned(), stream.to_owned()),
        (ENTRY_ID.to_owned(), entry.id.clone()),
    ];
    let mut raw: Vec<&(String, redis::Value)> = entry.fields.iter().collect();
    raw.sort_by_key(|(name, _)| name);
    for (name, value) in raw {
        let text =
            redis::from_redis_value_ref::<String>(value).unwrap_or_else(|_| format!("{value:?}"));
        fields.push((raw_field(name), text));
    }
    fields
}

/// A dead letter: the log's entry, where it came from, and the row SQL holds.
fn dead_letter_fields(
    stream: &str,
    entry_id: &str,
    order: &OrderRecord,
    stored: &OrderRecord,
) -> Vec<(String, String)> {
    [
        (REASON, "order id held in SQL by a different order".into()),
        (STREAM, stream.to_owned()),
        (ENTRY_ID, entry_id.to_owned()),
        ("order_id", order.order_id.to_string()),
        ("user_id", order.user_id.clone()),
        ("strategy", order.strategy.clone()),
        ("generation", order.generation.to_string()),
        ("created_ms", order.created_at.to_string()),
        ("sql_item_id", stored.item_id.clone()),
        ("sql_user_id", stored.user_id.clone()),
        ("sql_strategy", stored.strategy.clone()),
        ("sql_generation", stored.generation.to_string()),
        ("sql_created_ms", stored.created_at.to_string()),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), value))
    .collect()
}

#[cfg(test)]
mod tests {
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
