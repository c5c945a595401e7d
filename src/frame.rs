//! Decoding and preprocessing: image files and in-memory frames to `[C, H, W]` model input.
//!
//! The steps, each a function of its own:
//! 1. [`decode_file`] / [`decode_bytes`] (under [`InputLimits`], checked before anything is
//!    allocated; a decoder panic becomes an error): any format the `image` crate reads here (PNG, JPEG,
//!    BMP, GIF, TIFF, WebP, PNM, TGA, ICO, QOI, HDR, DDS, farbfeld), EXIF orientation applied,
//!    converted to 8-bit RGB: gray is replicated to three channels, **alpha is discarded**
//!    (not composited; the same as Pillow's `convert("RGB")`), 16-bit and float samples are
//!    scaled to 8 bits.
//! 2. [`resize_to`]: a frame already at the model's size passes through unchanged; otherwise
//!    [`ResizeMode::ShorterSideThenCenterCrop`] takes the centred box of the model's aspect
//!    ratio in source coordinates (fractional) and resamples it to `height x width` with a
//!    bilinear, antialiased convolution (the `fast_image_resize` crate; the same filter as
//!    Pillow's `resize(size, BILINEAR, box=...)`). [`ResizeMode::Stretch`] resamples the whole
//!    frame.
//! 3. [`normalise_into`]: `x = ((v / 255) * (hi - lo) + lo - mean[c]) / std[c]`, written in
//!    `[C, H, W]` order.

use std::path::Path;

use fast_image_resize::{images::Image, images::ImageRef, FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};

use crate::bundle::{Color, InputSpec, ResizeMode};
use crate::error::{Error, Result};

/// File extensions (lowercase) that folders are searched for.
pub const IMAGE_EXTENSIONS: &[&str] = &[
    "png", "jpg", "jpeg", "bmp", "gif", "tif", "tiff", "webp", "pbm", "pgm", "ppm", "pnm", "pam", "tga", "ico", "qoi",
    "hdr", "dds", "ff",
];

/// Whether `path` has one of [`IMAGE_EXTENSIONS`] (case-insensitive).
pub fn is_image_path(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .map(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        .unwrap_or(false)
}

/// Limits every outside input is checked against before memory is allocated for it.
///
/// Defaults are sized for cameras (up to 8K video and 50-megapixel stills fit) and keep a run's
/// peak memory near 300 MB at worst: sides of at most 8,192 pixels, 64 MiB for an encoded
/// input, 256 MiB for a decoder's working memory. The CLI's global `--max-image-side`,
/// `--max-input-mib`, `--max-decode-mib` and `--max-frames` raise or lower them.
///
/// | input | checked before allocating |
/// |---|---|
/// | image file | its size on disk `<= max_input_bytes`; empty is an error |
/// | encoded image (file or MJPEG frame) | width, height `<= max_side` from the header; the decoder's working memory `<= max_decoded_bytes` (`image::Limits::max_alloc`; JPEG counted at 9 bytes a pixel: 3 output, 6 for progressive coefficients) |
/// | IDX file | its size on disk and the body its header declares (`n * rows * cols`, checked arithmetic) `<= max_input_bytes`; rows, cols `<= max_side`; the body read (decompressed) only that far |
/// | MJPEG stream | a frame's bytes `<= max_input_bytes` (else skipped to the next start-of-image) |
/// | inputs of a run | at most `max_frames` frames from folders and IDX files |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputLimits {
    /// Largest width or height of an image, in pixels.
    pub max_side: u32,
    /// Largest encoded input: an image file, an MJPEG frame, an IDX body, in bytes.
    pub max_input_bytes: u64,
    /// Largest working memory of one image's decoder (its output and buffers), in bytes.
    pub max_decoded_bytes: u64,
    /// Most frames one run takes from its inputs (folders walked, IDX images).
    pub max_frames: usize,
}

impl Default for InputLimits {
    fn default() -> Self {
        InputLimits { max_side: 8192, max_input_bytes: 64 << 20, max_decoded_bytes: 256 << 20, max_frames: 1_000_000 }
    }
}

impl InputLimits {
    /// The same limits for the `image` crate's decoders.
    pub fn image_limits(&self) -> image::Limits {
        let mut l = image::Limits::default();
        l.max_image_width = Some(self.max_side);
        l.max_image_height = Some(self.max_side);
        l.max_alloc = Some(self.max_decoded_bytes);
        l
    }

    /// `Err(message)` when a `width x height` image is larger than the limits.
    pub fn check_size(&self, width: u64, height: u64) -> std::result::Result<(), String> {
        if width > self.max_side as u64 || height > self.max_side as u64 {
            return Err(format!(
                "{width}x{height} pixels exceeds the limit of {} pixels a side (--max-image-side)",
                self.max_side
            ));
        }
        Ok(())
    }

    /// `Err(message)` when `bytes` of `what` exceed [`max_input_bytes`](Self::max_input_bytes).
    pub fn check_bytes(&self, what: &str, bytes: u64) -> std::result::Result<(), String> {
        if bytes > self.max_input_bytes {
            return Err(format!(
                "{what} of {bytes} bytes exceeds the limit of {} MiB (--max-input-mib)",
                self.max_input_bytes >> 20
            ));
        }
        Ok(())
    }

    /// `Err(message)` when a decoder's `bytes` of working memory for `what` exceed
    /// [`max_decoded_bytes`](Self::max_decoded_bytes).
    pub fn check_decoded(&self, what: &str, bytes: u64) -> std::result::Result<(), String> {
        if bytes > self.max_decoded_bytes {
            return Err(format!(
                "{what} needs {bytes} bytes of decoding memory, more than the limit of {} MiB (--max-decode-mib)",
                self.max_decoded_bytes >> 20
            ));
        }
        Ok(())
    }
}

/// Runs `f`, turning a panic into [`Error::Decode`] for `name` ("decoder panicked: ...").
///
/// Decoders of outside bytes are third-party code; a panic in one must cost its frame, not
/// the run.
pub fn catch_decoder_panic<T>(name: &Path, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            Err(Error::Decode { path: name.into(), message: format!("decoder panicked: {}", panic_text(&*payload)) })
        }
    }
}

/// The message of a panic's payload (`&str` or `String`), or `no message`.
pub fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into())
}

/// Decodes a JPEG with zune-jpeg in strict mode: data that ends before the last scan is
/// complete is an error ("truncated"), not filled with gray.
fn decode_jpeg(bytes: &[u8], name: &Path, limits: &InputLimits) -> Result<DynamicImage> {
    use zune_core::{bytestream::ZCursor, colorspace::ColorSpace, options::DecoderOptions};
    use zune_jpeg::errors::DecodeErrors;
    let fail = |message: String| Error::Decode { path: name.into(), message };
    let jpeg_err = |e: DecodeErrors| match e {
        DecodeErrors::ExhaustedData | DecodeErrors::FormatStatic("Premature end of buffer") => {
            fail("truncated JPEG: the data ends before the image is complete".into())
        }
        DecodeErrors::FormatStatic("Premature End of image") => {
            fail("truncated JPEG: the end-of-image marker comes before any scan data".into())
        }
        e => fail(format!("JPEG: {e}")),
    };
    let options = DecoderOptions::default()
        .set_strict_mode(true)
        // The side limit is checked below from the header, with our own message.
        .set_max_width(usize::MAX)
        .set_max_height(usize::MAX)
        .jpeg_set_out_colorspace(ColorSpace::RGB);
    let mut decoder = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(bytes), options);
    decoder.decode_headers().map_err(jpeg_err)?;
    let (w, h) = decoder.dimensions().ok_or_else(|| fail("JPEG: no frame header".into()))?;
    limits.check_size(w as u64, h as u64).map_err(fail)?;
    limits.check_decoded(&format!("a {w}x{h} JPEG"), 9 * w as u64 * h as u64).map_err(fail)?;
    let orientation = decoder
        .exif()
        .and_then(|exif| image::metadata::Orientation::from_exif_chunk(exif))
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let pixels = decoder.decode().map_err(jpeg_err)?;
    let rgb = RgbImage::from_raw(w as u32, h as u32, pixels)
        .ok_or_else(|| fail(format!("JPEG: the decoder gave a buffer of the wrong size for {w}x{h} RGB")))?;
    let mut img = DynamicImage::ImageRgb8(rgb);
    img.apply_orientation(orientation);
    Ok(img)
}

fn decode_limited(bytes: &[u8], name: &Path, limits: &InputLimits) -> Result<RgbImage> {
    let err = |e: image::ImageError| {
        let message = match e {
            image::ImageError::Limits(e) => format!(
                "{e}: the limits are {} pixels a side (--max-image-side) and {} MiB of decoding memory (--max-decode-mib)",
                limits.max_side,
                limits.max_decoded_bytes >> 20
            ),
            e => e.to_string(),
        };
        Error::Decode { path: name.into(), message }
    };
    if bytes.is_empty() {
        return Err(Error::Decode { path: name.into(), message: "empty file".into() });
    }
    let mut reader =
        ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format().map_err(|e| Error::io(name, e))?;
    if reader.format() == Some(image::ImageFormat::Jpeg) {
        return Ok(decode_jpeg(bytes, name, limits)?.into_rgb8());
    }
    reader.limits(limits.image_limits());
    let mut decoder = reader.into_decoder().map_err(err)?;
    // The decoders check their own buffers against `max_alloc`, not the image they return:
    // the decoded image, and the 8-bit RGB copy made of it, are counted here from the header.
    let (w, h) = decoder.dimensions();
    let fail = |message: String| Error::Decode { path: name.into(), message };
    limits.check_size(w as u64, h as u64).map_err(fail)?;
    let need = decoder.total_bytes().saturating_add(3 * w as u64 * h as u64);
    limits.check_decoded(&format!("a {w}x{h} {:?} image", decoder.color_type()), need).map_err(fail)?;
    let orientation = decoder.orientation().map_err(err)?;
    let mut img = DynamicImage::from_decoder(decoder).map_err(err)?;
    img.apply_orientation(orientation);
    Ok(img.into_rgb8())
}

/// Decodes an image file to 8-bit RGB, EXIF orientation applied, alpha discarded, under the
/// default [`InputLimits`].
///
/// The format is guessed from the content, not the extension.
///
/// # Errors
/// As [`decode_file_with`].
pub fn decode_file(path: &Path) -> Result<RgbImage> {
    decode_file_with(path, &InputLimits::default())
}

/// [`decode_file`] under `limits`: the file's size is checked before it is read, its header
/// before pixels are allocated.
///
/// # Errors
/// [`Error::Io`] when the file cannot be read; [`Error::Decode`] naming the file when it is
/// empty, larger than the limits, truncated (a JPEG without its end, a PNG cut short), not a
/// readable image, or its decoder panicked.
pub fn decode_file_with(path: &Path, limits: &InputLimits) -> Result<RgbImage> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let fail = |message: String| Error::Decode { path: path.into(), message };
    limits.check_bytes("a file", len).map_err(fail)?;
    let mut bytes = Vec::with_capacity(len as usize);
    // The file may grow after the size check: read at most one byte past the limit.
    file.take(limits.max_input_bytes + 1).read_to_end(&mut bytes).map_err(|e| Error::io(path, e))?;
    limits.check_bytes("a file", bytes.len() as u64).map_err(fail)?;
    decode_bytes_with(&bytes, path, limits)
}

/// Decodes an encoded image held in memory under the default [`InputLimits`]; `name` is used
/// in error messages.
///
/// # Errors
/// As [`decode_bytes_with`].
pub fn decode_bytes(bytes: &[u8], name: &Path) -> Result<RgbImage> {
    decode_bytes_with(bytes, name, &InputLimits::default())
}

/// [`decode_bytes`] under `limits`.
///
/// # Errors
/// [`Error::Decode`] naming `name` when the bytes are empty, larger than the limits, truncated,
/// not a readable image, or the decoder panicked.
pub fn decode_bytes_with(bytes: &[u8], name: &Path, limits: &InputLimits) -> Result<RgbImage> {
    catch_decoder_panic(name, || decode_limited(bytes, name, limits))
}

/// Brings `img` to `width x height` by `mode` (see the module docs); unchanged when it already
/// has that size.
///
/// # Errors
/// [`Error::Invalid`] for an empty image or target.
pub fn resize_to(img: &RgbImage, width: u32, height: u32, mode: ResizeMode) -> Result<RgbImage> {
    let (w, h) = img.dimensions();
    if (w, h) == (width, height) {
        return Ok(img.clone());
    }
    if w == 0 || h == 0 || width == 0 || height == 0 {
        return Err(Error::Invalid(format!("cannot resize a {w}x{h} image to {width}x{height}")));
    }
    // A view of the frame, not a copy: a large camera frame is held once.
    let src =
        ImageRef::new(w, h, img.as_raw(), PixelType::U8x3).map_err(|e| Error::Invalid(format!("image buffer: {e}")))?;
    let mut dst = Image::new(width, height, PixelType::U8x3);
    let mut options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
    if mode == ResizeMode::ShorterSideThenCenterCrop {
        let scale = f64::max(width as f64 / w as f64, height as f64 / h as f64);
        let (bw, bh) = (width as f64 / scale, height as f64 / scale);
        options = options.crop((w as f64 - bw) / 2.0, (h as f64 - bh) / 2.0, bw, bh);
    }
    Resizer::new().resize(&src, &mut dst, &options).map_err(|e| Error::Invalid(format!("resize: {e}")))?;
    RgbImage::from_raw(width, height, dst.into_vec())
        .ok_or_else(|| Error::Invalid("resize produced a buffer of the wrong size".into()))
}

/// Writes the normalised `[C, H, W]` values of `img` (already `spec.width x spec.height`) into
/// `out` (length `C * H * W`).
///
/// # Errors
/// [`Error::Shape`] when the image or `out` does not match `spec`.
pub fn normalise_into(img: &RgbImage, spec: &InputSpec, out: &mut [f32]) -> Result<()> {
    let (w, h) = (spec.width as usize, spec.height as usize);
    let c = spec.color.channels();
    if img.dimensions() != (spec.width, spec.height) || out.len() != c * h * w {
        return Err(Error::Shape {
            path: Default::default(),
            expected: format!("{}x{} image into [{c}, {h}, {w}]", spec.width, spec.height),
            got: format!("{}x{} image into {} values", img.width(), img.height(), out.len()),
        });
    }
    let [lo, hi] = spec.pixel_range;
    let scale = (hi - lo) / 255.0;
    let raw = img.as_raw();
    let plane = h * w;
    match spec.color {
        Color::Rgb | Color::Bgr => {
            for ch in 0..3 {
                let (m, s) = (spec.mean[ch], spec.std[ch]);
                let src = spec.color.source_channel(ch);
                let dst = &mut out[ch * plane..(ch + 1) * plane];
                for (i, d) in dst.iter_mut().enumerate() {
                    *d = (raw[3 * i + src] as f32 * scale + lo - m) / s;
                }
            }
        }
        Color::Gray => {
            let (m, s) = (spec.mean[0], spec.std[0]);
            for (i, d) in out.iter_mut().enumerate() {
                let p = &raw[3 * i..3 * i + 3];
                // Pillow's "L": (R * 299 + G * 587 + B * 114) / 1000, rounded.
                let l = (p[0] as u32 * 299 + p[1] as u32 * 587 + p[2] as u32 * 114 + 500) / 1000;
                *d = (l as f32 * scale + lo - m) / s;
            }
        }
    }
    Ok(())
}

/// The inverse of [`normalise_into`]: an 8-bit RGB image (`spec.width x spec.height`) from a
/// model input `[C, H, W]`. Each value maps back to the pixel value `p = x * std[c] + mean[c]`,
/// then to `round(255 * (p - lo) / (hi - lo))` clamped to `[0, 255]`; a gray frame is written
/// with R = G = B.
///
/// # Errors
/// [`Error::Shape`] when `values` is not `spec.frame_len()` long.
pub fn denormalise(values: &[f32], spec: &InputSpec) -> Result<RgbImage> {
    let (w, h) = (spec.width as usize, spec.height as usize);
    let c = spec.color.channels();
    if values.len() != c * h * w {
        return Err(Error::Shape {
            path: Default::default(),
            expected: format!("[{c}, {h}, {w}] = {} values", c * h * w),
            got: format!("{} values", values.len()),
        });
    }
    let [lo, hi] = spec.pixel_range;
    let plane = h * w;
    let to_u8 = |x: f32, ch: usize| {
        let p = x * spec.std[ch] + spec.mean[ch];
        (255.0 * (p - lo) / (hi - lo)).round().clamp(0.0, 255.0) as u8
    };
    let mut raw = vec![0u8; 3 * plane];
    for i in 0..plane {
        for k in 0..3 {
            // The tensor channel that holds RGB channel k (its own inverse for BGR).
            let ch = if c == 1 { 0 } else { spec.color.source_channel(k) };
            raw[3 * i + k] = to_u8(values[ch * plane + i], ch);
        }
    }
    RgbImage::from_raw(spec.width, spec.height, raw)
        .ok_or_else(|| Error::Invalid(format!("cannot make a {w}x{h} image")))
}

/// Resizes and normalises a decoded frame into `out` (`[C, H, W]`, length `spec.frame_len()`).
///
/// # Errors
/// As [`resize_to`] and [`normalise_into`].
pub fn preprocess_into(img: &RgbImage, spec: &InputSpec, out: &mut [f32]) -> Result<()> {
    let sized = resize_to(img, spec.width, spec.height, spec.resize)?;
    normalise_into(&sized, spec, out)
}

/// Reads `path` and returns its `[C, H, W]` model input.
///
/// # Errors
/// As [`decode_file`] and [`preprocess_into`].
pub fn load_frame(path: &Path, spec: &InputSpec) -> Result<Vec<f32>> {
    let img = decode_file(path)?;
    let mut out = vec![0.0; spec.frame_len()];
    preprocess_into(&img, spec, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalise_matches_the_formula() {
        let mut img = RgbImage::new(2, 1);
        img.put_pixel(0, 0, image::Rgb([0, 128, 255]));
        img.put_pixel(1, 0, image::Rgb([255, 0, 51]));
        let mut spec = InputSpec::plain(1, 2, Color::Rgb);
        spec.mean = vec![0.5, 0.25, 0.0];
        spec.std = vec![0.5, 2.0, 0.1];
        let mut out = [0.0f32; 6];
        normalise_into(&img, &spec, &mut out).unwrap();
        let want = [
            (0.0 - 0.5) / 0.5,
            (1.0 - 0.5) / 0.5,
            (128.0 / 255.0 - 0.25) / 2.0,
            (0.0 - 0.25) / 2.0,
            1.0 / 0.1,
            (51.0 / 255.0) / 0.1,
        ];
        for (o, w) in out.iter().zip(want) {
            assert!((o - w).abs() < 1e-6, "{out:?}");
        }
    }

    #[test]
    fn bgr_puts_blue_first_with_its_own_mean_and_std_and_denormalises_back() {
        let mut img = RgbImage::new(2, 1);
        img.put_pixel(0, 0, image::Rgb([0, 128, 255]));
        img.put_pixel(1, 0, image::Rgb([255, 0, 51]));
        let mut spec = InputSpec::plain(1, 2, Color::Bgr);
        spec.pixel_range = [0.0, 255.0];
        spec.mean = vec![100.0, 120.0, 140.0]; // B, G, R
        spec.std = vec![2.0, 4.0, 5.0];
        let mut out = [0.0f32; 6];
        normalise_into(&img, &spec, &mut out).unwrap();
        let want = [(255.0 - 100.0) / 2.0, (51.0 - 100.0) / 2.0, 8.0 / 4.0, -30.0, -28.0, (255.0 - 140.0) / 5.0];
        for (o, w) in out.iter().zip(want) {
            assert!((o - w).abs() < 1e-4, "{out:?}");
        }
        assert_eq!(denormalise(&out, &spec).unwrap(), img);
    }

    #[test]
    fn a_decoder_panic_becomes_a_decode_error_naming_the_frame() {
        let r: Result<()> = catch_decoder_panic(Path::new("cam#7"), || panic!("index out of bounds: {}", 9));
        match r {
            Err(Error::Decode { path, message }) => {
                assert_eq!(path, Path::new("cam#7"));
                assert_eq!(message, "decoder panicked: index out of bounds: 9");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn limits_refuse_sizes_beyond_them_and_accept_the_edge() {
        let l = InputLimits { max_side: 100, max_input_bytes: 1 << 20, max_decoded_bytes: 2 << 20, max_frames: 10 };
        assert!(l.check_size(100, 100).is_ok());
        assert!(l.check_size(101, 1).unwrap_err().contains("101x1 pixels exceeds the limit of 100"));
        assert!(l.check_bytes("a file", 1 << 20).is_ok());
        assert!(l
            .check_bytes("a file", (1 << 20) + 1)
            .unwrap_err()
            .contains("1048577 bytes exceeds the limit of 1 MiB"));
        let il = l.image_limits();
        assert_eq!((il.max_image_width, il.max_image_height, il.max_alloc), (Some(100), Some(100), Some(2 << 20)));
        assert!(l.check_decoded("x", (2 << 20) + 1).unwrap_err().contains("more than the limit of 2 MiB"));
    }

    #[test]
    fn same_size_passes_through() {
        let img = RgbImage::from_fn(4, 3, |x, y| image::Rgb([x as u8 * 60, y as u8 * 80, 7]));
        assert_eq!(resize_to(&img, 4, 3, ResizeMode::ShorterSideThenCenterCrop).unwrap(), img);
    }

    #[test]
    fn constant_image_stays_constant_after_resize() {
        let img = RgbImage::from_pixel(97, 41, image::Rgb([10, 200, 90]));
        for mode in [ResizeMode::ShorterSideThenCenterCrop, ResizeMode::Stretch] {
            let out = resize_to(&img, 32, 32, mode).unwrap();
            assert!(out.pixels().all(|p| p.0 == [10, 200, 90]));
        }
    }

    #[test]
    fn centre_crop_keeps_the_centre() {
        // Left third red, middle third green, right third blue: a 90x30 frame cropped to its
        // central 30x30 square and scaled to 10x10 is all green.
        let img = RgbImage::from_fn(90, 30, |x, _| match x / 30 {
            0 => image::Rgb([255, 0, 0]),
            1 => image::Rgb([0, 255, 0]),
            _ => image::Rgb([0, 0, 255]),
        });
        let out = resize_to(&img, 10, 10, ResizeMode::ShorterSideThenCenterCrop).unwrap();
        // Only the outermost columns may see a little of the neighbours through the filter.
        for y in 0..10 {
            for x in 1..9 {
                assert_eq!(out.get_pixel(x, y).0, [0, 255, 0], "pixel ({x}, {y})");
            }
        }
    }
}
