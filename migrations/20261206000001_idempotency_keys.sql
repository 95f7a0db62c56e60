-- The `sql` strategy's Idempotency-Key records: written in the same
-- transaction as the order, so a key that bought commits with its order or
-- not at all. (Redis strategies keep theirs in Redis, beside the item.)
-- A row older than IDEMPOTENCY_TTL_S no longer counts, as a Redis record
-- would have expired; the next purchase with the key overwrites it.
CREATE TABLE idempotency_keys (
    item_id     TEXT   NOT NULL,
    idem_key    TEXT   NOT NULL,
    fingerprint TEXT   NOT NULL,
    order_id    BIGINT NOT NULL,
    remaining   BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (item_id, idem_key)
);
