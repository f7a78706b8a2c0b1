"""Named SQL queries read from sql/*.sql (aiosql style: `-- name: <query>` starts a block)."""

import functools
import os
import re
from pathlib import Path


def _sql_dir() -> Path:
    """SLUICE_SQL_DIR if set; else sluice/sql inside an installed wheel; else the checkout's sql/ (editable)."""
    if os.environ.get("SLUICE_SQL_DIR"):
        return Path(os.environ["SLUICE_SQL_DIR"])
    packaged = Path(__file__).resolve().parent / "sql"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "sql"


SQL_DIR = _sql_dir()
_NAME_LINE = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


def parse(text: str, origin: str = "<sql>") -> dict[str, str]:
    """Split a SQL file into {name: statement}; text before the first name is ignored (a header)."""
    parts = _NAME_LINE.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2]):
        if name in queries:
            raise ValueError(f"{origin}: query {name!r} is defined twice")
        queries[name] = body.strip().rstrip(";") if body.count(";") <= 1 else body.strip()
    return queries


@functools.cache
def load(filename: str) -> dict[str, str]:
    """Queries of one file under sql/, e.g. load("pipeline.sql")["upsert_normalized"]."""
    path = SQL_DIR / filename
    return parse(path.read_text(encoding="utf-8"), origin=str(path))


def query(filename: str, name: str) -> str:
    try:
        return load(filename)[name]
    except KeyError:
        raise KeyError(f"no query named {name!r} in sql/{filename}") from None
