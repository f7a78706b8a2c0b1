"""The bench's results as markdown: printed, and written to bench/results/<date>.md beside its plot."""

from bench import whole_dag
from bench.pipeline import LOAD_STAGES, STAGES

PASS_NAMES = {"first": "first load", "rerun": "unchanged rerun", "changed": "1% changed"}


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines + [""]


def _n(value, digits: int = 0) -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}"


def _written(timing) -> str:
    r = timing.result
    if timing.stage == "ingest":
        return f"staged {r['records']:,}, problems {r['problems']:,}"
    if timing.stage == "store_raw":
        return f"raw +{r['raw_inserted']:,} ~{r['raw_updated']:,}, rejected {r['rejected']:,}"
    if timing.stage == "normalize":
        return f"valid {r['valid']:,}, rejected {r['rejected']:,}, unchanged {r['skipped_unchanged']:,}"
    if timing.stage == "upsert":
        return f"+{r['inserted']:,} ~{r['updated']:,}, unchanged {r['unchanged']:,}"
    if timing.stage == "checkpoint":
        return f"last id {r['last_processed_id']}"
    return f"etl_runs id {r['etl_run_id']}"


def stage_table(results, source: str) -> list[str]:
    rows = []
    for name, run in results.passes.items():
        for stage in STAGES:
            t = run.of(stage, source)
            rows.append([PASS_NAMES[name], stage, f"{t.seconds:.2f}", _n(t.rows_per_second), _n(t.peak_rss_mb),
                         _written(t)])
        record = run.of("record_run", "all")
        rows.append([PASS_NAMES[name], "record_run (all sources)", f"{record.seconds:.2f}", "", _n(record.peak_rss_mb),
                     _written(record)])
        count = run.of("ingest", source).rows
        for label, stages in (("**store_raw→normalize→upsert**", LOAD_STAGES),
                              ("**end to end** (ingest→checkpoint)", STAGES)):
            seconds = run.seconds(source, stages)
            rows.append([PASS_NAMES[name], label, f"**{seconds:.2f}**", _n(count / seconds), "", ""])
    return _table(["pass", "stage", "seconds", "rows/s", "peak RSS MB", "rows (the function's own counts)"], rows)


def statement_table(results, source: str = "csv", passes=("first", "rerun")) -> list[str]:
    """Where the load stages' time goes, statement by statement (sql/*.sql names); at least 1% of a stage."""
    rows = []
    for name in passes:
        for stage in LOAD_STAGES:
            timing = results.passes[name].of(stage, source) if name in results.passes else None
            if timing is None:
                continue
            seconds: dict[str, float] = {}
            for statement, spent in timing.statements:
                seconds[statement] = seconds.get(statement, 0.0) + spent
            rest = timing.seconds - sum(seconds.values())
            shown = sorted(((s, t) for s, t in seconds.items() if t >= timing.seconds / 100), key=lambda x: -x[1])
            shown.append(("(the rest: Python, fetching rows, the smaller statements)",
                          rest + sum(t for s, t in seconds.items() if t < timing.seconds / 100)))
            for statement, spent in shown:
                rows.append([PASS_NAMES[name], stage, f"`{statement}`" if not statement.startswith("(") else statement,
                             _n(spent, 2), f"{100 * spent / timing.seconds:.0f}%"])
    return _table(["pass", "stage", "statement (sql/*.sql)", "seconds", "share of the stage"], rows)


def written_table(results) -> list[str]:
    rows = []
    for name, run in results.passes.items():
        for source in run.sources():
            w = run.written(source)
            expected = {"first": "all new", "rerun": "0", "changed": f"~{results.expected_changed[source]:,}"}[name]
            rows.append([PASS_NAMES[name], source, _n(w["raw_inserted"]), _n(w["raw_updated"]), _n(w["inserted"]),
                         _n(w["updated"]), _n(w["skipped_unchanged"]), _n(w["rejected"]), expected])
    return _table(["pass", "source", "raw inserted", "raw updated", "normalized inserted", "normalized updated",
                   "skipped unchanged", "rejected", "expected"], rows)


def memory_table(results) -> list[str]:
    first, small = results.passes["first"], results.memory_pass
    rows = [[stage, _n(first.of(stage, "csv").peak_rss_mb), _n(small.of(stage, "csv").peak_rss_mb),
             f"{first.of(stage, 'csv').peak_rss_mb - small.of(stage, 'csv').peak_rss_mb:+.0f}"] for stage in STAGES]
    return _table(["stage (csv, first load)", f"peak RSS MB at {results.rows:,}",
                   f"at {results.memory_rows:,}", "difference MB"], rows)


def baseline_table(results) -> list[str]:
    sluice = results.passes["first"].seconds("csv", LOAD_STAGES)
    whole = results.passes["first"].seconds("csv", STAGES)
    rows = [["**Sluice store_raw→normalize→upsert**", _n(results.rows), f"{sluice:.2f}", _n(results.rows / sluice),
             _n(max(results.passes["first"].of(s, "csv").peak_rss_mb for s in LOAD_STAGES)), "1.00×",
             "validates, quarantines, keeps latest raw, writes only changes"],
            ["Sluice ingest→checkpoint", _n(results.rows), f"{whole:.2f}", _n(results.rows / whole),
             _n(max(results.passes["first"].of(s, "csv").peak_rss_mb for s in STAGES)), f"{whole / sluice:.2f}×",
             "includes parsing the CSV, which only the dlt baselines below do too"]]
    for b in results.baselines:
        seconds = f"{b.seconds:.2f}" + (" (extrapolated)" if b.extrapolated else "")
        rows.append([b.name, _n(b.rows), seconds, _n(b.rows_per_second), _n(b.peak_rss_mb),
                     f"{b.seconds / sluice:.2f}×", b.note])
    return _table(["load (same CSV, same database)", "rows", "seconds", "rows/s", "peak RSS MB",
                   "time ÷ Sluice's", "note"], rows)


def api_table(endpoints) -> list[str]:
    rows = [[f"`{e.path}`" if len(e.path) < 60 else f"`{e.path[:57]}…`", e.label, _n(e.rows), _n(e.requests_per_second),
             _n(e.p50_ms, 1), _n(e.p99_ms, 1), e.failures, _n(e.serial_ms, 1), _n(e.postgres_ms, 2),
             _n(e.explain_ms, 2),
             _n(e.web_ms, 1), ", ".join(e.queries)] for e in endpoints]
    return _table(["request", "what", "rows", "req/s", "p50 ms", "p99 ms", "failed", "serial median ms",
                   "Postgres alone ms", "EXPLAIN ANALYZE ms", "web layer ms", "queries"], rows)


def access_table(comparisons) -> list[str]:
    rows = []
    for c in comparisons:
        for mode, result in c.measured.items():
            rows.append([f"`{c.path}`", c.label, mode, _n(result.get("requests_per_second")),
                         _n(c.ratio(mode, "requests_per_second"), 2), _n(result.get("p50_ms"), 1),
                         _n(result.get("p99_ms"), 1), _n(c.ratio(mode, "p99_ms"), 2), result.get("failures", 0)])
    return _table(["request", "what", "access", "req/s", "÷ no auth, no RLS", "p50 ms", "p99 ms",
                   "÷ no auth, no RLS", "failed"], rows)


def observability_table(comparisons) -> list[str]:
    rows = []
    for c in comparisons:
        for mode, result in c.measured.items():
            rows.append([f"`{c.path}`", c.label, mode, _n(result.get("requests_per_second")),
                         _n(c.ratio(mode, "requests_per_second"), 2), _n(result.get("p99_ms"), 1),
                         _n(c.ratio(mode, "p99_ms"), 2), result.get("failures", 0), _n(result.get("spans"))])
    return _table(["request", "what", "observability", "req/s", "÷ off", "p99 ms", "÷ off", "failed",
                   "spans received"], rows)


def whole_dag_section(server) -> list[str]:
    """One server's DAG runs: wall, pipeline time, each task's duration, rows written, peak RSS; then dlt."""
    rows = []
    for name, run in server.runs.items():
        e = run.etl_run
        rows.append([whole_dag.pass_name(name), f"{run.wall_seconds:.2f}",
                     "–" if run.pipeline_seconds is None else f"**{run.pipeline_seconds:.2f}**",
                     _n(run.span_seconds, 2), *(_n(run.task_seconds.get(task), 2) for task in whole_dag.TASKS),
                     f"{e.get('inserted', 0):,} + {e.get('updated', 0):,}", _n(e.get("unchanged")),
                     _n(e.get("rejected")), _n(run.peak_rss_mb), run.state])
    lines = [f"### {server.label}: {server.server}", "",
             *_table(["pass", "wall s", "pipeline s", "ingest→record_run s", *whole_dag.TASKS, "written (inserted + updated)",
                      "unchanged", "rejected", "peak RSS MB", "dag run"], rows)]
    first = server.runs.get("first")
    if server.dlt and first is not None and first.pipeline_seconds:
        lines += _table(["dlt on the same server", "seconds", "peak RSS MB", "Sluice first load ÷ this"],
                        [[b.name, f"{b.seconds:.2f}", _n(b.peak_rss_mb), f"{first.pipeline_seconds / b.seconds:.2f}×"]
                         for b in server.dlt])
    return (lines + whole_dag_statements(server) + [f"- {note}" for note in server.notes]
            + ([""] if server.notes else []))


def whole_dag_statements(server, min_share: float = 0.05) -> list[str]:
    """Where each task's time went in the DAG runs themselves (bench.dag_profile), for the tasks of at least
    min_share of the run's ingest→record_run span: its statements (sql/*.sql names) of at least min_share of the
    task, and the rest (Python, Airflow, the smaller statements)."""
    rows = []
    for name in whole_dag.PASSES:
        run = server.runs.get(name)
        if run is None or not run.statements:
            continue
        for task in whole_dag.TASKS:
            task_seconds = run.task_seconds.get(task) or 0.0
            if task_seconds <= 0 or task_seconds < min_share * (run.span_seconds or 0.0):
                continue
            spent: dict[str, float] = {}
            for of_task, statement, seconds in run.statements:
                if of_task == task:
                    spent[statement] = spent.get(statement, 0.0) + seconds
            shown = sorted(((s, t) for s, t in spent.items() if t >= min_share * task_seconds), key=lambda x: -x[1])
            rest = task_seconds - sum(t for _, t in shown)
            for statement, seconds in [*shown, ("(the rest: Python, Airflow, the smaller statements)", rest)]:
                rows.append([task, whole_dag.pass_name(name), statement if statement.startswith("(") else f"`{statement}`",
                             f"{seconds:.2f}", f"{100 * seconds / task_seconds:.0f}%"])
    if not rows:
        return []
    return [f"Where the tasks' time goes in these DAG runs ({server.label}), statement by statement: the tasks of "
            f"at least {min_share:.0%} of the run's ingest→record_run span, their statements of at least "
            f"{min_share:.0%} of the task, timed in the `airflow dags test` process (bench.dag_profile):", "",
            *_table(["task", "pass", "statement (sql/*.sql)", "seconds", "share of the task"], rows)]


def render(results, targets, plot_name: str | None, plot_kind: str = "matplotlib") -> str:
    o = results.options
    lines = [f"# Sluice bench, {results.started:%Y-%m-%d %H:%M} UTC", ""]
    if results.whole_dag:
        lines += [f"## Whole DAG: `airflow dags test etl_pipeline`, {results.rows:,} CSV rows + "
                  f"{whole_dag.API_RECORDS} posts", "",
                  f"Per server: a tiny run ({results.whole_dag[0].tiny_rows:,} CSV rows, its own warehouse) whose "
                  "wall time is Airflow's fixed start-up (the median of the tiny runs when there are several), then "
                  "on a fresh warehouse the first load, the unchanged rerun and the 1% changed file, with no VACUUM "
                  "or CHECKPOINT between them (with several rounds, each round on its own fresh warehouse; the "
                  "targets take the rounds' medians, the statement tables show the first round). "
                  "pipeline = wall − the fixed start-up. Task seconds are the DAG run's task instances (end − start, from the metadata "
                  "database on the same server); init_schema's includes starting Airflow's in-process execution API "
                  "(the first task of `dags test`, ≈5–15 s here); ingest→record_run is the span from the first "
                  "ingest's start to record_run's end, Airflow's work between tasks included, and none of its "
                  "start-up. Rows come from the run's `etl_runs` row; peak RSS is the `airflow "
                  "dags test` process's, which runs every task in-process. dlt: its pyarrow-fed merge of the "
                  "same CSV into an empty dataset, bare and followed by Sluice's indexes on its table.", ""]
        for server in results.whole_dag:
            lines += whole_dag_section(server)
    if not results.passes:
        lines += ["## Targets", "", "```", *(t.line() for t in targets), "```", ""]
        if results.notes:
            lines += ["Notes:", "", *(f"- {note}" for note in results.notes), ""]
        lines += [f"Command: `python -m bench {' '.join(o) or '(defaults)'}`; wall time {results.wall_seconds:.0f} s. "
                  f"Machine: {results.machine}.", ""]
        return "\n".join(lines)
    lines += [
             f"- Inputs: CSV of {results.rows:,} rows (id,name,value,description; 1% bad rows; descriptions with "
             f"commas, quotes, newlines and non-ASCII), JSON API of {results.api_rows:,} records in pages of 1,000 "
             "with Link headers, both served or read locally.",
             f"- Database: {results.server}; a fresh database per run. Machine: {results.machine}.",
             "- Every measured step runs in its own child process; peak RSS is that process's VmHWM. The time is "
             "the measured call only (no interpreter start or connect). "
             + ("Before each timed step the bench waits for autovacuum, runs VACUUM (ANALYZE) and a CHECKPOINT."
                if results.flushed else "No CHECKPOINT between steps."),
             "- rows/s = the source's input rows ÷ the stage's seconds, so stages and baselines compare directly.",
             f"- Command: `python -m bench {' '.join(o) or '(defaults)'}`; wall time {results.wall_seconds:.0f} s.", ""]
    lines += ["## Targets", "", "```", *(t.line() for t in targets), "```", ""]
    if results.notes:
        lines += ["Notes:", "", *(f"- {note}" for note in results.notes), ""]
    for source in results.passes["first"].sources():
        count = results.rows if source == "csv" else results.api_rows
        lines += [f"## Pipeline stages: {source} source ({count:,} rows)", "", *stage_table(results, source)]
    lines += ["## Where the time goes: csv load stages, statement by statement", "",
              *statement_table(results)]
    lines += ["## Rows written per pass", "", *written_table(results)]
    if results.memory_pass is not None:
        lines += ["## Peak RSS by input size", "", *memory_table(results)]
    lines += [f"## Baselines vs Sluice on {results.rows:,} CSV rows", "", *baseline_table(results)]
    if results.api:
        lines += [f"## Read API (gunicorn {results.api_workers} workers; wrk {results.wrk_spec})", "",
                  *api_table(results.api + results.api_small),
                  "serial: one client, one request at a time (no queueing). Postgres alone: the request's own named "
                  "queries and parameters (captured from the app) run directly on one connection, client-timed; "
                  "EXPLAIN ANALYZE: their planning + execution with TIMING OFF; medians of 20. "
                  "web layer = serial median − Postgres alone. wrk keeps its connections busy: the mean latency "
                  "is connections ÷ req/s (Little's law), so latency targets are measured with few connections.",
                  ""]
    if results.api_export is not None:
        lines += ["### Export: GET /export against psql \\copy (same server, same run)", "",
                  *results.api_export.lines(), "",
                  "The targets (issue 27): at most 2x psql \\copy, the worker's RSS within 50 MB of idle. The API "
                  "serves as the read-only role under row-level security, one gunicorn worker; psql reads as the "
                  "owner.", ""]
    if results.api_access:
        lines += ["### Authentication and row-level security on vs off (same run, same rows)", "",
                  *access_table(results.api_access),
                  "no auth: SLUICE_AUTH=none; API key: SLUICE_AUTH=keys, every request with a key for every source "
                  "(its lookup cached 1 s per worker, as deployed). no RLS: gunicorn logged in as the tables' owner, "
                  "which bypasses the policies; RLS: as the read-only role, as deployed (migration 018). Each "
                  "request signs and sets its scope either way; rate limits are on in all four.", ""]
    if results.api_observability:
        lines += ["### Metrics and tracing on vs off (same run, same rows)", "",
                  *observability_table(results.api_observability),
                  "off: SLUICE_METRICS_ENABLED=false and no OTLP endpoint; metrics: as deployed (every request counted "
                  "and timed in prometheus_client's multiprocess files, the pool's gauge kept); metrics + tracing: "
                  "also a server span per request and a client span per statement, exported in batches over "
                  "OTLP/HTTP to a receiver on loopback (spans received: counted after gunicorn stopped). Open "
                  "access as the owner in all three.", ""]
    if plot_name:
        lines += [f"![stage times]({plot_name})", ""]
        if plot_kind == "plain":
            lines += ["(A plain plot, drawn without matplotlib: on top one bar per pass — first load, unchanged "
                      "rerun, 1% changed — split into ingest, store_raw, normalize, upsert, checkpoint, record_run; "
                      "below, Sluice's store_raw→normalize→upsert in green, then the baselines in table order.)", ""]
    return "\n".join(lines)

