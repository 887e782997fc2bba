//! The study's Markdown report and plots, from the manifest, the results file and the
//! optional step-0 file alone. One function per section; the statistics are in
//! [`super::analysis`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::analysis::{
    accuracy_tests, best_rank, has_memory, memory, metric, shares_data_per_seed, slots, task_runs,
    AccTest, Change, Estimate, Groups, Kind, Memory, ALPHA, MEMORY_ARMS, METRICS,
};
use super::{grouped, read_step0, with_step0, Manifest, ReportPaths, RunResult};
use crate::error::{Error, Result};
use crate::params::write_atomic;
use crate::plot::{bars_svg, heatmap_unit_svg, write_panels, Panel, Series};
use crate::stats::{ci95, mean, ROUNDING};

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

/// A table cell of accuracies over seeds: mean ± 95 % CI (%), the number of seeds in brackets.
fn acc_cell(x: &[f64]) -> String {
    if x.len() < 2 {
        format!("{} ({})", pct(mean(x)), x.len())
    } else {
        format!("{} ({})", pm(x), x.len())
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

/// Everything the sections read.
struct Ctx<'a> {
    manifest: &'a Manifest,
    /// Every result given, retired tasks included.
    all: &'a [RunResult],
    groups: Groups<'a>,
    tests: Vec<AccTest>,
    mem: Memory,
    plateau: Vec<Plateau>,
    paths: &'a ReportPaths,
}

impl Ctx<'_> {
    fn task(&self, ti: usize) -> &str {
        &self.manifest.tasks[ti].name
    }
    fn arm(&self, name: &str) -> Option<usize> {
        self.manifest.arms.iter().position(|a| a.name == name)
    }
    fn runs(&self, ti: usize, arm: &str) -> Option<&Vec<&RunResult>> {
        self.arm(arm).and_then(|a| self.groups.get(&(ti, a)))
    }
    /// The results of tasks no longer in the manifest (retired).
    fn retired(&self) -> impl Iterator<Item = &RunResult> {
        self.all
            .iter()
            .filter(|r| !self.manifest.tasks.iter().any(|t| t.name == r.task))
    }
    /// The runs of task `ti`, over the manifest's arms.
    fn task_runs(&self, ti: usize) -> impl Iterator<Item = &RunResult> {
        task_runs(&self.groups, ti)
    }
    /// The runs of the manifest's tasks and arms.
    fn study_runs(&self) -> impl Iterator<Item = &RunResult> {
        self.groups.values().flatten().copied()
    }
    /// The tests of one manifest comparison, task by task.
    fn comparison(&self, better: &str, than: &str) -> Vec<&AccTest> {
        self.tests
            .iter()
            .filter(|t| {
                t.kind == Kind::Comparison
                    && t.terms.len() == 2
                    && t.terms[0].1 == better
                    && t.terms[1].1 == than
            })
            .collect()
    }
}

/// Writes the report (`paths.markdown`) and its plots (`paths.plots`) from `manifest`,
/// `results` and, when `paths.step0` names one, the step-0 file; returns the files written.
pub fn report(
    manifest: &Manifest,
    results: &[RunResult],
    paths: &ReportPaths,
) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(&paths.plots).map_err(|e| Error::io(&paths.plots, e))?;
    let step0 = match &paths.step0 {
        Some(p) => read_step0(p)?,
        None => Vec::new(),
    };
    let results = with_step0(results, &step0);
    let groups = grouped(manifest, &results);
    let tests = accuracy_tests(manifest, &groups);
    let mem = memory(manifest, &groups);
    let plateau = (0..manifest.tasks.len())
        .map(|ti| still_rising(&groups, ti, manifest.tasks[ti].val_examples))
        .collect();
    let ctx = Ctx {
        manifest,
        all: &results,
        groups,
        tests,
        mem,
        plateau,
        paths,
    };
    let mut md = String::new();
    let mut written = Vec::new();
    header(&mut md);
    status(&mut md, &ctx);
    bottom_line(&mut md, &ctx);
    verdicts(&mut md, &ctx);
    plateau_summary(&mut md, &ctx);
    accuracy_table(&mut md, &ctx);
    comparisons(&mut md, &ctx);
    factorial(&mut md, &ctx);
    memory_summary(&mut md, &ctx);
    setup(&mut md, manifest);
    for ti in 0..manifest.tasks.len() {
        task_section(&mut md, &mut written, &ctx, ti)?;
    }
    retired_tasks(&mut md, &ctx);
    every_run(&mut md, &ctx);
    write_atomic(&paths.markdown, md.as_bytes())?;
    written.push(paths.markdown.clone());
    remove_stale_plots(manifest, &results, paths, &written)?;
    Ok(written)
}

fn header(md: &mut String) {
    let _ = writeln!(md, "# Reproducing *On Difficulties of Attention Factorization through Shared Memory* at CPU scale\n");
    let _ = writeln!(
        md,
        "Generated by `cargo run --release --example study -- --report` from \
         [`reproduction/study.json`](reproduction/study.json) (the study), \
         [`reproduction/results.jsonl`](reproduction/results.jsonl) (one line per finished run) \
         and [`reproduction/step0.jsonl`](reproduction/step0.jsonl) (the step-0 evaluation of \
         runs that did not record one, from `--step0`); do not edit by hand. \
         `cargo run --release --example study` runs what is missing (each finished run is \
         appended and skipped on the next call; a killed run resumes from its last \
         checkpoint).\n"
    );
}

/// The median of `x` (NaN when empty).
fn median(x: &[f64]) -> f64 {
    let mut v = x.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => 0.5 * (v[n / 2 - 1] + v[n / 2]),
    }
}

fn cpu_hours<'a>(runs: impl Iterator<Item = &'a RunResult>) -> f64 {
    runs.map(|r| r.wall_s * r.threads as f64).sum::<f64>() / 3600.0
}

fn status(md: &mut String, ctx: &Ctx) {
    let m = ctx.manifest;
    let total = m.runs().len();
    let done = ctx.study_runs().count();
    let per_task: Vec<String> = m
        .tasks
        .iter()
        .enumerate()
        .map(|(ti, t)| {
            let arms = m.arms.iter().filter(|a| t.has_arm(&a.name)).count();
            let want = arms * t.seeds(&m.seeds).len();
            let have = ctx.task_runs(ti).count();
            let pending: Vec<&str> = m
                .arms
                .iter()
                .enumerate()
                .filter(|(ai, a)| t.has_arm(&a.name) && !ctx.groups.contains_key(&(ti, *ai)))
                .map(|(_, a)| a.name.as_str())
                .collect();
            let mut s = format!(
                "{} {have} of {want} ({arms} arms × {} seeds)",
                t.name,
                t.seeds(&m.seeds).len()
            );
            if !pending.is_empty() {
                let _ = write!(s, ", no run yet of {}", pending.join(", "));
            }
            s
        })
        .collect();
    let walls: Vec<f64> = ctx.study_runs().map(|r| r.wall_s / 60.0).collect();
    let wall_h = walls.iter().sum::<f64>() / 60.0;
    let mut line = format!(
        "**Status:** {done} of {total} runs finished — {}. Their training took {wall_h:.2} \
         hours of wall time, {:.2} CPU-hours (threads × wall)",
        per_task.join("; "),
        cpu_hours(ctx.study_runs())
    );
    if !walls.is_empty() {
        let lo = walls.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = walls.iter().copied().fold(0.0, f64::max);
        let _ = write!(
            line,
            "; a run took {lo:.1}–{hi:.1} minutes (median {:.1})",
            median(&walls)
        );
    }
    let retired: Vec<&RunResult> = ctx.retired().collect();
    if !retired.is_empty() {
        let mut names: Vec<&str> = retired.iter().map(|r| r.task.as_str()).collect();
        names.sort();
        names.dedup();
        let _ = write!(
            line,
            ". Not counted: {} results of tasks no longer in the study ({}; {:.2} CPU-hours)",
            retired.len(),
            names
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", "),
            cpu_hours(retired.iter().copied())
        );
    }
    let _ = writeln!(md, "{line}.\n");
}

/// One test's outcome, for the verdicts: task, estimate (points or raw), CI, Holm p, seeds.
struct Outcome {
    task: String,
    est: Option<f64>,
    ci: Option<f64>,
    holm: f64,
    n: String,
    /// Equal on every seed (see [`Estimate::equal_on_every_seed`]): no test, no difference.
    equal: bool,
}

impl Outcome {
    /// From a test's estimate, scaled by `scale` (100 for accuracy in points, 1 for memory).
    fn of(task: String, est: Option<&Estimate>, scale: f64, holm: f64, n: String) -> Self {
        Outcome {
            task,
            est: est.map(|e| scale * e.est),
            ci: est.and_then(|e| e.ci).map(|c| scale * c),
            holm,
            n,
            equal: est.is_some_and(Estimate::equal_on_every_seed),
        }
    }
    fn significant(&self) -> bool {
        self.holm < ALPHA
    }
    fn tested(&self) -> bool {
        !self.holm.is_nan()
    }
    /// Tested, or equal on every seed: the task has an answer.
    fn decided(&self) -> bool {
        self.tested() || self.equal
    }
}

fn acc_outcomes(tests: &[&AccTest]) -> Vec<Outcome> {
    tests
        .iter()
        .map(|t| Outcome::of(String::new(), t.est.as_ref(), 100.0, t.holm, n_text(t)))
        .collect()
}

/// `n` and the noun, plural unless `n` is 1 ("1 seed", "3 seeds").
fn counted(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

fn n_text(t: &AccTest) -> String {
    match &t.est {
        Some(e) if e.paired => counted(e.n.first().copied().unwrap_or(0), "pair"),
        Some(e) => format!(
            "n = {}",
            e.n.iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        None => String::new(),
    }
}

/// How the outcomes of one claim over tasks read: (verdict, numbers).
fn verdict_of(outs: &[Outcome], digits: usize) -> (String, String) {
    let tested: Vec<&Outcome> = outs.iter().filter(|o| o.decided()).collect();
    let better: Vec<&&Outcome> = tested
        .iter()
        .filter(|o| o.significant() && o.est.is_some_and(|e| e > 0.0))
        .collect();
    let worse: Vec<&&Outcome> = tested
        .iter()
        .filter(|o| o.significant() && o.est.is_some_and(|e| e < 0.0))
        .collect();
    let names = |v: &[&&Outcome]| {
        v.iter()
            .map(|o| o.task.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let k = tested.len();
    let verdict = if k == 0 {
        if outs.iter().any(|o| o.est.is_some()) {
            "**not testable yet**".to_string()
        } else {
            "**pending**".to_string()
        }
    } else if better.len() == k {
        format!("**reproduced** ({k} of {k} tasks)")
    } else if !better.is_empty() && worse.is_empty() {
        format!(
            "**partly reproduced** (better on {}; {} of {k} tasks)",
            names(&better),
            better.len()
        )
    } else if !worse.is_empty() && better.is_empty() {
        format!("**not reproduced: the opposite** on {}", names(&worse))
    } else if !worse.is_empty() {
        format!(
            "**mixed**: better on {}, worse on {}",
            names(&better),
            names(&worse)
        )
    } else {
        format!("**not reproduced**: no significant difference on any of {k} tasks")
    };
    let nums: Vec<String> = outs
        .iter()
        .map(|o| match o.est {
            None => format!("{} pending", o.task),
            Some(e) if o.equal => {
                format!("{} {e:+.digits$}, equal on every seed ({})", o.task, o.n)
            }
            Some(e) if !o.tested() => {
                format!("not testable yet on {} {e:+.digits$} ({})", o.task, o.n)
            }
            Some(e) => format!(
                "{} {e:+.digits$}{} (p Holm {}{})",
                o.task,
                o.ci.map_or(String::new(), |c| format!(" ± {c:.digits$}")),
                p_fmt(o.holm),
                if o.n.is_empty() {
                    String::new()
                } else {
                    format!(", {}", o.n)
                }
            ),
        })
        .collect();
    (verdict, nums.join("; "))
}

/// The outcomes of manifest comparison `better − than`, task by task.
fn comparison_outcomes(ctx: &Ctx, better: &str, than: &str) -> Vec<Outcome> {
    let tests = ctx.comparison(better, than);
    let mut outs = acc_outcomes(&tests);
    for (o, t) in outs.iter_mut().zip(&tests) {
        o.task = ctx.task(t.task).to_string();
        if !o.decided() || t.est.as_ref().is_some_and(|e| !e.paired) {
            let n: Vec<String> = t
                .terms
                .iter()
                .map(|(_, a)| ctx.runs(t.task, a).map_or(0, Vec::len).to_string())
                .collect();
            o.n = format!("n = {}", n.join(", "));
        }
    }
    outs
}

/// How `subject` relates to `object` over the tasks, for the bottom line.
fn relation(outs: &[Outcome], subject: &str, object: &str) -> String {
    let tested: Vec<&Outcome> = outs.iter().filter(|o| o.decided()).collect();
    let nums = outs
        .iter()
        .filter_map(|o| {
            o.est.map(|e| {
                let untested = if o.equal {
                    " equal on every seed"
                } else if o.tested() {
                    ""
                } else {
                    " not testable yet"
                };
                format!("{} {e:+.1}{untested}", o.task)
            })
        })
        .collect::<Vec<_>>()
        .join(", ");
    let better: Vec<&str> = tested
        .iter()
        .filter(|o| o.significant() && o.est.is_some_and(|e| e > 0.0))
        .map(|o| o.task.as_str())
        .collect();
    let worse: Vec<&str> = tested
        .iter()
        .filter(|o| o.significant() && o.est.is_some_and(|e| e < 0.0))
        .map(|o| o.task.as_str())
        .collect();
    let k = tested.len();
    let how = if k == 0 {
        return format!("{subject} vs {object}: pending");
    } else if better.len() == k {
        format!("{subject} beats {object} on all {k} tasks tested")
    } else if better.is_empty() && worse.is_empty() {
        format!("{subject} is not significantly different from {object} on any of {k} tasks")
    } else {
        let mut s = format!("{subject} beats {object} on {} only", better.join(", "));
        if better.is_empty() {
            s = format!("{subject} never beats {object}");
        }
        if !worse.is_empty() {
            let _ = write!(s, " and is worse on {}", worse.join(", "));
        }
        s
    };
    format!("{how} (in points: {nums})")
}

/// Verdict 1, within runs: the direction of Luna's memory change from step 0 (else the first
/// evaluation) to the best checkpoint. (verdict, numbers, short phrase for the bottom line).
fn verdict_degrades(ctx: &Ctx) -> (String, String, String) {
    let luna: Vec<&Change> = ctx.mem.changes.iter().filter(|c| c.arm == "luna").collect();
    let rank: Vec<&&Change> = luna.iter().filter(|c| c.metric == METRICS[0].0).collect();
    if rank.is_empty() {
        let p = "pending".to_string();
        return ("**pending** (no Luna runs)".into(), String::new(), p);
    }
    let tested: Vec<&&Change> = luna
        .iter()
        .filter(|c| c.diverse_up.is_some() && !c.holm.is_nan())
        .collect();
    if tested.is_empty() {
        let v = format!(
            "**not testable yet: {} (task, layer) cells, each with fewer than two seeds**",
            rank.len()
        );
        return (v, String::new(), "not testable yet".into());
    }
    let more = tested.iter().filter(|c| c.direction() > 0).count();
    let less = tested.iter().filter(|c| c.direction() < 0).count();
    let verdict = match (more, less) {
        (0, 0) => "**not reproduced**: no significant change".to_string(),
        (_, 0) => "**not reproduced: the memory becomes more diverse**".to_string(),
        (0, _) => "**reproduced**: the memory becomes less diverse".to_string(),
        _ => "**mixed**: more diverse in some cells, less in others".to_string(),
    };
    let short = match (more, less) {
        (0, 0) => "Luna's memory does not change significantly during training".to_string(),
        (_, 0) => {
            "Luna's memory does not degrade during training: it becomes more diverse".to_string()
        }
        (0, _) => "Luna's memory degrades during training".to_string(),
        _ => "Luna's memory changes both ways during training".to_string(),
    };
    let runs: usize = rank.iter().map(|c| c.n).sum();
    let step0: usize = rank.iter().map(|c| c.from_step0).sum();
    let cells = |name: &str| {
        luna.iter()
            .filter(|c| c.metric == name)
            .map(|c| {
                format!(
                    "{} L{} {:.2} → {:.2}{}",
                    ctx.task(c.task),
                    c.layer,
                    c.start,
                    c.end,
                    if c.holm < ALPHA { "*" } else { "" }
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let nums = format!(
        "{more} significant changes towards a more diverse memory, {less} towards a less \
         diverse one (of {} tests); rank ÷ m: {}; mean cosine: {}; baseline step 0 in {step0} \
         of {runs} (run, layer) pairs{}; `*` significant",
        tested.len(),
        cells(METRICS[0].0),
        cells(METRICS[1].0),
        if step0 < runs {
            ", the first evaluation in the others"
        } else {
            ""
        }
    );
    (
        verdict,
        nums,
        format!("{short} ({more} significant changes towards diversity, {less} against)"),
    )
}

/// Mean rank ÷ m at the best checkpoint of an arm on a task.
fn arm_rank(ctx: &Ctx, ti: usize, arm: &str) -> Option<f64> {
    let v: Vec<f64> = ctx
        .runs(ti, arm)?
        .iter()
        .filter_map(|r| best_rank(r))
        .collect();
    (!v.is_empty()).then(|| mean(&v))
}

fn pretty(arm: &str) -> String {
    match arm {
        "luna" => "Luna".into(),
        "convluna" => "ConvLuna".into(),
        "filter-only" => "filter only".into(),
        "tau-only" => "τ only".into(),
        "luna+filter" => "Luna + filter".into(),
        "luna+tau" => "Luna + τ".into(),
        "convluna-proj" => "projections only".into(),
        a => a.into(),
    }
}

/// Verdict 1 between arms: ConvLuna's memory against Luna's at the best checkpoint.
fn verdict_between(ctx: &Ctx) -> (String, String) {
    let outs: Vec<Outcome> = ctx
        .mem
        .between
        .iter()
        .filter(|t| t.arm == "convluna")
        .map(|t| {
            Outcome::of(
                ctx.task(t.task).to_string(),
                t.est.as_ref(),
                1.0,
                t.holm,
                String::new(),
            )
        })
        .collect();
    let (verdict, _) = verdict_of(&outs, 2);
    let verdict = verdict.replace("(better on", "(ConvLuna's higher on");
    let per_task: Vec<String> = (0..ctx.manifest.tasks.len())
        .filter_map(|ti| {
            let parts: Vec<String> = std::iter::once("luna")
                .chain(MEMORY_ARMS)
                .filter_map(|a| arm_rank(ctx, ti, a).map(|v| format!("{} {v:.2}", pretty(a))))
                .collect();
            (!parts.is_empty()).then(|| format!("{}: {}", ctx.task(ti), parts.join(", ")))
        })
        .collect();
    let sig: Vec<String> = ctx
        .mem
        .between
        .iter()
        .filter(|t| t.holm < ALPHA)
        .filter_map(|t| {
            let e = t.est.as_ref()?;
            Some(format!(
                "{} − Luna {:+.2} on {}",
                pretty(&t.arm),
                e.est,
                ctx.task(t.task)
            ))
        })
        .collect();
    let nums = format!(
        "rank ÷ m at the best checkpoint (mean of layers) — {}; significant after Holm: {}",
        if per_task.is_empty() {
            "pending".to_string()
        } else {
            per_task.join("; ")
        },
        if sig.is_empty() {
            "none".to_string()
        } else {
            sig.join(", ")
        }
    );
    (verdict, nums)
}

/// The correlations of memory diversity and accuracy across runs: (tasks tested, significantly
/// positive, significantly negative) after Holm's correction.
fn correlation_counts(ctx: &Ctx) -> (usize, usize, usize) {
    let tested: Vec<_> = ctx
        .mem
        .correlations
        .iter()
        .filter(|c| c.r.is_some())
        .collect();
    let sig = |positive: bool| {
        tested
            .iter()
            .filter(|c| c.holm < ALPHA && c.r.is_some_and(|r| (r.0 > 0.0) == positive))
            .count()
    };
    (tested.len(), sig(true), sig(false))
}

/// The correlation of memory diversity and accuracy across runs: (verdict, numbers, phrase).
fn verdict_correlation(ctx: &Ctx) -> (String, String, String) {
    let cs = &ctx.mem.correlations;
    let (tested, pos, neg) = correlation_counts(ctx);
    let verdict = if tested == 0 {
        "**pending**".to_string()
    } else if pos == tested {
        format!("**yes** (significant on {pos} of {tested} tasks)")
    } else if pos == 0 && neg == 0 {
        format!("**no**: no significant correlation on any of {tested} tasks")
    } else {
        format!("**mixed**: positive on {pos}, negative on {neg} of {tested} tasks")
    };
    let list = cs
        .iter()
        .map(|c| match c.r {
            Some((r, _)) => format!(
                "{} r = {r:+.2} (n = {}, p Holm {})",
                ctx.task(c.task),
                c.n,
                p_fmt(c.holm)
            ),
            None => format!("{} not testable yet (n = {})", ctx.task(c.task), c.n),
        })
        .collect::<Vec<_>>()
        .join("; ");
    let nums =
        format!(
        "Pearson r over the runs with m ≥ 2 of rank ÷ m at the best checkpoint (mean of layers) \
         and test accuracy: {}",
        if list.is_empty() { "pending".into() } else { list.clone() }
    );
    let short = cs
        .iter()
        .filter_map(|c| c.r.map(|(r, _)| format!("{} {r:+.2}", ctx.task(c.task))))
        .collect::<Vec<_>>()
        .join(", ");
    (verdict, nums, short)
}

fn bottom_line(md: &mut String, ctx: &Ctx) {
    let _ = writeln!(md, "## Bottom line\n");
    let rel = |b: &str, t: &str, s: &str, o: &str| relation(&comparison_outcomes(ctx, b, t), s, o);
    let _ = writeln!(
        md,
        "1. **Memory beyond the conv:** {}; {}; {}.",
        rel(
            "convluna",
            "transformer+conv",
            "ConvLuna",
            "the Transformer with the same conv"
        ),
        rel(
            "convluna-m1",
            "transformer+conv",
            "ConvLuna with one memory slot",
            "the Transformer with the same conv"
        ),
        rel("convluna", "convluna-m1", "m = 16", "m = 1")
    );
    let _ = writeln!(
        md,
        "2. **Claim 2 (ConvLuna beats Luna):** {}; {}; {}.",
        rel("convluna", "luna", "ConvLuna", "Luna"),
        rel(
            "filter-only",
            "luna",
            "the filter alone (filter only)",
            "Luna"
        ),
        rel("tau-only", "luna", "τ alone (τ only)", "Luna")
    );
    let (_, _, deg) = verdict_degrades(ctx);
    let (_, _, corr) = verdict_correlation(ctx);
    let between: Vec<String> = ctx
        .mem
        .between
        .iter()
        .filter(|t| t.arm == "convluna")
        .filter_map(|t| {
            let e = t.est.as_ref()?;
            Some(format!(
                "{} {:+.2}{}",
                ctx.task(t.task),
                e.est,
                if t.holm < ALPHA { "*" } else { "" }
            ))
        })
        .collect();
    // which arms differ from Luna in memory diversity, and which in accuracy
    let diverse: Vec<String> = ctx
        .mem
        .between
        .iter()
        .filter(|t| t.holm < ALPHA && t.est.as_ref().is_some_and(|e| e.est > 0.0))
        .map(|t| format!("{} ({})", pretty(&t.arm), ctx.task(t.task)))
        .collect();
    let accurate: Vec<String> = ctx
        .tests
        .iter()
        .filter(|t| t.kind == Kind::Comparison && t.holm < ALPHA)
        .filter(|t| t.terms.len() == 2 && t.terms[1].1 == "luna")
        .filter(|t| t.est.as_ref().is_some_and(|e| e.est > 0.0))
        .map(|t| format!("{} ({})", pretty(&t.terms[0].1), ctx.task(t.task)))
        .collect();
    let (tested, pos, neg) = correlation_counts(ctx);
    let significance = if tested == 0 {
        "not testable yet".to_string()
    } else if pos == 0 && neg == 0 {
        format!("significant on none of {tested} tasks after Holm's correction")
    } else {
        format!(
            "significantly positive on {pos} and negative on {neg} of {tested} tasks after \
             Holm's correction"
        )
    };
    let list = |v: &[String]| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join(", ")
        }
    };
    let _ = writeln!(
        md,
        "3. **Memory:** {deg}; at the best checkpoint ConvLuna's rank ÷ m minus Luna's: {} \
         (`*` significant). Significantly more diverse memory than Luna: {}; significantly \
         more accurate than Luna: {}. Across runs, memory diversity and test accuracy \
         correlate {} ({significance}).\n",
        list(&between),
        list(&diverse),
        list(&accurate),
        if corr.is_empty() {
            "(pending)".into()
        } else {
            format!("r = {corr}")
        },
    );
}

/// What each manifest comparison claims, in words.
fn claim_text(better: &str, than: &str) -> String {
    match (better, than) {
        ("convluna", "luna") => "ConvLuna beats Luna".into(),
        ("filter-only", "luna") => "ConvLuna with the filter and no τ beats Luna".into(),
        ("tau-only", "luna") => "ConvLuna with τ and no filter beats Luna".into(),
        ("convluna-m1", "transformer") => {
            "ConvLuna with one memory slot beats the Transformer".into()
        }
        ("transformer+conv", "transformer") => "the conv alone lifts the Transformer".into(),
        ("convluna", "conv-only") => "ConvLuna beats the conv without attention".into(),
        ("luna+filter", "luna") => "the filter alone lifts Luna".into(),
        ("luna+tau", "luna") => "τ alone lifts Luna".into(),
        ("convluna", "transformer+conv") => {
            "ConvLuna beats the Transformer with the same conv".into()
        }
        ("convluna-m1", "transformer+conv") => {
            "ConvLuna with one slot beats the Transformer with the same conv".into()
        }
        ("convluna", "convluna-m1") => "16 memory slots beat one".into(),
        (b, t) => format!("{b} beats {t}"),
    }
}

fn verdicts(md: &mut String, ctx: &Ctx) {
    let _ = writeln!(md, "## Verdicts\n");
    let _ =
        writeln!(
        md,
        "Accuracy: test accuracy over seeds, in points; paired t-tests by seed on the tasks whose \
         arms share each seed's data ({}), Welch t-tests elsewhere; the p-values of every \
         comparison and factorial contrast on every task are corrected together with Holm's \
         method ({} tests), and a result counts at α = {ALPHA} after correction; two arms equal \
         on every seed (both at the same accuracy, e.g. the majority class) have no test and \
         count as no difference. Memory: \
         paired by run over training, paired or Welch between arms as for accuracy (arms equal \
         on every seed count as no difference here too), Holm over every memory test and \
         correlation together.\n",
        {
            let p: Vec<&str> = ctx
                .manifest
                .tasks
                .iter()
                .filter(|t| shares_data_per_seed(t))
                .map(|t| t.name.as_str())
                .collect();
            if p.is_empty() { "none".into() } else { p.join(", ") }
        },
        ctx.tests.iter().filter(|t| !t.holm.is_nan()).count()
    );
    let _ = writeln!(
        md,
        "| # | claim | verdict | the numbers |\n|---|---|---|---|"
    );
    let (v, n, _) = verdict_degrades(ctx);
    let _ = writeln!(
        md,
        "| 1 | Luna's memory degrades during training (step 0 → best checkpoint) | {v} | {n} |"
    );
    let (v, n) = verdict_between(ctx);
    let _ = writeln!(
        md,
        "| 1 | Luna's memory is less diverse than ConvLuna's (best checkpoint) | {v} | {n} |"
    );
    let mut seen: Vec<(String, String)> = Vec::new();
    for c in &ctx.manifest.comparisons {
        let key = (c.better.clone(), c.than.clone());
        if seen.contains(&key) {
            continue;
        }
        seen.push(key);
        let outs = comparison_outcomes(ctx, &c.better, &c.than);
        if outs.is_empty() {
            continue;
        }
        let (v, n) = verdict_of(&outs, 1);
        let _ = writeln!(
            md,
            "| {} | {} ({} − {}) | {v} | {n} |",
            c.claim,
            claim_text(&c.better, &c.than),
            c.better,
            c.than
        );
    }
    let (v, n, _) = verdict_correlation(ctx);
    let _ = writeln!(
        md,
        "| – | a more diverse memory goes with higher accuracy (across runs) | {v} | {n} |\n"
    );
}

/// `k` of `n` as a percentage, rounded down to one decimal ("9.8 %"): a share just under a
/// threshold such as the 10 % of runs allowed at their cap (24 of 241 is 9.96 %) must not print
/// as the threshold itself, as rounding to nearest would.
fn percent(k: usize, n: usize) -> String {
    let tenths = 1000 * k / n;
    format!("{}.{} %", tenths / 10, tenths % 10)
}

fn plateau_summary(md: &mut String, ctx: &Ctx) {
    let m = ctx.manifest;
    let runs: usize = ctx.plateau.iter().map(|p| p.runs).sum();
    let cap: usize = ctx.plateau.iter().map(|p| p.at_cap).sum();
    let cap_rising: usize = ctx.plateau.iter().map(|p| p.rising).sum();
    if runs == 0 {
        return;
    }
    let rising: Vec<String> = m
        .tasks
        .iter()
        .zip(&ctx.plateau)
        .filter(|(_, p)| p.rising > 0)
        .map(|(t, p)| match p.above_noise {
            Some(k) => format!(
                "{} ({} of {} runs, at their cap; {k} of them by more than two standard errors \
                 of their validation accuracy)",
                t.name, p.rising, p.runs
            ),
            None => format!("{} ({} of {} runs, at their cap)", t.name, p.rising, p.runs),
        })
        .collect();
    let per_task: Vec<String> = m
        .tasks
        .iter()
        .zip(&ctx.plateau)
        .filter(|(_, p)| p.runs > 0)
        .map(|(t, p)| {
            format!(
                "{} {} of {} at the cap, {} of them still gaining",
                t.name, p.at_cap, p.runs, p.rising
            )
        })
        .collect();
    let mut s = format!(
        "**Step cap:** {cap} of {runs} runs ({}) ended at their step cap rather than on \
         their patience, and {cap_rising} of {runs} ({}) ended there while still gaining \
         more than {:.0} point of validation accuracy in the last quarter of their steps ({}).",
        percent(cap, runs),
        percent(cap_rising, runs),
        100.0 * RISING,
        per_task.join("; ")
    );
    let within_noise = ctx
        .plateau
        .iter()
        .all(|p| p.rising == 0 || p.above_noise == Some(0));
    if !rising.is_empty() && within_noise {
        let _ = write!(
            s,
            " **Plateau:** by the one-point rule, {} were still rising; none of these gains \
             exceeds two standard errors of its run's validation measurement, so every curve \
             is flat within the noise of that measurement.",
            rising.join(", ")
        );
    } else if !rising.is_empty() {
        let _ = write!(
            s,
            " **Not at a plateau:** {}: the comparisons they enter are between models trained \
             for the same budget, not between converged models.",
            rising.join(", ")
        );
    }
    let _ = writeln!(md, "{s}\n");
}

fn accuracy_table(md: &mut String, ctx: &Ctx) {
    let m = ctx.manifest;
    let _ = writeln!(
        md,
        "## Test accuracy\n\nMean ± 95 % CI over seeds (%), seeds in brackets; – : the task does \
         not run the arm.\n"
    );
    let _ = write!(md, "| arm |");
    for t in &m.tasks {
        let _ = write!(md, " {} |", t.name);
    }
    let _ = writeln!(md, "\n|---|{}", "---|".repeat(m.tasks.len()));
    for (ai, a) in m.arms.iter().enumerate() {
        let _ = write!(md, "| {} |", a.name);
        for (ti, t) in m.tasks.iter().enumerate() {
            let cell = if !t.has_arm(&a.name) {
                "–".to_string()
            } else {
                match ctx.groups.get(&(ti, ai)) {
                    None => "pending".to_string(),
                    Some(v) => acc_cell(&v.iter().map(|r| r.test_acc).collect::<Vec<_>>()),
                }
            };
            let _ = write!(md, " {cell} |");
        }
        let _ = writeln!(md);
    }
    let _ = writeln!(md);
}

/// A table's p-value cell for a test of `est`: `p`, or "equal on every seed" where the two
/// sides were (no test; see [`Estimate::equal_on_every_seed`]).
fn p_cell(est: Option<&Estimate>, p: f64) -> String {
    if est.is_some_and(Estimate::equal_on_every_seed) {
        "equal on every seed".into()
    } else {
        p_fmt(p)
    }
}

fn test_row(ctx: &Ctx, t: &AccTest) -> String {
    let ns: Vec<String> = t
        .terms
        .iter()
        .map(|(_, a)| ctx.runs(t.task, a).map_or(0, Vec::len).to_string())
        .collect();
    let label = format!("{} (n = {})", t.label, ns.join(", "));
    match &t.est {
        None => format!(
            "| {label} | pending: no runs of {} | | | | |",
            t.pending.join(", ")
        ),
        Some(e) => format!(
            "| {label} | {} | {:+.1}{} | {} | {} | {} |",
            if e.paired {
                format!(
                    "paired, {}",
                    counted(e.n.first().copied().unwrap_or(0), "seed")
                )
            } else {
                "Welch".into()
            },
            100.0 * e.est,
            e.ci.map_or(String::new(), |c| format!(" ± {:.1}", 100.0 * c)),
            t.g.map_or("–".into(), |g| format!("{g:+.2}")),
            p_cell(Some(e), e.p),
            p_fmt(t.holm)
        ),
    }
}

fn comparisons(md: &mut String, ctx: &Ctx) {
    let _ = writeln!(
        md,
        "## Comparisons\n\nDifference of test accuracy in points (95 % CI); Hedges' g on the \
         two arms' accuracies; p before and after Holm's correction over all {} tests of this \
         section and the next.\n",
        ctx.tests.iter().filter(|t| !t.holm.is_nan()).count()
    );
    test_table(
        md,
        ctx,
        Kind::Comparison,
        ["claim", "comparison", "difference"],
    );
}

/// The table of the accuracy tests of one kind, task by task.
fn test_table(md: &mut String, ctx: &Ctx, kind: Kind, [what, how, est]: [&str; 3]) {
    let _ = writeln!(
        md,
        "| task | {what} | {how} | test | {est} (points, 95 % CI) | Hedges' g | p | p (Holm) |\n|---|---|---|---|---|---|---|---|"
    );
    for t in ctx.tests.iter().filter(|t| t.kind == kind) {
        let _ = writeln!(
            md,
            "| {} | {} {}",
            ctx.task(t.task),
            t.claim,
            test_row(ctx, t)
        );
    }
    let _ = writeln!(md);
}

fn factorial(md: &mut String, ctx: &Ctx) {
    if !ctx.tests.iter().any(|t| t.kind == Kind::Factorial) {
        return;
    }
    let _ = writeln!(
        md,
        "## Filter × τ × projections\n\nThe arms as cells of a design with three factors: the \
         conv filter on the packing keys and values, the learned τ in packing, and ConvLuna's \
         projections (shared q/k/o, no value projection, no unpack scale) against Luna's. \
         Luna, `luna+filter`, `luna+tau` have Luna's projections; `convluna-proj`, \
         `filter-only`, `tau-only`, `convluna` have ConvLuna's with neither factor, the \
         filter, τ, both. A main effect is the mean of the factor's two simple effects; an \
         interaction is their difference. Contrasts that are also a comparison above are \
         listed there. Holm-corrected with the comparisons.\n"
    );
    test_table(md, ctx, Kind::Factorial, ["effect", "contrast", "estimate"]);
}

fn memory_summary(md: &mut String, ctx: &Ctx) {
    let luna: Vec<&Change> = ctx.mem.changes.iter().filter(|c| c.arm == "luna").collect();
    let _ = writeln!(md, "## Memory\n");
    if luna.is_empty() && ctx.mem.between.is_empty() {
        let _ = writeln!(md, "Pending: no runs with a memory yet.\n");
        return;
    }
    let _ = writeln!(
        md,
        "**Luna over training.** Each (task, layer) from the baseline (the run's step-0 \
         evaluation where it has one, else its first evaluation) to the best checkpoint's \
         evaluation, paired by run. A more diverse memory has a higher rank ÷ m (1 = every slot \
         different, 1/m = one direction), a lower mean cosine between slots and a higher \
         pack-row divergence (slots read different positions); entropy is the pack attention's \
         spread (lower = sharper).\n"
    );
    let _ = writeln!(
        md,
        "| task | layer | metric | baseline (step 0 in) | baseline | best checkpoint | change (95 % CI) | p (Holm) | direction |\n|---|---|---|---|---|---|---|---|---|"
    );
    for c in &luna {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} of {} | {:.3} | {:.3} | {} | {} | {} |",
            ctx.task(c.task),
            c.layer,
            c.metric,
            c.from_step0,
            c.n,
            c.start,
            c.end,
            c.diff
                .map_or("–".into(), |(m, ci, _)| format!("{m:+.3} ± {ci:.3}")),
            p_fmt(c.holm),
            match c.direction() {
                1 => "more diverse",
                -1 => "less diverse",
                _ => "–",
            }
        );
    }
    let _ = writeln!(
        md,
        "\n**Between arms at the best checkpoint.** Y_p's rank ÷ m (mean of layers) of each \
         arm minus Luna's, paired by seed where the arms share data.\n"
    );
    let _ = writeln!(
        md,
        "| task | arm | rank ÷ m | Luna | difference (95 % CI) | test | p (Holm) |\n|---|---|---|---|---|---|---|"
    );
    for t in &ctx.mem.between {
        let (mine, luna) = (arm_rank(ctx, t.task, &t.arm), arm_rank(ctx, t.task, "luna"));
        let f = |v: Option<f64>| v.map_or("pending".into(), |v| format!("{v:.3}"));
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} |",
            ctx.task(t.task),
            t.arm,
            f(mine),
            f(luna),
            t.est.as_ref().map_or("pending".into(), |e| format!(
                "{:+.3}{}",
                e.est,
                e.ci.map_or(String::new(), |c| format!(" ± {c:.3}"))
            )),
            t.est.as_ref().map_or(String::new(), |e| if e.paired {
                "paired".into()
            } else {
                "Welch".into()
            }),
            p_cell(t.est.as_ref(), t.holm)
        );
    }
    let (_, n, _) = verdict_correlation(ctx);
    let _ = writeln!(md, "\n**Memory and accuracy.** {n}.\n");
}

fn setup(md: &mut String, manifest: &Manifest) {
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
}

/// How a run ended: on its patience, or at its step cap (and whether still rising then).
fn ending(r: &RunResult) -> &'static str {
    if r.stopped_early {
        "patience"
    } else if late_gain(r).is_some_and(|g| g > RISING) {
        "cap, rising"
    } else {
        "cap"
    }
}

/// The share of the test split's most frequent class, for a task's section: its sentence, and
/// the reference line of its accuracy plot (value, label). Tasks that draw their data per seed
/// (generated ListOps) have a test split, and a majority, per seed: those are listed by seed
/// and the plot's line is their mean.
fn majority_line(ctx: &Ctx, ti: usize) -> Option<(String, (f64, &'static str))> {
    let mut by_seed = std::collections::BTreeMap::new();
    for r in ctx.task_runs(ti) {
        by_seed.entry(r.seed).or_insert(r.majority);
    }
    let shares: Vec<f64> = by_seed.values().copied().collect();
    let first = *shares.first()?;
    if shares.iter().all(|&x| (x - first).abs() <= ROUNDING) {
        let line = format!("Majority class of the test split: {} %.", pct(first));
        return Some((line, (first, "majority class")));
    }
    let listed: Vec<String> = by_seed
        .iter()
        .map(|(seed, &x)| format!("{} % (seed {seed})", pct(x)))
        .collect();
    let avg = mean(&shares);
    let line = format!(
        "Majority class of the test split, by seed (each seed draws its own data): {}; mean \
         {} %. A model that predicts one class scores that class's share of the test split, \
         which can be below its most frequent class's.",
        listed.join(", "),
        pct(avg)
    );
    Some((line, (avg, "majority class (mean of seeds)")))
}

fn task_section(md: &mut String, written: &mut Vec<PathBuf>, ctx: &Ctx, ti: usize) -> Result<()> {
    let m = ctx.manifest;
    let task = &m.tasks[ti];
    let paths = ctx.paths;
    let _ = writeln!(md, "## {}\n", task.name);
    let majority = majority_line(ctx, ti);
    if let Some((line, _)) = &majority {
        let _ = writeln!(md, "{line}\n");
    }
    let _ = writeln!(
        md,
        "| arm | seeds | test accuracy % (mean ± 95 % CI) | best validation % | best step | steps trained | last-quarter gain (points) | wall min / run |\n|---|---|---|---|---|---|---|---|"
    );
    let mut bars = Vec::new();
    for (ai, arm) in m.arms.iter().enumerate() {
        if !task.has_arm(&arm.name) {
            continue;
        }
        let Some(runs) = ctx.groups.get(&(ti, ai)) else {
            let _ = writeln!(md, "| {} | 0 | pending | – | – | – | – | – |", arm.name);
            continue;
        };
        let x: Vec<f64> = runs.iter().map(|r| r.test_acc).collect();
        let val: Vec<f64> = runs.iter().map(|r| r.best_val_acc).collect();
        let best: Vec<f64> = runs.iter().map(|r| r.best_step as f64).collect();
        let steps: Vec<String> = runs
            .iter()
            .map(|r| {
                if r.stopped_early {
                    r.steps.to_string()
                } else {
                    format!("{} (cap)", r.steps)
                }
            })
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
        "\n`(cap)`: the run used all its steps without meeting its patience (stopped by the \
         step cap); otherwise it stopped after `patience` evaluations without a new best. \
         *Last-quarter gain*, per seed: the best validation accuracy of the evaluations in the \
         last quarter of the steps the run trained, minus the best before them — near zero \
         when the curve had flattened, large when the run was still rising when its steps ran \
         out (a run stopped by its patience had flattened whatever this gain, which can include \
         the rise before its best when it trained longer than four patience windows).\n"
    );
    task_plateau(md, ctx, ti);
    if !bars.is_empty() {
        let f = paths.plots.join(format!("{}-accuracy.svg", task.name));
        let svg = bars_svg(
            &format!("{}: test accuracy (mean ± 95 % CI over seeds)", task.name),
            "test accuracy",
            &bars,
            majority.as_ref().map(|(_, reference)| *reference),
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
    let series: Vec<Series> = m
        .arms
        .iter()
        .enumerate()
        .filter_map(|(ai, arm)| {
            let runs = ctx.groups.get(&(ti, ai))?;
            Some(Series::new(
                arm.name.clone(),
                mean_curve(runs, |p| Some(p.acc)),
            ))
        })
        .collect();
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
        let p = ctx.plateau[ti];
        let tail = if p.at_cap == 0 {
            "every run stopped on its patience, so a flat tail is the plateau".to_string()
        } else if p.at_cap == p.runs {
            "every run stopped at its step cap, so a flat tail shows where the schedule ended \
             training, not that accuracy had stopped improving: see the step-cap line above"
                .to_string()
        } else {
            format!(
                "{} of {} runs stopped at their step cap rather than on their patience, so a \
                 flat tail is a plateau only as far as the step-cap line above says those runs \
                 had stopped gaining",
                p.at_cap, p.runs
            )
        };
        let _ = writeln!(
            md,
            "Validation curves (each point the mean over the seeds that reached that step, step \
             0 included where known; {tail}):\n\n![{} validation]({})\n",
            task.name,
            rel(&paths.markdown, &f)
        );
        written.push(f);
    }
    memory_section(md, written, ctx, ti)
}

fn task_plateau(md: &mut String, ctx: &Ctx, ti: usize) {
    let p = ctx.plateau[ti];
    let task = &ctx.manifest.tasks[ti];
    if p.runs == 0 {
        return;
    }
    let mut s = format!(
        "**Step cap:** {} of {} runs ended at the step cap, {} of them still gaining more than \
         {:.0} point in their last quarter.",
        p.at_cap,
        p.runs,
        p.rising,
        100.0 * RISING
    );
    if p.rising > 0 {
        let noise = match (p.above_noise, task.val_examples) {
            (Some(k), Some(n)) => format!(
                " Validation accuracy is measured on {} examples, so it carries a standard \
                 error of {:.1}–{:.1} points at this task's accuracies: {k} of these {} gains \
                 exceed two standard errors of their run's measurement{}.",
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
        let _ = write!(
            s,
            " **Plateau:** the runs stopped by their patience had flattened; the {} still \
             gaining at the cap (largest {:+.1}) had not, by the one-point rule.{noise} Where \
             those runs weigh, this task's comparisons hold at an equal number of steps, not \
             between converged models.",
            p.rising,
            100.0 * p.top
        );
    }
    let _ = writeln!(md, "{s}\n");
}

/// The results of tasks no longer in the manifest (e.g. a task whose runs ended at a step cap
/// under a cosine decay, retired once its twin under a constant schedule is complete): each
/// arm's test accuracy and how its runs ended, outside the verdicts, tests and step-cap line.
fn retired_tasks(md: &mut String, ctx: &Ctx) {
    let mut by_task: BTreeMap<&str, BTreeMap<&str, Vec<&RunResult>>> = BTreeMap::new();
    for r in ctx.retired() {
        let arms = by_task.entry(r.task.as_str()).or_default();
        arms.entry(r.arm.as_str()).or_default().push(r);
    }
    if by_task.is_empty() {
        return;
    }
    let _ = writeln!(md, "## Retired tasks\n");
    let _ = writeln!(
        md,
        "Results of tasks no longer in the study, kept in `results.jsonl` and shown here only: \
         they enter no verdict, test, Holm family or step-cap line (the notes under Setup say \
         why each was retired). Test accuracy, mean ± 95 % CI over seeds (%); `at cap`: runs \
         that used all their steps, `rising`: of those, still gaining more than {:.0} point in \
         their last quarter.\n",
        100.0 * RISING
    );
    let _ = writeln!(
        md,
        "| task | arm | test accuracy (seeds) | at cap | rising |\n|---|---|---|---|---|"
    );
    for (task, arms) in &by_task {
        // the manifest's arm order, then arms it no longer has
        let mut names: Vec<&str> = arms.keys().copied().collect();
        names.sort_by_key(|a| (ctx.arm(a).unwrap_or(usize::MAX), *a));
        for arm in names {
            let runs = &arms[arm];
            let acc: Vec<f64> = runs.iter().map(|r| r.test_acc).collect();
            let capped: Vec<&&RunResult> = runs.iter().filter(|r| !r.stopped_early).collect();
            let rising = capped
                .iter()
                .filter(|r| late_gain(r).is_some_and(|g| g > RISING))
                .count();
            let _ = writeln!(
                md,
                "| {task} | {arm} | {} | {} of {} | {rising} |",
                acc_cell(&acc),
                capped.len(),
                runs.len()
            );
        }
    }
    let _ = writeln!(md);
}

fn every_run(md: &mut String, ctx: &Ctx) {
    let _ = writeln!(md, "## Every run\n");
    let _ = writeln!(
        md,
        "`end`: how the run stopped (`patience`, or `cap` = its step cap, `cap, rising` = at \
         the cap while still gaining more than {:.0} point in its last quarter); `commit`: the \
         code the run recorded (empty: not recorded).\n",
        100.0 * RISING
    );
    let _ = writeln!(
        md,
        "| task | arm | seed | test % | best val % | best step | steps | end | wall min | commit | command |\n|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for ((ti, ai), runs) in &ctx.groups {
        for r in runs {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {:.1} | {} | `{}` |",
                ctx.task(*ti),
                ctx.manifest.arms[*ai].name,
                r.seed,
                pct(r.test_acc),
                pct(r.best_val_acc),
                r.best_step,
                r.steps,
                ending(r),
                r.wall_s / 60.0,
                if r.code.is_empty() {
                    "–".to_string()
                } else {
                    format!("`{}`", r.code)
                },
                r.command
            );
        }
    }
}

/// A run whose [`late_gain`] exceeds this (one point of accuracy) had not flattened.
const RISING: f64 = 0.01;

/// Of the runs of task `ti`: how many ended at their step cap, how many of those had not
/// flattened ([`RISING`]), how many there are, and the largest late gain at the cap. A run
/// stopped by its patience went `patience` evaluations without a new best: it had flattened
/// whatever its late gain (which, when it trained longer than four patience windows, can
/// include the rise before its best), so it never counts as rising.
fn still_rising(groups: &Groups, ti: usize, val_examples: Option<usize>) -> Plateau {
    let runs: Vec<&RunResult> = task_runs(groups, ti).collect();
    let capped: Vec<(&RunResult, f64)> = runs
        .iter()
        .filter(|r| !r.stopped_early)
        .map(|r| (*r, late_gain(r).unwrap_or(f64::NAN)))
        .collect();
    let rising = capped.iter().filter(|(_, g)| *g > RISING).count();
    let ses: Vec<f64> = runs
        .iter()
        .map(|r| val_examples.map_or(f64::NAN, |n| standard_error(r.best_val_acc, n)))
        .collect();
    let above_noise = val_examples.map(|n| {
        capped
            .iter()
            .filter(|(r, g)| *g > RISING && *g > 2.0 * standard_error(r.best_val_acc, n))
            .count()
    });
    let se_range = ses.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), &se| {
        (lo.min(se), hi.max(se))
    });
    let top = capped
        .iter()
        .map(|(_, g)| *g)
        .filter(|g| g.is_finite())
        .fold(f64::NEG_INFINITY, f64::max);
    Plateau {
        rising,
        above_noise,
        se_range,
        runs: runs.len(),
        at_cap: capped.len(),
        top,
    }
}

/// How many of a task's runs ended at their step cap, and how many of those had not
/// flattened.
#[derive(Clone, Copy, Debug)]
struct Plateau {
    /// Runs that ended at their step cap with a late gain above [`RISING`].
    rising: usize,
    /// Of those, the runs whose late gain also exceeds two standard errors of their
    /// validation accuracy (when the task gives its validation size).
    above_noise: Option<usize>,
    /// The smallest and largest standard error of the runs' best validation accuracies
    /// (meaningful only with the validation size).
    se_range: (f64, f64),
    /// Runs.
    runs: usize,
    /// Runs that used all their steps (stopped by the cap, not their patience).
    at_cap: usize,
    /// The largest late gain of the runs at the cap.
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
/// dropped from the results, or of a task since retired): SVG files in the plots folder whose
/// names start with the name of one of the manifest's tasks or of a task in the results.
fn remove_stale_plots(
    manifest: &Manifest,
    results: &[RunResult],
    paths: &ReportPaths,
    written: &[std::path::PathBuf],
) -> Result<()> {
    // the manifest's tasks and the retired ones, whose plots no section draws any more
    let tasks: std::collections::BTreeSet<&str> = manifest
        .tasks
        .iter()
        .map(|t| t.name.as_str())
        .chain(results.iter().map(|r| r.task.as_str()))
        .collect();
    let entries = std::fs::read_dir(&paths.plots).map_err(|e| Error::io(&paths.plots, e))?;
    for e in entries {
        let e = e.map_err(|e| Error::io(&paths.plots, e))?;
        let f = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        let ours =
            name.ends_with(".svg") && tasks.iter().any(|t| name.starts_with(&format!("{t}-")));
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

fn memory_section(md: &mut String, written: &mut Vec<PathBuf>, ctx: &Ctx, ti: usize) -> Result<()> {
    let task = ctx.task(ti);
    let paths = ctx.paths;
    let here: Vec<&Change> = ctx.mem.changes.iter().filter(|c| c.task == ti).collect();
    if here.is_empty() {
        return Ok(());
    }
    let _ = writeln!(
        md,
        "### Memory over training ({task})\n\nPer arm and layer, from the baseline (step 0 where \
         the run has it, else its first evaluation) to the best checkpoint's evaluation, paired \
         by run; Y_p's effective rank divided by m. Holm-corrected with every memory test.\n"
    );
    let _ = writeln!(
        md,
        "| arm | runs (step 0) | layer | metric | baseline | best checkpoint | change (95 % CI) | p (Holm) |\n|---|---|---|---|---|---|---|---|"
    );
    for c in &here {
        let _ = writeln!(
            md,
            "| {} | {} ({}) | {} | {} | {:.3} | {:.3} | {} | {} |",
            c.arm,
            c.n,
            c.from_step0,
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
    let mem_arms: Vec<(usize, &str)> = ctx
        .manifest
        .arms
        .iter()
        .enumerate()
        .filter(|(ai, _)| ctx.groups.contains_key(&(ti, *ai)))
        .filter(|(_, a)| here.iter().any(|c| c.arm == a.name))
        .map(|(ai, a)| (ai, a.name.as_str()))
        .collect();
    let layers = here.iter().map(|c| c.layer).max().unwrap_or(0) + 1;
    let mut panels = Vec::new();
    for (name, _) in METRICS {
        for layer in 0..layers {
            let series = mem_arms
                .iter()
                .map(|(ai, a)| {
                    let runs: Vec<&RunResult> = ctx.groups[&(ti, *ai)]
                        .iter()
                        .copied()
                        .filter(|r| has_memory(r))
                        .collect();
                    let m = runs.first().map_or(1, |r| slots(r)) as f64;
                    Series::new(
                        a.to_string(),
                        mean_curve(&runs, |p| metric(p, name, layer, m)),
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
        let r = ctx.groups[&(ti, *ai)][0];
        for (when, file, m) in [
            ("first evaluation", "first", &r.first_pack_rows),
            ("best checkpoint, test", "best", &r.final_pack_rows),
        ] {
            let Some(last) = m.as_ref().and_then(|l| l.last()) else {
                continue;
            };
            let f = paths.plots.join(format!("{task}-{a}-pack-rows-{file}.svg"));
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
    if !maps.is_empty() {
        let _ = writeln!(
            md,
            "Pack-attention row similarity of the first test example (Jensen–Shannon divergence \
             between the memory slots' attention rows, averaged over heads; white = two slots \
             read the same positions, red = disjoint positions; the first recorded evaluation, \
             not step 0):\n\n{maps}\n"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{counted, percent};

    #[test]
    fn shares_keep_a_decimal_so_none_rounds_up_to_a_threshold() {
        assert_eq!(percent(15, 153), "9.8 %");
        assert_eq!(percent(24, 241), "9.9 %", "9.96 %, not 10.0 %");
        assert_eq!(percent(1, 4), "25.0 %");
        assert_eq!(percent(0, 7), "0.0 %");
        assert_eq!(percent(7, 7), "100.0 %");
    }

    #[test]
    fn counts_take_the_singular_only_for_one() {
        assert_eq!(counted(1, "seed"), "1 seed");
        assert_eq!(counted(0, "pair"), "0 pairs");
        assert_eq!(counted(3, "seed"), "3 seeds");
    }
}
