//! The order-log entry: the one wire shape between the strategies, which
//! append it to the item's order log (`XADD`), and its readers, the
//! persister and the bench. Its field names live here; `purchase.lua` and
//! `purchase_batch.lua`, which cannot import them, write the same names in
//! the same order, and a test below holds them together.

use redis::streams::StreamId;

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

/// Reads an entry of `item`'s order log back into an order.
pub fn parse(item: &ItemId, entry: &StreamId) -> Result<OrderRecord, String> {
    let text = |field: &str| {
        entry
            .get::<String>(field)
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

    #[test]
    fn entries_parse_into_orders_and_bad_ones_say_why() {
        let user = UserId::parse("u1").unwrap();
        let mut entry = StreamId {
            id: "1-0".into(),
            ..StreamId::default()
        };
        for (k, v) in fields(OrderId(42), &user, "lua", 3) {
            entry
                .map
                .insert(k.into(), redis::Value::BulkString(v.into_bytes()));
        }
        let order = parse(&ItemId::parse("ip").unwrap(), &entry).unwrap();
        assert_eq!((order.order_id, order.generation), (OrderId(42), 3));
        assert_eq!(
            (order.user_id.as_str(), order.strategy.as_str()),
            ("u1", "lua")
        );
        entry.map.remove(GENERATION);
        assert!(
            parse(&ItemId::parse("ip").unwrap(), &entry)
                .unwrap_err()
                .contains(GENERATION)
        );
    }
}
