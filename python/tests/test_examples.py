"""The camera examples in firmware-examples/raspberry-pi, with picamera2 and cv2 replaced by
stand-ins that hand over the committed frames as the real modules would (B, G, R arrays): the
state changes they print must be those of a Stream on the same frames."""

import io
import json
import sys
import types

import numpy as np
import pytest

import ebm_gate
from conftest import BUNDLE, ROOT
from test_gate import stream_frames

EXAMPLES = ROOT / "firmware-examples" / "raspberry-pi"
FRAMES = stream_frames()
# A level at the feed's median p-value: about half the frames rejected, so the state changes.
ALPHA = float(np.median([r.p_value for r in ebm_gate.Gate(BUNDLE).score_batch(FRAMES)]))
ARGS = ["--window", "4", "--enter", "2", "--exit", "0", "--frozen-after", "10", "--alpha", repr(ALPHA)]


class FakePicamera2:
    """picamera2.Picamera2 as the example uses it; "RGB888" arrays are B, G, R."""

    def __init__(self):
        self.config = None
        self.started = False
        self.closed = False
        self.next = 0

    def create_video_configuration(self, main):
        return {"main": dict(main)}

    def configure(self, config):
        self.config = config

    def start(self):
        assert self.config["main"]["format"] == "RGB888"
        self.started = True

    def capture_array(self, name="main"):
        assert self.started and name == "main"
        frame = FRAMES[self.next % len(FRAMES)]
        self.next += 1
        return np.ascontiguousarray(frame[..., ::-1])

    def stop(self):
        self.started = False

    def close(self):
        self.closed = True


class FakeCapture:
    """cv2.VideoCapture: B, G, R frames, then the end of the video."""

    def __init__(self, device):
        self.device = device
        self.next = 0
        self.released = False
        self.props = {}

    def isOpened(self):
        return self.device in (0, "clip.mp4")

    def set(self, prop, value):
        self.props[prop] = value

    def read(self):
        if self.next == len(FRAMES):
            return False, None
        frame = FRAMES[self.next]
        self.next += 1
        return True, np.ascontiguousarray(frame[..., ::-1])

    def release(self):
        self.released = True


@pytest.fixture
def examples(monkeypatch):
    cameras = []

    def make_camera():
        cameras.append(FakePicamera2())
        return cameras[-1]

    captures = []

    def make_capture(device):
        captures.append(FakeCapture(device))
        return captures[-1]

    monkeypatch.setitem(sys.modules, "picamera2", types.SimpleNamespace(Picamera2=make_camera))
    cv2 = types.SimpleNamespace(VideoCapture=make_capture, CAP_PROP_FRAME_WIDTH=3, CAP_PROP_FRAME_HEIGHT=4)
    monkeypatch.setitem(sys.modules, "cv2", cv2)
    monkeypatch.syspath_prepend(str(EXAMPLES))
    for name in ("gate_loop", "gate_picamera2", "gate_opencv"):
        sys.modules.pop(name, None)
    import gate_loop
    import gate_opencv
    import gate_picamera2

    return types.SimpleNamespace(
        picamera2=gate_picamera2, opencv=gate_opencv, loop=gate_loop, cameras=cameras, captures=captures
    )


def expected_changes(n):
    stream = ebm_gate.Stream(ebm_gate.Gate(BUNDLE, alpha=ALPHA), 4, 2, 0, frozen_after=10)
    changes = [stream.push(f).change for f in FRAMES[:n]]
    return [(c.frame, c.previous, c.state) for c in changes if c], stream.state


def lines(out):
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_the_picamera2_loop_prints_the_streams_state_changes(examples, monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    n = len(FRAMES)
    summary = examples.picamera2.main([str(BUNDLE), "--size", "320x240", "--frames", str(n), *ARGS])
    camera = examples.cameras[0]
    assert camera.config["main"]["size"] == (320, 240) and camera.closed and not camera.started
    records = lines(out)
    changes, state = expected_changes(n)
    assert len(changes) >= 3
    assert [(r["frame"], r["from"], r["state"]) for r in records if r["type"] == "event"] == changes
    assert records[-1] == summary and (summary["frames"], summary["state"]) == (n, state)


def test_the_opencv_loop_runs_to_the_end_of_the_video(examples, monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    summary = examples.opencv.main([str(BUNDLE), "--device", "clip.mp4", "--rejected", *ARGS])
    capture = examples.captures[0]
    assert capture.released and capture.props == {3: 640, 4: 480}
    records = lines(out)
    changes, state = expected_changes(len(FRAMES))
    assert [(r["frame"], r["from"], r["state"]) for r in records if r["type"] == "event"] == changes
    rejected = [r for r in records if r["type"] == "frame"]
    assert rejected and all(r["verdict"] == "out_of_distribution" for r in rejected)
    assert len(rejected) == summary["rejected"] and summary["frames"] == len(FRAMES) and summary["state"] == state
    with pytest.raises(SystemExit, match="cannot open 7"):
        examples.opencv.main([str(BUNDLE), "--device", "7"])


def test_settings_that_cannot_work_exit_2_with_one_line_before_the_camera_opens(examples, capsys):
    for args, says in [
        (["--enter", "2", "--exit", "2"], "Stream(window=5, enter=2, exit=2): need exit < enter"),
        (["--alpha", "1.5"], "alpha must be in (0, 1), got 1.5"),
    ]:
        with pytest.raises(SystemExit) as stop:
            examples.picamera2.main([str(BUNDLE), *args])
        assert stop.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and says in err and err.count("\n") == 1, err
    with pytest.raises(SystemExit):
        examples.opencv.main(["/no/such/bundle"])
    assert "error: " in capsys.readouterr().err
    assert not examples.cameras and not examples.captures


def test_sigterm_stops_a_loop_waiting_for_its_camera(examples, monkeypatch):
    """The handler raises, so a capture that blocks (here: one that sends SIGTERM to the
    process and then waits) is left, and the summary says why."""
    import os
    import signal
    import time

    def stalled():
        yield FRAMES[0]
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)
        yield FRAMES[1]

    out = io.StringIO()
    args = examples.loop.parser("test").parse_args([str(BUNDLE)])
    before = signal.getsignal(signal.SIGTERM)
    start = time.monotonic()
    summary = examples.loop.run(args, stalled(), bgr=False, out=out)
    assert time.monotonic() - start < 10
    assert (summary["signal"], summary["frames"]) == ("SIGTERM", 1)
    assert signal.getsignal(signal.SIGTERM) is before
