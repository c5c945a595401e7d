//! `ebm-gate`: the command-line tool. A thin layer: parse, validate, call the library, format.
//!
//! Exit codes: `score` 0 = every frame in-distribution (or scored, when there is no threshold),
//! 1 = at least one frame rejected (an unreadable frame is rejected), 2 = the run could not
//! proceed; `eval` 0 or 2.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use ebm_gate::core::gate::Verdict;
use ebm_gate::eval::{summarise_id, summarise_ood, EvalReport, SCORE_NAMES};
use ebm_gate::pipeline::{EnergyGate, FrameReport, Overrides};
use ebm_gate::source::collect;
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Parser)]
#[command(name = "ebm-gate", version, about = "Gate camera frames on the free energy of an ONNX classifier", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct GateArgs {
    /// Energy threshold: frames with E(x) > THRESHOLD are rejected (overrides gate.json)
    #[arg(long, allow_hyphen_values = true)]
    threshold: Option<f32>,
    /// Temperature T for probabilities and energy (overrides gate.json)
    #[arg(long)]
    temperature: Option<f32>,
    /// Also reject frames whose conformal p-value is <= ALPHA (needs calibration energies)
    #[arg(long)]
    alpha: Option<f32>,
    /// Frames per forward pass
    #[arg(long, default_value_t = 32)]
    batch: usize,
}

impl GateArgs {
    fn overrides(&self) -> Overrides {
        Overrides {
            threshold: self.threshold,
            temperature: self.temperature,
            alpha: self.alpha,
            batch: Some(self.batch),
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Score image files and folders (recursively): class, probability, energy, verdict
    Score {
        /// Bundle directory (model.onnx + gate.json) or an .onnx file
        model: PathBuf,
        /// Image files, folders, or IDX files
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// One JSON object per frame instead of a table
        #[arg(long)]
        json: bool,
        /// Include the logits in JSON output
        #[arg(long)]
        logits: bool,
        #[command(flatten)]
        gate: GateArgs,
    },
    /// ID accuracy and OOD metrics (AUROC, AUPR-In/Out, FPR@95TPR) for energy, MSP, MaxLogit
    Eval {
        /// Bundle directory (model.onnx + gate.json) or an .onnx file
        model: PathBuf,
        /// In-distribution folder (ImageFolder layout <class>/<image> gives accuracy)
        #[arg(long)]
        id: PathBuf,
        /// OOD set as NAME=PATH (a folder, image file or IDX file); repeat for several
        #[arg(long, value_parser = parse_named)]
        ood: Vec<(String, PathBuf)>,
        /// Write the full report as JSON to FILE
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
        /// Use N frames of each set, spread evenly over it (every k-th in path order)
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
        #[command(flatten)]
        gate: GateArgs,
    },
}

fn parse_named(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((name, path)) if !name.is_empty() && !path.is_empty() => Ok((name.to_string(), PathBuf::from(path))),
        _ => Err(format!("expected NAME=PATH, got {s:?}")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Score { model, inputs, json, logits, gate } => score(&model, &inputs, json, logits, &gate),
        Command::Eval { model, id, ood, json, limit, gate } => eval(&model, &id, &ood, json.as_deref(), limit, &gate),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn open(model: &std::path::Path, gate: &GateArgs) -> Result<EnergyGate> {
    if gate.batch == 0 {
        bail!("--batch must be at least 1");
    }
    EnergyGate::open(model, &gate.overrides()).with_context(|| format!("cannot load model {}", model.display()))
}

fn progress_bar(total: usize, enabled: bool) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg:12} [{bar:40}] {pos}/{len} frames, {per_sec}, eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar
}

fn json_line(r: &FrameReport, names: &[String], with_logits: bool) -> serde_json::Value {
    let s = r.scores;
    let mut v = serde_json::json!({
        "path": r.name,
        "class": s.map(|s| names[s.class].clone()),
        "class_index": s.map(|s| s.class),
        "probability": s.map(|s| s.probability),
        "energy": s.map(|s| s.energy),
        "msp": s.map(|s| s.msp),
        "max_logit": s.map(|s| s.max_logit),
        "p_value": r.p_value,
        "verdict": r.verdict.map(|v| v.as_str()),
        "reason": r.reason.map(|r| r.as_str()),
        "error": r.error,
    });
    if with_logits {
        v["logits"] = serde_json::json!(r.logits);
    }
    v
}

fn fmt_opt(v: Option<f32>, prec: usize) -> String {
    v.map(|x| format!("{x:.prec$}")).unwrap_or_else(|| "-".into())
}

fn score(model: &std::path::Path, inputs: &[PathBuf], json: bool, logits: bool, args: &GateArgs) -> Result<ExitCode> {
    let mut gate = open(model, args)?;
    let items = collect(inputs, None)?;
    if items.is_empty() {
        bail!(
            "no image files found in {}",
            inputs.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        );
    }
    let names = gate.class_names().to_vec();
    let bar = progress_bar(items.len(), items.len() > 256);
    let reports = gate.score_items(&items, |n| bar.inc(n as u64));
    bar.finish_and_clear();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let has_p = reports.iter().any(|r| r.p_value.is_some());
    let width = reports.iter().map(|r| r.name.len()).max().unwrap_or(4).clamp(4, 60);
    if !json {
        let _ = writeln!(
            out,
            "{:<width$}  {:<12} {:>6} {:>8} {:>6} {:>8} {:>7}  {:<20} reason",
            "path",
            "class",
            "prob",
            "energy",
            "msp",
            "maxlogit",
            if has_p { "p" } else { "" },
            "verdict"
        );
    }
    for r in &reports {
        let line = if json {
            json_line(r, &names, logits).to_string()
        } else {
            let s = r.scores;
            format!(
                "{:<width$}  {:<12} {:>6} {:>8} {:>6} {:>8} {:>7}  {:<20} {}",
                r.name,
                s.map(|s| names[s.class].clone()).unwrap_or_else(|| "-".into()),
                fmt_opt(s.map(|s| s.probability), 3),
                fmt_opt(s.map(|s| s.energy), 3),
                fmt_opt(s.map(|s| s.msp), 3),
                fmt_opt(s.map(|s| s.max_logit), 3),
                if has_p { fmt_opt(r.p_value, 4) } else { String::new() },
                r.verdict.map(|v| v.as_str()).unwrap_or("-"),
                match (&r.reason, &r.error) {
                    (_, Some(e)) => format!("{}: {e}", r.reason.map(|x| x.as_str()).unwrap_or("error")),
                    (Some(reason), None) => reason.as_str().to_string(),
                    (None, None) => "-".into(),
                }
            )
        };
        if writeln!(out, "{line}").is_err() {
            break; // closed stdout (a pipe to `head`, say): stop quietly
        }
    }
    let rejected = reports.iter().filter(|r| r.verdict == Some(Verdict::OutOfDistribution)).count();
    let failed = reports.iter().filter(|r| r.scores.is_none()).count();
    let accepted = reports.iter().filter(|r| r.verdict == Some(Verdict::InDistribution)).count();
    match gate.settings().threshold {
        Some(t) => eprintln!(
            "{} frames: {accepted} in-distribution, {rejected} rejected ({failed} could not be scored); threshold E <= {t}",
            reports.len()
        ),
        None => eprintln!(
            "{} frames scored without a threshold ({failed} could not be scored): give --threshold or a bundle with gate.json for verdicts",
            reports.len()
        ),
    }
    Ok(if rejected > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

fn eval(
    model: &std::path::Path,
    id: &std::path::Path,
    ood: &[(String, PathBuf)],
    json: Option<&std::path::Path>,
    limit: Option<usize>,
    args: &GateArgs,
) -> Result<ExitCode> {
    let t_load = Instant::now();
    let mut gate = open(model, args)?;
    let load_ms = t_load.elapsed().as_secs_f64() * 1e3;
    let names = gate.class_names().to_vec();
    // --limit N keeps N frames spread evenly over the set (every k-th in path order), so an
    // ImageFolder set keeps all its classes.
    let take = |v: Vec<_>| match limit {
        Some(n) if n < v.len() => {
            let len = v.len();
            v.into_iter().enumerate().filter(|(i, _)| i * n / len != (i + 1) * n / len).map(|(_, x)| x).collect()
        }
        _ => v,
    };
    let id_items =
        take(collect(&[id.to_path_buf()], Some(&names)).with_context(|| format!("reading ID set {}", id.display()))?);
    if id_items.is_empty() {
        bail!("no image files found in the ID set {}", id.display());
    }
    let mut ood_items = Vec::new();
    for (name, path) in ood {
        let items = take(collect(std::slice::from_ref(path), None).with_context(|| format!("reading OOD set {name}"))?);
        if items.is_empty() {
            bail!("no image files found in OOD set {name} ({})", path.display());
        }
        ood_items.push(items);
    }
    let total = id_items.len() + ood_items.iter().map(Vec::len).sum::<usize>();
    let bar = progress_bar(total, true);
    let t0 = Instant::now();
    bar.set_message("ID");
    let id_reports = gate.score_items(&id_items, |n| bar.inc(n as u64));
    let mut ood_reports = Vec::new();
    for ((name, _), items) in ood.iter().zip(&ood_items) {
        bar.set_message(name.clone());
        ood_reports.push(gate.score_items(items, |n| bar.inc(n as u64)));
    }
    bar.finish_and_clear();
    let elapsed = t0.elapsed().as_secs_f64();
    let temperature = gate.settings().temperature;
    let scores: Vec<&str> = SCORE_NAMES.iter().copied().filter(|&s| s != "energy_t1" || temperature != 1.0).collect();
    let mut ood_summaries = Vec::new();
    for ((name, path), reports) in ood.iter().zip(&ood_reports) {
        ood_summaries.push(summarise_ood(name, &path.display().to_string(), &id_reports, reports, &scores)?);
    }
    let report = EvalReport {
        model: gate.paths().model.display().to_string(),
        temperature,
        threshold: gate.settings().threshold,
        id: summarise_id(&id.display().to_string(), &id_reports),
        ood: ood_summaries,
    };
    print_eval(&report, total, elapsed);
    println!("load + optimise: {load_ms:.0} ms; batch {}", gate.batch());
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text + "\n").with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn pct(v: Option<f64>) -> String {
    v.map(|x| format!("{:.2}%", 100.0 * x)).unwrap_or_else(|| "-".into())
}

fn print_eval(r: &EvalReport, total: usize, elapsed: f64) {
    println!(
        "model {}  (T = {}, threshold {})",
        r.model,
        r.temperature,
        r.threshold.map(|t| format!("E <= {t}")).unwrap_or("none".into())
    );
    println!(
        "ID    {}  n = {}  errors = {}  accuracy = {}  accepted at threshold = {}  mean energy = {:.3}",
        r.id.path,
        r.id.n,
        r.id.errors,
        pct(r.id.accuracy),
        pct(r.id.accepted),
        r.id.mean_energy
    );
    println!();
    println!(
        "{:<22} {:<10} {:>8} {:>8} {:>9} {:>10} {:>13}",
        "OOD set", "score", "AUROC", "AUPR-In", "AUPR-Out", "FPR@95TPR", "accepted@thr"
    );
    for o in &r.ood {
        for (i, m) in o.metrics.iter().enumerate() {
            println!(
                "{:<22} {:<10} {:>8.4} {:>8.4} {:>9.4} {:>10} {:>13}",
                if i == 0 { format!("{} ({})", o.name, o.n) } else { String::new() },
                m.score,
                m.auroc,
                m.aupr_in,
                m.aupr_out,
                pct(Some(m.fpr_at_95_tpr)),
                if i == 0 { pct(o.accepted) } else { String::new() }
            );
        }
    }
    println!();
    println!("ID is the positive class; scores: energy = -E(x), msp, max_logit (higher = more in-distribution).");
    println!("{total} frames in {elapsed:.1} s ({:.0} frames/s, decode + forward)", total as f64 / elapsed);
}
