"""Simulated annotators for the demo: real Label Studio users who label through the
label stream as themselves, each wrong at a given rate. They join through invite links
and are on the project's roster, like a real team."""

from __future__ import annotations

import json
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sqlalchemy import select

from alearn.project import Project
from alearn.store import Item
from alearn.team import add_member
from labelstudio.annotators import invite_annotator, label_stream


class SimulatedPanel:
    def __init__(self, url: str, admin_token: str, creds_file: Path, *, n: int, accuracies: str,
                 classes: list[str], truth: dict[str, int], project: Path, seed: int) -> None:
        self.url, self.classes, self.truth = url, classes, truth
        accs = [float(a) for a in accuracies.split(",")]
        self.accuracies = [accs[i % len(accs)] for i in range(n)]
        self.project = Project.open(project)
        self.rng = random.Random(seed)
        creds = json.loads(creds_file.read_text()) if creds_file.exists() else []
        while len(creds) < n:
            email = f"annotator{len(creds) + 1}@demo.local"
            password = f"demo-{self.rng.randrange(10**8):08d}"
            who = invite_annotator(url, admin_token, email, password)  # sign-up is closed
            creds.append({"email": email, "password": password, "token": who.token})
        creds_file.write_text(json.dumps(creds, indent=2))
        creds_file.chmod(0o600)
        self.creds = creds[:n]
        for c in self.creds:  # only the team labels: the panel is the project's roster
            add_member(self.project.store, c["email"])

    def logins(self) -> list[dict[str, str]]:
        return [{"email": c["email"], "password": c["password"]} for c in self.creds]

    def _true_class(self, item_id: int) -> int:
        with self.project.store.session() as s:
            path = s.scalar(select(Item.path).where(Item.id == item_id))
        return self.truth[Path(path).name]

    def label(self, ls_project_id: int) -> int:
        """Every annotator labels until Label Studio has nothing left for them."""

        def work(i: int) -> int:
            rng = random.Random(self.rng.random())
            acc = self.accuracies[i]

            def choose(task: dict) -> str:
                true = self._true_class(int(task["item_id"]))
                if rng.random() < acc:
                    return self.classes[true]
                return self.classes[rng.choice([c for c in range(len(self.classes))
                                                if c != true])]

            return label_stream(self.url, self.creds[i]["token"], ls_project_id, choose,
                                lead_time=round(rng.uniform(2, 8), 2))

        with ThreadPoolExecutor(len(self.creds)) as pool:
            return sum(pool.map(work, range(len(self.creds))))
