"""Writes a tiny, seeded, untrained classifier with a FIXED batch of 4 as a test fixture, and
the same weights with dynamic input shapes.

    python models/tools/make_tiny_model.py

`tests/data/tiny_fixed_batch4.onnx`: input `[4, 3, 32, 32]`, output logits `[4, 5]` (conv 3x3,
ReLU, global average pool, linear). `tests/data/tiny_fixed_batch4.json`: onnxruntime logits of
the first three committed frames (`tests/data/frames/00..02`), preprocessed as a bare `.onnx`
is by default (pixels scaled to [0, 1], no mean/std), padded with a zero frame to the batch of 4.

`tests/data/tiny_symbolic_hw.onnx`: input `[N, 3, height, width]` (named symbols, the global pool
takes any size); `tests/data/tiny_anonymous_batch.onnx`: input `[?, 3, 32, 32]` (a batch dimension
with neither a value nor a name). Their onnxruntime logits of the same three frames at 32x32 are
`symbolic_hw_ort_logits` and `anonymous_batch_ort_logits` in the json. `tests/data/unsupported_op.onnx`: one node of an
operator no runtime implements (`com.example.FancyPool`), for the error that names it.
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
    # The same weights with dynamic shapes (the TorchScript exporter's dynamic_axes).
    import onnx
    sym = ROOT / "tests" / "data" / "tiny_symbolic_hw.onnx"
    torch.onnx.export(net, (torch.zeros(1, 3, 32, 32),), str(sym), dynamo=False, input_names=["input"],
                      output_names=["logits"], opset_version=17,
                      dynamic_axes={"input": {0: "N", 2: "height", 3: "width"}, "logits": {0: "N"}})
    anon = ROOT / "tests" / "data" / "tiny_anonymous_batch.onnx"
    torch.onnx.export(net, (torch.zeros(1, 3, 32, 32),), str(anon), dynamo=False, input_names=["input"],
                      output_names=["logits"], opset_version=17, dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
    m = onnx.load(str(anon))
    for value in list(m.graph.input) + list(m.graph.output):
        value.type.tensor_type.shape.dim[0].ClearField("dim_param")  # neither value nor name
    onnx.save(m, str(anon))
    for key, path in [("symbolic_hw_ort_logits", sym), ("anonymous_batch_ort_logits", anon)]:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        doc[key] = sess.run(None, {"input": x[:3]})[0].tolist()
    (ROOT / "tests" / "data" / "tiny_fixed_batch4.json").write_text(json.dumps(doc, indent=1) + "\n")
    # An operator no runtime implements (a custom domain), for the error that names it.
    from onnx import TensorProto, helper
    node = helper.make_node("FancyPool", ["input"], ["logits"], name="fancy_pool_1", domain="com.example")
    graph = helper.make_graph([node], "unsupported",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 32, 32])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])])
    bad = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    onnx.save(bad, str(ROOT / "tests" / "data" / "unsupported_op.onnx"))
    print(f"wrote {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
