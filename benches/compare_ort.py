"""Side by side: ebm-gate (tract) against onnxruntime on the same model, inputs and thread count.

    python benches/compare_ort.py [--model models/cifar10-airnet] [--bin target/release/ebm-gate]
                                  [--threads 1] [--runs 30] [--repeat 3] [--json FILE] [--layers]

Needs the model tooling's venv (models/tools/setup.sh: onnxruntime, onnx, numpy, pillow, pinned in
models/tools/requirements.txt) and a release build of ebm-gate (`cargo build --release`). It prints:

1. **forward** at batch 1 and 32: ebm-gate's `bench` forward median (tract) against
   onnxruntime's median `InferenceSession.run` on the same float input, one thread each
   (`intra_op_num_threads = inter_op_num_threads = THREADS`, sequential execution);
2. **frame pipeline**, JPEG file -> verdict, one frame at a time: ebm-gate's per-frame medians
   (decode + preprocess + forward + gate, from `bench --frames`) against the straightforward
   Python pipeline a user would write: Pillow decode, the same centre crop and bilinear
   antialiased resize, NumPy normalisation, onnxruntime, NumPy free energy and threshold. The
   frames are the bundle's sample pictures re-encoded as 640x480 JPEGs (quality 90) in a
   temporary folder, so both read the same bytes;
3. the model's multiply-accumulates per frame (Conv, ConvTranspose, Gemm and MatMul nodes, from
   ONNX shape inference at batch 1) and the GFLOP/s each achieves (2 FLOP per MAC) against this
   core's peak (`cpu MHz` x FLOP per cycle: 32 with AVX2+FMA, 64 with AVX-512, 16 with AVX).

With `--layers`, also layer by layer at batch 1: each matrix product of tract's optimised plan
(`bench --ops`: its m x k x n, kernel and median time) beside the convolution or Gemm node that
onnxruntime runs for it (its profiler's median kernel time over the same runs), paired in graph
order, and the time of everything else on each side. Profiling adds a few microseconds a node on
both sides, so the sums run above the plain forward times.

Ratios are ebm-gate time / the other's time: above 1, ebm-gate is slower. Each figure is the
median of `--repeat` medians, the two sides alternating, so that a slow spell of a shared machine
falls on both; run-to-run spread on a 2-core VM is still 10-30%.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def run_bench(binary: Path, model: Path, batch: int, frames: Path | None, runs: int, threads: int) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        cmd = [str(binary), "bench", str(model), "--batch", str(batch), "--runs", str(runs), "--threads", str(threads),
               "--no-gradient", "--json", f.name]
        if frames is not None:
            cmd += ["--frames", str(frames)]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return json.loads(Path(f.name).read_text())


def ort_node_profile(path: Path, threads: int, x: np.ndarray, runs: int) -> list[dict]:
    """onnxruntime's profiler over `runs` runs of `x` (after 3 unprofiled-alike warm-up runs):
    each node's median kernel time in ms, in execution order, with its operator type."""
    o = ort.SessionOptions()
    o.intra_op_num_threads = threads
    o.inter_op_num_threads = threads
    o.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    o.enable_profiling = True
    with tempfile.TemporaryDirectory() as d:
        o.profile_file_prefix = str(Path(d) / "ort")
        sess = ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        for _ in range(3 + runs):
            sess.run(None, {name: x})
        events = json.loads(Path(sess.end_profiling()).read_text())
    times: dict[str, list[float]] = {}
    ops: dict[str, str] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            node = e["name"][: -len("_kernel_time")]
            times.setdefault(node, []).append(e["dur"] / 1000.0)
            ops[node] = e["args"].get("op_name", "?")
    return [{"node": n, "op": ops[n], "ms": float(np.median(t[3:] if len(t) > 3 else t))} for n, t in times.items()]


def layers(args: argparse.Namespace, onnx_path: Path, x: np.ndarray) -> dict:
    """Layer by layer at batch 1: tract's matrix products against onnxruntime's Conv/Gemm/MatMul
    nodes, paired in graph order."""
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        subprocess.run([str(args.bin), "bench", str(args.model), "--runs", str(args.runs), "--threads",
                        str(args.threads), "--no-gradient", "--ops", "--json", f.name],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        tract_ops = json.loads(Path(f.name).read_text())["ops"]
    ort_ops = ort_node_profile(onnx_path, args.threads, x, args.runs)
    t_mm = [o for o in tract_ops if o.get("matmul")]
    # tract names a plan node after its ONNX node ("node_Conv_145.matmatmul"); onnxruntime after
    # the ONNX node or its output ("getitem_3_nchwc" in its NCHWc layout). A matrix product
    # neither names (a Gemm that tract fused with the Mul after it) takes the one node left.
    mm_types = ("Conv", "FusedConv", "Gemm", "MatMul", "FusedGemm", "FusedMatMul")
    graph = onnx.load(str(onnx_path)).graph
    outputs = {n.name: list(n.output) for n in graph.node}
    o_mm: list[dict | None] = []
    taken: set[str] = set()
    for t in t_mm:
        onnx_node = t["name"].split(".")[0]
        names = {onnx_node} | {x for o in outputs.get(onnx_node, []) for x in (o, o + "_nchwc")}
        match = next((o for o in ort_ops if o["op"] in mm_types and o["node"] in names), None)
        o_mm.append(match)
        if match:
            taken.add(match["node"])
    left = [o for o in ort_ops if o["op"] in mm_types and o["node"] not in taken and "_bn" not in o["node"]]
    if o_mm.count(None) == 1 and len(left) == 1:
        o_mm[o_mm.index(None)] = left[0]
    o_mm_names = {o["node"] for o in o_mm if o}
    t_rest = sum(o["median_ms"] for o in tract_ops if not o.get("matmul"))
    o_rest = sum(o["ms"] for o in ort_ops if o["node"] not in o_mm_names)
    print()
    print(f"layer by layer, batch 1, {args.threads} thread{'' if args.threads == 1 else 's'} "
          f"(medians of {args.runs} profiled runs)")
    if None in o_mm:
        print("  cannot pair: no onnxruntime node found for "
              + ", ".join(t["name"] for t, o in zip(t_mm, o_mm) if o is None))
        return {"tract_ops": tract_ops, "onnxruntime_ops": ort_ops}
    print(f"| {'m x k x n':<15} | {'tract kernel':<18} | {'tract ms':>8} | {'GFLOP/s':>7} "
          f"| {'onnxruntime node':<26} | {'ORT ms':>6} | {'GFLOP/s':>7} | {'ratio':>5} |")
    print(f"|{'-' * 17}|{'-' * 20}|{'-' * 9}:|{'-' * 8}:|{'-' * 28}|{'-' * 7}:|{'-' * 8}:|{'-' * 6}:|")
    rows = []
    for t, o in zip(t_mm, o_mm):
        mm = t["matmul"]
        flop = 2.0 * mm["m"] * mm["k"] * mm["n"]
        row = {"m": mm["m"], "k": mm["k"], "n": mm["n"], "kernel": mm["kernel"], "tract_node": t["name"],
               "tract_ms": t["median_ms"], "onnxruntime_node": o["node"], "onnxruntime_op": o["op"],
               "onnxruntime_ms": o["ms"]}
        rows.append(row)
        print(f"| {'%dx%dx%d' % (mm['m'], mm['k'], mm['n']):<15} | {mm['kernel']:<18} | {t['median_ms']:>8.3f} "
              f"| {flop / (t['median_ms'] * 1e6):>7.1f} | {o['node'][:26]:<26} | {o['ms']:>6.3f} "
              f"| {flop / (o['ms'] * 1e6):>7.1f} | {t['median_ms'] / o['ms']:>5.2f} |")
    t_sum, o_sum = sum(r["tract_ms"] for r in rows), sum(r["onnxruntime_ms"] for r in rows)
    print(f"| {'all of them':<15} | {'':<18} | {t_sum:>8.3f} | {'':>7} | {'':<26} | {o_sum:>6.3f} | {'':>7} "
          f"| {t_sum / o_sum:>5.2f} |")
    print(f"| {'everything else':<15} | {'':<18} | {t_rest:>8.3f} | {'':>7} | {'':<26} | {o_rest:>6.3f} | {'':>7} "
          f"| {t_rest / o_rest:>5.2f} |")
    return {"rows": rows, "tract_other_ms": t_rest, "onnxruntime_other_ms": o_rest}


def stage(report: dict, name: str) -> dict:
    return next(s for s in report["stages"] if s["stage"] == name)


def median_ms(fn, runs: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t) * 1e3)
    return float(np.median(ts))


def session(path: Path, threads: int) -> ort.InferenceSession:
    o = ort.SessionOptions()
    o.intra_op_num_threads = threads
    o.inter_op_num_threads = threads
    o.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])


def macs_per_frame(path: Path) -> int:
    """Multiply-accumulates of Conv, ConvTranspose, Gemm and MatMul nodes for one frame."""
    m = onnx.load(str(path))
    for inp in m.graph.input:
        dims = inp.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].ClearField("dim_param")
            dims[0].dim_value = 1
    m = onnx.shape_inference.infer_shapes(m)
    shapes = {}
    for vi in list(m.graph.value_info) + list(m.graph.output) + list(m.graph.input):
        shapes[vi.name] = [d.dim_value for d in vi.type.tensor_type.shape.dim]
    for init in m.graph.initializer:
        shapes[init.name] = list(init.dims)
    total = 0
    for node in m.graph.node:
        if node.op_type in ("Conv", "ConvTranspose"):
            w = shapes.get(node.input[1])
            x = shapes.get(node.input[0])
            y = shapes.get(node.output[0])
            if not (w and x and y):
                continue
            k = int(np.prod(w[2:]))
            if node.op_type == "Conv":  # weights [Cout, Cin/group, kh, kw]
                total += int(np.prod(y)) * (w[1] * k)
            else:  # weights [Cin, Cout/group, kh, kw]: each input element meets Cout/group x k
                total += int(np.prod(x)) * (w[1] * k)
        elif node.op_type in ("Gemm", "MatMul"):
            a, b = shapes.get(node.input[0]), shapes.get(node.input[1])
            if a and b:
                trans_b = next((a_.i for a_ in node.attribute if a_.name == "transB"), 0)
                n = b[0] if trans_b else b[-1]
                total += int(np.prod(a)) * n
    return total


def peak_gflops_per_core() -> tuple[float, str]:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    first = info.split("\n\n")[0]
    mhz = next((float(l.split(":")[1]) for l in first.splitlines() if l.startswith("cpu MHz")), float("nan"))
    flags = next((l.split(":")[1].split() for l in first.splitlines() if l.startswith("flags")), [])
    if "avx512f" in flags:
        per, isa = 64, "AVX-512 + FMA: 2 x 16 f32 FMA"
    elif "avx2" in flags and "fma" in flags:
        per, isa = 32, "AVX2 + FMA: 2 x 8 f32 FMA"
    elif "avx" in flags:
        per, isa = 16, "AVX: 8 f32 add + 8 f32 mul"
    else:
        per, isa = 8, "SSE"
    return mhz * 1e-3 * per, f"{mhz:.0f} MHz x {per} FLOP/cycle ({isa})"


def load_spec(model: Path) -> dict:
    return json.loads((model / "gate.json").read_text())


def python_pipeline(paths: list[Path], sess: ort.InferenceSession, spec: dict, runs: int) -> float:
    """The straightforward Python pipeline, JPEG file -> verdict, median ms per frame."""
    inp = spec["input"]
    h, w = inp["height"], inp["width"]
    mean = np.array(inp["mean"], np.float32).reshape(3, 1, 1)
    std = np.array(inp["std"], np.float32).reshape(3, 1, 1)
    lo, hi = inp["pixel_range"]
    t_ = float(spec.get("temperature", 1.0))
    threshold = float(spec["gate"]["threshold"])
    name = sess.get_inputs()[0].name

    def one(p: Path) -> bool:
        im = Image.open(p).convert("RGB")
        sw, sh = im.size
        scale = max(w / sw, h / sh)
        cw, ch = w / scale, h / scale  # the centred crop box of the model's aspect ratio
        box = ((sw - cw) / 2, (sh - ch) / 2, (sw + cw) / 2, (sh + ch) / 2)
        im = im.resize((w, h), Image.BILINEAR, box=box)
        x = np.asarray(im, np.float32).transpose(2, 0, 1) * ((hi - lo) / 255.0) + lo
        x = ((x - mean) / std)[None]
        z = sess.run(None, {name: x})[0][0] / t_
        m = z.max()
        energy = -t_ * (m + np.log(np.exp(z - m).sum()))
        return bool(energy <= threshold)

    i = 0

    def step():
        nonlocal i
        one(paths[i % len(paths)])
        i += 1

    return median_ms(step, runs * 4)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=ROOT / "models" / "cifar10-airnet")
    ap.add_argument("--bin", type=Path, default=ROOT / "target" / "release" / "ebm-gate")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--repeat", type=int, default=3, help="alternate the two sides this many times")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--layers", action="store_true", help="also compare layer by layer at batch 1")
    args = ap.parse_args()
    if not args.bin.exists():
        sys.exit(f"{args.bin} not found: build it with `cargo build --release`, or give --bin")
    onnx_path = args.model / "model.onnx"
    spec = load_spec(args.model)
    c, h, w = 3, spec["input"]["height"], spec["input"]["width"]
    sess = session(onnx_path, args.threads)
    name = sess.get_inputs()[0].name
    rng = np.random.default_rng(0)
    rows = []

    # Each measurement alternates ebm-gate and onnxruntime --repeat times and keeps the median of
    # each side's medians, so that a slow spell of a shared machine falls on both.
    for batch in (1, 32):
        x = rng.standard_normal((batch, c, h, w)).astype(np.float32)
        ort_list, eg_list = [], []
        for _ in range(args.repeat):
            eg = run_bench(args.bin, args.model, batch, None, args.runs, args.threads)
            eg_list.append(stage(eg, "forward")["p50_ms"])
            ort_list.append(median_ms(lambda: sess.run(None, {name: x}), args.runs))
        ort_ms, eg_ms = float(np.median(ort_list)), float(np.median(eg_list))
        rows.append({"what": f"forward, batch {batch}", "ebm_gate_ms": eg_ms, "onnxruntime_ms": ort_ms,
                     "ratio": eg_ms / ort_ms, "frames": batch})

    with tempfile.TemporaryDirectory() as d:
        paths = []
        for p in sorted((args.model / "samples").iterdir()):
            if p.suffix.lower() not in (".png", ".jpg", ".jpeg"):
                continue
            q = Path(d) / (p.stem + ".jpg")
            Image.open(p).convert("RGB").resize((640, 480), Image.BILINEAR).save(q, quality=90)
            paths.append(q)
        eg_list, py_list = [], []
        for _ in range(args.repeat):
            eg = run_bench(args.bin, args.model, 1, Path(d), args.runs, args.threads)
            eg_list.append(sum(stage(eg, s)["per_frame_p50_ms"] for s in ("decode", "preprocess", "forward", "gate")))
            py_list.append(python_pipeline(paths, sess, spec, args.runs))
        eg_ms, py_ms = float(np.median(eg_list)), float(np.median(py_list))
        rows.append({"what": "JPEG 640x480 -> verdict, 1 frame", "ebm_gate_ms": eg_ms, "onnxruntime_ms": py_ms,
                     "ratio": eg_ms / py_ms, "frames": 1,
                     "ebm_gate_stages_ms": {s: stage(eg, s)["per_frame_p50_ms"] for s in ("decode", "preprocess", "forward", "gate")}})

    macs = macs_per_frame(onnx_path)
    peak, how = peak_gflops_per_core()
    machine = eg["machine"]
    print(f"# ebm-gate {machine['ebm_gate']} (tract {machine['tract']}) vs onnxruntime {ort.__version__}, "
          f"{args.threads} thread{'' if args.threads == 1 else 's'}, {datetime.date.today()}")
    print(f"# {machine['cpu']}, SIMD {' '.join(machine['simd'])}; {platform.python_implementation()} "
          f"{platform.python_version()}, numpy {np.__version__}, Pillow {Image.__version__}")
    print(f"# model {onnx_path}: {macs / 1e6:.1f} M multiply-accumulates per frame; "
          f"one core's peak {peak:.1f} GFLOP/s ({how})")
    print()
    print(f"| {'what':<34} | {'ebm-gate ms':>11} | {'against':<10} | {'its ms':>8} | {'ratio':>5} "
          f"| {'ebm-gate GFLOP/s':>16} | {'its GFLOP/s':>11} |")
    print(f"|{'-' * 36}|{'-' * 12}:|{'-' * 12}|{'-' * 9}:|{'-' * 6}:|{'-' * 17}:|{'-' * 12}:|")
    for r in rows:
        def gf(ms: float) -> float:
            return 2 * macs * r["frames"] / (ms * 1e-3) / 1e9
        r["against"] = "Python+ORT" if "JPEG" in r["what"] else "ORT"
        r["ebm_gate_gflops"] = gf(r["ebm_gate_ms"])
        r["other_gflops"] = gf(r["onnxruntime_ms"])
        print(f"| {r['what']:<34} | {r['ebm_gate_ms']:>11.2f} | {r['against']:<10} | {r['onnxruntime_ms']:>8.2f} "
              f"| {r['ratio']:>5.2f} | {r['ebm_gate_gflops']:>16.1f} | {r['other_gflops']:>11.1f} |")
    by_layer = layers(args, onnx_path, rng.standard_normal((1, c, h, w)).astype(np.float32)) if args.layers else None
    if args.json:
        args.json.write_text(json.dumps({"date": str(datetime.date.today()), "threads": args.threads,
                                         "macs_per_frame": macs, "peak_gflops_per_core": peak, "machine": machine,
                                         "onnxruntime": ort.__version__, "rows": rows, "layers": by_layer},
                                        indent=2) + "\n")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
