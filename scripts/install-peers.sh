#!/usr/bin/env bash
# Installs the real peers the interop tests start on loopback (filled in below).
set -euo pipefail
