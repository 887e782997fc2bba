//! Pathfinder and Path-X: a seeded generator after Linsley et al.'s `snakes2` with the LRA
//! 32×32 settings, the official on-disk layout (`imgs/<batch>/sample_<i>.png` and
//! `metadata/<batch>.npy`, a text file with one space-separated row per image, label in field 3)
//! and a streaming reader.
//!
//! The generator is here; the on-disk format (PNG images, metadata files, the reader) is in
//! [the `format` module](mod@format).
//!
//! # The generator
//! Two target "snakes" of `contour_length` dashes ("paddles") start `seed_distance` apart near
//! the centre, then `num_distractors` short snakes of `distractor_length` dashes are added where
//! they fit (a distractor that cannot be placed after `max_distractor_retrial` tries is left
//! out, as in `snakes2`). Each paddle is a segment of `paddle_length` pixels; the next one
//! starts `paddle_margin` pixels further along the previous direction and turns by Δ, a
//! multiple of 5° drawn with weight cos²(min(|Δ|·continuity, 90°)) among the turns that fit.
//! Two marker discs of radius `marker_radius` go on the snake tips: on both ends of one target
//! (label 1) or on one end of each (label 0), label ~ Bernoulli(½).
//!
//! Rendering (own choice; `snakes2` draws with PIL and resizes with Lanczos): a pixel's value is
//! 255·clamp((r + w − d) / w, 0, 1), d the distance of its centre to the segment (or marker
//! centre), r half the thickness (or the marker radius) and w = 1/`antialias`.
//! Guarantees used by the tests: each snake (with its marker) is one 8-connected set of lit
//! pixels, and lit pixels of different snakes are never 8-adjacent (a snake keeps one blank
//! pixel of clearance from the others and from the marker zones at the target tips), so the
//! label is exactly whether the two markers are connected in the image.
//!
//! Trigonometry comes from [`crate::data::sin_cos_deg`] (basic IEEE operations only) and
//! every sample has its own random stream `Rng::stream(seed, index)`, so images are identical
//! on every platform and can be generated in parallel.

use std::sync::Arc;

use super::{index_error, split_contiguous, Dataset, DatasetInfo, Example, Sequence, Splits};
use crate::error::{Error, Result};
use crate::rng::{sin_cos_deg, Rng, RngExt};

pub mod format;
pub use format::{
    decode_grey_png, encode_grey_png, parse_metadata_row, read_pathfinder_dir,
    write_pathfinder_batch, write_pathfinder_dir, MetadataRow, PngDataset,
};

/// Settings of the Pathfinder generator (lengths in output pixels).
#[derive(Clone, Debug, PartialEq)]
pub struct PathfinderConfig {
    /// Image side (32 for Pathfinder, 128 for Path-X).
    pub size: usize,
    /// Paddles per target snake (6 easy, 9 intermediate, 14 hard).
    pub contour_length: usize,
    /// Paddles per distractor snake (`contour_length / 3`).
    pub distractor_length: usize,
    /// Distractor snakes (`20 / (contour_length / 3)`).
    pub num_distractors: usize,
    /// Length of one paddle.
    pub paddle_length: f64,
    /// Thickness of a paddle.
    pub paddle_thickness: f64,
    /// Gap between consecutive paddles.
    pub paddle_margin: f64,
    /// Curvature control: turn Δ has weight cos²(min(|Δ|·continuity, 90°)).
    pub continuity: f64,
    /// Antialiasing scale: the edge ramp is 1/antialias pixels wide.
    pub antialias: f64,
    /// Distance between the starting tips of the two targets.
    pub seed_distance: f64,
    /// Radius of the marker discs.
    pub marker_radius: f64,
    /// Paddle end points stay this far from the border.
    pub padding: f64,
    /// Tries per distractor before it is left out.
    pub max_distractor_retrial: usize,
}

/// Turn step in degrees.
const TURN_STEP: i32 = 5;
/// Pair placements tried before giving up on a sample.
const MAX_PAIR_TRIES: usize = 2000;
/// Seed positions tried per distractor attempt.
const SEED_TRIES: usize = 10;
/// `pidx` of a reserved marker zone.
const DISC: u16 = u16::MAX;

impl PathfinderConfig {
    /// The LRA 32×32 settings with `contour_length` paddles per target: paddle length 2,
    /// thickness 0.5, margin 1, continuity 1.0, antialias 2, seed distance 7, marker radius
    /// 1.5, `20 / (contour_length / 3)` distractors of `contour_length / 3` paddles.
    pub fn lra32(contour_length: usize) -> Self {
        let dl = (contour_length / 3).max(1);
        PathfinderConfig {
            size: 32,
            contour_length,
            distractor_length: dl,
            num_distractors: 20 / dl,
            paddle_length: 2.0,
            paddle_thickness: 0.5,
            paddle_margin: 1.0,
            continuity: 1.0,
            antialias: 2.0,
            seed_distance: 7.0,
            marker_radius: 1.5,
            padding: 1.0,
            max_distractor_retrial: 4,
        }
    }

    /// Contour length 6 (`curv_baseline`).
    pub fn easy() -> Self {
        Self::lra32(6)
    }

    /// Contour length 9 (`curv_contour_length_9`).
    pub fn intermediate() -> Self {
        Self::lra32(9)
    }

    /// Contour length 14 (`curv_contour_length_14`, the LRA Pathfinder task).
    pub fn hard() -> Self {
        Self::lra32(14)
    }

    /// Path-X, 128×128, with `contour_length` paddles per target. The generation settings of
    /// the released Path-X are not published with LRA; these are the 32×32 ones with paddles
    /// and distances scaled by 4 except the margin (kept at 1 px so that dashes stay
    /// connected), and thicker lines (1.5 px).
    pub fn path_x(contour_length: usize) -> Self {
        PathfinderConfig {
            size: 128,
            paddle_length: 8.0,
            paddle_thickness: 1.5,
            paddle_margin: 1.0,
            seed_distance: 28.0,
            marker_radius: 4.0,
            padding: 3.0,
            ..Self::lra32(contour_length)
        }
    }

    /// The settings for a difficulty name (`easy`, `intermediate`, `hard`) and image side
    /// (32, or 128 for Path-X).
    pub fn from_difficulty(name: &str, size: usize) -> Result<Self> {
        let cl = match name {
            "easy" | "baseline" => 6,
            "intermediate" => 9,
            "hard" => 14,
            _ => {
                return Err(Error::UnknownPreset {
                    name: name.into(),
                    known: "easy, intermediate, hard".into(),
                });
            }
        };
        match size {
            32 => Ok(Self::lra32(cl)),
            128 => Ok(Self::path_x(cl)),
            _ => Err(Error::config("pathfinder.size", "must be 32 or 128")),
        }
    }

    /// The official difficulty folder name: `curv_baseline` (6) or `curv_contour_length_<n>`.
    pub fn dir_name(&self) -> String {
        if self.contour_length == 6 {
            "curv_baseline".into()
        } else {
            format!("curv_contour_length_{}", self.contour_length)
        }
    }

    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("paddle_length", self.paddle_length),
            ("paddle_thickness", self.paddle_thickness),
            ("continuity", self.continuity),
            ("antialias", self.antialias),
            ("marker_radius", self.marker_radius),
            ("seed_distance", self.seed_distance),
        ];
        for (name, v) in positive {
            if !(v.is_finite() && v > 0.0) {
                return Err(Error::config(
                    format!("pathfinder.{name}"),
                    "must be positive and finite",
                ));
            }
        }
        if !(self.paddle_margin.is_finite()
            && self.paddle_margin >= 0.0
            && self.padding.is_finite()
            && self.padding >= 0.0)
        {
            return Err(Error::config(
                "pathfinder.paddle_margin",
                "margin and padding must be finite and non-negative",
            ));
        }
        if self.size < 8 || self.size > 4096 {
            return Err(Error::config("pathfinder.size", "must be in 8..=4096"));
        }
        if self.contour_length == 0 || self.contour_length > 1000 || self.distractor_length > 1000 {
            return Err(Error::config(
                "pathfinder.contour_length",
                "must be in 1..=1000",
            ));
        }
        if self.num_distractors > 10_000 {
            return Err(Error::config(
                "pathfinder.num_distractors",
                "must be at most 10000",
            ));
        }
        if self.padding * 2.0 + 2.0 >= self.size as f64 {
            return Err(Error::config(
                "pathfinder.padding",
                "leaves no room in the image",
            ));
        }
        Ok(())
    }

    fn name(&self) -> String {
        let difficulty = match self.contour_length {
            6 => "easy".to_string(),
            9 => "intermediate".to_string(),
            14 => "hard".to_string(),
            n => format!("contour length {n}"),
        };
        format!("pathfinder{} {difficulty} (generated)", self.size)
    }
}

#[derive(Clone, Copy, Debug)]
struct Paddle {
    a: (f64, f64),
    b: (f64, f64),
    theta: i32,
}

/// Per-image occupancy: which snake lit a pixel, and with which paddle.
struct Canvas {
    n: usize,
    owner: Vec<u16>,
    pidx: Vec<u16>,
    journal: Vec<(u32, u16, u16)>,
    w: f64,
}

impl Canvas {
    fn new(n: usize, antialias: f64) -> Self {
        Canvas {
            n,
            owner: vec![0; n * n],
            pidx: vec![0; n * n],
            journal: Vec::new(),
            w: 1.0 / antialias,
        }
    }

    fn clear(&mut self) {
        self.owner.iter_mut().for_each(|v| *v = 0);
        self.pidx.iter_mut().for_each(|v| *v = 0);
        self.journal.clear();
    }

    /// Lit pixels (index, value ≥ 1) of a segment with core radius `r`.
    fn footprint(&self, a: (f64, f64), b: (f64, f64), r: f64, out: &mut Vec<(u32, u8)>) {
        out.clear();
        let reach = r + self.w;
        let n = self.n as i64;
        let x0 = ((a.0.min(b.0) - reach - 0.5).floor() as i64).max(0);
        let x1 = ((a.0.max(b.0) + reach - 0.5).ceil() as i64).min(n - 1);
        let y0 = ((a.1.min(b.1) - reach - 0.5).floor() as i64).max(0);
        let y1 = ((a.1.max(b.1) + reach - 0.5).ceil() as i64).min(n - 1);
        let (dx, dy) = (b.0 - a.0, b.1 - a.1);
        let len2 = dx * dx + dy * dy;
        for y in y0..=y1 {
            for x in x0..=x1 {
                let (px, py) = (x as f64 + 0.5, y as f64 + 0.5);
                let t = if len2 > 0.0 {
                    (((px - a.0) * dx + (py - a.1) * dy) / len2).clamp(0.0, 1.0)
                } else {
                    0.0
                };
                let (ex, ey) = (px - (a.0 + t * dx), py - (a.1 + t * dy));
                let d = (ex * ex + ey * ey).sqrt();
                let v = ((reach - d) / self.w).clamp(0.0, 1.0);
                let v8 = (v * 255.0).round() as u8;
                if v8 >= 1 {
                    out.push(((y * n + x) as u32, v8));
                }
            }
        }
    }

    /// Whether a footprint for paddle `k` of snake `s` fits: no pixel of another snake (or an
    /// older paddle of `s`) within one pixel, and touching paddle `k − 1` when `k > 0`.
    fn fits(&self, fp: &[(u32, u8)], s: u16, k: u16) -> bool {
        if fp.is_empty() {
            return false;
        }
        let n = self.n as i64;
        let mut connected = k == 0;
        for &(p, _) in fp {
            let (y, x) = (p as i64 / n, p as i64 % n);
            for yy in (y - 1).max(0)..=(y + 1).min(n - 1) {
                for xx in (x - 1).max(0)..=(x + 1).min(n - 1) {
                    let q = (yy * n + xx) as usize;
                    let o = self.owner[q];
                    if o == 0 {
                        continue;
                    }
                    if o != s {
                        return false;
                    }
                    let pi = self.pidx[q];
                    if pi == DISC || pi + 1 < k {
                        return false;
                    }
                    if pi + 1 == k {
                        connected = true;
                    }
                }
            }
        }
        connected
    }

    fn commit(&mut self, fp: &[(u32, u8)], s: u16, k: u16) {
        for &(p, _) in fp {
            let p = p as usize;
            self.journal.push((p as u32, self.owner[p], self.pidx[p]));
            self.owner[p] = s;
            self.pidx[p] = k;
        }
    }

    fn rollback(&mut self, mark: usize) {
        while self.journal.len() > mark {
            let (p, o, i) = self.journal.pop().expect("journal longer than mark");
            self.owner[p as usize] = o;
            self.pidx[p as usize] = i;
        }
    }
}

/// One generated image with its label and the marker positions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathfinderSample {
    /// `size × size` grey pixels, raster order.
    pub pixels: Vec<u8>,
    /// 1 when both markers are on the same snake.
    pub label: u32,
    /// The marker centres as (row, column).
    pub markers: [(usize, usize); 2],
}

struct Gen<'a> {
    cfg: &'a PathfinderConfig,
    rng: Rng,
    canvas: Canvas,
    fp: Vec<(u32, u8)>,
}

impl Gen<'_> {
    fn dir(theta: i32) -> (f64, f64) {
        let (s, c) = sin_cos_deg(theta as f64);
        (c, s)
    }

    fn in_bounds(&self, p: (f64, f64)) -> bool {
        let (lo, hi) = (self.cfg.padding, self.cfg.size as f64 - self.cfg.padding);
        p.0 >= lo && p.0 <= hi && p.1 >= lo && p.1 <= hi
    }

    fn half_thickness(&self) -> f64 {
        self.cfg.paddle_thickness / 2.0
    }

    /// Tries the first paddle of snake `s` at `a` heading `theta`; commits it when it fits.
    fn try_first(&mut self, a: (f64, f64), theta: i32, s: u16) -> Option<Paddle> {
        let u = Self::dir(theta);
        let b = (
            a.0 + self.cfg.paddle_length * u.0,
            a.1 + self.cfg.paddle_length * u.1,
        );
        if !self.in_bounds(a) || !self.in_bounds(b) {
            return None;
        }
        let mut fp = std::mem::take(&mut self.fp);
        self.canvas.footprint(a, b, self.half_thickness(), &mut fp);
        let ok = self.canvas.fits(&fp, s, 0);
        if ok {
            self.canvas.commit(&fp, s, 0);
        }
        self.fp = fp;
        ok.then_some(Paddle { a, b, theta })
    }

    /// Adds paddle `k` after `prev` to snake `s`; commits it when one fits.
    fn extend(&mut self, prev: Paddle, s: u16, k: u16) -> Option<Paddle> {
        let u = Self::dir(prev.theta);
        let m = self.cfg.paddle_margin;
        let a = (prev.b.0 + m * u.0, prev.b.1 + m * u.1);
        if !self.in_bounds(a) {
            return None;
        }
        let mut turns: Vec<(i32, f64)> = Vec::with_capacity(40);
        let mut delta: i32 = -90;
        while delta <= 90 {
            let ang = (delta.abs() as f64 * self.cfg.continuity).min(90.0);
            let c = sin_cos_deg(ang).1.max(0.0);
            let w = c * c;
            if w > 1e-9 {
                turns.push((delta, w));
            }
            delta += TURN_STEP;
        }
        let mut fp = std::mem::take(&mut self.fp);
        let mut found = None;
        loop {
            let total: f64 = turns.iter().map(|t| t.1).sum();
            if total <= 1e-9 {
                break;
            }
            let mut r = self.rng.f64() * total;
            let mut pick = turns.len() - 1;
            for (i, t) in turns.iter().enumerate() {
                if t.1 <= 0.0 {
                    continue;
                }
                if r < t.1 {
                    pick = i;
                    break;
                }
                r -= t.1;
            }
            if turns[pick].1 <= 0.0 {
                // Rounding left us on an excluded turn: take the last allowed one.
                match turns.iter().rposition(|t| t.1 > 0.0) {
                    Some(i) => pick = i,
                    None => break,
                }
            }
            let theta = (prev.theta + turns[pick].0).rem_euclid(360);
            let theta = if theta >= 180 { theta - 360 } else { theta };
            let v = Self::dir(theta);
            let b = (
                a.0 + self.cfg.paddle_length * v.0,
                a.1 + self.cfg.paddle_length * v.1,
            );
            if self.in_bounds(b) {
                self.canvas.footprint(a, b, self.half_thickness(), &mut fp);
                if self.canvas.fits(&fp, s, k) {
                    self.canvas.commit(&fp, s, k);
                    found = Some(Paddle { a, b, theta });
                    break;
                }
            }
            turns[pick].1 = 0.0;
        }
        self.fp = fp;
        found
    }

    /// Reserves the marker zone at `tip` for snake `s` when it keeps clear of other snakes.
    fn reserve_disc(&mut self, tip: (f64, f64), s: u16) -> bool {
        let mut fp = std::mem::take(&mut self.fp);
        self.canvas
            .footprint(tip, tip, self.cfg.marker_radius, &mut fp);
        let n = self.canvas.n as i64;
        let mut ok = true;
        'outer: for &(p, _) in &fp {
            let (y, x) = (p as i64 / n, p as i64 % n);
            for yy in (y - 1).max(0)..=(y + 1).min(n - 1) {
                for xx in (x - 1).max(0)..=(x + 1).min(n - 1) {
                    let o = self.canvas.owner[(yy * n + xx) as usize];
                    if o != 0 && o != s {
                        ok = false;
                        break 'outer;
                    }
                }
            }
        }
        if ok {
            self.canvas.commit(&fp, s, DISC);
        }
        self.fp = fp;
        ok
    }

    fn pixel_center(&mut self, lo: usize, hi: usize) -> f64 {
        (lo + self.rng.index(hi - lo)) as f64 + 0.5
    }

    /// The two target snakes, grown alternately from tips `seed_distance` apart.
    fn targets(&mut self) -> Option<[Vec<Paddle>; 2]> {
        let cfg = self.cfg;
        let n = cfg.size;
        let sd = cfg.seed_distance;
        let (lo, hi) = {
            let lo = (2.0 * sd).ceil() as usize;
            let hi = n.saturating_sub(lo);
            if hi > lo {
                (lo, hi)
            } else {
                (n / 2 - 1, n / 2 + 1)
            }
        };
        for _ in 0..MAX_PAIR_TRIES {
            self.canvas.clear();
            let o1 = (self.pixel_center(lo, hi), self.pixel_center(lo, hi));
            let phi = self.rng.below(360) as f64;
            let (s, c) = sin_cos_deg(phi);
            let o2 = ((o1.0 + sd * c).floor() + 0.5, (o1.1 + sd * s).floor() + 0.5);
            let t1 = self.rng.below(360) as i32 - 180;
            let t2 = self.rng.below(360) as i32 - 180;
            let Some(p1) = self.try_first(o1, t1, 1) else {
                continue;
            };
            let Some(p2) = self.try_first(o2, t2, 2) else {
                continue;
            };
            let mut snakes = [vec![p1], vec![p2]];
            let mut ok = true;
            'grow: for k in 1..cfg.contour_length {
                for (i, snake) in snakes.iter_mut().enumerate() {
                    let prev = *snake.last().expect("snake has a first paddle");
                    match self.extend(prev, i as u16 + 1, k as u16) {
                        Some(p) => snake.push(p),
                        None => {
                            ok = false;
                            break 'grow;
                        }
                    }
                }
            }
            if !ok {
                continue;
            }
            let tips = |sn: &Vec<Paddle>| [sn[0].a, sn[sn.len() - 1].b];
            let (tips1, tips2) = (tips(&snakes[0]), tips(&snakes[1]));
            if self.reserve_disc(tips1[0], 1)
                && self.reserve_disc(tips1[1], 1)
                && self.reserve_disc(tips2[0], 2)
                && self.reserve_disc(tips2[1], 2)
            {
                return Some(snakes);
            }
        }
        None
    }

    /// One distractor snake with id `s`, or `None` (nothing committed) when it does not fit.
    fn distractor(&mut self, s: u16) -> Option<Vec<Paddle>> {
        let cfg = self.cfg;
        let lo = cfg.padding.ceil() as usize;
        let hi = (cfg.size as f64 - cfg.padding).floor() as usize;
        if hi <= lo {
            return None;
        }
        for _ in 0..=cfg.max_distractor_retrial {
            let mark = self.canvas.journal.len();
            let mut first = None;
            for _ in 0..SEED_TRIES {
                let o = (self.pixel_center(lo, hi), self.pixel_center(lo, hi));
                let t = self.rng.below(360) as i32 - 180;
                if let Some(p) = self.try_first(o, t, s) {
                    first = Some(p);
                    break;
                }
            }
            let Some(first) = first else { continue };
            let mut snake = vec![first];
            for k in 1..cfg.distractor_length.max(1) {
                match self.extend(*snake.last().expect("non-empty"), s, k as u16) {
                    Some(p) => snake.push(p),
                    None => break,
                }
            }
            if snake.len() == cfg.distractor_length.max(1) {
                return Some(snake);
            }
            self.canvas.rollback(mark);
        }
        None
    }

    fn sample(&mut self) -> Result<PathfinderSample> {
        let cfg = self.cfg;
        let label = self.rng.below(2) as u32;
        let targets = self.targets().ok_or_else(|| {
            Error::config(
                "pathfinder",
                format!(
                    "could not place two snakes of {} paddles in {} tries",
                    cfg.contour_length, MAX_PAIR_TRIES
                ),
            )
        })?;
        let mut snakes: Vec<Vec<Paddle>> = targets.to_vec();
        for d in 0..cfg.num_distractors {
            let id = (d + 3).min(u16::MAX as usize - 1) as u16;
            if let Some(sn) = self.distractor(id) {
                snakes.push(sn);
            }
        }
        // Markers: origin tip of one target, terminal tip of the same one (label 1) or the other.
        let origin_idx = self.rng.index(2);
        let terminal_idx = if label == 1 {
            origin_idx
        } else {
            1 - origin_idx
        };
        let origin = snakes[origin_idx][0].a;
        let last = &snakes[terminal_idx];
        let terminal = last[last.len() - 1].b;

        let n = cfg.size;
        let mut pixels = vec![0u8; n * n];
        let mut fp = std::mem::take(&mut self.fp);
        let r = self.half_thickness();
        for snake in &snakes {
            for p in snake {
                self.canvas.footprint(p.a, p.b, r, &mut fp);
                for &(q, v) in &fp {
                    let px = &mut pixels[q as usize];
                    *px = (*px).max(v);
                }
            }
        }
        for tip in [origin, terminal] {
            self.canvas.footprint(tip, tip, cfg.marker_radius, &mut fp);
            for &(q, v) in &fp {
                let px = &mut pixels[q as usize];
                *px = (*px).max(v);
            }
        }
        self.fp = fp;
        let cell = |p: (f64, f64)| {
            (
                (p.1.floor() as usize).min(n - 1),
                (p.0.floor() as usize).min(n - 1),
            )
        };
        Ok(PathfinderSample {
            pixels,
            label,
            markers: [cell(origin), cell(terminal)],
        })
    }
}

/// Sample `index` of the stream `seed` (a pure function of the three).
pub fn pathfinder_sample(
    cfg: &PathfinderConfig,
    seed: u64,
    index: u64,
) -> Result<PathfinderSample> {
    cfg.validate()?;
    let mut g = Gen {
        cfg,
        rng: Rng::stream(seed, index),
        canvas: Canvas::new(cfg.size, cfg.antialias),
        fp: Vec::new(),
    };
    g.sample()
}

/// Samples `range` of stream `seed`, in parallel on the available cores.
pub fn pathfinder_samples(
    cfg: &PathfinderConfig,
    seed: u64,
    range: std::ops::Range<u64>,
) -> Result<Vec<PathfinderSample>> {
    cfg.validate()?;
    let n = (range.end.saturating_sub(range.start)) as usize;
    let threads = std::thread::available_parallelism()
        .map(|t| t.get())
        .unwrap_or(1)
        .clamp(1, 64)
        .min(n.max(1));
    if threads <= 1 || n < 8 {
        return range.map(|i| pathfinder_sample(cfg, seed, i)).collect();
    }
    let chunk = n.div_ceil(threads);
    let results: Vec<Result<Vec<PathfinderSample>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let lo = range.start + (t * chunk) as u64;
                let hi = (lo + chunk as u64).min(range.end);
                scope.spawn(move || {
                    (lo..hi)
                        .map(|i| pathfinder_sample(cfg, seed, i))
                        .collect::<Result<Vec<_>>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(Error::config("pathfinder", "a generator thread panicked"))
                })
            })
            .collect()
    });
    let mut out = Vec::with_capacity(n);
    for r in results {
        out.extend(r?);
    }
    Ok(out)
}

/// `n` images (`size²` grey bytes) with labels, samples `0..n` of stream `seed`.
///
/// # Panics
/// When `cfg` is invalid or cannot place its snakes ([`pathfinder_samples`] returns the error).
pub fn generate_pathfinder(cfg: &PathfinderConfig, n: usize, seed: u64) -> Vec<(Vec<u8>, u32)> {
    pathfinder_samples(cfg, seed, 0..n as u64)
        .unwrap_or_else(|e| panic!("generate_pathfinder: {e}"))
        .into_iter()
        .map(|s| (s.pixels, s.label))
        .collect()
}

/// Generated Pathfinder images in memory (bytes, not f32).
pub struct PathfinderDataset {
    pixels: Vec<u8>,
    labels: Vec<u8>,
    side: usize,
    info: DatasetInfo,
}

impl PathfinderDataset {
    /// Samples `0..n` of stream `seed`, or the error of [`pathfinder_samples`].
    pub fn try_generated(cfg: &PathfinderConfig, n: usize, seed: u64) -> Result<Self> {
        let samples = pathfinder_samples(cfg, seed, 0..n as u64)?;
        let side = cfg.size;
        let mut pixels = Vec::with_capacity(n * side * side);
        let mut labels = Vec::with_capacity(n);
        for s in samples {
            pixels.extend_from_slice(&s.pixels);
            labels.push(s.label as u8);
        }
        Ok(PathfinderDataset {
            pixels,
            labels,
            side,
            info: DatasetInfo::new(cfg.name(), 2, side * side),
        })
    }

    /// Samples `0..n` of stream `seed`.
    ///
    /// # Panics
    /// As [`generate_pathfinder`].
    pub fn generated(cfg: &PathfinderConfig, n: usize, seed: u64) -> Self {
        Self::try_generated(cfg, n, seed)
            .unwrap_or_else(|e| panic!("PathfinderDataset::generated: {e}"))
    }

    /// Samples `0..train+val+test` of stream `seed`, split in that order; an impossible
    /// configuration is an error.
    pub fn try_generate_splits(
        cfg: &PathfinderConfig,
        train: usize,
        val: usize,
        test: usize,
        seed: u64,
    ) -> Result<Splits> {
        let all = Arc::new(Self::try_generated(cfg, train + val + test, seed)?);
        // consecutive parts of exactly train, val and test examples
        Ok(split_contiguous(all, (train, val, test)))
    }

    /// [`Self::try_generate_splits`] for a configuration known to be valid.
    ///
    /// # Panics
    /// As [`generate_pathfinder`].
    pub fn generate_splits(
        cfg: &PathfinderConfig,
        train: usize,
        val: usize,
        test: usize,
        seed: u64,
    ) -> Splits {
        Self::try_generate_splits(cfg, train, val, test, seed)
            .unwrap_or_else(|e| panic!("PathfinderDataset::generate_splits: {e}"))
    }
}

impl Dataset for PathfinderDataset {
    fn len(&self) -> usize {
        self.labels.len()
    }
    fn get(&self, index: usize) -> Result<Example> {
        let label = self.label(index)?;
        let n = self.side * self.side;
        Ok(Example {
            doc: Sequence::Pixels(self.pixels[index * n..(index + 1) * n].to_vec()),
            doc2: None,
            label,
        })
    }
    fn info(&self) -> &DatasetInfo {
        &self.info
    }
    fn label(&self, index: usize) -> Result<u32> {
        self.labels
            .get(index)
            .map(|&l| l as u32)
            .ok_or_else(|| index_error(index, self.labels.len()))
    }
    fn length(&self, _index: usize) -> Result<usize> {
        Ok(self.side * self.side)
    }
}
