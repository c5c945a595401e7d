//! A raw frame of any layout (format, size, stride, plane rows from the first bytes) and any
//! bytes: `raw_to_rgb` returns an image or an error, never panics.
#![no_main]
use ebm_gate::raw::{raw_to_rgb, PixelFormat, RawLayout, YuvSpec};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 6 {
        return;
    }
    let format = PixelFormat::ALL[data[0] as usize % PixelFormat::ALL.len()];
    let (width, height) = (1 + data[1] as u32 % 40, 1 + data[2] as u32 % 40);
    let stride = (data[3] != 0).then_some(data[3] as u32 * 2);
    let plane_rows = (data[4] != 0).then_some(height + data[4] as u32 % 8);
    let yuv = YuvSpec { bt709: data[5] & 1 != 0, full_range: data[5] & 2 != 0 };
    let layout = RawLayout { format, width, height, stride, plane_rows };
    let body = &data[6..];
    // Also at the exact length the layout needs, so that the converters run.
    if let Ok(len) = layout.frame_len() {
        let mut frame = body.to_vec();
        frame.resize(len, 0x80);
        if let Ok(img) = raw_to_rgb(&frame, &layout, yuv) {
            assert_eq!(img.dimensions(), (width, height));
        }
    }
    let _ = raw_to_rgb(body, &layout, yuv);
});
