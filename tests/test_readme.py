"""README's "Using it on your own images" runs as written.

The fenced block under that heading is read from README.md at test time and executed line
by line by bash, in a temporary home folder, against the real services: the test Redis,
the Label Studio that the block's own ``alearn ls up`` starts, and the ``alearn worker``
it starts. README and test cannot drift: change the block and this test runs the change.

What the test sets around the block, never in it:

- ``HOME`` is a temporary folder whose ``photos/`` holds 60 real images (scikit-learn's
  handwritten digits 0, 1 and 2 as PNGs, standing for the block's cat, dog and bird);
- ``ALEARN_REDIS_URL`` is the test database and ``ALEARN_LS_PORT`` a free port (so the
  block's Label Studio never meets a demo on 8080).

Only the line where the README says *people label* (a comment, "... label the round
...") is done by simulated annotators, as in the demo: each person that comment names
logs in to Label Studio with the email and password their ``alearn ls users add`` line
printed, and labels through the label stream, sometimes wrongly, coming back until the
round closes by itself. Nothing else is simulated.

A step that fails stops the test with the step, its exit status and its output (and the
worker's). At the end the background worker and Label Studio are stopped.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import REDIS_TEST_URL

README = Path(__file__).resolve().parent.parent / "README.md"
HEADING = "## Using it on your own images"
# the line of the block that says people label: "# alice, bob and carol label the round ..."
PEOPLE_LABEL = re.compile(r"^#\s*(?P<who>[\w ,]+?)\s+label the round\b", re.I)
N_PER_CLASS = 20
# each simulated person's accuracy, in the order the labeling line names them
ACCURACY = (1.0, 0.95, 0.9)
STEP_TIMEOUT_S = 300
LABELING_TIMEOUT_S = 240


@dataclass
class Step:
    number: int
    line: str

    @property
    def who_labels(self) -> list[str] | None:
        """The names of the people who label here, if this is the labeling line."""
        m = PEOPLE_LABEL.match(self.line)
        if m is None:
            return None
        return [n for n in re.split(r"\s*,\s*|\s+and\s+", m["who"].strip()) if n]


def readme_steps(text: str) -> list[Step]:
    """The lines of the fenced bash block(s) directly under :data:`HEADING` (up to the
    next heading), continuation lines joined; comment-only lines are kept only when they
    say people label. Fails if the heading or a block is missing."""
    lines = text.splitlines()
    try:
        start = lines.index(HEADING)
    except ValueError:
        pytest.fail(f"README.md has no heading {HEADING!r}")
    steps: list[Step] = []
    in_block, pending = False, ""
    for line in lines[start + 1:]:
        if not in_block and re.match(r"^#{1,6} ", line):
            break  # the next heading: the section is over
        if line.startswith("```"):
            in_block = not in_block and line.strip("`").strip() in ("", "bash", "sh", "shell")
            continue
        if not in_block:
            continue
        line = pending + line
        if line.endswith("\\"):
            pending = line[:-1]  # bash drops the backslash and the newline
            continue
        pending = ""
        text_line = line.strip()
        if not text_line or (text_line.startswith("#") and not PEOPLE_LABEL.match(text_line)):
            continue
        steps.append(Step(len(steps) + 1, text_line))
    if not steps:
        pytest.fail(f"README.md has no bash block under {HEADING!r}")
    return steps


def test_readme_block_is_found_and_names_who_labels() -> None:
    steps = readme_steps(README.read_text(encoding="utf-8"))
    labeling = [s for s in steps if s.who_labels is not None]
    assert len(labeling) == 1, "the block must say once where people label"
    assert steps[0].line.startswith("alearn init ")
    added = [s.line.split()[4] for s in steps if s.line.startswith("alearn ls users add ")
             and "--role reviewer" not in s.line]
    assert labeling[0].who_labels == added  # those who label are the annotators added
    # no exports to remember: ls up stores the connection for every later command
    assert not [s.line for s in steps if s.line.startswith("export ")]


def test_readme_parser_stops_at_the_next_heading() -> None:
    text = f"intro\n{HEADING}\n\n```bash\na \\\n  b\n# x\nc   # d\n```\n### Next\n```bash\ne\n```\n"
    assert [s.line for s in readme_steps(text)] == ["a   b", "c   # d"]
    with pytest.raises(pytest.fail.Exception, match="no heading"):
        readme_steps("## Other\n```bash\na\n```\n")
    with pytest.raises(pytest.fail.Exception, match="no bash block"):
        readme_steps(f"{HEADING}\ntext only\n## Next\n")


@dataclass
class Runner:
    """Runs README lines one by one in bash, carrying the working folder from one line
    to the next (``cd myproject``). Each line runs in its own process group; one that
    leaves a background job (``alearn worker &``) leaves it running until :meth:`stop`."""

    env: dict[str, str]
    cwd: Path
    logs: Path
    outputs: dict[int, str] = field(default_factory=dict)
    seconds: dict[int, float] = field(default_factory=dict)
    groups: list[int] = field(default_factory=list)

    def run(self, step: Step) -> str:
        log = self.logs / f"step{step.number:02d}.log"
        where = self.logs / "cwd"
        script = (f"cd {_quote(self.cwd)} || exit 97\n{step.line}\n__rc=$?\n"
                  f"pwd > {_quote(where)}\nexit $__rc\n")
        t0 = time.monotonic()
        with open(log, "wb") as out:
            proc = subprocess.Popen(["bash", "-c", script], env=self.env, stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
            self.groups.append(proc.pid)
            try:
                rc: int | None = proc.wait(timeout=STEP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                rc = None
        self.seconds[step.number] = round(time.monotonic() - t0, 1)
        output = self.outputs[step.number] = log.read_text(errors="replace")
        if rc != 0:
            self.fail(step, ("timed out" if rc is None else f"exited {rc}")
                      + f"; its output:\n{output[-4000:]}")
        self.cwd = Path(where.read_text().strip())
        return output

    def fail(self, step: Step, what: str) -> None:
        workers = "".join(f"\n--- the worker (step {n}) ---\n{out[-3000:]}"
                          for n, out in self.outputs.items() if "rq.worker" in out)
        pytest.fail(f"README step {step.number} `{step.line}` {what}{workers}\n"
                    f"seconds per step: {self.seconds}")

    def stop(self) -> None:
        """Stop what the steps left running (the worker): SIGTERM to each step's process
        group, then SIGKILL to what is left after 20 s."""
        for pgid in self.groups:
            _signal_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(_signal_group(g, 0) for g in self.groups):
            time.sleep(0.2)
        for pgid in self.groups:
            _signal_group(pgid, signal.SIGKILL)


def _quote(path: Path) -> str:
    return "'" + str(path).replace("'", "'\\''") + "'"


def _signal_group(pgid: int, sig: int) -> bool:
    """Signal a process group this test started; False if it is gone."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True


def write_photos(folder: Path) -> dict[str, int]:
    """60 PNGs of scikit-learn's digits 0, 1 and 2 (20 each, 8x8 scaled to 32x32);
    file name -> true class index."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    folder.mkdir(parents=True)
    truth: dict[str, int] = {}
    for cls in range(3):
        picked = [i for i, t in enumerate(digits.target) if t == cls][:N_PER_CLASS]
        for i in picked:
            pixels = (digits.images[i] * (255 / 16)).astype("uint8")
            name = f"{len(truth):03d}.png"
            Image.fromarray(pixels).resize((32, 32), Image.NEAREST).save(folder / name)
            truth[name] = cls
    return truth


def printed_logins(outputs: dict[int, str], steps: list[Step],
                   names: list[str]) -> dict[str, tuple[str, str, str]]:
    """name -> (Label Studio URL, email, password), read from what each person's
    ``alearn ls users add NAME`` line printed."""
    logins = {}
    for step in steps:
        words = step.line.split()
        if words[:4] != ["alearn", "ls", "users", "add"] or words[4] not in names:
            continue
        out = outputs[step.number]
        url = re.search(r"Log in at (\S+)/user/login/", out)
        email = re.search(r"email:\s+(\S+)", out)
        password = re.search(r"password:\s+(\S+)", out)
        assert url and email and password, f"`{step.line}` printed no login:\n{out}"
        logins[words[4]] = (url[1], email[1], password[1])
    assert set(logins) == set(names), f"no 'alearn ls users add' line for some of {names}"
    return logins


def people_label(project_dir: Path, logins: dict[str, tuple[str, str, str]],
                 truth: dict[str, int], classes: list[str]) -> int:
    """The README's labeling line, by simulated people: once the round's tasks are in
    Label Studio, each person logs in with their printed password and labels, all at
    once, until Label Studio has nothing left for them; they look again every few seconds
    (the workers may ask for more votes) until the round closes by itself. Returns the
    annotations made."""
    from concurrent.futures import ThreadPoolExecutor

    from sqlalchemy import select

    from alearn.project import Project
    from alearn.rounds.lifecycle import CLOSED, FAILED, PLANNED, get_round
    from alearn.store import Item
    from labelstudio.annotators import label_stream, signup_annotator

    names = list(logins)
    project = Project.open(project_dir)
    store = project.store

    def round_status() -> str:
        rnd = get_round(store)
        assert rnd.status != FAILED, f"the round failed: {rnd.error}"
        return rnd.status

    try:
        deadline = time.monotonic() + 180
        while round_status() == PLANNED or store.get_meta("ls_project_id") is None:
            assert time.monotonic() < deadline, "the round reached no Label Studio in 180 s"
            time.sleep(1)
        ls_project = int(store.get_meta("ls_project_id"))
        with store.session() as s:
            paths = dict(s.execute(select(Item.id, Item.path)).all())
        tokens = {name: signup_annotator(url, email, password).token  # an existing account:
                  for name, (url, email, password) in logins.items()}  # logs in
        rngs = {name: random.Random(f"{name}-13") for name in names}
        accuracy = dict(zip(names, ACCURACY, strict=False))

        def labels(name: str) -> int:
            rng = rngs[name]

            def choose(data: dict) -> str:
                true = truth[Path(paths[int(data["item_id"])]).name]
                if rng.random() < accuracy.get(name, 0.9):
                    return classes[true]
                return classes[rng.choice([c for c in range(len(classes)) if c != true])]

            return label_stream(logins[name][0], tokens[name], ls_project, choose,
                                lead_time=3.0)

        done = 0
        deadline = time.monotonic() + LABELING_TIMEOUT_S
        with ThreadPoolExecutor(len(names)) as pool:
            while True:
                done += sum(pool.map(labels, names))
                if round_status() == CLOSED:
                    return done
                assert time.monotonic() < deadline, (
                    f"the round did not close by itself within {LABELING_TIMEOUT_S} s of "
                    f"labeling ({done} annotations made)")
                time.sleep(2)
    finally:
        store.dispose()


@pytest.mark.integration  # the block starts its own Label Studio (redis_conn marks services)
@pytest.mark.slow
def test_readme_runs_as_written(redis_conn, tmp_path: Path) -> None:  # noqa: ANN001
    from alearn.exceptions import LabelStudioError
    from labelstudio.server import find_ls_bin, free_port, stop_server

    try:
        find_ls_bin()
    except LabelStudioError as exc:
        pytest.skip(f"Label Studio is not installed: {exc}")
    steps = readme_steps(README.read_text(encoding="utf-8"))
    home = tmp_path / "home"
    truth = write_photos(home / "photos")
    logs = tmp_path / "logs"
    logs.mkdir()
    env = {**os.environ, "HOME": str(home),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "ALEARN_REDIS_URL": REDIS_TEST_URL, "ALEARN_LS_PORT": str(free_port()),
           "NO_COLOR": "1"}
    runner = Runner(env, cwd=home, logs=logs)
    project_dir: Path | None = None
    labeled = 0
    try:
        for step in steps:
            names = step.who_labels
            if names is None:
                runner.run(step)
                if step.line.startswith("cd "):
                    project_dir = runner.cwd
                continue
            assert project_dir is not None, "people label before 'cd' into the project"
            classes = steps[0].line.split("--classes")[1].split()[0].split(",")
            t0 = time.monotonic()
            try:
                labeled = people_label(project_dir, printed_logins(runner.outputs, steps, names),
                                       truth, classes)
            except AssertionError as exc:
                runner.fail(step, f"(simulated): {exc}")
            runner.seconds[step.number] = round(time.monotonic() - t0, 1)
    finally:
        runner.stop()
        if project_dir is not None:
            stop_server(project_dir / "data" / "labelstudio")
    print(f"seconds per README step: {runner.seconds}")  # shown with -s
    assert project_dir is not None
    check_outcome(project_dir, labeled, truth)


def check_outcome(project_dir: Path, labeled: int, truth: dict[str, int]) -> None:
    """What the block promised: round 1 closed on every vote given, trusted labels that
    are right, the dataset and the report."""
    from sqlalchemy import select

    from alearn.project import Project
    from alearn.rounds.lifecycle import CLOSED, get_round
    from alearn.rounds.metrics import RoundMetrics
    from alearn.store import Item, Label

    project = Project.open(project_dir)
    try:
        rnd = get_round(project.store)
        assert rnd.number == 1 and rnd.status == CLOSED
        assert RoundMetrics.from_json(rnd.metrics).labels_spent == labeled >= 20
        with project.store.session() as s:
            trusted = s.execute(select(Item.path, Label.label).join(
                Item, Item.id == Label.item_id).where(Label.origin == "consensus")).all()
        classes = project.config.classes
        right = sum(classes[truth[Path(p).name]] == label for p, label in trusted)
        assert len(trusted) >= 10 and right >= 0.8 * len(trusted), (right, len(trusted))
    finally:
        project.store.dispose()
    dataset = project_dir / "dataset"
    assert (dataset / "README.md").is_file(), sorted(p.name for p in dataset.rglob("*"))
    exported = list(dataset.glob("*/metadata.parquet"))
    assert exported and len(list(dataset.rglob("*.png"))) == len(trusted)
    report = project_dir / "report.html"
    assert report.is_file() and (report.stat().st_mode & 0o777) == 0o644
