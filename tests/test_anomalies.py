"""The anomaly detector on the series the issue names, in plain Python: a flat history does not flag a one-row
change, a volatile one still flags a drop to zero, a 30% drop is flagged, a slow trend is not, and no verdict
comes before five runs of history; a field's type mix is judged by its distance from the history's median mix."""

import statistics

import pytest

from sluice import anomalies, type_mix

FLAT = [100] * 14
VOLATILE = [100, 40, 160, 70, 130, 55, 150, 90, 120, 45, 170, 60, 140, 80]
TREND = [100 + 2 * run for run in range(14)]  # 2% more rows each run


@pytest.mark.parametrize("history, value, count, floor, anomalous", [
    (FLAT, 101, True, anomalies.COUNT_FLOOR, False),  # one row more of a flat count
    (FLAT, 99, True, anomalies.COUNT_FLOOR, False),
    (FLAT, 70, True, anomalies.COUNT_FLOOR, True),  # a 30% drop
    (FLAT, 130, True, anomalies.COUNT_FLOOR, True),  # and a 30% rise
    ([10] * 14, 7, True, anomalies.COUNT_FLOOR, True),  # a 30% drop of a small source (3 rows > the floor)
    (VOLATILE, 0, True, anomalies.COUNT_FLOOR, True),  # a drop to zero a wide band would hide
    (VOLATILE, 35, True, anomalies.COUNT_FLOOR, False),  # a low value within the volatile history's spread
    (VOLATILE, 400, True, anomalies.COUNT_FLOOR, True),
    (TREND, 128, True, anomalies.COUNT_FLOOR, False),  # the trend's next step
    (TREND, 70, True, anomalies.COUNT_FLOOR, True),
    ([0.0] * 14, 0.01, False, anomalies.share_floor(100), False),  # one null of 100 in a column never null
    ([0.0] * 14, 0.6, False, anomalies.share_floor(100), True),  # a column that turns mostly empty
    ([0.05] * 14, 0.05, False, anomalies.share_floor(100), False),
    ([0.0] * 14, 0.2, False, anomalies.share_floor(10), False),  # two rows of ten: within two rows' worth
])
def test_verdicts(history, value, count, floor, anomalous):
    assert anomalies.detect(history, value, count=count, floor=floor).anomalous is anomalous


def test_no_verdict_before_five_runs_of_history():
    assert anomalies.detect([100] * 4, 0, count=True, floor=2).anomalous is None
    assert anomalies.detect([100] * 5, 0, count=True, floor=2).anomalous is True


NUMBERS = [{"number": 1.0}] * 14
MIXED = [{"number": 0.5 + 0.05 * (run % 5), "string": 0.5 - 0.05 * (run % 5)} for run in range(14)]


@pytest.mark.parametrize("history, mix, anomalous", [
    (NUMBERS, {"number": 1.0}, False),
    (NUMBERS, {"number": 0.99, "string": 0.01}, False),  # one value of 100 turned string: within two rows' worth
    (NUMBERS, {"number": 0.7, "string": 0.3}, True),  # a third of a number field arriving as strings
    (NUMBERS, {"number": 0.9, "object": 0.1}, True),  # a new JSON type
    (MIXED, {"number": 0.6, "string": 0.4}, False),  # within a mixed field's usual swing
    (MIXED, {"string": 1.0}, True),  # a mixed field turned all strings
])
def test_type_mix_verdicts(history, mix, anomalous):
    verdict = anomalies.detect_mix(history, mix, floor=anomalies.share_floor(100))
    assert verdict.anomalous is anomalous
    assert verdict.value == pytest.approx(anomalies.distance(mix, {kind: statistics.median(past.get(kind, 0.0)
                                                                                         for past in history)
                                                                   for kind in {"number", "string", "object"}}))


def test_no_type_mix_verdict_before_five_runs_of_history():
    assert anomalies.detect_mix(NUMBERS[:4], {"string": 1.0}, floor=0.02).anomalous is None
    assert anomalies.detect_mix(NUMBERS[:5], {"string": 1.0}, floor=0.02).anomalous is True


def test_the_type_mix_tally_counts_json_types_of_present_values():
    """true is a boolean, not a number; a dotted path reads a nested value; a null or absent value has no type."""
    tally = type_mix.Tally({"value": "score", "user": "user.id", "tags": "tags"})
    for record in ({"score": 1, "user": {"id": "7"}, "tags": []}, {"score": True, "user": {"id": 7}},
                   {"score": 1.5, "user": None, "tags": {"a": 1}}, {"score": None}):
        tally.add(record)
    assert tally.counts == {"value": {"number": 2, "boolean": 1}, "user": {"string": 1, "number": 1},
                            "tags": {"array": 1, "object": 1}}
    assert type_mix.shares(tally.counts["value"]) == {"boolean": pytest.approx(1 / 3), "number": pytest.approx(2 / 3)}
    assert type_mix.shares({}) == {}
