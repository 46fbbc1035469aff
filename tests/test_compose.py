"""docker-compose.yml cannot run here (no Docker), so check that it parses and that
its services, commands and variables match what the code reads."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from click.testing import CliRunner

from alearn.cli import cli
from alearn.config import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_services_are_the_designed_ones() -> None:
    assert set(COMPOSE["services"]) == {"redis", "postgres", "label-studio", "worker", "webhook"}


def test_alearn_variables_are_settings_the_code_reads() -> None:
    known = {f"ALEARN_{name.upper()}" for name in Settings.model_fields} | {"ALEARN_PROJECT"}
    for name in ("worker", "webhook"):
        env = COMPOSE["services"][name]["environment"]
        assert env, name
        unknown = {k for k in env if k.startswith("ALEARN_")} - known
        assert not unknown, f"{name} sets variables alearn never reads: {unknown}"
    # and each one is explained by a comment in the file
    text = (ROOT / "docker-compose.yml").read_text()
    for var in {k for k in COMPOSE["services"]["worker"]["environment"]}:
        line = next(i for i, ln in enumerate(text.splitlines()) if ln.strip().startswith(var))
        prev = text.splitlines()[line - 1].strip()
        assert prev.startswith("#") or "#" in text.splitlines()[line], var


def test_label_studio_version_and_local_files_match_the_code() -> None:
    ls = COMPOSE["services"]["label-studio"]
    assert ls["image"].endswith(":1.23.2")
    setup = (ROOT / "scripts" / "setup").read_text()
    assert re.search(r"LS_VERSION=1\.23\.2", setup)
    assert ls["environment"]["LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED"] == "true"
    root = ls["environment"]["LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"]
    mounted = {v.split(":")[1] for v in ls["volumes"]}
    # the images sit directly below the document root, where the workers see them too
    images = next(m for m in mounted if m.startswith(root.rstrip("/") + "/"))
    assert str(Path(images).parent) == root
    worker_mounts = {v.split(":")[1] for v in COMPOSE["services"]["worker"]["volumes"]}
    assert images in worker_mounts


def test_service_commands_are_real_cli_commands() -> None:
    runner = CliRunner()
    for name in ("worker", "webhook"):
        cmd = COMPOSE["services"][name]["command"]
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


def test_label_studio_is_closed_and_ssrf_protected_but_for_the_webhook() -> None:
    from labelstudio.server_security import banned_subnets

    env = COMPOSE["services"]["label-studio"]["environment"]
    assert env["LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK"] == "true"
    assert env["SSRF_PROTECTION_ENABLED"] == "true"
    assert env["USE_DEFAULT_BANNED_SUBNETS"] == "false"
    hook = COMPOSE["services"]["webhook"]["networks"]["alearn"]["ipv4_address"]
    assert env["USER_ADDITIONAL_BANNED_SUBNETS"].split(",") == banned_subnets([hook])
    import ipaddress

    banned = [ipaddress.ip_network(n) for n in env["USER_ADDITIONAL_BANNED_SUBNETS"].split(",")]
    addr = ipaddress.ip_address(hook)
    assert not any(addr in n for n in banned)  # the receiver is reachable...
    for other in ("10.77.0.11", "127.0.0.1", "169.254.169.254", "192.168.1.1", "::1"):
        assert any(ipaddress.ip_address(other) in n for n in banned), other  # ...nothing else
