"""Schema contracts (dlt's names and behaviour): which top-level fields and JSON types each batch of a source
carries, what changed against its declaration and earlier runs, and what its schema_contract does about it.

store_raw calls check_batch in its transaction, before the raw upsert, after the batch is staged in PostgreSQL:
one set-based pass finds the fields (sql/contracts.sql), and they are recorded (source_observed_fields, and
source_field_changes per run) whatever the contract; under freeze a batch with an undeclared field, or a declared
one whose values its type cannot read, fails the source (ContractViolation) before any raw row is written.
evolve loads every recorded undeclared field too: evolved_fields gives them as json fields for normalize.
"""

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass

from psycopg import sql
from psycopg.types.json import Jsonb

from sluice import progress, queries
from sluice.errors import InvalidSource
from sluice.sources import RESERVED_FIELDS, Field, Source

log = logging.getLogger(__name__)

# The JSON types each declared type reads (sluice.rules types the values); a null is no type, and any type the
# declaration cannot read makes the field retyped. The unified columns read as text and numeric do.
READS = {
    "text": ("string", "number"),
    "integer": ("number", "string"),
    "numeric": ("number", "string"),
    "boolean": ("boolean", "string"),
    "timestamp": ("string",),
    "date": ("string",),
    "json": ("string", "number", "boolean", "object", "array"),
}
COLUMN_TYPES = {"source_id": "text", "name": "text", "value": "numeric", "description": "text"}
# an example record is its text's first characters; the fields a frozen source's error names
EXAMPLE_CHARS = 4096
NAMED_IN_ERROR = 20


class ContractViolation(InvalidSource):
    """A batch breaks its source's frozen schema contract: a configuration matter (the declaration, or the
    source, must change), so it fails at once without retries."""


def q(name: str) -> str:
    return queries.query("contracts.sql", name)


@dataclass(frozen=True)
class Readers:
    """What a source's catalog entry reads at the top level of its records: `read`, every key its mapping or a
    declared field reads (a dotted path `user.id` reads `user`, and the key `user.id` when a record has one);
    `typed`, the keys a whole path names, with the types reading them and the JSON types all of those read."""

    read: tuple[str, ...]
    typed: Mapping[str, dict]

    @classmethod
    def of(cls, source: Source) -> "Readers":
        paths = [(path, COLUMN_TYPES[column]) for column, path in source.mapping.items()]
        paths += [(spec.path, spec.type) for spec in source.fields.values()]
        read = {key for path, _ in paths for key in (path, path.split(".")[0])}
        types: dict[str, list[str]] = {}
        for path, type_ in paths:
            types.setdefault(path, []).append(type_)
        typed = {key: {"types": ", ".join(dict.fromkeys(names)),
                       "reads": [json_type for json_type in READS["json"]
                                 if all(json_type in READS[name] for name in names)]}
                 for key, names in types.items()}
        return cls(tuple(sorted(read)), typed)


@dataclass(frozen=True)
class BatchFields:
    """What one batch carried: undeclared fields, and declared fields whose values their type cannot read."""

    undeclared: int = 0
    retyped: int = 0


def check_batch(conn, source: Source, *, run_id: str, raw_table: str) -> BatchFields:
    """Find the top-level fields of the run's staged batch of `source` in its records that are new or changed
    against the raw table (only those can bring a field or type; a kind whose records all have the same fields,
    UNIFORM_RECORDS in its module, in one record), classify them, and record them; under freeze raise
    ContractViolation, naming them, before anything is recorded. Runs inside the caller's transaction."""
    keys = {"run_id": run_id, "source": source.name}
    readers = Readers.of(source)
    step = progress.Progress(log, source.name, "checking the batch's fields")
    conn.execute(q("drop_batch_fields"))
    if getattr(source.reader(), "UNIFORM_RECORDS", False):
        conn.execute(q("collect_uniform_batch_fields"), {**keys, "example_chars": EXAMPLE_CHARS})
    else:
        conn.execute(sql.SQL(q("collect_batch_fields")).format(raw_table=sql.Identifier(raw_table)), keys)
    conn.execute(q("recall_batch_fields"), {**keys, "read": list(readers.read)})
    conn.execute(q("classify_batch_fields"), {**keys, "typed": Jsonb(readers.typed)})
    new_pairs, without_example, undeclared, retyped = conn.execute(q("batch_fields_summary")).fetchone()
    found = BatchFields(undeclared, retyped)
    frozen_out = source.schema_contract == "freeze" and (undeclared or retyped)
    if new_pairs or (frozen_out and without_example):
        conn.execute(q("example_batch_fields"), {**keys, "example_chars": EXAMPLE_CHARS, "all": bool(frozen_out)})
    if frozen_out:
        raise ContractViolation(_violation(source.name, found, conn.execute(
            q("contract_violations"), {"limit": NAMED_IN_ERROR}).fetchall()))
    conn.execute(q("forget_run_fields"), keys)
    changes = conn.execute(q("record_field_changes"), keys).rowcount
    conn.execute(q("record_observed_fields"), keys)
    step.finish(f"checked the batch's fields ({source.schema_contract}): {progress.count(changes)} changes "
                f"recorded, {progress.count(undeclared)} undeclared fields, {progress.count(retyped)} declared fields "
                "with values their type cannot read")
    return found


def _violation(source: str, found: BatchFields, rows: list[tuple]) -> str:
    named = []
    for field, json_type, declared, from_type, record_id in rows:
        article = "an" if json_type in ("object", "array") else "a"
        what = f"declared {from_type} but {article} {json_type}" if declared else f"undeclared, {article} {json_type}"
        named.append(f"{field!r} ({what}; record id {record_id!r})")
    total = found.undeclared + found.retyped
    more = f" and {progress.count(total - len(named))} more" if total > len(named) else ""
    return (f"{source}: schema_contract freeze: the batch has {progress.count(found.undeclared)} undeclared and "
            f"{progress.count(found.retyped)} retyped fields: {', '.join(named)}{more}. Nothing of this batch was "
            "stored (its staged file is kept): declare them under the source's fields (or set schema_contract to "
            "evolve or discard_undeclared), then clear this source's store_raw or run again")


def evolved_fields(conn, source: Source) -> dict[str, Field]:
    """The fields evolve loads beyond the declared ones: each recorded field of the source that neither its
    mapping nor a declared field reads, as a json field read from that key, named as a column (column_name)."""
    with conn.transaction():
        recorded = [field for (field,) in conn.execute(q("observed_field_names"), {"source": source.name})]
    read = set(Readers.of(source).read)
    taken = set(RESERVED_FIELDS) | set(source.fields)
    evolved = {}
    for key in recorded:
        if key in read:
            continue
        name = column_name(key, taken)
        taken.add(name)
        evolved[name] = Field("json", key)
    return evolved


def column_name(key: str, taken: set[str]) -> str:
    """A field's name as a column of the typed view (sources.NAME), as dlt names columns: snake_case of the key
    (userId -> user_id, 'Plan Name' -> plan_name), `f_` before one that does not start with a letter, and `_2`,
    `_3`... after one that is taken (by a unified column, a declared field or a field seen earlier)."""
    name = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", key).lower()
    name = re.sub(r"[^a-z0-9]+", "_", name).strip("_")
    if not name[:1].isalpha():
        name = f"f_{name}".rstrip("_")
    name = name[:63]
    candidate, number = name, 1
    while candidate in taken:
        number += 1
        suffix = f"_{number}"
        candidate = name[:63 - len(suffix)] + suffix
    return candidate
