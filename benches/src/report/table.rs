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
    /// How this figure compares with the baseline's at the same thread count, below 1 being
    /// faster: the median over rounds of this sample divided by the baseline's sample of the
    /// same round (see [`paired_ratio`]).
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
    /// The implementation the table is about against each other one, round by round, when
    /// the table names one (see [`Table::with_head_to_head`]).
    pub head_to_head: Option<HeadToHead>,
}

/// One implementation against each other one of its table, at every thread count.
#[derive(Debug, Clone, Serialize)]
pub struct HeadToHead {
    /// The implementation compared with the others.
    pub implementation: String,
    /// One per opponent and thread count: opponents in the table's order, each at every
    /// thread count in increasing order.
    pub duels: Vec<Duel>,
}

/// [`HeadToHead::implementation`] against one opponent at one thread count.
#[derive(Debug, Clone, Serialize)]
pub struct Duel {
    /// The other implementation.
    pub opponent: String,
    /// Threads running the workload at once.
    pub threads: usize,
    /// The median of the per-round ratios, the implementation's sample over the opponent's
    /// (see [`paired_ratio`]): below 1 is faster.
    pub median_ratio: f64,
    /// Rounds in which the implementation's sample was the faster one.
    pub rounds_faster: usize,
    /// Rounds compared.
    pub rounds: usize,
}

/// How `samples` compare with `baseline`, the samples of the same rounds in the same order:
/// the median of `samples[i] / baseline[i]`. Where the counts differ (no rounds in common),
/// the ratio of the medians.
///
/// A round's samples are timed one after the other, so a stretch of slow host that takes in
/// a round slows both sides of its ratio, where the ratio of the medians could set a sample
/// from a slow stretch against one from a fast stretch.
pub fn paired_ratio(samples: &[f64], baseline: &[f64]) -> f64 {
    if samples.len() != baseline.len() || samples.is_empty() {
        return median_of(samples) / median_of(baseline);
    }
    let ratios: Vec<f64> = samples.iter().zip(baseline).map(|(s, b)| s / b).collect();
    median_of(&ratios)
}

/// The median (the mean of the middle two for an even count; NaN for none).
fn median_of(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    super::measure::median(values)
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
        let baseline_points: Vec<Point> = series
            .iter()
            .find(|s| s.implementation == baseline)
            .unwrap_or_else(|| panic!("table {id}: baseline {baseline} was not measured"))
            .points
            .clone();
        for point in series.iter_mut().flat_map(|s| s.points.iter_mut()) {
            let base = baseline_points
                .iter()
                .find(|base| base.threads == point.threads)
                .unwrap_or_else(|| panic!("table {id}: no baseline at {}", point.threads));
            point.ratio_to_baseline =
                paired_ratio(&point.samples_ns_per_op, &base.samples_ns_per_op);
        }
        Table {
            id: id.to_string(),
            title,
            note,
            baseline,
            series,
            head_to_head: None,
        }
    }

    /// The table with `focus` (when named) compared with every other implementation, round
    /// by round at each thread count.
    ///
    /// # Panics
    /// If `focus` is not one of the series.
    pub fn with_head_to_head(mut self, focus: Option<&str>) -> Self {
        let Some(focus) = focus else {
            return self;
        };
        let ours = self
            .series
            .iter()
            .find(|s| s.implementation == focus)
            .unwrap_or_else(|| panic!("table {}: {focus} was not measured", self.id));
        let mut duels = Vec::new();
        for other in self.series.iter().filter(|s| s.implementation != focus) {
            for point in &ours.points {
                let Some(theirs) = other.points.iter().find(|p| p.threads == point.threads) else {
                    continue;
                };
                let (mine, their) = (&point.samples_ns_per_op, &theirs.samples_ns_per_op);
                // Samples pair up by round only when both sides have every round.
                let (rounds, rounds_faster) = if mine.len() == their.len() {
                    let faster = mine.iter().zip(their).filter(|(m, t)| m < t).count();
                    (mine.len(), faster)
                } else {
                    (0, 0)
                };
                duels.push(Duel {
                    opponent: other.implementation.clone(),
                    threads: point.threads,
                    median_ratio: paired_ratio(mine, their),
                    rounds_faster,
                    rounds,
                });
            }
        }
        self.head_to_head = Some(HeadToHead {
            implementation: focus.to_string(),
            duels,
        });
        self
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
            "  each cell: median ns per op, then the median of the per-round ratios to {} \
             (below 1x is faster)",
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
        if let Some(head_to_head) = &self.head_to_head {
            write!(f, "{head_to_head}")?;
        }
        Ok(())
    }
}

impl fmt::Display for HeadToHead {
    /// One row per thread count and one column per opponent, each cell the median
    /// per-round ratio and the rounds won.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "  {} against each, round by round: the median of its per-round ratios, then the \
             rounds in which it was faster",
            self.implementation
        )?;
        let mut opponents: Vec<&str> = Vec::new();
        for duel in &self.duels {
            if !opponents.contains(&duel.opponent.as_str()) {
                opponents.push(&duel.opponent);
            }
        }
        let mut threads: Vec<usize> = self.duels.iter().map(|d| d.threads).collect();
        threads.sort_unstable();
        threads.dedup();
        let widths: Vec<usize> = opponents.iter().map(|o| o.len().max(CELL)).collect();
        write!(f, "{:>7}", "threads")?;
        for (opponent, width) in opponents.iter().zip(&widths) {
            write!(f, "  {opponent:>width$}")?;
        }
        writeln!(f)?;
        for threads in threads {
            write!(f, "{threads:>7}")?;
            for (opponent, width) in opponents.iter().zip(&widths) {
                let cell = self
                    .duels
                    .iter()
                    .find(|d| d.threads == threads && d.opponent == *opponent)
                    .map_or_else(String::new, |d| {
                        format!("{:.2}x {}/{}", d.median_ratio, d.rounds_faster, d.rounds)
                    });
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

    /// A table of `series` with ratios to the one named "base".
    fn against_base(series: Vec<Series>) -> Table {
        Table::with_ratios("t", "T".into(), "".into(), "base".into(), series)
    }

    /// A series with one point at one thread, of the samples of three rounds.
    fn rounds(name: &str, samples: [f64; 3]) -> Series {
        Series {
            implementation: name.into(),
            points: vec![Point {
                threads: 1,
                ns_per_op: super::super::measure::median(&samples),
                ratio_to_baseline: f64::NAN,
                samples_ns_per_op: samples.to_vec(),
                ops_per_thread: 1,
            }],
        }
    }

    #[test]
    fn ratios_pair_samples_by_round() {
        // The second round was slow for both; in the third only the baseline was slow.
        // Round by round the first is half the baseline twice and 1.2x once; the ratio of
        // the medians would be 3 / 2.5 = 1.2.
        let table = against_base(vec![
            rounds("fast", [1.0, 3.0, 3.0]),
            rounds("base", [2.0, 6.0, 2.5]),
        ]);
        assert_eq!(table.series[0].points[0].ratio_to_baseline, 0.5);
        assert_eq!(paired_ratio(&[1.0, 2.0], &[4.0]), 1.5 / 4.0);
    }

    #[test]
    fn head_to_head_compares_the_focus_with_each_other_round_by_round() {
        let table = against_base(vec![
            rounds("ours", [2.0, 2.0, 6.0]),
            rounds("peer", [4.0, 1.0, 5.0]),
            rounds("base", [8.0, 8.0, 8.0]),
        ])
        .with_head_to_head(Some("ours"));
        let head = table.head_to_head.as_ref().expect("a focus was named");
        let found: Vec<(&str, f64, usize, usize)> = head
            .duels
            .iter()
            .map(|d| {
                (
                    d.opponent.as_str(),
                    d.median_ratio,
                    d.rounds_faster,
                    d.rounds,
                )
            })
            .collect();
        // Against the peer: 0.5, 2.0 and 1.2, faster in the first round only.
        assert_eq!(found, [("peer", 1.2, 1, 3), ("base", 0.25, 3, 3)]);
        let text = table.to_string();
        assert!(text.contains("ours against each"), "{text}");
        assert!(text.contains("1.20x 1/3"), "{text}");
        assert!(text.contains("0.25x 3/3"), "{text}");
        let unfocused = against_base(vec![rounds("base", [1.0, 1.0, 1.0])]).with_head_to_head(None);
        assert!(unfocused.head_to_head.is_none());
        assert!(!unfocused.to_string().contains("against each"));
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
