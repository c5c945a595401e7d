#!/usr/bin/env python3
"""The Raspberry Pi camera's frames through ebm-gate, in-process: picamera2 captures, the
`ebm_gate` wheel judges every frame, and JSON lines report the changes of the debounced state
(see gate_loop.py).

    python3 gate_picamera2.py /opt/ebm-gate/cifar10-airnet --size 640x480

Needs picamera2 (Raspberry Pi OS Bookworm: `sudo apt install python3-picamera2`) and the
ebm_gate wheel (python/README.md) in one Python: make the venv with --system-site-packages so
that it sees the apt package.
"""

import sys

from picamera2 import Picamera2

import gate_loop


def frames(size):
    """The camera's frames as HxWx3 arrays. picamera2's "RGB888" is B, G, R in memory
    (libcamera names formats by their 32-bit words), hence bgr=True below."""
    camera = Picamera2()
    camera.configure(camera.create_video_configuration(main={"size": size, "format": "RGB888"}))
    camera.start()
    try:
        while True:
            yield camera.capture_array("main")
    finally:
        camera.stop()
        camera.close()


def main(argv=None):
    args = gate_loop.parser(__doc__.splitlines()[0]).parse_args(argv)
    return gate_loop.run(args, frames(args.size), bgr=True)


if __name__ == "__main__":
    main(sys.argv[1:])
