//! The persistent replay buffer of JEM / IGEBM (Grathwohl et al. 2019; Du & Mordatch 2019):
//! samples in pixel space that SGLD chains start from and go back to, saved to and loaded from a
//! file whose header is checked before its body is read. Used by [`crate::langevin`]; here on its
//! own so that it builds without the ONNX runtime (the `decode` feature: the fuzz targets).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use rand::Rng;
use rand_core::RngCore;
use serde::{Deserialize, Serialize};

use crate::bundle::InputSpec;
use crate::error::{Error, Result};

const BUFFER_MAGIC: &[u8; 8] = b"EBMRBUF\x01";
const BUFFER_FORMAT_VERSION: u32 = 1;
/// Largest replay buffer file header accepted, bytes.
const MAX_HEADER: u32 = 1 << 20;

/// The header of a replay buffer file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct BufferHeader {
    format_version: u32,
    /// `[C, H, W]` of one sample.
    shape: [usize; 3],
    /// Pixel range the samples live in.
    pixel_range: [f32; 2],
    capacity: usize,
    reinit_prob: f32,
    num_classes: usize,
    /// sha256 of the model the samples were refined with, when known.
    #[serde(default)]
    model_sha256: Option<String>,
    /// Chains run through the buffer so far.
    #[serde(default)]
    draws: u64,
}

/// A persistent replay buffer of samples (JEM / IGEBM): `capacity` frames `[C, H, W]` in **pixel
/// space** (values in `pixel_range`, not normalised), so a buffer can be looked at as images and
/// outlives a change of normalisation.
///
/// Entry `i` belongs to class `i % num_classes` for class-conditional draws (JEM's per-class
/// buffer); unconditional draws take any entry. A new buffer holds uniform noise in the pixel
/// range (JEM's initialisation).
///
/// File format (little-endian): 8 bytes `EBMRBUF\x01`, a `u32` header length, the header as JSON
/// (`format_version`, `shape` `[C, H, W]`, `pixel_range`, `capacity`, `reinit_prob`,
/// `num_classes`, `model_sha256`, `draws`), then `capacity * C * H * W` `f32` values.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayBuffer {
    header: BufferHeader,
    samples: Vec<f32>,
}

/// Samples drawn from a [`ReplayBuffer`], to refine and put back.
#[derive(Debug, Clone, PartialEq)]
pub struct Draw {
    /// The buffer entries drawn (distinct).
    pub indices: Vec<usize>,
    /// Their values, `[n, C, H, W]` in pixel space; reinitialised ones are fresh noise.
    pub pixels: Vec<f32>,
    /// How many were reinitialised from uniform noise.
    pub reinitialised: usize,
}

impl ReplayBuffer {
    /// A buffer of `capacity` uniform-noise samples of shape `[C, H, W]` in `pixel_range`.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a zero capacity or shape, a `reinit_prob` outside `[0, 1]`, an
    /// empty or reversed pixel range, or zero classes.
    pub fn new<R: RngCore>(
        capacity: usize,
        shape: [usize; 3],
        pixel_range: [f32; 2],
        num_classes: usize,
        reinit_prob: f32,
        rng: &mut R,
    ) -> Result<ReplayBuffer> {
        let header = BufferHeader {
            format_version: BUFFER_FORMAT_VERSION,
            shape,
            pixel_range,
            capacity,
            reinit_prob,
            num_classes,
            model_sha256: None,
            draws: 0,
        };
        check_header(&header).map_err(Error::Invalid)?;
        let d = shape.iter().product::<usize>();
        let [lo, hi] = pixel_range;
        let samples = (0..capacity * d).map(|_| rng.random_range(lo..=hi)).collect();
        Ok(ReplayBuffer { header, samples })
    }

    /// Number of samples.
    pub fn capacity(&self) -> usize {
        self.header.capacity
    }

    /// `[C, H, W]` of one sample.
    pub fn shape(&self) -> [usize; 3] {
        self.header.shape
    }

    /// The pixel range of the samples.
    pub fn pixel_range(&self) -> [f32; 2] {
        self.header.pixel_range
    }

    /// Probability that a drawn sample restarts from uniform noise.
    pub fn reinit_prob(&self) -> f32 {
        self.header.reinit_prob
    }

    /// Classes the entries are divided among.
    pub fn num_classes(&self) -> usize {
        self.header.num_classes
    }

    /// Sets the probability that a drawn sample restarts from uniform noise (saved with the buffer).
    ///
    /// # Errors
    /// [`Error::Invalid`] when it is outside `[0, 1]`.
    pub fn set_reinit_prob(&mut self, p: f32) -> Result<()> {
        if !(0.0..=1.0).contains(&p) {
            return Err(Error::Invalid(format!("reinit_prob must be in [0, 1], got {p}")));
        }
        self.header.reinit_prob = p;
        Ok(())
    }

    /// Chains run through the buffer so far (counted by [`ReplayBuffer::put_back`]).
    pub fn draws(&self) -> u64 {
        self.header.draws
    }

    /// sha256 of the model the samples were last refined with.
    pub fn model_sha256(&self) -> Option<&str> {
        self.header.model_sha256.as_deref()
    }

    /// Records the model the samples are refined with.
    pub fn set_model_sha256(&mut self, sha: &str) {
        self.header.model_sha256 = Some(sha.to_string());
    }

    /// All samples, `[capacity, C, H, W]`, pixel space.
    pub fn samples(&self) -> &[f32] {
        &self.samples
    }

    /// Draws `n` distinct entries (of class `class`'s share when given), uniformly; each is
    /// replaced by uniform noise with probability `reinit_prob`.
    ///
    /// # Errors
    /// [`Error::Invalid`] when `n` is 0 or more than the eligible entries, or the class is out
    /// of range.
    pub fn draw<R: RngCore>(&self, n: usize, class: Option<usize>, rng: &mut R) -> Result<Draw> {
        let k = self.header.num_classes;
        let cap = self.header.capacity;
        let eligible: Vec<usize> = match class {
            Some(y) if y >= k => {
                return Err(Error::Invalid(format!("class index {y} out of range (the buffer has {k} classes)")))
            }
            Some(y) => (y..cap).step_by(k).collect(),
            None => (0..cap).collect(),
        };
        if n == 0 {
            return Err(Error::Invalid("cannot draw 0 samples: draw at least 1".into()));
        }
        if n > eligible.len() {
            return Err(Error::Invalid(format!(
                "cannot draw {n} samples from {} eligible entries (capacity {cap}{}); draw fewer or use a larger buffer",
                eligible.len(),
                class.map(|_| format!(", {k} classes")).unwrap_or_default()
            )));
        }
        let picks = rand::seq::index::sample(rng, eligible.len(), n);
        let d = self.header.shape.iter().product::<usize>();
        let [lo, hi] = self.header.pixel_range;
        let mut indices = Vec::with_capacity(n);
        let mut pixels = Vec::with_capacity(n * d);
        let mut reinitialised = 0;
        for p in picks.iter() {
            let i = eligible[p];
            indices.push(i);
            if rng.random::<f32>() < self.header.reinit_prob {
                reinitialised += 1;
                pixels.extend((0..d).map(|_| rng.random_range(lo..=hi)));
            } else {
                pixels.extend_from_slice(&self.samples[i * d..(i + 1) * d]);
            }
        }
        Ok(Draw { indices, pixels, reinitialised })
    }

    /// Writes refined samples (`[n, C, H, W]`, pixel space, clamped to the pixel range) back to
    /// the entries they were drawn from, and counts a draw.
    ///
    /// # Errors
    /// [`Error::Invalid`] when the lengths disagree or an index is out of range.
    pub fn put_back(&mut self, indices: &[usize], pixels: &[f32]) -> Result<()> {
        let d = self.header.shape.iter().product::<usize>();
        if pixels.len() != indices.len() * d || indices.iter().any(|&i| i >= self.header.capacity) {
            return Err(Error::Invalid(format!(
                "put_back: {} indices (capacity {}) with {} values ({d} per sample)",
                indices.len(),
                self.header.capacity,
                pixels.len()
            )));
        }
        let [lo, hi] = self.header.pixel_range;
        for (j, &i) in indices.iter().enumerate() {
            for (dst, src) in self.samples[i * d..(i + 1) * d].iter_mut().zip(&pixels[j * d..(j + 1) * d]) {
                *dst = src.clamp(lo, hi);
            }
        }
        self.header.draws += 1;
        Ok(())
    }

    /// Saves the buffer to `path` (written to a temporary file beside it, then renamed, so an
    /// interrupted save leaves the old buffer whole).
    ///
    /// # Errors
    /// [`Error::Io`] naming the file.
    pub fn save(&self, path: &Path) -> Result<()> {
        let header = serde_json::to_vec(&self.header).map_err(|e| Error::Invalid(e.to_string()))?;
        let mut bytes = Vec::with_capacity(12 + header.len() + 4 * self.samples.len());
        bytes.extend_from_slice(BUFFER_MAGIC);
        bytes.extend_from_slice(&(header.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&header);
        for v in &self.samples {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        let tmp = tmp_path(path);
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Error::io(path, e)
        })
    }

    /// Loads a buffer saved by [`ReplayBuffer::save`].
    ///
    /// # Errors
    /// [`Error::Io`] when unreadable; [`Error::Bundle`] naming the file when it is not a replay
    /// buffer, is of another format version, has an invalid header, or is truncated or too long.
    pub fn load(path: &Path) -> Result<ReplayBuffer> {
        let bad = |message: String| Error::Bundle { path: path.into(), message };
        let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let mut head = [0u8; 12];
        f.read_exact(&mut head).map_err(|_| bad("not a replay buffer (shorter than its 12-byte preamble)".into()))?;
        if &head[..8] != BUFFER_MAGIC {
            return Err(bad("not a replay buffer (its first bytes are not EBMRBUF\\x01)".into()));
        }
        let hlen = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
        if hlen > MAX_HEADER {
            return Err(bad(format!("replay buffer header of {hlen} bytes (at most {MAX_HEADER})")));
        }
        let mut hbytes = vec![0u8; hlen as usize];
        f.read_exact(&mut hbytes).map_err(|_| bad("replay buffer truncated inside its header".into()))?;
        let header: BufferHeader =
            serde_json::from_slice(&hbytes).map_err(|e| bad(format!("invalid replay buffer header: {e}")))?;
        if header.format_version != BUFFER_FORMAT_VERSION {
            return Err(bad(format!(
                "replay buffer format_version {} is not supported (this ebm-gate reads {BUFFER_FORMAT_VERSION})",
                header.format_version
            )));
        }
        check_header(&header).map_err(|m| bad(format!("invalid replay buffer header: {m}")))?;
        let d = header.shape.iter().product::<usize>(); // checked by check_header
        let want = (header.capacity as u64) * (d as u64) * 4;
        // Read at most one byte past what the header needs: a longer file is refused without
        // being read whole.
        let mut data = Vec::new();
        f.take(want + 1).read_to_end(&mut data).map_err(|e| Error::io(path, e))?;
        if data.len() as u64 != want {
            let have =
                if data.len() as u64 > want { "longer than".to_string() } else { format!("{} bytes,", data.len()) };
            return Err(bad(format!(
                "replay buffer data is {have} its header ({} samples of {:?}) needs {want}",
                header.capacity, header.shape
            )));
        }
        let samples: Vec<f32> = data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        if samples.iter().any(|v| !v.is_finite()) {
            return Err(bad("replay buffer holds non-finite values".into()));
        }
        Ok(ReplayBuffer { header, samples })
    }
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Largest replay buffer accepted, values (4 GiB of f32).
const MAX_BUFFER_VALUES: usize = 1 << 30;

fn check_header(h: &BufferHeader) -> std::result::Result<(), String> {
    let d = h
        .shape
        .iter()
        .try_fold(1usize, |acc, &v| acc.checked_mul(v))
        .ok_or_else(|| format!("shape {:?} has more values than memory can address", h.shape))?;
    if h.capacity == 0 || d == 0 {
        return Err(format!("capacity {} and shape {:?} must be non-zero", h.capacity, h.shape));
    }
    if h.capacity.checked_mul(d).is_none_or(|v| v > MAX_BUFFER_VALUES) {
        return Err(format!("{} samples of {:?} is more than {MAX_BUFFER_VALUES} values", h.capacity, h.shape));
    }
    if !(0.0..=1.0).contains(&h.reinit_prob) {
        return Err(format!("reinit_prob must be in [0, 1], got {}", h.reinit_prob));
    }
    let [lo, hi] = h.pixel_range;
    if !(lo.is_finite() && hi.is_finite() && lo < hi) {
        return Err(format!("pixel_range must be finite with lo < hi, got {:?}", h.pixel_range));
    }
    if h.num_classes == 0 {
        return Err("num_classes must be at least 1".into());
    }
    Ok(())
}

/// Converts frames between pixel space and the model's input space.
///
/// `to_input`: `x = (p - mean[c]) / std[c]`; `to_pixels` is its inverse. Values are `[n, C, H, W]`.
pub fn pixels_to_input(pixels: &[f32], spec: &InputSpec) -> Vec<f32> {
    map_channels(pixels, spec, |p, m, s| (p - m) / s)
}

/// The inverse of [`pixels_to_input`]: `p = x * std[c] + mean[c]`.
pub fn input_to_pixels(x: &[f32], spec: &InputSpec) -> Vec<f32> {
    map_channels(x, spec, |v, m, s| v * s + m)
}

fn map_channels(values: &[f32], spec: &InputSpec, f: impl Fn(f32, f32, f32) -> f32) -> Vec<f32> {
    let c = spec.color.channels();
    let plane = spec.height as usize * spec.width as usize;
    values
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let ch = (i / plane) % c;
            f(v, spec.mean[ch], spec.std[ch])
        })
        .collect()
}
