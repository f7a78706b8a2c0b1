"""The quality gate of a source's batch (write-audit-publish): measure it, judge it, record every check, and hold
it back when an error check or an error anomaly fails.

sluice.warehouse.upsert calls a Gate inside the source's upsert transaction: measure() before the merge (one SQL
pass over the batch's normalized rows, plus the counts Sluice already keeps and the type mix the reader tallied),
judge() after the merge and the deletes (a unique check reads the source as it would be published), which are rolled
back when the batch is held, then record() commits the results (and the hold) with the transaction.
A held batch stays in the work tables until the staging retention sweeps it; release() publishes exactly it.
"""

import logging
from dataclasses import dataclass, field

from psycopg import sql
from psycopg.types.json import Jsonb

from sluice import anomalies, checks, delete_guard, queries, timing, type_mix
from sluice.checks import Check
from sluice.results import Normalized, Stored
from sluice.sources import Source

log = logging.getLogger(__name__)

# a score weighs a passed error check three times a warn one (README "Data quality")
WEIGHTS = {"error": 3, "warn": 1}
# the measures the anomaly detector compares with the source's history, besides each field's null rate
COUNT_MEASURES = ("row_count",)
SHARE_MEASURES = ("reject_rate", "changed_share", "deleted_share")


def q(name: str) -> str:
    return queries.query("quality.sql", name)


@dataclass(frozen=True)
class Result:
    """One check of one batch: what was measured, against what, and the verdict (pass, fail or no_history)."""

    name: str
    kind: str  # check | anomaly
    severity: str
    measured: float | None
    threshold: str
    verdict: str
    detail: str = ""
    holds: bool = False  # a failure of it holds the batch (a row-level check quarantines records instead)

    @property
    def failed(self) -> bool:
        return self.verdict == "fail"


@dataclass(frozen=True)
class Report:
    """The gate's judgement of one batch: every result, the score and the measures kept for later runs."""

    source: str
    results: list[Result]
    measures: dict
    score: int
    released_by: str | None = None

    @property
    def blocking(self) -> list[Result]:
        return [result for result in self.results if result.failed and result.holds and result.severity == "error"]

    @property
    def refused(self) -> bool:
        """The delete guard refused the batch: its own way of holding it (no release publishes it, a run with
        accept_deletes takes the drop), recorded here so the results show it."""
        return any(result.name == delete_guard.CHECK for result in self.blocking)

    @property
    def held(self) -> bool:
        return bool(self.blocking) and self.released_by is None and not self.refused

    @property
    def status(self) -> str:
        if self.refused:
            return "refused"
        return "held" if self.held else "released" if self.released_by else "published"

    def table(self) -> str:
        """Every check as a fixed-width table, for the task log."""
        rows = [("check", "kind", "severity", "measured", "threshold", "verdict")]
        rows += [(r.name, r.kind, r.severity, "-" if r.measured is None else f"{r.measured:.6g}", r.threshold,
                  r.verdict + (f" ({r.detail})" if r.detail and r.failed else "")) for r in self.results]
        widths = [max(len(row[index]) for row in rows) for index in range(5)]
        lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[5] for row in rows]
        return f"{self.source}: quality score {self.score}, batch {self.status}\n" + "\n".join(lines)

    def held_message(self, run_id: str) -> str:
        failed = "; ".join(f"{r.name} {'-' if r.measured is None else f'{r.measured:.6g}'} (threshold {r.threshold}"
                           f"{', ' + r.detail if r.detail else ''})" for r in self.blocking)
        return (f"{self.source}: the quality gate held the batch back: {failed}. Nothing of the batch reached "
                f"normalized_data and the checkpoint stays. See GET /runs/{run_id}/quality. To publish exactly this "
                f"batch after looking at it: python -m sluice.release {self.source} '{run_id}' --by <your name>; otherwise "
                "the next run's fetch supersedes it")


@dataclass(frozen=True)
class Gate:
    """The gate of one source's upsert: its catalog entry (checks, anomalies) and, for a release, who releases."""

    source: Source
    released_by: str | None = None
    # the fields the batch pass reads: every mapped column and declared field (null rates), by source path
    paths: dict = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "paths", type_mix.paths(self.source))

    @property
    def _batch_checks(self) -> list[Check]:
        return [check for check in self.source.checks if not check.row_level]

    def measure(self, conn, keys: dict, *, normalized: Normalized, live_before: int, incoming: int) -> dict:
        """The batch's own measures (before the upsert): the records and per field its null count from what
        normalize wrote (_nulls), the records failing each row-level warn check (_warned), and the newest time where
        a freshness check asks, in one pass over its staged records (_parsed). normalized: normalize's counts;
        live_before and incoming: the source's live rows and the run's normalized_stage rows, which tell whether the
        skipped records can be found by a scan."""
        nulls = self.source.anomalies.enabled or any(check.check == "null_rate" for check in self._batch_checks)
        warned = [check for check in self.source.checks if check.row_level and not check.quarantines]
        measured = self._parsed(conn, keys)
        if nulls or warned:
            rows, counted = self._batch(conn, keys, normalized, live_before, incoming, nulls=nulls)
            # the null counts' records, when measured, are the batch's: each null rate is a share of them
            measured |= counted
            if warned:
                measured |= self._warned(conn, keys, rows, warned)
        return measured

    def _batch(self, conn, keys: dict, normalized: Normalized, live_before: int, incoming: int, *,
               nulls: bool) -> tuple[sql.Composable, dict]:
        """The batch's rows (quality.sql batch_rows, with the skipped records found the cheapest way that finds
        exactly them), and its records with each field's null count (batch_nulls) when nulls."""
        fragments = [sql.SQL(q("null_column")).format(column=sql.Identifier(name)) if name in self.source.mapping
                     else sql.SQL(q("null_attribute")).format(name=sql.Literal(name))
                     for name in (self.paths if nulls else ())]
        measures = sql.SQL("").join(sql.SQL(", ") + fragment for fragment in fragments)
        skipped = normalized.skipped_unchanged
        # the scan finds at least the live rows that the stage and the rejects do not hold: more than normalize
        # skipped (an incremental read, records missing from the read) and it cannot be the skipped records alone
        scan = skipped and live_before - incoming - normalized.rejected - normalized.renormalized_rejected <= skipped

        def counted(way: str | None) -> tuple[sql.Composable, tuple]:
            rows = sql.SQL(q("batch_rows")).format(skipped=sql.SQL(q(way)) if way else sql.SQL(""))
            return rows, conn.execute(sql.SQL(q("batch_nulls")).format(rows=rows, measures=measures), keys).fetchone()

        rows, row = counted("skipped_by_scan") if scan else (None, None)
        if row is not None and row[1] != skipped:
            log.info("%s: the scan found %d rows for the %d records normalize skipped as unchanged; measuring them "
                     "by their ids", keys["source"], row[1], skipped)
            row = None
        if row is None:
            rows, row = counted("skipped_by_ids" if skipped else None)
        names = list(self.paths) if nulls else []
        return rows, {"records": row[0], **{f"nulls:{name}": value for name, value in zip(names, row[2:])}}

    def _warned(self, conn, keys: dict, rows: sql.Composable, warned: list[Check]) -> dict:
        """The records of the batch failing each row-level warn check, and those failing any (warned), from their
        normalized values with the validators an error check's schema would run (sluice.checks.validators)."""
        # only a source with warn checks needs the schema's modules
        from marshmallow import ValidationError

        from sluice.rules import read_json

        types = {**checks.COLUMN_TYPES, **{name: spec.type for name, spec in self.source.fields.items()}}
        tests = [(check, checks.validators(check, types[check.field])) for check in warned]
        failing = dict.fromkeys((check.name for check in warned), 0)
        records = 0
        with conn.cursor(name=f"warned_{keys['source']}") as cursor:
            cursor.execute(sql.SQL(q("batch_values")).format(rows=rows), keys)
            while batch := cursor.fetchmany(5000):
                for source_id, name, value, description, attributes in batch:
                    values = {"source_id": source_id, "name": name, "value": value, "description": description}
                    if self.source.fields:
                        values.update(read_json(attributes))
                    failed = False
                    for check, validators in tests:
                        found = values.get(check.field)
                        if found is None:
                            bad = check.check == "not_null"  # a missing value fails only not_null, as in the schema
                        else:
                            bad = False
                            for validate in validators:
                                try:
                                    validate(found)
                                except ValidationError:
                                    bad = True
                                    break  # one failing validator fails the check
                        if bad:
                            failing[check.name] += 1
                            failed = True
                    records += failed
        return {"warned": records, **{f"warned:{name}": count for name, count in failing.items()}}

    def _parsed(self, conn, keys: dict) -> dict:
        """The newest time of each field a freshness check reads, in one pass over the staged payloads."""
        wanted = []  # (measure name, field index)
        names = list(self.paths)
        for check in self._batch_checks:
            if check.check == "freshness":
                wanted.append((f"age:{check.field}", names.index(check.field)))
        if not wanted:
            return {}
        used = sorted({index for _, index in wanted})
        lookups = sql.SQL(", ").join(sql.SQL(q("measure_lookup")).format(
            path=sql.Placeholder(f"path_{index}"), value=sql.Identifier(f"f{index}")) for index in used)
        measures = sql.SQL("").join(sql.SQL(", ") + sql.SQL(q("measure_age")).format(value=sql.Identifier(f"f{index}"))
                                    for _, index in wanted)
        statement = sql.SQL(q("batch_measures")).format(lookups=lookups, measures=measures)
        row = conn.execute(statement, {**keys, **{f"path_{index}": self.paths[names[index]] for index in used}}
                           ).fetchone()
        return {"records": row[0], **{name: value for (name, _), value in zip(wanted, row[1:])}}

    def _duplicates(self, conn, keys: dict, name: str) -> int:
        """unique: after the merge and the deletes, the occurrences beyond the first of each value that a record of
        the batch holds and another live record of the source holds too (quality.sql duplicates)."""
        if name in self.source.mapping:
            value = sql.SQL(q("unique_column")).format(column=sql.Identifier(name))
        else:
            value = sql.SQL(q("unique_attribute")).format(name=sql.Literal(name))
        (count,) = conn.execute(sql.SQL(q("duplicates")).format(value=value), keys).fetchone()
        return count

    def judge(self, conn, keys: dict, batch: dict, *, stored: Stored, normalized: Normalized, updated: int,
              deleted: int, live_before: int, deletes: delete_guard.Measured | None = None) -> Report:
        """Every check and anomaly of the batch: batch (measure()'s), the lane's counts and the merge's, and the
        delete guard's judgement of a whole read (deletes; None: it did not judge), as the check `deletes`."""
        rows = stored.stored + stored.rejected
        rejected = stored.rejected + normalized.rejected
        records = batch.get("records", 0)
        measures = {"row_count": rows, "reject_rate": rejected / rows if rows else 0.0,
                    "changed_share": updated / live_before if live_before else 0.0,
                    "deleted_share": deleted / live_before if live_before else 0.0,
                    "changed_rate": (updated + deleted) / live_before if live_before else 0.0,
                    **{f"null_rate:{name[6:]}": (value / records if records else 0.0)
                       for name, value in batch.items() if name.startswith("nulls:")},
                    # a field none of whose values was present has no mix to compare
                    **{f"type_mix:{name}": mix for name, counts in stored.json_types.items()
                       if (mix := type_mix.shares(counts))}}
        results = [self._checked(conn, keys, check, measures, batch) for check in self.source.checks]
        if deletes is not None:
            results.append(Result(delete_guard.CHECK, "check", "error", deletes.share, deletes.threshold(),
                                  "fail" if deletes.refused else "pass",
                                  f"{deletes.missing} of {deletes.live_rows} live rows missing from the read",
                                  holds=True))
        if self.source.anomalies.enabled:
            results += self._anomalies(conn, keys, measures)
        passed = [result for result in results if result.verdict in ("pass", "fail")]
        weight = sum(WEIGHTS[result.severity] for result in passed)
        checks_share = (sum(WEIGHTS[r.severity] for r in passed if not r.failed) / weight) if weight else 1.0
        # the share of the read's records passing every row-level check: neither quarantined nor failing a warn one
        rows_share = 1 - ((rejected + batch.get("warned", 0)) / rows if rows else 0.0)
        return Report(self.source.name, results, measures, round(100 * checks_share * rows_share),
                      released_by=self.released_by)

    def _checked(self, conn, keys: dict, check: Check, measures: dict, batch: dict) -> Result:
        def result(measured, failed: bool, detail: str = "") -> Result:
            return Result(check.name, "check", check.severity, measured, check.threshold(),
                          "fail" if failed else "pass", detail, holds=not check.row_level)

        if check.quarantines:
            (count,) = conn.execute(q("check_rejects"), {**keys, "marker": f"fails check {check.name} ("}).fetchone()
            return result(count, count > 0, f"{count} records quarantined" if count else "")
        if check.row_level:  # warn: the records loaded all the same
            count = batch[f"warned:{check.name}"]
            return result(count, count > 0, f"{count} records loaded failing it" if count else "")
        if check.check == "row_count":
            rows = measures["row_count"]
            return result(rows, (check.min is not None and rows < check.min) or
                          (check.max is not None and rows > check.max))
        if check.check in ("reject_rate", "changed_rate", "null_rate"):
            value = measures[check.name if check.check == "null_rate" else check.check]
            return result(value, value > check.max)
        if check.check == "unique":
            duplicates = self._duplicates(conn, keys, check.field)
            return result(duplicates, duplicates > 0, f"{duplicates} values repeated" if duplicates else "")
        age = batch[f"age:{check.field}"]  # freshness
        limit = timing.duration(check.max_age, "max_age").total_seconds()
        return result(age, age is None or age > limit, "no time found" if age is None else f"{age:.0f}s old")

    def _anomalies(self, conn, keys: dict, measures: dict) -> list[Result]:
        config = self.source.anomalies
        history = [row[0] for row in conn.execute(q("history"), {**keys, "runs": config.runs}).fetchall()]
        found = []
        rows = measures["row_count"]
        names = [*COUNT_MEASURES, *SHARE_MEASURES, *(name for name in measures if name.startswith("null_rate:")),
                 *(name for name in measures if name.startswith("type_mix:"))]
        for name in names:
            past = [entry[name] for entry in history if entry.get(name) is not None]
            count = name in COUNT_MEASURES
            if name.startswith("type_mix:"):
                verdict = anomalies.detect_mix(past, measures[name], floor=anomalies.share_floor(rows))
                measured = verdict.value  # the distance from the history's median mix (None: no history)
            else:
                verdict = anomalies.detect(past, measures[name], count=count,
                                           floor=anomalies.COUNT_FLOOR if count else anomalies.share_floor(rows))
                measured = measures[name]
            found.append(Result(f"anomaly:{name}", "anomaly", config.severity, measured,
                                "-" if verdict.anomalous is None else f"{verdict.low:.4g}..{verdict.high:.4g}",
                                "no_history" if verdict.anomalous is None else "fail" if verdict.anomalous else "pass",
                                verdict.detail() if verdict.anomalous else "", holds=True))
        return found

    def record(self, conn, keys: dict, report: Report) -> None:
        """Keep every result and the batch's verdict (in the upsert's transaction); a later batch's verdict
        supersedes the source's older held batches."""
        from sluice import sources

        conn.execute(q("forget_results"), keys)
        for result in report.results:
            conn.execute(q("record_result"), {**keys, "check_name": result.name, "kind": result.kind,
                                              "severity": result.severity, "measured": result.measured,
                                              "threshold": result.threshold, "verdict": result.verdict,
                                              "detail": result.detail})
        conn.execute(q("record_quality_run"), {
            **keys, "status": report.status, "score": report.score, "measures": Jsonb(report.measures),
            # without its endpoint: an endpoint may carry a query-string key, and a release reads nothing
            "source_entry": Jsonb({**sources.to_entry(self.source), "endpoint": ""}) if report.held else None,
            "released_by": self.released_by})
        superseded = [row[0] for row in conn.execute(q("supersede_holds"), keys).fetchall()]
        if superseded:
            log.warning("%s: this run's batch supersedes the held batch of run %s, which is no longer releasable",
                        keys["source"], ", ".join(superseded))
        log.info("%s", report.table())
