//! Where frames come from: image files, folders of them (recursively, optionally in ImageFolder
//! layout `<class>/<image>` for labels), and IDX files (the MNIST format, gzip or plain).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use image::RgbImage;

use crate::error::{Error, Result};
use crate::frame;

/// Gray images held in memory, `[n, height, width]` row-major, one byte per pixel.
#[derive(Debug, Clone, PartialEq)]
pub struct GrayStack {
    /// The file they came from.
    pub path: PathBuf,
    /// Number of images.
    pub n: usize,
    /// Rows per image.
    pub height: u32,
    /// Columns per image.
    pub width: u32,
    /// `n * height * width` bytes.
    pub pixels: Vec<u8>,
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
}

impl FrameItem {
    /// Decodes the frame to 8-bit RGB (gray replicated).
    ///
    /// # Errors
    /// As [`frame::decode_file`].
    pub fn decode(&self) -> Result<RgbImage> {
        match &self.origin {
            Origin::File(path) => frame::decode_file(path),
            Origin::Stacked(stack, i) => {
                let len = (stack.height * stack.width) as usize;
                let px = &stack.pixels[i * len..(i + 1) * len];
                let rgb: Vec<u8> = px.iter().flat_map(|&v| [v, v, v]).collect();
                RgbImage::from_raw(stack.width, stack.height, rgb).ok_or_else(|| Error::Decode {
                    path: self.name.clone().into(),
                    message: "short pixel buffer".into(),
                })
            }
        }
    }
}

/// Reads an IDX file of unsigned bytes with 3 dimensions `[n, rows, cols]` (magic `0x00000803`),
/// gzip-compressed when its name ends in `.gz`. Format: LeCun et al., the MNIST database page.
///
/// # Errors
/// [`Error::Io`] when unreadable, [`Error::Decode`] naming the file for a bad magic number or
/// a short body.
pub fn read_idx_images(path: &Path) -> Result<GrayStack> {
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bytes = if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gz")) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| Error::Decode { path: path.into(), message: format!("gzip: {e}") })?;
        out
    } else {
        raw
    };
    let bad = |message: String| Error::Decode { path: path.into(), message };
    if bytes.len() < 16 {
        return Err(bad(format!("{} bytes is too short for an IDX header", bytes.len())));
    }
    let word = |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    if word(0) != 0x0803 {
        return Err(bad(format!("IDX magic {:#010x} is not 0x00000803 (3-D unsigned bytes)", word(0))));
    }
    let (n, height, width) = (word(4) as usize, word(8), word(12));
    let need = 16 + n * (height * width) as usize;
    if bytes.len() < need {
        return Err(bad(format!("IDX body is {} bytes, header says {need}", bytes.len())));
    }
    Ok(GrayStack { path: path.into(), n, height, width, pixels: bytes[16..need].to_vec() })
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
/// # Errors
/// [`Error::Io`] for a folder that cannot be read; IDX errors as
/// [`read_idx_images`].
pub fn collect(inputs: &[PathBuf], class_names: Option<&[String]>) -> Result<Vec<FrameItem>> {
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
            let stack = Arc::new(read_idx_images(input)?);
            for i in 0..stack.n {
                items.push(FrameItem {
                    name: format!("{}#{i}", input.display()),
                    label: None,
                    origin: Origin::Stacked(stack.clone(), i),
                });
            }
        } else {
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
