//! The `ebm-gate` binary: output, exit codes, errors.

use std::process::Command;

use crate::common::{bin, bundle, read_json, root};

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

#[test]
fn score_samples_json_has_stable_keys_and_golden_energies() {
    let (code, stdout, stderr) = run(&["score", "models/cifar10-airnet", "models/cifar10-airnet/samples", "--json"]);
    let rows = lines(&stdout);
    let golden = read_json("tests/data/golden_cifar10_airnet.json");
    let samples = golden["samples"].as_array().unwrap();
    assert_eq!(rows.len(), samples.len(), "{stderr}");
    for (row, g) in rows.iter().zip(samples) {
        for key in ["path", "class", "probability", "energy", "msp", "max_logit", "p_value", "verdict", "reason"] {
            assert!(row.get(key).is_some(), "missing {key} in {row}");
        }
        assert!(row["path"].as_str().unwrap().ends_with(g["path"].as_str().unwrap()));
        let e = row["energy"].as_f64().unwrap();
        assert!((e - g["energy"].as_f64().unwrap()).abs() < 0.05, "{row}");
    }
    let rejected = rows.iter().any(|r| r["verdict"] == "out_of_distribution");
    assert_eq!(code, if rejected { 1 } else { 0 }, "{stderr}");
    let noise = rows.iter().find(|r| r["path"].as_str().unwrap().ends_with("noise.png")).unwrap();
    assert_eq!(noise["verdict"], "out_of_distribution", "{noise}");
    assert_eq!(noise["reason"], "energy_above_threshold");
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
    assert_eq!(scores, ["energy", "msp", "max_logit"]);
    let golden = read_json("tests/data/golden_cifar10_airnet.json");
    let want = golden["eval_frames"]["metrics"]["energy"]["auroc"].as_f64().unwrap();
    assert!((r["ood"][0]["metrics"][0]["auroc"].as_f64().unwrap() - want).abs() < 1e-9);
}

#[test]
fn eval_bad_ood_spec_exits_2() {
    let (code, _, stderr) =
        run(&["eval", "models/cifar10-airnet", "--id", "tests/data/frames", "--ood", "nonamegiven"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("NAME=PATH"), "{stderr}");
}
