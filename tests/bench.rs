//! `ebm-gate bench`: the report's shape and its refusals.

use crate::common::{bundle, ebm_gate, root};

#[test]
fn bench_reports_every_stage_with_ordered_percentiles() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let out = ebm_gate()
        .args(["bench", bundle().to_str().unwrap(), "--batch", "2", "--threads", "2", "--runs", "3", "--warmup", "1"])
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("cold start") && stdout.contains("frames/s") && stdout.contains("peak RSS"), "{stdout}");
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let stages = r["stages"].as_array().unwrap();
    let names: Vec<&str> = stages.iter().map(|s| s["stage"].as_str().unwrap()).collect();
    assert_eq!(names, ["decode", "health", "preprocess", "forward", "gate", "sgld_step"]);
    for s in stages {
        let n = s["n"].as_u64().unwrap();
        // frame stages time each of the 2 frames of the 3 measured batches
        assert_eq!(n, if s["unit"] == "frame" { 6 } else { 3 }, "{s}");
        let (p50, p90, p99, min) = (
            s["p50_ms"].as_f64().unwrap(),
            s["p90_ms"].as_f64().unwrap(),
            s["p99_ms"].as_f64().unwrap(),
            s["min_ms"].as_f64().unwrap(),
        );
        assert!(min > 0.0 && min <= p50 && p50 <= p90 && p90 <= p99, "{s}");
        let per = if s["unit"] == "batch" { p50 / 2.0 } else { p50 };
        assert!((s["per_frame_p50_ms"].as_f64().unwrap() - per).abs() < 1e-9, "{s}");
    }
    assert_eq!(r["batch"], 2);
    assert_eq!(r["forward_batch"], 1, "a convolutional network runs frame by frame");
    assert_eq!(r["threads"], 2, "its 2 frames on 2 threads");
    assert!(stdout.contains("2 threads"), "{stdout}");
    assert_eq!(r["frames"], 7, "the bundle's 7 sample frames");
    assert!(r["cold_start_ms"].as_f64().unwrap() > 0.0);
    if let Ok(nproc) = std::process::Command::new("nproc").output() {
        // coreutils' count of the CPUs this process may use
        let n: u64 = String::from_utf8_lossy(&nproc.stdout).trim().parse().unwrap();
        assert_eq!(r["machine"]["cores"].as_u64().unwrap(), n);
    }
    if cfg!(target_os = "linux") {
        assert!(r["peak_rss_mb"].as_f64().unwrap() > 1.0);
    }
}

#[test]
fn bench_without_a_gradient_graph_times_the_rest_and_refuses_bad_flags() {
    let tiny = root().join("tests/data/tiny_fixed_batch4.onnx");
    let frames = root().join("tests/data/frames");
    let out = ebm_gate()
        .args(["bench", tiny.to_str().unwrap(), "--frames", frames.to_str().unwrap(), "--runs", "2", "--warmup", "0"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("batch 4") && !stdout.contains("sgld_step"), "a fixed batch of 4, no gradient: {stdout}");
    for (args, want) in [
        (vec!["--threads", "0"], "threads must be 1 to 256"),
        (vec!["--threads", "257"], "'--threads <N>': threads must be 1 to 256, got 257"),
        (vec!["--batch", "0"], "at least 1"),
        (vec!["--forward-batch", "0"], "'--forward-batch <N>': the batch must be at least 1"),
        (vec!["--frames", "/nonexistent/dir"], "/nonexistent/dir"),
    ] {
        let out = ebm_gate().arg("bench").arg(bundle()).args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
    }
}

/// `--ops`: every node of tract's plan with its time; the reference AirNet (models/tools/nets.py:
/// widths 64, 128, 256, block 1 downsampling by a stride-2 convolution) has 7 convolutions and a
/// linear head, so 8 matrix products (their shapes below), and 3 max-pools (blocks 2 and 3, and
/// the global one).
#[test]
fn bench_ops_lists_the_plan_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let out = ebm_gate()
        .args(["bench", bundle().to_str().unwrap(), "--runs", "2", "--warmup", "0", "--no-gradient", "--ops", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("plan nodes, one tract run of 1 frame") && stdout.contains("by operator"), "{stdout}");
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let ops = r["ops"].as_array().unwrap();
    let count = |op: &str| ops.iter().filter(|o| o["op"] == op).count();
    assert_eq!(count("OptMatMul"), 8, "{ops:?}");
    assert_eq!(count("OptMaxPool"), 3, "{ops:?}");
    assert!(ops.iter().all(|o| o["median_ms"].as_f64().unwrap() > 0.0), "every node takes some time: {ops:?}");
    assert!(ops.iter().any(|o| o["name"].as_str().unwrap().contains("Conv")));
    // Each matrix product's m x k x n at batch 1: output channels x (input channels x kernel
    // area) x output pixels of the 2x2 whitening stem (3 -> 24 on 31x31), block 1 (24 -> 64
    // stride 2 onto 16x16, 64 -> 64), block 2 (64 -> 128 on 16x16, pool, 128 -> 128 on 8x8),
    // block 3 (128 -> 256 on 8x8, pool, 256 -> 256 on 4x4), and the head (256 -> 10).
    let mut shapes: Vec<[u64; 3]> = ops
        .iter()
        .filter(|o| o["op"] == "OptMatMul")
        .map(|o| {
            let mm = &o["matmul"];
            assert!(!mm["kernel"].as_str().unwrap().is_empty(), "{o}");
            [mm["m"].as_u64().unwrap(), mm["k"].as_u64().unwrap(), mm["n"].as_u64().unwrap()]
        })
        .collect();
    shapes.sort_unstable();
    let mut want = vec![
        [24, 12, 961],
        [64, 216, 256],
        [64, 576, 256],
        [128, 576, 256],
        [128, 1152, 64],
        [256, 1152, 64],
        [256, 2304, 16],
        [10, 256, 1],
    ];
    want.sort_unstable();
    assert_eq!(shapes, want);
    assert!(stdout.contains("GFLOP/s"), "{stdout}");
}
