"""The project's stored Label Studio connection: its URL and a token file.

``alearn ls up`` and ``alearn ls connect`` keep them in ``<project>/data/connection/``
(a folder of mode 0700): ``labelstudio.json`` holds ``{"url": ...}`` and
``labelstudio.token`` the API token, one line, mode 0600. Both are written atomically
(:mod:`alearn.atomic`). The folder is beside Label Studio's data directory, never in
its served document root (``data/labelstudio/served/``) or in an export, and it is
refused inside the image root, which Label Studio serves.

:meth:`alearn.config.Settings.for_project` reads it for every command and worker opened
in the project; ``ALEARN_LS_URL``, ``ALEARN_LS_TOKEN`` and ``ALEARN_LS_TOKEN_FILE``
still override it. Nothing here ever puts the token in a message.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from alearn import atomic
from alearn.exceptions import ConfigError

CONNECTION_DIR = "connection"
URL_FILE = "labelstudio.json"
TOKEN_FILE = "labelstudio.token"

_FIX = "Store it again with 'alearn ls connect URL' (or 'alearn ls up'), or forget it with " \
       "'alearn ls disconnect'."


@dataclass(frozen=True)
class Connection:
    """A stored connection: the URL, and the file that holds the token (never the token)."""

    url: str
    url_file: Path
    token_file: Path


def folder(data_dir: Path) -> Path:
    """Where the project whose data directory is ``data_dir`` keeps its connection."""
    return Path(data_dir) / CONNECTION_DIR


def read(data_dir: Path) -> Connection | None:
    """The stored connection, or None when none is stored."""
    where = folder(data_dir)
    url_file, token_file = where / URL_FILE, where / TOKEN_FILE
    try:
        text = url_file.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{url_file}: cannot read it ({_why(exc)}). {_FIX}") from None
    try:
        url = json.loads(text)["url"]
        if not isinstance(url, str):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"{url_file}: not a stored connection (it needs "
                          f'{{"url": "http://..."}}). {_FIX}') from None
    if not token_file.is_file():
        raise ConfigError(f"{token_file} is missing: the stored connection has no token. "
                          f"{_FIX}")
    return Connection(url, url_file, token_file)


def read_token(token_file: Path) -> str:
    """The token in a stored token file (its mode is set back to 0600 if it was widened)."""
    try:
        if token_file.stat().st_mode & 0o077:
            token_file.chmod(0o600)
        token = token_file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{token_file}: cannot read the stored token ({_why(exc)}). "
                          f"{_FIX}") from None
    if not token:
        raise ConfigError(f"{token_file} is empty. {_FIX}")
    return token


def save(data_dir: Path, url: str, token: str, *, image_root: Path | None = None) -> Connection:
    """Store ``url`` (already checked) and ``token`` for the project: the token file is
    0600 from its first byte, in a folder of mode 0700. Refused inside ``image_root``."""
    where = folder(data_dir).resolve()
    if image_root is not None:
        check_outside(data_dir, image_root)
    token = token.strip()
    if not token or "\n" in token:
        raise ConfigError("the Label Studio token must be one non-empty line.")
    where.mkdir(mode=0o700, parents=True, exist_ok=True)
    if where.stat().st_mode & 0o077:
        where.chmod(0o700)

    atomic.write_text(where / TOKEN_FILE, token + "\n", mode=0o600)
    atomic.write_text(where / URL_FILE, json.dumps({"url": url}) + "\n", mode=0o600)
    return Connection(url, where / URL_FILE, where / TOKEN_FILE)


def check_outside(data_dir: Path, image_root: Path) -> None:
    """Refuse a connection folder inside the image root, which Label Studio serves."""
    where, root = folder(data_dir).resolve(), Path(image_root).resolve()
    if where == root or root in where.parents:
        raise ConfigError(
            f"the project's data folder {where.parent} is inside the image root {root}, "
            "which Label Studio serves: the token would be readable by annotators. Keep "
            "the images in a folder of their own ('image_root' in alearn.toml).")


def forget(data_dir: Path) -> bool:
    """Remove the stored connection; True if there was one."""
    where = folder(data_dir)
    found = False
    for name in (URL_FILE, TOKEN_FILE):
        try:
            (where / name).unlink()
            found = True
        except FileNotFoundError:
            pass
    return found


#: the read token of the live status page (``alearn webhook serve``): distinct from the
#: webhook secret and the Label Studio token, kept beside them with the same care
STATUS_TOKEN_FILE = "status.token"


def status_token(data_dir: Path, *, rotate: bool = False,
                 image_root: Path | None = None) -> str:
    """The project's status-page read token, made (32 random bytes, URL-safe; 0600 from
    its first byte, in the 0700 connection folder) when there is none or ``rotate``.
    Refused inside ``image_root``, which Label Studio serves."""
    import secrets

    if image_root is not None:
        check_outside(data_dir, image_root)
    where = folder(data_dir)
    path = where / STATUS_TOKEN_FILE
    if not rotate and path.is_file():
        token = read_token(path)
        if len(token) >= 32:
            return token
    where.mkdir(mode=0o700, parents=True, exist_ok=True)
    if where.stat().st_mode & 0o077:
        where.chmod(0o700)
    token = secrets.token_urlsafe(32)
    atomic.write_text(path, token + "\n", mode=0o600)
    return token


def _why(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or type(exc).__name__
