"""Writes a tiny, seeded, untrained classifier with a FIXED batch of 4 as a test fixture.

    python models/tools/make_tiny_model.py

`tests/data/tiny_fixed_batch4.onnx`: input `[4, 3, 32, 32]`, output logits `[4, 5]` (conv 3x3,
ReLU, global average pool, linear). `tests/data/tiny_fixed_batch4.json`: onnxruntime logits of
the first three committed frames (`tests/data/frames/00..02`), preprocessed as a bare `.onnx`
is by default (pixels scaled to [0, 1], no mean/std), padded with a zero frame to the batch of 4.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from PIL import Image
from torch import nn

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    torch.manual_seed(7)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(8, 5)).eval()
    out = ROOT / "tests" / "data" / "tiny_fixed_batch4.onnx"
    prog = torch.onnx.export(net, (torch.zeros(4, 3, 32, 32),), dynamo=True, external_data=False,
                             input_names=["input"], output_names=["logits"], opset_version=18)
    prog.save(str(out), external_data=False)
    frames = sorted((ROOT / "tests" / "data" / "frames").glob("*.png"))[:3]
    x = np.zeros((4, 3, 32, 32), np.float32)
    for i, p in enumerate(frames):
        x[i] = (np.asarray(Image.open(p).convert("RGB"), np.float32) / 255.0).transpose(2, 0, 1)
    z = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    doc = {"generator": "models/tools/make_tiny_model.py",
           "frames": [str(p.relative_to(ROOT)) for p in frames], "ort_logits": z[:3].tolist()}
    (ROOT / "tests" / "data" / "tiny_fixed_batch4.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
