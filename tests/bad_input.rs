//! Hostile and broken input: every file of the committed bad-input corpus
//! (`tests/data/bad`, made by `models/tools/make_bad_inputs.py`), a gzip bomb and an MJPEG scan
//! that never ends (made here) become rejected frames with their reason, the run goes on, and
//! the binary runs under a 1 GiB address-space limit, so that an unbounded allocation fails
//! the test.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::common::{bundle, ebm_gate, read_json, root};

/// Address space the binary may map, in KiB (`ulimit -v`).
const ADDRESS_SPACE_KIB: u64 = 1 << 20;

/// `ebm-gate ARGS` under the address-space limit (not under an emulator, which maps more
/// itself), `stdin` fed from another thread; returns (exit code, JSON lines, stderr).
fn run_limited(args: &[&str], stdin: Vec<u8>) -> (i32, Vec<Value>, String) {
    let base = ebm_gate();
    let emulated = std::env::var("EBM_GATE_TEST_RUNNER").is_ok_and(|r| !r.trim().is_empty());
    let mut cmd = if emulated {
        let mut c = Command::new(base.get_program());
        c.args(base.get_args());
        c
    } else {
        let mut c = Command::new("bash");
        c.arg("-c").arg(format!("ulimit -v {ADDRESS_SPACE_KIB} && exec \"$@\"")).arg("bash");
        c.arg(base.get_program()).args(base.get_args());
        c
    };
    let mut child = cmd
        .args(args)
        .current_dir(root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        let _ = pipe.write_all(&stdin); // the process may stop reading early
    });
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines = stdout.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    (out.status.code().unwrap_or(-1), lines, String::from_utf8_lossy(&out.stderr).into_owned())
}

fn error_of(row: &Value) -> String {
    row["error"].as_str().unwrap_or_default().to_lowercase()
}

#[test]
fn every_bad_file_is_rejected_with_its_reason_and_the_run_goes_on() {
    let expected = read_json("tests/data/bad/expected.json");
    let expected = expected.as_object().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut inputs = Vec::new();
    for name in expected.keys() {
        let to = dir.path().join(name);
        std::fs::copy(root().join("tests/data/bad").join(name), &to).unwrap();
        inputs.push(to);
    }
    let good = dir.path().join("zz_good.png");
    std::fs::copy(root().join("tests/data/frames/00_chelsea_0.png"), &good).unwrap();
    inputs.push(good);
    let mut args = vec!["score".to_string(), bundle().display().to_string(), "--json".into()];
    args.extend(inputs.iter().map(|p| p.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, rows, err) = run_limited(&args, Vec::new());
    assert_eq!(code, 1, "a rejected frame gives exit 1: {err}");
    // One row per file; the short IDX body gives its 10 declared images (3 whole).
    assert_eq!(rows.len(), expected.len() + 1 + 9, "{rows:?}\n{err}");
    for (name, phrase) in expected {
        let phrase = phrase.as_str().unwrap().to_lowercase();
        let mine: Vec<&Value> =
            rows.iter().filter(|r| r["path"].as_str().unwrap().contains(&format!("/{name}"))).collect();
        let failed: Vec<&&Value> = mine.iter().filter(|r| r["reason"] == "decode_error").collect();
        assert!(!failed.is_empty(), "{name}: no decode_error row in {mine:?}");
        for r in &mine {
            assert_eq!(r["verdict"], "out_of_distribution", "{r}");
        }
        for r in failed {
            let e = error_of(r);
            assert!(e.contains(name.as_str()), "{name}: the error names the file: {e}");
            assert!(e.contains(&phrase), "{name}: the error says {phrase:?}: {e}");
        }
    }
    let short: Vec<&Value> = rows.iter().filter(|r| r["path"].as_str().unwrap().contains("short_body")).collect();
    assert_eq!(short.len(), 10);
    for (i, r) in short.iter().enumerate() {
        assert!(r["path"].as_str().unwrap().ends_with(&format!("#{i}")), "{r}");
        assert_eq!(r["energy"].is_number(), i < 3, "images 0-2 are whole and scored, 3-9 missing: {r}");
    }
    assert!(error_of(short[9]).contains("3 of the 10 images"), "{}", short[9]);
    let good = rows.last().unwrap();
    assert!(good["path"].as_str().unwrap().ends_with("zz_good.png") && good["energy"].is_number(), "{good}");
}

#[test]
fn a_gzip_bomb_idx_file_is_refused_past_the_limit() {
    // 300 MiB of zeros compress to about 1.4 MB; the header declares 78 GB. Refused from the
    // header: the body is never decompressed.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bomb-idx3-ubyte.gz");
    let mut gz = flate2::write::GzEncoder::new(std::fs::File::create(&path).unwrap(), flate2::Compression::fast());
    gz.write_all(&[0, 0, 8, 3, 0, 0, 0x2F, 0, 0, 0, 0x0A, 0, 0, 0, 0x0A, 0]).unwrap(); // 12032 of 2560x2560
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..300 {
        gz.write_all(&zeros).unwrap();
    }
    gz.finish().unwrap();
    let on_disk = std::fs::metadata(&path).unwrap().len();
    assert!(on_disk < 2 << 20, "{on_disk} bytes");
    let (code, rows, err) =
        run_limited(&["score", bundle().to_str().unwrap(), path.to_str().unwrap(), "--json"], vec![]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(rows.len(), 1, "one rejected frame for the file: {rows:?}");
    assert_eq!(rows[0]["reason"], "decode_error");
    let e = error_of(&rows[0]);
    assert!(e.contains("declares 12032 images of 2560x2560 pixels, more than the limit of 64 mib"), "{e}");
}

/// A JPEG of `img` (the `image` crate's encoder).
fn jpeg(w: u32, h: u32, seed: u8) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 3) as u8 ^ seed, (y * 5) as u8, seed]));
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90).encode_image(&img).unwrap();
    out
}

#[test]
fn an_mjpeg_scan_that_never_ends_is_cut_at_the_frame_limit_and_the_stream_goes_on() {
    let first = jpeg(64, 48, 1);
    let mut input = first.clone();
    // A frame whose entropy-coded data never reaches a marker: its headers, then 6 MiB of
    // bytes that are never FF.
    let sos = first.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
    let seg = u16::from_be_bytes([first[sos + 2], first[sos + 3]]) as usize;
    input.extend_from_slice(&first[..sos + 2 + seg]);
    input.extend(std::iter::repeat_n(0x5Au8, 6 << 20));
    input.extend(jpeg(64, 48, 2));
    let (code, lines, err) =
        run_limited(&["--max-input-mib", "2", "stream", bundle().to_str().unwrap(), "--format", "mjpeg"], input);
    assert_eq!(code, 1, "{err}");
    let frames: Vec<&Value> = lines.iter().filter(|l| l["type"] == "frame").collect();
    assert_eq!(frames.len(), 3, "{lines:?}");
    assert!(frames[0]["energy"].is_number() && frames[2]["energy"].is_number(), "{frames:?}");
    assert_eq!(frames[1]["reason"], "decode_error");
    assert!(error_of(frames[1]).contains("grew past the limit of 2 mib"), "{}", frames[1]);
    // The rest of the endless scan, up to the next frame, is reported as garbage.
    let errors: Vec<&Value> = lines.iter().filter(|l| l["type"] == "error").collect();
    assert!(!errors.is_empty() && errors.iter().all(|e| error_of(e).contains("not a jpeg frame")), "{errors:?}");
    let summary = lines.last().unwrap();
    assert_eq!(summary["type"], "summary");
    assert_eq!(summary["frames"], 3);
}

#[test]
fn truncated_jpegs_in_an_mjpeg_stream_are_never_scored() {
    // A frame cut short and followed by the next frame: the splitter sees the next start of
    // image inside the scan; a cut frame with an end-of-image marker appended right after its
    // headers is caught by the decoder.
    let (a, b) = (jpeg(64, 48, 3), jpeg(64, 48, 4));
    let mut input = a[..a.len() * 7 / 10].to_vec();
    input.extend(&b);
    let sos = a.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
    input.extend(&a[..sos]);
    input.extend([0xFF, 0xD9]);
    input.extend(&b);
    let (code, lines, err) = run_limited(&["stream", bundle().to_str().unwrap(), "--format", "mjpeg"], input);
    assert_eq!(code, 1, "{err}");
    let frames: Vec<&Value> = lines.iter().filter(|l| l["type"] == "frame").collect();
    let reasons: Vec<&str> = frames.iter().map(|f| f["reason"].as_str().unwrap()).collect();
    assert_eq!(frames.len(), 4, "{lines:?}");
    assert_eq!(reasons[0], "decode_error", "{}", frames[0]);
    assert_eq!(reasons[2], "decode_error", "{}", frames[2]);
    assert!(error_of(frames[2]).contains("truncated jpeg"), "{}", frames[2]);
    assert!(frames[1]["energy"].is_number() && frames[3]["energy"].is_number());
}

#[test]
fn calibrate_names_every_frame_it_cannot_use() {
    let dir = tempfile::tempdir().unwrap();
    for (i, f) in ["00_chelsea_0.png", "01_chelsea_1.png", "02_chelsea_2.png"].iter().enumerate() {
        std::fs::copy(root().join("tests/data/frames").join(f), dir.path().join(format!("good{i}.png"))).unwrap();
    }
    std::fs::write(dir.path().join("empty.png"), b"").unwrap();
    std::fs::copy(root().join("tests/data/bad/jpeg_cut_at_80pct.jpg"), dir.path().join("cut.jpg")).unwrap();
    let out = ebm_gate()
        .args([
            "calibrate",
            "models/cifar10-airnet",
            "--id",
            dir.path().to_str().unwrap(),
            "--alpha",
            "0.3",
            "--holdout",
            "0",
            "--out",
        ])
        .arg(dir.path().join("gate.json"))
        .current_dir(root())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("2 of 5 frames could not be scored"), "{err}");
    assert!(err.contains("empty.png: cannot decode image: empty file"), "{err}");
    assert!(err.contains("cut.jpg: cannot decode image: truncated JPEG"), "{err}");
}

#[test]
fn a_reader_that_panics_ends_the_stream_as_a_read_error() {
    use ebm_gate::pipeline::{EnergyGate, Overrides};
    use ebm_gate::stream::{run_stream, StopReason, StreamFormat, StreamOptions, StreamSource};
    struct Panics;
    impl std::io::Read for Panics {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            panic!("a camera driver bug");
        }
    }
    let mut gate = EnergyGate::open(&bundle(), &Overrides::default()).unwrap();
    let options = StreamOptions::new(StreamFormat::Mjpeg);
    let stop = std::sync::atomic::AtomicUsize::new(0);
    let summary = run_stream(&mut gate, StreamSource::Bytes(Box::new(Panics)), &options, &stop, |_| Ok(())).unwrap();
    match &summary.stop {
        StopReason::ReadError(m) => assert!(m.contains("panicked: a camera driver bug"), "{m}"),
        other => panic!("stopped as {other:?}, not as a read error"),
    }
    assert_eq!(summary.errors, 1);
}

#[test]
fn size_flags_are_bounded_before_anything_is_allocated() {
    let b = bundle();
    let m = b.to_str().unwrap();
    let samples = b.join("samples");
    let s = samples.to_str().unwrap();
    let cases: [(&[&str], &str); 7] = [
        (&["score", m, s, "--batch", "100000000"], "the batch must be at most 4096, got 100000000"),
        (&["score", m, s, "--forward-batch", "5000"], "the batch must be at most 4096"),
        (&["stream", m, "--format", "mjpeg", "--batch", "1000000000"], "the batch must be at most 4096"),
        (&["refine", m, s, "--out", "/nonexistent", "--steps", "100000000"], "steps must be at most 10000"),
        (&["sample", m, "--buffer", "/nonexistent/b", "--out", "/nonexistent/g.png", "-n", "99999"], "at most 4096"),
        (&["bench", m, "--runs", "1000000000"], "runs must be at most 100000"),
        (&["--max-image-side", "70000", "score", m, s], "must be 1 to 65535 pixels"),
    ];
    for (args, want) in cases {
        let out = ebm_gate().args(args).current_dir(root()).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

#[test]
fn a_replay_buffer_longer_than_its_header_says_is_refused_unread() {
    use ebm_gate::langevin::ReplayBuffer;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.bin");
    let mut rng = <rand_xoshiro::Xoshiro256PlusPlus as rand_core::SeedableRng>::seed_from_u64(0);
    let buf = ReplayBuffer::new(2, [3, 4, 4], [0.0, 1.0], 10, 0.05, &mut rng).unwrap();
    buf.save(&path).unwrap();
    assert!(ReplayBuffer::load(&path).is_ok());
    let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(&[0u8; 4096]).unwrap();
    drop(f);
    let e = ReplayBuffer::load(&path).unwrap_err().to_string();
    assert!(e.contains("replay buffer data is longer than its header (2 samples of [3, 4, 4]) needs 384"), "{e}");
}

#[test]
fn padded_camera_rows_and_planes_are_read_with_stride_and_plane_rows() {
    // The same two pictures as tight i420 frames and as a Raspberry Pi camera lays them out
    // (stride aligned to 64 bytes, luma planes of 16-aligned rows): the same energies.
    let (w, h) = (90usize, 60usize);
    let (stride, rows) = (128usize, 64usize);
    let mut tight = Vec::new();
    let mut padded = Vec::new();
    for seed in [1u8, 2] {
        let img = image::RgbImage::from_fn(w as u32, h as u32, |x, y| {
            image::Rgb([(x * 2) as u8 ^ seed, (y * 4) as u8, 90 + seed * 40])
        });
        // BT.601 limited-range i420 of the picture (2x2 chroma averages), by the formulas.
        let luma: Vec<u8> = img
            .pixels()
            .map(|p| {
                (16.0 + 65.481 * p[0] as f64 / 255.0 + 128.553 * p[1] as f64 / 255.0 + 24.966 * p[2] as f64 / 255.0)
                    .round() as u8
            })
            .collect();
        let chroma = |k: usize| -> Vec<u8> {
            let mut out = Vec::new();
            for by in 0..h / 2 {
                for bx in 0..w / 2 {
                    let mut acc = 0.0;
                    for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                        let p = img.get_pixel((2 * bx + dx) as u32, (2 * by + dy) as u32);
                        let (r, g, b) = (p[0] as f64 / 255.0, p[1] as f64 / 255.0, p[2] as f64 / 255.0);
                        acc += if k == 0 {
                            128.0 - 37.797 * r - 74.203 * g + 112.0 * b
                        } else {
                            128.0 + 112.0 * r - 93.786 * g - 18.214 * b
                        };
                    }
                    out.push((acc / 4.0).round() as u8);
                }
            }
            out
        };
        let (u, v) = (chroma(0), chroma(1));
        tight.extend(&luma);
        tight.extend(&u);
        tight.extend(&v);
        for r in 0..rows {
            let row: &[u8] = if r < h { &luma[r * w..(r + 1) * w] } else { &[] };
            padded.extend(row);
            padded.extend(std::iter::repeat_n(0xEE, stride - row.len()));
        }
        for plane in [&u, &v] {
            for r in 0..rows / 2 {
                let row: &[u8] = if r < h / 2 { &plane[r * w / 2..(r + 1) * w / 2] } else { &[] };
                padded.extend(row);
                padded.extend(std::iter::repeat_n(0xEE, stride / 2 - row.len()));
            }
        }
    }
    let m = bundle();
    let args = ["stream", m.to_str().unwrap(), "--format", "i420", "--size", "90x60"];
    let (code, a, err) = run_limited(&args, tight);
    assert_eq!(code, 0, "{err}");
    let mut padded_args = args.to_vec();
    padded_args.extend(["--stride", "128", "--plane-rows", "64"]);
    let (code, b, err) = run_limited(&padded_args, padded.clone());
    assert_eq!(code, 0, "{err}");
    let energies = |lines: &[Value]| -> Vec<f64> {
        lines.iter().filter(|l| l["type"] == "frame").map(|l| l["energy"].as_f64().unwrap()).collect()
    };
    let (ea, eb) = (energies(&a), energies(&b));
    assert_eq!((ea.len(), eb.len()), (2, 2));
    assert_eq!(ea, eb, "padding must not reach the model");
    // Read at the nominal size instead, the padded stream is torn: its frames are sheared and
    // it ends inside a frame.
    let (code, c, _) = run_limited(&args, padded);
    assert_eq!(code, 1);
    assert!(c.iter().any(|l| l["reason"] == "decode_error"), "{c:?}");
}

#[test]
fn decoding_memory_is_counted_from_the_header_for_every_format() {
    // A 3000x3000 RGBA PNG of one colour: a few kB on disk, 36 MB decoded (+ 27 MB as RGB).
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("big.png");
    image::RgbaImage::from_pixel(3000, 3000, image::Rgba([10, 20, 30, 255])).save(&png).unwrap();
    let m = bundle();
    let (code, rows, err) =
        run_limited(&["--max-decode-mib", "16", "score", m.to_str().unwrap(), png.to_str().unwrap(), "--json"], vec![]);
    assert_eq!(code, 1, "{err}");
    let e = error_of(&rows[0]);
    assert!(
        e.contains("a 3000x3000 rgba8 image needs 63000000 bytes of decoding memory, more than the limit of 16 mib"),
        "{e}"
    );
    // Under the default 256 MiB it decodes and is scored.
    let (_, rows, err) = run_limited(&["score", m.to_str().unwrap(), png.to_str().unwrap(), "--json"], vec![]);
    assert!(rows[0]["energy"].is_number(), "{err}");
    // Raw stream frames are held to the same limits, at start.
    let cases = [
        ("gray8", "16000x16000", "exceeds the limit of 8192 pixels a side"),
        ("rgb24", "5000x5000", "exceeds the limit of 64 mib"),
    ];
    for (fmt, size, want) in cases {
        let (code, _, err) = run_limited(&["stream", m.to_str().unwrap(), "--format", fmt, "--size", size], vec![]);
        assert_eq!(code, 2, "{size}: {err}");
        assert!(err.to_lowercase().contains(want), "{size}: {err}");
    }
}
