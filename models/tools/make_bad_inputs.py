"""Makes the bad-input corpus in tests/data/bad/: small files, one per kind of hostile or broken
input the gate must reject with a named reason, without crashing or allocating beyond its limits.

Modelled on public bug reports against image decoders, camera pipelines and dataset readers
(decompression bombs, header-declared sizes, truncated transfers). Deterministic: the pictures
come from scikit-image's bundled data (CC0 / public domain), the noise from a seeded generator.
Inputs too large to commit (a gzip bomb, an endless MJPEG scan) are made by the Rust tests.

    python models/tools/make_bad_inputs.py            # writes tests/data/bad/

Each file's expected reason (a phrase of the error message) is in tests/data/bad/expected.json.
"""
from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data as skdata

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "data" / "bad"


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height RGBA 8-bit, with one tiny IDAT (CRCs valid)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    idat = zlib.compress(b"\x00" + b"\x00" * 16)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def jpeg_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", **kw)
    return buf.getvalue()


def patch_sof(jpeg: bytes, width: int, height: int) -> bytes:
    """The JPEG with its frame header (SOF0/SOF2) declaring width x height."""
    b = bytearray(jpeg)
    i = 2
    while i < len(b):
        assert b[i] == 0xFF, i
        marker = b[i + 1]
        seg = struct.unpack(">H", b[i + 2:i + 4])[0]
        if marker in (0xC0, 0xC2):
            b[i + 5:i + 9] = struct.pack(">HH", height, width)
            return bytes(b)
        i += 2 + seg
    raise ValueError("no SOF")


def up_to_scan(jpeg: bytes) -> bytes:
    """The JPEG's bytes before its first start-of-scan marker."""
    i = 2
    while True:
        marker = jpeg[i + 1]
        if marker == 0xDA:
            return jpeg[:i]
        i += 2 + struct.unpack(">H", jpeg[i + 2:i + 4])[0]


def idx(n: int, rows: int, cols: int, body: bytes, magic: int = 0x0803) -> bytes:
    return struct.pack(">IIII", magic, n, rows, cols) + body


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.iterdir():
        old.unlink()
    rng = np.random.default_rng(0)
    coffee = Image.fromarray(skdata.coffee()).resize((320, 213), Image.BILINEAR)
    photo = jpeg_bytes(coffee, quality=90)
    small = jpeg_bytes(coffee.resize((64, 43)), quality=80)
    png = io.BytesIO()
    coffee.resize((160, 107)).save(png, format="PNG")
    png = png.getvalue()
    digits = rng.integers(0, 256, size=(3, 28, 28), dtype=np.uint8).tobytes()

    files: dict[str, tuple[bytes, str]] = {
        # Header-declared sizes (decompression bombs): refused from the header.
        "png_declares_100000x100000.png": (png_declaring(100_000, 100_000), "limit"),
        "jpeg_declares_65500x65500.jpg": (patch_sof(small, 65_500, 65_500), "limit"),
        # Truncated transfers: never gray-filled and scored.
        "jpeg_cut_at_60pct.jpg": (photo[: len(photo) * 60 // 100], "truncated"),
        "jpeg_cut_at_80pct.jpg": (photo[: len(photo) * 80 // 100], "truncated"),
        "jpeg_cut_at_90pct.jpg": (photo[: len(photo) * 90 // 100], "truncated"),
        "jpeg_no_scan_data.jpg": (up_to_scan(photo) + b"\xff\xd9", "truncated"),
        "png_cut_at_70pct.png": (png[: len(png) * 70 // 100], "decode"),
        "empty.png": (b"", "empty file"),
        "not_an_image.jpg": (b"this is a text file with a .jpg name\n" * 4, "decode"),
        # IDX (the MNIST format): checked arithmetic, caps, a short body per frame.
        "short_body-idx3-ubyte": (idx(10, 28, 28, digits + digits[:100]), "truncated IDX"),
        "declares_20000x20000-idx3-ubyte": (idx(1, 20_000, 20_000, b"\x00" * 64), "limit"),
        "declares_65536x65536-idx3-ubyte": (idx(1, 65_536, 65_536, b"\x00" * 64), "limit"),
        "declares_4294967295_images-idx3-ubyte": (idx(0xFFFF_FFFF, 28, 28, digits), "limit"),
        "zero_rows-idx3-ubyte": (idx(3, 0, 28, digits), "at least 1"),
        "header_only_8_bytes-idx3-ubyte": (idx(3, 28, 28, b"")[:8], "too short"),
        "bad_magic-idx3-ubyte": (idx(3, 28, 28, digits, magic=0x0801), "magic"),
    }
    expected = {}
    for name, (content, reason) in sorted(files.items()):
        (OUT / name).write_bytes(content)
        expected[name] = reason
    (OUT / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    total = sum(len(c) for c, _ in files.values())
    print(f"wrote {len(files)} files ({total} bytes) to {OUT}")


if __name__ == "__main__":
    main()
