//! Dependency-free SVG plots: line charts (training curves, throughput) and heatmaps (memory
//! cosine similarity). Open the files in any browser.

use std::fmt::Write as _;
use std::path::Path;

use crate::error::Result;
use crate::params::write_atomic;

const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

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

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn nice_ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    if hi.partial_cmp(&lo) != Some(std::cmp::Ordering::Greater) {
        return vec![lo];
    }
    let raw = (hi - lo) / n as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(raw);
    let start = (lo / step).ceil() * step;
    let mut v = Vec::new();
    let mut t = start;
    while t <= hi + step * 1e-9 {
        v.push(if t.abs() < step * 1e-9 { 0.0 } else { t });
        t += step;
    }
    v
}

fn fmt_tick(v: f64) -> String {
    if v != 0.0 && (v.abs() >= 1e5 || v.abs() < 1e-3) {
        format!("{v:.1e}")
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').to_string()
    }
}

fn panel_svg(out: &mut String, p: &Panel, ox: f64, oy: f64, w: f64, h: f64) {
    let (ml, mr, mt, mb) = (60.0, 150.0, 28.0, 42.0);
    let (pw, ph) = (w - ml - mr, h - mt - mb);
    let tx = |x: f64| if p.log_x { x.max(1e-300).log10() } else { x };
    let pts: Vec<(f64, f64)> = p
        .series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    let (mut x0, mut x1, mut y0, mut y1) = (
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::INFINITY,
        f64::NEG_INFINITY,
    );
    for (x, y) in &pts {
        x0 = x0.min(tx(*x));
        x1 = x1.max(tx(*x));
        y0 = y0.min(*y);
        y1 = y1.max(*y);
    }
    if pts.is_empty() {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if y1 <= y0 {
        y1 = y0 + 1.0;
    }
    let pad = (y1 - y0) * 0.05;
    let (y0, y1) = (y0 - pad, y1 + pad);
    let sx = |x: f64| ox + ml + (tx(x) - x0) / (x1 - x0) * pw;
    let sy = |y: f64| oy + mt + ph - (y - y0) / (y1 - y0) * ph;
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" font-size="14" text-anchor="middle" font-weight="bold">{}</text>"#,
        ox + ml + pw / 2.0,
        oy + 18.0,
        esc(&p.title)
    );
    let _ = writeln!(
        out,
        r##"<rect x="{}" y="{}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>"##,
        ox + ml,
        oy + mt
    );
    for t in nice_ticks(y0, y1, 5) {
        let y = sy(t);
        let _ = writeln!(
            out,
            r##"<line x1="{}" x2="{}" y1="{y}" y2="{y}" stroke="#ddd"/><text x="{}" y="{}" font-size="11" text-anchor="end">{}</text>"##,
            ox + ml,
            ox + ml + pw,
            ox + ml - 4.0,
            y + 4.0,
            fmt_tick(t)
        );
    }
    let xt: Vec<f64> = if p.log_x {
        let (a, b) = (x0.floor() as i32, x1.ceil() as i32);
        (a..=b)
            .map(|e| 10f64.powi(e))
            .filter(|v| tx(*v) >= x0 - 1e-9 && tx(*v) <= x1 + 1e-9)
            .collect()
    } else {
        nice_ticks(x0, x1, 6)
    };
    for t in xt {
        let x = sx(t);
        let _ = writeln!(
            out,
            r##"<line x1="{x}" x2="{x}" y1="{}" y2="{}" stroke="#eee"/><text x="{x}" y="{}" font-size="11" text-anchor="middle">{}</text>"##,
            oy + mt,
            oy + mt + ph,
            oy + mt + ph + 15.0,
            fmt_tick(t)
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" font-size="12" text-anchor="middle">{}</text>"#,
        ox + ml + pw / 2.0,
        oy + h - 8.0,
        esc(&p.x_label)
    );
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" font-size="12" text-anchor="middle" transform="rotate(-90 {} {})">{}</text>"#,
        ox + 14.0,
        oy + mt + ph / 2.0,
        ox + 14.0,
        oy + mt + ph / 2.0,
        esc(&p.y_label)
    );
    for (i, s) in p.series.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let path: Vec<String> = s
            .points
            .iter()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
            .collect();
        let dash = if s.dashed {
            r#" stroke-dasharray="5,3""#
        } else {
            ""
        };
        if path.len() == 1 {
            let (x, y) = path[0].split_once(',').unwrap_or(("0", "0"));
            let _ = writeln!(out, r#"<circle cx="{x}" cy="{y}" r="3" fill="{c}"/>"#);
        } else if !path.is_empty() {
            let _ = writeln!(
                out,
                r#"<polyline fill="none" stroke="{c}" stroke-width="1.6"{dash} points="{}"/>"#,
                path.join(" ")
            );
        }
        let ly = oy + mt + 12.0 + 16.0 * i as f64;
        let lx = ox + ml + pw + 10.0;
        let _ = writeln!(
            out,
            r#"<line x1="{lx}" x2="{}" y1="{ly}" y2="{ly}" stroke="{c}" stroke-width="2"{dash}/><text x="{}" y="{}" font-size="11">{}</text>"#,
            lx + 18.0,
            lx + 22.0,
            ly + 4.0,
            esc(&s.label)
        );
    }
}

/// Renders panels in a grid with `cols` columns into an SVG string.
pub fn panels_svg(panels: &[Panel], cols: usize) -> String {
    let cols = cols.max(1);
    let rows = panels.len().div_ceil(cols).max(1);
    let (w, h) = (520.0, 300.0);
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" font-family="sans-serif"><rect width="100%" height="100%" fill="white"/>"#,
        w * cols as f64,
        h * rows as f64
    );
    for (i, p) in panels.iter().enumerate() {
        panel_svg(
            &mut out,
            p,
            (i % cols) as f64 * w,
            (i / cols) as f64 * h,
            w,
            h,
        );
    }
    out.push_str("</svg>\n");
    out
}

/// Writes panels to an SVG file (atomically).
pub fn write_panels(path: &Path, panels: &[Panel], cols: usize) -> Result<()> {
    write_atomic(path, panels_svg(panels, cols).as_bytes())
}

/// A heatmap of a square matrix with values in [−1, 1] (blue → white → red), e.g. cosine
/// similarities of memory vectors.
pub fn heatmap_svg(title: &str, m: &[Vec<f64>]) -> String {
    let n = m.len().max(1);
    let cell = (480.0 / n as f64).clamp(2.0, 40.0);
    let size = cell * n as f64;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" font-family="sans-serif"><rect width="100%" height="100%" fill="white"/>"#,
        size + 120.0,
        size + 50.0
    );
    let _ = writeln!(
        out,
        r#"<text x="{}" y="18" font-size="14" text-anchor="middle" font-weight="bold">{}</text>"#,
        (size + 40.0) / 2.0,
        esc(title)
    );
    let color = |v: f64| {
        let v = v.clamp(-1.0, 1.0);
        let (r, g, b) = if v >= 0.0 {
            (255.0, 255.0 * (1.0 - v), 255.0 * (1.0 - v))
        } else {
            (255.0 * (1.0 + v), 255.0 * (1.0 + v), 255.0)
        };
        format!("rgb({:.0},{:.0},{:.0})", r, g, b)
    };
    for (i, row) in m.iter().enumerate() {
        for (j, v) in row.iter().enumerate() {
            let _ = writeln!(
                out,
                r#"<rect x="{:.2}" y="{:.2}" width="{cell:.2}" height="{cell:.2}" fill="{}"/>"#,
                20.0 + j as f64 * cell,
                30.0 + i as f64 * cell,
                color(*v)
            );
        }
    }
    for (k, v) in [1.0, 0.5, 0.0, -0.5, -1.0].iter().enumerate() {
        let y = 30.0 + k as f64 * 20.0;
        let _ = writeln!(
            out,
            r##"<rect x="{}" y="{y}" width="16" height="16" fill="{}" stroke="#888"/><text x="{}" y="{}" font-size="11">{v}</text>"##,
            size + 40.0,
            color(*v),
            size + 60.0,
            y + 12.0
        );
    }
    out.push_str("</svg>\n");
    out
}

/// A bar chart with error bars (e.g. mean ± 95 % CI per ablation arm).
pub fn bars_svg(
    title: &str,
    y_label: &str,
    bars: &[(String, f64, f64)],
    reference: Option<(f64, &str)>,
) -> String {
    let (w, h, ml, mb, mt) = (
        120.0 * bars.len().max(1) as f64 + 120.0,
        340.0,
        70.0,
        60.0,
        34.0,
    );
    let ph = h - mb - mt;
    let mut hi = bars
        .iter()
        .map(|(_, m, c)| m + c)
        .fold(f64::NEG_INFINITY, f64::max);
    let mut lo = bars
        .iter()
        .map(|(_, m, c)| m - c)
        .fold(f64::INFINITY, f64::min)
        .min(0.0);
    if let Some((r, _)) = reference {
        hi = hi.max(r);
        lo = lo.min(r);
    }
    if hi.partial_cmp(&lo) != Some(std::cmp::Ordering::Greater) {
        hi = lo + 1.0;
    }
    let hi = hi + 0.08 * (hi - lo);
    let sy = |v: f64| mt + ph - (v - lo) / (hi - lo) * ph;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif"><rect width="100%" height="100%" fill="white"/>"#
    );
    let _ = writeln!(
        out,
        r#"<text x="{}" y="20" font-size="14" text-anchor="middle" font-weight="bold">{}</text>"#,
        w / 2.0,
        esc(title)
    );
    for t in nice_ticks(lo, hi, 5) {
        let _ = writeln!(
            out,
            r##"<line x1="{ml}" x2="{}" y1="{y}" y2="{y}" stroke="#ddd"/><text x="{}" y="{}" font-size="11" text-anchor="end">{}</text>"##,
            w - 20.0,
            ml - 4.0,
            sy(t) + 4.0,
            fmt_tick(t),
            y = sy(t)
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="16" y="{}" font-size="12" text-anchor="middle" transform="rotate(-90 16 {})">{}</text>"#,
        mt + ph / 2.0,
        mt + ph / 2.0,
        esc(y_label)
    );
    for (i, (label, m, c)) in bars.iter().enumerate() {
        let x = ml + 20.0 + 120.0 * i as f64;
        let col = COLORS[i % COLORS.len()];
        let _ = writeln!(
            out,
            r#"<rect x="{x}" y="{}" width="70" height="{}" fill="{col}" opacity="0.8"/>"#,
            sy(*m).min(sy(0.0_f64.max(lo))),
            (sy(0.0_f64.max(lo)) - sy(*m)).abs()
        );
        let cx = x + 35.0;
        let _ = writeln!(
            out,
            r##"<line x1="{cx}" x2="{cx}" y1="{}" y2="{}" stroke="#000" stroke-width="1.5"/><line x1="{}" x2="{}" y1="{}" y2="{}" stroke="#000"/><line x1="{}" x2="{}" y1="{}" y2="{}" stroke="#000"/>"##,
            sy(m - c),
            sy(m + c),
            cx - 8.0,
            cx + 8.0,
            sy(m - c),
            sy(m - c),
            cx - 8.0,
            cx + 8.0,
            sy(m + c),
            sy(m + c)
        );
        let _ = writeln!(
            out,
            r#"<text x="{cx}" y="{}" font-size="11" text-anchor="middle">{}</text><text x="{cx}" y="{}" font-size="10" text-anchor="middle">{:.3} ± {:.3}</text>"#,
            h - mb + 16.0,
            esc(label),
            h - mb + 30.0,
            m,
            c
        );
    }
    if let Some((r, name)) = reference {
        let _ = writeln!(
            out,
            r##"<line x1="{ml}" x2="{}" y1="{y}" y2="{y}" stroke="#555" stroke-dasharray="6,4"/><text x="{}" y="{}" font-size="11" text-anchor="end">{}</text>"##,
            w - 20.0,
            w - 22.0,
            sy(r) - 4.0,
            esc(name),
            y = sy(r)
        );
    }
    out.push_str("</svg>\n");
    out
}
