"""One pass over a packet's extension fields: RFC 7822 framing, the legacy MAC tail, and
where the NTS fields are (RFC 8915 section 5). The server's per-packet path and the
client's parsing both use :func:`scan_fields`, so each rule lives here once.

The scan builds nothing per field: it returns offsets into the packet.

- Framing (RFC 7822 section 7.5): fields follow one another to the end; each is at
  least 16 bytes long and a multiple of four. A remainder that does not parse as a
  field and is 20 or 24 bytes long is a legacy MAC; any other remainder (1-3 bytes
  included) makes the packet malformed.
- NTS (RFC 8915 5.3-5.6): the first NTS Authenticator and Encrypted Extension Fields
  field ends what counts; before it, one Unique Identifier and one NTS Cookie at
  most (two are malformed), and any number of Cookie Placeholders. Fields after the
  authenticator are not authenticated and are ignored (their framing still counts).
"""

from __future__ import annotations

import struct

EF_UNIQUE_IDENTIFIER = 0x0104
EF_NTS_COOKIE = 0x0204
EF_NTS_COOKIE_PLACEHOLDER = 0x0304
EF_NTS_AUTHENTICATOR = 0x0404

EF_HEADER = struct.Struct("!HH")
MIN_EF_LEN = 16  # RFC 7822 section 3: an NTPv4 extension field is at least 16 bytes
LEGACY_MAC_LENGTHS = (20, 24)  # key id and an MD5 or SHA-1 digest (RFC 7822 section 7.5)

# Why a scan rejects a packet (``Scan[0]``); 0: it does not.
OK = 0
BAD_FRAMING = 1
TWO_UNIQUE_IDS = 2
TWO_COOKIES = 3
PROBLEMS = {
    BAD_FRAMING: "malformed extension field at byte {}",
    TWO_UNIQUE_IDS: "two Unique Identifier fields",
    TWO_COOKIES: "two NTS Cookie fields",
}

# (problem, end, uid_at, uid_end, cookie_at, cookie_end, auth_at, auth_end, placeholders):
# ``end`` is where the fields stop (the packet's end, a legacy MAC, or the field that broke
# the framing); each NTS field as the offsets of its header and of its end (-1: absent);
# ``placeholders`` the lengths of the Cookie Placeholder fields (None: there were none).
Scan = tuple[int, int, int, int, int, int, int, int, list[int] | None]

_unpack_head = EF_HEADER.unpack_from


def scan_fields(data: bytes, start: int, offsets: list[int] | None = None) -> Scan:
    """Walk the extension fields of ``data`` from ``start`` (48 for a packet).

    With ``offsets`` (a list to fill with every field's offset) the scan only frames:
    for fields that are not a packet's outer ones, like the encrypted fields.
    """
    length = len(data)
    uid_at = uid_end = cookie_at = cookie_end = auth_end = -1
    auth_at = -1 if offsets is None else start  # framing only: as if past an authenticator
    placeholders = None
    position = start
    unpack = _unpack_head
    while position + 4 <= length:
        ef_type, end = unpack(data, position)
        if end < MIN_EF_LEN or end & 3:
            break
        end += position
        if end > length:
            break
        if auth_at >= 0:
            if offsets is not None:
                offsets.append(position)
        else:
            if ef_type == EF_UNIQUE_IDENTIFIER:
                if uid_at >= 0:
                    return TWO_UNIQUE_IDS, position, -1, -1, -1, -1, -1, -1, None
                uid_at = position
                uid_end = end
            elif ef_type == EF_NTS_COOKIE:
                if cookie_at >= 0:
                    return TWO_COOKIES, position, -1, -1, -1, -1, -1, -1, None
                cookie_at = position
                cookie_end = end
            elif ef_type == EF_NTS_AUTHENTICATOR:
                if end == length:  # the common case: the authenticator ends the packet
                    return (
                        OK,
                        end,
                        uid_at,
                        uid_end,
                        cookie_at,
                        cookie_end,
                        position,
                        end,
                        placeholders,
                    )
                auth_at = position
                auth_end = end
            elif ef_type == EF_NTS_COOKIE_PLACEHOLDER:
                if placeholders is None:
                    placeholders = [end - position]
                else:
                    placeholders.append(end - position)
        position = end
    if position != length and length - position not in LEGACY_MAC_LENGTHS:
        return BAD_FRAMING, position, -1, -1, -1, -1, -1, -1, None
    if offsets is not None:
        return OK, position, -1, -1, -1, -1, -1, -1, None
    return OK, position, uid_at, uid_end, cookie_at, cookie_end, auth_at, auth_end, placeholders
