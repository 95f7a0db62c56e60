//! seckill: a flash-sale (秒杀) service and concurrency lab.
//!
//! # Layout
//! - [`cli`]: the command line (`serve`), parsed by `main.rs` and run here.
//! - [`config`]: every setting, as a flag and an environment variable.
//! - [`server`]: `run(listener, state, shutdown)` and `serve(config)`.
//! - [`http`]: the router, handlers and middleware.
//! - [`state`]: what handlers share.
//! - [`error`]: the one API error type and its JSON shape.
//! - [`telemetry`]: logging set-up.
//! - [`domain`]: validated ids from the edge; [`keys`]: the Redis key schema.
//! - [`snowflake`]: order ids.

pub mod cli;
pub mod config;
pub mod domain;
pub mod error;
pub mod http;
pub mod keys;
pub mod server;
pub mod snowflake;
pub mod state;
pub mod telemetry;
