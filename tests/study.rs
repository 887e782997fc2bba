//! The study runner and its report, end to end on a tiny manifest: runs append to the results
//! file and are skipped afterwards, a run cut short resumes to the same result, workers split
//! the missing runs without overlap, and the report is rebuilt from the results file alone.

use std::path::{Path, PathBuf};

use candle_core::Device;
use convluna::study::{
    append_result, late_gain, read_results, report, run_one, Manifest, ReportPaths, RunKey,
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
        let r = run_one(&m, &k, &runs, &dev, &mut |_| {}).unwrap();
        append_result(&results, &r).unwrap();
    }
    let all = read_results(&results).unwrap();
    assert_eq!(all.len(), 4);
    let done: Vec<RunKey> = all.iter().map(|r| r.key()).collect();
    assert!(m.pending(&done, None, None, (0, 1)).unwrap().is_empty());

    // The report comes from the results file alone; plots of an earlier report that this one
    // does not draw are removed, other files are left alone.
    let paths = ReportPaths {
        markdown: dir.join("report.md"),
        plots: dir.join("plots"),
    };
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
    // Written twice from the same results, the report is the same file.
    report(&m, &all, &paths).unwrap();
    assert_eq!(std::fs::read_to_string(&paths.markdown).unwrap(), md);
    // With one seed per arm no comparison can be tested, and the verdict says so instead of
    // calling the difference not significant.
    let seed0: Vec<_> = all.iter().filter(|r| r.seed == 0).cloned().collect();
    report(&m, &seed0, &paths).unwrap();
    let md1 = std::fs::read_to_string(&paths.markdown).unwrap();
    let claim2 = md1
        .lines()
        .find(|l| l.starts_with("2. "))
        .unwrap_or_else(|| panic!("{md1}"));
    assert!(
        claim2.contains("not testable yet on listops") && claim2.contains("(n = 1, 1)"),
        "{claim2}"
    );
    assert!(!claim2.contains("no significant difference"), "{claim2}");
    let claim1 = md1.lines().find(|l| l.starts_with("1. ")).unwrap();
    assert!(
        claim1.contains("not testable yet: 1 (task, layer) cells, each with fewer than two"),
        "{claim1}"
    );
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
    let r = run_one(
        &m,
        &key("listops", "luna", 0),
        &dir.join("runs"),
        &Device::Cpu,
        &mut |_| {},
    )
    .unwrap();
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
    let paths = ReportPaths {
        markdown: dir.join("report.md"),
        plots: dir.join("plots"),
    };
    rising.best_val_acc = 0.6;
    let reported = |val_examples: Option<usize>| {
        let mut m = m.clone();
        m.tasks[0].val_examples = val_examples;
        report(&m, std::slice::from_ref(&rising), &paths).unwrap();
        std::fs::read_to_string(&paths.markdown).unwrap()
    };
    let md = reported(None);
    assert!(md.contains("listops (1 of 1 runs)"), "{md}");
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
