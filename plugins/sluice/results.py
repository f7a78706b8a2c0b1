"""What each pipeline step returns: counts and references per source, never rows, and their XCom form.

Each result converts to a JSON-able dict with to_xcom() and back with from_xcom(); the dict names its step
("step"), so whoever reads a run's XComs (record_run) knows each result by what it is, not by the id of the
task that returned it.
"""

from dataclasses import asdict, dataclass, field, fields
from typing import ClassVar, Generic, TypeVar

from sluice.staging import StageCounts


@dataclass
class Ingested(StageCounts):
    """One source fetched and staged (the reader's StageCounts: the staged file's reference and its counts),
    the fetch's place in the fetch order and the source's kind."""

    STEP: ClassVar[str] = "ingest"
    # warehouse.next_fetch_seq; None for a result of a release before fetches were ordered, whose batch counts
    # as fetched when it is stored
    fetch_seq: int | None = None
    # the source's kind, which names its raw table; None for a result of a release before named sources,
    # whose sources were named after their kinds
    kind: str | None = None
    # the worker (host name) that wrote the staged file: store_raw's error names it when the file is not found
    staged_by: str | None = None

    @classmethod
    def of(cls, counts: StageCounts, fetch_seq: int | None, kind: str | None = None,
           staged_by: str | None = None) -> "Ingested":
        return cls(**asdict(counts), fetch_seq=fetch_seq, kind=kind, staged_by=staged_by)

    @property
    def fetched(self) -> int:
        return self.records + self.problems

    def to_xcom(self) -> dict:
        return {"step": self.STEP, **asdict(self)}

    @classmethod
    def from_xcom(cls, value: dict) -> "Ingested":
        return cls(**_known(cls, value))


@dataclass(frozen=True)
class SourceStored:
    source: str
    stored: int = 0  # staged records left for normalize
    raw_inserted: int = 0
    raw_updated: int = 0
    rejected: int = 0  # quarantined problems and duplicates
    superseded: int = 0  # records a later fetch had already stored


@dataclass(frozen=True)
class SourceNormalized:
    source: str
    staged: int = 0
    valid: int = 0
    fast_path: int = 0
    rejected: int = 0
    skipped_unchanged: int = 0


@dataclass(frozen=True)
class SourceUpserted:
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


@dataclass(frozen=True)
class SourceCheckpoint:
    source: str
    last_processed_id: str | None = None
    total_processed: int = 0
    last_processed_at: str | None = None


Item = TypeVar("Item")


@dataclass(frozen=True)
class PerSource(Generic[Item]):
    """A step's result for every source it handled, by source name."""

    STEP: ClassVar[str]
    ITEM: ClassVar[type]
    sources: dict[str, Item] = field(default_factory=dict)

    def __init_subclass__(cls, *, step: str, item: type, **kwargs):
        # each step's result is this class with its step's name and per-source counts (Upserted also has the
        # sources it refused)
        super().__init_subclass__(**kwargs)
        cls.STEP, cls.ITEM = step, item

    def of(self, source: str) -> Item:
        """The source's result; zero counts for a source the step did not handle."""
        return self.sources.get(source) or self.ITEM(source=source)

    def to_xcom(self) -> dict:
        return {"step": self.STEP, "sources": {name: asdict(result) for name, result in self.sources.items()}}

    @classmethod
    def from_xcom(cls, value: dict):
        return cls({name: cls.ITEM(**_known(cls.ITEM, result)) for name, result in value["sources"].items()})


class Stored(PerSource[SourceStored], step="store_raw", item=SourceStored):
    pass


class Normalized(PerSource[SourceNormalized], step="normalize", item=SourceNormalized):
    pass


@dataclass(frozen=True)
class Upserted(PerSource[SourceUpserted], step="upsert", item=SourceUpserted):
    """Also the sources whose upsert was refused (sluice.errors.DeleteRefused), with why: nothing of them
    committed, and the step still succeeds for the others."""

    failed: dict[str, str] = field(default_factory=dict)

    def to_xcom(self) -> dict:
        return {**super().to_xcom(), "failed": dict(self.failed)}

    @classmethod
    def from_xcom(cls, value: dict) -> "Upserted":
        # an upsert result of a release before refused sources has no "failed"
        return cls(super().from_xcom(value).sources, dict(value.get("failed") or {}))


class Checkpointed(PerSource[SourceCheckpoint], step="checkpoint", item=SourceCheckpoint):
    pass


@dataclass(frozen=True)
class Recorded:
    """The run's etl_runs row: its id, status and the per-source counts written there."""

    STEP: ClassVar[str] = "record_run"
    etl_run_id: int
    status: str
    sources: dict[str, dict] = field(default_factory=dict)

    def to_xcom(self) -> dict:
        return {"step": self.STEP, **asdict(self)}

    @classmethod
    def from_xcom(cls, value: dict) -> "Recorded":
        return cls(**_known(cls, value))


STEPS = {kind.STEP: kind for kind in (Ingested, Stored, Normalized, Upserted, Checkpointed, Recorded)}


def from_xcom(value):
    """The step result an XCom value holds, or None for a value that is not one (a task returning nothing)."""
    if not isinstance(value, dict) or value.get("step") not in STEPS:
        return None
    return STEPS[value["step"]].from_xcom(value)


def _known(kind: type, value: dict) -> dict:
    """The value's entries that are fields of kind: a result written by another release (a run upgraded between
    its tasks) may carry entries this one does not know and lack some (fetch_seq, from before fetches were
    ordered); the step marker is not a field."""
    names = {item.name for item in fields(kind)}
    return {name: item for name, item in value.items() if name in names}

