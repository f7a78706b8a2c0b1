"""The progress rule of long phases, with a clock the test moves: at most a line every 10 s, always a final one."""

import logging

import pytest

from sluice import progress

LOGGER = "sluice.test_progress"


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def lines(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    return lambda: [r.getMessage() for r in caplog.records if r.name == LOGGER]


def phase(clock, **kwargs) -> progress.Progress:
    return progress.Progress(logging.getLogger(LOGGER), "csv", "downloading", clock=clock, **kwargs)


def test_progress_is_logged_at_most_every_ten_seconds(lines):
    clock = Clock()
    download = phase(clock, total=100_000_000, measure=progress.size)
    logged_at = []
    for second in range(1, 96):  # an update every 0.5 s for 47.5 s
        clock.now += 0.5
        before = len(lines())
        download.update(second * 1_000_000)
        if len(lines()) > before:
            logged_at.append(clock.now - download.started)

    assert logged_at == [10.0, 20.0, 30.0, 40.0]
    assert lines()[0] == "csv: downloading, 20.0 MB of 100.0 MB (20 %) after 10.0 s"


def test_a_phase_shorter_than_the_interval_logs_only_its_final_line(lines):
    clock = Clock()
    download = phase(clock, total=950, measure=progress.size)
    for done in range(0, 951, 50):
        clock.now += 0.01
        download.update(done)
    clock.now += 3.05

    seconds = download.finish("downloaded 950 B")

    assert lines() == ["csv: downloaded 950 B in 3.2 s"]
    assert seconds == pytest.approx(3.25)


def test_a_final_line_follows_the_progress_lines(lines):
    clock = Clock()
    staging = phase(clock, total=None)
    clock.now += 12
    staging.update(5000, "2 quarantined")
    clock.now += 70
    staging.finish("staged 9,000 records")

    assert lines() == ["csv: downloading, 5,000 so far, 2 quarantined after 12.0 s",
                       "csv: staged 9,000 records in 1 min 22 s"]


def test_an_unknown_or_exceeded_total_says_how_far_it_got(lines):
    clock = Clock()
    unknown = phase(clock, total=None, measure=progress.size)
    exceeded = phase(clock, total=1000, measure=progress.size)
    clock.now += 10
    unknown.update(2_500_000)
    exceeded.update(1500)  # a body decoded larger than its Content-Length

    assert lines() == ["csv: downloading, 2.5 MB so far after 10.0 s",
                       "csv: downloading, 1.5 kB so far after 10.0 s"]


def test_the_interval_counts_from_the_last_line_not_from_the_last_update(lines):
    clock = Clock()
    copy = phase(clock, interval=10)
    clock.now += 25  # one stalled chunk: a single line, then the next only 10 s later
    copy.update(1)
    clock.now += 9.9
    copy.update(2)
    clock.now += 0.1
    copy.update(3)

    assert lines() == ["csv: downloading, 1 so far after 25.0 s", "csv: downloading, 3 so far after 35.0 s"]


def test_reasons_are_bounded_counted_and_masked():
    first = ["line 17: value 'abc' is not a number", "line 40: blank id",
             "line 52: name: 'password=hunter2' is not allowed", "line 80: never shown"]

    text = progress.reasons(8, first)

    assert text == ("8 (line 17: value 'abc' is not a number; line 40: blank id; "
                    "line 52: name: 'password=***' is not allowed; and 5 more)")
    assert progress.reasons(2, first[:2]) == "2 (line 17: value 'abc' is not a number; line 40: blank id)"
    assert progress.reasons(0, []) == "0"


def test_sizes_and_durations_read_as_a_person_writes_them():
    assert [progress.size(n) for n in (0, 999, 45_100, 52_400_000, 3_200_000_000_000_000)] == [
        "0 B", "999 B", "45.1 kB", "52.4 MB", "3,200.0 TB"]
    assert [progress.duration(s) for s in (0.04, 3.14, 59.9, 125)] == ["0.0 s", "3.1 s", "59.9 s", "2 min 5 s"]
    assert progress.count(1_000_000) == "1,000,000"
