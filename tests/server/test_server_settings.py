"""The settings table: one row per setting drives the example configuration, the schema,
the range checks and the command-line overrides (issue 10 item 6)."""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pytest

from gnomon.errors import ConfigError
from gnomon.server.config import EXAMPLE, SETTINGS, ServerConfig, override, parse_config
from gnomon.server.settings import Row, SettingsTable, setting

ROWS = list(SETTINGS.rows.values())
IDS = [row.setting.name for row in ROWS]


def _document(row: Row, value: Any) -> str:
    """A config (NTP only: no TLS files needed) setting one value."""
    literal = (
        "[" + ", ".join(_literal(v) for v in value) + "]"
        if isinstance(value, list)
        else (_literal(value))
    )
    server = "[server]\n" if row.attribute == "role" else '[server]\nrole = "ntp"\n'
    line = f"{row.setting.key} = {literal}\n"
    if row.setting.section == "server":
        return server + line
    return f"{server}[{row.setting.section}]\n{line}"


def _literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


def _error(text: str) -> str:
    with pytest.raises(ConfigError) as raised:
        parse_config(text, "t.toml")
    message = str(raised.value)
    assert message.startswith("t.toml: ") and "\n" not in message
    return message


def test_every_field_is_a_row_and_every_row_is_in_the_example() -> None:
    assert [row.attribute for row in ROWS] == [f.name for f in fields(ServerConfig)]
    lines = EXAMPLE.splitlines()
    for row in ROWS:
        key = row.setting.key
        start = [i for i, line in enumerate(lines) if line.startswith(f"[{row.setting.section}]")]
        (line,) = [
            line
            for line in lines[start[0] + 1 :]
            if line.removeprefix("# ").startswith(f"{key} = ")
        ][:1]
        assert row.setting.doc in line


def test_example_shows_each_setting_with_a_value_it_accepts() -> None:
    """Shown lines parse to the example values; commented lines, uncommented, parse too."""
    config = parse_config(EXAMPLE)
    uncommented = EXAMPLE.replace("\n# ", "\n").replace('user = "gnomon"', 'user = "root"')
    every = parse_config(uncommented)
    for row in ROWS:
        setting = row.setting
        shown = f"\n{setting.key} = " in EXAMPLE.split(f"[{setting.section}]")[1].split("\n[")[0]
        if shown:
            expected = row.default if setting.example is _same() else setting.example
            assert getattr(config, row.attribute) == row.kind.convert(_as_toml(expected))
        else:
            assert getattr(config, row.attribute) == row.default
        assert getattr(every, row.attribute) is not None


def _same() -> Any:
    from gnomon.server import settings

    return settings._SAME


def _as_toml(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def test_listen_defaults_to_what_the_example_shows() -> None:
    """A config without server.listen serves every address, as the example says (not
    127.0.0.1 alone, silently)."""
    assert parse_config('[server]\nrole = "ntp"\n').listen == ("0.0.0.0", "::")
    assert parse_config(EXAMPLE).listen == ("0.0.0.0", "::")


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_wrong_type_names_the_setting(row: Row) -> None:
    wrong: Any = {bool: 1, int: "1", float: "1.0", str: 1, Path: 1}[row.kind.scalar]
    if row.kind.sequence:
        wrong = [wrong]
    assert row.setting.name in _error(_document(row, wrong))


NUMERIC = [row for row in ROWS if row.kind.scalar in (int, float) and not row.kind.sequence]


@pytest.mark.parametrize("row", NUMERIC, ids=[row.setting.name for row in NUMERIC])
def test_ranges_checked_at_their_bounds(row: Row) -> None:
    setting = row.setting
    step = 1 if row.kind.scalar is int else 0.001
    for bound, outside in ((setting.minimum, -step), (setting.maximum, step)):
        if bound is None:
            continue
        inside = int(bound) if row.kind.scalar is int else float(bound)
        config = parse_config(_document(row, inside))
        assert getattr(config, row.attribute) == inside
        assert setting.name in _error(_document(row, inside + outside))
    if setting.positive:
        assert setting.name in _error(_document(row, 0))
        assert "positive" in _error(_document(row, -1))


FLOATS = [row for row in ROWS if row.kind.scalar is float]


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("row", FLOATS, ids=[row.setting.name for row in FLOATS])
def test_floats_must_be_finite(row: Row, value: float) -> None:
    assert f"{row.setting.name} must be a finite number" in _error(_document(row, value))


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"workers": 257}, "server.workers must be between 0 and 256"),
        ({"ke_workers": 0}, "server.ke_workers must be between 1 and 256"),
        ({"ke_port": 70000}, "server.ke_port must be between 0 and 65535"),
        ({"ntp_port": -1}, "server.ntp_port must be between 0 and 65535"),
    ],
)
def test_overrides_use_the_table(changes: dict[str, int], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        override(ServerConfig(role="ntp"), "--flag", **changes)


@pytest.mark.parametrize(
    ("flag", "value", "name"),
    [("--ke-port", "70000", "server.ke_port"), ("--workers", "300", "server.workers")],
)
def test_serve_flags_out_of_range_report_one_line(flag: str, value: str, name: str) -> None:
    """Command-line overrides are checked like the file's values (a --ke-port of 70000
    used to end in a traceback from bind)."""
    result = subprocess.run(
        [sys.executable, "-m", "gnomon", "serve", "--demo", flag, value],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"gnomon: {flag}: {name}"), result.stderr


def test_a_new_section_is_rows_only() -> None:
    """What the module docstring promises: a dataclass of rows gives example, schema,
    ranges and conversion, with nothing else written."""

    @dataclass(frozen=True, kw_only=True)
    class Config:
        port: int = setting("rt", "port", 2002, "UDP port", minimum=0, maximum=65535)
        key_file: Path | None = setting("rt", "key", None, "mode 0600", example="/k")
        max_wait: float = setting("rt", "max_wait", 0.001, "seconds", positive=True)

    table = SettingsTable(Config, sections={"rt": "a new protocol"})
    example = table.example("test")
    assert "[rt]" in example and "a new protocol" in example
    assert "port = 2002" in example and '# key = "/k"' in example
    values = table.parse({"rt": {"port": 0, "key": "/etc/k", "max_wait": 1}}, "t")
    assert Config(**values) == Config(port=0, key_file=Path("/etc/k"), max_wait=1.0)
    for document, fragment in (
        ({"rt": {"port": 65536}}, "rt.port must be between 0 and 65535"),
        ({"rt": {"max_wait": math.nan}}, "rt.max_wait must be a finite number"),
        ({"rt": {"bogus": 1}}, "unknown key rt.bogus"),
        ({"other": {}}, "unknown section [other]"),
    ):
        with pytest.raises(ConfigError) as raised:
            table.parse(document, "t")
        assert fragment in str(raised.value)


def test_a_field_without_a_row_is_refused() -> None:
    @dataclass(frozen=True)
    class Config:
        plain: int = 1

    with pytest.raises(TypeError, match="setting"):
        SettingsTable(Config)
