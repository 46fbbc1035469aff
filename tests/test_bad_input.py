"""The bad-input suite: over a hundred things a careless or hostile user, or a broken
Label Studio, can hand alearn. Each ends in a clear one-line message (what was wrong,
what to do), a non-zero exit, no traceback, and an unchanged store; or, for a bad record
among good ones, that record set aside with its reason and the rest done.

The CLI cases run ``alearn.cli.main`` (the console script's entry point) in this process
on a real project with a real SQLite store, real files and real Redis; the Label Studio
payload cases run the real pull against a stub of Label Studio's listing (the boundary
only); the webhook cases run the real receiver app.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import REDIS_TEST_URL
from factories import run_cli as run
from factories import write_image

from alearn.config import Settings
from alearn.project import Project

SECRET = "SUPERSECRETPW"


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project with 6 ingested images, made once and copied for each case."""
    from alearn.ingestion.driver import ingest

    base = tmp_path_factory.mktemp("bad-input")
    images = base / "images"
    for i in range(6):
        write_image(images / f"{i}.png", seed=i)
    old = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("ALEARN_")
           and not k.startswith("ALEARN_TEST_")}
    try:
        project = Project.init(base / "proj", classes=["cat", "dog"], images=images,
                               settings=Settings())
        ingest(project)
        project.store.dispose()
    finally:
        os.environ.update(old)
    return base


@pytest.fixture
def proj_dir(template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    shutil.copytree(template, tmp_path / "w", symlinks=True)
    root = tmp_path / "w" / "proj"
    cfg = (root / "alearn.toml").read_text()
    (root / "alearn.toml").write_text(cfg.replace(str(template), str(tmp_path / "w")))
    monkeypatch.chdir(root)
    monkeypatch.setenv("ALEARN_REDIS_URL", REDIS_TEST_URL)
    monkeypatch.setenv("COLUMNS", "200")
    return root


def snapshot(project_root: Path) -> str:
    """Every row of every table of the project's SQLite store, hashed."""
    db = project_root / "alearn.db"
    con = sqlite3.connect(db)
    try:
        tables = [r[0] for r in con.execute(
            "SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
        rows = {t: sorted(map(repr, con.execute(f'SELECT * FROM "{t}"'))) for t in tables}
    finally:
        con.close()
    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()


# -- the cases ---------------------------------------------------------------------------
# (id, argv, environment, setup(project_root), words the message must contain)
Setup = Callable[[Path], Any] | None


def _write(rel: str, data: str | bytes) -> Callable[[Path], None]:
    def setup(root: Path) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return setup


def _config(old: str, new: str) -> Callable[[Path], None]:
    def setup(root: Path) -> None:
        path = root / "alearn.toml"
        text = path.read_text()
        assert old in text, old
        path.write_text(text.replace(old, new, 1))
    return setup


def _append_config(text: str) -> Callable[[Path], None]:
    def setup(root: Path) -> None:
        with (root / "alearn.toml").open("a") as f:
            f.write(text)
    return setup


def _server_json(content: str) -> Callable[[Path], None]:
    return _write("data/labelstudio/server.json", content)


def _labeled(root: Path) -> None:
    """Trusted labels (manifest gold) on four images, so an export has work to do."""
    from alearn.ingestion.driver import ingest

    (root / "gold.csv").write_text("path,label\n0.png,cat\n1.png,dog\n2.png,cat\n3.png,dog\n")
    project = Project.open(root, Settings(redis_url=REDIS_TEST_URL))
    ingest(project, manifest=root / "gold.csv")
    project.store.dispose()


def _hold_ingest_lock(root: Path) -> Any:
    import fcntl

    (root / "data").mkdir(exist_ok=True)
    f = open(root / "data" / "ingest.lock", "a+")  # noqa: SIM115 - held during the case
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return f


CLASSES_TOML = 'classes = [\n    "cat",\n    "dog",\n]'
CLI_CASES: list[tuple[str, list[str], dict[str, str], Setup, str]] = [
    # environment
    ("db-url-garbage", ["status"], {"ALEARN_DATABASE_URL": "not a url"}, None,
     "ALEARN_DATABASE_URL"),
    ("db-url-mysql", ["status"], {"ALEARN_DATABASE_URL": f"mysql://u:{SECRET}@h/db"}, None,
     "supports sqlite and postgresql"),
    ("db-url-closed-port", ["status"],
     {"ALEARN_DATABASE_URL": f"postgresql+psycopg://u:{SECRET}@127.0.0.1:1/db"}, None,
     "database"),
    ("db-url-missing-dir", ["status"],
     {"ALEARN_DATABASE_URL": "sqlite:////dev/null/dir/a.db"}, None, "database"),
    ("db-url-empty-scheme", ["status"], {"ALEARN_DATABASE_URL": "://"}, None,
     "ALEARN_DATABASE_URL"),
    ("redis-url-garbage", ["round", "start"], {"ALEARN_REDIS_URL": "garbage"}, None,
     "ALEARN_REDIS_URL"),
    ("redis-url-http", ["round", "start"], {"ALEARN_REDIS_URL": "http://127.0.0.1:6379"}, None,
     "not a Redis URL"),
    ("redis-url-bad-port", ["round", "start"], {"ALEARN_REDIS_URL": "redis://h:99999/0"}, None,
     "bad port"),
    ("redis-url-closed", ["round", "start"],
     {"ALEARN_REDIS_URL": f"redis://:{SECRET}@127.0.0.1:1/0"}, None, "cannot reach Redis"),
    ("redis-url-closed-sync", ["round", "sync"], {"ALEARN_REDIS_URL": "redis://127.0.0.1:1/0"},
     None, "cannot reach Redis"),
    ("ls-url-garbage", ["status"], {"ALEARN_LS_URL": "garbage"}, None, "ALEARN_LS_URL"),
    ("ls-url-ftp", ["status"], {"ALEARN_LS_URL": "ftp://h/"}, None, "not a Label Studio URL"),
    ("ls-url-credentials", ["status"], {"ALEARN_LS_URL": f"http://bob:{SECRET}@h:8080"}, None,
     "must not carry a user or password"),
    ("ls-url-bad-port", ["status"], {"ALEARN_LS_URL": "http://h:0"}, None,
     "not a Label Studio URL"),
    ("ls-url-closed", ["ls", "users", "add", "alice", "--url", "http://127.0.0.1:1"],
     {"ALEARN_LS_TOKEN": "tok-123456"}, None, "cannot reach Label Studio"),
    ("ls-token-file-missing", ["ls", "users", "add", "alice", "--url", "http://127.0.0.1:1"],
     {"ALEARN_LS_TOKEN_FILE": "/nonexistent/token"}, None, "ALEARN_LS_TOKEN_FILE"),
    ("ls-no-token", ["ls", "users", "add", "alice", "--url", "http://127.0.0.1:1"], {}, None,
     "no admin token"),
    ("project-env-missing", ["status"], {"ALEARN_PROJECT": "/nonexistent/project"}, None,
     "not an alearn project"),
    ("project-flag-missing", ["--project", "/nonexistent", "status"], {}, None,
     "not an alearn project"),
    ("document-root-not-dir", ["round", "plan"], {"ALEARN_LS_DOCUMENT_ROOT": "/dev/null"},
     _config('strategy = "auto"', 'strategy = "nope"'), "strategy"),
    # config
    ("config-not-utf8", ["status"], {}, _write("alearn.toml", b"\xff\xfe\x00bad"), "UTF-8"),
    ("config-not-toml", ["status"], {}, _write("alearn.toml", "classes = [cat"), "TOML"),
    ("config-unknown-key", ["status"], {}, _append_config("\nbogus = 1\n"), "bogus"),
    ("config-batch-type", ["status"], {}, _config("batch_size = 20", 'batch_size = "x"'),
     "batch_size"),
    ("config-overlap-zero", ["status"], {}, _config("# overlap = (unset)", "overlap = 0"),
     "overlap"),
    ("config-tick-zero", ["status"], {}, _config("tick_seconds = 30", "tick_seconds = 0"),
     "tick_seconds"),
    ("config-gold-rate", ["status"], {}, _config("gold_rate = 0.0", "gold_rate = 2.0"),
     "gold_rate"),
    ("config-no-classes", ["status"], {}, _config(CLASSES_TOML, "classes = []"), "classes"),
    ("config-dup-classes", ["status"], {}, _config(CLASSES_TOML, 'classes = ["cat", "cat"]'),
     "classes"),
    ("config-consensus", ["status"], {}, _config('consensus = "model_aware"', 'consensus = "x"'),
     "consensus"),
    ("config-strategy", ["round", "plan"], {}, _config('strategy = "auto"', 'strategy = "x"'),
     "strategy"),
    ("config-image-root", ["ingest"], {}, _config("image_root = ", "image_root = \"/nope\"\n#"),
     "image root"),
    ("config-max-file", ["status"], {}, _config("max_file_mb = 256.0", "max_file_mb = -1"),
     "max_file_mb"),
    ("config-kappa", ["status"], {}, _config("kappa_threshold = 0.6", "kappa_threshold = 5"),
     "kappa_threshold"),
    ("config-adjudication", ["status"], {},
     _config('adjudication = "review"', 'adjudication = "x"'), "adjudication"),
    ("config-reviewers-type", ["status"], {}, _config("reviewers = []", "reviewers = 3"),
     "reviewers"),
    ("config-backbone-type", ["status"], {}, _config("image_size = ", "image_size = \"big\"\n#"),
     "image_size"),
    ("config-missing", ["status"], {}, lambda r: (r / "alearn.toml").unlink(),
     "not an alearn project"),
    ("config-is-dir", ["status"], {},
     lambda r: ((r / "alearn.toml").unlink(), (r / "alearn.toml").mkdir()),
     "not an alearn project"),
    ("config-binary", ["status"], {}, _write("alearn.toml", bytes(range(256))), "alearn.toml"),
    # CLI arguments
    ("init-no-classes", ["init", "x", "--images", "."], {}, None, "--classes"),
    ("init-empty-classes", ["init", "x", "--classes", ",", "--images", "."], {}, None, "class"),
    ("init-images-missing", ["init", "x", "--classes", "a,b", "--images", "/nope"], {}, None,
     "/nope"),
    ("init-exists", ["init", ".", "--classes", "a,b", "--images", "../images"], {}, None,
     "already exists"),
    ("ingest-images-missing", ["ingest", "--images", "/nope"], {}, None, "/nope"),
    ("ingest-manifest-missing", ["ingest", "--manifest", "/nope.csv"], {}, None, "/nope.csv"),
    ("ingest-workers-zero", ["ingest", "--workers", "0"], {}, None, "--workers"),
    ("ingest-images-outside-root", ["ingest", "--images", "/tmp"], {}, None, "image root"),
    ("plan-batch-zero", ["round", "plan", "--batch-size", "0"], {}, None, "--batch-size"),
    ("plan-strategy", ["round", "plan", "--strategy", "nope"], {}, None, "strategy"),
    ("start-overlap-zero", ["round", "start", "--overlap", "0"], {}, None, "--overlap"),
    ("start-strategy", ["round", "start", "--strategy", "nope"], {}, None, "strategy"),
    ("start-shards-zero", ["round", "start", "--embed-shards", "0"], {}, None, "--embed-shards"),
    ("close-no-round", ["round", "close"], {}, None, "no rounds yet"),
    ("close-unknown-round", ["round", "close", "--round", "99"], {}, None, "no round 99"),
    ("retry-unknown-round", ["round", "retry", "--round", "99"], {}, None, "no round 99"),
    ("abort-no-round", ["round", "abort"], {}, None, "no rounds yet"),
    ("agreement-unknown-round", ["agreement", "--round", "99"], {}, None, "99"),
    ("export-in-image-root", ["export", "--out", "../images/out"], {}, None,
     "inside the image root"),
    ("export-split-bad", ["export", "--out", "o", "--split", "a,b,c"], {}, None, "--split"),
    ("export-split-two", ["export", "--out", "o", "--split", "0.5,0.5"], {}, None, "--split"),
    ("export-split-sum", ["export", "--out", "o", "--split", "0.9,0.9,0.9"], {}, None, "split"),
    ("export-resize-small", ["export", "--out", "o", "--resize", "1"], {}, None, "--resize"),
    ("export-format", ["export", "--out", "o", "--format", "nope"], {}, None, "--format"),
    ("export-balance", ["export", "--out", "o", "--balance", "nope"], {}, None, "--balance"),
    ("export-augment-alone", ["export", "--out", "o", "--augment-minority"], {}, None,
     "--balance oversample"),
    ("export-nothing", ["export", "--out", "o"], {}, None, "nothing to export"),
    ("export-proc", ["export", "--out", "/proc/alearn-out"], {}, _labeled, "/proc"),
    ("export-exists", ["export", "--out", "."], {}, None, "already exists"),
    ("report-proc", ["report", "--out", "/proc/x/report.html"], {}, None, "/proc"),
    ("embed-shard-order", ["embed", "--shard", "3/2"], {}, None, "--shard"),
    ("embed-shard-text", ["embed", "--shard", "x"], {}, None, "--shard"),
    ("worker-bad-queue", ["worker", "--queues", "nope"], {}, None, "--queues"),
    ("webhook-no-secret", ["webhook", "serve"], {}, None, "ALEARN_WEBHOOK_SECRET"),
    ("webhook-register-no-project", ["webhook", "register", "--url", "http://h/w"],
     {"ALEARN_WEBHOOK_SECRET": "s" * 20}, None, "no Label Studio project"),
    ("users-short-password", ["ls", "users", "add", "x", "--password", "short"], {}, None,
     "--password"),
    ("users-remove-unknown", ["ls", "users", "remove", "nobody@x.y"], {}, None,
     "not on the roster"),
    ("users-existing-not-email", ["ls", "users", "add", "@@@", "--existing"], {}, None,
     "not an email"),
    ("users-bad-role", ["ls", "users", "add", "x", "--role", "boss"], {}, None, "--role"),
    ("ls-up-bad-port", ["ls", "up", "--port", "0"], {}, None, "--port"),
    ("unknown-command", ["frobnicate"], {}, None, "No such command"),
    ("unknown-option", ["status", "--frob"], {}, None, "--frob"),
    # files
    ("manifest-not-utf8", ["ingest", "--manifest", "m.csv"], {}, _write("m.csv", b"\xff\xfe\x01"),
     "m.csv"),
    ("manifest-no-path-column", ["ingest", "--manifest", "m.csv"], {},
     _write("m.csv", "file,label\n0.png,cat\n"), "no 'path' column"),
    ("manifest-empty", ["ingest", "--manifest", "m.csv"], {}, _write("m.csv", ""), "m.csv"),
    ("manifest-jsonl-arrays", ["ingest", "--manifest", "m.jsonl"], {},
     _write("m.jsonl", "[1, 2]\n[3]\n"), "JSON object"),
    ("manifest-bad-suffix", ["ingest", "--manifest", "m.txt"], {}, _write("m.txt", "path\n"),
     "m.txt"),
    ("manifest-is-fifo", ["ingest", "--manifest", "m.csv"], {},
     lambda r: os.mkfifo(r / "m.csv"), "m.csv"),
    ("server-json-corrupt", ["ls", "down"], {}, _server_json("{not json"), "server.json"),
    ("server-json-pid-zero", ["ls", "down"], {},
     _server_json('{"pid": 0, "port": 1, "url": "http://x"}'), "will not stop"),
    ("server-json-pid-minus-one", ["ls", "down"], {},
     _server_json('{"pid": -1, "port": 1, "url": "http://x"}'), "will not stop"),
    ("server-json-other-process", ["ls", "down"], {},
     lambda r: _server_json(json.dumps({"pid": os.getpid(), "port": 1, "url": "http://x"}))(r),
     "will not stop"),
    ("server-json-status-corrupt", ["ls", "status"], {}, _server_json("[]"), "server.json"),
    ("ingest-two-at-once", ["ingest"], {}, _hold_ingest_lock, "another 'alearn ingest'"),
]


# the cases whose command reaches Redis before it fails (the rest fail before, so they
# run without Redis too)
REACHES_REDIS = {"webhook-no-secret"}


@pytest.mark.parametrize(("argv", "env", "setup", "words"), [
    pytest.param(*c[1:], id=c[0], marks=[pytest.mark.services] if c[0] in REACHES_REDIS else [])
    for c in CLI_CASES])
def test_a_bad_input_is_one_clear_line_and_changes_nothing(
        proj_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        argv: list[str], env: dict[str, str], setup: Setup, words: str) -> None:
    held = setup(proj_dir) if setup is not None else None
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    before = snapshot(proj_dir)
    try:
        code, out, err = run(argv, capsys)
    finally:
        if held is not None and hasattr(held, "close"):
            held.close()
    assert code != 0, (out, err)
    assert "Traceback" not in out + err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith(("20", "WARNING"))]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert words.lower() in lines[0].lower(), lines[0]
    assert SECRET not in out + err
    assert snapshot(proj_dir) == before


def test_a_manifest_row_that_is_bad_is_set_aside_and_the_rest_ingested(
        proj_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_image(proj_dir.parent / "images" / "new.png", seed=99)
    write_image(proj_dir.parent / "images" / "new2.png", seed=98)
    (proj_dir / "m.jsonl").write_text(
        '{"path": "new.png", "label": "cat", "score": 1e400}\n'   # not finite
        '{"path": "new2.png", "label": "dog"}\n'
        '{"path": "new2.png", "label": "fish"}\n'                  # same path again, bad label
        '{"path": "../outside.png"}\n'
        '{"path": "missing.png"}\n{"path": "missing.png"}\n')   # the same bad path twice
    code, out, err = run(["ingest", "--manifest", "m.jsonl", "--json"], capsys)
    assert code == 0 and "Traceback" not in out + err
    data = json.loads(out)
    reasons = " ".join(r["reason"] for r in data["rejections"])
    assert "not finite" in reasons and "outside" in reasons and "missing.png" in out
    assert data["added"] >= 1
    code, out, _ = run(["ingest", "--manifest", "m.jsonl", "--json"], capsys)  # again: calm
    assert code == 0


def test_verbose_shows_the_traceback(proj_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from alearn.cli import main
    from alearn.exceptions import AlearnError

    with pytest.raises(AlearnError):
        main(["-v", "round", "close"])
    import alearn.cli.app

    alearn.cli.app.VERBOSE = 0


# -- Label Studio payloads: one bad record never stops a pull ----------------------------
class StubLS:
    url = "http://stub"

    def __init__(self, tasks: list[Any]) -> None:
        self.tasks = tasks

    def get_project(self, project_id: int) -> dict[str, Any]:
        return {"id": project_id}

    def user_emails(self) -> dict[int, str]:
        return {1: "ann@x", 2: "bob@x"}

    def iter_tasks(self, project_id: int, *, annotations: bool = False, **_kw: Any) -> Any:
        yield from self.tasks


GOOD = {"id": 1, "completed_by": 1, "result": [{"type": "choices", "from_name": "label",
                                                "value": {"choices": ["cat"]}}]}
PAYLOADS_RAW: list[tuple[str, Any]] = [
    ("value-is-list", {**GOOD, "id": 2, "result": [{"type": "choices", "from_name": "label",
                                                    "value": ["cat"]}]}),
    ("value-is-string", {**GOOD, "id": 2, "result": [{"type": "choices", "from_name": "label",
                                                      "value": "cat"}]}),
    ("choices-is-string", {**GOOD, "id": 2, "result": [
        {"type": "choices", "from_name": "label", "value": {"choices": "cat"}}]}),
    ("result-is-dict", {**GOOD, "id": 2, "result": {"choices": ["cat"]}}),
    ("result-is-none", {**GOOD, "id": 2, "result": None}),
    ("completed-by-none", {**GOOD, "id": 2, "completed_by": None}),
    ("completed-by-text", {**GOOD, "id": 2, "completed_by": "root"}),
    ("no-id", {k: v for k, v in GOOD.items() if k != "id"}),
    ("id-is-text", {**GOOD, "id": "two"}),
    ("annotation-is-string", "garbage"),
    ("annotation-is-list", [1, 2, 3]),
    ("bad-date", {**GOOD, "id": 2, "created_at": "yesterday"}),
    ("bad-lead-time", {**GOOD, "id": 2, "lead_time": "slow"}),
    ("label-not-a-class", {**GOOD, "id": 2, "result": [
        {"type": "choices", "from_name": "label", "value": {"choices": ["zebra"]}}]}),
    ("nested-garbage", {**GOOD, "id": 2, "result": [None, 3, "x", {"type": "choices"}]}),
]
# the bad records come from another annotator (one person's second vote would supersede)
PAYLOADS = [(name, {**bad, "completed_by": 2}
             if isinstance(bad, dict) and bad.get("completed_by") == 1 else bad)
            for name, bad in PAYLOADS_RAW]


@pytest.mark.parametrize("bad", [p[1] for p in PAYLOADS], ids=[p[0] for p in PAYLOADS])
def test_a_malformed_label_studio_record_is_set_aside_and_the_pull_goes_on(
        tmp_path: Path, bad: Any) -> None:
    from sqlalchemy import select

    from alearn.store import Annotation, Item, QuarantinedAnnotation, Round, Selection, Store
    from alearn.team import add_member
    from labelstudio.pull import pull_annotations

    store = Store(f"sqlite:///{tmp_path / 'a.db'}")
    with store.session() as s:
        s.add(Item(id=1, sha256="0" * 64, path="1.png", width=1, height=1))
        s.add(Round(id=1, number=1, status="pushed", strategy="margin", batch_size=1,
                    overlap=2, metrics={}))
        s.flush()
        s.add(Selection(round_id=1, item_id=1, rank=0, score=0.1, ls_task_id=10))
    store.set_meta("ls_project_id", 5)
    add_member(store, "ann@x")
    add_member(store, "bob@x")
    tasks = [{"id": 10, "data": {"item_id": 1, "round": 1}, "annotations": [GOOD, bad]}]
    summary = pull_annotations(store, StubLS(tasks), classes=["cat", "dog"])
    with store.session() as s:
        rows = {a.ls_annotation_id: a for a in s.scalars(select(Annotation))}
        quarantined = list(s.scalars(select(QuarantinedAnnotation)))
    assert rows[1].status == "ok" and rows[1].label == "cat"  # the good one is counted
    others = [a for k, a in rows.items() if k != 1]
    assert all(a.status == "set_aside" and a.reason for a in others)
    assert len(others) + len(quarantined) == 1, (others, quarantined)  # accounted for once
    assert all(q.reason for q in quarantined)
    assert summary.tasks == 1


# -- webhook bodies -----------------------------------------------------------------------
WEBHOOKS: list[tuple[str, dict[str, Any], int]] = [
    ("no-secret", {"json": {"action": "ANNOTATION_CREATED"}}, 401),
    ("wrong-secret", {"json": {"action": "x"}, "headers": {"Authorization": "Bearer nope"}}, 401),
    ("secret-prefix", {"json": {"action": "x"},
                       "headers": {"Authorization": "Bearer hook-secret-12"}}, 401),
    ("not-json", {"data": "not json", "headers": {"Authorization": "Bearer hook-secret-123",
                                                  "Content-Type": "application/json"}}, 400),
    ("json-array", {"json": [1, 2], "headers": {"Authorization": "Bearer hook-secret-123"}}, 400),
    ("json-string", {"json": "x", "headers": {"Authorization": "Bearer hook-secret-123"}}, 400),
    ("empty-body", {"data": b"", "headers": {"Authorization": "Bearer hook-secret-123"}}, 400),
    ("too-large", {"data": b"{" + b" " * (2 << 20) + b"}",
                   "headers": {"Authorization": "Bearer hook-secret-123",
                               "Content-Type": "application/json"}}, 413),
    ("good-bearer", {"json": {"action": "ANNOTATION_CREATED"},
                     "headers": {"Authorization": "Bearer hook-secret-123"}}, 202),
    ("good-x-header", {"json": {"action": "ANNOTATION_CREATED"},
                       "headers": {"X-Alearn-Secret": "hook-secret-123"}}, 202),
]


@pytest.mark.parametrize(("request_kwargs", "status"), [w[1:] for w in WEBHOOKS],
                         ids=[w[0] for w in WEBHOOKS])
def test_webhook_bodies(request_kwargs: dict[str, Any], status: int) -> None:
    from labelstudio.webhook import create_app

    got: list[dict] = []
    client = create_app("hook-secret-123", got.append).test_client()
    r = client.post("/webhook", **request_kwargs)
    assert r.status_code == status
    assert len(got) == (1 if status == 202 else 0)
    assert client.get("/webhook").status_code == 405


def test_there_are_at_least_a_hundred_cases() -> None:
    assert len(CLI_CASES) + len(PAYLOADS) + len(WEBHOOKS) >= 100
