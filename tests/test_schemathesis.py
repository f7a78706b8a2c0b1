"""schemathesis over /openapi.json: generated valid and invalid requests against the app on a real Postgres.

One deterministic run of schemathesis's engine (coverage cases, then up to 30 generated examples per
operation, valid and invalid) through the WSGI app; the tests read its checks: no 5xx, every answer
matches its documented status, content type and schema, invalid input is a 400 (nothing else: not a 404,
not a 422), a wrong method is a 405 with an Allow header, and valid input is accepted.

The engine is driven directly: schemathesis's pytest integration (`from_fixture`) does not run under
pytest 9, which the project pins.
"""

from collections import Counter
from dataclasses import dataclass, field

import pytest
import schemathesis
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import events
from webapp_fixtures import catalog, insert_checkpoint, insert_records, insert_rejects, insert_run

from webapp import create_app, db

RUN_ID = "scheduled__2024-05-01T00:00:00+00:00"
OPERATIONS = 8  # every route of the app (test_webapp_openapi checks that the document lists each one)
CONFIG = SchemathesisConfig.from_dict({
    "generation": {"max-examples": 30, "deterministic": True, "database": "none"},
    "checks": {"negative_data_rejection": {"expected-statuses": ["400"]}},
    # the document has no examples and no links between operations
    "phases": {"examples": {"enabled": False}, "stateful": {"enabled": False}},
})


@dataclass
class Report:
    """What the run checked: per check, how often it passed and what failed."""

    passed: Counter = field(default_factory=Counter)
    failures: dict[str, list[str]] = field(default_factory=dict)
    tested: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)

    def failed(self, *checks: str) -> list[str]:
        return [failure for check in checks for failure in self.failures.get(check, [])]


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
    app = create_app({"DATABASE_URL": url, "POOL_MIN": 1})
    result = Report()
    try:
        # from_dict, not from_wsgi: from_wsgi leaves out the operation it loaded the document from
        api_schema = schemathesis.openapi.from_dict(app.test_client().get("/openapi.json").json, config=CONFIG)
        api_schema.app = app  # requests go to the WSGI app in process
        for event in schemathesis.engine.from_schema(api_schema).execute():
            if isinstance(event, events.ScenarioFinished) and event.status.name != "SKIP":
                result.tested.add(event.label)
                for case_id, checks in event.recorder.checks.items():
                    for check in checks:
                        if check.failure_info is None:
                            result.passed[check.name] += 1
                        else:
                            case = event.recorder.cases[case_id].value
                            response = event.recorder.find_response(case_id=case_id)
                            result.failures.setdefault(check.name, []).append(
                                describe(case, response, check.failure_info.failure))
            elif isinstance(event, (events.NonFatalError, events.FatalError)):
                result.errors.append(repr(event))
    finally:
        db.warehouse(app).close()
    return result


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


def test_valid_input_is_accepted(report):
    # The one thing the document cannot say: `cursor` is an opaque token (only next_cursor of an earlier
    # page is valid, and never together with page; the description says so), so a generated one gets a 400.
    assert report.passed["positive_data_acceptance"] > 100
    assert [failure for failure in report.failed("positive_data_acceptance") if "'cursor'" not in failure] == []
