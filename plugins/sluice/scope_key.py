"""The key that signs the read API's scopes (SLUICE_SCOPE_KEY): its form, and its installation by the owner.

Row-level security (migration 018) verifies each request's scope token with this key, which the warehouse keeps
where only its owner can read it; the web app signs with the same key from its configuration.
"""

import secrets

from sluice import queries
from sluice.errors import InvalidSetting

MIN_BYTES, MAX_BYTES = 32, 64  # at least 256 bits; at most SHA-256's block, so the key is its own HMAC key


def parse(text: str | None, setting: str = "SLUICE_SCOPE_KEY") -> bytes:
    """The key's bytes from its hex form; InvalidSetting naming the setting (never its value) otherwise."""
    if not text:
        raise InvalidSetting(f"{setting} is not set: the read API's scopes are signed with it (make one with "
                             f"python3 -c 'import secrets; print(secrets.token_hex(32))')")
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        raise InvalidSetting(f"{setting} is not hexadecimal") from None
    if not MIN_BYTES <= len(key) <= MAX_BYTES:
        raise InvalidSetting(f"{setting} has {len(key)} bytes; it needs {MIN_BYTES} to {MAX_BYTES} "
                             f"({2 * MIN_BYTES} to {2 * MAX_BYTES} hex digits)")
    return key


def generate() -> str:
    return secrets.token_hex(MIN_BYTES)


def install(conn, key_hex: str) -> None:
    """Install (or replace) the key in the warehouse; conn is the owner's (psycopg 3), migrated to 018 or later."""
    conn.execute(queries.query("pipeline.sql", "install_scope_key"), {"key": parse(key_hex)})
