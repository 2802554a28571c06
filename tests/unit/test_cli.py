"""The ``gnomon`` parser: `--help` lists every command without importing its module."""

from __future__ import annotations

import subprocess
import sys

from gnomon.cli import _COMMANDS, build_parser


def _helps(argv: list[str] | None) -> dict[str, str | None]:
    parser = build_parser(argv)
    [commands] = [a for a in parser._actions if a.dest == "command"]
    return {action.dest: action.help for action in commands._choices_actions}


def test_listed_help_lines_are_the_registered_ones() -> None:
    real = _helps(None)  # every module imported, every parser real
    listed = _helps(["--help"])  # the lines of _COMMANDS
    assert listed == real
    assert set(_COMMANDS) | {"query"} == set(real)


def test_each_command_parses_its_own_arguments_when_chosen() -> None:
    args = build_parser(["check-config", "x.toml"]).parse_args(["check-config", "x.toml"])
    assert args.file == "x.toml" and callable(args.handler)
    args = build_parser(["query", "h"]).parse_args(["query", "--count", "2", "h"])
    assert args.servers == ["h"] and args.count == 2


def test_help_imports_no_other_command_module() -> None:
    code = (
        "import sys\n"
        "from gnomon.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "mods = ['gnomon.sync', 'gnomon.roughtime_cli', 'gnomon.server.cli', 'typing',"
        " 'OpenSSL', 'cryptography', 'asyncio', 'gnomon.client.session']\n"
        "print(' '.join(m for m in mods if m in sys.modules) or 'none')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip().splitlines()[-1] == "none", done.stdout + done.stderr
