"""The whole-DAG targets' verdicts (bench/targets.py) over several rounds: medians, each round's own first load."""

import pytest

from bench import baselines, targets, whole_dag
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
    """The four round targets' lines; the two scale targets follow them (scale_verdicts)."""
    return [target.line() for target in targets._whole_dag(result)][:4]


def scale_verdicts(result: ServerResult) -> list[str]:
    lines = [target.line() for target in targets._whole_dag(result)]
    assert len(lines) == 6
    return lines[4:]


def test_one_round_is_judged_as_it_ran():
    first_load, rerun, changed, rss = verdicts(server((20.0, 2.8, 5.0)))
    assert first_load.startswith("MISS") and "20.00 s vs 10.00 s = 2.00×" in first_load
    assert rerun.startswith("PASS  whole DAG unchanged rerun ≤ 0.15× first load (issue 28)") and "= 0.14;" in rerun
    assert (changed.startswith("MISS  whole DAG 1% changed ≤ 0.2× first load (issue 28)") and "= 0.25;" in changed
            and "inserted 0, updated 10,001" in changed)
    assert rss.startswith("PASS") and "+10 MB" in rss


def test_several_rounds_take_the_median_of_each_rounds_own_share():
    # the second round's slow rerun alone would miss; its share is of its own round's first load
    _, rerun, changed, _ = verdicts(server((20.0, 2.8, 3.8), (24.0, 9.6, 8.0), (22.0, 3.2, 4.2)))
    assert rerun.startswith("PASS") and "= 0.15 (median of 0.14, 0.40, 0.15)" in rerun
    assert changed.startswith("PASS") and "= 0.19 (median of 0.19, 0.33, 0.19)" in changed


@pytest.mark.parametrize("rerun_span, verdict", [(2.1, "PASS"), (4.5, "MISS"), (None, "SKIP")])
def test_a_rerun_inside_the_start_up_noise_is_judged_by_its_span(rerun_span, verdict):
    # wall − start-up ≤ 0 in one round (the unchanged rerun of a 1M file took as long as Airflow's start-up): the
    # ingest→record_run span, which holds none of it, decides
    result = server((25.0, -0.6, 10.4), (25.6, 0.7, 12.8))
    for name in ("first", "first2"):
        result.runs[name].span_seconds = 27.6
    for name in ("rerun", "rerun2"):
        result.runs[name].span_seconds = rerun_span
    _, rerun, _, _ = verdicts(result)
    assert rerun.startswith(verdict)
    if verdict != "SKIP":
        assert "judged by this span" in rerun


def test_the_scale_targets_skip_unless_asked():
    load, rss = scale_verdicts(server((20.0, 2.8, 3.8)))
    assert load == "SKIP  whole DAG first load at 10,000,000 rows ≤ 10.5× the 1,000,000-row first load " \
                   "[embedded]: not asked (--scale-rows)"
    assert rss.startswith("SKIP  whole DAG peak RSS flat 1,000 → 10,000,000 rows (within 100 MB)")


@pytest.mark.parametrize("seconds, rss, verdict", [(209.0, 300.0, ("PASS", "PASS")), (211.0, 371.0, ("MISS", "MISS"))])
def test_ten_times_the_rows_pass_within_ten_and_a_half_times_the_first_load_and_flat_memory(seconds, rss, verdict):
    result = server((20.0, 2.8, 3.8), (20.0, 2.8, 3.8))
    result.scale_rows = 10_000_000
    result.runs[whole_dag.SCALE] = run("scale", seconds, inserted=9_900_000, rss=rss)
    load, memory = scale_verdicts(result)
    assert load.startswith(f"{verdict[0]}  whole DAG first load at 10,000,000 rows ≤ 10.5× the 1,000,000-row")
    assert f"{seconds:.2f} s vs 20.00 s = {seconds / 20:.2f}× (linear: 10×)" in load
    assert memory.startswith(f"{verdict[1]}  whole DAG peak RSS flat 1,000 → 10,000,000 rows (within 100 MB)")


def test_a_failed_scale_run_misses_its_targets_not_the_rounds():
    result = server((20.0, 2.8, 3.8))
    result.scale_rows = 10_000_000
    result.runs[whole_dag.SCALE] = run("scale", 100.0)
    result.runs[whole_dag.SCALE].state = "failed"
    assert [line[:4] for line in verdicts(result)] == ["MISS", "PASS", "PASS", "PASS"]
    assert [line[:4] for line in scale_verdicts(result)] == ["MISS", "MISS"]


def test_a_round_that_writes_the_wrong_rows_misses_whatever_the_times():
    result = server((20.0, 2.0, 3.0), (20.0, 2.0, 3.0))
    result.runs["changed2"].etl_run["updated"] = CHANGED - 1
    _, _, changed, _ = verdicts(result)
    assert changed.startswith("MISS") and "inserted 0, updated 10,000; inserted 0, updated 10,001" in changed


def test_a_missing_pass_of_any_round_is_a_miss_for_every_target():
    result = server((20.0, 5.0, 6.0), (20.0, 5.0, 6.0))
    del result.runs["rerun2"]
    assert all(line.startswith("MISS") for line in verdicts(result))


def api_results(first_rate: float, first_p99: float, search_p99: float, cursor_p50: float):
    """A run's read-API figures: open (wrk and Postgres alone) and the access comparison, as deployed and open."""
    from types import SimpleNamespace

    from bench.api_load import AccessComparison, EndpointResult

    def endpoint(label: str, path: str, rate: float, p50: float, p99: float) -> EndpointResult:
        return EndpointResult(label, path, 1_000_000, requests_per_second=rate, p50_ms=p50, p99_ms=p99,
                              serial_ms=2.0, postgres_ms=0.8)

    open_ = [endpoint("/data first page", "/data?page_size=10", first_rate, 6.0, first_p99),
             endpoint("/data cursor at page 10,000", "/data?cursor=x", first_rate, cursor_p50, first_p99),
             endpoint("/data search", "/data?search=1", 900, 7.0, search_p99)]

    def measured(rate: float, p50: float, p99: float) -> dict:
        modes = {"no auth, no RLS": (1.1, 0.9), "API key, RLS": (1.0, 1.0)}
        return {mode: {"requests_per_second": rate * scale, "p50_ms": p50 * slower, "p99_ms": p99 * slower,
                       "failures": 0} for mode, (scale, slower) in modes.items()}

    access = [AccessComparison("/data first page", "/data?page_size=10", measured(first_rate, 6.0, first_p99)),
              AccessComparison("/data cursor at page 10,000", "/data?cursor=x", measured(first_rate, cursor_p50,
                                                                                        first_p99)),
              AccessComparison("/data search", "/data?search=1", measured(900, 7.0, search_p99))]
    return SimpleNamespace(api=open_, api_small=[], api_access=access)


def test_the_api_targets_are_issue_28s_each_with_its_same_run_baseline():
    first, search, cursor, _sizes = (t.line() for t in targets._api_targets(api_results(1100, 20, 35, 6.6)))
    assert first.startswith("PASS  /data first page ≥ 1,000 req/s with p99 < 25 ms: 1100 req/s, p99 20.0 ms")
    assert "baseline: its queries alone 0.8 ms" in first
    assert search.startswith("PASS  search p99 < 40 ms")
    assert cursor.startswith("PASS  /data cursor at page 10,000 within 1.2× of page 1 (p50): 6.6 ms vs page 1 6.0")
    deployed = [t.line() for t in targets._deployed_api(api_results(1100, 20, 35, 6.6))]
    assert [line[:4] for line in deployed] == ["PASS"] * 3
    assert "baseline open as the owner: 1210 req/s, p99 18.0 ms" in deployed[0]
    assert deployed[2].startswith("PASS  as deployed (API key, RLS): /data cursor at page 10,000 within 1.2×")

    missed = api_results(990, 20, 41, 7.3)
    assert [t.line()[:4] for t in targets._api_targets(missed)][:3] == ["MISS"] * 3
    assert [t.line()[:4] for t in targets._deployed_api(missed)] == ["MISS"] * 3
