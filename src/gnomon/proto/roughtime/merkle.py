"""The Merkle tree over a batch of requests, and walking a path to its root.

H is SHA-512 truncated to ``size`` bytes (32; Google-Roughtime uses all 64).
A leaf is ``H(0x00 || leaf input)``, a node ``H(0x01 || left || right)``.
Walking a path, the low bit of INDX says where the hash so far sits: 0 means
it is the **left** child (drafts up to 15 described this backwards). A level
of odd width is completed by repeating its first node, as Cloudflare's code
does (any rule works for the server, clients only walk the path they get).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ...errors import RoughtimeFormatError, RoughtimeVerificationError

# Nodes hash 65 bytes: CPython's own SHA-512 sets up in fewer instructions than OpenSSL's
# EVP (valgrind: 5,800 against 7,300 per node hash), which wins from a kilobyte on (a leaf
# over a whole request: 26,600 against 37,700).
_node_sha512 = hashlib.sha512
if not TYPE_CHECKING:
    with contextlib.suppress(ImportError):  # a Python built without its own SHA-512
        from _sha512 import sha512 as _node_sha512

MAX_PATH = 32  # hashes; a tree of 2^32 leaves is far past any batch


def digest(data: bytes, size: int = 32) -> bytes:
    return hashlib.sha512(data).digest()[:size]


def leaf_hash(data: bytes, size: int = 32) -> bytes:
    hasher = hashlib.sha512(b"\x00")
    hasher.update(data)
    return hasher.digest()[:size]


def node_hash(left: bytes, right: bytes, size: int = 32) -> bytes:
    return _node_sha512(b"\x01" + left + right).digest()[:size]


def build_tree(leaves: Sequence[bytes], size: int = 32) -> tuple[bytes, list[bytes]]:
    """The root over already hashed ``leaves`` and each leaf's PATH (sibling hashes, lowest
    level first, concatenated). Every path has the same length: one response shape per batch.

    One SHA-512 per node (n - 1 for n leaves, plus one per odd level). The paths are
    built from the top down: a node's path is its sibling followed by its parent's
    path, so each node costs one concatenation, not one join per leaf and level.
    """
    if not leaves:
        raise ValueError("a Merkle tree needs at least one leaf")
    sha512, node = _node_sha512, b"\x01"
    levels: list[list[bytes]] = []
    level = list(leaves)
    while len(level) > 1:
        if len(level) % 2:
            level.append(level[0])
        levels.append(level)
        pairs = iter(level)
        level = [
            sha512(node + left + right).digest()[:size]
            for left, right in zip(pairs, pairs, strict=False)
        ]
    paths = [b""]
    for lower in reversed(levels):
        paths = [sibling + paths[i >> 1] for i, sibling in enumerate(_siblings(lower))]
    return level[0], paths[: len(leaves)]


def _siblings(level: list[bytes]) -> list[bytes]:
    """Each node's sibling on a level of even width: 1, 0, 3, 2, ..."""
    swapped = level[:]
    swapped[::2], swapped[1::2] = level[1::2], level[::2]
    return swapped


def root_from_path(leaf: bytes, index: int, path: bytes, size: int = 32) -> bytes:
    """The root that ``leaf`` at ``index`` with the concatenated ``path`` hashes lead to.

    Raises when the path is not whole hashes, is longer than :data:`MAX_PATH`,
    or INDX has bits left over once the path is walked.
    """
    if len(path) % size:
        raise RoughtimeFormatError(f"PATH of {len(path)} bytes is not a list of {size}-byte hashes")
    depth = len(path) // size
    if depth > MAX_PATH:
        raise RoughtimeFormatError(f"PATH of {depth} hashes (at most {MAX_PATH})")
    if index >> depth:
        raise RoughtimeVerificationError(
            f"INDX {index} has bits left over after a path of {depth} hashes"
        )
    current = leaf
    for level in range(depth):
        sibling = path[level * size : (level + 1) * size]
        if (index >> level) & 1:
            current = node_hash(sibling, current, size)
        else:
            current = node_hash(current, sibling, size)
    return current
