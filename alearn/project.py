"""A project directory: ``alearn.toml``, the store and the data directory.

Commands run inside a project directory, or any folder below it, like git; or they
take ``--project DIR``.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from alearn.config import CONFIG_NAME, ProjectConfig, Settings, load_config, write_config
from alearn.exceptions import ConfigError, ProjectNotFound
from alearn.store import Store


class Project:
    """An initialised project directory with its config, settings and store."""

    def __init__(self, root: Path, config: ProjectConfig, settings: Settings | None = None):
        self.root = root.resolve()
        self.config = config
        self.settings = settings if settings is not None else Settings.load()

    @classmethod
    def open(cls, start: Path | str | None = None, settings: Settings | None = None) -> Project:
        """Find ``alearn.toml`` in ``start`` or its parents and load it."""
        here = Path(start or Path.cwd()).resolve()
        for folder in (here, *here.parents):
            if (folder / CONFIG_NAME).is_file():
                return cls(folder, load_config(folder / CONFIG_NAME), settings)
        raise ProjectNotFound(
            f"{here} is not an alearn project (no {CONFIG_NAME} here or above). "
            "Run 'alearn init DIR --classes a,b --images PATH' first, or pass --project DIR."
        )

    @classmethod
    def init(
        cls,
        root: Path | str,
        *,
        classes: list[str],
        images: Path | str,
        settings: Settings | None = None,
        force: bool = False,
        **sections: dict,
    ) -> Project:
        """Create ``root/alearn.toml`` (and the data directory)."""
        root = Path(root).resolve()
        cfg_path = root / CONFIG_NAME
        if cfg_path.exists() and not force:
            raise ConfigError(
                f"{cfg_path} already exists. Edit it, or pass --force to overwrite it."
            )
        images = Path(images)
        image_root = images.resolve()
        if not image_root.is_dir():
            raise ConfigError(f"--images {images}: not a directory. Give the folder of images.")
        try:
            rel = image_root.relative_to(root)
            image_root_text = str(rel) if str(rel) != "." else "."
        except ValueError:
            image_root_text = str(image_root)
        config = ProjectConfig(
            name=root.name, classes=classes, image_root=image_root_text, **sections
        )
        root.mkdir(parents=True, exist_ok=True)
        write_config(config, cfg_path)
        project = cls(root, config, settings)
        project.data_dir.mkdir(parents=True, exist_ok=True)
        return project

    def save_config(self) -> None:
        write_config(self.config, self.root / CONFIG_NAME)

    @property
    def image_root(self) -> Path:
        p = Path(self.config.image_root)
        return (p if p.is_absolute() else self.root / p).resolve()

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def features_dir(self) -> Path:
        return self.data_dir / "features"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def database_url(self) -> str:
        return self.settings.database_url or f"sqlite:///{self.root / 'alearn.db'}"

    @cached_property
    def store(self) -> Store:
        return Store(self.database_url)
