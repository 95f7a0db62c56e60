//! `Idempotency-Key` for purchases, after the IETF draft
//! (draft-ietf-httpapi-idempotency-key-header): a purchase carrying a key
//! takes effect at most once per key. A repeat with the same body gets the
//! first response again (201 with the same order id); with a different body,
//! 422 `idempotency_key_reused`; while the first is still in flight, 409
//! `idempotency_in_flight`.
//!
//! # Decided where the purchase commits
//! The key's record lives in Redis beside the item's keys (one hash tag, so
//! the same slot on a cluster), shared by every instance and durable with
//! Redis. Its shape is `strategy/key_record.lua`'s, the one place that names
//! its fields. The record that says "this key bought order N" is written by
//! the purchase's own atomic step: `purchase.lua`, `purchase_batch.lua`,
//! `write.lua` (the read-check-write strategies and the `sql` mirror),
//! `optimistic`'s `MULTI`, and for `sql` also a row in the same SQL
//! transaction as the order. Each of those steps first checks the record and
//! refuses to buy again for a key that bought ([`Bought`]). So whatever
//! happens around a purchase (its answer lost, its claim expired while it
//! still ran, its instance restarted), a key buys at most once, and a
//! repeat learns the one order it bought.
//!
//! # The claim
//! Before the purchase, [`Idempotency::begin`] claims the key (`pending`,
//! for [`CLAIM_MARGIN`] past the request timeout) or finds its record: that
//! answers a repeat quickly (a replay, 409 in flight, 422 reused) without
//! running a strategy. The claim no longer guards anything: when it expires
//! under a purchase still running, or is released after an error, the next
//! request with the key runs a purchase whose commit step finds the key
//! bought (and replays it) or buys exactly once. A refusal releases the
//! claim (nothing was bought; a repeat simply asks again), which also keeps
//! hostile keys from filling Redis: records outlive their claim only for
//! keys that bought. No record is made for an item that does not exist.
//!
//! # Limits
//! - A purchase whose write is held up on its way (a paused Redis) for
//!   longer than `IDEMPOTENCY_TTL_S` lands after the record that would have
//!   refused it expired: the TTL must stay far above any such stall (24 h by
//!   default; the settings check only requires it to outlast the request).
//! - Upgrading from a version before the commit-point record: stop every
//!   instance of the earlier version first. Those check no key at their
//!   commit, and release a failed claim by deleting the record whatever it
//!   holds, a record this version wrote included. Their `done` records
//!   (with the 201's `body`) are read and replayed by this version.

use std::time::Duration;

use crate::infra::redis_conn::RedisConn;
use redis::{Script, Value};

use crate::domain::UserId;
use crate::keys::ItemKeys;
use crate::strategy::StrategyKind;
use crate::strategy::key_record::{Bought, KeyedPurchase, READ_LUA, fingerprint};

/// Longest key accepted (the draft sets none; keys are UUIDs, 36
/// characters, in practice). Bounds each record's name.
pub const MAX_KEY_LEN: usize = 64;
/// How much longer than the request timeout a claim outlives its request.
pub const CLAIM_MARGIN: Duration = Duration::from_secs(5);

const BEGIN_LUA: &str = concat!(
    include_str!("../strategy/key_record.lua"),
    include_str!("idempotency_begin.lua")
);
/// KEYS[1] the record: drops a claim that bought nothing.
const RELEASE_LUA: &str = concat!(
    include_str!("../strategy/key_record.lua"),
    "idem_release(KEYS[1]) return 1"
);

/// A validated key, from the `Idempotency-Key` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// The header's value: a structured-field string (`"..."`), or, as
    /// clients commonly send it, the bare token. Printable ASCII only.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let inner = raw
            .strip_prefix('"')
            .and_then(|r| r.strip_suffix('"'))
            .unwrap_or(raw);
        if inner.is_empty() || inner.len() > MAX_KEY_LEN {
            return Err(format!(
                "Idempotency-Key must be 1 to {MAX_KEY_LEN} characters"
            ));
        }
        if !inner.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
            return Err("Idempotency-Key must be printable ASCII without spaces".into());
        }
        Ok(Self(inner.to_owned()))
    }

    /// The pattern of every value [`Self::parse`] accepts, for the OpenAPI
    /// document: 1 to [`MAX_KEY_LEN`] printable ASCII characters except the
    /// bare `""` (an empty quoted key), or such a key in quotes (so up to two
    /// characters longer). Exact, so a contract fuzzer's valid keys are all
    /// accepted and its invalid ones all refused.
    pub fn pattern() -> String {
        let max = MAX_KEY_LEN;
        format!(
            r#"^(?:[!-~]|[!#-~][!-~]|"[!#-~]|[!-~]{{3,{max}}}|"[!-~]{{{},{max}}}")$"#,
            max - 1
        )
    }

    /// Hex, so no byte of the key can touch the key schema's separators.
    fn encoded(&self) -> String {
        self.0.bytes().map(|b| format!("{b:02x}")).collect()
    }
}

impl utoipa::PartialSchema for IdempotencyKey {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some(Self::pattern()))
            .description(Some(format!(
                "1 to {MAX_KEY_LEN} printable ASCII characters, no spaces; bare or as a structured-field string in double quotes."
            )))
            .examples(["7f3c2a1e-purchase-1"])
            .into()
    }
}

impl utoipa::ToSchema for IdempotencyKey {}

/// What an earlier request with the same key came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The key is ours to try: run the purchase, then
    /// [`Idempotency::release`] unless it bought.
    New,
    /// The item does not exist; nothing was stored.
    Missing,
    /// Asked with another body.
    Reused,
    /// Still in flight.
    InFlight,
    /// The key bought.
    Done(Bought),
}

/// Idempotency records in Redis.
#[derive(Clone)]
pub struct Idempotency {
    redis: RedisConn,
    begin: Script,
    release: Script,
    read: Script,
    claim_ttl: Duration,
    ttl: Duration,
}

impl Idempotency {
    pub fn new(redis: RedisConn, request_timeout: Duration, ttl: Duration) -> Self {
        Self {
            redis,
            begin: Script::new(BEGIN_LUA),
            release: Script::new(RELEASE_LUA),
            read: Script::new(READ_LUA),
            claim_ttl: request_timeout + CLAIM_MARGIN,
            ttl,
        }
    }

    /// What a purchase with `key` hands its commit step.
    pub fn keyed(
        &self,
        keys: &ItemKeys,
        key: IdempotencyKey,
        user: &UserId,
        strategy: StrategyKind,
    ) -> KeyedPurchase {
        KeyedPurchase {
            record: keys.idempotency(&key.encoded()),
            fingerprint: fingerprint(user, strategy),
            ttl_ms: self.ttl.as_millis() as u64,
            key: key.0,
        }
    }

    /// Claims `keyed`'s key for a purchase of `keys`' item, or finds what
    /// it came to.
    pub async fn begin(&self, keys: &ItemKeys, keyed: &KeyedPurchase) -> redis::RedisResult<Claim> {
        let reply: Vec<Value> = self
            .begin
            .key(&keyed.record)
            .key(keys.meta())
            .arg(&keyed.fingerprint)
            .arg(self.claim_ttl.as_millis() as u64)
            .invoke_async(&mut self.redis.clone())
            .await?;
        let text = |i: usize| -> String {
            reply
                .get(i)
                .and_then(|v| redis::from_redis_value_ref(v).ok())
                .unwrap_or_default()
        };
        Ok(match text(0).as_str() {
            "new" => Claim::New,
            "missing" => Claim::Missing,
            "done" => {
                let bought = reply
                    .get(1)
                    .ok_or("no record")
                    .map_err(str::to_owned)
                    .and_then(Bought::from_reply)
                    .map_err(|msg| {
                        redis::RedisError::from((
                            redis::ErrorKind::Parse,
                            "idempotency_begin.lua",
                            msg,
                        ))
                    })?;
                if bought.fingerprint == keyed.fingerprint {
                    Claim::Done(bought)
                } else {
                    Claim::Reused
                }
            }
            _ if text(1) != keyed.fingerprint => Claim::Reused,
            _ => Claim::InFlight,
        })
    }

    /// Releases the claim of a purchase that bought nothing (a record that
    /// bought stays, whoever asks).
    pub async fn release(&self, keyed: &KeyedPurchase) -> redis::RedisResult<()> {
        self.release
            .key(&keyed.record)
            .invoke_async(&mut self.redis.clone())
            .await
    }

    /// The key's record, read on its own: whether it bought, and what.
    pub async fn bought(&self, keyed: &KeyedPurchase) -> redis::RedisResult<Option<Bought>> {
        let reply: Value = self
            .read
            .key(&keyed.record)
            .invoke_async(&mut self.redis.clone())
            .await?;
        if matches!(reply, Value::Nil) {
            return Ok(None);
        }
        Bought::from_reply(&reply).map(Some).map_err(|msg| {
            redis::RedisError::from((redis::ErrorKind::Parse, "idempotency record", msg))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_tokens_or_structured_strings() {
        assert_eq!(
            IdempotencyKey::parse("\"8e03978e-40d5-43e8-bc93-6894a57f9324\""),
            IdempotencyKey::parse("8e03978e-40d5-43e8-bc93-6894a57f9324")
        );
        for bad in [
            "",
            "\"\"",
            "a b",
            "tab\there",
            "é",
            &"x".repeat(MAX_KEY_LEN + 1),
        ] {
            assert!(IdempotencyKey::parse(bad).is_err(), "{bad:?}");
        }
        let key = IdempotencyKey::parse("a}:{b").unwrap();
        assert_eq!(key.encoded(), "617d3a7b62", "no separator survives");
    }
}
