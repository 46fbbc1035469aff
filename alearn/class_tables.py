"""The classes of ``alearn.toml`` written down: one ``[classes.<name>]`` table per class.

``classes = ["cat", "dog"]`` names the classes; the table form says more about each::

    [classes.cat]
    description = "A domestic cat, any breed."
    guidance = "A cat toy or a drawing of a cat is not a cat."
    examples = ["cats/001.jpg", "https://example.org/cat.jpg"]
    target = 200

    [classes.dog]

The description, guidance and examples become the instructions Label Studio shows
annotators (:func:`labelstudio.label_config.instructions_html`); the target feeds the
convergence signal ``targets`` (:func:`alearn.stats.stopping.targets_reached`). Either
way ``config.classes`` is the list of names, in order.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import urlsplit

from pydantic import (
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from alearn.config_sections import Section
from alearn.exceptions import ConfigError


class ClassSpec(Section):
    """One ``[classes.<name>]`` table: what annotators read about a class, and its target.

    The description, guidance and examples become the instructions Label Studio shows
    annotators on the labeling page (``alearn ls up``).
    """

    description: str = Field("", description="What the class is, in a sentence.")
    guidance: str = Field(
        "", description="How annotators decide borderline cases (shown with the description)."
    )
    examples: list[str] = Field(
        default_factory=list,
        description="Example images shown to annotators: paths under image_root, or "
                    "http(s) URLs.",
    )
    target: int = Field(
        0, ge=0,
        description="Trusted labels wanted for this class; 0 means no target. The "
                    "convergence signal 'targets' is met when every class with a target "
                    "has reached it.",
    )

    @field_validator("examples")
    @classmethod
    def _check_examples(cls, value: list[str]) -> list[str]:
        for example in value:
            if is_url(example):
                if urlsplit(example).scheme not in ("http", "https"):
                    raise ValueError(f"{example!r}: only http(s) URLs are allowed")
            elif not example.strip() or Path(example).is_absolute() or ".." in Path(
                    example).parts:
                raise ValueError(f"{example!r} is not a path under image_root; give one "
                                 "relative to image_root, or an http(s) URL")
        return value


_CLASS_TABLE = TypeAdapter(dict[str, ClassSpec])


def is_url(example: str) -> bool:
    """Whether an example image is a URL (else a path under the image root)."""
    return "://" in example or example.lower().startswith(("data:", "javascript:"))


def split_class_table(data: Any) -> tuple[Any, dict[str, ClassSpec]]:
    """``classes`` given as a table of ``[classes.<name>]`` tables: the data with the
    class names (in order) in its place, and the classes' non-default specs by name."""
    if not isinstance(data, dict) or not isinstance(data.get("classes"), dict):
        return data, {}
    try:
        table = _CLASS_TABLE.validate_python(data["classes"])
    except ValidationError as exc:
        raise ValidationError.from_exception_data(exc.title, [
            {"type": e["type"], "loc": ("classes", *e["loc"]), "input": e["input"],
             **({"ctx": e["ctx"]} if "ctx" in e else {})}  # type: ignore[typeddict-item]
            for e in exc.errors()]) from None
    specs = {name.strip(): spec for name, spec in table.items() if spec != ClassSpec()}
    return {**data, "classes": list(table)}, specs


class ClassTables(Section):
    """What :class:`alearn.config.ProjectConfig` adds for ``[classes.<name>]`` tables.

    ``classes`` may be a list of names or a table of class tables (in order); either way
    ``config.classes`` is the list of names, and :meth:`class_spec` gives a class's table.
    """

    if TYPE_CHECKING:
        classes: list[str]
        image_root: str

    _class_specs: dict[str, ClassSpec] = PrivateAttr(default_factory=dict)

    @model_validator(mode="wrap")
    @classmethod
    def _class_tables(cls, data: Any, handler: ModelWrapValidatorHandler[Self]) -> Self:
        data, specs = split_class_table(data)
        cfg = handler(data)
        if isinstance(data, dict):  # not on assignment of another field
            cfg._class_specs = specs
        return cfg

    def class_spec(self, name: str) -> ClassSpec:
        """The ``[classes.<name>]`` table of a class (the defaults when it has none)."""
        return self._class_specs.get(name) or ClassSpec()

    def class_targets(self) -> dict[str, int]:
        """Each class that has a target, with its target, in class order."""
        return {c: self.class_spec(c).target for c in self.classes if self.class_spec(c).target}

    def class_table_lines(self) -> list[str]:
        """``[classes.<name>]`` tables for ``alearn.toml`` (none when no class has one),
        the first with every field's description as a comment."""
        import tomli_w

        if not self._class_specs:
            return []
        lines = ["", "# " + str(type(self).model_fields["classes"].description)]
        for i, name in enumerate(self.classes):
            spec = self.class_spec(name)
            lines += [""] if i else []
            lines.append(tomli_w.dumps({"classes": {name: {}}}).strip())
            for field, info in ClassSpec.model_fields.items():
                lines += [f"# {info.description}"] if i == 0 else []
                lines.append(tomli_w.dumps({field: getattr(spec, field)}).strip())
        return lines

    def examples_checked(self, path: Path) -> Self:
        """Self, once every example path names a file under the image root (the image
        root is relative to ``path``, the alearn.toml); else a one-line ConfigError."""
        root = Path(self.image_root)
        try:
            check_example_files(self._class_specs, root if root.is_absolute()
                                else path.parent / root)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        return self


def check_example_files(specs: dict[str, ClassSpec], image_root: Path) -> None:
    """Every example path names a file under ``image_root`` (raises ConfigError)."""
    root = image_root.resolve()
    for name, spec in specs.items():
        for example in spec.examples:
            if is_url(example):
                continue
            found = (root / example).resolve()
            where = f"classes.{name}.examples: {example!r}"
            if not found.is_relative_to(root):
                raise ConfigError(f"{where} leads outside image_root {root}; give a path "
                                  "under image_root, or an http(s) URL.")
            if not found.is_file():
                raise ConfigError(f"{where} is not a file under image_root {root}; fix the "
                                  "path or remove the example.")
