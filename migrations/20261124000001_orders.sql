-- One schema for SQLite and Postgres: only types and syntax both accept.
-- Times are BIGINT milliseconds since the Unix epoch; order ids are snowflakes
-- (sign bit clear, so they fit BIGINT).

-- Items as the `sql` strategy sells them: its stock lives here.
CREATE TABLE items (
    item_id        TEXT   PRIMARY KEY,
    initial_stock  BIGINT NOT NULL,
    stock          BIGINT NOT NULL,
    per_user_limit BIGINT NOT NULL,
    generation     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL
);

-- Units per user per sale for the `sql` strategy. The primary key is what
-- enforces the per-user limit: concurrent buyers of one user serialise on it.
CREATE TABLE sql_buyers (
    item_id    TEXT   NOT NULL,
    generation BIGINT NOT NULL,
    user_id    TEXT   NOT NULL,
    units      BIGINT NOT NULL,
    PRIMARY KEY (item_id, generation, user_id)
);

-- Every order that got a 201, whatever the strategy.
CREATE TABLE orders (
    order_id     BIGINT PRIMARY KEY,
    item_id      TEXT   NOT NULL,
    user_id      TEXT   NOT NULL,
    strategy     TEXT   NOT NULL,
    generation   BIGINT NOT NULL,
    created_at   BIGINT NOT NULL,
    persisted_at BIGINT NOT NULL
);

CREATE INDEX orders_by_item ON orders (item_id, generation);
CREATE INDEX orders_by_user ON orders (user_id, order_id);
