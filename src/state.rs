//! What handlers share: [`AppState`]. Built by [`crate::startup::App::build`].

use std::sync::Arc;
use std::time::Duration;

use crate::infra::redis_conn::RedisConn;
use tokio::sync::watch;

use crate::orders::db::Db;
use crate::orders::lease::IdMinter;
use crate::orders::persister::PersisterHandle;
use crate::sale::Sales;
use crate::sale::purchase::Purchases;
use crate::sale::stats::Stats;
use crate::strategy::{Registry, StrategyKind};

/// Who may call the admin endpoints.
#[derive(Debug, Clone)]
pub enum AdminPolicy {
    /// `Authorization: Bearer <token>` required.
    Token(Arc<str>),
    /// No token configured: allowed only while bound to loopback, where only
    /// this machine can reach the server.
    LoopbackOnly { bound_to_loopback: bool },
}

/// What handlers share, behind one `Arc`: axum clones the state for every
/// extractor of every request, so a clone must be one reference-count bump,
/// not a copy of each field (a profile showed those copies, Lua source text
/// included, in the purchase path).
#[derive(Clone)]
pub struct AppState(pub(crate) Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The fields of [`AppState`].
pub struct Shared {
    /// Multiplexed connection (reconnects by itself) for one-round-trip work.
    pub redis: RedisConn,
    pub db: Db,
    pub sales: Sales,
    /// Pay, cancel and expire reserved orders.
    pub lifecycle: crate::sale::lifecycle::Lifecycle,
    /// The purchase use-case.
    pub purchases: Arc<Purchases>,
    pub stats: Arc<Stats>,
    pub metrics: Arc<crate::sale::metrics::Metrics>,
    pub strategies: Arc<Registry>,
    pub default_strategy: StrategyKind,
    pub ids: Arc<IdMinter>,
    pub admin: AdminPolicy,
    /// `None` when this instance runs no persister (`PERSISTER=false`).
    pub persister: Option<PersisterHandle>,
    /// Upper bound on a request's time, and the grace period at shutdown.
    pub request_timeout: Duration,
    /// Time a connection has to send a whole request head (idle included).
    pub header_timeout: Duration,
    /// How long a response's write may make no progress before its
    /// connection is closed.
    pub write_timeout: Duration,
    /// Open connections served at once.
    pub max_connections: usize,
    /// Open connections served at once for one peer IP.
    pub max_connections_per_ip: usize,
    /// Live-feed streams open at once.
    pub live_streams: Arc<tokio::sync::Semaphore>,
    /// Set when shutdown starts, so endless responses (the SSE feed) end and
    /// graceful shutdown is not held open by a status page.
    pub closing: watch::Sender<bool>,
    /// The latest live snapshot (JSON), see [`crate::http::live_feed`].
    pub live: watch::Receiver<Arc<str>>,
    pub race: crate::lab::race::RaceControl,
    pub faults: crate::lab::fault_control::FaultControl,
    /// The status page's files.
    pub static_dir: std::path::PathBuf,
}
