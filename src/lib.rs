//! seckill: a flash-sale (秒杀) service and concurrency lab.
//!
//! # Layout
//! - [`cli`]: the command line (`serve`, `bench`), parsed by `main.rs` and run here.
//! - [`loadgen`]: the load generator that races strategies; [`bench`] drives it
//!   from the command line and [`report`] renders its results.
//! - [`config`]: every setting, as a flag and an environment variable.
//! - [`server`]: `run(listener, state, shutdown)` and `serve(config)`.
//! - [`http`]: the router, handlers and middleware.
//! - [`startup`]: builds the state from the config, and stops it in order.
//! - [`state`]: what handlers share.
//! - [`error`]: the one API error type and its JSON shape.
//! - [`telemetry`]: logging set-up.
//! - [`domain`]: validated ids from the edge; [`keys`]: the Redis key schema.
//! - [`snowflake`]: order ids; [`lease`]: the worker number they carry.
//! - [`token_lock`]: token locks and their scripts, for `lock`, `redlock` and
//!   the worker lease; with the backoff of a waiting taker.
//! - [`strategy`]: the concurrency-control strategies, one file each.
//! - [`sale`]: items, restocks and the truths of a sale; [`stats`]: counters.
//! - [`redis_server`]: the private `redis-server` child.
//! - [`metrics`]: Prometheus metrics for `/metrics`; [`live`]: the status
//!   page's feed; [`race`]: the page's race control.
//! - [`purchase`]: the purchase use-case: strategy, order id, attempt, one
//!   recorder for stats and metrics, idempotency.
//! - [`idempotency`]: `Idempotency-Key` records for purchases.
//! - [`order_log`]: the order-log entry, written by the strategies and read
//!   by the persister and the bench.
//! - [`db`]: SQL (SQLite or Postgres) and its queries; [`persister`]: the
//!   background task moving orders from the Redis order logs into SQL.
//!
//! # A purchase, start to end
//! `POST /api/items/{item}/purchase` reaches [`http`], which validates the item,
//! user and strategy name into [`domain`] types and hands them to
//! [`purchase::Purchases`]. That picks the strategy from the
//! [`strategy::Registry`], mints a [`snowflake`] id, and calls
//! [`strategy::Strategy::purchase`], which checks and writes the item's keys
//! ([`keys`]) in Redis under its own guard and reports an
//! [`strategy::Outcome`]. One recorder counts the outcome in [`stats`] and
//! [`metrics`]; the handler turns a [`purchase::PurchaseError`] into an
//! [`error::ApiError`], its status and JSON shape. Later, the [`persister`]
//! reads the order from the item's order log and inserts it into SQL.

pub mod bench;
pub mod cli;
pub mod config;
pub mod db;
pub mod domain;
pub mod error;
pub mod http;
pub mod idempotency;
pub mod keys;
pub mod lease;
pub mod live;
pub mod loadgen;
pub mod metrics;
pub mod order_log;
pub mod persister;
pub mod purchase;
pub mod race;
pub mod redis_server;
pub mod report;
pub mod sale;
pub mod server;
pub mod snowflake;
pub mod startup;
pub mod state;
pub mod stats;
pub mod strategy;
pub mod telemetry;
pub mod token_lock;
