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
