#!/usr/bin/env python3
"""A camera's frames through ebm-gate, in-process, read by OpenCV's VideoCapture (a USB webcam
/dev/videoN, a video file, an RTSP URL, a GStreamer pipeline), judged by the `ebm_gate` wheel,
with JSON lines at the changes of the debounced state (see gate_loop.py).

    python3 gate_opencv.py /opt/ebm-gate/cifar10-airnet --device 0 --size 640x480

Needs OpenCV's Python package (`pip install opencv-python-headless`, or `sudo apt install
python3-opencv`) and the ebm_gate wheel (python/README.md).
"""

import sys

import cv2

import gate_loop


def frames(device, size):
    """VideoCapture's frames (HxWx3, B, G, R order) until it ends or the camera goes away."""
    capture = cv2.VideoCapture(int(device) if device.isdigit() else device)
    if not capture.isOpened():
        raise SystemExit(f"cannot open {device}")
    capture.set(cv2.CAP_PROP_FRAME_WIDTH, size[0])
    capture.set(cv2.CAP_PROP_FRAME_HEIGHT, size[1])
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                print(f"{device}: no more frames", file=sys.stderr)
                return
            yield frame
    finally:
        capture.release()


def main(argv=None):
    p = gate_loop.parser(__doc__.splitlines()[0])
    p.add_argument("--device", default="0", help="camera index, file, URL or GStreamer pipeline (default 0)")
    args = p.parse_args(argv)
    return gate_loop.run(args, frames(args.device, args.size), bgr=True)


if __name__ == "__main__":
    main(sys.argv[1:])
