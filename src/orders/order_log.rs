//! The order-log entry: the one wire shape between the strategies, which
//! append it to the item's order log (`XADD`), and its readers, the
//! persister and the bench. Its field names live here; `purchase.lua` and
//! `purchase_batch.lua`, which cannot import them, write the same names in
//! the same order, and a test below holds them together.

use redis::streams::StreamId;
use redis::{FromRedisValue, ParsingError, Value};

use crate::domain::{ItemId, UserId};
use crate::orders::db::OrderRecord;
use crate::orders::snowflake::OrderId;

/// The snowflake order id, decimal.
pub const ORDER_ID: &str = "order_id";
pub const USER_ID: &str = "user_id";
/// The strategy the purchase named.
pub const STRATEGY: &str = "strategy";
/// The order id's own timestamp (Unix ms), so the two never disagree.
pub const CREATED_MS: &str = "created_ms";
/// The sale (restock generation) the order belongs to.
pub const GENERATION: &str = "generation";

/// The fields of one entry (`XADD ... * <fields>`), in the order
/// `purchase.lua` writes them. `strategy` is the name the purchase gave.
pub fn fields(
    order_id: OrderId,
    user: &UserId,
    strategy: &str,
    generation: u64,
) -> [(&'static str, String); 5] {
    [
        (ORDER_ID, order_id.to_string()),
        (USER_ID, user.to_string()),
        (STRATEGY, strategy.to_string()),
        (CREATED_MS, order_id.parts().unix_ms.to_string()),
        (GENERATION, generation.to_string()),
    ]
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
    fn text(&self, field: &str) -> Option<String> {
        self.fields
            .iter()
            .find(|(name, _)| name == field)
            .and_then(|(_, value)| redis::from_redis_value_ref(value).ok())
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
/// the whole reply first and builds a hash map per entry: in a callgrind
/// profile of `lua` purchases with persistence on, that clone, those maps
/// and their drops were about a fifth of the server's instructions.
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

/// Reads an entry of `item`'s order log back into an order.
pub fn parse(item: &ItemId, entry: &Entry) -> Result<OrderRecord, String> {
    let text = |field: &str| {
        entry
            .text(field)
            .ok_or_else(|| format!("missing field `{field}`"))
    };
    let number = |field: &str| {
        text(field)?
            .parse::<i64>()
            .map_err(|_| format!("field `{field}` is not an integer"))
    };
    Ok(OrderRecord {
        order_id: OrderId::parse(&text(ORDER_ID)?)?,
        item_id: item.to_string(),
        user_id: text(USER_ID)?,
        strategy: text(STRATEGY)?,
        generation: number(GENERATION)?,
        created_at: number(CREATED_MS)?,
    })
}

/// The order id of an entry read as plain field pairs (`XRANGE`).
pub fn order_id_of(fields: &[(String, String)]) -> Option<&str> {
    field_of(fields, ORDER_ID)
}

/// The buyer of an entry read as plain field pairs (`XRANGE`).
pub fn user_id_of(fields: &[(String, String)]) -> Option<&str> {
    field_of(fields, USER_ID)
}

fn field_of<'a>(fields: &'a [(String, String)], field: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(name, _)| name == field)
        .map(|(_, value)| value.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_purchase_scripts_write_the_same_fields_in_the_same_order() {
        for (file, script) in [
            ("purchase.lua", include_str!("../strategy/purchase.lua")),
            (
                "purchase_batch.lua",
                include_str!("../strategy/purchase_batch.lua"),
            ),
        ] {
            let xadd = &script[script
                .find("'XADD'")
                .unwrap_or_else(|| panic!("{file} appends no entry"))..];
            let mut from = 0;
            for name in [ORDER_ID, USER_ID, STRATEGY, CREATED_MS, GENERATION] {
                let at = xadd[from..]
                    .find(&format!("'{name}'"))
                    .unwrap_or_else(|| panic!("{file} lacks `{name}` after position {from}"));
                from += at + name.len();
            }
        }
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
                    Value::Array(vec![bulk(ORDER_ID), bulk("7"), bulk(USER_ID), bulk("u")]),
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
                    fields: vec![(ORDER_ID.into(), bulk("7")), (USER_ID.into(), bulk("u"))],
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
                    Value::Array(vec![bulk(ORDER_ID)]),
                ])]),
            ])]),
        ] {
            assert!(ReadReply::from_redis_value(bad.clone()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn entries_parse_into_orders_and_bad_ones_say_why() {
        let user = UserId::parse("u1").unwrap();
        let mut entry = Entry {
            id: "1-0".into(),
            fields: fields(OrderId(42), &user, "lua", 3)
                .into_iter()
                .map(|(k, v)| (k.to_owned(), Value::BulkString(v.into_bytes())))
                .collect(),
        };
        let order = parse(&ItemId::parse("ip").unwrap(), &entry).unwrap();
        assert_eq!((order.order_id, order.generation), (OrderId(42), 3));
        assert_eq!(
            (order.user_id.as_str(), order.strategy.as_str()),
            ("u1", "lua")
        );
        entry.fields.retain(|(name, _)| name != GENERATION);
        assert!(
            parse(&ItemId::parse("ip").unwrap(), &entry)
                .unwrap_err()
                .contains(GENERATION)
        );
    }
}
