//! SVG plots through [`plotters`] (its SVG backend: no system library, no font file): line
//! charts in panels (training curves, memory metrics, throughput), heatmaps (memory cosine
//! similarities, pack-row divergences) and bar charts with error bars (accuracy per arm).
//! Every chart has a title, axis labels and a legend. Open the files in any browser.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::error::{Error, Result};
use crate::params::write_atomic;

/// One line of a chart.
#[derive(Clone, Debug)]
pub struct Series {
    /// Legend label.
    pub label: String,
    /// Points (x, y); non-finite points are skipped.
    pub points: Vec<(f64, f64)>,
    /// Dashed line.
    pub dashed: bool,
}

impl Series {
    /// A solid series.
    pub fn new(label: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Self {
            label: label.into(),
            points,
            dashed: false,
        }
    }
}

/// A panel: title, axis labels and series.
#[derive(Clone, Debug)]
pub struct Panel {
    /// Title above the panel.
    pub title: String,
    /// X axis label.
    pub x_label: String,
    /// Y axis label.
    pub y_label: String,
    /// Lines.
    pub series: Vec<Series>,
    /// Log-scale x axis.
    pub log_x: bool,
}

const PANEL_W: u32 = 560;
const PANEL_H: u32 = 360;

fn color(i: usize) -> RGBColor {
    let (r, g, b) = Palette99::pick(i).to_rgba().rgb();
    RGBColor(r, g, b)
}

fn plot_err<E: std::fmt::Debug>(e: E) -> Error {
    Error::format("<plot>", format!("{e:?}"))
}

/// The range of `v`, widened when empty or flat.
fn range(v: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = v
        .filter(|x| x.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
            (a.min(x), b.max(x))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-12 {
        lo -= 0.5;
        hi += 0.5;
    }
    let pad = 0.05 * (hi - lo);
    (lo - pad, hi + pad)
}

fn draw_panel(area: &DrawingArea<SVGBackend, Shift>, p: &Panel) -> Result<()> {
    let points = || {
        p.series
            .iter()
            .flat_map(|s| s.points.iter().copied())
            .filter(|(x, y)| x.is_finite() && y.is_finite() && (!p.log_x || *x > 0.0))
    };
    let (x0, x1) = range(points().map(|q| q.0));
    let (y0, y1) = range(points().map(|q| q.1));
    let mut chart = ChartBuilder::on(area);
    chart
        .caption(&p.title, ("sans-serif", 15))
        .margin(8)
        .x_label_area_size(36)
        .y_label_area_size(56);
    let style = |s: &Series, i: usize| {
        let c = color(i);
        if s.dashed {
            c.mix(0.6).stroke_width(2)
        } else {
            c.stroke_width(2)
        }
    };
    macro_rules! lines {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc(p.x_label.as_str())
                .y_desc(p.y_label.as_str())
                .label_style(("sans-serif", 11))
                .draw()
                .map_err(plot_err)?;
            for (i, s) in p.series.iter().enumerate() {
                let pts: Vec<(f64, f64)> = s
                    .points
                    .iter()
                    .copied()
                    .filter(|(x, y)| x.is_finite() && y.is_finite() && (!p.log_x || *x > 0.0))
                    .collect();
                let st = style(s, i);
                chart
                    .draw_series(LineSeries::new(pts, st))
                    .map_err(plot_err)?
                    .label(s.label.as_str())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], st));
            }
            if !p.series.is_empty() {
                chart
                    .configure_series_labels()
                    .background_style(WHITE.mix(0.85))
                    .border_style(BLACK.mix(0.3))
                    .label_font(("sans-serif", 11))
                    .draw()
                    .map_err(plot_err)?;
            }
        }};
    }
    if p.log_x {
        let (lo, hi) = (x0.max(1e-12), x1.max(x0.max(1e-12) * 10.0));
        lines!(chart
            .build_cartesian_2d((lo..hi).log_scale(), y0..y1)
            .map_err(plot_err)?);
    } else {
        lines!(chart.build_cartesian_2d(x0..x1, y0..y1).map_err(plot_err)?);
    }
    Ok(())
}

/// Panels on a grid of `cols` columns, as one SVG document.
pub fn panels_svg(panels: &[Panel], cols: usize) -> Result<String> {
    let cols = cols.clamp(1, panels.len().max(1));
    let rows = panels.len().div_ceil(cols).max(1);
    let mut out = String::new();
    {
        let root =
            SVGBackend::with_string(&mut out, (PANEL_W * cols as u32, PANEL_H * rows as u32))
                .into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let areas = root.split_evenly((rows, cols));
        for (p, area) in panels.iter().zip(areas.iter()) {
            draw_panel(area, p)?;
        }
        root.present().map_err(plot_err)?;
    }
    Ok(out)
}

/// Writes [`panels_svg`] to `path` atomically.
pub fn write_panels(path: &Path, panels: &[Panel], cols: usize) -> Result<()> {
    write_atomic(path, panels_svg(panels, cols)?.as_bytes())
}

/// A heatmap of a square matrix with values in [−1, 1] (blue → white → red), e.g. cosine
/// similarities of memory vectors, with a colour scale.
pub fn heatmap_svg(title: &str, m: &[Vec<f64>]) -> Result<String> {
    heatmap_range_svg(title, m, -1.0)
}

/// A heatmap of a square matrix with values in [0, 1] (white → red), e.g. divergences.
pub fn heatmap_unit_svg(title: &str, m: &[Vec<f64>]) -> Result<String> {
    heatmap_range_svg(title, m, 0.0)
}

fn heatmap_range_svg(title: &str, m: &[Vec<f64>], lo: f64) -> Result<String> {
    let n = m.len().max(1);
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (600, 520)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let (main, legend) = root.split_horizontally(520);
        let shade = |v: f64| {
            let v = if v.is_finite() {
                v.clamp(-1.0, 1.0)
            } else {
                0.0
            };
            let (r, g, b) = if v >= 0.0 {
                (255.0, 255.0 * (1.0 - v), 255.0 * (1.0 - v))
            } else {
                (255.0 * (1.0 + v), 255.0 * (1.0 + v), 255.0)
            };
            RGBColor(r as u8, g as u8, b as u8)
        };
        let mut chart = ChartBuilder::on(&main)
            .caption(title, ("sans-serif", 14))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(36)
            .build_cartesian_2d(0..n, n..0)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("slot")
            .y_desc("slot")
            .label_style(("sans-serif", 10))
            .draw()
            .map_err(plot_err)?;
        chart
            .draw_series(m.iter().enumerate().flat_map(|(i, row)| {
                row.iter()
                    .enumerate()
                    .map(move |(j, v)| Rectangle::new([(j, i), (j + 1, i + 1)], shade(*v).filled()))
            }))
            .map_err(plot_err)?;
        // colour scale
        let mut scale = ChartBuilder::on(&legend)
            .margin_top(40)
            .margin_bottom(40)
            .y_label_area_size(34)
            .build_cartesian_2d(0..1, lo..1.0)
            .map_err(plot_err)?;
        scale
            .configure_mesh()
            .disable_mesh()
            .disable_x_axis()
            .label_style(("sans-serif", 10))
            .draw()
            .map_err(plot_err)?;
        scale
            .draw_series((0..40).map(|k| {
                let step = (1.0 - lo) / 40.0;
                let v0 = lo + k as f64 * step;
                Rectangle::new([(0, v0), (1, v0 + step)], shade(v0 + step / 2.0).filled())
            }))
            .map_err(plot_err)?;
        root.present().map_err(plot_err)?;
    }
    Ok(out)
}

/// A bar chart with error bars (e.g. mean ± 95 % CI per arm) and an optional dashed
/// reference line (e.g. the majority class).
pub fn bars_svg(
    title: &str,
    y_label: &str,
    bars: &[(String, f64, f64)],
    reference: Option<(f64, &str)>,
) -> Result<String> {
    let n = bars.len().max(1);
    let mut out = String::new();
    {
        let w = (110 * n as u32 + 140).max(420);
        let root = SVGBackend::with_string(&mut out, (w, 380)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let (lo, hi) = range(
            bars.iter()
                .flat_map(|(_, m, c)| [m - c, m + c])
                .chain(reference.map(|r| r.0))
                .chain(std::iter::once(0.0)),
        );
        let labels: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 15))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d((0..n).into_segmented(), lo.min(0.0)..hi)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n)
            .x_label_formatter(&|x| match x {
                SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
                _ => String::new(),
            })
            .y_desc(y_label)
            .label_style(("sans-serif", 11))
            .draw()
            .map_err(plot_err)?;
        for (i, (name, m, c)) in bars.iter().enumerate() {
            chart
                .draw_series(std::iter::once(
                    Rectangle::new(
                        [
                            (SegmentValue::Exact(i), 0.0),
                            (SegmentValue::Exact(i + 1), *m),
                        ],
                        color(i).mix(0.75).filled(),
                    )
                    .into_dyn(),
                ))
                .map_err(plot_err)?
                .label(format!("{name}: {m:.3} ± {c:.3}"))
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], color(i).filled())
                });
            chart
                .draw_series(std::iter::once(ErrorBar::new_vertical(
                    SegmentValue::CenterOf(i),
                    m - c,
                    *m,
                    m + c,
                    BLACK.stroke_width(1),
                    12,
                )))
                .map_err(plot_err)?;
        }
        if let Some((r, label)) = reference {
            chart
                .draw_series(DashedLineSeries::new(
                    vec![(SegmentValue::Exact(0), r), (SegmentValue::Last, r)],
                    6,
                    4,
                    BLACK.mix(0.6).stroke_width(1),
                ))
                .map_err(plot_err)?
                .label(format!("{label}: {r:.3}"))
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK.mix(0.6)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .label_font(("sans-serif", 10))
            .draw()
            .map_err(plot_err)?;
        root.present().map_err(plot_err)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_have_titles_axis_labels_and_legends() {
        let p = Panel {
            title: "loss".into(),
            x_label: "step".into(),
            y_label: "cross-entropy".into(),
            series: vec![
                Series::new("train", vec![(1.0, 2.0), (2.0, 1.5), (3.0, f64::NAN)]),
                Series::new("val", vec![(1.0, 2.1), (3.0, 1.4)]),
            ],
            log_x: false,
        };
        let svg = panels_svg(&[p.clone(), Panel { log_x: true, ..p }], 2).unwrap();
        for text in ["loss", "step", "cross-entropy", "train", "val"] {
            assert!(svg.contains(text), "missing `{text}`");
        }
        let h = heatmap_svg("cosine", &[vec![1.0, -0.5], vec![-0.5, 1.0]]).unwrap();
        assert!(h.contains("cosine") && h.contains("slot") && h.contains("<rect"));
        let b = bars_svg(
            "accuracy",
            "test accuracy",
            &[("luna".into(), 0.3, 0.02), ("convluna".into(), 0.35, 0.01)],
            Some((0.12, "majority class")),
        )
        .unwrap();
        for text in ["accuracy", "luna", "convluna", "majority class"] {
            assert!(b.contains(text), "missing `{text}`");
        }
        // empty inputs still give a valid document
        assert!(panels_svg(&[], 1).unwrap().contains("<svg"));
    }
}
