//! Plots of a training run from its `metrics.jsonl`: loss and accuracy curves, per-layer memory
//! diagnostics over steps, and a heatmap of the final memory's cosine similarities.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};
use crate::params::write_atomic;
use crate::plot::{heatmap_svg, write_panels, Panel, Series};

/// Reads `metrics.jsonl` into JSON values (a malformed line is an error naming the line).
pub fn read_metrics(path: &Path) -> Result<Vec<Value>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| Error::format(path, format!("line {}: {e}", i + 1)))
        })
        .collect()
}

fn series(rows: &[&Value], key: &str) -> Vec<(f64, f64)> {
    rows.iter()
        .filter_map(|r| Some((r.get("step")?.as_f64()?, r.get(key)?.as_f64()?)))
        .collect()
}

/// Writes `curves.svg` (and, for Luna-family runs, `memory.svg` and `memory-cosine.svg`) into
/// `out_dir` from its `metrics.jsonl`. Returns the files written.
pub fn plot_run(out_dir: &Path, title: &str) -> Result<Vec<PathBuf>> {
    let rows = read_metrics(&out_dir.join("metrics.jsonl"))?;
    let train: Vec<&Value> = rows.iter().filter(|r| r["kind"] == "train").collect();
    let eval: Vec<&Value> = rows.iter().filter(|r| r["kind"] == "eval").collect();
    let mut written = Vec::new();
    let panels = vec![
        Panel {
            title: format!("{title}: loss"),
            x_label: "step".into(),
            y_label: "cross-entropy".into(),
            series: vec![
                Series::new("train", series(&train, "loss")),
                Series::new("validation", series(&eval, "loss")),
            ],
            log_x: false,
        },
        Panel {
            title: format!("{title}: accuracy"),
            x_label: "step".into(),
            y_label: "accuracy".into(),
            series: vec![
                Series::new("train", series(&train, "acc")),
                Series::new("validation", series(&eval, "acc")),
            ],
            log_x: false,
        },
    ];
    let p = out_dir.join("curves.svg");
    write_panels(&p, &panels, 2)?;
    written.push(p);

    let layers = eval
        .last()
        .and_then(|e| e["diagnostics"].as_array())
        .map_or(0, |a| a.len());
    if layers > 0 {
        let per_layer = |key: &str, sub: Option<&str>| -> Vec<Series> {
            (0..layers)
                .map(|l| {
                    let pts = eval
                        .iter()
                        .filter_map(|e| {
                            let d = &e["diagnostics"][l];
                            let v = match sub {
                                Some(s) => d["memory_out"][s].as_f64()?,
                                None => d[key].as_f64()?,
                            };
                            Some((e["step"].as_f64()?, v))
                        })
                        .collect();
                    Series::new(format!("layer {}", l + 1), pts)
                })
                .collect()
        };
        let panels = vec![
            Panel {
                title: "distinct memory vectors (cos ≥ 0.99)".into(),
                x_label: "step".into(),
                y_label: "count".into(),
                series: per_layer("", Some("distinct")),
                log_x: false,
            },
            Panel {
                title: "effective rank of memory".into(),
                x_label: "step".into(),
                y_label: "exp(H(σ))".into(),
                series: per_layer("", Some("effective_rank")),
                log_x: false,
            },
            Panel {
                title: "mean pairwise cosine of memory".into(),
                x_label: "step".into(),
                y_label: "cosine".into(),
                series: per_layer("", Some("mean_cosine")),
                log_x: false,
            },
            Panel {
                title: "pack-attention entropy / ln L".into(),
                x_label: "step".into(),
                y_label: "normalised entropy".into(),
                series: per_layer("pack_entropy", None),
                log_x: false,
            },
        ];
        let p = out_dir.join("memory.svg");
        write_panels(&p, &panels, 2)?;
        written.push(p);
    }
    let last_cos = rows.iter().rev().find_map(|r| {
        let m = r.get("final_memory_cosine")?.as_array()?;
        Some(
            m.iter()
                .map(|row| {
                    row.as_array()
                        .map(|v| v.iter().filter_map(|x| x.as_f64()).collect())
                        .unwrap_or_default()
                })
                .collect::<Vec<Vec<f64>>>(),
        )
    });
    if let Some(m) = last_cos {
        let p = out_dir.join("memory-cosine.svg");
        write_atomic(
            &p,
            heatmap_svg(
                &format!("{title}: cosine similarity of the final memory"),
                &m,
            )?
            .as_bytes(),
        )?;
        written.push(p);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::read_metrics;

    /// The numbers a run wrote are the numbers read back, to the bit: a study's result record
    /// copies its curves from `metrics.jsonl`, and a rerun is compared with that record. Without
    /// serde_json's `float_roundtrip`, `1.2217782502993941` (a validation loss of the study)
    /// reads as `1.221778250299394`, one ulp lower.
    #[test]
    fn metrics_are_read_back_to_the_bit() {
        let dir =
            std::env::temp_dir().join(format!("convluna-read-metrics-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("metrics.jsonl");
        let losses = [
            "1.2217782502993941",
            "2.1637152175903323",
            "0.6695204065181315",
            "2.2997160516679287",
        ];
        let text: String = losses
            .iter()
            .enumerate()
            .map(|(i, l)| format!("{{\"kind\":\"eval\",\"step\":{i},\"loss\":{l}}}\n"))
            .collect();
        std::fs::write(&path, text).unwrap();
        let rows = read_metrics(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(rows.len(), losses.len());
        for (row, l) in rows.iter().zip(losses) {
            let read = row["loss"].as_f64().unwrap();
            assert_eq!(
                read.to_bits(),
                l.parse::<f64>().unwrap().to_bits(),
                "{l} read as {read}"
            );
            assert_eq!(serde_json::to_string(&read).unwrap(), l);
        }
    }
}
