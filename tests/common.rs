//! Shared helpers: paths, golden files, the shared data check.

use std::path::{Path, PathBuf};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn bundle() -> PathBuf {
    root().join("models/cifar10-airnet")
}

pub fn read_json(rel: &str) -> serde_json::Value {
    let path = root().join(rel);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn f32s(v: &serde_json::Value) -> Vec<f32> {
    v.as_array().expect("array").iter().map(|x| x.as_f64().expect("number") as f32).collect()
}

/// `../shared/data`, or `None` after printing why the test is skipped.
pub fn shared_data(test: &str) -> Option<PathBuf> {
    let p = root().join("../shared/data");
    if p.is_dir() {
        Some(p)
    } else {
        eprintln!("SKIPPED {test}: {} is absent (the shared data sets are not on this machine)", p.display());
        None
    }
}

pub fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ebm-gate"))
}

/// A command that runs the `ebm-gate` binary: directly, or through the runner in
/// `EBM_GATE_TEST_RUNNER` (e.g. `qemu-aarch64 -L /usr/aarch64-linux-gnu` when the tests of a
/// cross-built binary run under emulation).
pub fn ebm_gate() -> std::process::Command {
    match std::env::var("EBM_GATE_TEST_RUNNER").ok().filter(|r| !r.trim().is_empty()) {
        Some(runner) => {
            let mut parts = runner.split_whitespace();
            let mut cmd = std::process::Command::new(parts.next().expect("non-empty"));
            cmd.args(parts).arg(bin());
            cmd
        }
        None => std::process::Command::new(bin()),
    }
}
