"""Project configuration (``alearn.toml``) and environment settings (``ALEARN_*``).

``alearn.toml`` holds what a team decides about a project: its classes, image root,
backbone, strategy, batch size, overlap and thresholds. Each field carries its default
and a description (the sections are in :mod:`alearn.config_sections`); ``alearn init``
writes them all, commented, so the file documents itself.

URLs and secrets never go in ``alearn.toml``: they come from ``ALEARN_*`` environment
variables (or a token file), read by :class:`Settings`, and for Label Studio from the
project's stored connection (:mod:`alearn.connection`) when the environment names none.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import tomli_w
from pydantic import BaseModel, Field, PrivateAttr, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from alearn import atomic
from alearn.class_tables import ClassTables
from alearn.config_sections import (
    AgreementConfig,
    ConvergenceConfig,
    EmbedConfig,
    HeadConfig,
    IngestConfig,
    LabelStudioConfig,
    ReviewConfig,
    RoundsConfig,
)
from alearn.exceptions import ConfigError

__all__ = [
    "CONFIG_NAME", "AgreementConfig", "ConvergenceConfig", "EmbedConfig", "HeadConfig",
    "IngestConfig", "LabelStudioConfig", "ProjectConfig", "RoundsConfig", "Settings",
    "check_ls_url", "load_config", "parse_classes", "render_config", "safe_url", "write_config",
]

CONFIG_NAME = "alearn.toml"


class ProjectConfig(ClassTables):
    """The contents of ``alearn.toml``."""

    name: str = Field("alearn", description="Project name, shown in reports and Label Studio.")
    classes: list[str] = Field(..., description="Class names in order, or [classes.<name>] tables.")
    image_root: str = Field(
        "images", description="Folder holding the images; relative paths are to this file."
    )
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    embed: EmbedConfig = Field(default_factory=EmbedConfig)
    head: HeadConfig = Field(default_factory=HeadConfig)
    rounds: RoundsConfig = Field(default_factory=RoundsConfig)
    agreement: AgreementConfig = Field(default_factory=AgreementConfig)
    labelstudio: LabelStudioConfig = Field(default_factory=LabelStudioConfig)
    convergence: ConvergenceConfig = Field(default_factory=ConvergenceConfig)
    review: ReviewConfig = Field(default_factory=ReviewConfig)

    @field_validator("classes")
    @classmethod
    def _check_classes(cls, v: list[str]) -> list[str]:
        v = [c.strip() for c in v]
        if len(v) < 2:
            raise ValueError(f"need at least two classes, got {v!r}")
        if any(not c for c in v):
            raise ValueError("class names must not be empty")
        seen: set[str] = set()
        dups = sorted({c for c in v if c in seen or seen.add(c)})  # type: ignore[func-returns-value]
        if dups:
            raise ValueError(f"duplicate class names {dups}; each class must appear once")
        return v


def parse_classes(text: str) -> list[str]:
    """Parse ``"cat,dog"`` into a checked class list (raises ConfigError)."""
    try:
        return ProjectConfig(classes=text.split(",")).classes
    except ValidationError as exc:
        raise ConfigError(f"classes {text!r}: {_first_error(exc)}") from None


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    return f"{loc}: {err['msg']}" if loc else err["msg"]


def load_config(path: Path) -> ProjectConfig:
    """Read and validate an ``alearn.toml``."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc}). Fix the file and retry.") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}). Save it as UTF-8 "
                          "and retry.") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror}).") from None
    try:
        cfg = ProjectConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"{path}: {problems}") from None
    return cfg.examples_checked(path)


def render_config(cfg: ProjectConfig) -> str:
    """Render the config as TOML with every field's description as a comment."""
    lines = ["# alearn project configuration. Every key is shown with its value;",
             "# URLs and secrets come from ALEARN_* environment variables instead.", ""]
    sections: list[tuple[str, BaseModel]] = []
    for name, field in type(cfg).model_fields.items():
        value = getattr(cfg, name)
        if isinstance(value, BaseModel):
            sections.append((name, value))
        elif name != "classes" or not cfg.class_table_lines():
            lines += _render_field(field.description, name, value)
    lines += cfg.class_table_lines()
    for name, section in sections:
        lines += ["", f"[{name}]"]
        for fname, field in type(section).model_fields.items():
            lines += _render_field(field.description, fname, getattr(section, fname))
    return "\n".join(lines) + "\n"


def _render_field(description: str | None, key: str, value: Any) -> list[str]:
    out = [f"# {description}"] if description else []
    # an unset optional field (None has no TOML form) is shown commented out
    out.append(f"# {key} = (unset)" if value is None else tomli_w.dumps({key: value}).strip())
    return out


def safe_url(url: str) -> str:
    """A URL with any password (and any user) replaced by ``***``, for messages."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(str(url))
        if parts.username is None and parts.password is None:
            return str(url)
        host = parts.hostname or ""
        if parts.port:
            host += f":{parts.port}"
        return urlunsplit(parts._replace(netloc=f"***@{host}"))
    except ValueError:
        return "<unparseable URL>"


def write_config(cfg: ProjectConfig, path: Path) -> None:
    atomic.write_text(path, render_config(cfg))


class Settings(BaseSettings):
    """Environment settings (``ALEARN_*``): URLs and secrets, never in alearn.toml."""

    model_config = SettingsConfigDict(env_prefix="ALEARN_", extra="ignore")

    database_url: str | None = Field(
        None, description="SQLAlchemy URL; unset uses sqlite:///<project>/alearn.db."
    )
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis for queues and locks.")
    ls_url: str = Field("http://127.0.0.1:8080", description="Label Studio base URL.")
    ls_token: SecretStr | None = Field(None, description="Label Studio API token.")
    ls_token_file: Path | None = Field(None, description="File holding the Label Studio token.")
    ls_document_root: Path | None = Field(
        None,
        description=(
            "Label Studio's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT as this host sees it; "
            "unset means the parent of the image root (as 'alearn ls up' sets it)."
        ),
    )
    webhook_secret: SecretStr | None = Field(
        None, description="Shared secret Label Studio sends to the webhook receiver."
    )
    queue_prefix: str = Field("alearn", description="Prefix of the RQ queue names.")
    # the project's stored token file, set by for_project (never read from the environment)
    _stored_token_file: Path | None = PrivateAttr(None)
    _stored_error: str | None = PrivateAttr(None)  # why the stored connection is unusable

    @classmethod
    def load(cls, **values: Any) -> Settings:
        """The settings from the environment; a bad value is a one-line ConfigError that
        names the variable and never echoes a password."""
        try:
            return cls(**values)
        except ValidationError as exc:
            problems = "; ".join(
                f"ALEARN_{str(e['loc'][0]).upper() if e['loc'] else '?'}: "
                f"{str(e['msg']).removeprefix('Value error, ')}" for e in exc.errors())
            raise ConfigError(f"{problems}. Fix the environment variable and retry.") from None

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            url = make_url(value)
        except ArgumentError:
            raise ValueError(f"{safe_url(value)!r} is not a database URL; use e.g. "
                             "postgresql+psycopg://user@host/db or sqlite:///path.db") from None
        if url.get_backend_name() not in ("sqlite", "postgresql"):
            raise ValueError(f"{safe_url(value)!r}: alearn supports sqlite and postgresql")
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str) -> str:
        from urllib.parse import urlsplit

        parts = urlsplit(value)
        if parts.scheme not in ("redis", "rediss", "unix") or (
                parts.scheme != "unix" and not parts.hostname):
            raise ValueError(f"{safe_url(value)!r} is not a Redis URL; use e.g. "
                             "redis://127.0.0.1:6379/0")
        try:
            _ = parts.port
        except ValueError:
            raise ValueError(f"{safe_url(value)!r} has a bad port") from None
        return value

    @field_validator("ls_url")
    @classmethod
    def _check_ls_url(cls, value: str) -> str:
        return check_ls_url(value)

    def for_project(self, data_dir: Path) -> Settings:
        """These settings with the project's stored Label Studio connection
        (:mod:`alearn.connection`, kept by 'alearn ls up' or 'alearn ls connect') where the
        environment names none: its URL unless ALEARN_LS_URL is set, and its token unless
        ALEARN_LS_TOKEN or ALEARN_LS_TOKEN_FILE is set, and only for its own URL.

        A broken stored connection is reported when the token is asked for, so commands
        that need no Label Studio (and 'alearn ls disconnect') still run."""
        from alearn import connection

        try:
            stored = connection.read(data_dir)
            url = check_ls_url(stored.url) if stored is not None else ""
        except (ConfigError, ValueError) as exc:
            out = self.model_copy()
            out._stored_error = str(exc) if isinstance(exc, ConfigError) else (
                f"{connection.folder(data_dir) / connection.URL_FILE}: {exc}. Store it "
                "again with 'alearn ls connect URL'.")
            return out
        if stored is None:
            return self
        out = self.model_copy(update={} if "ls_url" in self.model_fields_set else {"ls_url": url})
        if out.ls_token is None and out.ls_token_file is None and out.ls_url == url:
            out._stored_token_file = stored.token_file
        return out

    def label_studio_token(self) -> str | None:
        """The token from ALEARN_LS_TOKEN, else from ALEARN_LS_TOKEN_FILE, else the
        project's stored one (:meth:`for_project`)."""
        if self.ls_token is not None:
            return self.ls_token.get_secret_value()
        if self.ls_token_file is not None:
            try:
                return self.ls_token_file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(
                    f"ALEARN_LS_TOKEN_FILE={self.ls_token_file}: cannot read it ({exc.strerror})."
                ) from None
        if self._stored_error is not None:
            raise ConfigError(self._stored_error)
        if self._stored_token_file is not None:
            from alearn import connection

            return connection.read_token(self._stored_token_file)
        return None


def check_ls_url(value: str) -> str:
    """A Label Studio base URL, checked and without its trailing slash (ValueError says
    what is wrong, never echoing a password)."""
    from urllib.parse import urlsplit

    parts = urlsplit(value.strip())
    try:
        port_ok = parts.port is None or 0 < parts.port < 65536
    except ValueError:
        port_ok = False
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        raise ValueError(f"{safe_url(value)!r} is not a Label Studio URL; use e.g. "
                         "http://127.0.0.1:8080")
    if parts.username or parts.password:
        raise ValueError("the Label Studio URL must not carry a user or password; put "
                         "the API token in ALEARN_LS_TOKEN")
    return value.strip().rstrip("/")
