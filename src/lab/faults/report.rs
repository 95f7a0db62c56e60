//! The fault matrix as a reader gets it: a table in the terminal,
//! `faults.json` (every figure of every cell), `faults.md` (the matrix, the
//! figures, the evidence and each cell's command) and `faults.svg` (a
//! heatmap: a cell's colour is its judgement, its words are in it too).

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use super::cell::{Cell, Judgement};
use crate::lab::report::Machine;
use crate::strategy::StrategyKind;

/// A whole run of the lab.
#[derive(Debug, Clone, Serialize)]
pub struct Matrix {
    pub command: String,
    pub commit: Option<String>,
    pub machine: Machine,
    pub strategies: Vec<StrategyKind>,
    pub faults: Vec<String>,
    pub cells: Vec<Cell>,
}

impl Matrix {
    fn cell(&self, strategy: StrategyKind, fault: &str) -> Option<&Cell> {
        self.cells
            .iter()
            .find(|c| c.strategy == strategy && c.fault == fault)
    }

    /// Cells with no verdict.
    pub fn errors(&self) -> usize {
        self.cells
            .iter()
            .filter(|c| c.judgement == Judgement::Error)
            .count()
    }
}

fn pct(share: Option<f64>) -> String {
    share.map_or("-".into(), |s| format!("{:.0}%", s * 100.0))
}

fn opt<T: ToString>(value: Option<T>) -> String {
    value.map_or("-".into(), |v| v.to_string())
}

/// Strategies down, faults across, each cell its words.
pub fn table(matrix: &Matrix) -> String {
    let first = matrix
        .strategies
        .iter()
        .map(|s| s.as_str().len())
        .max()
        .unwrap_or(8)
        .max(8);
    let widths: Vec<usize> = matrix
        .faults
        .iter()
        .map(|fault| {
            matrix
                .strategies
                .iter()
                .filter_map(|s| matrix.cell(*s, fault))
                .map(|c| c.words.len())
                .chain([fault.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = format!("{:first$}", "");
    for (fault, width) in matrix.faults.iter().zip(&widths) {
        let _ = write!(out, "  {fault:width$}");
    }
    out.push('\n');
    for strategy in &matrix.strategies {
        let _ = write!(out, "{:first$}", strategy.as_str());
        for (fault, width) in matrix.faults.iter().zip(&widths) {
            let words = matrix
                .cell(*strategy, fault)
                .map_or("", |c| c.words.as_str());
            let _ = write!(out, "  {words:width$}");
        }
        out.push('\n');
    }
    out
}

/// `faults.md`: the matrix, then a row of figures per cell.
pub fn markdown(matrix: &Matrix) -> String {
    let mut out = String::from("# Fault matrix\n\n");
    let _ = writeln!(out, "Command: `{}`\n", matrix.command);
    if let Some(commit) = &matrix.commit {
        let _ = writeln!(out, "Commit: `{commit}`\n");
    }
    let machine = &matrix.machine;
    let _ = writeln!(
        out,
        "Machine: {} cores ({}), {}. The load generator, the instances and Redis share the cores.\n",
        machine.cpus, machine.cpu_model, machine.date
    );
    out.push_str("| strategy |");
    for fault in &matrix.faults {
        let _ = write!(out, " {fault} |");
    }
    out.push_str("\n|---|");
    out.push_str(&"---|".repeat(matrix.faults.len()));
    out.push('\n');
    for strategy in &matrix.strategies {
        let _ = write!(out, "| `{strategy}` |");
        for fault in &matrix.faults {
            let words = matrix
                .cell(*strategy, fault)
                .map_or("", |c| c.words.as_str());
            let _ = write!(out, " {words} |");
        }
        out.push('\n');
    }
    out.push_str(
        "\n## Every cell\n\nServed: answered 201, `sold_out` or `limit_reached`. \
         Recovery: from the fault's end to the first quarter second with 90% served. \
         p99: requests sent during the fault, from their send. Oversold counts units a lost update put back on the shelf (drift below zero): they sell twice.\n\n\
         | strategy | fault | verdict | linearizable | oversold | lost 201s | duplicate ids | drift | served during | served after | recovery s | p99 during ms | requests |\n\
         |---|---|---|---|---|---|---|---|---:|---:|---:|---:|---:|\n",
    );
    for cell in &matrix.cells {
        let _ = writeln!(
            out,
            "| `{}` | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            cell.strategy,
            cell.fault,
            cell.words,
            opt(cell.linearizable),
            opt(cell.oversold),
            cell.lost_201s
                .map_or("SQL behind".into(), |n| n.to_string()),
            opt(cell.duplicate_ids),
            opt(cell.drift),
            pct(cell.served_during),
            pct(cell.served_after),
            cell.recovery_s
                .map_or("never".into(), |s| format!("{s:.2}")),
            cell.p99_during_ms.map_or("-".into(), |p| format!("{p:.0}")),
            cell.requests,
        );
    }
    out.push_str("\n## Evidence, counterexamples and commands\n\n");
    for cell in &matrix.cells {
        let _ = writeln!(
            out,
            "### `{}` × {}: {}\n",
            cell.strategy, cell.fault, cell.words
        );
        if let Some(record) = &cell.fault_record {
            let _ = writeln!(
                out,
                "- Fault, {:.0} to {:.0} ms: {}",
                record.from_ms, record.to_ms, record.evidence
            );
        }
        if let Some(error) = &cell.error {
            let _ = writeln!(out, "- Error: {error}");
        }
        if let (Some(expired), Some(fenced)) = (cell.lock_expired, cell.fenced)
            && expired + fenced > 0
        {
            let _ = writeln!(
                out,
                "- Holders that outlived their lock: {expired}; stale writes refused by the fencing token: {fenced}"
            );
        }
        if let Some(example) = &cell.counterexample {
            let _ = writeln!(
                out,
                "- First counterexample ({}): {}",
                example.kind, example.detail
            );
        }
        let _ = writeln!(out, "- Again: `{}`\n", cell.repro);
    }
    out
}

/// The heatmap's colours: exact, broken, no verdict.
fn colour(judgement: Judgement) -> &'static str {
    match judgement {
        Judgement::Exact => "#2e7d32",
        Judgement::Broken => "#c62828",
        Judgement::Error => "#757575",
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// `faults.svg`.
pub fn svg(matrix: &Matrix) -> String {
    const CELL_W: usize = 150;
    const CELL_H: usize = 40;
    const LEFT: usize = 140;
    const TOP: usize = 50;
    let width = LEFT + CELL_W * matrix.faults.len() + 10;
    let height = TOP + CELL_H * matrix.strategies.len() + 30;
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    for (col, fault) in matrix.faults.iter().enumerate() {
        let x = LEFT + col * CELL_W + CELL_W / 2;
        let _ = writeln!(
            out,
            "<text x=\"{x}\" y=\"{}\" text-anchor=\"middle\" font-weight=\"bold\">{}</text>",
            TOP - 12,
            escape(fault)
        );
    }
    for (row, strategy) in matrix.strategies.iter().enumerate() {
        let y = TOP + row * CELL_H;
        let _ = writeln!(
            out,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\" font-weight=\"bold\">{}</text>",
            LEFT - 8,
            y + CELL_H / 2 + 4,
            strategy
        );
        for (col, fault) in matrix.faults.iter().enumerate() {
            let x = LEFT + col * CELL_W;
            let Some(cell) = matrix.cell(*strategy, fault) else {
                continue;
            };
            let served = cell.served_during.map_or(String::new(), |s| {
                format!("served {:.0}% during", s * 100.0)
            });
            let _ = writeln!(
                out,
                "<rect x=\"{x}\" y=\"{y}\" width=\"{}\" height=\"{}\" fill=\"{}\" stroke=\"white\"/>\
                 <text x=\"{}\" y=\"{}\" text-anchor=\"middle\" fill=\"white\">{}</text>\
                 <text x=\"{}\" y=\"{}\" text-anchor=\"middle\" fill=\"white\" font-size=\"9\">{}</text>",
                CELL_W - 2,
                CELL_H - 2,
                colour(cell.judgement),
                x + CELL_W / 2,
                y + 16,
                escape(&cell.words),
                x + CELL_W / 2,
                y + 30,
                escape(&served),
            );
        }
    }
    let _ = writeln!(
        out,
        "<text x=\"{LEFT}\" y=\"{}\">green: exact · red: a promise broke · grey: no verdict (the fault did not happen)</text>\n</svg>",
        height - 10
    );
    out
}

/// Writes `faults.json`, `faults.md` and `faults.svg` into `dir`.
pub fn write_files(dir: &Path, matrix: &Matrix) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("faults.json"),
        serde_json::to_string_pretty(matrix)?,
    )?;
    std::fs::write(dir.join("faults.md"), markdown(matrix))?;
    std::fs::write(dir.join("faults.svg"), svg(matrix))?;
    Ok(())
}
