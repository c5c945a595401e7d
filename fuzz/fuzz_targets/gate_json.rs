//! `gate.json` of any bytes: read and checked, an error or a valid file, never a panic.
#![no_main]
use ebm_gate::bundle::GateFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("ebm-gate-fuzz-gate-{}.json", std::process::id()));
    std::fs::write(&path, data).unwrap();
    if let Ok(g) = GateFile::read(&path) {
        assert!(g.temperature.is_finite() && g.temperature > 0.0);
    }
});
