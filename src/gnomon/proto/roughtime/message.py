"""Roughtime messages: the tag-value map and the ``ROUGHTIM`` framing.

A message is ``uint32 N``, ``N-1`` uint32 offsets, ``N`` uint32 tags, then the
values, all little-endian. Tags are unique and sorted as little-endian uint32
values (``SIG`` < ``VER`` < ``SRV`` < ``NONC`` < ... < ``ZZZZ``), offsets are
multiples of four and ascending, the first value starts at offset 0. Every
rule is checked once, in :func:`decode`; callers then index a
:class:`Message` without bounds checks of their own.

Limits keep a hostile peer from making a parser work or allocate much: at
most :data:`MAX_TAGS` tags per message, at most :data:`MAX_NESTING` levels of
nested messages (only ``SREP``, ``CERT`` and ``DELE`` nest), and values are
slices of the input (never larger than it).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping, Sequence

from ...errors import RoughtimeFormatError

MAGIC = b"ROUGHTIM"
FRAME_HEADER = 12  # MAGIC + uint32 LE length
MAX_TAGS = 64
MAX_MESSAGE = 65536  # no legitimate Roughtime message comes near this (a datagram is < 1500)

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


def tag(name: str | bytes) -> int:
    """The uint32 value of a tag written as up to four ASCII characters (``"SIG"`` is ``SIG\\0``).

    Tags with a byte that is not printable (``PAD\\xff``) are given as bytes.
    """
    raw = name.encode("ascii") if isinstance(name, str) else name
    if len(raw) > 4:
        raise ValueError(f"tag {name!r} longer than 4 bytes")
    return int(_U32.unpack(raw.ljust(4, b"\x00"))[0])


def tag_name(value: int) -> str:
    """``SIG``, ``NONC``, ... or the hex value of a tag that is not ASCII."""
    raw = _U32.pack(value).rstrip(b"\x00")
    if raw and all(0x20 < b < 0x7F for b in raw):
        return raw.decode("ascii")
    return f"0x{value:08x}"


SIG = tag("SIG")
VER = tag("VER")
SRV = tag("SRV")
NONC = tag("NONC")
DELE = tag("DELE")
TYPE = tag("TYPE")
PATH = tag("PATH")
RADI = tag("RADI")
PUBK = tag("PUBK")
MIDP = tag("MIDP")
SREP = tag("SREP")
VERS = tag("VERS")
MINT = tag("MINT")
ROOT = tag("ROOT")
CERT = tag("CERT")
MAXT = tag("MAXT")
INDX = tag("INDX")
ZZZZ = tag("ZZZZ")
PAD_GOOGLE = tag(b"PAD\xff")  # Google-Roughtime's padding tag


class Message(Mapping[int, bytes]):
    """A decoded message: tag -> value bytes, in the wire's (sorted) order."""

    __slots__ = ("_values",)

    def __init__(self, values: dict[int, bytes]) -> None:
        self._values = values

    def __getitem__(self, key: int) -> bytes:
        return self._values[key]

    def __iter__(self) -> Iterator[int]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        inner = ", ".join(f"{tag_name(t)}({len(v)})" for t, v in self._values.items())
        return f"Message({inner})"

    def require(self, key: int, size: int | None = None) -> bytes:
        """The value of ``key``; :class:`RoughtimeFormatError` when absent or the wrong size."""
        value = self._values.get(key)
        if value is None:
            raise RoughtimeFormatError(f"missing {tag_name(key)} tag")
        if size is not None and len(value) != size:
            raise RoughtimeFormatError(f"{tag_name(key)} is {len(value)} bytes, expected {size}")
        return value

    def u32(self, key: int) -> int:
        return int(_U32.unpack(self.require(key, 4))[0])

    def u64(self, key: int) -> int:
        return int(_U64.unpack(self.require(key, 8))[0])

    def nested(self, key: int) -> Message:
        return decode(self.require(key))

    def u32_list(self, key: int, limit: int) -> tuple[int, ...]:
        """A value that is a list of uint32 (``VER``, ``VERS``), at most ``limit`` entries."""
        return u32_list(self.require(key), limit, key)


def u32_list(value: bytes, limit: int, key: int) -> tuple[int, ...]:
    """``value`` read as a list of 1 to ``limit`` uint32 (the value of tag ``key``)."""
    size = len(value)
    if not size or size % 4:
        raise RoughtimeFormatError(f"{tag_name(key)} of {size} bytes is not a list of uint32")
    count = size // 4
    if count > limit:
        raise RoughtimeFormatError(f"{tag_name(key)} lists {count} entries (at most {limit})")
    return struct.unpack(f"<{count}I", value)


# count, count-1 offsets and count tags: 2 * count uint32 (one Struct per count, built once)
_HEADERS = [struct.Struct(f"<{max(1, 2 * n)}I") for n in range(MAX_TAGS + 1)]


def decode(data: bytes, start: int = 0) -> Message:
    """Parse the message that fills ``data`` from ``start`` on (no framing).

    Raises :class:`RoughtimeFormatError` only. ``start`` lets a caller parse
    the message inside a packet without copying it out first.
    """
    size = len(data) - start
    if size < 4 or size % 4:
        raise RoughtimeFormatError(f"message of {size} bytes (needs a multiple of 4, at least 4)")
    if size > MAX_MESSAGE:
        raise RoughtimeFormatError(f"message of {size} bytes is too large")
    count = int(_U32.unpack_from(data, start)[0])
    if count > MAX_TAGS:
        raise RoughtimeFormatError(f"message has {count} tags (at most {MAX_TAGS})")
    if count == 0:
        if size != 4:
            raise RoughtimeFormatError("empty message with trailing bytes")
        return Message({})
    header = 8 * count
    if header > size:
        raise RoughtimeFormatError(f"header of {count} tags does not fit in {size} bytes")
    fields = _HEADERS[count].unpack_from(data, start)
    body = size - header
    base = start + header
    values: dict[int, bytes] = {}
    position = 0
    previous_tag = -1
    for this_tag, end in zip(fields[count:], (*fields[1:count], body), strict=True):
        if end % 4 or position > end or end > body:
            raise RoughtimeFormatError(f"bad offset {end} in a message body of {body} bytes")
        if this_tag <= previous_tag:
            raise RoughtimeFormatError(
                f"tag {tag_name(this_tag)} out of order or repeated (tags sort as uint32 LE)"
            )
        previous_tag = this_tag
        values[this_tag] = data[base + position : base + end]
        position = end
    return Message(values)


def decode_packet(packet: bytes) -> Message:
    """The message of a framed packet (which must hold exactly one message)."""
    check_frame(packet)
    return decode(packet, FRAME_HEADER)


def header(tags: Sequence[int], sizes: Sequence[int]) -> bytes:
    """The count, offsets and tags of a message whose values have these sizes (tags sorted).

    Lets a caller that builds many messages of one shape (a server's responses
    to one batch) build this once and join values after it.
    """
    offsets: list[int] = []
    position = 0
    for size in sizes[:-1]:
        position += size
        offsets.append(position)
    return _HEADERS[len(tags)].pack(len(tags), *offsets, *tags)


def encode(values: Mapping[int, bytes]) -> bytes:
    """Build a message from tag -> value (any order; sorted here). Values pad to 4 bytes."""
    if len(values) > MAX_TAGS:
        raise ValueError(f"{len(values)} tags (at most {MAX_TAGS})")
    items = sorted(values.items())
    for t, v in items:
        if len(v) % 4:
            raise ValueError(f"value of {tag_name(t)} is {len(v)} bytes, not a multiple of 4")
    if not items:
        return _U32.pack(0)
    head = header([t for t, _ in items], [len(v) for _, v in items])
    return b"".join((head, *(v for _, v in items)))


def frame(message: bytes) -> bytes:
    """``ROUGHTIM`` + uint32 LE length + message: a packet (the same over UDP and TCP)."""
    return MAGIC + _U32.pack(len(message)) + message


def check_frame(packet: bytes) -> None:
    """Raise unless ``packet`` is ``ROUGHTIM``, a length, and exactly that many bytes."""
    if len(packet) < FRAME_HEADER:
        raise RoughtimeFormatError(f"packet of {len(packet)} bytes is shorter than its framing")
    if packet[:8] != MAGIC:
        raise RoughtimeFormatError("packet does not start with ROUGHTIM")
    length = int(_U32.unpack_from(packet, 8)[0])
    if length != len(packet) - FRAME_HEADER:
        raise RoughtimeFormatError(
            f"framing says {length} bytes, the packet holds {len(packet) - FRAME_HEADER}"
        )


def unframe(packet: bytes) -> bytes:
    """The message inside a packet; the packet must hold exactly one message."""
    check_frame(packet)
    return bytes(packet[FRAME_HEADER:])


def frame_length(header: bytes) -> int:
    """The message length a 12-byte frame header announces (for reading from a stream)."""
    if len(header) != FRAME_HEADER or header[:8] != MAGIC:
        raise RoughtimeFormatError("stream does not start with a ROUGHTIM frame")
    length = int(_U32.unpack_from(header, 8)[0])
    if length > MAX_MESSAGE or length % 4:
        raise RoughtimeFormatError(f"framed message of {length} bytes")
    return length


def u32(value: int) -> bytes:
    return _U32.pack(value)


def u64(value: int) -> bytes:
    return _U64.pack(value)
