//! Plumbing the rest stands on: the private `redis-server` child
//! ([`redis_server`]), token locks ([`token_lock`]) and logging
//! ([`telemetry`]).

pub mod redis_server;
pub mod telemetry;
pub mod token_lock;
