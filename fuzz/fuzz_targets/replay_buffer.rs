//! Replay-buffer files of any bytes: loaded or refused, never a panic or an allocation the
//! header asks for but the file does not hold.
#![no_main]
use ebm_gate::replay::ReplayBuffer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("ebm-gate-fuzz-buffer-{}.bin", std::process::id()));
    std::fs::write(&path, data).unwrap();
    let _ = ReplayBuffer::load(&path);
});
