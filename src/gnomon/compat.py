"""An ntplib-compatible client that runs NTS underneath.

Change one import line and the time is authenticated::

    import ntplib                            # before
    from gnomon import compat as ntplib      # after

    response = ntplib.NTPClient().request("time.cloudflare.com")
    print(response.offset, response.delay, response.tx_time, response.stratum)

The result has ntplib's attribute names (``offset``, ``delay``, ``tx_time``,
``recv_time``, ``orig_time``, ``dest_time``, ``ref_time``, ``leap``,
``version``, ``mode``, ``stratum``, ``poll``, ``precision``, ``root_delay``,
``root_dispersion``, ``ref_id`` and the ``*_timestamp`` NTP-era values), and
ntplib's helpers (``ntp_to_system_time``, ``leap_to_text``, ...) are here too.

Differences from ntplib:

- ``host`` must be an NTS server (NTS-KE, RFC 8915); plain NTP servers do not
  answer. Certificates are checked against the system CAs (``ca_file=`` for
  others). ``port`` is the NTS-KE port: ntplib's default ``"ntp"`` (123) means
  NTS-KE's 4460; the NTP port comes from the server.
- ``version`` is not sent: NTS is NTPv4. The reply's version is reported.
- One ``NTPClient`` keeps NTS keys and cookies, so later requests to the same
  server skip the key exchange (ntplib keeps nothing).
- ``offset`` and ``delay`` are computed in integer nanoseconds (kernel receive
  timestamps where available); ``orig_timestamp`` and ``dest_timestamp`` are
  derived from them. ``ref_timestamp`` is 0 (not kept by gnomon's client).
- Failures raise :class:`NTPException`, which is also a
  :class:`gnomon.GnomonError` (authentication failures included).
- Extra attributes: ``authenticated`` (always True), ``server``, ``result``
  (the full :class:`gnomon.Result`).
"""

from __future__ import annotations

import datetime
import socket
from pathlib import Path
from typing import ClassVar

from .client.ke import NTS_KE_PORT
from .client.session import Result, Session
from .errors import GnomonError

__all__ = [
    "NTP",
    "NTPClient",
    "NTPException",
    "NTPStats",
    "leap_to_text",
    "mode_to_text",
    "ntp_to_system_time",
    "ref_id_to_text",
    "stratum_to_text",
    "system_to_ntp_time",
]


class NTPException(GnomonError):
    """ntplib's exception: every failure of :meth:`NTPClient.request`."""


class NTP:
    """ntplib's constants."""

    _SYSTEM_EPOCH = datetime.date(1970, 1, 1)
    _NTP_EPOCH = datetime.date(1900, 1, 1)
    NTP_DELTA = (_SYSTEM_EPOCH - _NTP_EPOCH).days * 24 * 3600

    REF_ID_TABLE: ClassVar[dict[str, str]] = {
        "GOES": "Geostationary Orbit Environment Satellite",
        "GPS\0": "Global Position System",
        "GAL\0": "Galileo Positioning System",
        "PPS\0": "Generic pulse-per-second",
        "IRIG": "Inter-Range Instrumentation Group",
        "WWVB": "LF Radio WWVB Ft. Collins, CO 60 kHz",
        "DCF\0": "LF Radio DCF77 Mainflingen, DE 77.5 kHz",
        "HBG\0": "LF Radio HBG Prangins, HB 75 kHz",
        "MSF\0": "LF Radio MSF Anthorn, UK 60 kHz",
        "JJY\0": "LF Radio JJY Fukushima, JP 40 kHz, Saga, JP 60 kHz",
        "LORC": "MF Radio LORAN C 100 kHz",
        "TDF\0": "MF Radio Allouis, FR 162 kHz",
        "CHU\0": "HF Radio CHU Ottawa, Ontario",
        "WWV\0": "HF Radio WWV Ft. Collins, CO",
        "WWVH": "HF Radio WWVH Kauai, HI",
        "NIST": "NIST telephone modem",
        "ACTS": "NIST telephone modem",
        "USNO": "USNO telephone modem",
        "PTB\0": "European telephone modem",
        "LOCL": "uncalibrated local clock",
        "CESM": "calibrated Cesium clock",
        "RBDM": "calibrated Rubidium clock",
        "OMEG": "OMEGA radionavigation system",
        "DCN\0": "DCN routing protocol",
        "TSP\0": "TSP time protocol",
        "DTS\0": "Digital Time Service",
        "ATOM": "Atomic clock (calibrated)",
        "VLF\0": "VLF radio (OMEGA,, etc.)",
        "1PPS": "External 1 PPS input",
        "FREE": "(Internal clock)",
        "INIT": "(Initialization)",
        "\0\0\0\0": "NULL",
    }
    STRATUM_TABLE: ClassVar[dict[int, str]] = {
        0: "unspecified or invalid",
        1: "primary reference (%s)",
    }
    MODE_TABLE: ClassVar[dict[int, str]] = {
        0: "reserved",
        1: "symmetric active",
        2: "symmetric passive",
        3: "client",
        4: "server",
        5: "broadcast",
        6: "reserved for NTP control messages",
        7: "reserved for private use",
    }
    LEAP_TABLE: ClassVar[dict[int, str]] = {
        0: "no warning",
        1: "last minute of the day has 61 seconds",
        2: "last minute of the day has 59 seconds",
        3: "unknown (clock unsynchronized)",
    }


def ntp_to_system_time(timestamp: float) -> float:
    """An NTP-era time (seconds since 1900) as Unix time."""
    return timestamp - NTP.NTP_DELTA


def system_to_ntp_time(timestamp: float) -> float:
    """A Unix time as NTP-era seconds (since 1900)."""
    return timestamp + NTP.NTP_DELTA


def _table(table: dict[int, str], value: int, what: str) -> str:
    if value in table:
        return table[value]
    raise NTPException(f"Invalid {what}.")


def leap_to_text(leap: int) -> str:
    return _table(NTP.LEAP_TABLE, leap, "leap indicator")


def mode_to_text(mode: int) -> str:
    return _table(NTP.MODE_TABLE, mode, "mode")


def stratum_to_text(stratum: int) -> str:
    if stratum == 0:
        return NTP.STRATUM_TABLE[0]
    if stratum == 1:
        return NTP.STRATUM_TABLE[1] % stratum
    if 1 < stratum < 16:
        return f"secondary reference ({stratum})"
    if stratum == 16:
        return f"unsynchronized ({stratum})"
    raise NTPException("Invalid stratum or reserved.")


def ref_id_to_text(ref_id: int, stratum: int = 2) -> str:
    fields = (ref_id >> 24 & 0xFF, ref_id >> 16 & 0xFF, ref_id >> 8 & 0xFF, ref_id & 0xFF)
    if 0 <= stratum <= 1:
        text = "".join(chr(f) for f in fields)
        return NTP.REF_ID_TABLE.get(text, f"Unidentified reference source '{text}'")
    if 2 <= stratum < 255:
        return ".".join(str(f) for f in fields)
    raise NTPException("Invalid stratum.")


def _ref_id_int(stratum: int, text: str) -> int:
    """Back from gnomon's formatted reference id to ntplib's 32-bit integer."""
    if stratum <= 1:
        raw = text.encode("ascii", "replace")[:4].ljust(4, b"\0")
        return int.from_bytes(raw, "big")
    try:
        return int.from_bytes(socket.inet_aton(text), "big")
    except OSError:
        return 0


class NTPStats:
    """ntplib's ``NTPStats`` from one authenticated NTS exchange."""

    def __init__(self, result: Result) -> None:
        self.result = result
        self.server = result.server
        self.authenticated = result.authenticated
        self.leap = result.leap
        self.version = result.version
        self.mode = 4  # server
        self.stratum = result.stratum
        self.poll = result.poll
        self.precision = result.precision
        self.root_delay = result.root_delay
        self.root_dispersion = result.root_dispersion
        self.ref_id = _ref_id_int(result.stratum, result.reference_id)
        self.ref_timestamp = 0.0
        # T1 and T4 in the local clock, from T2, T3, offset and delay (RFC 5905 section 8)
        t2, t3 = result.receive_ns, result.transmit_ns
        offset_ns, delay_ns = round(result.offset * 1e9), round(result.delay * 1e9)
        t1 = t2 - offset_ns - delay_ns // 2
        t4 = t3 - offset_ns + delay_ns - delay_ns // 2
        self.orig_timestamp = system_to_ntp_time(t1 / 1e9)
        self.recv_timestamp = system_to_ntp_time(t2 / 1e9)
        self.tx_timestamp = system_to_ntp_time(t3 / 1e9)
        self.dest_timestamp = system_to_ntp_time(t4 / 1e9)

    @property
    def offset(self) -> float:
        return self.result.offset

    @property
    def delay(self) -> float:
        return self.result.delay

    @property
    def tx_time(self) -> float:
        return ntp_to_system_time(self.tx_timestamp)

    @property
    def recv_time(self) -> float:
        return ntp_to_system_time(self.recv_timestamp)

    @property
    def orig_time(self) -> float:
        return ntp_to_system_time(self.orig_timestamp)

    @property
    def ref_time(self) -> float:
        return ntp_to_system_time(self.ref_timestamp)

    @property
    def dest_time(self) -> float:
        return ntp_to_system_time(self.dest_timestamp)


class NTPClient:
    """ntplib's ``NTPClient``; ``ca_file``: trust this CA instead of the system's."""

    def __init__(self, *, ca_file: str | Path | None = None) -> None:
        self._ca_file = ca_file
        self._sessions: dict[float, Session] = {}

    def request(
        self, host: str, version: int = 2, port: int | str = "ntp", timeout: float = 5
    ) -> NTPStats:
        """Authenticated time from the NTS server ``host`` (``port``: its NTS-KE port)."""
        del version  # NTS is NTPv4; nothing to send
        ke_port = _ke_port(port)
        session = self._sessions.get(timeout)
        try:
            if session is None:
                session = self._sessions[timeout] = Session(ca_file=self._ca_file, timeout=timeout)
            return NTPStats(session.query(host, ke_port))
        except NTPException:
            raise
        except GnomonError as exc:
            raise NTPException(f"{host}: {exc}") from exc


def _ke_port(port: int | str) -> int:
    if port in ("ntp", 123, "123"):
        return NTS_KE_PORT
    if isinstance(port, str):
        if port.isdigit():
            return int(port)
        try:
            return socket.getservbyname(port, "tcp")
        except OSError:
            raise NTPException(f"unknown port {port!r}") from None
    return int(port)
