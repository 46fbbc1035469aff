"""Read an ingest manifest: a CSV or JSON Lines file describing images.

Known columns (all optional except ``path``):

``path``
    The image, relative to the image root, or absolute inside it.
``label``
    An already-trusted label (seed or gold item); it must be a project class.
``source``, ``license``
    Free text.
``captured_at``
    ISO date or datetime (``2024-05-31``, ``2024-05-31T14:02:00``). A datetime with a
    time zone is converted to UTC; a naive one is kept as written.
``lat``, ``lon``
    Decimal degrees, given together, in [-90, 90] and [-180, 180].

Every other column is kept, as written, in ``Item.extra``. Column names are matched
case-insensitively; an empty CSV cell (or a JSON ``null``) means "not given".

Rows are numbered by the line they start on, so a CSV's first data row is row 2 (the
header is row 1), matching a spreadsheet; a JSONL file's rows are its line numbers. A bad
row is not fatal: its :attr:`ManifestRow.error` says what is wrong and ingest records it.
A file that cannot be read at all raises :class:`~alearn.exceptions.IngestError`.
:mod:`alearn.ingestion.scan` then checks each row against the project (path inside the
image root, file present, label a project class).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alearn.exceptions import IngestError
from alearn.files import read_regular_file

MAX_TEXT = 256  # label, source and license columns of the store
MAX_PATH = 1024  # files.path and items.path
KNOWN_COLUMNS = ("path", "label", "source", "captured_at", "lat", "lon", "license")
CSV_SUFFIXES = (".csv",)
JSONL_SUFFIXES = (".jsonl", ".ndjson")


@dataclass(frozen=True)
class ManifestRow:
    """One manifest row, parsed. ``error`` is None for a good row."""

    row: int
    path: str | None
    label: str | None = None
    source: str | None = None
    captured_at: dt.datetime | None = None
    lat: float | None = None
    lon: float | None = None
    license: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


#: A manifest larger than this is refused (1 GiB: some ten million rows).
MAX_MANIFEST_BYTES = 1 << 30


def read_manifest(path: Path | str) -> list[ManifestRow]:
    """Parse a ``.csv`` or ``.jsonl`` manifest into rows (bad rows carry ``error``)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in CSV_SUFFIXES + JSONL_SUFFIXES:
        raise IngestError(
            f"manifest {path}: unknown format {path.suffix or '(no extension)'!r}. "
            "Give a .csv file (with a header row) or a .jsonl file (one JSON object a line)."
        )
    try:
        raw = read_regular_file(path, MAX_MANIFEST_BYTES, limit="1 GiB for a manifest")
        text = raw.decode("utf-8-sig")
    except ValueError as exc:
        if isinstance(exc, UnicodeDecodeError):
            raise IngestError(f"manifest {path}: not UTF-8 text (byte {exc.start}). Save it "
                              "as UTF-8 and retry.") from None
        raise IngestError(f"manifest {path}: {exc}.") from None
    except UnicodeDecodeError as exc:
        raise IngestError(
            f"manifest {path}: not UTF-8 text (byte {exc.start}). Save it as UTF-8 and retry."
        ) from None
    except OSError as exc:
        raise IngestError(f"manifest {path}: cannot read it ({exc.strerror}).") from None
    if suffix in CSV_SUFFIXES:
        return _read_csv(path, text)
    return _read_jsonl(path, text)


def _read_csv(path: Path, text: str) -> list[ManifestRow]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None:
            raise IngestError(
                f"manifest {path}: the file is empty. Expected a header row naming a "
                "'path' column."
            )
        names = [h.strip() for h in header]
        _check_header(path, names)
        rows: list[ManifestRow] = []
        start = reader.line_num + 1
        for values in reader:
            line, start = start, reader.line_num + 1
            if not any(v.strip() for v in values):
                continue
            record: dict[str, Any] = dict(zip(names, values, strict=False))
            if len(values) > len(names):
                rows.append(ManifestRow(
                    row=line, path=_text(record.get(_find(names, "path"))),
                    error=f"has {len(values)} fields but the header has {len(names)}",
                ))
                continue
            rows.append(parse_record(line, record))
    except csv.Error as exc:
        raise IngestError(
            f"manifest {path}: not valid CSV at line {reader.line_num} ({exc})."
        ) from None
    return rows


def _find(names: list[str], key: str) -> str:
    return next((n for n in names if n.lower() == key), key)


def _check_header(path: Path, names: list[str]) -> None:
    lowered = [n.lower() for n in names]
    dups = sorted({n for n in lowered if lowered.count(n) > 1})
    if dups:
        raise IngestError(f"manifest {path}: columns {dups} appear more than once.")
    if "path" not in lowered:
        raise IngestError(
            f"manifest {path}: no 'path' column (columns found: {', '.join(names)}). "
            "Add a 'path' column with each image's path under the image root."
        )


def _read_jsonl(path: Path, text: str) -> list[ManifestRow]:
    rows: list[ManifestRow] = []
    objects = 0
    for line, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw, parse_constant=_no_constant, parse_float=_finite_float)
        except ValueError as exc:
            msg = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
            rows.append(ManifestRow(row=line, path=None, error=f"not valid JSON ({msg})"))
            continue
        if not isinstance(record, dict):
            rows.append(ManifestRow(
                row=line, path=None,
                error=f"is a JSON {type(record).__name__}, expected an object",
            ))
            continue
        objects += 1
        rows.append(parse_record(line, record))
    if rows and not objects:
        raise IngestError(
            f"manifest {path}: no line is a JSON object. A .jsonl manifest holds one "
            'object a line, e.g. {"path": "a/1.jpg", "label": "cat"}.'
        )
    return rows


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text} is too large to store (not finite)")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_record(row: int, record: dict[str, Any]) -> ManifestRow:
    """Turn one manifest record (column name -> raw value) into a checked row."""
    known: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in record.items():
        name = str(key).strip()
        if name.lower() in KNOWN_COLUMNS:
            known[name.lower()] = value
        elif value is not None and value != "":
            extra[name] = value
    dumped = json.dumps(record, default=str, ensure_ascii=False)
    if "\\u0000" in dumped:
        return ManifestRow(row=row, path=None, error="contains a NUL character")
    try:
        dumped.encode("utf-8")
    except UnicodeEncodeError:
        return ManifestRow(row=row, path=None, error="contains a lone surrogate, not text")
    errors: list[str] = []
    path = _field_text(known, "path", errors)
    if path is None and not errors:
        errors.append("no path")
    label = _field_text(known, "label", errors)
    source = _field_text(known, "source", errors)
    license_ = _field_text(known, "license", errors)
    captured_at = _field_date(known.get("captured_at"), errors)
    lat = _field_degrees(known.get("lat"), "lat", 90.0, errors)
    lon = _field_degrees(known.get("lon"), "lon", 180.0, errors)
    if (lat is None) != (lon is None) and not errors:
        given, missing = ("lat", "lon") if lon is None else ("lon", "lat")
        errors.append(f"{given} given without {missing}; give both or neither")
    return ManifestRow(
        row=row, path=path, label=label, source=source, captured_at=captured_at,
        lat=lat, lon=lon, license=license_, extra=extra,
        error="; ".join(errors) or None,
    )


def _text(value: Any) -> str | None:
    if value is None:
        return None
    value = str(value).strip()
    return value or None


def _field_text(known: dict[str, Any], key: str, errors: list[str]) -> str | None:
    value = known.get(key)
    if isinstance(value, dict | list | bool):
        errors.append(f"{key} {json.dumps(value)} must be text")
        return None
    text = _text(value)
    limit = MAX_PATH if key == "path" else MAX_TEXT
    if text is not None and len(text) > limit:
        errors.append(f"{key} is {len(text)} characters long; at most {limit} fit the store")
        return None
    return text


def parse_datetime(value: str) -> dt.datetime:
    """ISO date or datetime -> naive datetime (aware values converted to UTC)."""
    parsed = dt.datetime.fromisoformat(value.strip())
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(dt.UTC).replace(tzinfo=None)
    return parsed


def _field_date(value: Any, errors: list[str]) -> dt.datetime | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        try:
            return parse_datetime(value)
        except ValueError:
            pass
    errors.append(
        f"captured_at {value!r} is not an ISO date or datetime "
        "(e.g. 2024-05-31 or 2024-05-31T14:02:00)"
    )
    return None


def _field_degrees(value: Any, key: str, limit: float, errors: list[str]) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    number: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = None
    if number is None or not math.isfinite(number):
        errors.append(f"{key} {value!r} is not a number of decimal degrees")
        return None
    if not -limit <= number <= limit:
        errors.append(f"{key} {number} is out of range [-{limit:g}, {limit:g}]")
        return None
    return number
