//! Byte-level text: the aclImdb layout, any folder-per-class corpus, SpamAssassin with headers
//! stripped, BBC; fixtures in each layout, the real substitutes when fetched, error cases.

use std::path::{Path, PathBuf};

use convluna::data::*;
use convluna::Error;
use proptest::prelude::*;

mod common;
use common::tmpdir;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/data/text")
}

/// The folder `scripts/fetch-data.sh` fills: `$CONVLUNA_DATA` or `./data`.
fn data_dir() -> PathBuf {
    std::env::var_os("CONVLUNA_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("data"))
}

fn bytes_of(ex: &Example) -> Vec<u8> {
    ex.doc
        .tokens()
        .unwrap()
        .iter()
        .map(|&t| (t - 1) as u8)
        .collect()
}

fn all_docs(s: &Splits) -> Vec<(String, u32)> {
    [&s.train, &s.val, &s.test]
        .iter()
        .flat_map(|d| (0..d.len()).map(|i| d.get(i).unwrap()))
        .map(|e| (String::from_utf8_lossy(&bytes_of(&e)).into_owned(), e.label))
        .collect()
}

#[test]
fn reads_imdb_layout() {
    let s = read_imdb_dir(&fixtures().join("aclImdb"), 4000).unwrap();
    // 7 labelled training reviews (one empty file skipped), unsup ignored; 10 % validation.
    assert_eq!((s.train.len(), s.val.len(), s.test.len()), (6, 1, 3));
    assert_eq!(s.train.skipped(), 1);
    assert_eq!(s.train.num_classes(), 2);
    assert_eq!(s.train.max_len(), 4000);
    assert!(s.train.name().starts_with("text: imdb"));
    let docs = all_docs(&s);
    assert!(docs.iter().all(|(t, _)| !t.contains("Unlabelled")));
    for (t, l) in &docs {
        let neg = [
            "Two hours",
            "Wooden",
            "I wanted",
            "Caf",
            "Loud",
            "The trailer",
        ]
        .iter()
        .any(|p| t.starts_with(p));
        assert_eq!(*l, u32::from(!neg), "{t}");
    }
    // The parent folder works too, ids are byte + 1, UTF-8 stays bytes.
    let s2 = read_imdb_dir(&fixtures(), 4000).unwrap();
    assert_eq!(s2.test.len(), 3);
    let test = s2.test.get(0).unwrap();
    let raw = std::fs::read(fixtures().join("aclImdb/test/neg/0_3.txt")).unwrap();
    assert_eq!(
        test.doc,
        Sequence::Tokens(raw.iter().map(|&b| b as u32 + 1).collect())
    );
    let cafe = docs.iter().find(|(t, _)| t.starts_with("Caf")).unwrap();
    assert!(cafe.0.starts_with("Café"));
}

#[test]
fn truncates_to_max_len() {
    let s = read_imdb_dir(&fixtures().join("aclImdb"), 10).unwrap();
    for d in [&s.train, &s.val, &s.test] {
        for i in 0..d.len() {
            let ex = d.get(i).unwrap();
            assert!(ex.doc.len() <= 10 && !ex.doc.is_empty());
            assert_eq!(d.length(i).unwrap(), ex.doc.len());
        }
    }
}

#[test]
fn reads_class_folders_and_bbc() {
    let ds = read_class_folders(&fixtures().join("bbc"), 4000, "text: bbc-like").unwrap();
    assert_eq!((ds.len(), ds.num_classes()), (12, 3));
    assert_eq!(label_counts(&*ds).unwrap(), vec![4, 4, 4]);
    assert_eq!(
        bytes_of(&ds.get(4).unwrap()),
        b"The home side won the match with a late goal.\n"
    );
    assert_eq!(
        ds.get(4).unwrap().label,
        1,
        "classes sorted by name: business, sport, tech"
    );
    let s = read_bbc(&fixtures().join("bbc"), 4000).unwrap();
    assert_eq!((s.train.len(), s.val.len(), s.test.len()), (9, 1, 2));
    assert!(s.train.name().contains("(substitute)"));
    // Found from the parent folder as well; the split is deterministic.
    let s2 = read_bbc(&fixtures(), 4000).unwrap();
    assert_eq!(all_docs(&s), all_docs(&s2));
}

#[test]
fn reads_spam_assassin_without_headers() {
    let s = read_spam_assassin(&fixtures().join("spam-assassin"), 4000).unwrap();
    let docs = all_docs(&s);
    assert_eq!(docs.len(), 5, "6 messages, one with headers only");
    assert_eq!(s.train.skipped(), 1);
    assert_eq!((s.train.len(), s.val.len(), s.test.len()), (4, 0, 1));
    assert!(s.train.name().contains("spam-assassin (substitute)"));
    for (t, _) in &docs {
        assert!(
            !t.contains("X-Spam") && !t.contains("Subject:") && !t.contains("Return-Path"),
            "header leaked: {t}"
        );
    }
    let spam: Vec<&String> = docs.iter().filter(|d| d.1 == 1).map(|d| &d.0).collect();
    assert_eq!(spam.len(), 2);
    assert!(spam.iter().any(|t| t.starts_with("Claim your prize")));
    assert!(docs
        .iter()
        .any(|(t, l)| *l == 0 && t == "Lunch at noon on Friday?\r\n"));
    // The data/ folder itself works too.
    let s2 = read_spam_assassin(&fixtures().join("spam-assassin/data"), 4000).unwrap();
    assert_eq!(all_docs(&s2), docs);
}

#[test]
fn header_stripping() {
    assert_eq!(
        strip_email_headers(b"From: a\nSubject: b\n\nbody\n\nmore"),
        b"body\n\nmore"
    );
    assert_eq!(
        strip_email_headers(b"From a@b Mon\r\nX: y\r\n\r\nbody"),
        b"body"
    );
    assert_eq!(strip_email_headers(b"Subject: only headers\n"), b"");
    assert_eq!(
        strip_email_headers(b"no header here\n\nbody"),
        b"no header here\n\nbody"
    );
    assert_eq!(strip_email_headers(b""), b"");
    assert_eq!(strip_email_headers(b"Subject: x\n\n"), b"");
}

#[test]
fn error_cases() {
    let dir = tmpdir("text-err");
    // One class folder only.
    std::fs::create_dir_all(dir.join("only/a")).unwrap();
    std::fs::write(dir.join("only/a/1.txt"), "x").unwrap();
    assert!(matches!(
        read_class_folders(&dir.join("only"), 100, "t"),
        Err(Error::Data(DataError::Empty { .. }))
    ));
    // Class folders without documents (empty files are skipped, leaving nothing).
    std::fs::create_dir_all(dir.join("none/a")).unwrap();
    std::fs::create_dir_all(dir.join("none/b")).unwrap();
    std::fs::write(dir.join("none/b/1.txt"), "").unwrap();
    assert!(matches!(
        read_class_folders(&dir.join("none"), 100, "t"),
        Err(Error::Data(DataError::Empty { .. }))
    ));
    // Missing folders are I/O errors naming the path.
    match read_imdb_dir(&dir.join("nowhere"), 100) {
        Err(Error::Io { path, .. }) => assert!(path.ends_with("nowhere/train/neg")),
        other => panic!("unexpected {:?}", other.err()),
    }
    // A SpamAssassin folder without any body.
    std::fs::create_dir_all(dir.join("sa/easy-ham-1")).unwrap();
    std::fs::create_dir_all(dir.join("sa/spam-1")).unwrap();
    std::fs::write(dir.join("sa/spam-1/1.txt"), "Subject: x\n").unwrap();
    assert!(matches!(
        read_spam_assassin(&dir.join("sa"), 100),
        Err(Error::Data(DataError::Empty { .. }))
    ));
    assert!(matches!(
        read_spam_assassin(&dir.join("none"), 100),
        Err(Error::Data(DataError::Empty { .. }))
    ));
    std::fs::remove_dir_all(dir).ok();
}

fn describe(name: &str, s: &Splits) {
    println!("{name}:\n{}", s.summary());
    for (part, d) in [("train", &s.train), ("val", &s.val), ("test", &s.test)] {
        let lens: Vec<usize> = (0..d.len()).map(|i| d.length(i).unwrap()).collect();
        let mean = lens.iter().sum::<usize>() as f64 / lens.len().max(1) as f64;
        println!(
            "  {part}: per class {:?}, majority {:.3}, mean length {mean:.0}",
            label_counts(&**d).unwrap(),
            majority_fraction(&**d).unwrap()
        );
    }
}

#[test]
fn real_substitutes_when_fetched() {
    let dir = data_dir();
    let spam = dir.join("spam-assassin");
    if spam.is_dir() {
        let s = read_spam_assassin(&spam, DEFAULT_TEXT_LEN).unwrap();
        describe("spam-assassin", &s);
        let total = s.train.len() + s.val.len() + s.test.len() + s.train.skipped();
        assert_eq!(total, 6046, "6,046 messages in the package");
        // Headers are gone: no body starts with the mbox `From ` line, and SpamAssassin's own
        // verdict header survives only where a message quotes it in its text (6 of 6,046).
        let docs = all_docs(&s);
        assert!(docs
            .iter()
            .all(|(t, _)| !t.starts_with("From ") && !t.starts_with("Return-Path:")));
        let quoted = docs
            .iter()
            .filter(|(t, _)| t.contains("X-Spam-Status:"))
            .count();
        assert!(
            quoted * 200 < docs.len(),
            "{quoted} bodies contain X-Spam-Status"
        );
    } else {
        println!(
            "note: {} absent (run scripts/fetch-data.sh); SpamAssassin check skipped",
            spam.display()
        );
    }
    let bbc = dir.join("bbc");
    if bbc.is_dir() {
        let s = read_bbc(&bbc, DEFAULT_TEXT_LEN).unwrap();
        describe("bbc", &s);
        assert_eq!(s.train.len() + s.val.len() + s.test.len(), 2225);
        assert_eq!(s.train.num_classes(), 5);
    } else {
        println!(
            "note: {} absent (run scripts/fetch-data.sh); BBC check skipped",
            bbc.display()
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, .. ProptestConfig::default() })]

    #[test]
    fn header_stripping_never_panics(raw in proptest::collection::vec(any::<u8>(), 0..300)) {
        let body = strip_email_headers(&raw);
        prop_assert!(raw.ends_with(body), "the body is a suffix of the message");
    }

    #[test]
    fn header_stripping_on_mail_like_input(lines in proptest::collection::vec(prop_oneof![
        Just("From a@b.c Mon Jan 1\n".to_string()), Just("Subject: hi\n".to_string()), Just("\n".to_string()),
        Just("\r\n".to_string()), Just("X-Spam: yes\r\n".to_string()), "[ -~]{0,20}\n"], 0..12)) {
        let raw = lines.concat();
        let body = strip_email_headers(raw.as_bytes());
        prop_assert!(raw.as_bytes().ends_with(body));
        if raw.starts_with("Subject: hi\n") && !raw.contains("\n\n") && !raw.contains("\n\r\n") {
            prop_assert!(body.is_empty());
        }
    }
}
