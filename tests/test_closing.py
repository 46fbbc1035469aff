"""Round close on the store alone (no Label Studio): consensus, kappa, adjudication."""

from __future__ import annotations

import numpy as np
import pytest
from factories import CLASSES, voted_round
from sklearn.metrics import cohen_kappa_score

from alearn.exceptions import RoundError
from alearn.project import Project
from alearn.rounds.close import close_round
from alearn.rounds.lifecycle import CLOSED, create_round, get_round


def test_close_stores_consensus_kappa_and_adjudication(proj: Project) -> None:
    proj.config.agreement.consensus = "majority"  # these ties are majority vote's
    votes = {
        0: ["cat", "cat", "cat"],
        1: ["dog", "dog", "cat"],
        2: ["cat", "dog", "bird"],   # three-way tie -> adjudication
        3: ["bird", "bird", "bird"],
        4: ["dog", "dog", "dog"],
        5: ["cat", "cat", "dog"],   # gold item: keeps its known label
    }
    rid, ids = voted_round(proj, votes, gold={5: "dog"})
    m = close_round(proj, rid)
    labels = proj.store.trusted_labels()
    assert labels[ids[0]] == "cat" and labels[ids[1]] == "dog" and labels[ids[3]] == "bird"
    assert ids[2] not in labels and m.adjudication_items == [ids[2]]
    assert labels[ids[5]] == "dog"  # gold wins over the vote
    assert m.labels_spent == 18 and m.tasks == 6
    # mean pairwise Cohen's kappa equals scikit-learn's, computed by hand here
    cols = list(zip(*votes.values(), strict=True))
    ref = np.mean([cohen_kappa_score(cols[i], cols[j]) for i, j in ((0, 1), (0, 2), (1, 2))])
    assert m.kappa == pytest.approx(ref)
    by_name = {a["annotator"]: a for a in m.annotators}
    assert set(by_name) == {"ann-a", "ann-b", "ann-c"}
    # item 5 is gold 'dog': ann-a and ann-b said cat, ann-c said dog
    gold = {who: (a["gold_accuracy"], a["n_gold"]) for who, a in by_name.items()}
    assert gold == {"ann-a": (0.0, 1), "ann-b": (0.0, 1), "ann-c": (1.0, 1)}
    assert get_round(proj.store, rid).status == CLOSED
    # idempotent: a second close returns the stored metrics and changes nothing
    assert close_round(proj, rid) == m
    assert proj.store.trusted_labels() == labels


def test_low_agreement_round_is_flagged(proj: Project) -> None:
    votes = {k: [CLASSES[k % 3], CLASSES[(k + 1) % 3], CLASSES[(k + 2) % 3]] for k in range(9)}
    rid, _ = voted_round(proj, votes)
    m = close_round(proj, rid)
    assert m.kappa < 0.6 and m.flagged is True


def test_planned_round_cannot_close(proj: Project) -> None:
    rnd = create_round(proj.store, strategy="random", batch_size=1, overlap=1)
    with pytest.raises(RoundError, match="only a pushed or collecting round"):
        close_round(proj, rnd.id)


def test_agreement_command_shows_figures_and_annotators(proj: Project, monkeypatch) -> None:
    import json

    import krippendorff
    from click.testing import CliRunner

    from alearn.cli import cli

    votes = {k: ["cat", "cat", "dog"] if k % 3 == 0 else [CLASSES[k % 3]] * 3 for k in range(9)}
    voted_round(proj, votes)
    monkeypatch.setenv("ALEARN_DATABASE_URL", proj.settings.database_url or "")
    runner = CliRunner()
    out = runner.invoke(cli, ["--project", str(proj.root), "agreement", "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    cols = np.array([[CLASSES.index(v) for v in vs] for vs in votes.values()]).T
    ref = krippendorff.alpha(reliability_data=cols, level_of_measurement="nominal")
    alpha = next(f for f in data["figures"] if f["figure"] == "Krippendorff's alpha")
    assert float(alpha["value"]) == pytest.approx(ref, abs=1e-3)
    assert {a["annotator"] for a in data["annotators"]} == {"ann-a", "ann-b", "ann-c"}
    text = runner.invoke(cli, ["--project", str(proj.root), "agreement", "--round", "1"])
    assert text.exit_code == 0 and "Krippendorff's alpha" in text.output
    bad = runner.invoke(cli, ["--project", str(proj.root), "agreement", "--round", "7"])
    assert bad.exit_code != 0 and "there is no round 7" in str(bad.exception)
