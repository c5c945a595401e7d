//! `plan`: false alarms per day of a gate's level and debouncer on clean frames, and the
//! settings that meet a target.

use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Args;
use ebm_gate::alarms::{false_alarm_rate, plan, AlarmRate, PlanRow, MAX_WINDOW};
use serde_json::json;

use super::Globals;

/// Arguments of `ebm-gate plan`.
#[derive(Args)]
pub struct PlanArgs {
    /// Frames per second the gate judges
    #[arg(long, value_parser = fps)]
    pub fps: f64,
    /// Target: at most this many false alarms a day; proposes, for each --alpha, the plain
    /// k-of-n window with the fewest rejections to alarm that meets it
    #[arg(long, value_name = "N", value_parser = per_day, required_unless_present = "window")]
    pub false_alarms_per_day: Option<f64>,
    /// Levels to consider (the gate's --alpha: a clean frame's rejection probability),
    /// comma-separated
    #[arg(long, value_delimiter = ',', default_value = "0.01,0.02,0.05,0.1", value_parser = alpha)]
    pub alpha: Vec<f64>,
    /// The proposed windows alarm on any lasting fault whose frames are rejected at least this
    /// fraction of the time (window = enter / Q)
    #[arg(long, default_value_t = 0.5, value_name = "Q", value_parser = fraction)]
    pub min_fault_rejection: f64,
    /// Longest window to propose (1 to 256)
    #[arg(long, default_value_t = 64, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub max_window: u16,
    /// Instead of proposing: the false alarms of this window (as `stream --window`)
    #[arg(long, value_name = "N", requires = "enter", conflicts_with = "false_alarms_per_day")]
    pub window: Option<usize>,
    /// With --window: rejections in the window that switch to out_of_distribution
    #[arg(long, value_name = "K", requires = "window", value_parser = super::count)]
    pub enter: Option<usize>,
    /// With --window: rejections at or below which it switches back [default: K - 1]
    #[arg(long, value_name = "J", requires = "window")]
    pub exit: Option<usize>,
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
}

/// `--fps`: 0.001 to 10000 frames per second.
fn fps(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.001..=10_000.0).contains(&v) => Ok(v),
        _ => Err(format!("expected 0.001 to 10000 frames per second, got {s:?}")),
    }
}

/// `--alpha` as f64 (checked as the gate checks it).
fn alpha(s: &str) -> Result<f64, String> {
    super::alpha(s)?;
    s.trim().parse::<f64>().map_err(|e| e.to_string())
}

/// `--min-fault-rejection`: above 0, at most 1.
fn fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 1.0 => Ok(v),
        _ => Err(format!("expected a fraction above 0, at most 1, got {s:?}")),
    }
}

/// `--false-alarms-per-day`: above 0, at most 10^6.
fn per_day(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 1e6 => Ok(v),
        _ => Err(format!("expected a number of alarms a day above 0 (at most 1000000), got {s:?}")),
    }
}

/// "every 3.2 h" for alarms per day.
fn every(per_day: f64) -> String {
    let s = 86_400.0 / per_day;
    match s {
        s if !s.is_finite() => "never".into(),
        s if s < 120.0 => format!("{s:.0} s"),
        s if s < 7_200.0 => format!("{:.0} min", s / 60.0),
        s if s < 172_800.0 => format!("{:.1} h", s / 3_600.0),
        s if s < 3.0e7 => format!("{:.0} days", s / 86_400.0),
        s => format!("{:.0} years", s / 3.15576e7),
    }
}

fn row_json(r: &AlarmRate, per_day: f64, fps: f64) -> serde_json::Value {
    json!({
        "alpha": r.p,
        "window": r.window,
        "enter": r.enter,
        "exit": r.exit,
        "false_alarms_per_day": per_day,
        "false_alarms_per_frame": r.per_frame,
        "method": r.method.as_str(),
        "out_fraction": r.out_fraction,
        "mean_alarm_frames": r.mean_alarm_frames(),
        "reaction_s": r.enter as f64 / fps,
        "min_fault_rejection": r.enter as f64 / r.window as f64,
    })
}

fn print_table(rows: &[(AlarmRate, f64)], fps: f64) {
    println!(
        "alpha   window  enter  exit  false alarms/day  one every   reaction  alarms if a fault's frames are rejected"
    );
    for (r, per_day) in rows {
        let bound = if r.method == ebm_gate::alarms::Method::UpperBound { "<=" } else { "" };
        println!(
            "{:<7} {:>6} {:>6} {:>5} {:>16} {:>10} {:>9} {:>7}",
            format!("{:.3}", r.p),
            r.window,
            r.enter,
            r.exit,
            format!("{bound}{per_day:.3}"),
            every(*per_day),
            format!("{:.2} s", r.enter as f64 / fps),
            format!(">= {:.0}%", 100.0 * r.enter as f64 / r.window as f64),
        );
    }
}

/// `ebm-gate plan`.
pub fn run(a: &PlanArgs, _g: &Globals) -> Result<ExitCode> {
    let alphas = a.alpha.clone();
    let per_frame_to_day = a.fps * 86_400.0;
    if let (Some(n), Some(k)) = (a.window, a.enter) {
        let exit = a.exit.unwrap_or(k - 1);
        let rows = alphas
            .iter()
            .map(|&alpha| false_alarm_rate(alpha, n, k, exit).map(|r| (r, r.per_frame * per_frame_to_day)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("--window {n} --enter {k} --exit {exit}: {e}"))?;
        if a.json {
            let v: Vec<_> = rows.iter().map(|(r, d)| row_json(r, *d, a.fps)).collect();
            println!("{}", serde_json::to_string_pretty(&json!({ "fps": a.fps, "rows": v }))?);
        } else {
            println!(
                "plan: window {n}, out at >= {k} rejected, back at <= {exit}, {} frames/s; clean frames rejected \
                 independently with probability alpha",
                a.fps
            );
            print_table(&rows, a.fps);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let Some(target) = a.false_alarms_per_day else { bail!("give --false-alarms-per-day N, or --window and --enter") };
    let max_window = usize::from(a.max_window).min(MAX_WINDOW);
    let rows: Vec<PlanRow> = plan(a.fps, target, &alphas, a.min_fault_rejection, max_window)?;
    // Suggested: the fastest reaction; among equals, the highest alpha (rejects more of a fault).
    let best = rows.iter().min_by(|x, y| x.rate.enter.cmp(&y.rate.enter).then(y.alpha.total_cmp(&x.alpha)));
    let missing: Vec<f64> = alphas.iter().copied().filter(|al| !rows.iter().any(|r| r.alpha == *al)).collect();
    if a.json {
        let v: Vec<_> = rows.iter().map(|r| row_json(&r.rate, r.per_day, a.fps)).collect();
        let s = best
            .map(|b| json!({"alpha": b.alpha, "window": b.rate.window, "enter": b.rate.enter, "exit": b.rate.exit}));
        let out = json!({ "fps": a.fps, "target_per_day": target, "max_window": max_window,
                          "min_fault_rejection": a.min_fault_rejection,
                          "rows": v, "suggested": s, "not_met": missing });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "plan: {} frames/s, at most {target} false alarm(s) a day on clean frames rejected independently with \
             probability alpha; per alpha, the fewest rejections to alarm (plain k-of-n, window = enter / {}, \
             at most {max_window}) that meet it",
            a.fps, a.min_fault_rejection
        );
        let table: Vec<_> = rows.iter().map(|r| (r.rate, r.per_day)).collect();
        print_table(&table, a.fps);
        for al in &missing {
            println!("alpha {al}: no window up to {max_window} meets the target");
        }
        let needs: Vec<String> =
            rows.iter().map(|r| format!("{} at {}", ((1.0 / r.alpha) - 1e-9).ceil() as u64 - 1, r.alpha)).collect();
        println!(
            "calibration frames a level needs (1/alpha - 1): {}; with calibrate --scores, that many in its combining \
             half (about 4 times as many frames at the default --holdout 0.5)",
            needs.join(", ")
        );
        match best {
            Some(b) => println!(
                "suggested (fastest reaction, then highest alpha): ebm-gate stream MODEL --format ... --alpha {} \
                 --window {} --enter {}",
                b.alpha, b.rate.window, b.rate.enter
            ),
            None => {
                println!("no setting meets the target: allow more alarms, a longer --max-window, or a smaller alpha")
            }
        }
        println!(
            "frames of a real feed are not independent (a static scene repeats its verdicts): measure a clean \
             recording's alarms with `stream` (its summary gives alarms and alarm_model.expected_alarms)"
        );
    }
    Ok(if best.is_some() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
