//! The SQL side: connection, migrations and every query outside the `sql`
//! strategy's guard, the orders `INSERT` included (for the persister and
//! for the `sql` strategy's transaction). One code path for SQLite (the embedded default) and Postgres, via
//! sqlx's `Any` driver; the queries stick to syntax both accept (`$N`
//! placeholders, `ON CONFLICT`, `RETURNING`), so both run the same migrations
//! from `migrations/`.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde::Serialize;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{Any, AnyPool, Row, Transaction};

use crate::domain::{ItemId, UserId};
use crate::orders::moves::{Move, OrderState};
use crate::orders::snowflake::OrderId;

/// Which database is behind the URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// One persisted order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct OrderRecord {
    pub order_id: OrderId,
    pub item_id: String,
    pub user_id: String,
    /// The strategy the purchase named (see `GET /api/strategies`).
    pub strategy: String,
    /// The sale (restock generation) the order belongs to.
    pub generation: i64,
    /// Milliseconds since the Unix epoch: the order id's own timestamp.
    pub created_at: i64,
}

/// Listing order of `GET /api/orders`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Newest first (descending id).
    #[default]
    Desc,
    /// Oldest first (ascending id).
    Asc,
}

/// `GET /api/orders` filters. `after` is the cursor: the last id of the
/// previous page; the page holds the ids that come after it in `direction`.
/// Snowflake ids grow with time and never repeat, so the cursor is stable
/// while new orders arrive.
/// The `sql` strategy's record of an Idempotency-Key that bought: the SQL
/// twin of the Redis record (`sale::idempotency`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub fingerprint: String,
    pub order_id: OrderId,
    pub remaining: i64,
}

#[derive(Debug, Clone, Default)]
pub struct OrderQuery {
    pub item: Option<ItemId>,
    pub user: Option<UserId>,
    pub state: Option<OrderState>,
    pub after: Option<OrderId>,
    pub direction: Direction,
    pub limit: u32,
}

/// What an orders `INSERT` does with an id already stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnDuplicate {
    Skip,
    Fail,
}

/// An order as `GET /api/orders` lists it: the order, and where it stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ListedOrder {
    #[serde(flatten)]
    pub order: OrderRecord,
    /// `paid` for every order of a sale without a payment window (and when
    /// read from a server that predates the lifecycle).
    #[serde(default = "paid")]
    pub state: OrderState,
    /// When it left `reserved` (ms since the Unix epoch, Redis's clock);
    /// `null` while reserved, and for orders paid when bought.
    #[serde(default)]
    pub state_at: Option<i64>,
}

fn paid() -> OrderState {
    OrderState::Paid
}

/// A page of `GET /api/orders`.
#[derive(Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct OrdersPage {
    pub orders: Vec<ListedOrder>,
    /// Pass as `after` for the next page; `null` on the last page.
    pub next: Option<OrderId>,
}

/// Rows per multi-row INSERT at most: well under SQLite's 32766 bound
/// parameters (8 per row) and big enough to amortise a round trip.
const INSERT_CHUNK: usize = 128;

/// `rows` in runs whose lengths are powers of two, at most [`INSERT_CHUNK`]:
/// a batch of any size is then written (or read back) by at most eight
/// statement shapes, which each connection prepares once and keeps in its
/// statement cache. With one statement per batch size, most batches parsed
/// and planned a new statement of up to 1,400 parameters, and pushed the
/// others out of the cache.
fn power_of_two_chunks<T>(mut rows: &[T]) -> impl Iterator<Item = &[T]> {
    std::iter::from_fn(move || {
        let n = INSERT_CHUNK.min(1 << rows.len().checked_ilog2()?);
        let (chunk, rest) = rows.split_at(n);
        rows = rest;
        Some(chunk)
    })
}

#[derive(Clone, Debug)]
pub struct Db {
    pool: AnyPool,
    backend: Backend,
}

impl Db {
    /// Connects, creates a SQLite file's directory if needed, turns WAL on for
    /// SQLite, and runs the migrations.
    pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<Self> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            anyhow::bail!("DATABASE_URL must start with sqlite: or postgres:, got `{url}`");
        };
        let url = match backend {
            Backend::Sqlite => prepare_sqlite_url(url)?,
            Backend::Postgres => url.to_owned(),
        };
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .connect(&url)
            .await
            .with_context(|| format!("cannot open the database at {}", redact(&url)))?;
        if backend == Backend::Sqlite {
            // WAL lets readers (views, the orders API) run beside the one
            // writer; the setting is stored in the file.
            sqlx::query("PRAGMA journal_mode = WAL")
                .execute(&pool)
                .await
                .context("cannot turn on SQLite WAL")?;
        }
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .context("database migrations failed")?;
        Ok(Self { pool, backend })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Readiness probe.
    pub async fn ping(&self) -> sqlx::Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map(drop)
    }

    /// Starts a transaction that will write. On SQLite it takes the write
    /// lock up front (`BEGIN IMMEDIATE`), so writers queue on the busy timeout
    /// instead of failing on a read-to-write upgrade.
    pub async fn begin_write(&self) -> sqlx::Result<Transaction<'static, Any>> {
        match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.pool.begin().await,
        }
    }

    /// A restock's SQL step (the `sql` strategy's stock): resets the item's
    /// row and numbers the new sale one above the last one SQL saw. Run in a
    /// write transaction that stays open while the restock's Redis step runs:
    /// the row lock it takes keeps `sql` purchases out until both are done.
    pub async fn restock_item(
        tx: &mut Transaction<'static, Any>,
        item: &ItemId,
        stock: u64,
        per_user_limit: u64,
    ) -> sqlx::Result<u64> {
        let generation: i64 = sqlx::query_scalar(
            "INSERT INTO items (item_id, initial_stock, stock, per_user_limit, generation, updated_at)
             VALUES ($1, $2, $2, $3, 1, $4)
             ON CONFLICT (item_id) DO UPDATE SET
                initial_stock = excluded.initial_stock, stock = excluded.stock,
                per_user_limit = excluded.per_user_limit, generation = items.generation + 1,
                updated_at = excluded.updated_at
             RETURNING generation",
        )
        .bind(item.as_str())
        .bind(stock as i64)
        .bind(per_user_limit as i64)
        .bind(now_ms())
        .fetch_one(&mut **tx)
        .await?;
        Ok(generation.max(0) as u64)
    }

    /// Sets the sale number, when Redis had already issued a higher one.
    pub async fn set_item_generation(
        tx: &mut Transaction<'static, Any>,
        item: &ItemId,
        generation: u64,
    ) -> sqlx::Result<()> {
        sqlx::query("UPDATE items SET generation = $1 WHERE item_id = $2")
            .bind(generation as i64)
            .bind(item.as_str())
            .execute(&mut **tx)
            .await
            .map(drop)
    }

    /// Inserts orders in one transaction, skipping ids already there (the
    /// persister may see an entry twice after a crash). Returns how many
    /// rows it inserted: fewer than `orders` means some id was in SQL
    /// already, or twice in `orders`, and the caller reads those back
    /// ([`Db::orders_by_id`]) to tell a redelivery from a conflict.
    ///
    /// `states` gives the state to store each order in, where it is not
    /// `paid`: orders of a sale with a payment window, as Redis had them
    /// when their entries were read (`reserved`, or already ended). Written
    /// by the insert itself, so a row already stored (a redelivery, or
    /// another order under the id) is never touched; a move read before its
    /// order is held by the persister until the row exists.
    pub async fn insert_orders(
        &self,
        orders: &[OrderRecord],
        states: &HashMap<OrderId, OrderState>,
    ) -> sqlx::Result<u64> {
        let mut tx = self.pool.begin().await?;
        let inserted = self
            .write_orders(&mut tx, orders, states, now_ms(), OnDuplicate::Skip)
            .await?;
        tx.commit().await?;
        Ok(inserted)
    }

    /// Applies the lifecycle's moves of `item`'s orders to their rows, in
    /// one transaction. Returns the moves whose order SQL does not hold yet
    /// (its entry is still on its way): the caller keeps those and applies
    /// them again later. A row of another item under the same id (a
    /// conflict, kept as a dead letter) is not touched.
    ///
    /// A move is applied once: its row takes the move's time (`state_at`)
    /// only while it has none, and a move applied again finds the row moved
    /// and changes nothing. The first application of a return of an order
    /// of `stock_in_sql` (the `sql` strategy) of the current sale also gives
    /// its unit back to SQL's stock and its buyer's allowance, in the same
    /// transaction: that strategy sells from SQL, which the return in Redis
    /// cannot reach.
    pub async fn apply_moves(
        &self,
        item: &ItemId,
        moves: &[Move],
        stock_in_sql: &str,
    ) -> sqlx::Result<Vec<Move>> {
        let mut tx = self.pool.begin().await?;
        let mut held = Vec::new();
        for one in moves {
            let moved: Option<(String, i64, String)> = sqlx::query_as(
                "UPDATE orders SET state = $1, state_at = $2
                 WHERE order_id = $3 AND item_id = $4 AND state_at IS NULL
                 RETURNING strategy, generation, user_id",
            )
            .bind(one.state.as_str())
            .bind(one.at_ms)
            .bind(one.order_id.0 as i64)
            .bind(item.as_str())
            .fetch_optional(&mut *tx)
            .await?;
            let Some((strategy, generation, user)) = moved else {
                let stored: Option<i64> = sqlx::query_scalar(
                    "SELECT order_id FROM orders WHERE order_id = $1 AND item_id = $2",
                )
                .bind(one.order_id.0 as i64)
                .bind(item.as_str())
                .fetch_optional(&mut *tx)
                .await?;
                // Moved already (a redelivery): nothing to do. Not stored
                // yet: held.
                if stored.is_none() {
                    held.push(*one);
                }
                continue;
            };
            let returned = matches!(one.state, OrderState::Cancelled | OrderState::Expired);
            if returned && strategy == stock_in_sql {
                // Only into the sale it was bought in: a restock since set
                // the stock anew (the row's generation moved on).
                let back = sqlx::query(
                    "UPDATE items SET stock = stock + 1 WHERE item_id = $1 AND generation = $2",
                )
                .bind(item.as_str())
                .bind(generation)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if back > 0 {
                    sqlx::query(
                        "UPDATE sql_buyers SET units = units - 1
                         WHERE item_id = $1 AND generation = $2 AND user_id = $3 AND units > 0",
                    )
                    .bind(item.as_str())
                    .bind(generation)
                    .bind(&user)
                    .execute(&mut *tx)
                    .await?;
                }
            }
        }
        tx.commit().await?;
        Ok(held)
    }

    /// Makes a reserved order final (`paid`, at `at_ms`): an `sql` order of
    /// a windowed sale whose Redis mirror did not write, so no reservation,
    /// deadline or move of it will ever come. A row that already moved is
    /// left as it is.
    pub async fn finalize_order(&self, order_id: OrderId, at_ms: i64) -> sqlx::Result<()> {
        sqlx::query(
            "UPDATE orders SET state = $1, state_at = $2
             WHERE order_id = $3 AND state = $4 AND state_at IS NULL",
        )
        .bind(OrderState::Paid.as_str())
        .bind(at_ms)
        .bind(order_id.0 as i64)
        .bind(OrderState::Reserved.as_str())
        .execute(&self.pool)
        .await
        .map(drop)
    }

    /// Where order `order_id` stands in SQL, if SQL holds it.
    pub async fn order_state(&self, order_id: OrderId) -> sqlx::Result<Option<OrderState>> {
        let state: Option<String> =
            sqlx::query_scalar("SELECT state FROM orders WHERE order_id = $1")
                .bind(order_id.0 as i64)
                .fetch_optional(&self.pool)
                .await?;
        state
            .map(|state| OrderState::parse(&state).map_err(|err| sqlx::Error::Decode(err.into())))
            .transpose()
    }

    /// Inserts one order inside `tx` (the `sql` strategy's transaction),
    /// persisted as it is created. A duplicate id is an error: the
    /// transaction must not commit a sale without its own order row.
    /// `state`: `reserved` in a sale with a payment window.
    pub async fn insert_order_in(
        &self,
        tx: &mut Transaction<'static, Any>,
        order: &OrderRecord,
        state: OrderState,
    ) -> sqlx::Result<()> {
        let states = if state == OrderState::Paid {
            HashMap::new()
        } else {
            HashMap::from([(order.order_id, state)])
        };
        self.write_orders(
            tx,
            std::slice::from_ref(order),
            &states,
            order.created_at,
            OnDuplicate::Fail,
        )
        .await
        .map(drop)
    }

    /// The `sql` strategy's record of an Idempotency-Key that bought on
    /// `item`, if one younger than `since_ms` exists, read inside `tx`.
    pub async fn key_bought_in(
        tx: &mut Transaction<'static, Any>,
        item: &str,
        key: &str,
        since_ms: i64,
    ) -> sqlx::Result<Option<KeyRecord>> {
        let row: Option<(String, i64, i64)> = sqlx::query_as(
            "SELECT fingerprint, order_id, remaining FROM idempotency_keys
             WHERE item_id = $1 AND idem_key = $2 AND created_at >= $3",
        )
        .bind(item)
        .bind(key)
        .bind(since_ms)
        .fetch_optional(&mut **tx)
        .await?;
        Ok(row.map(|(fingerprint, order_id, remaining)| KeyRecord {
            fingerprint,
            order_id: OrderId(order_id as u64),
            remaining,
        }))
    }

    /// Records inside `tx` that `key` bought `record.order_id` on `item`:
    /// false when a record younger than `since_ms` exists (another
    /// transaction's, committed first; on Postgres this waits for it).
    pub async fn record_key_in(
        tx: &mut Transaction<'static, Any>,
        item: &str,
        key: &str,
        record: &KeyRecord,
        since_ms: i64,
    ) -> sqlx::Result<bool> {
        let written = sqlx::query(
            "INSERT INTO idempotency_keys (item_id, idem_key, fingerprint, order_id, remaining, created_at)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (item_id, idem_key) DO UPDATE SET
                 fingerprint = excluded.fingerprint, order_id = excluded.order_id,
                 remaining = excluded.remaining, created_at = excluded.created_at
             WHERE idempotency_keys.created_at < $7",
        )
        .bind(item)
        .bind(key)
        .bind(record.fingerprint.as_str())
        .bind(record.order_id.0 as i64)
        .bind(record.remaining)
        .bind(now_ms())
        .bind(since_ms)
        .execute(&mut **tx)
        .await?
        .rows_affected();
        Ok(written == 1)
    }

    /// The orders `INSERT`, the only one: rows in chunks; how many it wrote.
    ///
    /// No `RETURNING`: which rows were skipped is asked only when some were
    /// (a redelivery, rare). Returning every id cost SQLite an ephemeral
    /// table of the returned rows and sqlx a row to build per order.
    async fn write_orders(
        &self,
        tx: &mut Transaction<'static, Any>,
        orders: &[OrderRecord],
        states: &HashMap<OrderId, OrderState>,
        persisted_at: i64,
        on_duplicate: OnDuplicate,
    ) -> sqlx::Result<u64> {
        // Without a state to store, the column's default (`paid`) is: a
        // bound value per row cost about 1,600 instructions a `lua`
        // purchase, persister included (callgrind), in every sale.
        let with_state = !states.is_empty();
        let columns = if with_state { 8 } else { 7 };
        let mut written = 0;
        for chunk in power_of_two_chunks(orders) {
            let mut sql = String::from(
                "INSERT INTO orders (order_id, item_id, user_id, strategy, generation, created_at, persisted_at",
            );
            sql.push_str(if with_state {
                ", state) VALUES "
            } else {
                ") VALUES "
            });
            for i in 0..chunk.len() {
                if i > 0 {
                    sql.push(',');
                }
                sql.push('(');
                for column in 0..columns {
                    if column > 0 {
                        sql.push(',');
                    }
                    match self.backend {
                        // Plain `?`: SQLite resolves each *named* parameter
                        // ($N) by a linear scan, which made binding a
                        // 1400-parameter insert quadratic (a fifth of the
                        // server's CPU under load, in a profile).
                        Backend::Sqlite => sql.push('?'),
                        Backend::Postgres => {
                            sql.push_str(&format!("${}", i * columns + column + 1))
                        }
                    }
                }
                sql.push(')');
            }
            if on_duplicate == OnDuplicate::Skip {
                sql.push_str(" ON CONFLICT (order_id) DO NOTHING");
            }
            let mut query = sqlx::query(&sql);
            for order in chunk {
                query = query
                    .bind(order.order_id.0 as i64)
                    .bind(order.item_id.as_str())
                    .bind(order.user_id.as_str())
                    .bind(order.strategy.as_str())
                    .bind(order.generation)
                    .bind(order.created_at)
                    .bind(persisted_at);
                if with_state {
                    query = query.bind(
                        states
                            .get(&order.order_id)
                            .copied()
                            .unwrap_or(OrderState::Paid)
                            .as_str(),
                    );
                }
            }
            written += query.execute(&mut **tx).await?.rows_affected();
        }
        Ok(written)
    }

    /// The rows stored under these ids.
    pub async fn orders_by_id(&self, ids: &[OrderId]) -> sqlx::Result<Vec<OrderRecord>> {
        let mut found = Vec::with_capacity(ids.len());
        for chunk in power_of_two_chunks(ids) {
            let placeholders: Vec<String> = (1..=chunk.len()).map(|n| format!("${n}")).collect();
            let sql = format!(
                "SELECT order_id, item_id, user_id, strategy, generation, created_at FROM orders WHERE order_id IN ({})",
                placeholders.join(",")
            );
            let mut query = sqlx::query(&sql);
            for id in chunk {
                query = query.bind(id.0 as i64);
            }
            for row in query.fetch_all(&self.pool).await? {
                found.push(order_from_row(&row)?);
            }
        }
        Ok(found)
    }

    /// Orders of one sale of `item` in SQL.
    pub async fn count_orders(&self, item: &ItemId, generation: u64) -> sqlx::Result<u64> {
        let count: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM orders WHERE item_id = $1 AND generation = $2",
        )
        .bind(item.as_str())
        .bind(generation as i64)
        .fetch_one(&self.pool)
        .await?;
        Ok(count.max(0) as u64)
    }

    /// Orders, newest first.
    pub async fn list_orders(&self, query: &OrderQuery) -> sqlx::Result<Vec<ListedOrder>> {
        // Optional filters as `($n IS NULL OR col = $n)` would need typed NULLs,
        // which `Any` cannot bind portably; build the WHERE clause instead.
        let mut conditions = Vec::new();
        let mut n = 0;
        let mut next = || {
            n += 1;
            n
        };
        if query.item.is_some() {
            conditions.push(format!("item_id = ${}", next()));
        }
        if query.user.is_some() {
            conditions.push(format!("user_id = ${}", next()));
        }
        if query.state.is_some() {
            conditions.push(format!("state = ${}", next()));
        }
        let (cmp, order) = match query.direction {
            Direction::Desc => ("<", "DESC"),
            Direction::Asc => (">", "ASC"),
        };
        if query.after.is_some() {
            conditions.push(format!("order_id {cmp} ${}", next()));
        }
        let mut sql = String::from(
            "SELECT order_id, item_id, user_id, strategy, generation, created_at, state, state_at FROM orders",
        );
        if !conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conditions.join(" AND "));
        }
        sql.push_str(&format!(" ORDER BY order_id {order} LIMIT ${}", next()));
        let mut q = sqlx::query(&sql);
        if let Some(item) = &query.item {
            q = q.bind(item.as_str());
        }
        if let Some(user) = &query.user {
            q = q.bind(user.as_str());
        }
        if let Some(state) = query.state {
            q = q.bind(state.as_str());
        }
        if let Some(after) = query.after {
            q = q.bind(after.0 as i64);
        }
        q = q.bind(i64::from(query.limit));
        let rows = q.fetch_all(&self.pool).await?;
        rows.iter()
            .map(|row| {
                let state: String = row.try_get("state")?;
                Ok(ListedOrder {
                    order: order_from_row(row)?,
                    state: OrderState::parse(&state)
                        .map_err(|err| sqlx::Error::Decode(err.into()))?,
                    state_at: row.try_get("state_at")?,
                })
            })
            .collect()
    }
}

fn order_from_row(row: &AnyRow) -> sqlx::Result<OrderRecord> {
    Ok(OrderRecord {
        order_id: OrderId(row.try_get::<i64, _>("order_id")? as u64),
        item_id: row.try_get("item_id")?,
        user_id: row.try_get("user_id")?,
        strategy: row.try_get("strategy")?,
        generation: row.try_get("generation")?,
        created_at: row.try_get("created_at")?,
    })
}

/// Adds `mode=rwc` (create the file if missing) and creates the file's
/// directory, so the embedded default works from a fresh checkout.
fn prepare_sqlite_url(url: &str) -> anyhow::Result<String> {
    let rest = url.trim_start_matches("sqlite:").trim_start_matches("//");
    let (path, params) = rest.split_once('?').unwrap_or((rest, ""));
    if let Some(dir) = Path::new(path)
        .parent()
        .filter(|d| path != ":memory:" && !d.as_os_str().is_empty())
    {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create database directory {}", dir.display()))?;
    }
    Ok(if params.contains("mode=") {
        url.to_owned()
    } else if params.is_empty() {
        format!("{url}?mode=rwc")
    } else {
        format!("{url}&mode=rwc")
    })
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redact("postgres://app:hunter2@db:5432/x"),
            "postgres://app:***@db:5432/x"
        );
        assert_eq!(
            redact("sqlite://data/seckill.db"),
            "sqlite://data/seckill.db"
        );
    }

    #[test]
    fn sqlite_urls_get_create_mode() {
        let dir = std::env::temp_dir().join(format!("seckill-url-{}", uuid::Uuid::new_v4()));
        let url = format!("sqlite://{}/x.db", dir.display());
        assert_eq!(prepare_sqlite_url(&url).unwrap(), format!("{url}?mode=rwc"));
        assert!(dir.is_dir(), "directory created");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn batches_of_any_size_use_few_statement_shapes() {
        let mut shapes = std::collections::BTreeSet::new();
        for len in 0..=700 {
            let rows: Vec<usize> = (0..len).collect();
            let chunks: Vec<&[usize]> = power_of_two_chunks(&rows).collect();
            assert_eq!(chunks.concat(), rows, "every row once, in order");
            for chunk in chunks {
                assert!(chunk.len().is_power_of_two() && chunk.len() <= INSERT_CHUNK);
                shapes.insert(chunk.len());
            }
        }
        assert_eq!(shapes.len(), 8, "{shapes:?}");
    }
}
