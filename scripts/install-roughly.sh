#!/usr/bin/env bash
# Installs roughly 0.3.0 (MIT, a Python Roughtime client and server) into a venv
# of its own, .peers/roughly/, for the Roughtime interop tests.
#
# roughly's metadata asks for Python >= 3.12 but it runs on 3.11, hence
# --ignore-requires-python; a venv of its own keeps it out of gnomon's.
# Idempotent: does nothing when the right version is already there.
set -euo pipefail

cd "$(dirname "$0")/.."
VENV="$PWD/.peers/roughly"
VERSION=0.3.0

log() { printf 'install-roughly: %s\n' "$*" >&2; }

if [[ -x "$VENV/bin/roughly" ]] \
    && [[ "$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("roughly"))' 2>/dev/null)" == "$VERSION" ]]; then
    exit 0
fi

log "installing roughly $VERSION into $VENV"
mkdir -p "$PWD/.peers"
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --ignore-requires-python "roughly==$VERSION" click
"$VENV/bin/roughly" --help >/dev/null
log "roughly $VERSION ready: $VENV/bin/roughly"
