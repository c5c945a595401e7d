//! `ebm-gate stream`: real pictures scaled to 640x480 and seeded camera faults (sensor noise,
//! blur, over- and under-exposure, a covered lens, a torn frame) through every input format;
//! each frame's energy equals the `score` path on the same picture; the debounced state follows
//! a k-of-n recount of the verdicts; truncated, corrupt and empty input, a closed stdout and
//! SIGINT/SIGTERM each end the run with a summary and their exit code.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use ebm_gate::raw::{raw_to_rgb, PixelFormat, RawLayout, YuvSpec};
use image::{Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use serde_json::Value;

use crate::common::{bundle, ebm_gate, root, shared_data};

const W: u32 = 640;
const H: u32 = 480;

/// Camera faults, made from a clean frame by seeded code.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fault {
    /// Gaussian sensor noise, sigma 60 (of 255).
    Noise,
    /// Gaussian blur, sigma 12 pixels at 640x480.
    Blur,
    /// Exposure x4, clipped.
    OverExposed,
    /// Exposure x0.12.
    UnderExposed,
    /// A covered lens: almost black (level 6 + noise sigma 2).
    CoveredLens,
    /// A torn frame: rows from 55% down are lost (zero bytes in the raw buffer: black in
    /// RGB/gray, green in YUV; an MJPEG frame cut short and followed by the next frame).
    Torn,
}

const FAULTS: [Fault; 6] =
    [Fault::Noise, Fault::Blur, Fault::OverExposed, Fault::UnderExposed, Fault::CoveredLens, Fault::Torn];

fn gauss(rng: &mut Xoshiro256PlusPlus) -> f32 {
    // Box-Muller.
    let (u1, u2): (f32, f32) = (rng.random_range(f32::EPSILON..1.0), rng.random());
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

fn clip(v: f32) -> u8 {
    v.round().clamp(0.0, 255.0) as u8
}

/// The picture a fault makes of `clean` (for `Torn`, the picture before tearing: tearing
/// happens in the encoded bytes, see [`encode`]).
pub fn apply(fault: Fault, clean: &RgbImage, seed: u64) -> RgbImage {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let mut img = clean.clone();
    match fault {
        Fault::Noise => img.pixels_mut().for_each(|p| p.0 = p.0.map(|c| clip(c as f32 + 60.0 * gauss(&mut rng)))),
        Fault::Blur => img = image::imageops::blur(clean, 12.0),
        Fault::OverExposed => img.pixels_mut().for_each(|p| p.0 = p.0.map(|c| clip(c as f32 * 4.0))),
        Fault::UnderExposed => img.pixels_mut().for_each(|p| p.0 = p.0.map(|c| clip(c as f32 * 0.12))),
        Fault::CoveredLens => img.pixels_mut().for_each(|p| {
            let v = 6.0 + 2.0 * gauss(&mut rng);
            p.0 = [clip(v), clip(v), clip(v + 1.0)];
        }),
        Fault::Torn => {}
    }
    img
}

/// Scales a picture to 640x480 (stretching, as a camera's sensor would frame it).
fn to_camera(img: &RgbImage) -> RgbImage {
    image::imageops::resize(img, W, H, image::imageops::FilterType::Triangle)
}

/// Formats a stream can carry.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fmt {
    Raw(PixelFormat),
    Mjpeg,
}

const FORMATS: [Fmt; 7] = [
    Fmt::Raw(PixelFormat::Rgb24),
    Fmt::Raw(PixelFormat::Bgr24),
    Fmt::Raw(PixelFormat::Gray8),
    Fmt::Raw(PixelFormat::Yuyv422),
    Fmt::Raw(PixelFormat::Nv12),
    Fmt::Raw(PixelFormat::I420),
    Fmt::Mjpeg,
];

impl Fmt {
    fn arg(self) -> &'static str {
        match self {
            Fmt::Raw(f) => f.name(),
            Fmt::Mjpeg => "mjpeg",
        }
    }
}

/// BT.601 limited-range Y, Cb, Cr of an RGB pixel (ITU-R BT.601-7, 8-bit).
fn ycbcr(p: [u8; 3]) -> [f32; 3] {
    let [r, g, b] = p.map(|c| c as f32 / 255.0);
    let y = 0.299 * r + 0.587 * g + 0.114 * b;
    [16.0 + 219.0 * y, 128.0 + 224.0 * (b - y) / 1.772, 128.0 + 224.0 * (r - y) / 1.402]
}

/// Chroma (Cb, Cr) averaged over the block of `xs x ys` at (x, y).
fn chroma(img: &RgbImage, x: u32, y: u32, xs: u32, ys: u32) -> [u8; 2] {
    let mut acc = [0f32; 2];
    for dy in 0..ys {
        for dx in 0..xs {
            let c = ycbcr(img.get_pixel(x + dx, y + dy).0);
            acc[0] += c[1];
            acc[1] += c[2];
        }
    }
    acc.map(|a| clip(a / (xs * ys) as f32))
}

fn jpeg(img: &RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90).encode_image(img).unwrap();
    out
}

/// One frame's bytes in `fmt`.
fn raw_bytes(img: &RgbImage, fmt: PixelFormat) -> Vec<u8> {
    let (w, h) = img.dimensions();
    let luma = |p: &Rgb<u8>| clip(ycbcr(p.0)[0]);
    match fmt {
        PixelFormat::Rgb24 => img.as_raw().clone(),
        PixelFormat::Bgr24 => img.pixels().flat_map(|p| [p.0[2], p.0[1], p.0[0]]).collect(),
        // Gray cameras give luma; Pillow's "L" weights (full range) here.
        PixelFormat::Gray8 => img
            .pixels()
            .map(|p| ((p.0[0] as u32 * 299 + p.0[1] as u32 * 587 + p.0[2] as u32 * 114 + 500) / 1000) as u8)
            .collect(),
        PixelFormat::Yuyv422 => {
            let mut out = Vec::with_capacity((2 * w * h) as usize);
            for y in 0..h {
                for x in (0..w).step_by(2) {
                    let [u, v] = chroma(img, x, y, 2, 1);
                    out.extend_from_slice(&[luma(img.get_pixel(x, y)), u, luma(img.get_pixel(x + 1, y)), v]);
                }
            }
            out
        }
        PixelFormat::Nv12 | PixelFormat::I420 => {
            let mut out: Vec<u8> = img.pixels().map(luma).collect();
            let (mut us, mut vs) = (Vec::new(), Vec::new());
            for y in (0..h).step_by(2) {
                for x in (0..w).step_by(2) {
                    let [u, v] = chroma(img, x, y, 2, 2);
                    us.push(u);
                    vs.push(v);
                }
            }
            if fmt == PixelFormat::Nv12 {
                out.extend(us.iter().zip(&vs).flat_map(|(&u, &v)| [u, v]));
            } else {
                out.extend(us);
                out.extend(vs);
            }
            out
        }
    }
}

/// A frame's bytes in `fmt`, torn when `torn` (see [`Fault::Torn`]).
fn encode(img: &RgbImage, fmt: Fmt, torn: bool) -> Vec<u8> {
    match fmt {
        Fmt::Raw(f) => {
            let mut bytes = raw_bytes(img, f);
            if torn {
                // Each plane loses its rows from 55% down: a buffer the camera did not finish.
                let planes: Vec<(usize, usize)> = match f {
                    PixelFormat::Nv12 => vec![(0, (W * H) as usize), ((W * H) as usize, bytes.len())],
                    PixelFormat::I420 => {
                        let (y, c) = ((W * H) as usize, (W * H / 4) as usize);
                        vec![(0, y), (y, y + c), (y + c, y + 2 * c)]
                    }
                    _ => vec![(0, bytes.len())],
                };
                for (a, b) in planes {
                    let cut = a + (b - a) * 55 / 100;
                    bytes[cut..b].fill(0);
                }
            }
            bytes
        }
        Fmt::Mjpeg => {
            let bytes = jpeg(img);
            if torn {
                bytes[..bytes.len() * 55 / 100].to_vec()
            } else {
                bytes
            }
        }
    }
}

/// The picture the gate should see for a frame: what `score` is given for the same frame.
fn seen(img: &RgbImage, fmt: Fmt) -> RgbImage {
    match fmt {
        Fmt::Raw(f) => raw_to_rgb(&raw_bytes(img, f), &RawLayout::tight(f, W, H), YuvSpec::default()).unwrap(),
        Fmt::Mjpeg => image::load_from_memory(&jpeg(img)).unwrap().to_rgb8(),
    }
}

/// Runs `ebm-gate stream` on the reference bundle with `input` fed through stdin; returns (exit
/// code, JSON lines, stderr).
fn stream(args: &[&str], input: Vec<u8>) -> (i32, Vec<Value>, String) {
    stream_model(&bundle(), args, input)
}

/// As [`stream`], for the bundle or model at `model`.
fn stream_model(model: &Path, args: &[&str], input: Vec<u8>) -> (i32, Vec<Value>, String) {
    let mut child = spawn_model(model, args);
    let mut stdin = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&input); // the process may stop reading early
    });
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines = stdout.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    (out.status.code().unwrap_or(-1), lines, String::from_utf8_lossy(&out.stderr).into_owned())
}

fn spawn(args: &[&str]) -> Child {
    spawn_model(&bundle(), args)
}

fn spawn_model(model: &Path, args: &[&str]) -> Child {
    let mut full = vec!["stream", model.to_str().unwrap()];
    full.extend_from_slice(args);
    ebm_gate().args(&full).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
}

fn of_type<'a>(lines: &'a [Value], t: &str) -> Vec<&'a Value> {
    lines.iter().filter(|l| l["type"] == t).collect()
}

fn summary(lines: &[Value]) -> &Value {
    let last = lines.last().expect("a summary line");
    assert_eq!(last["type"], "summary", "{last}");
    last
}

fn size_args(fmt: Fmt) -> Vec<&'static str> {
    match fmt {
        Fmt::Raw(_) => vec!["--size", "640x480"],
        Fmt::Mjpeg => vec![],
    }
}

/// Whether the binary runs under an emulator (`EBM_GATE_TEST_RUNNER`, see `common::ebm_gate`).
fn emulated() -> bool {
    std::env::var("EBM_GATE_TEST_RUNNER").is_ok_and(|r| !r.trim().is_empty())
}

/// The shipped sample photos, at 640x480.
fn sample_pictures() -> Vec<RgbImage> {
    ["chelsea.png", "coffee.png", "astronaut.png", "horse.png"]
        .iter()
        .map(|n| to_camera(&image::open(bundle().join("samples").join(n)).unwrap().to_rgb8()))
        .collect()
}

/// Energies `score --json` gives the files in `dir`, in file-name order.
fn score_energies(dir: &Path) -> Vec<f64> {
    let out = ebm_gate().args(["score", bundle().to_str().unwrap(), dir.to_str().unwrap(), "--json"]).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    text.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["energy"].as_f64().expect("scored")).collect()
}

#[test]
fn every_format_gives_the_score_path_energy_for_the_same_picture() {
    // Four photos and four of their faults (not torn: a torn frame is judged below).
    let pictures = sample_pictures();
    let mut frames: Vec<RgbImage> = pictures.clone();
    for (i, f) in [Fault::Noise, Fault::Blur, Fault::OverExposed, Fault::CoveredLens].into_iter().enumerate() {
        frames.push(apply(f, &pictures[i], 100 + i as u64));
    }
    if emulated() {
        // Under qemu the model takes seconds a frame: two photos and two faults.
        frames = vec![frames[0].clone(), frames[1].clone(), frames[4].clone(), frames[7].clone()];
    }
    for fmt in FORMATS {
        let dir = tempfile::tempdir().unwrap();
        let mut input = Vec::new();
        for (i, img) in frames.iter().enumerate() {
            input.extend(encode(img, fmt, false));
            match fmt {
                // The very JPEG that was streamed.
                Fmt::Mjpeg => std::fs::write(dir.path().join(format!("{i:02}.jpg")), jpeg(img)).unwrap(),
                _ => seen(img, fmt).save(dir.path().join(format!("{i:02}.png"))).unwrap(),
            }
        }
        let mut args = vec!["--format", fmt.arg()];
        args.extend(size_args(fmt));
        let (code, lines, err) = stream(&args, input);
        assert_eq!(code, 0, "{}: {err}", fmt.arg());
        let got: Vec<f64> = of_type(&lines, "frame").iter().map(|l| l["energy"].as_f64().unwrap()).collect();
        let want = score_energies(dir.path());
        assert_eq!((got.len(), want.len()), (frames.len(), frames.len()), "{}", fmt.arg());
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            // The same model input; only the batch it ran in differs.
            assert!((g - w).abs() < 1e-4, "{} frame {i}: stream {g} vs score {w}", fmt.arg());
        }
        assert_eq!(summary(&lines)["frames"], frames.len());
    }
}

/// Independent k-of-n recount with hysteresis: the state after each frame.
fn recount(rejected: &[bool], n: usize, enter: usize, exit: usize) -> Vec<&'static str> {
    let mut state = "unknown";
    (0..rejected.len())
        .map(|i| {
            let r = rejected[i.saturating_sub(n - 1)..=i].iter().filter(|&&x| x).count();
            let full = i + 1 >= n;
            state = match state {
                "in_distribution" | "unknown" if r >= enter => "out_of_distribution",
                "out_of_distribution" if r <= exit => "in_distribution",
                "unknown" if full && r <= exit => "in_distribution",
                s => s,
            };
            state
        })
        .collect()
}

/// CIFAR-10 test pictures (the first `per_class` of each class), at 640x480.
fn cifar_pictures(data: &Path, per_class: usize) -> Vec<RgbImage> {
    let test = data.join("cifar10/test");
    let mut classes: Vec<_> = std::fs::read_dir(&test).unwrap().map(|e| e.unwrap().path()).collect();
    classes.sort();
    let mut out = Vec::new();
    for i in 0..per_class {
        for c in &classes {
            let mut files: Vec<_> = std::fs::read_dir(c).unwrap().map(|e| e.unwrap().path()).collect();
            files.sort();
            out.push(to_camera(&image::open(&files[i]).unwrap().to_rgb8()));
        }
    }
    out
}

#[test]
fn cifar_frames_with_camera_faults_flip_the_debounced_state_in_every_format() {
    let Some(data) = shared_data("cifar_frames_with_camera_faults_flip_the_debounced_state_in_every_format") else {
        return;
    };
    // 12 clean frames, then 6 of one fault, for each fault, then 12 clean frames.
    let clean = cifar_pictures(&data, 6);
    let mut seq: Vec<(RgbImage, Option<Fault>)> = Vec::new();
    let mut next = 0;
    let mut take_clean = |n: usize, seq: &mut Vec<_>| {
        for _ in 0..n {
            seq.push((clean[next % clean.len()].clone(), None));
            next += 1;
        }
    };
    for (k, fault) in FAULTS.into_iter().enumerate() {
        take_clean(12, &mut seq);
        for j in 0..6 {
            let base = &clean[(7 * k + j) % clean.len()];
            seq.push((apply(fault, base, (k * 100 + j) as u64), Some(fault)));
        }
    }
    take_clean(12, &mut seq);

    let (n, enter, exit) = (5usize, 3usize, 1usize);
    let mut failures = Vec::new();
    for fmt in FORMATS {
        let input: Vec<u8> = seq.iter().flat_map(|(img, f)| encode(img, fmt, *f == Some(Fault::Torn))).collect();
        let mut args = vec!["--format", fmt.arg(), "--window", "5", "--enter", "3", "--exit", "1"];
        args.extend(size_args(fmt));
        let (code, lines, err) = stream(&args, input);
        let frames = of_type(&lines, "frame");
        assert_eq!(frames.len(), seq.len(), "{}: {err}", fmt.arg());
        let rejected: Vec<bool> = frames.iter().map(|f| f["verdict"] == "out_of_distribution").collect();
        // The states and events follow the recount of the per-frame verdicts.
        let want = recount(&rejected, n, enter, exit);
        for (i, f) in frames.iter().enumerate() {
            assert_eq!(f["state"], want[i], "{} frame {i}", fmt.arg());
        }
        let changes: Vec<u64> = of_type(&lines, "event").iter().map(|e| e["frame"].as_u64().unwrap()).collect();
        let want_changes: Vec<u64> = (0..seq.len())
            .filter(|&i| want[i] != if i > 0 { want[i - 1] } else { "unknown" })
            .map(|i| i as u64)
            .collect();
        assert_eq!(changes, want_changes, "{}", fmt.arg());
        assert_eq!(code, if fmt == Fmt::Mjpeg { 1 } else { 0 }, "{}: {err}", fmt.arg());

        let mut report = format!("{:>8}", fmt.arg());
        let mut back = 0;
        for (k, fault) in FAULTS.into_iter().enumerate() {
            let block = 18 * k + 12..18 * k + 18;
            let r = block.clone().filter(|&i| rejected[i]).count();
            report += &format!("  {fault:?} {r}/6");
            // What the reference model sees at 32x32 (measured, 2026-12): a covered lens is
            // rejected every time, and a torn MJPEG frame is corrupt, so rejected; the feed
            // goes out of distribution within those blocks (asserted). Sensor noise is averaged
            // away by the 20x downscale; blur, exposure and a torn raw frame are rejected in
            // part. Whether the 12 clean frames after a block bring the state back depends on
            // how many of those pictures the model rejects after their trip through 640x480
            // (printed, not asserted: the debouncer's part is the recount above).
            let must_reject = fault == Fault::CoveredLens || (fault == Fault::Torn && fmt == Fmt::Mjpeg);
            if must_reject && (r != 6 || want[block.end - 1] != "out_of_distribution") {
                failures.push(format!("{} {fault:?}: {r}/6 rejected, state {}", fmt.arg(), want[block.end - 1]));
            }
            back += usize::from(want[block.end + 11] == "in_distribution");
        }
        let clean_rejected = (0..seq.len()).filter(|&i| seq[i].1.is_none() && rejected[i]).count();
        eprintln!(
            "{report}  clean {clean_rejected}/{}  back after {back} of {} faults",
            seq.iter().filter(|s| s.1.is_none()).count(),
            FAULTS.len()
        );
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Small rgb24 frames: `n` photos of 64x48 (the model resizes anything).
fn small_frames(n: usize) -> (Vec<u8>, usize) {
    let pics = sample_pictures();
    let small: Vec<RgbImage> =
        pics.iter().map(|p| image::imageops::resize(p, 64, 48, image::imageops::FilterType::Triangle)).collect();
    let len = small[0].as_raw().len();
    ((0..n).flat_map(|i| small[i % small.len()].as_raw().clone()).collect(), len)
}

#[test]
fn a_torn_last_frame_is_rejected_and_the_run_exits_1() {
    let (mut input, len) = small_frames(3);
    input.extend(vec![7u8; len / 2]);
    let (code, lines, err) = stream(&["--format", "rgb24", "--size", "64x48"], input);
    assert_eq!(code, 1, "{err}");
    let frames = of_type(&lines, "frame");
    assert_eq!(frames.len(), 4);
    assert_eq!(frames[3]["verdict"], "out_of_distribution");
    assert_eq!(frames[3]["reason"], "decode_error");
    let error = frames[3]["error"].as_str().unwrap();
    assert!(error.contains("ended inside a frame") && error.contains("check --size"), "{error}");
    let s = summary(&lines);
    assert_eq!((s["frames"].as_u64(), s["scored"].as_u64(), s["errors"].as_u64()), (Some(4), Some(3), Some(1)));
    assert_eq!(s["stopped"], "end_of_input");
}

#[test]
fn corrupt_mjpeg_frames_and_garbage_are_reported_and_the_stream_goes_on() {
    let pics = sample_pictures();
    let mut input = jpeg(&pics[0]);
    input.extend_from_slice(&[0xFF, 0xD8, 0x12, 0x34, 0x56]); // starts like a JPEG, then nonsense
    input.extend(jpeg(&pics[1]));
    input.extend_from_slice(b"stray bytes between frames");
    input.extend(jpeg(&pics[2]));
    // A JPEG whose marker structure is intact but whose image data is not a valid picture.
    let mut broken = jpeg(&pics[3]);
    let sos = broken.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
    broken.truncate(sos);
    broken.extend_from_slice(&[0xFF, 0xD9]);
    input.extend(broken);
    let (code, lines, err) = stream(&["--format", "mjpeg"], input);
    assert_eq!(code, 1, "{err}");
    let frames = of_type(&lines, "frame");
    let reasons: Vec<&str> = frames.iter().map(|f| f["reason"].as_str().unwrap()).collect();
    assert_eq!(frames.len(), 5, "{lines:?}");
    assert_eq!(reasons[1], "decode_error");
    assert!(frames[1]["error"].as_str().unwrap().contains("corrupt JPEG frame"), "{}", frames[1]);
    assert_eq!(reasons[4], "decode_error");
    for i in [0, 2, 3] {
        assert!(frames[i]["energy"].is_number(), "frame {i} was scored: {}", frames[i]);
    }
    let errors = of_type(&lines, "error");
    assert_eq!(errors.len(), 1);
    assert!(errors[0]["error"].as_str().unwrap().contains("26 bytes"), "{}", errors[0]);
    assert_eq!(summary(&lines)["errors"], 3);
}

#[test]
fn zero_length_input_gives_an_empty_summary_and_exit_0() {
    for fmt in ["rgb24", "mjpeg"] {
        let (code, lines, err) = stream(&["--format", fmt, "--size", "64x48"], Vec::new());
        assert_eq!(code, 0, "{err}");
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(summary(&lines)["frames"], 0);
        // Nothing was judged: the state is unknown, not in_distribution.
        assert_eq!(
            (summary(&lines)["state"].as_str(), summary(&lines)["state_changes"].as_u64()),
            (Some("unknown"), Some(0))
        );
        assert!(err.contains("0 frames"), "{err}");
    }
}

#[test]
fn the_summary_counts_alarms_and_gives_the_expected_false_alarms_of_alpha_and_window() {
    // Flat frames of 12 gray levels (some rejected at alpha 0.1, some not), 3 times over.
    let frames: Vec<u8> = (0..36u32).flat_map(|i| vec![(i % 12 * 21) as u8; 64 * 48 * 3]).collect();
    let args = ["--format", "rgb24", "--size", "64x48", "--alpha", "0.1", "--window", "4", "--enter", "2"];
    let (code, lines, err) = stream(&args, frames);
    assert!(code == 0, "{err}");
    let s = summary(&lines);
    let into_out = of_type(&lines, "event").iter().filter(|e| e["state"] == "out_of_distribution").count() as u64;
    assert_eq!(s["alarms"].as_u64(), Some(into_out), "{s}");
    // Plain 2-of-4 at p = 0.1: C(3,1) p^2 (1-p)^3 per frame (Naus 1982).
    let per_frame = 3.0 * 0.01 * 0.9f64.powi(3);
    let m = &s["alarm_model"];
    assert_eq!(
        (m["method"].as_str(), m["alpha"].as_f64().map(|a| (a * 1e6).round())),
        (Some("closed_form"), Some(1e5))
    );
    assert!((m["expected_alarms"].as_f64().unwrap() - 36.0 * per_frame).abs() < 1e-6, "{m}");
    assert!((m["frames_per_alarm"].as_f64().unwrap() - 1.0 / per_frame).abs() < 1e-3, "{m}");
    assert!(err.contains("false alarm about once per 46 frames"), "{err}");
    // A bare threshold has no alpha: no model.
    let (_, lines, _) = stream(&["--format", "rgb24", "--size", "64x48", "--threshold", "1000"], vec![9; 64 * 48 * 3]);
    assert!(summary(&lines)["alarm_model"].is_null(), "{lines:?}");
}

#[test]
fn a_closed_stdout_stops_the_run_with_exit_141() {
    // Enough frames that the output outgrows the pipe while nobody reads it.
    let (input, _) = small_frames(3000);
    let mut child = spawn(&["--format", "rgb24", "--size", "64x48"]);
    let mut stdin = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    assert!(first.contains("\"frame\""), "{first}");
    drop(stdout); // the reader goes away, as `| head -1` does
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(141), "{err}");
    assert!(err.contains("output closed"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

fn stop_with(signal: &str, code: i32) {
    let (input, _) = small_frames(20);
    let mut child = spawn(&["--format", "rgb24", "--size", "64x48"]);
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&input).unwrap(); // and keep stdin open: a live feed that has paused
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut seen = 0;
    let mut line = String::new();
    while seen < 20 {
        line.clear();
        assert!(stdout.read_line(&mut line).unwrap() > 0, "output ended early");
        seen += usize::from(line.contains("\"type\":\"frame\""));
    }
    let status = Command::new("kill").args([&format!("-{signal}"), &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    let out = child.wait_with_output().unwrap();
    drop(stdin);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{signal}: {err}");
    let last: Value = serde_json::from_str(rest.lines().last().expect("a summary line")).unwrap();
    assert_eq!(last["type"], "summary");
    assert_eq!(last["stopped"], "signal");
    assert_eq!(last["signal"], signal);
    assert_eq!(last["frames"], 20);
    assert!(err.contains(&format!("stopped by {signal}")), "{err}");
}

#[test]
fn sigterm_stops_a_paused_feed_with_a_summary_and_exit_143() {
    stop_with("SIGTERM", 143);
}

#[test]
fn sigint_stops_a_paused_feed_with_a_summary_and_exit_130() {
    stop_with("SIGINT", 130);
}

#[test]
fn rejected_frames_are_saved_up_to_max_saved_and_every_n_thins_frame_lines() {
    let pics = sample_pictures();
    let covered: Vec<RgbImage> = (0..5).map(|i| apply(Fault::CoveredLens, &pics[0], i)).collect();
    let input: Vec<u8> = covered.iter().flat_map(|c| c.as_raw().clone()).collect();
    let dir = tempfile::tempdir().unwrap();
    let save = dir.path().join("rejected");
    // A file that is not a saved frame is left alone.
    std::fs::create_dir_all(&save).unwrap();
    std::fs::write(save.join("notes.txt"), "mine").unwrap();
    let run = |max: &str, every: &str| {
        let args = ["--format", "rgb24", "--size", "640x480", "--save-rejected", save.to_str().unwrap()];
        let mut args = args.to_vec();
        args.extend(["--max-saved", max, "--every", every]);
        stream(&args, input.clone())
    };
    let saved = || {
        let mut v: Vec<_> = std::fs::read_dir(&save)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "png"))
            .collect();
        v.sort();
        v
    };
    let (code, lines, err) = run("2", "2");
    assert_eq!(code, 0, "{err}");
    let frames = of_type(&lines, "frame");
    assert_eq!(frames.iter().map(|f| f["frame"].as_u64().unwrap()).collect::<Vec<_>>(), [0, 2, 4]);
    assert_eq!(of_type(&lines, "event").len(), 1, "the state change is printed though frame 2 ... ");
    // The first 2 rejected frames are saved, named by time and index.
    let s = summary(&lines);
    assert_eq!((s["rejected"].as_u64(), s["saved"].as_u64()), (Some(5), Some(2)));
    let first = saved();
    assert_eq!(first.len(), 2);
    for (i, p) in first.iter().enumerate() {
        assert_eq!(image::open(p).unwrap().to_rgb8(), covered[i], "{}", p.display());
        let name = p.file_name().unwrap().to_str().unwrap();
        assert!(name.ends_with(&format!("-{i:09}.png")), "{name}");
        assert!(name.len() == 34 && &name[8..9] == "T" && &name[19..20] == "Z", "{name}");
    }
    // A restart with the same frame indices: nothing is overwritten (2 + 5 files).
    let (code, _, err) = run("5", "1");
    assert_eq!(code, 0, "{err}");
    let second = saved();
    assert_eq!(second.len(), 7, "{second:?}");
    assert!(first.iter().all(|f| second.contains(f)), "{first:?} {second:?}");
    for (p, want) in first.iter().zip(&covered) {
        assert_eq!(image::open(p).unwrap().to_rgb8(), *want, "{}", p.display());
    }
    assert!(save.join("notes.txt").exists());
}

#[test]
fn bad_stream_arguments_exit_2_with_a_clear_message() {
    let cases: [(&[&str], &str); 6] = [
        (&["--format", "rgb24"], "needs --size"),
        (&["--format", "rgb24", "--size", "100000x100000"], "more than the limit"),
        (&["--format", "mjpeg", "--max-saved", "3"], "--save-rejected"),
        (&["--format", "nv12", "--size", "640x480", "--stride", "600"], "a stride of 600 bytes is less than the 640"),
        (&["--format", "rgb48", "--size", "64x48"], "unknown pixel format"),
        (&["--format", "rgb24", "--size", "64x48", "--window", "3", "--enter", "4"], "exit < enter <= n"),
    ];
    for (args, want) in cases {
        let (code, _, err) = stream(args, Vec::new());
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    // A model without a gate has nothing to debounce.
    let dir = tempfile::tempdir().unwrap();
    let onnx = dir.path().join("model.onnx");
    std::fs::copy(root().join("models/cifar10-airnet/model.onnx"), &onnx).unwrap();
    let (code, _, err) = stream_model(&onnx, &["--format", "mjpeg"], Vec::new());
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("needs a gate") && err.contains("--threshold") && !err.contains("--alpha"), "{err}");
}

#[test]
fn a_fixed_batch_model_streams_with_padded_batches_and_matches_onnxruntime() {
    // tests/data/tiny_fixed_batch4.onnx takes exactly [4, 3, 32, 32]; three 32x32 frames arrive,
    // so its batches are padded. Energies at T = 1 against onnxruntime's logits.
    let doc = crate::common::read_json("tests/data/tiny_fixed_batch4.json");
    let mut input = Vec::new();
    for f in doc["frames"].as_array().unwrap() {
        input.extend(image::open(root().join(f.as_str().unwrap())).unwrap().to_rgb8().into_raw());
    }
    let model = root().join("tests/data/tiny_fixed_batch4.onnx");
    let args = ["--format", "rgb24", "--size", "32x32", "--threshold", "0", "--batch", "8"];
    let (code, lines, err) = stream_model(&model, &args, input);
    assert_eq!(code, 0, "{err}");
    let frames = of_type(&lines, "frame");
    assert_eq!(frames.len(), 3);
    for (f, z) in frames.iter().zip(doc["ort_logits"].as_array().unwrap()) {
        let z: Vec<f64> = z.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let want = -(m + z.iter().map(|v| (v - m).exp()).sum::<f64>().ln());
        let got = f["energy"].as_f64().unwrap();
        assert!((got - want).abs() < 1e-4, "energy {got} vs onnxruntime {want}");
        assert_eq!(f["verdict"], if got > 0.0 { "out_of_distribution" } else { "in_distribution" });
    }
}

#[test]
fn lines_carry_wall_clock_and_monotonic_time_and_heartbeats_come_while_frames_do_not() {
    // 3 frames; once the gate has judged them, a pause of 1.6 s; 3 more; --summary-every 0.5.
    let before = std::time::SystemTime::now();
    let frames: Vec<Vec<u8>> = (0..6u8).map(|i| vec![40 + 20 * i; 64 * 48 * 3]).collect();
    let lines = paused_feed(&["--summary-every", "0.5"], &frames, 3, 1600);
    let after = std::time::SystemTime::now();
    // Every line has an RFC 3339 UTC time within the run and a monotonic offset that never goes back.
    let mut last = 0.0;
    for l in &lines {
        let text = l["time"].as_str().unwrap_or_else(|| panic!("no time: {l}"));
        assert!(text.ends_with('Z'), "{text}");
        let t = humantime::parse_rfc3339(text).unwrap();
        // Milliseconds: the time is truncated, so allow 1 ms before `before`.
        assert!(t + std::time::Duration::from_millis(1) >= before && t <= after, "{text}");
        let m = l["monotonic_s"].as_f64().unwrap();
        assert!(m >= last, "{m} after {last}: {l}");
        last = m;
    }
    assert_eq!(of_type(&lines, "frame").len(), 6);
    let s = summary(&lines);
    assert_eq!((s["final"].as_bool(), s["frames"].as_u64()), (Some(true), Some(6)), "{s}");
    let beats: Vec<&Value> = of_type(&lines, "summary").into_iter().filter(|l| l["final"] == false).collect();
    assert!(beats.len() >= 2, "{} heartbeats", beats.len());
    assert!(beats.iter().all(|b| b["stopped"].is_null() && b["state"].is_string()), "{beats:?}");
    // During the pause the gate had judged the first 3 frames and no more: heartbeats came with
    // no frame coming (at 0.5 s intervals over 1.6 s).
    assert!(beats.iter().filter(|b| b["frames"] == 3).count() >= 2, "{beats:?}");
}

#[test]
fn a_stalled_feed_switches_to_stalled_and_the_next_frames_start_a_new_window() {
    // 2 frames; once judged, no frame for 2 s with --stall-timeout 0.8; then 6 frames.
    let frames: Vec<Vec<u8>> = (0..8u8).map(|i| vec![30 + 20 * i; 64 * 48 * 3]).collect();
    let lines = paused_feed(&["--stall-timeout", "0.8"], &frames, 2, 2000);
    let changes: Vec<(u64, &str, &str)> = of_type(&lines, "event")
        .iter()
        .map(|e| (e["frame"].as_u64().unwrap(), e["from"].as_str().unwrap(), e["state"].as_str().unwrap()))
        .collect();
    // Stalled after the 2 frames (unknown: less than a window); frame 2 starts a new window
    // (unknown again), and frame 6 fills it: in distribution. (Under an emulator the first
    // frame itself may come later than the timeout: a stall and its end before it are allowed.)
    let want = [(2, "unknown", "stalled"), (2, "stalled", "unknown"), (6, "unknown", "in_distribution")];
    assert!(changes.len() >= 3 && changes[changes.len() - 3..] == want, "{lines:?}");
    if !emulated() {
        assert_eq!(changes, want, "{lines:?}");
    }
    let stalls = changes.iter().filter(|c| c.2 == "stalled").count() as u64;
    let s = summary(&lines);
    assert_eq!(
        (s["stalls"].as_u64(), s["state_changes"].as_u64(), s["state"].as_str()),
        (Some(stalls), Some(changes.len() as u64), Some("in_distribution"))
    );
}

#[cfg(unix)]
#[test]
fn under_systemd_the_gate_says_ready_and_pings_the_watchdog_only_while_frames_come() {
    use std::os::unix::net::UnixDatagram;
    use std::time::{Duration, Instant};
    // systemd's side of sd_notify(3): a datagram socket named by NOTIFY_SOCKET; WATCHDOG_USEC
    // asks for pings (every half of it: 0.2 s here).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket.set_read_timeout(Some(std::time::Duration::from_millis(200))).unwrap();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let listener = {
        let done = std::sync::Arc::clone(&done);
        std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                match socket.recv(&mut buf) {
                    Ok(n) => got.push((String::from_utf8_lossy(&buf[..n]).trim_end().to_string(), Instant::now())),
                    Err(_) if done.load(std::sync::atomic::Ordering::SeqCst) => return got,
                    Err(_) => {}
                }
            }
        })
    };
    // 3 frames, no frame for 1.5 s (stalled at 0.5 s), 3 frames.
    let frames: Vec<Vec<u8>> = (0..6u8).map(|i| vec![30 + 20 * i; 64 * 48 * 3]).collect();
    let env = [("NOTIFY_SOCKET", path.as_os_str()), ("WATCHDOG_USEC", std::ffi::OsStr::new("400000"))];
    let lines = paused_feed_env(&["--stall-timeout", "0.5"], &frames, 3, 1500, &env);
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let timed = listener.join().unwrap();
    let got: Vec<&str> = timed.iter().map(|(m, _)| m.as_str()).collect();
    assert_eq!(of_type(&lines, "frame").len(), 6);
    // READY=1 first (with a status), STOPPING=1 last.
    assert!(got.first().is_some_and(|m| m.lines().any(|l| l == "READY=1")), "{got:?}");
    assert_eq!(got.last(), Some(&"STOPPING=1"), "{got:?}");
    let pings: Vec<Instant> = timed.iter().filter(|(m, _)| m == "WATCHDOG=1").map(|&(_, t)| t).collect();
    // The state changes as status lines.
    let stalled = got.iter().position(|m| m.starts_with("STATUS=state stalled")).unwrap_or_else(|| panic!("{got:?}"));
    assert!(got[stalled..].iter().any(|m| m.starts_with("STATUS=state unknown")), "{got:?}");
    // Pings before the stall, and after the frames came back, but none for the second the feed
    // was stalled (stalled 0.5 s into the 1.5 s pause).
    let t = timed[stalled].1;
    assert!(pings.iter().any(|&p| p < t) && pings.iter().any(|&p| p > t), "{got:?}");
    assert!(!pings.iter().any(|&p| p > t && p - t < Duration::from_millis(600)), "{timed:?}");
}

/// Streams 64x48 rgb24 `frames` (accepted: `--threshold 1000`) with `extra` flags: the first
/// `first`, then, once the gate has printed their lines, a pause of `pause_ms`, then the rest;
/// every line printed. The run must end with exit 0.
fn paused_feed(extra: &[&str], frames: &[Vec<u8>], first: usize, pause_ms: u64) -> Vec<Value> {
    paused_feed_env(extra, frames, first, pause_ms, &[])
}

/// [`paused_feed`] with environment variables set for the gate.
fn paused_feed_env(
    extra: &[&str],
    frames: &[Vec<u8>],
    first: usize,
    pause_ms: u64,
    env: &[(&str, &std::ffi::OsStr)],
) -> Vec<Value> {
    let model = bundle();
    let mut args = vec!["stream", model.to_str().unwrap(), "--format", "rgb24", "--size", "64x48"];
    args.extend_from_slice(&["--threshold", "1000"]);
    args.extend_from_slice(extra);
    let mut cmd = ebm_gate();
    cmd.args(&args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    for f in &frames[..first] {
        stdin.write_all(f).unwrap();
    }
    stdin.flush().unwrap();
    let mut lines: Vec<Value> = Vec::new();
    while lines.iter().filter(|l| l["type"] == "frame").count() < first {
        let mut line = String::new();
        assert!(stdout.read_line(&mut line).unwrap() > 0, "the stream ended early");
        lines.push(serde_json::from_str(&line).unwrap());
    }
    std::thread::sleep(std::time::Duration::from_millis(pause_ms));
    for f in &frames[first..] {
        stdin.write_all(f).unwrap();
    }
    drop(stdin);
    for line in stdout.lines() {
        lines.push(serde_json::from_str(&line.unwrap()).unwrap());
    }
    assert!(child.wait().unwrap().success());
    lines
}

/// Runs `ebm-gate capture` with `input` on stdin.
fn capture(args: &[&str], input: Vec<u8>) -> (i32, String, String) {
    let mut child = ebm_gate()
        .arg("capture")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A fixed camera on one of the sample photos: a 96x72 window shaking by up to 4 pixels, a
/// gain flickering by 3%, sensor noise of 2 levels (seeded by `i`).
fn camera_view(photo: &RgbImage, i: u64) -> RgbImage {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(1000 + i);
    let (dx, dy) = (rng.random_range(0..9u32), rng.random_range(0..9u32));
    let gain = 1.0 + 0.03 * gauss(&mut rng);
    let crop = image::imageops::crop_imm(photo, 100 + dx, 80 + dy, 384, 288).to_image();
    let mut img = image::imageops::resize(&crop, 96, 72, image::imageops::FilterType::Triangle);
    for p in img.pixels_mut() {
        for c in p.0.iter_mut() {
            *c = clip(*c as f32 * gain + 2.0 * gauss(&mut rng));
        }
    }
    img
}

#[test]
fn capture_saves_every_nth_frame_that_decodes_and_calibrate_takes_the_folder() {
    let photo = sample_pictures().remove(0);
    let dir = tempfile::tempdir().unwrap();
    // 12 raw frames, every 3rd saved: frames 0, 3, 6, 9, byte for byte.
    let frames: Vec<RgbImage> = (0..12).map(|i| camera_view(&photo, i)).collect();
    let raw: Vec<u8> = frames.iter().flat_map(|f| f.as_raw().clone()).collect();
    let out = dir.path().join("raw");
    let o = out.to_str().unwrap();
    let (code, stdout, stderr) = capture(&["--format", "rgb24", "--size", "96x72", "--every", "3", "--out", o], raw);
    assert_eq!(code, 0, "{stderr}");
    let saved: Vec<&str> = stdout.lines().collect();
    assert_eq!(saved.len(), 4, "{stdout}{stderr}");
    for (k, path) in saved.iter().enumerate() {
        let name = Path::new(path).file_name().unwrap().to_str().unwrap();
        assert!(name.ends_with(&format!("-{:09}.png", 3 * k)) && name.starts_with("20"), "{name}");
        assert_eq!(image::open(path).unwrap().to_rgb8(), frames[3 * k], "{name}");
    }
    assert!(stderr.contains("12 frames read, 4 saved, 0 not saved"), "{stderr}");

    // MJPEG with a corrupt frame where one is due: not saved, counted, the run goes on; --count stops it.
    let mut mjpeg = Vec::new();
    for (i, f) in frames.iter().enumerate() {
        let mut j = jpeg(f);
        if i == 2 {
            // Marker structure intact, no image data: cut at the start of scan.
            let sos = j.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
            j.truncate(sos);
            j.extend_from_slice(&[0xFF, 0xD9]);
        }
        mjpeg.extend(j);
    }
    let out2 = dir.path().join("mjpeg");
    let args = ["--format", "mjpeg", "--every", "2", "--count", "3", "--out", out2.to_str().unwrap()];
    let (code, stdout, stderr) = capture(&args, mjpeg);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.lines().count(), 3, "{stdout}{stderr}");
    let ok = ["-000000000.png", "-000000004.png", "-000000006.png"].iter().all(|n| stdout.contains(n));
    assert!(ok, "{stdout}{stderr}");
    assert!(stderr.contains("1 not saved"), "{stderr}");

    // 40 frames of the same camera calibrate a gate that accepts the camera's next frames.
    let feed: Vec<u8> = (100..140).flat_map(|i| camera_view(&photo, i).into_raw()).collect();
    let calib = dir.path().join("calib");
    let args = ["--format", "rgb24", "--size", "96x72", "--every", "1", "--out", calib.to_str().unwrap()];
    let (code, _, stderr) = capture(&args, feed);
    assert_eq!(code, 0, "{stderr}");
    let b = dir.path().join("bundle");
    std::fs::create_dir(&b).unwrap();
    for f in ["model.onnx", "gate.json"] {
        std::fs::copy(bundle().join(f), b.join(f)).unwrap();
    }
    let out = ebm_gate()
        .args(["calibrate", b.to_str().unwrap(), "--id", calib.to_str().unwrap(), "--holdout", "0"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let next: Vec<u8> = (200..210).flat_map(|i| camera_view(&photo, i).into_raw()).collect();
    let (code, lines, err) = stream_model(&b, &["--format", "rgb24", "--size", "96x72"], next);
    assert_eq!(code, 0, "{err}");
    let rejected = of_type(&lines, "frame").iter().filter(|f| f["verdict"] == "out_of_distribution").count();
    assert!(rejected <= 2, "{rejected} of 10 new frames of the calibrated camera rejected: {lines:?}");
    assert_eq!(summary(&lines)["state"], "in_distribution");
}
