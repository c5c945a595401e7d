"""Derives the energy-gradient graph of a PyTorch classifier as standard ONNX ops.

    python models/tools/energy_grad.py [--checkpoint PATH] [--out models/cifar10-airnet]

The graph (`energy_grad.onnx`) has three inputs and two outputs:

- `input [N, C, H, W]` float: frames, normalised exactly as for the classifier (`model.onnx`);
- `temperature [1]` float: T > 0;
- `class_mask [N, K]` float: 1 for the classes the energy is taken over, 0 for the others;
- `energy [N]` = -T * log sum_{k : mask_k = 1} exp(f_k(x) / T), the free energy of JEM
  (Grathwohl et al. 2019) over the masked classes. With every mask entry 1 it is the free energy
  `E(x)`; with a one-hot mask for class y it is exactly the class-conditional energy
  `E(x, y) = -f_y(x)` (for any T);
- `grad [N, C, H, W]` = dE/dx, the gradient of each frame's energy with respect to its input.

It is derived automatically, not written per architecture: the function
`x -> (E(x), autograd.grad(E.sum(), x))` is traced by `make_fx` with PyTorch's core ATen
decompositions, plus two rules that keep the backward pass in standard, fast ONNX ops:

- `convolution_backward` (input gradient only; weights are constants) becomes a transposed
  convolution with the same weights (ONNX ConvTranspose);
- `max_pool2d_with_indices_backward` for non-overlapping windows (kernel == stride, no padding,
  no dilation) and `adaptive_max_pool2d_backward` to 1x1 become `Where(indices == position,
  upsampled gradient, 0)`: the same element as PyTorch's (its argmax indices, ties included), with
  no ScatterND (which tract runs as a per-index loop).

`export(model, num_classes, (C, H, W), path)` works on any classifier made of ops these rules and
the decompositions cover (it raises NotImplementedError for an overlapping max-pool, say); the
command line does an AirNet checkpoint (`train_cifar10.py`'s or `finetune_ebm.py`'s, any class
count) and updates its bundle's gate.json (`--out`, default the reference bundle). The check
against autograd runs on held-out CIFAR-10 training images, or on seeded noise frames when
../shared/data has no CIFAR-10.

The traced graph is exported by PyTorch's dynamo exporter (opset 18, symbolic batch `N`) and
checked on held-out CIFAR-10 training images against `torch.autograd` on the original model
(max abs error of energy and gradient, through onnxruntime), and written into `gate.json`'s
`gradient` section with those figures, so the runtime finds the graph without flags.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn
from torch._decomp import core_aten_decompositions
from torch.fx.experimental.proxy_tensor import make_fx

aten = torch.ops.aten
MASK_FILL = -1.0e30  # logits of classes outside the mask: exp() of it is 0 in f32


def masked_energy(logits: torch.Tensor, temperature: torch.Tensor, class_mask: torch.Tensor) -> torch.Tensor:
    """-T * logsumexp over the masked classes of logits / T, shape [N]."""
    z = torch.where(class_mask > 0.5, logits / temperature, torch.full_like(logits, MASK_FILL))
    return -temperature * torch.logsumexp(z, dim=1)


def _conv_input_grad(grad_out, inp, weight, bias_sizes, stride, padding, dilation, transposed, output_padding,
                     groups, output_mask):
    if transposed or any(output_mask[1:]):
        raise NotImplementedError("only the input gradient of a plain convolution is rewritten")
    n_sp = len(stride)
    # The transposed convolution's output size can be short of the input's when the forward
    # convolution dropped trailing rows/columns (stride > 1): output_padding makes it up.
    out_pad = []
    for d in range(n_sp):
        full = (grad_out.shape[2 + d] - 1) * stride[d] - 2 * padding[d] + dilation[d] * (weight.shape[2 + d] - 1) + 1
        out_pad.append(inp.shape[2 + d] - full)
    conv_t = torch.nn.functional.conv_transpose2d if n_sp == 2 else torch.nn.functional.conv_transpose1d
    gi = conv_t(grad_out, weight, None, stride, padding, out_pad, groups, dilation)
    return gi, None, None


def _upsample_to(t: torch.Tensor, sh: int, sw: int, h: int, w: int) -> torch.Tensor:
    """Repeats every element of t [N, C, h0, w0] over an sh x sw block, then zero-pads to h x w."""
    n, c, h0, w0 = t.shape
    up = t.reshape(n, c, h0, 1, w0, 1).expand(n, c, h0, sh, w0, sw).reshape(n, c, h0 * sh, w0 * sw)
    if h0 * sh != h or w0 * sw != w:
        up = torch.nn.functional.pad(up, (0, w - w0 * sw, 0, h - h0 * sh))
    return up


def _position_grid(h: int, w: int, like: torch.Tensor) -> torch.Tensor:
    return torch.arange(h * w, dtype=torch.int64, device=like.device).reshape(1, 1, h, w)


def _max_pool_backward(grad_out, inp, kernel_size, stride, padding, dilation, ceil_mode, indices):
    kh, kw = kernel_size if len(kernel_size) == 2 else (kernel_size[0], kernel_size[0])
    sh, sw = (stride if len(stride) == 2 else (stride[0], stride[0])) if stride else (kh, kw)
    if (kh, kw) != (sh, sw) or any(p != 0 for p in padding) or any(d != 1 for d in dilation) or ceil_mode:
        raise NotImplementedError("max-pool backward rewritten only for kernel == stride, no padding/dilation")
    h, w = inp.shape[2], inp.shape[3]
    hit = _upsample_to(indices, sh, sw, h, w) == _position_grid(h, w, inp)
    return torch.where(hit, _upsample_to(grad_out, sh, sw, h, w), torch.zeros_like(inp))


def _adaptive_max_pool_backward(grad_out, inp, indices):
    if grad_out.shape[2] != 1 or grad_out.shape[3] != 1:
        raise NotImplementedError("adaptive max-pool backward rewritten only for a 1x1 output")
    h, w = inp.shape[2], inp.shape[3]
    hit = indices == _position_grid(h, w, inp)
    return torch.where(hit, grad_out.expand_as(inp), torch.zeros_like(inp))


def decompositions() -> dict:
    table = dict(core_aten_decompositions())
    table[aten.convolution_backward.default] = _conv_input_grad
    table[aten.max_pool2d_with_indices_backward.default] = _max_pool_backward
    table[aten.adaptive_max_pool2d_backward.default] = _adaptive_max_pool_backward
    return table


class EnergyGrad(nn.Module):
    """Wraps the traced gradient function as a module the exporter takes: the model's weights
    and buffers, which the trace takes as inputs, become this module's buffers (initialisers)."""

    def __init__(self, gm: torch.fx.GraphModule, state: dict[str, torch.Tensor]):
        super().__init__()
        self.gm = gm
        self.names = list(state)
        for i, v in enumerate(state.values()):
            self.register_buffer(f"w{i}", v.detach().clone())

    def forward(self, x, temperature, class_mask):
        ws = [getattr(self, f"w{i}") for i in range(len(self.names))]
        return tuple(self.gm(ws, x, temperature, class_mask))


def trace(model: nn.Module, k: int, shape: tuple[int, int, int]) -> tuple[torch.fx.GraphModule, dict]:
    for p in model.parameters():
        p.requires_grad_(False)
    state = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    names = list(state)

    def fn(ws, x, temperature, class_mask):
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            z = torch.func.functional_call(model, dict(zip(names, ws)), (x,))
            e = masked_energy(z, temperature, class_mask)
            (g,) = torch.autograd.grad(e.sum(), x)
        return e.detach(), g

    # a batch (5) unlike any other size, so the symbolic trace does not tie it to C, H or W
    ex = (list(state.values()), torch.randn(5, *shape), torch.ones(1), torch.ones(5, k))
    gm = make_fx(fn, decomposition_table=decompositions(), tracing_mode="symbolic")(*ex)
    return gm, state


def autograd_reference(model: nn.Module, x: torch.Tensor, t: float, mask: torch.Tensor, dtype=torch.float64):
    x = x.clone().to(dtype).requires_grad_(True)
    m = model.to(dtype)
    e = masked_energy(m(x), torch.tensor([t], dtype=dtype), mask.to(dtype))
    (g,) = torch.autograd.grad(e.sum(), x)
    model.float()
    return e.detach().numpy(), g.numpy()


def export(model: nn.Module, k: int, shape: tuple[int, int, int], path: Path) -> list[str]:
    gm, state = trace(model, k, shape)
    wrapper = EnergyGrad(gm, state).eval()
    n = torch.export.Dim("N", min=1, max=4096)
    prog = torch.onnx.export(
        wrapper, (torch.randn(2, *shape), torch.ones(1), torch.ones(2, k)), dynamo=True, external_data=False,
        input_names=["input", "temperature", "class_mask"], output_names=["energy", "grad"],
        dynamic_shapes={"x": {0: n}, "temperature": None, "class_mask": {0: n}}, opset_version=18)
    prog.save(str(path), external_data=False)
    stray = path.with_suffix(".onnx.data")
    assert not stray.exists(), f"{stray} written: the graph must be one file"
    m = onnx.load(str(path))
    onnx.checker.check_model(m)
    return sorted({nd.op_type for nd in m.graph.node})


def check(model: nn.Module, path: Path, x: torch.Tensor, k: int, temperatures: list[float]) -> dict:
    """Max abs error of onnxruntime's energy and gradient against autograd on the PyTorch model, in
    float32 (the same precision: checks the derivation) and in float64 (also shows float32
    rounding; where two max-pool inputs are within rounding of each other, the two precisions can
    route a pixel's gradient to different inputs), for the free energy at each temperature and for
    the class-conditional energy of class i % K for frame i."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = {"frames": len(x), "cases": []}
    n = len(x)
    masks = [("free", t, np.ones((n, k), np.float32)) for t in temperatures]
    onehot = np.zeros((n, k), np.float32)
    onehot[np.arange(n), np.arange(n) % k] = 1.0
    masks.append(("class_conditional", 1.0, onehot))
    for name, t, mask in masks:
        e, g = sess.run(None, {"input": x.numpy(), "temperature": np.array([t], np.float32), "class_mask": mask})
        case = {"energy": name, "temperature": t}
        for tag, dtype in (("f32", torch.float32), ("f64", torch.float64)):
            e_ref, g_ref = autograd_reference(model, x, t, torch.from_numpy(mask), dtype)
            err = np.abs(g - g_ref)
            case[f"autograd_{tag}"] = {
                "max_abs_err_energy": float(np.abs(e - e_ref).max()),
                "max_abs_err_grad": float(err.max()),
                "max_abs_grad": float(np.abs(g_ref).max()),
                "fraction_of_grad_values_off_by_1e-5": float((err > 1e-5).mean()),
                "frames_with_grad_off_by_1e-5": int((err.reshape(len(x), -1).max(1) > 1e-5).sum()),
                "median_over_frames_of_max_abs_err_grad": float(np.median(err.reshape(len(x), -1).max(1))),
            }
            c = case[f"autograd_{tag}"]
            print(f"  {name} T={t:.4g} vs autograd {tag}: |dE| max {c['max_abs_err_energy']:.2e}, |dgrad| max "
                  f"{c['max_abs_err_grad']:.2e} (grad max {c['max_abs_grad']:.2e}; "
                  f"{c['frames_with_grad_off_by_1e-5']} of {len(x)} frames off by > 1e-5; median frame max "
                  f"{c['median_over_frames_of_max_abs_err_grad']:.2e})")
        out["cases"].append(case)
    return out


def main() -> None:
    import cifar10_data as data
    from export_cifar10 import load_model
    from train_cifar10 import holdout_split, normalise

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=data.cache_dir() / "cifar10-airnet-ebm.final.pt")
    ap.add_argument("--out", type=Path, default=data.repo_root() / "models" / "cifar10-airnet")
    ap.add_argument("--check-frames", type=int, default=64)
    args = ap.parse_args()
    torch.set_flush_denormal(True)
    torch.manual_seed(0)

    model, meta = load_model(args.checkpoint)
    path = args.out / "energy_grad.onnx"
    k = model.head.out_features  # the class count (10 for CIFAR-10; a fine-tuned model may have others)
    ops = export(model, k, (3, 32, 32), path)
    print(f"exported {path} ({path.stat().st_size / 1e6:.2f} MB), ops: {ops}")

    # Any images serve the check: CIFAR-10's held-out training images when ../shared/data has
    # them, else seeded uniform-noise frames (a user's model on a machine without that data).
    if (data.shared_data() / "cifar10" / "train.tar").exists():
        x_u8, y = data.load_train()
        _, held = holdout_split(y, 500, meta["config"]["seed"])
        x_u8, check_data = x_u8[held[: args.check_frames]], f"{args.check_frames} held-out CIFAR-10 training images"
    else:
        x_u8 = np.random.default_rng(0).integers(0, 256, (args.check_frames, 32, 32, 3), dtype=np.uint8)
        check_data = f"{args.check_frames} seeded uniform-noise frames (no CIFAR-10 data found)"
        print(f"{data.shared_data() / 'cifar10' / 'train.tar'} not found: checking on {check_data}")
    x = normalise(x_u8, meta.get("mean", data.MEAN), meta.get("std", data.STD))
    gate_path = args.out / "gate.json"
    gate = json.loads(gate_path.read_text())
    t_bundle = float(gate["temperature"])
    report = check(model, path, x, k, sorted({1.0, t_bundle}))

    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    model_sha = hashlib.sha256((args.out / "model.onnx").read_bytes()).hexdigest()
    assert model_sha == gate["provenance"]["model_sha256"], "gate.json was written for another model.onnx"
    gate["gradient"] = {
        "graph": path.name,
        "sha256": sha,
        "model_sha256": model_sha,
        "inputs": {"input": "input", "temperature": "temperature", "class_mask": "class_mask"},
        "outputs": {"energy": "energy", "grad": "grad"},
        "energy": "-T * logsumexp over masked classes of logits / T (all ones: free energy; one-hot y: -logits[y])",
        "check": {"reference": "torch.autograd on the PyTorch model, float32 and float64", "runner": f"onnxruntime {ort.__version__}",
                  "data": check_data, **report},
        "ops": ops,
        "tool": "models/tools/energy_grad.py",
    }
    gate_path.write_text(json.dumps(gate, indent=2) + "\n")
    print(f"wrote {gate_path} (gradient section)")


if __name__ == "__main__":
    main()
