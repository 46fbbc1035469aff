"""Output for people and for pipes: tables use the terminal's width on a terminal and are
never cut elsewhere; figures carry their full names; ``round plan`` embeds what is
missing and every empty-pool hint names the command that fixes its cause."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from factories import CLASSES, ingested_project, voted_round
from sqlalchemy import select

from alearn.cli import cli, common
from alearn.exceptions import EmptyPoolError
from alearn.features.pipeline import embed_project
from alearn.project import Project
from alearn.query.selection import plan_batch
from alearn.rounds.close import close_round
from alearn.store import Item, Label

# a Redis nobody listens on: status reports the queues unavailable instead of using one
NO_REDIS = {"ALEARN_REDIS_URL": "redis://127.0.0.1:1/0"}
VOTES = {1: ["cat", "cat", "cat"], 2: ["dog", "dog", "cat"], 3: ["bird", "bird", "bird"],
         4: ["cat", "dog", "dog"], 5: ["dog", "dog", "dog"], 6: ["bird", "cat", "bird"]}
ROUND_HEADERS = ["number", "status", "strategy", "batch size", "overlap", "model",
                 "labels spent", "cv accuracy", "mean pairwise Cohen's kappa",
                 "consensus items", "low agreement", "error", "stale"]


def _only_named_kappas(text: str) -> bool:
    """Every 'kappa' a person reads says whose it is."""
    return all(re.search(r"(Cohen's|Fleiss') $", text[:m.start()])
               for m in re.finditer("kappa", text))


def _closed_round(project: Project) -> None:
    rid, _ = voted_round(project, VOTES)
    close_round(project, rid)


def test_piped_status_prints_every_header_and_value_in_full(project: Project) -> None:
    """CliRunner's stdout is not a terminal: the 13-column rounds table, far wider than
    80 columns, comes out whole (the old console cut it to 'num…', 'sta…')."""
    _closed_round(project)
    out = CliRunner().invoke(cli, ["--project", str(project.root), "status"], env=NO_REDIS)
    assert out.exit_code == 0, out.output
    assert "…" not in out.stdout
    header = next(line for line in out.stdout.splitlines() if "labels spent" in line)
    assert [c.strip() for c in header.strip("┃ ").split("┃")] == ROUND_HEADERS
    assert _only_named_kappas(out.stdout)
    data = json.loads(CliRunner().invoke(
        cli, ["--project", str(project.root), "status", "--json"], env=NO_REDIS).stdout)
    assert {"kappa", "labels_spent", "consensus_items"} <= set(data["rounds"][0])  # keys kept


def test_status_through_a_real_pipe_is_not_cut(project: Project) -> None:
    """``alearn status | cat``, even with COLUMNS=80 exported as some CI runners do."""
    _closed_round(project)
    project.store.dispose()
    alearn = Path(sys.executable).with_name("alearn")
    env = {**os.environ, **NO_REDIS, "COLUMNS": "80"}
    env.pop("FORCE_COLOR", None)
    done = subprocess.run([str(alearn), "--project", str(project.root), "status"],
                          env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "…" not in done.stdout
    for header in ROUND_HEADERS:
        assert header in done.stdout
    assert max(len(line) for line in done.stdout.splitlines()) > 80


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_console_width_is_the_terminals_and_a_pipe_is_never_cut(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "60")
    assert common.OutputConsole(file=_Terminal()).width == 60
    assert common.OutputConsole(file=io.StringIO()).width == common.PIPE_WIDTH
    assert common.OutputConsole(file=io.StringIO(), width=70).width == 70  # asked for
    # on a 60-column terminal, a wide table fits and folds its cells instead of cutting
    term = _Terminal()
    monkeypatch.setattr(common, "console", common.OutputConsole(file=term, no_color=True))
    path = "/images/" + "very-long-folder-name/" * 6 + "img.png"
    common.print_table("Planned", [{"rank": 0, "path": path, "predicted class": "bird"}],
                       headers={"rank": "rank of the item in the batch"})
    text = term.getvalue()
    lines = re.sub(r"\x1b\[[0-9;]*m", "", text).splitlines()
    assert max(len(line) for line in lines) <= 60
    assert "…" not in text
    cells = "".join(line.split("│")[2].strip() for line in lines if line.count("│") == 4)
    assert path in cells
    assert "rank of" in text


def test_agreement_names_every_figure(project: Project) -> None:
    _closed_round(project)
    out = CliRunner().invoke(cli, ["--project", str(project.root), "agreement"])
    assert out.exit_code == 0, out.output
    for name in ("Fleiss' kappa", "Krippendorff's alpha", "Gwet's AC1",
                 "Krippendorff's alpha, cat vs rest", "mean Cohen's kappa with peers"):
        assert name in out.stdout
    assert _only_named_kappas(out.stdout)
    assert re.search(r"(?<!Krippendorff's )alpha", out.stdout) is None
    data = json.loads(CliRunner().invoke(
        cli, ["--project", str(project.root), "agreement", "--json"]).stdout)
    assert "peer kappa" in data["annotators"][0]  # the JSON keys stay as scripts know them


def test_round_plan_right_after_ingest_embeds_first(tmp_path: Path) -> None:
    project = ingested_project(tmp_path, 12, seed=40)
    args = ["--project", str(project.root), "round", "plan", "--batch-size", "4"]
    out = CliRunner().invoke(cli, [*args, "--json"])
    assert out.exit_code == 0, out.output
    assert len(json.loads(out.stdout)["items"]) == 4  # stdout stays JSON
    assert "Embedded 12 new images first" in out.stderr
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0, again.output
    assert "Embedded" not in again.output and "Planned batch" in again.stdout


def test_round_plan_with_nothing_ingested_names_ingest(project: Project) -> None:
    out = CliRunner().invoke(cli, ["--project", str(project.root), "round", "plan"])
    assert isinstance(out.exception, EmptyPoolError)  # main() prints it as one line
    assert "'alearn ingest'" in str(out.exception)
    assert "alearn embed" not in str(out.exception)
    with pytest.raises(EmptyPoolError, match="no images are ingested yet") as err:
        plan_batch(project)
    assert "'alearn ingest'" in str(err.value) and "alearn embed" not in str(err.value)


def test_plan_of_an_ingested_pool_not_embedded_names_embed(tmp_path: Path) -> None:
    project = ingested_project(tmp_path, 5, seed=50)
    with pytest.raises(EmptyPoolError, match="5 of 5 ingested items are not embedded") as err:
        plan_batch(project)
    assert "Run 'alearn embed'" in str(err.value) and "alearn ingest" not in str(err.value)


def test_plan_with_everything_labeled_says_to_add_images(tmp_path: Path) -> None:
    project = ingested_project(tmp_path, 6, seed=60)
    embed_project(project, progress=False)
    with project.store.session() as s:
        items = list(s.scalars(select(Item.id)))
        s.add_all(Label(item_id=i, label=CLASSES[i % 3], origin="manifest") for i in items)
    out = CliRunner().invoke(cli, ["--project", str(project.root), "round", "plan"])
    assert isinstance(out.exception, EmptyPoolError)
    assert "all 6 items are labeled (6)" in str(out.exception)
    assert "Add images under the image root, then run 'alearn ingest' and 'alearn embed'" \
        in str(out.exception)
