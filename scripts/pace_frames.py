#!/usr/bin/env python3
"""Writes the frames of a file to stdout at a fixed rate, like a live camera (standard library only).

    pace_frames.py FILE FPS N --raw BYTES_PER_FRAME   # raw frames of a fixed size
    pace_frames.py FILE FPS N --mjpeg                 # concatenated JPEGs (as ffmpeg -f mjpeg writes them)

Frame i is written at t0 + i / FPS, so latency measured downstream is not inflated by bursts
(ffmpeg -re probes its input and bursts at start-up, which on a 2-core machine competes with
the gate for the CPU).
"""
import sys
import time


def raw_frames(path, size):
    with open(path, "rb") as f:
        while True:
            b = f.read(size)
            if len(b) < size:
                return
            yield b


def mjpeg_frames(path):
    data = open(path, "rb").read()
    start = 0
    while start < len(data):
        end = data.find(b"\xff\xd9\xff\xd8", start)
        end = len(data) if end < 0 else end + 2
        yield data[start:end]
        start = end


def main():
    path, fps, n, mode = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    frames = raw_frames(path, int(sys.argv[5])) if mode == "--raw" else mjpeg_frames(path)
    out = sys.stdout.buffer
    t0 = time.monotonic()
    for i, frame in enumerate(frames):
        if i >= n:
            break
        delay = t0 + i / fps - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        try:
            out.write(frame)
            out.flush()
        except BrokenPipeError:
            return


if __name__ == "__main__":
    main()
