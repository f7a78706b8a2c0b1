"""API keys: their form (sluice_ + 256 random bits), their hash, and the lookup of a presented key (1 s cache)."""

import hashlib
import re
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from webapp import db
from webapp.scopes import Scope

SQL_FILE = "auth.sql"
PREFIX = "sluice_"  # recognisable, so secret scanners (and people) find a leaked key
RANDOM_BYTES = 32  # 256 bits
KEY_FORM = re.compile(r"^sluice_[A-Za-z0-9_-]{43}$")  # token_urlsafe(32): 43 base64url characters
# A revoked or expired key is refused within this long on every worker: no worker trusts what it read for longer.
CACHE_SECONDS = 1.0
CACHE_MAX_ENTRIES = 10_000
TOUCH_EVERY_SECONDS = 60.0  # last_used_at is moved at most this often per key (the SQL function says so too)


def new_key() -> str:
    return PREFIX + secrets.token_urlsafe(RANDOM_BYTES)


def key_hash(key: str) -> bytes:
    """SHA-256 of the key. A fast unsalted hash is right here, unlike for passwords: a key is 256 random bits, so
    no dictionary or brute force can find one from its hash, and a slow hash would only cost every request."""
    return hashlib.sha256(key.encode()).digest()


def key_id(digest: bytes) -> str:
    """A short non-secret name of a presented key for logs: the start of its hash, which is what the table holds
    (8 hex digits: 32 bits of a hash tell nothing about the 256 bits of the key)."""
    return digest.hex()[:8]


class KeyRefused(Exception):
    """A presented key that gives no access; reason is a short word for the audit trail."""

    def __init__(self, reason: str, message: str, name: str | None = None):
        super().__init__(message)
        self.reason = reason
        self.name = name


@dataclass(frozen=True)
class StoredKey:
    name: str
    sources: tuple[str, ...] | None
    operations: bool
    expires_at: datetime | None
    revoked: bool

    def scope(self) -> Scope:
        sources = None if self.sources is None else frozenset(self.sources)
        return Scope(principal=f"key:{self.name}", sources=sources, operations=self.operations)


class KeyCache:
    """What each key hash resolved to (a StoredKey, or None: no such key), for at most CACHE_SECONDS."""

    def __init__(self, seconds: float = CACHE_SECONDS, max_entries: int = CACHE_MAX_ENTRIES):
        self.seconds = seconds
        self.max_entries = max_entries
        self._entries: dict[bytes, tuple[float, StoredKey | None]] = {}
        self._touched: dict[bytes, float] = {}
        self._lock = threading.Lock()

    def get(self, digest: bytes) -> tuple[bool, StoredKey | None]:
        with self._lock:
            entry = self._entries.get(digest)
        if entry is None or time.monotonic() - entry[0] >= self.seconds:
            return False, None
        return True, entry[1]

    def put(self, digest: bytes, stored: StoredKey | None) -> None:
        now = time.monotonic()
        with self._lock:
            if len(self._entries) >= self.max_entries:
                # random keys sent by a guesser must not grow the cache: keep only what is still fresh
                self._entries = {d: e for d, e in self._entries.items() if now - e[0] < self.seconds}
                if len(self._entries) >= self.max_entries:
                    self._entries.clear()
            self._entries[digest] = (now, stored)

    def due_for_touch(self, digest: bytes) -> bool:
        """True at most once per TOUCH_EVERY_SECONDS per key (per process)."""
        now = time.monotonic()
        with self._lock:
            if now - self._touched.get(digest, float("-inf")) < TOUCH_EVERY_SECONDS:
                return False
            if len(self._touched) >= self.max_entries:
                self._touched.clear()
            self._touched[digest] = now
            return True


def _read(digest: bytes) -> StoredKey | None:
    # The lookup is by the key's hash: its timing depends on the hash, which a guesser cannot steer towards a
    # stored one, so no comparison of the secret itself happens here that would need to be constant-time.
    row = db.fetch_one("api_key_by_hash", {"key_hash": digest}, sql_file=SQL_FILE)
    db.end_transaction()
    if row is None:
        return None
    return StoredKey(name=row["name"], sources=None if row["sources"] is None else tuple(row["sources"]),
                     operations=row["operations"], expires_at=row["expires_at"], revoked=row["revoked_at"] is not None)


def authenticate(key: str, cache: KeyCache) -> Scope:
    """The scope of a presented key; KeyRefused when it gives no access."""
    if not KEY_FORM.fullmatch(key):
        raise KeyRefused("malformed_key", "the bearer token is not a Sluice API key (sluice_ and 43 characters)")
    digest = key_hash(key)
    found, stored = cache.get(digest)
    if not found:
        stored = _read(digest)
        cache.put(digest, stored)
    if stored is None:
        raise KeyRefused("unknown_key", "unknown API key")
    if stored.revoked:
        raise KeyRefused("revoked_key", "this API key was revoked", stored.name)
    if stored.expires_at is not None and stored.expires_at <= datetime.now(timezone.utc):
        raise KeyRefused("expired_key", "this API key has expired", stored.name)
    if cache.due_for_touch(digest):
        db.execute_own_transactions(SQL_FILE, "api_key_touch", {"key_hash": digest})
    return stored.scope()
