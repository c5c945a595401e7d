#!/usr/bin/env bash
# The Python package in CI: builds the ebm_gate wheel with maturin (the dev profile, so that
# it reuses the test build's compiled dependencies), installs it in a fresh venv with
# python/requirements-test.txt, and runs python/tests against the `ebm-gate` binary that
# `cargo test` built. Both venvs live in a temporary folder, removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
target=${CARGO_TARGET_DIR:-target}
[[ $target == /* ]] || target=$root/$target
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
pip_install() { "$1/bin/pip" install --quiet --disable-pip-version-check "${@:2}"; }

python3 -m venv "$work/build"
pip_install "$work/build" maturin==1.16.0
"$work/build/bin/maturin" build -m python/Cargo.toml --out "$work/wheels"
wheel=$(ls "$work"/wheels/ebm_gate-*.whl)
echo "wheel: $(basename "$wheel"), $(du -k "$wheel" | cut -f1) KiB (dev profile)"

python3 -m venv "$work/test"
pip_install "$work/test" -r python/requirements-test.txt "$wheel"
# From the tests' folder, so that `import ebm_gate` is the installed wheel's.
cd python/tests
EBM_GATE_BIN="$target/debug/ebm-gate" "$work/test/bin/python" -m pytest -q -p no:cacheprovider
