"""A gnomon server host of a test fleet: `gnomon serve` in a subprocess, logging to a file."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.peers.proc import START_TIMEOUT


class FleetHost:
    def __init__(self, name: str, config: Path, workdir: Path) -> None:
        ready = workdir / f"{name}.ready"
        self.log = workdir / f"{name}.log"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gnomon", "serve", "--config", str(config),
             "--ready-file", str(ready), "--log-level", "INFO"],
            stdout=self.log.open("w"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT
        while not ready.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"{name} did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.05)
        self.info = json.loads(ready.read_text())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
