//! Frame-health scores under one guarantee, end to end: `calibrate --scores all` on a folder of
//! synthetic camera frames (the shipped sample pictures framed at 320x240 with seeded sensor
//! noise and exposure jitter), then `score` on new clean frames and on seeded faults made at full
//! resolution, and `stream` on a frozen feed.

use std::path::Path;

use image::RgbImage;
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use serde_json::Value;

use crate::common::{bundle, ebm_gate};

const W: u32 = 320;
const H: u32 = 240;

fn gauss(rng: &mut Xoshiro256PlusPlus) -> f32 {
    let (u1, u2): (f32, f32) = (rng.random_range(f32::EPSILON..1.0), rng.random());
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

fn clip(v: f32) -> u8 {
    v.round().clamp(0.0, 255.0) as u8
}

/// A clean camera frame: one of the sample pictures scaled to cover 360x270, a 320x240 crop at
/// a seeded offset, a gain in [0.9, 1.1] and sensor noise of 2 levels.
fn camera_frame(seed: u64) -> RgbImage {
    let names = ["chelsea.png", "coffee.png", "astronaut.png", "horse.png"];
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let pic = image::open(bundle().join("samples").join(names[(seed % 4) as usize])).unwrap().to_rgb8();
    let big = image::imageops::resize(&pic, 360, 270, image::imageops::FilterType::Triangle);
    let (x0, y0) = (rng.random_range(0..=40u32), rng.random_range(0..=30u32));
    let gain: f32 = rng.random_range(0.9..1.1);
    RgbImage::from_fn(W, H, |x, y| {
        let p = big.get_pixel(x0 + x, y0 + y).0;
        image::Rgb(p.map(|c| clip(c as f32 * gain + 2.0 * gauss(&mut rng))))
    })
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    Noise,
    Blur,
    OverExposed,
    UnderExposed,
    CoveredLens,
}

fn fault(f: Fault, clean: &RgbImage, seed: u64) -> RgbImage {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    match f {
        Fault::Noise => RgbImage::from_fn(W, H, |x, y| {
            image::Rgb(clean.get_pixel(x, y).0.map(|c| clip(c as f32 + 25.0 * gauss(&mut rng))))
        }),
        Fault::Blur => image::imageops::blur(clean, 3.0),
        Fault::OverExposed => {
            RgbImage::from_fn(W, H, |x, y| image::Rgb(clean.get_pixel(x, y).0.map(|c| clip(c as f32 * 3.0))))
        }
        Fault::UnderExposed => {
            RgbImage::from_fn(W, H, |x, y| image::Rgb(clean.get_pixel(x, y).0.map(|c| clip(c as f32 * 0.2))))
        }
        Fault::CoveredLens => RgbImage::from_fn(W, H, |_, _| {
            let v = 6.0 + 2.0 * gauss(&mut rng);
            image::Rgb([clip(v), clip(v), clip(v + 1.0)])
        }),
    }
}

fn run(args: &[&str]) -> (i32, String, String) {
    let out = ebm_gate().args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// Runs `ebm-gate` with `args`, `feed` on its stdin; the lines it printed, parsed.
fn stream_raw(args: &[&str], feed: &[u8]) -> Vec<Value> {
    let mut child = ebm_gate()
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(feed).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.code().is_some(), "{}", String::from_utf8_lossy(&out.stderr));
    records(&String::from_utf8_lossy(&out.stdout))
}

fn copy_bundle(to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in ["model.onnx", "gate.json"] {
        std::fs::copy(bundle().join(f), to.join(f)).unwrap();
    }
}

fn records(stdout: &str) -> Vec<Value> {
    stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn calibrated_health_scores_reject_camera_faults_and_keep_clean_frames() {
    let dir = tempfile::tempdir().unwrap();
    let b = dir.path().join("bundle");
    copy_bundle(&b);
    let clean = dir.path().join("clean");
    std::fs::create_dir_all(&clean).unwrap();
    for i in 0..200u64 {
        camera_frame(i).save(clean.join(format!("frame{i:04}.png"))).unwrap();
    }
    let (code, out, err) = run(&[
        "calibrate",
        b.to_str().unwrap(),
        "--id",
        clean.to_str().unwrap(),
        "--scores",
        "all",
        "--holdout",
        "0.25",
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains(
            "energy, sharpness, noise_sigma, dark_fraction, bright_fraction, mean_luma, luma_p99, colour_cast combined"
        ),
        "{out}"
    );
    let gate: Value = serde_json::from_str(&std::fs::read_to_string(b.join("gate.json")).unwrap()).unwrap();
    crate::init::assert_valid_gate_json(&b);
    let scores = &gate["scores"];
    assert_eq!(scores["used"].as_array().unwrap().len(), 8);
    assert_eq!(scores["version"], 2);
    let (n_a, n_b) = (
        scores["fit"]["sharpness"]["values"].as_array().unwrap().len(),
        scores["combine"]["sharpness"].as_array().unwrap().len(),
    );
    assert_eq!(n_a + n_b, gate["provenance"]["n"].as_u64().unwrap() as usize);
    // The per-score values are the frames' health scores: 2 levels of independent noise per
    // channel, which Immerkaer's estimate on the green channel's flattest blocks sees in the
    // median frame (a little under: the lowest tenth of the blocks; clipped regions lower it).
    let noise = median(&scores["fit"]["noise_sigma"]["values"]);
    assert!((1.1..2.5).contains(&noise), "median calibration noise_sigma {noise}");

    // New clean frames and faults, made at full resolution.
    let test = dir.path().join("test");
    std::fs::create_dir_all(test.join("clean")).unwrap();
    let faults = [Fault::Noise, Fault::Blur, Fault::OverExposed, Fault::UnderExposed, Fault::CoveredLens];
    for i in 0..40u64 {
        camera_frame(10_000 + i).save(test.join("clean").join(format!("clean{i:03}.png"))).unwrap();
    }
    for (k, f) in faults.iter().enumerate() {
        let name = format!("{f:?}").to_lowercase();
        std::fs::create_dir_all(test.join(&name)).unwrap();
        for j in 0..8u64 {
            let base = camera_frame(20_000 + 100 * k as u64 + j);
            fault(*f, &base, j).save(test.join(&name).join(format!("{name}{j}.png"))).unwrap();
        }
    }
    let (code, out, err) = run(&["score", b.to_str().unwrap(), test.to_str().unwrap(), "--json"]);
    assert_eq!(code, 1, "{err}");
    // The summary names the rule in force: the combined gate, not the energy's threshold.
    assert!(err.contains("luma_p99, colour_cast combined: reject combined p <= 0.05 (combined score >"), "{err}");
    let recs = records(&out);
    assert_eq!(recs.len(), 80);
    let rejected = |prefix: &str| {
        recs.iter()
            .filter(|r| {
                Path::new(r["path"].as_str().unwrap()).file_name().unwrap().to_str().unwrap().starts_with(prefix)
            })
            .filter(|r| r["verdict"] == "out_of_distribution")
            .count()
    };
    // Clean frames: at most alpha on average; 40 frames, so allow the binomial spread.
    assert!(rejected("clean") <= 6, "clean frames rejected: {}", rejected("clean"));
    for f in faults {
        let name = format!("{f:?}").to_lowercase();
        assert_eq!(rejected(&name), 8, "{name}: {} of 8 rejected", rejected(&name));
    }
    // Every record carries the health scores, each score's p-value and the combined p-value;
    // the reason names the score that rejected the frame.
    for r in &recs {
        assert!(r["health"]["sharpness"].is_number() && r["p_values"]["noise_sigma"].is_number(), "{r}");
        let p = r["p_value"].as_f64().unwrap();
        let by = r["rejected_by"].as_array().unwrap();
        if r["verdict"] == "out_of_distribution" {
            assert!(p <= 0.05 && !by.is_empty(), "{r}");
            let first = by[0].as_str().unwrap();
            assert_eq!(r["reason"].as_str().unwrap(), format!("{first}_p_value_at_or_below_alpha"));
        } else {
            assert!(p > 0.05 && by.is_empty(), "{r}");
        }
    }
    let reasons = |prefix: &str| -> Vec<String> {
        recs.iter()
            .filter(|r| {
                Path::new(r["path"].as_str().unwrap()).file_name().unwrap().to_str().unwrap().starts_with(prefix)
            })
            .flat_map(|r| {
                r["rejected_by"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect::<Vec<_>>()
            })
            .collect()
    };
    assert!(reasons("noise").iter().any(|r| r == "noise_sigma"), "{:?}", reasons("noise"));
    assert!(reasons("blur").iter().any(|r| r == "sharpness"), "{:?}", reasons("blur"));
    assert!(
        reasons("overexposed").iter().any(|r| r == "bright_fraction" || r == "mean_luma"),
        "{:?}",
        reasons("overexposed")
    );
    assert!(reasons("coveredlens").iter().any(|r| r == "dark_fraction"), "{:?}", reasons("coveredlens"));

    // eval reports the same verdicts per set, combined and per score.
    let json = dir.path().join("eval.json");
    let mut args = vec![
        "eval".to_string(),
        b.display().to_string(),
        "--id".into(),
        test.join("clean").display().to_string(),
        "--json".into(),
        json.display().to_string(),
    ];
    for f in faults {
        let name = format!("{f:?}").to_lowercase();
        args.extend(["--ood".into(), format!("{name}={}", test.join(&name).display())]);
    }
    let (code, out, err) = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("rejected by the gate, combined and per score"), "{out}");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let rows = report["scores_rejection"].as_array().unwrap();
    assert_eq!(rows.len(), 1 + faults.len());
    assert_eq!(rows[0]["set"], "ID");
    assert_eq!(rows[0]["rejected"].as_f64().unwrap(), rejected("clean") as f64 / 40.0);
    let share = |row: &Value, score: &str| {
        row["by_score"].as_array().unwrap().iter().find(|s| s["score"] == score).unwrap()["rejected"].as_f64().unwrap()
    };
    for (row, want) in rows[1..].iter().zip(["noise_sigma", "sharpness", "", "", "dark_fraction"]) {
        assert_eq!(row["rejected"], 1.0, "{row}");
        if !want.is_empty() {
            assert!(share(row, want) > 0.0, "{row}");
        }
    }

    // stream on a raw feed from the same camera: 15 clean frames, then 10 noisy, 10 blurred and
    // 10 over-exposed ones, then 10 clean again. Every fault frame is rejected, and the debounced
    // state (window 5, enter 3, exit 2) goes out of distribution by the third fault frame and
    // comes back by the third clean one (when at most 2 of the window are rejected).
    let mut feed = Vec::new();
    let mut want = Vec::new();
    for i in 0..55u64 {
        let clean = camera_frame(30_000 + i);
        let (frame, faulty) = match i {
            15..25 => (fault(Fault::Noise, &clean, i), true),
            25..35 => (fault(Fault::Blur, &clean, i), true),
            35..45 => (fault(Fault::OverExposed, &clean, i), true),
            _ => (clean, false),
        };
        feed.extend_from_slice(frame.as_raw());
        want.push(faulty);
    }
    let lines = stream_raw(&["stream", b.to_str().unwrap(), "--format", "rgb24", "--size", "320x240"], &feed);
    let frames: Vec<&Value> = lines.iter().filter(|l| l["type"] == "frame").collect();
    assert_eq!(frames.len(), 55);
    let rejected: Vec<bool> = frames.iter().map(|f| f["verdict"] == "out_of_distribution").collect();
    assert!((15..45).all(|i| rejected[i]), "{rejected:?}");
    assert!(rejected.iter().zip(&want).filter(|(r, w)| **r && !**w).count() <= 4, "{rejected:?}");
    let changes: Vec<(u64, String)> = lines
        .iter()
        .filter(|l| l["event"] == "state_change")
        .map(|l| (l["frame"].as_u64().unwrap(), l["state"].as_str().unwrap().to_string()))
        .collect();
    let to_ood = changes.iter().find(|(_, s)| s == "out_of_distribution").expect("a change to out_of_distribution");
    assert!((15..18).contains(&to_ood.0), "{changes:?}");
    let back = changes.iter().rev().find(|(_, s)| s == "in_distribution").expect("a change back");
    assert!((45..48).contains(&back.0), "{changes:?}");

    // Values fitted with other score definitions are refused, with the command to run.
    let mut old = gate.clone();
    old["scores"].as_object_mut().unwrap().remove("version");
    std::fs::write(b.join("gate.json"), serde_json::to_string(&old).unwrap()).unwrap();
    let (code, _, err) = run(&["score", b.to_str().unwrap(), test.join("clean").to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("version 1 of the score definitions") && err.contains("calibrate --scores"), "{err}");
    std::fs::write(b.join("gate.json"), serde_json::to_string(&gate).unwrap()).unwrap();

    // --scores energy at run time: the plain energy gate again (no combined fields).
    let (_, out, _) = run(&[
        "score",
        b.to_str().unwrap(),
        test.join("noise/noise0.png").to_str().unwrap(),
        "--json",
        "--scores",
        "energy",
    ]);
    let r = &records(&out)[0];
    assert!(r.get("rejected_by").is_none() && r.get("p_values").is_none(), "{r}");
}

/// The median of an ascending JSON array.
fn median(v: &Value) -> f64 {
    let a = v.as_array().unwrap();
    a[a.len() / 2].as_f64().unwrap()
}

#[test]
fn scores_without_fitted_health_values_are_refused_with_the_command_to_run() {
    let (code, _, err) = run(&[
        "score",
        bundle().to_str().unwrap(),
        bundle().join("samples").to_str().unwrap(),
        "--scores",
        "energy,sharpness",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--scores energy,sharpness") && err.contains("ebm-gate calibrate"), "{err}");
    let (code, _, err) = run(&["score", bundle().to_str().unwrap(), "--scores", "sharpnes"]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown score \"sharpnes\""), "{err}");
}

#[test]
fn a_frozen_feed_is_rejected_after_frozen_after_repeats() {
    // 6 different frames, then one frame 12 times, raw rgb24 at 320x240.
    let mut input = Vec::new();
    for i in 0..6u64 {
        input.extend_from_slice(camera_frame(i).as_raw());
    }
    let still = camera_frame(99);
    for _ in 0..12 {
        input.extend_from_slice(still.as_raw());
    }
    let lines = stream_raw(
        &[
            "stream",
            bundle().to_str().unwrap(),
            "--format",
            "rgb24",
            "--size",
            "320x240",
            "--frozen-after",
            "4",
            "--threshold",
            "1000",
        ],
        &input,
    );
    let frames: Vec<&Value> = lines.iter().filter(|l| l["type"] == "frame").collect();
    assert_eq!(frames.len(), 18);
    // Frame 6 is the first of the still run (different from frame 5), frames 7.. repeat it:
    // the 4th repeat (frame 10) and later are frozen; the threshold of 1000 accepts the rest.
    for (i, f) in frames.iter().enumerate() {
        let diff = f["frame_difference"].as_f64();
        if i == 0 {
            assert!(diff.is_none(), "{f}");
        } else if i >= 7 {
            assert_eq!(diff, Some(0.0), "{f}");
        } else {
            assert!(diff.unwrap() > 0.1, "{f}");
        }
        let want = if i >= 10 { "frozen_frame" } else { "within_threshold" };
        assert_eq!(f["reason"], want, "frame {i}: {f}");
    }
}

#[test]
fn two_capture_sessions_in_two_subfolders_are_each_split_over_both_halves() {
    // A calibration folder as the README's deployment path makes it: calib/morning and
    // calib/evening. With fewer than 8 subfolders, frames are split one by one, so every seed
    // gives both halves frames of both sessions (by subfolder, half the seeds would put both
    // sessions on one side).
    let dir = tempfile::tempdir().unwrap();
    let b = dir.path().join("bundle");
    copy_bundle(&b);
    let calib = dir.path().join("calib");
    for (session, offset) in [("morning", 0u64), ("evening", 1000)] {
        std::fs::create_dir_all(calib.join(session)).unwrap();
        for i in 0..40u64 {
            camera_frame(offset + i).save(calib.join(session).join(format!("f{i:03}.png"))).unwrap();
        }
    }
    for seed in ["3", "4"] {
        let (code, out, err) = run(&[
            "calibrate",
            b.to_str().unwrap(),
            "--id",
            calib.to_str().unwrap(),
            "--scores",
            "all",
            "--holdout",
            "0",
            "--seed",
            seed,
        ]);
        assert_eq!(code, 0, "seed {seed}: {out}\n{err}");
        let line = out.lines().find(|l| l.contains("every score fitted on")).unwrap_or_else(|| panic!("{out}"));
        let nums: Vec<usize> = line
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|t| t.parse().ok())
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .take(2)
            .collect();
        let (n_b, n_a) = (nums[0], nums[1]);
        assert!(n_a >= 25 && n_b >= 25 && n_a + n_b == 80, "seed {seed}: {line}");
    }
}
