"""The HTML report: its files, its figures, and how it renders in headless Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
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
from alearn.model.current import current_head
from alearn.project import Project
from alearn.report import plots
from alearn.report.html import load_reference, write_report
from alearn.report.sections import FLAG_SETTING, ls_project_url
from alearn.rounds import metrics as round_metrics
from alearn.rounds.close import MIN_ITEMS, close_round, wilson_upper
from alearn.rounds.lifecycle import PUSHED, create_round, transition
from alearn.store import Annotation, Round, Selection
from tests.test_convergence import CLASSES, make_project, run_round

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


#: long names, as e-mail logins are: the tables must still fit
PEOPLE = [f"annotator.number.{k}.with.a.long.login@example.org" for k in range(6)]
LS_URL = "http://ls.example.org:8080/label-studio/"


@pytest.fixture
def many_rounds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Project:
    """Five closed rounds of 15 items, three votes each from six annotators in turn; the
    last annotator is wrong on most items, and each round has two three-way ties (sent to
    adjudication). The last round carries a long error text; the adjudication project is
    Label Studio project 7."""
    monkeypatch.setenv("ALEARN_LS_URL", LS_URL)
    monkeypatch.setenv("ALEARN_LS_TOKEN", "tok-very-secret-456")
    project, ids, truth = make_project(tmp_path, n=120, stop_set_size=20)
    project.settings = Settings()
    project.config.agreement.annotator_min_accuracy = 0.65
    project.config.agreement.consensus = "majority"  # three-way ties are majority vote's
    store, n = project.store, 0
    for number in range(5):
        rnd = create_round(store, strategy="random", batch_size=15, overlap=3)
        with store.session() as s:
            for rank, item in enumerate(ids[number * 15:(number + 1) * 15]):
                s.add(Selection(round_id=rnd.id, item_id=item, rank=rank, score=0.0))
                for k in range(3):
                    who = PEOPLE[(rank + k + number) % len(PEOPLE)]
                    label = truth[item]
                    if rank < 2:  # a three-way tie
                        label = CLASSES[(CLASSES.index(label) + k) % 3]
                    elif who == PEOPLE[-1] and rank % 4:
                        label = CLASSES[(CLASSES.index(label) + 1) % 3]
                    n += 1
                    s.add(Annotation(ls_annotation_id=n, ls_task_id=n, item_id=item,
                                     round_id=rnd.id, annotator=who, label=label,
                                     lead_time=3.0))
        transition(store, rnd.id, PUSHED)
        close_round(project, rnd.id)
    with store.session() as s:
        s.get(Round, rnd.id).error = "push failed: " + "/very/long/path" * 20
    store.set_meta("ls_adjudication_project_id", 7)
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
    # the predicted class counts over the unlabeled pool are the head's predict()
    ids_all, X_all = training.pool_features(project)
    head = training.load_head(project, current_head(project).version)
    unlabeled = ~np.isin(ids_all, list(project.store.trusted_labels()))
    want = Counter(head.predict(X_all[unlabeled]).tolist())
    rows = dict(re.findall(r"<tr><td>([^<]+)</td><td[^>]*>\d+</td><td[^>]*>(\d+)</td></tr>",
                           html))
    got = {c: int(n) for c, n in rows.items() if c in project.config.classes}
    assert want and got == {c: want.get(c, 0) for c in project.config.classes}
    # a second report over the first replaces it, and never holds the pool in memory
    def whole_pool(_project: Project) -> None:
        raise AssertionError("the report read every vector into memory")
    monkeypatch.setattr(training, "pool_features", whole_pool)
    assert write_report(project, tmp_path / "out") == out


def test_empty_project_says_no_data(project: Project, tmp_path: Path) -> None:
    out = write_report(project, tmp_path / "empty.html")
    html = out.read_text(encoding="utf-8")
    assert image_srcs(html) == [] and not list((tmp_path / "empty_files").glob("*.png"))
    assert html.count('class="nodata"') == 8  # every section but convergence says so
    assert "not assessed: no round closed yet" in html


def test_annotator_chart_spans_rounds_and_draws_the_flag_rule(
        many_rounds: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The chart gets every round of every annotator, the flag threshold the rounds were
    closed with, named by its setting, and a point is flagged exactly when its bar (the
    90% upper bound, on enough items) ends below that line."""
    drawn: dict = {}
    draw = plots.annotator_rounds

    def spy(series: list, path: Path, **kw: object) -> Path:
        drawn.update(kw, series=dict(series))
        return draw(series, path, **kw)

    monkeypatch.setattr(plots, "annotator_rounds", spy)
    html = write_report(many_rounds, tmp_path / "r.html").read_text(encoding="utf-8")
    assert drawn["threshold"] == 0.65 and drawn["setting"] == FLAG_SETTING
    assert f"<code>{FLAG_SETTING}</code> = 0.65" in html
    assert set(drawn["series"]) == set(PEOPLE)
    assert all([p[0] for p in pts] == [1, 2, 3, 4, 5] for pts in drawn["series"].values())
    stored = {(r.number, a["annotator"]): a
              for r, m in round_metrics.by_round(many_rounds.store) for a in m.annotators}
    flags = 0
    for name, points in drawn["series"].items():
        for number, value, upper, flagged in points:
            a = stored[(number, name)]
            assert value == a["model_accuracy"]
            assert upper == pytest.approx(wilson_upper(value, a["n_items"]))
            # no gold items here: the flag is the Dawid-Skene rule, nothing else
            assert flagged is a["flagged"] is (a["n_items"] >= MIN_ITEMS and upper < 0.65)
            flags += flagged
    assert flags == 5  # the bad annotator, in every round
    assert all(p[3] for p in drawn["series"][PEOPLE[-1]])
    # its table row: highlighted, with the reason and every round it was flagged in
    row = re.search(rf'<tr class="flagged"><td class="long">{re.escape(PEOPLE[-1])}</td>'
                    r"(.*?)</tr>", html)
    assert row and "90% upper bound" in row.group(1) and "1, 2, 3, 4, 5" in row.group(1)


def test_pending_adjudications_link_to_label_studio(many_rounds: Project,
                                                    tmp_path: Path) -> None:
    html = write_report(many_rounds, tmp_path / "r.html").read_text(encoding="utf-8")
    section = html[html.index("<h2>Adjudication</h2>"):html.index("<h2>Rounds</h2>")]
    assert "<b>10 pending</b>" in section
    link = "http://ls.example.org:8080/label-studio/projects/7/"
    assert f'<a href="{link}">{link}</a>' in section
    assert "tok-very-secret-456" not in html
    # nothing pending: no link; no project yet: how one is made
    many_rounds.store.set_meta("ls_adjudication_project_id", None)
    html = write_report(many_rounds, tmp_path / "r.html").read_text(encoding="utf-8")
    assert "/projects/" not in html and "--role reviewer" in html


def test_ls_project_url() -> None:
    assert ls_project_url("http://h:8080", 3) == "http://h:8080/projects/3/"
    assert ls_project_url("https://h/ls/?x=1#y", "12") == "https://h/ls/projects/12/"
    assert ls_project_url("http://[::1]:8080/", 5) == "http://[::1]:8080/projects/5/"
    for bad in (None, 0, "7/../../x", '7"><script>'):
        assert ls_project_url("http://h:8080", bad) is None


def test_report_is_written_0644_whatever_the_umask(two_rounds: Project, tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        out = write_report(two_rounds, tmp_path / "r.html")
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    files = tmp_path / "r_files"
    assert stat.S_IMODE(files.stat().st_mode) == 0o755
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in files.glob("*.png")}
    assert modes == dict.fromkeys(PLOTS, 0o644)
    assert not list(tmp_path.glob(".tmp-*"))


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


#: appended to a copy of the page: records, on <body>, the page's scroll width and every
#: table that needs scrolling (its box scrolls, or it reaches past the window)
MEASURE = """<script>window.addEventListener("load", function () {
  var d = document.documentElement, wide = [];
  document.querySelectorAll("table").forEach(function (t, i) {
    var box = t.parentElement;
    if (box.scrollWidth > box.clientWidth || t.scrollWidth > t.clientWidth
        || t.getBoundingClientRect().right > d.clientWidth) {
      wide.push(i + ":" + box.scrollWidth + ">" + box.clientWidth); }
  });
  document.body.dataset.scrollWidth = d.scrollWidth;
  document.body.dataset.clientWidth = d.clientWidth;
  document.body.dataset.tables = document.querySelectorAll("table").length;
  document.body.dataset.wideTables = wide.join(" ");
});</script>"""


def _layout(tmp_path: Path, html: Path, extra: str = "") -> dict[str, str]:
    """The page's widths in a 1280 px wide window, as MEASURE records them."""
    check = html.with_name("check.html")  # beside the page, so that its plots load
    check.write_text(html.read_text(encoding="utf-8").replace(
        "</body>", f"{extra}{MEASURE}</body>"), encoding="utf-8")
    dom = _chromium(tmp_path, "--window-size=1280,2000", "--dump-dom", check.as_uri()).stdout
    body = re.search(r"<body[^>]*>", dom)
    assert body, dom[:500]
    found = dict(re.findall(r'data-([a-z-]+)="([^"]*)"', body.group(0)))
    assert "scroll-width" in found, f"the measuring script did not run: {body.group(0)}"
    return found


@pytest.mark.slow  # starts a headless Chromium
def test_report_fits_1280_px_in_chromium(many_rounds: Project, tmp_path: Path) -> None:
    """Five rounds (one with a long error), six annotators with long logins: at 1280 px
    nothing needs horizontal scrolling, the page nor any table."""
    out = write_report(many_rounds, tmp_path / "report.html")
    found = _layout(tmp_path, out)
    assert int(found["tables"]) >= 6
    assert int(found["scroll-width"]) <= int(found["client-width"]) <= 1280, found
    assert found["wide-tables"] == "", found
    assert found["images-loaded"] == found["images-total"] == str(len(PLOTS))
    # the check can fail: tables whose cells may not wrap need scrolling
    found = _layout(tmp_path, out, "<style>th,td{white-space:nowrap}</style>")
    assert found["wide-tables"] != "" and int(found["scroll-width"]) <= 1280, found
    found = _layout(tmp_path, out, "<style>.scroll{overflow:visible}table{max-width:none}"
                                   "th,td{white-space:nowrap}</style>")
    assert int(found["scroll-width"]) > 1280, found


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

