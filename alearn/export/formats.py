"""Export formats: where image files go and how the records are written.

==============  ==========================================  ===============================
format          images                                      records
==============  ==========================================  ===============================
csv             ``images/<split>/<class>/<file>``           ``dataset.csv`` (nested fields
                                                            as JSON strings)
jsonl           ``images/<split>/<class>/<file>``           ``dataset.jsonl`` (native)
parquet         ``images/<split>/<class>/<file>``           ``dataset.parquet`` (native;
                                                            ``extra`` as a JSON string)
imagefolder     ``<split>/<class>/<file>``                  ``records.jsonl``
hf              ``<split>/<class>/<file>``                  ``<split>/metadata.parquet``
==============  ==========================================  ===============================

Splits are named ``train``, ``validation`` and ``test``. The ``file`` column is the
image's path inside the export (``file_name`` in ``hf``, relative to its split folder,
as ``datasets.load_dataset("imagefolder", data_dir=...)`` expects).

``hf`` uses ``metadata.parquet`` (read by datasets >= 3.4) rather than
``metadata.jsonl``: JSON carries no schema, so a column that is empty in one split
(say ``lat`` in ``test``) would be typed differently there, and datasets refuses splits
whose metadata types differ. Older datasets versions ignore the file and still load the
images, with labels from the folder names. ``datasets`` has no map type, so ``hf``
stores ``votes`` as a list of ``{annotator, label}``; the other formats as a mapping.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from alearn.exceptions import UnknownNameError

FORMATS = ("csv", "jsonl", "parquet", "imagefolder", "hf")
TABLE_FILES = {"csv": "dataset.csv", "jsonl": "dataset.jsonl", "parquet": "dataset.parquet",
               "imagefolder": "records.jsonl"}

_STR, _F64, _I64, _BOOL = pa.string(), pa.float64(), pa.int64(), pa.bool_()
_AUGMENT = pa.list_(pa.struct([("name", _STR), ("value", _F64)]))
_VOTES_MAP = pa.map_(_STR, _STR)
_VOTES_LIST = pa.list_(pa.struct([("annotator", _STR), ("label", _STR)]))

# (column, arrow type); "votes" is typed per format.
COLUMNS: tuple[tuple[str, pa.DataType | None], ...] = (
    ("id", _I64), ("file", _STR), ("split", _STR), ("label", _STR), ("confidence", _F64),
    ("method", _STR), ("origin", _STR), ("adjudicated", _BOOL), ("is_gold", _BOOL),
    ("agreement", _F64), ("n_votes", _I64), ("votes", None), ("round", _I64),
    ("model_version", _STR), ("source", _STR), ("captured_at", pa.timestamp("us")),
    ("lat", _F64), ("lon", _F64), ("license", _STR), ("extra", _STR), ("width", _I64),
    ("height", _I64), ("sha256", _STR), ("source_path", _STR), ("group", _I64),
    ("phash", _STR), ("copy_index", _I64), ("augment", _AUGMENT),
)
COLUMN_NAMES = tuple(name for name, _ in COLUMNS)


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise UnknownNameError("export format", fmt, FORMATS)
    return fmt


def image_relpath(fmt: str, split: str, class_dir: str, name: str) -> str:
    """Where an image goes inside the export (POSIX path)."""
    prefix = "images/" if fmt in ("csv", "jsonl", "parquet") else ""
    return f"{prefix}{split}/{class_dir}/{name}"


def write_records(out: Path, fmt: str, rows: Sequence[dict[str, Any]]) -> list[str]:
    """Write the records of ``rows`` (keys: :data:`COLUMN_NAMES`) in format ``fmt``.

    Returns the paths written, relative to ``out``.
    """
    check_format(fmt)
    rows = [{k: r[k] for k in COLUMN_NAMES} for r in rows]
    if fmt == "hf":
        return _write_hf(out, rows)
    path = out / TABLE_FILES[fmt]
    if fmt == "csv":
        path.write_bytes(_csv_bytes(rows))
    elif fmt == "parquet":
        _write_parquet(path, rows, _VOTES_MAP, _map_votes)
    else:
        path.write_bytes(_jsonl_bytes(rows))
    return [path.name]


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"),
                      allow_nan=False)


def _plain(value: Any) -> Any:
    """Timestamps as ISO 8601, nested mappings with sorted keys."""
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _plain(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _jsonl_bytes(rows: Sequence[dict[str, Any]]) -> bytes:
    lines = [json.dumps({k: _plain(v) for k, v in r.items()}, ensure_ascii=False,
                        allow_nan=False) for r in rows]
    return ("\n".join(lines) + "\n").encode("utf-8") if lines else b""


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return _json(_plain(value))
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return repr(value) if isinstance(value, float) else str(value)


def _csv_bytes(rows: Sequence[dict[str, Any]]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMN_NAMES)
    for r in rows:
        writer.writerow([_csv_cell(r[k]) for k in COLUMN_NAMES])
    return buf.getvalue().encode("utf-8")


def _map_votes(votes: dict[str, str]) -> list[tuple[str, str]]:
    return sorted(votes.items())


def _list_votes(votes: dict[str, str]) -> list[dict[str, str]]:
    return [{"annotator": a, "label": lab} for a, lab in sorted(votes.items())]


def _arrow_table(rows: Sequence[dict[str, Any]], votes_type: pa.DataType,
                 convert_votes: Any, *, file_column: str = "file") -> pa.Table:
    fields = [pa.field(file_column if name == "file" else name,
                       votes_type if name == "votes" else typ) for name, typ in COLUMNS]
    data: dict[str, list[Any]] = {f.name: [] for f in fields}
    for r in rows:
        for name, _ in COLUMNS:
            value = r[name]
            if name == "votes":
                value = convert_votes(value)
            elif name == "extra":
                value = _json(_plain(value))
            data[file_column if name == "file" else name].append(value)
    return pa.Table.from_pydict(data, schema=pa.schema(fields))


def _write_parquet(path: Path, rows: Sequence[dict[str, Any]], votes_type: pa.DataType,
                   convert_votes: Any, *, file_column: str = "file") -> None:
    table = _arrow_table(rows, votes_type, convert_votes, file_column=file_column)
    pq.write_table(table, path, compression="zstd")


def _write_hf(out: Path, rows: Sequence[dict[str, Any]]) -> list[str]:
    written = []
    for split in sorted({r["split"] for r in rows}):
        part = [dict(r, file=r["file"].split("/", 1)[1]) for r in rows if r["split"] == split]
        path = out / split / "metadata.parquet"
        _write_parquet(path, part, _VOTES_LIST, _list_votes, file_column="file_name")
        written.append(f"{split}/metadata.parquet")
    return written
