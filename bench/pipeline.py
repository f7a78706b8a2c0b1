"""One pass of the pipeline over the bench sources, stage by stage in the DAG's order, each in a child."""

import datetime as dt
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
    name: str  # csv | api
    rows: int
    csv_path: Path | None = None
    url: str | None = None
    max_pages: int = 1000


def run_pass(children: Children, db: str, name: str, sources: list[Source], staging_dir: Path) -> PassResult:
    run_id = f"bench-{name}"
    started_at = dt.datetime.now(dt.timezone.utc).isoformat()
    result = PassResult(name)
    staging_dir.mkdir(parents=True, exist_ok=True)
    staged = {source.name: str(staging_dir / f"{name}-{source.name}.copy") for source in sources}
    outputs: dict[str, dict] = {stage: {} for stage in STAGES}

    def step(stage: str, source: Source, args: dict) -> None:
        database.checkpoint(db)
        child_step = f"ingest_{source.name}" if stage == "ingest" else stage
        measured = children.run(child_step, args, label=f"{name} {stage} {source.name}")
        outputs[stage][source.name] = measured["result"]
        result.timings.append(StageTiming(stage, source.name, source.rows, measured["seconds"],
                                          measured["peak_rss_mb"], measured["result"], measured["statements"]))

    for source in sources:
        if source.name == "csv":
            step("ingest", source, {"path": str(source.csv_path), "staged": staged["csv"], "run_id": run_id})
        else:
            step("ingest", source, {"url": source.url, "staged": staged["api"], "run_id": run_id,
                                    "max_pages": source.max_pages})
    for source in sources:
        step("store_raw", source, {"db": db, "source": source.name, "staged": staged[source.name], "run_id": run_id})
    for source in sources:
        step("normalize", source, {"db": db, "source": source.name, "run_id": run_id})
    for source in sources:
        step("upsert", source, {"db": db, "source": source.name, "run_id": run_id})
    for source in sources:
        step("checkpoint", source, {"db": db, "source": source.name, "run_id": run_id,
                                    "processed": outputs["normalize"][source.name]["staged"]})
    database.checkpoint(db)
    measured = children.run("record_run", {
        "db": db, "run_id": run_id, "started_at": started_at, "ingested": outputs["ingest"],
        "stored": outputs["store_raw"], "normalized": outputs["normalize"], "upserted": outputs["upsert"],
    }, label=f"{name} record_run")
    result.timings.append(StageTiming("record_run", "all", sum(s.rows for s in sources), measured["seconds"],
                                      measured["peak_rss_mb"], measured["result"]))
    for path in staged.values():
        Path(path).unlink(missing_ok=True)
    return result
