"""The cost of the quality gate (issue 26): the whole DAG over one CSV source with its default gate (anomaly
detection on, no declared checks) against the same source with `anomalies: false` (no gate work at all), in one
bench run.

Each round loads both variants, each into a fresh warehouse of the same server, alternating which goes first: the
first load, then the unchanged rerun on the same warehouse, with `airflow dags test` as users run it
(whole_dag.Airflow). The time compared is each run's span from the first ingest's start to record_run's end
(Airflow's fixed start-up is in neither); the ratios are of the rounds' medians, per pass.
"""

import json
import shutil
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from bench import database, inputs, whole_dag
from bench.pipeline import served_files
from sluice import settings
from sluice_devtools import local_env

VARIANTS = ("gate off", "default gate")
PASSES = ("first load", "unchanged rerun")
TARGET = 1.10  # at most 10% more time with the default checks
GATE_STATEMENTS = ("batch_nulls", "batch_measures", "history", "check_rejects", "forget_results", "record_result",
                   "record_quality_run", "supersede_holds")


@dataclass
class QualityGateResult:
    label: str
    rows: int
    runs: dict[tuple[str, str], list] = field(
        default_factory=lambda: {(variant, name): [] for variant in VARIANTS for name in PASSES})  # DagRun each
    notes: list[str] = field(default_factory=list)

    def median(self, variant: str, name: str) -> float | None:
        spans = [run.span_seconds for run in self.runs[(variant, name)] if run.span_seconds is not None]
        return statistics.median(spans) if spans else None

    def ratio(self, name: str) -> float | None:
        off, on = self.median(VARIANTS[0], name), self.median(VARIANTS[1], name)
        return on / off if off and on else None


def catalog(path: Path, variant: str, directory: Path) -> Path:
    entry = {"name": "items", "kind": "csv", "endpoint": path.name, "mapping": settings.DEFAULT_CSV_MAPPING}
    if variant == VARIANTS[0]:
        entry["anomalies"] = False
    catalog_path = directory / f"catalog-{variant.replace(' ', '-')}.json"
    catalog_path.write_text(json.dumps([entry]))
    return catalog_path


def run_server(server: database.Server, label: str, *, log_dir: Path, work_dir: Path, stamp: str, rows: int,
               rounds: int, echo=print) -> QualityGateResult:
    result = QualityGateResult(label, rows)
    path = inputs.write_csvs(work_dir / "inputs", rows, with_variants=False).path
    prefix = f"bench_{stamp}_quality_{label}"
    echo(f"quality gate on {label}: airflow db migrate (metadata database on the same server)")
    airflow = whole_dag.Airflow(work_dir / "airflow-quality" / f"{stamp}-{label}",
                                server.create_database(f"{prefix}_airflow"), log_dir / f"airflow-quality-{label}.log")
    staging = work_dir / "staging-quality" / label
    try:
        with served_files(path.parent) as files:
            for number in range(1, rounds + 1):
                # alternate the order: a machine warming up or slowing down favours neither variant
                for variant in VARIANTS if number % 2 else reversed(VARIANTS):
                    warehouse = server.create_database(f"{prefix}_{number}_{variant.replace(' ', '_')}")
                    env = {**local_env.airflow_env(airflow.home, warehouse_url=warehouse, api_url=None,
                                                   csv_url=files),
                           "SLUICE_STAGING_URL": f"file://{staging}",
                           "SLUICE_SOURCES_FILE": str(catalog(path, variant, airflow.home))}
                    for name in PASSES:
                        run = airflow.dags_test(f"quality-{variant.replace(' ', '-')}-{name.replace(' ', '-')}-"
                                                f"{number}", env, warehouse)
                        result.runs[(variant, name)].append(run)
                        echo(f"  dags test {variant:<12} {name:<15} round {number}: ingest→record_run "
                             f"{run.span_seconds or 0:7.2f} s (wall {run.wall_seconds:.2f} s), {run.state}, "
                             f"{run.written:,} rows written")
                        if run.state != "success" or run.etl_run.get("status") != "success":
                            result.notes.append(f"{label} {variant} {name} round {number}: dag run {run.state}: "
                                                f"{run.etl_run.get('error_message')}")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(airflow.home, ignore_errors=True)
    return result


def section(result: QualityGateResult) -> list[str]:
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
    lines.extend(f"- note: {note}" for note in result.notes)
    return lines + gate_statements(result)


def gate_statements(result: QualityGateResult) -> list[str]:
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
