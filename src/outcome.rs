//! The outcome catalogue: one line per way a purchase can end, and
//! everything else derives from it: [`Code`] (its variants, [`Code::ALL`],
//! the wire code, the HTTP status), the purchase scripts' numeric codes
//! ([`Code::from_lua`], read by `strategy::lua`), the metrics label
//! ([`Code::label`], `sale::metrics`), the per-strategy counters
//! (`sale::stats` builds its counter fields from the `count` column through
//! [`table!`]), the API error's code and status for purchase refusals
//! (`http::error`), the OpenAPI purchase responses ([`Code::describe`]) and
//! the load generator's reading of an answer ([`Code::parse`]).
//!
//! This file is the only place a code string is written (a test greps
//! `src/` for them). Adding an outcome: one line below, plus the place that
//! produces it (and, for a refusal the API shows, its `ApiError` variant).
//!
//! It sits at the top of the crate and imports nothing of it, so `strategy`,
//! `sale`, `http` and `lab` can all read it.

use axum::http::StatusCode;

/// The outcome table, handed to `$callback!`: each line is
/// `Variant = "code", STATUS, lua N|_, count field|_, label same|"x"|_, "what it means";`.
///
/// - `code`: the stable name; the `error.code` of a refusal (a 2xx carries
///   none).
/// - `STATUS`: the [`StatusCode`] constant it is answered with.
/// - `lua`: the code `purchase.lua` and `purchase_batch.lua` return for it.
/// - `count`: the per-strategy counter (a field of the item view's
///   `strategies` entries) it is counted in.
/// - `label`: its `outcome` label on `seckill_purchases_total` (`same`: the
///   code).
/// - the sentence: what it means to a client (the OpenAPI document).
macro_rules! table {
    ($callback:ident) => {
        $callback! {
            Purchased = "purchased", CREATED, lua 0, count purchased, label same,
                "Bought: the order is in the item's order log.";
            Replayed = "replayed", CREATED, lua 5, count _, label same,
                "the Idempotency-Key bought already: its purchase is replayed (`Idempotency-Replayed: true`), nothing is bought again.";
            ItemNotFound = "item_not_found", NOT_FOUND, lua 3, count _, label same,
                "no such item.";
            SoldOut = "sold_out", CONFLICT, lua 1, count sold_out, label same,
                "no units left.";
            LimitReached = "limit_reached", CONFLICT, lua 2, count limit_reached, label same,
                "the user holds the per-user limit.";
            StrategyMismatch = "strategy_mismatch", CONFLICT, lua 4, count strategy_mismatch, label same,
                "the sale is bound to another strategy, which the message names; nothing written.";
            SaleRestarted = "sale_restarted", CONFLICT, lua _, count sale_restarted, label same,
                "the item was restocked while the purchase was in flight; nothing bought in either sale.";
            IdempotencyInFlight = "idempotency_in_flight", CONFLICT, lua _, count _, label _,
                "a request with this Idempotency-Key is still being processed.";
            IdempotencyKeyReused = "idempotency_key_reused", UNPROCESSABLE_ENTITY, lua _, count _, label _,
                "the Idempotency-Key was used with another user or strategy.";
            Contention = "contention", SERVICE_UNAVAILABLE, lua _, count contention, label same,
                "the strategy gave up (lock wait or retries exhausted), nothing bought; `Retry-After`.";
            Unconfirmed = "unconfirmed", SERVICE_UNAVAILABLE, lua _, count unconfirmed, label _,
                "bought (`error.order_id`), but fewer than `REDIS_WAIT_REPLICAS` replicas confirmed it in time; ask again with the same Idempotency-Key.";
            OutcomeUnknown = "outcome_unknown", SERVICE_UNAVAILABLE, lua _, count _, label _,
                "the purchase's write was sent but its answer was lost, and its order `error.order_id` could not be found in time: it may exist; ask `GET /api/orders/{order_id}?item=`, or repeat with the same Idempotency-Key, which replays it or buys exactly once.";
            Unavailable = "unavailable", SERVICE_UNAVAILABLE, lua _, count errors, label "error",
                "Redis, the database or the order-id lease failed before anything was written: nothing bought.";
        }
    };
}
pub(crate) use table;

/// `Some(x)` for a column's value, `None` for `_`.
macro_rules! column {
    (_) => {
        None
    };
    ($value:expr) => {
        Some($value)
    };
}

/// Declares [`Code`] from the [`table!`].
macro_rules! outcomes {
    ($($variant:ident = $code:literal, $status:ident, lua $lua:tt, count $count:tt,
        label $label:tt, $doc:literal;)+) => {
        /// A way a purchase can end, as the catalogue names it.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Code {
            $(#[doc = $doc] $variant,)+
        }

        impl Code {
            /// Every outcome, in the catalogue's order.
            pub const ALL: [Code; [$($code),+].len()] = [$(Self::$variant,)+];

            /// The stable name; a refusal's `error.code`.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $code,)+
                }
            }

            /// The status it is answered with.
            pub const fn status(self) -> StatusCode {
                match self {
                    $(Self::$variant => StatusCode::$status,)+
                }
            }

            /// What it means to a client, in a sentence.
            pub const fn doc(self) -> &'static str {
                match self {
                    $(Self::$variant => $doc,)+
                }
            }

            /// The code the purchase scripts return for it, if they can.
            pub const fn lua(self) -> Option<i64> {
                match self {
                    $(Self::$variant => column!($lua),)+
                }
            }

            /// Its `outcome` label on `seckill_purchases_total`, if counted
            /// there.
            pub const fn label(self) -> Option<&'static str> {
                match self {
                    $(Self::$variant => label!($label, $code),)+
                }
            }
        }
    };
}

/// The `label` column: `same` is the code.
macro_rules! label {
    (same, $code:literal) => {
        Some($code)
    };
    ($label:tt, $code:literal) => {
        column!($label)
    };
}

table!(outcomes);

impl Code {
    /// The outcome `purchase.lua` reports as `code`.
    pub fn from_lua(code: i64) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.lua() == Some(code))
    }

    /// A refusal read back from an answer: its status and `error.code`, if
    /// both are the catalogue's.
    pub fn parse(status: StatusCode, code: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|c| c.as_str() == code && c.status() == status)
    }

    /// Whether the client is told it as an error (`error.code`).
    pub fn is_refusal(self) -> bool {
        self.status().is_client_error() || self.status().is_server_error()
    }

    /// The refusals answered with `status`, each with what it means: a
    /// response description of the OpenAPI document.
    pub fn describe(status: StatusCode) -> Option<String> {
        let lines: Vec<String> = Self::ALL
            .into_iter()
            .filter(|c| c.is_refusal() && c.status() == status)
            .map(|c| format!("`{}`: {}", c.as_str(), c.doc()))
            .collect();
        (!lines.is_empty()).then(|| lines.join(" "))
    }

    /// Every status a refusal of the catalogue is answered with.
    pub fn refusal_statuses() -> Vec<StatusCode> {
        let mut statuses: Vec<StatusCode> = Self::ALL
            .into_iter()
            .filter(|c| c.is_refusal())
            .map(Self::status)
            .collect();
        statuses.sort();
        statuses.dedup();
        statuses
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_labels_and_script_codes_are_unique() {
        let unique = |values: Vec<String>| {
            let n = values.len();
            let set: std::collections::BTreeSet<_> = values.into_iter().collect();
            set.len() == n
        };
        assert!(unique(Code::ALL.map(|c| c.as_str().to_owned()).to_vec()));
        assert!(unique(
            Code::ALL
                .iter()
                .filter_map(|c| c.label())
                .map(str::to_owned)
                .collect()
        ));
        assert!(unique(
            Code::ALL
                .iter()
                .filter_map(|c| c.lua())
                .map(|n| n.to_string())
                .collect()
        ));
        for code in Code::ALL {
            if let Some(n) = code.lua() {
                assert_eq!(Code::from_lua(n), Some(code));
            }
            assert_eq!(Code::parse(code.status(), code.as_str()), Some(code));
        }
        assert_eq!(
            Code::parse(StatusCode::CONFLICT, Code::Contention.as_str()),
            None
        );
    }

    /// The catalogue is the only place a code string is written: a code
    /// spelt out anywhere else in `src/` would drift from it.
    #[test]
    fn no_code_string_is_written_outside_the_catalogue() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = vec![root];
        let mut found = Vec::new();
        while let Some(path) = files.pop() {
            if path.is_dir() {
                files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
                continue;
            }
            if path.extension().is_none_or(|ext| ext != "rs") || path.ends_with("src/outcome.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for code in Code::ALL {
                let literal = format!("\"{code}\"");
                for (n, line) in text.lines().enumerate() {
                    if line.contains(&literal) {
                        found.push(format!("{}:{}: {literal}", path.display(), n + 1));
                    }
                }
            }
        }
        assert!(
            found.is_empty(),
            "write these through crate::outcome::Code instead:\n{}",
            found.join("\n")
        );
    }
}
