//! The study runner and its report, end to end on a tiny manifest: runs append to the results
//! file and are skipped afterwards, a run cut short resumes to the same result, workers split
//! the missing runs without overlap, and the report is rebuilt from the results file alone.

use std::path::{Path, PathBuf};

use candle_core::Device;
use convluna::study::{
    append_result, backfill_step0, late_gain, read_results, read_step0, report, run_one,
    step0_point, with_step0, Manifest, ReportPaths, RunKey, RunResult,
};
use convluna::Error;

fn tmp(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("convluna-study-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    p
}

/// Two arms of a one-layer, width-16 model on 64 generated ListOps trees, 6 steps, 2 seeds.
const MANIFEST: &str = r#"{
  "seeds": [0, 1],
  "tasks": [{
    "name": "listops",
    "description": "tiny generated ListOps",
    "options": {"task": "listops", "train_examples": 64, "steps": 6, "warmup": 1,
                "eval_every": 3, "batch_size": 8, "layers": 1, "width": 16, "heads": 2,
                "ffn": 32}
  }],
  "arms": [
    {"name": "luna", "description": "Luna", "options": {"model": "luna", "memory": 4}},
    {"name": "convluna", "description": "ConvLuna", "options": {"model": "convluna", "memory": 4}}
  ],
  "comparisons": [{"claim": "2", "better": "convluna", "than": "luna"}]
}"#;

fn manifest(dir: &Path) -> Manifest {
    let f = dir.join("study.json");
    std::fs::write(&f, MANIFEST).unwrap();
    Manifest::read(&f).unwrap()
}

fn key(task: &str, arm: &str, seed: u64) -> RunKey {
    RunKey {
        task: task.into(),
        arm: arm.into(),
        seed,
    }
}

/// One trained run of the tiny manifest (Luna, seed 0), to copy into made-up results.
fn luna_seed0(m: &Manifest, dir: &Path) -> RunResult {
    run_one(
        m,
        &key("listops", "luna", 0),
        &dir.join("runs"),
        &Device::Cpu,
        &mut |_| {},
    )
    .unwrap()
}

/// Copies of `r` as both arms of the tiny manifest on seeds 0 and 1, each then changed by
/// `set(copy, seed)`.
fn copies_on_two_seeds(r: &RunResult, set: impl Fn(&mut RunResult, usize)) -> Vec<RunResult> {
    let mut out = Vec::new();
    for seed in 0..2 {
        for arm in ["luna", "convluna"] {
            let mut x = r.clone();
            x.arm = arm.into();
            x.seed = seed as u64;
            set(&mut x, seed);
            out.push(x);
        }
    }
    out
}

/// The report and its plots in `dir`, without a step-0 file.
fn report_paths(dir: &Path) -> ReportPaths {
    ReportPaths {
        markdown: dir.join("report.md"),
        plots: dir.join("plots"),
        step0: None,
    }
}

#[test]
fn runs_are_recorded_skipped_resumed_and_reported() {
    let dir = tmp("run");
    let m = manifest(&dir);
    let results = dir.join("results.jsonl");
    let runs = dir.join("runs");
    let dev = Device::Cpu;
    assert_eq!(m.runs().len(), 4);

    // Two workers share the missing runs without overlap.
    let w0 = m.pending(&[], None, None, (0, 2)).unwrap();
    let w1 = m.pending(&[], None, None, (1, 2)).unwrap();
    assert_eq!(w0.len() + w1.len(), 4);
    assert!(w0.iter().all(|k| !w1.contains(k)));

    let k = key("listops", "convluna", 0);
    let r = run_one(&m, &k, &runs, &dev, &mut |_| {}).unwrap();
    assert_eq!((r.steps, r.seed, r.arm.as_str()), (6, 0, "convluna"));
    assert_eq!(r.curve.len(), 2, "evaluations at steps 3 and 6");
    append_result(&results, &r).unwrap();

    // A finished run is skipped; a filter narrows what is left.
    let done: Vec<RunKey> = read_results(&results)
        .unwrap()
        .iter()
        .map(|r| r.key())
        .collect();
    assert_eq!(done, vec![k.clone()]);
    let left = m.pending(&done, None, None, (0, 1)).unwrap();
    assert_eq!(left.len(), 3);
    assert!(!left.contains(&k));
    assert_eq!(
        m.pending(&done, None, Some("convluna"), (0, 1)).unwrap(),
        vec![key("listops", "convluna", 1)]
    );

    // A run whose folder holds a finished (or killed) run resumes from its checkpoint and
    // ends with the same result as the uninterrupted run.
    let again = run_one(&m, &k, &runs, &dev, &mut |_| {}).unwrap();
    assert_eq!(again.test_acc, r.test_acc);
    assert_eq!(again.best_step, r.best_step);
    assert_eq!(again.curve.len(), r.curve.len());
    for (a, b) in again.curve.iter().zip(&r.curve) {
        assert_eq!((a.step, a.acc, a.loss), (b.step, b.acc, b.loss));
    }

    for k in left {
        let mut r = run_one(&m, &k, &runs, &dev, &mut |_| {}).unwrap();
        r.code = format!("c0ffee{}", k.seed);
        append_result(&results, &r).unwrap();
    }
    let all = read_results(&results).unwrap();
    assert_eq!(all.len(), 4);
    let done: Vec<RunKey> = all.iter().map(|r| r.key()).collect();
    assert!(m.pending(&done, None, None, (0, 1)).unwrap().is_empty());

    // The report comes from the results file alone; plots of an earlier report that this one
    // does not draw are removed, other files are left alone.
    let paths = report_paths(&dir);
    std::fs::create_dir_all(&paths.plots).unwrap();
    let stale = paths.plots.join("listops-dropped-arm-pack-rows-first.svg");
    let mine = paths.plots.join("notes.svg");
    std::fs::write(&stale, "<svg/>").unwrap();
    std::fs::write(&mine, "<svg/>").unwrap();
    let files = report(&m, &all, &paths).unwrap();
    assert!(files.contains(&paths.markdown));
    assert!(files.iter().all(|f| f.exists()), "{files:?}");
    assert!(!stale.exists(), "a stale plot was left");
    assert!(mine.exists(), "a file that is not the report's was removed");
    let md = std::fs::read_to_string(&paths.markdown).unwrap();
    assert!(md.contains("4 of 4 runs"), "{md}");
    assert!(md.contains("| convluna | 2 |"), "{md}");
    assert!(md.contains("convluna − luna (n = 2, 2)"), "{md}");
    assert!(md.contains("last-quarter gain"), "{md}");
    // The first screen: a bottom line of three lines, then one verdict line per claim.
    let bottom = md
        .split("## Bottom line")
        .nth(1)
        .unwrap_or_else(|| panic!("{md}"));
    let bottom = bottom.split("## Verdicts").next().unwrap();
    let lines: Vec<&str> = bottom.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 3, "{bottom}");
    assert!(
        lines[0].starts_with("1. **Memory beyond the conv:**"),
        "{bottom}"
    );
    assert!(md.find("## Bottom line").unwrap() < md.find("## Setup").unwrap());
    // Generated ListOps shares each seed's data between arms: the test is paired by seed.
    assert!(md.contains("| paired, 2 seeds |"), "{md}");
    // Each run shows the commit it recorded (none recorded: –).
    assert!(md.contains("| commit | command |"), "{md}");
    assert!(md.contains("| `c0ffee1` |"), "{md}");
    assert!(md.contains("| – | `cargo run"), "{md}");
    // Runs stopped by their step cap are marked as such.
    assert!(md.contains("6 (cap)"), "{md}");
    assert!(md.contains("**Step cap:** 4 of 4 runs"), "{md}");
    // runs stopped by the cap: the curves are not presented as plateaus
    assert!(
        md.contains("every run stopped at its step cap, so a flat tail shows where the schedule"),
        "{md}"
    );
    assert!(!md.contains("a flat tail is the plateau"), "{md}");
    // Written twice from the same results, the report is the same file.
    report(&m, &all, &paths).unwrap();
    assert_eq!(std::fs::read_to_string(&paths.markdown).unwrap(), md);
    assert!(!md.contains("## Retired tasks"), "{md}");
    // Results of a task no longer in the manifest are shown in their own table and counted
    // nowhere else: not in the status, the tests or the step-cap line.
    let mut with_old = all.clone();
    with_old.extend(all.iter().cloned().map(|mut r| {
        r.task = "listops-old".into();
        r
    }));
    let old_plot = paths.plots.join("listops-old-accuracy.svg");
    std::fs::write(&old_plot, "<svg/>").unwrap();
    report(&m, &with_old, &paths).unwrap();
    assert!(!old_plot.exists(), "a retired task's plot was left");
    assert!(mine.exists());
    let mdr = std::fs::read_to_string(&paths.markdown).unwrap();
    let retired = mdr
        .split("## Retired tasks")
        .nth(1)
        .unwrap_or_else(|| panic!("{mdr}"));
    let retired = retired.split("## Every run").next().unwrap();
    assert!(retired.contains("| listops-old | luna |"), "{retired}");
    assert!(retired.contains("| listops-old | convluna |"), "{retired}");
    assert!(retired.contains(" (2) | 2 of 2 |"), "{retired}");
    assert!(mdr.contains("4 of 4 runs") && mdr.contains("**Step cap:** 4 of 4 runs"));
    assert!(mdr.contains("Not counted: 4 results of tasks no longer in the study (`listops-old`"));
    // With one seed per arm no comparison can be tested, and the verdict says so instead of
    // calling the difference not significant.
    let seed0: Vec<_> = all.iter().filter(|r| r.seed == 0).cloned().collect();
    report(&m, &seed0, &paths).unwrap();
    let md1 = std::fs::read_to_string(&paths.markdown).unwrap();
    let claim2 = md1
        .lines()
        .find(|l| l.starts_with("| 2 |"))
        .unwrap_or_else(|| panic!("{md1}"));
    assert!(
        claim2.contains("not testable yet on listops") && claim2.contains("(n = 1, 1)"),
        "{claim2}"
    );
    assert!(!claim2.contains("no significant difference"), "{claim2}");
    let claim1 = md1.lines().find(|l| l.starts_with("| 1 |")).unwrap();
    assert!(
        claim1.contains("not testable yet: 1 (task, layer) cells, each with fewer than two"),
        "{claim1}"
    );

    // Arms and tasks without results are reported as pending, never a panic: a new arm on
    // every task and a new task with its own arms.
    let f = dir.join("more.json");
    let more = MANIFEST
        .replace(
            r#"{"name": "convluna", "description": "ConvLuna", "options": {"model": "convluna", "memory": 4}}"#,
            r#"{"name": "convluna", "description": "ConvLuna", "options": {"model": "convluna", "memory": 4}},
    {"name": "convluna-proj", "description": "neither", "options": {"model": "convluna", "memory": 4, "filter": "identity", "temperature": "inv-sqrt"}}"#,
        )
        .replace(
            r#""ffn": 32}
  }],"#,
            r#""ffn": 32}
  }, {
    "name": "listops-b", "description": "more ListOps", "arms": ["luna", "convluna-proj"],
    "options": {"task": "listops", "train_examples": 64, "steps": 6, "warmup": 1,
                "eval_every": 3, "batch_size": 8, "layers": 1, "width": 16, "heads": 2,
                "ffn": 32}
  }],"#,
        );
    std::fs::write(&f, &more).unwrap();
    let m2 = Manifest::read(&f).unwrap();
    assert_eq!(m2.runs().len(), 10, "{more}");
    report(&m2, &all, &paths).unwrap();
    let md2 = std::fs::read_to_string(&paths.markdown).unwrap();
    assert!(md2.contains("4 of 10 runs"), "{md2}");
    assert!(md2.contains("no run yet of convluna-proj"), "{md2}");
    assert!(md2.contains("listops-b 0 of 4"), "{md2}");
    assert!(md2.contains("| convluna-proj | pending |"), "{md2}");
    assert!(md2.contains("pending: no runs of convluna-proj"), "{md2}");
    assert!(
        md2.contains("| projections (ConvLuna's − Luna's, neither factor) |"),
        "{md2}"
    );
    // and with no results at all
    report(&m2, &[], &paths).unwrap();
    let md0 = std::fs::read_to_string(&paths.markdown).unwrap();
    assert!(
        md0.contains("0 of 10 runs") && md0.contains("**pending**"),
        "{md0}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The step-0 backfill of a run is the step-0 evaluation the same run records with
/// `eval_at_start`: the untrained model is rebuilt exactly from the recorded options.
#[test]
fn step0_backfill_is_the_runs_own_step0() {
    let dir = tmp("step0");
    let f = dir.join("study.json");
    std::fs::write(
        &f,
        MANIFEST.replace(r#""ffn": 32}"#, r#""ffn": 32, "eval_at_start": true}"#),
    )
    .unwrap();
    let m = Manifest::read(&f).unwrap();
    let dev = Device::Cpu;
    let r = run_one(
        &m,
        &key("listops", "convluna", 1),
        &dir.join("runs"),
        &dev,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(r.curve.len(), 3, "evaluations at steps 0, 3 and 6");
    let recorded = &r.curve[0];
    assert_eq!(recorded.step, 0);
    // equal up to a JSON round trip of the numbers
    let close = |a: &[Option<f64>], b: &[Option<f64>]| {
        a.len() == b.len()
            && a.iter().zip(b).all(|(x, y)| match (x, y) {
                (Some(x), Some(y)) => (x - y).abs() <= 1e-12 * x.abs().max(1.0),
                (None, None) => true,
                _ => false,
            })
    };
    let some = |v: &[f64]| v.iter().map(|x| Some(*x)).collect::<Vec<_>>();
    let same = |p: &convluna::study::EvalPoint| {
        assert_eq!(p.step, 0);
        assert!(
            p.packed_rank.len() == 1 && p.pack_row_divergence[0].is_some(),
            "{p:?}"
        );
        for (a, b) in [
            (
                vec![Some(p.acc), Some(p.loss)],
                vec![Some(recorded.acc), Some(recorded.loss)],
            ),
            (some(&p.packed_rank), some(&recorded.packed_rank)),
            (p.packed_cosine.clone(), recorded.packed_cosine.clone()),
            (
                p.pack_row_divergence.clone(),
                recorded.pack_row_divergence.clone(),
            ),
            (some(&p.pack_entropy), some(&recorded.pack_entropy)),
            (some(&p.tau), some(&recorded.tau)),
        ] {
            assert!(close(&a, &b), "{a:?} != {b:?}");
        }
    };
    same(&step0_point(&r, &dev).unwrap());
    // A result without its step 0 (as the study's first round recorded them) is backfilled
    // once into the step-0 file, and the report's view of it gets it back.
    let mut old = r.clone();
    old.curve.remove(0);
    let file = dir.join("step0.jsonl");
    let n = backfill_step0(&m, &[old.clone(), r.clone()], &file, &dev, &mut |_| {}).unwrap();
    assert_eq!(n, 1, "only the result without a step-0 point");
    let lines = read_step0(&file).unwrap();
    assert_eq!(lines.len(), 1);
    same(&lines[0].point);
    assert_eq!(
        backfill_step0(&m, std::slice::from_ref(&old), &file, &dev, &mut |_| {}).unwrap(),
        0,
        "resumable: a run already in the file is skipped"
    );
    let merged = with_step0(std::slice::from_ref(&old), &lines);
    same(&merged[0].curve[0]);
    assert_eq!(merged[0].curve.len(), r.curve.len());
    // The report reads the file and measures the memory from step 0.
    let paths = ReportPaths {
        markdown: dir.join("report.md"),
        plots: dir.join("plots"),
        step0: Some(file.clone()),
    };
    report(&m, std::slice::from_ref(&old), &paths).unwrap();
    let md = std::fs::read_to_string(&paths.markdown).unwrap();
    assert!(md.contains("| convluna | 1 (1) | 0 |"), "{md}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_selections_are_refused_naming_them() {
    let dir = tmp("bad");
    let m = manifest(&dir);
    match m.pending(&[], Some("pathfinder"), None, (0, 1)) {
        Err(Error::Config { field, reason }) => {
            assert_eq!(field, "task");
            assert!(reason.contains("pathfinder"), "{reason}");
        }
        other => panic!("expected a config error on `task`, got {other:?}"),
    }
    assert!(matches!(
        m.pending(&[], None, Some("linformer"), (0, 1)),
        Err(Error::Config { .. })
    ));
    assert!(matches!(
        m.pending(&[], None, None, (2, 2)),
        Err(Error::Config { .. })
    ));
    // A manifest whose comparison names an arm it does not have is refused on reading.
    let f = dir.join("bad.json");
    std::fs::write(
        &f,
        MANIFEST.replace(r#""than": "luna""#, r#""than": "lunar""#),
    )
    .unwrap();
    match Manifest::read(&f) {
        Err(e) => assert!(e.to_string().contains("lunar"), "{e}"),
        Ok(_) => panic!("an unknown arm in a comparison was accepted"),
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn late_gain_measures_the_rise_in_the_last_quarter() {
    let dir = tmp("gain");
    let m = manifest(&dir);
    let r = luna_seed0(&m, &dir);
    let mut flat = r.clone();
    flat.steps = 100;
    let p0 = r.curve[0].clone();
    flat.curve = (1..=4)
        .map(|i| {
            let mut p = p0.clone();
            p.step = 25 * i;
            p.acc = 0.5;
            p
        })
        .collect();
    assert_eq!(late_gain(&flat), Some(0.0));
    let mut rising = flat.clone();
    rising.curve.last_mut().unwrap().acc = 0.6;
    assert!((late_gain(&rising).unwrap() - 0.1).abs() < 1e-12);
    let mut early = flat.clone();
    early.curve.truncate(3);
    assert_eq!(late_gain(&early), None, "no evaluation in the last quarter");

    // The report flags the rising run; given the validation size, it also says whether the
    // gain exceeds two standard errors of the measurement (at a = 0.6: 2·√(0.24/n)).
    let paths = report_paths(&dir);
    rising.best_val_acc = 0.6;
    rising.stopped_early = false;
    let report_of = |run: &RunResult, val_examples: Option<usize>| {
        let mut m = m.clone();
        m.tasks[0].val_examples = val_examples;
        report(&m, std::slice::from_ref(run), &paths).unwrap();
        std::fs::read_to_string(&paths.markdown).unwrap()
    };
    let reported = |val_examples| report_of(&rising, val_examples);
    let md = reported(None);
    assert!(md.contains("listops (1 of 1 runs, at their cap)"), "{md}");
    assert!(
        md.contains("1 of 1 (100.0 %) ended there while still gaining"),
        "{md}"
    );
    assert!(md.contains("Not at a plateau"), "{md}");
    assert!(!md.contains("standard errors"), "{md}");
    // n = 100: 2 SE ≈ 9.8 points, below the 10-point gain
    let md = reported(Some(100));
    assert!(
        md.contains("1 of them by more than two standard errors"),
        "{md}"
    );
    assert!(md.contains("Not at a plateau"), "{md}");
    // n = 50: 2 SE ≈ 13.9 points, the 10-point gain is within the noise
    let md = reported(Some(50));
    assert!(
        md.contains("0 of them by more than two standard errors"),
        "{md}"
    );
    assert!(
        md.contains("every one is within the noise of a flat curve"),
        "{md}"
    );
    assert!(md.contains("every curve is flat within the noise"), "{md}");
    // The same curve from a run stopped by its patience: it had flattened (`patience`
    // evaluations without a new best), whatever its last quarter gained before that best.
    let mut settled = rising.clone();
    settled.stopped_early = true;
    let md = report_of(&settled, Some(100));
    assert!(!md.contains("Not at a plateau"), "{md}");
    assert!(!md.contains("**Plateau:**"), "{md}");
    assert!(
        md.contains("0 of 1 at the cap, 0 of them still gaining"),
        "{md}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_task_may_list_its_own_seeds() {
    let dir = tmp("seeds");
    let f = dir.join("study.json");
    std::fs::write(
        &f,
        MANIFEST.replace(
            r#""description": "tiny generated ListOps","#,
            r#""description": "tiny generated ListOps", "seeds": [0, 1, 2, 3, 4],"#,
        ),
    )
    .unwrap();
    let m = Manifest::read(&f).unwrap();
    let runs = m.runs();
    assert_eq!(runs.len(), 10, "5 seeds × 2 arms");
    assert_eq!(runs.last(), Some(&key("listops", "convluna", 4)));
    // The runs already finished under the manifest's seeds stay done.
    let done: Vec<RunKey> = (0..2)
        .flat_map(|s| [key("listops", "luna", s), key("listops", "convluna", s)])
        .collect();
    let left = m.pending(&done, None, None, (0, 1)).unwrap();
    assert_eq!(left.len(), 6);
    assert!(left.iter().all(|k| k.seed >= 2));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn arms_equal_on_every_seed_are_no_difference_not_untestable() {
    let dir = tmp("equal");
    let m = manifest(&dir);
    let r = luna_seed0(&m, &dir);
    // Both arms at the same accuracy on each seed (e.g. both predicting the majority class):
    // every paired difference is zero, so the t-test has no standard error.
    let runs_at = |accs: [(f64, f64); 2]| {
        copies_on_two_seeds(&r, |x, seed| {
            let (luna, convluna) = accs[seed];
            x.test_acc = if x.arm == "luna" { luna } else { convluna };
        })
    };
    let paths = report_paths(&dir);
    report(&m, &runs_at([(0.168, 0.168), (0.163, 0.163)]), &paths).unwrap();
    let md = std::fs::read_to_string(&paths.markdown).unwrap();
    assert!(md.contains("listops +0.0 equal on every seed"), "{md}");
    assert!(
        md.contains("listops +0.0, equal on every seed (2 pairs)"),
        "{md}"
    );
    assert!(
        md.contains("no significant difference on any of 1 tasks"),
        "{md}"
    );
    assert!(md.contains("| equal on every seed |"), "{md}");
    let verdicts = md.split("## Verdicts").nth(1).unwrap();
    let line = verdicts
        .lines()
        .find(|l| l.contains("convluna − luna"))
        .unwrap();
    assert!(!line.contains("not testable"), "{line}");
    // The copies share their memory statistics too: the between-arm memory test is equal on
    // every seed, which answers the task like the accuracy test above.
    let memory = verdicts
        .lines()
        .find(|l| l.contains("less diverse than ConvLuna's"))
        .unwrap();
    assert!(
        memory.contains("**not reproduced**: no significant difference on any of 1 tasks"),
        "{memory}"
    );
    let between = md
        .split("**Between arms at the best checkpoint.**")
        .nth(1)
        .unwrap();
    let row = between
        .lines()
        .find(|l| l.starts_with("| listops | convluna |"))
        .unwrap();
    assert!(row.ends_with("| paired | equal on every seed |"), "{row}");
    // A constant nonzero difference has no spread either, but it is a difference: untestable.
    report(&m, &runs_at([(0.168, 0.2), (0.163, 0.195)]), &paths).unwrap();
    let md = std::fs::read_to_string(&paths.markdown).unwrap();
    assert!(md.contains("not testable yet on listops +3.2"), "{md}");
    assert!(!md.contains("+3.2, equal on every seed"), "{md}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_majority_class_is_listed_by_seed_when_each_seed_draws_its_own_data() {
    let dir = tmp("majority");
    let m = manifest(&dir);
    let r = luna_seed0(&m, &dir);
    let runs_with = |shares: [f64; 2]| copies_on_two_seeds(&r, |x, seed| x.majority = shares[seed]);
    let paths = report_paths(&dir);
    // Generated data: each seed its own test split, so its own majority class.
    report(&m, &runs_with([0.18, 0.16]), &paths).unwrap();
    let md = std::fs::read_to_string(&paths.markdown).unwrap();
    assert!(
        md.contains("by seed (each seed draws its own data): 18.0 % (seed 0), 16.0 % (seed 1); mean 17.0 %."),
        "{md}"
    );
    let svg = std::fs::read_to_string(paths.plots.join("listops-accuracy.svg")).unwrap();
    assert!(svg.contains("majority class (mean of seeds)"), "{svg}");
    // One test split for every seed: one number.
    report(&m, &runs_with([0.5, 0.5]), &paths).unwrap();
    let md = std::fs::read_to_string(&paths.markdown).unwrap();
    assert!(
        md.contains("Majority class of the test split: 50.0 %."),
        "{md}"
    );
    assert!(!md.contains("test split, by seed"), "{md}");
    std::fs::remove_dir_all(&dir).unwrap();
}
