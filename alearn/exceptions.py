"""Every error alearn raises on purpose.

Each message says what was received and what to do about it.

    AlearnError
    ├── ConfigError            bad alearn.toml, bad flag value, unknown name
    │   ├── ProjectNotFound    no alearn.toml here or above
    │   └── UnknownNameError   unknown strategy / backbone / consensus method
    ├── IngestError            a manifest that cannot be read at all
    │   └── ManifestRowError   one bad manifest row (ingest records it and goes on)
    ├── EmptyPoolError         nothing to embed, score or select
    ├── FeatureError           backbone / weights / feature-cache problems
    ├── StoreError             the database is unreachable or inconsistent
    ├── RoundError             a round cannot start, push, pull or close now
    └── LabelStudioError       Label Studio is unreachable or answered with an error
"""

from __future__ import annotations


class AlearnError(Exception):
    """Base class of every error alearn raises on purpose."""


class ConfigError(AlearnError, ValueError):
    """A configuration value, flag or name is not valid."""


class ProjectNotFound(ConfigError):
    """No ``alearn.toml`` in the given directory or any of its parents."""


class UnknownNameError(ConfigError):
    """A name (strategy, backbone, consensus method...) is not registered."""

    def __init__(self, kind: str, name: str, valid: list[str] | tuple[str, ...]) -> None:
        self.kind, self.name, self.valid = kind, name, sorted(valid)
        super().__init__(
            f"Unknown {kind} {name!r}. Valid names are: {', '.join(self.valid)}."
        )


class IngestError(AlearnError):
    """Ingest cannot proceed (for instance an unreadable manifest)."""


class ManifestRowError(IngestError):
    """One manifest row is invalid; ingest records it and carries on."""

    def __init__(self, row: int, message: str) -> None:
        self.row = row
        super().__init__(f"manifest row {row}: {message}")


class EmptyPoolError(AlearnError):
    """There are no items to embed, score or select."""


class FeatureError(AlearnError):
    """Backbone, weights or feature cache problem."""


class StoreError(AlearnError):
    """The store is unreachable or inconsistent."""


class RoundError(AlearnError):
    """A round cannot be started, pushed, pulled or closed in its current state."""


class LabelStudioError(AlearnError):
    """Label Studio is unreachable or answered with an error."""


class FileChangedError(AlearnError):
    """An image's bytes no longer match the sha256 recorded when it was ingested."""
