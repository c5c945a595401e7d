//! `score`: class, probability, energy and verdict of image files, folders and IDX files.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Args;
use ebm_gate::pipeline::{EnergyGate, FrameReport, GateRule, Overrides, VerdictCounts};
use ebm_gate::record::FrameRecord;
use ebm_gate::source::collect_with;

use super::{fmt_opt, open, progress_bar, GateArgs, Globals};

/// Arguments of `ebm-gate score`.
#[derive(Args)]
pub struct ScoreArgs {
    /// Bundle directory (model.onnx + gate.json) or an .onnx file
    pub model: PathBuf,
    /// Image files, folders, or IDX files
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// One JSON object per frame instead of a table
    #[arg(long)]
    pub json: bool,
    /// Include the logits in JSON output
    #[arg(long)]
    pub logits: bool,
    /// Also give each frame a conformal prediction set of classes with coverage 1 - SET_ALPHA
    /// (LAC; needs a bundle calibrated on labelled data)
    #[arg(long, value_name = "SET_ALPHA", value_parser = super::alpha)]
    pub set_alpha: Option<f32>,
    #[command(flatten)]
    pub gate: GateArgs,
}

/// `ebm-gate score`.
pub fn run(a: &ScoreArgs, g: &Globals) -> Result<ExitCode> {
    let ScoreArgs { model, inputs, json, logits, set_alpha, gate: args } = a;
    let (json, logits, set_alpha) = (*json, *logits, *set_alpha);
    let mut gate = open(model, &Overrides { set_alpha, ..args.overrides(g) })?;
    super::warn_unset_normalization(&gate, "score");
    let items = collect_with(inputs, None, &g.limits)?;
    if items.is_empty() {
        bail!(
            "no image files found in {}",
            inputs.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        );
    }
    let names = gate.class_names().to_vec();
    let bar = progress_bar(items.len(), items.len() > 256);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut counts = VerdictCounts::default();
    if json {
        // Each line is written as its batch is done: memory stays bounded on any folder.
        let mut closed = false;
        gate.score_each(&items, |batch| {
            bar.inc(batch.len() as u64);
            bar.suspend(|| {
                for r in &batch {
                    counts.add(r);
                    // a closed stdout (a pipe to `head`, say): stop writing quietly
                    closed =
                        closed || writeln!(out, "{}", FrameRecord::of_file(r, &names, logits).to_json_line()).is_err();
                }
            });
        });
        bar.finish_and_clear();
        return Ok(summarise(&counts, &gate, set_alpha));
    }
    let reports = gate.score_items(&items, |n| bar.inc(n as u64));
    bar.finish_and_clear();
    reports.iter().for_each(|r| counts.add(r));
    // p-values come with calibration energies: the column is there whenever the gate has them,
    // also when no frame of this run could be scored.
    let has_p = !gate.settings().calibration_energies.is_empty();
    let width = reports.iter().map(|r| r.name.len()).max().unwrap_or(4).clamp(4, 60);
    let set_text = |r: &FrameReport| {
        r.prediction_set
            .as_ref()
            .map(|set| format!("{{{}}}", set.iter().map(|&y| names[y].as_str()).collect::<Vec<_>>().join(",")))
    };
    let set_width = if set_alpha.is_some() {
        reports.iter().filter_map(set_text).map(|t| t.len()).max().unwrap_or(3).max(3) + 2
    } else {
        0
    };
    let _ = writeln!(
        out,
        "{:<width$}  {:<12} {:>6} {:>8} {:>6} {:>8} {:>7}  {:<set_width$}{:<20} reason",
        "path",
        "class",
        "prob",
        "energy",
        "msp",
        "maxlogit",
        if has_p { "p" } else { "" },
        if set_alpha.is_some() { "set" } else { "" },
        "verdict"
    );
    for r in &reports {
        let s = r.scores;
        let line = format!(
            "{:<width$}  {:<12} {:>6} {:>8} {:>6} {:>8} {:>7}  {:<set_width$}{:<20} {}",
            r.name,
            s.map(|s| names[s.class].clone()).unwrap_or_else(|| "-".into()),
            fmt_opt(s.map(|s| s.probability), 3),
            fmt_opt(s.map(|s| s.energy), 3),
            fmt_opt(s.map(|s| s.msp), 3),
            fmt_opt(s.map(|s| s.max_logit), 3),
            if has_p { fmt_opt(r.p_value, 4) } else { String::new() },
            if set_alpha.is_some() { set_text(r).unwrap_or_else(|| "-".into()) } else { String::new() },
            r.verdict.map(|v| v.as_str()).unwrap_or("-"),
            match (&r.reason, &r.error) {
                (_, Some(e)) => format!("{}: {e}", r.reason.map(|x| x.as_str()).unwrap_or("error")),
                (Some(reason), None) => reason.as_str().to_string(),
                (None, None) => "-".into(),
            }
        );
        if writeln!(out, "{line}").is_err() {
            break; // closed stdout (a pipe to `head`, say): stop quietly
        }
    }
    Ok(summarise(&counts, &gate, set_alpha))
}

/// Prints the summary to stderr; exit 1 when a frame was rejected.
fn summarise(c: &VerdictCounts, gate: &EnergyGate, set_alpha: Option<f32>) -> ExitCode {
    let (accepted, rejected, failed) = (c.accepted, c.rejected, c.unscored);
    let st = gate.settings();
    let rule = match st.rule() {
        GateRule::Threshold(t) => format!("threshold E <= {t}"),
        GateRule::Conformal { alpha, energy_threshold, n } => {
            format!(
                "conformal gate: reject p <= {alpha} (E > {}, {n} calibration energies)",
                fmt_opt(energy_threshold, 4)
            )
        }
        GateRule::Both { threshold, alpha } => format!("threshold E <= {threshold} and conformal p > {alpha}"),
        GateRule::Combined { alpha, level, n, threshold } => format!(
            "{}: reject combined p <= {alpha} (combined score > {level:.3}, {n} combining frames){}",
            super::combined_names(st),
            threshold.map(|t| format!(" or E > {t}")).unwrap_or_default()
        ),
        GateRule::None => String::new(),
    };
    if st.gates() {
        eprintln!(
            "{} frames: {accepted} in-distribution, {rejected} rejected ({failed} could not be scored); {rule}",
            c.frames
        );
    } else {
        eprintln!(
            "{} frames scored without a threshold ({failed} could not be scored): give --threshold or a bundle with gate.json for verdicts",
            c.frames
        );
    }
    if let Some(a) = set_alpha {
        eprintln!(
            "prediction sets: LAC at coverage >= {:.0}% (T = {:.4}; an empty set: no class is plausible)",
            100.0 * (1.0 - a),
            st.temperature
        );
    }
    if rejected > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
