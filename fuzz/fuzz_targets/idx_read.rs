//! IDX files (plain and gzip) of any bytes: read under small limits, and every frame decoded;
//! errors, never a panic or an allocation past the limits.
#![no_main]
use ebm_gate::frame::InputLimits;
use ebm_gate::source::collect_with;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = InputLimits { max_side: 256, max_input_bytes: 1 << 20, max_decoded_bytes: 8 << 20, max_frames: 64 };
    let dir = std::env::temp_dir().join(format!("ebm-gate-fuzz-idx-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let (gz, body) = match data.split_first() {
        Some((&flag, body)) => (flag & 1 == 1, body),
        None => return,
    };
    let path = dir.join(if gz { "x-idx3-ubyte.gz" } else { "x-idx3-ubyte" });
    std::fs::write(&path, body).unwrap();
    if let Ok(items) = collect_with(&[path], None, &limits) {
        assert!(items.len() <= 64);
        for item in items {
            let _ = item.decode_with(&limits);
        }
    }
});
