//! The status page's race control: runs the load generator ([`crate::loadgen`])
//! against this very server, one race at a time, and keeps its progress for
//! the live feed.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

use serde::Serialize;

use crate::loadgen::{self, Progress, RacePlan, Target};

/// What the page shows about the current or last race.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RaceStatus {
    pub running: bool,
    pub phase: String,
    pub strategy: Option<String>,
    pub requests: u64,
    pub purchased: u64,
    pub stock: u64,
    /// One line per finished strategy.
    pub results: Vec<RaceLine>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RaceLine {
    pub strategy: String,
    pub item: String,
    pub requests_per_s: f64,
    pub ceiling_ratio: f64,
    pub p99_ms: f64,
    pub oversold: u64,
    pub undersold: u64,
}

/// Why a race could not start.
#[derive(Debug, thiserror::Error)]
pub enum RaceError {
    #[error("a race is already running")]
    AlreadyRunning,
    #[error("the server's own address is not known yet")]
    NoAddress,
}

#[derive(Default)]
pub struct RaceControl {
    status: Arc<Mutex<RaceStatus>>,
    address: OnceLock<SocketAddr>,
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
        tokio::spawn(async move {
            let target = Target {
                addr: address,
                host: address.to_string(),
                admin_token,
                redis_url: None,
            };
            let observer_status = Arc::clone(&status);
            let observer: loadgen::Observer = Arc::new(move |event| {
                let mut s = observer_status.lock().unwrap_or_else(|e| e.into_inner());
                match event {
                    Progress::Ceiling { .. } => {}
                    Progress::Started { strategy, .. } => {
                        s.phase = format!("racing {strategy}");
                        s.strategy = Some(strategy.to_string());
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
                    }),
                }
            });
            let outcome = loadgen::race(&target, &plan, observer).await;
            let mut s = status.lock().unwrap_or_else(|e| e.into_inner());
            s.running = false;
            s.strategy = None;
            match outcome {
                Ok(_) => s.phase = "done".into(),
                Err(err) => {
                    tracing::warn!(error = format!("{err:#}"), "race failed");
                    s.phase = "failed".into();
                    s.error = Some(format!("{err:#}"));
                }
            }
        });
        Ok(())
    }
}
