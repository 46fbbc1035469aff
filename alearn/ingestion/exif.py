"""Capture date and GPS position from an image's EXIF data.

Ingest uses these only where the manifest does not give them. EXIF times carry no time
zone, so they are kept as the camera wrote them (local time). Malformed EXIF is
ignored: it never rejects an image.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from typing import Any, NamedTuple

from PIL import ExifTags, Image

logger = logging.getLogger(__name__)

_DATE_FORMAT = "%Y:%m:%d %H:%M:%S"


class ExifInfo(NamedTuple):
    """What ingest keeps from EXIF; None where absent or unreadable (a tuple: cheap to
    send back from a decode worker)."""

    captured_at: dt.datetime | None = None
    lat: float | None = None
    lon: float | None = None


def read_exif(image: Image.Image) -> ExifInfo:
    """Capture date (DateTimeOriginal, else DateTime) and GPS position of a loaded image."""
    if not has_exif(image):
        return NO_EXIF
    try:
        exif = image.getexif()
        sub = exif.get_ifd(ExifTags.IFD.Exif)
        gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    except (OSError, SyntaxError, ValueError, TypeError, KeyError, IndexError) as exc:
        logger.debug("unreadable EXIF ignored: %s", exc)
        return NO_EXIF
    captured = parse_exif_datetime(sub.get(ExifTags.Base.DateTimeOriginal))
    if captured is None:
        captured = parse_exif_datetime(exif.get(ExifTags.Base.DateTime))
    lat = gps_degrees(gps.get(ExifTags.GPS.GPSLatitude), gps.get(ExifTags.GPS.GPSLatitudeRef),
                      positive="N", negative="S", limit=90.0)
    lon = gps_degrees(gps.get(ExifTags.GPS.GPSLongitude),
                      gps.get(ExifTags.GPS.GPSLongitudeRef),
                      positive="E", negative="W", limit=180.0)
    if lat is None or lon is None:
        lat = lon = None
    return ExifInfo(captured_at=captured, lat=lat, lon=lon)


#: An image without EXIF: one shared value (sent once per chunk by a decode worker).
NO_EXIF = ExifInfo()


def has_exif(image: Image.Image) -> bool:
    """Whether a loaded image carries EXIF at all, by the sources ``getexif`` reads.

    Most pool images have none; this skips building an empty ``Exif`` for them (a tenth
    of the time of decoding a small PNG).
    """
    info = image.info
    return "exif" in info or "Raw profile type exif" in info or hasattr(image, "tag_v2")


def parse_exif_datetime(value: Any) -> dt.datetime | None:
    """``'2019:05:06 07:08:09'`` -> datetime; None for absent, blank or invalid values."""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if not isinstance(value, str):
        return None
    text = value.strip("\x00 ").strip()
    try:
        return dt.datetime.strptime(text[:19], _DATE_FORMAT)
    except ValueError:
        return None


def gps_degrees(value: Any, ref: Any, *, positive: str, negative: str,
                limit: float) -> float | None:
    """EXIF (degrees, minutes, seconds) rationals plus a hemisphere ref -> decimal degrees.

    Returns None unless the value has one to three finite parts, the ref is ``positive``
    or ``negative`` (e.g. 'N'/'S'), and the result is within ``[-limit, limit]``.
    """
    if isinstance(ref, bytes):
        ref = ref.decode("ascii", "replace")
    if not isinstance(ref, str) or ref.strip("\x00 ").upper() not in (positive, negative):
        return None
    if not isinstance(value, tuple | list) or not 1 <= len(value) <= 3:
        return None
    try:
        parts = [float(v) for v in value]
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    if not all(math.isfinite(p) and p >= 0 for p in parts):
        return None
    degrees = sum(p / 60.0**i for i, p in enumerate(parts))
    if ref.strip("\x00 ").upper() == negative:
        degrees = -degrees
    return degrees if -limit <= degrees <= limit else None
