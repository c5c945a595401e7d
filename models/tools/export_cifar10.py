"""Exports a trained AirNet to a bundle: model.onnx + gate.json + training.json.

    python models/tools/export_cifar10.py [--checkpoint PATH] [--out models/cifar10-airnet]
    python models/tools/export_cifar10.py --checkpoint ~/.cache/ebm-gate/mine.final.pt --train-dir DIR --out BUNDLE

The checkpoint is `train_cifar10.py`'s or `finetune_ebm.py`'s `.final.pt`. With `--train-dir`
(a model fine-tuned on your own ImageFolder tree), the held-out images are that tree's, as
`finetune_ebm.py` split it, and the class names and normalisation are the checkpoint's.

- `model.onnx`: one self-contained file (weights inside), input `input [N, 3, 32, 32]` float
  (symbolic batch `N`), output `logits [N, K]` (K classes: 10 for CIFAR-10), through PyTorch's
  dynamo exporter.
- Checks onnxruntime against PyTorch on up to 512 held-out images (max abs logit difference).
- `gate.json`: preprocessing, class names, temperature 1, and a threshold at 95% TPR on the
  5,000 held-out training images (500 per class, never trained on), with their sorted energies.
- `training.json`: the recipe, per-epoch log and measured figures, for the model card.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

import cifar10_data as data
from nets import AirNet, FlipTTA
from train_cifar10 import normalise


def energies(logits: np.ndarray, t: float = 1.0) -> np.ndarray:
    z = logits.astype(np.float64) / t
    m = z.max(1, keepdims=True)
    return -t * (m[:, 0] + np.log(np.exp(z - m).sum(1)))


@torch.no_grad()
def torch_logits(model: torch.nn.Module, x: torch.Tensor, bs: int = 500) -> np.ndarray:
    return torch.cat([model(x[i:i + bs]) for i in range(0, len(x), bs)]).numpy()


def load_model(checkpoint: Path, tta: bool = False) -> tuple[torch.nn.Module, dict]:
    """The trained AirNet in eval mode (its global max-pool as an export MaxPool, see
    `AirNet.use_export_pool`), wrapped in flip TTA when `tta` is True."""
    ck = torch.load(checkpoint, weights_only=False, map_location="cpu")
    meta = ck.get("meta") or {"config": ck["config"], "log": ck["log"]}
    widths = tuple(meta.get("widths") or [int(w) for w in meta["config"]["widths"].split(",")])
    strided = tuple(meta.get("strided") or [bool(int(v)) for v in meta["config"].get("strided", "0,0,0").split(",")])
    net = AirNet(widths, num_classes=int(ck["model"]["head.weight"].shape[0]), strided=strided)
    net.load_state_dict(ck["model"])
    net.use_export_pool()
    model = FlipTTA(net) if tta else net
    model.eval()
    return model, meta


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=data.cache_dir() / "cifar10-airnet-ebm.final.pt")
    ap.add_argument("--out", type=Path, default=data.repo_root() / "models" / "cifar10-airnet")
    ap.add_argument("--train-dir", type=Path, help="the ImageFolder tree the checkpoint was fine-tuned on (default: CIFAR-10)")
    ap.add_argument("--target-tpr", type=float, default=0.95)
    ap.add_argument("--tta", action="store_true",
                    help="average the logits with the left-right mirror's in the graph (two passes; the "
                         "reference model does not: half the cost, and its accuracy is reached without)")
    args = ap.parse_args()
    torch.set_flush_denormal(True)

    model, meta = load_model(args.checkpoint, args.tta)
    net = model.net if isinstance(model, FlipTTA) else model
    widths = net.widths

    args.out.mkdir(parents=True, exist_ok=True)
    onnx_path = args.out / "model.onnx"
    example = torch.zeros(2, 3, 32, 32)
    prog = torch.onnx.export(
        model, (example,), dynamo=True, external_data=False, input_names=["input"], output_names=["logits"],
        dynamic_shapes={"x": {0: torch.export.Dim("N", min=1, max=4096)}}, opset_version=18)
    prog.save(str(onnx_path), external_data=False)
    stray = onnx_path.with_suffix(".onnx.data")
    assert not stray.exists(), f"{stray} written: the model must be one file"
    m = onnx.load(str(onnx_path))
    onnx.checker.check_model(m)
    ops = sorted({n.op_type for n in m.graph.node})
    sha = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    print(f"exported {onnx_path} ({onnx_path.stat().st_size / 1e6:.2f} MB), ops: {ops}")

    mean, std = meta.get("mean", data.MEAN), meta.get("std", data.STD)
    class_names = meta.get("class_names", data.CLASSES)
    if args.train_dir:
        from finetune_ebm import load_image_folder
        x_u8, y_np, _ = load_image_folder(args.train_dir)
        id_desc = f"ImageFolder {args.train_dir}"
    else:
        x_u8, y_np = data.load_train()
        id_desc = "CIFAR-10 training split"
    held_idx = np.array(meta["held_out_indices"]) if "held_out_indices" in meta else None
    if held_idx is None:
        from train_cifar10 import holdout_split
        _, held_idx = holdout_split(y_np, 500, meta["config"]["seed"])
    x_held = normalise(x_u8[held_idx], mean, std)
    z_held = torch_logits(model, x_held)

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    z_ort = sess.run(None, {"input": x_held[:512].numpy()})[0]
    ort_diff = float(np.abs(z_ort - z_held[:512]).max())
    print(f"onnxruntime vs PyTorch, {len(z_ort)} held-out images: max |logit diff| = {ort_diff:.2e}")
    assert ort_diff < 1e-3, ort_diff

    e_held = np.sort(energies(z_held)).astype(np.float32)
    n = len(e_held)
    k = math.ceil(args.target_tpr * n) - 1
    threshold = float(e_held[k])
    held_acc = float((z_held.argmax(1) == y_np[held_idx]).mean())

    test_acc = None
    if not args.train_dir:
        x_test_u8, y_test = data.load_test()
        z_test = torch_logits(model, normalise(x_test_u8))
        test_acc = float((z_test.argmax(1) == y_test).mean())
    print(f"PyTorch reference: held-out accuracy {held_acc:.4f}, CIFAR-10 test accuracy {test_acc}; "
          f"threshold at {args.target_tpr:.0%} TPR on {n} held-out: E <= {threshold:.4f}")

    gate = {
        "format_version": 1,
        "input": {"layout": "NCHW", "height": 32, "width": 32, "color": "rgb",
                  "resize": "shorter_side_then_center_crop", "pixel_range": [0.0, 1.0],
                  "mean": list(mean), "std": list(std)},
        "class_names": list(class_names),
        "temperature": 1.0,
        "gate": {"score": "energy", "threshold": threshold, "target_tpr": args.target_tpr, "alpha": None,
                 "calibration_energies": [float(v) for v in e_held]},
        "provenance": {
            "model_sha256": sha,
            "data": f"{id_desc}, {n} held-out images, not trained on",
            "n": n,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "tool": "models/tools/export_cifar10.py (ebm-gate 0.1.0)",
        },
    }
    (args.out / "gate.json").write_text(json.dumps(gate, indent=2) + "\n")

    params = sum(p.numel() for p in model.parameters())
    passes = 2 if isinstance(model, FlipTTA) else 1
    report = {
        "architecture": f"AirNet widths {list(widths)}, stride-2 first convolution in blocks "
                        f"{[i + 1 for i, v in enumerate(net.strided) if v]}" + (", flip TTA in the graph" if passes == 2 else ""),
        "parameters": params,
        "macs_per_frame": passes * net.macs(),
        "onnx_bytes": onnx_path.stat().st_size,
        "onnx_sha256": sha,
        "onnx_ops": ops,
        "opset": 18,
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "ort_vs_torch_max_abs_logit_diff": ort_diff,
        "held_out_accuracy_torch": held_acc,
        "test_accuracy_torch": test_acc,
        "threshold": threshold,
        "train": {k: meta[k] for k in meta if k not in ("held_out_indices",)},
    }
    (args.out / "training.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out / 'gate.json'} and {args.out / 'training.json'}; "
          f"{params} parameters, {report['macs_per_frame'] / 1e6:.1f} MMAC/frame")


if __name__ == "__main__":
    main()
