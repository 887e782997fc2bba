//! Same seed ⇒ the same files, bit for bit: the `lra` example run as a child process at 1, 2
//! and 3 threads (`RAYON_NUM_THREADS`), and killed with SIGKILL (mid-step) or crashed in the
//! middle of a checkpoint write, then resumed — for ConvLuna, Luna and the Transformer.
//!
//! Compared: the final checkpoint's `model.safetensors` and `optimizer.safetensors`, the best
//! checkpoint's weights, `summary.json`'s test accuracy and every metric of `metrics.jsonl`
//! except wall-clock ones. The example binary is the one `cargo test --all-targets` builds.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn lra_binary() -> PathBuf {
    // the example as this test's profile builds it (a no-op when it is up to date; without
    // it a lone `cargo test --test reproducibility` would run a stale binary)
    static BUILD: std::sync::Once = std::sync::Once::new();
    BUILD.call_once(|| {
        let mut c = Command::new(env!("CARGO"));
        c.args(["build", "--example", "lra"]);
        if !cfg!(debug_assertions) {
            c.arg("--release");
        }
        let st = c.status().expect("run cargo");
        assert!(st.success(), "cargo build --example lra failed");
    });
    // target/<profile>/deps/reproducibility-<hash> → target/<profile>/examples/lra
    let exe = std::env::current_exe().unwrap();
    let profile = exe.parent().and_then(Path::parent).unwrap();
    let bin = profile
        .join("examples")
        .join(format!("lra{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} is missing: run the tests with `cargo test --all-targets` (which builds the \
         examples), or `cargo build --example lra` first",
        bin.display()
    );
    bin
}

fn tmp(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("convluna-repro-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    p
}

/// A tiny but complete run: generated ListOps, 2 layers, evaluation and checkpoint every 4
/// steps, dropout on.
fn args(model: &str, out: &Path) -> Vec<String> {
    let mut a: Vec<String> = [
        "--model",
        model,
        "--steps",
        "12",
        "--eval-every",
        "4",
        "--train-examples",
        "400",
        "--width",
        "64",
        "--heads",
        "4",
        "--ffn",
        "64",
        "--layers",
        "2",
        "--batch-size",
        "32",
        "--seed",
        "3",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if model != "transformer" {
        a.extend(["--memory".into(), "4".into()]);
    }
    a.extend(["--out".into(), out.display().to_string()]);
    a
}

fn spawn(bin: &Path, args: &[String], threads: usize, fault: Option<&str>) -> Child {
    let mut c = Command::new(bin);
    c.args(args)
        .env("RAYON_NUM_THREADS", threads.to_string())
        .env_remove("CONVLUNA_FAULT")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(f) = fault {
        c.env("CONVLUNA_FAULT", f);
    }
    c.spawn().expect("start the lra example")
}

fn finish(child: Child, what: &str) {
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What must be identical between two runs of the same seed.
#[derive(Debug, PartialEq)]
struct Outcome {
    model: Vec<u8>,
    optimizer: Vec<u8>,
    best_model: Vec<u8>,
    test_acc: f64,
    metrics: Vec<serde_json::Value>,
}

fn outcome(out: &Path) -> Outcome {
    let ck = out.join("checkpoints");
    let dir = |p: &str| ck.join(std::fs::read_to_string(ck.join(p)).unwrap().trim());
    let read = |p: PathBuf| std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let summary: serde_json::Value =
        serde_json::from_slice(&read(out.join("summary.json"))).unwrap();
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            if let Some(o) = v.as_object_mut() {
                o.remove("tokens_per_s");
                o.remove("elapsed_s");
            }
            v
        })
        .collect();
    Outcome {
        model: read(dir("LATEST").join("model.safetensors")),
        optimizer: read(dir("LATEST").join("optimizer.safetensors")),
        best_model: read(dir("BEST").join("model.safetensors")),
        test_acc: summary["test"]["acc"].as_f64().unwrap(),
        metrics,
    }
}

fn same(a: &Outcome, b: &Outcome, what: &str) {
    assert!(a.model == b.model, "{what}: model.safetensors differs");
    assert!(
        a.optimizer == b.optimizer,
        "{what}: optimizer.safetensors differs"
    );
    assert!(
        a.best_model == b.best_model,
        "{what}: the best checkpoint differs"
    );
    assert_eq!(a.test_acc, b.test_acc, "{what}: test accuracy");
    assert_eq!(a.metrics.len(), b.metrics.len(), "{what}: metrics lines");
    for (x, y) in a.metrics.iter().zip(&b.metrics) {
        assert_eq!(x, y, "{what}: metrics differ");
    }
}

fn check_model(model: &str) {
    let bin = lra_binary();
    // uninterrupted, 1, 2 and 3 threads
    let mut reference = None;
    for threads in [1, 2, 3] {
        let out = tmp(&format!("{model}-t{threads}"));
        finish(spawn(&bin, &args(model, &out), threads, None), "run");
        let o = outcome(&out);
        match &reference {
            None => reference = Some(o),
            Some(r) => same(r, &o, &format!("{model}: 1 vs {threads} threads")),
        }
        let _ = std::fs::remove_dir_all(&out);
    }
    let reference = reference.unwrap();

    // SIGKILL at an arbitrary moment after the first checkpoint, resumed on 3 threads
    let out = tmp(&format!("{model}-kill"));
    let mut child = spawn(&bin, &args(model, &out), 2, None);
    let latest = out.join("checkpoints").join("LATEST");
    let t0 = Instant::now();
    while !latest.exists() && t0.elapsed() < Duration::from_secs(120) {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    std::thread::sleep(Duration::from_millis(30));
    let _ = child.kill(); // SIGKILL on Unix
    let status = child.wait().unwrap();
    let killed = !status.success();
    if killed {
        finish(
            spawn(&bin, &resume_args(&out), 3, None),
            "resume after SIGKILL",
        );
    }
    same(
        &reference,
        &outcome(&out),
        &format!("{model}: killed and resumed"),
    );
    let _ = std::fs::remove_dir_all(&out);

    // a crash half-way through writing the step-8 checkpoint, resumed on 1 thread
    let out = tmp(&format!("{model}-crash"));
    let status = spawn(&bin, &args(model, &out), 2, Some("checkpoint-write:8"))
        .wait()
        .unwrap();
    assert!(!status.success(), "the injected crash did not happen");
    let ck = out.join("checkpoints");
    assert_eq!(
        std::fs::read_to_string(ck.join("LATEST")).unwrap().trim(),
        "step-00000004",
        "LATEST must still name the last complete checkpoint"
    );
    finish(
        spawn(&bin, &resume_args(&out), 1, None),
        "resume after a crash mid-write",
    );
    same(
        &reference,
        &outcome(&out),
        &format!("{model}: crashed mid-checkpoint and resumed"),
    );
    let leftovers: Vec<_> = std::fs::read_dir(&ck)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "half-written checkpoints left: {leftovers:?}"
    );
    let _ = std::fs::remove_dir_all(&out);
    eprintln!("{model}: bit-identical at 1/2/3 threads, after SIGKILL (killed: {killed}) and after a crash mid-checkpoint");
}

fn resume_args(out: &Path) -> Vec<String> {
    vec!["--resume".to_string(), out.display().to_string()]
}

#[test]
fn convluna_is_bit_reproducible_across_threads_and_crashes() {
    check_model("convluna");
}

#[test]
fn luna_is_bit_reproducible_across_threads_and_crashes() {
    check_model("luna");
}

#[test]
fn transformer_is_bit_reproducible_across_threads_and_crashes() {
    check_model("transformer");
}

/// A resume with a changed option is refused before any work, naming the option.
#[test]
fn resume_with_a_different_option_is_refused() {
    let bin = lra_binary();
    let out = tmp("mismatch");
    let status = spawn(&bin, &args("convluna", &out), 1, Some("checkpoint-write:8"))
        .wait()
        .unwrap();
    assert!(!status.success());
    let mut a = resume_args(&out);
    a.extend(["--lr".into(), "0.5".into()]);
    let o = spawn(&bin, &a, 1, None).wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("--lr 0.5") && err.contains("run.json"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&out);
}
