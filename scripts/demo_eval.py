"""What the demo prints after each round, measured against the held-out truth."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select
from threadpoolctl import threadpool_limits

from alearn.features.backbone import embed_pil, load_backbone
from alearn.model import training
from alearn.model.current import current_head
from alearn.project import Project
from alearn.rounds import metrics as round_metrics
from alearn.rounds.adaptive_round import clicks_per_trusted_label
from alearn.store import Item, Label, Round


class Evaluator:
    def __init__(self, project_dir: Path, split: Any, truth: dict[str, int]) -> None:
        self.project = Project.open(project_dir)
        self.truth = truth
        self.classes = self.project.config.classes
        backbone = load_backbone(self.project.config.embed, root=self.project.root)
        images = [split.test_images[i] for i in range(len(split.test_labels))]
        if self.project.config.embed.image_size and images and images[0].size[0] < 16:
            images = [im.resize((32, 32)) for im in images]
        self.X_test = embed_pil(backbone, images, batch_size=64)
        self.y_test = np.array([self.classes[c] for c in split.test_labels], dtype=object)

    def row(self, number: int) -> dict[str, Any]:
        store = self.project.store
        with store.session() as s:
            rnd = s.scalar(select(Round).where(Round.number == number))
            rows = s.execute(select(Label.label, Item.path).join(Item, Item.id == Label.item_id)
                             .where(Label.round_id == rnd.id, Label.origin == "consensus")).all()
        metrics = round_metrics.of(rnd)
        correct = [self.classes[self.truth[Path(p).name]] == lab for lab, p in rows]
        ids, X = training.pool_features(self.project)
        _, _, y_tr = training.training_set(self.project, ids, X)
        acc = None
        current = current_head(self.project)
        if current is not None:
            with threadpool_limits(1):
                acc = float(np.mean(current.head.predict(self.X_test) == self.y_test))
        kappa = metrics.kappa
        return {
            "round": number,
            "labels spent": metrics.labels_spent_total,
            "trusted": len(y_tr),
            "test accuracy": "-" if acc is None else f"{acc:.3f}",
            "kappa": "-" if kappa is None else f"{kappa:.3f}",
            "clicks per trusted label": clicks_per_trusted_label(store)[
                "clicks_per_trusted_label"] or "-",
            "consensus accuracy": f"{np.mean(correct):.3f}" if correct else "-",
        }
