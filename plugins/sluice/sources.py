"""A source is one value: its name, kind, HTTP connection, endpoint, mapping, incremental parameter, its kind's
options and whether a whole read soft-deletes the records it no longer contains (delete_missing).

The catalog is the run's list of sources (catalog(): the DAG param `sources`, else the two seed sources `api`
and `csv` of today's params); each entry is a dict of Source fields, its kind's connection and mapping by
default, checked as a whole before anything is read.

Each kind of source is read by one module, named in KINDS, that has the same entry point:

    stage(source: Source, request: FetchRequest, out: BinaryIO) -> staging.StageCounts

It fetches the source from request.url with request.session and writes its records to `out` as staged lines
(staging.StageWriter). A new kind is one new module with that function, and one entry in KINDS.
"""

import functools
import importlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from types import ModuleType

from sluice import checks as quality_checks
from sluice import delete_guard
from sluice import mapping as mappings
from sluice import timing
from sluice.errors import InvalidSource, MappingError
from sluice.settings import DEFAULT_API_MAPPING, DEFAULT_CSV_MAPPING, Settings

NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")
# kind -> the module that reads sources of that kind (imported when a source of that kind is read)
KINDS = {"api": "sluice.api_source", "csv": "sluice.csv_source"}
PAGINATION_TYPES = ("link", "next_field", "page_param", "offset_param")
# which fields of a pagination each type takes (the first ones listed are required)
_PAGINATION_FIELDS = {"link": ((), ()), "next_field": (("field",), ()),
                      "page_param": (("param", "page_size"), ("size_param", "total_field")),
                      "offset_param": (("param", "page_size"), ("size_param", "total_field"))}
# the options of one kind, with their defaults: a source of another kind must leave them so
_KIND_OPTIONS = {"csv": {"delimiter": ",", "encoding": "utf-8"}, "api": {"records_path": ""}}
# delete_missing by kind (another kind: false): a CSV is a whole file; an API endpoint is often a window (recent
# items, a search)
DELETE_MISSING = {"csv": True, "api": False}
# the types a declared field may have (sluice.rules types its values; the typed views give them SQL types)
FIELD_TYPES = ("text", "integer", "numeric", "boolean", "timestamp", "date", "json")
# what a batch with fields no declaration names does (dlt's schema contracts): evolve records them and loads them
# as json fields; freeze fails the source naming them; discard_undeclared (the default) loads the declared
# fields and records the rest. The raw table keeps every record whole in each case.
SCHEMA_CONTRACTS = ("evolve", "freeze", "discard_undeclared")
# the columns every typed view has: a declared field may not take one of their names
RESERVED_FIELDS = frozenset({"source", "source_id", "name", "value", "description", "attributes", "id",
                             "created_at", "updated_at", "deleted_at", "first_seen_run_id", "last_changed_run_id"})


@dataclass(frozen=True)
class Pagination:
    """How an API source reaches its next page.

    link: the response's Link rel="next" header. next_field: the URL at the dotted path `field` of the page's
    body (relative URLs resolve against the page's). page_param / offset_param: the query parameter `param`
    counts pages from 1 / records from 0, `page_size` records a full page (sent as `size_param` when given);
    an empty page is the last, or a short one once the records read reach the server's count of them: the
    integer at the dotted path `total_field` of the body when given, else its X-Total-Count header (a server
    may cap the page size below page_size; see api_source._Pager.after)."""

    type: str = "link"
    field: str = ""
    param: str = ""
    page_size: int = 0
    size_param: str = ""
    total_field: str = ""

    @classmethod
    def of(cls, value, where: str) -> "Pagination":
        """A pagination from a catalog entry's value: a mapping with `type` and that type's fields."""
        if isinstance(value, cls):
            return value
        if not isinstance(value, Mapping):
            raise InvalidSource(f"{where}: must be an object with a type, got {value!r}")
        kind = value.get("type", "link")
        if kind not in PAGINATION_TYPES:
            raise InvalidSource(f"{where}: type {kind!r} is not one of {', '.join(PAGINATION_TYPES)}")
        required, optional = _PAGINATION_FIELDS[kind]
        # a field the type does not take may be there with its default (as dataclasses.asdict writes it)
        unknown = sorted(name for name in set(value) - {"type", *required, *optional}
                         if name not in _PAGINATION_DEFAULTS or value[name] != _PAGINATION_DEFAULTS[name])
        if unknown:
            raise InvalidSource(f"{where}: type {kind!r} takes no {', '.join(unknown)} "
                                f"(it takes {', '.join(required + optional) or 'nothing but its type'})")
        missing = [name for name in required if name not in value]
        if missing:
            raise InvalidSource(f"{where}: type {kind!r} needs {', '.join(missing)}")
        for name in ("field", "param", "size_param", "total_field"):
            given = value.get(name, "")
            if not isinstance(given, str) or (name in required and not given.strip()):
                raise InvalidSource(f"{where}.{name} must be a non-empty string, got {given!r}")
        size = value.get("page_size", 0)
        if "page_size" in required and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise InvalidSource(f"{where}.page_size must be a positive integer, got {size!r}")
        return cls(kind, **{name: value[name] for name in (*required, *optional) if name in value})


_PAGINATION_DEFAULTS = {name: getattr(Pagination(), name)
                        for name in ("field", "param", "page_size", "size_param", "total_field")}


@dataclass(frozen=True)
class Field:
    """A declared field: its type (FIELD_TYPES) and the source field it comes from (a dotted path, as in a
    mapping). required: a record without it is rejected; otherwise the field is null."""

    type: str
    path: str
    required: bool = False

    @classmethod
    def of(cls, name: object, value: object, where: str) -> "Field":
        """A field from a catalog entry's `fields`: `email: text` (read from the source field `email`) or
        `signup: {type: timestamp, from: created.at, required: true}`."""
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise InvalidSource(f"{where}: field name {name!r} must match {NAME.pattern} (it is a column of the "
                                "source's typed view)")
        if name in RESERVED_FIELDS:
            raise InvalidSource(f"{where}.{name}: the name is taken by a column every source has "
                                f"({', '.join(sorted(RESERVED_FIELDS))}); declare it under another name with "
                                f"`from: {name}`")
        if isinstance(value, cls):
            return value
        spec = {"type": value} if isinstance(value, str) else value
        if not isinstance(spec, Mapping):
            raise InvalidSource(f"{where}.{name} must be a type ({', '.join(FIELD_TYPES)}) or an object with "
                                f"type, from and required, got {value!r}")
        unknown = sorted(set(spec) - {"type", "from", "required"})
        if unknown:
            raise InvalidSource(f"{where}.{name}: unknown option {', '.join(map(repr, unknown))}; "
                                "known: type, from, required")
        if spec.get("type") not in FIELD_TYPES:
            raise InvalidSource(f"{where}.{name}: type {spec.get('type')!r} is not one of {', '.join(FIELD_TYPES)}")
        path = spec.get("from", name)
        if not isinstance(path, str) or not path.strip():
            raise InvalidSource(f"{where}.{name}.from must be a non-empty field name, got {path!r}")
        required = spec.get("required", False)
        if not isinstance(required, bool):
            raise InvalidSource(f"{where}.{name}.required must be true or false, got {required!r}")
        return cls(spec["type"], path, required)

    def to_entry(self) -> dict:
        return {"type": self.type, "from": self.path, "required": self.required}


def _fields(value: object, where: str) -> dict[str, Field]:
    """Declared fields from an object of name -> spec, or a list of specs with their names: a JSON store such as
    PostgreSQL's jsonb (Airflow's XCom and run conf there) keeps the order of a list, not an object's keys."""
    if isinstance(value, list):
        named = {}
        for item in value:
            if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
                raise InvalidSource(f"{where}: fields must be an object of field name -> type, or a list of objects "
                                    f"with a name and a type, got {item!r} in the list")
            if item["name"] in named:
                raise InvalidSource(f"{where}: fields: {item['name']!r} is declared twice")
            named[item["name"]] = {key: spec for key, spec in item.items() if key != "name"}
        value = named
    if not isinstance(value, Mapping):
        raise InvalidSource(f"{where}: fields must be an object of field name -> type, got {value!r}")
    return {name: Field.of(name, spec, f"{where}: fields") for name, spec in value.items()}


@dataclass(frozen=True)
class Source:
    name: str
    kind: str
    conn_id: str  # the Airflow HTTP connection: base URL, credentials, headers
    endpoint: str  # relative to the connection's URL
    mapping: Mapping[str, str]  # normalized column -> source field
    since_param: str = ""  # query parameter asking for records from the checkpoint on; empty reads whole
    # where the mapping was given (a DAG param, a catalog field), for its errors
    mapping_field: str = field(default="mapping", compare=False, repr=False)
    delimiter: str = ","  # csv: the one character between fields (";" and "\t" are common)
    encoding: str = "utf-8"  # csv: the file's text encoding, a Python codec name
    records_path: str = ""  # api: the dotted path of the records' array in a wrapping object; empty: found
    pagination: Pagination = Pagination()  # api: how the next page is reached (a mapping is read by Pagination.of)
    # a whole read (no since_param, or a full refresh) soft-deletes the rows whose records it no longer has;
    # None: the kind's default (DELETE_MISSING)
    delete_missing: bool | None = None
    # declared fields beyond the unified columns: name -> Field (a mapping of specs is read by Field.of), in order
    fields: Mapping[str, Field] = field(default_factory=dict)
    schema_contract: str = "discard_undeclared"  # see SCHEMA_CONTRACTS
    # the most of its live rows one read may soft-delete (0..1); None: SLUICE_MAX_DELETE_FRACTION (delete_guard)
    max_delete_fraction: float | None = None
    # reads bounded by time (sluice.timing): a time cursor beside the id checkpoint, the run's data interval,
    # and a cadence: read only when due (empty: every run); mappings are read by Cursor.of and Window.of
    cursor: timing.Cursor | None = None
    window: timing.Window | None = None
    every: str = ""
    # data quality (sluice.checks): declared checks (a list of mappings is read by checks.parse) and the anomaly
    # detection against the source's history (on by default; false turns it off)
    checks: tuple = ()
    anomalies: quality_checks.Anomalies = quality_checks.Anomalies()

    def __post_init__(self):
        if not isinstance(self.name, str) or not NAME.fullmatch(self.name):
            raise InvalidSource(f"source {self.name!r}: the name must match {NAME.pattern}")
        where = f"source {self.name!r}"
        if self.kind not in KINDS:
            raise InvalidSource(f"{where}: kind {self.kind!r} is not one of {', '.join(sorted(KINDS))}")
        for name in ("conn_id", "endpoint", "since_param"):
            value = getattr(self, name)
            if not isinstance(value, str) or (name == "conn_id" and not value.strip()):
                raise InvalidSource(f"{where}: {name} must be a{' non-empty' if name == 'conn_id' else ''} "
                                    f"string, got {value!r}")
        object.__setattr__(self, "mapping", mappings.validate(self.mapping, f"{where}: {self.mapping_field}"))
        self._check_options(where)
        object.__setattr__(self, "fields", _fields(self.fields, where))
        if self.schema_contract not in SCHEMA_CONTRACTS:
            raise InvalidSource(f"{where}: schema_contract {self.schema_contract!r} is not one of "
                                f"{', '.join(SCHEMA_CONTRACTS)}")
        if self.delete_missing is None:
            object.__setattr__(self, "delete_missing", DELETE_MISSING.get(self.kind, False))
        if not isinstance(self.delete_missing, bool):
            raise InvalidSource(f"{where}: delete_missing must be true or false, got {self.delete_missing!r}")
        if self.max_delete_fraction is not None:
            object.__setattr__(self, "max_delete_fraction",
                               delete_guard.fraction(self.max_delete_fraction, f"{where}: max_delete_fraction"))
        self._check_time(where)
        object.__setattr__(self, "checks", quality_checks.parse(self.checks, where, self.field_types))
        object.__setattr__(self, "anomalies", quality_checks.Anomalies.of(self.anomalies, where))

    @property
    def field_types(self) -> dict[str, str]:
        """Each mapped column and declared field -> its type: the fields a check may name."""
        return {**{column: quality_checks.COLUMN_TYPES[column] for column in self.mapping},
                **{name: spec.type for name, spec in self.fields.items()}}

    def _check_time(self, where: str) -> None:
        if self.cursor is not None:
            object.__setattr__(self, "cursor", timing.Cursor.of(self.cursor, f"{where}: cursor"))
        if self.window is not None:
            object.__setattr__(self, "window", timing.Window.of(self.window, f"{where}: window"))
        if self.every and not timing.duration(self.every, f"{where}: every"):
            raise InvalidSource(f"{where}: every must be longer than 0, got {self.every!r}")
        if self.every and self.window is not None:
            # a skipped run's interval would never be read: a window source reads every interval of the DAG
            raise InvalidSource(f"{where}: every and window exclude each other: a window source reads each run's "
                                "data interval, and the runs every skips would leave their intervals unread; "
                                "drop every (the DAG's schedule follows the finest every of its catalog)")

    @property
    def every_delta(self):
        """The source's cadence (a timedelta), None when it is read by every run."""
        return timing.duration(self.every, "every") if self.every else None

    def deletes_missing(self, full_refresh: bool) -> bool:
        """Whether this read soft-deletes the rows whose records it lacks: only a whole read can tell."""
        partial = self.since_param or self.cursor is not None or self.window is not None
        return self.delete_missing and (not partial or full_refresh)

    def _check_options(self, where: str) -> None:
        object.__setattr__(self, "pagination", Pagination.of(self.pagination, f"{where}: pagination"))
        for kind, options in _KIND_OPTIONS.items():
            for name, default in options.items():
                if self.kind != kind and getattr(self, name) != default:
                    raise InvalidSource(f"{where}: {name} applies to {kind} sources only")
        if self.kind != "api" and self.pagination != Pagination():
            raise InvalidSource(f"{where}: pagination applies to api sources only")
        if not isinstance(self.delimiter, str) or len(self.delimiter) != 1 or self.delimiter in '"\r\n':
            raise InvalidSource(f"{where}: delimiter must be one character other than a quote or a line break, "
                                f"got {self.delimiter!r}")
        try:
            b"a".decode(self.encoding, "ignore")  # LookupError: an unknown codec, or a bytes-to-bytes one (zlib)
        except (LookupError, TypeError):
            raise InvalidSource(f"{where}: encoding {self.encoding!r} is not a text encoding Python knows") from None
        if not isinstance(self.records_path, str) or (self.records_path and "" in self.records_path.split(".")):
            raise InvalidSource(f"{where}: records_path must be a dotted path like data.items, "
                                f"got {self.records_path!r}")

    @functools.cached_property
    def normalization(self):
        """The normalization rules of this source's mapping and declared fields (sluice.rules.Normalization), with
        its row-level error checks: a warn one changes no row (sluice.quality counts it), so it is neither a rule nor
        part of the input key, and the SQL fast path stays on."""
        from sluice import rules

        return rules.Normalization(self.mapping, self.fields, [check for check in self.checks if check.quarantines])

    def reader(self) -> ModuleType:
        """The module that reads this source's kind (see the module docstring)."""
        return importlib.import_module(KINDS[self.kind])


@dataclass(frozen=True)
class FetchRequest:
    """What a kind's stage() needs besides the source: where to read, for which run, and the limits."""

    session: object  # a requests.Session carrying the connection's credentials and headers
    url: str
    run_id: str
    uri: str  # the staged file's reference, which the result carries to store_raw
    settings: Settings
    since: str | None  # the checkpoint to read from (source.since_param); None reads the source whole
    workdir: Path  # a local folder of the run for downloads; the staging sweep removes what a killed task left
    # Unchanged files (a kind that downloads a file whole, as csv): file_key seeds the file's digest (the source's
    # entry as the run reads it, so the same bytes under another mapping or declaration differ), and unchanged,
    # given the digest, returns the counts of the source's last complete load when it read the same digest and
    # nothing changed the source since (warehouse.unchanged_file); then the reader stages the file itself, not its
    # records. None: every file is read (a full refresh, a caller without a warehouse).
    file_key: str = ""
    unchanged: Callable[[str], object] | None = None

    @property
    def policy(self):
        from sluice import http_client

        return http_client.RetryPolicy(attempts=self.settings.http_attempts, timeout=self.settings.http_timeout,
                                       deadline=self.settings.http_deadline)


# The two sources today's DAG params describe: name -> (kind, connection, default mapping, its since param)
SEEDS = {
    "api": ("api", "etl_api", DEFAULT_API_MAPPING, "api_since_param"),
    "csv": ("csv", "etl_csv", DEFAULT_CSV_MAPPING, None),
}


def seed(name: str, *, endpoint: str, mapping: Mapping | None = None, since_param: str = "",
         mapping_field: str = "mapping") -> Source:
    """One of the seed sources (SEEDS), read from `endpoint`; its default mapping unless one is given."""
    kind, conn_id, default_mapping, _ = SEEDS[name]
    return Source(name=name, kind=kind, conn_id=conn_id, endpoint=endpoint,
                  mapping=default_mapping if mapping is None else mapping, since_param=since_param,
                  mapping_field=mapping_field)


def from_params(params: Mapping, name: str) -> Source:
    """A seed source as the DAG params describe it: <name>_endpoint, <name>_mapping and api_since_param."""
    if name not in SEEDS:
        raise InvalidSource(f"source {name!r}: not one of the DAG's sources ({', '.join(SEEDS)})")
    since_param = SEEDS[name][3]
    return seed(name, endpoint=params[f"{name}_endpoint"], mapping=params[f"{name}_mapping"],
                since_param=(params.get(since_param) or "") if since_param else "", mapping_field=f"{name}_mapping")


# the connection and mapping of a catalog entry that does not give them, by kind
KIND_DEFAULTS = {kind: {"conn_id": conn_id, "mapping": mapping} for kind, conn_id, mapping, _ in SEEDS.values()}


def catalog(params: Mapping) -> list[Source]:
    """The run's sources: the `sources` param (a list of catalog entries), or when it is empty the two seed
    sources `api` and `csv` as today's params describe them. Fails on the first invalid entry, naming it."""
    entries = params.get("sources") or []
    if not isinstance(entries, list):
        raise InvalidSource(f"sources must be a list of source objects, got {type(entries).__name__}")
    if not entries:
        return [from_params(params, name) for name in SEEDS]
    found = [from_entry(entry, index) for index, entry in enumerate(entries)]
    seen = {}
    for index, source in enumerate(found):
        if source.name in seen:
            raise InvalidSource(f"source {source.name!r}: name is given twice (sources[{seen[source.name]}] and "
                                f"sources[{index}])")
        seen[source.name] = index
    return found


def from_entry(entry: object, index: int = 0) -> Source:
    """A Source from one catalog entry (a dict of Source fields; conn_id and mapping default by kind)."""
    if not isinstance(entry, Mapping):
        raise InvalidSource(f"sources[{index}] must be an object with name, kind, endpoint..., "
                            f"got {type(entry).__name__}")
    name = entry.get("name")
    where = f"source {name!r}" if isinstance(name, str) and name else f"sources[{index}]"
    allowed = entry_fields()
    unknown = sorted(set(entry) - set(allowed))
    if unknown:
        raise InvalidSource(f"{where}: unknown field {', '.join(map(repr, unknown))}; "
                            f"known: {', '.join(sorted(allowed))}")
    missing = [key for key in ("name", "kind", "endpoint") if key not in entry]
    if missing:
        raise InvalidSource(f"{where}: field {', '.join(map(repr, missing))} is required")
    if entry["kind"] not in KINDS:
        raise InvalidSource(f"{where}: kind {entry['kind']!r} is not one of {', '.join(sorted(KINDS))}")
    try:
        return Source(**{**KIND_DEFAULTS.get(entry["kind"], {}), **entry})
    except MappingError as exc:
        raise InvalidSource(str(exc)) from None
    except TypeError as exc:  # a field of the wrong type that the dataclass itself rejects
        raise InvalidSource(f"{where}: {exc}") from None


@functools.cache
def entry_fields() -> tuple[str, ...]:
    """The fields a catalog entry may give: every field of Source but where a mapping was given."""
    return tuple(item.name for item in fields(Source) if item.init and item.compare)


def to_entry(source: Source) -> dict:
    """The catalog entry of a source, complete (defaults filled in) and JSON-able: what XCom carries."""
    entry = asdict(source)
    # a list: the entry travels through XCom, which may be jsonb, and the fields' order is the typed view's
    entry["fields"] = [{"name": name, **spec.to_entry()} for name, spec in source.fields.items()]
    entry["checks"] = [check.to_entry() for check in source.checks]
    entry["anomalies"] = source.anomalies.to_entry()
    return {name: entry[name] for name in entry_fields()}


def load_file(path: str) -> list:
    """The catalog entries of a YAML or JSON file (a list of sources, or an object with a `sources` list)."""
    import yaml  # installed with Airflow; JSON is YAML too

    try:
        with open(path, encoding="utf-8") as file:
            loaded = yaml.safe_load(file)
    except (OSError, yaml.YAMLError) as exc:
        raise InvalidSource(f"SLUICE_SOURCES_FILE {path}: {exc}") from None
    if isinstance(loaded, Mapping):
        loaded = loaded.get("sources")
    if not isinstance(loaded, list):
        raise InvalidSource(f"SLUICE_SOURCES_FILE {path}: expected a list of sources (or sources: [...])")
    # the param's default must be JSON: a YAML date or set would not survive the trigger form
    return json.loads(json.dumps(loaded, default=str))


def _catalog_schema() -> dict:
    """The JSON Schema of the `sources` param, so Airflow's trigger form refuses a malformed catalog before a run
    starts: each entry an object of known fields, with a name, a known kind and an endpoint. init_schema checks
    every rule again, the fields' types and values too, with errors that name the source. Kept this lean on
    purpose: Airflow checks a param's schema itself each time it resolves the param (dozens of times a run), at a
    cost that grows with the schema (7.7 ms a time for one that spelled out every field, 1.7 ms for this)."""
    return {"type": "array", "items": {
        "type": "object", "required": ["name", "kind", "endpoint"], "propertyNames": {"enum": list(entry_fields())},
        "properties": {"name": {"type": "string", "pattern": f"^{NAME.pattern}$"}, "kind": {"enum": sorted(KINDS)}}}}


# the `sources` param's type and item schema, as Param(**CATALOG_SCHEMA) takes them
CATALOG_SCHEMA = _catalog_schema()
