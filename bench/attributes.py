"""The cost of declared fields (issue 23): the whole DAG over one CSV source with five declared fields (text,
integer, numeric, timestamp, boolean) against the same file with today's mapping and no fields, in one bench run.

Each round loads both variants, each into a fresh warehouse of the same server, alternating which goes first, with
`airflow dags test` as users run it (whole_dag.compare). The time compared is each run's span from the first
ingest's start to record_run's end (Airflow's fixed start-up is in neither); the ratio is of the rounds' medians.
"""

import csv
import json
from pathlib import Path

from bench import database, whole_dag

HEADER = ("id", "name", "value", "description", "email", "seats", "mrr", "signup", "active")
MAPPING = {"source_id": "id", "name": "name", "value": "value", "description": "description"}
FIELDS = {"email": "text", "seats": "integer", "mrr": "numeric", "signup": "timestamp", "active": "boolean"}
VARIANTS = ("no fields", "five fields")
PASSES = ("first load",)
TARGET = 1.15  # at most 15% more time with the fields


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
               rounds: int, echo=print) -> whole_dag.Comparison:
    return whole_dag.compare(server, label, "attributes", variants=VARIANTS, passes=PASSES, catalog=catalog,
                             csv_path=write_csv(work_dir / "inputs", rows), rows=rows, log_dir=log_dir,
                             work_dir=work_dir, stamp=stamp, rounds=rounds, echo=echo)


def section(result: whole_dag.Comparison) -> list[str]:
    """The report's table of the comparison and its target line."""
    lines = [f"## Declared fields: the whole DAG over {result.rows:,} CSV rows, five fields against none "
             f"[{result.label}]", "",
             "| variant | round | ingest→record_run s | normalize s | upsert s | rows written | state |",
             "|---|---|---|---|---|---|---|"]
    for variant in VARIANTS:
        for number, run in enumerate(result.runs[(variant, PASSES[0])], start=1):
            lines.append(f"| {variant} | {number} | {run.span_seconds or 0:.2f} | "
                         f"{run.task_seconds.get('normalize', 0):.2f} | {run.task_seconds.get('upsert', 0):.2f} | "
                         f"{run.written:,} | {run.state} |")
    lines.append("")
    ratio = result.ratio(PASSES[0])
    if ratio is None:
        lines.append("SKIP  declared fields cost at most 15% more time: not measured")
    else:
        verdict = "PASS" if ratio <= TARGET else "MISS"
        typed, plain = (result.median(variant, PASSES[0]) for variant in (VARIANTS[1], VARIANTS[0]))
        lines.append(f"{verdict}  declared fields cost at most 15% more time: five fields {typed:.2f} s vs none "
                     f"{plain:.2f} s (medians of {len(result.runs[(VARIANTS[0], PASSES[0])])} rounds) = {ratio:.3f}× "
                     f"[{result.label}]")
    lines.extend(f"- note: {note}" for note in result.notes)
    return lines + statement_differences(result)


def statement_differences(result: whole_dag.Comparison, shown: int = 8) -> list[str]:
    """Where the fields' extra time goes: each (task, statement)'s mean seconds per variant over the rounds
    (bench.dag_profile), the largest differences first."""
    means: dict[str, dict[tuple[str, str], float]] = {}
    for variant in VARIANTS:
        runs = [run for run in result.runs[(variant, PASSES[0])] if run.statements]
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
