//! The concurrency lab around the service: the [`loadgen`] that races
//! strategies and reads back the truths of each sale, `seckill bench`
//! ([`bench`](mod@bench)) with its [`report`] and [`chart`], and the status
//! page's race control ([`race`]), and `seckill faults` ([`faults`]), which
//! runs the strategies under injected faults, with the status page's control
//! of it ([`fault_control`]).

pub mod bench;
pub mod chart;
pub mod cpu;
pub mod fault_control;
pub mod faults;
pub mod loadgen;
pub mod race;
pub mod report;
pub mod scratch;
