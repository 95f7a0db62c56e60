//! The lifecycle's moves log: one wire shape between `lifecycle.lua`, which
//! appends an entry to the item's moves stream each time an order leaves
//! `reserved` ([`crate::sale::lifecycle`]), and the persister, which applies
//! each to the order's SQL row ([`crate::orders::db::Db::apply_moves`]).
//!
//! An entry is one field, [`MOVE`]: `<order_id> <state> <at_ms>`, the order,
//! where it went (`paid`, `cancelled`, `expired`) and when, by Redis's clock.
//! An order moves at most once, so applying a move is idempotent: setting
//! the row to its one final state again changes nothing.

use crate::orders::snowflake::OrderId;

/// The one field of a moves-log entry.
pub const MOVE: &str = "move";

/// Where an order stands.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum OrderState {
    /// Holding a unit until its deadline.
    Reserved,
    /// Paid: the unit is sold. Orders of a sale without a payment window
    /// are paid when bought.
    Paid,
    /// Cancelled by its buyer: the unit went back on sale.
    Cancelled,
    /// Not paid in time: the unit went back on sale.
    Expired,
}

impl OrderState {
    pub const ALL: [OrderState; 4] = [Self::Reserved, Self::Paid, Self::Cancelled, Self::Expired];

    /// Its name, in the API, in SQL's `orders.state` and in the scripts.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reserved => "reserved",
            Self::Paid => "paid",
            Self::Cancelled => "cancelled",
            Self::Expired => "expired",
        }
    }

    /// The 409's code of a pay or cancel refused because the order already
    /// ended in this state (`order_paid`, ...): the API answers it, and
    /// clients (the bench's load generator) match on it.
    pub fn ended_code(self) -> &'static str {
        match self {
            Self::Paid => "order_paid",
            Self::Cancelled => "order_cancelled",
            // A reserved order has not ended: never answered so.
            Self::Expired | Self::Reserved => "order_expired",
        }
    }

    pub fn parse(raw: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|state| state.as_str() == raw)
            .ok_or_else(|| format!("unknown order state `{raw}`"))
    }
}

/// Where an order that left `reserved` ended, from its value in the item's
/// `settled` hash: `<state> <user> <generation>` (written by reserve.lua's
/// `settled_value`).
pub fn settled_state(value: &str) -> Result<OrderState, String> {
    OrderState::parse(value.split(' ').next().unwrap_or_default())
}

/// One move: order `order_id` went to `state` at `at_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Move {
    pub order_id: OrderId,
    pub state: OrderState,
    pub at_ms: i64,
}

impl Move {
    /// Reads a [`MOVE`] value back.
    pub fn parse(value: &str) -> Result<Self, String> {
        let mut parts = value.split(' ');
        let (Some(id), Some(state), Some(at), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(format!(
                "a move is `<order_id> <state> <at_ms>`, not `{value}`"
            ));
        };
        let order_id = OrderId::parse(id)?;
        let state = OrderState::parse(state)?;
        if state == OrderState::Reserved {
            return Err(format!("no order moves to reserved: `{value}`"));
        }
        let at_ms = at
            .parse::<i64>()
            .map_err(|err| format!("a move's time `{at}`: {err}"))?;
        Ok(Self {
            order_id,
            state,
            at_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// lifecycle.lua writes the field and the value's shape read here.
    #[test]
    fn lifecycle_lua_appends_the_move_read_here() {
        let script = include_str!("../sale/lifecycle.lua");
        assert!(
            script.contains(&format!(
                "'XADD', KEYS[7], '*', '{MOVE}', id .. ' ' .. state .. ' ' .. at)"
            )),
            "lifecycle.lua appends another shape"
        );
        let read = Move::parse("388072877146664960 expired 1796000000000").unwrap();
        assert_eq!(read.state, OrderState::Expired);
        assert_eq!(read.at_ms, 1_796_000_000_000);
        for bad in [
            "1 reserved 5",
            "1 paid",
            "1 paid 5 6",
            "x paid 5",
            "1 lost 5",
            "1 paid t",
        ] {
            assert!(Move::parse(bad).is_err(), "{bad}");
        }
        for state in OrderState::ALL {
            assert_eq!(OrderState::parse(state.as_str()), Ok(state));
        }
        assert!(
            include_str!("../strategy/reserve.lua")
                .contains("return state .. ' ' .. user .. ' ' .. generation")
        );
        assert_eq!(settled_state("expired b7 3"), Ok(OrderState::Expired));
    }
}
