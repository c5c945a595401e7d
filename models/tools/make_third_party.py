#!/usr/bin/env python3
"""Test fixtures for `ebm-gate init` on models made elsewhere, with onnxruntime goldens.

    python models/tools/make_third_party.py --wheel-model PATH/ch_ppocr_mobile_v2.0_cls_infer.onnx

1. `tests/data/third_party/ppocr_cls.onnx`: PaddleOCR's text-direction classifier
   (ch_ppocr_mobile_v2.0_cls, Apache-2.0, exported to ONNX by PaddlePaddle and shipped in the
   `rapidocr_onnxruntime==1.3.24` wheel on PyPI: `pip download --no-deps rapidocr_onnxruntime==1.3.24`,
   unzip, `rapidocr_onnxruntime/models/`). Input `[-1, 3, ?, ?]` (dynamic batch, height and
   width), trained on 48x192 BGR crops (OpenCV) normalised as `(x / 255 - 0.5) / 0.5`; output
   `softmax` over 2 classes, `0` and `180` (text upright or upside down). Copied unchanged.
2. `tests/data/third_party/frames/`: 6 frames of 192x48, made here from scikit-image's `text.png`
   (public domain): three crops, coloured (blue ink on cream paper, so that RGB and BGR differ),
   and the same three turned by 180 degrees.
3. `tests/data/third_party/ppocr_cls.json`: onnxruntime on those frames, preprocessed as the
   model's own pipeline does (BGR, `(x / 255 - 0.5) / 0.5`; no resize: the frames are 192x48):
   the graph's output (probabilities) and the Softmax's input (the logits, read by adding it to
   the graph's outputs).
4. `tests/data/tiny_metadata.onnx`: `tiny_fixed_batch4.onnx` with ONNX metadata
   (`Image.BitmapPixelFormat` Bgr8, `Image.NominalPixelRange` NominalRange_0_255, `mean`, `std`,
   `class_names`), for `init`'s metadata path.
"""
import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import skimage.data
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "data" / "third_party"


def frames():
    text = skimage.data.text()  # (172, 448) uint8, dark text on light
    ink, paper = np.array([30, 60, 160], np.float32), np.array([245, 235, 200], np.float32)
    t = text.astype(np.float32)[..., None] / 255.0
    rgb = (ink + (paper - ink) * t).round().clip(0, 255).astype(np.uint8)
    out = []
    for i, (x, y, w) in enumerate([(0, 20, 448), (40, 60, 300), (100, 100, 320)]):
        h = w // 4
        y = min(y, rgb.shape[0] - h)
        crop = Image.fromarray(rgb[y:y + h, x:x + w]).resize((192, 48), Image.BILINEAR)
        out.append((f"text_{i}.png", crop))
        out.append((f"text_{i}_180.png", crop.rotate(180)))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--wheel-model", required=True)
    a = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "frames").mkdir(exist_ok=True)
    model_path = OUT / "ppocr_cls.onnx"
    shutil.copyfile(a.wheel_model, model_path)

    # The logits: the Softmax's input, added to the graph's outputs for onnxruntime.
    m = onnx.load(model_path)
    softmax = [n for n in m.graph.node if n.op_type == "Softmax"][-1]
    logits_name = softmax.input[0]
    m.graph.output.append(onnx.helper.make_tensor_value_info(logits_name, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    rows = []
    for name, img in frames():
        img.save(OUT / "frames" / name)
        rgb = np.asarray(Image.open(OUT / "frames" / name).convert("RGB"), np.float32)
        bgr = rgb[..., ::-1]
        x = ((bgr / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)[None].astype(np.float32)
        probs, logits = sess.run([m.graph.output[0].name, logits_name], {"x": x})
        rows.append({"frame": name, "ort_logits": logits[0].tolist(), "ort_probabilities": probs[0].tolist()})
        print(name, logits[0], probs[0])
    golden = {"model": "ppocr_cls.onnx", "logits_output": logits_name, "classes": ["0", "180"],
              "preprocess": "BGR, (x / 255 - 0.5) / 0.5, 192x48, no resize", "frames": rows}
    (OUT / "ppocr_cls.json").write_text(json.dumps(golden, indent=1) + "\n")

    tiny = onnx.load(ROOT / "tests" / "data" / "tiny_fixed_batch4.onnx")
    onnx.helper.set_model_props(tiny, {
        "Image.BitmapPixelFormat": "Bgr8",
        "Image.NominalPixelRange": "NominalRange_0_255",
        "mean": "[104.0, 117.0, 123.0]",
        "std": "[57.4, 57.1, 58.4]",
        "class_names": json.dumps(["ant", "bee", "cat", "dog", "eel"]),
    })
    onnx.save(tiny, ROOT / "tests" / "data" / "tiny_metadata.onnx")


if __name__ == "__main__":
    main()
