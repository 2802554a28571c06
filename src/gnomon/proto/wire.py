"""Bounded reading of binary messages: every length is checked here, once."""

from __future__ import annotations

import struct

from ..errors import ProtocolError

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")


class Reader:
    """A cursor over a byte string that never reads past its end.

    A short read raises ``error`` (a :class:`ProtocolError` subclass), so
    callers parse without their own bounds checks and no ``IndexError`` or
    ``struct.error`` escapes.
    """

    __slots__ = ("_data", "_end", "_error", "_pos")

    def __init__(
        self,
        data: bytes,
        start: int = 0,
        end: int | None = None,
        error: type[ProtocolError] = ProtocolError,
    ) -> None:
        self._data = data
        self._pos = start
        self._end = len(data) if end is None else end
        self._error = error

    @property
    def position(self) -> int:
        return self._pos

    def remaining(self) -> int:
        return self._end - self._pos

    def at_end(self) -> bool:
        return self._pos >= self._end

    def _advance(self, n: int, what: str) -> int:
        start = self._pos
        if n < 0 or start + n > self._end:
            raise self._error(f"truncated {what}: need {n} bytes, have {self._end - start}")
        self._pos = start + n
        return start

    def u8(self, what: str = "field") -> int:
        return self._data[self._advance(1, what)]

    def u16(self, what: str = "field") -> int:
        return int(_U16.unpack_from(self._data, self._advance(2, what))[0])

    def u32(self, what: str = "field") -> int:
        return int(_U32.unpack_from(self._data, self._advance(4, what))[0])

    def u64(self, what: str = "field") -> int:
        return int(_U64.unpack_from(self._data, self._advance(8, what))[0])

    def take(self, n: int, what: str = "field") -> bytes:
        start = self._advance(n, what)
        return bytes(self._data[start : start + n])

    def rest(self) -> bytes:
        return self.take(self.remaining())

    def sub(self, n: int, what: str = "field") -> Reader:
        """A reader restricted to the next ``n`` bytes; this one skips past them."""
        start = self._advance(n, what)
        return Reader(self._data, start, start + n, self._error)


def pad4(n: int) -> int:
    """``n`` rounded up to a multiple of four."""
    return (n + 3) & ~3
