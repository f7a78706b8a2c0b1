"""What each pipeline step returns for one source: counts and references, never rows, and their XCom form.

Each source runs its own lane of steps (ingest → store_raw → normalize → upsert → checkpoint), and each step
hands the next one its typed result. Each result converts to a JSON-able dict with to_xcom() (which names its
step, so whoever reads a run's XComs knows each result by what it is) and back with from_xcom(); the warehouse
keeps the same dict in etl_step_results, so a cleared or retried step returns what it committed.
"""

from dataclasses import asdict, dataclass, field, fields
from typing import ClassVar

from sluice.staging import StageCounts


class StepResult:
    """A step's result for one source, to and from its XCom (and etl_step_results) form."""

    STEP: ClassVar[str]

    def to_xcom(self) -> dict:
        return {"step": self.STEP, **asdict(self)}

    @classmethod
    def from_xcom(cls, value: dict):
        # the step marker is not a field
        names = {item.name for item in fields(cls)}
        return cls(**{name: item for name, item in value.items() if name in names})


@dataclass
class Ingested(StageCounts, StepResult):
    """One source fetched and staged (the reader's StageCounts: the staged file's reference and its counts),
    the fetch's place in the fetch order, the source's kind and the worker that wrote the staged file."""

    STEP: ClassVar[str] = "ingest"
    # warehouse.next_fetch_seq, taken when the read started: store_raw never lets an older fetch replace a newer
    fetch_seq: int = 0
    # the source's kind, which names its raw table
    kind: str = ""
    # the worker (host name) that wrote the staged file: store_raw's error names it when the file is not found
    staged_by: str | None = None
    # a replay (sluice.replay): nothing was fetched or staged, store_raw stores nothing
    replay: bool = False

    @classmethod
    def of(cls, counts: StageCounts, fetch_seq: int, kind: str, staged_by: str | None = None) -> "Ingested":
        return cls(**asdict(counts), fetch_seq=fetch_seq, kind=kind, staged_by=staged_by)

    @property
    def fetched(self) -> int:
        return self.records + self.problems


@dataclass(frozen=True)
class Stored(StepResult):
    STEP: ClassVar[str] = "store_raw"
    source: str
    stored: int = 0  # staged records left for normalize
    raw_inserted: int = 0
    raw_updated: int = 0
    rejected: int = 0  # quarantined problems and duplicates
    superseded: int = 0  # records a later fetch had already stored
    fetch_seq: int | None = None  # the stored batch's place in the fetch order (Ingested.fetch_seq)
    last_id: str | None = None  # the highest id stored, spelled as the source spelled it: the checkpoint's
    whole_read: bool = True  # the read had every record the source holds (Ingested.whole_read): it may delete
    # the newest value of the source's cursor field stored, as the source spelled it (None: no cursor, or no time)
    last_cursor: str | None = None
    # per field, its present values' JSON types counted as the reader staged them (Ingested.json_types), for the
    # quality gate's type mix; {} when not measured
    json_types: dict = field(default_factory=dict)
    # the input key of the rules that typed the staged attributes (Ingested.attributes_key; None: none typed)
    attributes_key: str | None = None
    # the file the batch was read from: {"digest", "ingested": what ingest counted in it}, which upsert records
    # with the load once published, for the next read of the same file (warehouse.unchanged_file); None: no file
    file: dict | None = None
    # the file equals the source's last complete load and nothing changed the source since (store_unchanged): no
    # record was stored; normalize, upsert and checkpoint do no work and report that load's counts, normalize
    # rejecting normalize_rejected records again (copied into this run's rejected_records with the others)
    unchanged: bool = False
    normalize_rejected: int = 0

    @property
    def written(self) -> int:
        """Rows of the raw table this step wrote (a record stored unchanged writes nothing)."""
        return self.raw_inserted + self.raw_updated


@dataclass(frozen=True)
class Normalized(StepResult):
    STEP: ClassVar[str] = "normalize"
    source: str
    staged: int = 0
    valid: int = 0
    fast_path: int = 0
    rejected: int = 0
    skipped_unchanged: int = 0
    # stored raw records the run did not fetch, normalized again because the source's declaration changed: valid
    # ones (staged for upsert) and rejected ones (quarantined); not counted above, which are the fetched records'
    renormalized: int = 0
    renormalized_rejected: int = 0


@dataclass(frozen=True)
class Upserted(StepResult):
    STEP: ClassVar[str] = "upsert"
    source: str
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    superseded: int = 0  # rows a later fetch replaced in raw before this upsert
    processed: int = 0  # the records normalize read, which the checkpoint counts
    deleted: int = 0  # live rows soft-deleted: a whole read no longer contained their records
    undeleted: int = 0  # deleted rows whose records came back
    deletes_skipped: str = ""  # why a read that was to delete did not (empty when it did, or was not to)
    # the source's live rows before and after: live_after = live_before + inserted - deleted + undeleted
    live_before: int = 0
    live_after: int = 0
    # rows re-normalized from raw (Normalized.renormalized) that were inserted or changed: live_after counts the
    # inserted ones too
    renormalized_inserted: int = 0
    renormalized_updated: int = 0
    # the batch's quality score, 0-100 (sluice.quality; None: no gate judged it)
    quality_score: int | None = None

    @property
    def written(self) -> int:
        """The source's rows of normalized_data this step wrote: inserted, updated, soft-deleted, undeleted and
        re-normalized from raw (an unchanged record writes nothing)."""
        return (self.inserted + self.updated + self.deleted + self.undeleted
                + self.renormalized_inserted + self.renormalized_updated)


@dataclass(frozen=True)
class Checkpointed(StepResult):
    STEP: ClassVar[str] = "checkpoint"
    source: str
    last_processed_id: str | None = None
    total_processed: int = 0
    last_processed_at: str | None = None
    processed: int = 0  # what this run added to total_processed (a redo adds only the difference)
    last_cursor: str | None = None  # the source's time cursor after the run (sluice.timing.Cursor)
    read_until: str | None = None  # the end of the newest data interval it was read in (its `every` counts from it)


@dataclass(frozen=True)
class Recorded(StepResult):
    """The run's etl_runs row: its id, status and the per-source counts written there."""

    STEP: ClassVar[str] = "record_run"
    etl_run_id: int
    status: str
    sources: dict[str, dict] = field(default_factory=dict)


LANE = (Ingested, Stored, Normalized, Upserted, Checkpointed)
STEPS = {kind.STEP: kind for kind in (*LANE, Recorded)}


def from_xcom(value):
    """The step result an XCom value holds, or None for a value that is not one (a task returning nothing)."""
    if not isinstance(value, dict) or value.get("step") not in STEPS:
        return None
    return STEPS[value["step"]].from_xcom(value)
