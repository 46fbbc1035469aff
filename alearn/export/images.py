"""Image side of the export: resizing, pixel statistics and the backbone's transforms.

Without ``resize`` an exported image is a byte copy of the original. A resized or
augmented one is re-encoded as PNG (lossless, and byte-identical from run to run); its
EXIF orientation is applied first, so it looks as the original does in a viewer.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from alearn.exceptions import ConfigError

FIT_MODES = ("pad", "crop")


def check_resize(resize: int | None, fit: str) -> None:
    if resize is not None and not 8 <= int(resize) <= 4096:
        raise ConfigError(f"resize {resize}: give a side length from 8 to 4096 pixels.")
    if fit not in FIT_MODES:
        raise ConfigError(f"fit {fit!r}: use 'pad' (letterbox) or 'crop' (center crop).")


def export_mode(img: Image.Image) -> Image.Image:
    """Grayscale stays grayscale; everything else becomes RGB."""
    return img if img.mode in ("L", "RGB") else img.convert("RGB")


def fit_image(img: Image.Image, size: int, fit: str) -> Image.Image:
    """Make ``img`` a ``size`` x ``size`` square.

    ``pad`` scales the long side to ``size`` and centres the image on black (letterbox);
    ``crop`` scales the short side to ``size`` and keeps the centre.
    """
    check_resize(size, fit)
    img = export_mode(ImageOps.exif_transpose(img))
    w, h = img.size
    scale = (min if fit == "pad" else max)(size / w, size / h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    if fit == "crop":
        left, top = (nw - size) // 2, (nh - size) // 2
        return img.crop((left, top, left + size, top + size))
    canvas = Image.new(img.mode, (size, size), 0)
    canvas.paste(img, ((size - nw) // 2, (size - nh) // 2))
    return canvas


class PixelStats:
    """Per-channel mean and standard deviation of RGB pixels in [0, 1].

    Sums are kept as exact integers, so the result does not depend on the order in
    which images are added. Grayscale pixels count for all three channels.
    """

    def __init__(self) -> None:
        self.n = 0
        self.sum = [0, 0, 0]
        self.sq = [0, 0, 0]

    def add(self, img: Image.Image) -> None:
        a = np.asarray(img.convert("RGB"), dtype=np.int64).reshape(-1, 3)
        self.n += a.shape[0]
        for c in range(3):
            self.sum[c] += int(a[:, c].sum())
            self.sq[c] += int((a[:, c] * a[:, c]).sum())

    def to_dict(self) -> dict[str, Any]:
        if self.n == 0:
            return {"pixels": 0, "mean": None, "std": None}
        mean = [s / (255 * self.n) for s in self.sum]
        var = [(q * self.n - s * s) / (255.0**2 * self.n**2) for s, q in zip(self.sum, self.sq,
                                                                             strict=True)]
        return {"pixels": self.n, "mean": [round(m, 6) for m in mean],
                "std": [round(math.sqrt(max(v, 0.0)), 6) for v in var]}


def backbone_transforms(backbone: str, *, image_size: int | None) -> dict[str, Any]:
    """The backbone's recommended train and eval transforms, as JSON.

    Built by ``timm.data.resolve_data_config`` and ``create_transform`` from the
    backbone's pretrained config (no weights are loaded). Each transform is
    ``{"name": class name, "params": {...}}``. ``image_size`` (the export's resize)
    replaces the backbone's default input size.
    """
    import timm
    import timm.data

    pretrained = timm.models.get_pretrained_cfg(backbone) if timm.is_model(backbone) else None
    args = {"input_size": (3, image_size, image_size)} if image_size else {}
    cfg = timm.data.resolve_data_config(
        args=args, pretrained_cfg=pretrained.to_dict() if pretrained is not None else {})
    out: dict[str, Any] = {
        "backbone": backbone,
        "known_to_timm": pretrained is not None,
        "data_config": _jsonable(cfg),
    }
    for key, training in (("train", True), ("eval", False)):
        compose = timm.data.create_transform(**cfg, is_training=training)
        out[key] = [{"name": type(t).__name__, "params": _params(t)}
                    for t in getattr(compose, "transforms", [compose])]
    return out


def _params(t: Any) -> dict[str, Any]:
    skip = {"training"}
    return {k: _jsonable(v) for k, v in sorted(vars(t).items())
            if not k.startswith("_") and k not in skip}


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if hasattr(v, "tolist"):  # tensors and arrays
        return _jsonable(v.tolist())
    if isinstance(v, float):
        return round(v, 6)
    if v is None or isinstance(v, bool | int | str):
        return v
    value = getattr(v, "value", None)  # enums such as InterpolationMode
    if isinstance(value, str | int | float):
        return value
    return f"<{type(v).__name__}>"  # never a repr: it may hold a memory address
