//! [`FrameRecord`]: the one JSON record of a judged frame, written by `score --json`,
//! `stream` (its frame lines) and `refine` (trace.json's `before` / `after`).
//!
//! Keys, in this order (a superset: a command leaves out what it does not know):
//!
//! | key | type | when |
//! |---|---|---|
//! | `type` | `"frame"` | `stream` only (its other lines are events, errors, the summary) |
//! | `frame` | integer | `stream`: position in the stream, from 0 |
//! | `path` | string | `score`, `refine`: the file, or `FILE#index` inside an IDX file |
//! | `class`, `class_index` | string, integer | always; `null` when the frame was not scored |
//! | `probability` | number | `softmax(f(x) / T)` of the class; `null` when not scored |
//! | `energy` | number | free energy `E(x) = -T logsumexp(f(x) / T)`, lower = more in-distribution |
//! | `msp`, `max_logit` | number | max softmax probability at `T = 1`, largest logit |
//! | `p_value` | number | conformal p-value of the energy (needs calibration energies); with several scores combined (`--scores`), the combined p-value the gate compares with `alpha` |
//! | `health` | object | the frame's health scores at its own resolution (`sharpness`, `noise_sigma`, `dark_fraction`, `bright_fraction`, `mean_luma`, `luma_p99`, `colour_cast`; [`crate::health`]), when computed |
//! | `p_values` | object | with several scores combined: each score's own conformal p-value over the fitting half, in its tail (for reading: the verdict compares the combined `p_value` with `alpha`, and a score's own p-value at or below `alpha` does not by itself reject) |
//! | `rejected_by` | array of strings | with several scores combined: the scores that put the frame over the level, strangest first (empty when accepted) |
//! | `prediction_set` | array of strings | `score --set-alpha`; else `null` |
//! | `verdict` | `in_distribution` / `out_of_distribution` | `null` only when no rule is in force |
//! | `reason` | string | why the verdict, e.g. `p_value_at_or_below_alpha`, `decode_error`, `sharpness_p_value_at_or_below_alpha` (a combined gate: the strangest score over the level), `frozen_frame` |
//! | `error` | string | why the frame could not be scored; else `null` |
//! | `logits` | array of numbers | `score --logits` only |
//! | `time`, `monotonic_s` | string, number | `stream` only: the wall-clock time of the verdict (RFC 3339, UTC, milliseconds) and the seconds since the run started on the monotonic clock (immune to clock changes) |
//! | `state`, `rejected_in_window`, `latency_ms`, `saved`, `frame_difference` | | `stream` only: the debounced state after this frame (`unknown` until a window decides, `in_distribution`, `out_of_distribution`; `stalled` appears in events and summaries only), rejected frames in the window, ms from the frame's last byte to its verdict, where `--save-rejected` wrote it, the mean absolute difference of its 16x16 luma summary to the previous frame's (levels; 0 = a repeat) |
//!
//! Keys marked "always" are present with `null`; the others are left out when they do not apply.

use serde::Serialize;

use crate::pipeline::FrameReport;

/// One judged frame as `score --json`, `stream` and `refine` write it (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FrameRecord {
    /// `"frame"` in a stream.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    /// Position in the stream.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frame: Option<u64>,
    /// The frame's file (or `FILE#index`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Class name.
    pub class: Option<String>,
    /// Class index in logit order.
    pub class_index: Option<usize>,
    /// Its probability at the gate's temperature.
    pub probability: Option<f32>,
    /// Free energy at the gate's temperature.
    pub energy: Option<f32>,
    /// Max softmax probability at `T = 1`.
    pub msp: Option<f32>,
    /// Largest logit.
    pub max_logit: Option<f32>,
    /// Conformal p-value.
    pub p_value: Option<f32>,
    /// Health scores of the frame at its own resolution.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<crate::health::HealthScores>,
    /// Each combined score's own p-value, by name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p_values: Option<std::collections::BTreeMap<&'static str, f32>>,
    /// The scores that rejected the frame, strangest first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejected_by: Option<Vec<&'static str>>,
    /// Conformal prediction set, class names.
    pub prediction_set: Option<Vec<String>>,
    /// `in_distribution` or `out_of_distribution`.
    pub verdict: Option<&'static str>,
    /// Why the verdict.
    pub reason: Option<&'static str>,
    /// Why the frame could not be scored.
    pub error: Option<String>,
    /// The logits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logits: Option<Vec<f32>>,
    /// The debounced state after this frame (stream).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<&'static str>,
    /// Rejected frames in the debouncing window (stream).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejected_in_window: Option<usize>,
    /// Milliseconds from the frame's last byte to its verdict (stream).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    /// Where the frame was saved (stream `--save-rejected`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub saved: Option<String>,
    /// Mean absolute difference of the frame's 16x16 luma summary to the previous frame's,
    /// levels (stream, frozen-frame detection on).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frame_difference: Option<f32>,
    /// Wall-clock time of the verdict, RFC 3339 in UTC with milliseconds (stream).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// Seconds from the start of the run to the verdict, on the monotonic clock (stream).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub monotonic_s: Option<f64>,
    /// When the camera captured the frame, RFC 3339 in UTC with milliseconds, when the source
    /// says (a V4L2 camera's buffer timestamp).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capture_time: Option<String>,
}

impl FrameRecord {
    /// The record of `report`, with `names` the class names in logit order; no path, logits or
    /// stream fields (set them on the result).
    pub fn new(report: &FrameReport, names: &[String]) -> FrameRecord {
        let s = report.scores;
        let name = |y: usize| names.get(y).cloned().unwrap_or_else(|| y.to_string());
        FrameRecord {
            kind: None,
            frame: None,
            path: None,
            class: s.map(|s| name(s.class)),
            class_index: s.map(|s| s.class),
            probability: s.map(|s| s.probability),
            energy: s.map(|s| s.energy),
            msp: s.map(|s| s.msp),
            max_logit: s.map(|s| s.max_logit),
            p_value: report.p_value,
            health: report.health,
            p_values: report
                .multi
                .as_ref()
                .map(|m| m.kinds.iter().zip(&m.p_values).map(|(k, &p)| (k.name(), p)).collect()),
            rejected_by: report.multi.as_ref().map(|m| m.rejected_by.iter().map(|k| k.name()).collect()),
            prediction_set: report.prediction_set.as_ref().map(|set| set.iter().map(|&y| name(y)).collect()),
            verdict: report.verdict.map(|v| v.as_str()),
            reason: report.reason.map(|r| r.as_str()),
            error: report.error.clone(),
            logits: None,
            state: None,
            rejected_in_window: None,
            latency_ms: None,
            saved: None,
            frame_difference: None,
            time: None,
            monotonic_s: None,
            capture_time: None,
        }
    }

    /// `new` with the frame's path (its report's name), and its logits when `with_logits`:
    /// the record of `score --json`.
    pub fn of_file(report: &FrameReport, names: &[String], with_logits: bool) -> FrameRecord {
        FrameRecord {
            path: Some(report.name.clone()),
            logits: if with_logits { report.logits.clone() } else { None },
            ..FrameRecord::new(report, names)
        }
    }

    /// One line of JSON.
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).expect("a FrameRecord always serialises")
    }
}
