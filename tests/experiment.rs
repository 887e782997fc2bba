//! `convluna::experiment`: options are checked before any work, resumes never continue a
//! different run, and documents longer than the run's length are never cut silently.

mod common;

use std::path::Path;

use convluna::data::{fit_lengths, write_listops_dir, ListOpsConfig};
use convluna::experiment::{ModelKind, Preset, RunOptions};
use convluna::preset::LraTask;
use convluna::Error;

#[test]
fn bad_options_fail_before_any_data_is_touched() {
    // a data folder that does not exist: reading it would fail differently
    let missing = Some(Path::new("/nonexistent/convluna").to_path_buf());
    let cases: Vec<(RunOptions, &str)> = vec![
        (
            RunOptions {
                memory: Some(0),
                data_dir: missing.clone(),
                ..Default::default()
            },
            "memory_len",
        ),
        (
            RunOptions {
                width: Some(30),
                heads: Some(4),
                ..Default::default()
            },
            "d_model",
        ),
        (
            RunOptions {
                lr: Some(-1.0),
                ..Default::default()
            },
            "train.lr",
        ),
        (
            RunOptions {
                model: Some(ModelKind::Transformer),
                memory: Some(8),
                ..Default::default()
            },
            "memory",
        ),
        (
            RunOptions {
                model: Some(ModelKind::ConvMixer),
                stride: Some(2),
                ..Default::default()
            },
            "filter",
        ),
        (
            RunOptions {
                dtype: Some("f8".into()),
                ..Default::default()
            },
            "dtype",
        ),
        (
            RunOptions {
                eval_batches: Some(0),
                ..Default::default()
            },
            "eval_batches",
        ),
    ];
    for (o, field) in cases {
        match o.plan() {
            Err(Error::Config { field: f, reason }) => {
                assert!(
                    f.contains(field),
                    "{o:?}: error on `{f}` ({reason}), expected `{field}`"
                )
            }
            other => panic!("{o:?}: expected a config error on `{field}`, got {other:?}"),
        }
    }
}

#[test]
fn the_paper_preset_runs_the_authors_model_unmasked() {
    let plan = RunOptions {
        preset: Some(Preset::Paper),
        ..Default::default()
    }
    .plan()
    .unwrap();
    let l = plan
        .model_config
        .encoder
        .stack
        .block
        .luna()
        .expect("ConvLuna");
    assert!(
        !l.mask_padding,
        "the authors' ConvLuna does not mask padding"
    );
    assert!(plan.train_config.pad_to_task_length);
    assert_eq!(plan.train_config.eval_batches, None, "full validation");
    let luna = RunOptions {
        preset: Some(Preset::Paper),
        model: Some(ModelKind::Luna),
        ..Default::default()
    }
    .plan()
    .unwrap();
    assert!(
        !luna
            .model_config
            .encoder
            .stack
            .block
            .luna()
            .unwrap()
            .mask_padding
    );
    // masking stays available, and the quick preset masks by default
    let masked = RunOptions {
        preset: Some(Preset::Paper),
        masked: Some(true),
        ..Default::default()
    }
    .plan()
    .unwrap();
    assert!(
        masked
            .model_config
            .encoder
            .stack
            .block
            .luna()
            .unwrap()
            .mask_padding
    );
    let quick = RunOptions::default().plan().unwrap();
    assert!(
        quick
            .model_config
            .encoder
            .stack
            .block
            .luna()
            .unwrap()
            .mask_padding
    );
    assert_eq!(quick.train_config.eval_batches, None, "full validation");
    // the retrieval head of the paper preset is the authors' DualClassifier
    let retrieval = RunOptions {
        preset: Some(Preset::Paper),
        task: Some(LraTask::Retrieval),
        ..Default::default()
    }
    .plan()
    .unwrap();
    assert_eq!(
        retrieval.model_config.head.pair,
        Some(convluna::PairFeatures::Concat)
    );
}

#[test]
fn resume_refuses_a_changed_option_and_takes_the_missing_ones() {
    let recorded = RunOptions {
        lr: Some(1e-3),
        steps: Some(50),
        ..Default::default()
    }
    .resolved()
    .unwrap();
    let file = Path::new("runs/x/run.json");
    // nothing given: the recorded run
    let same = RunOptions::default()
        .merge_recorded(&recorded, file)
        .unwrap();
    assert_eq!(same, recorded);
    // the same value given again is fine
    let again = RunOptions {
        lr: Some(1e-3),
        ..Default::default()
    };
    assert_eq!(again.merge_recorded(&recorded, file).unwrap(), recorded);
    // a different value is refused, naming the option as the command line spells it
    let changed = RunOptions {
        batch_size: Some(7),
        ..Default::default()
    };
    match changed.merge_recorded(&recorded, file) {
        Err(Error::ResumeMismatch {
            option,
            given,
            recorded,
            ..
        }) => {
            assert_eq!(option, "batch-size");
            assert_eq!(given, "7");
            assert_eq!(recorded, "32");
        }
        other => panic!("expected a mismatch, got {other:?}"),
    }
    let msg = changed
        .merge_recorded(&recorded, file)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("--batch-size 7") && msg.contains("run.json"),
        "{msg}"
    );
    // an option the original run did not set (eval_batches: full validation) cannot be
    // switched on at resume either
    let subset = RunOptions {
        eval_batches: Some(3),
        ..Default::default()
    };
    assert!(matches!(
        subset.merge_recorded(&recorded, file),
        Err(Error::ResumeMismatch { .. })
    ));
}

/// Official-length ListOps (500–2,000 tokens, as the LRA generator writes it) read with
/// `--data-dir`: sized to the data, never cut without being asked.
#[test]
fn official_length_listops_is_never_cut_silently() {
    let dir = common::tmpdir("experiment-listops");
    // few examples: official trees are long and rare (≈ 8 % of draws are kept)
    write_listops_dir(&dir, &ListOpsConfig::official(), 6, 2, 2, 3).unwrap();
    let base = RunOptions {
        data_dir: Some(dir.clone()),
        ..Default::default()
    };
    // default limit (2,000, the task's length): the model is sized to the longest example
    let mut plan = base.plan().unwrap();
    let data = plan.load_data().unwrap();
    let longest = data
        .lengths
        .lengths
        .iter()
        .map(|l| l.longest)
        .max()
        .unwrap();
    assert!(
        longest > 500,
        "official trees are longer than 500 tokens: {longest}"
    );
    assert_eq!(plan.model_config.encoder.max_len, longest);
    assert_eq!(data.splits.train.max_len(), longest);
    assert_eq!(data.lengths.cut(), 0);
    for i in 0..data.splits.train.len() {
        assert_eq!(
            data.splits.train.get(i).unwrap().doc.len(),
            data.splits.train.length(i).unwrap()
        );
    }
    // a lower limit stops before training, saying how many and by how much, and how to allow it
    let mut short = RunOptions {
        max_len: Some(200),
        ..base.clone()
    }
    .plan()
    .unwrap();
    match short.load_data() {
        Err(Error::TooLong {
            split,
            over,
            total,
            longest: l,
            limit,
            ..
        }) => {
            assert_eq!((split.as_str(), over, total, limit), ("train", 6, 6, 200));
            assert!(l > 500);
        }
        other => panic!("expected TooLong, got {:?}", other.map(|d| d.lengths)),
    }
    let msg = short.load_data().unwrap_err().to_string();
    assert!(
        msg.contains("--max-len") && msg.contains("--truncate"),
        "{msg}"
    );
    // truncation, when asked for, cuts and says so
    let mut cut = RunOptions {
        max_len: Some(200),
        truncate: Some(true),
        ..base
    }
    .plan()
    .unwrap();
    let data = cut.load_data().unwrap();
    assert_eq!(data.lengths.cut(), 10);
    assert_eq!(cut.model_config.encoder.max_len, 200);
    assert!(data.lengths.describe().contains("truncated to 200"));
    assert_eq!(data.splits.val.get(0).unwrap().doc.len(), 200);
}

#[test]
fn fit_lengths_pads_to_the_limit_when_asked() {
    let splits = convluna::data::ListOpsDataset::generate_splits(
        &ListOpsConfig::small(),
        20,
        5,
        5,
        1,
        usize::MAX,
    );
    let f = fit_lengths(&splits, 500, false, true).unwrap();
    assert_eq!(f.max_len, 500);
    assert_eq!(f.splits.test.max_len(), 500);
    let g = fit_lengths(&splits, 500, false, false).unwrap();
    assert!(g.max_len < 200);
    assert!(matches!(
        fit_lengths(&splits, 0, true, false),
        Err(Error::Config { .. })
    ));
}

/// Without the `hub` feature, `--data hub` is refused before any work, saying how to get it.
#[cfg(not(feature = "hub"))]
#[test]
fn hub_data_needs_the_hub_feature() {
    let e = RunOptions {
        task: Some(LraTask::Text),
        data: Some(convluna::experiment::DataSource::Hub),
        ..Default::default()
    }
    .plan()
    .unwrap_err()
    .to_string();
    assert!(e.contains("--features hub"), "{e}");
}

/// `train_examples` on a corpus read from disk keeps the first examples of the training split
/// (validation and test unchanged, the name says so); 0 or more than the split holds is an
/// error naming the option, before any training.
#[test]
fn train_examples_cuts_a_read_training_split_to_its_first_examples() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/data/fashion-mnist");
    let opts = |n: Option<usize>| RunOptions {
        task: Some(LraTask::Image),
        data_dir: Some(dir.clone()),
        train_examples: n,
        ..Default::default()
    };
    let full = opts(None).plan().unwrap().load_data().unwrap().splits;
    assert_eq!(full.train.len(), 9);
    let cut = opts(Some(4)).plan().unwrap().load_data().unwrap().splits;
    assert_eq!(
        (cut.train.len(), cut.val.len(), cut.test.len()),
        (4, full.val.len(), full.test.len())
    );
    assert!(
        cut.train.name().contains("(first 4)"),
        "{}",
        cut.train.name()
    );
    for i in 0..4 {
        assert_eq!(cut.train.label(i).unwrap(), full.train.label(i).unwrap());
        assert_eq!(
            cut.train.get(i).unwrap().doc.pixels().unwrap(),
            full.train.get(i).unwrap().doc.pixels().unwrap()
        );
    }
    for bad in [0, 10] {
        match opts(Some(bad)).plan().unwrap().load_data() {
            Err(Error::Config { field, reason }) => {
                assert_eq!(field, "train_examples");
                assert!(reason.contains("expected 1 to 9"), "{reason}");
            }
            other => panic!("train_examples {bad}: {other:?}"),
        }
    }
}

/// The real AAN pairs are read, not generated: the quick preset's default `train_examples`
/// (the number of pairs to build from a text corpus) is not set for them, so their training
/// split is never cut to it; an explicit `train_examples` keeps its first examples.
#[test]
fn aan_pairs_keep_their_whole_training_split_unless_asked() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/data/aan");
    let all = convluna::data::read_aan_dir(&dir, usize::MAX).unwrap();
    let opts = |n: Option<usize>| RunOptions {
        task: Some(LraTask::Retrieval),
        data_dir: Some(dir.clone()),
        train_examples: n,
        ..Default::default()
    };
    let mut plan = opts(None).plan().unwrap();
    assert_eq!(plan.options.train_examples, None);
    let read = plan.load_data().unwrap().splits;
    assert_eq!(read.train.len(), all.train.len());
    let cut = opts(Some(1)).plan().unwrap().load_data().unwrap().splits;
    assert_eq!(cut.train.len(), 1);
}

/// A finished run continues for more steps: `--steps` may grow (never shrink), and the
/// schedule keeps the span it was started with.
#[test]
fn resume_may_continue_a_run_for_more_steps() {
    let recorded = RunOptions {
        steps: Some(50),
        ..Default::default()
    }
    .resolved()
    .unwrap();
    let file = Path::new("runs/x/run.json");
    let more = RunOptions {
        steps: Some(80),
        patience: Some(3),
        ..Default::default()
    };
    let merged = more.merge_recorded(&recorded, file).unwrap();
    assert_eq!(merged.steps, Some(80));
    assert_eq!(merged.schedule_steps, Some(50));
    assert_eq!(merged.patience, Some(3));
    let tc = merged.plan().unwrap().train_config;
    assert_eq!(tc.steps, 80);
    match tc.schedule {
        convluna::optim::Schedule::Cosine { total, .. } => assert_eq!(total, 50),
        s => panic!("{s:?}"),
    }
    // continuing twice keeps the first span
    let again = RunOptions {
        steps: Some(100),
        ..Default::default()
    };
    assert_eq!(
        again.merge_recorded(&merged, file).unwrap().schedule_steps,
        Some(50)
    );
    let fewer = RunOptions {
        steps: Some(40),
        ..Default::default()
    };
    assert!(matches!(
        fewer.merge_recorded(&recorded, file),
        Err(Error::ResumeMismatch { option, .. }) if option == "steps"
    ));
}
