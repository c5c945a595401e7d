"""Shared fixtures: the repository's paths, the reference bundle, and the `ebm-gate` binary the
Python results are compared with."""

import json
import os
import pathlib
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parents[2]
BUNDLE = ROOT / "models" / "cifar10-airnet"
DIGITS = ROOT / "models" / "digits-mlp"
SAMPLES = BUNDLE / "samples"
FRAMES = ROOT / "tests" / "data" / "frames"


def binary():
    """The `ebm-gate` command line: $EBM_GATE_BIN (which must exist when set), else a build
    under target/; the test is skipped, saying why, when there is none."""
    given = os.environ.get("EBM_GATE_BIN")
    if given:
        assert pathlib.Path(given).is_file(), f"EBM_GATE_BIN={given} does not exist"
        return given
    for profile in ("debug", "release"):
        path = ROOT / "target" / profile / "ebm-gate"
        if path.is_file():
            return str(path)
    found = shutil.which("ebm-gate")
    if found:
        return found
    pytest.skip("no ebm-gate binary: run `cargo build` first, or set EBM_GATE_BIN")


def cli_json_lines(*args, stdin=None):
    """Runs `ebm-gate ARGS` and returns its stdout's JSON lines (exit 0 or 1: 1 means frames
    were rejected)."""
    out = subprocess.run([binary(), *map(str, args)], input=stdin, capture_output=True, check=False)
    assert out.returncode in (0, 1), out.stderr.decode()
    return [json.loads(line) for line in out.stdout.decode().splitlines() if line.strip()]


def rgb(path):
    """A picture file as an HxWx3 uint8 RGB array (Pillow's decoder)."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


@pytest.fixture(scope="session")
def gate():
    import ebm_gate

    return ebm_gate.Gate(BUNDLE)
