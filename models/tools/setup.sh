#!/usr/bin/env bash
# Makes the Python venv used by the model tooling (training, export, goldens).
# The venv lives outside the repo: $EBM_GATE_VENV, default ~/.venvs/ebm-gate.
# PyTorch from PyPI pulls about 3 GB of CUDA wheels; it runs on CPU when no GPU is present.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
venv=${EBM_GATE_VENV:-$HOME/.venvs/ebm-gate}
if [ ! -x "$venv/bin/python" ]; then
  mkdir -p "$(dirname "$venv")"
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q -r "$here/requirements.txt"
echo "venv ready: $venv  (activate with: source $venv/bin/activate)"
