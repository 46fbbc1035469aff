from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from alearn.class_tables import ClassSpec
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
            unset = "# " if getattr(getattr(cfg, section), name) is None else ""
            assert f"# {field.description}\n{unset}{name} =" in text


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


# -- [classes.<name>] tables --------------------------------------------------------
CLASS_TABLES = '''
image_root = "images"

[classes.cat]
description = "A domestic cat."
guidance = "A drawing of a cat is not a cat."
examples = ["cats/1.png", "https://example.org/cat.jpg"]
target = 200

[classes.dog]

[classes.bird]
target = 5
'''


def _write_toml(tmp_path: Path, text: str, *, example: str = "cats/1.png") -> Path:
    (tmp_path / "images" / Path(example).parent).mkdir(parents=True, exist_ok=True)
    (tmp_path / "images" / example).write_bytes(b"png")
    path = tmp_path / "alearn.toml"
    path.write_text(text)
    return path


def test_class_tables_give_the_names_in_order_and_each_class_its_table(tmp_path: Path) -> None:
    cfg = load_config(_write_toml(tmp_path, CLASS_TABLES))
    assert cfg.classes == ["cat", "dog", "bird"]  # every existing caller sees the names
    cat = cfg.class_spec("cat")
    assert cat.description == "A domestic cat." and cat.target == 200
    assert cat.examples == ["cats/1.png", "https://example.org/cat.jpg"]
    assert cfg.class_spec("dog") == ClassSpec()
    assert cfg.class_targets() == {"cat": 200, "bird": 5}
    cfg.embed = cfg.embed.model_copy()  # assigning another field keeps the tables
    assert cfg.class_targets() == {"cat": 200, "bird": 5}
    assert ProjectConfig(classes=["a", "b"]).class_targets() == {}  # the list form


def test_class_tables_render_as_tables_and_round_trip(tmp_path: Path) -> None:
    cfg = load_config(_write_toml(tmp_path, CLASS_TABLES))
    text = render_config(cfg)
    assert "[classes.cat]\n# What the class is" in text and "classes = [" not in text
    again = ProjectConfig.model_validate(tomllib.loads(text))
    assert again == cfg and again.class_spec("cat") == cfg.class_spec("cat")
    plain = render_config(ProjectConfig(classes=["a", "b"]))
    assert 'classes = [\n    "a",' in plain and "\n[classes." not in plain
    assert "or [classes.<name>] tables" in plain  # the template names the table form


@pytest.mark.parametrize(("table", "message"), [
    ('colour = "red"', r"classes\.cat\.colour: Extra inputs are not permitted"),
    ("target = -1", r"classes\.cat\.target: Input should be greater than or equal to 0"),
    ('examples = ["/etc/passwd"]', r"classes\.cat\.examples: .*'/etc/passwd' is not a path "
                                   "under image_root"),
    ('examples = ["../secret.png"]', r"classes\.cat\.examples: .*not a path under image_root"),
    ('examples = ["javascript:alert(1)"]', r"classes\.cat\.examples: .*only http\(s\) URLs"),
    ('examples = ["cats/none.png"]', r"classes\.cat\.examples: 'cats/none\.png' is not a file "
                                     "under image_root"),
])
def test_class_table_mistakes_are_one_line_errors_naming_class_and_setting(
        tmp_path: Path, table: str, message: str) -> None:
    path = _write_toml(tmp_path, f'[classes.cat]\n{table}\n[classes.dog]\n')
    with pytest.raises(ConfigError, match=message) as err:
        load_config(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_an_example_through_a_link_out_of_the_image_root_is_refused(tmp_path: Path) -> None:
    path = _write_toml(tmp_path, '[classes.cat]\nexamples = ["out/x.png"]\n[classes.dog]\n',
                       example="x.png")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "x.png").write_bytes(b"png")
    (tmp_path / "images" / "out").symlink_to(tmp_path / "outside")
    with pytest.raises(ConfigError, match=r"classes\.cat\.examples: 'out/x\.png' leads outside"):
        load_config(path)


def test_adaptive_votes_are_the_default_and_overlap_turns_them_off() -> None:
    cfg = ProjectConfig(classes=["a", "b"])
    assert cfg.rounds.overlap is None and cfg.rounds.vote_limits() == (1, 3)
    old = ProjectConfig.model_validate({"classes": ["a", "b"], "rounds": {"overlap": 3}})
    assert old.rounds.vote_limits() == (3, 3)  # an alearn.toml from before: fixed overlap
    two = ProjectConfig.model_validate({"classes": ["a", "b"],
                                        "rounds": {"min_votes": 2, "max_votes": 4}})
    assert two.rounds.vote_limits() == (2, 4)


def test_bad_vote_limits_are_one_line_errors(tmp_path: Path) -> None:
    path = tmp_path / "alearn.toml"
    for body, match in [("[rounds]\nmin_votes = 4\nmax_votes = 2\n", "min_votes <= max_votes"),
                        ("[rounds]\nmin_votes = 0\n", "min_votes"),
                        ("[agreement]\nconfidence_target = 1.5\n", "confidence_target"),
                        ("[agreement]\naudit_rate = -0.1\n", "audit_rate")]:
        path.write_text('classes = ["a", "b"]\n' + body)
        with pytest.raises(ConfigError, match=match) as err:
            load_config(path)
        assert "\n" not in str(err.value)
