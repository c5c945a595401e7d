//! Live frame streams: raw camera buffers or MJPEG in, a verdict per frame and debounced state
//! changes out (`ebm-gate stream`).
//!
//! ```text
//! reader thread:  bytes -> frames (RawReader | MjpegReader) -> RGB (raw_to_rgb | JPEG decode)
//!                 -> resize/crop -> normalise                          --channel-->
//! calling thread: batch of what is ready -> tract forward -> energy, p-value, verdict
//!                 -> Debouncer (k-of-n with hysteresis) -> events to the sink
//! ```
//!
//! Decoding runs on its own thread, overlapped with inference. The calling thread takes the
//! frames that are ready, up to `max_batch`, in batches of a power of two (so at most
//! `log2(max_batch) + 1` plans are optimised; a model that tract runs frame by frame, see
//! [`crate::Model::forward_batch`], needs one): when decoding keeps ahead, batches fill up;
//! when frames trickle in from a camera, each is judged as soon as it arrives.
//!
//! Every frame gets a verdict: one that cannot be decoded, is corrupt or torn (the input ended
//! inside it) is rejected with reason `decode_error` and counts as a rejection in the
//! debouncer (the gate fails closed). Bytes between MJPEG frames that are not a frame, and a
//! read error, are reported as errors without a frame. Memory is bounded: at most
//! `2 * max_batch` decoded frames wait in the channel, latencies go into a fixed-size
//! histogram, and nothing else grows with the length of the stream.
//!
//! The same picture gives the same result as [`EnergyGate::score_items`]: a raw frame is
//! converted to RGB ([`raw_to_rgb`]) or a JPEG decoded ([`decode_bytes_with`], under the gate's [`InputLimits`]), then resized and
//! normalised by the same functions as an image file.
//!
//! ```no_run
//! use std::sync::atomic::AtomicUsize;
//! use ebm_gate::pipeline::{EnergyGate, Overrides};
//! use ebm_gate::raw::{PixelFormat, YuvSpec};
//! use ebm_gate::stream::{run_stream, StreamEvent, StreamFormat, StreamOptions, StreamSource};
//!
//! let mut gate = EnergyGate::open("models/cifar10-airnet".as_ref(), &Overrides::default())?;
//! // 640x480 I420 frames on stdin, e.g. from `rpicam-vid --codec yuv420 -o -`.
//! let format = StreamFormat::Raw {
//!     format: PixelFormat::I420,
//!     width: 640,
//!     height: 480,
//!     stride: None,
//!     plane_rows: None,
//!     yuv: YuvSpec::default(),
//! };
//! let stop = AtomicUsize::new(0); // a signal handler may store a signal number here
//! let source = StreamSource::Bytes(Box::new(std::io::stdin()));
//! let summary = run_stream(&mut gate, source, &StreamOptions::new(format), &stop, |event| {
//!     if let StreamEvent::StateChange { index, to, .. } = event {
//!         eprintln!("frame {index}: the feed is now {}", to.as_str());
//!     }
//!     Ok(())
//! })?;
//! println!("{} frames, {} rejected, {:.1} frames/s", summary.frames, summary.rejected, summary.fps());
//! # Ok::<(), ebm_gate::Error>(())
//! ```

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant, SystemTime};

use image::RgbImage;

use crate::alarms::AlarmRate;
use crate::bundle::{InputSpec, ResizeMode};
use crate::core::debounce::{DebounceError, Debouncer, State};
use crate::core::gate::{Reason, Verdict};
use crate::error::{Error, Result};
use crate::frame::{catch_decoder_panic, decode_bytes_with, panic_text, preprocess_into, InputLimits};
use crate::health::{health_scores, HealthScores, LumaSummary};
use crate::pipeline::{EnergyGate, FrameReport, GateRule};
pub use crate::raw::StreamFormat;
use crate::raw::{raw_to_rgb, MjpegReader, RawReader, Received, StreamError, TimedFrame as Item};
use crate::record::FrameRecord;

/// Largest debouncing window `--window` can ask for.
pub const MAX_WINDOW: usize = 256;

/// How a stream is read and judged.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamOptions {
    /// The bytes' format.
    pub format: StreamFormat,
    /// How a frame is brought to the model's size: [`ResizeMode::ShorterSideThenCenterCrop`]
    /// (`--crop center`) or [`ResizeMode::Stretch`] (`--crop none`); `None` = the bundle's.
    pub resize: Option<ResizeMode>,
    /// Most frames per forward pass (batches are powers of two up to this, and this).
    pub max_batch: usize,
    /// Debouncing window `n` (at most [`MAX_WINDOW`]).
    pub window: usize,
    /// Rejections in the window that switch the state to out-of-distribution.
    pub enter: usize,
    /// Rejections in the window at or below which it switches back.
    pub exit: usize,
    /// Keep rejected frames (full size, as converted to RGB) as PNG in this folder, named by
    /// time and index (`20261201T214636.303Z-000000042.png`), never overwriting one.
    pub save_rejected: Option<PathBuf>,
    /// Most frames to save in a run.
    pub max_saved: usize,
    /// Most bytes the folder's saved frames may take, earlier runs' included: past it the
    /// oldest (by name, so by time) are removed; `None` = no cap.
    pub max_saved_bytes: Option<u64>,
    /// Name of the input in frame names (`NAME#index`) and messages.
    pub source_name: String,
    /// Frames in a row that repeat the previous frame (their [`LumaSummary`] differs by at most
    /// `frozen_max_difference`) after which frames are rejected as `frozen_frame`; 0 = off.
    pub frozen_after: usize,
    /// Largest [`LumaSummary::difference`] (levels) that counts as a repeated frame.
    pub frozen_max_difference: f32,
    /// How often to report the totals so far ([`StreamEvent::Heartbeat`]); `None` = only at the
    /// end.
    pub summary_every: Option<Duration>,
    /// The stall watchdog: no frame for this long switches the state to [`State::Stalled`]
    /// (a `state_change` event, counted in [`StreamSummary::stalls`]); the next frame starts a
    /// new debouncing window (`unknown`). `None` = off.
    pub stall_timeout: Option<Duration>,
}

impl StreamOptions {
    /// Options for `format` with the defaults of the command line: crop as the bundle says,
    /// batches of up to 4, 3 of the last 5 frames rejected to switch to out-of-distribution and
    /// at most 2 to switch back, nothing saved, frames rejected as frozen after 30 exact
    /// repeats in a row (2 s at 15 fps: a live sensor's noise changes some block mean between
    /// any two frames).
    pub fn new(format: StreamFormat) -> StreamOptions {
        StreamOptions {
            format,
            resize: None,
            max_batch: 4,
            window: 5,
            enter: 3,
            exit: 2,
            save_rejected: None,
            max_saved: 100,
            max_saved_bytes: None,
            source_name: "stdin".into(),
            frozen_after: 30,
            frozen_max_difference: 0.0,
            summary_every: None,
            stall_timeout: None,
        }
    }
}

impl StreamOptions {
    /// Expected false alarms of these debouncing settings on independent clean frames, each
    /// rejected with probability `alpha` ([`crate::alarms::false_alarm_rate`]); `None` when
    /// the gate has no `alpha` or the settings are invalid.
    pub fn alarm_model(&self, gate: &EnergyGate) -> Option<AlarmRate> {
        let alpha = match gate.settings().rule() {
            GateRule::Conformal { alpha, .. } | GateRule::Both { alpha, .. } | GateRule::Combined { alpha, .. } => {
                alpha
            }
            GateRule::Threshold(_) | GateRule::None => return None,
        };
        // The level as written (0.01, not 0.009999999776 from f32).
        let alpha = alpha.to_string().parse::<f64>().unwrap_or(f64::from(alpha));
        crate::alarms::false_alarm_rate(alpha, self.window, self.enter, self.exit).ok()
    }

    /// Checks these options against `gate` before a run, and returns the debouncer they ask for.
    ///
    /// # Errors
    /// [`Error::Invalid`] when the gate has no rule (no threshold or alpha: nothing to
    /// debounce), `max_batch` is 0, or the debouncing settings are not `exit < enter <= window
    /// <= MAX_WINDOW`.
    pub fn check(&self, gate: &EnergyGate) -> Result<Debouncer<MAX_WINDOW>> {
        if !gate.settings().gates() {
            return Err(Error::Invalid(
                "the stream needs a gate: this bundle has no threshold or alpha; run `ebm-gate calibrate` on \
                 in-distribution frames, or give --threshold"
                    .into(),
            ));
        }
        crate::core::check::count_up_to("batch", self.max_batch, crate::core::check::MAX_BATCH)?;
        Debouncer::new(self.window, self.enter, self.exit).map_err(|error: DebounceError| Error::Debounce {
            window: self.window,
            enter: self.enter,
            exit: self.exit,
            error,
        })
    }
}

/// What a stream does with each frame after the model: frozen-frame detection, then the
/// debouncer (k-of-n with hysteresis), as [`StreamOptions`] sets them.
///
/// [`run_stream`] runs every frame through one; a caller that judges frames by other means
/// ([`EnergyGate::score_items`] on a camera library's pictures, as the Python binding does)
/// gets the stream's states and state changes from the same code.
///
/// ```no_run
/// use ebm_gate::health::LumaSummary;
/// use ebm_gate::pipeline::{EnergyGate, Overrides};
/// use ebm_gate::source::FrameItem;
/// use ebm_gate::stream::{StreamFormat, StreamJudge, StreamOptions};
///
/// let mut gate = EnergyGate::open("models/cifar10-airnet".as_ref(), &Overrides::default())?;
/// let options = StreamOptions::new(StreamFormat::Mjpeg); // only its judging settings are used
/// let mut judge = StreamJudge::new(&options, &gate)?;
/// # let pictures: Vec<image::RgbImage> = Vec::new();
/// for (i, rgb) in pictures.into_iter().enumerate() {
///     let luma = judge.detects_frozen().then(|| Box::new(LumaSummary::of(&rgb)));
///     let mut report = gate.score_items(&[FrameItem::image(format!("camera#{i}"), rgb)], |_| {}).remove(0);
///     let judged = judge.push(&mut report, luma);
///     if let Some(from) = judged.changed_from {
///         println!("frame {i}: {} -> {}", from.as_str(), judged.state.as_str());
///     }
/// }
/// # Ok::<(), ebm_gate::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct StreamJudge {
    debouncer: Debouncer<MAX_WINDOW>,
    frozen_after: usize,
    frozen_max_difference: f32,
    /// The last decoded frame's luma summary.
    last_summary: Option<Box<LumaSummary>>,
    /// Frames in a row that repeated the one before.
    repeats: usize,
    /// The stall watchdog fired and no frame came since.
    stalled: bool,
}

/// One frame after [`StreamJudge::push`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Judged {
    /// The debounced state after this frame.
    pub state: State,
    /// The state before, when this frame changed it.
    pub changed_from: Option<State>,
    /// Rejected frames in the debouncing window after this frame.
    pub rejected_in_window: usize,
    /// [`LumaSummary::difference`] to the previous decoded frame, levels (`None` for the first
    /// frame, without a summary, or with frozen-frame detection off).
    pub frame_difference: Option<f32>,
}

impl StreamJudge {
    /// The judge `options` ask for ([`StreamOptions::check`]: `window`, `enter`, `exit`,
    /// `frozen_after`, `frozen_max_difference`), starting `unknown`.
    ///
    /// # Errors
    /// As [`StreamOptions::check`].
    pub fn new(options: &StreamOptions, gate: &EnergyGate) -> Result<StreamJudge> {
        Ok(StreamJudge {
            debouncer: options.check(gate)?,
            frozen_after: options.frozen_after,
            frozen_max_difference: options.frozen_max_difference,
            last_summary: None,
            repeats: 0,
            stalled: false,
        })
    }

    /// Whether frozen frames are detected: then [`push`](Self::push) needs each decoded frame's
    /// [`LumaSummary`].
    pub fn detects_frozen(&self) -> bool {
        self.frozen_after > 0
    }

    /// Takes the next frame's report and, for a frame that was decoded, its luma summary (when
    /// [`detects_frozen`](Self::detects_frozen)). An accepted frame that repeats the previous
    /// ones `frozen_after` times in a row is rejected here as `frozen_frame`, and a report
    /// without a verdict counts as rejected (the verdict is set): `report` is left as the
    /// stream reports it.
    pub fn push(&mut self, report: &mut FrameReport, luma: Option<Box<LumaSummary>>) -> Judged {
        let frame_difference = luma.and_then(|s| {
            let d = self.last_summary.as_ref().map(|last| last.difference(&s));
            self.repeats = match d {
                Some(d) if d <= self.frozen_max_difference => self.repeats + 1,
                _ => 0,
            };
            self.last_summary = Some(s);
            d
        });
        if self.frozen_after > 0 && self.repeats >= self.frozen_after && report.verdict == Some(Verdict::InDistribution)
        {
            report.verdict = Some(Verdict::OutOfDistribution);
            report.reason = Some(Reason::FrozenFrame);
        }
        let verdict = *report.verdict.get_or_insert(Verdict::OutOfDistribution);
        // After a stall the feed is judged afresh: a new window, from unknown.
        if self.stalled {
            self.debouncer.reset();
        }
        let mut step = self.debouncer.push(verdict);
        if std::mem::take(&mut self.stalled) {
            step.changed_from = Some(State::Stalled);
        }
        Judged {
            state: step.state,
            changed_from: step.changed_from,
            rejected_in_window: step.rejected_in_window,
            frame_difference,
        }
    }

    /// The stall watchdog fired: the state becomes [`State::Stalled`] until the next frame,
    /// which starts a new window. Returns the state before.
    pub fn stall(&mut self) -> State {
        let before = self.state();
        self.stalled = true;
        before
    }

    /// The debounced state now.
    pub fn state(&self) -> State {
        if self.stalled {
            State::Stalled
        } else {
            self.debouncer.state()
        }
    }
}

/// One judged frame of a stream.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamFrame {
    /// Position in the stream, from 0 (every frame, including ones that failed).
    pub index: u64,
    /// Scores, verdict and reason; `name` is `SOURCE#index`.
    pub report: FrameReport,
    /// The debounced state after this frame.
    pub state: State,
    /// Rejected frames in the debouncing window after this frame.
    pub rejected_in_window: usize,
    /// From the frame's last byte read to its verdict.
    pub latency: Duration,
    /// Where the frame was saved, when it was.
    pub saved: Option<PathBuf>,
    /// [`LumaSummary::difference`] to the previous decoded frame, levels (`None` for the first
    /// frame, a frame that failed, or with frozen-frame detection off).
    pub frame_difference: Option<f32>,
    /// When the verdict was reached.
    pub at: EventTime,
    /// When the camera captured the frame, when the source says (a V4L2 buffer timestamp).
    pub captured: Option<SystemTime>,
}

/// When something happened in a run: the wall clock, and the monotonic offset from the run's
/// start (which clock changes do not move).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventTime {
    /// Wall-clock time.
    pub wall: SystemTime,
    /// Since the run started, on the monotonic clock.
    pub since_start: Duration,
}

impl EventTime {
    /// Now, for a run that started at `start`.
    pub fn now(start: Instant) -> EventTime {
        EventTime { wall: SystemTime::now(), since_start: start.elapsed() }
    }

    /// The wall-clock time as RFC 3339 in UTC with milliseconds, e.g.
    /// `2026-12-01T21:14:03.120Z`.
    pub fn rfc3339(&self) -> String {
        humantime::format_rfc3339_millis(self.wall).to_string()
    }
}

impl StreamFrame {
    /// The frame's [`FrameRecord`]: `type` `frame`, its index, scores and verdict, and the
    /// stream's fields (state, rejected in the window, latency, where it was saved).
    pub fn record(&self, names: &[String]) -> FrameRecord {
        FrameRecord {
            kind: Some("frame"),
            frame: Some(self.index),
            state: Some(self.state.as_str()),
            rejected_in_window: Some(self.rejected_in_window),
            latency_ms: Some(self.latency.as_secs_f64() * 1e3),
            saved: self.saved.as_ref().map(|p| p.display().to_string()),
            frame_difference: self.frame_difference,
            time: Some(self.at.rfc3339()),
            monotonic_s: Some(self.at.since_start.as_secs_f64()),
            capture_time: self.captured.map(|t| humantime::format_rfc3339_millis(t).to_string()),
            ..FrameRecord::new(&self.report, names)
        }
    }
}

/// What the stream reports, in stream order.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// A frame was judged (boxed: a frame's report is far larger than the other events).
    Frame(Box<StreamFrame>),
    /// The debounced state changed at frame `index`.
    StateChange {
        /// The frame that changed it.
        index: u64,
        /// The state before.
        from: State,
        /// The state now.
        to: State,
        /// Rejected frames in the window.
        rejected_in_window: usize,
        /// When.
        at: EventTime,
    },
    /// Something that is not a frame went wrong: bytes that are not a frame, a read error,
    /// a rejected frame that could not be saved.
    Error {
        /// The frame it concerns, if any.
        index: Option<u64>,
        /// What happened.
        message: String,
        /// When.
        at: EventTime,
    },
    /// The totals so far, every [`StreamOptions::summary_every`] (a heartbeat: it comes while
    /// no frame does, too).
    Heartbeat(Box<StreamSummary>),
}

/// Why the stream stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// The input ended.
    EndOfInput,
    /// Reading the input failed; the message says how.
    ReadError(String),
    /// A signal asked to stop (its number, as stored in the stop flag).
    Signal(usize),
    /// The sink failed: the output was closed (a broken pipe) or could not be written.
    OutputClosed(std::io::ErrorKind, String),
}

impl StopReason {
    /// The signal's name for [`StopReason::Signal`]: `SIGHUP`, `SIGINT`, `SIGTERM` (their
    /// numbers on Linux and the BSDs), `signal` for another; `None` for the other reasons.
    pub fn signal_name(&self) -> Option<&'static str> {
        match self {
            StopReason::Signal(1) => Some("SIGHUP"),
            StopReason::Signal(2) => Some("SIGINT"),
            StopReason::Signal(15) => Some("SIGTERM"),
            StopReason::Signal(_) => Some("signal"),
            _ => None,
        }
    }

    /// Stable snake_case name for JSON: `end_of_input`, `read_error`, `signal`, `output_closed`.
    pub fn as_str(&self) -> &'static str {
        match self {
            StopReason::EndOfInput => "end_of_input",
            StopReason::ReadError(_) => "read_error",
            StopReason::Signal(_) => "signal",
            StopReason::OutputClosed(..) => "output_closed",
        }
    }
}

/// Totals of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamSummary {
    /// Frames judged (scored or failed).
    pub frames: u64,
    /// Frames scored by the model.
    pub scored: u64,
    /// Frames rejected (out-of-distribution, including those that failed).
    pub rejected: u64,
    /// Frames that failed (decode errors, corrupt or torn frames) plus errors without a frame.
    pub errors: u64,
    /// Rejected frames saved as PNG.
    pub saved: u64,
    /// Changes of the debounced state (stalls and their ends included).
    pub state_changes: u64,
    /// Times the stall watchdog fired.
    pub stalls: u64,
    /// Alarms: switches of the debounced state to `out_of_distribution` (from
    /// `in_distribution` or `unknown`). On a clean feed these are false alarms, to compare with
    /// [`StreamSummary::alarm_model`].
    pub alarms: u64,
    /// Expected false alarms on independent clean frames for the gate's `alpha` and the
    /// debouncer ([`crate::alarms`]); `None` when the gate has no `alpha` (a bare threshold).
    pub alarm_model: Option<AlarmRate>,
    /// The debounced state at the end.
    pub state: State,
    /// From the start of the run to the stop.
    pub elapsed: Duration,
    /// Latency (last byte read to verdict) percentiles in milliseconds: p50, p99, max; `None`
    /// without frames. From a histogram with 3 significant digits.
    pub latency_ms: Option<[f64; 3]>,
    /// Frames per forward pass, on average.
    pub mean_batch: f64,
    /// Why it stopped (`EndOfInput` in a heartbeat, which is not the end).
    pub stop: StopReason,
    /// When the totals were taken.
    pub at: EventTime,
}

impl StreamSummary {
    /// Frames judged per second of the run.
    pub fn fps(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            self.frames as f64 / s
        } else {
            0.0
        }
    }
}

/// Where a stream's frames come from.
pub enum StreamSource {
    /// A byte stream: stdin, a file, a named pipe (split by [`StreamOptions::format`]).
    Bytes(Box<dyn Read + Send>),
    /// A V4L2 camera, opened and set to the format (feature `v4l2`).
    #[cfg(feature = "v4l2")]
    Camera(crate::v4l2::Camera),
}

impl std::fmt::Debug for StreamSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StreamSource::Bytes(_) => f.write_str("StreamSource::Bytes"),
            #[cfg(feature = "v4l2")]
            StreamSource::Camera(c) => f.debug_tuple("StreamSource::Camera").field(c).finish(),
        }
    }
}

/// A frame ready for the model, or why it is not.
enum Prepared {
    Frame {
        index: u64,
        input: Vec<f32>,
        rgb: Option<RgbImage>,
        received: Received,
        health: Option<HealthScores>,
        summary: Option<Box<LumaSummary>>,
    },
    Failed {
        index: u64,
        message: String,
        received: Received,
    },
    Error(String),
    ReadError(String),
}

/// The frames of `source` (built on the reader thread: a camera's buffers stay there).
fn frames(source: StreamSource, format: StreamFormat, limits: &InputLimits) -> Result<Box<dyn Iterator<Item = Item>>> {
    let stamp = |r| (r, Received::now());
    Ok(match source {
        StreamSource::Bytes(reader) => match format.layout() {
            Some(layout) => Box::new(RawReader::new(reader, layout.frame_len()?).map(stamp)),
            None => {
                let max = usize::try_from(limits.max_input_bytes).unwrap_or(usize::MAX);
                Box::new(MjpegReader::with_max_frame(reader, max).map(stamp))
            }
        },
        #[cfg(feature = "v4l2")]
        StreamSource::Camera(camera) => Box::new(camera.frames()),
    })
}

/// Converts one frame's bytes to RGB at its own size.
fn to_rgb(bytes: &[u8], format: StreamFormat, name: &str, limits: &InputLimits) -> Result<RgbImage> {
    match (format, format.layout()) {
        (StreamFormat::Raw { yuv, .. }, Some(layout)) => raw_to_rgb(bytes, &layout, yuv),
        _ => decode_bytes_with(bytes, Path::new(name), limits),
    }
}

/// One frame converted, resized and normalised, with its health scores and luma summary when
/// asked for.
type Ready = (Vec<f32>, RgbImage, Option<HealthScores>, Option<Box<LumaSummary>>);

/// Converts, resizes and normalises one frame; computes its health scores when `health`, its
/// luma summary when frozen frames are detected. A panic in a converter or decoder costs this
/// frame only.
fn prepare(
    bytes: &[u8],
    options: &StreamOptions,
    spec: &InputSpec,
    limits: &InputLimits,
    index: u64,
    health: bool,
) -> Result<Ready> {
    let name = format!("{}#{index}", options.source_name);
    catch_decoder_panic(Path::new(&name), || {
        let rgb = to_rgb(bytes, options.format, &name, limits)?;
        let mut input = vec![0.0f32; spec.frame_len()];
        preprocess_into(&rgb, spec, &mut input)?;
        let h = health.then(|| health_scores(&rgb));
        let summary = (options.frozen_after > 0).then(|| Box::new(LumaSummary::of(&rgb)));
        Ok((input, rgb, h, summary))
    })
}

fn reader_thread(
    source: StreamSource,
    options: StreamOptions,
    spec: InputSpec,
    limits: InputLimits,
    health: bool,
    tx: mpsc::SyncSender<Prepared>,
) {
    let items = match frames(source, options.format, &limits) {
        Ok(items) => items,
        Err(e) => {
            let _ = tx.send(Prepared::ReadError(e.to_string()));
            return;
        }
    };
    let keep_rgb = options.save_rejected.is_some();
    let mut index = 0u64;
    for (item, received) in items {
        let msg = match item {
            Ok(bytes) => {
                let i = index;
                index += 1;
                match prepare(&bytes, &options, &spec, &limits, i, health) {
                    Ok((input, rgb, health, summary)) => {
                        Prepared::Frame { index: i, input, rgb: keep_rgb.then_some(rgb), received, health, summary }
                    }
                    Err(e) => Prepared::Failed { index: i, message: e.to_string().trim_end().to_string(), received },
                }
            }
            Err(e @ (StreamError::Corrupt { .. } | StreamError::TooLarge { .. } | StreamError::Truncated { .. })) => {
                let i = index;
                index += 1;
                let mut message = e.to_string();
                if let (StreamError::Truncated { .. }, StreamFormat::Raw { .. }) = (&e, options.format) {
                    // Raw frames carry no markers: a wrong size only shows at the end.
                    message += &format!(
                        " (a raw frame of {} is shorter; if every stream ends like this, check --size and --format)",
                        options.format.name()
                    );
                }
                Prepared::Failed { index: i, message, received }
            }
            Err(e @ StreamError::Garbage { .. }) => Prepared::Error(e.to_string()),
            Err(StreamError::Io(e)) => Prepared::ReadError(e),
        };
        if tx.send(msg).is_err() {
            return; // the judge stopped
        }
    }
}

/// A raw frame is an encoded input like any other: its sides and bytes within `limits` (MJPEG
/// frames are cut by the reader; their decode checks their header).
fn check_raw_frame(format: StreamFormat, limits: &InputLimits) -> Result<()> {
    if let Some(layout) = format.layout() {
        let len = layout.frame_len()?;
        limits.check_size(layout.width as u64, layout.height as u64).map_err(Error::Invalid)?;
        limits.check_bytes(&format!("a raw {} frame", layout.format.name()), len as u64).map_err(Error::Invalid)?;
    }
    Ok(())
}

/// What [`capture`] does: which frames of a stream it keeps, and where.
#[derive(Debug, Clone, PartialEq)]
pub struct CaptureOptions {
    /// How the bytes are split into frames.
    pub format: StreamFormat,
    /// Keep every N-th frame (frame 0, N, 2N, ...): consecutive camera frames are near-copies,
    /// and calibration wants frames spread over time. At least 1.
    pub every: u64,
    /// Stop after this many saved frames (`None`: at the end of the input or a signal).
    pub count: Option<u64>,
    /// The folder (created if missing): frames are named `<time>-<index>.png` as
    /// `--save-rejected` names them, never overwriting one.
    pub out: PathBuf,
    /// Keep the folder's saved frames under this many bytes, the oldest removed.
    pub max_bytes: Option<u64>,
    /// Name of the input in messages.
    pub source_name: String,
}

/// What [`capture`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct CaptureReport {
    /// Frames read (every frame of the stream, saved or not).
    pub frames: u64,
    /// Frames saved.
    pub saved: u64,
    /// Frames due to be saved that could not be converted or decoded (a torn or corrupt frame
    /// is never kept for calibration), with the first few messages.
    pub failed: u64,
    /// Up to 5 of the failures' messages.
    pub failures: Vec<String>,
    /// Why it stopped.
    pub stop: StopReason,
    /// From the start to the stop.
    pub elapsed: Duration,
}

/// Reads frames from `source` and saves every `options.every`-th one at full size as PNG in
/// `options.out`: frames from the deployed camera to `calibrate` a gate on (no model needed).
/// `saved` is called with each path written. Stops at the end of the input, after
/// `options.count` frames, or when `stop` becomes non-zero.
///
/// # Errors
/// [`Error::Invalid`] for `every = 0` or an invalid raw frame size; [`Error::Io`] when the
/// folder cannot be made or a frame cannot be written.
pub fn capture(
    source: StreamSource,
    options: &CaptureOptions,
    limits: &InputLimits,
    stop: &AtomicUsize,
    mut saved: impl FnMut(&Path),
) -> Result<CaptureReport> {
    if options.every == 0 {
        return Err(Error::Invalid("capture: every must be at least 1".into()));
    }
    check_raw_frame(options.format, limits)?;
    let mut folder = SavedFrames::open(&options.out, options.max_bytes)?;
    let start = Instant::now();
    let mut report = CaptureReport {
        frames: 0,
        saved: 0,
        failed: 0,
        failures: Vec::new(),
        stop: StopReason::EndOfInput,
        elapsed: Duration::ZERO,
    };
    let fail = |report: &mut CaptureReport, message: String| {
        report.failed += 1;
        if report.failures.len() < 5 {
            report.failures.push(message);
        }
    };
    for (item, _) in frames(source, options.format, limits)? {
        let signal = stop.load(Ordering::Relaxed);
        if signal != 0 {
            report.stop = StopReason::Signal(signal);
            break;
        }
        let index = report.frames;
        let due = index.is_multiple_of(options.every);
        match item {
            Err(StreamError::Io(e)) => {
                report.stop = StopReason::ReadError(e);
                break;
            }
            Err(StreamError::Garbage { .. }) => continue,
            Err(e) => {
                report.frames += 1;
                if due {
                    fail(&mut report, format!("frame {index}: {e}"));
                }
                continue;
            }
            Ok(bytes) => {
                report.frames += 1;
                if !due {
                    continue;
                }
                let name = format!("{}#{index}", options.source_name);
                let rgb = catch_decoder_panic(Path::new(&name), || to_rgb(&bytes, options.format, &name, limits));
                match rgb {
                    Ok(rgb) => {
                        let path = folder.save(&rgb, &EventTime::now(start), index).map_err(Error::Invalid)?;
                        report.saved += 1;
                        saved(&path);
                    }
                    Err(e) => fail(&mut report, e.to_string().trim_end().to_string()),
                }
            }
        }
        if options.count.is_some_and(|c| report.saved >= c) {
            break;
        }
    }
    let signal = stop.load(Ordering::Relaxed);
    if signal != 0 && report.stop == StopReason::EndOfInput {
        report.stop = StopReason::Signal(signal);
    }
    report.elapsed = start.elapsed();
    Ok(report)
}

/// Latencies in microseconds, 1 us to 1 hour, 3 significant digits (fixed memory).
struct Latencies(hdrhistogram::Histogram<u64>);

impl Latencies {
    fn new() -> Result<Latencies> {
        hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 3)
            .map(Latencies)
            .map_err(|e| Error::Invalid(format!("latency histogram: {e}")))
    }

    fn record(&mut self, d: Duration) {
        let us = (d.as_micros() as u64).clamp(1, 3_600_000_000);
        // In bounds by the clamp, so this cannot fail.
        let _ = self.0.record(us);
    }

    fn percentiles_ms(&self) -> Option<[f64; 3]> {
        (!self.0.is_empty()).then(|| {
            let q = |p: f64| self.0.value_at_quantile(p) as f64 / 1000.0;
            [q(0.5), q(0.99), self.0.max() as f64 / 1000.0]
        })
    }
}

/// Reads frames from `source` until it ends, `stop` becomes non-zero (a signal handler stores
/// the signal's number there), or `sink` fails; judges each frame with `gate`, debounces the
/// verdicts, and gives every frame, state change and error to `sink` in stream order.
///
/// `sink` returning an error (a closed stdout, say) stops the run with
/// [`StopReason::OutputClosed`]; the summary is still returned.
///
/// # Errors
/// Only before the first frame: [`Error::Invalid`] when the gate has no rule (no threshold
/// or alpha: nothing to debounce), the debouncing settings are invalid, the raw frame size is
/// invalid, or the save folder cannot be made; [`Error::Model`] when a plan for a batch size
/// cannot be built.
pub fn run_stream(
    gate: &mut EnergyGate,
    source: StreamSource,
    options: &StreamOptions,
    stop: &AtomicUsize,
    mut sink: impl FnMut(&StreamEvent) -> std::io::Result<()>,
) -> Result<StreamSummary> {
    let mut judge = StreamJudge::new(options, gate)?;
    let mut kept = match &options.save_rejected {
        Some(dir) if options.max_saved > 0 => Some(SavedFrames::open(dir, options.max_saved_bytes)?),
        _ => None,
    };
    let mut spec = gate.input().clone();
    if let Some(mode) = options.resize {
        spec.resize = mode;
    }
    // Every batch size a round can use is optimised and run once on a blank batch before the
    // first frame: a plan's first run is several times slower than the next ones (buffers are
    // allocated, memory paged in), and on a live feed that delay would queue up frames.
    // A model with a fixed batch dimension runs at most that many frames at once.
    let max_batch = match gate.model_mut().fixed_batch() {
        Some(fixed) => options.max_batch.min(fixed),
        None => options.max_batch,
    };
    let mut sizes = vec![max_batch];
    let mut n = 1;
    while n < max_batch {
        sizes.push(n);
        n *= 2;
    }
    let frame_len = gate.input().frame_len();
    let blank = vec![0.0f32; max_batch * frame_len];
    for &n in &sizes {
        gate.model_mut().prepare(n)?;
        gate.model_mut().logits(&blank[..n * frame_len], n)?;
    }
    check_raw_frame(options.format, gate.limits())?;
    let mut latencies = Latencies::new()?;
    let len = spec.frame_len();
    let k = gate.class_names().len();
    let start = Instant::now();
    let mut last_heartbeat = start;
    let mut summary = StreamSummary {
        frames: 0,
        scored: 0,
        rejected: 0,
        errors: 0,
        saved: 0,
        state_changes: 0,
        stalls: 0,
        alarms: 0,
        alarm_model: options.alarm_model(gate),
        state: State::Unknown,
        elapsed: Duration::ZERO,
        latency_ms: None,
        mean_batch: 0.0,
        stop: StopReason::EndOfInput,
        at: EventTime::now(start),
    };
    let (mut batches, mut batched) = (0u64, 0u64);
    // The totals as of now: the counts so far, with the time, latencies and batch sizes filled in.
    let totals = |summary: &StreamSummary, latencies: &Latencies, batches: u64, batched: u64| StreamSummary {
        elapsed: start.elapsed(),
        latency_ms: latencies.percentiles_ms(),
        mean_batch: if batches > 0 { batched as f64 / batches as f64 } else { 0.0 },
        at: EventTime::now(start),
        ..summary.clone()
    };

    let (tx, rx) = mpsc::sync_channel::<Prepared>(2 * max_batch);
    {
        let (options, spec, limits) = (options.clone(), spec.clone(), *gate.limits());
        let health = gate.settings().health_scores;
        // Not scoped: a reader blocked on a stalled pipe must not keep a stopped run waiting.
        // It ends by itself at the end of its input, or when its next send finds the channel
        // closed. A panic in it (in a camera or reader, say) is reported as a read error: the
        // run stops as failed, never as the end of the input.
        std::thread::Builder::new()
            .name("ebm-gate-reader".into())
            .spawn(move || {
                let report = tx.clone();
                let run = std::panic::AssertUnwindSafe(|| reader_thread(source, options, spec, limits, health, tx));
                if let Err(payload) = std::panic::catch_unwind(run) {
                    let _ = report
                        .send(Prepared::ReadError(format!("the reader thread panicked: {}", panic_text(&*payload))));
                }
            })
            .map_err(|e| Error::Invalid(format!("cannot start the reader thread: {e}")))?;
    }

    let mut pending: Vec<Prepared> = Vec::with_capacity(max_batch);
    let mut input: Vec<f32> = Vec::with_capacity(max_batch * len);
    let mut finished = false;
    let mut last_frame = Instant::now();
    'run: while !finished {
        // Wait for the first message, checking the stop flag now and then.
        let signal = stop.load(Ordering::Relaxed);
        if signal != 0 {
            summary.stop = StopReason::Signal(signal);
            break;
        }
        if let Some(timeout) = options.stall_timeout {
            if summary.state != State::Stalled && last_frame.elapsed() >= timeout {
                let from = judge.stall();
                summary.state = State::Stalled;
                summary.stalls += 1;
                summary.state_changes += 1;
                let event = StreamEvent::StateChange {
                    index: summary.frames,
                    from,
                    to: State::Stalled,
                    rejected_in_window: 0,
                    at: EventTime::now(start),
                };
                if let Err(e) = sink(&event) {
                    summary.stop = output_closed(e);
                    break;
                }
            }
        }
        if let Some(every) = options.summary_every {
            if last_heartbeat.elapsed() >= every {
                last_heartbeat = Instant::now();
                let beat = StreamEvent::Heartbeat(Box::new(totals(&summary, &latencies, batches, batched)));
                if let Err(e) = sink(&beat) {
                    summary.stop = output_closed(e);
                    break;
                }
            }
        }
        if pending.is_empty() {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(m) => pending.push(m),
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        // Then take what is ready, up to max_batch.
        while pending.len() < max_batch {
            match rx.try_recv() {
                Ok(m) => pending.push(m),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    finished = true;
                    break;
                }
            }
        }
        // A power of two of model frames (or max_batch), keeping stream order: the messages up
        // to the last frame that fits are handled now, the rest wait for the next round.
        let frames_ready = pending.iter().filter(|m| matches!(m, Prepared::Frame { .. })).count();
        let n_model = if frames_ready >= max_batch { max_batch } else { prev_power_of_two(frames_ready) };
        let mut take = 0;
        let mut seen = 0;
        for m in &pending {
            if matches!(m, Prepared::Frame { .. }) {
                if seen == n_model {
                    break;
                }
                seen += 1;
            }
            take += 1;
        }
        let round: Vec<Prepared> = pending.drain(..take).collect();
        if !pending.is_empty() {
            finished = false; // what is left is judged next round, before stopping
        }
        input.clear();
        for m in &round {
            if let Prepared::Frame { input: x, .. } = m {
                input.extend_from_slice(x);
            }
        }
        let logits = if n_model > 0 {
            batches += 1;
            batched += n_model as u64;
            Some(gate.model_mut().logits(&input, n_model))
        } else {
            None
        };
        let mut row = 0;
        for m in round {
            let (index, mut report, received, rgb, luma) = match m {
                Prepared::Frame { index, rgb, received, health, summary, .. } => {
                    let name = format!("{}#{index}", options.source_name);
                    let report = match logits.as_ref().map(|l| l.as_ref().map(|all| all.get(row * k..(row + 1) * k))) {
                        Some(Ok(Some(row_logits))) => gate.judge_frame(&name, None, row_logits, health),
                        Some(Err(e)) => FrameReport::failed(&name, None, Reason::ModelError, e.to_string()),
                        // Cannot happen (every frame of the round is in the batch); fail closed.
                        _ => FrameReport::failed(&name, None, Reason::ModelError, "no logits for this frame".into()),
                    };
                    row += 1;
                    (index, report, received, rgb, summary)
                }
                Prepared::Failed { index, message, received } => {
                    let name = format!("{}#{index}", options.source_name);
                    (index, FrameReport::failed(&name, None, Reason::DecodeError, message), received, None, None)
                }
                Prepared::Error(message) => {
                    summary.errors += 1;
                    if let Err(e) = sink(&StreamEvent::Error { index: None, message, at: EventTime::now(start) }) {
                        summary.stop = output_closed(e);
                        break 'run;
                    }
                    continue;
                }
                Prepared::ReadError(message) => {
                    summary.errors += 1;
                    let event = StreamEvent::Error {
                        index: None,
                        message: format!("read error: {message}"),
                        at: EventTime::now(start),
                    };
                    summary.stop = StopReason::ReadError(message);
                    if let Err(e) = sink(&event) {
                        summary.stop = output_closed(e);
                    }
                    break 'run;
                }
            };
            summary.frames += 1;
            summary.scored += u64::from(report.scores.is_some());
            summary.errors += u64::from(report.error.is_some() && report.scores.is_none());
            last_frame = Instant::now();
            let step = judge.push(&mut report, luma);
            let verdict = report.verdict.unwrap_or(Verdict::OutOfDistribution);
            let mut saved = None;
            let mut save_error = None;
            let at = EventTime::now(start);
            if verdict == Verdict::OutOfDistribution {
                summary.rejected += 1;
                if let (Some(kept), Some(rgb), true) = (kept.as_mut(), rgb, summary.saved < options.max_saved as u64) {
                    match kept.save(&rgb, &at, index) {
                        Ok(path) => {
                            summary.saved += 1;
                            saved = Some(path);
                        }
                        Err(e) => save_error = Some(e),
                    }
                }
            }
            let latency = received.elapsed();
            latencies.record(latency);
            summary.state = step.state;
            let mut events = vec![StreamEvent::Frame(Box::new(StreamFrame {
                index,
                report,
                state: step.state,
                rejected_in_window: step.rejected_in_window,
                latency,
                saved,
                frame_difference: step.frame_difference,
                at,
                captured: received.captured,
            }))];
            if let Some(message) = save_error {
                summary.errors += 1;
                events.push(StreamEvent::Error { index: Some(index), message, at });
            }
            if let Some(from) = step.changed_from {
                summary.state_changes += 1;
                summary.alarms += u64::from(step.state == State::OutOfDistribution);
                events.push(StreamEvent::StateChange {
                    index,
                    from,
                    to: step.state,
                    rejected_in_window: step.rejected_in_window,
                    at,
                });
            }
            for event in &events {
                if let Err(e) = sink(event) {
                    summary.stop = output_closed(e);
                    break 'run;
                }
            }
        }
    }
    // A signal that came while the input was ending (`systemctl stop` signals the camera and
    // the gate together, and the camera's end reaches the gate first) is still the reason.
    let signal = stop.load(Ordering::Relaxed);
    if signal != 0 && summary.stop == StopReason::EndOfInput {
        summary.stop = StopReason::Signal(signal);
    }
    Ok(totals(&summary, &latencies, batches, batched))
}

/// Where a run's events go: a transport (stdout's JSON lines, an MQTT broker, ...) that
/// [`run_stream_to`] feeds without the stream loop knowing it.
///
/// A sink must not block the frame loop for long: one that talks to a network (such as
/// [`crate::mqtt::MqttSink`], feature `mqtt`) queues and sends from its own thread.
pub trait EventSink {
    /// Takes one event, in stream order. An error stops the run
    /// ([`StopReason::OutputClosed`]).
    fn event(&mut self, event: &StreamEvent) -> std::io::Result<()>;

    /// The run ended with `summary` (also when a sink failed). By default nothing happens.
    fn finish(&mut self, summary: &StreamSummary) -> std::io::Result<()> {
        let _ = summary;
        Ok(())
    }
}

/// The events as JSON lines ([`json::event`]) on a writer, and the final summary
/// ([`json::summary`]) at the end; frame lines only for every `every`-th frame (state changes,
/// errors and heartbeats always).
pub struct JsonLines<W: std::io::Write> {
    out: W,
    names: Vec<String>,
    every: u64,
}

impl<W: std::io::Write> JsonLines<W> {
    /// Lines to `out`; `names` are the class names; a frame line for every `every`-th frame
    /// (0 is taken as 1).
    pub fn new(out: W, names: Vec<String>, every: u64) -> JsonLines<W> {
        JsonLines { out, names, every: every.max(1) }
    }

    /// The writer.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.out
    }
}

impl<W: std::io::Write> EventSink for JsonLines<W> {
    fn event(&mut self, event: &StreamEvent) -> std::io::Result<()> {
        if let StreamEvent::Frame(f) = event {
            if f.index % self.every != 0 {
                return Ok(());
            }
        }
        writeln!(self.out, "{}", json::event(event, &self.names))
    }

    /// Writes the final summary line, unless the output was the sink that closed.
    fn finish(&mut self, summary: &StreamSummary) -> std::io::Result<()> {
        if matches!(summary.stop, StopReason::OutputClosed(..)) {
            return Ok(());
        }
        writeln!(self.out, "{}", json::summary(summary, summary.stop.signal_name()))?;
        self.out.flush()
    }
}

/// [`run_stream`] with its events given to every sink in `sinks`, in order, and
/// [`EventSink::finish`] called on each with the summary at the end. The first sink error
/// stops the run ([`StopReason::OutputClosed`]); the others still get `finish`. Errors of
/// `finish` are returned with the summary, one per sink (`Ok` for most).
///
/// # Errors
/// As [`run_stream`].
pub fn run_stream_to(
    gate: &mut EnergyGate,
    source: StreamSource,
    options: &StreamOptions,
    stop: &AtomicUsize,
    sinks: &mut [&mut dyn EventSink],
) -> Result<(StreamSummary, Vec<std::io::Result<()>>)> {
    let summary = run_stream(gate, source, options, stop, |event| {
        for sink in sinks.iter_mut() {
            sink.event(event)?;
        }
        Ok(())
    })?;
    let finished = sinks.iter_mut().map(|sink| sink.finish(&summary)).collect();
    Ok((summary, finished))
}

/// The rejected frames kept in `--save-rejected`'s folder: named by time and index so that
/// they sort by time and a restart never overwrites one, the oldest removed past a byte cap.
struct SavedFrames {
    dir: PathBuf,
    /// The folder's saved frames, oldest first, with their sizes.
    files: std::collections::VecDeque<(PathBuf, u64)>,
    bytes: u64,
    max_bytes: Option<u64>,
}

impl SavedFrames {
    /// The folder (created if missing) and the frames earlier runs left in it, trimmed to the cap.
    fn open(dir: &Path, max_bytes: Option<u64>) -> Result<SavedFrames> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
            let entry = entry.map_err(|e| Error::io(dir, e))?;
            let name = entry.file_name();
            if name.to_str().is_some_and(is_saved_name) {
                let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
                found.push((entry.path(), size));
            }
        }
        found.sort();
        let bytes = found.iter().map(|f| f.1).sum();
        let mut kept = SavedFrames { dir: dir.to_path_buf(), files: found.into(), bytes, max_bytes };
        kept.trim().map_err(Error::Invalid)?;
        Ok(kept)
    }

    /// Writes `rgb` as `<time>-<index>.png` (`-1`, `-2`, ... added if the name is taken), then
    /// removes the oldest past the cap; the path written, or what went wrong.
    fn save(&mut self, rgb: &RgbImage, at: &EventTime, index: u64) -> std::result::Result<PathBuf, String> {
        let time: String = at.rfc3339().chars().filter(|c| !matches!(c, '-' | ':')).collect();
        for k in 0..100u32 {
            let suffix = if k == 0 { String::new() } else { format!("-{k}") };
            let path = self.dir.join(format!("{time}-{index:09}{suffix}.png"));
            let file = match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(format!("cannot save {}: {e}", path.display())),
            };
            let mut w = std::io::BufWriter::new(file);
            let written = rgb
                .write_to(&mut w, image::ImageFormat::Png)
                .map_err(|e| e.to_string())
                .and_then(|()| std::io::Write::flush(&mut w).map_err(|e| e.to_string()));
            if let Err(e) = written {
                let _ = std::fs::remove_file(&path);
                return Err(format!("cannot save {}: {e}", path.display()));
            }
            let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            self.files.push_back((path.clone(), size));
            self.bytes += size;
            self.trim()?;
            return Ok(path);
        }
        Err(format!("cannot save frame {index}: 100 files named {time}-{index:09}*.png already exist"))
    }

    /// Removes the oldest frames while they take more than `max_bytes` (the newest is kept
    /// even when alone it is larger).
    fn trim(&mut self) -> std::result::Result<(), String> {
        while self.files.len() > 1 && self.max_bytes.is_some_and(|m| self.bytes > m) {
            let Some((path, size)) = self.files.pop_front() else { break };
            self.bytes -= size;
            std::fs::remove_file(&path).map_err(|e| format!("cannot remove {}: {e}", path.display()))?;
        }
        Ok(())
    }
}

/// Whether `name` is a saved frame's: `YYYYMMDDTHHMMSS.mmmZ-NNNNNNNNN.png`, or with `-k` before
/// `.png`.
fn is_saved_name(name: &str) -> bool {
    let Some(stem) = name.strip_suffix(".png") else { return false };
    let b = stem.as_bytes();
    let digits = |r: std::ops::Range<usize>| b.get(r).is_some_and(|s| s.iter().all(u8::is_ascii_digit));
    b.len() >= 30
        && digits(0..8)
        && b[8] == b'T'
        && digits(9..15)
        && b[15] == b'.'
        && digits(16..19)
        && b[19] == b'Z'
        && b[20] == b'-'
        && digits(21..30)
        && (b.len() == 30 || (b[30] == b'-' && digits(31..b.len())))
}

/// The stop reason for a sink that could not take an event.
fn output_closed(e: std::io::Error) -> StopReason {
    StopReason::OutputClosed(e.kind(), e.to_string())
}

fn prev_power_of_two(n: usize) -> usize {
    if n == 0 {
        0
    } else {
        1 << (usize::BITS - 1 - n.leading_zeros())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_names_are_recognised_and_nothing_else() {
        assert!(is_saved_name("20261201T214636.303Z-000000042.png"));
        assert!(is_saved_name("20261201T214636.303Z-000000042-3.png"));
        for other in
            ["frame-000000042.png", "20261201T214636.303Z-000000042.jpg", "20261201T214636.303Z-42.png", "notes.txt"]
        {
            assert!(!is_saved_name(other), "{other}");
        }
    }

    #[test]
    fn the_byte_cap_removes_the_oldest_and_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let start = Instant::now();
        let img = RgbImage::from_fn(64, 48, |x, y| image::Rgb([(x * 4) as u8, (y * 5) as u8, 7]));
        let mut kept = SavedFrames::open(dir.path(), None).unwrap();
        let one = kept.save(&img, &EventTime::now(start), 0).unwrap();
        let size = std::fs::metadata(&one).unwrap().len();
        // A cap of 2.5 files' bytes keeps the newest 2 of 4.
        let mut kept = SavedFrames::open(dir.path(), Some(size * 5 / 2)).unwrap();
        let paths: Vec<PathBuf> = (1..4).map(|i| kept.save(&img, &EventTime::now(start), i).unwrap()).collect();
        assert!(!one.exists() && !paths[0].exists() && paths[1].exists() && paths[2].exists());
        assert_eq!(kept.bytes, 2 * size);
        // The same time and index again: a new name, nothing overwritten.
        let at = EventTime::now(start);
        let a = kept.save(&img, &at, 9).unwrap();
        let b = kept.save(&img, &at, 9).unwrap();
        assert!(a != b && b.to_str().unwrap().ends_with("-000000009-1.png"), "{}", b.display());
        // Below one file's size, the newest alone is kept.
        let mut kept = SavedFrames::open(dir.path(), Some(size / 2)).unwrap();
        assert_eq!(kept.files.len(), 1);
        let c = kept.save(&img, &EventTime::now(start), 10).unwrap();
        assert!(c.exists() && !b.exists() && kept.files.len() == 1);
    }
}

/// The events as JSON lines (`type`: `frame`, `event`, `error`, `summary`).
pub mod json {
    use serde_json::{json, Value};

    use super::{StreamEvent, StreamSummary};

    /// One frame ([`FrameRecord`](crate::record::FrameRecord)), state change, error or heartbeat
    /// summary as a line of JSON; `names` are the class names.
    pub fn event(event: &StreamEvent, names: &[String]) -> String {
        match event {
            StreamEvent::Frame(f) => f.record(names).to_json_line(),
            StreamEvent::StateChange { index, from, to, rejected_in_window, at } => json!({
                "type": "event",
                "frame": index,
                "event": "state_change",
                "from": from.as_str(),
                "state": to.as_str(),
                "rejected_in_window": rejected_in_window,
                "time": at.rfc3339(),
                "monotonic_s": at.since_start.as_secs_f64(),
            })
            .to_string(),
            StreamEvent::Error { index, message, at } => json!({
                "type": "error",
                "frame": index,
                "error": message,
                "time": at.rfc3339(),
                "monotonic_s": at.since_start.as_secs_f64(),
            })
            .to_string(),
            StreamEvent::Heartbeat(s) => heartbeat(s).to_string(),
        }
    }

    /// The final summary as a JSON object; `signal` names the signal that stopped the run.
    pub fn summary(s: &StreamSummary, signal: Option<&str>) -> Value {
        let mut v = totals(s, true);
        v["stopped"] = json!(s.stop.as_str());
        v["signal"] = json!(signal);
        v["detail"] = json!(match &s.stop {
            super::StopReason::ReadError(m) | super::StopReason::OutputClosed(_, m) => Some(m.clone()),
            _ => None,
        });
        v
    }

    /// A heartbeat's summary (`"final": false`) as a JSON object.
    pub fn heartbeat(s: &StreamSummary) -> Value {
        totals(s, false)
    }

    /// The counts, rates and state of a summary (`final`: the last one, or a heartbeat).
    fn totals(s: &StreamSummary, last: bool) -> Value {
        let lat = s.latency_ms;
        json!({
            "type": "summary",
            "final": last,
            "time": s.at.rfc3339(),
            "monotonic_s": s.at.since_start.as_secs_f64(),
            "frames": s.frames,
            "scored": s.scored,
            "rejected": s.rejected,
            "errors": s.errors,
            "saved": s.saved,
            "state_changes": s.state_changes,
            "stalls": s.stalls,
            "alarms": s.alarms,
            "alarm_model": s.alarm_model.map(|m| json!({
                "alpha": m.p,
                "method": m.method.as_str(),
                "expected_alarms": m.expected_in(s.frames),
                "expected_per_hour": m.per_hour(s.fps()),
                "frames_per_alarm": 1.0 / m.per_frame,
            })),
            "state": s.state.as_str(),
            "seconds": s.elapsed.as_secs_f64(),
            "fps": s.fps(),
            "latency_ms": lat.map(|[p50, p99, max]| json!({"p50": p50, "p99": p99, "max": max})),
            "mean_batch": s.mean_batch,
        })
    }
}
