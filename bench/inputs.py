"""Bench inputs, made locally: CSVs streamed to disk and the API's records, with the counts a pass should see."""

import csv
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from sluice_devtools import sample_data

BAD_EVERY = 100  # 1% bad rows, in sample_data's four kinds (bad value, no name, blank id, short row)
CHANGED_REMAINDER = 50  # rows with id % 100 == 50 change in the "1% changed" pass; never a bad row
CHANGED_SUFFIX = " (changed)"
HEADER = ("id", "name", "value", "description")


@dataclass
class CsvInput:
    path: Path  # the source CSV, bad rows included
    changed_path: Path  # the same rows with 1% of the good ones edited
    copy_path: Path  # only well-formed rows (4 fields): COPY aborts a whole load on a short row
    rows: int
    changed: int  # rows edited in changed_path
    valid: int = 0  # rows Sluice's rules keep (what the baselines load)


@dataclass
class ApiInput:
    records: list[dict]
    changed_records: list[dict]
    changed: int


def is_changed(number: int) -> bool:
    return number % BAD_EVERY == CHANGED_REMAINDER


def write_csvs(directory: Path, rows: int, *, with_variants: bool = True) -> CsvInput:
    """Stream `rows` data rows (plus a header) to disk; reuse the files when they already match."""
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"items-{rows}"
    result = CsvInput(directory / f"{stem}.csv", directory / f"{stem}-changed.csv",
                      directory / f"{stem}-copy.csv", rows, sum(1 for n in range(1, rows + 1) if is_changed(n)))
    done = directory / f"{stem}.done"
    # the files are reused only while the generator that made them is unchanged
    generator = hashlib.sha256(Path(sample_data.__file__).read_bytes() + Path(__file__).read_bytes()).hexdigest()
    made = json.loads(done.read_text()) if done.exists() else {}
    if made.get("generator") == generator and made["with_variants"] >= with_variants:
        result.valid = made["valid"]
        return result
    done.unlink(missing_ok=True)
    paths = [result.path, result.changed_path, result.copy_path] if with_variants else [result.path]
    files = [open(path, "w", newline="", encoding="utf-8") for path in paths]
    try:
        writers = [csv.writer(file, lineterminator="\r\n") for file in files]
        for writer in writers:
            writer.writerow(HEADER)
        for row in sample_data.csv_rows(rows, bad_every=BAD_EVERY):
            writers[0].writerow(row)
            result.valid += is_valid(row)
            if not with_variants:
                continue
            if len(row) == len(HEADER) and row[0] and is_changed(int(row[0])):
                writers[1].writerow([*row[:3], row[3] + CHANGED_SUFFIX])
            else:
                writers[1].writerow(row)
            if len(row) == len(HEADER):
                writers[2].writerow(row)
    finally:
        for file in files:
            file.close()
    done.write_text(json.dumps({"with_variants": with_variants, "valid": result.valid, "generator": generator}))
    return result


def is_valid(row: list[str]) -> bool:
    return typed(row) is not None


def typed(row: list[str]) -> tuple | None:
    """(id, name, value, description) as Sluice's rules would keep it, or None for a row they reject."""
    if len(row) != len(HEADER) or not row[0].strip().isdigit() or not row[1].strip():
        return None
    try:
        value = float(row[2])
    except ValueError:
        return None
    return int(row[0]), row[1].strip(), value, row[3].strip() or None


def api_records(count: int) -> ApiInput:
    """JSONPlaceholder-shaped posts, and a copy with 1% of the titles edited."""
    records = sample_data.posts(count)
    changed_records = [
        {**record, "title": record["title"] + CHANGED_SUFFIX} if is_changed(record["id"]) else record
        for record in records
    ]
    return ApiInput(records, changed_records, sum(1 for record in records if is_changed(record["id"])))


def valid_rows(path: Path, limit: int | None = None) -> list[tuple]:
    """The rows Sluice's rules keep, typed (id int, name, value float, description), for the baselines."""
    rows = []
    with open(path, encoding="utf-8", newline="") as file:
        reader = csv.reader(file)
        next(reader)
        for row in reader:
            if (row := typed(row)) is None:
                continue
            rows.append(row)
            if limit and len(rows) >= limit:
                break
    return rows
