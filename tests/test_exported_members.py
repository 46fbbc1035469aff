"""The public surface: every name in alearn.__all__ resolves, and nothing is missing."""

from __future__ import annotations

import subprocess
import sys

import alearn


def test_all_exports_resolve() -> None:
    for name in alearn.__all__:
        assert getattr(alearn, name) is not None, name


def test_export_alias_is_the_export_function() -> None:
    from alearn.dataset_export import export_dataset

    assert alearn.export is export_dataset


def test_public_functions_are_exported() -> None:
    # every public callable of these modules is reachable from the package
    import alearn.consensus
    import alearn.ingestion

    for module, names in ((alearn.ingestion, ["ingest"]),
                          (alearn.consensus, ["majority_vote", "dawid_skene", "get_consensus"])):
        for name in names:
            assert getattr(alearn, name) is getattr(module, name)


def test_import_alearn_does_not_load_torch() -> None:
    code = "import sys, alearn; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_all_is_exactly_the_eager_and_lazy_names() -> None:
    import alearn.exceptions

    eager = {n for n in vars(alearn.exceptions) if n.endswith(("Error", "NotFound"))}
    expected = eager | {"Project", "ProjectConfig", "Settings", "Store", "__version__"}
    expected |= set(alearn._LAZY) | set(alearn._ALIASES)
    assert sorted(alearn.__all__) == sorted(expected)
