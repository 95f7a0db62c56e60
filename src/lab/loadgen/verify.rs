//! Reading back the truths of a sale once its race ends: the server's item
//! view (sold, oversold, drift, undersold, lag), and what it stored: the
//! order ids in the item's order log and, once the persister caught up, the
//! orders in SQL, for the history check ([`super::history`]).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::client::{Conn, probe};
use super::history::{Lifecycle, Stored};
use super::{Target, buyer_number};
use crate::infra::redis_conn::{RedisTarget, Timeouts};
use crate::lab::cpu::CpuSample;
use crate::orders::db::OrdersPage;
use crate::orders::moves::OrderState;
use crate::orders::order_log;
use crate::orders::snowflake::OrderId;
use crate::sale::ItemView;
use crate::sale::stats::CounterSnapshot;
use crate::strategy::StrategyKind;

pub(super) struct Truths {
    /// `None`: the server no longer knows the item (its Redis restarted
    /// empty); what SQL holds is still read.
    pub view: Option<ItemView>,
    /// The server's counters for the raced strategy (`None`: it counted
    /// nothing on this item).
    pub counters: Option<CounterSnapshot>,
    pub stored: Stored,
    /// CPU used by the server and Redis once SQL had caught up (at once
    /// without a persister), before the order listing and the order-log
    /// check; it includes the polls that waited for SQL (one item view per
    /// 20 ms while it caught up). `None` when SQL did not catch up in time.
    pub cpu_when_settled: Option<CpuSample>,
    /// How long SQL took to catch up after the load; `None`: it did not.
    pub settle_s: Option<f64>,
}

/// How long to wait for the persister to catch up before calling SQL short.
pub(super) const PERSIST_WAIT: Duration = Duration::from_secs(15);

/// `windowed`: the sale has a payment window, and every deadline has passed:
/// SQL is read until none of its orders is still reserved (each move has
/// reached SQL), and the lifecycle comes with what was stored.
pub(super) async fn read_truths(
    target: &Target,
    item: &str,
    strategy: StrategyKind,
    windowed: bool,
) -> anyhow::Result<Truths> {
    let mut conn = Conn::default();
    // Without a persister (`PERSISTER=false`: 404 here) SQL never catches up
    // for the Redis strategies, so there is nothing to wait for.
    let persisting = probe(target, "/api/persister").await;
    let deadline = Instant::now()
        + if persisting {
            PERSIST_WAIT
        } else {
            Duration::ZERO
        };
    let load_ended = Instant::now();
    let view = loop {
        let Some(view) = conn
            .get_unless_missing::<ItemView>(target, &format!("/api/items/{item}"))
            .await?
        else {
            break None;
        };
        if view.lag <= 0 || Instant::now() >= deadline {
            break Some(view);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Settled once SQL holds at least what the order log does: below zero,
    // SQL has orders the log lacks (an `sql` order whose mirror failed, or
    // log entries a failover lost after they were persisted), and the
    // persister has nothing left to move. A vanished sale has nothing left
    // to persist either.
    let settled = view.as_ref().is_none_or(|v| v.lag <= 0);
    let cpu_when_settled = (settled || !persisting).then(|| target.pids.sample());
    let settle_s = (persisting && settled).then(|| load_ended.elapsed().as_secs_f64());
    let counters = view
        .as_ref()
        .and_then(|v| v.strategies.get(&strategy).copied());

    let (log, log_duplicates) = match &target.redis {
        Some(redis) => {
            let (log, duplicates) = order_log(redis, item).await?;
            (Some(log), duplicates)
        }
        None => (None, 0),
    };
    // The counts settled; the sets may not have: a failover can drop log
    // entries already in SQL while others still wait for the persister, and
    // the counts then match early. SQL is read again until it holds every
    // order of the log, or the wait is over.
    let sql = if settled {
        loop {
            let in_sql = orders_in_sql(&mut conn, target, item).await?;
            let behind = log
                .as_ref()
                .is_some_and(|log| log.keys().any(|id| !in_sql.contains_key(id)))
                || (windowed && in_sql.values().any(|row| !lifecycle_settled(row)));
            if !behind || Instant::now() >= deadline {
                break Some(in_sql);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    } else {
        None
    };

    // The item view again: expiries that reached SQL during the wait above
    // reached the view's `returned` count before.
    let view = match (&view, windowed) {
        (Some(_), true) => {
            conn.get_unless_missing::<ItemView>(target, &format!("/api/items/{item}"))
                .await?
        }
        _ => view,
    };
    // Every order's end known: SQL read, and every row at its end with its
    // time. Otherwise the check falls back to counting (history.rs).
    let known = persisting
        && sql
            .as_ref()
            .is_some_and(|rows| rows.values().all(lifecycle_settled));
    let lifecycle = windowed.then(|| Lifecycle {
        known,
        reserved_left: view.as_ref().map(|v| v.reserved),
        states: sql
            .iter()
            .flatten()
            .map(|(id, (_, state, at))| (*id, (*state, *at)))
            .collect(),
        returned: view.as_ref().map(|v| v.returned),
        ..Lifecycle::default()
    });
    let sql = sql.map(|orders| {
        orders
            .into_iter()
            .map(|(id, (buyer, _, _))| (id, buyer))
            .collect()
    });
    Ok(Truths {
        view,
        counters,
        stored: Stored {
            log,
            log_duplicates,
            sql,
            lifecycle,
        },
        cpu_when_settled,
        settle_s,
    })
}

/// Whether an order's row is at its end, with the end's time: a row
/// reserved, or ended but not yet given its move's time, is still moving.
fn lifecycle_settled((_, state, at): &(u64, OrderState, Option<i64>)) -> bool {
    match state {
        OrderState::Reserved => false,
        // Paid when bought (`sql`), or paid with its move applied.
        OrderState::Paid => true,
        OrderState::Cancelled | OrderState::Expired => at.is_some(),
    }
}

/// The item's orders in SQL, through the orders API, with their buyers.
async fn orders_in_sql(
    conn: &mut Conn,
    target: &Target,
    item: &str,
) -> anyhow::Result<HashMap<OrderId, (u64, OrderState, Option<i64>)>> {
    let mut in_sql = HashMap::new();
    let mut after: Option<OrderId> = None;
    loop {
        let mut path = format!("/api/orders?item={item}&limit=1000");
        if let Some(cursor) = &after {
            path.push_str(&format!("&after={cursor}"));
        }
        let page: OrdersPage = conn.get(target, &path).await?;
        in_sql.extend(page.orders.iter().map(|order| {
            // A buyer that is none of ours cannot own an order of this
            // fresh item: it stays unexplained.
            let buyer = buyer_number(&order.order.user_id).unwrap_or(u64::MAX);
            (order.order.order_id, (buyer, order.state, order.state_at))
        }));
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok(in_sql),
        }
    }
}

/// The orders in the item's order log, read straight from Redis, with their
/// buyers, and how many entries repeat an order id already seen.
async fn order_log(
    redis: &RedisTarget,
    item: &str,
) -> anyhow::Result<(HashMap<OrderId, u64>, u64)> {
    let patient = Duration::from_secs(10);
    let mut redis = redis
        .connect(Timeouts {
            response: patient,
            connect: patient,
        })
        .await
        .context("cannot reach the server's Redis for the order-log check")?;
    let key = crate::keys::ItemKeys::new(
        &crate::domain::ItemId::parse(item).map_err(anyhow::Error::msg)?,
    )
    .orders()
    .to_owned();
    let mut logged = HashMap::new();
    let mut duplicates = 0;
    let mut start = "-".to_owned();
    loop {
        let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg(&key)
            .arg(&start)
            .arg("+")
            .arg("COUNT")
            .arg(10_000)
            .query_async(&mut redis)
            .await?;
        let Some((last, _)) = entries.last() else {
            break;
        };
        start = format!("({last}");
        for (_, fields) in &entries {
            for (id, buyer) in order_log::ids_and_buyers(fields) {
                let Ok(id) = OrderId::parse(id) else {
                    continue;
                };
                let buyer = buyer_number(buyer).unwrap_or(u64::MAX);
                if logged.insert(id, buyer).is_some() {
                    duplicates += 1;
                }
            }
        }
    }
    Ok((logged, duplicates))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bench reads the server's own type: a field the server stops
    /// sending is an error, not a silent zero.
    #[test]
    fn an_item_view_missing_a_truth_does_not_read() {
        let view = serde_json::json!({
            "item_id": "a", "initial_stock": 1, "stock": 0, "per_user_limit": 1,
            "generation": 1, "strategy": "lua", "sold": 1, "oversold": 0, "drift": 0,
            "undersold": 0, "persisted": 1, "lag": 0, "strategies": {"lua": CounterSnapshot::default()},
        });
        let read: ItemView = serde_json::from_value(view.clone()).unwrap();
        assert_eq!(read.sold, 1);
        assert!(read.strategies.contains_key(&StrategyKind::Lua));
        let mut renamed = view;
        let sold = renamed.as_object_mut().unwrap().remove("sold").unwrap();
        renamed["units_sold"] = sold;
        assert!(serde_json::from_value::<ItemView>(renamed).is_err());
    }
}
