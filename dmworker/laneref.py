"""Lane references: what a Celery message carries instead of the recipient's IGSID.

A lane message (``dmworker.process_lane(account, ref)``) is visible to whoever can read the broker
or a monitoring tool on it (Flower, ``celery inspect``), often a wider audience than Redis.  So
the lane name (the recipient's IGSID, or ``c:<comment id>``) is *sealed*: encrypted and
authenticated with AES-SIV (``cryptography``'s ``AESSIV``, 256-bit key, the account as associated
data, so a reference opens only for its own account).  Sealing is deterministic: one lane always
gives the same reference, so duplicate messages for a lane look alike (an onlooker can tell that
two messages are for one lane, never which recipient it is).  Opening needs no Redis round trip
once a process has its key.

A reference is ``r1.`` followed by unpadded URL-safe base64 of 16 bytes of tag and the sealed lane
name (47 characters for a 17-digit IGSID).  A lane name is digits or ``c:<digits>[_<digits>]``, so
it never starts with ``r1.``: a message whose second argument has no such prefix is one in the
older form (a plain lane name published by a process not yet upgraded) and is used as it is.

The key, per key prefix:

- ``DMWORKER_SECRET_KEY`` set: derived from its first key with HKDF-SHA256 (the key prefix in the
  info), so no key is stored anywhere; references sealed under a later key of the setting still
  open (rotation), and so do references sealed under the Redis key below (a producer without the
  setting).
- unset: a random key kept in Redis (``P:laneref``), created once by whichever process needs it
  first (``SET NX``), read once per process and cached (re-read at most every
  :data:`RECHECK_S`, and sooner when a reference does not open, so a key that was deleted and
  created again is picked up).

A process whose key cannot open a reference (altered, or sealed under another deployment's key)
raises :class:`LaneRefError`; the task logs that without the reference and drops the message (the
dispatcher publishes every waiting lane from Redis anyway).
"""

from __future__ import annotations

import base64
import binascii
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .keys import Keys
from .settings import Settings

#: What every reference starts with (``r`` + format version 1).
REF_PREFIX = "r1."
#: Seconds a key read from Redis is used before it is read again (one GET per process per period).
RECHECK_S = 60.0
#: Least seconds between two re-reads of the Redis key caused by references that do not open.
RETRY_READ_S = 1.0
_KEY_BYTES = 32  # AES-128-SIV (two 128-bit halves)


class LaneRefError(ValueError):
    """A lane reference does not open under this process's keys (its text is never in the message)."""


def is_ref(value: str) -> bool:
    """Whether ``value`` is a lane reference (not an older message's plain lane name)."""
    return value.startswith(REF_PREFIX)


def derive_key(secret: str, prefix: str) -> bytes:
    """The 32-byte lane-reference key of ``prefix`` derived from one ``DMWORKER_SECRET_KEY`` key."""
    hkdf = HKDF(
        algorithm=hashes.SHA256(),
        length=_KEY_BYTES,
        salt=None,
        info=b"dmworker laneref v1|" + prefix.encode(),
    )
    return hkdf.derive(secret.encode("utf-8"))


class StoredKey:
    """The random key in Redis (``P:laneref``), read once and cached.

    ``client`` returns the Redis client (called only when the key must be read); ``clock``
    returns monotonic seconds.
    """

    def __init__(
        self, client: Callable[[], Any], name: str, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._client = client
        self.name = name
        self._clock = clock
        self._lock = threading.Lock()
        self._siv: AESSIV | None = None
        self._read_at = float("-inf")

    def get(self, create: bool) -> AESSIV | None:
        """The cached key, read from Redis when not yet read or older than :data:`RECHECK_S`
        (created there first when ``create`` and absent); ``None`` when absent and not created.

        Raises:
            redis.RedisError: when Redis cannot be reached to read it.
        """
        fresh = self._clock() - self._read_at < RECHECK_S
        if fresh and (self._siv is not None or not create):  # an absent key is not asked again at once
            return self._siv
        return self._read(create)

    def reread(self, create: bool) -> AESSIV | None:
        """Read the key again unless it was read in the last :data:`RETRY_READ_S`; the key."""
        if self._clock() - self._read_at < RETRY_READ_S:
            return self._siv
        return self._read(create)

    def _read(self, create: bool) -> AESSIV | None:
        with self._lock:
            r = self._client()
            if create:
                fresh = base64.urlsafe_b64encode(os.urandom(_KEY_BYTES)).decode("ascii")
                r.set(self.name, fresh, nx=True)
            raw = r.get(self.name)
            self._read_at = self._clock()
            if raw is None:
                self._siv = None
                return None
            text = raw.decode("ascii") if isinstance(raw, bytes) else str(raw)
            self._siv = AESSIV(base64.urlsafe_b64decode(text.encode("ascii")))
            return self._siv


class LaneRefs:
    """Seals lane names into references and opens them again, for one key prefix.

    ``derived`` are the keys from ``DMWORKER_SECRET_KEY`` (the first seals; every one opens);
    ``stored`` is the Redis key (seals when ``derived`` is empty; always tried last to open).
    """

    def __init__(self, derived: Sequence[bytes], stored: StoredKey | None) -> None:
        self._derived = [AESSIV(k) for k in derived]
        self._stored = stored
        if not self._derived and stored is None:
            raise ValueError("LaneRefs needs a derived key or a stored one")

    def seal(self, account: str, lane: str) -> str:
        """The reference of lane ``lane`` of ``account`` (the same for the same lane and key).

        Raises:
            redis.RedisError: only without ``DMWORKER_SECRET_KEY``, when the key is first read.
        """
        siv = self._derived[0] if self._derived else self._stored_key(create=True)
        assert siv is not None  # created when absent
        sealed = siv.encrypt(lane.encode("utf-8"), [account.encode("utf-8")])
        return REF_PREFIX + base64.urlsafe_b64encode(sealed).rstrip(b"=").decode("ascii")

    def open(self, account: str, ref: str) -> str:
        """The lane name inside ``ref``, a reference sealed for ``account``.

        Raises:
            LaneRefError: when ``ref`` is not a reference or no key opens it (altered, another
                account's, or another deployment's key).
            redis.RedisError: when the Redis key must be read and Redis cannot be reached.
        """
        if not is_ref(ref):
            raise LaneRefError("not a lane reference")
        body = ref[len(REF_PREFIX) :]
        try:
            sealed = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        except (binascii.Error, ValueError):
            raise LaneRefError("a lane reference is not base64") from None
        ad = [account.encode("utf-8")]
        for siv in self._derived:
            lane = _try(siv, sealed, ad)
            if lane is not None:
                return lane
        if self._stored is not None:
            stored = self._stored_key(create=not self._derived)
            lane = _try(stored, sealed, ad) if stored is not None else None
            if lane is None:  # the key may have been replaced in Redis since it was read
                again = self._stored.reread(create=not self._derived)
                if again is not None and again is not stored:
                    lane = _try(again, sealed, ad)
            if lane is not None:
                return lane
        raise LaneRefError("a lane reference does not open under this deployment's keys")

    def _stored_key(self, create: bool) -> AESSIV | None:
        assert self._stored is not None
        return self._stored.get(create)


def _try(siv: AESSIV, sealed: bytes, ad: list[bytes]) -> str | None:
    try:
        return siv.decrypt(sealed, ad).decode("utf-8")
    except (InvalidTag, ValueError, UnicodeError):
        return None


_cache: dict[tuple[Any, ...], LaneRefs] = {}
_cache_lock = threading.Lock()


def refs_for(settings: Settings, client: Callable[[], Any]) -> LaneRefs:
    """This process's :class:`LaneRefs` for ``settings``' Redis and key prefix (built once).

    ``client`` returns the Redis client of ``settings``; it is called only when the Redis key is
    read (never with ``DMWORKER_SECRET_KEY`` set, unless a reference sealed under it arrives).
    """
    ident = (settings.redis_url or ("embedded", settings.data_dir), settings.key_prefix, settings.secret_keys)
    got = _cache.get(ident)
    if got is None:
        with _cache_lock:
            got = _cache.get(ident)
            if got is None:
                derived = [derive_key(k, settings.key_prefix) for k in settings.secret_keys]
                got = LaneRefs(derived, StoredKey(client, Keys(settings.key_prefix).laneref))
                _cache[ident] = got
    return got
