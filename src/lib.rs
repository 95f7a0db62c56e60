//! seckill: a flash-sale (秒杀) service and concurrency lab.
//!
//! # Layout
//! The folders are the architecture; the files at the root are the shell
//! and the shared vocabulary.
//!
//! - [`http`]: the router, thin handlers (HTTP in, domain call, HTTP out),
//!   [`http::error`] (the one API error and its JSON shape), the accept loop
//!   ([`http::server`]), the status page's live feed ([`http::live_feed`])
//!   and the OpenAPI document ([`http::openapi`]).
//! - [`sale`]: items, restocks and the truths of a sale; the purchase
//!   use-case ([`sale::purchase`]), its `Idempotency-Key` records
//!   ([`sale::idempotency`]), counters ([`sale::stats`]) and Prometheus
//!   metrics ([`sale::metrics`]).
//! - [`strategy`]: the concurrency-control strategies, one file each, and
//!   the catalogue that lists them.
//! - [`orders`]: where an order goes after its 201: its id
//!   ([`orders::snowflake`], [`orders::lease`]), the order log
//!   ([`orders::order_log`]), the [`orders::persister`] and SQL
//!   ([`orders::db`]).
//! - [`lab`]: the load generator, `seckill bench` and its report,
//!   `seckill faults`, the status page's race control and fault lab control.
//! - [`infra`]: the private `redis-server`, token locks, logging.
//! - At the root: [`cli`] and [`config`] (every setting, as a flag and an
//!   environment variable), [`startup`] (builds the state, stops it in
//!   order), [`state`] (what handlers share), [`domain`] (validated ids) and
//!   [`keys`] (the Redis key schema), and [`outcome`] (the outcome
//!   catalogue: one line per way a purchase ends, its code, status,
//!   counter and label).
//!
//! Dependencies point one way: `http` and `lab` call `sale` and `orders`;
//! `sale` calls `strategy`; `strategy` writes the order log of `orders`;
//! everything may use `infra`, `domain` and `keys`. The load generator reads
//! the server's answers with the server's own types. No module, and no
//! folder, imports another that imports it back, around any circle:
//! `tests/api/layout.rs` checks.
//!
//! # A purchase, start to end
//! `POST /api/items/{item}/purchase` reaches [`http`], which validates the
//! item, user and strategy name into [`domain`] types and hands them to
//! [`sale::purchase::Purchases`]. That picks the strategy from the
//! [`strategy::Registry`], mints an [`orders::snowflake`] id, and calls
//! [`strategy::Strategy::purchase`], which checks and writes the item's keys
//! ([`keys`]) in Redis under its own guard, appends the order to the item's
//! order log ([`orders::order_log`]) and reports a [`strategy::Outcome`]. One
//! recorder counts the outcome in [`sale::stats`] and [`sale::metrics`]; the
//! handler turns a [`sale::purchase::PurchaseError`] into an
//! [`http::error::ApiError`], its status and JSON shape. Later, the
//! [`orders::persister`] reads the order from the log and inserts it into
//! SQL.

pub mod cli;
pub mod config;
pub mod domain;
pub mod http;
pub mod infra;
pub mod keys;
pub mod lab;
pub mod orders;
pub mod outcome;
pub mod sale;
pub mod startup;
pub mod state;
pub mod strategy;
