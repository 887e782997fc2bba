//! Generates a synthetic LRA data set into a folder, in the official layout.
//!
//! ```text
//! cargo run --release --example generate -- --task listops --out data/listops-1000 \
//!     --train 96000 --val 2000 --test 2000
//! cargo run --release --example generate -- --task listops --preset small --out data/listops-small \
//!     --train 20000 --val 1000 --test 1000
//! cargo run --release --example generate -- --task pathfinder --difficulty hard --out data \
//!     --train 160000 --val 20000 --test 20000          # → data/pathfinder32/curv_contour_length_14
//! cargo run --release --example generate -- --task listops --stats 200000   # statistics only
//! ```
//!
//! ListOps goes to `OUT/basic_{train,val,test}.tsv`; Pathfinder to
//! `OUT/pathfinder<size>/<difficulty folder>/{imgs,metadata}` (all images together; the reader
//! splits them 80/10/10). The throughput (examples per second) is printed at the end.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;
use convluna::data::{
    listops_stats, write_listops_tsv, write_pathfinder_batch, ListOpsConfig, ListOpsGenerator,
    PathfinderConfig,
};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Parser, Debug)]
#[command(about = "Generate ListOps or Pathfinder data in the LRA layout")]
struct Args {
    /// `listops` or `pathfinder`.
    #[arg(long)]
    task: String,
    /// Output folder.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Training examples.
    #[arg(long, default_value_t = 96_000)]
    train: usize,
    /// Validation examples.
    #[arg(long, default_value_t = 2_000)]
    val: usize,
    /// Test examples.
    #[arg(long, default_value_t = 2_000)]
    test: usize,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// ListOps settings: `official` (500 < length < 2000) or `small` (20 < length < 200).
    #[arg(long, default_value = "official")]
    preset: String,
    /// ListOps: override the exclusive lower length bound.
    #[arg(long)]
    min_len: Option<usize>,
    /// ListOps: override the exclusive upper length bound.
    #[arg(long)]
    max_len: Option<usize>,
    /// ListOps: override the depth at which leaves are forced.
    #[arg(long)]
    max_depth: Option<usize>,
    /// ListOps: override the largest number of arguments.
    #[arg(long)]
    max_args: Option<usize>,
    /// ListOps: override the leaf probability.
    #[arg(long)]
    leaf_prob: Option<f64>,
    /// ListOps: only print keep-rate, mean length and label shares over this many draws.
    #[arg(long)]
    stats: Option<u64>,
    /// Pathfinder difficulty: `easy` (6), `intermediate` (9) or `hard` (14).
    #[arg(long, default_value = "hard")]
    difficulty: String,
    /// Pathfinder image side: 32, or 128 for Path-X.
    #[arg(long, default_value_t = 32)]
    size: usize,
    /// Pathfinder images per `imgs/<batch>` folder and metadata file.
    #[arg(long, default_value_t = 1000)]
    batch_size: usize,
}

fn bar(n: u64) -> ProgressBar {
    let pb = ProgressBar::new(n);
    pb.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb
}

fn listops(args: &Args) -> Result<()> {
    let mut cfg = match args.preset.as_str() {
        "official" => ListOpsConfig::official(),
        "small" => ListOpsConfig::small(),
        p => bail!("unknown ListOps preset `{p}` (official, small)"),
    };
    if let Some(v) = args.min_len {
        cfg.min_len = v;
    }
    if let Some(v) = args.max_len {
        cfg.max_len = v;
    }
    if let Some(v) = args.max_depth {
        cfg.max_depth = v;
    }
    if let Some(v) = args.max_args {
        cfg.max_args = v;
    }
    if let Some(v) = args.leaf_prob {
        cfg.leaf_prob = v;
    }
    cfg.validate()?;
    if let Some(draws) = args.stats {
        let t = Instant::now();
        let s = listops_stats(&cfg, draws, args.seed)?;
        let secs = t.elapsed().as_secs_f64();
        let majority = s.label_shares.iter().cloned().fold(0.0, f64::max);
        println!("{cfg:?}");
        println!(
            "draws {} kept {} keep-rate {:.4} mean length {:.1} majority label share {:.4} ({:.0} draws/s)",
            s.draws,
            s.kept,
            s.keep_rate,
            s.mean_len,
            majority,
            s.draws as f64 / secs
        );
        println!(
            "label shares: {:?}",
            s.label_shares.map(|v| (v * 1000.0).round() / 1000.0)
        );
        return Ok(());
    }
    let out = args.out.clone().context("--out is required")?;
    let n = args.train + args.val + args.test;
    let mut g = ListOpsGenerator::new(&cfg, args.seed)?;
    let pb = bar(n as u64);
    let t = Instant::now();
    let mut rows = Vec::with_capacity(n);
    let mut labels = [0usize; 10];
    let mut total_len = 0usize;
    while rows.len() < n {
        let Some((ids, label)) = g.next_example() else {
            bail!(
                "only {} distinct trees found after {} draws",
                rows.len(),
                g.draws()
            );
        };
        let ids: Vec<u32> = ids.into_iter().map(u32::from).collect();
        total_len += ids.len();
        labels[label as usize] += 1;
        rows.push((
            convluna::data::listops_source(&ids).context("well formed tree")?,
            label,
        ));
        if rows.len() % 1000 == 0 {
            pb.set_position(rows.len() as u64);
        }
    }
    pb.finish_and_clear();
    let gen_secs = t.elapsed().as_secs_f64();
    write_listops_tsv(&out.join("basic_train.tsv"), &rows[..args.train])?;
    write_listops_tsv(
        &out.join("basic_val.tsv"),
        &rows[args.train..args.train + args.val],
    )?;
    write_listops_tsv(&out.join("basic_test.tsv"), &rows[args.train + args.val..])?;
    let secs = t.elapsed().as_secs_f64();
    println!("wrote {n} ListOps examples to {}", out.display());
    println!(
        "draws {} (keep-rate {:.4}, duplicates {}), mean length {:.1}, majority label share {:.4}",
        g.draws(),
        g.in_range() as f64 / g.draws() as f64,
        g.in_range() - g.kept(),
        total_len as f64 / n as f64,
        *labels.iter().max().unwrap_or(&0) as f64 / n as f64
    );
    println!(
        "throughput: {:.0} examples/s generated, {:.0} examples/s including writing ({secs:.1} s)",
        n as f64 / gen_secs,
        n as f64 / secs
    );
    Ok(())
}

fn pathfinder(args: &Args) -> Result<()> {
    let cfg = PathfinderConfig::from_difficulty(&args.difficulty, args.size)?;
    let out = args.out.clone().context("--out is required")?;
    let dir = out
        .join(format!("pathfinder{}", cfg.size))
        .join(cfg.dir_name());
    let n = args.train + args.val + args.test;
    let bs = args.batch_size.max(1);
    let pb = bar(n as u64);
    let t = Instant::now();
    let mut positives = 0;
    for (b, start) in (0..n).step_by(bs).enumerate() {
        let end = (start + bs).min(n);
        positives += write_pathfinder_batch(&dir, &cfg, args.seed, b, start as u64..end as u64)?;
        pb.set_position(end as u64);
    }
    pb.finish_and_clear();
    let secs = t.elapsed().as_secs_f64();
    println!(
        "wrote {n} Pathfinder images to {} ({positives} with label 1)",
        dir.display()
    );
    println!(
        "throughput: {:.0} examples/s including PNG writing on {} threads ({secs:.1} s)",
        n as f64 / secs,
        std::thread::available_parallelism()
            .map(|t| t.get())
            .unwrap_or(1)
    );
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    match args.task.as_str() {
        "listops" => listops(&args),
        "pathfinder" | "path-x" => pathfinder(&args),
        t => bail!("unknown task `{t}` (listops, pathfinder)"),
    }
}
