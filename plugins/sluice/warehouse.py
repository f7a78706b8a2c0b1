"""Writes to the warehouse: schema, raw store, normalization, upsert. Each step is one transaction per source.

Functions take a psycopg 3 connection (what PostgresHook.get_conn() returns here) and return counts.
A per-source advisory lock is held for each write transaction, so overlapping runs wait for each other
(up to SLUICE_LOCK_TIMEOUT) instead of interleaving writes.
"""

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import BinaryIO

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from sluice import (contracts, declarations, delete_guard, locks, migrations, progress, quality, queries, rules,
                    settings)
from sluice.delete_guard import DEFAULT_ORIGIN, DeleteLimit
from sluice.errors import DeleteRefused, LockTimeout, QualityHeld
from sluice.failures import Failure
from sluice.results import Checkpointed, Normalized, Stored, Upserted
from sluice.sources import Source

log = logging.getLogger(__name__)

# the raw table of each kind of source; it holds every source of that kind, keyed by (source, source_id)
RAW_TABLES = {kind: f"raw_{kind}_data" for kind in ("api", "csv")}
COPY_CHUNK = 1024 * 1024
FETCH_BATCH = 5000
WORK_MEM = "256MB"
# a load of at least this many rows that at least doubles a table drops and rebuilds its indexes
BULK_ROWS = 100_000
# how long init_schema waits for the schema lock and for the tables a migration changes, when not told
# (SLUICE_LOCK_TIMEOUT's default)
SCHEMA_LOCK_TIMEOUT_SECONDS = 300


def q(name: str) -> str:
    return queries.query("pipeline.sql", name)


def apply_schema(conn: psycopg.Connection, *,
                 lock_timeout_seconds: float = SCHEMA_LOCK_TIMEOUT_SECONDS) -> migrations.Changes:
    """Bring the warehouse to this code's schema (sluice.migrations); a current one is left without any lock."""
    return migrations.migrate(conn, lock_timeout_seconds=lock_timeout_seconds)


@contextlib.contextmanager
def source_transaction(conn: psycopg.Connection, source: str, lock_timeout_seconds: float) -> Iterator[None]:
    """A transaction holding the source's write lock; a clear error when another run keeps it too long."""
    with conn.transaction():
        try:
            with locks.waiting_at_most(conn, lock_timeout_seconds):
                conn.execute(q("lock_source"), {"source": source})
        except psycopg.errors.LockNotAvailable as exc:
            raise LockTimeout(
                f"{source}: another run holds the write lock of this source; waited {lock_timeout_seconds:g}s "
                f"(SLUICE_LOCK_TIMEOUT)"
            ) from exc
        # bulk joins and materialized candidate sets of a million rows stay in memory instead of spilling
        conn.execute(q("set_work_mem"), {"work_mem": WORK_MEM})
        yield


def _count(conn, name: str, params: dict) -> tuple:
    return conn.execute(q(name), params).fetchone()


def next_fetch_seq(conn) -> int:
    """The next number of the fetch order, which an ingest task takes when it starts reading its source."""
    with conn.transaction():
        (fetch_seq,) = conn.execute(q("next_fetch_seq")).fetchone()
    return fetch_seq


def raw_table(source: str, kind: str | None) -> str:
    """The raw table of a source's kind, raw_<kind>_data (a new kind's migration creates it like raw_csv_data);
    no kind: the source is a seed source, named after its kind."""
    return f"raw_{kind or source}_data"


def stored_already(conn, source: str, *, run_id: str, fetch_seq: int | None) -> Stored | None:
    """What this run's store_raw committed for the source from this fetch, if it did (a cleared or retried
    task): then its staged file need not be read, or even exist. store_raw asks again under the source's lock."""
    with conn.transaction():
        recorded = _recorded_result(conn, {"run_id": run_id, "source": source}, "store_raw")
    return Stored.from_xcom(recorded) if _of_fetch(recorded, fetch_seq) else None


def _of_fetch(recorded: dict | None, fetch_seq: int | None) -> bool:
    """Whether a recorded store_raw result stored this fetch (fetch_seq None: fetched now, any stored batch)."""
    return recorded is not None and (fetch_seq is None or recorded.get("fetch_seq") == fetch_seq)


def store_raw(conn, source: str, staged: BinaryIO, *, run_id: str, lock_timeout_seconds: float,
              fetch_seq: int | None = None, bulk_rows: int = BULK_ROWS,
              index_build_memory: str = settings.INDEX_BUILD_MEMORY, kind: str | None = None,
              ids_ascending: bool = False, whole_read: bool = True,
              contract: Source | None = None, cursor_field: str | None = None,
              json_types: dict | None = None, attributes_key: str | None = None, file: dict | None = None) -> Stored:
    """Load a staged file, quarantine its problems and duplicates, and upsert the rest into the raw table of
    the source's kind (raw_table).

    fetch_seq places the batch in the source's fetch order (next_fetch_seq; None: fetched now). A batch
    fetched before the newest one the source holds replaces none of its stored rows: those records are
    superseded and leave the run's staged records, so normalize and upsert never see them.
    A load of at least bulk_rows that surely at least doubles the raw table (a first load) is a bulk load
    (see _load_into). A retry of a source this run already stored from the same fetch returns what it
    stored then; a new fetch of the run (its ingest cleared and run again) is stored. ids_ascending: the reader
    staged every id after the one before (StageCounts.ids_ascending), so the batch has no duplicate to look for.
    whole_read: the read had every record the source holds (StageCounts.whole_read); the result carries it to
    upsert, which deletes nothing after a partial read.
    contract: the source as its catalog entry declares it (sluice.sources.Source): the batch's fields are checked
    against its declarations and recorded before the raw upsert (sluice.contracts), and a batch its frozen
    schema_contract refuses fails here, writing nothing (None: not checked, for a caller loading by hand).
    cursor_field: the source's time cursor field, whose newest value among the stored records the result carries
    to the checkpoint. json_types: the reader's type mix of the batch (StageCounts.json_types), carried to the gate.
    attributes_key: the input key of the rules that typed the staged attributes (StageCounts.attributes_key), which
    normalize compares with its own before it loads them. file: the downloaded file the batch was read from
    (Stored.file), which upsert records with the load once published, for a later read of the same file.
    """
    keys = {"run_id": run_id, "source": source}
    with source_transaction(conn, source, lock_timeout_seconds):
        recorded = _recorded_result(conn, keys, "store_raw")
        if _of_fetch(recorded, fetch_seq):
            log.info("%s: this fetch was already stored in raw by an earlier try of this run; nothing to do", source)
            return Stored.from_xcom(recorded)
        if recorded is not None:
            # the run fetched again (a cleared ingest) since it stored: the new batch is stored, and what the old
            # one led to is redone. The checkpoint's result stays: its redo counts only the difference.
            for step in ("store_raw", "normalize", "upsert"):
                conn.execute(q("forget_step"), {**keys, "step": step})
        if fetch_seq is None:
            fetch_seq = next_fetch_seq(conn)
        step = progress.Progress(log, source, "storing")
        conn.execute(q("delete_staged"), keys)
        conn.execute(q("register_work"), keys)
        conn.execute(q("delete_rejects_of_stage"), {**keys, "stage": "store_raw"})
        copying = progress.Progress(log, source, "copying the staged file into PostgreSQL",
                                    total=_bytes_left(staged), measure=progress.size)
        copied = 0
        with conn.cursor().copy(q("copy_staged")) as copy:
            while chunk := staged.read(COPY_CHUNK):
                copy.write(chunk)
                copied += len(chunk)
                copying.update(copied)
        copying.finish(f"copied the staged file ({progress.size(copied)}) into PostgreSQL")
        conn.execute(q("analyze_staged"))
        problems = conn.execute(q("quarantine_problems"), keys).rowcount
        duplicates = 0 if ids_ascending else conn.execute(q("quarantine_duplicates"), keys).rowcount
        table = raw_table(source, kind)
        superseded = _remove_superseded(conn, table, keys, fetch_seq)
        staged_rows, last_id = _count(conn, "staged_summary", keys)
        last_cursor = None
        if cursor_field:
            found = conn.execute(q("staged_cursor"), {**keys, "field": cursor_field}).fetchone()
            last_cursor = found and found[0]
        (existing,) = _count(conn, "raw_table_estimate", {"raw_table": table})
        if contract is not None:
            contracts.check_batch(conn, contract, run_id=run_id, raw_table=table)
        # staged rows include unchanged ones: only when they could not all be already stored (at least twice
        # the table) are the new ones sure to at least double it. A rerun never rebuilds the indexes.
        with _load_into(conn, table, grows=staged_rows >= existing,
                        bulk=staged_rows >= bulk_rows and staged_rows >= 2 * existing,
                        index_build_memory=index_build_memory):
            upsert = sql.SQL(q("upsert_raw")).format(raw_table=sql.Identifier(table))
            inserted, updated = conn.execute(upsert, keys).fetchone()
        conn.execute(q("mark_raw_writer"), {**keys, "fetch_seq": fetch_seq, "wrote": inserted + updated > 0})
        result = Stored(source=source, stored=staged_rows, raw_inserted=inserted, raw_updated=updated,
                        rejected=problems + duplicates, superseded=superseded, fetch_seq=fetch_seq, last_id=last_id,
                        whole_read=whole_read, last_cursor=last_cursor, json_types=json_types or {},
                        attributes_key=attributes_key, file=file)
        _record_result(conn, keys, result)
    c = progress.count
    step.finish(f"stored {c(staged_rows)} staged records in {table}: {c(inserted)} inserted, {c(updated)} "
                f"updated, {c(staged_rows - inserted - updated)} unchanged; {c(superseded)} superseded by a later "
                f"fetch; quarantined {c(problems + duplicates)} ({c(problems)} found while staging, "
                f"{c(duplicates)} duplicate ids)")
    return result


def unchanged_file(conn, source: str, *, digest: str, fetch_seq: int) -> dict | None:
    """The source's last complete load (etl_checkpoint.loaded_file) when it read a file of this digest and nothing
    changed the source since, for a fetch taken at fetch_seq; None otherwise (see the query)."""
    with conn.transaction():
        found = conn.execute(q("unchanged_file"), {"source": source, "digest": digest,
                                                   "fetch_seq": fetch_seq}).fetchone()
    return found and found[0]


def store_unchanged(conn, source: str, *, run_id: str, fetch_seq: int, digest: str,
                    lock_timeout_seconds: float) -> Stored | None:
    """store_raw of a batch whose file equals the source's last complete load (StageCounts.unchanged), asked again
    under the source's lock: when nothing changed the source since (unchanged_file), no record is read or written.
    The fetch becomes the newest the source holds (an older one that stores later is superseded by it, as if this
    one had stored its records), that load's rejects are copied into this run's, and the result carries that load's
    counts, marked unchanged, so normalize, upsert and checkpoint report them without work. None: the source changed
    meanwhile, nothing was written, and the caller stages the file and stores it as any batch. A retry of a
    source this run already stored from the same fetch returns what it stored then; a new fetch of the run is
    stored (what the old one led to is redone), as store_raw does."""
    keys = {"run_id": run_id, "source": source}
    with source_transaction(conn, source, lock_timeout_seconds):
        recorded = _recorded_result(conn, keys, "store_raw")
        if _of_fetch(recorded, fetch_seq):
            log.info("%s: this fetch was already stored by an earlier try of this run; nothing to do", source)
            return Stored.from_xcom(recorded)
        found = conn.execute(q("unchanged_file"), {**keys, "digest": digest, "fetch_seq": fetch_seq}).fetchone()
        if found is None:
            return None
        (loaded,) = found
        if recorded is not None:  # the run fetched again since it stored: its earlier batch's work goes
            for step in ("store_raw", "normalize", "upsert"):
                conn.execute(q("forget_step"), {**keys, "step": step})
            conn.execute(q("delete_staged"), keys)
        # a retried or cleared run that loaded the file itself already holds its rejects: deleting them first
        # would leave nothing to copy
        if loaded["run_id"] != run_id:
            for stage in ("store_raw", "normalize"):
                conn.execute(q("delete_rejects_of_stage"), {**keys, "stage": stage})
            conn.execute(q("copy_loaded_rejects"), {**keys, "loaded_run_id": loaded["run_id"]})
        conn.execute(q("mark_unchanged_fetch"), {**keys, "fetch_seq": fetch_seq})
        counts = loaded["stored"]
        result = Stored(source=source, stored=counts["stored"], rejected=counts["rejected"], fetch_seq=fetch_seq,
                        last_id=counts["last_id"], whole_read=counts["whole_read"], last_cursor=counts["last_cursor"],
                        json_types=counts["json_types"], attributes_key=counts["attributes_key"],
                        file={"digest": digest, "ingested": loaded["ingested"], "batch": loaded["batch"]},
                        unchanged=True,
                        normalize_rejected=loaded["normalize_rejected"])
        _record_result(conn, keys, result)
    c = progress.count
    log.info("%s: unchanged since run %s loaded the same file: stored nothing, skipped %s records; %s rejects of "
             "that load copied into this run's", source, loaded["run_id"], c(result.stored),
             c(result.rejected + result.normalize_rejected))
    return result


def store_replay(conn, source: str, *, run_id: str, lock_timeout_seconds: float) -> Stored:
    """store_raw of a replayed source (sluice.replay): no raw row is written. Its batch claims the newest fetch and
    the checkpoint's id, so upsert takes it as the source's newest read and the checkpoint does not move; its work
    rows are registered, so record_run removes what normalize stages."""
    keys = {"run_id": run_id, "source": source}
    with source_transaction(conn, source, lock_timeout_seconds):
        position = conn.execute(queries.query("replay.sql", "replay_position"), keys).fetchone()
        fetch_seq, last_id = position or (None, None)
        conn.execute(q("register_work"), keys)
        # normalized again from raw: the last file loaded no longer stands for what the rows hold
        conn.execute(q("forget_loaded_file"), keys)
        result = Stored(source=source, fetch_seq=fetch_seq, last_id=last_id, whole_read=False)
        conn.execute(q("forget_step"), {**keys, "step": result.STEP})
        _record_result(conn, keys, result)
    log.info("%s: replayed from raw: nothing fetched, nothing stored; every stored record is normalized again", source)
    return result


def _bytes_left(file: BinaryIO) -> int | None:
    """The bytes from the file's position to its end, for the progress of a COPY; None when it cannot tell."""
    # a stream that cannot seek (or says so by raising) only makes the progress lines lack a total
    try:
        if not file.seekable():
            return None
        here = file.tell()
        end = file.seek(0, os.SEEK_END)
        file.seek(here)
    except (AttributeError, OSError, ValueError):
        return None
    return end - here


def _remove_superseded(conn, table: str, keys: dict, fetch_seq: int) -> int:
    """Drop the staged records of a batch fetched before the newest stored one that the source holds."""
    (newest,) = _count(conn, "newest_fetch_seq", keys)
    if fetch_seq >= newest:  # the newest batch, or a retry of it
        return 0
    remove = sql.SQL(q("remove_superseded")).format(raw_table=sql.Identifier(table))
    return conn.execute(remove, keys).rowcount


def _recorded_result(conn, keys: dict, step: str) -> dict | None:
    row = conn.execute(q("recorded_step"), {**keys, "step": step}).fetchone()
    return row[0] if row else None


def _committed(conn, keys: dict, kind):
    """The lane result (sluice.results) this run's step committed for the source; a clear error when it did not."""
    recorded = _recorded_result(conn, keys, kind.STEP)
    if recorded is None:
        raise RuntimeError(f"{keys['source']}: run {keys['run_id']} has no committed {kind.STEP} result; run "
                           f"{kind.STEP} first")
    return kind.from_xcom(recorded)


def _record_result(conn, keys: dict, result) -> None:
    """Keep a step's result (sluice.results) in the transaction that commits its work, for a retry or a clear
    of the task to return."""
    conn.execute(q("record_step"), {**keys, "step": result.STEP, "result": Jsonb(result.to_xcom())})


def normalize(conn, source: str, normalization: rules.Normalization, *, run_id: str, full_refresh: bool,
              lock_timeout_seconds: float, stored: Stored | None = None, kind: str | None = None,
              replay: bool = False) -> Normalized:
    """Validate the run's changed records; good ones to normalized_stage, bad ones quarantined with a reason.

    The set-based fast path takes the records it can decide in SQL, with the declared fields ingest typed into the
    staged attributes (rules.AttributeTyper; used only when typed with this normalization's input key); every other
    record goes through the marshmallow schema, which alone writes reject reasons. stored: what store_raw wrote (its count is checked).
    The source's declaration is recorded first (sluice.declarations: its fields, its typed view): when its input
    key changed since the source was last normalized, the stored raw records the run did not fetch whose rows came
    from another input are normalized again too (from the raw table of its kind), marked from_raw.
    A source this run already normalized from the same stored batch (a cleared or retried task) returns what it
    committed then; a new store_raw of the run forgets it. replay: every stored raw record is normalized again
    (sluice.replay), whatever its row holds.
    """
    keys = {"run_id": run_id, "source": source}
    counts = {False: [0, 0], True: [0, 0]}  # from_raw -> [valid, rejected] by the schema
    first_rejects: list[str] = []
    with source_transaction(conn, source, lock_timeout_seconds):
        if (recorded := _recorded_result(conn, keys, "normalize")) is not None:
            log.info("%s: this run's stored records were already normalized by an earlier try; nothing to do",
                     source)
            return Normalized.from_xcom(recorded)
        if stored is None and (committed := _recorded_result(conn, keys, "store_raw")) is not None:
            stored = Stored.from_xcom(committed)  # a caller driving the steps by hand
        if stored is not None and stored.unchanged:
            # nothing was stored (store_unchanged): a read of the file would skip every record its load kept and
            # reject again the ones it rejected, whose rejects store_raw copied
            conn.execute(q("forget_step"), {**keys, "step": "upsert"})
            result = Normalized(source=source, staged=stored.stored, rejected=stored.normalize_rejected,
                                skipped_unchanged=stored.stored - stored.normalize_rejected)
            _record_result(conn, keys, result)
            log.info("%s: unchanged file: skipped %s records, %s rejected again (as its last load rejected them)",
                     source, progress.count(result.skipped_unchanged), progress.count(result.rejected))
            return result
        step = progress.Progress(log, source, "normalizing")
        conn.execute(q("delete_normalized_stage"), keys)
        conn.execute(q("delete_rejects_of_stage"), {**keys, "stage": "normalize"})
        # a cleared and re-run normalize replaces what a committed upsert of this run counted
        conn.execute(q("forget_step"), {**keys, "step": "upsert"})
        (staged_rows,) = _count(conn, "count_staged", keys)
        _check_work(source, run_id, "staged_records", staged_rows, stored and stored.stored, "store_raw")
        declared = declarations.declare(conn, source, normalization.fields, normalization.input_key, run_id=run_id)
        params = {**keys, "input_key": normalization.input_key, "full_refresh": full_refresh, "replay": replay,
                  "fast_path": normalization.fast_path, "declares_fields": bool(normalization.fields),
                  "staged_attributes": _staged_attributes(conn, keys, normalization, stored),
                  **normalization.fast_path_params}
        conn.execute(q("create_slow_candidates"))
        (fast,) = conn.execute(_normalize_fast(sql.SQL(q("staged_candidates"))),
                               {**params, "from_raw": False}).fetchone()
        renormalized_fast = 0
        if declared.renormalize or replay:
            candidates = sql.SQL(q("raw_candidates")).format(raw_table=sql.Identifier(raw_table(source, kind)))
            (renormalized_fast,) = conn.execute(_normalize_fast(candidates),
                                                {**params, "from_raw": True}).fetchone()
        conn.execute(q("analyze_normalized_stage"))
        validating = progress.Progress(log, source, "validating the records the fast path left",
                                       measure=lambda n: f"{progress.count(n)} records")
        with conn.cursor(name=f"candidates_{source}") as candidates:
            candidates.execute(q("select_slow_candidates"))
            while batch := candidates.fetchmany(FETCH_BATCH):
                good, bad = [], []
                for source_id, data, input_hash, raw_hash, from_raw in batch:
                    row, reason = normalization.normalize_json(data)  # data: the record's jsonb as text
                    if row is None:
                        bad.append((run_id, source, source_id, "normalize", reason, data))
                        if len(first_rejects) < progress.REASONS_SHOWN:
                            first_rejects.append(f"id {source_id}: {reason}")
                    else:
                        good.append((run_id, source, *row[:-1], rules.dumps(row[-1]), input_hash, raw_hash,
                                     from_raw))
                    counts[from_raw][row is None] += 1
                _copy_rows(conn, "copy_normalized_stage", good)
                _copy_rows(conn, "copy_rejects", bad)
                done = sum(map(sum, counts.values()))
                validating.update(done, f"{progress.count(counts[False][1] + counts[True][1])} rejected")
        (valid, rejected), (renormalized, renormalized_rejected) = counts[False], counts[True]
        skipped = staged_rows - fast - valid - rejected
        result = Normalized(source=source, staged=staged_rows, valid=fast + valid, fast_path=fast, rejected=rejected,
                            skipped_unchanged=skipped, renormalized=renormalized_fast + renormalized,
                            renormalized_rejected=renormalized_rejected)
        _record_result(conn, keys, result)
    c = progress.count
    why = "replayed from raw" if replay else "its declaration changed"
    again = (f"; {why}: {c(result.renormalized)} stored records it did not fetch normalized "
             f"again, {c(renormalized_rejected)} of them rejected" if declared.renormalize or replay else "")
    step.finish(f"normalized {c(staged_rows)} staged records: {c(fast + valid)} valid ({c(fast)} by the SQL "
                f"fast path), rejected {progress.reasons(rejected + renormalized_rejected, first_rejects)}, "
                f"{c(skipped)} skipped as unchanged since they were last normalized{again}")
    return result


def _staged_attributes(conn, keys: dict, normalization: rules.Normalization, stored: Stored | None) -> bool:
    """Whether the run's staged attributes are the declared fields as normalization types them: typed by ingest
    with the same input key (the rules, the fields, their order). Otherwise (other rules at ingest, as when the
    evolve contract loads a field first recorded by this run's store_raw) every record is the schema's."""
    if normalization.typer is None:
        return False
    if stored is None and (recorded := _recorded_result(conn, keys, "store_raw")) is not None:
        stored = Stored.from_xcom(recorded)
    return stored is not None and stored.attributes_key == normalization.typer.key


def _normalize_fast(candidates: sql.Composable) -> sql.Composed:
    return sql.SQL(q("normalize_fast")).format(candidates=candidates)


def _copy_rows(conn, name: str, rows: list[tuple]) -> None:
    if rows:
        with conn.cursor().copy(q(name)) as copy:
            for row in rows:
                copy.write_row(row)


def _check_work(source: str, run_id: str, table: str, found: int, expected: int | None, writer: str) -> None:
    """Fail, rather than load less, when a work table no longer holds what the previous task wrote."""
    if expected is not None and found != expected:
        raise RuntimeError(f"{source}: {table} holds {found} rows of run {run_id}, {writer} wrote {expected}; "
                           f"clear {writer} and the tasks after it to redo them")


def upsert(conn, source: str, *, run_id: str, lock_timeout_seconds: float, stored: Stored | None = None,
           normalized: Normalized | None = None, bulk_rows: int = BULK_ROWS,
           index_build_memory: str = settings.INDEX_BUILD_MEMORY,
           kind: str | None = None, deletes_missing: bool = False,
           delete_limit: DeleteLimit = DeleteLimit(settings.MAX_DELETE_FRACTION, DEFAULT_ORIGIN),
           gate: "quality.Gate | None" = None) -> Upserted:
    """Merge the run's normalized_stage rows into normalized_data; only real changes are written. Then the
    rows whose records the read contains are undeleted and, when the read was whole (deletes_missing), the live
    rows whose records it lacks are soft-deleted (_sync_deletes): DeleteRefused, and nothing of the source
    commits, when they are more than delete_limit allows of its live rows.

    A load that inserts at least bulk_rows rows and at least doubles the table (a first load) is a bulk load
    (see _load_into). A retry of a source this run already upserted returns what it wrote then. stored and
    normalized: the lane's earlier results (the batch's place in the fetch order; the rows normalize wrote), as
    the DAG hands them on; a caller driving the steps by hand may leave them to what the run committed.
    gate: the source's quality gate (sluice.quality): it measures the batch before the merge and judges it after
    the merge and the deletes, which a held batch rolls back; its results commit either way, then QualityHeld.
    """
    keys = {"run_id": run_id, "source": source}
    if stored is None:
        # a caller driving the steps by hand: whether store_raw skipped an unchanged file, read without the source's
        # lock (the DAG hands the results on), so the merge's transaction below begins at once and waits for the
        # lock inside, its now() stamping the rows from before the wait as it always did (the read API's watermark)
        with conn.transaction():
            committed = _recorded_result(conn, keys, Stored.STEP)
        unchanged = committed is not None and Stored.from_xcom(committed).unchanged
    else:
        unchanged = stored.unchanged
    if unchanged:
        with conn.transaction():
            stored = stored or _committed(conn, keys, Stored)
            normalized = normalized or _committed(conn, keys, Normalized)
        return _upsert_unchanged(conn, keys, stored, normalized, lock_timeout_seconds=lock_timeout_seconds,
                                 deletes_missing=deletes_missing, delete_limit=delete_limit, gate=gate)
    with source_transaction(conn, source, lock_timeout_seconds):
        if (recorded := _recorded_result(conn, keys, "upsert")) is not None:
            log.info("%s: this run's rows were already upserted by an earlier try; nothing to do", source)
            return Upserted.from_xcom(recorded)
        stored = stored or _committed(conn, keys, Stored)
        normalized = normalized or _committed(conn, keys, Normalized)
        step = progress.Progress(log, source, "upserting")
        (live_before,) = _count(conn, "live_rows", keys)
        # normalize analyzed normalized_stage after writing it: the plans here see its size
        incoming, existing, new_rows = _count(conn, "bulk_load_size", keys)
        _check_work(source, run_id, "normalized_stage", incoming, normalized.valid + normalized.renormalized,
                    "normalize")
        (raw_written_since,) = _count(conn, "raw_written_since", keys)
        (has_rows,) = _count(conn, "source_has_rows", keys)
        batch = gate.measure(conn, keys, normalized=normalized, live_before=live_before,
                             incoming=incoming) if gate else {}
        report = None
        with conn.transaction() as publish:  # a savepoint: a held batch rolls back what it would publish
            # new rows, not incoming ones, decide: a full refresh or a mapping change over an unchanged warehouse
            # brings every row and inserts none, and must not rebuild the indexes under an exclusive lock
            with _load_into(conn, "normalized_data", grows=incoming >= existing,
                            bulk=new_rows >= bulk_rows and new_rows >= existing,
                            index_build_memory=index_build_memory):
                merge = "upsert_normalized" if has_rows else "insert_normalized_new"
                query = sql.SQL(q(merge)).format(raw_table=sql.Identifier(raw_table(source, kind)))
                inserted, updated, current, again_inserted, again_updated = conn.execute(
                    query, {**keys, "raw_written_since": raw_written_since,
                            "renormalized": normalized.renormalized > 0}).fetchone()
            refused = None
            try:
                deleted, undeleted, skipped, guarded = _sync_deletes(
                    conn, keys, fetch_seq=stored.fetch_seq, deletes_missing=deletes_missing,
                    whole_read=stored.whole_read, live_before=live_before, guard=delete_limit)
            except DeleteRefused as exc:
                # the gate records the refusal with its results; a release refused so leaves its held batch as it was
                if gate is None or gate.released_by is not None:
                    raise
                refused, guarded = exc, exc.measured
                deleted, undeleted, skipped = 0, 0, ""
            if gate:
                report = gate.judge(conn, keys, batch, stored=stored, normalized=normalized, updated=updated,
                                    deleted=deleted, live_before=live_before, deletes=guarded)
                if report.held or refused:
                    raise psycopg.Rollback(publish)
        if report is not None:
            gate.record(conn, keys, report)
        if refused is not None:
            held = refused
        elif report is not None and report.held:
            held = QualityHeld(report.held_message(run_id))
        else:
            held = None
        (live_after,) = _count(conn, "live_rows", keys)
        result = Upserted(source=source, inserted=inserted, updated=updated, unchanged=current - inserted - updated,
                          superseded=incoming - normalized.renormalized - current, processed=normalized.staged,
                          deleted=deleted, undeleted=undeleted, deletes_skipped=skipped, live_before=live_before,
                          live_after=live_after, renormalized_inserted=again_inserted,
                          renormalized_updated=again_updated, quality_score=report and report.score)
        if held is None:
            _record_result(conn, keys, result)
            _note_loaded_file(conn, keys, stored, normalized, result, batch=batch if gate else None,
                              checks=bool(gate and gate.source.checks))
    if held is not None:
        raise held
    c = progress.count
    # rows re-normalized from raw (a changed declaration) are named only in the runs that have them
    again = (f"; {c(again_inserted)} inserted and {c(again_updated)} updated of the rows normalized again from raw"
             if normalized.renormalized else "")
    step.finish(f"upserted {c(incoming)} normalized rows into normalized_data: {c(inserted)} inserted, "
                f"{c(updated)} updated, {c(result.unchanged)} unchanged, {c(result.superseded)} superseded "
                f"by a later fetch{again}; {c(deleted)} soft-deleted, {c(undeleted)} undeleted; live rows "
                f"{c(live_before)} → {c(live_after)}")
    return result


def _upsert_unchanged(conn, keys: dict, stored: Stored, normalized: Normalized, *, lock_timeout_seconds: float,
                      deletes_missing: bool, delete_limit: DeleteLimit, gate: "quality.Gate | None") -> Upserted:
    """upsert of a batch store_unchanged skipped: the rows are what the file's load left, so nothing is written or
    deleted, and the quality gate judges what a read of the file would bring it: that load's batch measures (the same
    records, so the same values) with this run's counts (nothing changed, nothing deleted) against today's history,
    and the delete guard's judgement of a read missing no row. A held batch raises QualityHeld, as upsert does."""
    source = keys["source"]
    with source_transaction(conn, source, lock_timeout_seconds):
        if (recorded := _recorded_result(conn, keys, "upsert")) is not None:
            return Upserted.from_xcom(recorded)
        (live,) = _count(conn, "live_rows", keys)
        _, undeleted, skipped, guarded = _sync_deletes(conn, keys, fetch_seq=stored.fetch_seq,
                                                       deletes_missing=deletes_missing, whole_read=stored.whole_read,
                                                       live_before=live, guard=delete_limit, unchanged=True)
        report = None
        if gate is not None:
            report = gate.judge(conn, keys, stored.file.get("batch") or {}, stored=stored, normalized=normalized,
                                updated=0, deleted=0, live_before=live, deletes=guarded)
            gate.record(conn, keys, report)  # committed with the transaction, held or not
        result = Upserted(source=source, processed=normalized.staged, undeleted=undeleted, deletes_skipped=skipped,
                          live_before=live, live_after=live, quality_score=report and report.score)
        if report is None or not report.held:
            _record_result(conn, keys, result)
    if report is not None and report.held:
        raise QualityHeld(report.held_message(keys["run_id"]))
    log.info("%s: unchanged file: nothing to upsert; %s live rows", source, progress.count(live))
    return result


def _note_loaded_file(conn, keys: dict, stored: Stored, normalized: Normalized, upserted: Upserted, *,
                      batch: dict | None, checks: bool) -> None:
    """After a published upsert: when its batch came from a file and stands for the source's state (every record of
    the file stored and upserted, none superseded, none normalized again from raw: the rows are what a read of the
    file leaves), record the file with what the run counted, so the next read of the same bytes costs a download
    and a hash (store_unchanged); the record holds only while this fetch is the newest stored. Otherwise forget
    any file recorded. batch: the quality gate's measures of the batch (None: no gate judged it); a source with
    declared checks (checks), whose checks read the batch's records, or measures that are not plain numbers (a
    freshness age) are read each time."""
    whole = (stored.file is not None and stored.whole_read and not stored.superseded and not upserted.superseded
             and not normalized.renormalized and not normalized.renormalized_rejected and batch is not None
             and not checks and all(type(value) in (int, float) for value in batch.values()))
    if not whole:
        # a batch older than the newest fetch stored (superseded) changed nothing the recorded file stands for
        conn.execute(q("forget_loaded_file_unless_newer"), {**keys, "fetch_seq": stored.fetch_seq})
        return
    loaded = {"digest": stored.file["digest"], "fetch_seq": stored.fetch_seq, "run_id": keys["run_id"],
              "live": upserted.live_after, "ingested": stored.file["ingested"], "batch": batch,
              "stored": {"stored": stored.stored, "rejected": stored.rejected, "last_id": stored.last_id,
                         "whole_read": stored.whole_read, "last_cursor": stored.last_cursor,
                         "json_types": stored.json_types, "attributes_key": stored.attributes_key},
              "normalize_rejected": normalized.rejected}
    conn.execute(q("record_loaded_file"), {**keys, "loaded_file": Jsonb(loaded), "fetch_seq": stored.fetch_seq})


def _sync_deletes(conn, keys: dict, *, fetch_seq: int | None, deletes_missing: bool, whole_read: bool,
                  live_before: int, guard: DeleteLimit,
                  unchanged: bool = False) -> tuple[int, int, str, "delete_guard.Measured | None"]:
    """(deleted, undeleted, why deletes were skipped: empty when they were not, the guard's judgement: None when it
    did not judge) for the run's read of the source.

    Only the newest fetch stored for the source decides what is at the source: an older read would delete what
    a newer one added, or undelete what it deleted. The fetch order alone says which that is: an older batch
    stored after it (which may write the records the source did not hold) does not make it older. A read that
    quarantined records without an id, or ended short of the source's count of records, does not know every id
    the source holds, so it deletes nothing."""
    source = keys["source"]
    newest, idless = _count(conn, "delete_scope", {**keys, "fetch_seq": fetch_seq})
    if not newest:
        why = "another run stored a newer fetch of the source since this run's; its run decides deletes"
        log.info("%s: no deletes or undeletes: %s", source, why)
        return 0, 0, why, None
    # unchanged: a batch store_unchanged skipped has no staged ids, and needs none: the file's load undeleted and
    # deleted what its read decided, and nothing changed the rows since
    undeleted = 0 if unchanged else conn.execute(q("undelete_returned"), keys).rowcount
    if not deletes_missing or not live_before:  # a source without live rows has nothing to delete
        return 0, undeleted, "", None
    if not whole_read:
        why = ("the read ended short of the records the source counts (see ingest's log), so it cannot tell which "
               "rows are gone")
        log.warning("%s: no deletes: %s", source, why)
        return 0, undeleted, why, None
    if idless:
        why = (f"the read quarantined {progress.count(idless)} records without an id (rejected_records), so it "
               "cannot tell which rows are gone")
        log.warning("%s: no deletes: %s", source, why)
        return 0, undeleted, why, None
    # one pass finds the missing rows; they are deleted in it only when the guard allows, so a refusal writes nothing
    allowed = guard.allowed(live_before)
    missing, deleted = (0, 0) if unchanged else _count(conn, "soft_delete_missing", {**keys, "max_deletes": allowed})
    measured = delete_guard.Measured(missing, live_before, guard)
    if measured.refused:
        raise DeleteRefused(delete_guard.refusal(source, missing, live_before, guard), measured)
    return deleted, undeleted, "", measured


@contextlib.contextmanager
def _load_into(conn, table: str, *, grows: bool, bulk: bool, index_build_memory: str) -> Iterator[None]:
    """Plan and run a load that may double the table (grows) or surely does and is large (bulk).

    A load that may double a table gets hash joins: the planner sizes the table as it is before the
    statement, and a nested loop over a table it believes (nearly) empty rescans it once per incoming
    row while the statement itself fills it, which is quadratic (a 100,000-row first load took minutes).
    A bulk load also drops the table's indexes and builds them again after it, one pass each: several
    times faster than updating them row by row, at the price of an exclusive lock on the table until the
    transaction commits, so readers of normalized_data wait for a first load instead of seeing half of it.
    """
    if grows:
        conn.execute(q("prefer_hash_joins"))
    if not bulk:
        yield
        return
    # one statement each: their progress is not measurable from here, their durations are
    dropping = progress.Progress(log, f"bulk load into {table}", "dropping its indexes")
    (dropped,) = conn.execute(q("suspend_indexes"), {"table": table}).fetchone()
    dropping.finish(f"dropped {dropped} indexes (rebuilt after the load)")
    yield
    conn.execute(q("set_maintenance_work_mem"), {"work_mem": index_build_memory})
    building = progress.Progress(log, f"bulk load into {table}", "rebuilding its indexes")
    (built,) = conn.execute(q("restore_indexes"), {"table": table}).fetchone()
    building.finish(f"rebuilt {built} indexes")
    conn.execute(sql.SQL(q("analyze_loaded")).format(table=sql.Identifier(table)))


def advance_checkpoint(conn, source: str, *, run_id: str, processed: int, lock_timeout_seconds: float,
                       last_id: str | None = None, full_refresh: bool = False, last_cursor: str | None = None,
                       read_until=None) -> Checkpointed:
    """Move the source's checkpoint forward to last_id, the highest id this run stored (Stored.last_id), never
    back (a full refresh sets it), and add the records this run processed to its total. Runs only after upsert
    committed. A retried or cleared task of a run that counted already adds only what changed (nothing, unless
    the run fetched again meanwhile), so no record is counted twice. last_id None: the one the run's store_raw
    committed (a caller driving the steps by hand). last_cursor (Stored.last_cursor) and read_until (the run's
    data interval end) move the source's time bounds, forward only, in the same transaction."""
    keys = {"run_id": run_id, "source": source}
    with source_transaction(conn, source, lock_timeout_seconds):
        if last_id is None:
            last_id = _committed(conn, keys, Stored).last_id
        recorded = _recorded_result(conn, keys, "checkpoint")
        counted = Checkpointed.from_xcom(recorded).processed if recorded is not None else 0
        if recorded is not None and counted == processed and recorded.get("last_id") == last_id:
            log.info("%s: checkpoint already advanced by an earlier try of this run, to id %r",
                     source, recorded["last_processed_id"])
            return Checkpointed.from_xcom(recorded)
        before = conn.execute(q("select_checkpoint"), keys).fetchone()
        conn.execute(q("advance_checkpoint"), {**keys, "last_id": last_id, "processed": processed - counted,
                                               "full_refresh": full_refresh})
        cursor, read_to = conn.execute(q("advance_time_bounds"), {**keys, "last_cursor": last_cursor,
                                                                  "read_until": read_until}).fetchone()
        last_processed_id, last_at, total, _, _ = conn.execute(q("select_checkpoint"), keys).fetchone()
        previous = before[0] if before is not None else None
        if previous == last_processed_id:
            moved = f"stays at id {last_processed_id!r}"
        else:
            how = "set by the full refresh" if full_refresh else "advanced"
            moved = f"{how} to id {last_processed_id!r} (was {'unset' if previous is None else f'id {previous!r}'})"
        result = Checkpointed(source=source, last_processed_id=last_processed_id, total_processed=total,
                              last_processed_at=last_at.isoformat() if last_at else None, processed=processed,
                              last_cursor=cursor, read_until=read_to.isoformat() if read_to else None)
        # with the id it was given, so a redo with another (the run fetched again) advances
        conn.execute(q("forget_step"), {**keys, "step": "checkpoint"})
        conn.execute(q("record_step"), {**keys, "step": result.STEP,
                                        "result": Jsonb({**result.to_xcom(), "last_id": last_id})})
    log.info("%s: checkpoint %s; %s records processed in all%s", source, moved, progress.count(total or 0),
             f"; time cursor at {cursor!r}" if cursor is not None else "")
    return result


def read_checkpoint(conn, source: str) -> str | None:
    row = conn.execute(q("select_checkpoint"), {"source": source}).fetchone()
    conn.rollback()
    return row[0] if row else None


def read_time_bounds(conn, source: str) -> tuple:
    """(the cursor's newest value loaded, the end of the newest interval read) of a source; Nones when unknown."""
    row = conn.execute(q("select_time_bounds"), {"source": source}).fetchone()
    conn.rollback()
    return tuple(row) if row else (None, None)


def record_skip(conn, source: str, *, kind: str, run_id: str, reason: str) -> None:
    """Record that run_id skipped the source and why (GET /sources shows the newest skip)."""
    with conn.transaction():
        conn.execute(q("record_skip"), {"source": source, "kind": kind, "run_id": run_id, "reason": reason})


def record_source_status(conn, source: str, *, kind: str | None, run_id: str, failure: Failure | None) -> None:
    """Record how the source fared in run_id, for GET /sources: failure None is a successful load (the last
    error stays, older than the success); otherwise its message (masked where it happened) and its summary, which
    alone is served. kind None keeps the recorded one. Commits only with the caller's transaction."""
    conn.execute(q("record_source_status"), {
        "source": source, "kind": kind, "run_id": run_id, "error": failure and failure.message,
        "summary": Jsonb(failure.summary()) if failure else None})
