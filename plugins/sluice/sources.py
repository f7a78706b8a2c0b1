"""A source is one value: its name, kind, HTTP connection, endpoint, mapping and incremental parameter.

Each kind of source is read by one module, named in KINDS, that has the same entry point:

    stage(source: Source, request: FetchRequest, out: BinaryIO) -> staging.StageCounts

It fetches the source from request.url with request.session and writes its records to `out` as staged lines
(staging.StageWriter). A new kind is one new module with that function, and one entry in KINDS.
"""

import functools
import importlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from sluice import mapping as mappings
from sluice.errors import InvalidSource
from sluice.settings import DEFAULT_API_MAPPING, DEFAULT_CSV_MAPPING, Settings

NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")
# kind -> the module that reads sources of that kind (imported when a source of that kind is read)
KINDS = {"api": "sluice.api_source", "csv": "sluice.csv_source"}
PAGINATION_TYPES = ("link", "next_field", "page_param", "offset_param")
# which fields of a pagination each type takes (the first ones listed are required)
_PAGINATION_FIELDS = {"link": ((), ()), "next_field": (("field",), ()),
                      "page_param": (("param", "page_size"), ("size_param",)),
                      "offset_param": (("param", "page_size"), ("size_param",))}
# the options of one kind, with their defaults: a source of another kind must leave them so
_KIND_OPTIONS = {"csv": {"delimiter": ",", "encoding": "utf-8"}, "api": {"records_path": ""}}


@dataclass(frozen=True)
class Pagination:
    """How an API source reaches its next page.

    link: the response's Link rel="next" header. next_field: the URL at the dotted path `field` of the page's
    body (relative URLs resolve against the page's). page_param / offset_param: the query parameter `param`
    counts pages from 1 / records from 0, `page_size` records a full page (sent as `size_param` when given);
    an empty or short page is the last."""

    type: str = "link"
    field: str = ""
    param: str = ""
    page_size: int = 0
    size_param: str = ""

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
        for name in ("field", "param", "size_param"):
            given = value.get(name, "")
            if not isinstance(given, str) or (name in required and not given.strip()):
                raise InvalidSource(f"{where}.{name} must be a non-empty string, got {given!r}")
        size = value.get("page_size", 0)
        if "page_size" in required and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise InvalidSource(f"{where}.page_size must be a positive integer, got {size!r}")
        return cls(kind, **{name: value[name] for name in (*required, *optional) if name in value})


_PAGINATION_DEFAULTS = {name: getattr(Pagination(), name) for name in ("field", "param", "page_size", "size_param")}


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
        """The normalization rules of this source's mapping (sluice.rules.Normalization)."""
        from sluice import rules

        return rules.Normalization(self.mapping)

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
