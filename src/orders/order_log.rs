//! The order-log entry: the one wire shape between the strategies, which
//! append it to the item's order log (`XADD`), and its readers, the
//! persister and the bench. Its shape lives here; `purchase.lua` and
//! `purchase_batch.lua`, which cannot import it, are handed the entry's
//! [`head`] and write the same field, and a test below holds them to it.
//!
//! An entry is one field: [`ORDER`], whose value packs the order's five
//! parts, separated by spaces (no id or strategy name can hold one); or, for
//! a `lua-batch` call that sold several units, [`ORDERS`], the same values
//! one per line. One entry per batch saves the persister a reply entry to
//! parse per order, and Redis an `XADD`; the log stays the source of truth,
//! and the sale's [`EXTRA_ORDERS`] count (the orders beyond one per entry,
//! raised by the same script) keeps `sold` one `XLEN` and one `HMGET` away.
//! An earlier version's persister cannot read an [`ORDERS`] entry and keeps
//! it as an unreadable dead letter, which this version's rescue stores. Five
//! field pairs, as entries were first written, cost the persister about a
//! tenth of the server's instructions per purchase (callgrind): every field
//! name and value is a reply value of its own to parse, allocate and drop.
//! Entries of that [`legacy`] shape are still read, from a Redis restarted on
//! an earlier version's files or written by an earlier instance beside this
//! one. The other way round, an earlier instance's persister keeps this
//! shape as unreadable dead letters; the persister's rescue stores them.

use redis::streams::StreamId;
use redis::{FromRedisValue, ParsingError, Value};

use crate::domain::{ItemId, UserId};
use crate::orders::db::OrderRecord;
use crate::orders::snowflake::OrderId;

/// The one field of an entry: `<order_id> <user_id> <strategy> <created_ms>
/// <generation>`. The order id is the decimal snowflake, `strategy` the name
/// the purchase gave, `created_ms` the order id's own timestamp (Unix ms, so
/// the two never disagree), `generation` the sale (restock generation) the
/// order belongs to.
pub const ORDER: &str = "order";

/// The one field of an entry holding several orders of one sale: their
/// [`ORDER`] values, each on its own line.
pub const ORDERS: &str = "orders";

/// The sale's `meta` hash field counting the orders its log holds beyond
/// one per entry: `sold` is the log's length plus this, when
/// [`EXTRA_ORDERS_GENERATION`] is the sale's generation. A count of another
/// generation is a previous sale's: a restock, of any version, bumps the
/// generation and leaves the count behind.
pub const EXTRA_ORDERS: &str = "extra_orders";

/// The sale (generation) whose orders [`EXTRA_ORDERS`] counts.
pub const EXTRA_ORDERS_GENERATION: &str = "extra_orders_generation";

/// The five-field shape entries had before [`ORDER`]: read, never written.
pub mod legacy {
    pub const ORDER_ID: &str = "order_id";
    pub const USER_ID: &str = "user_id";
    pub const STRATEGY: &str = "strategy";
    pub const CREATED_MS: &str = "created_ms";
    pub const GENERATION: &str = "generation";
}

/// The value of [`ORDER`] up to its generation, which only a purchase script
/// reads (from the sale it runs in) and appends.
pub fn head(order_id: OrderId, user: &UserId, strategy: &str) -> String {
    let mut id = itoa::Buffer::new();
    let mut created = itoa::Buffer::new();
    [
        id.format(order_id.0),
        " ",
        user.as_str(),
        " ",
        strategy,
        " ",
        created.format(order_id.parts().unix_ms),
        " ",
    ]
    .concat()
}

/// The fields of one entry (`XADD ... * <fields>`), for writers that know
/// the sale's generation.
pub fn fields(
    order_id: OrderId,
    user: &UserId,
    strategy: &str,
    generation: u64,
) -> [(&'static str, String); 1] {
    let mut value = head(order_id, user, strategy);
    value.push_str(itoa::Buffer::new().format(generation));
    [(ORDER, value)]
}

/// The five parts of an [`ORDER`] value, in order.
fn unpack(value: &str) -> Option<[&str; 5]> {
    let mut parts = value.split(' ');
    let unpacked = [
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
    ];
    parts.next().is_none().then_some(unpacked)
}

/// One entry of an order log as read back: its id and its field pairs, as
/// Redis sent them (a deleted entry, read from the pending list, has none).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Entry {
    pub id: String,
    pub fields: Vec<(String, Value)>,
}

impl Entry {
    /// The value of `field` as text; `None` when missing or not text.
    pub fn text(&self, field: &str) -> Option<&str> {
        match self.fields.iter().find(|(name, _)| name == field)? {
            (_, Value::BulkString(bytes)) => std::str::from_utf8(bytes).ok(),
            (_, Value::SimpleString(text)) => Some(text),
            _ => None,
        }
    }
}

impl From<StreamId> for Entry {
    fn from(entry: StreamId) -> Self {
        let mut fields: Vec<(String, Value)> = entry.map.into_iter().collect();
        fields.sort_by(|a, b| a.0.cmp(&b.0));
        Self {
            id: entry.id,
            fields,
        }
    }
}

/// An `XREADGROUP` reply: each log read, with its entries.
///
/// Decoded by moving out of the reply. redis's own `StreamReadReply` clones
/// the whole reply first and builds a hash map per entry: decoding through
/// it cost 8% more of the server's instructions per `lua` purchase, with
/// persistence on (callgrind).
#[derive(Debug, Default, PartialEq)]
pub struct ReadReply(pub Vec<(String, Vec<Entry>)>);

impl FromRedisValue for ReadReply {
    fn from_redis_value(v: Value) -> Result<Self, ParsingError> {
        // RESP2 answers an array of [key, entries] pairs, RESP3 a map.
        let logs = match v {
            Value::Nil => Vec::new(),
            Value::Array(logs) => logs
                .into_iter()
                .map(|log| match log {
                    Value::Array(pair) => two(pair, "a [key, entries] pair"),
                    other => Err(unexpected("a [key, entries] pair", &other)),
                })
                .collect::<Result<_, _>>()?,
            Value::Map(logs) => logs,
            other => return Err(unexpected("an XREADGROUP reply", &other)),
        };
        logs.into_iter()
            .map(|(key, entries)| Ok((text(key, "a log's key")?, entries_of(entries)?)))
            .collect::<Result<_, _>>()
            .map(ReadReply)
    }
}

/// A log's entries: `[id, [field, value, ...] | nil]` each.
fn entries_of(entries: Value) -> Result<Vec<Entry>, ParsingError> {
    let Value::Array(entries) = entries else {
        return Err(unexpected("a log's entries", &entries));
    };
    entries
        .into_iter()
        .map(|entry| {
            let Value::Array(pair) = entry else {
                return Err(unexpected("an [id, fields] entry", &entry));
            };
            let (id, fields) = two(pair, "an [id, fields] entry")?;
            let fields = match fields {
                Value::Nil => Vec::new(),
                Value::Array(flat) => {
                    let mut pairs = Vec::with_capacity(flat.len() / 2);
                    let mut flat = flat.into_iter();
                    while let Some(name) = flat.next() {
                        let value = flat.next().ok_or("an entry's field without a value")?;
                        pairs.push((text(name, "a field name")?, value));
                    }
                    pairs
                }
                Value::Map(pairs) => pairs
                    .into_iter()
                    .map(|(name, value)| Ok((text(name, "a field name")?, value)))
                    .collect::<Result<_, ParsingError>>()?,
                other => return Err(unexpected("an entry's fields", &other)),
            };
            Ok(Entry {
                id: text(id, "an entry id")?,
                fields,
            })
        })
        .collect()
}

fn two(pair: Vec<Value>, what: &str) -> Result<(Value, Value), ParsingError> {
    let Ok([a, b]) = <[Value; 2]>::try_from(pair) else {
        return Err(format!("expected {what}").into());
    };
    Ok((a, b))
}

fn text(v: Value, what: &str) -> Result<String, ParsingError> {
    match v {
        Value::BulkString(bytes) => Ok(String::from_utf8(bytes)?),
        Value::SimpleString(s) => Ok(s),
        other => Err(unexpected(what, &other)),
    }
}

fn unexpected(what: &str, got: &Value) -> ParsingError {
    format!("expected {what}, got {got:?}").into()
}

/// How far before an order id's own time its entry may stand in a log:
/// entry ids are Redis's clock, order ids the minting instance's, and the
/// worker lease already assumes the two agree within this margin.
const SKEW_MS: u64 = crate::orders::lease::SKEW_MARGIN.as_millis() as u64;
/// Entries read per `XRANGE` page, and pages at most per search: a bound on
/// what one lookup costs Redis, whatever id it is given.
const FIND_PAGE: usize = 1000;
const FIND_PAGES: usize = 20;

/// What searching a log for an order found.
#[derive(Debug, Clone, PartialEq)]
pub enum Found {
    Order(OrderRecord),
    /// Read through the order's window: it is not there.
    Absent,
    /// More entries stand in the order's window than one search reads
    /// ([`FIND_PAGES`] × [`FIND_PAGE`]): it cannot say.
    TooMany,
}

/// Looks for `order_id` in the log at `key` (of `item`), oldest first,
/// within the window its entry can stand in: from the order's own time less
/// the clock skew to `late` after it (how long after minting a purchase
/// may still append: its request's time) plus the skew. An entry appended
/// later than that (a write held up past its request) is found in SQL once
/// the persister has it. Without an index of ids, this is how a log
/// answers "is this order here"; a purchase just made is on the first page.
pub async fn find(
    redis: &mut impl redis::aio::ConnectionLike,
    item: &ItemId,
    key: &str,
    order_id: OrderId,
    late: std::time::Duration,
) -> redis::RedisResult<Found> {
    let minted = order_id.parts().unix_ms;
    let last_ms = minted.saturating_add(late.as_millis() as u64 + SKEW_MS);
    let mut start = format!("{}-0", minted.saturating_sub(SKEW_MS));
    for _ in 0..FIND_PAGES {
        let page: Value = redis::cmd("XRANGE")
            .arg(key)
            .arg(&start)
            .arg(last_ms)
            .arg("COUNT")
            .arg(FIND_PAGE)
            .query_async(redis)
            .await?;
        let entries = entries_of(page).map_err(|err| {
            redis::RedisError::from((redis::ErrorKind::Parse, "XRANGE reply", err.to_string()))
        })?;
        let mut orders = Vec::new();
        for entry in &entries {
            orders.clear();
            if parse(item, entry, &mut orders).is_ok()
                && let Some(order) = orders.iter().position(|o| o.order_id == order_id)
            {
                return Ok(Found::Order(orders.swap_remove(order)));
            }
        }
        match entries.last() {
            Some(last) if entries.len() == FIND_PAGE => {
                // Exclusive: the next page starts after the last entry read.
                start = format!("({}", last.id);
            }
            _ => return Ok(Found::Absent),
        }
    }
    Ok(Found::TooMany)
}

/// Reads an entry of `item`'s order log back into its orders, appended to
/// `orders`: all of them, or none and why.
pub fn parse(item: &ItemId, entry: &Entry, orders: &mut Vec<OrderRecord>) -> Result<(), String> {
    for field in [ORDER, ORDERS] {
        if let Some(value) = entry.text(field) {
            return parse_field(item, field, value, orders);
        }
    }
    let text = |field: &str| {
        entry
            .text(field)
            .ok_or_else(|| format!("missing field `{field}`"))
    };
    let parts = [
        text(legacy::ORDER_ID)?,
        text(legacy::USER_ID)?,
        text(legacy::STRATEGY)?,
        text(legacy::CREATED_MS)?,
        text(legacy::GENERATION)?,
    ];
    orders.push(record(item, parts)?);
    Ok(())
}

/// Reads the value of an entry's one field, [`ORDER`] or [`ORDERS`], back
/// into its orders, appended to `orders`: all of them, or none and why.
pub fn parse_field(
    item: &ItemId,
    field: &str,
    value: &str,
    orders: &mut Vec<OrderRecord>,
) -> Result<(), String> {
    if field == ORDER {
        orders.push(parse_value(item, value)?);
        return Ok(());
    }
    let before = orders.len();
    for line in value.split('\n') {
        match parse_value(item, line) {
            Ok(order) => orders.push(order),
            Err(err) => {
                orders.truncate(before);
                return Err(err);
            }
        }
    }
    Ok(())
}

/// Reads an [`ORDER`] value of `item`'s order log back into an order.
pub fn parse_value(item: &ItemId, value: &str) -> Result<OrderRecord, String> {
    let parts = unpack(value).ok_or_else(|| {
        format!(
            "field `{ORDER}` is not `order_id user_id strategy created_ms generation`: {value:?}"
        )
    })?;
    record(item, parts)
}

/// An order of `item` from its five parts, in [`ORDER`]'s order.
fn record(
    item: &ItemId,
    [order_id, user, strategy, created, generation]: [&str; 5],
) -> Result<OrderRecord, String> {
    let number = |part: &str, what: &str| {
        part.parse::<i64>()
            .map_err(|_| format!("`{what}` is not an integer: {part:?}"))
    };
    Ok(OrderRecord {
        order_id: OrderId::parse(order_id)?,
        item_id: item.to_string(),
        user_id: user.to_owned(),
        strategy: strategy.to_owned(),
        generation: number(generation, legacy::GENERATION)?,
        created_at: number(created, legacy::CREATED_MS)?,
    })
}

/// The orders of an entry read as plain field pairs (`XRANGE`): each one's
/// id and buyer, as text; none when the entry holds no order.
pub fn ids_and_buyers(fields: &[(String, String)]) -> Vec<(&str, &str)> {
    let field = |wanted: &str| {
        fields
            .iter()
            .find(|(name, _)| name == wanted)
            .map(|(_, value)| value.as_str())
    };
    let values = field(ORDER).or_else(|| field(ORDERS));
    match values {
        Some(values) => values
            .split('\n')
            .filter_map(unpack)
            .map(|parts| (parts[0], parts[1]))
            .collect(),
        None => field(legacy::ORDER_ID)
            .zip(field(legacy::USER_ID))
            .into_iter()
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scripts append the sale's generation to the [`head`] they are
    /// handed, as the one field [`ORDER`]; the batch script joins several
    /// such values into [`ORDERS`], and counts the orders past the first in
    /// [`EXTRA_ORDERS`], tagged with the sale's generation.
    #[test]
    fn the_purchase_scripts_write_the_one_field() {
        let single = include_str!("../strategy/purchase.lua");
        let xadd = format!("'XADD', KEYS[4], '*', '{ORDER}', line)");
        assert!(single.contains("local line = ARGV[2] .. meta[2]"));
        assert!(single.contains(&xadd), "purchase.lua lacks {xadd}");
        assert_eq!(single.matches("'XADD'").count(), 1);

        let batch = include_str!("../strategy/purchase_batch.lua");
        for wanted in [
            "lines[sold] = arg(i, 2) .. meta[2]".to_owned(),
            format!("'XADD', KEYS[4], '*', '{ORDER}', lines[1])"),
            format!("'XADD', KEYS[4], '*', '{ORDERS}', table.concat(lines, '\\n'))"),
            format!(
                "'HSET', KEYS[2], '{EXTRA_ORDERS}', extra + sold - 1, '{EXTRA_ORDERS_GENERATION}', meta[2])"
            ),
            format!("'{EXTRA_ORDERS}', '{EXTRA_ORDERS_GENERATION}',"),
        ] {
            assert!(batch.contains(&wanted), "purchase_batch.lua lacks {wanted}");
        }
        assert_eq!(batch.matches("'XADD'").count(), 2);
    }

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn read_replies_decode_in_both_protocols_and_refuse_other_shapes() {
        let entries = || {
            Value::Array(vec![
                Value::Array(vec![
                    bulk("1-0"),
                    Value::Array(vec![bulk("a"), bulk("7"), bulk("b"), bulk("u")]),
                ]),
                // Deleted since it was delivered: read from the pending list.
                Value::Array(vec![bulk("2-0"), Value::Nil]),
            ])
        };
        let want = ReadReply(vec![(
            "log".to_owned(),
            vec![
                Entry {
                    id: "1-0".into(),
                    fields: vec![("a".into(), bulk("7")), ("b".into(), bulk("u"))],
                },
                Entry {
                    id: "2-0".into(),
                    fields: vec![],
                },
            ],
        )]);
        let resp2 = Value::Array(vec![Value::Array(vec![bulk("log"), entries()])]);
        assert_eq!(ReadReply::from_redis_value(resp2).unwrap(), want);
        let resp3 = Value::Map(vec![(bulk("log"), entries())]);
        assert_eq!(ReadReply::from_redis_value(resp3).unwrap(), want);
        // A blocking read that timed out.
        assert_eq!(ReadReply::from_redis_value(Value::Nil).unwrap().0, vec![]);

        for bad in [
            Value::Int(1),
            Value::Array(vec![Value::Array(vec![bulk("log")])]),
            Value::Array(vec![Value::Array(vec![bulk("log"), Value::Int(3)])]),
            Value::Array(vec![Value::Array(vec![
                bulk("log"),
                Value::Array(vec![Value::Array(vec![
                    bulk("1-0"),
                    Value::Array(vec![bulk("a")]),
                ])]),
            ])]),
        ] {
            assert!(ReadReply::from_redis_value(bad.clone()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn entries_parse_into_orders_and_bad_ones_say_why() {
        let item = ItemId::parse("ip").unwrap();
        let user = UserId::parse("u1.x@y").unwrap();
        let entry = |pairs: &[(&str, &str)]| Entry {
            id: "1-0".into(),
            fields: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), bulk(v)))
                .collect(),
        };
        use crate::orders::snowflake::{EPOCH_MS, SEQUENCE_BITS, WORKER_BITS};
        let id = OrderId(((1_795_550_000_123 - EPOCH_MS) << (WORKER_BITS + SEQUENCE_BITS)) | 9);
        let [(name, value)] = fields(id, &user, "lua-batch", 3);
        let read = |entry: &Entry| {
            let mut orders = Vec::new();
            parse(&item, entry, &mut orders).map(|()| orders)
        };
        let order = read(&entry(&[(name, &value)])).unwrap();
        let want = OrderRecord {
            order_id: id,
            item_id: "ip".into(),
            user_id: "u1.x@y".into(),
            strategy: "lua-batch".into(),
            generation: 3,
            created_at: 1_795_550_000_123,
        };
        assert_eq!(order, std::slice::from_ref(&want));
        let pairs = [(name.to_owned(), value.clone())];
        let id_text = id.to_string();
        assert_eq!(ids_and_buyers(&pairs), [(id_text.as_str(), "u1.x@y")]);

        // A batch's entry: every order, in order.
        let second = OrderId(id.0 + 1);
        let [(_, other)] = fields(second, &UserId::parse("u2").unwrap(), "lua-batch", 3);
        let both = format!("{value}\n{other}");
        let orders = read(&entry(&[(ORDERS, &both)])).unwrap();
        assert_eq!(orders.len(), 2);
        assert_eq!(orders[0], want);
        assert_eq!(
            (orders[1].order_id, orders[1].user_id.as_str()),
            (second, "u2")
        );
        let second_text = second.to_string();
        assert_eq!(
            ids_and_buyers(&[(ORDERS.to_owned(), both.clone())]),
            [(id_text.as_str(), "u1.x@y"), (second_text.as_str(), "u2")]
        );
        // One bad line and the entry is no order at all: never half stored.
        let mut kept = vec![want.clone()];
        let bad = format!("{value}\n1 u lua five 3");
        assert!(parse(&item, &entry(&[(ORDERS, &bad)]), &mut kept).is_err());
        assert_eq!(kept, std::slice::from_ref(&want));
        assert!(read(&entry(&[(ORDERS, "")])).is_err());

        // An entry of the earlier five-field shape reads the same.
        let created = want.created_at.to_string();
        let mut old = vec![
            (legacy::ORDER_ID, id_text.as_str()),
            (legacy::USER_ID, "u1.x@y"),
            (legacy::STRATEGY, "lua-batch"),
            (legacy::CREATED_MS, created.as_str()),
            (legacy::GENERATION, "3"),
        ];
        assert_eq!(read(&entry(&old)).unwrap(), [want]);
        let pairs: Vec<(String, String)> = old
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(ids_and_buyers(&pairs), [(id_text.as_str(), "u1.x@y")]);
        old.retain(|(name, _)| *name != legacy::GENERATION);
        assert!(read(&entry(&old)).unwrap_err().contains(legacy::GENERATION));
        assert!(ids_and_buyers(&[]).is_empty());

        for bad in [
            "1 u lua 5",
            "1 u lua 5 3 extra",
            "1 u lua five 3",
            "x u lua 5 3",
            "",
        ] {
            assert!(read(&entry(&[(ORDER, bad)])).is_err(), "{bad:?}");
        }
    }
}
