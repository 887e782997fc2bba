//! The statistics of the study's report: accuracy comparisons and factorial contrasts
//! (paired by seed where a task's arms share each seed's data, Welch otherwise, Holm over
//! all of them on all tasks), the memory's change over training and between arms, and the
//! correlation of memory diversity with accuracy.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{EvalPoint, Manifest, RunResult, TaskSpec};
use crate::stats::{contrast, hedges_g, holm, mean, one_sample_at, pearson, ROUNDING};

/// Significance level of the verdicts (after Holm's correction).
pub(super) const ALPHA: f64 = 0.05;

/// Runs by (task index, arm index), seeds sorted.
pub(super) type Groups<'a> = BTreeMap<(usize, usize), Vec<&'a RunResult>>;

/// The runs of task `ti`, arm by arm: the groups are keyed (task, arm), in order.
pub(super) fn task_runs<'g, 'a>(
    groups: &'g Groups<'a>,
    ti: usize,
) -> impl Iterator<Item = &'a RunResult> + 'g {
    groups
        .range((ti, 0)..(ti + 1, 0))
        .flat_map(|(_, runs)| runs.iter().copied())
}

/// Whether every arm of task `t` trains on the same data for a seed and different data for
/// different seeds (a generated training set without `data_dir`): then arms are compared
/// paired by seed.
pub(super) fn shares_data_per_seed(t: &TaskSpec) -> bool {
    let o = serde_json::to_value(&t.options).unwrap_or(Value::Null);
    let generated = matches!(
        o.get("task").and_then(Value::as_str),
        Some("listops" | "pathfinder")
    );
    generated && o.get("data_dir").is_none_or(Value::is_null)
}

/// The result of one test: estimate, 95 % CI half-width, p, the seeds of each arm, and
/// whether it was paired by seed (then `n` holds the pairs).
#[derive(Clone, Debug)]
pub(super) struct Estimate {
    pub est: f64,
    pub ci: Option<f64>,
    pub p: f64,
    pub n: Vec<usize>,
    pub paired: bool,
}

impl Estimate {
    /// Whether the two sides were equal on every seed, with at least two seeds a side: paired,
    /// every per-seed difference zero; Welch, each arm the same value on every seed and the
    /// contrast zero. The data then show no difference at all, and no t-test applies (its
    /// standard error is zero) — unlike a constant nonzero difference, which stays untestable.
    /// Zero is judged as the tests judge a spread: within [`ROUNDING`] of the scale of
    /// accuracies (at most 1).
    pub fn equal_on_every_seed(&self) -> bool {
        self.p.is_nan()
            && self.ci.is_none()
            && self.n.iter().all(|&n| n >= 2)
            && self.est.abs() < ROUNDING
    }
}

/// The linear contrast `Σ c_k · f(arm k)` over seeds: paired by seed (the per-seed contrast
/// over the seeds every arm has, a one-sample t-test) or Welch's. `None` while an arm has no
/// value; an estimate with NaN p while an arm has fewer than two.
pub(super) fn estimate(
    arms: &[(f64, Option<&Vec<&RunResult>>)],
    paired: bool,
    f: &dyn Fn(&RunResult) -> Option<f64>,
) -> Option<Estimate> {
    let values: Vec<Vec<(u64, f64)>> = arms
        .iter()
        .map(|(_, runs)| {
            runs.map(|v| v.iter().filter_map(|r| Some((r.seed, f(r)?))).collect())
                .unwrap_or_default()
        })
        .collect();
    if values.iter().any(Vec::is_empty) {
        return None;
    }
    let plain: Vec<Vec<f64>> = values
        .iter()
        .map(|v| v.iter().map(|x| x.1).collect())
        .collect();
    let n: Vec<usize> = plain.iter().map(Vec::len).collect();
    let naive: f64 = arms.iter().zip(&plain).map(|((c, _), x)| c * mean(x)).sum();
    if paired {
        let seeds: Vec<u64> = values[0]
            .iter()
            .map(|x| x.0)
            .filter(|s| values.iter().all(|v| v.iter().any(|x| x.0 == *s)))
            .collect();
        let d: Vec<f64> = seeds
            .iter()
            .map(|s| {
                arms.iter()
                    .zip(&values)
                    .map(|((c, _), v)| c * v.iter().find(|x| x.0 == *s).map_or(0.0, |x| x.1))
                    .sum()
            })
            .collect();
        // the per-seed contrast is a sum of accuracies times coefficients: its spread is
        // rounding below 10⁻⁹ of the largest term, not a difference between seeds
        let scale = arms
            .iter()
            .zip(&plain)
            .flat_map(|((c, _), x)| x.iter().map(move |v| (c * v).abs()))
            .fold(0.0, f64::max);
        let t = one_sample_at(&d, scale);
        return Some(Estimate {
            est: if d.is_empty() { naive } else { mean(&d) },
            ci: t.map(|t| t.1),
            p: t.map_or(f64::NAN, |t| t.2),
            n: vec![d.len()],
            paired: true,
        });
    }
    let groups: Vec<(f64, &[f64])> = arms
        .iter()
        .zip(&plain)
        .map(|((c, _), x)| (*c, x.as_slice()))
        .collect();
    let t = contrast(&groups);
    Some(Estimate {
        est: naive,
        ci: t.map(|t| t.1),
        p: t.map_or(f64::NAN, |t| t.2),
        n,
        paired: false,
    })
}

/// A contrast's terms: (coefficient, arm name).
pub(super) type Terms = Vec<(f64, String)>;

/// Which part of the report a test belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    /// A comparison of the manifest.
    Comparison,
    /// A contrast of the filter × τ × projections design.
    Factorial,
}

/// One accuracy test on one task (pending while an arm has no results).
#[derive(Clone, Debug)]
pub(super) struct AccTest {
    pub task: usize,
    pub kind: Kind,
    /// The claim (comparisons) or the effect (factorial contrasts).
    pub claim: String,
    /// `better − than`, or the contrast written out.
    pub label: String,
    pub terms: Terms,
    pub est: Option<Estimate>,
    pub g: Option<f64>,
    pub holm: f64,
    /// Arms of the test without results on this task.
    pub pending: Vec<String>,
}

/// The contrasts of the filter × τ × projections design that the arms of the manifest allow:
/// (effect, terms). Luna = Luna's projections with neither factor; `convluna-proj` = ConvLuna's
/// projections with neither; `filter-only`, `tau-only`, `convluna` = ConvLuna's projections
/// with the filter, τ, both; `luna+filter`, `luna+tau` = Luna's projections with one factor.
pub(super) fn factorial_contrasts() -> Vec<(&'static str, Vec<(f64, &'static str)>)> {
    vec![
        (
            "projections (ConvLuna's − Luna's, neither factor)",
            vec![(1.0, "convluna-proj"), (-1.0, "luna")],
        ),
        (
            "filter, with Luna's projections",
            vec![(1.0, "luna+filter"), (-1.0, "luna")],
        ),
        (
            "τ, with Luna's projections",
            vec![(1.0, "luna+tau"), (-1.0, "luna")],
        ),
        (
            "filter, with ConvLuna's projections and τ",
            vec![(1.0, "convluna"), (-1.0, "tau-only")],
        ),
        (
            "τ, with ConvLuna's projections and the filter",
            vec![(1.0, "convluna"), (-1.0, "filter-only")],
        ),
        (
            "filter, main effect (ConvLuna's projections)",
            vec![
                (0.5, "convluna"),
                (0.5, "filter-only"),
                (-0.5, "tau-only"),
                (-0.5, "convluna-proj"),
            ],
        ),
        (
            "τ, main effect (ConvLuna's projections)",
            vec![
                (0.5, "convluna"),
                (0.5, "tau-only"),
                (-0.5, "filter-only"),
                (-0.5, "convluna-proj"),
            ],
        ),
        (
            "filter × τ interaction",
            vec![
                (1.0, "convluna"),
                (-1.0, "tau-only"),
                (-1.0, "filter-only"),
                (1.0, "convluna-proj"),
            ],
        ),
        (
            "filter × projections interaction",
            vec![
                (1.0, "filter-only"),
                (-1.0, "convluna-proj"),
                (-1.0, "luna+filter"),
                (1.0, "luna"),
            ],
        ),
        (
            "τ × projections interaction",
            vec![
                (1.0, "tau-only"),
                (-1.0, "convluna-proj"),
                (-1.0, "luna+tau"),
                (1.0, "luna"),
            ],
        ),
    ]
}

fn label(terms: &[(f64, String)]) -> String {
    if let [(a, x), (b, y)] = terms {
        if *a == 1.0 && *b == -1.0 {
            return format!("{x} − {y}");
        }
    }
    let mut s = String::new();
    for (i, (c, a)) in terms.iter().enumerate() {
        let sign = if *c < 0.0 { "−" } else { "+" };
        let mag = if c.abs() == 1.0 {
            String::new()
        } else {
            format!("{}·", c.abs())
        };
        if i == 0 && *c > 0.0 {
            s += &format!("{mag}{a}");
        } else {
            s += &format!(" {sign} {mag}{a}");
        }
    }
    s
}

fn same_terms(a: &[(f64, String)], b: &[(f64, String)]) -> bool {
    let norm = |t: &[(f64, String)]| {
        let mut v: Vec<(String, i64)> = t
            .iter()
            .map(|(c, a)| (a.clone(), (c * 1000.0).round() as i64))
            .collect();
        v.sort();
        v
    };
    norm(a) == norm(b)
}

/// Every accuracy test: the manifest's comparisons, then the factorial contrasts that are not
/// already one of them, on every task that runs their arms; Holm-corrected together.
pub(super) fn accuracy_tests(manifest: &Manifest, groups: &Groups) -> Vec<AccTest> {
    let arm = |n: &str| manifest.arms.iter().position(|a| a.name == n);
    let mut out: Vec<AccTest> = Vec::new();
    let factorial: Vec<(String, Terms)> = factorial_contrasts()
        .into_iter()
        .filter(|(_, t)| t.iter().all(|(_, a)| arm(a).is_some()))
        .map(|(n, t)| {
            (
                n.to_string(),
                t.into_iter().map(|(c, a)| (c, a.to_string())).collect(),
            )
        })
        .collect();
    for (ti, task) in manifest.tasks.iter().enumerate() {
        let paired = shares_data_per_seed(task);
        let mut here: Vec<(Kind, String, Terms)> = manifest
            .comparisons
            .iter()
            .map(|c| {
                (
                    Kind::Comparison,
                    c.claim.clone(),
                    vec![(1.0, c.better.clone()), (-1.0, c.than.clone())],
                )
            })
            .collect();
        for (n, t) in &factorial {
            if !here.iter().any(|(_, _, h)| same_terms(h, t)) {
                here.push((Kind::Factorial, n.clone(), t.clone()));
            }
        }
        for (kind, claim, terms) in here {
            if !terms.iter().all(|(_, a)| task.has_arm(a)) {
                continue;
            }
            let runs: Vec<(f64, Option<&Vec<&RunResult>>)> = terms
                .iter()
                .map(|(c, a)| (*c, arm(a).and_then(|a| groups.get(&(ti, a)))))
                .collect();
            let pending: Vec<String> = terms
                .iter()
                .zip(&runs)
                .filter(|(_, (_, r))| r.is_none())
                .map(|((_, a), _)| a.clone())
                .collect();
            let est = estimate(&runs, paired, &|r| Some(r.test_acc));
            let g = match runs.as_slice() {
                [(_, Some(a)), (_, Some(b))] if terms.len() == 2 => hedges_g(
                    &a.iter().map(|r| r.test_acc).collect::<Vec<_>>(),
                    &b.iter().map(|r| r.test_acc).collect::<Vec<_>>(),
                ),
                _ => None,
            };
            out.push(AccTest {
                task: ti,
                kind,
                claim,
                label: label(&terms),
                terms,
                est,
                g,
                holm: f64::NAN,
                pending,
            });
        }
    }
    let adj = holm(
        &out.iter()
            .map(|t| t.est.as_ref().map_or(f64::NAN, |e| e.p))
            .collect::<Vec<_>>(),
    );
    for (t, h) in out.iter_mut().zip(adj) {
        t.holm = h;
    }
    out
}

/// The memory metrics: name, whether a rise means a more diverse memory (`None`: neither).
pub(super) const METRICS: [(&str, Option<bool>); 4] = [
    ("Y_p effective rank / m", Some(true)),
    ("Y_p mean cosine", Some(false)),
    ("pack-row divergence (bits)", Some(true)),
    ("pack entropy", None),
];

/// The metric of an evaluation point for one layer (Y_p's rank divided by `m`).
pub(super) fn metric(p: &EvalPoint, name: &str, layer: usize, m: f64) -> Option<f64> {
    match name {
        "Y_p effective rank / m" => p.packed_rank.get(layer).map(|r| r / m),
        "Y_p mean cosine" => p.packed_cosine.get(layer).copied().flatten(),
        "pack-row divergence (bits)" => p.pack_row_divergence.get(layer).copied().flatten(),
        "pack entropy" => p.pack_entropy.get(layer).copied(),
        _ => None,
    }
    .filter(|v| v.is_finite())
}

/// The memory slots of a run (0 without a memory).
pub(super) fn slots(r: &RunResult) -> usize {
    r.options.memory.unwrap_or(0)
}

/// Whether a run has a memory of two slots or more with diagnostics.
pub(super) fn has_memory(r: &RunResult) -> bool {
    slots(r) >= 2 && r.curve.first().is_some_and(|p| !p.packed_rank.is_empty())
}

/// The evaluation of a run's best checkpoint.
pub(super) fn best_point(r: &RunResult) -> Option<&EvalPoint> {
    r.curve.iter().find(|p| p.step == r.best_step)
}

/// Y_p's effective rank ÷ m at the best checkpoint, mean over layers.
pub(super) fn best_rank(r: &RunResult) -> Option<f64> {
    if !has_memory(r) {
        return None;
    }
    let p = best_point(r)?;
    let v: Vec<f64> = (0..p.packed_rank.len())
        .filter_map(|l| metric(p, METRICS[0].0, l, slots(r) as f64))
        .collect();
    (!v.is_empty()).then(|| mean(&v))
}

/// The change of a memory metric over training, from the baseline (step 0 where the run has
/// it, else its first evaluation) to the best checkpoint, paired by run.
#[derive(Clone, Debug)]
pub(super) struct Change {
    pub task: usize,
    pub arm: String,
    pub layer: usize,
    pub metric: &'static str,
    /// Whether a rise means a more diverse memory.
    pub diverse_up: Option<bool>,
    pub start: f64,
    pub end: f64,
    /// Runs whose baseline is step 0.
    pub from_step0: usize,
    pub n: usize,
    /// (mean change, CI half-width, p).
    pub diff: Option<(f64, f64, f64)>,
    pub holm: f64,
}

impl Change {
    /// +1 when the change is significant towards a more diverse memory, −1 towards a less
    /// diverse one, 0 otherwise (or for a metric without a direction).
    pub fn direction(&self) -> i32 {
        match (self.diverse_up, self.diff) {
            (Some(up), Some((d, _, _))) if self.holm < ALPHA && d != 0.0 => {
                if (d > 0.0) == up {
                    1
                } else {
                    -1
                }
            }
            _ => 0,
        }
    }
}

/// A memory comparison of an arm against Luna at the best checkpoint (rank ÷ m, mean over
/// layers).
#[derive(Clone, Debug)]
pub(super) struct MemTest {
    pub task: usize,
    pub arm: String,
    pub est: Option<Estimate>,
    pub holm: f64,
}

/// The correlation over a task's runs with a memory between rank ÷ m at the best
/// checkpoint and test accuracy.
#[derive(Clone, Debug)]
pub(super) struct Correlation {
    pub task: usize,
    pub n: usize,
    pub r: Option<(f64, f64)>,
    pub holm: f64,
}

/// The memory analyses, Holm-corrected together (changes, between-arm tests, correlations).
pub(super) struct Memory {
    pub changes: Vec<Change>,
    pub between: Vec<MemTest>,
    pub correlations: Vec<Correlation>,
}

/// The arms the between-arm memory comparison sets against Luna, in this order.
pub(super) const MEMORY_ARMS: [&str; 6] = [
    "convluna",
    "filter-only",
    "tau-only",
    "luna+filter",
    "luna+tau",
    "convluna-proj",
];

pub(super) fn memory(manifest: &Manifest, groups: &Groups) -> Memory {
    let mut changes = Vec::new();
    for (ti, _) in manifest.tasks.iter().enumerate() {
        for (ai, arm) in manifest.arms.iter().enumerate() {
            let Some(runs) = groups.get(&(ti, ai)) else {
                continue;
            };
            let runs: Vec<&RunResult> = runs.iter().copied().filter(|r| has_memory(r)).collect();
            let layers = runs
                .iter()
                .map(|r| r.curve[0].packed_rank.len())
                .max()
                .unwrap_or(0);
            for layer in 0..layers {
                for (name, up) in METRICS {
                    let pairs: Vec<(f64, f64, bool)> = runs
                        .iter()
                        .filter_map(|r| {
                            let m = slots(r) as f64;
                            let first = r.curve.first()?;
                            Some((
                                metric(first, name, layer, m)?,
                                metric(best_point(r)?, name, layer, m)?,
                                first.step == 0,
                            ))
                        })
                        .collect();
                    if pairs.is_empty() {
                        continue;
                    }
                    let d: Vec<f64> = pairs.iter().map(|(a, b, _)| b - a).collect();
                    changes.push(Change {
                        task: ti,
                        arm: arm.name.clone(),
                        layer,
                        metric: name,
                        diverse_up: up,
                        start: mean(&pairs.iter().map(|p| p.0).collect::<Vec<_>>()),
                        end: mean(&pairs.iter().map(|p| p.1).collect::<Vec<_>>()),
                        from_step0: pairs.iter().filter(|p| p.2).count(),
                        n: pairs.len(),
                        diff: one_sample_at(
                            &d,
                            pairs
                                .iter()
                                .fold(0.0, |m, p| m.max(p.0.abs()).max(p.1.abs())),
                        ),
                        holm: f64::NAN,
                    });
                }
            }
        }
    }
    let arm = |n: &str| manifest.arms.iter().position(|a| a.name == n);
    let mut between = Vec::new();
    let mut correlations = Vec::new();
    for (ti, task) in manifest.tasks.iter().enumerate() {
        if let Some(luna) = arm("luna").filter(|_| task.has_arm("luna")) {
            for name in MEMORY_ARMS {
                let Some(ai) = arm(name).filter(|_| task.has_arm(name)) else {
                    continue;
                };
                let runs = [
                    (1.0, groups.get(&(ti, ai))),
                    (-1.0, groups.get(&(ti, luna))),
                ];
                between.push(MemTest {
                    task: ti,
                    arm: name.to_string(),
                    est: estimate(&runs, shares_data_per_seed(task), &best_rank),
                    holm: f64::NAN,
                });
            }
        }
        let pts: Vec<(f64, f64)> = task_runs(groups, ti)
            .filter_map(|r| Some((best_rank(r)?, r.test_acc)))
            .collect();
        if !pts.is_empty() {
            let (x, y): (Vec<f64>, Vec<f64>) = pts.iter().copied().unzip();
            correlations.push(Correlation {
                task: ti,
                n: pts.len(),
                r: pearson(&x, &y),
                holm: f64::NAN,
            });
        }
    }
    let mut p: Vec<f64> = changes
        .iter()
        .map(|c| c.diff.map_or(f64::NAN, |d| d.2))
        .collect();
    p.extend(
        between
            .iter()
            .map(|t| t.est.as_ref().map_or(f64::NAN, |e| e.p)),
    );
    p.extend(correlations.iter().map(|c| c.r.map_or(f64::NAN, |r| r.1)));
    let adj = holm(&p);
    let (a, rest) = adj.split_at(changes.len());
    let (b, c) = rest.split_at(between.len());
    for (x, h) in changes.iter_mut().zip(a) {
        x.holm = *h;
    }
    for (x, h) in between.iter_mut().zip(b) {
        x.holm = *h;
    }
    for (x, h) in correlations.iter_mut().zip(c) {
        x.holm = *h;
    }
    Memory {
        changes,
        between,
        correlations,
    }
}
