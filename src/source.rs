//! Where frames come from: image files, folders of them (recursively, optionally in ImageFolder
//! layout `<class>/<image>` for labels), and IDX files (the MNIST format, gzip or plain).

use std::borrow::Cow;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use image::RgbImage;

use crate::error::{Error, Result};
use crate::frame::{self, InputLimits};

/// Gray images held in memory, `[n, height, width]` row-major, one byte per pixel.
#[derive(Debug, Clone, PartialEq)]
pub struct GrayStack {
    /// The file they came from.
    pub path: PathBuf,
    /// Number of images the header declares (the body may hold fewer: see `pixels`).
    pub n: usize,
    /// Rows per image.
    pub height: u32,
    /// Columns per image.
    pub width: u32,
    /// The body's whole images: `n * height * width` bytes, or fewer (a multiple of
    /// `height * width`) when the file ends early; the missing images fail to decode.
    pub pixels: Vec<u8>,
}

impl GrayStack {
    /// Images the body holds in full.
    pub fn complete(&self) -> usize {
        let len = self.height as usize * self.width as usize;
        self.pixels.len().checked_div(len).unwrap_or(0)
    }
}

/// One frame to score: where to get it, and its class label when known.
#[derive(Debug, Clone)]
pub struct FrameItem {
    /// Shown in output: the file path, or `FILE#index` for a frame inside an IDX file.
    pub name: String,
    /// Class index, from the ImageFolder layout.
    pub label: Option<usize>,
    /// How to read it.
    pub origin: Origin,
}

/// How a [`FrameItem`] is read.
#[derive(Debug, Clone)]
pub enum Origin {
    /// An image file.
    File(PathBuf),
    /// Image `index` of a stack of gray images.
    Stacked(Arc<GrayStack>, usize),
    /// An input that cannot give frames (an IDX file with a bad header, say): it fails to
    /// decode with this message, as one rejected frame, and the run goes on.
    Unreadable(String),
    /// A picture already in memory (a frame from a camera library, say), 8-bit RGB of any
    /// size: checked against the limits' `max_side` and `max_decoded_bytes`, then judged as
    /// a decoded file is.
    Image(Arc<RgbImage>),
}

impl FrameItem {
    /// A picture in memory, named `name` in reports ([`Origin::Image`]).
    pub fn image(name: impl Into<String>, image: RgbImage) -> FrameItem {
        FrameItem { name: name.into(), label: None, origin: Origin::Image(Arc::new(image)) }
    }

    /// Decodes the frame to 8-bit RGB (gray replicated) under the default [`InputLimits`].
    ///
    /// # Errors
    /// As [`decode_with`](Self::decode_with).
    pub fn decode(&self) -> Result<RgbImage> {
        self.decode_with(&InputLimits::default())
    }

    /// Decodes the frame to 8-bit RGB (gray replicated) under `limits`.
    ///
    /// # Errors
    /// As [`frame::decode_file_with`]; [`Error::Decode`] naming `FILE#index` for an image past
    /// the end of a short IDX body, naming the file for an [`Origin::Unreadable`] input, and
    /// naming the item for an [`Origin::Image`] that is empty or beyond the limits.
    pub fn decode_with(&self, limits: &InputLimits) -> Result<RgbImage> {
        self.decode_borrowed(limits).map(Cow::into_owned)
    }

    /// [`decode_with`](Self::decode_with) without copying a picture already in memory
    /// ([`Origin::Image`]): it is checked and borrowed.
    ///
    /// # Errors
    /// As [`decode_with`](Self::decode_with).
    pub fn decode_borrowed(&self, limits: &InputLimits) -> Result<Cow<'_, RgbImage>> {
        let fail = |message: String| Error::Decode { path: self.name.clone().into(), message };
        match &self.origin {
            Origin::File(path) => frame::decode_file_with(path, limits).map(Cow::Owned),
            Origin::Stacked(stack, i) => {
                let len = stack.height as usize * stack.width as usize;
                let px = stack.pixels.get(i * len..(i + 1) * len).ok_or_else(|| {
                    fail(format!(
                        "truncated IDX file: the body ends after {} of the {} images its header declares",
                        stack.complete(),
                        stack.n
                    ))
                })?;
                let rgb: Vec<u8> = px.iter().flat_map(|&v| [v, v, v]).collect();
                RgbImage::from_raw(stack.width, stack.height, rgb)
                    .map(Cow::Owned)
                    .ok_or_else(|| fail("short pixel buffer".into()))
            }
            Origin::Unreadable(message) => Err(fail(message.clone())),
            Origin::Image(img) => {
                let (w, h) = img.dimensions();
                if w == 0 || h == 0 {
                    return Err(fail(format!("an empty picture ({w}x{h})")));
                }
                limits.check_size(u64::from(w), u64::from(h)).map_err(fail)?;
                limits.check_decoded("the picture", u64::from(w) * u64::from(h) * 3).map_err(fail)?;
                Ok(Cow::Borrowed(img))
            }
        }
    }
}

/// Reads an IDX file of unsigned bytes with 3 dimensions `[n, rows, cols]` (magic `0x00000803`),
/// gzip-compressed when its name ends in `.gz`. Format: LeCun et al., the MNIST database page.
///
/// Checked against `limits` before allocating: the file's size, then the header (rows and
/// cols, and `n * rows * cols` with checked arithmetic); the body is read (and decompressed) only
/// as far as the header declares, so a decompression bomb stops there.
/// A body shorter than the header declares is kept: the images it holds decode, the missing
/// ones fail with their own error (see [`FrameItem::decode_with`]).
///
/// # Errors
/// [`Error::Io`] when unreadable, [`Error::Decode`] naming the file for a bad magic number, a
/// header beyond the limits, or a file larger than them.
pub fn read_idx_images(path: &Path, limits: &InputLimits) -> Result<GrayStack> {
    let bad = |message: String| Error::Decode { path: path.into(), message };
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let on_disk = file.metadata().map_err(|e| Error::io(path, e))?.len();
    limits.check_bytes("an IDX file", on_disk).map_err(bad)?;
    let gz = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gz"));
    let mut reader: Box<dyn Read> = if gz {
        Box::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)))
    } else {
        Box::new(std::io::BufReader::new(file))
    };
    let read_err = |e: std::io::Error| if gz { bad(format!("gzip: {e}")) } else { Error::io(path, e) };
    // The header first: the body is read only as far as the header's checked size says.
    let mut header = Vec::with_capacity(16);
    (&mut reader).take(16).read_to_end(&mut header).map_err(read_err)?;
    if header.is_empty() {
        return Err(bad("empty file".into()));
    }
    if header.len() < 16 {
        return Err(bad(format!("truncated IDX file: {} bytes is too short for an IDX header", header.len())));
    }
    let word = |i: usize| u32::from_be_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
    if word(0) != 0x0803 {
        return Err(bad(format!("IDX magic {:#010x} is not 0x00000803 (3-D unsigned bytes)", word(0))));
    }
    let (n, height, width) = (word(4), word(8), word(12));
    if height == 0 || width == 0 {
        return Err(bad(format!("IDX images of {width}x{height} pixels: rows and cols must be at least 1")));
    }
    limits.check_size(width as u64, height as u64).map_err(|m| bad(format!("IDX images of {m}")))?;
    if n as u64 > limits.max_frames as u64 {
        return Err(bad(format!(
            "the IDX header declares {n} images, more than the limit of {} frames (--max-frames)",
            limits.max_frames
        )));
    }
    let len = width as u64 * height as u64;
    let declared = (n as u64).checked_mul(len).filter(|&b| b <= limits.max_input_bytes).ok_or_else(|| {
        bad(format!(
            "the IDX header declares {n} images of {width}x{height} pixels, more than the limit of {} MiB \
             (--max-input-mib)",
            limits.max_input_bytes >> 20
        ))
    })?;
    // Bytes past the declared body (a gzip bomb's tail, say) are never read.
    let mut bytes = Vec::new();
    reader.take(declared).read_to_end(&mut bytes).map_err(read_err)?;
    let whole = bytes.len() / len as usize * len as usize;
    bytes.truncate(whole);
    Ok(GrayStack { path: path.into(), n: n as usize, height, width, pixels: bytes })
}

fn is_idx(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name.contains("-idx3-") || name.ends_with(".idx3") || name.ends_with(".idx")
}

/// Expands inputs into frames: a folder is searched recursively for image files (sorted by
/// path); a file is taken as it is (an unreadable one fails when decoded, not here); a
/// path that is neither (missing, say) is kept as a file and fails when decoded. An IDX
/// file (`*-idx3-*`, `*.idx3`, `*.idx`, optionally `.gz`) gives one frame per image.
///
/// With `class_names`, a folder whose files all sit in `<class>/` subfolders named after the
/// classes (ImageFolder layout) gives labelled frames.
///
/// An IDX file that cannot be read becomes one frame that fails with the reason
/// ([`Origin::Unreadable`]); the other inputs are unaffected.
///
/// Under the default [`InputLimits`]; see [`collect_with`].
///
/// # Errors
/// As [`collect_with`].
pub fn collect(inputs: &[PathBuf], class_names: Option<&[String]>) -> Result<Vec<FrameItem>> {
    collect_with(inputs, class_names, &InputLimits::default())
}

/// [`collect`] under `limits`: IDX files are read under them, and there are at most
/// `limits.max_frames` frames in all.
///
/// # Errors
/// [`Error::Io`] for a folder that cannot be read; [`Error::Invalid`] for more frames than
/// `limits.max_frames`.
pub fn collect_with(
    inputs: &[PathBuf],
    class_names: Option<&[String]>,
    limits: &InputLimits,
) -> Result<Vec<FrameItem>> {
    let too_many = || {
        Error::Invalid(format!(
            "the inputs give more than {} frames (--max-frames); raise the limit or score them in parts",
            limits.max_frames
        ))
    };
    let mut items = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let mut files = Vec::new();
            for entry in walkdir::WalkDir::new(input).follow_links(true).sort_by_file_name() {
                let entry = entry.map_err(|e| {
                    let path = e.path().unwrap_or(input).to_path_buf();
                    Error::io(path, e.into_io_error().unwrap_or_else(|| std::io::Error::other("walk error")))
                })?;
                if entry.file_type().is_file() && frame::is_image_path(entry.path()) {
                    if items.len() + files.len() >= limits.max_frames {
                        return Err(too_many());
                    }
                    files.push(entry.into_path());
                }
            }
            let labels: Option<Vec<usize>> = class_names.and_then(|names| {
                files
                    .iter()
                    .map(|f| {
                        let rel = f.strip_prefix(input).ok()?;
                        let mut comps = rel.components();
                        let first = comps.next()?.as_os_str().to_str()?;
                        comps.next()?;
                        names.iter().position(|n| n == first)
                    })
                    .collect()
            });
            for (i, f) in files.into_iter().enumerate() {
                let label = labels.as_ref().map(|l| l[i]);
                items.push(FrameItem { name: f.display().to_string(), label, origin: Origin::File(f) });
            }
        } else if input.is_file() && is_idx(input) {
            // A file that cannot give frames is one rejected frame; its name carries the path,
            // so the reason is kept alone.
            let stack = match read_idx_images(input, limits) {
                Ok(stack) => Arc::new(stack),
                Err(e) => {
                    let reason = match e {
                        Error::Decode { message, .. } => message,
                        Error::Io { error, .. } => error.to_string(),
                        e => return Err(e),
                    };
                    let name = input.display().to_string();
                    items.push(FrameItem { name, label: None, origin: Origin::Unreadable(reason) });
                    continue;
                }
            };
            if items.len() + stack.n > limits.max_frames {
                return Err(too_many());
            }
            for i in 0..stack.n {
                items.push(FrameItem {
                    name: format!("{}#{i}", input.display()),
                    label: None,
                    origin: Origin::Stacked(stack.clone(), i),
                });
            }
        } else {
            if items.len() >= limits.max_frames {
                return Err(too_many());
            }
            // A missing or unreadable file becomes a frame that fails to decode: it is rejected
            // with its reason and the run goes on.
            items.push(FrameItem {
                name: input.display().to_string(),
                label: None,
                origin: Origin::File(input.clone()),
            });
        }
    }
    Ok(items)
}
