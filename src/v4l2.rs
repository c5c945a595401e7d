//! V4L2 capture (feature `v4l2`, Linux only): frames straight from `/dev/videoN` through
//! memory-mapped buffers, by the `v4l` crate.
//!
//! The camera is asked for the stream's format and size (`--format`, `--size`); the driver may
//! pick another size, which is refused with the size it offers. Rows a driver pads
//! (`bytesperline` wider than the pixels) are described to the converter as the stream's
//! stride ([`crate::raw::RawLayout`]), which skips the padding. V4L2 fourccs used:
//! `RGB3`, `BGR3`, `GREY`, `YUYV`, `NV12`, `YU12`, `MJPG`.
//!
//! Building needs libclang (the `v4l2-sys-mit` crate runs bindgen on the kernel headers):
//! Debian/Ubuntu/Raspberry Pi OS `apt install libclang-dev`.

use std::path::Path;
use std::time::Instant;

use v4l::buffer::Type;
use v4l::io::mmap::Stream;
use v4l::io::traits::CaptureStream;
use v4l::video::Capture;
use v4l::{Device, FourCC};

use crate::error::{Error, Result};
use crate::raw::{monotonic_to_wall, PixelFormat, Received, StreamError, StreamFormat, TimedFrame};

/// Buffers the driver cycles through.
const BUFFERS: u32 = 4;

fn fourcc(format: StreamFormat) -> FourCC {
    FourCC::new(match format {
        StreamFormat::Mjpeg => b"MJPG",
        StreamFormat::Raw { format, .. } => match format {
            PixelFormat::Rgb24 => b"RGB3",
            PixelFormat::Bgr24 => b"BGR3",
            PixelFormat::Gray8 => b"GREY",
            PixelFormat::Yuyv422 => b"YUYV",
            PixelFormat::Nv12 => b"NV12",
            PixelFormat::I420 => b"YU12",
        },
    })
}

/// An opened camera, set to the stream's format.
pub struct Camera {
    device: Device,
    /// The stream's format as the driver delivers it (its `bytesperline` as the stride).
    format: StreamFormat,
}

/// Opens `path` and sets its capture format to `format` (for MJPEG, at `size` when given).
///
/// # Errors
/// [`Error::Io`] naming the device when it cannot be opened or set; [`Error::Invalid`] when the
/// driver does not take the format or the size, or pads the rows of a planar format.
pub fn open(path: &Path, format: StreamFormat, size: Option<(u32, u32)>) -> Result<Camera> {
    let device = Device::with_path(path).map_err(|e| Error::io(path, e))?;
    let mut fmt = device.format().map_err(|e| Error::io(path, e))?;
    let want = fourcc(format);
    fmt.fourcc = want;
    let size = match format {
        StreamFormat::Raw { width, height, .. } => Some((width, height)),
        StreamFormat::Mjpeg => size,
    };
    if let Some((w, h)) = size {
        fmt.width = w;
        fmt.height = h;
    }
    let got = device.set_format(&fmt).map_err(|e| Error::io(path, e))?;
    let name = path.display();
    if got.fourcc != want {
        return Err(Error::Invalid(format!(
            "{name}: the camera does not capture {want} (it offers {}); try another --format",
            got.fourcc
        )));
    }
    if let Some((w, h)) = size {
        if (got.width, got.height) != (w, h) {
            return Err(Error::Invalid(format!(
                "{name}: the camera gives {}x{} in this format, not {w}x{h}; use --size {}x{}",
                got.width, got.height, got.width, got.height
            )));
        }
    }
    let format = match format {
        StreamFormat::Raw { format: pf, width, height, plane_rows, yuv, .. } => {
            let stride = Some(got.stride).filter(|&s| s > 0);
            let f = StreamFormat::Raw { format: pf, width, height, stride, plane_rows, yuv };
            if let Some(layout) = f.layout() {
                layout.frame_len().map_err(|e| Error::Invalid(format!("{name}: the driver's layout: {e}")))?;
            }
            f
        }
        StreamFormat::Mjpeg => StreamFormat::Mjpeg,
    };
    Ok(Camera { device, format })
}

impl std::fmt::Debug for Camera {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Camera").field("fd", &self.device.handle().fd()).field("format", &self.format).finish()
    }
}

/// A buffer's capture time on the wall clock, when the driver stamped it on the monotonic clock
/// (`V4L2_BUF_FLAG_TIMESTAMP_MONOTONIC`; most drivers, uvcvideo and the Raspberry Pi's among
/// them, at the start of the frame's exposure or readout).
fn capture_time(meta: &v4l::buffer::Metadata) -> Option<std::time::SystemTime> {
    use v4l::buffer::Flags;
    if meta.flags & Flags::TIMESTAMP_MASK != Flags::TIMESTAMP_MONOTONIC {
        return None;
    }
    let (sec, usec) = (u64::try_from(meta.timestamp.sec).ok()?, u64::try_from(meta.timestamp.usec).ok()?);
    let captured = std::time::Duration::from_secs(sec) + std::time::Duration::from_micros(usec);
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given; CLOCK_MONOTONIC always exists on Linux.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) } != 0 {
        return None;
    }
    let monotonic_now = std::time::Duration::new(u64::try_from(now.tv_sec).ok()?, u32::try_from(now.tv_nsec).ok()?);
    monotonic_to_wall(captured, monotonic_now, std::time::SystemTime::now())
}

impl Camera {
    /// The stream's format as the driver delivers it: for raw frames, its `bytesperline` as
    /// the stride.
    pub fn format(&self) -> StreamFormat {
        self.format
    }

    /// The frames, as the stream reader takes them: each buffer's bytes (as the driver lays
    /// them out) and the time it was dequeued. A capture error ends the iterator after
    /// reporting it.
    pub(crate) fn frames(self) -> impl Iterator<Item = TimedFrame> {
        let mut stream = Stream::with_buffers(&self.device, Type::VideoCapture, BUFFERS)
            .map_err(|e| StreamError::Io(format!("cannot start capture: {e}")));
        // A driver's buffer may end in bytes past the frame (sizeimage rounded up): cut them;
        // a buffer shorter than the frame stays short and is rejected by the converter.
        let need = self.format.layout().and_then(|l| l.frame_len().ok());
        let mut done = false;
        std::iter::from_fn(move || {
            if done {
                return None;
            }
            let s = match stream.as_mut() {
                Ok(s) => s,
                Err(e) => {
                    done = true;
                    return Some((Err(e.clone()), Received::now()));
                }
            };
            Some(match s.next() {
                Ok((buf, meta)) => {
                    let used = (meta.bytesused as usize).min(buf.len()).min(need.unwrap_or(usize::MAX));
                    let received = Received { at: Instant::now(), captured: capture_time(meta) };
                    (Ok(buf[..used].to_vec()), received)
                }
                Err(e) => {
                    done = true;
                    (Err(StreamError::Io(e.to_string())), Received::now())
                }
            })
        })
    }
}
