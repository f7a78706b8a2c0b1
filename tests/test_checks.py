"""Catalog checks without a database: an invalid check fails with the catalog, naming the source and the check; a
row-level check is a rule of the normalization schema whose reject reason names it; checks change the input key."""

import pytest

from sluice import sources
from sluice.errors import InvalidSource

POSTS = {"name": "posts", "kind": "api", "endpoint": "posts", "fields": {"status": "text", "due": "date"}}


@pytest.mark.parametrize("check, message", [
    ({"check": "nope"}, "source 'posts': check: each check must be an object whose `check` is one of"),
    ({"check": "not_null", "field": "missing"}, "check not_null on 'missing': field 'missing' is neither mapped nor"),
    ({"check": "range", "field": "name", "min": 1}, "check range on 'name': min: range reads numbers and times"),
    ({"check": "range", "field": "value"}, "check range on 'value': needs min or max"),
    ({"check": "range", "field": "value", "min": 5, "max": 1}, "min 5 is above max 1"),
    ({"check": "range", "field": "due", "min": "yesterday"}, "must be an ISO 8601 date"),
    ({"check": "pattern", "field": "name", "regex": "("}, "check pattern on 'name': regex '(' is not a regular"),
    ({"check": "null_rate", "field": "status", "max": 2}, "check null_rate on 'status': max must be a share"),
    ({"check": "row_count", "min": -1}, "check row_count: min must be a whole number"),
    ({"check": "freshness", "field": "due", "max_age": "soon"}, "check freshness on 'due': max_age must be a duration"),
    ({"check": "accepted_values", "field": "status", "values": []}, "values must be a non-empty list"),
    ({"check": "unique", "field": "status", "severity": "fatal"}, "severity must be warn or error"),
    ({"check": "unique", "field": "status", "max": 1}, "check unique on 'status': unknown option 'max'"),
])
def test_an_invalid_check_fails_with_the_catalog_naming_source_and_check(check, message):
    with pytest.raises(InvalidSource, match=None) as raised:
        sources.catalog({"sources": [{**POSTS, "checks": [check]}]})
    assert message in str(raised.value)


def test_a_check_declared_twice_and_bad_anomalies_are_refused():
    twice = [{"check": "unique", "field": "status"}, {"check": "unique", "field": "status", "severity": "warn"}]
    with pytest.raises(InvalidSource, match="source 'posts': check unique:status is declared twice"):
        sources.catalog({"sources": [{**POSTS, "checks": twice}]})
    with pytest.raises(InvalidSource, match="anomalies.runs must be a whole number of at least 5"):
        sources.catalog({"sources": [{**POSTS, "anomalies": {"runs": 3}}]})


def test_row_level_checks_reject_with_the_check_as_reason_and_survive_the_xcom_round_trip():
    checks = [{"check": "accepted_values", "field": "status", "values": ["open", "paid"]},
              {"check": "range", "field": "due", "min": "2026-01-01"},
              {"check": "max_length", "field": "name", "max": 5},
              {"check": "pattern", "field": "name", "regex": "^[a-z]+$"},
              {"check": "not_null", "field": "status"}]
    (source,) = sources.catalog({"sources": [{**POSTS, "checks": checks}]})
    assert sources.from_entry(sources.to_entry(source)) == source
    normalization = source.normalization
    assert not normalization.fast_path  # the schema decides every record
    good = {"id": 1, "title": "abc", "userId": 3, "status": "paid", "due": "2026-02-01"}
    assert normalization.normalize(good)[1] is None
    cases = {"status": ("shipped", "fails check accepted_values:status (in [open, paid]): 'shipped' is not accepted"),
             "due": ("2025-12-31", "fails check range:due (>= 2026-01-01): '2025-12-31' is out of range"),
             "title": ("abcdef", "fails check max_length:name (<= 5): 6 characters")}
    for field, (value, reason) in cases.items():
        row, why = normalization.normalize({**good, field: value})
        assert row is None and reason in why, why
    assert "missing (fails check not_null:status)" in normalization.normalize({**good, "status": " "})[1]
    assert "fails check pattern:name" in normalization.normalize({**good, "title": "ABC"})[1]
    # a new check re-normalizes the source's unchanged records: it is part of the input key
    (unchecked,) = sources.catalog({"sources": [POSTS]})
    assert unchecked.normalization.input_key != normalization.input_key
    assert unchecked.normalization.fast_path


def test_a_row_level_warn_check_is_no_rule_of_the_schema():
    """warn: the record loads, so the check changes no row: the schema does not reject for it, the input key is the
    unchecked source's (nothing is normalized again) and the SQL fast path stays on."""
    checks = [{"check": "accepted_values", "field": "status", "values": ["open"], "severity": "warn"},
              {"check": "not_null", "field": "status", "severity": "warn"}]
    (source,) = sources.catalog({"sources": [{**POSTS, "checks": checks}]})
    (unchecked,) = sources.catalog({"sources": [POSTS]})
    assert [check.severity for check in source.checks] == ["warn", "warn"]
    assert source.normalization.fast_path and source.normalization.input_key == unchecked.normalization.input_key
    row, why = source.normalization.normalize({"id": 1, "title": "abc", "userId": 3, "status": "paid"})
    assert why is None and row[-1]["status"] == "paid"
