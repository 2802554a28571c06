"""The settings table: defaults, the example configuration, the schema and the ranges."""

from __future__ import annotations

from gnomon.server.config import EXAMPLE, parse_config


def test_listen_defaults_to_what_the_example_shows() -> None:
    """A config without server.listen serves every address, as the example says (not
    127.0.0.1 alone, silently)."""
    assert parse_config('[server]\nrole = "ntp"\n').listen == ("0.0.0.0", "::")
    assert parse_config(EXAMPLE).listen == ("0.0.0.0", "::")
