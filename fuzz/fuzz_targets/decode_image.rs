//! The product's own decode path (`frame::decode_bytes_with`, every format the build reads)
//! on any bytes, under small limits: an image within them or an error, never a panic (a decoder
//! panic would come back as an error) and never an allocation past the limits.
#![no_main]
use ebm_gate::frame::{decode_bytes_with, InputLimits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = InputLimits { max_side: 512, max_input_bytes: 1 << 20, max_decoded_bytes: 8 << 20, max_frames: 1 };
    if let Ok(img) = decode_bytes_with(data, "fuzz".as_ref(), &limits) {
        assert!(img.width() <= 512 && img.height() <= 512);
    }
});
