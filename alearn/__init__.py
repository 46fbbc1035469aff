"""alearn: active-learning, human-in-the-loop labeling for image classification."""

from alearn.config import ProjectConfig, Settings
from alearn.exceptions import (
    AlearnError,
    ConfigError,
    EmptyPoolError,
    FeatureError,
    IngestError,
    LabelStudioError,
    ManifestRowError,
    ProjectNotFound,
    RoundError,
    StoreError,
    UnknownNameError,
)
from alearn.project import Project
from alearn.store import Store

__version__ = "0.1.0"

__all__ = [
    "AlearnError",
    "ConfigError",
    "EmptyPoolError",
    "FeatureError",
    "IngestError",
    "LabelStudioError",
    "ManifestRowError",
    "Project",
    "ProjectConfig",
    "ProjectNotFound",
    "RoundError",
    "Settings",
    "Store",
    "StoreError",
    "UnknownNameError",
    "__version__",
]
