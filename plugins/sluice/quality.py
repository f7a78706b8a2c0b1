"""The quality gate of a source's batch (write-audit-publish): measure it, judge it, record every check, and hold
it back when an error check or an error anomaly fails.

sluice.warehouse.upsert calls a Gate inside the source's upsert transaction: measure() before the merge (one SQL
pass over the staged batch, plus the counts Sluice already keeps), judge() after the merge and the deletes, which
are rolled back when the batch is held, then record() commits the results (and the hold) with the transaction.
A held batch stays in the work tables until the staging retention sweeps it; release() publishes exactly it.
"""

import logging
from dataclasses import dataclass, field

from psycopg import sql
from psycopg.types.json import Jsonb

from sluice import anomalies, delete_guard, queries, timing
from sluice.checks import Check
from sluice.results import Normalized, Stored
from sluice.sources import Source

log = logging.getLogger(__name__)

# a score weighs a passed error check three times a warn one (README "Data quality")
WEIGHTS = {"error": 3, "warn": 1}
# the measures the anomaly detector compares with the source's history, besides each field's null rate
COUNT_MEASURES = ("row_count",)
SHARE_MEASURES = ("reject_rate", "changed_share", "deleted_share")
# the mapped columns of normalized_stage and normalized_data that hold numbers (the others hold text)
NUMBER_COLUMNS = ("value",)


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
        paths = {**self.source.mapping, **{name: spec.path for name, spec in self.source.fields.items()}}
        object.__setattr__(self, "paths", paths)

    @property
    def _batch_checks(self) -> list[Check]:
        return [check for check in self.source.checks if not check.row_level]

    def measure(self, conn, keys: dict, *, normalized: Normalized, live_before: int, incoming: int) -> dict:
        """The batch's own measures (before the upsert): the records and per field its null count from what
        normalize wrote (_nulls), plus duplicates and the newest time where a check asks, in one pass over its
        staged records (_parsed). normalized: normalize's counts; live_before and incoming: the source's live rows
        and the run's normalized_stage rows, which tell whether the skipped records can be found by a scan."""
        nulls = self.source.anomalies.enabled or any(check.check == "null_rate" for check in self._batch_checks)
        # the null counts' records, when measured, are the batch's: each null rate is a share of them
        return {**self._parsed(conn, keys),
                **(self._nulls(conn, keys, normalized, live_before, incoming) if nulls else {})}

    def _nulls(self, conn, keys: dict, normalized: Normalized, live_before: int, incoming: int) -> dict:
        """The batch's records and each field's null count, from normalize's rows (quality.sql batch_nulls)."""
        fragments = [sql.SQL(q("null_number" if name in NUMBER_COLUMNS else "null_text")).format(
                         column=sql.Identifier(name)) if name in self.source.mapping
                     else sql.SQL(q("null_attribute")).format(name=sql.Literal(name)) for name in self.paths]
        measures = sql.SQL("").join(sql.SQL(", ") + fragment for fragment in fragments)
        skipped = normalized.skipped_unchanged
        # the scan finds at least the live rows that the stage and the rejects do not hold: more than normalize
        # skipped (an incremental read, records missing from the read) and it cannot be the skipped records alone
        scan = skipped and live_before - incoming - normalized.rejected - normalized.renormalized_rejected <= skipped

        def counted(way: str | None) -> tuple:
            skipped_rows = sql.SQL(q(way)) if way else sql.SQL("")
            return conn.execute(sql.SQL(q("batch_nulls")).format(measures=measures, skipped=skipped_rows),
                                keys).fetchone()

        row = counted("skipped_by_scan") if scan else None
        if row is not None and row[1] != skipped:
            log.info("%s: the scan found %d rows for the %d records normalize skipped as unchanged; measuring them "
                     "by their ids", keys["source"], row[1], skipped)
            row = None
        if row is None:
            row = counted("skipped_by_ids" if skipped else None)
        return {"records": row[0], **{f"nulls:{name}": value for name, value in zip(self.paths, row[2:])}}

    def _parsed(self, conn, keys: dict) -> dict:
        """Duplicates and the newest time where a check asks, in one pass over the staged payloads."""
        wanted = []  # (measure name, fragment, field index)
        names = list(self.paths)
        for check in self._batch_checks:
            if check.check == "unique":
                wanted.append((f"duplicates:{check.field}", "measure_duplicates", names.index(check.field)))
            elif check.check == "freshness":
                wanted.append((f"age:{check.field}", "measure_age", names.index(check.field)))
        if not wanted:
            return {}
        used = sorted({index for _, _, index in wanted})
        lookups = sql.SQL(", ").join(sql.SQL(q("measure_lookup")).format(
            path=sql.Placeholder(f"path_{index}"), value=sql.Identifier(f"f{index}")) for index in used)
        measures = sql.SQL("").join(sql.SQL(", ") + sql.SQL(q(fragment)).format(value=sql.Identifier(f"f{index}"))
                                    for _, fragment, index in wanted)
        statement = sql.SQL(q("batch_measures")).format(lookups=lookups, measures=measures)
        row = conn.execute(statement, {**keys, **{f"path_{index}": self.paths[names[index]] for index in used}}
                           ).fetchone()
        return {"records": row[0], **{name: value for (name, _, _), value in zip(wanted, row[1:])}}

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
                       for name, value in batch.items() if name.startswith("nulls:")}}
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
        rows_share = 1 - measures["reject_rate"]
        return Report(self.source.name, results, measures, round(100 * checks_share * rows_share),
                      released_by=self.released_by)

    def _checked(self, conn, keys: dict, check: Check, measures: dict, batch: dict) -> Result:
        def result(measured, failed: bool, detail: str = "") -> Result:
            return Result(check.name, "check", check.severity, measured, check.threshold(),
                          "fail" if failed else "pass", detail, holds=not check.row_level)

        if check.row_level:
            (count,) = conn.execute(q("check_rejects"), {**keys, "marker": f"fails check {check.name} ("}).fetchone()
            return result(count, count > 0, f"{count} records quarantined" if count else "")
        if check.check == "row_count":
            rows = measures["row_count"]
            return result(rows, (check.min is not None and rows < check.min) or
                          (check.max is not None and rows > check.max))
        if check.check in ("reject_rate", "changed_rate", "null_rate"):
            value = measures[check.name if check.check == "null_rate" else check.check]
            return result(value, value > check.max)
        if check.check == "unique":
            duplicates = batch[f"duplicates:{check.field}"]
            return result(duplicates, duplicates > 0, f"{duplicates} values repeated" if duplicates else "")
        age = batch[f"age:{check.field}"]  # freshness
        limit = timing.duration(check.max_age, "max_age").total_seconds()
        return result(age, age is None or age > limit, "no time found" if age is None else f"{age:.0f}s old")

    def _anomalies(self, conn, keys: dict, measures: dict) -> list[Result]:
        config = self.source.anomalies
        history = [row[0] for row in conn.execute(q("history"), {**keys, "runs": config.runs}).fetchall()]
        found = []
        rows = measures["row_count"]
        names = [*COUNT_MEASURES, *SHARE_MEASURES, *(name for name in measures if name.startswith("null_rate:"))]
        for name in names:
            past = [entry[name] for entry in history if entry.get(name) is not None]
            count = name in COUNT_MEASURES
            verdict = anomalies.detect(past, measures[name], count=count,
                                       floor=anomalies.COUNT_FLOOR if count else anomalies.share_floor(rows))
            found.append(Result(f"anomaly:{name}", "anomaly", config.severity, measures[name],
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
