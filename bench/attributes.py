"""The cost of declared fields (issue 23): the whole DAG over one CSV source with five declared fields (text,
integer, numeric, timestamp, boolean) against the same file with today's mapping and no fields, in one bench run.

Each round loads both variants, each into a fresh warehouse of the same server, alternating which goes first, with
`airflow dags test` as users run it (whole_dag.Airflow). The time compared is each run's span from the first
ingest's start to record_run's end (Airflow's fixed start-up is in neither); the ratio is of the rounds' medians.
"""

import csv
import json
import shutil
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from bench import database, whole_dag
from bench.pipeline import served_files
from sluice_devtools import local_env

HEADER = ("id", "name", "value", "description", "email", "seats", "mrr", "signup", "active")
MAPPING = {"source_id": "id", "name": "name", "value": "value", "description": "description"}
FIELDS = {"email": "text", "seats": "integer", "mrr": "numeric", "signup": "timestamp", "active": "boolean"}
VARIANTS = ("no fields", "five fields")
TARGET = 1.15  # at most 15% more time with the fields


@dataclass
class AttributesResult:
    label: str
    rows: int
    runs: dict[str, list] = field(default_factory=lambda: {variant: [] for variant in VARIANTS})  # DagRun each
    notes: list[str] = field(default_factory=list)

    def median(self, variant: str) -> float | None:
        spans = [run.span_seconds for run in self.runs[variant] if run.span_seconds is not None]
        return statistics.median(spans) if spans else None

    @property
    def ratio(self) -> float | None:
        plain, typed = self.median(VARIANTS[0]), self.median(VARIANTS[1])
        return typed / plain if plain and typed else None


def write_csv(directory: Path, rows: int) -> Path:
    """A CSV whose every row fills the unified columns and the five fields (some timestamps with an offset, some
    without, a numeric of 20 digits now and then); reused when it exists."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"typed-{rows}.csv"
    if path.exists():
        return path
    partial = path.with_suffix(".partial")
    with open(partial, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file, lineterminator="\r\n")
        writer.writerow(HEADER)
        for n in range(1, rows + 1):
            offset = "Z" if n % 3 else "+02:00"
            mrr = f"{n}{n:012d}.{n % 100:02d}" if n % 10 == 0 else f"{n % 10_000}.{n % 100:02d}"
            writer.writerow((n, f"item {n}", f"{n % 1000}.{n % 7}", f"a plain description of item {n}",
                             f"user{n}@example.org", n % 500, mrr,
                             f"2026-{1 + n % 12:02d}-{1 + n % 28:02d}T{n % 24:02d}:{n % 60:02d}:{n % 59:02d}{offset}",
                             "true" if n % 2 else "false"))
    partial.rename(path)
    return path


def catalog(path: Path, variant: str, directory: Path) -> Path:
    entry = {"name": "typed", "kind": "csv", "endpoint": path.name, "mapping": MAPPING}
    if variant == VARIANTS[1]:
        entry["fields"] = FIELDS
    catalog_path = directory / f"catalog-{variant.replace(' ', '-')}.json"
    catalog_path.write_text(json.dumps([entry]))
    return catalog_path


def run_server(server: database.Server, label: str, *, log_dir: Path, work_dir: Path, stamp: str, rows: int,
               rounds: int, echo=print) -> AttributesResult:
    result = AttributesResult(label, rows)
    path = write_csv(work_dir / "inputs", rows)
    prefix = f"bench_{stamp}_attributes_{label}"
    echo(f"declared fields on {label}: airflow db migrate (metadata database on the same server)")
    airflow = whole_dag.Airflow(work_dir / "airflow-attributes" / f"{stamp}-{label}",
                                server.create_database(f"{prefix}_airflow"), log_dir / f"airflow-attributes-{label}.log")
    staging = work_dir / "staging-attributes" / label
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
                    run = airflow.dags_test(f"attributes-{variant.replace(' ', '-')}-{number}", env, warehouse)
                    result.runs[variant].append(run)
                    echo(f"  dags test {variant:<12} round {number}: ingest→record_run {run.span_seconds or 0:7.2f} s"
                         f" (wall {run.wall_seconds:.2f} s), {run.state}, {run.written:,} rows written")
                    if run.state != "success" or run.etl_run.get("status") != "success":
                        result.notes.append(f"{label} {variant} round {number}: dag run {run.state}: "
                                            f"{run.etl_run.get('error_message')}")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(airflow.home, ignore_errors=True)
    return result


def section(result: AttributesResult) -> list[str]:
    """The report's table of the comparison and its target line."""
    lines = [f"## Declared fields: the whole DAG over {result.rows:,} CSV rows, five fields against none "
             f"[{result.label}]", "",
             "| variant | round | ingest→record_run s | normalize s | upsert s | rows written | state |",
             "|---|---|---|---|---|---|---|"]
    for variant in VARIANTS:
        for number, run in enumerate(result.runs[variant], start=1):
            lines.append(f"| {variant} | {number} | {run.span_seconds or 0:.2f} | "
                         f"{run.task_seconds.get('normalize', 0):.2f} | {run.task_seconds.get('upsert', 0):.2f} | "
                         f"{run.written:,} | {run.state} |")
    lines.append("")
    ratio = result.ratio
    if ratio is None:
        lines.append("SKIP  declared fields cost at most 15% more time: not measured")
    else:
        verdict = "PASS" if ratio <= TARGET else "MISS"
        lines.append(f"{verdict}  declared fields cost at most 15% more time: five fields "
                     f"{result.median(VARIANTS[1]):.2f} s vs none {result.median(VARIANTS[0]):.2f} s (medians of "
                     f"{len(result.runs[VARIANTS[0]])} rounds) = {ratio:.3f}× [{result.label}]")
    lines.extend(f"- note: {note}" for note in result.notes)
    return lines + statement_differences(result)


def statement_differences(result: AttributesResult, shown: int = 8) -> list[str]:
    """Where the fields' extra time goes: each (task, statement)'s mean seconds per variant over the rounds
    (bench.dag_profile), the largest differences first."""
    means: dict[str, dict[tuple[str, str], float]] = {}
    for variant in VARIANTS:
        runs = [run for run in result.runs[variant] if run.statements]
        totals: dict[tuple[str, str], float] = {}
        for run in runs:
            for task, statement, seconds in run.statements:
                totals[(task, statement)] = totals.get((task, statement), 0.0) + seconds / len(runs)
        means[variant] = totals
    plain, typed = (means[variant] for variant in VARIANTS)
    keys = sorted(set(plain) | set(typed), key=lambda key: -abs(typed.get(key, 0.0) - plain.get(key, 0.0)))[:shown]
    if not keys:
        return []
    lines = ["", f"Where the difference goes (mean seconds per run, the {shown} largest differences):", "",
             f"| task | statement | {VARIANTS[0]} | {VARIANTS[1]} | difference |", "|---|---|---|---|---|"]
    for task, statement in keys:
        a, b = plain.get((task, statement), 0.0), typed.get((task, statement), 0.0)
        lines.append(f"| {task} | `{statement}` | {a:.2f} | {b:.2f} | {b - a:+.2f} |")
    return lines
