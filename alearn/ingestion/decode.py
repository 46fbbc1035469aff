"""Read one file: hash it and fully decode it, or say what is wrong with it."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from alearn.files import read_regular_file
from alearn.ingestion.exif import ExifInfo, read_exif


@dataclass(frozen=True)
class Decoded:
    """The outcome of reading one file: ``error`` is None for a good image."""

    size: int | None
    sha256: str | None = None
    width: int = 0
    height: int = 0
    exif: ExifInfo = ExifInfo()
    error: str | None = None


def decode_image(path: Path, *, max_pixels: int, max_bytes: int = 1 << 40) -> Decoded:
    """Read, hash and fully decode one file, saying what is wrong with it if anything.

    Call it with ``Image.DecompressionBombWarning`` turned into an error (ingest does).
    """
    try:
        data = read_regular_file(path, max_bytes)
    except ValueError as exc:
        return Decoded(None, error=str(exc))
    except OSError as exc:
        return Decoded(None, error=f"cannot read the file ({exc.strerror or exc})")
    if not data:
        return Decoded(0, error="empty file (0 bytes)")
    sha = hashlib.sha256(data).hexdigest()
    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
            if width * height > max_pixels:
                return Decoded(len(data), error=(
                    f"decompression bomb: {width}x{height} = {width * height} pixels is "
                    f"over the limit of {max_pixels}"))
            im.load()
            exif = read_exif(im)
    except UnidentifiedImageError:
        error = "not an image: no image format recognised in the file's bytes"
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        error = f"decompression bomb: {exc}"
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as exc:
        error = f"corrupt or truncated image data ({type(exc).__name__}: {exc})"
    except Exception as exc:  # noqa: BLE001 - any decoder failure rejects only this file
        error = f"cannot decode the image ({type(exc).__name__}: {exc})"
    else:
        return Decoded(len(data), sha, width, height, exif)
    return Decoded(len(data), error=error)
