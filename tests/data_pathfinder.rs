//! Pathfinder: the generator's labels against a flood fill of the rendered image, balance,
//! determinism, the official layout round trip, the checked-in fixture and every error case.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use convluna::data::*;
use convluna::Error;
use proptest::prelude::*;

mod common;
use common::tmpdir;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/data/pathfinder32/curv_baseline")
}

/// Whether the two marker pixels are in one 8-connected component of lit (non-zero) pixels.
fn connected(pixels: &[u8], side: usize, a: (usize, usize), b: (usize, usize)) -> bool {
    assert!(
        pixels[a.0 * side + a.1] > 0 && pixels[b.0 * side + b.1] > 0,
        "markers must be lit"
    );
    let mut seen = vec![false; side * side];
    let mut queue = VecDeque::from([a]);
    seen[a.0 * side + a.1] = true;
    while let Some((r, c)) = queue.pop_front() {
        if (r, c) == b {
            return true;
        }
        for dr in -1i64..=1 {
            for dc in -1i64..=1 {
                let (rr, cc) = (r as i64 + dr, c as i64 + dc);
                if rr < 0 || cc < 0 || rr >= side as i64 || cc >= side as i64 {
                    continue;
                }
                let q = rr as usize * side + cc as usize;
                if pixels[q] > 0 && !seen[q] {
                    seen[q] = true;
                    queue.push_back((rr as usize, cc as usize));
                }
            }
        }
    }
    false
}

fn check_labels(cfg: &PathfinderConfig, n: u64, seed: u64) -> usize {
    let mut positives = 0;
    for i in 0..n {
        let s = pathfinder_sample(cfg, seed, i).unwrap();
        assert_eq!(s.pixels.len(), cfg.size * cfg.size);
        let c = connected(&s.pixels, cfg.size, s.markers[0], s.markers[1]);
        assert_eq!(
            c,
            s.label == 1,
            "sample {i}: label {} but markers connected = {c}",
            s.label
        );
        positives += s.label as usize;
    }
    positives
}

#[test]
fn label_is_marker_connectivity_easy() {
    check_labels(&PathfinderConfig::easy(), 400, 1);
}

#[test]
fn label_is_marker_connectivity_intermediate_and_hard() {
    check_labels(&PathfinderConfig::intermediate(), 100, 2);
    check_labels(&PathfinderConfig::hard(), 60, 3);
}

#[test]
fn label_is_marker_connectivity_path_x() {
    check_labels(&PathfinderConfig::path_x(14), 6, 4);
}

#[test]
fn classes_are_balanced() {
    let data = generate_pathfinder(&PathfinderConfig::easy(), 600, 11);
    let pos = data.iter().filter(|(_, l)| *l == 1).count() as f64 / 600.0;
    assert!((0.44..=0.56).contains(&pos), "share of label 1: {pos}");
    let ds = PathfinderDataset::generated(&PathfinderConfig::easy(), 600, 11);
    assert!(majority_fraction(&ds).unwrap() <= 0.56);
}

#[test]
fn same_seed_same_bytes() {
    let cfg = PathfinderConfig::easy();
    let a = generate_pathfinder(&cfg, 40, 5);
    let b = generate_pathfinder(&cfg, 40, 5);
    assert_eq!(a, b);
    let c = generate_pathfinder(&cfg, 40, 6);
    assert_ne!(a, c);
    // Sample i does not depend on how many are generated or on threads.
    let s = pathfinder_sample(&cfg, 5, 17).unwrap();
    assert_eq!((s.pixels, s.label), a[17].clone());
    // Pinned bytes: the generator uses only integer and basic IEEE arithmetic, so this FNV-1a
    // hash of the first images must be the same on every platform.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (px, l) in generate_pathfinder(&cfg, 4, 0) {
        for b in px.into_iter().chain([l as u8]) {
            h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
    }
    assert_eq!(h, PINNED_HASH, "generator output changed: {h:#x}");
}

const PINNED_HASH: u64 = 0x29d2_364b_8286_d131;

#[test]
fn images_look_like_pathfinder() {
    // Two targets plus most distractors: a reasonable share of lit pixels, two bright markers.
    for (cfg, lo, hi) in [
        (PathfinderConfig::easy(), 0.08, 0.45),
        (PathfinderConfig::hard(), 0.15, 0.6),
    ] {
        let data = generate_pathfinder(&cfg, 50, 9);
        let lit: f64 = data
            .iter()
            .map(|(p, _)| p.iter().filter(|&&v| v > 0).count() as f64 / p.len() as f64)
            .sum::<f64>()
            / 50.0;
        assert!((lo..hi).contains(&lit), "mean lit share {lit}");
        assert!(data
            .iter()
            .all(|(p, _)| p.iter().filter(|&&v| v == 255).count() >= 2));
    }
}

#[test]
fn generated_splits_have_requested_sizes() {
    let s = PathfinderDataset::generate_splits(&PathfinderConfig::easy(), 20, 5, 5, 3);
    assert_eq!((s.train.len(), s.val.len(), s.test.len()), (20, 5, 5));
    assert_eq!(s.train.max_len(), 1024);
    assert!(s.train.name().contains("generated"));
    let all = generate_pathfinder(&PathfinderConfig::easy(), 30, 3);
    let ex = s.val.get(2).unwrap();
    assert_eq!(ex.doc, Sequence::Pixels(all[22].0.clone()));
}

#[test]
fn official_layout_round_trips() {
    let cfg = PathfinderConfig::hard();
    let root = tmpdir("pf-layout");
    let dir = root.join("pathfinder32").join(cfg.dir_name());
    write_pathfinder_dir(&dir, &cfg, 25, 8, 10).unwrap();
    assert!(dir.join("imgs/2/sample_4.png").is_file());
    assert!(dir.join("metadata/2.npy").is_file());
    let ds = PngDataset::open(&dir).unwrap();
    assert_eq!((ds.len(), ds.side(), ds.skipped()), (25, 32, 0));
    let gen = generate_pathfinder(&cfg, 25, 8);
    for (i, (px, label)) in gen.iter().enumerate() {
        let ex = ds.get(i).unwrap();
        assert_eq!(ex.doc, Sequence::Pixels(px.clone()), "image {i}");
        assert_eq!(ex.label, *label);
    }
    let splits = read_pathfinder_dir(&dir, (80, 10, 10)).unwrap();
    assert_eq!(
        (splits.train.len(), splits.val.len(), splits.test.len()),
        (20, 2, 3)
    );
    let mut labels: Vec<u32> = [&splits.train, &splits.val, &splits.test]
        .iter()
        .flat_map(|d| (0..d.len()).map(|i| d.label(i).unwrap()))
        .collect();
    let mut expected: Vec<u32> = gen.iter().map(|g| g.1).collect();
    labels.sort();
    expected.sort();
    assert_eq!(labels, expected);
    std::fs::remove_dir_all(root).ok();
}

#[test]
fn reads_fixture_and_skips_empty_image() {
    let ds = PngDataset::open(&fixture()).unwrap();
    assert_eq!(ds.len(), 6);
    assert_eq!(
        ds.skipped(),
        1,
        "the zero-byte sample_6.png is skipped and counted"
    );
    let labels: Vec<u32> = (0..6).map(|i| ds.get(i).unwrap().label).collect();
    assert_eq!(labels, vec![0, 0, 0, 0, 1, 0]);
    // The fixture was written by the generator (easy, seed 7): same bytes today.
    let gen = generate_pathfinder(&PathfinderConfig::easy(), 6, 7);
    for (i, (px, _)) in gen.iter().enumerate() {
        assert_eq!(ds.get(i).unwrap().doc, Sequence::Pixels(px.clone()));
    }
    let splits = read_pathfinder_dir(&fixture(), (80, 10, 10)).unwrap();
    assert_eq!(splits.train.len() + splits.val.len() + splits.test.len(), 6);
    assert_eq!(splits.train.skipped(), 1);
}

#[test]
fn known_empty_image_of_the_release_is_skipped() {
    let root = tmpdir("pf-known");
    let dir = root.join("pathfinder32/curv_baseline");
    std::fs::create_dir_all(dir.join("imgs/0")).unwrap();
    std::fs::create_dir_all(dir.join("metadata")).unwrap();
    let png = encode_grey_png(&[0u8; 1024], 32, 32).unwrap();
    let mut meta = String::new();
    for i in [171, 172, 173] {
        std::fs::write(dir.join(format!("imgs/0/sample_{i}.png")), &png).unwrap();
        meta.push_str(&format!("imgs/0 sample_{i}.png {i} 1 1 6 2 2 0.5 1 1\n"));
    }
    std::fs::write(dir.join("metadata/0.npy"), meta).unwrap();
    let ds = PngDataset::open(&dir).unwrap();
    assert_eq!((ds.len(), ds.skipped()), (2, 1));
    std::fs::remove_dir_all(root).ok();
}

/// A one-batch layout with the given metadata and images.
fn layout(tag: &str, meta: &str, images: &[(&str, Vec<u8>)]) -> PathBuf {
    let dir = tmpdir(tag).join("curv_contour_length_14");
    std::fs::create_dir_all(dir.join("imgs/0")).unwrap();
    std::fs::create_dir_all(dir.join("metadata")).unwrap();
    std::fs::write(dir.join("metadata/0.npy"), meta).unwrap();
    for (name, bytes) in images {
        std::fs::write(dir.join("imgs/0").join(name), bytes).unwrap();
    }
    dir
}

fn good_png() -> Vec<u8> {
    encode_grey_png(&[7u8; 1024], 32, 32).unwrap()
}

#[test]
fn error_wrong_column_count() {
    let dir = layout(
        "pf-cols",
        "imgs/0 sample_0.png 0 1\nimgs/0 sample_1.png 1\n",
        &[("sample_0.png", good_png())],
    );
    let err = PngDataset::open(&dir).err().expect("must fail");
    match &err {
        Error::Data(DataError::ColumnCount {
            at: Location::Line(2),
            expected: 4,
            found: 3,
            path,
        }) => {
            assert!(path.ends_with("metadata/0.npy"))
        }
        e => panic!("unexpected {e:?}"),
    }
    assert!(err.to_string().contains("0.npy, line 2"), "{err}");
}

#[test]
fn error_label_out_of_range() {
    let dir = layout(
        "pf-label",
        "imgs/0 sample_0.png 0 2 1 14\n",
        &[("sample_0.png", good_png())],
    );
    match PngDataset::open(&dir) {
        Err(Error::Data(DataError::LabelOutOfRange {
            at: Location::Line(1),
            num_classes: 2,
            label,
            ..
        })) => assert_eq!(label, "2"),
        other => panic!("unexpected {:?}", other.err()),
    }
}

#[test]
fn error_missing_image() {
    let dir = layout(
        "pf-missing",
        "imgs/0 sample_0.png 0 1\nimgs/0 sample_9.png 1 0\n",
        &[("sample_0.png", good_png())],
    );
    match PngDataset::open(&dir) {
        Err(Error::Data(DataError::MissingFile { line: 2, path, .. })) => {
            assert!(path.ends_with("sample_9.png"))
        }
        other => panic!("unexpected {:?}", other.err()),
    }
}

#[test]
fn error_unreadable_png() {
    let dir = layout(
        "pf-bad",
        "imgs/0 sample_0.png 0 1\nimgs/0 sample_1.png 1 0\n",
        &[
            ("sample_0.png", good_png()),
            ("sample_1.png", b"\x89PNG\r\n\x1a\nnot really".to_vec()),
        ],
    );
    let ds = PngDataset::open(&dir).unwrap();
    assert!(ds.get(0).is_ok());
    match ds.get(1) {
        Err(Error::Data(DataError::BadImage {
            path,
            at: Location::Record(1),
            ..
        })) => assert!(path.ends_with("sample_1.png")),
        other => panic!("unexpected {other:?}"),
    }
    // An unreadable first image fails at open.
    let dir = layout(
        "pf-bad0",
        "imgs/0 sample_0.png 0 1\n",
        &[("sample_0.png", b"garbage".to_vec())],
    );
    assert!(matches!(
        PngDataset::open(&dir),
        Err(Error::Data(DataError::BadImage { .. }))
    ));
}

#[test]
fn error_wrongly_sized_png() {
    let dir = layout(
        "pf-size",
        "imgs/0 sample_0.png 0 1\nimgs/0 sample_1.png 1 0\n",
        &[
            ("sample_0.png", good_png()),
            (
                "sample_1.png",
                encode_grey_png(&[1u8; 16 * 16], 16, 16).unwrap(),
            ),
        ],
    );
    let ds = PngDataset::open(&dir).unwrap();
    match ds.get(1) {
        Err(Error::Data(DataError::ImageSize {
            expected: (32, 32),
            found: (16, 16),
            path,
        })) => assert!(path.ends_with("sample_1.png")),
        other => panic!("unexpected {other:?}"),
    }
    let dir = layout(
        "pf-rect",
        "imgs/0 sample_0.png 0 1\n",
        &[(
            "sample_0.png",
            encode_grey_png(&[1u8; 32 * 16], 32, 16).unwrap(),
        )],
    );
    assert!(matches!(
        PngDataset::open(&dir),
        Err(Error::Data(DataError::ImageSize { .. }))
    ));
}

#[test]
fn error_empty_dataset() {
    let dir = layout("pf-empty", "\n", &[]);
    match PngDataset::open(&dir) {
        Err(Error::Data(DataError::Empty { .. })) => {}
        other => panic!("unexpected {:?}", other.err()),
    }
    let dir = tmpdir("pf-nometa");
    assert!(matches!(PngDataset::open(&dir), Err(Error::Io { .. })));
}

#[test]
fn decodes_colour_pngs_to_grey() {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, 2, 1);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().unwrap();
        w.write_image_data(&[255, 0, 0, 10, 20, 30]).unwrap();
    }
    let (w, h, px) = decode_grey_png(&out).unwrap();
    assert_eq!((w, h), (2, 1));
    assert_eq!(px, vec![76, 18]); // round(0.2989·255), round(0.2989·10 + 0.587·20 + 0.114·30)
}

#[test]
fn config_names_and_validation() {
    assert_eq!(
        PathfinderConfig::hard().dir_name(),
        "curv_contour_length_14"
    );
    assert_eq!(PathfinderConfig::easy().dir_name(), "curv_baseline");
    assert_eq!(PathfinderConfig::easy().num_distractors, 10);
    assert_eq!(PathfinderConfig::intermediate().num_distractors, 6);
    assert_eq!(PathfinderConfig::hard().num_distractors, 5);
    assert_eq!(PathfinderConfig::hard().distractor_length, 4);
    assert_eq!(
        PathfinderConfig::from_difficulty("hard", 128).unwrap().size,
        128
    );
    assert!(PathfinderConfig::from_difficulty("medium", 32).is_err());
    let bad = PathfinderConfig {
        paddle_length: f64::NAN,
        ..PathfinderConfig::easy()
    };
    assert!(bad.validate().is_err());
    assert!(pathfinder_sample(&bad, 0, 0).is_err());
    // A snake that cannot fit is an error, not a hang.
    let impossible = PathfinderConfig {
        contour_length: 400,
        ..PathfinderConfig::easy()
    };
    assert!(pathfinder_sample(&impossible, 0, 0).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, .. ProptestConfig::default() })]

    #[test]
    fn metadata_parser_never_panics(line in proptest::collection::vec(any::<u8>(), 0..120)) {
        let _ = parse_metadata_row(&line, Path::new("m.npy"), 1);
    }

    #[test]
    fn metadata_parser_on_plausible_rows(subdir in "[a-z/0-9]{0,8}", file in "[a-z_0-9.]{0,12}", idx in "[0-9]{0,3}", label in "[-0-9.a]{0,3}", rest in "[ 0-9.]{0,20}") {
        let line = format!("{subdir} {file} {idx} {label}{rest}");
        if let Ok(Some(row)) = parse_metadata_row(line.as_bytes(), Path::new("m.npy"), 3) {
            prop_assert!(row.label < 2);
        }
    }

    #[test]
    fn png_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mut with_magic = b"\x89PNG\r\n\x1a\n".to_vec();
        with_magic.extend(&bytes);
        let _ = decode_grey_png(&bytes);
        let _ = decode_grey_png(&with_magic);
    }
}
