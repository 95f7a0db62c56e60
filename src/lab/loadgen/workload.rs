//! The workload: the `/healthz` ceiling run, and per strategy a fresh item
//! raced by `concurrency` closed-loop buyers.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use hdrhistogram::Histogram;
use hyper::{Method, StatusCode};

use super::client::{Conn, PurchaseReply, create_item};
use super::history::{self, Call, CallOutcome, PayAnswer, PayCall, Spec};
use super::verify::{Truths, read_truths};
use super::{
    Ceiling, LATE_AFTER, Latency, Observer, Owned, Progress, RacePlan, RaceReport, Rate,
    StatusCounts, StrategyResult, TICK, Target, buyer_name, new_histogram, record,
};
use crate::outcome::Code;
use crate::strategy::StrategyKind;

/// Races each strategy on its own fresh item, `plan.runs` times over, the
/// ceiling measured afresh before every run: the machine's speed drifts
/// between runs, so each run's ratio is to its own ceiling.
pub async fn race(
    target: &Target,
    plan: &RacePlan,
    observe: Observer,
) -> anyhow::Result<RaceReport> {
    let mut results = Vec::new();
    for run in 1..=plan.runs.max(1) {
        for &strategy in &plan.strategies {
            let ceiling =
                measure_ceiling(target, plan.concurrency, plan.ceiling_duration, &observe).await?;
            let targets = std::slice::from_ref(target);
            let (mut result, _, ()) =
                run_sale(targets, plan, strategy, &ceiling, &observe, |_| async {}).await?;
            result.run = run;
            observe(Progress::Finished(Box::new(result.clone())));
            results.push(result);
        }
    }
    Ok(RaceReport::new(plan.clone(), results))
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
                    record(&mut histogram, sent, Instant::now());
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

/// After a windowed sale's load, beyond its window: time for the last
/// deadlines' sweep (`EXPIRY_INTERVAL_MS`, 100 ms by default) and its moves.
const EXPIRY_GRACE: Duration = Duration::from_millis(500);

/// The most a windowed sale waits after its load beyond its window: the
/// grace, then SQL's catching up.
pub const LIFECYCLE_WAIT: Duration = Duration::from_millis(
    EXPIRY_GRACE.as_millis() as u64 + super::verify::PERSIST_WAIT.as_millis() as u64,
);

/// Now, in µs since the Unix epoch.
fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Shared between the workers of one strategy's run.
struct RunShared {
    /// Worker `n` sends to `targets[n % len]`.
    targets: Vec<Target>,
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
    /// Numbers the requests of the history.
    next_call: AtomicU64,
    /// Buyers taken and not yet answered: one refused for contention (or
    /// with a limit above one) comes back, so the run is not over while any
    /// is out.
    in_flight: AtomicU64,
    /// Requests sent and not yet answered, per target.
    load: Arc<Load>,
}

/// What a sale's load is doing right now, for whatever runs beside it (the
/// fault lab picks an instance with purchases in flight to stop).
#[derive(Debug)]
pub struct Load {
    /// When the load started: the history's times count from here.
    pub start: Instant,
    /// The same instant on the wall clock (µs since the Unix epoch), to
    /// place the server's own times (an order's return) in the history.
    pub start_unix_us: u64,
    /// The sale's item.
    pub item: String,
    in_flight: Vec<AtomicU64>,
}

impl Load {
    /// Requests sent to `targets[index]` and not yet answered.
    pub fn in_flight(&self, index: usize) -> u64 {
        self.in_flight
            .get(index)
            .map_or(0, |n| n.load(Ordering::Relaxed))
    }
}

impl RunShared {
    /// The next buyer, counted in flight until [`InFlight`] drops; `None`
    /// when no buyer is left to try right now.
    fn next_buyer(&self) -> Option<(u64, InFlight<'_>)> {
        let user = self.pick_buyer()?;
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Some((user, InFlight(&self.in_flight)))
    }

    fn pick_buyer(&self) -> Option<u64> {
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

/// A buyer taken by a worker, until its answer is handled.
struct InFlight<'a>(&'a AtomicU64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

struct WorkerOutcome {
    /// From the send to the answer.
    histogram: Histogram<u64>,
    /// From the scheduled start to the answer (or, for a request the run
    /// ended before sending, to the end).
    corrected: Histogram<u64>,
    late: u64,
    /// Open loop: scheduled, taken from the queue, never sent (the run ended).
    unsent: u64,
    statuses: StatusCounts,
    /// Every request this worker made, for the history check.
    calls: Vec<Call>,
    /// Every pay it sent (sales with a payment window).
    pays: Vec<PayCall>,
}

impl WorkerOutcome {
    fn new() -> Self {
        Self {
            histogram: new_histogram(),
            corrected: new_histogram(),
            late: 0,
            unsent: 0,
            statuses: StatusCounts::default(),
            calls: Vec::new(),
            pays: Vec::new(),
        }
    }
}

/// Whether a worker goes on after a request.
enum Next {
    Continue,
    Stop,
}

/// Each connection sends its next request when the last is answered.
async fn closed_loop(shared: Arc<RunShared>, via: usize) -> WorkerOutcome {
    let mut conn = Conn::default();
    let mut outcome = WorkerOutcome::new();
    while !shared.stop.load(Ordering::Relaxed) {
        if let Next::Stop = buy(&shared, via, &mut conn, &mut outcome, Instant::now()).await {
            break;
        }
    }
    outcome
}

/// Takes scheduled starts from the dispatcher, whatever became of the last
/// request: a slow answer delays the next send on this connection, and the
/// corrected latency counts that wait.
async fn open_loop(
    shared: Arc<RunShared>,
    via: usize,
    queue: Arc<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<Instant>>>,
) -> WorkerOutcome {
    let mut conn = Conn::default();
    let mut outcome = WorkerOutcome::new();
    loop {
        let Some(intended) = queue.lock().await.recv().await else {
            break;
        };
        if shared.stop.load(Ordering::Relaxed) {
            // Due, never sent: it waited until now, at least.
            outcome.unsent += 1;
            record(&mut outcome.corrected, intended, Instant::now());
            break;
        }
        if let Next::Stop = buy(&shared, via, &mut conn, &mut outcome, intended).await {
            break;
        }
    }
    outcome
}

/// Queues each request at its scheduled start, until the run's duration or
/// its stop. Returns how many it scheduled, and how many of those it
/// dropped because a second of the schedule was already queued.
async fn dispatch(
    shared: Arc<RunShared>,
    rate: Rate,
    jobs: tokio::sync::mpsc::Sender<Instant>,
) -> (u64, u64) {
    use tokio::sync::mpsc::error::TrySendError;
    let (mut scheduled, mut dropped) = (0, 0);
    for n in 0.. {
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        let Some(due) = rate.due(n, shared.plan.duration) else {
            break;
        };
        let at = shared.start + due;
        if at > Instant::now() {
            tokio::time::sleep_until(at.into()).await;
        } else if n % 64 == 0 {
            // Behind the schedule: catching up must not hold a runtime
            // thread the workers need.
            tokio::task::yield_now().await;
        }
        scheduled += 1;
        match jobs.try_send(at) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => dropped += 1,
            Err(TrySendError::Closed(_)) => break,
        }
    }
    (scheduled, dropped)
}

/// One strategy's run on a fresh item, its workers spread over `targets`
/// (the truths are read through the first), with `beside` run from the
/// load's start alongside it: the fault lab's faults. The run's truths are
/// read once both are over. Returns the result, every request (for the
/// fault lab's phases) and what `beside` returned.
pub async fn run_sale<F, Fut, T>(
    targets: &[Target],
    plan: &RacePlan,
    strategy: StrategyKind,
    ceiling: &Ceiling,
    observe: &Observer,
    beside: F,
) -> anyhow::Result<(StrategyResult, Vec<Call>, T)>
where
    F: FnOnce(Arc<Load>) -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let Some(target) = targets.first() else {
        bail!("a sale needs a server to send its load to");
    };
    let ceiling_rps = ceiling.requests_per_s;
    let item = format!(
        "{}-{strategy}-{}",
        plan.item_prefix,
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    create_item(
        target,
        &item,
        plan.stock,
        plan.per_user_limit,
        strategy,
        plan.payments.map(|p| p.window),
    )
    .await?;
    let cpu_at_start = target.pids.sample();
    observe(Progress::Started {
        strategy,
        item: item.clone(),
    });

    let load = Arc::new(Load {
        start: Instant::now(),
        start_unix_us: unix_us(),
        item: item.clone(),
        in_flight: targets.iter().map(|_| AtomicU64::new(0)).collect(),
    });
    let shared = Arc::new(RunShared {
        targets: targets.to_vec(),
        item: item.clone(),
        strategy,
        plan: plan.clone(),
        stop: AtomicBool::new(false),
        next_user: AtomicU64::new(0),
        retry: Mutex::new(VecDeque::new()),
        requests: AtomicU64::new(0),
        purchased: AtomicU64::new(0),
        start: load.start,
        sold_out_at_us: AtomicU64::new(0),
        next_call: AtomicU64::new(0),
        in_flight: AtomicU64::new(0),
        load: Arc::clone(&load),
    });
    // The open loop's schedule, feeding the workers; it counts what it
    // could not queue. What is still queued when the run ends was never sent.
    let mut leftovers = None;
    let (workers, dispatcher) = match plan.rate {
        None => (
            Owned(
                (0..plan.concurrency)
                    .map(|n| tokio::spawn(closed_loop(Arc::clone(&shared), n % targets.len())))
                    .collect(),
            ),
            None,
        ),
        Some(rate) => {
            // At most a second of the schedule waits for a connection.
            let backlog =
                (rate.per_s.max(rate.ramp_from_per_s.unwrap_or(0.0)) as usize).clamp(1, 1_000_000);
            let (jobs, queue) = tokio::sync::mpsc::channel(backlog);
            let queue = Arc::new(tokio::sync::Mutex::new(queue));
            leftovers = Some(Arc::clone(&queue));
            let workers = Owned(
                (0..plan.concurrency)
                    .map(|n| {
                        tokio::spawn(open_loop(
                            Arc::clone(&shared),
                            n % targets.len(),
                            Arc::clone(&queue),
                        ))
                    })
                    .collect(),
            );
            let dispatcher = Owned(vec![tokio::spawn(dispatch(
                Arc::clone(&shared),
                rate,
                jobs,
            ))]);
            (workers, Some(dispatcher))
        }
    };
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

    let load_ends = async {
        let scheduled = match dispatcher {
            Some(dispatcher) => Some(dispatcher.join_all().await),
            None => None,
        };
        (scheduled, workers.join_all().await)
    };
    let ((scheduled, outcomes), besides) = tokio::join!(load_ends, beside(Arc::clone(&load)));
    let (scheduled, mut dropped) = match scheduled.transpose()? {
        Some(done) => done
            .into_iter()
            .fold((0, 0), |(s, d), (s2, d2)| (s + s2, d + d2)),
        None => (0, 0),
    };
    let mut histogram = new_histogram();
    let mut corrected = new_histogram();
    let mut statuses = StatusCounts::default();
    let mut calls = Vec::new();
    let mut pays = Vec::new();
    let mut late = 0;
    for outcome in outcomes? {
        pays.extend(outcome.pays);
        histogram
            .add(outcome.histogram)
            .context("merging histograms")?;
        corrected
            .add(outcome.corrected)
            .context("merging histograms")?;
        statuses.add(&outcome.statuses);
        calls.extend(outcome.calls);
        late += outcome.late;
        dropped += outcome.unsent;
    }
    if let Some(queue) = leftovers {
        let ended = Instant::now();
        let mut queue = queue.lock().await;
        while let Ok(intended) = queue.try_recv() {
            dropped += 1;
            record(&mut corrected, intended, ended);
        }
    }
    drop(ticker);
    let elapsed = shared.start.elapsed().as_secs_f64();
    observe(Progress::Verifying { strategy });

    if let Some(payments) = plan.payments {
        // Every order bought ends: paid, or expired once its deadline has
        // passed and a sweep (every EXPIRY_INTERVAL_MS) took it.
        tokio::time::sleep(payments.window + EXPIRY_GRACE).await;
    }
    let truths = read_truths(target, &item, strategy, plan.payments.is_some()).await?;
    let mut stored = truths.stored;
    if let (Some(lifecycle), Some(payments)) = (stored.lifecycle.as_mut(), plan.payments) {
        lifecycle.pays = pays;
        lifecycle.start_unix_us = load.start_unix_us;
        lifecycle.window_ms = payments.window.as_millis() as u64;
    }
    let truths = Truths { stored, ..truths };
    let history = history::check(
        &calls,
        Spec {
            stock: plan.stock,
            per_user_limit: plan.per_user_limit,
        },
        &truths.stored,
    );
    let requests = statuses.total();
    let rps = requests as f64 / elapsed;
    let sold_out_at = shared.sold_out_at_us.load(Ordering::Relaxed);
    let retries = truths.counters.map_or(0, |c| c.retries);
    let (server_cpu, redis_cpu) = truths.cpu_when_settled.map_or((None, None), |settled| {
        cpu_at_start.per_request_us(&settled, requests)
    });
    let result = StrategyResult {
        strategy,
        run: 1,
        ceiling: ceiling.clone(),
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
        latency_corrected: plan.rate.map(|_| Latency::of(&corrected)),
        late,
        scheduled: plan.rate.map(|_| scheduled),
        dropped,
        statuses,
        retries_per_success: retries as f64 / statuses.created_201.max(1) as f64,
        time_to_sell_out_s: (sold_out_at > 0).then(|| sold_out_at as f64 / 1e6),
        sold: truths.view.as_ref().map_or(0, |v| v.sold),
        returned: truths.view.as_ref().map_or(0, |v| v.returned),
        oversold: truths.view.as_ref().map_or(0, |v| v.oversold),
        drift: truths.view.as_ref().map_or(0, |v| v.drift),
        undersold: truths.view.as_ref().map_or(0, |v| v.undersold),
        persisted: truths.view.as_ref().map_or(0, |v| v.persisted),
        vanished: truths.view.is_none(),
        lost_in_log: history.lost_in_log,
        lost_in_sql: history.lost_in_sql,
        history,
        server_counters: truths.counters,
        server_cpu_us_per_request: server_cpu,
        redis_cpu_us_per_request: redis_cpu,
        settle_s: truths.settle_s,
    };
    Ok((result, calls, besides))
}

/// One purchase by the next buyer, scheduled for `intended` (the send, in
/// the closed loop): recorded in the worker's histograms, counts and history.
async fn buy(
    shared: &RunShared,
    via: usize,
    conn: &mut Conn,
    outcome: &mut WorkerOutcome,
    intended: Instant,
) -> Next {
    let (user, _in_flight) = loop {
        if let Some(taken) = shared.next_buyer() {
            break taken;
        }
        if shared.in_flight.load(Ordering::Relaxed) == 0 {
            // Every buyer has bought its fill: the run is over for everyone.
            shared.stop.store(true, Ordering::Relaxed);
            return Next::Stop;
        }
        if shared.stop.load(Ordering::Relaxed) {
            return Next::Stop;
        }
        // A buyer out may come back refused: wait for its answer.
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let sent = Instant::now();
    if sent.saturating_duration_since(intended) > LATE_AFTER {
        outcome.late += 1;
    }
    let in_flight = &shared.load.in_flight[via];
    in_flight.fetch_add(1, Ordering::Relaxed);
    let reply = conn
        .purchase(
            &shared.targets[via],
            &shared.item,
            &buyer_name(user),
            shared.strategy,
        )
        .await;
    in_flight.fetch_sub(1, Ordering::Relaxed);
    let done = Instant::now();
    shared.requests.fetch_add(1, Ordering::Relaxed);
    let since_start = |at: Instant| at.saturating_duration_since(shared.start).as_micros() as u64;
    let mut call = Call {
        id: shared.next_call.fetch_add(1, Ordering::Relaxed),
        user,
        via: via as u16,
        intended_us: since_start(intended),
        sent_us: since_start(sent),
        done_us: since_start(done),
        outcome: CallOutcome::Transport,
    };
    let reply = match reply {
        Ok(reply) => reply,
        Err(_) => {
            outcome.calls.push(call);
            outcome.statuses.transport_errors += 1;
            // The server is gone or refusing: do not spin on reconnects.
            tokio::time::sleep(Duration::from_millis(10)).await;
            return Next::Continue;
        }
    };
    record(&mut outcome.histogram, sent, done);
    record(&mut outcome.corrected, intended, done);
    let (status, code) = match reply {
        PurchaseReply::Created(order_id) => {
            call.outcome = CallOutcome::Created(order_id);
            outcome.calls.push(call);
            outcome.statuses.created_201 += 1;
            shared.purchased.fetch_add(1, Ordering::Relaxed);
            if let Some(payments) = shared.plan.payments
                && payments.pays(order_id)
            {
                let sent = Instant::now();
                let answer = conn
                    .pay(
                        &shared.targets[via],
                        &shared.item,
                        &buyer_name(user),
                        order_id,
                    )
                    .await
                    .unwrap_or(PayAnswer::Other(0));
                outcome.pays.push(PayCall {
                    order: order_id,
                    user,
                    sent_us: since_start(sent),
                    done_us: since_start(Instant::now()),
                    answer,
                });
            }
            if shared.plan.per_user_limit > 1 {
                shared
                    .retry
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push_back(user);
            }
            return Next::Continue;
        }
        PurchaseReply::Refused { status, code } => (status, code),
    };
    // Read with the server's own catalogue: a code only counts with its
    // status.
    call.outcome = match Code::parse(status, &code) {
        Some(Code::SoldOut) => CallOutcome::SoldOut,
        Some(Code::LimitReached) => CallOutcome::LimitReached,
        Some(Code::Contention) => CallOutcome::Contention,
        Some(Code::OutcomeUnknown) => CallOutcome::OutcomeUnknown,
        _ if status == StatusCode::SERVICE_UNAVAILABLE => CallOutcome::Unavailable,
        _ => CallOutcome::Other(status.as_u16()),
    };
    outcome.calls.push(call);
    match call.outcome {
        CallOutcome::SoldOut => {
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
        CallOutcome::LimitReached => outcome.statuses.limit_reached_409 += 1,
        CallOutcome::Contention => {
            outcome.statuses.contention_503 += 1;
            shared
                .retry
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push_back(user);
        }
        CallOutcome::Unavailable => outcome.statuses.unavailable_503 += 1,
        CallOutcome::OutcomeUnknown => outcome.statuses.outcome_unknown_503 += 1,
        _ => outcome.statuses.other += 1,
    }
    Next::Continue
}
