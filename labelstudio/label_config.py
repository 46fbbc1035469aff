"""The Label Studio labeling interface, built from the project's classes.

One image and one single-choice question. Each class gets a hotkey: ``1``-``9``, then
``0``, then letters (``u`` is skipped: Label Studio binds it to "unselect region").
Classes beyond the last hotkey get none.

:func:`instructions_html` writes the instructions Label Studio shows annotators (the
project's ``expert_instruction``) from the classes' ``[classes.<name>]`` tables.
"""

from __future__ import annotations

import hashlib
import json
import string
from collections.abc import Callable, Mapping, Sequence
from html import escape
from xml.sax.saxutils import quoteattr

from alearn.class_tables import ClassSpec
from alearn.exceptions import ConfigError

#: Names used in the XML; annotations and predictions refer to them.
IMAGE_NAME = "image"
CHOICES_NAME = "label"

HOTKEYS: tuple[str, ...] = (
    tuple("123456789") + ("0",) + tuple(c for c in string.ascii_lowercase if c != "u")
)


def hotkeys(n_classes: int) -> list[str | None]:
    """The hotkey of each of ``n_classes`` classes (None past the last one)."""
    return [HOTKEYS[i] if i < len(HOTKEYS) else None for i in range(n_classes)]


def _check(classes: Sequence[str]) -> list[str]:
    out = [str(c) for c in classes]
    if len(out) < 2 or len(set(out)) != len(out) or any(not c.strip() for c in out):
        raise ConfigError(
            f"classes {out!r}: need at least two distinct, non-empty class names."
        )
    return out


def label_config(classes: Sequence[str], *, between: Sequence[str] = ()) -> str:
    """Label Studio XML: an Image plus single-choice Choices, one Choice per class.

    ``between`` are XML lines shown between the image and the choices (the
    adjudication project shows the earlier votes there).
    """
    names = _check(classes)
    lines = [
        "<View>",
        f'  <Image name="{IMAGE_NAME}" value="$image" zoom="true"/>',
        *between,
        f'  <Choices name="{CHOICES_NAME}" toName="{IMAGE_NAME}" choice="single-radio" '
        'required="true" showInline="true">',
    ]
    for name, key in zip(names, hotkeys(len(names)), strict=True):
        hk = f" hotkey={quoteattr(key)}" if key else ""
        lines.append(f"    <Choice value={quoteattr(name)}{hk}/>")
    lines += ["  </Choices>", "</View>"]
    return "\n".join(lines)  # no trailing newline: Label Studio strips it


def config_hash(classes: Sequence[str]) -> str:
    """A short, stable fingerprint of the ordered class list."""
    payload = json.dumps(_check(classes), ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def choice_result(label: str) -> list[dict]:
    """A Label Studio ``result`` choosing ``label`` (for predictions and annotations)."""
    return [
        {
            "from_name": CHOICES_NAME,
            "to_name": IMAGE_NAME,
            "type": "choices",
            "value": {"choices": [label]},
        }
    ]


def _text(value: str) -> str:
    return "<br>".join(escape(line, quote=False) for line in value.strip().splitlines())


def _attr(value: str) -> str:
    return escape(value, quote=False).replace('"', "&quot;")


def instructions_html(classes: Sequence[str], specs: Mapping[str, ClassSpec],
                      example_url: Callable[[str], str]) -> str:
    """The annotators' instructions: per class its name and hotkey, description, guidance
    and example images (``example_url`` maps an example to the URL Label Studio loads).

    All text is escaped, and the markup is what Label Studio's HTML cleaning keeps as it
    is, so the stored instructions equal these. Empty when no class has a description,
    guidance or example.
    """
    names = _check(classes)
    empty = ClassSpec()
    if all(specs.get(n, empty).model_dump(exclude={"target"})
           == empty.model_dump(exclude={"target"}) for n in names):
        return ""
    parts = ["<h2>Classes</h2>"]
    for name, key in zip(names, hotkeys(len(names)), strict=True):
        spec = specs.get(name, empty)
        hk = f" <kbd>{escape(key)}</kbd>" if key else ""
        parts.append(f"<h3>{_text(name)}{hk}</h3>")
        if spec.description.strip():
            parts.append(f"<p>{_text(spec.description)}</p>")
        if spec.guidance.strip():
            parts.append(f"<p><b>Guidance:</b> {_text(spec.guidance)}</p>")
        if spec.examples:
            imgs = " ".join(
                f'<img src="{_attr(example_url(e))}" alt="{_attr(f"{name} example {i}")}" '
                'height="120">' for i, e in enumerate(spec.examples, 1))
            parts.append(f"<p>{imgs}</p>")
    return "\n".join(parts)
