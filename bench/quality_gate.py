"""The cost of the quality gate (issue 26): the whole DAG over one CSV source with its default gate (anomaly
detection on, no declared checks) against the same source with `anomalies: false` (no gate work at all), in one
bench run.

Each round gives both variants a fresh warehouse of the same server and runs the first load, then the unchanged
rerun on it, interleaved pass by pass (off, on, off, on; the next round on, off, on, off), with `airflow dags test`
as users run it (whole_dag.compare). The time compared is each run's span from the first ingest's start to
record_run's end (Airflow's fixed start-up is in neither); the ratios are of the rounds' medians, per pass, and the
per-task medians show where a difference goes when one slow ingest moves a span by seconds.
"""

import json
from pathlib import Path

from bench import database, inputs, whole_dag
from sluice import settings

VARIANTS = ("gate off", "default gate")
PASSES = ("first load", "unchanged rerun")
TARGET = 1.10  # at most 10% more time with the default checks
GATE_STATEMENTS = ("batch_nulls", "batch_values", "batch_measures", "duplicates", "history", "check_rejects",
                   "forget_results", "record_result", "record_quality_run", "supersede_holds")


def catalog(path: Path, variant: str, directory: Path) -> Path:
    entry = {"name": "items", "kind": "csv", "endpoint": path.name, "mapping": settings.DEFAULT_CSV_MAPPING}
    if variant == VARIANTS[0]:
        entry["anomalies"] = False
    catalog_path = directory / f"catalog-{variant.replace(' ', '-')}.json"
    catalog_path.write_text(json.dumps([entry]))
    return catalog_path


def run_server(server: database.Server, label: str, *, log_dir: Path, work_dir: Path, stamp: str, rows: int,
               rounds: int, echo=print) -> whole_dag.Comparison:
    return whole_dag.compare(server, label, "quality", variants=VARIANTS, passes=PASSES, catalog=catalog,
                             csv_path=inputs.write_csvs(work_dir / "inputs", rows, with_variants=False).path,
                             rows=rows, log_dir=log_dir, work_dir=work_dir, stamp=stamp, rounds=rounds, echo=echo)


def section(result: whole_dag.Comparison) -> list[str]:
    """The report's table of the comparison and its target lines, one per pass."""
    lines = [f"## Quality gate: the whole DAG over {result.rows:,} CSV rows, default gate against none "
             f"[{result.label}]", "",
             "| variant | pass | round | ingest→record_run s | upsert s | rows written | state |",
             "|---|---|---|---|---|---|---|"]
    for variant in VARIANTS:
        for name in PASSES:
            for number, run in enumerate(result.runs[(variant, name)], start=1):
                lines.append(f"| {variant} | {name} | {number} | {run.span_seconds or 0:.2f} | "
                             f"{run.task_seconds.get('upsert', 0):.2f} | {run.written:,} | {run.state} |")
    lines.append("")
    for name in PASSES:
        ratio = result.ratio(name)
        if ratio is None:
            lines.append(f"SKIP  the default gate costs at most 10% more time ({name}): not measured")
            continue
        verdict = "PASS" if ratio <= TARGET else "MISS"
        lines.append(f"{verdict}  the default gate costs at most 10% more time ({name}): "
                     f"{result.median(VARIANTS[1], name):.2f} s vs gate off {result.median(VARIANTS[0], name):.2f} s "
                     f"(medians of {len(result.runs[(VARIANTS[0], name)])} rounds) = {ratio:.3f}× [{result.label}]")
    for name in PASSES:
        lines.append(gate_share(result, name))
    lines.extend(f"- note: {note}" for note in result.notes)
    for name in PASSES:
        lines += ["", *result.task_differences(name)]
    return lines + gate_statements(result)


def gate_share(result: whole_dag.Comparison, name: str) -> str:
    """The gate's own time, which a busy machine moves less than a span: the upsert task's median difference (a CSV
    source's gate runs there alone), as a share of the gate-off span's median."""
    off, on = (result.task_medians(variant, name).get("upsert") for variant in VARIANTS)
    base = result.median(VARIANTS[0], name)
    if off is None or on is None or not base:
        return f"- {name}: the gate's own time not measured"
    return (f"- {name}: the gate's own time, the upsert task's median difference: {on - off:+.2f} s, "
            f"{100 * (on - off) / base:.1f}% of the gate-off span {base:.2f} s")


def gate_statements(result: whole_dag.Comparison) -> list[str]:
    """What the gate's own statements cost (bench.dag_profile): the mean seconds per run of each quality.sql
    statement in the default gate's runs, per pass."""
    lines = []
    for name in PASSES:
        runs = [run for run in result.runs[(VARIANTS[1], name)] if run.statements]
        totals: dict[str, float] = {}
        for run in runs:
            for _, statement, seconds in run.statements:
                totals[statement] = totals.get(statement, 0.0) + seconds / len(runs)
        gate = {statement: seconds for statement, seconds in totals.items() if statement in GATE_STATEMENTS}
        if gate:
            lines.append(f"- {name}: the gate's statements " + ", ".join(
                f"`{statement}` {seconds:.3f} s" for statement, seconds in sorted(gate.items(), key=lambda i: -i[1])))
    return ["", "Where the gate's time goes (mean seconds per run of the default gate):", "", *lines] if lines else []
