"""Reads bounded by time, unit by unit: durations, a cursor's bound, a window's parameters, when a source is due,
the DAG's cadence, the catalog's checks, and the SQL that compares cursor values as times (real PostgreSQL)."""

from datetime import datetime, timedelta, timezone

import psycopg
import pytest

from sluice import sources, timing
from sluice.errors import InvalidSource

UTC = timezone.utc


@pytest.mark.parametrize("spelled, expected", [
    ("10m", timedelta(minutes=10)), ("6h", timedelta(hours=6)), ("2d", timedelta(days=2)),
    ("1w", timedelta(weeks=1)), ("90s", timedelta(seconds=90)), (" 0m ", timedelta(0)),
])
def test_durations_read_as_the_catalog_spells_them(spelled, expected):
    assert timing.duration(spelled, "every") == expected


@pytest.mark.parametrize("spelled", ["10", "m", "10min", "1.5h", "-2d", "2 d", "", 10, None, "2d6h"])
def test_a_bad_duration_is_refused_naming_where_and_how_to_write_it(spelled):
    with pytest.raises(InvalidSource, match=r"source 'x': every must be a duration like 10m, 6h or 2d"):
        timing.duration(spelled, "source 'x': every")


@pytest.mark.parametrize("last, lookback, sent", [
    ("2026-03-01T12:00:00Z", "10m", "2026-03-01T11:50:00Z"),
    ("2026-03-01T12:00:00+02:00", "1h", "2026-03-01T11:00:00+02:00"),
    ("2026-03-01 00:05:00", "10m", "2026-02-28 23:55:00"),
    ("2026-03-01T12:00:00.250Z", "1s", "2026-03-01T11:59:59.250000Z"),
    ("1772366400", "10m", "1772365800"),
    ("2026-03-01", "6h", "2026-02-28"),
    ("2026-03-01T12:00:00Z", "0s", "2026-03-01T12:00:00Z"),
    ("not a time", "10m", "not a time"),
])
def test_a_cursor_asks_from_its_newest_value_less_the_lookback_spelled_as_the_source_spells_it(last, lookback, sent):
    cursor = timing.Cursor.of({"field": "updated_at", "param": "updated_after", "lookback": lookback}, "cursor")
    assert cursor.bound(last) == sent


@pytest.mark.parametrize("format, sent", [
    ("iso8601", {"from": "2026-03-01T00:00:00+00:00", "to": "2026-03-02T00:00:00+00:00"}),
    ("epoch", {"from": "1772323200", "to": "1772409600"}),
    ("date", {"from": "2026-03-01", "to": "2026-03-02"}),
])
def test_a_window_sends_the_interval_in_its_format(format, sent):
    window = timing.Window.of({"start_param": "from", "end_param": "to", "format": format}, "window")
    start = datetime(2026, 3, 1, tzinfo=UTC)
    assert window.query(start, start + timedelta(days=1)) == sent


END = datetime(2026, 3, 5, tzinfo=UTC)


@pytest.mark.parametrize("read_until, run_type, due", [
    (None, "scheduled", True),  # never read
    (END - timedelta(days=2), "scheduled", True),  # exactly every ago
    (END - timedelta(days=3), "scheduled", True),  # a run missed: read at the next
    (END - timedelta(days=1), "scheduled", False),  # the off day
    (END - timedelta(days=1), "backfill", True),  # someone asked for this interval
    (END - timedelta(days=1), "manual", True),
    (END + timedelta(days=9), "backfill", True),  # a backfill of an old interval
])
def test_a_source_is_due_when_every_has_passed_since_the_interval_it_last_read(read_until, run_type, due):
    reason = timing.not_due(timedelta(days=2), read_until=read_until, interval_end=END, run_type=run_type)
    assert (reason is None) == due
    if not due:
        assert reason == ("not due: read up to 2026-03-04 00:00 UTC, every 2d; due from the run whose interval ends "
                          "2026-03-06 00:00 UTC")


def test_a_source_without_every_is_read_by_every_run():
    assert timing.not_due(None, read_until=END, interval_end=END, run_type="scheduled") is None


@pytest.mark.parametrize("everies, cadence", [
    ([], timedelta(days=1)), ([None, None], timedelta(days=1)), (["2d"], timedelta(days=2)),
    (["2d", "6h", None], timedelta(hours=6)), (["bogus", "3d"], timedelta(days=3)),
])
def test_the_dag_runs_at_the_finest_cadence_its_catalog_asks_for(everies, cadence):
    catalog = [{"name": f"s{i}", "kind": "csv", "endpoint": "x.csv", **({"every": e} if e else {})}
               for i, e in enumerate(everies)]
    assert timing.schedule(catalog) == cadence


def entry(**options):
    return {"name": "events", "kind": "api", "endpoint": "events", **options}


@pytest.mark.parametrize("options, message", [
    ({"every": "2 days"}, "source 'events': every must be a duration like 10m, 6h or 2d"),
    ({"every": "0d"}, "source 'events': every must be longer than 0"),
    ({"cursor": {"field": "updated_at"}}, "source 'events': cursor.param must be a non-empty string"),
    ({"cursor": {"field": "t", "param": "p", "lookback": "ten"}}, "source 'events': cursor.lookback must be a duration"),
    ({"cursor": {"field": "t", "param": "p", "since": "x"}}, "source 'events': cursor: unknown option 'since'"),
    ({"cursor": "updated_at"}, "source 'events': cursor must be an object with field, param"),
    ({"window": {"start_param": "from", "end_param": "to", "format": "unix"}},
     "source 'events': window.format 'unix' is not one of iso8601, epoch, date"),
    ({"window": {"start_param": "at", "end_param": "at"}}, "start_param and end_param are both 'at'"),
    ({"every": "2d", "window": {"start_param": "from", "end_param": "to"}}, "every and window exclude each other"),
])
def test_a_bad_time_option_fails_the_catalog_naming_the_source_and_option(options, message):
    with pytest.raises(InvalidSource, match=message.replace("(", r"\(")):
        sources.catalog({"sources": [entry(**options)]})


def test_time_options_round_trip_through_the_entry_xcom_carries():
    source = sources.from_entry(entry(cursor={"field": "updated_at", "param": "updated_after", "lookback": "10m"},
                                      every="2d"))
    again = sources.from_entry(sources.to_entry(source))
    assert again == source and again.every_delta == timedelta(days=2)
    assert sources.to_entry(source)["cursor"] == {"field": "updated_at", "param": "updated_after", "lookback": "10m"}


@pytest.mark.parametrize("options, full_refresh, deletes", [
    ({}, False, True),
    ({"cursor": {"field": "t", "param": "p"}}, False, False),
    ({"window": {"start_param": "a", "end_param": "b"}}, False, False),
    ({"window": {"start_param": "a", "end_param": "b"}}, True, True),
])
def test_a_read_bounded_by_time_is_not_whole_and_never_deletes_unless_a_full_refresh(options, full_refresh, deletes):
    source = sources.from_entry({"name": "items", "kind": "csv", "endpoint": "items.csv", **options})
    assert source.deletes_missing(full_refresh) is deletes


@pytest.mark.parametrize("value, expected", [
    ("2026-03-01T12:00:00Z", datetime(2026, 3, 1, 12, tzinfo=UTC)),
    ("2026-03-01T14:00:00+02:00", datetime(2026, 3, 1, 12, tzinfo=UTC)),
    ("2026-03-01 12:00:00", datetime(2026, 3, 1, 12, tzinfo=UTC)),  # no offset: UTC, whatever the session's zone
    ("2026-03-01", datetime(2026, 3, 1, tzinfo=UTC)),
    ("1772366400", datetime(2026, 3, 1, 12, tzinfo=UTC)),
    ("2026-02-30T00:00:00Z", None), ("2026-13-01", None), ("yesterday", None), ("", None),
])
def test_sql_and_python_read_a_cursor_value_as_the_same_time(database_url, value, expected):
    assert timing.cursor_time(value) == expected
    with psycopg.connect(database_url) as conn:
        conn.execute("set timezone = 'America/New_York'")
        assert conn.execute("select sluice_cursor_time(%s)", (value,)).fetchone()[0] == expected


@pytest.mark.parametrize("held, offered, kept", [
    (None, "2026-03-01T12:00:00Z", "2026-03-01T12:00:00Z"),
    ("2026-03-01T12:00:00Z", "2026-03-01T13:00:00+02:00", "2026-03-01T12:00:00Z"),  # 11:00 UTC: earlier
    ("2026-03-01T12:00:00Z", "2026-03-01T15:00:00+02:00", "2026-03-01T15:00:00+02:00"),
    ("2026-03-01T12:00:00Z", None, "2026-03-01T12:00:00Z"),
    ("2026-03-01T12:00:00Z", "garbage", "2026-03-01T12:00:00Z"),
])
def test_the_checkpoint_s_cursor_only_moves_forward_compared_as_times(database_url, held, offered, kept):
    with psycopg.connect(database_url) as conn:
        assert conn.execute("select sluice_later_cursor(%s, %s)", (held, offered)).fetchone()[0] == kept


@pytest.mark.parametrize("values, newest", [
    # one spelling: the text maximum
    (["2026-03-01T10:00:00Z", "2026-03-01T12:00:00Z", "2026-03-01T11:00:00Z"], "2026-03-01T12:00:00Z"),
    # offsets: 13:00+02:00 is 11:00 UTC, earlier than 12:00Z; 12:30-01:00 is 13:30 UTC, the newest
    (["2026-03-01T13:00:00+02:00", "2026-03-01T12:00:00Z", "2026-03-01T12:30:00-01:00"], "2026-03-01T12:30:00-01:00"),
    # separators, fractions, dates and epoch seconds side by side; a value that is not a time never wins
    (["2026-03-01 13:00:00", "2026-03-01T12:00:00.999Z", "2026-03-02", "zzzz", "1772409700"], "1772409700"),
    (["2026-03-01T12:00:00Z", "2026-02-30T00:00:00Z", None], "2026-03-01T12:00:00Z"),
    (["soon", None], None),
])
@pytest.mark.parametrize("field", ["updated_at", "meta.updated_at"])
def test_a_batch_s_newest_cursor_value_is_found_as_a_time_whatever_its_spelling(database_url, values, newest, field):
    import json

    from sluice import queries

    def record(number, value):
        at = {} if value is None else ({"updated_at": value} if field == "updated_at" else {"meta": {"updated_at": value}})
        return json.dumps({"id": number, **at})

    with psycopg.connect(database_url) as conn:
        for number, value in enumerate(values):
            conn.execute("insert into staged_records (run_id, source, record_no, source_id, data) "
                         "values ('r', 's', %s, %s, %s)", (number, str(number), record(number, value)))
        found = conn.execute(queries.query("pipeline.sql", "staged_cursor"),
                             {"run_id": "r", "source": "s", "field": field}).fetchone()
    assert (found and found[0]) == newest


def test_the_dag_runs_at_the_finest_every_of_its_catalog_file_one_run_at_a_time(tmp_path):
    import os
    import subprocess
    import sys

    from tests import airflow_env

    catalog = tmp_path / "catalog.yaml"
    catalog.write_text("sources:\n"
                       "  - {name: plans, kind: csv, endpoint: plans.csv, every: 2d}\n"
                       "  - {name: tickets, kind: api, endpoint: tickets, every: 6h}\n"
                       "  - {name: posts, kind: api, endpoint: posts}\n")
    code = ("import sys; sys.path[:0] = ['dags']; import etl_pipeline; dag = etl_pipeline.etl_pipeline();"
            "print(type(dag.timetable).__name__, dag.timetable.delta, dag.max_active_runs)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=airflow_env.REPO, env={**os.environ, "SLUICE_SOURCES_FILE": str(catalog)})
    assert result.stdout.strip().splitlines()[-1] == "DeltaDataIntervalTimetable 6:00:00 1"


def test_a_run_checkpointing_after_a_newer_one_never_moves_the_cursor_or_read_until_back(database_url):
    from sluice import warehouse

    newer, older = datetime(2026, 3, 3, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC)
    with psycopg.connect(database_url) as conn:
        newest = warehouse.advance_checkpoint(conn, "tickets", run_id="run-2", processed=5, lock_timeout_seconds=5,
                                              last_id="9", last_cursor="2026-03-02T23:00:00Z", read_until=newer)
        # the older run (its read saw less) checkpoints last, as a cleared or slower run does
        late = warehouse.advance_checkpoint(conn, "tickets", run_id="run-1", processed=3, lock_timeout_seconds=5,
                                            last_id="6", last_cursor="2026-03-02T23:30:00+02:00", read_until=older)
        assert warehouse.read_time_bounds(conn, "tickets") == ("2026-03-02T23:00:00Z", newer)
    assert (newest.last_cursor, newest.read_until) == ("2026-03-02T23:00:00Z", newer.isoformat())
    assert (late.last_cursor, late.read_until, late.last_processed_id) == (
        "2026-03-02T23:00:00Z", newer.isoformat(), "9")
