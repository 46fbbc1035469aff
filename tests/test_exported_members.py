"""The public surface: every name in alearn.__all__ resolves, and nothing is missing."""

from __future__ import annotations

import subprocess
import sys

import alearn

EXPECTED_PUBLIC_NAMES = {
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
}


def test_all_exports_resolve() -> None:
    for name in alearn.__all__:
        assert getattr(alearn, name) is not None, name


def test_public_functions_are_exported() -> None:
    # every public callable of these modules is reachable from the package
    import alearn.ingestion.driver
    import alearn.stats.consensus

    consensus_names = ["majority_vote", "dawid_skene", "get_consensus"]
    for module, names in ((alearn.ingestion.driver, ["ingest"]),
                          (alearn.stats.consensus, consensus_names)):
        for name in names:
            assert getattr(alearn, name) is getattr(module, name)


def test_import_alearn_does_not_load_torch() -> None:
    code = "import sys, alearn; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_all_is_exactly_the_documented_names() -> None:
    # written out by hand: a name added to or dropped from the public surface shows here
    assert set(alearn.__all__) == EXPECTED_PUBLIC_NAMES
    assert len(alearn.__all__) == len(EXPECTED_PUBLIC_NAMES)  # no duplicates
