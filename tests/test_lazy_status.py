"""``alearn status`` imports what it uses: a project's state is counts and stored
verdicts, so a fresh process answering ``status --json`` loads no numpy, does not read
the package metadata for alearn's version, and prints its JSON without rich."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from alearn.project import Project
from alearn.rounds import metrics as round_metrics
from alearn.rounds.lifecycle import CLOSED, create_round, set_round_fields
from alearn.stats.stopping import budget, decide

ROOT = Path(__file__).resolve().parents[1]

_CHILD = """
import json, sys
from alearn.cli import main
try:
    main(sys.argv[1:])
except SystemExit as stop:
    assert not stop.code, stop.code
version = sys.modules.get("alearn.version")
read = bool(version and version.installed_version.cache_info().currsize)
print(json.dumps({"numpy": "numpy" in sys.modules, "rich": "rich" in sys.modules,
                  "version_read": read}), file=sys.stderr)
"""


def test_status_json_loads_no_numpy_no_version_lookup_and_no_rich(project: Project) -> None:
    rnd = create_round(project.store, strategy="margin", batch_size=2, overlap=1)
    set_round_fields(project.store, rnd.id, status=CLOSED)
    with round_metrics.editing(project.store, rnd.id) as m:  # a stored verdict to read back
        m.labels_spent = 2
        m.set_convergence(decide([budget(2, 2)], rule="budget").to_dict())
    env = {**os.environ, "ALEARN_REDIS_URL": "redis://127.0.0.1:1/0"}  # no Redis: one line
    done = subprocess.run([sys.executable, "-c", _CHILD, "--project", str(project.root),
                           "status", "--json"], capture_output=True, text=True, cwd=ROOT,
                          env=env, check=True, timeout=120)
    status = json.loads(done.stdout)
    assert status["convergence"]["converged"] is True
    assert status["votes"]["clicks_per_trusted_label"] is None
    assert "error" in status["queues"]
    loaded = json.loads(done.stderr.strip().splitlines()[-1])
    assert loaded == {"numpy": False, "rich": False, "version_read": False}
