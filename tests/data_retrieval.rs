//! Retrieval: the AAN TSV reader (fixture, errors, property test) and the same-class pair
//! substitute.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::Device;
use convluna::data::*;
use convluna::Error;
use proptest::prelude::*;

mod common;
use common::tmpdir;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/data")
}

fn text(s: &Sequence) -> String {
    String::from_utf8(s.tokens().unwrap().iter().map(|&t| (t - 1) as u8).collect()).unwrap()
}

#[test]
fn reads_aan_fixture() {
    let s = read_aan_dir(&fixtures().join("aan"), 4000).unwrap();
    assert_eq!((s.train.len(), s.val.len(), s.test.len()), (4, 2, 2));
    assert!(s.train.is_pair() && s.val.is_pair());
    assert_eq!(s.train.num_classes(), 2);
    assert_eq!(s.train.name(), "retrieval: new_aan_pairs.train.tsv");
    let labels: Vec<u32> = (0..4).map(|i| s.train.get(i).unwrap().label).collect();
    assert_eq!(labels, vec![1, 0, 1, 0], "labels written 1.0 / 0.0 / 1 / 0");
    let ex = s.val.get(0).unwrap();
    assert_eq!(
        text(&ex.doc),
        "Evaluating translation output with n-gram precision."
    );
    assert_eq!(
        text(ex.doc2.as_ref().unwrap()),
        "BLEU: a method for automatic evaluation of machine translation."
    );
    assert!(text(s.train.get(3).unwrap().doc2.as_ref().unwrap()).ends_with("cafés."));
    // Truncation per document.
    let short = read_aan_dir(&fixtures().join("aan"), 8).unwrap();
    let ex = short.test.get(1).unwrap();
    assert_eq!((ex.doc.len(), ex.doc2.unwrap().len()), (8, 8));
    // Two-document batches.
    let b = make_batch(&*s.train, &[0, 1, 2], PadTo::Longest, &Device::Cpu).unwrap();
    assert!(b.input2.is_some() && b.mask2.is_some());
    assert_eq!(b.input2.unwrap().dims()[0], 3);
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn aan_errors() {
    let dir = tmpdir("aan-err");
    let good = "1.0\ta\tb\tx y\tz w\n";
    let p = write(&dir, "cols.tsv", &format!("{good}0.0\ta\tb\tonly four\n"));
    match AanDataset::open(&p, 100) {
        Err(Error::Data(DataError::ColumnCount {
            at: Location::Line(2),
            expected: 5,
            found: 4,
            path,
        })) => assert_eq!(path, p),
        other => panic!("unexpected {:?}", other.err()),
    }
    let p = write(&dir, "six.tsv", "1.0\ta\tb\tx\ty\tz\n");
    assert!(matches!(
        AanDataset::open(&p, 100),
        Err(Error::Data(DataError::ColumnCount { found: 6, .. }))
    ));
    for label in ["2.0", "0.5", "yes", "", "-1", "nan"] {
        let p = write(
            &dir,
            "label.tsv",
            &format!("{good}{good}{label}\ta\tb\tx\ty\n"),
        );
        match AanDataset::open(&p, 100) {
            Err(Error::Data(DataError::LabelOutOfRange {
                at: Location::Line(3),
                num_classes: 2,
                ..
            })) => {}
            other => panic!("label {label:?}: unexpected {:?}", other.err()),
        }
    }
    let p = write(&dir, "empty.tsv", "");
    assert!(matches!(
        AanDataset::open(&p, 100),
        Err(Error::Data(DataError::Empty { .. }))
    ));
    let p = write(&dir, "blank.tsv", &format!("\n{good}\r\n{good}"));
    let ds = AanDataset::open(&p, 100).unwrap();
    assert_eq!((ds.len(), ds.skipped()), (2, 2));
    assert_eq!(text(&ds.get(1).unwrap().doc), "x y");
    let err = AanDataset::open(&dir.join("missing.tsv"), 100)
        .err()
        .unwrap();
    assert!(err.to_string().contains("missing.tsv"));
    std::fs::remove_dir_all(dir).ok();
}

/// A labelled corpus of short token documents: document i has class `classes[i]`.
struct Corpus(Vec<u32>, DatasetInfo);

fn toy_corpus(classes: Vec<u32>) -> Corpus {
    Corpus(classes, DatasetInfo::new("toy corpus", 5, 16))
}

impl Dataset for Corpus {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn get(&self, index: usize) -> convluna::Result<Example> {
        Ok(Example {
            doc: Sequence::Tokens(vec![index as u32 + 1; 1 + index % 4]),
            doc2: None,
            label: self.0[index],
        })
    }
    fn info(&self) -> &DatasetInfo {
        &self.1
    }
}

#[test]
fn pair_substitute_is_balanced_and_same_class() {
    let classes: Vec<u32> = (0..60).map(|i| [0, 0, 0, 1, 2, 2, 3][i % 7]).collect();
    let corpus: Arc<dyn Dataset> = Arc::new(toy_corpus(classes.clone()));
    let pairs = pair_substitute(corpus.clone(), 501, 3);
    assert_eq!(pairs.len(), 501);
    assert!(pairs.is_pair());
    assert_eq!((pairs.num_classes(), pairs.max_len()), (2, 16));
    assert!(pairs.name().contains("substitute"), "{}", pairs.name());
    let mut pos = 0;
    for i in 0..pairs.len() {
        let ex = pairs.get(i).unwrap();
        let a = ex.doc.tokens().unwrap()[0] as usize - 1;
        let b = ex.doc2.as_ref().unwrap().tokens().unwrap()[0] as usize - 1;
        assert_ne!(a, b, "a document is never paired with itself");
        assert_eq!(ex.label == 1, classes[a] == classes[b]);
        pos += ex.label as usize;
    }
    assert_eq!(pos, 250, "exactly half (rounded down) are positive");
    // Deterministic in the seed.
    let again = pair_substitute(corpus.clone(), 501, 3);
    let other = pair_substitute(corpus.clone(), 501, 4);
    let pairs_of =
        |d: &Arc<dyn Dataset>| (0..d.len()).map(|i| d.get(i).unwrap()).collect::<Vec<_>>();
    assert_eq!(pairs_of(&pairs), pairs_of(&again));
    assert_ne!(pairs_of(&pairs), pairs_of(&other));
    // Impossible corpora are errors.
    assert!(try_pair_substitute(Arc::new(toy_corpus(vec![1; 10])), 4, 0).is_err());
    assert!(try_pair_substitute(Arc::new(toy_corpus(vec![0, 1, 2])), 4, 0).is_err());
}

#[test]
fn pair_substitute_from_a_text_fixture() {
    let corpus = read_bbc(&fixtures().join("text/bbc"), 4000).unwrap();
    // The 1-document validation split cannot give positive pairs: an error, not a panic.
    assert!(matches!(
        pair_substitute_splits(&corpus, 40, 4, 4, 9),
        Err(Error::Data(DataError::Empty { .. }))
    ));
    let train = try_pair_substitute(corpus.train.clone(), 40, 9).unwrap();
    assert_eq!(train.len(), 40);
    assert!(train.name().contains("bbc (substitute)"));
    assert_eq!(majority_fraction(&*train).unwrap(), 0.5);
    let b = make_batch(&*train, &[0, 1, 2, 3], PadTo::Fixed(32), &Device::Cpu).unwrap();
    assert_eq!(b.input.dims(), &[4, 32]);
    assert_eq!(b.input2.as_ref().unwrap().dims(), &[4, 32]);
    assert_eq!(b.tokens, 8 * 32);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, .. ProptestConfig::default() })]

    #[test]
    fn aan_parser_never_panics(line in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = parse_aan_line(&line, Path::new("a.tsv"), 1);
    }

    #[test]
    fn aan_parser_on_plausible_rows(label in "[-0-9.a-z]{0,4}", fields in proptest::collection::vec("[ -~]{0,10}", 0..7)) {
        let line = format!("{label}\t{}", fields.join("\t"));
        match parse_aan_line(line.as_bytes(), Path::new("a.tsv"), 5) {
            Ok(Some(row)) => prop_assert!(row.label < 2),
            Ok(None) => {}
            Err(e) => prop_assert!(e.to_string().contains("a.tsv, line 5")),
        }
    }
}

#[test]
fn pair_substitute_on_real_corpora_when_fetched() {
    let dir = std::env::var_os("CONVLUNA_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("data"));
    let mut any = false;
    for (name, path) in [
        ("bbc", dir.join("bbc")),
        ("spam-assassin", dir.join("spam-assassin")),
    ] {
        if !path.is_dir() {
            continue;
        }
        any = true;
        let corpus = if name == "bbc" {
            read_bbc(&path, 4000).unwrap()
        } else {
            read_spam_assassin(&path, 4000).unwrap()
        };
        let s = pair_substitute_splits(&corpus, 2000, 200, 200, 1).unwrap();
        println!("{name} pairs:\n{}", s.summary());
        for d in [&s.train, &s.val, &s.test] {
            assert_eq!(majority_fraction(&**d).unwrap(), 0.5);
        }
        let b = make_batch(&*s.train, &[0, 1, 2, 3], PadTo::Longest, &Device::Cpu).unwrap();
        assert!(b.input.dims()[1] <= 4000 && b.input2.unwrap().dims()[1] <= 4000);
    }
    if !any {
        println!(
            "note: no text substitute in {} (run scripts/fetch-data.sh); skipped",
            dir.display()
        );
    }
}
