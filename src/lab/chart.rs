//! `chart.svg`: one row per strategy, three panels side by side: requests/s
//! and p99 latency on log scales (a bar to the median, a whisker over the
//! runs' range), and the sale's truths as text (oversold units, the history
//! verdict).
//!
//! Written by hand rather than through a plotting crate: every label has a
//! place of its own (the value under its bar, the name in its own column),
//! so nothing overlaps however many strategies or however wide the numbers,
//! and every colour repeats what a text already says.

use std::fmt::Write as _;

use crate::lab::loadgen::{RaceReport, Spread, StrategySummary};

const WIDTH: f64 = 1200.0;
const ROW: f64 = 40.0;
const TOP: f64 = 78.0;
const BOTTOM: f64 = 48.0;
const NAMES_RIGHT: f64 = 150.0;
/// The two plots: left and right edge.
const RATE_PANEL: (f64, f64) = (165.0, 520.0);
const LATENCY_PANEL: (f64, f64) = (565.0, 920.0);
const TRUTHS_LEFT: f64 = 950.0;

/// The summary figures the chart reads.
const RATE: &str = "requests_per_s";
const P99: &str = "p99_ms";
const P99_CORRECTED: &str = "p99_corrected_ms";
const OVERSOLD: &str = "oversold";
const REFUSED: &str = "refused_with_stock";
#[cfg(test)]
const FIGURES_DRAWN: [&str; 5] = [RATE, P99, P99_CORRECTED, OVERSOLD, REFUSED];

const BAR: &str = "#4a6eb4";
const LATENCY_BAR: &str = "#c8782a";
const BAD: &str = "#b00020";
const GOOD: &str = "#1b6e2d";

/// A log axis over the decades that hold every value.
struct LogAxis {
    lo: f64,
    hi: f64,
    left: f64,
    right: f64,
}

impl LogAxis {
    fn over(values: impl Iterator<Item = f64>, (left, right): (f64, f64)) -> Self {
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        for v in values.filter(|v| v.is_finite() && *v > 0.0) {
            lo = lo.min(v);
            hi = hi.max(v);
        }
        if !lo.is_finite() {
            (lo, hi) = (1.0, 10.0);
        }
        let lo = 10f64.powf(lo.log10().floor());
        let hi = 10f64.powf(hi.log10().ceil()).max(lo * 10.0);
        Self {
            lo,
            hi,
            left,
            right,
        }
    }

    fn x(&self, v: f64) -> f64 {
        let v = v.clamp(self.lo, self.hi);
        self.left
            + (v.ln() - self.lo.ln()) / (self.hi.ln() - self.lo.ln()) * (self.right - self.left)
    }

    /// The powers of ten from `lo` to `hi`.
    fn ticks(&self) -> Vec<f64> {
        let mut ticks = vec![self.lo];
        while let Some(&last) = ticks.last()
            && last * 10.0 <= self.hi * 1.000_001
        {
            ticks.push(last * 10.0);
        }
        ticks
    }
}

/// 1500 → "1.5k", 2000000 → "2M", 653.1 → "653", 0.05 → "0.05".
fn short(v: f64) -> String {
    let a = v.abs();
    let (scaled, unit) = if a >= 999_950.0 {
        (v / 1e6, "M")
    } else if a >= 999.95 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    let text = if !unit.is_empty() || (1.0..100.0).contains(&a) {
        format!("{scaled:.1}")
    } else if a >= 100.0 {
        format!("{scaled:.0}")
    } else {
        format!("{scaled:.2}")
    };
    let text = if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.')
    } else {
        &text
    };
    format!("{text}{unit}")
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn text(svg: &mut String, x: f64, y: f64, size: u32, anchor: &str, fill: &str, body: &str) {
    let _ = writeln!(
        svg,
        r#"<text x="{x:.1}" y="{y:.1}" font-size="{size}" text-anchor="{anchor}" fill="{fill}">{}</text>"#,
        escape(body)
    );
}

/// The axis's grid and tick labels, and its title above them.
fn axis(svg: &mut String, axis: &LogAxis, title: &str, bottom: f64) {
    text(svg, axis.left, TOP - 38.0, 14, "start", "#000", title);
    for tick in axis.ticks() {
        let x = axis.x(tick);
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{bottom:.1}" stroke="#ddd"/>"##,
            TOP - 12.0
        );
        text(svg, x, TOP - 16.0, 10, "middle", "#555", &short(tick));
    }
}

/// A bar to the median, a whisker over the range, and the figures in
/// words under it.
fn bar(svg: &mut String, axis: &LogAxis, y: f64, spread: Option<Spread>, color: &str, unit: &str) {
    let Some(s) = spread else {
        text(svg, axis.left, y + 16.0, 11, "start", "#555", "n/a");
        return;
    };
    let end = axis.x(s.median);
    let _ = writeln!(
        svg,
        r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="14" fill="{color}"/>"#,
        axis.left,
        y + 4.0,
        (end - axis.left).max(1.0)
    );
    let (a, b) = (axis.x(s.min), axis.x(s.max));
    let mid = y + 11.0;
    let _ = writeln!(
        svg,
        r##"<path d="M{a:.1},{:.1}V{:.1}M{a:.1},{mid:.1}H{b:.1}M{b:.1},{:.1}V{:.1}" stroke="#000" fill="none"/>"##,
        mid - 5.0,
        mid + 5.0,
        mid - 5.0,
        mid + 5.0
    );
    let label = if s.min == s.max {
        format!("{}{unit}", short(s.median))
    } else {
        format!(
            "{}{unit} (range {} to {})",
            short(s.median),
            short(s.min),
            short(s.max)
        )
    };
    text(svg, axis.left, y + 32.0, 11, "start", "#222", &label);
}

/// Oversold units and the history verdict, in words; red only where the
/// words say something is wrong.
fn truths(svg: &mut String, y: f64, s: &StrategySummary, violation: Option<&str>) {
    let oversold = s.get(OVERSOLD).map_or(0.0, |o| o.max);
    let (line, color) = if oversold > 0.0 {
        (format!("OVERSOLD: up to {} units", short(oversold)), BAD)
    } else {
        ("oversold: 0".to_owned(), GOOD)
    };
    text(svg, TRUTHS_LEFT, y + 15.0, 12, "start", color, &line);
    let refused = s.get(REFUSED).map_or(0.0, |r| r.median);
    let (line, color) = if s.linearizable_runs == s.runs {
        let mut line = format!("linearizable in {} of {} runs", s.runs, s.runs);
        if refused > 0.0 {
            let _ = write!(line, "; {} refused with stock", short(refused));
        }
        (line, GOOD)
    } else {
        (
            format!(
                "NOT linearizable in {} of {} runs{}",
                s.runs - s.linearizable_runs,
                s.runs,
                violation.map_or(String::new(), |v| format!(": {v}"))
            ),
            BAD,
        )
    };
    text(svg, TRUTHS_LEFT, y + 32.0, 11, "start", color, &line);
}

/// The whole chart as SVG text.
pub fn svg(report: &RaceReport) -> String {
    let rows = report.summary.len().max(1) as f64;
    let height = TOP + rows * ROW + BOTTOM;
    let bottom = TOP + rows * ROW;
    let open_loop = report.plan.rate.is_some();
    let latency_figure = if open_loop { P99_CORRECTED } else { P99 };
    let ceiling = report.ceiling_spread();
    let spreads = |figure: &str| {
        report
            .summary
            .iter()
            .filter_map(|s| s.get(figure))
            .flat_map(|s| [s.min, s.max])
            .collect::<Vec<f64>>()
    };
    let rate_axis = LogAxis::over(
        spreads(RATE).into_iter().chain(ceiling.map(|c| c.max)),
        RATE_PANEL,
    );
    let latency_axis = LogAxis::over(spreads(latency_figure).into_iter(), LATENCY_PANEL);

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    text(
        &mut svg,
        10.0,
        18.0,
        13,
        "start",
        "#000",
        &format!(
            "seckill bench: bars at the median of {} run(s) per strategy, whiskers over their range; log scales",
            report.plan.runs.max(1)
        ),
    );
    axis(&mut svg, &rate_axis, "requests/s (log)", bottom);
    axis(
        &mut svg,
        &latency_axis,
        if open_loop {
            "p99 latency from the scheduled start, ms (log)"
        } else {
            "p99 latency, ms (log)"
        },
        bottom,
    );
    text(
        &mut svg,
        TRUTHS_LEFT,
        TOP - 38.0,
        14,
        "start",
        "#000",
        "the sale's truths",
    );

    for (i, s) in report.summary.iter().enumerate() {
        let y = TOP + i as f64 * ROW;
        text(
            &mut svg,
            NAMES_RIGHT,
            y + 16.0,
            13,
            "end",
            "#000",
            s.strategy.as_str(),
        );
        bar(&mut svg, &rate_axis, y, s.get(RATE), BAR, " req/s");
        bar(
            &mut svg,
            &latency_axis,
            y,
            s.get(latency_figure),
            LATENCY_BAR,
            " ms",
        );
        let violation = report
            .results
            .iter()
            .filter(|r| r.strategy == s.strategy)
            .find_map(|r| r.history.counterexample.as_ref().map(|c| c.kind));
        truths(&mut svg, y, s, violation);
    }

    if let Some(c) = ceiling {
        let x = rate_axis.x(c.median);
        let _ = writeln!(
            svg,
            r#"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{bottom:.1}" stroke="{BAD}" stroke-dasharray="5,3" stroke-width="2"/>"#,
            TOP - 12.0
        );
        text(
            &mut svg,
            RATE_PANEL.0,
            bottom + 20.0,
            11,
            "start",
            "#000",
            &format!(
                "dashed red line: /healthz ceiling, median {} req/s (range {} to {}), measured before each run",
                short(c.median),
                short(c.min),
                short(c.max)
            ),
        );
    }
    let _ = writeln!(svg, "</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_axes_cover_whole_decades_and_place_values_by_ratio() {
        let axis = LogAxis::over([150.0, 42_000.0].into_iter(), (0.0, 300.0));
        assert_eq!((axis.lo, axis.hi), (100.0, 100_000.0));
        assert_eq!(axis.ticks(), vec![100.0, 1_000.0, 10_000.0, 100_000.0]);
        assert!((axis.x(1_000.0) - 100.0).abs() < 1e-9);
        assert!((axis.x(10_000.0) - 200.0).abs() < 1e-9);
    }

    #[test]
    fn every_figure_drawn_is_one_the_summary_has() {
        use crate::lab::loadgen::StrategySummary;
        for figure in FIGURES_DRAWN {
            assert!(StrategySummary::knows(figure), "`{figure}`");
        }
    }

    #[test]
    fn short_numbers_read_as_people_write_them() {
        assert_eq!(short(1500.0), "1.5k");
        assert_eq!(short(2_000_000.0), "2M");
        assert_eq!(short(0.5), "0.5");
        assert_eq!(short(12.0), "12");
        assert_eq!(short(653.1), "653");
        assert_eq!(short(999_999.0), "1M");
        assert_eq!(short(0.05), "0.05");
        assert_eq!(short(0.0), "0");
    }
}
