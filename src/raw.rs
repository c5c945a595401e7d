//! Camera frames that are not image files: raw pixel buffers and MJPEG streams.
//!
//! - [`PixelFormat`]: the raw layouts cameras and `ffmpeg -f rawvideo` produce, and
//!   [`raw_to_rgb`], which turns one buffer into an RGB image (the YUV formats through
//!   yuvutils-rs, BT.601 or BT.709, limited or full range), ready for the same resize and
//!   normalisation as a decoded image file.
//! - [`RawReader`]: cuts a byte stream of raw frames into frames of one fixed size.
//! - [`MjpegReader`]: splits a byte stream of concatenated JPEG images (what
//!   `ffmpeg -f mjpeg`, `rpicam-vid --codec mjpeg` and UVC cameras produce) into one JPEG per
//!   frame by walking the JPEG marker structure (ITU-T T.81, annex B), so an embedded EXIF
//!   thumbnail does not end a frame early. Garbage between frames, a corrupt frame and a truncated
//!   last frame are reported as errors and the stream goes on.

use std::io::Read;

use image::RgbImage;
use yuvutils_rs::{YuvBiPlanarImage, YuvConversionMode, YuvPackedImage, YuvPlanarImage, YuvRange, YuvStandardMatrix};

use crate::error::{Error, Result};

/// Largest raw frame accepted, in bytes (256 MiB: an 8K RGB frame is 100 MB).
pub const MAX_FRAME_BYTES: usize = 256 << 20;

/// The layout of one raw frame of `width x height` pixels, rows top to bottom, no padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PixelFormat {
    /// 3 bytes per pixel, R G B.
    Rgb24,
    /// 3 bytes per pixel, B G R.
    Bgr24,
    /// 1 byte per pixel, luma; replicated to R = G = B.
    Gray8,
    /// 4:2:2 packed, 2 bytes per pixel: Y0 U Y1 V for each pair of pixels (V4L2 `YUYV`).
    Yuyv422,
    /// 4:2:0 semi-planar: the Y plane, then one plane of interleaved U V at half resolution.
    Nv12,
    /// 4:2:0 planar: the Y plane, then U, then V, each at half resolution (`yuv420p`).
    I420,
}

impl PixelFormat {
    /// Every format, in the order of the CLI's choices.
    pub const ALL: [PixelFormat; 6] = [
        PixelFormat::Rgb24,
        PixelFormat::Bgr24,
        PixelFormat::Gray8,
        PixelFormat::Yuyv422,
        PixelFormat::Nv12,
        PixelFormat::I420,
    ];

    /// The name used on the command line and by ffmpeg's `-pix_fmt` (`i420` is ffmpeg's
    /// `yuv420p`).
    pub fn name(self) -> &'static str {
        match self {
            PixelFormat::Rgb24 => "rgb24",
            PixelFormat::Bgr24 => "bgr24",
            PixelFormat::Gray8 => "gray8",
            PixelFormat::Yuyv422 => "yuyv422",
            PixelFormat::Nv12 => "nv12",
            PixelFormat::I420 => "i420",
        }
    }

    /// Bytes in one frame of `width x height` without padding ([`RawLayout::tight`]): odd
    /// sizes of the subsampled formats round their chroma up, as ffmpeg does.
    ///
    /// ```
    /// use ebm_gate::raw::PixelFormat;
    /// assert_eq!(PixelFormat::Rgb24.frame_len(640, 480).unwrap(), 921_600);
    /// assert_eq!(PixelFormat::I420.frame_len(640, 480).unwrap(), 460_800);
    /// // 641x481: chroma planes of 321x241
    /// assert_eq!(PixelFormat::I420.frame_len(641, 481).unwrap(), 641 * 481 + 2 * 321 * 241);
    /// assert_eq!(PixelFormat::Nv12.frame_len(641, 481).unwrap(), 641 * 481 + 642 * 241);
    /// ```
    ///
    /// # Errors
    /// As [`RawLayout::frame_len`].
    pub fn frame_len(self, width: u32, height: u32) -> Result<usize> {
        RawLayout::tight(self, width, height).frame_len()
    }

    /// Whether the format has a separate chroma plane (NV12, I420).
    pub fn is_planar(self) -> bool {
        matches!(self, PixelFormat::Nv12 | PixelFormat::I420)
    }
}

/// Where a raw frame's pixels sit in its buffer: the format and size, and the padding cameras
/// add. V4L2 describes a single-planar buffer by `bytesperline` (the stride of the first plane;
/// NV12's chroma plane has the same, I420's chroma planes half of it), and libcamera (the
/// Raspberry Pi's camera stack) by a stride aligned to 32 or 64 bytes and, for some sensors,
/// planes of more rows than the image. Padding is skipped, never passed to the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawLayout {
    /// The pixel format.
    pub format: PixelFormat,
    /// Frame width in pixels.
    pub width: u32,
    /// Frame height in pixels.
    pub height: u32,
    /// Bytes from the start of one row to the next in the first plane (the only one of RGB,
    /// BGR, gray and YUYV; the luma plane of NV12 and I420); `None`: rows without padding.
    pub stride: Option<u32>,
    /// Rows of the luma plane before the chroma plane starts (NV12, I420); `None`: `height`.
    pub plane_rows: Option<u32>,
}

impl RawLayout {
    /// A frame without padding.
    pub fn tight(format: PixelFormat, width: u32, height: u32) -> RawLayout {
        RawLayout { format, width, height, stride: None, plane_rows: None }
    }

    /// Bytes a row of the first plane needs.
    fn row_bytes(&self) -> u64 {
        let w = self.width as u64;
        match self.format {
            PixelFormat::Rgb24 | PixelFormat::Bgr24 => 3 * w,
            PixelFormat::Gray8 | PixelFormat::Nv12 | PixelFormat::I420 => w,
            PixelFormat::Yuyv422 => 4 * w.div_ceil(2),
        }
    }

    /// Stride of the first plane, in bytes.
    fn luma_stride(&self) -> u64 {
        self.stride.map_or(self.row_bytes(), u64::from)
    }

    /// Stride of a chroma plane (NV12: interleaved U V; I420: U or V), in bytes.
    fn chroma_stride(&self) -> u64 {
        let cw = (self.width as u64).div_ceil(2);
        match (self.format, self.stride) {
            (PixelFormat::Nv12, Some(s)) => s as u64,
            (PixelFormat::Nv12, None) => 2 * cw,
            (PixelFormat::I420, Some(s)) => (s as u64).div_ceil(2),
            (PixelFormat::I420, None) => cw,
            _ => 0,
        }
    }

    /// Rows of the luma plane, and of each chroma plane.
    fn rows(&self) -> (u64, u64) {
        let rows = self.plane_rows.unwrap_or(self.height) as u64;
        (rows, rows.div_ceil(2))
    }

    /// Bytes in one frame: `stride * rows` for the first plane, plus NV12's chroma plane
    /// (`stride * ceil(rows / 2)`) or I420's two (`ceil(stride / 2) * ceil(rows / 2)` each).
    ///
    /// ```
    /// use ebm_gate::raw::{PixelFormat, RawLayout};
    /// // A Raspberry Pi camera's 1920x1080 YUV420: stride 1920, planes of 1088 rows.
    /// let l = RawLayout { plane_rows: Some(1088), ..RawLayout::tight(PixelFormat::I420, 1920, 1080) };
    /// assert_eq!(l.frame_len().unwrap(), 1920 * 1088 + 2 * 960 * 544);
    /// // A V4L2 driver that pads 638-pixel YUYV rows to 1280 bytes.
    /// let l = RawLayout { stride: Some(1280), ..RawLayout::tight(PixelFormat::Yuyv422, 638, 480) };
    /// assert_eq!(l.frame_len().unwrap(), 1280 * 480);
    /// ```
    ///
    /// # Errors
    /// [`Error::Invalid`] for a zero size, a stride shorter than a row, plane rows fewer than
    /// the height (or given for a packed format), or a frame larger than [`MAX_FRAME_BYTES`].
    pub fn frame_len(&self) -> Result<usize> {
        let (width, height, name) = (self.width, self.height, self.format.name());
        if width == 0 || height == 0 {
            return Err(Error::Invalid(format!("frame size must be positive, got {width}x{height}")));
        }
        let row = self.row_bytes();
        if let Some(s) = self.stride {
            let least = if self.format == PixelFormat::Nv12 { row.max(2 * (width as u64).div_ceil(2)) } else { row };
            if (s as u64) < least {
                return Err(Error::Invalid(format!(
                    "a stride of {s} bytes is less than the {least} bytes a {name} row of {width} pixels needs"
                )));
            }
        }
        match self.plane_rows {
            Some(r) if !self.format.is_planar() => {
                return Err(Error::Invalid(format!("plane rows ({r}) apply to nv12 and i420, not {name}")));
            }
            Some(r) if r < height => {
                return Err(Error::Invalid(format!("{r} plane rows are fewer than the frame's {height} rows")));
            }
            _ => {}
        }
        let (rows, chroma_rows) = self.rows();
        let chroma_planes = match self.format {
            PixelFormat::Nv12 => 1,
            PixelFormat::I420 => 2,
            _ => 0,
        };
        // At most (2^32 - 1)^2 * 3: no overflow in u64.
        let len = self.luma_stride() * rows + chroma_planes * self.chroma_stride() * chroma_rows;
        if len > MAX_FRAME_BYTES as u64 {
            return Err(Error::Invalid(format!(
                "a {name} frame of {width}x{height} is {len} bytes, more than the limit of {} MiB",
                MAX_FRAME_BYTES >> 20
            )));
        }
        Ok(len as usize)
    }
}

impl std::str::FromStr for PixelFormat {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let s = s.to_ascii_lowercase();
        let s = match s.as_str() {
            "yuv420p" => "i420",
            "yuyv" | "yuy2" => "yuyv422",
            "gray" => "gray8",
            other => other,
        };
        PixelFormat::ALL.into_iter().find(|f| f.name() == s).ok_or_else(|| {
            let names: Vec<&str> = PixelFormat::ALL.iter().map(|f| f.name()).collect();
            format!("unknown pixel format {s:?} (one of {})", names.join(", "))
        })
    }
}

/// YUV matrix and range of a camera's raw frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct YuvSpec {
    /// `false`: BT.601 (SD cameras, V4L2 default); `true`: BT.709 (HD).
    pub bt709: bool,
    /// `false`: limited ("TV", Y in 16..=235); `true`: full range (JPEG-style, Y in 0..=255).
    pub full_range: bool,
}

impl Default for YuvSpec {
    /// BT.601, limited range: what V4L2 webcams and `ffmpeg -pix_fmt yuyv422/nv12/yuv420p` give
    /// unless told otherwise.
    fn default() -> Self {
        YuvSpec { bt709: false, full_range: false }
    }
}

/// Converts one raw frame to RGB, skipping the padding its layout describes.
///
/// ```
/// use ebm_gate::raw::{raw_to_rgb, PixelFormat, RawLayout, YuvSpec};
/// let bgr = [0u8, 0, 255, 255, 0, 0]; // a red pixel, a blue pixel
/// let img = raw_to_rgb(&bgr, &RawLayout::tight(PixelFormat::Bgr24, 2, 1), YuvSpec::default()).unwrap();
/// assert_eq!(img.as_raw(), &[255, 0, 0, 0, 0, 255]);
/// // Rows padded to 4 bytes: the padding (9, 9) is not part of the image.
/// let gray = [10u8, 20, 9, 9, 30, 40, 9, 9];
/// let layout = RawLayout { stride: Some(4), ..RawLayout::tight(PixelFormat::Gray8, 2, 2) };
/// let img = raw_to_rgb(&gray, &layout, YuvSpec::default()).unwrap();
/// assert_eq!(img.as_raw(), &[10, 10, 10, 20, 20, 20, 30, 30, 30, 40, 40, 40]);
/// ```
///
/// # Errors
/// [`Error::Shape`] when `data` is not exactly one frame long; the errors of
/// [`RawLayout::frame_len`]; [`Error::Decode`] if the YUV converter refuses the buffer.
pub fn raw_to_rgb(data: &[u8], layout: &RawLayout, yuv: YuvSpec) -> Result<RgbImage> {
    let RawLayout { format, width, height, .. } = *layout;
    let len = layout.frame_len()?;
    if data.len() != len {
        return Err(Error::Shape {
            path: format!("{} frame", format.name()).into(),
            expected: format!("{len} bytes for {width}x{height}"),
            got: format!("{} bytes", data.len()),
        });
    }
    let (w, h) = (width as usize, height as usize);
    let stride = layout.luma_stride() as usize;
    let cstride = layout.chroma_stride() as usize;
    let luma_len = stride * layout.rows().0 as usize;
    let mut rgb = vec![0u8; 3 * w * h];
    let matrix = if yuv.bt709 { YuvStandardMatrix::Bt709 } else { YuvStandardMatrix::Bt601 };
    let range = if yuv.full_range { YuvRange::Full } else { YuvRange::Limited };
    let fail = |e: yuvutils_rs::YuvError| Error::Decode {
        path: format!("{} frame", format.name()).into(),
        message: e.to_string(),
    };
    let rows = data.chunks(stride).take(h);
    match format {
        PixelFormat::Rgb24 => {
            for (o, i) in rgb.chunks_exact_mut(3 * w).zip(rows) {
                o.copy_from_slice(&i[..3 * w]);
            }
        }
        PixelFormat::Bgr24 => {
            for (o, i) in rgb.chunks_exact_mut(3 * w).zip(rows) {
                for (o, i) in o.chunks_exact_mut(3).zip(i.chunks_exact(3)) {
                    o.copy_from_slice(&[i[2], i[1], i[0]]);
                }
            }
        }
        PixelFormat::Gray8 => {
            for (o, i) in rgb.chunks_exact_mut(3 * w).zip(rows) {
                for (o, &v) in o.chunks_exact_mut(3).zip(&i[..w]) {
                    o.fill(v);
                }
            }
        }
        PixelFormat::Yuyv422 => {
            // yuvutils-rs 0.8 checks a packed frame's length against its tight size whatever
            // the stride: padded rows are packed first.
            let row = layout.row_bytes() as usize;
            let packed: Vec<u8>;
            let yuy = if stride == row {
                data
            } else {
                packed = rows.flat_map(|r| &r[..row]).copied().collect();
                &packed
            };
            let img = YuvPackedImage { yuy, yuy_stride: row as u32, width, height };
            yuvutils_rs::yuyv422_to_rgb(&img, &mut rgb, 3 * width, range, matrix).map_err(fail)?;
        }
        PixelFormat::Nv12 => {
            let (y, uv) = data.split_at(luma_len);
            // yuvutils-rs 0.8 takes an interleaved chroma plane only at its tight size: padded
            // rows and plane rows are packed first.
            let (row, chroma_rows) = (2 * w.div_ceil(2), h.div_ceil(2));
            let packed: Vec<u8>;
            let uv = if cstride == row && uv.len() == row * chroma_rows {
                uv
            } else {
                packed = uv.chunks(cstride).take(chroma_rows).flat_map(|r| &r[..row]).copied().collect();
                &packed
            };
            let img = YuvBiPlanarImage {
                // Exactly the frame's rows: yuvutils-rs 0.8 finds an odd last row as the
                // remainder of the plane.
                y_plane: &y[..stride * h],
                y_stride: stride as u32,
                uv_plane: uv,
                uv_stride: row as u32,
                width,
                height,
            };
            yuvutils_rs::yuv_nv12_to_rgb(&img, &mut rgb, 3 * width, range, matrix, YuvConversionMode::Balanced)
                .map_err(fail)?;
        }
        PixelFormat::I420 => {
            let (y, uv) = data.split_at(luma_len);
            let (u, v) = uv.split_at(uv.len() / 2);
            let chroma_len = cstride * h.div_ceil(2);
            let img = YuvPlanarImage {
                // Exactly the frame's rows (see NV12).
                y_plane: &y[..stride * h],
                y_stride: stride as u32,
                u_plane: &u[..chroma_len],
                u_stride: cstride as u32,
                v_plane: &v[..chroma_len],
                v_stride: cstride as u32,
                width,
                height,
            };
            yuvutils_rs::yuv420_to_rgb(&img, &mut rgb, 3 * width, range, matrix).map_err(fail)?;
        }
    }
    RgbImage::from_raw(width, height, rgb).ok_or_else(|| Error::Invalid("RGB buffer size".into()))
}

/// What went wrong in a frame stream (MJPEG or raw), with the byte offset where it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamError {
    /// Bytes that are not a JPEG frame (from `offset`, `len` bytes were skipped to the next
    /// start-of-image marker).
    Garbage {
        /// Where the bad bytes start in the stream.
        offset: u64,
        /// How many were skipped.
        len: u64,
    },
    /// A frame that starts like a JPEG (start-of-image marker) but whose marker structure is
    /// broken (from `offset`, `len` bytes were skipped to the next start-of-image marker).
    Corrupt {
        /// Where the frame starts in the stream.
        offset: u64,
        /// How many bytes were skipped.
        len: u64,
    },
    /// A frame longer than the limit (from `offset`, `len` bytes were skipped to the next
    /// start-of-image marker).
    TooLarge {
        /// Where the frame starts in the stream.
        offset: u64,
        /// How many bytes were skipped.
        len: u64,
        /// The limit, in bytes.
        limit: u64,
    },
    /// The stream ended inside a frame.
    Truncated {
        /// Where the unfinished frame starts.
        offset: u64,
        /// The bytes it had.
        len: u64,
    },
    /// The underlying reader failed.
    Io(String),
}

impl std::fmt::Display for StreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StreamError::Garbage { offset, len } => write!(f, "{len} bytes at offset {offset} are not a JPEG frame"),
            StreamError::Corrupt { offset, len } => {
                write!(f, "corrupt JPEG frame at offset {offset}: broken marker structure, {len} bytes skipped")
            }
            StreamError::TooLarge { offset, len, limit } => write!(
                f,
                "the frame at offset {offset} grew past the limit of {} MiB a frame (--max-input-mib): {len} bytes skipped",
                limit >> 20
            ),
            StreamError::Truncated { offset, len } => {
                write!(f, "the stream ended inside a frame: it had {len} bytes from offset {offset}")
            }
            StreamError::Io(e) => write!(f, "read error: {e}"),
        }
    }
}

impl std::error::Error for StreamError {}

/// How far a buffer starting with SOI holds a whole JPEG.
enum Scan {
    /// The frame is the first `n` bytes.
    Complete(usize),
    /// More bytes are needed.
    Incomplete,
    /// The marker structure is broken at this index.
    Broken(usize),
}

/// Where [`scan_jpeg`] stopped in a frame it has not finished, so that the next call goes on
/// from there: each byte of a frame is looked at once (linear time however it arrives).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ScanPos {
    /// Index of the next byte to look at.
    at: usize,
    /// Inside entropy-coded data (after a start-of-scan segment).
    entropy: bool,
}

impl ScanPos {
    const START: ScanPos = ScanPos { at: 2, entropy: false };
}

/// Walks the marker segments of the JPEG at the start of `buf` (which begins with FF D8) from
/// `pos`, updating it where more bytes are needed.
fn scan_jpeg(buf: &[u8], pos: &mut ScanPos) -> Scan {
    let mut i = pos.at;
    loop {
        if pos.entropy {
            // Entropy-coded data: ends at the first FF not followed by 00 (stuffing) or a
            // restart marker.
            loop {
                if i + 1 >= buf.len() {
                    pos.at = i;
                    return Scan::Incomplete;
                }
                if buf[i] == 0xFF && buf[i + 1] != 0x00 && !(0xD0..=0xD7).contains(&buf[i + 1]) {
                    break;
                }
                i += 1;
            }
            pos.entropy = false;
        }
        // Markers may be preceded by fill bytes FF.
        while i + 1 < buf.len() && buf[i] == 0xFF && buf[i + 1] == 0xFF {
            i += 1;
        }
        if i + 1 >= buf.len() {
            pos.at = i;
            return Scan::Incomplete;
        }
        if buf[i] != 0xFF {
            return Scan::Broken(i);
        }
        let marker = buf[i + 1];
        match marker {
            0xD9 => return Scan::Complete(i + 2),
            0xD8 => return Scan::Broken(i),
            0x01 | 0xD0..=0xD7 => i += 2,
            _ => {
                if i + 3 >= buf.len() {
                    pos.at = i;
                    return Scan::Incomplete;
                }
                let len = u16::from_be_bytes([buf[i + 2], buf[i + 3]]) as usize;
                if len < 2 {
                    return Scan::Broken(i);
                }
                i += 2 + len;
                pos.entropy = marker == 0xDA;
            }
        }
    }
}

/// Splits a stream of concatenated JPEG images into frames (see the module docs).
///
/// Each item is one JPEG's bytes, or a [`StreamError`] for garbage, a frame larger than the
/// limit, or a truncated last frame; after an error the reader goes on with the next frame.
/// Memory holds at most one frame of up to `max_frame_bytes` (or 1 MiB of garbage) plus one
/// read chunk, and each byte is scanned once.
#[derive(Debug)]
pub struct MjpegReader<R: Read> {
    reader: R,
    buf: Vec<u8>,
    /// Stream offset of `buf[0]`.
    offset: u64,
    eof: bool,
    /// Where the scan of the frame at the start of `buf` goes on.
    pos: ScanPos,
    /// Bytes at the start of `buf` already searched for a start-of-image (garbage).
    searched: usize,
    max_frame_bytes: usize,
}

/// Largest MJPEG frame [`MjpegReader::new`] accepts: 64 MiB, the default
/// [`InputLimits`](crate::frame::InputLimits)' `max_input_bytes`.
pub const MAX_MJPEG_FRAME_BYTES: usize = 64 << 20;

impl<R: Read> MjpegReader<R> {
    /// Reads from `reader` (a file, stdin, a pipe), with frames of at most
    /// [`MAX_MJPEG_FRAME_BYTES`].
    pub fn new(reader: R) -> Self {
        Self::with_max_frame(reader, MAX_MJPEG_FRAME_BYTES)
    }

    /// Reads from `reader`; a frame that grows past `max_frame_bytes` without ending is
    /// reported as [`StreamError::TooLarge`] and skipped to the next start-of-image.
    pub fn with_max_frame(reader: R, max_frame_bytes: usize) -> Self {
        MjpegReader {
            reader,
            buf: Vec::new(),
            offset: 0,
            eof: false,
            pos: ScanPos::START,
            searched: 0,
            max_frame_bytes: max_frame_bytes.max(4),
        }
    }

    fn fill(&mut self) -> std::result::Result<bool, StreamError> {
        if self.eof {
            return Ok(false);
        }
        let mut chunk = [0u8; 64 * 1024];
        loop {
            match self.reader.read(&mut chunk) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(false);
                }
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(true);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.eof = true;
                    return Err(StreamError::Io(e.to_string()));
                }
            }
        }
    }

    fn consume(&mut self, n: usize) -> Vec<u8> {
        let rest = self.buf.split_off(n);
        self.offset += n as u64;
        self.pos = ScanPos::START;
        self.searched = 0;
        std::mem::replace(&mut self.buf, rest)
    }

    /// Drops the frame at the start of `buf` and everything up to the next start-of-image
    /// after `from` (or all of `buf`), returning the offset and length dropped.
    fn skip_frame(&mut self, from: usize) -> (u64, u64) {
        let skip = find_soi(&self.buf, from.max(2)).unwrap_or(self.buf.len());
        let offset = self.offset;
        self.consume(skip);
        (offset, skip as u64)
    }
}

fn find_soi(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?.windows(2).position(|w| w == [0xFF, 0xD8]).map(|p| p + from)
}

impl<R: Read> Iterator for MjpegReader<R> {
    type Item = std::result::Result<Vec<u8>, StreamError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            // Bytes before the next start-of-image are garbage.
            match find_soi(&self.buf, self.searched) {
                Some(0) => {}
                Some(p) => {
                    let offset = self.offset;
                    self.consume(p);
                    return Some(Err(StreamError::Garbage { offset, len: p as u64 }));
                }
                None => {
                    // No start-of-image yet: read on, and report the garbage as one run when
                    // the next frame starts (above), at the end, or past 1 MiB so that a stream
                    // of garbage does not pile up in memory. A trailing FF may start an SOI.
                    let keep = usize::from(self.buf.last() == Some(&0xFF));
                    let junk = self.buf.len() - keep;
                    self.searched = junk;
                    if junk > 1 << 20 {
                        let offset = self.offset;
                        self.consume(junk);
                        return Some(Err(StreamError::Garbage { offset, len: junk as u64 }));
                    }
                    match self.fill() {
                        Ok(true) => continue,
                        Ok(false) if self.buf.is_empty() => return None,
                        Ok(false) => {
                            let (offset, len) = (self.offset, self.buf.len() as u64);
                            self.consume(self.buf.len());
                            return Some(Err(StreamError::Garbage { offset, len }));
                        }
                        Err(e) => return Some(Err(e)),
                    }
                }
            }
            let mut pos = self.pos;
            let scan = scan_jpeg(&self.buf, &mut pos);
            self.pos = pos;
            match scan {
                Scan::Complete(n) if n > self.max_frame_bytes => {
                    let (offset, len) = self.skip_frame(n);
                    return Some(Err(StreamError::TooLarge { offset, len, limit: self.max_frame_bytes as u64 }));
                }
                Scan::Complete(n) => return Some(Ok(self.consume(n))),
                Scan::Broken(at) => {
                    // Skip to the next SOI after this one's start.
                    let (offset, len) = self.skip_frame(at);
                    return Some(Err(StreamError::Corrupt { offset, len }));
                }
                Scan::Incomplete if self.buf.len() > self.max_frame_bytes => {
                    // A frame that never ends (a scan that never reaches a marker, say): drop
                    // what it had, resynchronise on the next start-of-image.
                    let (offset, len) = self.skip_frame(self.buf.len());
                    return Some(Err(StreamError::TooLarge { offset, len, limit: self.max_frame_bytes as u64 }));
                }
                Scan::Incomplete => match self.fill() {
                    Ok(true) => continue,
                    Ok(false) => {
                        let (offset, len) = (self.offset, self.buf.len() as u64);
                        self.consume(self.buf.len());
                        return Some(Err(StreamError::Truncated { offset, len }));
                    }
                    Err(e) => return Some(Err(e)),
                },
            }
        }
    }
}

/// Cuts a byte stream into raw frames of `frame_len` bytes (see [`PixelFormat::frame_len`]).
///
/// Each item is one frame's bytes; a stream that ends inside a frame gives
/// [`StreamError::Truncated`] with the bytes it had, and a zero-length stream gives no items.
/// One frame buffer is reused for reading; each item is a copy the caller owns.
///
/// ```
/// use ebm_gate::raw::{StreamError, RawReader};
/// let stream = [1u8, 2, 3, 4, 5, 6, 7];
/// let frames: Vec<_> = RawReader::new(&stream[..], 3).collect();
/// assert_eq!(frames[0], Ok(vec![1, 2, 3]));
/// assert_eq!(frames[1], Ok(vec![4, 5, 6]));
/// assert_eq!(frames[2], Err(StreamError::Truncated { offset: 6, len: 1 }));
/// ```
#[derive(Debug)]
pub struct RawReader<R: Read> {
    reader: R,
    frame: Vec<u8>,
    offset: u64,
    done: bool,
}

impl<R: Read> RawReader<R> {
    /// Frames of `frame_len` bytes from `reader`.
    pub fn new(reader: R, frame_len: usize) -> Self {
        RawReader { reader, frame: vec![0; frame_len], offset: 0, done: frame_len == 0 }
    }
}

impl<R: Read> Iterator for RawReader<R> {
    type Item = std::result::Result<Vec<u8>, StreamError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let mut filled = 0;
        while filled < self.frame.len() {
            match self.reader.read(&mut self.frame[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.done = true;
                    return Some(Err(StreamError::Io(e.to_string())));
                }
            }
        }
        let offset = self.offset;
        self.offset += filled as u64;
        if filled == self.frame.len() {
            Some(Ok(self.frame.clone()))
        } else {
            self.done = true;
            (filled > 0).then_some(Err(StreamError::Truncated { offset, len: filled as u64 }))
        }
    }
}

/// What the bytes of a stream are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamFormat {
    /// Raw frames of `width x height` pixels in `format`, back to back (`ffmpeg -f rawvideo`).
    Raw {
        /// The pixel layout.
        format: PixelFormat,
        /// Frame width in pixels.
        width: u32,
        /// Frame height in pixels.
        height: u32,
        /// Bytes from one row to the next ([`RawLayout::stride`]; `None`: no padding).
        stride: Option<u32>,
        /// Rows of the luma plane ([`RawLayout::plane_rows`]; `None`: `height`).
        plane_rows: Option<u32>,
        /// YUV matrix and range (ignored for RGB, BGR and gray).
        yuv: YuvSpec,
    },
    /// Concatenated JPEG images (`ffmpeg -f mjpeg`, `rpicam-vid --codec mjpeg`, UVC cameras).
    Mjpeg,
}

impl StreamFormat {
    /// The raw frames' layout; `None` for MJPEG.
    pub fn layout(&self) -> Option<RawLayout> {
        match *self {
            StreamFormat::Raw { format, width, height, stride, plane_rows, .. } => {
                Some(RawLayout { format, width, height, stride, plane_rows })
            }
            StreamFormat::Mjpeg => None,
        }
    }

    /// Short name for messages: the pixel format's name, or `mjpeg`.
    pub fn name(&self) -> String {
        match self {
            StreamFormat::Raw { format, width, height, .. } => format!("{} {width}x{height}", format.name()),
            StreamFormat::Mjpeg => "mjpeg".into(),
        }
    }
}

/// One frame's bytes from a source (or why there are none), with when it arrived.
pub type TimedFrame = (std::result::Result<Vec<u8>, StreamError>, Received);

/// When a frame arrived: read from its source (on the monotonic clock), and captured, when the
/// source says (a V4L2 buffer's timestamp).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// When its last byte was read.
    pub at: std::time::Instant,
    /// When the camera captured it, on the wall clock.
    pub captured: Option<std::time::SystemTime>,
}

impl Received {
    /// Read now; no capture time.
    pub fn now() -> Received {
        Received { at: std::time::Instant::now(), captured: None }
    }

    /// Since it was read.
    pub fn elapsed(&self) -> std::time::Duration {
        self.at.elapsed()
    }
}

/// A capture time on the monotonic clock (`CLOCK_MONOTONIC`, as V4L2 stamps buffers flagged
/// `V4L2_BUF_FLAG_TIMESTAMP_MONOTONIC`) as wall-clock time, given both clocks read now:
/// `wall_now - (monotonic_now - captured)`. `None` for a capture time after `monotonic_now`
/// (a clock that is not the monotonic one) or more than a day before it.
pub fn monotonic_to_wall(
    captured: std::time::Duration,
    monotonic_now: std::time::Duration,
    wall_now: std::time::SystemTime,
) -> Option<std::time::SystemTime> {
    let age = monotonic_now.checked_sub(captured)?;
    (age <= std::time::Duration::from_secs(86_400)).then_some(())?;
    wall_now.checked_sub(age)
}

#[cfg(test)]
mod capture_time_tests {
    use super::monotonic_to_wall;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn a_monotonic_capture_time_maps_to_the_wall_clock_by_its_age() {
        let wall = UNIX_EPOCH + Duration::from_millis(1_764_630_000_123);
        let now = Duration::from_secs(5_000);
        // Captured 40 ms ago on the monotonic clock: 40 ms before the wall clock's now.
        let got = monotonic_to_wall(now - Duration::from_millis(40), now, wall).unwrap();
        assert_eq!(wall.duration_since(got).unwrap(), Duration::from_millis(40));
        assert_eq!(monotonic_to_wall(now, now, wall), Some(wall));
        // A stamp from the future, or older than a day, is another clock: none.
        assert_eq!(monotonic_to_wall(now + Duration::from_millis(1), now, wall), None);
        assert_eq!(monotonic_to_wall(Duration::from_secs(1), Duration::from_secs(200_000), wall), None);
    }
}
