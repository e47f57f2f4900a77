//! A measured table: figures per implementation and thread count, their ratios to the
//! baseline, and the text layout that puts them side by side.

use serde::Serialize;
use std::fmt;

/// One figure.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    /// Threads running the workload at once.
    pub threads: usize,
    /// Median nanoseconds per operation of aggregate throughput (wall time divided by the
    /// operations of all threads).
    pub ns_per_op: f64,
    /// `ns_per_op` divided by the baseline's at the same thread count: below 1 is faster.
    pub ratio_to_baseline: f64,
    /// Every timed run's nanoseconds per operation, in the order measured.
    pub samples_ns_per_op: Vec<f64>,
    /// Operations each thread did in one timed run.
    pub ops_per_thread: u64,
}

/// One implementation's figures across thread counts.
#[derive(Debug, Clone, Serialize)]
pub struct Series {
    /// The implementation's name.
    pub implementation: String,
    /// One point per thread count, in increasing order.
    pub points: Vec<Point>,
}

/// Implementations compared on one workload.
#[derive(Debug, Clone, Serialize)]
pub struct Table {
    /// A short stable identifier (JSON key, plot file name).
    pub id: String,
    /// The heading.
    pub title: String,
    /// What one operation is.
    pub note: String,
    /// The implementation every ratio is taken against.
    pub baseline: String,
    /// One series per implementation, in the order measured.
    pub series: Vec<Series>,
}

impl Table {
    /// A table of `series`, with every point's ratio to `baseline` (which must be one of the
    /// series, measured at the same thread counts) filled in.
    pub fn with_ratios(
        id: &str,
        title: String,
        note: String,
        baseline: String,
        mut series: Vec<Series>,
    ) -> Self {
        let baseline_ns: Vec<(usize, f64)> = series
            .iter()
            .find(|s| s.implementation == baseline)
            .unwrap_or_else(|| panic!("table {id}: baseline {baseline} was not measured"))
            .points
            .iter()
            .map(|p| (p.threads, p.ns_per_op))
            .collect();
        for point in series.iter_mut().flat_map(|s| s.points.iter_mut()) {
            let &(_, base) = baseline_ns
                .iter()
                .find(|&&(threads, _)| threads == point.threads)
                .unwrap_or_else(|| panic!("table {id}: no baseline at {}", point.threads));
            point.ratio_to_baseline = point.ns_per_op / base;
        }
        Table {
            id: id.to_string(),
            title,
            note,
            baseline,
            series,
        }
    }

    /// The thread counts of the table's rows.
    pub fn threads(&self) -> Vec<usize> {
        self.series
            .first()
            .map(|s| s.points.iter().map(|p| p.threads).collect())
            .unwrap_or_default()
    }
}

/// `text` broken at spaces into lines of at most `width` characters (longer words stay
/// whole).
pub fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

/// Width of one figure cell: `nnnnnn.nn ns n.nnx`.
const CELL: usize = 17;

impl fmt::Display for Table {
    /// The heading, the note, then one row per thread count and one column per
    /// implementation, each cell "ns/op ratio".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.title)?;
        for line in wrap(&self.note, 96) {
            writeln!(f, "  {line}")?;
        }
        writeln!(
            f,
            "  each cell: median ns per op, then ratio to {} (below 1x is faster)",
            self.baseline
        )?;
        let widths: Vec<usize> = self
            .series
            .iter()
            .map(|s| s.implementation.len().max(CELL))
            .collect();
        write!(f, "{:>7}", "threads")?;
        for (series, width) in self.series.iter().zip(&widths) {
            write!(f, "  {:>width$}", series.implementation)?;
        }
        writeln!(f)?;
        for (row, threads) in self.threads().into_iter().enumerate() {
            write!(f, "{threads:>7}")?;
            for (series, width) in self.series.iter().zip(&widths) {
                let point = &series.points[row];
                let cell = format!(
                    "{:.2} ns {:>5.2}x",
                    point.ns_per_op, point.ratio_to_baseline
                );
                write!(f, "  {cell:>width$}")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(name: &str, ns: &[(usize, f64)]) -> Series {
        Series {
            implementation: name.into(),
            points: ns
                .iter()
                .map(|&(threads, ns_per_op)| Point {
                    threads,
                    ns_per_op,
                    ratio_to_baseline: f64::NAN,
                    samples_ns_per_op: vec![ns_per_op],
                    ops_per_thread: 1,
                })
                .collect(),
        }
    }

    #[test]
    fn ratios_are_to_the_baseline_at_the_same_thread_count() {
        let table = Table::with_ratios(
            "t",
            "T".into(),
            "one op".into(),
            "base".into(),
            vec![
                series("fast", &[(1, 1.0), (2, 3.0)]),
                series("base", &[(1, 4.0), (2, 6.0)]),
            ],
        );
        let ratios: Vec<f64> = table
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.ratio_to_baseline))
            .collect();
        assert_eq!(ratios, [0.25, 0.5, 1.0, 1.0]);
        let text = table.to_string();
        assert!(text.contains("1.00 ns  0.25x"), "{text}");
        assert!(text.contains("6.00 ns  1.00x"), "{text}");
    }

    #[test]
    fn notes_wrap_at_spaces() {
        assert_eq!(wrap("aa bb cc dd", 5), ["aa bb", "cc dd"]);
        assert_eq!(wrap("a verylongword b", 4), ["a", "verylongword", "b"]);
        assert!(wrap("", 10).is_empty());
    }

    #[test]
    #[should_panic(expected = "baseline")]
    fn a_missing_baseline_is_an_error() {
        Table::with_ratios(
            "t",
            "T".into(),
            "".into(),
            "absent".into(),
            vec![series("fast", &[(1, 1.0)])],
        );
    }
}
