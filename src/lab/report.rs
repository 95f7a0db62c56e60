//! Rendering a race: a terminal table, `results.md`, `results.json`, and
//! (through [`crate::lab::chart`]) an SVG chart.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use serde::Serialize;

use crate::lab::loadgen::{RaceReport, StrategyResult};
use crate::strategy::StrategyKind;

/// Where the numbers were measured.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub date: String,
}

impl Machine {
    pub fn here() -> Self {
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split(':').nth(1))
                    .map(|m| m.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".into());
        Self {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model,
            date: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        }
    }
}

const HEADERS: [&str; 18] = [
    "strategy",
    "run",
    "req/s",
    "ceiling req/s",
    "x ceiling",
    "201/s",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "max ms",
    "201",
    "409",
    "503",
    "retries/201",
    "sell-out s",
    "oversold",
    "drift",
    "undersold",
];
const MORE_HEADERS: [&str; 12] = [
    "p99 corr ms",
    "late",
    "dropped",
    "linearizable",
    "refused w/ stock",
    "phantom sold-out",
    "ghosts",
    "lost log/sql",
    "peak RSS MiB",
    "server us/req",
    "redis us/req",
    "settle s",
];

fn row(r: &StrategyResult, rss: &BTreeMap<StrategyKind, f64>) -> Vec<String> {
    let lost = |v: Option<u64>| v.map_or("n/a".to_owned(), |n| n.to_string());
    vec![
        r.strategy.to_string(),
        r.run.to_string(),
        format!("{:.0}", r.requests_per_s),
        format!("{:.0}", r.ceiling.requests_per_s),
        format!("{:.3}", r.ceiling_ratio),
        format!("{:.0}", r.successes_per_s),
        format!("{:.2}", r.latency.p50_ms),
        format!("{:.2}", r.latency.p90_ms),
        format!("{:.2}", r.latency.p99_ms),
        format!("{:.1}", r.latency.max_ms),
        r.statuses.created_201.to_string(),
        (r.statuses.sold_out_409 + r.statuses.limit_reached_409).to_string(),
        (r.statuses.contention_503 + r.statuses.unavailable_503 + r.statuses.outcome_unknown_503)
            .to_string(),
        format!("{:.2}", r.retries_per_success),
        r.time_to_sell_out_s
            .map_or("-".to_owned(), |s| format!("{s:.2}")),
        r.oversold.to_string(),
        r.drift.to_string(),
        r.undersold.to_string(),
        r.latency_corrected
            .map_or("n/a".to_owned(), |l| format!("{:.2}", l.p99_ms)),
        r.late.to_string(),
        r.dropped.to_string(),
        if r.history.linearizable { "yes" } else { "NO" }.to_owned(),
        r.history.refused_with_stock.to_string(),
        r.history.phantom_sold_out.to_string(),
        r.history.ghost_orders.to_string(),
        format!("{}/{}", lost(r.lost_in_log), lost(r.lost_in_sql)),
        rss.get(&r.strategy)
            .map_or("n/a".to_owned(), |m| format!("{m:.1}")),
        r.server_cpu_us_per_request
            .map_or("n/a".to_owned(), |us| format!("{us:.1}")),
        r.redis_cpu_us_per_request
            .map_or("n/a".to_owned(), |us| format!("{us:.1}")),
        r.settle_s.map_or("n/a".to_owned(), |s| format!("{s:.2}")),
    ]
}

fn rows(
    report: &RaceReport,
    rss: &BTreeMap<StrategyKind, f64>,
) -> (Vec<&'static str>, Vec<Vec<String>>) {
    let headers: Vec<&str> = HEADERS.iter().chain(MORE_HEADERS.iter()).copied().collect();
    (
        headers,
        report.results.iter().map(|r| row(r, rss)).collect(),
    )
}

/// The summary's columns: a figure's median with its range over the runs.
const SUMMARY: [(&str, &str, usize); 9] = [
    ("req/s", "requests_per_s", 0),
    ("x ceiling", "ceiling_ratio", 3),
    ("p99 ms", "p99_ms", 2),
    ("p99 corr ms", "p99_corrected_ms", 2),
    ("server us/req", "server_cpu_us_per_request", 1),
    ("redis us/req", "redis_cpu_us_per_request", 1),
    ("oversold", "oversold", 0),
    ("undersold", "undersold", 0),
    ("refused w/ stock", "refused_with_stock", 0),
];

/// Per strategy: runs, linearizable runs, then each summary figure as
/// `median (min–max)`.
fn summary_rows(report: &RaceReport) -> (Vec<&'static str>, Vec<Vec<String>>) {
    let mut headers = vec!["strategy", "runs", "linearizable"];
    headers.extend(SUMMARY.iter().map(|(header, _, _)| *header));
    let rows = report
        .summary
        .iter()
        .map(|s| {
            let mut row = vec![
                s.strategy.to_string(),
                s.runs.to_string(),
                format!("{} of {}", s.linearizable_runs, s.runs),
            ];
            row.extend(SUMMARY.iter().map(|(_, figure, digits)| {
                s.get(figure).map_or("n/a".to_owned(), |v| {
                    format!(
                        "{:.d$} ({:.d$}-{:.d$})",
                        v.median,
                        v.min,
                        v.max,
                        d = *digits
                    )
                })
            }));
            row
        })
        .collect();
    (headers, rows)
}

/// The terminal's default table: what decides a strategy, within 120
/// columns. The full table is `--wide`, and always in the reports' files.
const COMPACT: [&str; 9] = [
    "strategy",
    "run",
    "req/s",
    "x ceiling",
    "p99 ms",
    "sold",
    "oversold",
    "verdict",
    "server us/req",
];

fn compact_row(r: &StrategyResult) -> Vec<String> {
    let lost = r.lost_in_log.unwrap_or(0) + r.lost_in_sql.unwrap_or(0);
    vec![
        r.strategy.to_string(),
        r.run.to_string(),
        format!("{:.0}", r.requests_per_s),
        format!("{:.3}", r.ceiling_ratio),
        format!("{:.2}", r.latency.p99_ms),
        r.sold.to_string(),
        r.oversold.to_string(),
        verdict(r.oversold, r.drift, r.history.linearizable, lost),
        r.server_cpu_us_per_request
            .map_or("n/a".to_owned(), |us| format!("{us:.1}")),
    ]
}

/// Per run, the lifecycle's figures (sales with a payment window).
fn lifecycle_rows(report: &RaceReport) -> (Vec<&'static str>, Vec<Vec<String>>) {
    let headers = vec![
        "strategy",
        "run",
        "sold",
        "paid",
        "returned",
        "most out",
        "stock",
        "pays contradicted",
        "never ended",
        "linearizable",
    ];
    let rows = report
        .results
        .iter()
        .map(|r| {
            let h = &r.history;
            // Only counted, each order's end unknown (SQL not settled).
            let known = |n: u64| match h.lifecycle_known {
                Some(true) => n.to_string(),
                _ => "n/a".to_owned(),
            };
            vec![
                r.strategy.to_string(),
                r.run.to_string(),
                r.sold.to_string(),
                known(h.paid),
                known(h.returned_orders),
                h.most_out_at_once
                    .map_or("n/a".to_owned(), |n| n.to_string()),
                report.plan.stock.to_string(),
                known(h.pays_contradicted),
                h.never_ended.to_string(),
                if h.linearizable { "yes" } else { "NO" }.to_owned(),
            ]
        })
        .collect();
    (headers, rows)
}

/// A run's judgement in words, its worst finding: what a reader of the
/// terminal needs before any figure.
fn verdict(oversold: u64, drift: i64, linearizable: bool, lost: u64) -> String {
    let mut findings = Vec::new();
    if oversold > 0 {
        findings.push(format!("OVERSOLD {oversold}"));
    }
    if lost > 0 {
        findings.push(format!("LOST {lost}"));
    }
    if !linearizable {
        findings.push("not linearizable".to_owned());
    }
    if drift != 0 {
        findings.push(format!("drift {drift}"));
    }
    // The worst one, and how many more: the full list is in results.md.
    match findings.len() {
        0 => "exact, linearizable".to_owned(),
        1 => findings.remove(0),
        n => format!("{} (+{} more)", findings.remove(0), n - 1),
    }
}

/// A fixed-width table for the terminal: every run, then (with more than
/// one run per strategy) the medians and ranges. `wide`: every column;
/// otherwise the ones that decide ([`COMPACT`]), within 120 columns.
pub fn table(report: &RaceReport, rss: &BTreeMap<StrategyKind, f64>, wide: bool) -> String {
    if !wide {
        return fixed_width((
            COMPACT.to_vec(),
            report.results.iter().map(compact_row).collect(),
        ));
    }
    let mut out = fixed_width(rows(report, rss));
    if report.plan.runs > 1 {
        out.push('\n');
        out.push_str(&fixed_width(summary_rows(report)));
    }
    out
}

fn fixed_width((headers, rows): (Vec<&str>, Vec<Vec<String>>)) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:>w$}"))
            .collect();
        let _ = writeln!(out, "{}", padded.join("  "));
    };
    line(headers.clone(), &mut out);
    for row in &rows {
        line(row.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

/// A markdown table, every column right-aligned.
fn markdown_table(md: &mut String, (headers, rows): (Vec<&str>, Vec<Vec<String>>)) {
    let _ = writeln!(md, "| {} |", headers.join(" | "));
    let _ = writeln!(md, "|{}|", vec!["---:"; headers.len()].join("|"));
    for row in rows {
        let _ = writeln!(md, "| {} |", row.join(" | "));
    }
}

/// `results.md`: the plan, the machine, the ceiling and the table.
pub fn markdown(
    report: &RaceReport,
    rss: &BTreeMap<StrategyKind, f64>,
    machine: &Machine,
) -> String {
    let (headers, rows) = rows(report, rss);
    let plan = &report.plan;
    let mut md = String::new();
    let _ = writeln!(md, "# seckill bench, {}\n", machine.date);
    let _ = writeln!(
        md,
        "Machine: {} CPUs ({}), shared by the load generator, the server and Redis.\n",
        machine.cpus, machine.cpu_model
    );
    let _ = writeln!(
        md,
        "Plan: {}, stock {} per strategy, per-user limit {}, {}, {}, at most {:.0} s per strategy.\n",
        match plan.rate {
            None => format!("closed loop, concurrency {}", plan.concurrency),
            Some(rate) => format!(
                "open loop at {}{:.0} req/s on {} connections",
                rate.ramp_from_per_s
                    .map_or(String::new(), |from| format!("{from:.0} ramping to ")),
                rate.per_s,
                plan.concurrency
            ),
        },
        plan.stock,
        plan.per_user_limit,
        if plan.users == u64::MAX {
            "a new buyer per request".to_owned()
        } else {
            format!("{} distinct buyers", plan.users)
        },
        if plan.until_sold_out {
            "until sold out"
        } else {
            "for the whole duration"
        },
        plan.duration.as_secs_f64()
    );
    if let Some(ceiling) = report.ceiling_spread() {
        let _ = writeln!(
            md,
            "HTTP ceiling (`/healthz`, same concurrency), measured before each run: {:.0} req/s (median; {:.0}-{:.0}).\n",
            ceiling.median, ceiling.min, ceiling.max
        );
    }
    if plan.runs > 1 {
        let _ = writeln!(
            md,
            "Over {} runs per strategy, interleaved: median (min-max).\n",
            plan.runs
        );
        markdown_table(&mut md, summary_rows(report));
        let _ = writeln!(md, "\nEvery run:\n");
    }
    markdown_table(&mut md, (headers, rows));
    let _ = writeln!(
        md,
        "\n`x ceiling` is req/s divided by the `/healthz` req/s of this run. Latencies run from each request's send to its answer; `p99 corr ms` (open loop only) runs from its scheduled start, so waiting for a free connection counts; `late` requests were sent more than 2 ms after their scheduled start, `dropped` ones never (a second of the schedule was already waiting, or the run ended first). 409 counts sold-out and limit answers; 503 counts contention and unavailable. `undersold`: the server's count of refusals (contention or an error) before the sale was first seen empty. `linearizable` and the columns after it come from checking every request of the run against the sale (one counter of the stock, the per-user limit): `refused w/ stock` counts refusals (503, errors, no answer) that completed while units certainly remained; `phantom sold-out` counts `sold_out` answers given before the stock could have run out (or in a sale whose orders never reached the stock); `ghosts` counts stored orders never answered 201 (each must be matched by a request of its buyer that got no clear answer). `lost log/sql`: 201 order ids missing from the order log / from SQL after the persister caught up."
    );
    if let Some(payments) = &plan.payments {
        let _ = writeln!(
            md,
            "\nThe order lifecycle: each sale had a payment window of {} ms; a buyer answered 201 paid at once with probability {} (decided by the order id), and the other orders expired, their units back on sale. From SQL, once every deadline had passed: orders `paid`, and `returned` (cancelled or expired); `most out` is the most units certainly out at once (the history check's; a correct sale never exceeds its stock); `pays contradicted`: pays answered otherwise than their order ended; `never ended`: orders still reserved.\n",
            payments.window.as_millis(),
            payments.pay_ratio
        );
        markdown_table(&mut md, lifecycle_rows(report));
    }
    let counterexamples: Vec<String> = report
        .results
        .iter()
        .filter_map(|r| {
            let example = r.history.counterexample.as_ref()?;
            let calls: Vec<String> = example
                .calls
                .iter()
                .take(4)
                .map(|c| {
                    format!(
                        "request {} (buyer b{}, sent {:.3} ms, answered {:.3} ms, {:?})",
                        c.id, c.user, c.sent_ms, c.done_ms, c.outcome
                    )
                })
                .collect();
            Some(format!(
                "- `{}` is not linearizable: {} ({}){}{}",
                r.strategy,
                example.kind,
                example.detail,
                if calls.is_empty() { "" } else { "; first: " },
                calls.join(", ")
            ))
        })
        .collect();
    if !counterexamples.is_empty() {
        let _ = writeln!(
            md,
            "\nFirst counterexamples (times from the start of each strategy's run):\n"
        );
        for line in counterexamples {
            let _ = writeln!(md, "{line}");
        }
    }
    md
}

/// Writes `results.json`, `results.md` and `chart.svg` into `dir`.
pub fn write_files(
    dir: &Path,
    report: &RaceReport,
    rss: &BTreeMap<StrategyKind, f64>,
    machine: &Machine,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    #[derive(Serialize)]
    struct Json<'a> {
        machine: &'a Machine,
        peak_rss_mib: &'a BTreeMap<StrategyKind, f64>,
        #[serde(flatten)]
        report: &'a RaceReport,
    }
    let json = serde_json::to_string_pretty(&Json {
        machine,
        peak_rss_mib: rss,
        report,
    })?;
    std::fs::write(dir.join("results.json"), json)?;
    std::fs::write(dir.join("results.md"), markdown(report, rss, machine))?;
    std::fs::write(dir.join("chart.svg"), crate::lab::chart::svg(report))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::loadgen::StrategySummary;

    #[test]
    fn the_verdict_names_the_worst_finding() {
        assert_eq!(verdict(0, 0, true, 0), "exact, linearizable");
        assert_eq!(verdict(3, -3, false, 0), "OVERSOLD 3 (+2 more)");
        assert_eq!(verdict(0, 0, false, 0), "not linearizable");
        assert_eq!(verdict(0, 0, true, 2), "LOST 2");
    }

    /// The longest strategy name, every finding at once and wide figures
    /// still fit a 120-column terminal.
    #[test]
    fn the_default_table_fits_120_columns() {
        let longest = StrategyKind::ALL
            .iter()
            .map(|k| k.as_str())
            .max_by_key(|name| name.len())
            .unwrap_or_default();
        let row = vec![
            longest.to_owned(),
            "10".into(),
            "1234567".into(),
            "1.000".into(),
            "12345.67".into(),
            "1000000".into(),
            "1000000".into(),
            verdict(1_000_000, -1_000_000, false, 1_000_000),
            "12345.6".into(),
        ];
        let table = fixed_width((COMPACT.to_vec(), vec![row]));
        for line in table.lines() {
            assert!(
                line.chars().count() <= 120,
                "{} columns: {line}",
                line.chars().count()
            );
        }
    }

    #[test]
    fn every_summary_column_names_a_figure_the_summary_has() {
        for (header, figure, _) in SUMMARY {
            assert!(StrategySummary::knows(figure), "{header}: `{figure}`");
        }
    }
}
