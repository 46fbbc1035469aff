"""Class balance for the training split: over-, undersampling, class weights, augmentation.

Only the train split is changed; validation and test keep the true class distribution.

``oversample``
    Every class is brought up to the largest class count in train by extra copies of
    its items (cycling through them in a seeded order). With augmentation each copy is
    a deterministic random flip, rotation and colour jitter of its source.
``undersample``
    Every class is cut down to the smallest class count in train (a seeded choice); the
    items cut are left out of the export.
``weights``
    Nothing is copied or cut; ``class_weights.json`` holds
    ``n_samples / (n_classes * count)``, scikit-learn's 'balanced' formula.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from alearn.exceptions import UnknownNameError

BALANCE_MODES = ("none", "oversample", "undersample", "weights")

# Augmentation ranges: rotation in degrees (counter-clockwise), jitter as factors.
MAX_ROTATION = 15.0
JITTER = 0.2


@dataclass(frozen=True)
class Copy:
    """One extra training copy of ``source`` (an item id); ``index`` counts from 1."""

    source: int
    index: int
    augment: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class BalancePlan:
    """What balancing does to the train split."""

    mode: str
    dropped: list[int] = field(default_factory=list)
    copies: list[Copy] = field(default_factory=list)
    weights: dict[str, float] | None = None


def check_balance(mode: str) -> str:
    if mode not in BALANCE_MODES:
        raise UnknownNameError("balance mode", mode, BALANCE_MODES)
    return mode


def balance_train(
    item_ids: Sequence[int], labels: Sequence[str], *, mode: str, seed: int = 0,
    augment: bool = False,
) -> BalancePlan:
    """Plan the balancing of the train split.

    Parameters
    ----------
    item_ids : sequence of int, length n_train
    labels : sequence of str, length n_train
        Class of each train item.
    mode : {'none', 'oversample', 'undersample', 'weights'}
    seed : int
    augment : bool
        Oversampled copies get random augmentation (see :func:`augment_ops`).

    Returns
    -------
    BalancePlan
        Items dropped (undersample), extra copies (oversample) or class weights.
    """
    check_balance(mode)
    plan = BalancePlan(mode)
    by_class: dict[str, list[int]] = {}
    for item, label in zip(item_ids, labels, strict=True):
        by_class.setdefault(label, []).append(int(item))
    if not by_class or mode == "none":
        return plan
    if mode == "weights":
        plan.weights = class_weights(labels)
        return plan
    rng = np.random.default_rng(seed)
    sizes = {c: len(v) for c, v in by_class.items()}
    goal = max(sizes.values()) if mode == "oversample" else min(sizes.values())
    for label in sorted(by_class):
        items = sorted(by_class[label])
        order = [items[i] for i in rng.permutation(len(items))]
        if mode == "undersample":
            plan.dropped += sorted(order[goal:])
            continue
        for j in range(goal - len(items)):
            source, index = order[j % len(items)], j // len(items) + 1
            ops = augment_ops(seed, source, index) if augment else []
            plan.copies.append(Copy(source, index, ops))
    return plan


def class_weights(labels: Sequence[str]) -> dict[str, float]:
    """``n_samples / (n_classes * count)`` for each class present, sorted by name."""
    names, counts = np.unique(np.asarray(labels, dtype=object).astype(str), return_counts=True)
    n, k = int(counts.sum()), len(names)
    return {str(c): float(n / (k * m)) for c, m in zip(names, counts, strict=True)}


def augment_ops(seed: int, item_id: int, copy_index: int) -> list[dict[str, Any]]:
    """The transforms of one augmented copy, drawn from a generator seeded by
    (seed, item, copy): ``[{"name": ..., "value": ...}]``, applied in order.

    ``hflip`` (value None) with probability 1/2, then always ``rotate`` (degrees,
    counter-clockwise, in +-15) and ``brightness``, ``contrast``, ``saturation``
    (factors in [0.8, 1.2]). Values are rounded, so the record is exactly what was
    applied.
    """
    rng = np.random.default_rng([seed, item_id, copy_index])
    ops: list[dict[str, Any]] = []
    if rng.random() < 0.5:
        ops.append({"name": "hflip", "value": None})
    ops.append({"name": "rotate",
                "value": round(float(rng.uniform(-MAX_ROTATION, MAX_ROTATION)), 2)})
    for name in ("brightness", "contrast", "saturation"):
        ops.append({"name": name, "value": round(float(rng.uniform(1 - JITTER, 1 + JITTER)), 3)})
    return ops


_ENHANCERS = {"brightness": ImageEnhance.Brightness, "contrast": ImageEnhance.Contrast,
              "saturation": ImageEnhance.Color}


def apply_ops(img: Image.Image, ops: Sequence[dict[str, Any]]) -> Image.Image:
    """Apply transforms recorded by :func:`augment_ops` (areas rotated in are black)."""
    for op in ops:
        name, value = op["name"], op["value"]
        if name == "hflip":
            img = ImageOps.mirror(img)
        elif name == "rotate":
            img = img.rotate(float(value), resample=Image.Resampling.BILINEAR)
        elif name in _ENHANCERS:
            if name == "saturation" and img.mode != "RGB":
                continue  # no colour to change
            img = _ENHANCERS[name](img).enhance(float(value))
        else:
            raise ValueError(f"unknown augmentation {name!r}")
    return img
