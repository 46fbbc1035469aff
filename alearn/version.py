"""The installed alearn's version, read from the package metadata (one place).

``alearn.version.__version__`` (and ``alearn.__version__``) is looked up on first use:
importing :mod:`importlib.metadata` and reading the distribution costs about 50 ms, which
no command but the ones that print the version should pay.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    __version__: str  # see __getattr__


@cache
def installed_version() -> str:
    """The installed distribution's version ("0+unknown" in a source tree that was never
    installed); read once per process."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("alearn")
    except PackageNotFoundError:
        return "0+unknown"


def __getattr__(name: str) -> Any:
    if name == "__version__":
        return installed_version()
    raise AttributeError(f"module 'alearn.version' has no attribute {name!r}")
