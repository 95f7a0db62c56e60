//! Integration tests: one binary, so the throwaway Redis and the build are shared.
//! Each test spawns its own app on port 0 and uses its own item names.

mod bad_input;
mod batch;
mod browser;
mod cluster;
mod concurrency;
mod contract;
mod durability;
mod endpoints;
mod exactly_once;
mod faults;
mod faults_page;
mod health;
mod helpers;
mod hostile;
mod idempotency;
mod instances;
mod integrity;
mod layout;
mod lifecycle;
mod live;
mod loadgen;
mod persistence;
mod process;
mod proxy;
mod redis_down;
mod redlock;
mod replicas;
