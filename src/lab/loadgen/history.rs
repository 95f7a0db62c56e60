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
//! A sale with a payment window (`--payment-window`) returns units: an order
//! cancelled or expired gives its unit back at the instant the server
//! recorded (its `state_at`, on the server's clock, placed on the run's).
//! The counting checks become checks at every instant, and the lifecycle
//! adds its own ([`Lifecycle`]):
//!
//! - **oversold** and **limit**: at no instant are more units (per buyer,
//!   more than the limit) *certainly* out than the stock: an order is
//!   certainly out from its 201's completion until its return (less 2 ms
//!   for the two clocks). Orders without a 201 (ghosts) are not counted.
//! - **pay contradicted**: a pay answered 200 whose order did not end
//!   `paid`, or answered `order_expired` whose order did not end `expired`
//!   (a paid order later expired, or an expired one paid).
//! - **never ended**: an order still `reserved` in SQL after every deadline
//!   passed.
//! - **returned twice**: the sale's `returned` count is not the number of
//!   its orders that ended cancelled or expired (a unit returned twice, or
//!   a return lost).
//!
//! The verdict names the first counterexample: its kind, its request ids and
//! their times.
//!
//! One concern, one file: the checker is about 700 lines, one function per
//! property, and its unit tests (each a hand-made history that one property
//! must catch) follow it; split apart, every property would import the same
//! call model and helpers from a sibling.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use crate::orders::moves::OrderState;
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
    /// Which server it was sent to, by its place in the run's list (the
    /// fault lab runs several; 0 when there is one).
    pub via: u16,
    /// When the schedule meant to send it (open loop); the send otherwise.
    pub intended_us: u64,
    pub sent_us: u64,
    pub done_us: u64,
    pub outcome: CallOutcome,
}

/// What a pay answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PayAnswer {
    /// 200: paid (or paid already).
    Paid,
    /// 409 `order_expired`.
    Expired,
    /// Anything else, or no answer (0): the order may have been paid or not.
    Other(u16),
}

/// One pay request, times as [`Call`]'s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PayCall {
    pub order: OrderId,
    pub user: u64,
    pub sent_us: u64,
    pub done_us: u64,
    pub answer: PayAnswer,
}

/// A windowed sale's lifecycle, as the server stored it and the run saw it.
/// Without SQL (no persister, or it did not catch up) the orders' ends are
/// not known: only the count check below is made.
#[derive(Debug, Default)]
pub struct Lifecycle {
    /// Whether `states` holds every order's end (read from SQL, settled).
    pub known: bool,
    /// Orders the server's view still holds reserved once every deadline
    /// passed (Redis's count).
    pub reserved_left: Option<u64>,
    /// The sale's payment window (ms).
    pub window_ms: u64,
    /// Each order in SQL: where it ended, and when it left `reserved` (ms
    /// since the Unix epoch, the server's clock).
    pub states: HashMap<OrderId, (OrderState, Option<i64>)>,
    /// The sale's `returned` count, from the item view.
    pub returned: Option<u64>,
    pub pays: Vec<PayCall>,
    /// The run's start on the wall clock (µs since the Unix epoch).
    pub start_unix_us: u64,
}

/// How much earlier than the server recorded a return is taken to have
/// happened: the server's clock and the run's, on one machine, read apart.
const CLOCKS_APART_US: u64 = 2_000;

impl Lifecycle {
    /// When `order`'s unit came back, in µs since the run's start (at the
    /// earliest); `None` when it did not.
    fn returned_at_us(&self, order: OrderId) -> Option<u64> {
        match self.states.get(&order)? {
            (OrderState::Cancelled | OrderState::Expired, Some(at_ms)) => Some(
                (*at_ms as u64 * 1000)
                    .saturating_sub(self.start_unix_us)
                    .saturating_sub(CLOCKS_APART_US),
            ),
            _ => None,
        }
    }
}

/// The most intervals `[from, until)` open at once, and when (the earliest
/// instant it is reached).
fn most_at_once(intervals: impl Iterator<Item = (u64, u64)>) -> (u64, u64) {
    let mut events: Vec<(u64, i64)> = Vec::new();
    for (from, until) in intervals {
        if from < until {
            events.push((from, 1));
            events.push((until, -1));
        }
    }
    // Ends before starts at one instant: a unit back is free again.
    events.sort_by_key(|&(at, delta)| (at, delta));
    let (mut open, mut most, mut when) = (0i64, 0i64, 0u64);
    for (at, delta) in events {
        open += delta;
        if open > most {
            (most, when) = (open, at);
        }
    }
    (most.max(0) as u64, when)
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
    /// A sale with a payment window: its orders' lifecycle.
    pub lifecycle: Option<Lifecycle>,
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
    /// Answered orders stored for another buyer.
    pub wrong_buyers: u64,
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
    /// A sale with a payment window: the most units certainly out at once.
    pub most_out_at_once: Option<u64>,
    /// Orders that ended paid, and cancelled or expired.
    pub paid: u64,
    pub returned_orders: u64,
    /// Pays answered otherwise than their order ended.
    pub pays_contradicted: u64,
    /// Orders still reserved after every deadline.
    pub never_ended: u64,
    /// Orders paid that no pay asked for, or expired before their deadline.
    pub ended_wrongly: u64,
    /// A sale with a payment window: whether each order's end was known
    /// (SQL settled), so the checks at every instant were made; `false`:
    /// only the counts were.
    pub lifecycle_known: Option<bool>,
}

/// Checks `calls` (any order) against `spec` and what the server `stored`:
/// each property below in turn, the earliest counterexample kept.
pub fn check(calls: &[Call], spec: Spec, stored: &Stored) -> HistoryCheck {
    let mut verdict = Verdict {
        check: HistoryCheck {
            requests: calls.len() as u64,
            ambiguous: calls.iter().filter(|c| c.outcome.ambiguous()).count() as u64,
            ..HistoryCheck::default()
        },
        first: None,
    };
    let answered = no_id_answered_twice(calls, &mut verdict);
    if let Some(log) = &stored.log {
        verdict.check.lost_in_log = Some(every_201_stored(
            &answered,
            log,
            "lost_in_log",
            &mut verdict,
        ));
    }
    if let Some(sql) = &stored.sql {
        verdict.check.lost_in_sql = Some(every_201_stored(
            &answered,
            sql,
            "lost_in_sql",
            &mut verdict,
        ));
    }
    no_id_logged_twice(stored, &mut verdict);
    let stored_orders = stored_orders(stored);
    each_order_stored_for_its_buyer(&answered, &stored_orders, &mut verdict);
    let effects = every_ghost_order_has_a_maker(calls, &answered, &stored_orders, &mut verdict);
    match &stored.lifecycle {
        None => {
            not_oversold(&answered, &stored_orders, spec, &mut verdict);
            no_buyer_over_the_limit(&answered, &effects.held, spec, &mut verdict);
        }
        Some(lifecycle) => {
            verdict.check.lifecycle_known = Some(lifecycle.known);
            // No more orders, ghosts included, than the stock and the units
            // the sale says came back: necessary, not sufficient.
            let returned = lifecycle.returned.unwrap_or(0);
            let counted = Spec {
                stock: spec.stock.saturating_add(returned),
                ..spec
            };
            not_oversold(&answered, &stored_orders, counted, &mut verdict);
            nothing_left_reserved(lifecycle, &mut verdict);
            if lifecycle.known {
                never_more_out_than_the_stock(&answered, lifecycle, spec, &mut verdict);
                lifecycle_agrees(&answered, lifecycle, &mut verdict);
            }
        }
    }
    no_refusal_before_its_time(calls, &effects.calls, spec, &mut verdict);

    let Verdict { mut check, first } = verdict;
    check.linearizable = first.is_none();
    check.counterexample = first;
    check
}

/// The check's counts so far, and the earliest counterexample found.
struct Verdict {
    check: HistoryCheck,
    first: Option<Counterexample>,
}

impl Verdict {
    /// Keeps `example` if it became visible before every one found so far.
    fn found(&mut self, example: Counterexample) {
        if self.first.as_ref().is_none_or(|f| example.at_us < f.at_us) {
            self.first = Some(example);
        }
    }
}

/// **duplicate ids**, among the answers: no two 201s carry one order id.
/// Returns the answered 201s by order id.
fn no_id_answered_twice<'a>(
    calls: &'a [Call],
    verdict: &mut Verdict,
) -> HashMap<OrderId, &'a Call> {
    let mut answered: HashMap<OrderId, &Call> = HashMap::new();
    for call in calls {
        if let CallOutcome::Created(id) = call.outcome
            && let Some(earlier) = answered.insert(id, call)
        {
            verdict.check.duplicate_ids += 1;
            verdict.found(Counterexample {
                kind: "duplicate_id",
                detail: format!("order id {id} answered twice"),
                calls: vec![earlier.into(), call.into()],
                at_us: call.done_us.max(earlier.done_us),
            });
        }
    }
    answered
}

/// **lost**: every answered 201 is in `stored` (the order log or SQL, as
/// `kind` says). Returns how many are missing.
fn every_201_stored(
    answered: &HashMap<OrderId, &Call>,
    stored: &HashMap<OrderId, u64>,
    kind: &'static str,
    verdict: &mut Verdict,
) -> u64 {
    let mut missing: Vec<&&Call> = answered
        .iter()
        .filter(|(id, _)| !stored.contains_key(id))
        .map(|(_, call)| call)
        .collect();
    missing.sort_by_key(|c| (c.done_us, c.id));
    if let Some(call) = missing.first() {
        verdict.found(Counterexample {
            kind,
            detail: format!("{} answered 201s are missing", missing.len()),
            calls: vec![(**call).into()],
            at_us: call.done_us,
        });
    }
    missing.len() as u64
}

/// **duplicate ids**, in the order log: it holds each order id once.
fn no_id_logged_twice(stored: &Stored, verdict: &mut Verdict) {
    if stored.log_duplicates > 0 {
        verdict.check.duplicate_ids += stored.log_duplicates;
        verdict.found(Counterexample {
            kind: "duplicate_id",
            detail: format!(
                "the order log holds {} entries more than it holds order ids",
                stored.log_duplicates
            ),
            calls: Vec::new(),
            at_us: u64::MAX,
        });
    }
}

/// Every stored order with its buyer, from SQL or the order log.
fn stored_orders(stored: &Stored) -> BTreeMap<OrderId, u64> {
    let mut stored_orders: BTreeMap<OrderId, u64> = BTreeMap::new();
    for source in [&stored.sql, &stored.log].into_iter().flatten() {
        for (id, buyer) in source {
            stored_orders.entry(*id).or_insert(*buyer);
        }
    }
    stored_orders
}

/// **wrong buyer**: each answered order is stored, if at all, for the buyer
/// its 201 went to.
fn each_order_stored_for_its_buyer(
    answered: &HashMap<OrderId, &Call>,
    stored_orders: &BTreeMap<OrderId, u64>,
    verdict: &mut Verdict,
) {
    for (id, call) in answered {
        if let Some(&buyer) = stored_orders.get(id)
            && buyer != call.user
        {
            verdict.check.wrong_buyers += 1;
            verdict.found(Counterexample {
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
}

/// The purchases taken to have taken effect, and what each buyer holds.
struct Effects<'a> {
    /// Every 201, and for each ghost order the request taken to have made it.
    calls: Vec<&'a Call>,
    /// Orders per buyer: answered and ghost.
    held: HashMap<u64, u64>,
}

/// **ghost orders**: stored, never answered. Each needs an ambiguous request
/// of its buyer to have made it, one request per order; the earliest-sent of
/// those requests are the ones taken to have taken effect (the reading most
/// favourable to the sold-out checks of [`no_refusal_before_its_time`]).
fn every_ghost_order_has_a_maker<'a>(
    calls: &'a [Call],
    answered: &HashMap<OrderId, &'a Call>,
    stored_orders: &BTreeMap<OrderId, u64>,
    verdict: &mut Verdict,
) -> Effects<'a> {
    let mut ambiguous_by_user: BTreeMap<u64, Vec<&Call>> = BTreeMap::new();
    for call in calls.iter().filter(|c| c.outcome.ambiguous()) {
        ambiguous_by_user.entry(call.user).or_default().push(call);
    }
    let mut ghosts_by_user: BTreeMap<u64, Vec<OrderId>> = BTreeMap::new();
    for (id, buyer) in stored_orders {
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
        verdict.check.ghost_orders += ghosts.len() as u64;
        *held.entry(*buyer).or_default() += ghosts.len() as u64;
        let mut makers = ambiguous_by_user.get(buyer).cloned().unwrap_or_default();
        makers.sort_by_key(|c| (c.sent_us, c.id));
        let explained = ghosts.len().min(makers.len());
        effects.extend(&makers[..explained]);
        if let Some(id) = ghosts.get(explained) {
            verdict.check.unexplained_ghosts += (ghosts.len() - explained) as u64;
            verdict.found(Counterexample {
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
    Effects {
        calls: effects,
        held,
    }
}

/// **oversold**: no more distinct orders (answered or stored) than units.
/// The witness is the 201 that completed when the answered count passed the
/// stock.
fn not_oversold(
    answered: &HashMap<OrderId, &Call>,
    stored_orders: &BTreeMap<OrderId, u64>,
    spec: Spec,
    verdict: &mut Verdict,
) {
    let orders: HashSet<OrderId> = answered
        .keys()
        .chain(stored_orders.keys())
        .copied()
        .collect();
    verdict.check.oversold = (orders.len() as u64).saturating_sub(spec.stock);
    if verdict.check.oversold > 0 {
        let mut created: Vec<&Call> = answered.values().copied().collect();
        created.sort_by_key(|c| (c.done_us, c.id));
        let witness = created.get(spec.stock as usize).or(created.last());
        verdict.found(Counterexample {
            kind: "oversold",
            detail: format!("{} orders for a stock of {}", orders.len(), spec.stock),
            calls: witness.map(|c| vec![(*c).into()]).unwrap_or_default(),
            at_us: witness.map_or(u64::MAX, |c| c.done_us),
        });
    }
}

/// **oversold** and **limit**, with returns: at no instant more units
/// certainly out than the stock, nor per buyer than the limit.
fn never_more_out_than_the_stock(
    answered: &HashMap<OrderId, &Call>,
    lifecycle: &Lifecycle,
    spec: Spec,
    verdict: &mut Verdict,
) {
    let held = |call: &&Call| {
        let order = match call.outcome {
            CallOutcome::Created(order) => order,
            _ => return (0, 0),
        };
        (
            call.done_us,
            lifecycle.returned_at_us(order).unwrap_or(u64::MAX),
        )
    };
    let (most, at_us) = most_at_once(answered.values().map(held));
    verdict.check.most_out_at_once = Some(most);
    verdict.check.oversold = most.saturating_sub(spec.stock);
    if most > spec.stock {
        verdict.found(Counterexample {
            kind: "oversold",
            detail: format!(
                "{most} units certainly out at {:.1} ms for a stock of {}",
                at_us as f64 / 1000.0,
                spec.stock
            ),
            calls: Vec::new(),
            at_us,
        });
    }
    let mut by_user: HashMap<u64, Vec<&Call>> = HashMap::new();
    for call in answered.values() {
        by_user.entry(call.user).or_default().push(call);
    }
    for (user, calls) in by_user {
        let (most, at_us) = most_at_once(calls.iter().map(held));
        if most > spec.per_user_limit {
            verdict.check.over_limit_buyers += 1;
            verdict.found(Counterexample {
                kind: "per_user_limit",
                detail: format!(
                    "buyer {user} certainly held {most} units at once, the limit is {}",
                    spec.per_user_limit
                ),
                calls: calls.iter().map(|c| (*c).into()).collect(),
                at_us,
            });
        }
    }
}

/// **never ended**, from the server's own view: no order still reserved
/// once every deadline passed (whether or not SQL has caught up).
fn nothing_left_reserved(lifecycle: &Lifecycle, verdict: &mut Verdict) {
    if let Some(left) = lifecycle.reserved_left.filter(|n| *n > 0) {
        verdict.check.never_ended = verdict.check.never_ended.max(left);
        verdict.found(Counterexample {
            kind: "never_ended",
            detail: format!("the sale still holds {left} orders reserved after every deadline"),
            calls: Vec::new(),
            at_us: u64::MAX,
        });
    }
}

/// **pay contradicted**, **never ended**, **returned twice**: each order
/// ended once, as its pay was told, and every return is counted once.
fn lifecycle_agrees(
    answered: &HashMap<OrderId, &Call>,
    lifecycle: &Lifecycle,
    verdict: &mut Verdict,
) {
    for pay in &lifecycle.pays {
        let ended = lifecycle.states.get(&pay.order).map(|(state, _)| *state);
        let contradicted = match pay.answer {
            PayAnswer::Paid => ended != Some(OrderState::Paid),
            PayAnswer::Expired => ended != Some(OrderState::Expired),
            PayAnswer::Other(_) => false,
        };
        if contradicted {
            verdict.check.pays_contradicted += 1;
            verdict.found(Counterexample {
                kind: "pay_contradicted",
                detail: format!(
                    "order {} was answered {:?} to its pay and ended {ended:?}",
                    pay.order, pay.answer
                ),
                calls: answered
                    .get(&pay.order)
                    .map(|c| vec![(*c).into()])
                    .unwrap_or_default(),
                at_us: pay.done_us,
            });
        }
    }
    let asked: HashSet<OrderId> = lifecycle.pays.iter().map(|pay| pay.order).collect();
    for (order, (state, at_ms)) in &lifecycle.states {
        let wrongly = match state {
            // Every buyer either paid or let the order expire.
            OrderState::Paid => !asked.contains(order),
            // Its deadline is at least a window after its id was minted
            // (less the clocks' distance).
            OrderState::Expired => at_ms.is_some_and(|at| {
                (at.max(0) as u64).saturating_add(CLOCKS_APART_US / 1000)
                    < order.parts().unix_ms.saturating_add(lifecycle.window_ms)
            }),
            _ => false,
        };
        if wrongly {
            verdict.check.ended_wrongly += 1;
            verdict.found(Counterexample {
                kind: "ended_wrongly",
                detail: format!(
                    "order {order} ended {state:?} at {at_ms:?} ms: no pay asked for it, or before its deadline"
                ),
                calls: answered
                    .get(order)
                    .map(|c| vec![(*c).into()])
                    .unwrap_or_default(),
                at_us: u64::MAX,
            });
        }
        match state {
            OrderState::Paid => verdict.check.paid += 1,
            OrderState::Cancelled | OrderState::Expired => verdict.check.returned_orders += 1,
            OrderState::Reserved => {
                verdict.check.never_ended += 1;
                verdict.found(Counterexample {
                    kind: "never_ended",
                    detail: format!("order {order} is still reserved after every deadline"),
                    calls: answered
                        .get(order)
                        .map(|c| vec![(*c).into()])
                        .unwrap_or_default(),
                    at_us: u64::MAX,
                });
            }
        }
    }
    if let Some(returned) = lifecycle.returned
        && returned != verdict.check.returned_orders
    {
        verdict.found(Counterexample {
            kind: "returned_twice",
            detail: format!(
                "the sale counts {returned} units returned; {} of its orders ended cancelled or expired",
                verdict.check.returned_orders
            ),
            calls: Vec::new(),
            at_us: u64::MAX,
        });
    }
}

/// **limit**: no buyer holds (`held`) more orders than the per-user limit.
fn no_buyer_over_the_limit(
    answered: &HashMap<OrderId, &Call>,
    held: &HashMap<u64, u64>,
    spec: Spec,
    verdict: &mut Verdict,
) {
    let mut by_user: HashMap<u64, Vec<&Call>> = HashMap::new();
    for call in answered.values() {
        by_user.entry(call.user).or_default().push(call);
    }
    for (user, count) in held {
        if *count > spec.per_user_limit {
            verdict.check.over_limit_buyers += 1;
            let mut theirs = by_user.get(user).cloned().unwrap_or_default();
            theirs.sort_by_key(|c| c.done_us);
            let witness = theirs
                .get(spec.per_user_limit as usize)
                .or(theirs.last())
                .copied();
            verdict.found(Counterexample {
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
}

/// What could have taken effect by an instant: the purchases (`effects`:
/// 201s, and the ambiguous requests taken to have made a ghost order) sent
/// by then, in all and per buyer. Only those count as purchases, so a sale
/// whose orders never reached the stock fails the refusal checks whatever
/// the timing.
struct SentBy {
    /// Every purchase's send, in order.
    all: Vec<u64>,
    /// Each buyer's purchases' sends.
    per_user: HashMap<u64, Vec<u64>>,
}

impl SentBy {
    fn new(effects: &[&Call]) -> Self {
        let mut all: Vec<u64> = effects.iter().map(|c| c.sent_us).collect();
        all.sort_unstable();
        let mut per_user: HashMap<u64, Vec<u64>> = HashMap::new();
        for call in effects {
            per_user.entry(call.user).or_default().push(call.sent_us);
        }
        Self { all, per_user }
    }

    /// Purchases sent by `t`.
    fn all(&self, t: u64) -> u64 {
        self.all.partition_point(|&s| s <= t) as u64
    }

    /// `user`'s purchases sent by `t`.
    fn user(&self, user: u64, t: u64) -> u64 {
        self.per_user
            .get(&user)
            .map_or(0, |sends| sends.iter().filter(|&&s| s <= t).count()) as u64
    }
}

/// Each refusal, in the order of `calls`: a `sold_out` or `limit_reached`
/// must be true at its instant ([`phantom_sold_out`], [`phantom_limit`]);
/// other refusals while units certainly remained are counted
/// ([`refused_with_stock`]).
fn no_refusal_before_its_time(
    calls: &[Call],
    effects: &[&Call],
    spec: Spec,
    verdict: &mut Verdict,
) {
    let sent_by = SentBy::new(effects);
    for call in calls {
        match call.outcome {
            CallOutcome::SoldOut => {
                if let Some(example) = phantom_sold_out(call, &sent_by, spec) {
                    verdict.check.phantom_sold_out += 1;
                    verdict.found(example);
                }
            }
            CallOutcome::LimitReached => {
                if let Some(example) = phantom_limit(call, &sent_by, spec) {
                    verdict.check.phantom_limit += 1;
                    verdict.found(example);
                }
            }
            _ if refused_with_stock(call, &sent_by, spec) => {
                verdict.check.refused_with_stock += 1;
            }
            _ => {}
        }
    }
}

/// **phantom sold-out**: the `sold_out` `call` completed before `stock`
/// purchases could have taken effect.
fn phantom_sold_out(call: &Call, sent_by: &SentBy, spec: Spec) -> Option<Counterexample> {
    let possible = sent_by.all(call.done_us);
    (possible < spec.stock).then(|| Counterexample {
        kind: "phantom_sold_out",
        detail: format!(
            "sold_out when at most {possible} of {} units could have been bought",
            spec.stock
        ),
        calls: vec![call.into()],
        at_us: call.done_us,
    })
}

/// **phantom limit**: the `limit_reached` `call` completed before its buyer
/// had sent `limit` purchases.
fn phantom_limit(call: &Call, sent_by: &SentBy, spec: Spec) -> Option<Counterexample> {
    let possible = sent_by.user(call.user, call.done_us);
    (possible < spec.per_user_limit).then(|| Counterexample {
        kind: "phantom_limit",
        detail: format!(
            "limit_reached when buyer {} could hold at most {possible} of {}",
            call.user, spec.per_user_limit
        ),
        calls: vec![call.into()],
        at_us: call.done_us,
    })
}

/// **refused with stock**: `call` is a refusal that says nothing about the
/// stock or the limit, and completed while units certainly remained. No
/// violation, only counted.
fn refused_with_stock(call: &Call, sent_by: &SentBy, spec: Spec) -> bool {
    call.outcome.refusal() && sent_by.all(call.done_us) < spec.stock
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
            via: 0,
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
            lifecycle: None,
        }
    }

    /// `stored_as_answered`, in a windowed sale whose orders ended as
    /// `ended` says (order id → state, and when in ms since the run's
    /// start, when the test's ids were minted), with `returned` counted.
    /// The calls' times are in µs.
    fn windowed(calls: &[Call], ended: &[(u64, OrderState, i64)], returned: u64) -> Stored {
        let mut stored = stored_as_answered(calls);
        let mut states: HashMap<OrderId, (OrderState, Option<i64>)> = stored
            .sql
            .iter()
            .flatten()
            .map(|(id, _)| (*id, (OrderState::Paid, None)))
            .collect();
        // The run starts when the test's ids were minted.
        let start_ms = OrderId(1000).parts().unix_ms;
        for (id, state, at_ms) in ended {
            states.insert(OrderId(*id), (*state, Some(start_ms as i64 + *at_ms)));
        }
        // Each order that ended paid was paid by its buyer.
        let pays = states
            .iter()
            .filter(|(_, (state, _))| *state == OrderState::Paid)
            .map(|(order, _)| PayCall {
                order: *order,
                user: 0,
                sent_us: 0,
                done_us: 0,
                answer: PayAnswer::Paid,
            })
            .collect();
        stored.lifecycle = Some(Lifecycle {
            known: true,
            states,
            returned: Some(returned),
            pays,
            start_unix_us: start_ms * 1000,
            ..Lifecycle::default()
        });
        stored
    }

    /// Stock 2, three orders over time: the first expired at 50 ms, before
    /// the third was bought (its 201 at 80 ms). Never more than 2 out.
    #[test]
    fn a_unit_sold_again_after_its_return_is_no_oversell() {
        let calls = [
            created(0, 0, 0, 10),
            created(1, 1, 0, 12),
            created(2, 2, 60_000, 80_000),
        ];
        let stored = windowed(&calls, &[(1000, OrderState::Expired, 50)], 1);
        let checked = check(&calls, SPEC, &stored);
        assert!(checked.linearizable, "{checked:?}");
        assert_eq!(
            (
                checked.most_out_at_once,
                checked.returned_orders,
                checked.paid
            ),
            (Some(2), 1, 2)
        );
        // Without the lifecycle, three orders for two units: oversold.
        let plain = check(&calls, SPEC, &stored_as_answered(&calls));
        assert_eq!(kind(&plain), Some("oversold"));
    }

    /// Without SQL, each order's end is unknown: only the count against the
    /// stock plus the returns the sale counted is checked.
    #[test]
    fn without_the_orders_ends_only_the_count_is_checked() {
        let calls = [
            created(0, 0, 0, 10),
            created(1, 1, 0, 12),
            created(2, 2, 20_000, 30_000),
        ];
        let mut stored = windowed(&calls, &[], 1);
        if let Some(lifecycle) = stored.lifecycle.as_mut() {
            lifecycle.known = false;
            lifecycle.states.clear();
        }
        assert!(check(&calls, SPEC, &stored).linearizable);
        if let Some(lifecycle) = stored.lifecycle.as_mut() {
            lifecycle.returned = Some(0);
        }
        assert_eq!(kind(&check(&calls, SPEC, &stored)), Some("oversold"));
    }

    /// The same, but the third 201 completed before the first order came
    /// back: three units out at once.
    #[test]
    fn a_unit_sold_again_before_its_return_is_oversold() {
        let calls = [
            created(0, 0, 0, 10),
            created(1, 1, 0, 12),
            created(2, 2, 20_000, 30_000),
        ];
        let stored = windowed(&calls, &[(1000, OrderState::Expired, 50)], 1);
        let checked = check(&calls, SPEC, &stored);
        assert_eq!(kind(&checked), Some("oversold"), "{checked:?}");
        assert_eq!(checked.most_out_at_once, Some(3));
    }

    /// A buyer holding two units at once, the limit 1; and a buyer who
    /// bought again after a return, which is allowed.
    #[test]
    fn the_limit_holds_at_every_instant() {
        let again = [created(0, 0, 0, 10), created(1, 0, 60_000, 80_000)];
        let stored = windowed(&again, &[(1000, OrderState::Cancelled, 40)], 1);
        assert!(check(&again, SPEC, &stored).linearizable);
        let twice = [created(0, 0, 0, 10), created(1, 0, 20_000, 30_000)];
        let stored = windowed(&twice, &[(1000, OrderState::Cancelled, 40)], 1);
        assert_eq!(kind(&check(&twice, SPEC, &stored)), Some("per_user_limit"));
    }

    /// A pay answered 200 for an order that expired; an order still
    /// reserved; a return counted twice.
    #[test]
    fn the_lifecycle_is_checked_against_the_pays_and_the_counts() {
        let calls = [created(0, 0, 0, 10), created(1, 1, 0, 12)];
        let mut stored = windowed(&calls, &[(1000, OrderState::Expired, 50)], 1);
        if let Some(lifecycle) = stored.lifecycle.as_mut() {
            lifecycle.pays.push(PayCall {
                order: OrderId(1000),
                user: 0,
                sent_us: 11,
                done_us: 15,
                answer: PayAnswer::Paid,
            });
        }
        let checked = check(&calls, SPEC, &stored);
        assert_eq!(kind(&checked), Some("pay_contradicted"), "{checked:?}");
        assert_eq!(checked.pays_contradicted, 1);

        let stored = windowed(&calls, &[(1001, OrderState::Reserved, 0)], 0);
        assert_eq!(kind(&check(&calls, SPEC, &stored)), Some("never_ended"));

        let stored = windowed(&calls, &[(1000, OrderState::Expired, 50)], 2);
        assert_eq!(kind(&check(&calls, SPEC, &stored)), Some("returned_twice"));

        // Expired before a 100 ms window was over; paid with no pay asked.
        let mut stored = windowed(&calls, &[(1000, OrderState::Expired, 50)], 1);
        if let Some(lifecycle) = stored.lifecycle.as_mut() {
            lifecycle.window_ms = 100;
        }
        assert_eq!(kind(&check(&calls, SPEC, &stored)), Some("ended_wrongly"));
        let mut stored = windowed(&calls, &[(1000, OrderState::Expired, 50)], 1);
        if let Some(lifecycle) = stored.lifecycle.as_mut() {
            lifecycle.pays.clear();
        }
        let checked = check(&calls, SPEC, &stored);
        assert_eq!(kind(&checked), Some("ended_wrongly"), "{checked:?}");
        assert_eq!(checked.ended_wrongly, 1);
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
