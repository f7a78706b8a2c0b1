"""One pass of the pipeline over the bench sources, stage by stage in the DAG's order, each in a child."""

import contextlib
import datetime as dt
import functools
import http.server
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench import database
from bench.child import Children

STAGES = ("ingest", "store_raw", "normalize", "upsert", "checkpoint")
LOAD_STAGES = ("store_raw", "normalize", "upsert")  # what the baselines are compared with


@dataclass
class StageTiming:
    stage: str
    source: str  # "csv", "api", or "all" for record_run
    rows: int  # input rows of the source: rows/s is pipeline throughput, comparable across stages
    seconds: float
    peak_rss_mb: float
    result: dict
    statements: list = field(default_factory=list)  # (sql/*.sql query name, seconds) in the order run

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


@dataclass
class PassResult:
    name: str
    timings: list[StageTiming] = field(default_factory=list)

    def of(self, stage: str, source: str) -> StageTiming | None:
        return next((t for t in self.timings if t.stage == stage and t.source == source), None)

    def seconds(self, source: str, stages=STAGES) -> float:
        return sum(t.seconds for t in self.timings if t.source == source and t.stage in stages)

    def total_seconds(self) -> float:
        return sum(t.seconds for t in self.timings)

    def sources(self) -> list[str]:
        return list(dict.fromkeys(t.source for t in self.timings if t.source != "all"))

    def written(self, source: str) -> dict:
        """Rows written, from the functions' own returned counts."""
        stored = self.of("store_raw", source).result
        normalized = self.of("normalize", source).result
        upserted = self.of("upsert", source).result
        return {
            "raw_inserted": stored["raw_inserted"], "raw_updated": stored["raw_updated"],
            "rejected": stored["rejected"] + normalized["rejected"],
            "normalized_valid": normalized["valid"], "skipped_unchanged": normalized["skipped_unchanged"],
            "inserted": upserted["inserted"], "updated": upserted["updated"],
        }


@dataclass
class Source:
    name: str  # csv | api: a seed source with its default mapping
    rows: int
    url: str  # where the source is served on 127.0.0.1 (SourceServer, served_files)
    max_pages: int = 1000


@contextlib.contextmanager
def served_files(directory: Path) -> Iterator[str]:
    """The files of directory over HTTP on 127.0.0.1, streamed from disk, as a CSV source publishes them."""

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass  # a line per request would drown the bench's progress

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(directory)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def run_pass(children: Children, db: str, name: str, sources: list[Source], staging_dir: Path) -> PassResult:
    """The pipeline's steps in the DAG's order, each step once per source (so each is timed alone); every
    step takes the previous one's result in its XCom form, as the DAG's tasks do."""
    run_id = f"bench-{name}"
    started_at = dt.datetime.now(dt.timezone.utc).isoformat()
    result = PassResult(name)
    staging_dir.mkdir(parents=True, exist_ok=True)
    staged = {source.name: str(staging_dir / f"{name}-{source.name}.copy") for source in sources}
    outputs: dict[str, dict] = {stage: {} for stage in STAGES}

    def step(stage: str, source: Source, args: dict) -> None:
        database.checkpoint(db)
        measured = children.run(stage, {"db": db, "run_id": run_id, **args}, label=f"{name} {stage} {source.name}")
        outputs[stage][source.name] = value = measured["result"]
        result.timings.append(StageTiming(stage, source.name, source.rows, measured["seconds"],
                                          measured["peak_rss_mb"], value, measured["statements"]))

    for source in sources:
        step("ingest", source, {"source": source.name, "url": source.url, "staged": staged[source.name],
                                "max_pages": source.max_pages})
    # each step of a source's lane takes the results of the lane's steps it needs, as the DAG hands them on
    inputs = {"store_raw": {"ingested": "ingest"}, "normalize": {"stored": "store_raw"},
              "upsert": {"stored": "store_raw", "normalized": "normalize"},
              "checkpoint": {"stored": "store_raw", "upserted": "upsert"}}
    for stage, arguments in inputs.items():
        for source in sources:
            step(stage, source, {argument: outputs[previous][source.name] for argument, previous in arguments.items()})
    database.checkpoint(db)
    measured = children.run("record_run", {
        "db": db, "run_id": run_id, "started_at": started_at,
        "step_results": [value for stage in STAGES for value in outputs[stage].values()],
    }, label=f"{name} record_run")
    result.timings.append(StageTiming("record_run", "all", sum(s.rows for s in sources), measured["seconds"],
                                      measured["peak_rss_mb"], measured["result"]))
    for path in staged.values():
        Path(path).unlink(missing_ok=True)
    return result
