"""A project directory: ``alearn.toml``, the store and the data directory.

Commands run inside a project directory, or any folder below it, like git; or they
take ``--project DIR``.
"""

from __future__ import annotations

import os
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
        # the environment's settings, with the project's stored Label Studio connection
        self.settings = (settings if settings is not None else Settings.load()).for_project(
            self.data_dir)

    @classmethod
    def open(cls, start: Path | str | None = None, settings: Settings | None = None) -> Project:
        """Find ``alearn.toml`` in ``start`` or its parents and load it."""
        here = Path(start or Path.cwd()).resolve()
        for folder in (here, *here.parents):
            if (folder / CONFIG_NAME).is_file():
                return cls(folder, load_config(folder / CONFIG_NAME), settings)
        raise ProjectNotFound(
            f"{here} is not an alearn project (no {CONFIG_NAME} here or above). "
            "Run 'alearn init DIR --classes a,b --images PATH' first, or name the project "
            "folder ('alearn --project DIR ...' or ALEARN_PROJECT)."
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
                f"{cfg_path} already exists. Edit it, or overwrite it with force=True "
                "('alearn init --force')."
            )
        images = Path(images)
        image_root = images.resolve()
        if not image_root.is_dir():
            raise ConfigError(f"images {images}: not a directory. Give the folder of images.")
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
        """The project's store, checked to be this project's: a database that another
        project claimed first is refused (two projects never mix their labels)."""
        store = Store(self.database_url)
        mine = self.project_id
        claimed = store.get_meta("project_id")
        if claimed is None:
            store.set_meta("project_id", mine)
        elif claimed != mine:
            safe = store.safe_url
            store.dispose()
            raise ConfigError(
                f"the database {safe} belongs to another alearn project (id {claimed}); this "
                f"project ({self.root}) is {mine}. Point ALEARN_DATABASE_URL at this "
                "project's own database.")
        return store

    @cached_property
    def project_id(self) -> str:
        """A random id made once, kept in ``data/project-id`` (shared with the project
        folder by every host)."""
        import uuid

        path = self.data_dir / "project-id"
        try:
            return path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            pass
        self.data_dir.mkdir(parents=True, exist_ok=True)
        new = uuid.uuid4().hex
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:  # another process made it first
            return path.read_text(encoding="utf-8").strip()
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(new + "\n")
        return new
