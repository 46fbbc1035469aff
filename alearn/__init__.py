"""alearn: active-learning, human-in-the-loop labeling for image classification.

The public API is re-exported here. Light names are imported at once; the ones that
pull in SQLAlchemy, pydantic, torch, scikit-learn or matplotlib load on first use, so
``import alearn`` (the CLI, a decode worker that needs only Pillow) starts fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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

# public name -> module that defines it (imported on first access)
_LAZY = {
    "__version__": "alearn.version",  # read from the package metadata on first use
    "ProjectConfig": "alearn.config",
    "Settings": "alearn.config",
    "Project": "alearn.project",
    "Store": "alearn.store",
    "ingest": "alearn.ingestion.driver",
    "IngestSummary": "alearn.ingestion.records",
    "read_manifest": "alearn.ingestion.manifest",
    "ManifestRow": "alearn.ingestion.manifest",
    "load_backbone": "alearn.features.backbone",
    "embed_project": "alearn.features.pipeline",
    "load_pool_features": "alearn.features.pipeline",
    "FeatureCache": "alearn.features.cache",
    "EmbeddingClassifier": "alearn.model.head",
    "STRATEGIES": "alearn.query.strategies",
    "get_strategy": "alearn.query.strategies",
    "train_head": "alearn.model.training",
    "plan_batch": "alearn.query.selection",
    "Plan": "alearn.query.selection",
    "Ratings": "alearn.stats.ratings",
    "ratings_matrix": "alearn.stats.ratings",
    "Estimate": "alearn.stats.bootstrap",
    "AgreementReport": "alearn.stats.agreement",
    "agreement_report": "alearn.stats.agreement",
    "cohen_kappa": "alearn.stats.pairwise",
    "pairwise_kappa": "alearn.stats.pairwise",
    "fleiss_kappa": "alearn.stats.agreement",
    "krippendorff_alpha": "alearn.stats.agreement",
    "gwet_ac1": "alearn.stats.agreement",
    "percent_agreement": "alearn.stats.agreement",
    "per_class_agreement": "alearn.stats.agreement",
    "Consensus": "alearn.stats.consensus",
    "CONSENSUS_METHODS": "alearn.stats.consensus",
    "get_consensus": "alearn.stats.consensus",
    "majority_vote": "alearn.stats.consensus",
    "dawid_skene": "alearn.stats.consensus",
    "AnnotatorQuality": "alearn.stats.annotators",
    "annotator_quality": "alearn.stats.annotators",
    "close_round": "alearn.rounds.close",
    "RoundMetrics": "alearn.rounds.metrics",
    "convergence_status": "alearn.rounds.convergence",
    "ConvergenceStatus": "alearn.stats.stopping",
    "export_dataset": "alearn.export.dataset",
    "ExportSummary": "alearn.export.dataset",
    "write_report": "alearn.report.html",
}

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
    "RoundMetrics",
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
    else:
        raise AttributeError(f"module 'alearn' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # for type checkers and IDEs
    from alearn.config import ProjectConfig, Settings  # noqa: F401
    from alearn.project import Project  # noqa: F401
    from alearn.stats.agreement import (  # noqa: F401
        AgreementReport,
        agreement_report,
        fleiss_kappa,
        gwet_ac1,
        krippendorff_alpha,
        per_class_agreement,
        percent_agreement,
    )
    from alearn.stats.bootstrap import Estimate  # noqa: F401
    from alearn.stats.pairwise import cohen_kappa, pairwise_kappa  # noqa: F401
    from alearn.stats.ratings import Ratings, ratings_matrix  # noqa: F401
    from alearn.store import Store  # noqa: F401
    from alearn.version import __version__  # noqa: F401
