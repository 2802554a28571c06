"""The server's cookie format (RFC 8915 section 6's, with a key id and a nonce in clear).

    cookie = key id (4) || N (14) || AES-128-GCM(K_j, N, P, key id)
    P      = aead id (2) || C2S key || S2C key
    N      = 14 bytes of BLAKE2b(K_n, r || P), a different 14 for each cookie of a sealing
    j      = N[0] mod 64: which of the master key's 64 GCM keys seals the cookie
    K_j    = BLAKE2b(master, j, person "gnomon-ck-gcm"), 16 bytes
    K_n    = BLAKE2b(master, person "gnomon-ck-nonce"), 32 bytes

``r`` is 16 bytes never used twice, supplied by the caller (nothing here reads
a clock or a random source): at NTS-KE fresh random bytes, per NTP reply a
128-bit counter that the responder's adapter seeds with random bytes in each
process, so a reply costs no system call. Cookies are 68 bytes for
AES-128-GCM-SIV sessions and 100 for AES-SIV-CMAC-256, like chrony's.

Why this construction (issue 16; the format before is described at the end):

- Unlinkability (RFC 8915 9.1). The key id, which names the rotation period
  (a day by default), is the only cleartext: N is a PRF output and GCM's
  ciphertext under a fresh (key, nonce) is indistinguishable from random, so
  the cookies of one NTS-KE response, of one session's replies, or of two
  different minutes look unrelated to an observer. Sealing has no time input.
  The former format carried the minute of sealing in clear, which let an
  observer who logs (address, minute) of NTS replies link a client that moves
  to another network whenever few clients were answered in that minute.
- GCM's birthday bound. Two cookies with distinct plaintexts under one GCM
  key and one nonce would leak their XOR and GCM's authentication key. The
  nonce is 14 random bytes (GCM hashes a nonce that is not 12 bytes long into
  its initial counter block, one GHASH block more: ~0.02 µs). For n cookies
  under one master key, a repeated nonce has probability below n^2 / 2^113;
  at 10**6 cookies a second under one master key (a fleet sharing it) for the
  default rotation period of a day, n = 8.64e10 < 2**36.33: below 2**-40.3
  per period, and each doubling of the period costs two bits (a week:
  2**-34.7). The former format's 12-byte nonces under a key per minute gave
  2**-34.9 per day. GCM's own bound for random nonces of that length (Niwa,
  Ohashi, Minematsu and Iwata, FSE 2015: about 2^8.7 n^2 / 2^128 for these
  3-5 block plaintexts) adds below 2**-46 per day. The 64 GCM keys per master
  key keep the number of invocations of each key within NIST SP 800-38D 8.3's
  2**32 for random IVs (1.35e9 a day at that rate); they are derived on first
  use and kept (at most 64 per master key, so forged cookies cannot make a
  codec hold more), and 64 contexts stay in cache where 2048 measurably did
  not.
- Nonce-misuse resistance. N is a PRF (keyed BLAKE2b, RFC 7693) of the whole
  plaintext and of ``r``, so this is the SIV composition of Rogaway and
  Shrimpton (a PRF-derived IV fed to an IV-based scheme; RFC 8452's
  AES-GCM-SIV is built the same way): should ``r`` ever repeat (a broken
  RNG, a restored VM snapshot, a fork the adapter missed), the same keys give
  the same cookie and nothing worse leaks than that equality; different
  plaintexts still get independent nonces.
- Authenticity and confidentiality: AES-GCM with a 16-byte tag, the key id as
  associated data (a cookie cannot be moved to another master key) and the
  nonce selecting the GCM key.
- Speed. Opening looks up the key id (an unknown one costs no crypto) and the
  GCM key by the nonce's first byte: no hash, no key schedule once warm. The
  alternative of keeping a key per minute and hiding the minute under a keyed
  hash of the nonce costs one more hash or block-cipher call on open and one
  per cookie sealed (0.2-0.5 µs each here). Measured with ``bench/micro.py
  --baseline`` (the former tree and this one in one process, alternating,
  best of 150 rounds, on two shared and busy cores, so the absolute figures
  are about twice an idle machine's): NtpResponder.respond nts0-30 11.38 ->
  11.79 µs, nts0-15 11.96 -> 12.43, nts1-30 13.94 -> 14.60, nts1-15 15.10 ->
  15.89; cookie open 1.34 -> 1.43 µs; a reply nonce with one cookie 2.4 ->
  2.4 µs. Wall-clock noise there is several per cent; instructions per reply
  (valgrind's callgrind, deterministic) went 78,012 -> 78,631 (nts0-30, +0.8%)
  and 103,772 -> 105,217 (nts1-15, +1.4%).

The format before (``key id || epoch (2, the minute) || N (12) || GCM(K_epoch,
N, P, key id || epoch)``, K_epoch = BLAKE2b(master, epoch, person
"gnomon-ck-enc")) has the same length, so a cookie whose tag fails is tried as
the former format under the same master key: cookies sealed before the
upgrade keep opening while their key is accepted (``keep_old`` rotation
periods, so at least one), and nothing seals them any more. The fallback
costs one more GCM call (and, once per minute of the former cookies, a key
derivation) only for cookies that fail; forged cookies under a known key id
cost at most that, and former-format keys are kept only once a cookie under
them authenticates (at most 2048).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .aead import ALGORITHMS

try:  # hashlib itself loads libcrypto (3.5 MiB a process) for digests a server never uses
    from _blake2 import blake2b
except ImportError:  # pragma: no cover - a Python built without its own BLAKE2
    from hashlib import blake2b
from .fields import EF_NTS_COOKIE

MASTER_KEY_LEN = 16
NONCE_LEN = 14
RANDOM_LEN = 16  # the never-repeated input r of a sealing (whatever the number of cookies)
TAG_LEN = 16
GCM_KEYS = 64  # GCM keys per master key; the low 6 bits of the nonce's first byte pick one
_KEY_BITS = GCM_KEYS - 1
assert _KEY_BITS == 0x3F  # spelt out on the hot paths
_KEY_ID = struct.Struct("!I")
_AEAD_ID = struct.Struct("!H")
_FIELD_HEAD = struct.Struct("!HH")
OVERHEAD = _KEY_ID.size + NONCE_LEN + _AEAD_ID.size + TAG_LEN
_PRF_LEN = 60  # bytes per BLAKE2b call (64 at most)
_LEGACY_CACHE = 2048  # former-format GCM keys kept (one per minute that authenticated)


def cookie_length(aead_id: int) -> int:
    return OVERHEAD + 2 * ALGORITHMS[aead_id].key_length


@dataclass(frozen=True, slots=True)
class CookieKey:
    """One master key: ``id`` names it inside every cookie it seals."""

    id: int
    secret: bytes

    def __post_init__(self) -> None:
        if len(self.secret) != MASTER_KEY_LEN or not 0 <= self.id < 1 << 32:
            raise ValueError("a cookie key is a 32-bit id and a 16-byte secret")


_Encrypt = Callable[[bytes, bytes, bytes], bytes]


class _Master:
    """One master key's derived keys: the nonce PRF and its GCM keys, made on first use."""

    __slots__ = ("_secret", "decrypts", "encrypts", "nonce_prf", "prefix")

    def __init__(self, key: CookieKey) -> None:
        self._secret = key.secret
        self.prefix = _KEY_ID.pack(key.id)
        nonce_key = blake2b(key=key.secret, digest_size=32, person=b"gnomon-ck-nonce").digest()
        self.nonce_prf = blake2b(key=nonce_key, digest_size=_PRF_LEN, person=b"gnomon-ck-iv")
        self.encrypts: list[_Encrypt | None] = [None] * GCM_KEYS
        self.decrypts: list[_Encrypt | None] = [None] * GCM_KEYS

    def _derive(self, index: int) -> AESGCM:
        """GCM key number ``index``, kept (at most :data:`GCM_KEYS` per master key, so
        forged cookies cannot make it hold more)."""
        secret = self._secret
        cipher = AESGCM(
            blake2b(bytes((index,)), key=secret, digest_size=16, person=b"gnomon-ck-gcm").digest()
        )
        self.encrypts[index] = cipher.encrypt
        self.decrypts[index] = cipher.decrypt
        return cipher

    def encrypt(self, index: int) -> _Encrypt:
        return self._derive(index).encrypt

    def decrypt(self, index: int) -> _Encrypt:
        return self._derive(index).decrypt

    def legacy_cipher(self, epoch: bytes) -> AESGCM:
        """The former format's GCM key of ``epoch`` (2 bytes, a minute)."""
        return AESGCM(
            blake2b(epoch, key=self._secret, digest_size=16, person=b"gnomon-ck-enc").digest()
        )


class CookieCodec:
    """Seals cookies under the current key; opens those of any accepted key."""

    def __init__(self, current: CookieKey, accepted: Iterable[CookieKey] = ()) -> None:
        self._masters: dict[bytes, _Master] = {}
        for key in (current, *accepted):
            self._masters[_KEY_ID.pack(key.id)] = _Master(key)
        self.current_id = current.id
        self._current = master = self._masters[_KEY_ID.pack(current.id)]
        self._decrypts = {prefix: m.decrypts for prefix, m in self._masters.items()}
        self._prf_copy = master.nonce_prf.copy  # sealing's per-packet lookups, done once
        self._encrypts = master.encrypts
        self._prefix = master.prefix
        # NTS Cookie field head and key id, by plaintext length
        self._field_heads = {
            2 + 2 * a.key_length: _FIELD_HEAD.pack(EF_NTS_COOKIE, 4 + cookie_length(a.id))
            + master.prefix
            for a in ALGORITHMS.values()
        }
        # Former format: AESGCM.decrypt by key id || epoch, for epochs that authenticated.
        self._legacy: dict[bytes, _Encrypt] = {}

    @property
    def key_ids(self) -> frozenset[int]:
        return frozenset(_KEY_ID.unpack(prefix)[0] for prefix in self._masters)

    def seal(self, aead_id: int, c2s: bytes, s2c: bytes, randomness: bytes) -> bytes:
        """One cookie; ``randomness``: :data:`RANDOM_LEN` bytes never used before."""
        return self.seal_many(aead_id, c2s, s2c, 1, randomness)[0]

    def seal_many(
        self, aead_id: int, c2s: bytes, s2c: bytes, count: int, randomness: bytes
    ) -> list[bytes]:
        """``count`` cookies for one session from one draw of :data:`RANDOM_LEN` bytes."""
        algorithm = ALGORITHMS[aead_id]
        if len(c2s) != algorithm.key_length or len(s2c) != algorithm.key_length:
            raise ValueError(f"{algorithm.name} cookies hold two {algorithm.key_length}-byte keys")
        if len(randomness) != RANDOM_LEN:
            raise ValueError(f"sealing takes {RANDOM_LEN} random bytes, not {len(randomness)}")
        fields = self.seal_fields(_AEAD_ID.pack(aead_id) + c2s + s2c, randomness, count)
        step = 4 + cookie_length(aead_id)
        return [fields[at + 4 : at + step] for at in range(0, len(fields), step)]

    def seal_fields(self, plain: bytes, randomness: bytes, count: int) -> bytes:
        """``count`` NTS Cookie extension fields (RFC 8915 5.7) for a plaintext from
        :meth:`open_raw` whose length was checked, from a never-used ``randomness``."""
        return self._seal(plain, randomness, count, 0)[1]

    def seal_reply(
        self, plain: bytes, count: int, nonce_len: int, unique: bytes
    ) -> tuple[bytes, bytes]:
        """(a fresh ``nonce_len``-byte nonce for the reply's authenticator, ``count``
        NTS Cookie fields): the per-packet path, one BLAKE2b call gives both.

        ``unique`` is 16 bytes never used before with this codec's keys (the
        responder's counter). The reply nonce needs to be unique, not secret
        (AES-SIV and AES-GCM-SIV are nonce-misuse resistant anyway), and
        cookie nonces stay a PRF of the plaintext and of a never-repeated
        input, as above.
        """
        master = self._current
        prf = self._prf_copy()
        prf.update(unique + plain)
        stream = prf.digest()
        end = nonce_len + NONCE_LEN * count
        if end > _PRF_LEN:
            return self._seal(plain, unique, count, nonce_len, stream)
        field_head = self._field_heads[len(plain)]  # the common case, inline
        encrypts = self._encrypts
        prefix = self._prefix
        if count == 1:
            nonce = stream[nonce_len:end]
            encrypt = encrypts[nonce[0] & 0x3F] or master.encrypt(nonce[0] & _KEY_BITS)
            return stream[:nonce_len], field_head + nonce + encrypt(nonce, plain, prefix)
        fields = b""
        for at in range(nonce_len, end, NONCE_LEN):
            nonce = stream[at : at + NONCE_LEN]
            encrypt = encrypts[nonce[0] & 0x3F] or master.encrypt(nonce[0] & _KEY_BITS)
            fields += field_head + nonce + encrypt(nonce, plain, prefix)
        return stream[:nonce_len], fields

    def _seal(
        self, plain: bytes, unique: bytes, count: int, skip: int, stream: bytes = b""
    ) -> tuple[bytes, bytes]:
        """(the first ``skip`` bytes of the PRF's output, then ``count`` cookie fields);
        ``stream``: the output already computed (the first BLAKE2b call's)."""
        master = self._current
        needed = skip + NONCE_LEN * count
        block = len(stream) // _PRF_LEN
        while len(stream) < needed:  # block 0 hashes r || P, block k > 0 k || r || P
            more = master.nonce_prf.copy()
            more.update((bytes((block,)) if block else b"") + unique + plain)
            stream += more.digest()
            block += 1
        field_head = self._field_heads[len(plain)]
        parts = []
        for at in range(skip, needed, NONCE_LEN):
            nonce = stream[at : at + NONCE_LEN]
            index = nonce[0] & _KEY_BITS
            encrypt = master.encrypts[index] or master.encrypt(index)
            parts.append(field_head + nonce + encrypt(nonce, plain, master.prefix))
        return stream[:skip], b"".join(parts)

    def open_raw(self, cookie: bytes) -> bytes | None:
        """The plaintext (AEAD id, C2S, S2C), its length unchecked; None for a cookie
        this server cannot use. An unknown key id costs no crypto."""
        prefix = cookie[:4]
        decrypts = self._decrypts.get(prefix)
        if decrypts is None or len(cookie) < OVERHEAD:
            return None
        decrypt = decrypts[cookie[4] & 0x3F]  # _KEY_BITS, spelt out on the hot path
        if decrypt is None:
            decrypt = self._masters[prefix].decrypt(cookie[4] & _KEY_BITS)
        try:
            return decrypt(cookie[4:18], cookie[18:], prefix)
        except InvalidTag:
            return self._open_legacy(self._masters[prefix], cookie)

    def _open_legacy(self, master: _Master, cookie: bytes) -> bytes | None:
        """The former format, whose bytes 4-6 are the minute of sealing in clear."""
        head = cookie[:6]
        decrypt = self._legacy.get(head)
        cipher = None
        if decrypt is None:
            cipher = master.legacy_cipher(cookie[4:6])
            decrypt = cipher.decrypt
        try:
            plain = decrypt(cookie[6:18], cookie[18:], head)
        except InvalidTag:
            return None
        if cipher is not None:  # only epochs that authenticated a cookie
            if len(self._legacy) >= _LEGACY_CACHE:
                del self._legacy[next(iter(self._legacy))]  # the oldest inserted
            self._legacy[head] = decrypt
        return plain

    def open(self, cookie: bytes) -> tuple[int, bytes, bytes] | None:
        """(aead id, C2S, S2C), or None for a cookie this server cannot use."""
        plain = self.open_raw(cookie)
        return None if plain is None else split_plaintext(plain)


def split_plaintext(plain: bytes) -> tuple[int, bytes, bytes] | None:
    """(aead id, C2S, S2C) of a cookie's plaintext from :meth:`CookieCodec.open_raw`,
    or None if it names no AEAD this server supports or has the wrong length."""
    algorithm = ALGORITHMS.get(_AEAD_ID.unpack_from(plain)[0]) if len(plain) >= 2 else None
    if algorithm is None or len(plain) != 2 + 2 * algorithm.key_length:
        return None
    split = 2 + algorithm.key_length
    return algorithm.id, plain[2:split], plain[split:]
