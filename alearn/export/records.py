"""What goes into an export: the trusted labels, with their item's metadata and votes.

One record per labeled item (a dict), read from the store in item-id order:

- the item: ``id``, ``sha256``, ``path`` (under the image root), ``width``, ``height``,
  ``source``, ``captured_at``, ``lat``, ``lon``, ``license``, ``extra`` (other manifest
  columns);
- its trusted label: ``label``, ``confidence``, ``method``, ``origin``
  ('manifest', 'consensus' or 'adjudicated'), ``adjudicated``, ``is_gold``, and the
  ``round`` number and ``model_version`` of the round that labeled it (None for
  manifest labels);
- its votes: ``votes`` ({annotator: label}, each annotator's latest usable
  annotation), ``n_votes`` and ``agreement``, the share of those votes that match the
  label (None when the item has no votes).

Filters, applied in this order, each counting what it removed: labels that are not a
project class, ``confidence < min_confidence``, ``agreement < min_agreement`` (items
without votes pass).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from alearn.exceptions import ConfigError
from alearn.project import Project
from alearn.store import Annotation, Item, Label, Round

FILTERS = ("unknown_class", "min_confidence", "min_agreement")
_EPS = 1e-9  # 2/3 passes min_agreement 0.6666666667's rounding


def check_threshold(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{name} {value}: give a number from 0 to 1.")
    return value


def pseudonymizer(project: Project) -> Any:
    """annotator -> ``annotator-<10 hex>``: stable within the project (a keyed hash with
    a random key kept in the store), so votes stay comparable across exports, but not
    reversible by hashing guessed emails."""
    import hashlib
    import hmac
    import secrets

    keys: list[bytes] = []

    def name(who: str) -> str:
        if not keys:  # made on first use, so an export with no votes changes nothing
            key = project.store.get_meta("export_pseudonym_key")
            if key is None:
                key = secrets.token_hex(32)
                project.store.set_meta("export_pseudonym_key", key)
            keys.append(bytes.fromhex(str(key)))
        return "annotator-" + hmac.new(keys[0], str(who).encode(), hashlib.sha256
                                       ).hexdigest()[:10]
    return name


def load_records(
    project: Project, *, min_confidence: float = 0.0, min_agreement: float = 0.0,
    annotator_names: bool = False,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The trusted-label records that pass the filters, and how many each filter removed.

    Returns
    -------
    records : list of dict
        In item-id order (see the module docstring for the keys).
    removed : dict
        ``{"labeled": n, "unknown_class": n, "min_confidence": n, "min_agreement": n}``;
        ``labeled`` counts every trusted label before filtering.
    """
    min_confidence = check_threshold("min_confidence", min_confidence)
    min_agreement = check_threshold("min_agreement", min_agreement)
    classes = set(project.config.classes)
    with project.store.session() as s:
        rounds = {r.id: (r.number, r.model_version) for r in s.scalars(select(Round))}
        rows = s.execute(select(Item, Label).join(Label, Label.item_id == Item.id)
                         .order_by(Item.id)).all()
        votes = _votes(s)
    if not annotator_names:  # who voted stays with the team; the export shows pseudonyms
        name = pseudonymizer(project)
        votes = {i: {name(a): lab for a, lab in v.items()} for i, v in votes.items()}
    records = [_record(item, label, rounds, votes.get(item.id, {})) for item, label in rows]
    removed = {"labeled": len(records), **dict.fromkeys(FILTERS, 0)}
    keep: list[dict[str, Any]] = []
    for rec in records:
        if rec["label"] not in classes:
            removed["unknown_class"] += 1
        elif rec["confidence"] < min_confidence - _EPS:
            removed["min_confidence"] += 1
        elif rec["agreement"] is not None and rec["agreement"] < min_agreement - _EPS:
            removed["min_agreement"] += 1
        else:
            keep.append(rec)
    return keep, removed


def _votes(s: Any) -> dict[int, dict[str, str]]:
    """item id -> {annotator: label}, each annotator's latest usable annotation."""
    query = select(Annotation.item_id, Annotation.annotator, Annotation.label).where(
        Annotation.status == "ok", Annotation.was_cancelled.is_(False),
        Annotation.label.is_not(None),
    ).order_by(Annotation.item_id, Annotation.id)
    out: dict[int, dict[str, str]] = {}
    for item_id, annotator, label in s.execute(query).all():
        out.setdefault(int(item_id), {})[str(annotator)] = str(label)
    return out


def _record(item: Item, label: Label, rounds: dict[int, tuple[int, str | None]],
            votes: dict[str, str]) -> dict[str, Any]:
    number, model_version = rounds.get(label.round_id, (None, None)) \
        if label.round_id is not None else (None, None)
    votes = dict(sorted(votes.items()))
    agree = (sum(v == label.label for v in votes.values()) / len(votes)) if votes else None
    return {
        "id": int(item.id), "sha256": item.sha256, "path": item.path,
        "width": int(item.width), "height": int(item.height),
        "label": label.label, "confidence": float(label.confidence),
        "method": label.method, "origin": label.origin,
        "adjudicated": label.origin == "adjudicated", "is_gold": bool(label.is_gold),
        "round": number, "model_version": model_version,
        "agreement": agree, "n_votes": len(votes), "votes": votes,
        "source": item.source, "captured_at": item.captured_at,
        "lat": item.lat, "lon": item.lon, "license": item.license,
        "extra": dict(item.extra or {}),
    }
