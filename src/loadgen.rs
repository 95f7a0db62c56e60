//! The load generator: races strategies against a running seckill and reads
//! back the server's truths. Used by `seckill bench` and by the status page's
//! race control.
//!
//! Like wrk, each of `concurrency` workers holds one keep-alive HTTP/1.1
//! connection and sends its next request as soon as the last answered (a
//! closed loop), so the request rate is what the server sustains at that
//! concurrency. Latencies go into per-worker HDR histograms, merged at the end,
//! so recording costs no shared lock.
//!
//! Buyers: `users` distinct user ids, each buying until refused by the limit.
//! A buyer turned away with 503 `contention` is queued to try again, as a real
//! buyer would: demand stays at least the stock, so units left unsold while
//! buyers were refused show as `undersold`, not as an artefact of the load.
//!
//! Every figure is measured on the same machine as the server (and Redis):
//! the generator's own CPU use is part of the picture, so compare strategies by
//! their ratio to the HTTP ceiling (`/healthz`) measured in the same run.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde_json::Value;

use crate::strategy::StrategyKind;

/// Where the server is.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    /// `Host` header value.
    pub host: String,
    pub admin_token: Option<String>,
    /// The server's Redis, if reachable from here: enables the order-log check.
    pub redis_url: Option<String>,
}

impl Target {
    /// From `http://host:port` (plain HTTP only).
    pub async fn from_url(
        url: &str,
        admin_token: Option<String>,
        redis_url: Option<String>,
    ) -> anyhow::Result<Self> {
        let Some(rest) = url.strip_prefix("http://") else {
            bail!("--url must be http://host:port (no TLS): `{url}`");
        };
        let host = rest.trim_end_matches('/').to_owned();
        let addr = tokio::net::lookup_host(&host)
            .await
            .with_context(|| format!("cannot resolve `{host}`"))?
            .next()
            .with_context(|| format!("`{host}` resolves to no address"))?;
        Ok(Self {
            addr,
            host,
            admin_token,
            redis_url,
        })
    }
}

/// What to race.
#[derive(Debug, Clone, Serialize)]
pub struct RacePlan {
    pub strategies: Vec<StrategyKind>,
    pub stock: u64,
    pub per_user_limit: u64,
    /// Distinct buyers per strategy.
    pub users: u64,
    pub concurrency: usize,
    /// Upper bound per strategy; with `until_sold_out` the run usually ends
    /// earlier.
    #[serde(with = "millis")]
    pub duration: Duration,
    pub until_sold_out: bool,
    /// Buyers come back for more (picked at random) instead of each buying once.
    pub repeat_buyers: bool,
    /// How long to measure `/healthz`.
    #[serde(with = "millis")]
    pub ceiling_duration: Duration,
    /// Prefix of the fresh items, one per strategy.
    pub item_prefix: String,
}

mod millis {
    use std::time::Duration;
    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
}

/// Latency summary in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    fn of(histogram: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            p50_ms: ms(histogram.value_at_quantile(0.50)),
            p90_ms: ms(histogram.value_at_quantile(0.90)),
            p99_ms: ms(histogram.value_at_quantile(0.99)),
            max_ms: ms(histogram.max()),
        }
    }
}

/// Responses by meaning.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct StatusCounts {
    pub created_201: u64,
    pub sold_out_409: u64,
    pub limit_reached_409: u64,
    pub contention_503: u64,
    pub unavailable_503: u64,
    pub other: u64,
    /// Connection-level failures (no HTTP response).
    pub transport_errors: u64,
}

impl StatusCounts {
    fn add(&mut self, other: &StatusCounts) {
        self.created_201 += other.created_201;
        self.sold_out_409 += other.sold_out_409;
        self.limit_reached_409 += other.limit_reached_409;
        self.contention_503 += other.contention_503;
        self.unavailable_503 += other.unavailable_503;
        self.other += other.other;
        self.transport_errors += other.transport_errors;
    }

    pub fn total(&self) -> u64 {
        self.created_201
            + self.sold_out_409
            + self.limit_reached_409
            + self.contention_503
            + self.unavailable_503
            + self.other
            + self.transport_errors
    }
}

/// `/healthz` at the race's concurrency: the HTTP ceiling.
#[derive(Debug, Clone, Serialize)]
pub struct Ceiling {
    pub requests: u64,
    pub elapsed_s: f64,
    pub requests_per_s: f64,
    pub latency: Latency,
}

/// One strategy's run.
#[derive(Debug, Clone, Serialize)]
pub struct StrategyResult {
    pub strategy: StrategyKind,
    pub item: String,
    pub elapsed_s: f64,
    pub requests: u64,
    pub requests_per_s: f64,
    pub successes_per_s: f64,
    /// requests/s as a fraction of the `/healthz` requests/s of the same run.
    pub ceiling_ratio: f64,
    pub latency: Latency,
    pub statuses: StatusCounts,
    /// Server-side retries (optimistic aborts, lock waits) per success.
    pub retries_per_success: f64,
    /// From the start to the first `sold_out`; `None` if never sold out.
    pub time_to_sell_out_s: Option<f64>,
    pub sold: u64,
    pub oversold: u64,
    pub drift: i64,
    pub undersold: u64,
    pub persisted: u64,
    /// 201 order ids missing from the item's order log (`None`: Redis not reachable from here).
    pub lost_in_log: Option<u64>,
    /// 201 order ids missing from SQL once the persister caught up (`None`: it did not in time).
    pub lost_in_sql: Option<u64>,
    /// The server's own counters for this strategy on this item.
    pub server_counters: Value,
}

/// A whole race.
#[derive(Debug, Clone, Serialize)]
pub struct RaceReport {
    pub plan: RacePlan,
    pub ceiling: Ceiling,
    pub results: Vec<StrategyResult>,
}

/// What a race says while it runs.
#[derive(Debug, Clone)]
pub enum Progress {
    Ceiling {
        requests: u64,
        elapsed_s: f64,
    },
    Started {
        strategy: StrategyKind,
        item: String,
    },
    Running {
        strategy: StrategyKind,
        requests: u64,
        purchased: u64,
        elapsed_s: f64,
    },
    Verifying {
        strategy: StrategyKind,
    },
    Finished(Box<StrategyResult>),
}

/// Receives progress; must be cheap (called from the ticker, 5 times a second).
pub type Observer = Arc<dyn Fn(Progress) + Send + Sync>;

/// How often progress is reported.
const TICK: Duration = Duration::from_millis(200);

/// Spawned tasks that end with the future owning them: a race cancelled
/// mid-run (its task aborted) must not leave its buyers sending.
struct Owned<T>(Vec<tokio::task::JoinHandle<T>>);

impl<T> Owned<T> {
    async fn join_all(mut self) -> Result<Vec<T>, tokio::task::JoinError> {
        let mut outcomes = Vec::with_capacity(self.0.len());
        for handle in &mut self.0 {
            outcomes.push(handle.await?);
        }
        Ok(outcomes)
    }
}

impl<T> Drop for Owned<T> {
    fn drop(&mut self) {
        for handle in &self.0 {
            handle.abort();
        }
    }
}

/// Measures the ceiling, then races each strategy on its own fresh item.
pub async fn race(
    target: &Target,
    plan: &RacePlan,
    observe: Observer,
) -> anyhow::Result<RaceReport> {
    let ceiling =
        measure_ceiling(target, plan.concurrency, plan.ceiling_duration, &observe).await?;
    let mut results = Vec::new();
    for &strategy in &plan.strategies {
        let result = race_one(target, plan, strategy, ceiling.requests_per_s, &observe).await?;
        observe(Progress::Finished(Box::new(result.clone())));
        results.push(result);
    }
    Ok(RaceReport {
        plan: plan.clone(),
        ceiling,
        results,
    })
}

/// `/healthz` for `duration` at `concurrency`.
pub async fn measure_ceiling(
    target: &Target,
    concurrency: usize,
    duration: Duration,
    observe: &Observer,
) -> anyhow::Result<Ceiling> {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut workers = Owned(Vec::new());
    for _ in 0..concurrency {
        let (target, stop, count) = (target.clone(), Arc::clone(&stop), Arc::clone(&count));
        workers.0.push(tokio::spawn(async move {
            let mut conn = Conn::default();
            let mut histogram = new_histogram();
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                if conn
                    .send(&target, Method::GET, "/healthz", Bytes::new())
                    .await
                    .is_ok()
                {
                    record(&mut histogram, sent);
                    count.fetch_add(1, Ordering::Relaxed);
                } else {
                    // The server is gone or refusing: do not spin on reconnects.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            histogram
        }));
    }
    while start.elapsed() < duration {
        tokio::time::sleep(TICK.min(duration.saturating_sub(start.elapsed()))).await;
        observe(Progress::Ceiling {
            requests: count.load(Ordering::Relaxed),
            elapsed_s: start.elapsed().as_secs_f64(),
        });
    }
    stop.store(true, Ordering::Relaxed);
    let mut histogram = new_histogram();
    for worker in workers.join_all().await? {
        histogram.add(worker).context("merging histograms")?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let requests = histogram.len();
    if requests == 0 {
        bail!(
            "no /healthz request succeeded: is the server at {} up?",
            target.host
        );
    }
    Ok(Ceiling {
        requests,
        elapsed_s: elapsed,
        requests_per_s: requests as f64 / elapsed,
        latency: Latency::of(&histogram),
    })
}

/// Shared between the workers of one strategy's run.
struct RunShared {
    target: Target,
    item: String,
    strategy: StrategyKind,
    plan: RacePlan,
    stop: AtomicBool,
    next_user: AtomicU64,
    /// Buyers refused with `contention`, to try again.
    retry: Mutex<VecDeque<u64>>,
    requests: AtomicU64,
    purchased: AtomicU64,
    start: Instant,
    /// Microseconds from start to the first `sold_out`, 0 while none.
    sold_out_at_us: AtomicU64,
}

impl RunShared {
    /// The next buyer, or `None` when every buyer has bought its fill.
    fn next_buyer(&self) -> Option<u64> {
        if let Some(user) = self
            .retry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front()
        {
            return Some(user);
        }
        if self.plan.repeat_buyers {
            return Some(rand::random_range(0..self.plan.users.max(1)));
        }
        let n = self.next_user.fetch_add(1, Ordering::Relaxed);
        (n < self.plan.users).then_some(n)
    }
}

struct WorkerOutcome {
    histogram: Histogram<u64>,
    statuses: StatusCounts,
    order_ids: Vec<String>,
}

async fn race_one(
    target: &Target,
    plan: &RacePlan,
    strategy: StrategyKind,
    ceiling_rps: f64,
    observe: &Observer,
) -> anyhow::Result<StrategyResult> {
    let item = format!(
        "{}-{strategy}-{}",
        plan.item_prefix,
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    create_item(target, &item, plan.stock, plan.per_user_limit, strategy).await?;
    observe(Progress::Started {
        strategy,
        item: item.clone(),
    });

    let shared = Arc::new(RunShared {
        target: target.clone(),
        item: item.clone(),
        strategy,
        plan: plan.clone(),
        stop: AtomicBool::new(false),
        next_user: AtomicU64::new(0),
        retry: Mutex::new(VecDeque::new()),
        requests: AtomicU64::new(0),
        purchased: AtomicU64::new(0),
        start: Instant::now(),
        sold_out_at_us: AtomicU64::new(0),
    });
    let workers = Owned(
        (0..plan.concurrency)
            .map(|_| tokio::spawn(buy_loop(Arc::clone(&shared))))
            .collect(),
    );
    let ticker = {
        let (shared, observe) = (Arc::clone(&shared), Arc::clone(observe));
        Owned(vec![tokio::spawn(async move {
            loop {
                tokio::time::sleep(TICK).await;
                observe(Progress::Running {
                    strategy,
                    requests: shared.requests.load(Ordering::Relaxed),
                    purchased: shared.purchased.load(Ordering::Relaxed),
                    elapsed_s: shared.start.elapsed().as_secs_f64(),
                });
                if shared.start.elapsed() >= shared.plan.duration {
                    shared.stop.store(true, Ordering::Relaxed);
                }
            }
        })])
    };

    let mut histogram = new_histogram();
    let mut statuses = StatusCounts::default();
    let mut order_ids = Vec::new();
    for outcome in workers.join_all().await? {
        histogram
            .add(outcome.histogram)
            .context("merging histograms")?;
        statuses.add(&outcome.statuses);
        order_ids.extend(outcome.order_ids);
    }
    drop(ticker);
    let elapsed = shared.start.elapsed().as_secs_f64();
    observe(Progress::Verifying { strategy });

    let truths = read_truths(target, &item, strategy, &order_ids).await?;
    let requests = statuses.total();
    let rps = requests as f64 / elapsed;
    let sold_out_at = shared.sold_out_at_us.load(Ordering::Relaxed);
    let retries = truths.counters["retries"].as_u64().unwrap_or(0);
    Ok(StrategyResult {
        strategy,
        item,
        elapsed_s: elapsed,
        requests,
        requests_per_s: rps,
        successes_per_s: statuses.created_201 as f64 / elapsed,
        ceiling_ratio: if ceiling_rps > 0.0 {
            rps / ceiling_rps
        } else {
            0.0
        },
        latency: Latency::of(&histogram),
        statuses,
        retries_per_success: retries as f64 / statuses.created_201.max(1) as f64,
        time_to_sell_out_s: (sold_out_at > 0).then(|| sold_out_at as f64 / 1e6),
        sold: truths.view["sold"].as_u64().unwrap_or(0),
        oversold: truths.view["oversold"].as_u64().unwrap_or(0),
        drift: truths.view["drift"].as_i64().unwrap_or(0),
        undersold: truths.view["undersold"].as_u64().unwrap_or(0),
        persisted: truths.view["persisted"].as_u64().unwrap_or(0),
        lost_in_log: truths.lost_in_log,
        lost_in_sql: truths.lost_in_sql,
        server_counters: truths.counters,
    })
}

async fn buy_loop(shared: Arc<RunShared>) -> WorkerOutcome {
    let mut conn = Conn::default();
    let mut outcome = WorkerOutcome {
        histogram: new_histogram(),
        statuses: StatusCounts::default(),
        order_ids: Vec::new(),
    };
    while !shared.stop.load(Ordering::Relaxed) {
        let Some(user) = shared.next_buyer() else {
            break;
        };
        let path = format!(
            "/api/items/{}/purchase?user_id=b{user}&strategy={}",
            shared.item, shared.strategy
        );
        let sent = Instant::now();
        let response = conn
            .send(&shared.target, Method::POST, &path, Bytes::new())
            .await;
        shared.requests.fetch_add(1, Ordering::Relaxed);
        let (status, body) = match response {
            Ok(response) => response,
            Err(_) => {
                outcome.statuses.transport_errors += 1;
                // The server is gone or refusing: do not spin on reconnects.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        record(&mut outcome.histogram, sent);
        let says = |code: &str| contains(&body, code.as_bytes());
        match status {
            StatusCode::CREATED => {
                outcome.statuses.created_201 += 1;
                shared.purchased.fetch_add(1, Ordering::Relaxed);
                if let Some(id) = order_id(&body) {
                    outcome.order_ids.push(id);
                }
                if shared.plan.per_user_limit > 1 {
                    shared
                        .retry
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push_back(user);
                }
            }
            StatusCode::CONFLICT if says("\"sold_out\"") => {
                outcome.statuses.sold_out_409 += 1;
                let at = shared.start.elapsed().as_micros() as u64;
                let _ = shared.sold_out_at_us.compare_exchange(
                    0,
                    at.max(1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
                if shared.plan.until_sold_out {
                    shared.stop.store(true, Ordering::Relaxed);
                }
            }
            StatusCode::CONFLICT if says("\"limit_reached\"") => {
                outcome.statuses.limit_reached_409 += 1
            }
            StatusCode::SERVICE_UNAVAILABLE if says("\"contention\"") => {
                outcome.statuses.contention_503 += 1;
                shared
                    .retry
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push_back(user);
            }
            StatusCode::SERVICE_UNAVAILABLE => outcome.statuses.unavailable_503 += 1,
            _ => outcome.statuses.other += 1,
        }
    }
    outcome
}

struct Truths {
    view: Value,
    counters: Value,
    lost_in_log: Option<u64>,
    lost_in_sql: Option<u64>,
}

/// How long to wait for the persister to catch up before calling SQL short.
const PERSIST_WAIT: Duration = Duration::from_secs(15);

async fn read_truths(
    target: &Target,
    item: &str,
    strategy: StrategyKind,
    order_ids: &[String],
) -> anyhow::Result<Truths> {
    let answered: HashSet<&str> = order_ids.iter().map(String::as_str).collect();
    let mut conn = Conn::default();
    // Without a persister (`PERSISTER=false`: 404 here) SQL never catches up
    // for the Redis strategies, so there is nothing to wait for.
    let persisting = probe(target, "/api/persister").await;
    let deadline = Instant::now()
        + if persisting {
            PERSIST_WAIT
        } else {
            Duration::ZERO
        };
    let view = loop {
        let view = get_json(&mut conn, target, &format!("/api/items/{item}")).await?;
        if view["lag"] == 0 || Instant::now() >= deadline {
            break view;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let counters = view["strategies"][strategy.as_str()].clone();

    let lost_in_sql = if view["lag"] == 0 {
        let mut in_sql = HashSet::new();
        let mut after: Option<String> = None;
        loop {
            let mut path = format!("/api/orders?item={item}&limit=1000");
            if let Some(cursor) = &after {
                path.push_str(&format!("&after={cursor}"));
            }
            let page = get_json(&mut conn, target, &path).await?;
            for order in page["orders"].as_array().into_iter().flatten() {
                if let Some(id) = order["order_id"].as_str() {
                    in_sql.insert(id.to_owned());
                }
            }
            match page["next"].as_str() {
                Some(next) => after = Some(next.to_owned()),
                None => break,
            }
        }
        Some(answered.iter().filter(|id| !in_sql.contains(**id)).count() as u64)
    } else {
        None
    };

    let lost_in_log = match &target.redis_url {
        Some(url) => Some(lost_in_order_log(url, item, &answered).await?),
        None => None,
    };
    Ok(Truths {
        view,
        counters,
        lost_in_log,
        lost_in_sql,
    })
}

/// 201 ids absent from the item's order log, read straight from Redis.
async fn lost_in_order_log(
    redis_url: &str,
    item: &str,
    answered: &HashSet<&str>,
) -> anyhow::Result<u64> {
    let mut redis = redis::Client::open(redis_url)?
        .get_multiplexed_async_connection()
        .await
        .context("cannot reach the server's Redis for the order-log check")?;
    let key = crate::keys::ItemKeys::new(
        &crate::domain::ItemId::parse(item).map_err(anyhow::Error::msg)?,
    )
    .orders;
    let mut logged = HashSet::new();
    let mut start = "-".to_owned();
    loop {
        let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg(&key)
            .arg(&start)
            .arg("+")
            .arg("COUNT")
            .arg(10_000)
            .query_async(&mut redis)
            .await?;
        let Some((last, _)) = entries.last() else {
            break;
        };
        start = format!("({last}");
        for (_, fields) in &entries {
            if let Some(id) = crate::order_log::order_id_of(fields) {
                logged.insert(id.to_owned());
            }
        }
    }
    Ok(answered.iter().filter(|id| !logged.contains(**id)).count() as u64)
}

/// True when `path` answers 200.
pub async fn probe(target: &Target, path: &str) -> bool {
    matches!(
        Conn::default()
            .send(target, Method::GET, path, Bytes::new())
            .await,
        Ok((StatusCode::OK, _))
    )
}

/// Creates (or restocks) `item` through the admin API, its sale bound to
/// `strategy`.
pub async fn create_item(
    target: &Target,
    item: &str,
    stock: u64,
    limit: u64,
    strategy: StrategyKind,
) -> anyhow::Result<()> {
    let body = serde_json::json!({"stock": stock, "per_user_limit": limit, "strategy": strategy})
        .to_string();
    let mut conn = Conn::default();
    let (status, body) = conn
        .send(
            target,
            Method::PUT,
            &format!("/api/items/{item}"),
            Bytes::from(body),
        )
        .await?;
    if !status.is_success() {
        bail!(
            "creating item {item} failed: {status} {}",
            String::from_utf8_lossy(&body)
        );
    }
    Ok(())
}

async fn get_json(conn: &mut Conn, target: &Target, path: &str) -> anyhow::Result<Value> {
    let (status, body) = conn.send(target, Method::GET, path, Bytes::new()).await?;
    if !status.is_success() {
        bail!("GET {path}: {status} {}", String::from_utf8_lossy(&body));
    }
    serde_json::from_slice(&body).with_context(|| format!("GET {path}: not JSON"))
}

/// One keep-alive HTTP/1.1 connection, reopened after a failure.
#[derive(Default)]
struct Conn {
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Conn {
    async fn send(
        &mut self,
        target: &Target,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let result = self.try_send(target, method, path, body).await;
        if result.is_err() {
            self.sender = None;
        }
        result
    }

    async fn try_send(
        &mut self,
        target: &Target,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let sender = match &mut self.sender {
            Some(sender) if !sender.is_closed() => sender,
            _ => {
                let stream = tokio::net::TcpStream::connect(target.addr).await?;
                stream.set_nodelay(true)?;
                let (sender, connection) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
                tokio::spawn(connection);
                self.sender.insert(sender)
            }
        };
        sender.ready().await?;
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &target.host);
        if !body.is_empty() {
            request = request.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        if let Some(token) = &target.admin_token {
            request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let response = sender.send_request(request.body(Full::new(body))?).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}

/// 1 µs to 60 s at 3 significant digits.
fn new_histogram() -> Histogram<u64> {
    // The bounds are constants that satisfy the constructor's rules
    // (low ≥ 1, high ≥ 2·low, sigfig ≤ 5), so this cannot fail.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

fn record(histogram: &mut Histogram<u64>, sent: Instant) {
    histogram.saturating_record(sent.elapsed().as_micros() as u64);
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn order_id(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Created {
        order_id: String,
    }
    serde_json::from_slice::<Created>(body)
        .ok()
        .map(|c| c.order_id)
}
