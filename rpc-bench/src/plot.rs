//! Pictures of a sweep: calls/s and p99 latency against the number of clients, one line per
//! scenario, as SVG files (plotters' SVG backend; nothing else is drawn).

use std::path::Path;

use plotters::prelude::*;

use crate::stats::Summary;

/// One line: a scenario's name and its summaries in increasing client counts.
pub type Series<'a> = (&'a str, Vec<&'a Summary>);

const COLORS: [RGBColor; 4] =
    [RGBColor(90, 90, 90), RGBColor(31, 119, 180), RGBColor(214, 39, 40), RGBColor(44, 160, 44)];

/// Draws `value` of every series against its concurrency (clients, calls in flight; log scale)
/// into `path`.
///
/// # Errors
/// When the file cannot be written.
pub fn draw(
    path: &Path,
    title: &str,
    y_label: &str,
    x_label: &str,
    series: &[Series<'_>],
    value: impl Fn(&Summary) -> f64,
) -> Result<(), String> {
    let max_clients = series.iter().flat_map(|(_, s)| s.iter().map(|r| r.concurrency)).max().unwrap_or(1) as f64;
    let max_y = series.iter().flat_map(|(_, s)| s.iter().map(|r| value(r))).fold(0.0_f64, f64::max) * 1.1;
    let root = SVGBackend::new(path, (720, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d((1.0..max_clients * 1.2).log_scale(), 0.0..max_y.max(1.0))
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, (name, rows)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points: Vec<(f64, f64)> = rows.iter().map(|r| (r.concurrency as f64, value(r))).collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        chart.draw_series(points.iter().map(|p| Circle::new(*p, 3, color.filled()))).map_err(|e| e.to_string())?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}
