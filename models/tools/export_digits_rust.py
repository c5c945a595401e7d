"""Exports the digits bundle as Rust constants for the Cortex-M firmware example, with the
sequence of frames the firmware judges.

    python models/tools/export_digits_rust.py [--bundle models/digits-mlp]
        [--out firmware-examples/cortex-m]

Reads the weights from the bundle's `model.onnx` (the ONNX initialisers, so the firmware runs
the very model the std runtime loads) and the temperature, conformal alpha and sorted
calibration energies from its `gate.json`, and writes:

- `OUT/src/model_data.rs`: `MEAN`, `STD`, `W1 [HIDDEN][64]`, `B1`, `W2 [10][HIDDEN]`, `B2`,
  `TEMPERATURE`, `ALPHA`, `CALIBRATION_ENERGIES` (ascending), `FRAMES [n][64]` (u8 gray,
  row-major 8x8) and `FRAME_NAMES`, plus the model's sha256.
- `OUT/frames.gray8`: the same frames as raw gray8 bytes, one after the other, for
  `ebm-gate stream --format gray8 --size 8x8` on the host (the CI check compares the two).
- `tests/data/golden_digits_mlp.json`: onnxruntime's logits and free energies (at the bundle's
  temperature) of those frames, for the std runtime's test.

The frames are synthesised here (seeded), none comes from a data set: the digits 0-9 drawn with
Pillow's bundled default font (Aileron, CC0) to fill a 32x32 bitmap, then counted in 4x4
blocks (0..16), which is how the UCI digits were made from their 32x32 bitmaps, and scaled to
8 bits; six of them again shifted 2 pixels; then far-OOD frames: uniform noise, blank (dark) and saturated.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper
from PIL import Image, ImageDraw, ImageFont

from export_cifar10 import energies

ROOT = Path(__file__).resolve().parents[2]
SEED = 7


def dense_layers(model: onnx.ModelProto) -> list[tuple[np.ndarray, np.ndarray]]:
    """The Gemm layers in graph order as (weight [out, in], bias [out])."""
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    layers = []
    for node in model.graph.node:
        if node.op_type != "Gemm":
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        w, b = init[node.input[1]].astype(np.float32), init[node.input[2]].astype(np.float32)
        if not attrs.get("transB", 0):
            w = w.T
        assert attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0 and not attrs.get("transA", 0)
        layers.append((np.ascontiguousarray(w), b))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Gemm") == 2 and "Relu" in ops, f"expected the DigitsMLP graph, got {ops}"
    return layers


def digit_frame(d: int, dx: int, dy: int) -> np.ndarray:
    """Digit `d` in Pillow's default font, its glyph scaled to fill a 32x32 bitmap's height (the
    UCI digits are size-normalised the same way), shifted by (dx, dy) pixels, counted in 4x4
    blocks (0..16) and scaled to 8 bits."""
    font = ImageFont.load_default(size=96)
    im = Image.new("L", (128, 128), 0)
    ImageDraw.Draw(im).text((16, 0), str(d), fill=255, font=font)
    im = im.crop(im.getbbox())
    w = max(16, round(im.width * 32 / im.height))
    im = im.resize((w, 32), Image.BILINEAR)
    canvas = Image.new("L", (32, 32), 0)
    canvas.paste(im, ((32 - w) // 2 + dx, dy))
    bits = (np.asarray(canvas) >= 128).astype(np.uint8)
    blocks = bits.reshape(8, 4, 8, 4).sum(axis=(1, 3))  # 0..16
    return np.rint(blocks * 255.0 / 16.0).astype(np.uint8)


def frames() -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(SEED)
    names, out = [], []
    for d in range(10):
        names.append(f"digit_{d}")
        out.append(digit_frame(d, 0, 0))
    for i in range(4):
        names.append(f"noise_{i}")
        out.append(rng.integers(0, 256, (8, 8), dtype=np.uint8))
    for i in range(3):
        names.append(f"blank_{i}")
        out.append(np.full((8, 8), int(rng.integers(0, 16)), np.uint8))
    for i in range(3):
        names.append(f"saturated_{i}")
        out.append(np.full((8, 8), int(rng.integers(240, 256)), np.uint8))
    for d in rng.permutation(10)[:6]:
        dx = int(rng.choice([-2, 2]))
        names.append(f"digit_{d}_shifted")
        out.append(digit_frame(int(d), dx, 0))
    return names, np.stack(out)


def f32(v: float) -> str:
    """The shortest decimal that reads back as the same f32, as a Rust float literal."""
    x = np.float32(v)
    assert np.isfinite(x), v
    s = np.format_float_scientific(x, unique=True, trim="0") if x != 0 and not (1e-4 <= abs(x) < 1e6) \
        else np.format_float_positional(x, unique=True, trim="0")
    return s if ("." in s or "e" in s) else s + ".0"


def array_1d(values) -> str:
    return "[" + ", ".join(f32(v) for v in values) + "]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, default=ROOT / "models" / "digits-mlp")
    ap.add_argument("--out", type=Path, default=ROOT / "firmware-examples" / "cortex-m")
    args = ap.parse_args()

    onnx_path = args.bundle / "model.onnx"
    sha = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    (w1, b1), (w2, b2) = dense_layers(onnx.load(str(onnx_path)))
    gate = json.loads((args.bundle / "gate.json").read_text())
    inp = gate["input"]
    assert (inp["height"], inp["width"], inp["color"], inp["pixel_range"]) == (8, 8, "gray", [0.0, 1.0]), inp
    if gate["provenance"]["model_sha256"] != sha:
        raise SystemExit(f"{args.bundle}/gate.json was made for another model.onnx; recalibrate first")
    alpha = gate["gate"]["alpha"]
    if alpha is None:
        raise SystemExit(f"{args.bundle}/gate.json has no conformal alpha; run `ebm-gate calibrate` first")
    cal = np.asarray(gate["gate"]["calibration_energies"], np.float32)
    assert np.all(np.diff(cal) >= 0), "calibration energies must be ascending"
    hidden = w1.shape[0]
    names, fr = frames()

    rows = lambda m: "[\n" + "".join(f"    {array_1d(r)},\n" for r in m) + "]"
    frame_rows = "[\n" + "".join("    [" + ", ".join(str(int(v)) for v in f.ravel()) + "],\n" for f in fr) + "]"
    text = f"""// @generated by models/tools/export_digits_rust.py from {args.bundle.relative_to(ROOT)}: do not edit.
// model.onnx sha256 {sha}
//! The digits model, its gate and the frames the firmware judges, as constants.

/// sha256 of the `model.onnx` these weights were read from.
pub const MODEL_SHA256: &str = "{sha}";
/// Hidden units of the MLP.
pub const HIDDEN: usize = {hidden};
/// Normalisation: `x = (pixel / 255 - MEAN) / STD`.
pub const MEAN: f32 = {f32(inp["mean"][0])};
/// See [`MEAN`].
pub const STD: f32 = {f32(inp["std"][0])};
/// Temperature `T` of the free energy (gate.json).
pub const TEMPERATURE: f32 = {f32(gate["temperature"])};
/// Conformal level: reject when the p-value is `<= ALPHA` (gate.json).
pub const ALPHA: f32 = {f32(alpha)};
/// First layer, `[HIDDEN][64]` (out, in).
pub static W1: [[f32; 64]; HIDDEN] = {rows(w1)};
/// First layer bias.
pub static B1: [f32; HIDDEN] = {array_1d(b1)};
/// Second layer, `[10][HIDDEN]`.
pub static W2: [[f32; HIDDEN]; 10] = {rows(w2)};
/// Second layer bias.
pub static B2: [f32; 10] = {array_1d(b2)};
/// Free energies of the calibration frames at `TEMPERATURE`, ascending ({len(cal)}).
pub static CALIBRATION_ENERGIES: [f32; {len(cal)}] = {array_1d(cal)};
/// The frames, 8x8 gray, row-major.
pub static FRAMES: [[u8; 64]; {len(fr)}] = {frame_rows};
/// Their names.
pub static FRAME_NAMES: [&str; {len(fr)}] = [{", ".join(json.dumps(n) for n in names)}];
"""
    (args.out / "src").mkdir(parents=True, exist_ok=True)
    (args.out / "src" / "model_data.rs").write_text(text)
    (args.out / "frames.gray8").write_bytes(fr.astype(np.uint8).tobytes())
    x = ((fr.astype(np.float32) / 255.0 - np.float32(inp["mean"][0])) / np.float32(inp["std"][0]))[:, None]
    z = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    t = float(gate["temperature"])
    energy = energies(z, t)
    golden = {"generator": "models/tools/export_digits_rust.py", "model_sha256": sha,
              "frames": str((args.out / "frames.gray8").relative_to(ROOT)), "names": names,
              "temperature": t, "onnxruntime": ort.__version__,
              "ort_logits": z.tolist(), "energy": energy.tolist()}
    (ROOT / "tests" / "data" / "golden_digits_mlp.json").write_text(json.dumps(golden, indent=1) + "\n")
    print(f"wrote {args.out}/src/model_data.rs ({hidden} hidden units, {len(cal)} calibration energies, "
          f"{len(fr)} frames) and {args.out}/frames.gray8")


if __name__ == "__main__":
    main()
