//! One SVG line plot per table: ns per op against threads, one line per implementation,
//! both axes logarithmic.

use super::table::Table;
use plotters::prelude::*;
use std::io;
use std::path::Path;

/// Line colours for the implementations other than the baseline (drawn black): distinct on
/// white, none pale.
const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

fn plot_error(error: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("plotting failed: {error}"))
}

/// Draw `table` to an SVG file at `path`.
pub fn write_svg(table: &Table, path: &Path) -> io::Result<()> {
    let points = || table.series.iter().flat_map(|s| s.points.iter());
    let (mut x_lo, mut x_hi) = (f64::INFINITY, 0f64);
    let (mut y_lo, mut y_hi) = (f64::INFINITY, 0f64);
    for point in points() {
        x_lo = x_lo.min(point.threads as f64);
        x_hi = x_hi.max(point.threads as f64);
        y_lo = y_lo.min(point.ns_per_op);
        y_hi = y_hi.max(point.ns_per_op);
    }
    if !(y_lo > 0.0 && y_hi.is_finite() && x_lo >= 1.0) {
        return Err(plot_error(format!(
            "table {} has nothing to plot",
            table.id
        )));
    }
    // Padding keeps the end points off the frame (and a single thread count drawable).
    let x_range = (x_lo / 1.3..x_hi * 1.3).log_scale().base(2.0);
    let y_range = (y_lo / 1.5..y_hi * 1.5).log_scale();

    let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(&table.title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(72)
        .build_cartesian_2d(x_range, y_range)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc("threads")
        .y_desc("ns per op (median, log scale)")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y}"))
        .draw()
        .map_err(plot_error)?;
    let mut others = COLORS.iter().cycle();
    for series in &table.series {
        let color = if series.implementation == table.baseline {
            BLACK
        } else {
            *others.next().expect("a cycle never ends")
        };
        let line: Vec<(f64, f64)> = series
            .points
            .iter()
            .map(|p| (p.threads as f64, p.ns_per_op))
            .collect();
        let label = if series.implementation == table.baseline {
            format!("{} (baseline)", series.implementation)
        } else {
            series.implementation.clone()
        };
        chart
            .draw_series(LineSeries::new(line.iter().copied(), color.stroke_width(2)))
            .map_err(plot_error)?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(line.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(plot_error)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(plot_error)?;
    root.present().map_err(plot_error)
}
