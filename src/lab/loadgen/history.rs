//! The history check: every request of a race, with its send and completion
//! instants, its buyer, its outcome and its order id, checked exactly against
//! the sale's specification: one counter of `stock` units, at most
//! `per_user_limit` per buyer.
//!
//! A purchase takes effect at one instant between its send and its
//! completion, or not at all. The history is linearizable when such instants
//! exist for every request so that the counter never goes below zero, no
//! buyer exceeds the limit, and every refusal is true at its instant. For a
//! counter that only decrements this reduces to counting, which is what
//! [`check`] does:
//!
//! - **oversold**: more distinct orders exist (answered 201, in the order
//!   log, in SQL) than units.
//! - **limit**: a buyer holds more orders than the limit.
//! - **duplicate ids**: two 201s carry one order id, or the order log holds
//!   one id twice.
//! - **lost**: a 201 whose id is missing from the order log or from SQL.
//! - **wrong buyer**: an order stored for another buyer than its 201's.
//! - **ghost orders**: stored, but never answered 201. Each must be matched
//!   by its own ambiguous request of the same buyer (no answer, a 503
//!   `unavailable`, a 5xx, a 201 without a readable id: it may have taken
//!   effect); one left unmatched is a violation.
//! - **phantom sold-out**: a `sold_out` that completed before `stock`
//!   purchases could have taken effect: fewer than `stock` purchases (201s,
//!   and the ambiguous requests matched to ghost orders) had been *sent* by
//!   then. Likewise a **phantom limit**: `limit_reached` before the buyer had
//!   sent `limit` purchases.
//! - **refused with stock**: refusals other than `sold_out` and
//!   `limit_reached` that completed while units certainly remained (fewer
//!   than `stock` purchases sent by then). Not a violation (a refusal that
//!   changed nothing is allowed), but units a buyer asked for while they sat
//!   on the shelf.
//!
//! The verdict names the first counterexample: its kind, its request ids and
//! their times.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use crate::orders::snowflake::OrderId;

/// How one request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CallOutcome {
    Created(OrderId),
    SoldOut,
    LimitReached,
    /// 503 `contention`: the strategy gave up before writing anything.
    Contention,
    /// 503 `unavailable`: Redis or the database failed; may have taken effect.
    Unavailable,
    /// 503 `outcome_unknown`: the purchase's write was sent and its answer
    /// lost; may have taken effect (the server says so itself).
    OutcomeUnknown,
    /// Any other answer (a 5xx, an unexpected 4xx); may have taken effect.
    Other(u16),
    /// No answer at all (the connection failed); may have taken effect.
    Transport,
}

impl CallOutcome {
    /// Whether the purchase may have taken effect without the client
    /// learning it.
    fn ambiguous(self) -> bool {
        match self {
            CallOutcome::Unavailable | CallOutcome::OutcomeUnknown | CallOutcome::Transport => true,
            // A 5xx, or a 2xx whose order id could not be read.
            CallOutcome::Other(status) => status >= 500 || (200..300).contains(&status),
            _ => false,
        }
    }

    /// A refusal that says nothing about the stock or the limit.
    fn refusal(self) -> bool {
        matches!(
            self,
            CallOutcome::Contention
                | CallOutcome::Unavailable
                | CallOutcome::OutcomeUnknown
                | CallOutcome::Other(_)
                | CallOutcome::Transport
        )
    }
}

/// One request: microseconds since the run's start (monotonic clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Call {
    /// The request's number in the run.
    pub id: u64,
    /// The buyer's number (`b<user>` on the wire).
    pub user: u64,
    /// When the schedule meant to send it (open loop); the send otherwise.
    pub intended_us: u64,
    pub sent_us: u64,
    pub done_us: u64,
    pub outcome: CallOutcome,
}

/// The sale the history is checked against.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    pub stock: u64,
    pub per_user_limit: u64,
}

/// What the server stored, read back after the run: order ids with their
/// buyer's number (`u64::MAX` for a user id that is none of the bench's).
/// `None`: not readable from here (no Redis URL), or SQL did not catch up in
/// time.
#[derive(Debug, Default)]
pub struct Stored {
    /// The item's order log.
    pub log: Option<HashMap<OrderId, u64>>,
    /// Entries of the order log beyond one per order id.
    pub log_duplicates: u64,
    pub sql: Option<HashMap<OrderId, u64>>,
}

/// A request named in a counterexample, times in milliseconds since the start.
#[derive(Debug, Clone, Serialize)]
pub struct CallRef {
    pub id: u64,
    pub user: u64,
    pub sent_ms: f64,
    pub done_ms: f64,
    pub outcome: CallOutcome,
}

impl From<&Call> for CallRef {
    fn from(call: &Call) -> Self {
        Self {
            id: call.id,
            user: call.user,
            sent_ms: call.sent_us as f64 / 1000.0,
            done_ms: call.done_us as f64 / 1000.0,
            outcome: call.outcome,
        }
    }
}

/// The first violation found, earliest completion first.
#[derive(Debug, Clone, Serialize)]
pub struct Counterexample {
    /// `oversold`, `per_user_limit`, `duplicate_id`, `lost_in_log`,
    /// `lost_in_sql`, `ghost_order`, `phantom_sold_out`, `phantom_limit`.
    pub kind: &'static str,
    pub detail: String,
    pub calls: Vec<CallRef>,
    /// When it became visible (µs since the start), for ordering.
    #[serde(skip)]
    at_us: u64,
}

/// The verdict and every count behind it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HistoryCheck {
    pub linearizable: bool,
    pub counterexample: Option<Counterexample>,
    pub requests: u64,
    /// Distinct orders (201s, order log, SQL) beyond the stock.
    pub oversold: u64,
    /// Buyers holding more than the limit.
    pub over_limit_buyers: u64,
    pub duplicate_ids: u64,
    pub lost_in_log: Option<u64>,
    pub lost_in_sql: Option<u64>,
    /// Stored orders never answered 201.
    pub ghost_orders: u64,
    /// Of those, orders of buyers with no ambiguous request: a violation.
    pub unexplained_ghosts: u64,
    pub phantom_sold_out: u64,
    pub phantom_limit: u64,
    /// Refusals (503, errors, no answer) while units certainly remained.
    pub refused_with_stock: u64,
    /// Requests that may have taken effect unseen.
    pub ambiguous: u64,
}

/// Checks `calls` (any order) against `spec` and what the server `stored`.
pub fn check(calls: &[Call], spec: Spec, stored: &Stored) -> HistoryCheck {
    let mut result = HistoryCheck {
        requests: calls.len() as u64,
        ambiguous: calls.iter().filter(|c| c.outcome.ambiguous()).count() as u64,
        ..HistoryCheck::default()
    };
    let mut first: Option<Counterexample> = None;
    let mut found = |example: Counterexample| {
        if first.as_ref().is_none_or(|f| example.at_us < f.at_us) {
            first = Some(example);
        }
    };

    // Answered 201s by id; duplicates.
    let mut answered: HashMap<OrderId, &Call> = HashMap::new();
    for call in calls {
        if let CallOutcome::Created(id) = call.outcome
            && let Some(earlier) = answered.insert(id, call)
        {
            result.duplicate_ids += 1;
            found(Counterexample {
                kind: "duplicate_id",
                detail: format!("order id {id} answered twice"),
                calls: vec![earlier.into(), call.into()],
                at_us: call.done_us.max(earlier.done_us),
            });
        }
    }

    // Lost: answered, not stored.
    let mut lost = |stored: &HashMap<OrderId, u64>, kind: &'static str| {
        let mut missing: Vec<&&Call> = answered
            .iter()
            .filter(|(id, _)| !stored.contains_key(id))
            .map(|(_, call)| call)
            .collect();
        missing.sort_by_key(|c| (c.done_us, c.id));
        if let Some(call) = missing.first() {
            found(Counterexample {
                kind,
                detail: format!("{} answered 201s are missing", missing.len()),
                calls: vec![(**call).into()],
                at_us: call.done_us,
            });
        }
        missing.len() as u64
    };
    if let Some(log) = &stored.log {
        result.lost_in_log = Some(lost(log, "lost_in_log"));
    }
    if let Some(sql) = &stored.sql {
        result.lost_in_sql = Some(lost(sql, "lost_in_sql"));
    }
    if stored.log_duplicates > 0 {
        result.duplicate_ids += stored.log_duplicates;
        found(Counterexample {
            kind: "duplicate_id",
            detail: format!(
                "the order log holds {} entries more than it holds order ids",
                stored.log_duplicates
            ),
            calls: Vec::new(),
            at_us: u64::MAX,
        });
    }

    // Every stored order with its buyer, from SQL or the order log.
    let mut stored_orders: BTreeMap<OrderId, u64> = BTreeMap::new();
    for source in [&stored.sql, &stored.log].into_iter().flatten() {
        for (id, buyer) in source {
            stored_orders.entry(*id).or_insert(*buyer);
        }
    }
    for (id, call) in &answered {
        if let Some(&buyer) = stored_orders.get(id)
            && buyer != call.user
        {
            found(Counterexample {
                kind: "wrong_buyer",
                detail: format!(
                    "order {id} was answered to buyer {} but is stored for buyer {buyer}",
                    call.user
                ),
                calls: vec![(*call).into()],
                at_us: call.done_us,
            });
        }
    }

    // Ghosts: stored, never answered. Each needs an ambiguous request of its
    // buyer to have made it, one request per order; the earliest-sent of
    // those requests are the ones taken to have taken effect (the reading
    // most favourable to the sold-out checks below).
    let mut ambiguous_by_user: BTreeMap<u64, Vec<&Call>> = BTreeMap::new();
    for call in calls.iter().filter(|c| c.outcome.ambiguous()) {
        ambiguous_by_user.entry(call.user).or_default().push(call);
    }
    let mut ghosts_by_user: BTreeMap<u64, Vec<OrderId>> = BTreeMap::new();
    for (id, buyer) in &stored_orders {
        if !answered.contains_key(id) {
            ghosts_by_user.entry(*buyer).or_default().push(*id);
        }
    }
    let mut effects: Vec<&Call> = answered.values().copied().collect();
    let mut held: HashMap<u64, u64> = HashMap::new();
    for call in answered.values() {
        *held.entry(call.user).or_default() += 1;
    }
    for (buyer, ghosts) in &ghosts_by_user {
        result.ghost_orders += ghosts.len() as u64;
        *held.entry(*buyer).or_default() += ghosts.len() as u64;
        let mut makers = ambiguous_by_user.get(buyer).cloned().unwrap_or_default();
        makers.sort_by_key(|c| (c.sent_us, c.id));
        let explained = ghosts.len().min(makers.len());
        effects.extend(&makers[..explained]);
        if let Some(id) = ghosts.get(explained) {
            result.unexplained_ghosts += (ghosts.len() - explained) as u64;
            found(Counterexample {
                kind: "ghost_order",
                detail: format!(
                    "order {id} of buyer {buyer} is stored, but that buyer has {} stored orders nobody was answered 201 for and only {} requests left without a clear answer",
                    ghosts.len(),
                    makers.len()
                ),
                calls: makers.iter().map(|c| (*c).into()).collect(),
                at_us: u64::MAX,
            });
        }
    }
    let orders: HashSet<OrderId> = answered
        .keys()
        .chain(stored_orders.keys())
        .copied()
        .collect();

    // Oversold: more orders than units. The witness is the 201 that
    // completed when the answered count passed the stock.
    result.oversold = (orders.len() as u64).saturating_sub(spec.stock);
    if result.oversold > 0 {
        let mut created: Vec<&Call> = answered.values().copied().collect();
        created.sort_by_key(|c| (c.done_us, c.id));
        let witness = created.get(spec.stock as usize).or(created.last());
        found(Counterexample {
            kind: "oversold",
            detail: format!("{} orders for a stock of {}", orders.len(), spec.stock),
            calls: witness.map(|c| vec![(*c).into()]).unwrap_or_default(),
            at_us: witness.map_or(u64::MAX, |c| c.done_us),
        });
    }

    // The per-user limit.
    let mut by_user: HashMap<u64, Vec<&Call>> = HashMap::new();
    for call in answered.values() {
        by_user.entry(call.user).or_default().push(call);
    }
    for (user, count) in &held {
        if *count > spec.per_user_limit {
            result.over_limit_buyers += 1;
            let mut theirs = by_user.get(user).cloned().unwrap_or_default();
            theirs.sort_by_key(|c| c.done_us);
            let witness = theirs
                .get(spec.per_user_limit as usize)
                .or(theirs.last())
                .copied();
            found(Counterexample {
                kind: "per_user_limit",
                detail: format!(
                    "buyer {user} holds {count} orders, the limit is {}",
                    spec.per_user_limit
                ),
                calls: theirs.iter().map(|c| (*c).into()).collect(),
                at_us: witness.map_or(u64::MAX, |c| c.done_us),
            });
        }
    }

    // What could have taken effect by an instant: purchases sent by then
    // (201s, and the ambiguous requests taken to have made a ghost order).
    let mut effect_sends: Vec<u64> = effects.iter().map(|c| c.sent_us).collect();
    effect_sends.sort_unstable();
    let sent_by = |t: u64| effect_sends.partition_point(|&s| s <= t) as u64;
    let mut user_sends: HashMap<u64, Vec<u64>> = HashMap::new();
    for call in &effects {
        user_sends.entry(call.user).or_default().push(call.sent_us);
    }
    // Only 201s and matched ghosts count as purchases, so a sale whose
    // orders never reached the stock fails here whatever the timing.

    for call in calls {
        match call.outcome {
            CallOutcome::SoldOut => {
                let possible = sent_by(call.done_us);
                if possible < spec.stock {
                    result.phantom_sold_out += 1;
                    found(Counterexample {
                        kind: "phantom_sold_out",
                        detail: format!(
                            "sold_out when at most {possible} of {} units could have been bought",
                            spec.stock
                        ),
                        calls: vec![call.into()],
                        at_us: call.done_us,
                    });
                }
            }
            CallOutcome::LimitReached => {
                let possible = user_sends.get(&call.user).map_or(0, |sends| {
                    sends.iter().filter(|&&s| s <= call.done_us).count()
                }) as u64;
                if possible < spec.per_user_limit {
                    result.phantom_limit += 1;
                    found(Counterexample {
                        kind: "phantom_limit",
                        detail: format!(
                            "limit_reached when buyer {} could hold at most {possible} of {}",
                            call.user, spec.per_user_limit
                        ),
                        calls: vec![call.into()],
                        at_us: call.done_us,
                    });
                }
            }
            outcome if outcome.refusal() && sent_by(call.done_us) < spec.stock => {
                result.refused_with_stock += 1;
            }
            _ => {}
        }
    }

    result.linearizable = first.is_none();
    result.counterexample = first;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: Spec = Spec {
        stock: 2,
        per_user_limit: 1,
    };

    fn call(id: u64, user: u64, sent: u64, done: u64, outcome: CallOutcome) -> Call {
        Call {
            id,
            user,
            intended_us: sent,
            sent_us: sent,
            done_us: done,
            outcome,
        }
    }

    fn created(id: u64, user: u64, sent: u64, done: u64) -> Call {
        call(
            id,
            user,
            sent,
            done,
            CallOutcome::Created(OrderId(1000 + id)),
        )
    }

    /// The log and SQL hold exactly the answered orders.
    fn stored_as_answered(calls: &[Call]) -> Stored {
        let mut sql = HashMap::new();
        for c in calls {
            if let CallOutcome::Created(id) = c.outcome {
                sql.insert(id, c.user);
            }
        }
        Stored {
            log: Some(sql.clone()),
            log_duplicates: 0,
            sql: Some(sql),
        }
    }

    fn kind(check: &HistoryCheck) -> Option<&'static str> {
        check.counterexample.as_ref().map(|c| c.kind)
    }

    #[test]
    fn a_valid_sale_is_linearizable_even_when_sold_out_overlaps_the_last_201() {
        let calls = [
            created(1, 1, 0, 10),
            // The last unit: sent at 20, answered at 50.
            created(2, 2, 20, 50),
            // Sent before that answer, completed before it too: the 201's
            // effect can be placed at 21, before this sold_out's.
            call(3, 3, 25, 40, CallOutcome::SoldOut),
            call(4, 1, 60, 70, CallOutcome::LimitReached),
            call(5, 4, 80, 90, CallOutcome::SoldOut),
        ];
        let check = super::check(&calls, SPEC, &stored_as_answered(&calls));
        assert!(check.linearizable, "{check:?}");
        assert_eq!(check.counterexample.map(|c| c.kind), None);
        assert_eq!((check.oversold, check.phantom_sold_out), (0, 0));
    }

    #[test]
    fn oversell_is_caught_with_the_201_that_passed_the_stock() {
        let calls = [
            created(1, 1, 0, 10),
            created(2, 2, 0, 20),
            created(3, 3, 0, 30),
        ];
        let check = super::check(&calls, SPEC, &stored_as_answered(&calls));
        assert!(!check.linearizable);
        assert_eq!(check.oversold, 1);
        let example = check.counterexample.unwrap();
        assert_eq!((example.kind, example.calls[0].id), ("oversold", 3));
    }

    #[test]
    fn the_per_user_limit_is_checked_including_ghost_orders() {
        let calls = [created(1, 1, 0, 10), created(2, 1, 5, 20)];
        let check = super::check(&calls, SPEC, &stored_as_answered(&calls));
        assert_eq!(
            (kind(&check), check.over_limit_buyers),
            (Some("per_user_limit"), 1)
        );

        // One 201 plus a stored order from an ambiguous request of the same
        // buyer: two orders against a limit of one.
        let calls = [
            created(1, 1, 0, 10),
            call(2, 1, 5, 20, CallOutcome::Transport),
        ];
        let mut stored = stored_as_answered(&calls);
        stored.sql.as_mut().unwrap().insert(OrderId(77), 1);
        let check = super::check(&calls, SPEC, &stored);
        assert_eq!((check.ghost_orders, check.unexplained_ghosts), (1, 0));
        assert_eq!(kind(&check), Some("per_user_limit"));
    }

    #[test]
    fn duplicate_and_lost_ids_are_caught() {
        let mut calls = vec![created(1, 1, 0, 10), created(2, 2, 0, 20)];
        calls[1].outcome = calls[0].outcome;
        let check = super::check(&calls, SPEC, &stored_as_answered(&calls));
        assert_eq!(
            (kind(&check), check.duplicate_ids),
            (Some("duplicate_id"), 1)
        );

        let calls = [created(1, 1, 0, 10), created(2, 2, 0, 20)];
        let mut stored = stored_as_answered(&calls);
        stored.sql.as_mut().unwrap().remove(&OrderId(1002));
        let check = super::check(&calls, SPEC, &stored);
        assert_eq!(
            (kind(&check), check.lost_in_sql),
            (Some("lost_in_sql"), Some(1))
        );
        assert_eq!(check.lost_in_log, Some(0));

        let mut stored = stored_as_answered(&calls);
        stored.log.as_mut().unwrap().remove(&OrderId(1001));
        let check = super::check(&calls, SPEC, &stored);
        assert_eq!(
            (kind(&check), check.lost_in_log),
            (Some("lost_in_log"), Some(1))
        );
    }

    #[test]
    fn a_ghost_order_is_fine_only_after_an_ambiguous_request() {
        let calls = [
            created(1, 1, 0, 10),
            call(2, 2, 0, 30, CallOutcome::Unavailable),
        ];
        let mut stored = stored_as_answered(&calls);
        stored.sql.as_mut().unwrap().insert(OrderId(55), 2);
        stored.log.as_mut().unwrap().insert(OrderId(55), 2);
        let explained = super::check(&calls, SPEC, &stored);
        assert!(explained.linearizable, "{explained:?}");
        assert_eq!(
            (explained.ghost_orders, explained.unexplained_ghosts),
            (1, 0)
        );

        // The same order, but buyer 2's request was refused before any
        // write: nobody can own it.
        let calls = [
            created(1, 1, 0, 10),
            call(2, 2, 0, 30, CallOutcome::Contention),
        ];
        let check = super::check(&calls, SPEC, &stored);
        assert_eq!(
            (kind(&check), check.unexplained_ghosts),
            (Some("ghost_order"), 1)
        );
    }

    #[test]
    fn one_unclear_request_explains_one_ghost_not_two() {
        let calls = [
            created(1, 1, 0, 10),
            call(2, 2, 0, 30, CallOutcome::Transport),
        ];
        let mut stored = stored_as_answered(&calls);
        for ghost in [OrderId(55), OrderId(56)] {
            stored.sql.as_mut().unwrap().insert(ghost, 2);
            stored.log.as_mut().unwrap().insert(ghost, 2);
        }
        let check = super::check(
            &calls,
            Spec {
                stock: 5,
                per_user_limit: 5,
            },
            &stored,
        );
        assert_eq!((check.ghost_orders, check.unexplained_ghosts), (2, 1));
        assert_eq!(kind(&check), Some("ghost_order"));
    }

    #[test]
    fn a_ghost_only_in_the_order_log_counts_for_the_sold_out_bound() {
        // SQL not caught up: only the log knows the order of the request
        // that got no answer; with it, both units were gone by 50.
        let calls = [
            created(1, 1, 0, 10),
            call(2, 2, 0, 20, CallOutcome::Transport),
            call(3, 3, 30, 50, CallOutcome::SoldOut),
        ];
        let mut stored = stored_as_answered(&calls);
        stored.sql = None;
        stored.log.as_mut().unwrap().insert(OrderId(55), 2);
        let check = super::check(&calls, SPEC, &stored);
        assert!(check.linearizable, "{check:?}");
        assert_eq!(check.phantom_sold_out, 0);
    }

    #[test]
    fn a_sold_out_of_a_sale_that_never_ran_out_is_a_phantom_whatever_the_timing() {
        // Both sent before the sold_out, but the second was refused: one
        // order of two units in the end.
        let calls = [
            created(1, 1, 0, 10),
            call(2, 2, 0, 20, CallOutcome::Contention),
            call(3, 3, 0, 30, CallOutcome::SoldOut),
        ];
        let check = super::check(&calls, SPEC, &stored_as_answered(&calls));
        assert_eq!(check.phantom_sold_out, 1, "{check:?}");
        // Without any stored orders to count, timing is all there is.
        let check = super::check(&calls, SPEC, &Stored::default());
        assert_eq!(check.phantom_sold_out, 1, "{check:?}");
    }

    #[test]
    fn a_limit_above_one_is_held_per_buyer() {
        let spec = Spec {
            stock: 10,
            per_user_limit: 2,
        };
        let calls = [
            created(1, 1, 0, 10),
            created(2, 1, 11, 20),
            call(3, 1, 21, 30, CallOutcome::LimitReached),
        ];
        let check = super::check(&calls, spec, &stored_as_answered(&calls));
        assert!(check.linearizable, "{check:?}");
        let calls = [
            created(1, 1, 0, 10),
            created(2, 1, 11, 20),
            created(3, 1, 21, 30),
        ];
        let check = super::check(&calls, spec, &stored_as_answered(&calls));
        assert_eq!(
            (kind(&check), check.over_limit_buyers),
            (Some("per_user_limit"), 1)
        );
        // Limit reached after only one purchase sent: a phantom.
        let calls = [
            created(1, 1, 0, 10),
            call(2, 1, 11, 20, CallOutcome::LimitReached),
        ];
        let check = super::check(&calls, spec, &stored_as_answered(&calls));
        assert_eq!(kind(&check), Some("phantom_limit"));
    }

    #[test]
    fn an_order_stored_for_another_buyer_or_logged_twice_is_caught() {
        let calls = [created(1, 1, 0, 10)];
        let mut stored = stored_as_answered(&calls);
        stored.sql.as_mut().unwrap().insert(OrderId(1001), 9);
        stored.log.as_mut().unwrap().insert(OrderId(1001), 9);
        assert_eq!(
            kind(&super::check(&calls, SPEC, &stored)),
            Some("wrong_buyer")
        );

        let mut stored = stored_as_answered(&calls);
        stored.log_duplicates = 1;
        let check = super::check(&calls, SPEC, &stored);
        assert_eq!(
            (kind(&check), check.duplicate_ids),
            (Some("duplicate_id"), 1)
        );
    }

    #[test]
    fn a_sold_out_before_the_stock_could_be_gone_is_a_phantom() {
        let calls = [
            created(1, 1, 0, 10),
            // Completed at 15; the second 201 was only sent at 20.
            call(2, 3, 12, 15, CallOutcome::SoldOut),
            created(3, 2, 20, 30),
        ];
        let check = super::check(&calls, SPEC, &stored_as_answered(&calls));
        assert_eq!(
            (kind(&check), check.phantom_sold_out),
            (Some("phantom_sold_out"), 1)
        );
        assert_eq!(check.counterexample.unwrap().calls[0].id, 2);
    }

    #[test]
    fn a_limit_reached_before_the_buyer_bought_is_a_phantom() {
        let calls = [
            call(1, 1, 0, 5, CallOutcome::LimitReached),
            created(2, 1, 6, 9),
        ];
        let check = super::check(&calls, SPEC, &stored_as_answered(&calls));
        assert_eq!(
            (kind(&check), check.phantom_limit),
            (Some("phantom_limit"), 1)
        );
    }

    #[test]
    fn refusals_while_units_certainly_remained_are_counted_not_judged() {
        let calls = [
            call(1, 1, 0, 5, CallOutcome::Contention),
            created(2, 2, 6, 9),
            created(3, 3, 10, 19),
            // Both units were sent by now: this one may have met an empty shelf.
            call(4, 4, 15, 25, CallOutcome::Contention),
        ];
        let check = super::check(&calls, SPEC, &stored_as_answered(&calls));
        assert!(check.linearizable, "{check:?}");
        assert_eq!(check.refused_with_stock, 1);
    }

    #[test]
    fn the_first_counterexample_is_the_earliest() {
        let calls = [
            created(1, 1, 6, 10),
            created(2, 1, 6, 20),
            call(3, 2, 0, 5, CallOutcome::SoldOut),
        ];
        let check = super::check(&calls, SPEC, &stored_as_answered(&calls));
        assert_eq!(kind(&check), Some("phantom_sold_out"));
        assert_eq!(check.phantom_sold_out, 1);
        assert_eq!(check.over_limit_buyers, 1);
    }
}
