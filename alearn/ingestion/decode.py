"""Read one file: hash it and fully decode it, or say what is wrong with it.

This is the per-file work of ingest, run in the calling process or in worker processes
(:mod:`alearn.ingestion.parallel`). The file is read once: the sha256 and the decode
both work on the bytes in memory. A :class:`Decoded` is a small tuple, cheap to pickle.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import NamedTuple

from PIL import Image, UnidentifiedImageError

from alearn.files import read_regular_stat
from alearn.ingestion.exif import NO_EXIF, ExifInfo, read_exif

#: The reason recorded for a file that killed the process decoding it, twice over.
CRASH_REASON = ("the decoder's worker process died on this file (a crash in an image codec, "
                "or the process was killed); it was not decoded and is tried again on the "
                "next ingest")


class Decoded(NamedTuple):
    """The outcome of reading one file: ``error`` is None for a good image.

    ``size`` and ``mtime_ns`` are the file's as read (None where it could not be read).
    """

    size: int | None
    sha256: str | None = None
    width: int = 0
    height: int = 0
    exif: ExifInfo = NO_EXIF
    error: str | None = None
    mtime_ns: int | None = None


def decode_image(path: Path | str, *, max_pixels: int, max_bytes: int = 1 << 40) -> Decoded:
    """Read, hash and fully decode one file, saying what is wrong with it if anything.

    Call it with ``Image.DecompressionBombWarning`` turned into an error (ingest does).
    """
    try:
        data, st = read_regular_stat(path, max_bytes)
    except ValueError as exc:
        return Decoded(None, error=str(exc))
    except OSError as exc:
        return Decoded(None, error=f"cannot read the file ({exc.strerror or exc})")
    if not data:
        return Decoded(0, error="empty file (0 bytes)", mtime_ns=st.st_mtime_ns)
    sha = hashlib.sha256(data).hexdigest()
    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
            if width * height > max_pixels:
                return Decoded(len(data), error=(
                    f"decompression bomb: {width}x{height} = {width * height} pixels is "
                    f"over the limit of {max_pixels}"), mtime_ns=st.st_mtime_ns)
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
        return Decoded(len(data), sha, width, height, exif, mtime_ns=st.st_mtime_ns)
    return Decoded(len(data), error=error, mtime_ns=st.st_mtime_ns)
