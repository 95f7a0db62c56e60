//! Plumbing the rest stands on: the connection to Redis or a Redis Cluster
//! ([`redis_conn`]), what the service asks of that Redis ([`redis_policy`]:
//! no eviction), the confirmation that replicas hold a write
//! ([`replica_wait`]), the private `redis-server` child ([`redis_server`])
//! and private cluster ([`redis_cluster`]), token locks ([`token_lock`]) and
//! logging ([`telemetry`]).

pub mod redis_cluster;
pub mod redis_conn;
pub mod redis_policy;
pub mod redis_server;
pub mod replica_wait;
pub mod telemetry;
pub mod token_lock;
