"""Files holding secrets (cookie keys, the fleet secret): refused, in one line, when
someone else could read or replace them, as ssh refuses a private key that is too open.

Whoever reads the cookie keys can open every cookie and forge time for every client;
whoever can replace them (the file, or the folder it sits in) can choose the keys.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import stat
from collections.abc import Collection
from pathlib import Path

from ..errors import ConfigError

MIN_FLEET_SECRET_LEN = 32
"""Shortest fleet secret accepted, in bytes."""


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def check_private_file(
    path: Path, what: str, owners: Collection[int], info: os.stat_result | None = None
) -> None:
    """Raise :class:`ConfigError` unless ``path`` is a regular file owned by one of
    ``owners``, with no access for group or others, in a folder not every user can write.

    ``info`` is the file's ``os.stat`` (or ``fstat``) when the caller has it already.
    """
    info = path.stat() if info is None else info
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"{what} {path} is not a regular file")
    if info.st_uid not in owners:
        wanted = " or ".join(user_name(uid) for uid in sorted(owners))
        raise ConfigError(
            f"{what} {path} belongs to {user_name(info.st_uid)}, not {wanted} "
            f"(chown {user_name(min(owners))} {path})"
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"{what} {path} is open to other users (mode {mode:04o}); chmod 600 {path}"
        )
    check_private_folder(path.parent, what, path)


def check_private_folder(folder: Path, what: str, path: Path) -> None:
    """Refuse a folder every user may write to: anyone could replace the file in it."""
    try:
        mode = folder.stat().st_mode
    except FileNotFoundError:
        return
    if mode & stat.S_IWOTH:
        raise ConfigError(
            f"{what} {path} is in {folder}, which every user can write "
            f"(mode {stat.S_IMODE(mode):04o}); chmod o-w {folder}"
        )


def read_fleet_secret(path: Path, user: str | None = None) -> bytes:
    """The fleet secret: every byte of the file (a trailing newline or space counts), at
    least 32 of them; the file readable by its owner only: root, this process's user or
    ``user`` (the one the server runs as).
    """
    owners = {0, os.geteuid()}
    if user is not None:
        with contextlib.suppress(KeyError):  # the configuration says which user is missing
            owners.add(pwd.getpwnam(user).pw_uid)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO must not block
    except OSError as exc:
        raise ConfigError(f"cannot read fleet secret file {path}: {exc.strerror}") from None
    with open(fd, "rb") as handle:
        check_private_file(path, "fleet secret file", owners, os.fstat(fd))
        try:
            secret = handle.read()
        except OSError as exc:
            raise ConfigError(f"cannot read fleet secret file {path}: {exc.strerror}") from None
    if len(secret) < MIN_FLEET_SECRET_LEN:
        raise ConfigError(
            f"fleet secret file {path} holds {len(secret)} bytes; it needs at least "
            f"{MIN_FLEET_SECRET_LEN} (e.g. `head -c 32 /dev/urandom > {path}`)"
        )
    return secret
