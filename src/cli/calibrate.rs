//! `calibrate`: fits gate.json (temperature, conformal threshold, prediction sets) on a folder
//! of in-distribution frames and reports the probabilities before and after.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use ebm_gate::calibrate::{calibrate, CalibrateOptions};
use ebm_gate::pipeline::Overrides;
use ebm_gate::source::collect_with;

use super::{open, progress_bar, Globals};

/// Arguments of `ebm-gate calibrate`.
#[derive(Args)]
pub struct CalibrateArgs {
    /// Bundle directory (model.onnx [+ gate.json]) or an .onnx file
    pub model: PathBuf,
    /// In-distribution folder; the ImageFolder layout <class>/<image> (class names as in
    /// gate.json) gives labels, needed to fit T and prediction sets
    #[arg(long)]
    pub id: PathBuf,
    /// Level of the conformal gate: at most ALPHA of ID frames are rejected
    #[arg(long, default_value_t = 0.05, allow_hyphen_values = true, value_parser = super::alpha)]
    pub alpha: f32,
    /// Fraction of the folder held out from calibration for the before/after report
    #[arg(long, default_value_t = 0.5, allow_hyphen_values = true)]
    pub holdout: f64,
    /// Seed of the calibration/held-out split
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Where to write gate.json (default: the bundle's gate.json)
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Write the reliability diagram (reliability.png/.svg) into DIR
    #[arg(long, value_name = "DIR")]
    pub plots: Option<PathBuf>,
    /// Frames per forward pass (1 to 4096)
    #[arg(long, default_value_t = 32, value_parser = super::batch)]
    pub batch: usize,
    /// Also gate on full-resolution frame-health scores: fit these scores, comma-separated
    /// (energy, sharpness, noise_sigma, dark_fraction, bright_fraction, mean_luma, luma_p99, colour_cast;
    /// `all`; `health`), on two halves of the calibration frames and combine them under one
    /// false-rejection guarantee (every score is stored; `score`/`stream --scores` can pick
    /// others). Calibrate on frames from the deployed camera, at its resolution
    #[arg(long, value_name = "LIST", value_parser = super::scores)]
    pub scores: Option<super::ScoreList>,
    /// The model changed since gate.json was written (sha256 mismatch): keep gate.json's
    /// preprocessing and class names, refit everything else
    #[arg(long)]
    pub new_model: bool,
}

/// `ebm-gate calibrate`.
pub fn run(a: &CalibrateArgs, g: &Globals) -> Result<ExitCode> {
    let threads = g.threads;
    let CalibrateArgs { model, id, alpha, holdout, seed, out, plots, batch, new_model, scores } = a;
    let (alpha, holdout, seed, batch, new_model) = (*alpha, *holdout, *seed, *batch, *new_model);
    let (out, plots) = (out.clone(), plots.as_deref());
    let mut gate = open(
        model,
        &Overrides {
            batch: Some(batch),
            accept_new_model: new_model,
            threads: Some(threads),
            limits: Some(g.limits),
            health_scores: scores.is_some(),
            ..Overrides::default()
        },
    )?;
    if let Some(why) = &gate.settings().gate_set_aside {
        eprintln!("note: {why}; refitting the gate for {}", gate.paths().model.display());
    }
    let unset = gate.input().normalization == ebm_gate::bundle::Normalization::Unset;
    if unset {
        eprintln!("{}", normalization_warning(model));
    }
    if !id.is_dir() {
        bail!("--id {}: not a folder (calibrate takes a folder of in-distribution images)", id.display());
    }
    // Fail before the long run, not after it, when the outputs cannot be written.
    let out = out.unwrap_or_else(|| gate.paths().model.parent().unwrap_or(Path::new(".")).join("gate.json"));
    let out_dir = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !out_dir.is_dir() {
        bail!("--out {}: the folder {} does not exist", out.display(), out_dir.display());
    }
    if let Some(dir) = plots {
        std::fs::create_dir_all(dir).with_context(|| format!("--plots {}: cannot create the folder", dir.display()))?;
    }
    let names = gate.class_names().to_vec();
    let items = collect_with(&[id.to_path_buf()], Some(&names), &g.limits)
        .with_context(|| format!("reading {}", id.display()))?;
    let opts = CalibrateOptions {
        alpha,
        holdout,
        seed,
        data: id.display().to_string(),
        root: id.to_path_buf(),
        scores: scores.clone().map(|s| s.0),
    };
    let bar = progress_bar(items.len(), true);
    bar.set_message("calibrate");
    let t0 = Instant::now();
    let outcome = calibrate(&mut gate, &items, &opts, |n| bar.inc(n as u64))?;
    bar.finish_and_clear();
    let elapsed = t0.elapsed().as_secs_f64();
    outcome.gate_file.write(&out)?;

    println!(
        "calibrate {} on {}: {} frames, {} calibrate, {} held out (holdout {holdout}, seed {seed}); {:.1} s",
        gate.paths().model.display(),
        id.display(),
        outcome.n_total,
        outcome.n_calibration,
        outcome.n_held_out,
        elapsed
    );
    match (&outcome.fit, &outcome.before_after) {
        (Some(fit), Some((before, after))) => {
            println!(
                "temperature T = {:.4}  (NLL on the calibration frames {:.4} -> {:.4}, {} Brent iterations)",
                fit.temperature, fit.nll_before, fit.nll_after, fit.iterations
            );
            println!();
            let on = if outcome.measured_on_held_out { "held-out" } else { "calibration (nothing held out)" };
            println!("probabilities on the {on} frames (n = {}):", before.n);
            println!("{:<14} {:>8} {:>8} {:>8} {:>8} {:>9}", "", "NLL", "ECE", "MCE", "Brier", "accuracy");
            for (name, m) in [("before (T = 1)", before), ("after", after)] {
                println!(
                    "{:<14} {:>8.4} {:>7.2}% {:>7.2}% {:>8.4} {:>8.2}%",
                    name,
                    m.nll,
                    100.0 * m.ece,
                    100.0 * m.mce,
                    m.brier,
                    100.0 * m.accuracy
                );
            }
            if let Some(dir) = plots {
                for p in ebm_gate::plots::reliability_diagram(dir, before, after)? {
                    eprintln!("wrote {}", p.display());
                }
            }
        }
        _ => {
            let classes = if gate.gate_file().is_some() {
                "named as gate.json's class_names".to_string()
            } else {
                format!(
                    "named 0..{}, as a bare model's classes are; a gate.json with class_names names them",
                    names.len() - 1
                )
            };
            println!(
                "unlabelled folder (no <class>/ subfolders {classes}): temperature kept at {}, no prediction sets",
                outcome.gate_file.temperature
            );
            if plots.is_some() {
                eprintln!("no reliability diagram: it needs labels");
            }
        }
    }
    println!();
    println!(
        "conformal gate: alpha = {alpha}, threshold E <= {:.4} ({} calibration energies)",
        outcome.threshold, outcome.n_calibration
    );
    if !outcome.false_rejection.is_empty() {
        print_false_rejection(
            "false rejection of held-out ID frames (should be about alpha, at most alpha on average):",
            &outcome.false_rejection,
        );
    }
    if let (Some(spec), Some((n_a, n_b))) = (&outcome.gate_file.scores, outcome.scores_split) {
        println!();
        println!(
            "scores: {} combined under one guarantee (every score fitted on {n_a} frames, combined on {n_b})",
            spec.used.join(", ")
        );
        if !outcome.scores_false_rejection.is_empty() {
            print_false_rejection(
                "false rejection of held-out ID frames by the combined scores:",
                &outcome.scores_false_rejection,
            );
        }
    }
    if !outcome.prediction_sets.is_empty() {
        println!("prediction sets (LAC) on held-out frames:");
        println!("{:>7} {:>10} {:>10}", "alpha", "coverage", "mean size");
        for s in &outcome.prediction_sets {
            println!("{:>7} {:>9.2}% {:>10.3}", s.alpha, 100.0 * s.coverage, s.mean_size);
        }
    }
    println!("wrote {}", out.display());
    if outcome.normalization_unset {
        eprintln!("WARNING (as above): the normalisation of {} was never set; see `ebm-gate init`", model.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// The warning for a model whose normalisation was never stated, before and after the run.
fn normalization_warning(model: &Path) -> String {
    format!(
        "WARNING: the normalisation of {} was never set: frames are fed as pixel range [0, 1], mean 0, std 1. A model \
         trained on other inputs (ImageNet's mean and std, 0-255, BGR) sees wrong frames, and its energies, \
         probabilities and this gate mean little. Make a bundle that states it: `ebm-gate init MODEL.onnx --out DIR \
         --pixel-range 0,1 --mean R,G,B --std R,G,B` (or --mean 0,0,0 --std 1,1,1 if this is right), then calibrate DIR.",
        model.display()
    )
}

/// A table of false-rejection rates with their Wilson intervals, under `title`.
fn print_false_rejection(title: &str, rates: &[ebm_gate::calibration::FalseRejection]) {
    println!("{title}");
    println!("{:>7} {:>10} {:>20}", "alpha", "rejected", "95% interval");
    for f in rates {
        println!(
            "{:>7} {:>9.2}% {:>9.2}% - {:.2}%   ({} of {})",
            f.alpha,
            100.0 * f.rate,
            100.0 * f.interval.0,
            100.0 * f.interval.1,
            f.rejected,
            f.n
        );
    }
}
