//! `eval`: ID accuracy, OOD metrics, probability calibration and the conformal gate's checks.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use ebm_gate::eval::{evaluate, EvalOptions, EvalProgress, EvalReport, ScoreKind};
use ebm_gate::pipeline::{FrameReport, GateRule};

use super::{open, progress_bar, GateArgs, Globals};

/// Arguments of `ebm-gate eval`.
#[derive(Args)]
pub struct EvalArgs {
    /// Bundle directory (model.onnx + gate.json) or an .onnx file
    pub model: PathBuf,
    /// In-distribution folder (ImageFolder layout <class>/<image> gives accuracy)
    #[arg(long)]
    pub id: PathBuf,
    /// OOD set as NAME=PATH (a folder, image file or IDX file); repeat for several
    #[arg(long, value_parser = parse_named)]
    pub ood: Vec<(String, PathBuf)>,
    /// Write the full report as JSON to FILE
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Use N frames of each set, spread evenly over it (every k-th in path order)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: Option<u64>,
    /// Write ROC curves and energy histograms (roc.png/.svg, energy_histogram.png/.svg) into DIR
    #[arg(long, value_name = "DIR")]
    pub plots: Option<PathBuf>,
    /// Random half/half splits of the ID energies for the split-conformal check
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=ebm_gate::core::check::MAX_RUNS as u64))]
    pub splits: u64,
    #[command(flatten)]
    pub gate: GateArgs,
}

fn parse_named(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((name, path)) if !name.is_empty() && !path.is_empty() => Ok((name.to_string(), PathBuf::from(path))),
        _ => Err(format!("expected NAME=PATH, got {s:?}")),
    }
}

/// `ebm-gate eval`.
pub fn run(a: &EvalArgs, g: &Globals) -> Result<ExitCode> {
    let t_load = Instant::now();
    let mut gate = open(&a.model, &a.gate.overrides(g))?;
    let load_ms = t_load.elapsed().as_secs_f64() * 1e3;
    let options = EvalOptions { limit: a.limit.map(|n| n as usize), splits: a.splits as usize };
    let mut bar = progress_bar(0, false);
    let run = evaluate(&mut gate, &a.id, &a.ood, &options, |p| match p {
        EvalProgress::Start { total } => bar = progress_bar(total, true),
        EvalProgress::Set(name) => bar.set_message(name.to_string()),
        EvalProgress::Frames(n) => bar.inc(n as u64),
    })?;
    bar.finish_and_clear();
    for u in &run.unscored {
        eprintln!(
            "warning: {}: {} of {} frames could not be scored and are left out of the metrics (the gate rejects them); first: {}",
            u.set, u.count, u.of, u.first_error
        );
    }
    print_eval(&run.report, run.frames, run.elapsed_s);
    let fb = gate.model_mut().forward_batch();
    println!(
        "load + optimise: {load_ms:.0} ms; batch {}{}",
        gate.batch(),
        if fb < gate.batch() { format!(" (tract runs of {fb})") } else { String::new() }
    );
    if let Some(dir) = &a.plots {
        write_eval_plots(dir, &run.report, &run.id_frames, &run.ood_frames, gate.settings())?;
    }
    if let Some(path) = &a.json {
        let text = serde_json::to_string_pretty(&run.report)?;
        std::fs::write(path, text + "\n").with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn write_eval_plots(
    dir: &Path,
    report: &EvalReport,
    id: &[FrameReport],
    ood: &[Vec<FrameReport>],
    st: &ebm_gate::pipeline::GateSettings,
) -> Result<()> {
    use ebm_gate::plots::{energy_histograms, roc_curves, RocSeries};
    let neg_energy =
        |r: &[FrameReport]| -> Vec<f32> { r.iter().map(|x| x.scores.map(|s| -s.energy).unwrap_or(f32::NAN)).collect() };
    let id_s = neg_energy(id);
    let mut series = Vec::new();
    for (o, reports) in report.ood.iter().zip(ood) {
        let (fpr, tpr) = ebm_gate::metrics::roc_curve(&id_s, &neg_energy(reports))?;
        let auroc = o.metrics.iter().find(|m| m.score == ScoreKind::Energy).map(|m| m.auroc).unwrap_or(f64::NAN);
        series.push(RocSeries { name: format!("{} (n = {})", o.name, o.n), auroc, fpr, tpr });
    }
    let title = format!("Energy score ROC, ID = {} (n = {})", short(&report.id.path), report.id.n);
    let mut written = Vec::new();
    if !series.is_empty() {
        written.extend(roc_curves(dir, &title, &series)?);
    }
    let energies = |r: &[FrameReport]| -> Vec<f32> { r.iter().filter_map(|x| x.scores.map(|s| s.energy)).collect() };
    let mut sets = vec![(format!("ID: {}", short(&report.id.path)), energies(id))];
    for (o, reports) in report.ood.iter().zip(ood) {
        sets.push((format!("OOD: {}", o.name), energies(reports)));
    }
    let thr = st.energy_threshold().map(|t| {
        let rule = match st.rule() {
            GateRule::Conformal { alpha, .. } => format!("conformal threshold, alpha = {alpha}"),
            _ => "threshold".to_string(),
        };
        (t, format!("{rule}: E = {t:.3}"))
    });
    let title = format!("Free energy at T = {:.3}: in-distribution vs OOD", st.temperature);
    written.extend(energy_histograms(dir, &title, &sets, thr)?);
    for p in written {
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}

/// The last two components of a path, for titles.
fn short(path: &str) -> String {
    let parts: Vec<&str> = path.trim_end_matches('/').rsplit('/').take(2).collect();
    parts.into_iter().rev().collect::<Vec<_>>().join("/")
}

fn pct(v: Option<f64>) -> String {
    v.map(|x| format!("{:.2}%", 100.0 * x)).unwrap_or_else(|| "-".into())
}

fn print_eval(r: &EvalReport, total: usize, elapsed: f64) {
    let combined = !r.scores_rejection.is_empty();
    println!(
        "model {}  (T = {:.4}, energy threshold {}{})",
        r.model,
        r.temperature,
        r.threshold.map(|t| format!("E <= {t}")).unwrap_or("none".into()),
        if combined { "; verdicts from the combined gate, rejections per score below" } else { "" }
    );
    println!(
        "ID    {}  n = {}  errors = {}  accuracy = {}  accepted by the gate = {}  mean energy = {:.3}",
        r.id.path,
        r.id.n,
        r.id.errors,
        pct(r.id.accuracy),
        pct(r.id.accepted),
        r.id.mean_energy
    );
    if r.id.excluded_calibration_frames > 0 {
        println!(
            "      ({} frames of this folder calibrated the gate and are left out; n counts the held-out ones)",
            r.id.excluded_calibration_frames
        );
    }
    if !r.ood.is_empty() {
        println!();
        println!(
            "{:<22} {:<10} {:>8} {:>8} {:>9} {:>10} {:>13}",
            "OOD set", "score", "AUROC", "AUPR-In", "AUPR-Out", "FPR@95TPR", "gate accepts"
        );
    }
    for o in &r.ood {
        for (i, m) in o.metrics.iter().enumerate() {
            let head = match o.errors {
                0 => format!("{} ({})", o.name, o.n),
                e => format!("{} ({}, {e} unreadable)", o.name, o.n),
            };
            println!(
                "{:<22} {:<10} {:>8.4} {:>8.4} {:>9.4} {:>10} {:>13}",
                if i == 0 { head } else { String::new() },
                m.score,
                m.auroc,
                m.aupr_in,
                m.aupr_out,
                pct(Some(m.fpr_at_95_tpr)),
                if i == 0 { pct(o.accepted) } else { String::new() }
            );
        }
    }
    if !r.ood.is_empty() {
        println!();
        println!("ID is the positive class; scores: energy = -E(x), msp, max_logit (higher = more in-distribution).");
        println!(
            "gate accepts: the fraction of the set the gate's verdicts accept (the combined gate's with --scores)."
        );
    }
    if !r.calibration.is_empty() {
        println!();
        println!("probabilities on the ID set:");
        println!("{:<10} {:>8} {:>8} {:>8} {:>8}", "T", "NLL", "ECE", "MCE", "Brier");
        for c in &r.calibration {
            println!(
                "{:<10.4} {:>8.4} {:>7.2}% {:>7.2}% {:>8.4}",
                c.temperature,
                c.nll,
                100.0 * c.ece,
                100.0 * c.mce,
                c.brier
            );
        }
    }
    if !r.conformal.is_empty() {
        println!();
        println!(
            "{} (reject p <= alpha), ID false rejection should be about alpha:",
            if combined { "the energy's conformal gate alone" } else { "conformal gate" }
        );
        let ood_names: Vec<String> = r.ood.iter().map(|o| format!("{} rej.", o.name)).collect();
        print!("{:>6} {:>10} {:>10} {:>17} {:>18}", "alpha", "E thresh.", "ID rej.", "95% interval", "random splits");
        for n in &ood_names {
            print!(" {n:>16}");
        }
        println!();
        for c in &r.conformal {
            print!(
                "{:>6} {:>10} {:>9.2}% {:>7.2}% - {:>5.2}% {:>18}",
                c.alpha,
                c.threshold.map(|t| format!("{t:.4}")).unwrap_or("-".into()),
                100.0 * c.id_rejected,
                100.0 * c.id_rejected_interval.0,
                100.0 * c.id_rejected_interval.1,
                match (c.split_mean, c.split_sd) {
                    (Some(m), Some(sd)) => format!("{:.2}% ± {:.2}%", 100.0 * m, 100.0 * sd),
                    _ => "too few frames".into(),
                }
            );
            for v in &c.ood_rejected {
                print!(" {:>15.2}%", 100.0 * v);
            }
            println!();
        }
        if let Some(c) = r.conformal.first() {
            println!(
                "(random splits: mean ± sd of the false rejection over {} half/half splits of these ID energies)",
                c.splits
            );
        }
    }
    if let Some(first) = r.scores_rejection.first() {
        println!();
        println!(
            "rejected by the gate, combined and per score (the frames that score alone puts over the level; ID: false rejection):"
        );
        print!("{:<22} {:>6} {:>9}", "set", "n", "combined");
        for s in &first.by_score {
            print!(" {:>15}", s.score);
        }
        println!();
        for row in &r.scores_rejection {
            print!("{:<22} {:>6} {:>8.2}%", row.set, row.n, 100.0 * row.rejected);
            for s in &row.by_score {
                print!(" {:>14.2}%", 100.0 * s.rejected);
            }
            println!();
        }
    }
    if !r.prediction_sets.is_empty() {
        println!();
        println!("prediction sets (LAC) on the ID set:");
        println!("{:>6} {:>10} {:>10}", "alpha", "coverage", "mean size");
        for s in &r.prediction_sets {
            println!("{:>6} {:>9.2}% {:>10.3}", s.alpha, 100.0 * s.coverage, s.mean_size);
        }
    }
    println!();
    println!("{total} frames in {elapsed:.1} s ({:.0} frames/s, decode + forward)", total as f64 / elapsed);
}
