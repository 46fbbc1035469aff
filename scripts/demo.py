"""Drive the local demo (called by ./scripts/demo; see its header).

Everything runs for real: the operator's steps are `alearn` commands in subprocesses,
two `alearn worker` processes do the jobs from Redis, Label Studio serves the tasks,
and each simulated annotator is a Label Studio user who signs up and labels through
the label stream as themselves, wrong at the given rate.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from _datasets import FASHION_DIR, load_split  # noqa: E402

from alearn.processes import pid_alive  # noqa: E402

ALEARN = str(ROOT / ".venv" / "bin" / "alearn")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--annotators", type=int, default=3)
    p.add_argument("--accuracy", default="0.9,0.85,0.7",
                   help="Each simulated annotator's accuracy (cycled if fewer).")
    p.add_argument("--pool", type=int, default=2000)
    p.add_argument("--test", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=40)
    p.add_argument("--overlap", type=int, default=None,
                   help="Fixed annotators per image (default: adaptive votes, 1 to 3).")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--dir", type=Path, default=ROOT / ".demo")
    p.add_argument("--dataset", default=None, help="fashion-mnist (default if installed) or digits")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stop", action="store_true", help="Stop what the demo started.")
    p.add_argument("--fresh", action="store_true", help="Start from an empty demo directory.")
    return p.parse_args(argv)


class Demo:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.dir: Path = args.dir.resolve()
        self.project = self.dir / "project"
        self.images = self.dir / "images"
        self.pids = self.dir / "pids.json"
        self.env = dict(os.environ)
        self.env.pop("ALEARN_DATABASE_URL", None)
        self.env["ALEARN_PROJECT"] = str(self.project)

    # ---- processes -------------------------------------------------------------
    def alearn(self, *argv: str, capture: bool = False) -> str:
        out = subprocess.run([ALEARN, *argv], env=self.env, check=True, text=True,
                             capture_output=capture)
        return out.stdout if capture else ""

    def _save_pid(self, name: str, pid: int) -> None:
        pids = json.loads(self.pids.read_text()) if self.pids.exists() else {}
        pids[name] = pid
        self.pids.write_text(json.dumps(pids, indent=2))

    def stop(self) -> None:
        pids = json.loads(self.pids.read_text()) if self.pids.exists() else {}
        for name, pid in pids.items():
            try:
                os.kill(pid, signal.SIGTERM)  # workers finish their current job first
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and pid_alive(pid, reap=True):
                time.sleep(0.2)
            if pid_alive(pid, reap=True):
                os.kill(pid, signal.SIGKILL)
            print(f"stopped {name} (pid {pid})")
        self.pids.unlink(missing_ok=True)
        if (self.project / "alearn.toml").exists():
            subprocess.run([ALEARN, "ls", "down"], env=self.env, check=False)

    def ensure_redis(self) -> None:
        from redis import Redis
        from redis.exceptions import ConnectionError as RedisDown

        try:
            Redis.from_url(self.env.get("ALEARN_REDIS_URL", "redis://127.0.0.1:6379/0")).ping()
            print("Redis: using the one on 127.0.0.1:6379")
            return
        except RedisDown:
            pass
        server = shutil.which("redis-server")
        if server is None:
            raise SystemExit("No Redis on 127.0.0.1:6379 and no redis-server to start: "
                             "install redis (apt-get install redis-server).")
        proc = subprocess.Popen([server, "--port", "6379", "--bind", "127.0.0.1",
                                 "--save", "", "--appendonly", "no"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._save_pid("redis-server", proc.pid)
        time.sleep(1)
        print(f"Redis: started redis-server (pid {proc.pid})")

    def start_workers(self, n: int = 2) -> None:
        logs = self.dir / "logs"
        logs.mkdir(exist_ok=True)
        for i in range(n):
            log = open(logs / f"worker-{i + 1}.log", "a")  # noqa: SIM115 - lives with the worker
            name = f"demo-{i + 1}-{os.getpid()}"
            proc = subprocess.Popen([ALEARN, "-v", "worker", "--name", name],
                                    env=self.env, stdout=log, stderr=subprocess.STDOUT)
            self._save_pid(f"worker-{i + 1}", proc.pid)
        print(f"Workers: started {n} (logs in {logs})")

    # ---- data ------------------------------------------------------------------
    def prepare_data(self) -> tuple[list[str], dict[str, int], object]:
        spec = self.args.dataset or ("fashion-mnist" if FASHION_DIR.exists() else "digits")
        n_pool, n_test = self.args.pool, self.args.test
        if spec == "digits":
            n_pool, n_test = min(n_pool, 1297), min(n_test, 500)
        split = load_split(spec, n_pool=n_pool, n_test=n_test, seed=self.args.seed)
        truth_file = self.dir / "truth.json"
        if not truth_file.exists():
            self.images.mkdir(parents=True, exist_ok=True)
            truth = {}
            for i in range(len(split.pool_labels)):
                img = split.pool_images[i]
                if spec == "digits":
                    img = img.resize((32, 32))
                name = f"{i:05d}.png"
                img.save(self.images / name)
                truth[name] = int(split.pool_labels[i])
            truth_file.write_text(json.dumps(truth))
            print(f"Data: wrote {len(truth)} {spec} images to {self.images}")
        return split.classes, json.loads(truth_file.read_text()), split

    # ---- run ---------------------------------------------------------------------
    def run(self) -> None:
        args = self.args
        if args.fresh and self.dir.exists():
            self.stop()
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ensure_redis()
        classes, truth, split = self.prepare_data()
        if not (self.project / "alearn.toml").exists():
            self.alearn("init", str(self.project), "--classes", ",".join(classes),
                        "--images", str(self.images))
            configure_demo_project(self.project, args)
        self.alearn("ingest")
        ls = json.loads(self.alearn("ls", "up", "--port", str(args.port), "--json",
                                    capture=True))
        admin = json.loads(Path(ls["credentials_file"]).read_text())
        ls.update(token=admin["token"], username=admin["email"], password=admin["password"])
        self.env["ALEARN_LS_URL"] = ls["url"]
        self.env["ALEARN_LS_TOKEN"] = ls["token"]
        reviewer = self.reviewer()
        self.start_workers(2)
        from demo_annotators import SimulatedPanel

        panel = SimulatedPanel(ls["url"], ls["token"], self.dir / "annotators.json",
                               n=args.annotators, accuracies=args.accuracy, classes=classes,
                               truth=truth, project=self.project, seed=args.seed)
        from demo_eval import Evaluator

        evaluator = Evaluator(self.project, split, truth)
        print()
        header = ("round", "labels spent", "trusted", "test accuracy", "kappa",
                  "clicks per trusted label", "consensus accuracy")
        print(" | ".join(header))
        rows = []
        for _ in range(args.rounds):
            number = self.start_round()
            ls_project = self.wait_status(number, ("pushed", "collecting"))["ls_project_id"]
            self.label_until_closed(panel, ls_project, number)
            row = evaluator.row(number)
            rows.append(row)
            print(" | ".join(str(row[k]) for k in header), flush=True)
        (self.dir / "rounds.json").write_text(json.dumps(rows, indent=2))
        status = json.loads(self.alearn("status", "--json", capture=True))
        if status.get("convergence"):
            print(f"\n{status['convergence'].get('summary', '')}")
        export = json.loads(self.alearn("export", "--out", str(self.dir / "export"),
                                        "--format", "hf", "--overwrite", "--json",
                                        capture=True))
        print(f"Exported {export['n_items']} trusted items to {export['out']} "
              f"(splits: { {k: sum(v.values()) for k, v in export['counts'].items()} })")
        report = self.dir / "report.html"
        self.alearn("report", "--out", str(report), capture=True)
        print(f"Report: {report}")
        print(f"\nLabel Studio is running at {ls['url']}")
        print(f"  admin login: {ls['username']} / {ls['password']}")
        for who in panel.logins():
            print(f"  annotator login: {who['email']} / {who['password']}")
        print(f"  reviewer login: {reviewer['email']} / {reviewer['password']} (decides the "
              "items in the adjudication project)")
        print("Workers keep running: start the next round with\n"
              f"  ALEARN_PROJECT={self.project} {ALEARN} round start\n"
              "and label it in the browser. Stop everything with ./scripts/demo --stop")

    def reviewer(self) -> dict:
        """The demo's reviewer (an account made through an invite, on the roster), made
        once and kept in .demo/reviewer.json (mode 0600)."""
        path = self.dir / "reviewer.json"
        if path.exists():
            who = json.loads(path.read_text())
            self.alearn("ls", "users", "add", who["email"], "--role", "reviewer",
                        "--existing", capture=True)
            return who
        who = json.loads(self.alearn("ls", "users", "add", "reviewer", "--role", "reviewer",
                                     "--json", capture=True))
        path.write_text(json.dumps({"email": who["email"], "password": who["password"]}))
        path.chmod(0o600)
        return who

    def label_until_closed(self, panel: Any, ls_project: int, number: int) -> None:
        """Label, pull, and label again the tasks that adaptive votes send back (an item
        whose label is unsettled after a pull gets one more vote) until the round closes."""
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            panel.label(ls_project)
            self.alearn("round", "sync", capture=True)
            time.sleep(2)
            if self.wait_status(number, ("closed", "collecting", "pushed"))["status"] == "closed":
                return
        raise SystemExit(f"round {number} did not close in 900 s; see the worker logs in "
                         f"{self.dir / 'logs'}")

    def start_round(self) -> int:
        out = json.loads(self.alearn("round", "start", "--json", capture=True))
        return int(out["round"])

    def wait_status(self, number: int, states: tuple[str, ...], timeout: float = 900) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = json.loads(self.alearn("status", "--json", capture=True))
            rnd = next((r for r in status["rounds"] if r["number"] == number), None)
            if rnd and rnd["status"] in states:
                return {**rnd, "ls_project_id": status.get("ls_project_id")}
            if rnd and rnd["status"] == "failed":
                raise SystemExit(f"round {number} failed: {rnd.get('error')}")
            time.sleep(2)
        raise SystemExit(f"round {number} did not reach {states} in {timeout:.0f} s; "
                         f"see the worker logs in {self.dir / 'logs'}")


def configure_demo_project(project: Path, args: argparse.Namespace) -> None:
    """Demo settings: small images embed fast on a CPU."""
    sys.path.insert(0, str(ROOT))
    from alearn.project import Project

    p = Project.open(project)
    p.config.embed.image_size = 96
    p.config.rounds.batch_size = args.batch_size
    if args.overlap is not None:
        p.config.rounds.overlap = args.overlap
    p.save_config()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    demo = Demo(args)
    if args.stop:
        demo.stop()
        return
    demo.run()


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
