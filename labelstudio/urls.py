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
    link = served_link(root, document_root)
    if link is not None:
        return LOCAL_FILES_URL + quote(link.name) + "/"
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


def served_link(image_root: Path | str, document_root: Path | str | None) -> Path | None:
    """The link in ``document_root`` that stands for the image root, if there is one.

    alearn's local Label Studio serves a document root that holds one link to the image
    root and nothing else (see :func:`labelstudio.server_security.serve_only`), so no file beside
    the images (the store, tokens, Label Studio's own database) can be reached.
    """
    if not document_root:
        return None
    root = Path(image_root).resolve()
    doc = Path(document_root)
    try:
        entries = list(doc.iterdir())
    except OSError:
        return None
    for entry in entries:
        if entry.is_symlink() and entry.resolve() == root:
            return entry
    return None


def storage_path(image_root: Path | str, document_root: Path | str | None) -> Path:
    """The image root as Label Studio must register it: the served link when there is
    one (Label Studio refuses a storage outside its document root), else the folder."""
    return served_link(image_root, document_root) or Path(image_root).resolve()


def image_url(base: str, item_path: str) -> str:
    """The task image URL of an item whose path is relative to the image root."""
    return base + quote(Path(item_path).as_posix())
