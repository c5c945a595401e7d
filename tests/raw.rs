//! Raw camera buffers and MJPEG streams: the same picture as the image-file path, YUV against
//! the BT.601 / BT.709 conversion formulas (ITU-R BT.601-7, BT.709-6), and MJPEG splitting of
//! JPEGs made by the `image` crate's encoder, with garbage, an EXIF-style segment and a
//! truncated tail.

use std::io::Read;

use ebm_gate::bundle::GateFile;
use ebm_gate::frame::{decode_bytes, decode_file, preprocess_into};
use ebm_gate::raw::{raw_to_rgb, MjpegReader, PixelFormat, RawLayout, RawReader, StreamError, YuvSpec};

use crate::common::{bundle, root};

fn frame(name: &str) -> image::RgbImage {
    decode_file(&root().join("tests/data/frames").join(name)).unwrap()
}

#[test]
fn rgb_bgr_gray_buffers_give_the_image_file_path_result() {
    let img = frame("00_chelsea_0.png");
    let (w, h) = img.dimensions();
    let spec = GateFile::read(&bundle().join("gate.json")).unwrap().input;
    let mut want = vec![0f32; spec.frame_len()];
    preprocess_into(&img, &spec, &mut want).unwrap();

    let rgb = img.as_raw().clone();
    let bgr: Vec<u8> = rgb.chunks_exact(3).flat_map(|p| [p[2], p[1], p[0]]).collect();
    for (format, data) in [(PixelFormat::Rgb24, &rgb), (PixelFormat::Bgr24, &bgr)] {
        let got = raw_to_rgb(data, &RawLayout::tight(format, w, h), YuvSpec::default()).unwrap();
        assert_eq!(got, img, "{}", format.name());
        let mut x = vec![0f32; spec.frame_len()];
        preprocess_into(&got, &spec, &mut x).unwrap();
        assert_eq!(x, want, "{}: model input differs from the file path", format.name());
    }
    let luma: Vec<u8> = rgb.chunks_exact(3).map(|p| p[1]).collect();
    let gray = raw_to_rgb(&luma, &RawLayout::tight(PixelFormat::Gray8, w, h), YuvSpec::default()).unwrap();
    for (p, &l) in gray.pixels().zip(&luma) {
        assert_eq!(p.0, [l, l, l]);
    }
}

/// RGB of one (Y, U, V) sample by the standard's formulas, before rounding.
fn yuv_to_rgb(y: f64, u: f64, v: f64, spec: YuvSpec) -> [f64; 3] {
    let (kr, kb) = if spec.bt709 { (0.2126, 0.0722) } else { (0.299, 0.114) };
    let kg = 1.0 - kr - kb;
    let (yy, cb, cr) = if spec.full_range {
        (y / 255.0, (u - 128.0) / 255.0, (v - 128.0) / 255.0)
    } else {
        ((y - 16.0) / 219.0, (u - 128.0) / 224.0, (v - 128.0) / 224.0)
    };
    let r = yy + 2.0 * (1.0 - kr) * cr;
    let b = yy + 2.0 * (1.0 - kb) * cb;
    let g = (yy - kr * r - kb * b) / kg;
    [r, g, b].map(|c| (c * 255.0).clamp(0.0, 255.0))
}

/// A 4x2 frame in `format`: Y per pixel, U/V per 2x2 block (left block a, right block b).
fn yuv_frame(format: PixelFormat, ys: [u8; 8], a: (u8, u8), b: (u8, u8)) -> Vec<u8> {
    let (w, h) = (4usize, 2usize);
    let uv = |x: usize| if x < 2 { a } else { b };
    match format {
        PixelFormat::Yuyv422 => {
            let mut out = Vec::new();
            for row in 0..h {
                for pair in 0..w / 2 {
                    let (u, v) = uv(pair * 2);
                    out.extend_from_slice(&[ys[row * w + pair * 2], u, ys[row * w + pair * 2 + 1], v]);
                }
            }
            out
        }
        PixelFormat::Nv12 => {
            let mut out = ys.to_vec();
            for bx in 0..w / 2 {
                let (u, v) = uv(bx * 2);
                out.extend_from_slice(&[u, v]);
            }
            out
        }
        PixelFormat::I420 => {
            let mut out = ys.to_vec();
            out.extend((0..w / 2).map(|bx| uv(bx * 2).0));
            out.extend((0..w / 2).map(|bx| uv(bx * 2).1));
            out
        }
        _ => unreachable!(),
    }
}

#[test]
fn yuv_layouts_follow_bt601_and_bt709() {
    let ys = [16u8, 60, 128, 235, 90, 100, 180, 200];
    let (a, b) = ((90u8, 240u8), (200u8, 60u8)); // reddish / blueish chroma
    for spec in [
        YuvSpec::default(),
        YuvSpec { bt709: true, full_range: false },
        YuvSpec { bt709: false, full_range: true },
        YuvSpec { bt709: true, full_range: true },
    ] {
        for format in [PixelFormat::Yuyv422, PixelFormat::Nv12, PixelFormat::I420] {
            let data = yuv_frame(format, ys, a, b);
            assert_eq!(data.len(), format.frame_len(4, 2).unwrap());
            let img = raw_to_rgb(&data, &RawLayout::tight(format, 4, 2), spec).unwrap();
            for (i, p) in img.pixels().enumerate() {
                let (x, y) = (i % 4, i / 4);
                let (u, v) = if x < 2 { a } else { b };
                let want = yuv_to_rgb(ys[y * 4 + x] as f64, u as f64, v as f64, spec);
                for (c, (&got, &w)) in p.0.iter().zip(&want).enumerate() {
                    // yuvutils-rs converts in fixed point: within 3 levels of the exact formula.
                    let d = (got as f64 - w).abs();
                    assert!(d <= 3.0, "{} {spec:?} pixel ({x},{y}) channel {c}: {got} vs {w:.1}", format.name());
                }
            }
        }
    }
}

#[test]
fn wrong_sizes_are_errors_naming_both_sizes() {
    let e = raw_to_rgb(&[0u8; 10], &RawLayout::tight(PixelFormat::Rgb24, 2, 2), YuvSpec::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("12 bytes for 2x2") && e.contains("10 bytes"), "{e}");
    // Odd sizes: chroma rounded up (ffmpeg's layout).
    assert_eq!(PixelFormat::Nv12.frame_len(3, 2).unwrap(), 6 + 4);
    assert_eq!(PixelFormat::I420.frame_len(2, 3).unwrap(), 6 + 2 * 2);
    assert_eq!(PixelFormat::Yuyv422.frame_len(3, 1).unwrap(), 8);
    assert!(PixelFormat::Gray8.frame_len(0, 3).is_err());
    let short = RawLayout { stride: Some(5), ..RawLayout::tight(PixelFormat::Rgb24, 2, 2) };
    assert!(short.frame_len().unwrap_err().to_string().contains("less than the 6 bytes"));
    let rows = RawLayout { plane_rows: Some(1), ..RawLayout::tight(PixelFormat::I420, 2, 2) };
    assert!(rows.frame_len().unwrap_err().to_string().contains("fewer than the frame's 2 rows"));
    let packed = RawLayout { plane_rows: Some(4), ..RawLayout::tight(PixelFormat::Gray8, 2, 2) };
    assert!(packed.frame_len().is_err());
    assert_eq!("yuv420p".parse::<PixelFormat>().unwrap(), PixelFormat::I420);
    assert!("rgb565".parse::<PixelFormat>().unwrap_err().contains("rgb24"));
}

/// The planes of a frame laid out with `stride` and `rows` luma rows: (bytes a row of pixels,
/// rows of pixels, stride, rows) of each (the chroma planes' per V4L2: NV12 the same stride,
/// I420 half).
fn planes(l: &RawLayout, stride: usize, rows: usize) -> Vec<(usize, usize, usize, usize)> {
    let (w, h) = (l.width as usize, l.height as usize);
    let (cw, ch, cr) = (w.div_ceil(2), h.div_ceil(2), rows.div_ceil(2));
    match l.format {
        PixelFormat::Rgb24 | PixelFormat::Bgr24 => vec![(3 * w, h, stride, rows)],
        PixelFormat::Gray8 => vec![(w, h, stride, rows)],
        PixelFormat::Yuyv422 => vec![(4 * cw, h, stride, rows)],
        PixelFormat::Nv12 => vec![(w, h, stride, rows), (2 * cw, ch, stride, cr)],
        PixelFormat::I420 => {
            let cs = stride.div_ceil(2);
            vec![(w, h, stride, rows), (cw, ch, cs, cr), (cw, ch, cs, cr)]
        }
    }
}

/// `tight` (each plane's rows back to back) laid out with `stride` and `plane_rows`, the
/// padding filled with 0xEE.
fn pad(tight: &[u8], l: &RawLayout, stride: usize, plane_rows: usize) -> Vec<u8> {
    let (mut out, mut at) = (Vec::new(), 0);
    for (row, rows, pstride, prows) in planes(l, stride, plane_rows) {
        for r in 0..prows {
            if r < rows {
                out.extend_from_slice(&tight[at + r * row..at + (r + 1) * row]);
                out.extend(std::iter::repeat_n(0xEE, pstride - row));
            } else {
                out.extend(std::iter::repeat_n(0xEE, pstride));
            }
        }
        at += row * rows;
    }
    assert_eq!(at, tight.len());
    out
}

#[test]
fn padded_rows_and_planes_give_the_tight_frame_and_odd_sizes_round_chroma_up() {
    // Seeded bytes (an LCG): any content must come out the same with or without padding.
    let mut state = 12345u32;
    let mut next = move || {
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        (state >> 16) as u8
    };
    for format in PixelFormat::ALL {
        for (w, h) in [(6u32, 4u32), (5, 3), (7, 1)] {
            let tight_layout = RawLayout::tight(format, w, h);
            let tight: Vec<u8> = (0..format.frame_len(w, h).unwrap()).map(|_| next()).collect();
            let want = raw_to_rgb(&tight, &tight_layout, YuvSpec::default()).unwrap();
            let row = match format {
                PixelFormat::Rgb24 | PixelFormat::Bgr24 => 3 * w,
                PixelFormat::Yuyv422 => 4 * w.div_ceil(2),
                PixelFormat::Nv12 => 2 * w.div_ceil(2),
                _ => w,
            };
            let stride = row + 10; // even: i420's chroma stride is half of it
            let plane_rows = if format.is_planar() { Some(h + 3) } else { None };
            let layout = RawLayout { stride: Some(stride), plane_rows, ..tight_layout };
            let padded = pad(&tight, &tight_layout, stride as usize, plane_rows.unwrap_or(h) as usize);
            assert_eq!(padded.len(), layout.frame_len().unwrap(), "{} {w}x{h}", format.name());
            let got = raw_to_rgb(&padded, &layout, YuvSpec::default()).unwrap();
            assert_eq!(got, want, "{} {w}x{h}: padding changed the picture", format.name());
        }
    }
    // A flat odd-sized frame (Y = 100, U = V = 128) is BT.601 gray 1.164 (100 - 16) = 97.8
    // everywhere, also in the last column and row, whose chroma the rounding-up provides.
    for format in [PixelFormat::Yuyv422, PixelFormat::Nv12, PixelFormat::I420] {
        let (w, h) = (5u32, 3u32);
        let layout = RawLayout::tight(format, w, h);
        let len = format.frame_len(w, h).unwrap();
        let data: Vec<u8> = match format {
            PixelFormat::Yuyv422 => [100u8, 128].repeat(len / 2),
            _ => (0..len).map(|i| if i < (w * h) as usize { 100 } else { 128 }).collect(),
        };
        let img = raw_to_rgb(&data, &layout, YuvSpec::default()).unwrap();
        let want = yuv_to_rgb(100.0, 128.0, 128.0, YuvSpec::default());
        for p in img.pixels() {
            for (&c, &wc) in p.0.iter().zip(&want) {
                assert!((c as f64 - wc).abs() <= 3.0, "{}: {:?} vs {want:?}", format.name(), p.0);
            }
        }
    }
}

fn jpeg(img: &image::RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90).encode_image(img).unwrap();
    out
}

/// Reads a few bytes at a time, as a pipe may.
struct Trickle(std::io::Cursor<Vec<u8>>);

impl Read for Trickle {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(7);
        self.0.read(&mut buf[..n])
    }
}

#[test]
fn mjpeg_stream_splits_into_frames_and_reports_garbage_and_truncation() {
    let frames = ["00_chelsea_0.png", "06_astronaut_0.png", "03_coffee_0.png"].map(|f| jpeg(&frame(f)));
    // The second JPEG gets an APP1 segment holding a whole JPEG (as an EXIF thumbnail does):
    // its end-of-image marker must not end the frame.
    let thumb = jpeg(&image::RgbImage::from_pixel(4, 4, image::Rgb([200, 10, 10])));
    let mut with_app1 = vec![0xFF, 0xD8, 0xFF, 0xE1];
    with_app1.extend_from_slice(&((thumb.len() + 2) as u16).to_be_bytes());
    with_app1.extend_from_slice(&thumb);
    with_app1.extend_from_slice(&frames[1][2..]);

    let mut stream = frames[0].clone();
    stream.extend_from_slice(b"noise between frames");
    stream.extend_from_slice(&with_app1);
    stream.extend_from_slice(&frames[2]);
    stream.extend_from_slice(&frames[0][..frames[0].len() / 2]); // truncated last frame

    let items: Vec<_> = MjpegReader::new(Trickle(std::io::Cursor::new(stream))).collect();
    assert_eq!(items.len(), 5, "{items:?}");
    assert_eq!(items[0].as_ref().unwrap(), &frames[0]);
    assert_eq!(items[1], Err(StreamError::Garbage { offset: frames[0].len() as u64, len: 20 }));
    assert_eq!(items[2].as_ref().unwrap(), &with_app1);
    assert_eq!(items[3].as_ref().unwrap(), &frames[2]);
    assert!(matches!(items[4], Err(StreamError::Truncated { len, .. }) if len == (frames[0].len() / 2) as u64));
    // The split frames decode to the same pictures as the JPEGs on their own.
    let name = std::path::Path::new("stream");
    assert_eq!(decode_bytes(items[2].as_ref().unwrap(), name).unwrap(), decode_bytes(&frames[1], name).unwrap());

    assert_eq!(MjpegReader::new(std::io::empty()).count(), 0, "zero-length input: no frames");
    let junk: Vec<_> = MjpegReader::new(&b"not a jpeg at all"[..]).collect();
    assert!(matches!(junk[..], [Err(StreamError::Garbage { offset: 0, len: 17 })]), "{junk:?}");
}

#[test]
fn raw_stream_cuts_fixed_size_frames_and_reports_a_torn_tail() {
    let img = frame("00_chelsea_0.png");
    let len = PixelFormat::Rgb24.frame_len(32, 32).unwrap();
    let mut stream = Vec::new();
    for _ in 0..3 {
        stream.extend_from_slice(img.as_raw());
    }
    stream.extend_from_slice(&img.as_raw()[..100]); // a frame cut short
    let items: Vec<_> = RawReader::new(Trickle(std::io::Cursor::new(stream)), len).collect();
    assert_eq!(items.len(), 4);
    for item in &items[..3] {
        let rgb = raw_to_rgb(item.as_ref().unwrap(), &RawLayout::tight(PixelFormat::Rgb24, 32, 32), YuvSpec::default())
            .unwrap();
        assert_eq!(rgb, img);
    }
    assert_eq!(items[3], Err(StreamError::Truncated { offset: 3 * len as u64, len: 100 }));
    assert_eq!(RawReader::new(std::io::empty(), len).count(), 0, "zero-length input: no frames");
}
