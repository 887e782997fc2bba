//! The `hub` feature offline: IMDb's parquet layout read from a small fixture
//! (`tests/fixtures/hub`, written by `scripts/make-hub-fixtures.py`), CIFAR-10's conversion to
//! grey raster pixels from a synthetic `candle_datasets` data set, and the error an offline
//! machine gets.

use std::path::Path;

use candle_core::{Device, Tensor};
use convluna::data::hub::{cifar10_splits_from, grey_pixels, imdb_splits_from, read_imdb_parquet};
use convluna::data::{grey, Sequence};
use convluna::experiment::{DataSource, RunOptions};
use convluna::preset::LraTask;

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hub")
        .join(name)
}

#[test]
fn imdb_parquet_is_read_whole_with_its_labels() {
    let rows = read_imdb_parquet(&fixture("imdb-train.parquet")).unwrap();
    assert_eq!(rows.len(), 4, "both row groups");
    assert_eq!(
        rows[0],
        (
            b"A slow start, then a wonderful second half. Loved it.".to_vec(),
            1
        )
    );
    assert_eq!(rows[1].1, 0);
    // UTF-8 text stays bytes (byte-level task)
    assert!(rows[3].0.ends_with("\u{c9}vitez-le.".as_bytes()));

    let splits = imdb_splits_from(
        &fixture("imdb-train.parquet"),
        &fixture("imdb-test.parquet"),
    )
    .unwrap();
    assert_eq!(
        (splits.train.len(), splits.val.len(), splits.test.len()),
        (3, 1, 2)
    );
    assert_eq!(splits.test.num_classes(), 2);
    let ex = splits.test.get(0).unwrap();
    let want: Vec<u32> = b"Best film of the year."
        .iter()
        .map(|&b| b as u32 + 1)
        .collect();
    assert_eq!(ex.doc, Sequence::Tokens(want));
    assert_eq!(ex.label, 1);
    // not a parquet file: an error naming it
    let e = read_imdb_parquet(&fixture("../README.md"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("README.md") && e.contains("parquet"), "{e}");
}

#[test]
fn cifar_images_become_grey_raster_pixels() {
    // two images in candle_datasets' layout [n, 3, x, y], values in [0, 1]: image 0 has red
    // 1.0 at x = 5, y = 2 (row 2, column 5), image 1 is mid grey
    let mut v = vec![0f32; 2 * 3 * 32 * 32];
    v[5 * 32 + 2] = 1.0;
    for x in v[3072..].iter_mut() {
        *x = 0.5;
    }
    let images = Tensor::from_vec(v, (2, 3, 32, 32), &Device::Cpu).unwrap();
    let px = grey_pixels(&images).unwrap();
    assert_eq!(px.len(), 2048);
    assert_eq!(
        px[2 * 32 + 5],
        grey(255, 0, 0),
        "raster order: row 2, column 5"
    );
    assert_eq!(px.iter().take(1024).filter(|&&p| p != 0).count(), 1);
    assert!(px[1024..].iter().all(|&p| p == grey(128, 128, 128)));

    let ds = candle_datasets::vision::Dataset {
        train_images: Tensor::cat(&[&images; 5], 0).unwrap(),
        train_labels: Tensor::new(&[1u8, 2, 3, 4, 5, 6, 7, 8, 9, 0], &Device::Cpu).unwrap(),
        test_images: images.clone(),
        test_labels: Tensor::new(&[3u8, 4], &Device::Cpu).unwrap(),
        labels: 10,
    };
    let s = cifar10_splits_from(&ds).unwrap();
    assert_eq!((s.train.len(), s.val.len(), s.test.len()), (9, 1, 2));
    assert_eq!(s.val.get(0).unwrap().label, 0);
    assert_eq!(s.test.get(1).unwrap().doc.len(), 1024);
}

#[test]
fn offline_the_error_says_what_to_do() {
    // an empty cache and an endpoint that refuses connections
    let home = std::env::temp_dir().join(format!("convluna-hub-{}", std::process::id()));
    std::env::set_var("HF_HOME", &home);
    std::env::set_var("HF_ENDPOINT", "http://127.0.0.1:9");
    let mut plan = RunOptions {
        task: Some(LraTask::Text),
        data: Some(DataSource::Hub),
        ..Default::default()
    }
    .plan()
    .unwrap();
    let e = plan.load_data().unwrap_err().to_string();
    assert!(
        e.contains("Hugging Face") && e.contains("--data-dir") && e.contains("HF_HOME"),
        "{e}"
    );
    // the Hub is for Text and Image only, and excludes --data-dir
    assert!(RunOptions {
        task: Some(LraTask::Listops),
        data: Some(DataSource::Hub),
        ..Default::default()
    }
    .plan()
    .is_err());
    let _ = std::fs::remove_dir_all(&home);
}
