"""The job itself, in plain Python that knows no job queue. The Celery, arq and Prefect
versions all call `create_thumbnail`: when you switch queues, your logic stays as it is."""

import base64
import hashlib

SCALE = 4  # a thumbnail is a quarter of the width and the height


def sample_upload(seed: int, width: int = 64, height: int = 48) -> str:
    """An uploaded greyscale image (binary PGM), base64-encoded as a JSON API would receive it."""
    pixels = bytes((x * 7 + y * 13 + seed * 31) % 256 for y in range(height) for x in range(width))
    return base64.b64encode(b"P5\n%d %d\n255\n" % (width, height) + pixels).decode()


def shrink(pgm: bytes) -> tuple[int, int, bytes]:
    """Average each SCALE x SCALE block of a binary PGM image; returns the thumbnail's size
    and its own PGM bytes."""
    magic, size, maxval, pixels = pgm.split(b"\n", 3)
    if magic != b"P5" or maxval != b"255":
        raise ValueError("not an 8-bit binary PGM image")
    width, height = (int(n) for n in size.split())
    w, h = width // SCALE, height // SCALE
    out = bytearray()
    for ty in range(h):
        for tx in range(w):
            block = [
                pixels[(ty * SCALE + dy) * width + tx * SCALE + dx]
                for dy in range(SCALE)
                for dx in range(SCALE)
            ]
            out.append(sum(block) // len(block))
    return w, h, b"P5\n%d %d\n255\n" % (w, h) + bytes(out)


def store(name: str, data: bytes, attempt: int) -> str:
    """Stands in for an upload to object storage and returns the file's address. It times
    out on every job's first attempt, so that each version shows its retry."""
    if attempt == 1:
        raise ConnectionError(f"storage timed out while storing {name}")
    return f"thumbnails/{name}"


def create_thumbnail(name: str, upload_b64: str, attempt: int) -> dict:
    """The whole job: decode the upload, shrink it, store the thumbnail, describe it."""
    width, height, thumbnail = shrink(base64.b64decode(upload_b64))
    return {
        "name": name,
        "size": f"{width}x{height}",
        "sha256": hashlib.sha256(thumbnail).hexdigest(),
        "stored_at": store(name, thumbnail, attempt),
        "attempt": attempt,
    }


def describe(thumbnail: dict) -> str:
    """One line per thumbnail, the same from every version."""
    t = thumbnail
    return (
        f"{t['name']}: {t['size']}, sha256 {t['sha256'][:16]}, {t['stored_at']},"
        f" attempt {t['attempt']}"
    )
