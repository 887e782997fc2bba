//! Image: CIFAR-10 binary batches (grey formula, 90/10 split), Fashion-MNIST IDX (gzip or not,
//! padding to 32×32), the real Debian package when installed, and the error cases.

use std::path::{Path, PathBuf};

use convluna::data::*;
use convluna::Error;
use proptest::prelude::*;

mod common;
use common::tmpdir;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/data")
}

/// The fixture's record `i` (see tests/fixtures/data/README.md).
fn cifar_rgb(i: usize, p: usize) -> (u8, u8, u8) {
    (
        ((i * 7 + p) % 256) as u8,
        ((p * 3 + i) % 256) as u8,
        ((255 + 256 * 8 - p - i) % 256) as u8,
    )
}

#[test]
fn grey_formula_is_tensorflows() {
    assert_eq!(grey(0, 0, 0), 0);
    assert_eq!(grey(255, 255, 255), 255);
    assert_eq!(grey(255, 0, 0), 76);
    assert_eq!(grey(0, 255, 0), 149);
    assert_eq!(grey(0, 0, 255), 29);
    assert_eq!(grey(100, 150, 200), 141);
}

#[test]
fn reads_cifar10_fixture() {
    let s = read_cifar10_dir(&fixtures().join("cifar-10-batches-bin")).unwrap();
    assert_eq!((s.train.len(), s.val.len(), s.test.len()), (9, 1, 2));
    assert_eq!((s.train.max_len(), s.train.num_classes()), (1024, 10));
    // The parent folder works too.
    assert_eq!(read_cifar10_dir(&fixtures()).unwrap().test.len(), 2);
    // Train then validation in file order (records 0..9 | 9), test records 10 and 11.
    for (d, first) in [(&s.train, 0), (&s.val, 9), (&s.test, 10)] {
        for k in 0..d.len() {
            let i = first + k;
            let ex = d.get(k).unwrap();
            assert_eq!(ex.label, (i % 10) as u32);
            let px = ex.doc.pixels().unwrap();
            assert_eq!(px.len(), 1024);
            for (p, &v) in px.iter().enumerate() {
                let (r, g, b) = cifar_rgb(i, p);
                let y = (0.2989 * r as f64 + 0.5870 * g as f64 + 0.1140 * b as f64) / 255.0 * 255.5;
                assert!((v as f64 - y.floor()).abs() <= 1.0, "record {i} pixel {p}");
                assert_eq!(v, grey(r, g, b));
            }
        }
    }
}

#[test]
fn reads_fashion_mnist_fixture_gz_or_not() {
    let s = read_fashion_mnist_dir(&fixtures().join("fashion-mnist")).unwrap();
    assert_eq!((s.train.len(), s.val.len(), s.test.len()), (9, 1, 3));
    assert_eq!(s.train.max_len(), 1024);
    assert!(s.train.name().contains("fashion-mnist (substitute)"));
    let labels: Vec<u32> = (0..9).map(|i| s.train.label(i).unwrap()).collect();
    assert_eq!(labels, vec![9, 0, 0, 3, 0, 2, 7, 2, 5]);
    assert_eq!(s.val.label(0).unwrap(), 5);
    // Padding: 2 zero pixels on every side, the 28×28 image inside.
    for (d, seed, first) in [(&s.train, 1, 0), (&s.test, 2, 0)] {
        let ex = d.get(0).unwrap();
        let px = ex.doc.pixels().unwrap();
        for r in 0..32 {
            for c in 0..32 {
                let v = px[r * 32 + c];
                if !(2..30).contains(&r) || !(2..30).contains(&c) {
                    assert_eq!(v, 0, "border pixel ({r}, {c})");
                } else {
                    let (rr, cc, i) = (r - 2, c - 2, first);
                    let want = if (rr + cc + i) % 3 != 0 {
                        ((i * 31 + rr * 5 + cc * 11 + seed) % 256) as u8
                    } else {
                        0
                    };
                    assert_eq!(v, want, "pixel ({r}, {c})");
                }
            }
        }
    }
}

#[test]
fn real_fashion_mnist_when_installed() {
    let candidates = [
        std::env::var_os("CONVLUNA_DATA").map(|d| PathBuf::from(d).join("fashion-mnist")),
        Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("data/fashion-mnist")),
        Some(PathBuf::from("/usr/share/datasets/fashion-mnist")),
    ];
    let Some(dir) = candidates
        .into_iter()
        .flatten()
        .find(|d| d.join("train-images-idx3-ubyte.gz").is_file())
    else {
        println!("note: Fashion-MNIST not installed (scripts/fetch-data.sh or apt-get install dataset-fashion-mnist); skipped");
        return;
    };
    let s = read_fashion_mnist_dir(&dir).unwrap();
    println!("{}", s.summary());
    assert_eq!(
        (s.train.len(), s.val.len(), s.test.len()),
        (54_000, 6_000, 10_000)
    );
    let counts: Vec<usize> = [&s.train, &s.val]
        .iter()
        .map(|d| label_counts(&***d).unwrap())
        .fold(vec![0; 10], |a, c| {
            a.iter().zip(c).map(|(x, y)| x + y).collect()
        });
    assert_eq!(counts, vec![6000; 10]);
    assert_eq!(label_counts(&*s.test).unwrap(), vec![1000; 10]);
    println!(
        "train per class {:?}, val per class {:?}",
        label_counts(&*s.train).unwrap(),
        label_counts(&*s.val).unwrap()
    );
    let ex = s.test.get(0).unwrap();
    assert_eq!(ex.doc.len(), 1024);
    assert_eq!(ex.label, 9, "the first test image is an ankle boot");
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn idx(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = magic.to_be_bytes().to_vec();
    for d in dims {
        v.extend(d.to_be_bytes());
    }
    v.extend(data);
    v
}

#[test]
fn error_wrong_idx_magic() {
    let dir = tmpdir("idx-magic");
    let p = write(&dir, "labels", &idx(0x0000_0803, &[2, 1, 1], &[1, 2]));
    match read_idx(&p, 0x0000_0801) {
        Err(Error::Data(DataError::BadMagic {
            expected: 0x801,
            found: 0x803,
            path,
        })) => assert_eq!(path, p),
        other => panic!("unexpected {other:?}"),
    }
    let err = read_idx(&p, 0x801).err().unwrap();
    assert!(err.to_string().contains("0x00000803"), "{err}");
    // In place of the training images.
    let d2 = tmpdir("idx-magic2");
    for f in [
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ] {
        std::fs::copy(fixtures().join("fashion-mnist").join(f), d2.join(f)).unwrap();
    }
    write(
        &d2,
        "train-images-idx3-ubyte",
        &idx(0x0000_0801, &[10], &[0; 10]),
    );
    assert!(matches!(
        read_fashion_mnist_dir(&d2),
        Err(Error::Data(DataError::BadMagic { .. }))
    ));
}

#[test]
fn error_truncated_files() {
    let dir = tmpdir("trunc");
    // IDX: 3 images of 2×2 promised, 2.5 present → record 2 is the first incomplete one.
    let p = write(&dir, "img", &idx(0x803, &[3, 2, 2], &[7; 10]));
    match read_idx(&p, 0x803) {
        Err(Error::Data(DataError::Truncated {
            at: Location::Record(2),
            ..
        })) => {}
        other => panic!("unexpected {other:?}"),
    }
    let p = write(&dir, "hdr", &[0, 0, 8, 3, 0, 0]);
    assert!(matches!(
        read_idx(&p, 0x803),
        Err(Error::Data(DataError::Truncated {
            at: Location::File,
            ..
        }))
    ));
    let p = write(&dir, "tiny", &[0, 0]);
    assert!(matches!(
        read_idx(&p, 0x803),
        Err(Error::Data(DataError::Truncated { .. }))
    ));
    // Trailing bytes are malformed too.
    let p = write(&dir, "long", &idx(0x801, &[2], &[1, 2, 3]));
    assert!(matches!(
        read_idx(&p, 0x801),
        Err(Error::Data(DataError::Malformed { .. }))
    ));
    // A truncated gzip stream is an I/O error naming the file.
    let gz = std::fs::read(fixtures().join("fashion-mnist/train-images-idx3-ubyte.gz")).unwrap();
    let p = write(&dir, "cut.gz", &gz[..gz.len() / 2]);
    match read_idx(&p, 0x803) {
        Err(Error::Io { path, .. }) => assert_eq!(path, p),
        Err(Error::Data(DataError::Truncated { .. })) => {}
        other => panic!("unexpected {other:?}"),
    }
    // CIFAR: one and a half records.
    let mut rec = vec![3u8];
    rec.extend(vec![9u8; 3072]);
    let mut bytes = rec.clone();
    bytes.extend(&rec[..1500]);
    let p = write(&dir, "data_batch_1.bin", &bytes);
    match read_cifar10_batch(&p) {
        Err(Error::Data(DataError::Truncated {
            at: Location::Record(1),
            path,
            ..
        })) => assert_eq!(path, p),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn error_labels_out_of_range() {
    let dir = tmpdir("img-label");
    let mut bytes = Vec::new();
    for label in [1u8, 10] {
        bytes.push(label);
        bytes.extend(vec![0u8; 3072]);
    }
    let p = write(&dir, "b.bin", &bytes);
    match read_cifar10_batch(&p) {
        Err(Error::Data(DataError::LabelOutOfRange {
            at: Location::Record(1),
            label,
            num_classes: 10,
            ..
        })) => assert_eq!(label, "10"),
        other => panic!("unexpected {other:?}"),
    }
    let img = write(&dir, "i", &idx(0x803, &[2, 28, 28], &[0; 2 * 784]));
    let lab = write(&dir, "l", &idx(0x801, &[2], &[4, 12]));
    match read_idx_pair(&img, &lab, 10, "x") {
        Err(Error::Data(DataError::LabelOutOfRange {
            at: Location::Record(1),
            ..
        })) => {}
        other => panic!("unexpected {:?}", other.err()),
    }
    // Counts that disagree.
    let lab = write(&dir, "l3", &idx(0x801, &[3], &[1, 2, 3]));
    assert!(matches!(
        read_idx_pair(&img, &lab, 10, "x"),
        Err(Error::Data(DataError::Malformed { .. }))
    ));
    // Images too large for 32×32.
    let big = write(&dir, "big", &idx(0x803, &[1, 40, 40], &[0; 1600]));
    let lab1 = write(&dir, "l1", &idx(0x801, &[1], &[1]));
    assert!(matches!(
        read_idx_pair(&big, &lab1, 10, "x"),
        Err(Error::Data(DataError::Malformed { .. }))
    ));
}

#[test]
fn error_empty_dataset() {
    let dir = tmpdir("img-empty");
    let p = write(&dir, "e.bin", &[]);
    assert!(matches!(
        read_cifar10_batch(&p),
        Err(Error::Data(DataError::Empty { .. }))
    ));
    let img = write(&dir, "i", &idx(0x803, &[0, 28, 28], &[]));
    let lab = write(&dir, "l", &idx(0x801, &[0], &[]));
    assert!(matches!(
        read_idx_pair(&img, &lab, 10, "x"),
        Err(Error::Data(DataError::Empty { .. }))
    ));
    match read_cifar10_dir(&dir) {
        Err(Error::Io { path, .. }) => assert!(path.ends_with("data_batch_1.bin")),
        other => panic!("unexpected {:?}", other.err()),
    }
    assert!(matches!(
        read_fashion_mnist_dir(&dir),
        Err(Error::Io { .. })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, .. ProptestConfig::default() })]

    #[test]
    fn idx_reader_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64), magic in prop_oneof![Just(0x801u32), Just(0x803u32), any::<u32>()]) {
        let dir = tmpdir("idx-prop");
        let p = dir.join("f");
        let mut data = magic.to_be_bytes().to_vec();
        data.extend(&bytes);
        std::fs::write(&p, &data).unwrap();
        let _ = read_idx(&p, 0x803);
        let _ = read_idx(&p, 0x801);
        let _ = read_idx(&p, 0x800);
        std::fs::remove_dir_all(dir).ok();
    }
}

/// Downsampling averages blocks (rounded) in raster order, and refuses shapes it cannot cut.
#[test]
fn downsampled_images_average_blocks() {
    use convluna::data::Downsampled;
    // one 4×4 image: rows 0..3, value = 10·row + col
    let px: Vec<u8> = (0..16u8).map(|i| 10 * (i / 4) + i % 4).collect();
    let ds: std::sync::Arc<dyn Dataset> =
        std::sync::Arc::new(ImageDataset::new(px, vec![3], 4, 0, 10, "tiny").unwrap());
    let d = Downsampled::new(ds.clone(), 2).unwrap();
    assert_eq!(d.max_len(), 4);
    assert_eq!(d.length(0).unwrap(), 4);
    assert!(d.name().contains("downsampled 2×"));
    let ex = d.get(0).unwrap();
    assert_eq!(ex.label, 3);
    // blocks: (0,1,10,11) → 5.5 → 6; (2,3,12,13) → 7.5 → 8; (20,21,30,31) → 25.5 → 26; …
    assert_eq!(ex.doc.pixels().unwrap(), &[6, 8, 26, 28]);
    assert!(Downsampled::new(ds, 3).is_err());
}
