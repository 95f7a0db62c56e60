//! The status page's race control: runs the load generator ([`crate::lab::loadgen`])
//! against this very server, one race at a time, and keeps its progress for
//! the live feed.
//!
//! A race is bounded: it is cancelled after [`RaceControl::time_bound`]
//! (each strategy's duration plus [`OVERHEAD_PER_STRATEGY`] for its ceiling
//! probe, set-up and checks), by `DELETE /api/race`, and at shutdown.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde::Serialize;

use crate::lab::loadgen::{self, Progress, RacePlan, Target};

/// What the page shows about the current or last race.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RaceStatus {
    pub running: bool,
    pub phase: String,
    #[schema(value_type = Option<crate::strategy::StrategyKind>)]
    pub strategy: Option<String>,
    /// The item the running strategy sells.
    pub item: Option<String>,
    /// Every race item's name starts with this and a dash: the page tells
    /// earlier races' items from this one's.
    pub item_prefix: &'static str,
    pub requests: u64,
    pub purchased: u64,
    pub stock: u64,
    /// One line per finished strategy.
    pub results: Vec<RaceLine>,
    pub error: Option<String>,
}

/// What a race's items are named by: `race-<strategy>-<random>`.
pub const ITEM_PREFIX: &str = "race";

impl Default for RaceStatus {
    fn default() -> Self {
        Self {
            running: false,
            phase: String::new(),
            strategy: None,
            item: None,
            item_prefix: ITEM_PREFIX,
            requests: 0,
            purchased: 0,
            stock: 0,
            results: Vec::new(),
            error: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RaceLine {
    #[schema(value_type = crate::strategy::StrategyKind)]
    pub strategy: String,
    pub item: String,
    pub requests_per_s: f64,
    pub ceiling_ratio: f64,
    pub p99_ms: f64,
    pub oversold: u64,
    pub undersold: u64,
    /// The history check's verdict and its first counterexample's kind.
    pub linearizable: bool,
    pub violation: Option<String>,
    pub refused_with_stock: u64,
    pub phantom_sold_out: u64,
    /// Orders taken, and of those the units that came back (cancelled or
    /// expired orders; 0 without a payment window).
    pub sold: u64,
    pub returned: u64,
}

/// Why a race could not start.
#[derive(Debug, thiserror::Error)]
pub enum RaceError {
    #[error("a race is already running")]
    AlreadyRunning,
    #[error("the server's own address is not known yet")]
    NoAddress,
}

/// Time a race may take per strategy beyond its duration: the ceiling probe,
/// creating the item, and reading back the truths.
pub const OVERHEAD_PER_STRATEGY: Duration = Duration::from_secs(30);

#[derive(Default)]
pub struct RaceControl {
    status: Arc<Mutex<RaceStatus>>,
    address: OnceLock<SocketAddr>,
    /// The running race's task, to cancel it.
    task: Mutex<Option<tokio::task::AbortHandle>>,
}

impl RaceControl {
    /// Where the server listens; set once by `server::run`. An unspecified
    /// bind address (0.0.0.0) is reached through loopback.
    pub fn set_address(&self, mut address: SocketAddr) {
        if address.ip().is_unspecified() {
            address.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let _ = self.address.set(address);
    }

    pub fn status(&self) -> RaceStatus {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The longest `plan` may run before it is cancelled.
    pub fn time_bound(plan: &RacePlan) -> Duration {
        // A windowed sale also waits out its window, then for SQL.
        let lifecycle = plan
            .payments
            .map_or(Duration::ZERO, |p| p.window + loadgen::LIFECYCLE_WAIT);
        (plan.duration + OVERHEAD_PER_STRATEGY + lifecycle) * plan.strategies.len().max(1) as u32
    }

    /// Stops the running race, if any; `why` becomes its phase.
    pub fn cancel(&self, why: &str) {
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            task.abort();
            let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
            if status.running {
                status.running = false;
                status.strategy = None;
                status.phase = why.to_owned();
            }
        }
    }

    /// Starts a race in the background.
    pub fn start(&self, plan: RacePlan, admin_token: Option<String>) -> Result<(), RaceError> {
        let address = *self.address.get().ok_or(RaceError::NoAddress)?;
        {
            let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
            if status.running {
                return Err(RaceError::AlreadyRunning);
            }
            *status = RaceStatus {
                running: true,
                phase: "measuring the /healthz ceiling".into(),
                stock: plan.stock,
                ..RaceStatus::default()
            };
        }
        let status = Arc::clone(&self.status);
        let bound = Self::time_bound(&plan);
        let mut task = self.task.lock().unwrap_or_else(|e| e.into_inner());
        let handle = tokio::spawn(async move {
            let target = Target {
                addr: address,
                host: address.to_string(),
                admin_token,
                redis: None,
                pids: Default::default(),
            };
            let observer_status = Arc::clone(&status);
            let observer: loadgen::Observer = Arc::new(move |event| {
                let mut s = observer_status.lock().unwrap_or_else(|e| e.into_inner());
                match event {
                    Progress::Ceiling { .. } => {}
                    Progress::Started { strategy, item } => {
                        s.phase = format!("racing {strategy}");
                        s.strategy = Some(strategy.to_string());
                        s.item = Some(item.clone());
                        s.requests = 0;
                        s.purchased = 0;
                    }
                    Progress::Running {
                        requests,
                        purchased,
                        ..
                    } => {
                        s.requests = requests;
                        s.purchased = purchased;
                    }
                    Progress::Verifying { strategy } => s.phase = format!("checking {strategy}"),
                    Progress::Finished(result) => s.results.push(RaceLine {
                        strategy: result.strategy.to_string(),
                        item: result.item.clone(),
                        requests_per_s: result.requests_per_s,
                        ceiling_ratio: result.ceiling_ratio,
                        p99_ms: result.latency.p99_ms,
                        oversold: result.oversold,
                        undersold: result.undersold,
                        linearizable: result.history.linearizable,
                        violation: result
                            .history
                            .counterexample
                            .as_ref()
                            .map(|c| format!("{}: {}", c.kind, c.detail)),
                        refused_with_stock: result.history.refused_with_stock,
                        phantom_sold_out: result.history.phantom_sold_out,
                        sold: result.sold,
                        returned: result.returned,
                    }),
                }
            });
            let outcome =
                tokio::time::timeout(bound, loadgen::race(&target, &plan, observer)).await;
            let mut s = status.lock().unwrap_or_else(|e| e.into_inner());
            s.running = false;
            s.strategy = None;
            match outcome {
                Ok(Ok(_)) => s.phase = "done".into(),
                Ok(Err(err)) => {
                    tracing::warn!(error = format!("{err:#}"), "race failed");
                    s.phase = "failed".into();
                    s.error = Some(format!("{err:#}"));
                }
                Err(_) => {
                    tracing::warn!(
                        bound_s = bound.as_secs(),
                        "race cancelled at its time bound"
                    );
                    s.phase = "timed out".into();
                    s.error = Some(format!(
                        "the race exceeded its bound of {} s",
                        bound.as_secs()
                    ));
                }
            }
        });
        *task = Some(handle.abort_handle());
        Ok(())
    }
}
