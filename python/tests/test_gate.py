"""The Python binding against the command line (`ebm-gate score --json`, `ebm-gate stream`) and
onnxruntime: the same frames must give the same figures."""

import json
import shutil
import subprocess
import threading
import time

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

import ebm_gate
from conftest import BUNDLE, DIGITS, FRAMES, SAMPLES, binary, cli_json_lines, rgb

TOL = 1e-5
PNGS = sorted(SAMPLES.glob("*.png"))


def close(a, b, tol=TOL):
    return a is None and b is None or abs(a - b) <= tol * max(1.0, abs(b))


def assert_same_record(result, cli):
    """A Result against one `score --json` record."""
    assert result.class_index == cli["class_index"]
    assert result.class_name == cli["class"]
    assert result.verdict == cli["verdict"]
    assert result.reason == cli["reason"]
    for key in ("energy", "probability", "p_value", "msp", "max_logit"):
        assert close(getattr(result, key), cli[key]), (key, getattr(result, key), cli[key])


def test_files_and_arrays_give_the_cli_energies_and_classes(gate):
    every = sorted(SAMPLES.iterdir())
    cli = {r["path"]: r for r in cli_json_lines("score", "--json", "--logits", BUNDLE, *every)}
    assert len(cli) == len(every) == 7
    for path in every:
        record = cli[str(path)]
        from_file = gate.score_file(path)
        assert from_file.name == str(path)
        assert_same_record(from_file, record)
        # to_dict() is the command line's record.
        assert from_file.to_dict().keys() == record.keys()
        np.testing.assert_allclose(from_file.logits, record["logits"], rtol=TOL, atol=TOL)
    # Decoded by Pillow (lossless PNG: the same pixels as the image crate's), one by one and
    # batched.
    arrays = [rgb(p) for p in PNGS]
    batch = gate.score_batch(arrays)
    assert [r.name for r in batch] == [f"frame#{i}" for i in range(len(PNGS))]
    for path, array, batched in zip(PNGS, arrays, batch):
        single = gate.score(array)
        assert_same_record(single, cli[str(path)])
        assert_same_record(batched, cli[str(path)])
    # The quick start's verdicts: every sample rejected, the astronaut at p = 0.0263.
    assert all(r["verdict"] == "out_of_distribution" for r in cli.values())
    assert round(cli[str(SAMPLES / "astronaut.png")]["p_value"], 4) == 0.0263


def test_logits_equal_onnxruntime_on_the_committed_frames(gate):
    """32x32 frames need no resizing: onnxruntime on (x / 255 - mean) / std, NCHW, from
    gate.json, against the logits the binding returns."""
    spec = json.loads((BUNDLE / "gate.json").read_text())["input"]
    mean = np.array(spec["mean"], np.float32)[:, None, None]
    std = np.array(spec["std"], np.float32)[:, None, None]
    session = ort.InferenceSession(str(BUNDLE / "model.onnx"), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    frames = sorted(FRAMES.glob("*.png"))
    assert len(frames) == 24
    arrays = [rgb(p) for p in frames]
    assert all(a.shape == (32, 32, 3) for a in arrays)
    for array, result in zip(arrays, gate.score_batch(arrays)):
        x = ((array.transpose(2, 0, 1).astype(np.float32) / 255.0 - mean) / std)[None]
        (logits,) = session.run(None, {name: x})
        np.testing.assert_allclose(result.logits, logits[0], rtol=1e-4, atol=1e-4)
        t = gate.temperature
        z = logits[0].astype(np.float64) / t
        energy = -t * (z.max() + np.log(np.exp(z - z.max()).sum()))
        assert abs(result.energy - energy) <= 1e-4


def test_bgr_channels_and_layouts_are_read_as_documented(gate):
    a = rgb(SAMPLES / "chelsea.png")
    ref = gate.score(a)
    bgr = np.ascontiguousarray(a[..., ::-1])
    assert gate.score(bgr, bgr=True).energy == ref.energy
    # The wrong order is another picture.
    assert gate.score(bgr).energy != ref.energy
    # A 4th channel (picamera2's XRGB8888) is ignored.
    x = np.concatenate([a, np.random.default_rng(7).integers(0, 256, a.shape[:2] + (1,), np.uint8)], axis=2)
    assert gate.score(x).energy == ref.energy
    assert gate.score(np.ascontiguousarray(x[..., [2, 1, 0, 3]]), bgr=True).energy == ref.energy
    # Views that are not C-contiguous are read element by element.
    assert gate.score(a[..., ::-1], bgr=True).energy == ref.energy
    assert gate.score(a[:, ::2]).energy == gate.score(np.ascontiguousarray(a[:, ::2])).energy
    assert gate.score(np.asfortranarray(a)).energy == ref.energy


def test_gray_frames_are_read_as_a_gray_file(tmp_path):
    """HxW and HxWx1 arrays are gray: the same as the gray PNG file through the CLI, on the
    gray digits model and on the RGB reference model."""
    g = rgb(SAMPLES / "coffee.png")[..., 1].copy()
    path = tmp_path / "gray.png"
    Image.fromarray(g, mode="L").save(path)
    for bundle in (DIGITS, BUNDLE):
        gate = ebm_gate.Gate(bundle)
        (cli,) = cli_json_lines("score", "--json", bundle, path)
        assert_same_record(gate.score(g), cli)
        assert gate.score(g[..., None]).energy == gate.score(g).energy
        assert gate.score(np.stack([g] * 3, axis=2)).energy == gate.score(g).energy
        assert_same_record(gate.score_file(path), cli)


def test_wrong_types_and_shapes_raise_with_the_reason(gate):
    a = rgb(SAMPLES / "chelsea.png")
    with pytest.raises(TypeError, match="uint8 array.*got an array of float32"):
        gate.score(a.astype(np.float32))
    with pytest.raises(TypeError, match="got an array of uint16"):
        gate.score(a.astype(np.uint16))
    with pytest.raises(TypeError, match="uint8 array.*got list"):
        gate.score(a.tolist())
    for shape in [(4, 4, 2), (4, 4, 5), (2, 4, 4, 3), (12,)]:
        with pytest.raises(ValueError, match=r"got shape \(" + ", ".join(map(str, shape))):
            gate.score(np.zeros(shape, np.uint8))
    with pytest.raises(TypeError):
        gate.score_batch([a, a.astype(np.float32)])
    # One frame given as a batch would be read as rows.
    for one in (a, a[..., 0]):
        with pytest.raises(TypeError, match=r"score_batch takes a sequence of frames.*use score\(\) for one frame"):
            gate.score_batch(one)
    # An array of frames is a batch.
    stacked = gate.score_batch(np.stack([a, a]))
    assert [r.energy for r in stacked] == [gate.score(a).energy] * 2


def test_frames_that_cannot_be_scored_are_rejected_never_accepted(gate):
    for empty in (np.zeros((0, 10, 3), np.uint8), np.zeros((10, 0), np.uint8)):
        r = gate.score(empty)
        assert (r.verdict, r.reason, r.energy, r.logits) == ("out_of_distribution", "decode_error", None, None)
        assert "an empty frame of shape" in r.error and not r.accepted
    # Beyond the limit of pixels a side: rejected before it is copied, in NumPy's terms.
    r = gate.score(np.zeros((1, 8193, 3), np.uint8))
    assert r.reason == "decode_error" and not r.accepted
    assert "a frame of shape (1, 8193, 3) is larger than the limit of 8192 pixels a side" in r.error
    assert "max_image_side" in r.error
    small = ebm_gate.Gate(BUNDLE, max_image_side=100, max_decode_mib=1)
    a = rgb(SAMPLES / "chelsea.png")  # 96x144
    assert "limit of 100 pixels a side" in small.score(a).error
    assert small.score(a[:, :100]).energy == gate.score(a[:, :100]).energy
    # At the limits exactly: scored.
    assert small.score(np.zeros((100, 100, 3), np.uint8)).error is None
    r = ebm_gate.Gate(BUNDLE, max_image_side=1000, max_decode_mib=1).score(np.zeros((600, 600, 3), np.uint8))
    assert "needs 1080000 bytes as RGB, more than the limit of 1 MiB" in r.error
    missing = gate.score_file(SAMPLES / "no-such.png")
    assert missing.reason == "decode_error" and missing.error and not missing.accepted


def test_bundle_and_setting_errors_raise_the_library_messages(tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such-bundle"):
        ebm_gate.Gate(tmp_path / "no-such-bundle")
    broken = tmp_path / "broken"
    broken.mkdir()
    shutil.copy(BUNDLE / "model.onnx", broken / "model.onnx")
    (broken / "gate.json").write_text("{")
    with pytest.raises(ebm_gate.GateError, match="gate.json"):
        ebm_gate.Gate(broken)
    with pytest.raises(ValueError, match=r"^invalid setting: alpha must be in \(0, 1\), got 1.5$"):
        ebm_gate.Gate(BUNDLE, alpha=1.5)
    with pytest.raises(ebm_gate.GateError, match="is a bundle's settings, not a model"):
        ebm_gate.Gate(BUNDLE / "gate.json")
    for kwargs, says in [
        ({"threads": -1}, "threads must not be negative, got -1"),
        ({"batch": -2}, "batch must not be negative, got -2"),
        ({"threads": 0}, "threads"),
        ({"max_image_side": 0}, "max_image_side must be 1 to 65535 pixels, got 0"),
        ({"max_decode_mib": 70000}, "max_decode_mib must be 1 to 65536 MiB, got 70000"),
    ]:
        with pytest.raises(ValueError, match=says):
            ebm_gate.Gate(BUNDLE, **kwargs)
    gate = ebm_gate.Gate(BUNDLE)
    with pytest.raises(ValueError, match=r"^Stream\(window=5, enter=3, exit=3\): need exit < enter"):
        ebm_gate.Stream(gate, 5, 3, 3)
    with pytest.raises(ValueError, match="exit must not be negative, got -1"):
        ebm_gate.Stream(gate, 5, 3, -1)
    assert repr(ebm_gate.Stream(gate)) == (
        'Stream(window=5, enter=3, exit=2, frozen_after=30, state="unknown", frames=0)'
    )
    # No rule, nothing to debounce: a bare .onnx has no calibration.
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(BUNDLE / "model.onnx", bare / "model.onnx")
    plain = ebm_gate.Gate(bare / "model.onnx")
    assert plain.alpha is None and plain.energy_threshold is None
    assert plain.score(rgb(SAMPLES / "chelsea.png")).verdict is None
    with pytest.raises(ValueError, match=r"needs a gate with a rule.*Gate\(\.\.\., threshold=\.\.\.\)"):
        ebm_gate.Stream(plain)


def test_overrides_and_properties_are_the_cli_flags():
    gate = ebm_gate.Gate(BUNDLE, threshold=-5.0)
    assert gate.energy_threshold == -5.0 and gate.alpha is None
    # Both rules: the lower energy decides (alpha 0.1 is at -6.6 here).
    both = ebm_gate.Gate(BUNDLE, threshold=-5.0, alpha=0.1)
    assert both.alpha == 0.1 and both.energy_threshold < -6.0
    (cli,) = cli_json_lines("score", "--json", "--threshold", "-5", "--alpha", "0.1", BUNDLE, SAMPLES / "astronaut.png")
    assert_same_record(both.score_file(SAMPLES / "astronaut.png"), cli)
    (cli,) = cli_json_lines("score", "--json", "--threshold", "-5", BUNDLE, SAMPLES / "astronaut.png")
    assert_same_record(gate.score_file(SAMPLES / "astronaut.png"), cli)
    assert cli["verdict"] == "in_distribution"  # E = -5.61 <= -5
    plain = ebm_gate.Gate(BUNDLE)
    spec = json.loads((BUNDLE / "gate.json").read_text())
    assert plain.class_names == spec["class_names"]
    assert plain.input_shape == (3, 32, 32)
    assert plain.alpha == spec["gate"]["alpha"]
    assert plain.temperature == pytest.approx(spec["temperature"], abs=1e-6)


def stream_frames():
    """A seeded feed of 32x32 frames: runs of low- and high-energy committed frames, then one
    frame repeated 40 times (frozen), then the runs again."""
    frames = [rgb(p) for p in sorted(FRAMES.glob("*.png"))]
    rng = np.random.default_rng(2026)
    feed = []
    for _ in range(3):
        feed += [frames[i] for i in rng.integers(0, len(frames), 9)]
    feed += [feed[-1]] * 40
    for _ in range(3):
        feed += [frames[i] for i in rng.integers(0, len(frames), 9)]
    return feed


def test_stream_equals_the_cli_stream_on_the_same_raw_frames():
    feed = stream_frames()
    gate = ebm_gate.Gate(BUNDLE)
    # A threshold at the feed's median energy: about half the frames rejected, so the state
    # changes often.
    energies = sorted(r.energy for r in gate.score_batch(feed))
    threshold = energies[len(energies) // 2]
    gate = ebm_gate.Gate(BUNDLE, threshold=threshold)
    raw = b"".join(f.tobytes() for f in feed)
    args = ["--window", 4, "--enter", 2, "--exit", 0, "--frozen-after", 10, "--threshold", threshold]
    lines = cli_json_lines("stream", BUNDLE, "--format", "rgb24", "--size", "32x32", *args, stdin=raw)
    cli_frames = [l for l in lines if l["type"] == "frame"]
    cli_changes = [l for l in lines if l["type"] == "event"]
    assert len(cli_frames) == len(feed)
    stream = ebm_gate.Stream(gate, 4, 2, 0, frozen_after=10)
    changes = []
    for i, (frame, cli) in enumerate(zip(feed, cli_frames)):
        f = stream.push(frame)
        assert (f.index, f.result.name) == (i, f"stream#{i}")
        assert_same_record(f.result, cli)
        assert (f.state, f.rejected_in_window) == (cli["state"], cli["rejected_in_window"])
        assert close(f.frame_difference, cli.get("frame_difference"))
        if f.change:
            changes.append({"frame": f.change.frame, "from": f.change.previous, "state": f.change.state})
    assert changes == [{k: e[k] for k in ("frame", "from", "state")} for e in cli_changes]
    assert len(changes) >= 4
    reasons = [l["reason"] for l in cli_frames]
    assert "frozen_frame" in reasons
    assert stream.frames == len(feed) and stream.state == cli_frames[-1]["state"]


def test_the_gil_is_released_while_the_model_runs(gate):
    """Another Python thread runs while a batch is scored: its timestamps fall inside the
    scoring call (with the GIL held throughout, none could)."""
    frames = [rgb(SAMPLES / "chelsea.png")] * 256
    span = {}

    def work():
        span["start"] = time.perf_counter()
        gate.score_batch(frames)
        span["end"] = time.perf_counter()

    worker = threading.Thread(target=work)
    ticks = []
    worker.start()
    while worker.is_alive():
        ticks.append(time.perf_counter())
        time.sleep(0.001)
    worker.join()
    start, end = span["start"], span["end"]
    middle = [t for t in ticks if start + 0.5 * (end - start) < t < start + 0.9 * (end - start)]
    assert end - start > 0.05, "the batch was too quick to tell"
    assert len(middle) >= 5, (len(middle), end - start)


def test_health_scores_of_a_combined_gate_equal_the_cli(tmp_path):
    """A bundle calibrated with every health score (on the committed frames and the samples,
    alpha 0.2): health, p_values and rejected_by as `score --json` gives them, keys in its
    order."""
    bundle, frames = tmp_path / "bundle", tmp_path / "id"
    bundle.mkdir()
    frames.mkdir()
    for f in ("model.onnx", "gate.json"):
        shutil.copy(BUNDLE / f, bundle / f)
    for f in [*FRAMES.glob("*.png"), *PNGS]:
        shutil.copy(f, frames / f.name)
    args = ["calibrate", bundle, "--id", frames, "--alpha", "0.2", "--holdout", "0", "--scores", "all"]
    subprocess.run([binary(), *map(str, args)], check=True, capture_output=True)
    gate = ebm_gate.Gate(bundle)
    assert gate.energy_threshold is None  # several scores combined: no single energy decides
    # And two frames a camera fault would give: black, and white with a little noise (the
    # white one rejected by its mean luma; the black one is near the flat gray sample).
    faults = [tmp_path / "black.png", tmp_path / "white.png"]
    Image.fromarray(np.zeros((96, 128, 3), np.uint8)).save(faults[0])
    noise = np.random.default_rng(3).integers(0, 8, (96, 128, 3))
    Image.fromarray((255 - noise).astype(np.uint8)).save(faults[1])
    paths = [*PNGS, *faults]
    cli = {r["path"]: r for r in cli_json_lines("score", "--json", bundle, *paths)}
    for path in paths:
        record, result = cli[str(path)], gate.score(rgb(path))
        assert_same_record(result, record)
        assert list(result.health) == list(record["health"])
        assert result.health == record["health"]
        assert result.p_values == record["p_values"]
        assert result.rejected_by == record["rejected_by"]
    assert cli[str(faults[1])]["rejected_by"] == ["mean_luma"]
