#!/usr/bin/env bash
# Runs the firmware under QEMU and checks every printed line against the std runtime on the host
# (`ebm-gate stream` on the same frames, frames.gray8, with the same bundle): class, energy within
# 1e-4, p-value, verdict, reason and debounced state, frame by frame, and the state changes.
#
#   firmware-examples/cortex-m/check.sh        # EBM_GATE=path/to/ebm-gate to use a built binary
#
# Needs qemu-system-arm (Debian: qemu-system-arm), the thumbv7em-none-eabihf target (rustup) and
# python3. Exit 0 when everything agrees; prints the firmware's size and timing figures.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

bin=${EBM_GATE:-}
if [[ -z $bin ]]; then
  (cd "$root" && cargo build --quiet --bin ebm-gate)
  bin=${CARGO_TARGET_DIR:-$root/target}/debug/ebm-gate
fi

# The generated constants must be those of the committed bundle.
want=$(sha256sum "$root/models/digits-mlp/model.onnx" | cut -d' ' -f1)
grep -q "MODEL_SHA256: &str = \"$want\"" "$here/src/model_data.rs" || {
  echo "src/model_data.rs is not from models/digits-mlp/model.onnx ($want): rerun models/tools/export_digits_rust.py" >&2
  exit 1
}

(cd "$here" && timeout 300 cargo run --quiet --release) >"$work/firmware.txt"
"$bin" stream "$root/models/digits-mlp" --format gray8 --size 8x8 --input "$here/frames.gray8" \
  >"$work/host.jsonl" 2>"$work/host.err" || { cat "$work/host.err" >&2; exit 1; }

elf=${CARGO_TARGET_DIR:-$here/target}/thumbv7em-none-eabihf/release/ebm-gate-cortex-m
python3 - "$work/firmware.txt" "$work/host.jsonl" "$elf" <<'EOF'
import json, subprocess, sys

fw_lines = open(sys.argv[1]).read().splitlines()
host = [json.loads(l) for l in open(sys.argv[2])]
frames = [l.split() for l in fw_lines if l.startswith("frame ")]
events = [l.split() for l in fw_lines if l.startswith("event ")]
h_frames = [h for h in host if h["type"] == "frame"]
h_events = [h for h in host if h["type"] == "event"]
errors = []
if len(frames) != len(h_frames) or not frames:
    errors.append(f"{len(frames)} firmware frames vs {len(h_frames)} host frames")
worst = 0.0
for f, h in zip(frames, h_frames):
    # frame I NAME class C energy E p P verdict V reason R state S ticks F G
    i, name, cls, e, p, v, r, s = int(f[1]), f[2], f[4], float(f[6]), float(f[8]), f[10], f[12], f[14]
    d = abs(e - h["energy"])
    worst = max(worst, d)
    checks = [(i == h["frame"], "index"), (cls == h["class"], "class"), (d <= 1e-4, f"energy {e} vs {h['energy']}"),
              (abs(p - h["p_value"]) <= 1e-6, f"p {p} vs {h['p_value']}"), (v == h["verdict"], "verdict"),
              (r == h["reason"], "reason"), (s == h["state"], "state")]
    errors += [f"frame {i} {name}: {what}" for ok, what in checks if not ok]
fw_ev = [(int(e[1]), e[4]) for e in events]
h_ev = [(h["frame"], h["state"]) for h in h_events]
if fw_ev != h_ev:
    errors.append(f"state changes: firmware {fw_ev}, host {h_ev}")
if errors:
    print("firmware and host disagree:\n  " + "\n  ".join(errors), file=sys.stderr)
    sys.exit(1)
cal = next(l for l in fw_lines if l.startswith("calibration:")).split()
per_tick = int(cal[1]) / int(cal[-2])
fwd = sorted(int(f[16]) for f in frames)
gate = sorted(int(f[17]) for f in frames)
done = next(l for l in fw_lines if l.startswith("done:"))
run = subprocess.run(["size", sys.argv[3]], capture_output=True, text=True)
if run.returncode != 0:
    sys.exit(f"size {sys.argv[3]} failed: {run.stderr.strip()}")
size = run.stdout.splitlines()[-1].split()
print(f"firmware vs host: {len(frames)} frames, classes, p-values, verdicts, reasons and states equal; "
      f"energies within {worst:.2e}; state changes {fw_ev}")
print(f"per frame under QEMU -icount (instructions = ticks x {per_tick:g}): forward {fwd[len(fwd)//2] * per_tick:.0f}, "
      f"energy + p-value + verdict + debouncer {gate[len(gate)//2] * per_tick:.0f} instructions (medians)")
print(f"ELF: text {size[0]} B, data {size[1]} B, bss {size[2]} B (flash = text + data); {done.split(', ')[-1]}")
EOF
