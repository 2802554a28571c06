"""Fixtures for interop tests against real peers (see tests/peers).

No test here skips: a missing peer fails with "run `make peers`"; the clock guard
fails a test whose peers changed the kernel clock state.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_REPO = Path(__file__).resolve().parents[2]
if str(_REPO) not in sys.path:  # `tests.peers` importable however pytest was started
    sys.path.insert(0, str(_REPO))

from gnomon.certs import DemoPki, make_demo_pki  # noqa: E402
from tests.peers import NetNs, live_processes, netns  # noqa: E402
from tests.peers.clock import assert_clock_unchanged, snapshot  # noqa: E402


@pytest.fixture(scope="session")
def demo_pki(tmp_path_factory: pytest.TempPathFactory) -> DemoPki:
    """A throwaway CA and a server certificate for localhost, 127.0.0.1 and ::1."""
    return make_demo_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(autouse=True)
def clock_guard() -> Iterator[None]:
    """Fails the test if the kernel clock discipline (adjtimex) or time changed."""
    before = snapshot()
    yield
    assert_clock_unchanged(before)


@pytest.fixture(autouse=True)
def no_leftover_peers() -> Iterator[None]:
    """Every peer a test started must be stopped when it ends."""
    already = set(live_processes())
    yield
    left = [p for p in live_processes() if p not in already]
    for proc in left:
        proc.stop()
    assert not left, f"peers left running by the test (now stopped): {left}"


@pytest.fixture
def peer_netns(tmp_path: Path) -> Iterator[NetNs]:
    """A private network namespace (only `lo`, up) for the test."""
    with netns(tmp_path / "netns") as ns:
        yield ns
