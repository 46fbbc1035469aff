"""The HTML report: its files, its figures, and how it renders in headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from sklearn.metrics import accuracy_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict

from alearn.cli import cli
from alearn.config import Settings
from alearn.exceptions import ConfigError
from alearn.model import training
from alearn.project import Project
from alearn.report.html import load_reference, write_report
from tests.test_convergence import make_project, run_round

CHROMIUM = Path("/usr/bin/chromium")
INSTALL = "apt-get update -qq && apt-get install -y -qq chromium (scripts/setup does it)"
PLOTS = {"learning_curve.png", "agreement.png", "class_distribution.png", "confusion.png",
         "annotators.png"}


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.srcs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.srcs.append(dict(attrs)["src"] or "")


def image_srcs(html: str) -> list[str]:
    parser = _Images()
    parser.feed(html)
    return parser.srcs


def bench_json(path: Path) -> Path:
    """A result shaped like scripts/bench_label_efficiency.py's, for two seeds."""
    data = {"dataset": "fashion-mnist", "strategies": {"random": {"accuracy": {
        "0": [[20, 0.40], [40, 0.60], [60, 0.70]],
        "1": [[20, 0.50], [40, 0.62]],  # reached the target early: no 60
    }}}}
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


@pytest.fixture
def two_rounds(tmp_path: Path) -> Project:
    """Two closed rounds; in the second, ann-c is wrong on half the items (flagged)."""
    project, ids, truth = make_project(tmp_path, stop_set_size=20)
    labels = dict(zip(ids, truth, strict=True))
    run_round(project, ids[:12], labels, wrong=1)
    run_round(project, ids[12:24], labels, wrong=6, annotation_base=1000)
    return project


def test_load_reference_averages_seeds_and_scales_by_overlap(tmp_path: Path) -> None:
    curve, label = load_reference(bench_json(tmp_path / "b.json"), overlap=3)
    # labels counts every seed reached (20 and 40), times the overlap; mean over seeds
    assert curve == [(60.0, pytest.approx(0.45)), (120.0, pytest.approx(0.61))]
    assert "fashion-mnist" in label and "2 seeds" in label
    (tmp_path / "bad.json").write_text('{"strategies": {}}', encoding="utf-8")
    with pytest.raises(ConfigError, match="bench_label_efficiency"):
        load_reference(tmp_path / "bad.json")


def test_report_files_and_contents(two_rounds: Project, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    project = two_rounds
    monkeypatch.setenv("ALEARN_LS_TOKEN", "tok-very-secret-123")
    project.settings = Settings()
    project.config.name = "<script>alert('x')</script> & co"
    out = write_report(project, tmp_path / "out" / "report.html",
                       reference=bench_json(tmp_path / "bench.json"))
    html = out.read_text(encoding="utf-8")
    srcs = image_srcs(html)
    files = out.parent / "report_files"
    assert {Path(s).name for s in srcs} == PLOTS == {p.name for p in files.glob("*.png")}
    for src in srcs:  # relative links that resolve next to the page, to real PNGs
        assert src.startswith("report_files/")
        with Image.open(out.parent / src) as img:
            assert img.format == "PNG" and min(img.size) > 150
            img.verify()
    # escaped, and nothing secret
    assert "<script>alert" not in html and "&lt;script&gt;alert(&#x27;x&#x27;)" in html
    for secret in ("tok-very-secret-123", "sqlite", str(project.root)):
        assert secret not in html
    # the flagged annotator's row is highlighted
    assert re.search(r'<tr class="flagged"><td>ann-c</td>', html)
    assert not re.search(r'<tr class="flagged"><td>ann-a</td>', html)
    # the confusion caption's accuracy is the cross-validated accuracy, computed here too
    ids, X = training.pool_features(project)
    _, t_X, y = training.training_set(project, ids, X)
    folds = StratifiedKFold(n_splits=min(5, min(Counter(y.tolist()).values())), shuffle=True,
                            random_state=0)
    pred = cross_val_predict(training.make_head(project), t_X, y, cv=folds)
    assert f"accuracy {accuracy_score(y, pred):.3f}." in html
    assert "not converged:" in html and "Rule:" in html
    # a second report over the first replaces it
    assert write_report(project, tmp_path / "out") == out


def test_empty_project_says_no_data(project: Project, tmp_path: Path) -> None:
    out = write_report(project, tmp_path / "empty.html")
    html = out.read_text(encoding="utf-8")
    assert image_srcs(html) == [] and not list((tmp_path / "empty_files").glob("*.png"))
    assert html.count('class="nodata"') == 6  # every section but convergence says so
    assert "not assessed: no round closed yet" in html


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    if not CHROMIUM.exists():
        pytest.skip(f"needs headless Chromium: {INSTALL}")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'chromium-profile'}"]
    return subprocess.run([str(CHROMIUM), *flags, *args], capture_output=True, text=True,
                          timeout=120, check=True)


def _loaded(dom: str) -> tuple[int, int]:
    body = re.search(r"<body[^>]*>", dom)
    assert body, dom[:500]
    total = re.search(r'data-images-total="(\d+)"', body.group(0))
    loaded = re.search(r'data-images-loaded="(\d+)"', body.group(0))
    assert total and loaded, f"the page's load script did not run: {body.group(0)}"
    return int(loaded.group(1)), int(total.group(1))


@pytest.mark.slow  # starts a headless Chromium
def test_report_renders_in_chromium(two_rounds: Project, tmp_path: Path) -> None:
    out = write_report(two_rounds, tmp_path / "report.html")
    shot = tmp_path / "shot.png"
    _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,2000", out.as_uri())
    with Image.open(shot) as img:
        pixels = np.asarray(img.convert("L"), dtype=float)
    assert pixels.shape == (2000, 1200)
    assert pixels.std() > 20 and (pixels < 128).mean() > 0.01  # drawn, not a blank page
    dom = _chromium(tmp_path, "--dump-dom", out.as_uri()).stdout
    assert _loaded(dom) == (len(PLOTS), len(PLOTS))
    # the check can fail: a missing plot is seen as not loaded
    (tmp_path / "report_files" / "confusion.png").unlink()
    dom = _chromium(tmp_path, "--dump-dom", out.as_uri()).stdout
    assert _loaded(dom) == (len(PLOTS) - 1, len(PLOTS))


def test_cli_report(two_rounds: Project, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "cli" / "r.html"
    out.parent.mkdir()
    res = runner.invoke(cli, ["--project", str(two_rounds.root), "report", "--out", str(out),
                              "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["report"] == str(out) and {Path(p).name for p in data["plots"]} == PLOTS
    bad = tmp_path / "bad.json"
    bad.write_text("not json", encoding="utf-8")
    res = runner.invoke(cli, ["--project", str(two_rounds.root), "report", "--out", str(out),
                              "--reference", str(bad)])
    assert isinstance(res.exception, ConfigError) and "--reference" in str(res.exception)
    shutil.rmtree(out.parent)
