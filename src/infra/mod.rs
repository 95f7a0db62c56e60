//! Plumbing the rest stands on: the connection to Redis or a Redis Cluster
//! ([`redis_conn`]), the private `redis-server` child
//! ([`redis_server`]) and private cluster ([`redis_cluster`]), token locks ([`token_lock`]) and logging
//! ([`telemetry`]).

pub mod redis_cluster;
pub mod redis_conn;
pub mod redis_server;
pub mod telemetry;
pub mod token_lock;
