//! The Idempotency-Key record as a strategy's commit step sees it: the
//! step that takes the unit also checks the key's record and writes it, in
//! one atomic step, so a key buys at most once whatever happens around the
//! purchase ([`crate::sale::idempotency`] has the whole story). The record's
//! shape is `key_record.lua`'s, prepended to every script that reads or
//! writes it; this module reads its replies.

use redis::Value;

use crate::domain::UserId;
use crate::orders::snowflake::OrderId;
use crate::strategy::StrategyKind;

/// KEYS[1] the record: `idem_bought`'s reply, or nil (a Lua nil: `false`
/// would reach a RESP3 client as a boolean). `optimistic` reads
/// the record with it beside its other reads (under its `WATCH`), and a
/// purchase whose answer was lost reads it to learn what became of it.
pub const READ_LUA: &str = concat!(
    include_str!("key_record.lua"),
    "return idem_bought(KEYS[1])"
);
/// KEYS[1] the record, KEYS[2] the stock; ARGV[1] the order id, ARGV[2] the
/// fingerprint, ARGV[3] the TTL (ms). `optimistic` commits the record with
/// it inside its `MULTI`, after the stock's `DECR`, whose result it reads.
pub const COMMIT_LUA: &str = concat!(
    include_str!("key_record.lua"),
    "idem_commit(KEYS[1], ARGV[2], ARGV[1], redis.call('GET', KEYS[2]), ARGV[3]) return 1"
);

/// What the body of a keyed request asked for: a repeat must ask the same.
pub fn fingerprint(user: &UserId, strategy: StrategyKind) -> String {
    format!("{user}\u{1f}{strategy}")
}

/// What a purchase's commit step needs to record and check its key.
#[derive(Debug, Clone)]
pub struct KeyedPurchase {
    /// The key as the client sent it (unquoted): the `sql` strategy's own
    /// record is under it.
    pub key: String,
    /// The record's Redis key.
    pub record: String,
    pub fingerprint: String,
    /// How long the record is kept (`IDEMPOTENCY_TTL_S`), in ms.
    pub ttl_ms: u64,
}

/// A key that bought already, as its record says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bought {
    pub fingerprint: String,
    pub order_id: Option<OrderId>,
    pub remaining: i64,
    /// A record of an earlier version: the 201's body as it was sent.
    pub legacy_body: Option<String>,
}

impl Bought {
    /// `idem_bought`'s reply: `{fp, order, remaining, body}`.
    pub fn from_reply(value: &Value) -> Result<Self, String> {
        let fields: Vec<String> = redis::from_redis_value_ref(value)
            .map_err(|err| format!("an Idempotency-Key record reply is unreadable: {err}"))?;
        let [fp, order, remaining, body] = <[String; 4]>::try_from(fields)
            .map_err(|f| format!("an Idempotency-Key record reply has {} fields", f.len()))?;
        let legacy_body = (!body.is_empty()).then_some(body);
        let order_id = match (order.as_str(), &legacy_body) {
            ("", Some(_)) => None,
            (order, _) => Some(
                OrderId::parse(order)
                    .map_err(|err| format!("an Idempotency-Key record's order: {err}"))?,
            ),
        };
        Ok(Self {
            fingerprint: fp,
            order_id,
            remaining: remaining.parse().unwrap_or(0),
            legacy_body,
        })
    }
}
