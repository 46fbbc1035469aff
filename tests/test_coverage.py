"""Coverage of the pool's clusters by the trusted labels, on real images embedded by a real
network: the pockets no label covers, their thumbnails, the report section and its JSON."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from factories import TINY_EMBED, run_cli
from PIL import Image
from sklearn.cluster import MiniBatchKMeans
from sklearn.decomposition import PCA

from alearn.config import EmbedConfig, Settings
from alearn.features import cache as feature_cache
from alearn.features.pipeline import embed_project, load_pool_features
from alearn.ingestion.driver import ingest
from alearn.project import Project
from alearn.report import coverage as cov_module
from alearn.report.coverage import MAX_POCKETS, PER_POCKET, coverage, n_clusters
from alearn.report.coverage_view import THUMB, section, thumbnail
from alearn.report.html import write_report
from alearn.store import Item, Label

CLASSES = ["cat", "dog", "bird"]
#: four visual modes (noisy solid colours); the fourth gets no trusted label
COLOURS = [(200, 40, 40), (40, 180, 60), (40, 60, 200), (230, 210, 40)]
PER_MODE = 30


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """120 real PNGs in four colour modes, embedded by timm's test network; a third of
    each of the first three modes trusted as cat, dog and bird."""
    root = tmp_path_factory.mktemp("coverage")
    rng = np.random.default_rng(0)
    for m, colour in enumerate(COLOURS):
        (root / "images" / f"mode{m}").mkdir(parents=True)
        for j in range(PER_MODE):
            arr = np.clip(np.array(colour) + rng.normal(0, 25, (32, 32, 3)), 0, 255)
            Image.fromarray(arr.astype(np.uint8)).save(root / "images" / f"mode{m}" /
                                                        f"{j:02d}.png")
    project = Project.init(root / "proj", classes=CLASSES, images=root / "images",
                           settings=Settings())
    project.config.embed = EmbedConfig(**TINY_EMBED)
    project.save_config()
    assert ingest(project).added == 4 * PER_MODE
    assert embed_project(project, progress=False).computed == 4 * PER_MODE
    with project.store.session() as s:
        ids = {it.path: it.id for it in s.query(Item)}
        for m, cls in enumerate(CLASSES):
            for j in range(0, PER_MODE, 3):
                s.add(Label(item_id=ids[f"mode{m}/{j:02d}.png"], label=cls,
                            origin="consensus"))
    yield project
    project.store.dispose()


def _mode(project: Project) -> dict[int, int]:
    with project.store.session() as s:
        return {it.id: int(it.path[4]) for it in s.query(Item)}


def test_n_clusters() -> None:
    assert n_clusters(10_000, 3) == 12 and n_clusters(10_000, 40) == 64
    assert n_clusters(10_000, 1) == 8 and n_clusters(50, 3) == 5 and n_clusters(19, 3) == 0


def test_the_unlabeled_mode_is_the_pocket(pool: Project) -> None:
    cov = coverage(pool)
    modes = _mode(pool)
    k = cov["n_clusters"]
    assert k == n_clusters(120, 3) == 12 and cov["clustered"] == cov["pool_size"] == 120
    clusters = cov["clusters"]
    assert sum(c["sampled"] for c in clusters) == 120
    assert sum(c["share"] for c in clusters) == pytest.approx(1.0)
    # every trusted label placed once; each cluster's labels are of one class (the modes
    # are far apart in the embedding)
    assert cov["trusted_placed"] == cov["trusted_labels"] == 30
    assert sum(sum(c["trusted"].values()) for c in clusters) == 30
    assert all(len(c["trusted"]) <= 1 for c in clusters)
    for cls in CLASSES:
        mine = cov["by_class"][cls]
        assert mine["trusted"] == 10
        assert mine["clusters"] == [c["cluster"] for c in clusters if cls in c["trusted"]]
        assert mine["share"] == pytest.approx(sum(clusters[c]["share"] for c in
                                                  mine["clusters"]))
    # the pockets: no trusted label in them, largest first; the unlabeled (yellow) mode
    # is nearly all of them, and the large ones are yellow only
    uncovered = [c for c in clusters if not c["trusted"]]
    assert cov["uncovered"] == len(uncovered) == len(cov["pockets"])
    assert cov["uncovered_share"] == pytest.approx(sum(c["share"] for c in uncovered))
    shares = [p["share"] for p in cov["pockets"]]
    assert shares == sorted(shares, reverse=True)
    yellow = [p for p in cov["pockets"] if all(modes[i["item_id"]] == 3 for i in p["items"])]
    assert sum(p["sampled"] for p in yellow) >= 0.9 * PER_MODE
    assert all(p in yellow for p in cov["pockets"] if p["share"] >= 0.05)
    assert 0.2 <= cov["uncovered_share"] <= 0.35
    for p in cov["pockets"]:
        assert 1 <= len(p["items"]) <= min(PER_POCKET, p["sampled"])


def test_clusters_match_a_direct_computation(pool: Project,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Read in batches of 7 rows (never more at once), the clusters are those of PCA and
    k-means run here on the whole pool as the pipeline loads it."""
    asked: list[int] = []
    get = feature_cache.FeatureCache.get

    def spy(self: feature_cache.FeatureCache, shas: list[str]) -> tuple:
        asked.append(len(shas))
        return get(self, shas)

    monkeypatch.setattr(feature_cache.FeatureCache, "get", spy)
    monkeypatch.setattr(cov_module, "BATCH", 7)
    cov = coverage(pool)
    assert asked and max(asked) <= 7
    ids, X = load_pool_features(pool)
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    rng = np.random.default_rng(0)
    rng.choice(120, size=120, replace=False)  # the sample's draw, as coverage() makes it
    rows = rng.permutation(120)[:cov_module.PCA_ROWS]
    Z = PCA(n_components=64, svd_solver="randomized", random_state=0).fit(Xn[rows]
                                                                          ).transform(Xn)
    km = MiniBatchKMeans(n_clusters=12, random_state=0, n_init=3, batch_size=120).fit(Z)
    sizes = sorted(np.bincount(km.labels_).tolist())
    assert sorted(c["sampled"] for c in cov["clusters"]) == sizes
    labels = pool.store.trusted_labels()
    held: dict[int, dict[str, int]] = {c: {} for c in range(12)}
    for item, c in zip(ids.tolist(), km.labels_.tolist(), strict=True):
        if item in labels:
            held[c][labels[item]] = held[c].get(labels[item], 0) + 1
    assert sorted(map(str, held.values())) == sorted(str(c["trusted"]) for c in cov["clusters"])


def test_a_bounded_sample(pool: Project) -> None:
    cov = coverage(pool, sample=40)
    assert cov["sampled"] == cov["clustered"] == 40 and cov["pool_size"] == 120
    assert cov["n_clusters"] == n_clusters(40, 3) == 4
    assert sum(c["estimated_items"] for c in cov["clusters"]) == pytest.approx(120, abs=4)
    seen = coverage(pool, sample=40, members=True)  # seeded: the same again
    assert {k: v for k, v in seen.items() if k != "members"} == cov
    assert len(seen["members"]["item_ids"]) == 40
    assert np.bincount(seen["members"]["clusters"]).tolist() == [
        c["sampled"] for c in cov["clusters"]]
    assert coverage(pool, sample=10)["why"].startswith("10 embedded items")


def test_thumbnails_are_small_jpegs(pool: Project, tmp_path: Path) -> None:
    uri = thumbnail(pool.image_root, "mode3/00.png")
    assert uri is not None and uri.startswith("data:image/jpeg;base64,")
    with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as img:
        assert img.format == "JPEG" and max(img.size) <= THUMB
        r, g, b = np.asarray(img.convert("RGB"), dtype=float).reshape(-1, 3).mean(0)
        assert r > 150 and g > 150 and b < 120  # yellow, as drawn
    assert thumbnail(pool.image_root, "missing.png") is None
    assert thumbnail(pool.image_root, "../proj/alearn.toml") is None  # outside the root
    (tmp_path / "bad.png").write_bytes(b"not an image")
    assert thumbnail(tmp_path, "bad.png") is None


def test_report_section_and_json(pool: Project, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    cov = coverage(pool)
    html = section(cov, pool.image_root)
    strips = re.findall(r'<div class="strip">(.*?)</div>', html)
    assert len(strips) == len(cov["pockets"]) <= MAX_POCKETS
    thumbs = re.findall(r'<img src="data:image/jpeg;base64,', html)
    assert len(thumbs) == sum(len(p["items"]) for p in cov["pockets"])
    assert f"<b>{cov['uncovered']} of 12 clusters</b>" in html
    # a hostile path is escaped, and a missing image says so
    bad = {**cov, "pockets": [{**cov["pockets"][0], "items": [
        {"item_id": 1, "path": "<script>alert(1)</script>.png"}]}]}
    html = section(bad, pool.image_root)
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;.png (no image)" in html
    # in the report, and in 'alearn report --json', with the head's predictions
    out = tmp_path / "r.html"
    code, stdout, _ = run_cli(["--project", str(pool.root), "report", "--out", str(out),
                               "--json"], capsys)
    assert code == 0
    data = json.loads(stdout)["coverage"]
    assert data["clusters"] == cov["clusters"] and data["uncovered"] == cov["uncovered"]
    assert all(set(p["predicted"]) <= set(CLASSES) for p in data["pockets"])
    assert all(sum(p["predicted"].values()) == pytest.approx(1) for p in data["pockets"])
    page = out.read_text(encoding="utf-8")
    assert "<h2>Coverage of the pool</h2>" in page and "the current head predicts" in page
    assert page.count('src="data:image/jpeg;base64,') == len(thumbs)
    assert write_report(pool, tmp_path / "again.html").read_text(encoding="utf-8").count(
        'src="data:image/jpeg;base64,') == len(thumbs)


def test_every_cluster_covered(pool: Project) -> None:
    with pool.store.session() as s:
        have = set(pool.store.trusted_labels())
        for it in s.query(Item):
            if it.id not in have:
                s.add(Label(item_id=it.id, label=CLASSES[int(it.path[4]) % 3],
                            origin="consensus"))
    try:
        cov = coverage(pool)
        assert cov["uncovered"] == 0 and cov["pockets"] == []
        assert "Every cluster holds a trusted label" in section(cov, pool.image_root)
    finally:
        with pool.store.session() as s:
            s.query(Label).filter(Label.item_id.notin_(have)).delete()


def test_nothing_embedded(project: Project) -> None:
    cov = coverage(project)
    assert cov["clusters"] == [] and "alearn embed" in cov["why"]
    assert "No data yet" in section(cov, project.image_root)


@pytest.mark.slow  # a headless Chromium
@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(),
                    reason="Debian's chromium is not installed")
def test_report_with_thumbnails_in_chromium(pool: Project, tmp_path: Path) -> None:
    """Every thumbnail and plot loads, and nothing needs horizontal scrolling at 1280 px."""
    from playwright.sync_api import sync_playwright

    out = write_report(pool, tmp_path / "report.html")
    n_thumbs = out.read_text(encoding="utf-8").count('src="data:image/jpeg;base64,')
    assert n_thumbs >= PER_POCKET
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(out.as_uri())
            page.wait_for_load_state("load")
            seen = page.evaluate("""() => {
              const imgs = Array.from(document.images), d = document.documentElement;
              const strip = imgs.filter(i => i.closest('.strip'));
              return {total: imgs.length, loaded: imgs.filter(
                        i => i.complete && i.naturalWidth > 0).length,
                      thumbs: strip.length,
                      biggest: Math.max(...strip.map(i => i.naturalWidth)),
                      scroll: d.scrollWidth, client: d.clientWidth}; }""")
        finally:
            browser.close()
    assert seen["thumbs"] == n_thumbs and seen["loaded"] == seen["total"] > n_thumbs, seen
    assert seen["biggest"] <= THUMB and seen["scroll"] <= seen["client"] <= 1280, seen
