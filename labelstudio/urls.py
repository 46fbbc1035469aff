"""Task image URLs: Label Studio's local-files serving, or a URL prefix of your own."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from alearn.exceptions import ConfigError

LOCAL_FILES_URL = "/data/local-files/?d="


def image_url_base(
    image_root: Path | str, *, prefix: str = "", document_root: Path | str | None = None
) -> str:
    """What every task image URL starts with; the item's path (URL-quoted) follows.

    With ``prefix``: ``<prefix>/``. Otherwise Label Studio's local-files serving:
    ``/data/local-files/?d=<image root under the document root>/``; the document root
    defaults to the parent of the image root, as :func:`labelstudio.server.start_server`
    sets it.
    """
    if prefix:
        return prefix.rstrip("/") + "/"
    root = Path(image_root).resolve()
    doc = Path(document_root).resolve() if document_root else root.parent
    try:
        rel = root.relative_to(doc)
    except ValueError:
        raise ConfigError(
            f"image root {root} is not below Label Studio's document root {doc} "
            "(LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT). Start Label Studio with a document "
            "root that contains the image root, or set labelstudio.image_url_prefix."
        ) from None
    if rel == Path("."):
        raise ConfigError(
            f"image root {root} is Label Studio's document root itself, which Label Studio "
            "refuses as a storage. Use the image root's parent as the document root."
        )
    return LOCAL_FILES_URL + quote(rel.as_posix()) + "/"


def image_url(base: str, item_path: str) -> str:
    """The task image URL of an item whose path is relative to the image root."""
    return base + quote(Path(item_path).as_posix())
