//! `capture`: frames from the deployed camera, saved for `calibrate`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use ebm_gate::stream::{capture, CaptureOptions, StopReason};

use super::stream::SourceArgs;
use super::Globals;

/// Arguments of `ebm-gate capture`.
#[derive(Args)]
pub struct CaptureArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Folder to save frames in, full size, as PNG named by time and frame index (created if
    /// missing; a frame is never overwritten; each path is printed on stdout). Capture each
    /// session (a time of day, a light) into its own subfolder of the calibration folder
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Save every N-th frame (consecutive frames are near-copies: 15 = one a second at 15 fps)
    #[arg(long, default_value_t = 15, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub every: u64,
    /// Stop after saving N frames (0 = at the end of the input or Ctrl-C)
    #[arg(long, default_value_t = 300, value_name = "N")]
    pub count: u64,
    /// Keep the folder's frames under MIB mebibytes, the oldest removed (0 = no cap)
    #[arg(long, default_value_t = 0, value_name = "MIB")]
    pub max_mib: u64,
}

/// `ebm-gate capture`.
pub fn run(a: &CaptureArgs, g: &Globals) -> Result<ExitCode> {
    let stop = super::stream::stop_on_signals()?;
    let (source, format) = a.source.open()?;
    let options = CaptureOptions {
        format,
        every: a.every,
        count: (a.count > 0).then_some(a.count),
        out: a.out.clone(),
        max_bytes: (a.max_mib > 0).then(|| a.max_mib.saturating_mul(1 << 20)),
        source_name: a.source.name(),
    };
    eprintln!(
        "capture: {} from {}, every {} frame(s), {} into {}",
        format.name(),
        options.source_name,
        a.every,
        options.count.map_or("until the input ends".to_string(), |c| format!("up to {c}")),
        a.out.display()
    );
    let r = capture(source, &options, &g.limits, &stop, |path| println!("{}", path.display()))?;
    for m in &r.failures {
        eprintln!("capture: not saved: {m}");
    }
    let why = match &r.stop {
        StopReason::EndOfInput if options.count.is_some_and(|c| r.saved >= c) => "count reached".to_string(),
        StopReason::EndOfInput => "end of input".to_string(),
        StopReason::ReadError(m) => format!("read error: {m}"),
        stop @ StopReason::Signal(_) => format!("stopped by {}", stop.signal_name().unwrap_or("a signal")),
        StopReason::OutputClosed(_, m) => format!("output closed: {m}"),
    };
    eprintln!(
        "capture: {} frames read, {} saved, {} not saved (undecodable); {:.1} s; {why}",
        r.frames,
        r.saved,
        r.failed,
        r.elapsed.as_secs_f64()
    );
    if r.saved > 0 {
        eprintln!("next: ebm-gate calibrate BUNDLE --id {}  (with frames from other sessions in sibling folders, give their parent)", a.out.display());
    }
    Ok(match r.stop {
        StopReason::ReadError(_) => ExitCode::from(1),
        StopReason::Signal(n) => ExitCode::from((128 + n).min(255) as u8),
        _ if r.saved == 0 => ExitCode::from(1),
        _ => ExitCode::SUCCESS,
    })
}
