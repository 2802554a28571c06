"""Settings declared once: each field of a configuration dataclass is one row.

A row says where the setting lives in the TOML file (section and key), its default,
one line of documentation, and its range or check; the field's type says which TOML
value it takes. From the rows come the example configuration (``gnomon check-config``
prints it), the schema (unknown sections and keys, wrong types), the range checks with
their one-line errors, and the checks of command-line overrides (``--workers``...).

Adding a section (``[roughtime]``, say) is adding fields to ``ServerConfig`` in
``config.py``, nothing else::

    roughtime_port: int = setting(
        "roughtime", "port", 2002, "UDP port for Roughtime", minimum=0, maximum=65535
    )
    roughtime_long_term_key: Path | None = setting(
        "roughtime", "long_term_key", None, "mode 0600", example="/etc/gnomon/rt.key"
    )

- The type is one of ``bool``, ``int``, ``float`` (TOML integers accepted; NaN and
  infinities refused), ``str``, ``Path`` (a TOML string) or ``tuple[X, ...]`` of those
  (a TOML array), optionally ``| None`` (the setting may be left out).
- ``minimum``/``maximum`` (inclusive), ``positive`` (> 0), ``choices`` and ``check`` (a
  function raising ``ValueError(reason)``) bound the value; ``unit`` ends range errors.
- The example shows ``example`` (else the default); a setting whose default is None
  needs an ``example`` and is shown commented out unless ``shown=True`` (``shown=False``
  comments out any other). Sections appear in the order of their first field; a
  section's own comment goes in the ``sections`` argument of :class:`SettingsTable`.
- Rules that tie several settings together stay in ``config.py`` (``_check_together``).
"""

from __future__ import annotations

import json
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import ConfigError

_META = "gnomon.setting"
_SAME: Any = object()  # example: the default


@dataclass(frozen=True)
class Setting:
    """One row of the table (see the module docstring)."""

    section: str
    key: str
    doc: str = ""
    example: Any = _SAME
    shown: bool | None = None
    minimum: float | None = None
    maximum: float | None = None
    positive: bool = False
    choices: tuple[Any, ...] | None = None
    check: Callable[[Any], object] | None = None
    unit: str = ""

    @property
    def name(self) -> str:
        return f"{self.section}.{self.key}"


def setting(
    section: str,
    key: str,
    default: Any,
    doc: str = "",
    *,
    example: Any = _SAME,
    shown: bool | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    positive: bool = False,
    choices: tuple[Any, ...] | None = None,
    check: Callable[[Any], object] | None = None,
    unit: str = "",
) -> Any:
    """A dataclass field that is a row of the settings table."""
    row = Setting(
        section, key, doc, example, shown, minimum, maximum, positive, choices, check, unit
    )
    return field(default=default, metadata={_META: row})


_SCALARS: dict[type, tuple[str, str]] = {
    bool: ("true or false", "booleans"),
    int: ("an integer", "integers"),
    float: ("a number", "numbers"),
    str: ("a string", "strings"),
    Path: ("a file path (a string)", "file paths"),
}


@dataclass(frozen=True)
class Kind:
    """The TOML values a setting takes, from its field's type."""

    scalar: type
    sequence: bool = False

    @classmethod
    def of(cls, hint: Any, where: str) -> Kind:
        if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
            options = [a for a in typing.get_args(hint) if a is not type(None)]
            if len(options) != 1:
                raise TypeError(f"{where}: one type (or it | None), not {hint}")
            hint = options[0]
        if typing.get_origin(hint) is tuple:
            element, ellipsis = (*typing.get_args(hint), None)[:2]
            if ellipsis is not Ellipsis or element not in _SCALARS:
                raise TypeError(f"{where}: tuple[X, ...] of bool, int, float, str or Path")
            return cls(element, sequence=True)
        if hint not in _SCALARS:
            raise TypeError(f"{where}: unsupported setting type {hint}")
        return cls(hint)

    def describe(self) -> str:
        one, many = _SCALARS[self.scalar]
        return f"a list of {many}" if self.sequence else one

    def _one(self, value: Any) -> bool:
        if self.scalar is float:
            return isinstance(value, int | float) and not isinstance(value, bool)
        if self.scalar is int:
            return isinstance(value, int) and not isinstance(value, bool)
        if self.scalar is Path:
            return isinstance(value, str)
        return isinstance(value, self.scalar)

    def accepts(self, value: Any) -> bool:
        if self.sequence:
            return isinstance(value, list) and all(self._one(v) for v in value)
        return self._one(value)

    def convert(self, value: Any) -> Any:
        convert: Callable[[Any], Any] = (
            float if self.scalar is float else Path if self.scalar is Path else lambda v: v
        )
        return tuple(convert(v) for v in value) if self.sequence else convert(value)


@dataclass(frozen=True)
class Row:
    attribute: str
    setting: Setting
    kind: Kind
    default: Any


def _range_text(row: Setting) -> str:
    unit = f" {row.unit}" if row.unit else ""
    if row.minimum is not None and row.maximum is not None:
        return f"must be between {row.minimum:g} and {row.maximum:g}{unit}"
    if row.minimum is not None:
        return f"must be at least {row.minimum:g}{unit}"
    if row.maximum is not None:
        return f"must be at most {row.maximum:g}{unit}"
    return "must be positive"


def toml_literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))  # a TOML basic string for printable text
    if isinstance(value, tuple | list):
        return "[" + ", ".join(toml_literal(v) for v in value) + "]"
    raise TypeError(f"no TOML literal for {value!r}")


class SettingsTable:
    """The rows of a configuration dataclass whose fields were made with :func:`setting`."""

    def __init__(self, cls: type, sections: Mapping[str, str] | None = None) -> None:
        hints = typing.get_type_hints(cls)
        self.rows: dict[tuple[str, str], Row] = {}
        self.by_attribute: dict[str, Row] = {}
        for item in fields(cls):
            row = item.metadata.get(_META)
            if not isinstance(row, Setting):
                raise TypeError(f"{cls.__name__}.{item.name} is not made with setting()")
            if item.default is MISSING:
                raise TypeError(f"{row.name}: a setting needs a default")
            if (row.section, row.key) in self.rows:
                raise TypeError(f"{row.name} declared twice")
            if item.default is None and row.example is _SAME:
                raise TypeError(f"{row.name}: default None needs an example value")
            entry = Row(item.name, row, Kind.of(hints[item.name], row.name), item.default)
            self.rows[row.section, row.key] = entry
            self.by_attribute[item.name] = entry
        self.sections: dict[str, str] = {row.section: "" for row in self._settings()}
        self.sections.update(sections or {})

    def _settings(self) -> list[Setting]:
        return [row.setting for row in self.rows.values()]

    # --- reading ----------------------------------------------------------------------

    def check(self, row: Row, value: Any, source: str) -> Any:
        """The value converted for the dataclass; ConfigError naming the setting."""
        setting = row.setting
        name = setting.name
        if not row.kind.accepts(value):
            raise ConfigError(f"{source}: {name} must be {row.kind.describe()}")
        value = row.kind.convert(value)
        for one in value if row.kind.sequence else (value,):
            if isinstance(one, float) and not math.isfinite(one):
                raise ConfigError(f"{source}: {name} must be a finite number")
            if isinstance(one, Path) and not str(one).strip(". "):
                raise ConfigError(f"{source}: {name} must name a file")
            if isinstance(one, int | float):
                low, high = setting.minimum, setting.maximum
                if (
                    (low is not None and one < low)
                    or (high is not None and one > high)
                    or (setting.positive and one <= 0)
                ):
                    raise ConfigError(f"{source}: {name} {_range_text(setting)}")
        if setting.choices is not None and value not in setting.choices:
            options = ", ".join(toml_literal(c) for c in setting.choices)
            raise ConfigError(f"{source}: {name} must be one of {options}")
        if setting.check is not None:
            try:
                setting.check(value)
            except (ValueError, TypeError) as exc:
                raise ConfigError(f"{source}: {name}: {exc}") from None
        return value

    def parse(self, document: Mapping[str, Any], source: str) -> dict[str, Any]:
        """Attribute -> checked value, for every setting the TOML document sets."""
        values: dict[str, Any] = {}
        for section, body in document.items():
            if section not in self.sections:
                raise ConfigError(f"{source}: unknown section [{section}]")
            if not isinstance(body, dict):
                raise ConfigError(f"{source}: {section} must be a table")
            for key, value in body.items():
                row = self.rows.get((section, key))
                if row is None:
                    raise ConfigError(f"{source}: unknown key {section}.{key}")
                values[row.attribute] = self.check(row, value, source)
        return values

    def check_attributes(self, changes: Mapping[str, Any], source: str) -> dict[str, Any]:
        """Checked values for dataclass attributes (command-line overrides)."""
        return {
            attribute: self.check(self.by_attribute[attribute], value, source)
            for attribute, value in changes.items()
        }

    # --- writing ----------------------------------------------------------------------

    def example(self, title: str) -> str:
        """The example configuration: every setting, its doc line and example value."""
        lines = [f"# {title}"]
        for section, comment in self.sections.items():
            if lines[-1] != f"# {title}":
                lines.append("")
            lines.append(_with_comment(f"[{section}]", comment))
            for row in self.rows.values():
                setting = row.setting
                if setting.section != section:
                    continue
                value = row.default if setting.example is _SAME else setting.example
                shown = setting.shown if setting.shown is not None else row.default is not None
                text = f"{'' if shown else '# '}{setting.key} = {toml_literal(value)}"
                lines.append(_with_comment(text, setting.doc))
        return "\n".join(lines) + "\n"


def _with_comment(text: str, comment: str, column: int = 28) -> str:
    if not comment:
        return text
    return f"{text:<{column}} # {comment}" if len(text) < column else f"{text}  # {comment}"
