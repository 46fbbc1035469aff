"""alearn: active-learning, human-in-the-loop labeling for image classification.

The public API is re-exported here. Light names are imported at once; the ones that
pull in torch, scikit-learn or matplotlib load on first use, so ``import alearn`` (and
the CLI) start fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from alearn.config import ProjectConfig, Settings
from alearn.exceptions import (
    AlearnError,
    ConfigError,
    EmptyPoolError,
    FeatureError,
    FileChangedError,
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

# public name -> module that defines it (imported on first access)
_LAZY = {
    "ingest": "alearn.ingestion",
    "IngestSummary": "alearn.ingestion",
    "read_manifest": "alearn.manifest",
    "ManifestRow": "alearn.manifest",
    "load_backbone": "alearn.features",
    "embed_project": "alearn.features",
    "load_pool_features": "alearn.features",
    "FeatureCache": "alearn.feature_cache",
    "EmbeddingClassifier": "alearn.classifier",
    "STRATEGIES": "alearn.strategies",
    "get_strategy": "alearn.strategies",
    "train_head": "alearn.training",
    "plan_batch": "alearn.selection",
    "Plan": "alearn.selection",
    "Ratings": "alearn.agreement",
    "ratings_matrix": "alearn.agreement",
    "Estimate": "alearn.agreement",
    "AgreementReport": "alearn.agreement",
    "agreement_report": "alearn.agreement",
    "cohen_kappa": "alearn.agreement",
    "pairwise_kappa": "alearn.agreement",
    "fleiss_kappa": "alearn.agreement",
    "krippendorff_alpha": "alearn.agreement",
    "gwet_ac1": "alearn.agreement",
    "percent_agreement": "alearn.agreement",
    "per_class_agreement": "alearn.agreement",
    "Consensus": "alearn.consensus",
    "CONSENSUS_METHODS": "alearn.consensus",
    "get_consensus": "alearn.consensus",
    "majority_vote": "alearn.consensus",
    "dawid_skene": "alearn.consensus",
    "AnnotatorQuality": "alearn.annotator_quality",
    "annotator_quality": "alearn.annotator_quality",
    "close_round": "alearn.closing",
    "convergence_status": "alearn.convergence",
    "ConvergenceStatus": "alearn.convergence",
    "export_dataset": "alearn.dataset_export",
    "ExportSummary": "alearn.dataset_export",
    "write_report": "alearn.report",
}
_ALIASES = {"export": ("alearn.dataset_export", "export_dataset")}

__all__ = [
    "AgreementReport",
    "AlearnError",
    "AnnotatorQuality",
    "CONSENSUS_METHODS",
    "ConfigError",
    "Consensus",
    "ConvergenceStatus",
    "EmbeddingClassifier",
    "EmptyPoolError",
    "Estimate",
    "ExportSummary",
    "FeatureCache",
    "FeatureError",
    "FileChangedError",
    "IngestError",
    "IngestSummary",
    "LabelStudioError",
    "ManifestRow",
    "ManifestRowError",
    "Plan",
    "Project",
    "ProjectConfig",
    "ProjectNotFound",
    "Ratings",
    "RoundError",
    "STRATEGIES",
    "Settings",
    "Store",
    "StoreError",
    "UnknownNameError",
    "__version__",
    "agreement_report",
    "annotator_quality",
    "close_round",
    "cohen_kappa",
    "convergence_status",
    "dawid_skene",
    "embed_project",
    "export",
    "export_dataset",
    "fleiss_kappa",
    "get_consensus",
    "get_strategy",
    "gwet_ac1",
    "ingest",
    "krippendorff_alpha",
    "load_backbone",
    "load_pool_features",
    "majority_vote",
    "pairwise_kappa",
    "per_class_agreement",
    "percent_agreement",
    "plan_batch",
    "ratings_matrix",
    "read_manifest",
    "train_head",
    "write_report",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif name in _ALIASES:
        module, attr = _ALIASES[name]
        value = getattr(importlib.import_module(module), attr)
    else:
        raise AttributeError(f"module 'alearn' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # for type checkers and IDEs
    from alearn.agreement import (  # noqa: F401
        AgreementReport,
        Estimate,
        Ratings,
        agreement_report,
        cohen_kappa,
        fleiss_kappa,
        gwet_ac1,
        krippendorff_alpha,
        pairwise_kappa,
        per_class_agreement,
        percent_agreement,
        ratings_matrix,
    )
    from alearn.dataset_export import export_dataset as export  # noqa: F401
