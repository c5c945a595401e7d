"""What the two camera examples (gate_picamera2.py, gate_opencv.py) share: their flags, and the
loop that pushes frames through an `ebm_gate.Stream` and prints JSON lines.

Lines on stdout, one JSON object each: an `event` line at every change of the debounced state
(`unknown`, `in_distribution`, `out_of_distribution`), a `frame` line for every rejected frame
with --rejected (the `ebm-gate score --json` record, with `frame`, `state` and `time`), and a
`summary` line at the end (--frames reached, the camera ended, Ctrl-C or SIGTERM).
"""

import argparse
import datetime
import json
import signal
import sys
import time

import ebm_gate


def parser(description):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("bundle", help="bundle folder (model.onnx + gate.json), calibrated")
    p.add_argument("--size", default="640x480", type=size, help="capture size WIDTHxHEIGHT (default 640x480)")
    p.add_argument("--alpha", type=float, help="conformal level instead of the bundle's")
    p.add_argument("--threads", type=int, default=1, help="threads for the model (default 1)")
    p.add_argument("--window", type=int, default=5, help="debouncing window (default 5)")
    p.add_argument("--enter", type=int, default=3, help="rejections in the window that switch to out_of_distribution (3)")
    p.add_argument("--exit", type=int, default=2, help="rejections at or below which it switches back (2)")
    p.add_argument("--frozen-after", type=int, default=30, help="repeats of one frame rejected as frozen (30; 0 = off)")
    p.add_argument("--frames", type=int, help="stop after N frames (default: run until stopped)")
    p.add_argument("--rejected", action="store_true", help="a line for every rejected frame too")
    return p


def size(text):
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}") from None
    return w, h


def now():
    """The wall-clock time as RFC 3339 in UTC with milliseconds, as the command line writes it."""
    t = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")
    return t.replace("+00:00", "Z")


def emit(record, out):
    out.write(json.dumps(record) + "\n")
    out.flush()


class Stopped(Exception):
    """SIGTERM (systemctl stop): raised by its handler, so that a loop waiting for a camera
    that sends nothing stops too."""


def on_sigterm(signum, frame):
    raise Stopped("SIGTERM")


def run(args, frames, bgr, out=None):
    """Loads the gate, then judges `frames` (an iterable of uint8 arrays, BGR when `bgr`) until
    it ends, --frames is reached, or Ctrl-C / SIGTERM; returns the summary it printed. A bundle
    or settings that cannot work exit with status 2 and one line on stderr, before the camera
    is opened."""
    out = out or sys.stdout
    try:
        gate = ebm_gate.Gate(args.bundle, alpha=args.alpha, threads=args.threads)
        stream = ebm_gate.Stream(gate, args.window, args.enter, args.exit, frozen_after=args.frozen_after)
    except (ValueError, OSError, ebm_gate.GateError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    stopped = []
    before = signal.signal(signal.SIGTERM, on_sigterm)
    rejected = 0
    start = time.monotonic()
    try:
        for frame in frames:
            f = stream.push(frame, bgr=bgr)
            if not f.result.accepted:
                rejected += 1
                if args.rejected:
                    emit({"type": "frame", "frame": f.index, "state": f.state, "time": now(), **f.result.to_dict()}, out)
            if f.change:
                c = f.change
                emit({"type": "event", "event": "state_change", "frame": c.frame, "from": c.previous,
                      "state": c.state, "rejected_in_window": c.rejected_in_window, "time": now()}, out)
            if args.frames is not None and stream.frames >= args.frames:
                break
    except KeyboardInterrupt:
        stopped.append("SIGINT")
    except Stopped:
        stopped.append("SIGTERM")
    finally:
        signal.signal(signal.SIGTERM, before)
    elapsed = time.monotonic() - start
    summary = {"type": "summary", "frames": stream.frames, "rejected": rejected, "state": stream.state,
               "fps": round(stream.frames / elapsed, 2) if elapsed > 0 else 0.0,
               "signal": stopped[0] if stopped else None, "time": now()}
    emit(summary, out)
    return summary
