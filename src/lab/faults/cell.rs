//! One cell of the matrix: a strategy under a fault. Starts its own
//! topology, keeps an open-loop load on every instance before, during and
//! after the fault, history-checks the sale, and judges it.

use std::time::Duration;

use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::fault::{self, Fault, Injected, Timing};
use super::topology::{Shape, Topology};
use crate::lab::loadgen::history::{Call, CallOutcome, Counterexample, HistoryCheck};
use crate::lab::loadgen::{self, Ceiling, Observer, RacePlan, Rate};
use crate::strategy::{Decides, StrategyKind};

/// What every cell of a run shares.
#[derive(Debug, Clone)]
pub struct Lab {
    /// Requests a second, across the instances (open loop).
    pub rate: f64,
    pub concurrency: usize,
    pub instances: usize,
    pub before: Duration,
    pub hold: Duration,
    pub after: Duration,
    pub lock_ttl: Duration,
    pub seed: u64,
    pub bin: std::path::PathBuf,
}

impl Lab {
    /// Units on sale: what the load would buy in the phase before the fault
    /// and half the phase after it, so that a strategy keeping up with the
    /// rate sells out during the fault or after it, whatever the fault let
    /// through. One that does not keep up ends with stock left; a unit it
    /// sold twice shows as drift, which the verdict counts.
    pub fn stock(&self) -> u64 {
        ((self.before + self.after / 2).as_secs_f64() * self.rate).max(1.0) as u64
    }
}

/// How a cell came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Judgement {
    /// Linearizable, nothing oversold, lost or duplicated.
    Exact,
    /// A promise broke: the words say which.
    Broken,
    /// The fault did not happen, or the cell could not run: no verdict.
    Error,
}

/// A cell's verdict and every figure behind it.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    pub strategy: StrategyKind,
    pub fault: String,
    pub judgement: Judgement,
    /// The verdict in a few words, as the matrix shows it.
    pub words: String,
    pub linearizable: Option<bool>,
    pub counterexample: Option<Counterexample>,
    /// Units sold beyond the stock, counting units a lost update put back
    /// on the shelf (`drift` below zero: they sell twice).
    pub oversold: Option<u64>,
    /// 201s whose order is not in SQL once the run settled (`None`: SQL
    /// did not catch up, which is itself reported).
    pub lost_201s: Option<u64>,
    pub duplicate_ids: Option<u64>,
    /// The server's `(initial − stock) − sold`: below zero, lost updates;
    /// above, units the counter took with no order.
    pub drift: Option<i64>,
    /// Of the requests sent during the fault, the share answered correctly
    /// (201, `sold_out`, `limit_reached`). Phases go by when a request was
    /// sent, not when the schedule meant it: a strategy slower than the
    /// schedule would otherwise push its requests into later phases.
    pub served_during: Option<f64>,
    /// The same, for the requests sent after it was undone.
    pub served_after: Option<f64>,
    /// From the fault's end to the first quarter second in which 90% of
    /// requests were served (`None`: never within the run).
    pub recovery_s: Option<f64>,
    /// p99 of requests sent during the fault, from their send.
    pub p99_during_ms: Option<f64>,
    pub requests: u64,
    /// Every answer by meaning, over the whole run.
    pub statuses: Option<loadgen::StatusCounts>,
    /// Scheduled requests never sent (no connection came free in time).
    pub dropped: u64,
    pub stock: u64,
    pub fault_record: Option<Injected>,
    /// Why the cell has no verdict, when it has none.
    pub error: Option<String>,
    /// The one command that runs this cell again, seeded.
    pub repro: String,
    /// Summed over the instances' own counters for the strategy on the
    /// item (an instance restarted mid-cell counts from its restart):
    /// purchases whose holder outlived its lock, and stale writes refused by
    /// the fencing token. Under `holder-pause`, what shows a stall caught a
    /// holder that went on to write: a `lock` cell is exact because the
    /// token refused such writes, not because none was tried.
    pub lock_expired: Option<u64>,
    pub fenced: Option<u64>,
}

/// A cell as `seckill faults --progress ndjson` prints it, one JSON line
/// each, and as the status page's fault control reads it back from the
/// lab's stdout ([`crate::lab::fault_control`]): the verdict, the figures
/// behind it, how the lab knows the fault happened, and the repro. One type
/// writes and parses the line; the whole record is in `--out`'s faults.json.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CellLine {
    pub strategy: StrategyKind,
    /// The fault's name ([`Fault::name`]).
    pub fault: String,
    pub judgement: Judgement,
    /// The verdict in a few words: `exact`, the broken promises, or why
    /// there is no verdict.
    pub words: String,
    pub oversold: Option<u64>,
    pub lost_201s: Option<u64>,
    pub duplicate_ids: Option<u64>,
    pub served_during: Option<f64>,
    pub served_after: Option<f64>,
    pub recovery_s: Option<f64>,
    pub p99_during_ms: Option<f64>,
    /// How the lab knows the fault happened, or why it did not.
    pub evidence: Option<String>,
    /// Why the cell has no verdict, when it has none.
    pub error: Option<String>,
    /// The one command that runs this cell again, seeded.
    pub repro: String,
}

impl Cell {
    /// This cell as its progress line.
    pub fn line(&self) -> CellLine {
        CellLine {
            strategy: self.strategy,
            fault: self.fault.clone(),
            judgement: self.judgement,
            words: self.words.clone(),
            oversold: self.oversold,
            lost_201s: self.lost_201s,
            duplicate_ids: self.duplicate_ids,
            served_during: self.served_during,
            served_after: self.served_after,
            recovery_s: self.recovery_s,
            p99_during_ms: self.p99_during_ms,
            evidence: self.fault_record.as_ref().map(|f| f.evidence.clone()),
            error: self.error.clone(),
            repro: self.repro.clone(),
        }
    }
}

/// The window the recovery is measured in.
const RECOVERY_WINDOW_US: u64 = 250_000;

/// Runs `strategy` under `fault`.
pub async fn run(
    lab: &Lab,
    strategy: StrategyKind,
    fault: Fault,
    observe: &Observer,
    repro: String,
) -> Cell {
    let stock = lab.stock();
    match run_checked(lab, strategy, fault, observe).await {
        Ok((result, calls, injected, counters)) => Cell {
            lock_expired: counters.map(|c| c.0),
            fenced: counters.map(|c| c.1),
            ..judge(strategy, fault, stock, &result, &calls, injected, repro)
        },
        Err(why) => Cell {
            error: Some(format!("{why:#}")),
            ..Cell::empty(strategy, fault, stock, "error: the cell did not run", repro)
        },
    }
}

async fn run_checked(
    lab: &Lab,
    strategy: StrategyKind,
    fault: Fault,
    observe: &Observer,
) -> anyhow::Result<(
    loadgen::StrategyResult,
    Vec<Call>,
    Injected,
    Option<(u64, u64)>,
)> {
    let mut env = vec![
        (
            "LOCK_TTL_MS".to_owned(),
            lab.lock_ttl.as_millis().to_string(),
        ),
        ("DEFAULT_STRATEGY".to_owned(), strategy.to_string()),
    ];
    env.extend(fault.env());
    let shape = Shape {
        store: fault.store(),
        instances: lab.instances,
        env,
        fake_clock: fault.fake_clock(),
        bin: lab.bin.clone(),
        seed: lab.seed,
    };
    let mut topology = Topology::start(&shape).await?;
    let targets = topology.targets();
    let duration = lab.before + fault.span(lab.hold) + lab.after;
    let plan = RacePlan {
        strategies: vec![strategy],
        stock: lab.stock(),
        per_user_limit: 1,
        users: u64::MAX,
        concurrency: lab.concurrency,
        duration,
        until_sold_out: false,
        repeat_buyers: false,
        ceiling_duration: Duration::ZERO,
        item_prefix: "fault".into(),
        rate: Some(Rate::new(lab.rate, None)?),
        runs: 1,
        payments: None,
    };
    let timing = Timing {
        before: lab.before,
        hold: lab.hold,
        lock_ttl: lab.lock_ttl,
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(lab.seed);
    let topology_ref = &mut topology;
    let (result, calls, injected) =
        loadgen::run_sale(
            &targets,
            &plan,
            strategy,
            &Ceiling::default(),
            observe,
            |load| async move {
                fault::inject(fault, strategy, topology_ref, load, timing, &mut rng).await
            },
        )
        .await?;
    let counters = stale_writes(&targets, &result.item, strategy).await;
    drop(topology);
    Ok((result, calls, injected, counters))
}

/// Each instance's `lock_expired` and `fenced` for `strategy` on `item`,
/// summed; `None` when an instance could not be read.
async fn stale_writes(
    targets: &[crate::lab::loadgen::Target],
    item: &str,
    strategy: StrategyKind,
) -> Option<(u64, u64)> {
    let mut sums = (0, 0);
    for target in targets {
        let view = loadgen::item_view(target, item).await.ok()??;
        let counters = view.strategies.get(&strategy).copied().unwrap_or_default();
        sums.0 += counters.lock_expired;
        sums.1 += counters.fenced;
    }
    Some(sums)
}

impl Cell {
    fn empty(strategy: StrategyKind, fault: Fault, stock: u64, words: &str, repro: String) -> Self {
        Self {
            strategy,
            fault: fault.to_string(),
            judgement: Judgement::Error,
            words: words.into(),
            linearizable: None,
            counterexample: None,
            oversold: None,
            lost_201s: None,
            duplicate_ids: None,
            drift: None,
            served_during: None,
            served_after: None,
            recovery_s: None,
            p99_during_ms: None,
            requests: 0,
            statuses: None,
            dropped: 0,
            stock,
            fault_record: None,
            error: None,
            repro,
            lock_expired: None,
            fenced: None,
        }
    }
}

/// An answer a buyer can act on, and that the history check holds true.
fn served(outcome: CallOutcome) -> bool {
    matches!(
        outcome,
        CallOutcome::Created(_) | CallOutcome::SoldOut | CallOutcome::LimitReached
    )
}

fn share(calls: &[&Call]) -> Option<f64> {
    (!calls.is_empty())
        .then(|| calls.iter().filter(|c| served(c.outcome)).count() as f64 / calls.len() as f64)
}

fn judge(
    strategy: StrategyKind,
    fault: Fault,
    stock: u64,
    result: &loadgen::StrategyResult,
    calls: &[Call],
    injected: Injected,
    repro: String,
) -> Cell {
    let from_us = (injected.from_ms * 1e3) as u64;
    let to_us = (injected.to_ms * 1e3) as u64;
    let during: Vec<&Call> = calls
        .iter()
        .filter(|c| (from_us..to_us).contains(&c.sent_us))
        .collect();
    let after: Vec<&Call> = calls.iter().filter(|c| c.sent_us >= to_us).collect();
    let mut latencies: Vec<u64> = during
        .iter()
        .map(|c| c.done_us.saturating_sub(c.sent_us))
        .collect();
    latencies.sort_unstable();
    let p99_during_ms = (!latencies.is_empty())
        .then(|| latencies[((latencies.len() - 1) as f64 * 0.99).round() as usize] as f64 / 1e3);
    let recovery_s = recovery(&after, to_us);
    let history = &result.history;
    // A lost update puts a sold unit back on the shelf (drift below zero):
    // it sells again, so it is oversold whether or not the sale ran out
    // before the run ended.
    let oversold = history.oversold.max((-result.drift).max(0) as u64);
    let mut cell = Cell {
        linearizable: Some(history.linearizable),
        counterexample: history.counterexample.clone(),
        oversold: Some(oversold),
        lost_201s: history.lost_in_sql,
        duplicate_ids: Some(history.duplicate_ids),
        drift: Some(result.drift),
        served_during: share(&during),
        served_after: share(&after),
        recovery_s,
        p99_during_ms,
        requests: result.requests,
        statuses: Some(result.statuses),
        dropped: result.dropped,
        ..Cell::empty(strategy, fault, stock, "", repro)
    };
    if !injected.happened {
        cell.words = "error: fault not injected".into();
        cell.error = Some(injected.evidence.clone());
        cell.fault_record = Some(injected);
        return cell;
    }
    cell.fault_record = Some(injected);
    let mut broken = Vec::new();
    if result.vanished {
        broken.push("sale vanished".to_owned());
    }
    if oversold > 0 {
        broken.push(format!("oversold {oversold}"));
    }
    match history.lost_in_sql {
        Some(0) => {}
        Some(lost) => broken.push(format!("lost {lost}")),
        None => broken.push("SQL never caught up".into()),
    }
    if history.duplicate_ids > 0 {
        broken.push(format!("{} duplicate ids", history.duplicate_ids));
    }
    if result.drift > 0 {
        // Units the counter took with no order to show for them.
        broken.push(format!("{} units vanished", result.drift));
    }
    if !history.linearizable && broken.is_empty() && !only_mirror_missing(strategy, history) {
        let kind = history
            .counterexample
            .as_ref()
            .map_or("not linearizable", |c| c.kind);
        broken.push(kind.replace('_', " "));
    }
    if broken.is_empty() {
        cell.judgement = Judgement::Exact;
        cell.words = match history.lost_in_log {
            Some(missing) if missing > 0 => format!("exact ({missing} only in SQL)"),
            _ => "exact".into(),
        };
    } else {
        cell.judgement = Judgement::Broken;
        cell.words = broken.join(", ");
    }
    cell
}

/// Whether the history's one fault is 201s missing from the order log
/// that SQL holds, under a strategy that decides in SQL: its order log is a
/// mirror written after the commit, which a failed mirror may miss, the
/// order safe in SQL (docs/strategies.md). Not lost.
fn only_mirror_missing(strategy: StrategyKind, history: &HistoryCheck) -> bool {
    strategy.decides() == Decides::InSql
        && history.lost_in_sql == Some(0)
        && history.lost_in_log.is_some_and(|n| n > 0)
        && history.oversold == 0
        && history.over_limit_buyers == 0
        && history.wrong_buyers == 0
        && history.duplicate_ids == 0
        && history.unexplained_ghosts == 0
        && history.phantom_sold_out == 0
        && history.phantom_limit == 0
}

/// Seconds from `end_us` to the start of the first window in which 90% of
/// the requests sent were served.
fn recovery(after: &[&Call], end_us: u64) -> Option<f64> {
    let last = after.iter().map(|c| c.sent_us).max()?;
    let mut start = end_us;
    while start <= last {
        let window: Vec<&Call> = after
            .iter()
            .copied()
            .filter(|c| (start..start + RECOVERY_WINDOW_US).contains(&c.sent_us))
            .collect();
        if share(&window).is_some_and(|s| s >= 0.9) {
            return Some((start - end_us) as f64 / 1e6);
        }
        start += RECOVERY_WINDOW_US;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orders::snowflake::OrderId;

    fn call(id: u64, at_us: u64, outcome: CallOutcome) -> Call {
        Call {
            id,
            user: id,
            via: 0,
            intended_us: at_us,
            sent_us: at_us,
            done_us: at_us + 1_000,
            outcome,
        }
    }

    #[test]
    fn recovery_is_the_first_quarter_second_mostly_served() {
        // Failing for the first half second after the fault, served after.
        let calls: Vec<Call> = (0..40)
            .map(|n| {
                let at = 1_000_000 + n * 25_000;
                let outcome = if at < 1_500_000 {
                    CallOutcome::Unavailable
                } else {
                    CallOutcome::Created(OrderId(n))
                };
                call(n, at, outcome)
            })
            .collect();
        let after: Vec<&Call> = calls.iter().collect();
        assert_eq!(recovery(&after, 1_000_000), Some(0.5));
        let never: Vec<Call> = (0..4)
            .map(|n| call(n, 1_000_000 + n, CallOutcome::Transport))
            .collect();
        assert_eq!(recovery(&never.iter().collect::<Vec<_>>(), 1_000_000), None);
    }

    #[test]
    fn a_progress_line_reads_back_as_written() {
        let mut cell = Cell::empty(
            StrategyKind::Lua,
            Fault::RedisPause,
            10,
            "exact",
            "seckill faults --seed 1".into(),
        );
        cell.judgement = Judgement::Exact;
        cell.served_during = Some(0.25);
        cell.fault_record = Some(Injected {
            happened: true,
            evidence: "redis stopped".into(),
            from_ms: 1.0,
            to_ms: 2.0,
        });
        let line = serde_json::to_string(&cell.line()).unwrap();
        assert!(!line.contains('\n'), "one line: {line}");
        let read: CellLine = serde_json::from_str(&line).unwrap();
        assert_eq!(read, cell.line());
        assert_eq!(read.evidence.as_deref(), Some("redis stopped"));
    }

    #[test]
    fn an_order_only_in_sql_is_lost_for_a_log_strategy_and_a_missed_mirror_for_sql() {
        let missed_mirror = HistoryCheck {
            lost_in_log: Some(1),
            lost_in_sql: Some(0),
            ..HistoryCheck::default()
        };
        assert!(only_mirror_missing(StrategyKind::Sql, &missed_mirror));
        assert!(!only_mirror_missing(StrategyKind::Lua, &missed_mirror));
        for and_more in [
            HistoryCheck {
                duplicate_ids: 1,
                ..missed_mirror.clone()
            },
            HistoryCheck {
                wrong_buyers: 1,
                ..missed_mirror.clone()
            },
        ] {
            assert!(!only_mirror_missing(StrategyKind::Sql, &and_more));
        }
        let lost = HistoryCheck {
            lost_in_sql: Some(1),
            ..missed_mirror
        };
        assert!(!only_mirror_missing(StrategyKind::Sql, &lost));
    }

    #[test]
    fn only_answers_a_buyer_can_act_on_count_as_served() {
        let calls = [
            call(1, 0, CallOutcome::SoldOut),
            call(2, 0, CallOutcome::Contention),
            call(3, 0, CallOutcome::OutcomeUnknown),
            call(4, 0, CallOutcome::LimitReached),
        ];
        assert_eq!(share(&calls.iter().collect::<Vec<_>>()), Some(0.5));
        assert_eq!(share(&[]), None);
    }
}
