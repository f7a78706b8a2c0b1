"""schemathesis over /openapi.json: generated valid and invalid requests against the app on a real Postgres.

First one deterministic run of schemathesis's engine (coverage cases, then up to 30 generated examples per
operation, valid and invalid) through the WSGI app; the tests read its checks: no 5xx, every answer
matches its documented status, content type and schema, invalid input is a 400 (nothing else: not a 404,
not a 422; a 414 when the URL is over-long), a wrong method is a 405 with an Allow header, and valid input
is accepted.

Then (slow) what an outsider runs: schemathesis's coverage, fuzzing and stateful phases for LIVE_SECONDS
against gunicorn on 127.0.0.1 over what a real DAG run loaded, with every check it has; all must pass.

The engine is driven directly: schemathesis's pytest integration (`from_fixture`) does not run under
pytest 9, which the project pins.
"""

import re
from collections import Counter
from dataclasses import dataclass, field

import pytest
import schemathesis
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import events
from test_security import request, serve_with_gunicorn
from webapp_fixtures import catalog, insert_checkpoint, insert_records, insert_rejects, insert_run

from tests.pipeline_harness import Pipeline, point_airflow_at, start_sources
from webapp import create_app, db

RUN_ID = "scheduled__2024-05-01T00:00:00+00:00"
OPERATIONS = 13  # every route of the app (test_webapp_openapi checks that the document lists each one)
CONFIG = SchemathesisConfig.from_dict({
    "generation": {"max-examples": 30, "deterministic": True, "database": "none"},
    "checks": {"negative_data_rejection": {"expected-statuses": ["400", "414"]}},
    # the document has no examples and no links between operations
    "phases": {"examples": {"enabled": False}, "stateful": {"enabled": False}},
})
LIVE_SECONDS = 60  # schemathesis repeats fuzzing and stateful runs until this is spent (CI keeps the suite under 15 min)
LIVE_CONFIG = SchemathesisConfig.from_dict({
    "max-time": LIVE_SECONDS,
    "generation": {"database": "none"},
    "checks": {"negative_data_rejection": {"expected-statuses": ["400", "414"]}},
    "phases": {"examples": {"enabled": False}},  # coverage, fuzzing, stateful (links it infers from answers)
})


@dataclass
class Report:
    """What the run checked: per check, how often it passed and what failed."""

    passed: Counter = field(default_factory=Counter)
    failures: dict[str, list[str]] = field(default_factory=dict)
    tested: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)
    cases_per_phase: Counter = field(default_factory=Counter)

    def failed(self, *checks: str) -> list[str]:
        return [failure for check in checks for failure in self.failures.get(check, [])]

    def record(self, event: events.ScenarioFinished) -> None:
        if event.label is not None:  # a stateful scenario spans operations and has none
            self.tested.add(event.label)
        self.cases_per_phase[event.phase.value] += len(event.recorder.cases)
        for case_id, checks in event.recorder.checks.items():
            for check in checks:
                if check.failure_info is None:
                    self.passed[check.name] += 1
                else:
                    case = event.recorder.cases[case_id].value
                    response = event.recorder.find_response(case_id=case_id)
                    self.failures.setdefault(check.name, []).append(
                        describe(case, response, check.failure_info.failure))


def run_engine(api_schema) -> Report:
    result = Report()
    for event in schemathesis.engine.from_schema(api_schema).execute():
        if isinstance(event, events.ScenarioFinished) and event.status.name != "SKIP":
            result.record(event)
        elif isinstance(event, (events.NonFatalError, events.FatalError)):
            result.errors.append(repr(event))
    return result


def describe(case, response, failure) -> str:
    status = response.status_code if response is not None else "no response"
    return (f"{case.method} {case.formatted_path} query={case.query} → {status}: {failure.title}: "
            f"{failure.message[:300]}")


@pytest.fixture(scope="module")
def report(make_database) -> Report:
    url = make_database()
    insert_records(url, catalog(12))
    insert_run(url, RUN_ID, source_counts={"api": {"fetched": 6, "inserted": 6}, "csv": {"fetched": 6, "rejected": 1}})
    # an older failed run for /stats to report; the newest succeeded, so /health is 200 and any 5xx is a bug
    insert_run(url, "manual__2024-04-30T00:00:00+00:00", status="failed", error_message="ingest_api: boom",
               ended_hours_ago=30)
    insert_rejects(url, RUN_ID, [{"source": "csv", "source_id": "7", "reason": "value: 'x' is not a number",
                                  "payload": {"id": "7", "value": "x"}}])
    insert_checkpoint(url, "api", 6)
    app = create_app({"AUTH": "none", "DATABASE_URL": url, "POOL_MIN": 1})
    try:
        # from_dict, not from_wsgi: from_wsgi leaves out the operation it loaded the document from
        api_schema = schemathesis.openapi.from_dict(app.test_client().get("/openapi.json").json, config=CONFIG)
        api_schema.app = app  # requests go to the WSGI app in process
        return run_engine(api_schema)
    finally:
        db.warehouse(app).close()


def test_every_operation_was_exercised_without_engine_errors(report):
    assert report.errors == []
    assert len(report.tested) == OPERATIONS, sorted(report.tested)


def test_no_server_errors(report):
    assert report.passed["not_a_server_error"] > 200
    assert report.failed("not_a_server_error") == []


@pytest.mark.parametrize("check", ["response_schema_conformance", "status_code_conformance",
                                   "content_type_conformance", "response_headers_conformance"])
def test_answers_match_the_document(report, check):
    assert report.passed[check] > 200
    assert report.failed(check) == []


def test_invalid_input_is_refused_with_a_400(report):
    assert report.passed["negative_data_rejection"] > 50
    assert report.failed("negative_data_rejection") == []


def test_a_wrong_method_is_a_405_with_allow(report):
    assert report.passed["unsupported_method"] > 0 and report.passed["allow_header_conformance"] > 0
    assert report.failed("unsupported_method", "allow_header_conformance") == []


# a /data or /runs/<run_id>/rejects request naming a source that neither warehouse below holds (both hold api and
# csv), refused
_UNKNOWN_SOURCE = re.compile(r"^GET /(data|runs/[^ ]*/rejects) query=.*'source': '(?!(?:api|csv)')[^']*'.* → 400: ")
# a /data request with fields or order: they name a source's declared fields (Attributes_<source> in the document,
# none in these warehouses) and need source=
_DECLARED_FIELDS = re.compile(r"^GET /data query=.*'(fields|order)': .* → 400: ")


def not_about_cursors(failures: list[str]) -> list[str]:
    # The things the document cannot say: `cursor` is an opaque token (only next_cursor of an earlier
    # page is valid, and never together with page; the description says so), so a generated one gets a 400;
    # which sources exist (the warehouse's, listed by GET /sources), so a generated name of none is a 400
    # that lists them; and which fields a source declares, so a generated fields= or order= is a 400 naming them.
    return [failure for failure in failures if "'cursor'" not in failure and not _UNKNOWN_SOURCE.match(failure)
            and not _DECLARED_FIELDS.match(failure)]


def test_valid_input_is_accepted(report):
    assert report.passed["positive_data_acceptance"] > 100
    assert not_about_cursors(report.failed("positive_data_acceptance")) == []


# What an outsider runs: every phase for minutes, over HTTP to gunicorn, over what the DAG loaded.

@pytest.fixture(scope="module")
def live_report(make_database, tmp_path_factory) -> Report:
    url = make_database()
    sources = start_sources()  # 100 API records, 300 CSV rows of which 6 are bad: rows, a run, rejects
    try:
        with pytest.MonkeyPatch.context() as monkeypatch:
            point_airflow_at(monkeypatch, url, sources, tmp_path_factory.mktemp("staging"))
            state, _ = Pipeline(url, sources).run()
    finally:
        sources.stop()
    assert state == "success"
    with serve_with_gunicorn(url) as port:
        assert request(port, "GET", "/health")[0] == 200  # fresh and successful: any 5xx is a bug
        base = f"http://127.0.0.1:{port}"
        return run_engine(schemathesis.openapi.from_url(f"{base}/openapi.json", config=LIVE_CONFIG))


@pytest.mark.slow
def test_every_phase_ran_over_http(live_report):
    assert live_report.errors == []
    # from_url leaves out /openapi.json, the operation it loaded the document from
    assert len(live_report.tested) == OPERATIONS - 1, sorted(live_report.tested)
    cases = live_report.cases_per_phase
    assert cases["coverage"] > 100 and cases["fuzzing"] > 500 and cases["stateful"] > 500, cases


@pytest.mark.slow
def test_every_check_passes_over_http(live_report):
    for check in ("not_a_server_error", "response_schema_conformance", "status_code_conformance",
                  "content_type_conformance", "response_headers_conformance", "negative_data_rejection",
                  "positive_data_acceptance", "unsupported_method", "use_after_free"):
        assert live_report.passed[check] > 500, check
    failures = {check: not_about_cursors(found) if check == "positive_data_acceptance" else found
                for check, found in live_report.failures.items()}
    found = [f"{check}: {failure}" for check, listed in failures.items() for failure in listed]
    assert found == [], "\n".join(found)
