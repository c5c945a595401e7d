//! The MJPEG splitter on any bytes: never panics; every frame it gives starts with a
//! start-of-image and ends with an end-of-image marker, and no frame is longer than the limit.
#![no_main]
use ebm_gate::raw::MjpegReader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limit = 4096;
    let mut total = 0usize;
    for item in MjpegReader::with_max_frame(data, limit) {
        if let Ok(frame) = item {
            assert!(frame.len() <= limit && frame.starts_with(&[0xFF, 0xD8]) && frame.ends_with(&[0xFF, 0xD9]));
            total += frame.len();
        }
    }
    assert!(total <= data.len());
});
