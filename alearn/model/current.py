"""The project's current head: the one function every caller gets a head from.

:func:`current_head` returns the head for the trusted labels as they are now. It is
fitted (by :func:`alearn.model.training.train_head`, the one place that fits heads) only
when no saved head has this training set's version; otherwise the saved one is loaded.
:func:`head_of` returns a saved head by version (the select job uses the version its
train job made). Loaded heads are kept in memory by version, which is a hash of all
that determines the head, so a cached head is never out of date.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from sqlalchemy import select

from alearn.exceptions import StoreError
from alearn.model import training
from alearn.model.head import EmbeddingClassifier
from alearn.project import Project
from alearn.store import ModelRecord

#: loaded heads kept in memory, by (models folder, version)
CACHE_SIZE = 4
_HEADS: OrderedDict[tuple[str, str], EmbeddingClassifier] = OrderedDict()


@dataclass(frozen=True)
class TrainedHead:
    """A saved head and what its record says about it."""

    version: str
    head: EmbeddingClassifier
    n_train: int
    cv_accuracy: float | None


def current_head(project: Project) -> TrainedHead | None:
    """The head for the project's trusted labels now (fitted and saved if new), or None
    while they cover fewer than two classes."""
    record = training.train_head(project)
    if record is None:
        return None
    return head_of(project, record.version)


def head_of(project: Project, version: str) -> TrainedHead:
    """The saved head ``version`` (raises StoreError if the store does not know it)."""
    with project.store.session() as s:
        record = s.scalar(select(ModelRecord).where(ModelRecord.version == version))
        if record is None:
            raise StoreError(f"no model {version!r} in the store. Start a round "
                             "('alearn round start') to train one.")
        n_train, cv = int(record.n_train or 0), record.cv_accuracy
    key = (str(project.models_dir), version)
    head = _HEADS.get(key)
    if head is None:
        head = training.load_head(project, version)
        _HEADS[key] = head
        while len(_HEADS) > CACHE_SIZE:
            _HEADS.popitem(last=False)
    else:
        _HEADS.move_to_end(key)
    return TrainedHead(version=version, head=head, n_train=n_train, cv_accuracy=cv)
