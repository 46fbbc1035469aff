"""What the local Label Studio is given, and no more: its security settings.

- Its environment (:func:`server_env`): only the caller's variables it needs
  (:data:`PASS_ENV`; alearn's own tokens and database URLs never reach it), sign-up
  closed (only an invite link signs a person up), SSRF protection on with only the
  webhook receiver's host allowed (:func:`banned_subnets`), local files served from one
  document root, no update check, analytics or error reporting.
- Its document root (:func:`serve_only`): a folder that holds a link to the image root
  and nothing else.
- Its admin account (:func:`admin_credentials`), generated once and kept private.

Starting and stopping the process is :mod:`labelstudio.server`.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
from collections.abc import Sequence
from pathlib import Path

from alearn.exceptions import ConfigError

ADMIN_FILE = "admin.json"
ADMIN_EMAIL = "admin@alearn.local"


#: The only variables of the caller's environment Label Studio's process gets; alearn's
#: own (tokens, database URLs) never reach it.
PASS_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "SSL_CERT_FILE",
             "REQUESTS_CA_BUNDLE", "PYTHONIOENCODING")


def banned_subnets(allow_hosts: Sequence[str] = ()) -> list[str]:
    """Label Studio's default banned (reserved) subnets, less the given hosts' addresses:
    SSRF protection stays on, and only a webhook receiver's host is reachable.

    The allowance is per address, not per port: run the receiver on an address of its
    own (e.g. ``alearn webhook serve --host 127.0.0.2`` with ``--allow-webhook-host
    127.0.0.2``), so nothing else on the machine becomes reachable."""
    import ipaddress

    reserved = ["0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
                "172.16.0.0/12", "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24",
                "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24",
                "224.0.0.0/4", "240.0.0.0/4", "255.255.255.255/32", "::/128", "::1/128",
                "::ffff:0:0/96", "64:ff9b::/96", "100::/64", "2001::/32", "2001:10::/28",
                "2001:20::/28", "2001:db8::/32", "2002::/16", "fc00::/7", "fe80::/10",
                "ff00::/8"]
    nets = [ipaddress.ip_network(n) for n in reserved]
    for host in allow_hosts:
        try:
            ip = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            try:
                ip = ipaddress.ip_address(socket.getaddrinfo(host, None)[0][4][0])
            except (OSError, IndexError, ValueError):
                raise ConfigError(f"webhook host {host!r}: not an address, and it does not "
                                  "resolve. Give the receiver's IP address.") from None
        addr = ipaddress.ip_network(ip)
        out: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for net in nets:
            if addr.version == net.version and addr.subnet_of(net):  # type: ignore[arg-type]
                out += list(net.address_exclude(addr))  # type: ignore[arg-type]
            else:
                out.append(net)
        nets = out
    return [str(n) for n in nets]


def server_env(*, document_root: Path, username: str, password: str, token: str,
               allow_hosts: Sequence[str] = ()) -> dict[str, str]:
    """The whole environment of the Label Studio process: the admin's password and token
    (in the environment, so ``ps`` does not show them) and its security settings."""
    return {
        **{k: os.environ[k] for k in PASS_ENV if k in os.environ},
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(document_root),
        "LABEL_STUDIO_USERNAME": username,
        "LABEL_STUDIO_PASSWORD": password,
        "LABEL_STUDIO_USER_TOKEN": token,
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
        "SSRF_PROTECTION_ENABLED": "true",
        "USE_DEFAULT_BANNED_SUBNETS": "false",
        "USER_ADDITIONAL_BANNED_SUBNETS": ",".join(banned_subnets(list(allow_hosts))),
        "LABEL_STUDIO_LATEST_VERSION_CHECK": "false",
        "LABEL_STUDIO_COLLECT_ANALYTICS": "false",
        "LABEL_STUDIO_SENTRY_DSN": "",
        "LABEL_STUDIO_FRONTEND_SENTRY_DSN": "",
    }


SERVED_DIR = "served"
SERVED_LINK = "images"


def serve_only(data_dir: Path | str, image_root: Path | str) -> Path:
    """A document root for Label Studio that holds one link, to the image root, and
    nothing else: ``<data_dir>/served/images -> image_root``. Returns the document root.

    Label Studio serves local files below its document root and registers storages only
    below it; with this root, no file beside the images (the store, token files, Label
    Studio's own database) can be served or registered.
    """
    served = Path(data_dir).resolve() / SERVED_DIR
    served.mkdir(parents=True, exist_ok=True)
    link = served / SERVED_LINK
    target = Path(image_root).resolve()
    if link.is_symlink() and link.resolve() == target:
        return served
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(target, target_is_directory=True)
    for extra in served.iterdir():  # nothing else is ever served
        if extra != link:
            raise ConfigError(f"{served} must hold only the link {SERVED_LINK}; remove "
                              f"{extra.name} from it.")
    return served


def local_document_root(data_dir: Path | str) -> Path | None:
    """The served root of the local server, if ``alearn ls up`` made one."""
    served = Path(data_dir).resolve() / SERVED_DIR
    return served if (served / SERVED_LINK).is_symlink() else None


def admin_credentials(data_dir: Path | str) -> dict[str, str]:
    """The local server's admin ``{email, password, token}``, generated on first use.

    Kept in ``<data_dir>/admin.json``, readable by its owner only (mode 0600).
    """
    path = Path(data_dir) / ADMIN_FILE
    if path.exists():
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
        creds = json.loads(path.read_text(encoding="utf-8"))
        if not {"email", "password", "token"} <= set(creds):
            raise ConfigError(f"{path} lacks email, password or token; delete it to regenerate.")
        return creds
    path.parent.mkdir(parents=True, exist_ok=True)
    creds = {
        "email": ADMIN_EMAIL,
        "password": secrets.token_urlsafe(12),
        "token": secrets.token_hex(20),
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(creds, f, indent=2)
    return creds
