"""Image files a hostile but realistic user hands over, for the loader and CLI tests (tests/ is on sys.path)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_bomb_png(path: str | Path, side: int = 20000) -> Path:
    """A valid, all-black ``side`` x ``side`` 1-bit PNG: about 60 KB on disk, ``side**2`` pixels once decoded (400
    Mpx at 20000, over PIL's decompression-bomb limit of 2 x 89.5 Mpx)."""
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    packer = zlib.compressobj(1)
    block = row * 1000
    body = b"".join(packer.compress(block) for _ in range(side // 1000)) + packer.compress(row * (side % 1000))
    body += packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1 bit, greyscale
    path = Path(path)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", body) + _chunk(b"IEND", b""))
    return path


def write_corrupt_jpeg(path: str | Path) -> Path:
    """A file that starts like a JPEG and then is not one."""
    path = Path(path)
    path.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg at all" * 10)
    return path


def write_truncated_copy(good: str | Path, path: str | Path) -> Path:
    """The first half of a real image file (a download cut short)."""
    data = Path(good).read_bytes()
    path = Path(path)
    path.write_bytes(data[: len(data) // 2])
    return path
