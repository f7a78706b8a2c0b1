"""A whole run's task logs (dag.test against real Postgres and loopback sources): each phase says what it did,
in sentences, with the counts the etl_runs row holds.

dag.test() runs each task in this process (airflow.sdk's InProcessTestSupervisor) with Airflow's own logging
configuration, which replaces the root logger's handlers (pytest's caplog among them). So the records are
taken where the sluice loggers emit them, at the level Airflow configured, and filed under the task that
was running (its Airflow context), as the task log of that task would show them.
"""

import logging
import re
from collections import defaultdict

import pytest

# the whole runs of test_pipeline_runs: 6 bad CSV rows, 3 of which fail staging and 3 the rules
from tests.test_pipeline_runs import API_RECORDS, CSV_ROWS, pipeline  # noqa: F401 # pipeline is a fixture

PAGE_SIZE = 40  # pipeline_harness.start_sources
NUMBER = r"([\d,]+)"
SECONDS = r"in [\d.]+ s$"


class TaskLogs(logging.Handler):
    """The sluice package's log lines of a run, per task id."""

    def __init__(self):
        super().__init__()
        self.lines: dict[str, list[str]] = defaultdict(list)

    def emit(self, record: logging.LogRecord) -> None:
        from airflow.sdk import get_current_context

        try:
            task_id = get_current_context()["ti"].task_id
        except RuntimeError:  # outside any task
            task_id = None
        self.lines[task_id].append(record.getMessage())

    def line(self, task_id: str, pattern: str) -> re.Match:
        """The one line of the task's log matching pattern."""
        found = [m for m in (re.search(pattern, line) for line in self.lines[task_id]) if m]
        assert len(found) == 1, f"{task_id}: {len(found)} lines match {pattern!r} in:\n" + "\n".join(
            self.lines[task_id])
        return found[0]


def number(text: str) -> int:
    return int(text.replace(",", ""))


@pytest.fixture
def logs():
    handler = TaskLogs()
    logger = logging.getLogger("sluice")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def test_a_runs_task_logs_say_what_each_phase_did_with_the_counts_of_its_etl_runs_row(pipeline, logs):
    state, run = pipeline.run()
    assert state == "success"
    csv, api = run["source_counts"]["csv"], run["source_counts"]["api"]

    logs.line("init_schema", r"^init_schema: (the warehouse schema is current|applied .+) \([\d.]+ s\)$")

    # ingest: what was downloaded, staged and quarantined (with the first reasons), and how long it took
    downloaded = logs.line("ingest", rf"^csv: downloaded ([\d.]+) kB {SECONDS}")
    assert float(downloaded[1]) == pytest.approx(len(pipeline.sources.routes["items.csv"].body) / 1000, abs=0.05)
    staged = logs.line("ingest", rf"^csv: staged {NUMBER} records, quarantined {NUMBER} \((.+)\) {SECONDS}")
    staged_csv, quarantined_csv = number(staged[1]), number(staged[2])
    assert staged_csv + quarantined_csv == csv["fetched"] == CSV_ROWS
    assert quarantined_csv == 3 and "blank id" in staged[3] and "expected 4 fields, got 2" in staged[3]
    fetched = logs.line("ingest", rf"^api: fetched {NUMBER} pages \(.+\), staged {NUMBER} records, "
                                      rf"quarantined 0 {SECONDS}")
    assert number(fetched[1]) == -(-API_RECORDS // PAGE_SIZE)
    assert number(fetched[2]) == api["fetched"] == API_RECORDS

    # store_raw: the COPY, then what the raw table got
    for source in ("api", "csv"):
        logs.line("store_raw", rf"^{source}: copied the staged file \([\d.]+ kB\) into PostgreSQL {SECONDS}")
    raw = logs.line("store_raw", rf"^csv: stored {NUMBER} staged records in raw_csv_data: {NUMBER} inserted, "
                                 rf"0 updated, 0 unchanged; 0 superseded by a later fetch; quarantined {NUMBER} "
                                 rf"\({NUMBER} found while staging, 0 duplicate ids\) {SECONDS}")
    assert number(raw[1]) == number(raw[2]) == staged_csv == pipeline.value("select count(*) from raw_csv_data")
    assert number(raw[3]) == number(raw[4]) == quarantined_csv
    logs.line("store_raw", rf"^api: stored {API_RECORDS} staged records in raw_api_data: {API_RECORDS} inserted, ")

    # normalize: valid and rejected, with the first reasons; upsert: what normalized_data got
    normalized = logs.line("normalize", rf"^csv: normalized {NUMBER} staged records: {NUMBER} valid \({NUMBER} by the "
                                        rf"SQL fast path\), rejected {NUMBER} \((.+)\), 0 skipped as unchanged")
    assert number(normalized[1]) == staged_csv
    assert number(normalized[4]) == csv["rejected"] - quarantined_csv == 3
    assert "is not a number" in normalized[5] and "name: missing" in normalized[5]
    upserted = logs.line("upsert", rf"^csv: upserted {NUMBER} normalized rows into normalized_data: {NUMBER} inserted, "
                                   rf"0 updated, 0 unchanged, 0 superseded by a later fetch; 0 soft-deleted, 0 "
                                   rf"undeleted; live rows 0 → {NUMBER} {SECONDS}")
    assert number(upserted[1]) == number(upserted[2]) == number(normalized[2]) == csv["inserted"] == number(upserted[3])
    logs.line("upsert", rf"^api: upserted {API_RECORDS} normalized rows into normalized_data: {API_RECORDS} inserted")

    # checkpoint: where it moved; record_run: the status and the totals the row holds
    checkpoints = dict(pipeline.rows("select source, last_processed_id from etl_checkpoint"))
    for source in ("api", "csv"):
        logs.line("checkpoint", rf"^{source}: checkpoint advanced to id '{checkpoints[source]}' \(was unset\)")
    totals = ", ".join(f"{run[name]:,} {name}"
                       for name in ("fetched", "inserted", "updated", "unchanged", "superseded", "rejected"))
    logs.line("record_run", rf"^run {re.escape(run['run_id'])} recorded as success in etl_runs "
                            rf"\(id {run['id']}\): {totals}$")

    # sentences for people, not dumps of results; nothing outside a task
    every = [line for lines in logs.lines.values() for line in lines]
    assert not [line for line in every if re.search(r"[{}]|'\w+': ", line)]
    assert None not in logs.lines


def test_an_unchanged_file_logs_what_its_last_load_left(pipeline, logs):
    _, first = pipeline.run()
    logs.lines.clear()

    state, run = pipeline.run()

    assert state == "success"
    csv = run["source_counts"]["csv"]
    stored = logs.line("store_raw", rf"^csv: unchanged since run {re.escape(first['run_id'])} loaded the same file: "
                                    rf"stored nothing, skipped {NUMBER} records; {NUMBER} rejects of that load copied")
    assert number(stored[1]) == CSV_ROWS - 3 and number(stored[2]) == csv["rejected"] == 6
    normalized = logs.line("normalize", rf"^csv: unchanged file: skipped {NUMBER} records, {NUMBER} rejected again")
    assert number(normalized[1]) == csv["unchanged"] == CSV_ROWS - 6 and number(normalized[2]) == 3
    logs.line("upsert", rf"^csv: unchanged file: nothing to upsert; {NUMBER} live rows")
    logs.line("checkpoint", rf"^csv: checkpoint stays at id '{CSV_ROWS - 1}'; ")


def test_a_second_read_logs_what_it_left_unchanged(pipeline, logs):
    pipeline.run()
    # the file is read again, as one that changed elsewhere or a source with declared checks would be
    pipeline.rows("update etl_checkpoint set loaded_file = null returning source")
    logs.lines.clear()

    state, run = pipeline.run()

    assert state == "success"
    csv = run["source_counts"]["csv"]
    raw = logs.line("store_raw", rf"^csv: stored {NUMBER} staged records in raw_csv_data: 0 inserted, 0 updated, "
                                 rf"{NUMBER} unchanged;")
    assert number(raw[1]) == number(raw[2]) == CSV_ROWS - 3
    # the records the rules reject are validated again each run, and rejected again
    normalized = logs.line("normalize", rf"^csv: normalized {NUMBER} staged records: 0 valid \(0 by the SQL fast "
                                        rf"path\), rejected {NUMBER} \(.+\), {NUMBER} skipped as unchanged")
    assert number(normalized[2]) == csv["rejected"] - 3 == 3
    assert number(normalized[3]) == csv["unchanged"] == CSV_ROWS - 6
    logs.line("upsert", r"^csv: upserted 0 normalized rows into normalized_data: 0 inserted, 0 updated, 0 unchanged")
    logs.line("checkpoint", rf"^csv: checkpoint stays at id '{CSV_ROWS - 1}'; ")
