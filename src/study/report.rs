//! The study's Markdown report and plots, from the manifest and the results file alone.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use super::{grouped, Manifest, ReportPaths, RunResult};
use crate::error::{Error, Result};
use crate::params::write_atomic;
use crate::plot::{bars_svg, heatmap_unit_svg, write_panels, Panel, Series};
use crate::stats::{ci95, hedges_g, holm, mean, one_sample, welch, welch_ci95};

/// Significance level of the verdicts (after Holm's correction).
const ALPHA: f64 = 0.05;

fn pct(x: f64) -> String {
    format!("{:.1}", 100.0 * x)
}

fn pm(x: &[f64]) -> String {
    if x.len() < 2 {
        format!("{} (n = {})", pct(mean(x)), x.len())
    } else {
        format!("{} ± {}", pct(mean(x)), pct(ci95(x)))
    }
}

fn p_fmt(p: f64) -> String {
    if p.is_nan() {
        "–".into()
    } else if p < 1e-4 {
        "< 0.0001".into()
    } else {
        format!("{p:.4}")
    }
}

fn rel(from: &Path, to: &Path) -> String {
    // plots live below the report's folder in this crate's layout; fall back to the path
    let base = from.parent().unwrap_or(Path::new(""));
    to.strip_prefix(base)
        .unwrap_or(to)
        .to_string_lossy()
        .replace('\\', "/")
}

/// One accuracy comparison on one task.
struct Tested {
    task: usize,
    claim: String,
    better: String,
    than: String,
    diff: f64,
    ci: Option<f64>,
    g: Option<f64>,
    p: f64,
    holm: f64,
    n: (usize, usize),
}

/// The change of a memory metric from the first evaluation to the best checkpoint's, over
/// seeds (paired by seed).
struct Change {
    task: usize,
    arm: String,
    layer: usize,
    metric: &'static str,
    start: f64,
    end: f64,
    diff: Option<(f64, f64, f64)>,
    holm: f64,
    n: usize,
}

/// The metric of an evaluation point, for one layer.
fn metric(p: &super::EvalPoint, name: &str, layer: usize) -> Option<f64> {
    match name {
        "Y_p effective rank / m" => p.packed_rank.get(layer).copied(),
        "pack-row divergence (bits)" => p.pack_row_divergence.get(layer).copied().flatten(),
        "pack entropy" => p.pack_entropy.get(layer).copied(),
        _ => None,
    }
    .filter(|v| v.is_finite())
}

const METRICS: [&str; 3] = [
    "Y_p effective rank / m",
    "pack-row divergence (bits)",
    "pack entropy",
];

/// Writes the report (`paths.markdown`) and its plots (`paths.plots`) from `manifest` and
/// `results`; returns the files written.
pub fn report(
    manifest: &Manifest,
    results: &[RunResult],
    paths: &ReportPaths,
) -> Result<Vec<std::path::PathBuf>> {
    std::fs::create_dir_all(&paths.plots).map_err(|e| Error::io(&paths.plots, e))?;
    let groups = grouped(manifest, results);
    let acc = |t: usize, a: usize| -> Vec<f64> {
        groups
            .get(&(t, a))
            .map(|v| v.iter().map(|r| r.test_acc).collect())
            .unwrap_or_default()
    };
    let arm_index = |name: &str| manifest.arms.iter().position(|a| a.name == name);
    let mut written = Vec::new();
    let mut md = String::new();
    let total_runs = manifest.runs().len();
    let done = groups.values().map(|v| v.len()).sum::<usize>();
    let cpu_h: f64 = results
        .iter()
        .map(|r| r.wall_s * r.threads as f64)
        .sum::<f64>()
        / 3600.0;
    let wall_h: f64 = results.iter().map(|r| r.wall_s).sum::<f64>() / 3600.0;

    // ---- accuracy comparisons, Holm-corrected together
    let mut tests = Vec::new();
    for (ti, _) in manifest.tasks.iter().enumerate() {
        for c in &manifest.comparisons {
            let (Some(a), Some(b)) = (arm_index(&c.better), arm_index(&c.than)) else {
                continue;
            };
            let (xa, xb) = (acc(ti, a), acc(ti, b));
            if xa.is_empty() || xb.is_empty() {
                continue;
            }
            tests.push(Tested {
                task: ti,
                claim: c.claim.clone(),
                better: c.better.clone(),
                than: c.than.clone(),
                diff: mean(&xa) - mean(&xb),
                ci: welch_ci95(&xa, &xb),
                g: hedges_g(&xa, &xb),
                p: welch(&xa, &xb).map_or(f64::NAN, |w| w.2),
                holm: f64::NAN,
                n: (xa.len(), xb.len()),
            });
        }
    }
    let adj = holm(&tests.iter().map(|t| t.p).collect::<Vec<_>>());
    for (t, h) in tests.iter_mut().zip(adj) {
        t.holm = h;
    }

    // ---- memory changes over training (first evaluation → best checkpoint), Luna family
    let mut changes = Vec::new();
    for (ti, _) in manifest.tasks.iter().enumerate() {
        for (ai, arm) in manifest.arms.iter().enumerate() {
            let Some(runs) = groups.get(&(ti, ai)) else {
                continue;
            };
            let m = runs[0].options.memory.unwrap_or(0);
            let layers = runs[0].curve.first().map_or(0, |p| p.packed_rank.len());
            if m < 2 || layers == 0 {
                continue;
            }
            for layer in 0..layers {
                for name in METRICS {
                    let scale = if name.starts_with("Y_p") {
                        m as f64
                    } else {
                        1.0
                    };
                    let pairs: Vec<(f64, f64)> = runs
                        .iter()
                        .filter_map(|r| {
                            let first = r.curve.first()?;
                            let best = r.curve.iter().find(|p| p.step == r.best_step)?;
                            Some((
                                metric(first, name, layer)? / scale,
                                metric(best, name, layer)? / scale,
                            ))
                        })
                        .collect();
                    if pairs.is_empty() {
                        continue;
                    }
                    let d: Vec<f64> = pairs.iter().map(|(a, b)| b - a).collect();
                    changes.push(Change {
                        task: ti,
                        arm: arm.name.clone(),
                        layer,
                        metric: name,
                        start: mean(&pairs.iter().map(|p| p.0).collect::<Vec<_>>()),
                        end: mean(&pairs.iter().map(|p| p.1).collect::<Vec<_>>()),
                        diff: one_sample(&d),
                        holm: f64::NAN,
                        n: pairs.len(),
                    });
                }
            }
        }
    }
    let adj = holm(
        &changes
            .iter()
            .map(|c| c.diff.map_or(f64::NAN, |d| d.2))
            .collect::<Vec<_>>(),
    );
    for (c, h) in changes.iter_mut().zip(adj) {
        c.holm = h;
    }

    // ---- header
    let _ = writeln!(md, "# Reproducing *On Difficulties of Attention Factorization through Shared Memory* at CPU scale\n");
    let _ = writeln!(
        md,
        "Generated by `cargo run --release --example study -- --report` from \
         [`reproduction/study.json`](reproduction/study.json) (the study) and \
         [`reproduction/results.jsonl`](reproduction/results.jsonl) (one line per finished run); \
         do not edit by hand. `cargo run --release --example study` runs what is missing \
         (each finished run is appended and skipped on the next call; a killed run resumes \
         from its last checkpoint).\n"
    );
    let _ = writeln!(
        md,
        "**Status:** {done} of {total_runs} runs ({} arms × {}) finished; \
         {wall_h:.2} hours of training wall time, {cpu_h:.2} CPU-hours (threads × wall).\n",
        manifest.arms.len(),
        manifest
            .tasks
            .iter()
            .map(|t| format!("{} seeds on {}", t.seeds(&manifest.seeds).len(), t.name))
            .collect::<Vec<_>>()
            .join(", ")
    );

    // ---- verdicts
    let _ = writeln!(md, "## Verdicts\n");
    let _ = writeln!(
        md,
        "Each comparison is a Welch t-test of test accuracy over seeds; the p-values of all \
         comparisons on all tasks are corrected together with Holm's method, and a result \
         counts at α = {ALPHA} after correction.\n"
    );
    for line in verdicts(manifest, &tests, &changes, &groups) {
        let _ = writeln!(md, "{line}");
    }
    let plateau: Vec<Plateau> = manifest
        .tasks
        .iter()
        .enumerate()
        .map(|(ti, t)| still_rising(&groups, ti, manifest.arms.len(), t.val_examples))
        .collect();
    let rising: Vec<String> = manifest
        .tasks
        .iter()
        .zip(&plateau)
        .filter(|(_, p)| p.rising > 0)
        .map(|(t, p)| match p.above_noise {
            Some(k) => format!(
                "{} ({} of {} runs; {k} of them by more than two standard errors of their \
                 validation accuracy)",
                t.name, p.rising, p.runs
            ),
            None => format!("{} ({} of {} runs)", t.name, p.rising, p.runs),
        })
        .collect();
    let within_noise = plateau
        .iter()
        .all(|p| p.rising == 0 || p.above_noise == Some(0));
    if !rising.is_empty() && within_noise {
        let _ = writeln!(
            md,
            "\n**Plateau:** by a one-point rule, {} were still gaining more than {:.0} point of \
             validation accuracy in the last quarter of their steps; none of these gains \
             exceeds two standard errors of its run's validation measurement, so every curve \
             is flat within the noise of that measurement (see each task's table).",
            rising.join(", "),
            100.0 * RISING
        );
    } else if !rising.is_empty() {
        let _ = writeln!(
            md,
            "\n**Not at a plateau:** {}: these runs were still gaining more than {:.0} point of \
             validation accuracy in the last quarter of their steps; the comparisons they \
             enter are between models trained for the same budget, not between converged \
             models (see each task's table).",
            rising.join(", "),
            100.0 * RISING
        );
    }
    let _ = writeln!(md);

    // ---- setup
    let _ = writeln!(md, "## Setup\n");
    let _ = writeln!(md, "| task | data and settings |\n|---|---|");
    for t in &manifest.tasks {
        let _ = writeln!(md, "| {} | {} |", t.name, t.description);
    }
    let _ = writeln!(md, "\n| arm | what it is |\n|---|---|");
    for a in &manifest.arms {
        let _ = writeln!(md, "| {} | {} |", a.name, a.description);
    }
    if !manifest.deviations.is_empty() {
        let _ = writeln!(
            md,
            "\n### How this differs from the paper\n\n| | the paper | this study |\n|---|---|---|"
        );
        for [a, b, c] in &manifest.deviations {
            let _ = writeln!(md, "| {a} | {b} | {c} |");
        }
    }
    for n in &manifest.notes {
        let _ = writeln!(md, "\n{n}");
    }
    let _ = writeln!(md);

    // ---- per task
    for (ti, task) in manifest.tasks.iter().enumerate() {
        let _ = writeln!(md, "## {}\n", task.name);
        let majority = (0..manifest.arms.len())
            .filter_map(|a| groups.get(&(ti, a)))
            .flat_map(|v| v.iter().map(|r| r.majority))
            .next();
        if let Some(m) = majority {
            let _ = writeln!(md, "Majority class of the test split: {} %.\n", pct(m));
        }
        let _ = writeln!(
            md,
            "| arm | seeds | test accuracy % (mean ± 95 % CI) | best validation % | best step | steps trained | last-quarter gain (points) | wall min / run |\n|---|---|---|---|---|---|---|---|"
        );
        let mut bars = Vec::new();
        for (ai, arm) in manifest.arms.iter().enumerate() {
            let Some(runs) = groups.get(&(ti, ai)) else {
                let _ = writeln!(md, "| {} | 0 | – | – | – | – | – | – |", arm.name);
                continue;
            };
            let x: Vec<f64> = runs.iter().map(|r| r.test_acc).collect();
            let val: Vec<f64> = runs.iter().map(|r| r.best_val_acc).collect();
            let best: Vec<f64> = runs.iter().map(|r| r.best_step as f64).collect();
            let steps: Vec<String> = runs
                .iter()
                .map(|r| format!("{}{}", r.steps, if r.stopped_early { "" } else { "*" }))
                .collect();
            let wall = mean(&runs.iter().map(|r| r.wall_s / 60.0).collect::<Vec<_>>());
            let gains: Vec<String> = runs
                .iter()
                .map(|r| late_gain(r).map_or("–".into(), |g| format!("{:+.1}", 100.0 * g)))
                .collect();
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {:.0} | {} | {} | {wall:.1} |",
                arm.name,
                runs.len(),
                pm(&x),
                pct(mean(&val)),
                mean(&best),
                steps.join(", "),
                gains.join(", ")
            );
            bars.push((arm.name.clone(), mean(&x), ci95(&x)));
        }
        let _ = writeln!(
            md,
            "\n`*`: the run used all its steps without meeting its patience; otherwise it \
             stopped after `patience` evaluations without a new best. *Last-quarter gain*, per \
             seed: the best validation accuracy of the evaluations in the last quarter of the \
             steps the run trained, minus the best before them — near zero when the curve had \
             flattened, large when the run was still rising when its steps ran out (the \
             learning rate decays to 5 % of its peak at the last step).\n"
        );
        let p = plateau[ti];
        if p.rising > 0 {
            let noise = match (p.above_noise, task.val_examples) {
                (Some(k), Some(n)) => format!(
                    " Validation accuracy is measured on {} examples, so it carries a \
                     standard error of {:.1}–{:.1} points at this task's accuracies: {k} of \
                     these {} gains exceed two standard errors of their run's measurement{}.",
                    thousands(n),
                    100.0 * p.se_range.0,
                    100.0 * p.se_range.1,
                    p.rising,
                    if k == 0 {
                        " (every one is within the noise of a flat curve)"
                    } else if k < p.rising {
                        " (the others are within the noise of a flat curve)"
                    } else {
                        ""
                    }
                ),
                _ => String::new(),
            };
            let _ = writeln!(
                md,
                "**Plateau:** {} of {} runs had not flattened when their budget ended by the \
                 one-point rule: they gained more than {:.0} point of validation accuracy in \
                 the last quarter of their steps (largest {:+.1}).{noise} Where those runs \
                 weigh, this task's comparisons hold at an equal number of steps, not between \
                 converged models.\n",
                p.rising,
                p.runs,
                100.0 * RISING,
                100.0 * p.top
            );
        }
        if !bars.is_empty() {
            let f = paths.plots.join(format!("{}-accuracy.svg", task.name));
            let svg = bars_svg(
                &format!("{}: test accuracy (mean ± 95 % CI over seeds)", task.name),
                "test accuracy",
                &bars,
                majority.map(|m| (m, "majority class")),
            )?;
            write_atomic(&f, svg.as_bytes())?;
            let _ = writeln!(
                md,
                "![{} accuracy]({})\n",
                task.name,
                rel(&paths.markdown, &f)
            );
            written.push(f);
        }
        // validation curves
        let mut series = Vec::new();
        for (ai, arm) in manifest.arms.iter().enumerate() {
            if let Some(runs) = groups.get(&(ti, ai)) {
                series.push(Series::new(
                    arm.name.clone(),
                    mean_curve(runs, |p| Some(p.acc)),
                ));
            }
        }
        if !series.is_empty() {
            let f = paths.plots.join(format!("{}-validation.svg", task.name));
            write_panels(
                &f,
                &[Panel {
                    title: format!("{}: validation accuracy (mean over seeds)", task.name),
                    x_label: "step".into(),
                    y_label: "validation accuracy".into(),
                    series,
                    log_x: false,
                }],
                1,
            )?;
            let _ = writeln!(
                md,
                "Validation curves (each point the mean over the seeds that reached that step; \
                 runs stop on their patience, so a flat tail is the plateau):\n\n![{} validation]({})\n",
                task.name,
                rel(&paths.markdown, &f)
            );
            written.push(f);
        }
        // comparisons on this task
        let here: Vec<&Tested> = tests.iter().filter(|t| t.task == ti).collect();
        if !here.is_empty() {
            let _ = writeln!(
                md,
                "| claim | comparison | difference (points, 95 % CI) | Hedges' g | p | p (Holm) |\n|---|---|---|---|---|---|"
            );
            for t in here {
                let _ = writeln!(
                    md,
                    "| {} | {} − {} (n = {}, {}) | {:+.1}{} | {} | {} | {} |",
                    t.claim,
                    t.better,
                    t.than,
                    t.n.0,
                    t.n.1,
                    100.0 * t.diff,
                    t.ci.map_or(String::new(), |c| format!(" ± {:.1}", 100.0 * c)),
                    t.g.map_or("–".into(), |g| format!("{g:+.2}")),
                    p_fmt(t.p),
                    p_fmt(t.holm)
                );
            }
            let _ = writeln!(md);
        }
        memory_section(
            &mut md,
            &mut written,
            manifest,
            ti,
            &groups,
            &changes,
            paths,
        )?;
    }

    // ---- appendix: every run
    let _ = writeln!(md, "## Every run\n");
    let _ = writeln!(
        md,
        "| task | arm | seed | test % | best val % | best step | steps | wall s | command |\n|---|---|---|---|---|---|---|---|---|"
    );
    for ((ti, ai), runs) in &groups {
        for r in runs {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {:.0} | `{}` |",
                manifest.tasks[*ti].name,
                manifest.arms[*ai].name,
                r.seed,
                pct(r.test_acc),
                pct(r.best_val_acc),
                r.best_step,
                r.steps,
                r.wall_s,
                r.command
            );
        }
    }
    write_atomic(&paths.markdown, md.as_bytes())?;
    written.push(paths.markdown.clone());
    remove_stale_plots(manifest, paths, &written)?;
    Ok(written)
}

/// A run whose [`late_gain`] exceeds this (one point of accuracy) had not flattened.
const RISING: f64 = 0.01;

/// Of the runs of task `ti`: how many had not flattened ([`RISING`]), how many there are,
/// and the largest late gain.
fn still_rising(
    groups: &BTreeMap<(usize, usize), Vec<&RunResult>>,
    ti: usize,
    arms: usize,
    val_examples: Option<usize>,
) -> Plateau {
    let runs: Vec<&RunResult> = (0..arms)
        .filter_map(|a| groups.get(&(ti, a)))
        .flatten()
        .copied()
        .collect();
    let gains: Vec<f64> = runs
        .iter()
        .map(|r| late_gain(r).unwrap_or(f64::NAN))
        .collect();
    let rising = gains.iter().filter(|g| **g > RISING).count();
    let ses: Vec<f64> = runs
        .iter()
        .map(|r| val_examples.map_or(f64::NAN, |n| standard_error(r.best_val_acc, n)))
        .collect();
    let above_noise = val_examples.map(|_| {
        gains
            .iter()
            .zip(&ses)
            .filter(|(g, se)| **g > RISING && **g > 2.0 * **se)
            .count()
    });
    let se_range = ses.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), &se| {
        (lo.min(se), hi.max(se))
    });
    let top = gains
        .iter()
        .copied()
        .filter(|g| g.is_finite())
        .fold(f64::NEG_INFINITY, f64::max);
    Plateau {
        rising,
        above_noise,
        se_range,
        runs: gains.len(),
        top,
    }
}

/// How many of a task's runs had not flattened.
#[derive(Clone, Copy, Debug)]
struct Plateau {
    /// Runs whose late gain exceeds [`RISING`].
    rising: usize,
    /// Of those, the runs whose late gain also exceeds two standard errors of their
    /// validation accuracy (when the task gives its validation size).
    above_noise: Option<usize>,
    /// The smallest and largest standard error of the runs' best validation accuracies
    /// (meaningful only with the validation size).
    se_range: (f64, f64),
    /// Runs.
    runs: usize,
    /// The largest late gain.
    top: f64,
}

/// `n` with a comma between thousands (1,000).
fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Standard error √(a(1 − a)/n) of an accuracy `a` measured on `n` examples.
fn standard_error(a: f64, n: usize) -> f64 {
    (a * (1.0 - a) / n.max(1) as f64).sqrt()
}

/// The gain of validation accuracy over the last quarter of a run's steps: the best accuracy
/// evaluated after 3/4 of the steps the run trained, minus the best before; `None` when the
/// run has no evaluation on one side.
pub fn late_gain(r: &RunResult) -> Option<f64> {
    let cut = r.steps as f64 * 0.75;
    let best = |late: bool| {
        r.curve
            .iter()
            .filter(|p| (p.step as f64 > cut) == late && p.acc.is_finite())
            .map(|p| p.acc)
            .reduce(f64::max)
    };
    Some(best(true)? - best(false)?)
}

/// Removes the plots of an earlier report that this one did not write (e.g. of runs since
/// dropped from the results): SVG files in the plots folder whose names start with one of
/// the manifest's task names.
fn remove_stale_plots(
    manifest: &Manifest,
    paths: &ReportPaths,
    written: &[std::path::PathBuf],
) -> Result<()> {
    let entries = std::fs::read_dir(&paths.plots).map_err(|e| Error::io(&paths.plots, e))?;
    for e in entries {
        let e = e.map_err(|e| Error::io(&paths.plots, e))?;
        let f = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        let ours = name.ends_with(".svg")
            && manifest
                .tasks
                .iter()
                .any(|t| name.starts_with(&format!("{}-", t.name)));
        if ours && !written.contains(&f) {
            std::fs::remove_file(&f).map_err(|e| Error::io(&f, e))?;
        }
    }
    Ok(())
}

/// The mean over runs of `f` at each evaluated step (only the runs that reached the step).
fn mean_curve(
    runs: &[&RunResult],
    f: impl Fn(&super::EvalPoint) -> Option<f64>,
) -> Vec<(f64, f64)> {
    let mut by_step: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    for r in runs {
        for p in &r.curve {
            if let Some(v) = f(p).filter(|v| v.is_finite()) {
                by_step.entry(p.step).or_default().push(v);
            }
        }
    }
    by_step
        .into_iter()
        .map(|(s, v)| (s as f64, mean(&v)))
        .collect()
}

fn memory_section(
    md: &mut String,
    written: &mut Vec<std::path::PathBuf>,
    manifest: &Manifest,
    ti: usize,
    groups: &BTreeMap<(usize, usize), Vec<&RunResult>>,
    changes: &[Change],
    paths: &ReportPaths,
) -> Result<()> {
    let task = &manifest.tasks[ti].name;
    let here: Vec<&Change> = changes.iter().filter(|c| c.task == ti).collect();
    if here.is_empty() {
        return Ok(());
    }
    let _ = writeln!(
        md,
        "### Memory over training ({task})\n\nPer layer, from the first evaluation to the best checkpoint's evaluation \
         (paired by seed; Y_p's effective rank divided by m, so 1 = every slot carries something \
         different and 1/m = one direction). Holm-corrected over every (task, arm, layer, metric).\n"
    );
    let _ = writeln!(
        md,
        "| arm | seeds | layer | metric | first eval | best checkpoint | change (95 % CI) | p (Holm) |\n|---|---|---|---|---|---|---|---|"
    );
    for c in &here {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {:.3} | {:.3} | {} | {} |",
            c.arm,
            c.n,
            c.layer,
            c.metric,
            c.start,
            c.end,
            c.diff
                .map_or("–".into(), |(m, ci, _)| format!("{m:+.3} ± {ci:.3}")),
            p_fmt(c.holm)
        );
    }
    let _ = writeln!(md);
    // curves: each memory arm, per layer, per metric
    let mem_arms: Vec<(usize, &str)> = manifest
        .arms
        .iter()
        .enumerate()
        .filter(|(ai, _)| groups.contains_key(&(ti, *ai)))
        .filter(|(_, a)| here.iter().any(|c| c.arm == a.name))
        .map(|(ai, a)| (ai, a.name.as_str()))
        .collect();
    let layers = here.iter().map(|c| c.layer).max().unwrap_or(0) + 1;
    let mut panels = Vec::new();
    for name in METRICS {
        for layer in 0..layers {
            let series = mem_arms
                .iter()
                .map(|(ai, a)| {
                    let runs = &groups[&(ti, *ai)];
                    let m = runs[0].options.memory.unwrap_or(1) as f64;
                    let scale = if name.starts_with("Y_p") { m } else { 1.0 };
                    Series::new(
                        a.to_string(),
                        mean_curve(runs, |p| metric(p, name, layer).map(|v| v / scale)),
                    )
                })
                .collect();
            panels.push(Panel {
                title: format!("{name}, layer {layer}"),
                x_label: "step".into(),
                y_label: name.into(),
                series,
                log_x: false,
            });
        }
    }
    let f = paths.plots.join(format!("{task}-memory.svg"));
    write_panels(&f, &panels, layers)?;
    let _ = writeln!(md, "![{task} memory]({})\n", rel(&paths.markdown, &f));
    written.push(f);
    // heatmaps: pack-row divergences of the last layer, first evaluation and best checkpoint
    let mut maps = String::new();
    for (ai, a) in &mem_arms {
        let r = groups[&(ti, *ai)][0];
        for (when, m) in [
            ("first evaluation", &r.first_pack_rows),
            ("best checkpoint, test", &r.final_pack_rows),
        ] {
            if let Some(layers) = m {
                if let Some(last) = layers.last() {
                    let f = paths.plots.join(format!(
                        "{task}-{a}-pack-rows-{}.svg",
                        if when.starts_with("first") {
                            "first"
                        } else {
                            "best"
                        }
                    ));
                    let svg = heatmap_unit_svg(
                        &format!(
                            "{a}, seed {}, last layer: pack-row JS divergence ({when})",
                            r.seed
                        ),
                        last,
                    )?;
                    write_atomic(&f, svg.as_bytes())?;
                    let _ = write!(maps, "![{a} {when}]({}) ", rel(&paths.markdown, &f));
                    written.push(f);
                }
            }
        }
    }
    if !maps.is_empty() {
        let _ = writeln!(
            md,
            "Pack-attention row similarity of the first test example (Jensen–Shannon divergence \
             between the memory slots' attention rows, averaged over heads; white = two slots read \
             the same positions, red = disjoint positions):\n\n{maps}\n"
        );
    }
    Ok(())
}

/// The one-line verdict of each claim.
fn verdicts(
    manifest: &Manifest,
    tests: &[Tested],
    changes: &[Change],
    groups: &BTreeMap<(usize, usize), Vec<&RunResult>>,
) -> Vec<String> {
    let name = |ti: usize| manifest.tasks[ti].name.as_str();
    let mut out = Vec::new();
    // (1) degradation of Luna's memory
    let luna: Vec<&Change> = changes
        .iter()
        .filter(|c| c.arm == "luna" && c.metric == "Y_p effective rank / m")
        .collect();
    let degraded: Vec<String> = luna
        .iter()
        .filter(|c| c.holm < ALPHA && c.diff.is_some_and(|d| d.0 < 0.0))
        .map(|c| {
            format!(
                "{} layer {} ({:.2} → {:.2})",
                name(c.task),
                c.layer,
                c.start,
                c.end
            )
        })
        .collect();
    // what the other metrics of Luna's memory did over the same span (mean over cells)
    let span = |metric: &str| -> Option<String> {
        let c: Vec<&Change> = changes
            .iter()
            .filter(|c| c.arm == "luna" && c.metric == metric)
            .collect();
        (!c.is_empty()).then(|| {
            let n = c.len() as f64;
            let (a, b) = (
                c.iter().map(|c| c.start).sum::<f64>() / n,
                c.iter().map(|c| c.end).sum::<f64>() / n,
            );
            let sig = c
                .iter()
                .filter(|c| c.holm < ALPHA)
                .map(|c| format!("{} layer {}", name(c.task), c.layer))
                .collect::<Vec<_>>();
            format!(
                "{metric} {a:.2} → {b:.2}{}",
                if sig.is_empty() {
                    String::new()
                } else {
                    format!(" (significant in {})", sig.join(", "))
                }
            )
        })
    };
    let others: Vec<String> = ["pack-row divergence (bits)", "pack entropy"]
        .iter()
        .filter_map(|m| span(m))
        .collect();
    let others = if others.is_empty() {
        String::new()
    } else {
        format!(
            " Over the same span, mean over tasks and layers: {}.",
            others.join("; ")
        )
    };
    // cells with fewer than two seeds have no test yet (their Holm p is NaN)
    let tested = luna.iter().filter(|c| !c.holm.is_nan()).count();
    let pending = match luna.len() - tested {
        0 => String::new(),
        n => format!(" ({n} more not testable yet: fewer than two seeds)"),
    };
    out.push(if luna.is_empty() {
        "1. **Luna's memory degrades during training:** no Luna runs yet.".to_string()
    } else if tested == 0 {
        format!(
            "1. **Luna's memory degrades during training:** not testable yet: {} (task, layer) \
             cells, each with fewer than two seeds.{others}",
            luna.len()
        )
    } else if degraded.is_empty() {
        format!(
            "1. **Luna's memory degrades during training: not reproduced** — Y_p's effective rank \
             (÷ m) did not fall significantly between the first evaluation and the best checkpoint \
             in any of {} (task, layer) cells{pending} (table per task below).{others}",
            tested
        )
    } else {
        format!(
            "1. **Luna's memory degrades during training: reproduced in {} of {} (task, layer) cells**{pending} \
             — Y_p's effective rank ÷ m fell significantly from the first evaluation to the best \
             checkpoint in {}.{others}",
            degraded.len(),
            tested,
            degraded.join("; ")
        )
    });
    // (2), (3): accuracy claims
    for (claim, text) in [
        ("2", "ConvLuna beats Luna"),
        ("3", "ConvLuna with one memory slot beats the Transformer"),
    ] {
        let t: Vec<&Tested> = tests.iter().filter(|t| t.claim == claim).collect();
        let won: Vec<String> = t
            .iter()
            .filter(|t| t.holm < ALPHA && t.diff > 0.0)
            .map(|t| format!("{} (+{:.1} points)", name(t.task), 100.0 * t.diff))
            .collect();
        let lost: Vec<String> = t
            .iter()
            .filter(|t| t.holm < ALPHA && t.diff < 0.0)
            .map(|t| format!("{} ({:.1} points)", name(t.task), 100.0 * t.diff))
            .collect();
        let rest: Vec<String> = t
            .iter()
            .filter(|t| t.holm >= ALPHA)
            .map(|t| format!("{} {:+.1}", name(t.task), 100.0 * t.diff))
            .collect();
        // no test yet: fewer than two seeds in an arm (or no variance at all)
        let untested: Vec<String> = t
            .iter()
            .filter(|t| t.holm.is_nan())
            .map(|t| {
                format!(
                    "{} {:+.1} (n = {}, {})",
                    name(t.task),
                    100.0 * t.diff,
                    t.n.0,
                    t.n.1
                )
            })
            .collect();
        let of = format!(
            "{} of {} tasks with results, {} in the study",
            won.len(),
            t.len(),
            manifest.tasks.len()
        );
        let verdict = if t.is_empty() {
            "no runs yet".to_string()
        } else if !won.is_empty() && lost.is_empty() && won.len() * 2 > t.len() {
            format!("**reproduced** ({of}) on {}", won.join(", "))
        } else if !won.is_empty() {
            format!("**partly reproduced** ({of}): better on {}", won.join(", "))
        } else {
            format!("**not reproduced** (0 of {} tasks with results)", t.len())
        };
        let mut line = format!(
            "{}. **{text}:** {verdict}",
            claim.parse::<usize>().unwrap_or(0)
        );
        if !lost.is_empty() {
            let _ = write!(line, "; significantly worse on {}", lost.join(", "));
        }
        if !rest.is_empty() {
            let _ = write!(
                line,
                "; no significant difference on {} (points)",
                rest.join(", ")
            );
        }
        if !untested.is_empty() {
            let _ = write!(
                line,
                "; not testable yet on {} (points; an arm has fewer than two seeds or no \
                 variance)",
                untested.join(", ")
            );
        }
        out.push(line + ".");
    }
    // (4) locality: ConvLuna's gain over Luna next to the controls' gains
    let arm = |n: &str| manifest.arms.iter().position(|a| a.name == n);
    let m = |ti: usize, a: Option<usize>| {
        a.and_then(|a| groups.get(&(ti, a)))
            .map(|v| mean(&v.iter().map(|r| r.test_acc).collect::<Vec<_>>()))
    };
    let mut parts = Vec::new();
    for ti in 0..manifest.tasks.len() {
        let (cl, lu, tr, ft, cm) = (
            m(ti, arm("convluna")),
            m(ti, arm("luna")),
            m(ti, arm("transformer")),
            m(ti, arm("transformer+conv")),
            m(ti, arm("conv-only")),
        );
        if let (Some(cl), Some(lu)) = (cl, lu) {
            let mut s = format!("{}: ConvLuna − Luna {:+.1}", name(ti), 100.0 * (cl - lu));
            if let (Some(ft), Some(tr)) = (ft, tr) {
                let _ = write!(
                    s,
                    ", Transformer+conv − Transformer {:+.1}",
                    100.0 * (ft - tr)
                );
            }
            if let Some(cm) = cm {
                let _ = write!(s, ", conv-only − Luna {:+.1}", 100.0 * (cm - lu));
            }
            parts.push(s);
        }
    }
    let sig4: Vec<String> = tests
        .iter()
        .filter(|t| t.claim == "4" && t.holm < ALPHA)
        .map(|t| {
            format!(
                "{} − {} on {} {:+.1}",
                t.better,
                t.than,
                name(t.task),
                100.0 * t.diff
            )
        })
        .collect();
    out.push(format!(
        "4. **How much of (2) locality explains:** {} (points). Significant after correction: {}.",
        if parts.is_empty() {
            "no runs yet".to_string()
        } else {
            parts.join("; ")
        },
        if sig4.is_empty() {
            "none".to_string()
        } else {
            sig4.join("; ")
        }
    ));
    out
}
