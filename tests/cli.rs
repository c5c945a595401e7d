//! The `ebm-gate` binary: output, exit codes, errors.

use std::process::Command;

use crate::common::{bin, bundle, f32s, read_json, root, shared_data};

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin()).args(args).current_dir(root()).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn lines(stdout: &str) -> Vec<serde_json::Value> {
    stdout.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"))).collect()
}

/// `E = -T * logsumexp(z / T)` in f64: the closed form, for goldens made at another temperature.
fn energy_at(z: &[f32], t: f64) -> f64 {
    let m = z.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
    -t * (m / t + z.iter().map(|&v| ((v as f64 - m) / t).exp()).sum::<f64>().ln())
}

#[test]
fn score_samples_json_has_stable_keys_and_golden_energies() {
    let (code, stdout, stderr) = run(&["score", "models/cifar10-airnet", "models/cifar10-airnet/samples", "--json"]);
    let rows = lines(&stdout);
    let golden = read_json("tests/data/golden_cifar10_airnet.json");
    let t = read_json("models/cifar10-airnet/gate.json")["temperature"].as_f64().unwrap();
    let samples = golden["samples"].as_array().unwrap();
    assert_eq!(rows.len(), samples.len(), "{stderr}");
    for (row, g) in rows.iter().zip(samples) {
        for key in ["path", "class", "probability", "energy", "msp", "max_logit", "p_value", "verdict", "reason"] {
            assert!(row.get(key).is_some(), "missing {key} in {row}");
        }
        assert!(row["path"].as_str().unwrap().ends_with(g["path"].as_str().unwrap()));
        let e = row["energy"].as_f64().unwrap();
        let want = energy_at(&f32s(&g["ort_logits"]), t);
        assert!((e - want).abs() < 0.05, "{row}: energy at T = {t} should be {want}");
        assert!(row["p_value"].is_number(), "{row}");
    }
    let rejected = rows.iter().any(|r| r["verdict"] == "out_of_distribution");
    assert_eq!(code, if rejected { 1 } else { 0 }, "{stderr}");
    let noise = rows.iter().find(|r| r["path"].as_str().unwrap().ends_with("noise.png")).unwrap();
    assert_eq!(noise["verdict"], "out_of_distribution", "{noise}");
    assert_eq!(noise["reason"], "p_value_at_or_below_alpha", "the bundle's gate is conformal");
    assert!(noise["p_value"].as_f64().unwrap() <= 0.05, "{noise}");
}

#[test]
fn unreadable_image_is_named_and_the_run_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("corrupt.jpg"), b"\xff\xd8\xff garbage").unwrap();
    std::fs::copy(root().join("tests/data/frames/00_chelsea_0.png"), dir.path().join("cat.png")).unwrap();
    let (code, stdout, _) = run(&["score", "models/cifar10-airnet", dir.path().to_str().unwrap(), "--json"]);
    assert_eq!(code, 1);
    let rows = lines(&stdout);
    let (cat, bad) = (&rows[0], &rows[1]);
    assert!(cat["path"].as_str().unwrap().ends_with("cat.png") && cat["energy"].is_number());
    assert_eq!(bad["verdict"], "out_of_distribution");
    assert_eq!(bad["reason"], "decode_error");
    assert!(bad["error"].as_str().unwrap().contains("corrupt.jpg"), "{bad}");
    // The table keeps the p column for a run where no frame could be scored: the gate has
    // calibration energies, so the column is the gate's, not the frames'.
    let only_bad = dir.path().join("corrupt.jpg");
    let (code, stdout, _) = run(&["score", "models/cifar10-airnet", only_bad.to_str().unwrap()]);
    assert_eq!(code, 1);
    let header: Vec<&str> = stdout.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["path", "class", "prob", "energy", "msp", "maxlogit", "p", "verdict", "reason"], "{stdout}");
}

#[test]
fn table_output_names_columns() {
    let (_, stdout, _) = run(&["score", "models/cifar10-airnet", "tests/data/frames/17_black.png"]);
    let header = stdout.lines().next().unwrap();
    for col in ["path", "class", "prob", "energy", "verdict", "reason"] {
        assert!(header.contains(col), "{header}");
    }
    assert!(stdout.contains("17_black.png"));
}

#[test]
fn bad_model_exits_2_naming_it() {
    let (code, _, stderr) = run(&["score", "no/such/model", "tests/data/frames"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("no/such/model"), "{stderr}");
}

#[test]
fn a_thread_count_out_of_range_exits_2_naming_the_flag() {
    let b = bundle();
    let b = b.to_str().unwrap();
    for args in [
        vec!["score", b, "tests/data/frames", "--threads", "0"],
        vec!["eval", b, "--id", "tests/data/frames", "--threads", "257"],
        vec!["calibrate", b, "--id", "tests/data/frames", "--threads", "0"],
        vec!["stream", b, "--format", "mjpeg", "--threads", "0"],
        vec!["refine", b, "tests/data/frames", "--out", "/nonexistent", "--threads", "0"],
    ] {
        let (code, stdout, stderr) = run(&args);
        assert_eq!(code, 2, "{args:?}: {stdout}");
        assert!(stderr.contains("--threads") && stderr.contains("threads must be 1 to 256"), "{args:?}: {stderr}");
    }
}

#[test]
fn bare_onnx_without_threshold_scores_only_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.onnx");
    std::fs::copy(bundle().join("model.onnx"), &model).unwrap();
    let (code, stdout, stderr) =
        run(&["score", model.to_str().unwrap(), "tests/data/frames/15_uniform_noise.png", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let row = &lines(&stdout)[0];
    assert!(row["verdict"].is_null() && row["energy"].is_number(), "{row}");
    // A threshold flag turns verdicts on.
    let (code, stdout, _) = run(&[
        "score",
        model.to_str().unwrap(),
        "tests/data/frames/15_uniform_noise.png",
        "--json",
        "--threshold",
        "-1000",
    ]);
    assert_eq!(code, 1);
    assert_eq!(lines(&stdout)[0]["verdict"], "out_of_distribution");
}

#[test]
fn eval_writes_a_report_with_every_score() {
    // ID: the photo frames in ImageFolder layout under made-up labels; OOD: synthetic frames.
    let dir = tempfile::tempdir().unwrap();
    let (id, ood) = (dir.path().join("id"), dir.path().join("ood"));
    for entry in std::fs::read_dir(root().join("tests/data/frames")).unwrap() {
        let p = entry.unwrap().path();
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        let idx: usize = name[..2].parse().unwrap();
        let to = if idx < 15 { id.join(if idx < 3 { "cat" } else { "ship" }) } else { ood.clone() };
        std::fs::create_dir_all(&to).unwrap();
        std::fs::copy(&p, to.join(&name)).unwrap();
    }
    let report = dir.path().join("report.json");
    let (code, stdout, stderr) = run(&[
        "eval",
        "models/cifar10-airnet",
        "--id",
        id.to_str().unwrap(),
        "--ood",
        &format!("synthetic={}", ood.display()),
        "--json",
        report.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("FPR@95TPR") && stdout.contains("synthetic"), "{stdout}");
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(r["id"]["n"], 15);
    assert!(r["id"]["accuracy"].is_number());
    let scores: Vec<&str> =
        r["ood"][0]["metrics"].as_array().unwrap().iter().map(|m| m["score"].as_str().unwrap()).collect();
    assert_eq!(scores, ["energy", "msp", "max_logit", "energy_t1"], "T != 1 adds energy at T = 1");
    // scikit-learn's metrics (the golden; its energy at T = 1, so against energy_t1; MaxLogit
    // does not depend on T).
    let golden = read_json("tests/data/golden_cifar10_airnet.json");
    for (i, score) in [(3, "energy"), (2, "max_logit")] {
        for key in ["auroc", "aupr_in", "aupr_out", "fpr_at_95_tpr"] {
            let want = golden["eval_frames"]["metrics"][score][key].as_f64().unwrap();
            let got = r["ood"][0]["metrics"][i][key].as_f64().unwrap();
            assert!((got - want).abs() < 1e-9, "{score} {key}: {got} vs scikit-learn {want}");
        }
    }
    assert!(r["calibration"].as_array().unwrap().len() == 2, "NLL/ECE at T = 1 and at the bundle's T");
    assert!(!r["conformal"].as_array().unwrap().is_empty());
}

#[test]
fn eval_bad_ood_spec_exits_2() {
    let (code, _, stderr) =
        run(&["eval", "models/cifar10-airnet", "--id", "tests/data/frames", "--ood", "nonamegiven"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("NAME=PATH"), "{stderr}");
}

/// A copy of the reference bundle (model.onnx + gate.json) in a temporary folder.
fn bundle_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in ["model.onnx", "gate.json"] {
        std::fs::copy(bundle().join(f), dir.path().join(f)).unwrap();
    }
    dir
}

#[test]
fn calibrate_unlabelled_folder_writes_the_conformal_gate() {
    let b = bundle_copy();
    let model = b.path().to_str().unwrap();
    let t_before = read_json("models/cifar10-airnet/gate.json")["temperature"].as_f64().unwrap();
    let (code, stdout, stderr) = run(&["calibrate", model, "--id", "tests/data/frames", "--holdout", "0"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("unlabelled"), "{stdout}");
    let g: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(b.path().join("gate.json")).unwrap()).unwrap();
    // Unlabelled: the temperature is kept, no prediction sets.
    assert_eq!(g["temperature"].as_f64().unwrap(), t_before);
    assert!(g.get("prediction_sets").is_none());
    // The calibration energies are the frames' energies at the bundle's T from onnxruntime's
    // logits (the golden), ascending.
    let golden = read_json("tests/data/golden_cifar10_airnet.json");
    let mut want: Vec<f64> =
        golden["frames"].as_array().unwrap().iter().map(|f| energy_at(&f32s(&f["ort_logits"]), t_before)).collect();
    want.sort_by(f64::total_cmp);
    let got: Vec<f64> =
        g["gate"]["calibration_energies"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_eq!((got.len(), want.len()), (24, 24));
    for (a, b) in got.iter().zip(&want) {
        assert!((a - b).abs() < 1e-4, "{a} vs onnxruntime's {b}");
    }
    // Threshold: the ceil((n + 1)(1 - alpha)) = ceil(25 * 0.95) = 24th smallest energy.
    assert_eq!(g["gate"]["threshold"].as_f64().unwrap(), got[23]);
    assert_eq!(g["gate"]["alpha"].as_f64().unwrap() as f32, 0.05);
    assert_eq!(g["gate"]["target_tpr"].as_f64().unwrap(), 0.95);
    assert_eq!(g["provenance"]["n"], 24);
    assert_eq!(g["provenance"]["split"]["n_held_out"], 0);
    assert_eq!(g["provenance"]["model_sha256"].as_str().unwrap().len(), 64);
    // With n = 24 and alpha = 0.05 only an energy above every calibration energy has
    // p = 1/25 <= 0.05: the calibration frames themselves all pass.
    let (code, _, stderr) = run(&["score", model, "tests/data/frames"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("conformal gate"), "{stderr}");
}

#[test]
fn calibrate_refuses_too_few_frames_bad_frames_and_foreign_models() {
    let b = bundle_copy();
    let model = b.path().to_str().unwrap();
    // 24 frames: alpha 0.01 needs n + 1 >= 100.
    let (code, _, stderr) =
        run(&["calibrate", model, "--id", "tests/data/frames", "--holdout", "0", "--alpha", "0.01"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("too few") && stderr.contains("at least 99"), "{stderr}");
    // A frame that cannot be decoded: calibration data must be clean.
    let dir = tempfile::tempdir().unwrap();
    for i in 0..20 {
        std::fs::copy(root().join("tests/data/frames/00_chelsea_0.png"), dir.path().join(format!("{i:02}.png")))
            .unwrap();
    }
    std::fs::write(dir.path().join("zz_broken.png"), b"not a png").unwrap();
    let (code, _, stderr) = run(&["calibrate", model, "--id", dir.path().to_str().unwrap(), "--holdout", "0"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("zz_broken.png") && stderr.contains("could not be scored"), "{stderr}");
    // gate.json made for another model.
    let gate = b.path().join("gate.json");
    let text = std::fs::read_to_string(&gate).unwrap();
    let sha = read_json("models/cifar10-airnet/gate.json")["provenance"]["model_sha256"].as_str().unwrap().to_string();
    std::fs::write(&gate, text.replace(&sha, &"0".repeat(64))).unwrap();
    let (code, _, stderr) = run(&["calibrate", model, "--id", "tests/data/frames", "--holdout", "0"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("sha256") && stderr.contains("--new-model"), "{stderr}");
    // ... which --new-model accepts, refitting the gate for the model at hand.
    let (code, _, stderr) = run(&["calibrate", model, "--id", "tests/data/frames", "--holdout", "0", "--new-model"]);
    assert_eq!(code, 0, "{stderr}");
    let g: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&gate).unwrap()).unwrap();
    assert_eq!(g["provenance"]["model_sha256"].as_str().unwrap(), sha);
    assert_eq!(g["temperature"].as_f64().unwrap(), 1.0, "a new model starts at T = 1 without labels");
    // --holdout out of range.
    let (code, _, stderr) = run(&[
        "calibrate",
        "models/cifar10-airnet",
        "--id",
        "tests/data/frames",
        "--holdout",
        "1.0",
        "--out",
        dir.path().join("g.json").to_str().unwrap(),
    ]);
    assert_eq!(code, 2);
    assert!(stderr.contains("holdout"), "{stderr}");
}

#[test]
fn prediction_sets_follow_the_lac_rule() {
    let (code, stdout, stderr) = run(&[
        "score",
        "models/cifar10-airnet",
        "models/cifar10-airnet/samples",
        "--json",
        "--logits",
        "--set-alpha",
        "0.1",
    ]);
    assert_eq!(code, 1, "the samples include frames the gate rejects: {stderr}");
    let g = read_json("models/cifar10-airnet/gate.json");
    let names: Vec<&str> = g["class_names"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    let t = g["temperature"].as_f64().unwrap();
    let scores = f32s(&g["prediction_sets"]["calibration_scores"]);
    // q: the ceil((n + 1) * 0.9)-th smallest calibration score.
    let k = ((scores.len() as f64 + 1.0) * 0.9).ceil() as usize;
    let q = scores[k - 1] as f64;
    let rows = lines(&stdout);
    let golden = read_json("tests/data/golden_cifar10_airnet.json");
    let samples = golden["samples"].as_array().unwrap();
    assert_eq!(rows.len(), samples.len());
    for (row, sample) in rows.iter().zip(samples) {
        let z = f32s(&row["logits"]);
        // The logits the rule is applied to are onnxruntime's (to the resize's tolerance).
        for (a, b) in z.iter().zip(f32s(&sample["ort_logits"])) {
            assert!((a - b).abs() < 0.05, "{row}: logit {a} vs onnxruntime's {b}");
        }
        let m = z.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
        let sum: f64 = z.iter().map(|&v| ((v as f64 - m) / t).exp()).sum();
        let want: Vec<&str> =
            (0..z.len()).filter(|&y| 1.0 - ((z[y] as f64 - m) / t).exp() / sum <= q + 1e-6).map(|y| names[y]).collect();
        let got: Vec<&str> = row["prediction_set"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert_eq!(got, want, "{row}");
    }
    // A bundle without prediction-set scores refuses --set-alpha.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(bundle().join("model.onnx"), dir.path().join("m.onnx")).unwrap();
    let (code, _, stderr) =
        run(&["score", dir.path().join("m.onnx").to_str().unwrap(), "tests/data/frames", "--set-alpha", "0.1"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("prediction sets need calibration scores"), "{stderr}");
}

/// Calibrate on 400 labelled CIFAR-10 test images (40 per class, half held out), look at the
/// report, the plots, and `eval` leaving the calibration frames out.
#[test]
fn calibrate_labelled_cifar_subset_fits_t_and_draws() {
    let Some(data) = shared_data("calibrate_labelled_cifar_subset_fits_t_and_draws") else { return };
    let names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];
    let dir = tempfile::tempdir().unwrap();
    let id = dir.path().join("id");
    for name in names {
        let mut files: Vec<_> =
            std::fs::read_dir(data.join("cifar10/test").join(name)).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        std::fs::create_dir_all(id.join(name)).unwrap();
        for f in files.iter().take(40) {
            std::fs::copy(f, id.join(name).join(f.file_name().unwrap())).unwrap();
        }
    }
    let b = bundle_copy();
    let model = b.path().to_str().unwrap();
    let plots = dir.path().join("plots");
    let (code, stdout, stderr) =
        run(&["calibrate", model, "--id", id.to_str().unwrap(), "--plots", plots.to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let g: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(b.path().join("gate.json")).unwrap()).unwrap();
    let t = g["temperature"].as_f64().unwrap();
    assert!(t > 0.2 && t < 2.0, "T = {t}");
    assert!(
        g["prediction_sets"]["calibration_scores"].as_array().unwrap().len()
            == g["provenance"]["n"].as_u64().unwrap() as usize
    );
    // The table has before and after rows. The fitted T minimises the NLL on the calibration
    // frames, so it is at most the NLL at T = 1 there. (The held-out ECE need not fall: the
    // EBM-fine-tuned reference model is already calibrated at T = 1, and on 216 held-out frames
    // its ECE went 5.15% -> 5.73%.)
    for row in ["before", "after"] {
        assert!(stdout.lines().any(|l| l.starts_with(row) && l.contains('%')), "{row} row: {stdout}");
    }
    let out = format!("{stdout}{stderr}");
    let nll = out.split("NLL on the calibration frames ").nth(1).unwrap_or_else(|| panic!("{out}"));
    let mut it = nll.split([',', ' ']).filter(|w| !w.is_empty() && *w != "->");
    let (at_1, at_t): (f64, f64) = (it.next().unwrap().parse().unwrap(), it.next().unwrap().parse().unwrap());
    assert!(at_t <= at_1 + 1e-4, "NLL {at_1} at T = 1 -> {at_t} at the fitted T: {out}");
    for f in ["reliability.png", "reliability.svg"] {
        assert!(plots.join(f).metadata().unwrap().len() > 10_000, "{f}");
    }
    let png = image::open(plots.join("reliability.png")).unwrap();
    assert_eq!((png.width(), png.height()), (1200, 540));
    let svg = std::fs::read_to_string(plots.join("reliability.svg")).unwrap();
    assert!(svg.contains("Confidence") && svg.contains("ECE"), "axis label and ECE in the SVG");
    // eval on the same folder leaves the calibration frames out.
    let report = dir.path().join("eval.json");
    let eval_plots = dir.path().join("eval_plots");
    let (code, stdout, stderr) = run(&[
        "eval",
        model,
        "--id",
        id.to_str().unwrap(),
        "--ood",
        "synthetic=tests/data/frames",
        "--json",
        report.to_str().unwrap(),
        "--plots",
        eval_plots.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let n_cal = g["provenance"]["n"].as_u64().unwrap();
    assert_eq!(r["id"]["excluded_calibration_frames"].as_u64().unwrap(), n_cal);
    assert_eq!(r["id"]["n"].as_u64().unwrap(), 400 - n_cal);
    assert_eq!(r["id"]["n"], g["provenance"]["split"]["n_held_out"]);
    assert!(r["prediction_sets"].as_array().unwrap().len() >= 2);
    for f in ["roc.png", "roc.svg", "energy_histogram.png", "energy_histogram.svg"] {
        assert!(eval_plots.join(f).metadata().unwrap().len() > 10_000, "{f}");
    }
}

#[test]
fn another_temperature_does_not_silently_turn_the_gate_off() {
    // The bundle's gate was fitted at its own T: at T = 1 it does not hold, so `score` refuses
    // rather than pass every frame unchecked.
    let (code, _, stderr) =
        run(&["score", "models/cifar10-airnet", "tests/data/frames/15_uniform_noise.png", "--temperature", "1"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("fitted at T =") && stderr.contains("--threshold"), "{stderr}");
    // With an explicit threshold it runs, at T = 1.
    let (code, stdout, stderr) = run(&[
        "score",
        "models/cifar10-airnet",
        "tests/data/frames/15_uniform_noise.png",
        "--temperature",
        "1",
        "--threshold",
        "-4",
        "--json",
    ]);
    assert_eq!(code, 1, "{stderr}");
    let row = &lines(&stdout)[0];
    assert_eq!(row["reason"], "energy_above_threshold");
    assert!(row["p_value"].is_null(), "no p-value against energies fitted at another T: {row}");
    // The bundle's T as printed (4 decimals) is the bundle's T: the gate stays on.
    let t = read_json("models/cifar10-airnet/gate.json")["temperature"].as_f64().unwrap();
    let typed = format!("{t:.4}");
    let (code, _, stderr) =
        run(&["score", "models/cifar10-airnet", "tests/data/frames/15_uniform_noise.png", "--temperature", &typed]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("conformal gate"), "{stderr}");
}

#[test]
fn eval_leaves_unreadable_frames_out_of_the_metrics_and_refuses_an_empty_set() {
    let dir = tempfile::tempdir().unwrap();
    let ood = dir.path().join("ood");
    std::fs::create_dir_all(&ood).unwrap();
    for f in ["15_uniform_noise.png", "16_gaussian_noise.png", "17_black.png"] {
        std::fs::copy(root().join("tests/data/frames").join(f), ood.join(f)).unwrap();
    }
    std::fs::write(ood.join("zz_broken.png"), b"not a png").unwrap();
    let report = dir.path().join("r.json");
    let args = |ood_arg: String| {
        vec![
            "eval".to_string(),
            "models/cifar10-airnet".into(),
            "--id".into(),
            "tests/data/frames".into(),
            "--ood".into(),
            ood_arg,
            "--json".into(),
            report.to_str().unwrap().into(),
        ]
    };
    let a = args(format!("x={}", ood.display()));
    let (code, stdout, stderr) = run(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("1 unreadable") && stderr.contains("zz_broken.png"), "{stdout}{stderr}");
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(r["ood"][0]["n"], 4);
    assert_eq!(r["ood"][0]["errors"], 1);
    // The same metrics as with the broken file removed.
    std::fs::remove_file(ood.join("zz_broken.png")).unwrap();
    let report2 = dir.path().join("r2.json");
    let mut b = args(format!("x={}", ood.display()));
    b[7] = report2.to_str().unwrap().into();
    let (code, _, stderr) = run(&b.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{stderr}");
    let r2: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report2).unwrap()).unwrap();
    assert_eq!(r["ood"][0]["metrics"], r2["ood"][0]["metrics"]);
    // A mistyped path: nothing scored, so no metrics and exit 2.
    let c = args("x=/no/such/file.gz".into());
    let (code, _, stderr) = run(&c.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 2);
    assert!(stderr.contains("no such file or folder") && stderr.contains("/no/such/file.gz"), "{stderr}");
    // A mistyped ID folder, likewise (not a report on one unreadable frame).
    let mut d = args("x=/no/such/file.gz".into());
    let pos = d.iter().position(|s| s == "--id").unwrap();
    d[pos + 1] = "/no/such/folder".into();
    d.retain(|s| !s.starts_with("--ood") && !s.starts_with("x="));
    let (code, _, stderr) = run(&d.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("ID set /no/such/folder: no such file or folder"), "{stderr}");
}

/// `C(n-1, k-1) p^k (1-p)^(n-k+1)`: false alarms per frame of plain k-of-n on independent
/// frames (Naus 1982), restated here in f64 from the binomial coefficients.
fn k_of_n_alarms(p: f64, n: u64, k: u64) -> f64 {
    let choose = |n: u64, k: u64| (0..k).fold(1.0, |c, i| c * (n - i) as f64 / (i + 1) as f64);
    choose(n - 1, k - 1) * p.powi(k as i32) * (1.0 - p).powi((n - k + 1) as i32)
}

#[test]
fn plan_proposes_windows_that_meet_the_target_and_rates_a_given_window() {
    let (code, stdout, stderr) = run(&["plan", "--fps", "15", "--false-alarms-per-day", "1", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 4, "{v}");
    for r in rows {
        let (p, n, k) = (r["alpha"].as_f64().unwrap(), r["window"].as_u64().unwrap(), r["enter"].as_u64().unwrap());
        let per_day = k_of_n_alarms(p, n, k) * 15.0 * 86_400.0;
        assert!((r["false_alarms_per_day"].as_f64().unwrap() - per_day).abs() < 1e-9 * per_day.max(1.0), "{r}");
        assert!(per_day <= 1.0, "{r}");
        // The default fault sensitivity: a window of twice the rejections; one rejection
        // fewer would not meet the target.
        assert_eq!(n, 2 * k, "{r}");
        assert!(k == 1 || k_of_n_alarms(p, 2 * k - 2, k - 1) * 15.0 * 86_400.0 > 1.0, "{r}");
    }
    // The suggestion: the fewest rejections to alarm.
    let min_k = rows.iter().map(|r| r["enter"].as_u64().unwrap()).min().unwrap();
    assert_eq!(v["suggested"]["enter"].as_u64(), Some(min_k), "{v}");

    // The stream's default, 3 of 5, at 15 frames/s: 6 p^3 (1-p)^3 per frame.
    let (code, stdout, _) = run(&["plan", "--fps", "15", "--window", "5", "--enter", "3", "--alpha", "0.05", "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let got = v["rows"][0]["false_alarms_per_day"].as_f64().unwrap();
    let want = 6.0 * 0.05f64.powi(3) * 0.95f64.powi(3) * 15.0 * 86_400.0;
    assert!((got - want).abs() < 1e-9 * want, "{got} vs {want}");
    assert_eq!(v["rows"][0]["method"], "closed_form");

    for bad in [
        vec!["plan", "--fps", "0", "--false-alarms-per-day", "1"],
        vec!["plan", "--fps", "15"],
        vec!["plan", "--fps", "15", "--window", "5", "--enter", "6"],
        vec!["plan", "--fps", "15", "--false-alarms-per-day", "1", "--alpha", "1.5"],
    ] {
        let (code, _, stderr) = run(&bad);
        assert_eq!(code, 2, "{bad:?}: {stderr}");
        assert!(!stderr.is_empty());
    }
}
