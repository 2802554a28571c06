"""Instruction counts from valgrind's callgrind, for A/B that does not move with the load.

:func:`instructions_per_step` runs a command twice, doing ``low`` and ``high`` steps of
work, and divides the difference of the two counts by the work between them, so start-up
(the interpreter, imports, set-up) cancels out. Both runs get the same ``PYTHONHASHSEED``,
so they import alike.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path


def instructions_per_step(
    command: Callable[[int], list[str]], low: int, high: int, work_per_step: int = 1
) -> float:
    """Instructions per unit of work: ``command(steps)`` is the argv doing ``steps`` steps,
    each of ``work_per_step`` units (requests, responses)."""
    counts = []
    for steps in (low, high):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "callgrind.out"
            subprocess.run(
                ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *command(steps)],
                check=True,
                capture_output=True,
                env={**os.environ, "PYTHONHASHSEED": "0"},
            )
            summary = re.search(r"^summary: (\d+)", out.read_text(), re.M)
            assert summary is not None, f"no summary in {out}"
            counts.append(int(summary.group(1)))
    return (counts[1] - counts[0]) / ((high - low) * work_per_step)
