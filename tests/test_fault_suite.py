"""The fault suite (scripts/fault_suite.py) as part of the test command: every scenario
must pass against the real Label Studio, Redis, RQ worker processes and PostgreSQL.

``scripts/test`` (the whole suite) starts the fault suite beside the other tests, without
the scenario that restarts PostgreSQL, and says where in ``ALEARN_TEST_FAULT_RUN`` and
``ALEARN_TEST_FAULT_PID``. This test, which ``conftest.py`` runs last, waits for that run,
runs the PostgreSQL scenario itself once nothing else is running, and checks all of them.
Run on its own, it runs the whole fault suite."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.services, pytest.mark.slow,
              pytest.mark.run_last]

ROOT = Path(__file__).resolve().parent.parent
SUITE = ROOT / "scripts" / "fault_suite.py"
ALONE = "pg_restart_during_close"  # restarts PostgreSQL: never beside other tests
TIMEOUT_S = 2400


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if not k.startswith("ALEARN_") or k.startswith("ALEARN_TEST_")}


def _run_suite(*args: str) -> dict[str, Any]:
    run = subprocess.run([sys.executable, str(SUITE), *args], capture_output=True, text=True,
                         env=_clean_env(), timeout=TIMEOUT_S, cwd=ROOT)
    assert run.stdout, run.stderr[-3000:]
    return json.loads(run.stdout)


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"  # exited, not yet reaped by scripts/test


def _background_report(folder: Path, pid: int) -> dict[str, Any]:
    deadline = time.monotonic() + TIMEOUT_S
    while _running(pid) and time.monotonic() < deadline:
        time.sleep(1)
    assert not _running(pid), f"the fault suite beside the tests ran past {TIMEOUT_S} s"
    out = (folder / "report.json").read_text()
    assert out, (folder / "stderr").read_text()[-3000:]
    return json.loads(out)


def _suite_module() -> Any:
    """scripts/fault_suite.py as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("fault_suite", SUITE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_fault_scenario_ends_with_nothing_lost() -> None:
    from labelstudio.server import find_ls_bin

    find_ls_bin()  # Label Studio is part of the test set-up; missing it is a failure
    t0 = time.monotonic()
    folder, pid = os.environ.get("ALEARN_TEST_FAULT_RUN"), os.environ.get("ALEARN_TEST_FAULT_PID")
    if folder and pid:
        beside = _background_report(Path(folder), int(pid))
        alone = _run_suite("--only", ALONE)
        scenarios = beside["scenarios"] + alone["scenarios"]
        settings = {k: beside["summary"][k] for k in ("tick_seconds", "lease_seconds", "webhooks")}
        summary = _suite_module().summarize(
            scenarios, **settings,
            seconds=round(beside["summary"]["seconds"] + alone["summary"]["seconds"], 1),
            beside_other_tests=[s["scenario"] for s in beside["scenarios"]],
            waited_for_them_s=round(time.monotonic() - t0, 1))
        report = {"summary": summary, "scenarios": scenarios}
    else:
        report = _run_suite()
    keep = os.environ.get("ALEARN_TEST_FAULT_REPORT")  # where to keep the JSON, if asked
    if keep:
        Path(keep).write_text(json.dumps(report, indent=2))
    summary = report["summary"]
    names = {s["scenario"] for s in report["scenarios"]}
    listed = subprocess.run([sys.executable, str(SUITE), "--list"], capture_output=True,
                            text=True, check=True, cwd=ROOT).stdout.split()
    assert names == set(listed) and len(listed) >= 20  # every scenario ran, once
    failed = [s for s in report["scenarios"] if not s["passed"]]
    assert not failed, json.dumps(failed, indent=1)[-6000:]
    assert summary["scenarios_passed"] == summary["scenarios_run"] == len(listed)
    assert summary["annotations_lost"] == 0 and summary["duplicate_tasks"] == 0
    assert summary["trusted_labels_wrong"] == 0
    kills = [s for s in report["scenarios"] if s["scenario"].startswith("kill_")]
    assert len(kills) == 6 and all(s["recovery_s"] < 60 for s in kills)
