from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from alearn.config import ProjectConfig, Settings, load_config, parse_classes, render_config
from alearn.exceptions import ConfigError, ProjectNotFound
from alearn.project import Project


def test_parse_classes_rejects_duplicates() -> None:
    with pytest.raises(ConfigError, match=r"duplicate class names \['cat'\]"):
        parse_classes("cat,dog,cat")


def test_parse_classes_strips_and_keeps_order() -> None:
    assert parse_classes(" cat , dog,bird") == ["cat", "dog", "bird"]


def test_parse_classes_needs_two() -> None:
    with pytest.raises(ConfigError, match="at least two"):
        parse_classes("cat")


def test_rendered_config_round_trips_and_documents_every_field() -> None:
    cfg = ProjectConfig(classes=["a", "b"])
    text = render_config(cfg)
    assert ProjectConfig.model_validate(tomllib.loads(text)) == cfg
    # every key is preceded by its description comment
    for section in ("embed", "head", "rounds", "agreement", "labelstudio"):
        for name, field in type(getattr(cfg, section)).model_fields.items():
            assert f"# {field.description}\n{name} =" in text


def test_init_writes_config_and_open_finds_it_from_below(tmp_path: Path, image_dir: Path) -> None:
    project = Project.init(tmp_path / "p", classes=["x", "y"], images=image_dir)
    sub = project.root / "data"
    found = Project.open(sub)
    assert found.root == project.root
    assert found.config.classes == ["x", "y"]
    assert found.image_root == image_dir.resolve()


def test_init_refuses_to_overwrite(tmp_path: Path, image_dir: Path) -> None:
    Project.init(tmp_path / "p", classes=["x", "y"], images=image_dir)
    with pytest.raises(ConfigError, match="already exists"):
        Project.init(tmp_path / "p", classes=["x", "y"], images=image_dir)


def test_open_uninitialised_dir_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ProjectNotFound, match="alearn init"):
        Project.open(tmp_path)


def test_bad_toml_value_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "alearn.toml"
    path.write_text('classes = ["a", "b"]\n[rounds]\nbatch_size = 0\n')
    with pytest.raises(ConfigError, match=r"rounds\.batch_size"):
        load_config(path)


def test_token_comes_from_env_or_file_and_is_never_printed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALEARN_LS_TOKEN", "s3cret")
    s = Settings()
    assert s.label_studio_token() == "s3cret"
    assert "s3cret" not in repr(s) and "s3cret" not in str(s.model_dump())
    monkeypatch.delenv("ALEARN_LS_TOKEN")
    f = tmp_path / "tok"
    f.write_text("fromfile\n")
    monkeypatch.setenv("ALEARN_LS_TOKEN_FILE", str(f))
    assert Settings().label_studio_token() == "fromfile"
