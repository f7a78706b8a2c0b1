"""The whole-DAG targets' verdicts (bench/targets.py) over several rounds: medians, each round's own first load."""

from bench import baselines, targets
from bench.whole_dag import DagRun, ServerResult

CHANGED = 10_001


def run(name: str, pipeline: float | None, *, inserted: int = 0, updated: int = 0, rss: float = 280.0) -> DagRun:
    return DagRun(name=name, wall_seconds=(pipeline or 0.0) + 9.0, peak_rss_mb=rss, state="success", task_seconds={},
                  etl_run={"status": "success", "inserted": inserted, "updated": updated}, span_seconds=None,
                  pipeline_seconds=pipeline)


def server(*rounds: tuple[float, float, float], changed_updates: int = CHANGED) -> ServerResult:
    """A server whose rounds took (first, rerun, changed) pipeline seconds, with dlt + indexes at 10 s."""
    result = ServerResult("embedded", "PostgreSQL", rows=1_000_000, tiny_rows=1000, expected_changed=CHANGED)
    result.runs["tiny"] = run("tiny", None, rss=270.0)
    for number, (first, rerun, changed) in enumerate(rounds, start=1):
        suffix = "" if number == 1 else str(number)
        result.runs[f"first{suffix}"] = run("first", first, inserted=990_100)
        result.runs[f"rerun{suffix}"] = run("rerun", rerun)
        result.runs[f"changed{suffix}"] = run("changed", changed, updated=changed_updates)
    name = baselines.DLT_MODES["arrow+indexes"][0]
    result.dlt = [baselines.Baseline(name, 1_000_000, 10.0, 1_000_000, 10.0, 450.0)]
    return result


def verdicts(result: ServerResult) -> list[str]:
    return [target.line() for target in targets._whole_dag(result)]


def test_one_round_is_judged_as_it_ran():
    first_load, rerun, changed, rss = verdicts(server((20.0, 5.0, 8.0)))
    assert first_load.startswith("MISS") and "20.00 s vs 10.00 s = 2.00×" in first_load
    assert rerun.startswith("PASS") and "= 0.25;" in rerun
    assert changed.startswith("MISS") and "= 0.40;" in changed and "inserted 0, updated 10,001" in changed
    assert rss.startswith("PASS") and "+10 MB" in rss


def test_several_rounds_take_the_median_of_each_rounds_own_share():
    # the second round's slow rerun alone would miss; its share is of its own round's first load
    _, rerun, changed, _ = verdicts(server((20.0, 5.8, 6.0), (24.0, 9.6, 8.0), (22.0, 6.2, 7.9)))
    assert rerun.startswith("PASS") and "= 0.29 (median of 0.29, 0.40, 0.28)" in rerun
    assert changed.startswith("PASS") and "= 0.33 (median of 0.30, 0.33, 0.36)" in changed


def test_a_round_that_writes_the_wrong_rows_misses_whatever_the_times():
    result = server((20.0, 5.0, 6.0), (20.0, 5.0, 6.0))
    result.runs["changed2"].etl_run["updated"] = CHANGED - 1
    _, _, changed, _ = verdicts(result)
    assert changed.startswith("MISS") and "inserted 0, updated 10,000; inserted 0, updated 10,001" in changed


def test_a_missing_pass_of_any_round_is_a_miss_for_every_target():
    result = server((20.0, 5.0, 6.0), (20.0, 5.0, 6.0))
    del result.runs["rerun2"]
    assert all(line.startswith("MISS") for line in verdicts(result))
