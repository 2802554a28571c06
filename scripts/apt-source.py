#!/usr/bin/env python3
"""Prints the URI and key ring of the apt source that serves this machine's Debian release.

    python3 scripts/apt-source.py [CODENAME]   ->  "URI<TAB>SIGNED-BY" (SIGNED-BY may be empty)

Reads the machine's configured sources as apt does: /etc/apt/sources.list and
/etc/apt/sources.list.d/*.list (one-line style) and /etc/apt/sources.list.d/*.sources
(deb822 style; ``Enabled: no`` paragraphs skipped). The first ``deb`` entry whose suite
is CODENAME (default: VERSION_CODENAME of /etc/os-release) and whose components include
``main`` wins: that mirror also serves the next release's suite, which
scripts/install-chrony-modern.sh downloads from. Exit status 1 when none matches.
"""

from __future__ import annotations

import glob
import re
import sys
from collections.abc import Iterator

Entry = tuple[list[str], str, list[str], list[str], str]  # types, uri, suites, comps, signed-by


def _one_line(text: str) -> Iterator[Entry]:
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        options = ""
        match = re.match(r"^(\S+)\s+\[([^\]]*)\]\s+(.*)$", line)
        if match:
            kind, options, rest = match.groups()
        else:
            kind, _, rest = line.partition(" ")
        words = rest.split()
        if len(words) < 2:
            continue
        signed = re.search(r"signed-by=(\S+)", options)
        yield [kind], words[0], [words[1]], words[2:], signed.group(1) if signed else ""


def _deb822(text: str) -> Iterator[Entry]:
    for para in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = ""
        for raw in para.splitlines():
            if raw.startswith("#"):
                continue
            if raw[:1] in (" ", "\t") and key:
                fields[key] += " " + raw.strip()
                continue
            key, sep, value = raw.partition(":")
            if not sep:
                key = ""
                continue
            key = key.strip().lower()
            fields[key] = value.strip()
        if not fields or fields.get("enabled", "yes").lower() == "no":
            continue
        signed = fields.get("signed-by", "")
        if "\n" in signed or "BEGIN PGP" in signed:
            signed = ""  # an inline key: let apt use the default key rings
        for uri in fields.get("uris", "").split():
            yield (
                fields.get("types", "").split(),
                uri,
                fields.get("suites", "").split(),
                fields.get("components", "").split(),
                signed,
            )


def entries() -> Iterator[Entry]:
    for path in ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*.list"))]:
        try:
            with open(path, encoding="utf-8") as f:
                yield from _one_line(f.read())
        except OSError:
            continue
    for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        try:
            with open(path, encoding="utf-8") as f:
                yield from _deb822(f.read())
        except OSError:
            continue


def codename() -> str:
    with open("/etc/os-release", encoding="utf-8") as f:
        for line in f:
            if line.startswith("VERSION_CODENAME="):
                return line.split("=", 1)[1].strip().strip('"')
    return ""


def main() -> int:
    want = sys.argv[1] if len(sys.argv) > 1 else codename()
    for types, uri, suites, comps, signed in entries():
        if "deb" in types and want in suites and "main" in comps:
            print(f"{uri.rstrip('/')}\t{signed}")
            return 0
    print(
        f"apt-source: no `deb` source for {want!r} main in /etc/apt/sources.list*", file=sys.stderr
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
