//! `Idempotency-Key` for purchases, after the IETF draft
//! (draft-ietf-httpapi-idempotency-key-header): a purchase carrying a key
//! takes effect at most once per key. A repeat with the same body gets the
//! first response again (201 with the same order id); with a different body,
//! 422 `idempotency_key_reused`; while the first is still in flight, 409
//! `idempotency_in_flight`.
//!
//! The record lives in Redis beside the item's keys (one hash tag, so the
//! same slot on a cluster), shared by every instance and durable with Redis:
//! claimed `pending` for [`CLAIM_MARGIN`] past the request timeout, then,
//! once the purchase is made, `done` with its 201 for `IDEMPOTENCY_TTL_S`
//! (24 h by default). Only a purchase is recorded: a refusal changed nothing,
//! so its claim is released and a repeat simply asks again (which is also
//! what keeps hostile keys from filling Redis: records are bounded by the
//! units sold). No record is made for an item that does not exist.
//!
//! The claim, the purchase and the record run in a task of their own, so a
//! client that goes away, or the request timeout, cannot cut the sequence
//! between the purchase and its record. The one window left: an instance
//! that dies right there leaves the claim to expire; a retry after that runs
//! the purchase again (and, under a per-user limit of 1, gets
//! `limit_reached`).

use std::time::Duration;

use crate::infra::redis_conn::RedisConn;
use redis::Script;

use crate::keys::ItemKeys;

/// Longest key accepted (the draft sets none; keys are UUIDs, 36
/// characters, in practice). Bounds each record's name.
pub const MAX_KEY_LEN: usize = 64;
/// How much longer than the request timeout a claim outlives its request.
pub const CLAIM_MARGIN: Duration = Duration::from_secs(5);

const BEGIN_LUA: &str = include_str!("idempotency_begin.lua");

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

    /// Hex, so no byte of the key can touch the key schema's separators.
    fn encoded(&self) -> String {
        self.0.bytes().map(|b| format!("{b:02x}")).collect()
    }
}

/// What an earlier request with the same key came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The key is ours: run the purchase, then [`Idempotency::finish`].
    New,
    /// The item does not exist; nothing was stored.
    Missing,
    /// Asked with another body.
    Reused,
    /// Still in flight.
    InFlight,
    /// Answered already: this status and JSON body.
    Done { status: u16, body: String },
}

/// Idempotency records in Redis.
#[derive(Clone)]
pub struct Idempotency {
    redis: RedisConn,
    begin: Script,
    claim_ttl: Duration,
    ttl: Duration,
}

impl Idempotency {
    pub fn new(redis: RedisConn, request_timeout: Duration, ttl: Duration) -> Self {
        Self {
            redis,
            begin: Script::new(BEGIN_LUA),
            claim_ttl: request_timeout + CLAIM_MARGIN,
            ttl,
        }
    }

    /// Claims `key` for a purchase of `keys`' item asking for `fingerprint`.
    pub async fn begin(
        &self,
        keys: &ItemKeys,
        key: &IdempotencyKey,
        fingerprint: &str,
    ) -> redis::RedisResult<Claim> {
        let reply: Vec<String> = self
            .begin
            .key(keys.idempotency(&key.encoded()))
            .key(&keys.meta)
            .arg(fingerprint)
            .arg(self.claim_ttl.as_millis() as u64)
            .invoke_async(&mut self.redis.clone())
            .await?;
        let field = |i: usize| reply.get(i).map(String::as_str).unwrap_or("");
        Ok(match field(0) {
            "new" => Claim::New,
            "missing" => Claim::Missing,
            _ if field(1) != fingerprint => Claim::Reused,
            "done" => Claim::Done {
                status: field(2).parse().unwrap_or(500),
                body: field(3).to_owned(),
            },
            _ => Claim::InFlight,
        })
    }

    /// Records the 201 to replay, or, for any other outcome (`None`),
    /// releases the claim.
    pub async fn finish(
        &self,
        keys: &ItemKeys,
        key: &IdempotencyKey,
        response: Option<(u16, &str)>,
    ) -> redis::RedisResult<()> {
        let record = keys.idempotency(&key.encoded());
        let mut pipe = redis::pipe();
        match response {
            Some((status, body)) => {
                pipe.atomic()
                    .cmd("HSET")
                    .arg(&record)
                    .arg("state")
                    .arg("done")
                    .arg("status")
                    .arg(status)
                    .arg("body")
                    .arg(body)
                    .ignore()
                    .cmd("PEXPIRE")
                    .arg(&record)
                    .arg(self.ttl.as_millis() as u64)
                    .ignore();
            }
            None => {
                pipe.cmd("DEL").arg(&record).ignore();
            }
        }
        pipe.exec_async(&mut self.redis.clone()).await
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
