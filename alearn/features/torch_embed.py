"""The torch side of embedding: preprocessing, image files to vectors, weight tensors.

The pieces :mod:`alearn.features.backbone` and :mod:`alearn.features.pipeline` are built from.
They know nothing of projects or stores, and what DataLoader worker processes receive
(the dataset, the transform) pickles.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from alearn.exceptions import FeatureError

RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}

# What can go wrong opening one image file; anything else is a bug and propagates.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


@dataclass(frozen=True)
class Preprocess:
    """RGB convert, resize to ``image_size`` squared, scale to [0, 1], normalise.

    The resize squashes (no crop), so the whole image is seen. A JPEG not yet decoded
    is decoded at a reduced scale first when it is at least twice the target size
    (``Image.draft``), which is much faster for photos.
    """

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"

    @property
    def mode(self) -> str:
        """The resize mode, as recorded in the cache key."""
        return f"squash-{self.interpolation}-draft"

    def __call__(self, img: Image.Image) -> torch.Tensor:
        """Return a float32 tensor of shape (3, image_size, image_size)."""
        s = self.image_size
        img.draft(None, (s, s))  # JPEG not yet loaded only; a no-op otherwise
        if img.mode != "RGB":
            img = img.convert("RGB")
        if img.size != (s, s):
            img = img.resize((s, s), RESAMPLE[self.interpolation])
        a = np.asarray(img, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        a = a * (1.0 / (255.0 * std)) - np.asarray(self.mean, dtype=np.float32) / std
        return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))


class ImageFileDataset(torch.utils.data.Dataset):
    """Images read from ``root / path``; a file that cannot be decoded yields its reason.

    ``dataset[i]`` is ``(i, tensor, None)``, or ``(i, None, reason)`` when the file is
    missing or not a decodable image.
    """

    def __init__(self, root: Path, paths: Sequence[str], transform: Preprocess,
                 sha256s: Sequence[str] | None = None) -> None:
        self.root = Path(root)
        self.paths = list(paths)
        self.transform = transform
        self.sha256s = list(sha256s) if sha256s is not None else None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            data = (self.root / self.paths[i]).read_bytes()
            if self.sha256s is not None and hashlib.sha256(data).hexdigest() != self.sha256s[i]:
                return i, None, (f"{self.paths[i]} changed since it was ingested (its sha256 "
                                 "differs); not embedded. Run 'alearn ingest' to see the "
                                 "change, or restore the file.")
            with Image.open(io.BytesIO(data)) as img:
                return i, self.transform(img), None
        except DECODE_ERRORS as exc:
            return i, None, f"cannot decode {self.paths[i]}: {type(exc).__name__}: {exc}"


@dataclass
class Batch:
    """A collated batch: the decodable images stacked, the failures set aside."""

    index: list[int]  # dataset positions of the rows of ``x``
    x: torch.Tensor | None  # (len(index), 3, s, s), None if every image failed
    failed: list[tuple[int, str]]  # (dataset position, reason)

    def pin_memory(self) -> Batch:
        if self.x is not None:
            self.x = self.x.pin_memory()
        return self


def collate(samples: list[tuple[int, torch.Tensor | None, str | None]]) -> Batch:
    ok = [(i, t) for i, t, _ in samples if t is not None]
    failed = [(i, str(reason)) for i, t, reason in samples if t is None]
    x = torch.stack([t for _, t in ok]) if ok else None
    return Batch([i for i, _ in ok], x, failed)


def forward_embed(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    """Embed a batch: ``forward_features`` then ``forward_head(pre_logits=True)``.

    Parameters
    ----------
    model : timm model in eval mode
    x : tensor of shape (n, 3, s, s)

    Returns
    -------
    ndarray of shape (n, dim), float32
    """
    net: Any = model  # timm's methods, which nn.Module's typing does not know
    device = next(model.parameters()).device
    with torch.inference_mode():
        feats = net.forward_features(x.to(device, non_blocking=True))
        emb = net.forward_head(feats, pre_logits=True)
    return emb.reshape(emb.shape[0], -1).float().cpu().numpy()


def embed_files(
    model: torch.nn.Module,
    transform: Preprocess,
    root: Path,
    paths: Sequence[str],
    *,
    on_vectors: Callable[[list[int], np.ndarray], None],
    batch_size: int = 32,
    num_workers: int = 0,
    chunk_size: int = 1024,
    progress: bool = False,
    label: str = "embedding",
    sha256s: Sequence[str] | None = None,
) -> tuple[int, list[tuple[int, str]]]:
    """Embed image files through a DataLoader, handing vectors over in chunks.

    ``on_vectors(positions, X)`` receives the positions (into ``paths``) and the
    ``(len(positions), dim)`` float32 vectors of at least ``chunk_size`` images at a
    time, and of the remainder at the end, also when the loop is interrupted. With
    ``sha256s``, a file whose bytes no longer match is a failure that names it.

    Returns
    -------
    computed : int
        Images embedded.
    failed : list of (position, reason)
        Files that could not be decoded.
    """
    ds = ImageFileDataset(root, paths, transform, sha256s)
    pin = next(model.parameters()).device.type == "cuda"
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=num_workers,
                                         collate_fn=collate, pin_memory=pin)
    index: list[int] = []
    parts: list[np.ndarray] = []
    failed: list[tuple[int, str]] = []
    computed = 0

    def flush() -> None:
        if index:
            on_vectors(list(index), np.concatenate(parts))
            index.clear()
            parts.clear()

    try:
        for batch in track(loader, len(loader), label, progress):
            failed += batch.failed
            if batch.x is None:
                continue
            parts.append(forward_embed(model, batch.x))
            index += batch.index
            computed += len(batch.index)
            if len(index) >= chunk_size:
                flush()
    finally:
        flush()
    return computed, failed


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd: Any = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError, EOFError) as exc:
        raise FeatureError(f"cannot read weights file {path}: {exc}") from None
    for wrapper in ("state_dict", "model_state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(wrapper), dict):
            sd = sd[wrapper]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise FeatureError(f"{path} does not hold a state dict (name -> tensor).")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def load_state(model: torch.nn.Module, sd: dict[str, torch.Tensor], *, source: str) -> None:
    """Load by name when the names match, else by position; shapes checked one by one."""
    target = model.state_dict()
    head = str(getattr(model, "pretrained_cfg", {}).get("classifier") or "\0")
    body = [k for k in target if not k.startswith(head)]
    if all(k in sd for k in body):
        pairs = [(k, sd[k]) for k in body]
    elif len(sd) in (len(target), len(body)):
        names = list(target) if len(sd) == len(target) else body
        pairs = list(zip(names, sd.values(), strict=True))
    else:
        raise FeatureError(
            f"{source}: {len(sd)} tensors whose names do not match {model.__class__.__name__} "
            f"({len(target)} tensors, {len(body)} without the head). Is it the right backbone?"
        )
    for i, (k, t) in enumerate(pairs):
        if tuple(t.shape) != tuple(target[k].shape):
            raise FeatureError(
                f"{source}: tensor {i} has shape {tuple(t.shape)}, but {k} needs "
                f"{tuple(target[k].shape)}. The file does not fit this backbone."
            )
    model.load_state_dict(dict(pairs), strict=False)


def track(it: Any, total: int, what: str, progress: bool) -> Any:
    """``it`` with a progress bar (batches/s and time left) on stderr when ``progress``."""
    from alearn.progress import track as _track

    return _track(it, total, what, progress, "batches") if progress else it
