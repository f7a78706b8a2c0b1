"""Load the bench CSV with dlt (merge on primary key id): the dlt baselines, run in the bench virtualenv.

Standalone on purpose: it runs under bench/work/.venv-bench (dlt, pyarrow), which has neither sluice
nor the main pins. Usage: python bench/dlt_load.py arrow|dicts|arrow+indexes CSV URL PIPELINES_DIR RESULT_JSON

arrow+indexes is the arrow merge followed by building the search structure Sluice keeps on normalized_data
(sql/migrations: a unique key, a two-column btree, trigram GIN on name and description) on dlt's table,
timed together: the like-for-like baseline of #16. The database needs pg_trgm already.

Both resources keep the rows Sluice's rules keep (integer id, a name, a numeric value) and type them.
"""

import csv
import json
import os
import sys
import time

DECIMAL = r"^\s*[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?\s*$"
COLUMNS = ("id", "name", "value", "description")
# Sluice's unique (source, source_id), its (updated_at desc, id desc) btree and its two trigram indexes, on
# the columns dlt's table has
INDEXES = (
    "create unique index items_key on {table} (id)",
    "create index items_value_idx on {table} (value desc, id desc)",
    "create index items_name_trgm on {table} using gin (name public.gin_trgm_ops)",
    "create index items_description_trgm on {table} using gin (description public.gin_trgm_ops)",
)


def arrow_table(path: str):
    """One pyarrow table from pyarrow.csv.read_csv, filtered and typed with Arrow compute."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pcsv

    table = pcsv.read_csv(
        path,
        parse_options=pcsv.ParseOptions(newlines_in_values=True, invalid_row_handler=lambda row: "skip"),
        convert_options=pcsv.ConvertOptions(column_types={name: pa.string() for name in COLUMNS}),
    )
    ids, names, values = (pc.utf8_trim_whitespace(table[name]) for name in ("id", "name", "value"))
    keep = pc.and_(pc.and_(pc.match_substring_regex(ids, r"^[0-9]+$"), pc.greater(pc.utf8_length(names), 0)),
                   pc.match_substring_regex(values, DECIMAL))
    descriptions = pc.utf8_trim_whitespace(table["description"])
    descriptions = pc.if_else(pc.equal(descriptions, ""), pa.scalar(None, pa.string()), descriptions)
    kept = pa.table({"id": ids, "name": names, "value": values, "description": descriptions}).filter(keep)
    return kept.set_column(0, "id", pc.cast(kept["id"], pa.int64())).set_column(
        2, "value", pc.cast(pc.utf8_trim_whitespace(kept["value"]), pa.float64()))


def row_dicts(path: str):
    """Row dicts from csv.DictReader, one at a time."""
    with open(path, newline="", encoding="utf-8") as file:
        for row in csv.DictReader(file):
            if None in row or None in row.values():  # too many or too few fields
                continue
            source_id, name = row["id"].strip(), row["name"].strip()
            if not source_id.isdigit() or not name:
                continue
            try:
                value = float(row["value"])
            except ValueError:
                continue
            yield {"id": int(source_id), "name": name, "value": value,
                   "description": row["description"].strip() or None}


def peak_rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("/proc/self/status has no VmHWM line")


def main(argv: list[str]) -> int:
    mode, path, url, pipelines_dir, result_path = argv
    os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
    import dlt

    name, indexed = mode.replace("+indexes", "_indexes"), mode.endswith("+indexes")
    mode = mode.removesuffix("+indexes")

    @dlt.resource(name="items", primary_key="id", write_disposition="merge")
    def items():
        if mode == "arrow":
            yield arrow_table(path)
        else:
            yield from row_dicts(path)

    pipeline = dlt.pipeline(pipeline_name=f"bench_{name}", destination=dlt.destinations.postgres(credentials=url),
                            dataset_name=f"dlt_{name}", pipelines_dir=pipelines_dir)
    start = time.perf_counter()
    info = pipeline.run(items())
    merged = time.perf_counter() - start
    info.raise_on_failed_jobs()
    with pipeline.sql_client() as client:
        table = client.make_qualified_table_name("items")
        if indexed:
            for statement in INDEXES:
                client.execute_sql(statement.format(table=table))
        seconds = time.perf_counter() - start
        ((rows,),) = client.execute_sql(f"select count(*) from {table}")
    with open(result_path, "w") as out:
        json.dump({"seconds": seconds, "peak_rss_mb": peak_rss_mb(),
                   "result": {"rows": rows, "merge_seconds": merged}}, out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
