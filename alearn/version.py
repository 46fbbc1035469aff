"""The installed alearn's version, read from the package metadata (one place)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("alearn")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
