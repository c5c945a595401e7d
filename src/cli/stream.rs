//! `stream`: gates a live stream of raw or MJPEG frames, one JSON line per frame.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;
use ebm_gate::pipeline::{GateRule, Overrides};
use ebm_gate::raw::{PixelFormat, YuvSpec};
use ebm_gate::stream::{
    run_stream_to, EventSink, JsonLines, StopReason, StreamEvent, StreamFormat, StreamOptions, StreamSource,
    StreamSummary,
};

use super::{fmt_opt, open, GateArgs, Globals};

/// `--format` of `stream`: a raw pixel format or MJPEG.
#[derive(Clone, Copy, Debug)]
pub enum InputFormat {
    Raw(PixelFormat),
    Mjpeg,
}

fn parse_format(s: &str) -> Result<InputFormat, String> {
    if s.eq_ignore_ascii_case("mjpeg") || s.eq_ignore_ascii_case("mjpg") {
        return Ok(InputFormat::Mjpeg);
    }
    s.parse::<PixelFormat>().map(InputFormat::Raw).map_err(|e| format!("{e}, or mjpeg"))
}

pub fn parse_size(s: &str) -> Result<(u32, u32), String> {
    let bad = || format!("expected WIDTHxHEIGHT such as 640x480, got {s:?}");
    let (w, h) = s.split_once(['x', 'X']).ok_or_else(bad)?;
    let (w, h) = (w.trim().parse::<u32>().map_err(|_| bad())?, h.trim().parse::<u32>().map_err(|_| bad())?);
    if w == 0 || h == 0 {
        return Err(bad());
    }
    Ok((w, h))
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum CropArg {
    /// Scale the shorter side to the model's size and take the centre
    Center,
    /// Scale the whole frame to the model's size, ignoring its aspect ratio
    None,
}

impl From<CropArg> for ebm_gate::bundle::ResizeMode {
    fn from(c: CropArg) -> Self {
        match c {
            CropArg::Center => ebm_gate::bundle::ResizeMode::ShorterSideThenCenterCrop,
            CropArg::None => ebm_gate::bundle::ResizeMode::Stretch,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, clap::ValueEnum)]
pub enum YuvMatrix {
    Bt601,
    Bt709,
}

#[derive(Clone, Copy, Debug, PartialEq, clap::ValueEnum)]
pub enum YuvRange {
    Limited,
    Full,
}

/// Where frames come from and how they are laid out: flags `stream` and `capture` share.
#[derive(Args)]
pub struct SourceArgs {
    /// Where frames come from: - (stdin), a file or a named pipe, or a V4L2 camera /dev/videoN
    /// (builds with the `v4l2` feature; otherwise pipe it in with ffmpeg or GStreamer)
    #[arg(long, default_value = "-")]
    pub input: PathBuf,
    /// Frame format: rgb24, bgr24, gray8, yuyv422, nv12, i420 (= yuv420p) raw frames of --size, or mjpeg
    #[arg(long, value_parser = parse_format)]
    pub format: InputFormat,
    /// Size of raw frames, WIDTHxHEIGHT (not needed for mjpeg; with a V4L2 camera, the size asked for)
    #[arg(long, value_parser = parse_size, value_name = "WxH")]
    pub size: Option<(u32, u32)>,
    /// Bytes from one row to the next in raw frames with padded rows (V4L2 bytesperline,
    /// libcamera stride): of the only plane, or of the luma plane (nv12's chroma plane has the
    /// same, i420's half); default: no padding. A V4L2 camera's own is used without this flag
    #[arg(long, value_name = "BYTES")]
    pub stride: Option<u32>,
    /// Rows of the luma plane of nv12/i420 frames when the producer aligns planes (e.g. 1088
    /// for 1080 rows); default: the height
    #[arg(long, value_name = "ROWS")]
    pub plane_rows: Option<u32>,
    /// YUV matrix of yuyv422/nv12/i420 frames
    #[arg(long, value_enum, default_value = "bt601")]
    pub yuv_matrix: YuvMatrix,
    /// YUV range of yuyv422/nv12/i420 frames
    #[arg(long, value_enum, default_value = "limited")]
    pub yuv_range: YuvRange,
}

impl SourceArgs {
    /// The library's stream format.
    pub fn format(&self) -> Result<StreamFormat> {
        let format = match (self.format, self.size) {
            (InputFormat::Mjpeg, _) => StreamFormat::Mjpeg,
            (InputFormat::Raw(format), Some((width, height))) => {
                let yuv = YuvSpec {
                    bt709: self.yuv_matrix == YuvMatrix::Bt709,
                    full_range: self.yuv_range == YuvRange::Full,
                };
                let (stride, plane_rows) = (self.stride, self.plane_rows);
                let f = StreamFormat::Raw { format, width, height, stride, plane_rows, yuv };
                f.layout().map(|l| l.frame_len()).transpose().with_context(|| match stride {
                    Some(st) => format!("--size {width}x{height} --stride {st} for {}", format.name()),
                    None => format!("--size {width}x{height} for {}", format.name()),
                })?;
                f
            }
            (InputFormat::Raw(format), None) => bail!("--format {} needs --size WIDTHxHEIGHT", format.name()),
        };
        if format == StreamFormat::Mjpeg && (self.stride.is_some() || self.plane_rows.is_some()) {
            bail!("--stride and --plane-rows describe raw frames, not mjpeg");
        }
        Ok(format)
    }

    /// `stdin` or the input's path, for messages.
    pub fn name(&self) -> String {
        if self.input.as_os_str() == "-" {
            "stdin".to_string()
        } else {
            self.input.display().to_string()
        }
    }

    /// Opens the input: the source, and the format (a camera's says how the driver pads rows).
    pub fn open(&self) -> Result<(StreamSource, StreamFormat)> {
        open_source(&self.input, self.format()?, self.size)
    }
}

/// Arguments of `ebm-gate stream`.
#[derive(Args)]
pub struct StreamArgs {
    /// Bundle directory (model.onnx + gate.json) or an .onnx file; needs a gate (calibrated, or --threshold)
    pub model: PathBuf,
    #[command(flatten)]
    pub source: SourceArgs,
    /// How a frame is brought to the model's size (default: as gate.json says; center for the reference bundle)
    #[arg(long, value_enum)]
    pub crop: Option<CropArg>,
    /// Print a frame line for every N-th frame only (state changes and errors are always printed)
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub every: u64,
    /// Debouncing window: the last N verdicts count (1 to 256)
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub window: usize,
    /// Switch to out_of_distribution when at least K of the window's frames are rejected
    #[arg(long, default_value_t = 3, value_name = "K", value_parser = super::count)]
    pub enter: usize,
    /// Switch back when at most J are (default K - 1: plain k-of-n; lower adds hysteresis)
    #[arg(long, value_name = "J")]
    pub exit: Option<usize>,
    /// Save rejected frames (full size, RGB) as PNG into DIR
    #[arg(long, value_name = "DIR")]
    pub save_rejected: Option<PathBuf>,
    /// Most frames --save-rejected saves in a run (files are named by time and frame index, so a
    /// restart never overwrites one)
    #[arg(long, default_value_t = 100, value_name = "N", requires = "save_rejected")]
    pub max_saved: usize,
    /// Keep the folder's saved frames, earlier runs' included, under MIB mebibytes: the oldest
    /// are removed (0 = no cap)
    #[arg(long, default_value_t = 0, value_name = "MIB", requires = "save_rejected")]
    pub max_saved_mib: u64,
    /// Reject frames as `frozen_frame` once the camera has repeated the same frame this many
    /// times in a row (its 16x16 luma summary unchanged: a live sensor's noise always moves it);
    /// 0 turns the check off
    #[arg(long, default_value_t = 30, value_name = "N")]
    pub frozen_after: usize,
    /// Also write a summary line (`"final": false`: counts, rates, latency, state) every SECS
    /// seconds, while frames come and while they do not; 0 = only the final one
    #[arg(long, default_value_t = 0.0, value_name = "SECS", value_parser = seconds)]
    pub summary_every: f64,
    /// Switch the state to `stalled` (an event line) when no frame came for SECS seconds; the next
    /// frame starts a new window from `unknown`. 0 = off [default: 10 for a live source (a pipe,
    /// a camera), off for a regular file]
    #[arg(long, value_name = "SECS", value_parser = seconds)]
    pub stall_timeout: Option<f64>,
    #[command(flatten)]
    pub gate: GateArgs,
    #[command(flatten)]
    pub mqtt: super::mqtt::MqttArgs,
}

/// `--stall-timeout` on a live source when not given, seconds.
const DEFAULT_STALL_SECS: u64 = 10;

/// Whether the input (`-`: stdin) is a regular file, which ends instead of stalling.
fn is_regular_file(input: &Path) -> bool {
    let path = if input.as_os_str() == "-" { Path::new("/dev/stdin") } else { input };
    std::fs::metadata(path).is_ok_and(|m| m.is_file())
}

/// `--summary-every`, `--stall-timeout`: 0 (off) or 0.1 to 86400 seconds.
fn seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v == 0.0 || (0.1..=86_400.0).contains(&v) => Ok(v),
        _ => Err(format!("expected 0 (off) or 0.1 to 86400 seconds, got {s:?}")),
    }
}

fn is_video_device(path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        path.to_str().is_some_and(|p| p.starts_with("/dev/video"))
            && std::fs::metadata(path).is_ok_and(|m| m.file_type().is_char_device())
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        false
    }
}

/// Opens `--input`: stdin, a file or named pipe, or (feature `v4l2`) a V4L2 camera.
/// Returns the source and the stream's format: a camera's says how the driver pads its rows.
fn open_source(input: &Path, format: StreamFormat, size: Option<(u32, u32)>) -> Result<(StreamSource, StreamFormat)> {
    if input.as_os_str() == "-" {
        return Ok((StreamSource::Bytes(Box::new(std::io::stdin())), format));
    }
    if is_video_device(input) {
        #[cfg(feature = "v4l2")]
        {
            let camera =
                ebm_gate::v4l2::open(input, format, size).with_context(|| format!("--input {}", input.display()))?;
            let format = camera.format();
            return Ok((StreamSource::Camera(camera), format));
        }
        #[cfg(not(feature = "v4l2"))]
        {
            let _ = (format, size);
            bail!(
                "--input {}: a V4L2 camera; this build reads cameras only with the `v4l2` feature \
                 (cargo build --release --features v4l2, needs libclang-dev), or pipe it in: \
                 `ffmpeg -f v4l2 -input_format mjpeg -i {} -c copy -f mjpeg - | ebm-gate stream MODEL --format mjpeg`",
                input.display(),
                input.display()
            );
        }
    }
    if input.is_dir() {
        bail!(
            "--input {}: is a folder; `stream` reads one stream of frames (use `score` for image folders)",
            input.display()
        );
    }
    let file = std::fs::File::open(input).with_context(|| format!("--input {}: cannot open", input.display()))?;
    Ok((StreamSource::Bytes(Box::new(file)), format))
}

/// The stop flag of a run: the first SIGINT/SIGTERM stores its number there (the run stops
/// after the frame in hand); a second one ends the process at once (exit 130 / 143).
pub fn stop_on_signals() -> Result<std::sync::Arc<std::sync::atomic::AtomicUsize>> {
    use std::sync::atomic::{AtomicBool, AtomicUsize};
    use std::sync::Arc;
    let stop = Arc::new(AtomicUsize::new(0));
    let asked = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(sig, 128 + sig, Arc::clone(&asked))?;
        signal_hook::flag::register(sig, Arc::clone(&asked))?;
        signal_hook::flag::register_usize(sig, Arc::clone(&stop), sig as usize)?;
    }
    Ok(stop)
}

/// `ebm-gate stream`.
pub fn run(args: &StreamArgs, g: &Globals) -> Result<ExitCode> {
    let exit = match args.exit {
        Some(j) => j,
        None => args.enter - 1,
    };
    let source_name = args.source.name();
    // MQTT settings are checked before anything is opened or loaded.
    let mqtt_config = args.mqtt.config()?;
    let (source, format) = args.source.open()?;
    let overrides = Overrides { batch: Some(args.gate.batch.unwrap_or(4)), ..args.gate.overrides(g) };
    let mut gate = open(&args.model, &overrides)?;
    super::warn_unset_normalization(&gate, "stream");
    let options = StreamOptions {
        format,
        resize: args.crop.map(Into::into),
        max_batch: gate.batch(),
        window: args.window,
        enter: args.enter,
        exit,
        save_rejected: args.save_rejected.clone(),
        max_saved: args.max_saved,
        max_saved_bytes: (args.max_saved_mib > 0).then(|| args.max_saved_mib.saturating_mul(1 << 20)),
        source_name,
        frozen_after: args.frozen_after,
        frozen_max_difference: 0.0,
        summary_every: (args.summary_every > 0.0).then(|| std::time::Duration::from_secs_f64(args.summary_every)),
        stall_timeout: match args.stall_timeout {
            Some(s) => (s > 0.0).then(|| std::time::Duration::from_secs_f64(s)),
            None if is_regular_file(&args.source.input) => None,
            None => Some(std::time::Duration::from_secs(DEFAULT_STALL_SECS)),
        },
    };

    // The first SIGINT/SIGTERM stops the stream after the frame in hand, with a summary.
    let stop = stop_on_signals()?;

    // Refuse bad settings before announcing the run.
    options.check(&gate).with_context(|| format!("stream {}", args.model.display()))?;
    let names = gate.class_names().to_vec();
    let st = gate.settings();
    eprintln!(
        "stream: {} from {}, gate {}, window {}: out at >= {} rejected, back at <= {}; batches up to {}",
        format.name(),
        options.source_name,
        match st.rule() {
            GateRule::Threshold(t) => format!("E <= {t}"),
            GateRule::Conformal { alpha, energy_threshold, .. } => {
                format!("p > {alpha} (E <= {})", fmt_opt(energy_threshold, 4))
            }
            GateRule::Both { threshold, alpha } => format!("E <= {threshold} and p > {alpha}"),
            GateRule::Combined { alpha, threshold, .. } => format!(
                "combined p > {alpha} ({}){}",
                super::combined_names(st),
                threshold.map(|t| format!(" and E <= {t}")).unwrap_or_default()
            ),
            GateRule::None => "none".into(),
        },
        options.window,
        options.enter,
        options.exit,
        options.max_batch
    );
    if let Some(m) = options.alarm_model(&gate) {
        eprintln!(
            "stream: on clean, independent frames this gate and window raise a false alarm about once \
             per {:.0} frames ({:.2} an hour if 15 frames/s; the summary gives it at the measured rate; \
             `ebm-gate plan` proposes settings)",
            1.0 / m.per_frame,
            m.per_hour(15.0)
        );
    }
    let mut mqtt = match mqtt_config {
        Some(config) => Some(super::mqtt::start(config, names.clone())?),
        None => None,
    };
    let mut systemd = super::systemd::Notifier::from_env();
    systemd.ready(&format!("reading {}: state unknown", options.source_name));
    if let Some(every) = systemd.ping_every() {
        eprintln!("stream: systemd watchdog: WATCHDOG=1 every {:.1} s while frames are judged", every.as_secs_f64());
    }
    let stdout = std::io::stdout();
    let mut out = Stdout { lines: JsonLines::new(stdout.lock(), names, args.every), systemd };
    let (summary, _) = match mqtt.as_mut() {
        Some(mqtt) => run_stream_to(&mut gate, source, &options, &stop, &mut [&mut out, mqtt])?,
        None => run_stream_to(&mut gate, source, &options, &stop, &mut [&mut out])?,
    };
    out.systemd.stopping();
    // What the broker has not acknowledged yet gets up to 5 s.
    let mqtt_stats = mqtt.map(|m| m.close(std::time::Duration::from_secs(5)));
    let closed = matches!(summary.stop, StopReason::OutputClosed(..));
    if !closed {
        let mut v = ebm_gate::stream::json::summary(&summary, summary.stop.signal_name());
        if let Some(stats) = &mqtt_stats {
            v["mqtt"] = stats.to_json();
        }
        let _ = writeln!(out.lines.get_mut(), "{v}").and_then(|_| out.lines.get_mut().flush());
    }
    let lat = summary
        .latency_ms
        .map(|[p50, p99, _]| format!("latency p50 {p50:.2} ms, p99 {p99:.2} ms"))
        .unwrap_or_else(|| "no latency".into());
    let why = match &summary.stop {
        StopReason::EndOfInput => "end of input".to_string(),
        StopReason::ReadError(m) => format!("read error: {m}"),
        stop @ StopReason::Signal(_) => format!("stopped by {}", stop.signal_name().unwrap_or("a signal")),
        StopReason::OutputClosed(_, m) => format!("output closed: {m}"),
    };
    let alarms = match summary.alarm_model {
        Some(m) => {
            format!("{} alarms (false alarms expected if clean: {:.2})", summary.alarms, m.expected_in(summary.frames))
        }
        None => format!("{} alarms", summary.alarms),
    };
    if let Some(m) = &mqtt_stats {
        eprintln!(
            "stream: mqtt: {} of {} messages delivered, {} dropped, {} undelivered; {} connections, {} connection errors",
            m.delivered, m.queued, m.dropped, m.pending, m.connections, m.connection_errors
        );
    }
    eprintln!(
        "stream: {} frames ({} scored), {} rejected, {} errors, {} saved, {alarms}; {:.1} frames/s, {lat}; state {}; {why}",
        summary.frames,
        summary.scored,
        summary.rejected,
        summary.errors,
        summary.saved,
        summary.fps(),
        summary.state.as_str(),
    );
    Ok(match &summary.stop {
        StopReason::EndOfInput if summary.errors == 0 => ExitCode::SUCCESS,
        StopReason::EndOfInput | StopReason::ReadError(_) => ExitCode::from(1),
        StopReason::Signal(n) => ExitCode::from((128 + *n).min(255) as u8),
        StopReason::OutputClosed(std::io::ErrorKind::BrokenPipe, _) => ExitCode::from(141),
        StopReason::OutputClosed(..) => ExitCode::from(2),
    })
}

/// stdout's JSON lines and systemd's notifications (the final summary line is written by
/// [`run`], with the MQTT counts when there are).
struct Stdout<W: Write> {
    lines: JsonLines<W>,
    systemd: super::systemd::Notifier,
}

impl<W: Write> EventSink for Stdout<W> {
    fn event(&mut self, event: &StreamEvent) -> std::io::Result<()> {
        match event {
            StreamEvent::Frame(_) => self.systemd.frame_judged(),
            StreamEvent::StateChange { index, to, .. } => {
                self.systemd.status(&format!("state {} since frame {index}", to.as_str()));
            }
            _ => {}
        }
        self.lines.event(event)
    }

    fn finish(&mut self, _: &StreamSummary) -> std::io::Result<()> {
        Ok(())
    }
}
