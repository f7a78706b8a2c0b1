"""Marshmallow schemas of every query string, path and response body, instantiated once at import."""

import base64
import binascii
import datetime as dt

from marshmallow import Schema, ValidationError, fields, post_load, pre_dump, validate, validates_schema

from sluice.redact import MASK, mask_credential_fields, redact
from sluice.contracts import EXAMPLE_CHARS
from sluice.sources import FIELD_TYPES, NAME
from webapp import exact_json

MAX_PAGE = 10_000  # deeper than this, OFFSET gets slow: clients follow next_cursor instead
MAX_PAGE_SIZE = 100
# Bounds of one /runs/<run_id>/rejects item, so a page (at most MAX_PAGE_SIZE items) stays bounded whatever a
# source sent: a payload whose JSON text is longer comes as the start of that text, flagged payload_truncated.
MAX_REJECT_PAYLOAD_CHARS = 16_384
MAX_REJECT_TEXT_CHARS = 2_000  # source_id and reason
COUNT_MODES = ("exact", "estimated", "none")
EXPORT_FORMATS = ("csv", "ndjson")
PAGE_RANGE = validate.Range(min=1, max=MAX_PAGE,
                            error=f"Must be between 1 and {MAX_PAGE}; follow next_cursor to read further.")
HEALTH_STATUSES = ("ok", "degraded", "unavailable")
SOURCE_PATTERN = f"^{NAME.pattern}$"  # a source's name, as the catalog of sources allows it
RUN_STATUSES = ("success", "failed")
JSON_TYPES = ("string", "number", "boolean", "object", "array")
FIELD_CHANGES = ("new", "retyped")
MAX_FIELDS_SHOWN = 1_000  # observed fields and changes in one /sources/<source>/fields answer


# PostgreSQL refuses a UTC offset of 16 hours or more ("time zone displacement out of range").
MAX_UTC_OFFSET = dt.timedelta(hours=15, minutes=59)
# What the document says a comparable updated_since looks like, so that generated valid requests are valid
# here too: years 0002-9998 (so that no UTC offset moves the date out of 0001-9999) and offsets within ±15:59.
COMPARABLE_PATTERN = (r"^(0(00[2-9]|0[1-9][0-9]|[1-9][0-9][0-9])|[1-8][0-9]{3}|9([0-8][0-9][0-9]|9[0-8][0-9]|99[0-8]))"
                      r"-.*([Zz]|[+-](0[0-9]|1[0-5]):[0-5][0-9])$")
OUT_OF_RANGE = ("Must have a UTC offset within ±15:59 and fall between 0001-01-01 and 9999-12-31 in UTC, "
                "e.g. 2024-05-01T12:00:00Z.")


def comparable(moment: dt.datetime) -> dt.datetime:
    """moment in UTC, as PostgreSQL can compare it; ValueError when its offset or its UTC date is out of range."""
    if abs(moment.utcoffset()) > MAX_UTC_OFFSET:
        raise ValueError(f"UTC offset {moment.utcoffset()} is out of range")
    try:
        # no offset reaches the query; converting fails where the UTC date is before year 1 or after 9999
        return moment.astimezone(dt.timezone.utc)
    except OverflowError as error:
        raise ValueError(f"{moment.isoformat()} is out of range in UTC") from error


class ComparableDateTime(fields.AwareDateTime):
    """An ISO 8601 datetime (naive means UTC) that PostgreSQL can compare, loaded in UTC."""

    default_error_messages = {"out_of_range": OUT_OF_RANGE}

    def _deserialize(self, value, attr, data, **kwargs) -> dt.datetime:
        moment = super()._deserialize(value, attr, data, **kwargs)
        try:
            return comparable(moment)
        except ValueError as error:
            raise self.make_error("out_of_range") from error


# PostgreSQL text cannot hold NUL, so such a value can match nothing: a 400 instead of a failing query.
# A Regexp (not a plain function) so the OpenAPI document states it as a pattern.
no_nul = validate.Regexp(r"^[^\x00]*$", error="Must not contain a NUL character (%00).")


def source_name(description: str = "a source's name (GET /sources lists them)", **kwargs) -> fields.String:
    """A source's name: any name the catalog allows, not a fixed list (which sources exist is the warehouse's)."""
    return fields.String(validate=validate.Regexp(SOURCE_PATTERN, error="Must be a source name matching {regex}."),
                         metadata={"description": description}, **kwargs)


class Cursor(fields.String):
    """Opaque keyset position: base64url (unpadded) of the JSON [updated_at ISO 8601, id] of a row, or, when the
    page was ordered by a declared field or filtered on one, [its value, id, fingerprint of that order and those
    filters] (webapp.attributes checks the value's type and the fingerprint against the request)."""

    default_error_messages = {
        "invalid_cursor": "Not a valid cursor: pass next_cursor of a previous response unchanged.",
    }

    def _serialize(self, value, attr, obj, **kwargs):
        if value is None:
            return None
        key, row_id, *fingerprint = value
        if isinstance(key, dt.datetime):
            key = key.isoformat()
        text = exact_json.dumps([key, row_id, *fingerprint], separators=(",", ":"))
        return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")

    def _deserialize(self, value, attr, data, **kwargs) -> tuple:
        text = super()._deserialize(value, attr, data, **kwargs)
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            position = exact_json.loads(raw)
        except (binascii.Error, ValueError, TypeError) as error:  # ValueError covers bad JSON and UTF-8
            raise self.make_error("invalid_cursor") from error
        if not isinstance(position, list) or len(position) not in (2, 3):
            raise self.make_error("invalid_cursor")
        key, row_id, *fingerprint = position
        if type(row_id) is not int or not 0 < row_id < 2**63 or not all(isinstance(f, str) for f in fingerprint):
            raise self.make_error("invalid_cursor")
        if fingerprint:
            return key, row_id, fingerprint[0]
        try:
            return updated_at_key(key), row_id, None
        except ValueError as error:
            raise self.make_error("invalid_cursor") from error


def updated_at_key(stored) -> dt.datetime:
    """The updated_at of a cursor of the default order, as PostgreSQL can compare it; ValueError otherwise."""
    if not isinstance(stored, str):
        raise ValueError("not a timestamp")
    moment = dt.datetime.fromisoformat(stored)
    if moment.tzinfo is None:
        raise ValueError("a naive timestamp")
    return comparable(moment)


MAX_SUMMARY_NAME_CHARS = 200  # a summary's source, step, error class and host are names, never prose


class CredentialMaskedPayload(fields.Raw):
    """A rejected record as received, with the value of every credential-shaped key masked (nested, and in a
    payload cut short too): users need the raw text to fix their source, but never a credential."""

    def _serialize(self, value, attr, obj, **kwargs):
        return mask_credential_fields(value)


class NoQuerySchema(Schema):
    """Query string of endpoints that take no parameters: any parameter is a mistake worth a 400."""


def include_deleted() -> fields.Boolean:
    return fields.Boolean(load_default=False, metadata={"description": (
        "also the records deleted at their source (soft-deleted: deleted_at set); a client syncing by "
        "updated_since passes true to see deletions as these tombstones")})


def updated_since() -> ComparableDateTime:
    return ComparableDateTime(default_timezone=dt.timezone.utc, metadata={
        "pattern": COMPARABLE_PATTERN,
        "description": "ISO 8601; rows with updated_at at or after it (naive means UTC); the UTC offset "
                       "within ±15:59, the date between 0001-01-01 and 9999-12-31 in UTC"}, error_messages={
        "invalid": "Not a valid ISO 8601 datetime, e.g. 2024-05-01T12:00:00Z (write + as %2B in a URL)."})


class PageQuerySchema(Schema):
    """Query string of the paginated lists."""

    page = fields.Integer(load_default=1, validate=PAGE_RANGE)
    page_size = fields.Integer(load_default=10, validate=validate.Range(min=1, max=MAX_PAGE_SIZE))


class DataQuerySchema(PageQuerySchema):
    """Query string of GET /data."""

    # No declared default: a generated client would send it along with every cursor (a 400); _first_page sets it.
    page = fields.Integer(validate=PAGE_RANGE, metadata={
        "description": "page number, 1 when neither page nor cursor is given; excludes cursor"})
    source = source_name("only this source's records; an unknown name is a 400 that lists the known ones")
    search = fields.String(validate=[validate.Length(min=1, max=200), no_nul], metadata={
        "description": "case-insensitive substring of name or description; % _ and \\ match themselves"})
    updated_since = updated_since()
    cursor = Cursor(metadata={"description": "next_cursor of the previous page; excludes page"})
    count = fields.String(load_default="exact", validate=validate.OneOf(COUNT_MODES))
    include_deleted = include_deleted()
    # data_key: an attribute named `fields` would hide marshmallow's fields module in this class body
    field_names = fields.String(data_key="fields", validate=validate.Regexp(
        r"^[^,]+(,[^,]+)*$", error="Must be field names separated by commas, e.g. fields=email,plan."), metadata={
        "description": "with source: only these declared fields in each item's attributes (default: all of them)"})
    order = fields.String(validate=validate.Regexp(r"^.+\.(asc|desc)$", error="Must be <field>.asc or "
                                                   "<field>.desc."), metadata={
        "description": "with source: order by this declared field (nulls last, then id in the same direction) "
                       "instead of updated_at desc, id desc; next_cursor follows it"})

    @validates_schema(pass_original=True)
    def _cursor_or_page(self, data, original, **kwargs):
        if "cursor" in original and "page" in original:
            raise ValidationError("Cannot be combined with page: a cursor already says where to go on.",
                                  field_name="cursor")

    @post_load
    def _first_page(self, data, **kwargs):
        if "cursor" not in data:
            data.setdefault("page", 1)
        return data


class RecordQuerySchema(Schema):
    """Query string of GET /data/<source>/<source_id>."""

    include_deleted = include_deleted()


class RecordPathSchema(Schema):
    source = source_name(required=True)
    source_id = fields.String(required=True, validate=[validate.Length(min=1, max=1000), no_nul])


class ExportQuerySchema(Schema):
    """Query string of GET /export/<source>."""

    output = fields.String(data_key="format", validate=validate.OneOf(EXPORT_FORMATS), metadata={
        "description": "csv (the default) or ndjson; without it, Accept: application/x-ndjson asks for ndjson"})
    updated_since = updated_since()
    include_deleted = include_deleted()
    field_names = fields.String(data_key="fields", validate=validate.Regexp(
        r"^[^,]+(,[^,]+)*$", error="Must be names separated by commas, e.g. fields=source_id,email."), metadata={
        "description": "only these columns (id, source, source_id, name, value, description, created_at, "
                       "updated_at, deleted_at) and declared fields, in this order; id always comes first"})
    after = fields.Integer(validate=validate.Range(min=0, max=2**63 - 1), metadata={
        "description": "only the rows whose id is greater: the id of the last row received, to resume"})


class RejectsQuerySchema(PageQuerySchema):
    """Query string of GET /runs/<run_id>/rejects."""

    source = source_name("only this source's rejects; an unknown name is a 400 that lists the known ones")


class RunPathSchema(Schema):
    run_id = fields.String(required=True, validate=[validate.Length(min=1, max=1000), no_nul], metadata={
        "description": "Airflow run id as is (':' and '+' are fine) or percent-encoded"})


class Body(Schema):
    """Base of response bodies: every field is always present, null where it has no value."""

    def on_bind_field(self, field_name, field_obj):
        field_obj.required = True


class ErrorSchema(Body):
    code = fields.Integer()
    status = fields.String()
    message = fields.String()
    errors = fields.Dict(keys=fields.String(), values=fields.Raw(), metadata={
        "description": "field name → list of problems, for invalid parameters"})


class RejectionSchema(Body):
    run_id = fields.String(metadata={"description": "the run that rejected it last (GET /runs/{run_id}/rejects)"})
    stage = fields.String(metadata={"description": "the step that rejected it: store_raw or normalize"})
    reason = fields.String(metadata={"description": "why, its first 2,000 characters; never the payload"})
    at = fields.DateTime()


class RecordNotFoundSchema(ErrorSchema):
    """The 404 of GET /data/<source>/<source_id>: with rejection when the record has no row because it was rejected."""

    rejection = fields.Nested(RejectionSchema, metadata={
        "description": "present only when the record was rejected and has no row: its latest rejection"})

    def on_bind_field(self, field_name, field_obj):
        field_obj.required = field_name != "rejection"


class EndpointSchema(Body):
    path = fields.String()
    methods = fields.List(fields.String())
    summary = fields.String()


class IndexSchema(Body):
    service = fields.String()
    version = fields.String()
    endpoints = fields.List(fields.Nested(EndpointSchema))


class RecordSchema(Body):
    id = fields.Integer()
    source = source_name()
    source_id = fields.String()
    name = fields.String(allow_none=True)
    value = fields.Float(allow_none=True)
    description = fields.String(allow_none=True)
    created_at = fields.DateTime()
    updated_at = fields.DateTime()
    deleted_at = fields.DateTime(allow_none=True, metadata={
        "description": "when a read of its source no longer contained it (updated_at moved then too); null: live"})
    attributes = fields.Dict(keys=fields.String(), values=fields.Raw(allow_none=True), metadata={
        "description": "its source's declared fields, typed: text a string, integer and numeric a number with every "
                       "digit, boolean, timestamp an ISO 8601 string in UTC, date YYYY-MM-DD, json any value; null "
                       "when the record lacks it. With source: each declared field (or those of fields=); across "
                       "sources: each record's own. The schema Attributes_<source> of this document lists them"})


def record_item(row) -> dict:
    """RecordSchema's dump of a row that has every field (a data_page row), written out: walking marshmallow's
    fields costs more per row than the query itself (issue 28). tests/test_webapp_schemas.py holds the two equal."""
    return {
        "id": int(row["id"]), "source": str(row["source"]), "source_id": str(row["source_id"]),
        "name": _text(row["name"]), "value": None if row["value"] is None else float(row["value"]),
        "description": _text(row["description"]), "created_at": row["created_at"].isoformat(),
        "updated_at": row["updated_at"].isoformat(),
        "deleted_at": None if row["deleted_at"] is None else row["deleted_at"].isoformat(),
        "attributes": {str(key): value for key, value in row["attributes"].items()},
    }


def _text(value) -> str | None:
    return None if value is None else str(value)


class Records(fields.List):
    """A list of RecordSchema items (so documented), dumped by record_item."""

    def __init__(self, **kwargs):
        super().__init__(fields.Nested(RecordSchema), **kwargs)

    def _serialize(self, value, attr, obj, **kwargs):
        return None if value is None else [record_item(row) for row in value]


class RecordDetailSchema(RecordSchema):
    first_seen_run_id = fields.String()
    last_changed_run_id = fields.String()
    deleted_run_id = fields.String(allow_none=True, metadata={
        "description": "the run whose read no longer contained it; null: live"})


class Page(Body):
    total = fields.Integer(allow_none=True, metadata={"description": "null when count=none"})
    page = fields.Integer(allow_none=True, metadata={"description": "null when reading by cursor"})
    page_size = fields.Integer()
    has_more = fields.Boolean()


class DataPageSchema(Page):
    data = Records()
    next_cursor = Cursor(allow_none=True, metadata={"description": "pass as cursor for the next page"})
    watermark = fields.DateTime(metadata={"description": (
        "ISO 8601. Every change committed after this answer was read has updated_at at or after it, even one "
        "whose load was already running: poll next with updated_since=<watermark> and no change is missed "
        "(some rows come again). Over several pages, keep the watermark of the first page. Also sent as the "
        "Sluice-Watermark header, on a 304 too.")})


def _source_counts() -> fields.Dict:
    return fields.Dict(keys=fields.String(), values=fields.Dict(keys=fields.String(), values=fields.Raw()),
                       metadata={"description": 'per source: {"api": {"fetched": 100, "inserted": 3, ...}}'})


class ErrorSummarySchema(Body):
    """Why one step of one source failed, as sluice.failures.Failure.summary() stored it: names and numbers, never
    an exception's text, which may quote a credential. A failure recorded before summaries existed has nulls."""

    source = fields.String(allow_none=True, metadata={"description": "the source that failed; null: the run itself"})
    step = fields.String(allow_none=True, metadata={"description": "the step that failed, e.g. ingest or upsert"})
    error_class = fields.String(allow_none=True, metadata={"description": "the exception's class, e.g. SourceError"})
    http_status = fields.Integer(allow_none=True, metadata={"description": "the HTTP status the source answered"})
    host = fields.String(allow_none=True, metadata={"description": "host[:port] the source was read from"})

    @pre_dump
    def _from_stored(self, stored, **kwargs) -> dict:
        # the jsonb of an earlier or hand-edited row may lack a field or hold another type: every field is served,
        # null unless it has the declared type; names are bounded and masked as a last guard
        stored = stored if isinstance(stored, dict) else {}
        summary = {name: _summary_name(stored.get(name)) for name in ("source", "step", "error_class", "host")}
        status = stored.get("http_status")
        ok = isinstance(status, int) and not isinstance(status, bool) and 100 <= status <= 599
        return {**summary, "http_status": status if ok else None}


def _summary_name(value) -> str | None:
    if not isinstance(value, str):
        return None
    name = redact(value[:MAX_SUMMARY_NAME_CHARS])
    return None if MASK in name else name


def _error_summaries(description: str, **kwargs) -> fields.List:
    return fields.List(fields.Nested(ErrorSummarySchema), metadata={"description": description}, **kwargs)


class RunSchema(Body):
    run_id = fields.String()
    run_type = fields.String(allow_none=True)
    data_interval_start = fields.DateTime(allow_none=True)
    data_interval_end = fields.DateTime(allow_none=True)
    started_at = fields.DateTime(allow_none=True)
    ended_at = fields.DateTime(allow_none=True)
    duration_seconds = fields.Float(allow_none=True)
    records_processed = fields.Integer()
    status = fields.String(validate=validate.OneOf(RUN_STATUSES))
    errors = _error_summaries("why the run failed: one summary per failed step and source; empty when it did not "
                              "fail. The error text is in the task logs, where Airflow masks the connections' secrets")
    fetched = fields.Integer()
    inserted = fields.Integer()
    updated = fields.Integer()
    unchanged = fields.Integer()
    superseded = fields.Integer(metadata={"description": "records a later fetch already stored; its run loads them"})
    rejected = fields.Integer()
    source_counts = _source_counts()
    accept_deletes = fields.Dict(keys=fields.String(), values=fields.Float(), metadata={
        "description": "the larger deletes a person accepted for this run (its accept_deletes param): source -> the "
                       "fraction of its live rows the run might delete; {} when none"})
    skipped = fields.Dict(keys=fields.String(), values=fields.String(), metadata={
        "description": "the sources the run skipped, each with why (not due); neither failed nor loaded"})


class RunsPageSchema(Page):
    data = fields.List(fields.Nested(RunSchema))


class RejectSchema(Body):
    source = source_name()
    source_id = fields.String(allow_none=True, metadata={
        "description": f"its first {MAX_REJECT_TEXT_CHARS:,} characters"})
    stage = fields.String()
    reason = fields.String(metadata={"description": f"its first {MAX_REJECT_TEXT_CHARS:,} characters"})
    payload = CredentialMaskedPayload(allow_none=True, metadata={"description": (
        "the record as received: raw source text, not mapped or checked (unlike /data), so that its source can "
        "be fixed. The value of every key shaped like a credential (password, token, secret, api_key, "
        f"authorization, cookie, ..., in nested objects too) is {MASK!r}. When its JSON text is longer than "
        f"{MAX_REJECT_PAYLOAD_CHARS:,} characters, a string of the first {MAX_REJECT_PAYLOAD_CHARS:,} "
        "characters of that text, masked the same way, and payload_truncated is true")})
    payload_truncated = fields.Boolean(metadata={"description": "payload holds only the start of its JSON text"})
    payload_length = fields.Integer(allow_none=True, metadata={
        "description": "characters of the whole payload's JSON text; null without payload"})
    created_at = fields.DateTime()


class RejectsPageSchema(Page):
    data = fields.List(fields.Nested(RejectSchema))


class LastRunSchema(Body):
    run_id = fields.String()
    status = fields.String(validate=validate.OneOf(RUN_STATUSES))
    started_at = fields.DateTime(allow_none=True)
    ended_at = fields.DateTime(allow_none=True)
    inserted = fields.Integer()
    updated = fields.Integer()
    unchanged = fields.Integer()
    rejected = fields.Integer()
    source_counts = _source_counts()


class StatsSchema(Body):
    total_records_processed = fields.Integer()
    total_duration_seconds = fields.Float()
    run_count = fields.Integer()
    last_success = fields.DateTime(allow_none=True)
    last_failure = fields.DateTime(allow_none=True)
    last_failure_errors = _error_summaries("why the newest failed run failed (as errors in /runs); null: no run "
                                           "failed", allow_none=True)
    rows_per_source = fields.Dict(keys=fields.String(), values=fields.Integer(), metadata={
        "description": "every source of the warehouse: its live rows in /data"})
    deleted_per_source = fields.Dict(keys=fields.String(), values=fields.Integer(), metadata={
        "description": "every source of the warehouse: its soft-deleted rows (/data?include_deleted=true)"})
    deleted_total = fields.Integer(metadata={"description": "soft-deleted rows of every source"})
    rejects_per_source = fields.Dict(keys=fields.String(), values=fields.Integer(), metadata={
        "description": "every source: the records its runs rejected"})
    last_run = fields.Nested(LastRunSchema, allow_none=True)


class SourceCheckpointSchema(Body):
    last_processed_id = fields.String(allow_none=True, metadata={
        "description": "the highest id a run committed; an incremental read asks from it on"})
    last_processed_at = fields.DateTime(allow_none=True)
    last_cursor = fields.String(allow_none=True, metadata={
        "description": "a time-cursor source: the newest value of its cursor field loaded, as the source spelled it; "
                       "the next read asks for the records after it, less the lookback"})
    read_until = fields.DateTime(allow_none=True, metadata={
        "description": "the end of the newest data interval in which it was read; its `every` counts from it"})


class SourceLoadSchema(Body):
    run_id = fields.String()
    at = fields.DateTime()


class SourceErrorSchema(SourceLoadSchema):
    error = fields.Nested(ErrorSummarySchema, metadata={"description": "why it failed, as errors in /runs"})


class SourceSkipSchema(SourceLoadSchema):
    reason = fields.String(metadata={"description": "why the run did not read it, e.g. not due until its every passed"})


QUALITY_STATUSES = ("published", "held", "released", "superseded", "refused")
QUALITY_STATUS_TEXT = ("published; held (nothing of it reached /data); released (a person published the held "
                       "batch); superseded (a later run's fetch replaced the held batch); refused (the delete guard "
                       "refused the read: its check deletes; nothing of it reached /data)")


class FailingCheckSchema(Body):
    check = fields.String(metadata={"description": "the check's name: row_count, null_rate:description, "
                                                   "anomaly:row_count..."})
    severity = fields.String(validate=validate.OneOf(("warn", "error")))
    measured = fields.Float(allow_none=True)
    threshold = fields.String()


class SourceQualitySchema(Body):
    run_id = fields.String(metadata={"description": "the newest run whose batch of the source the gate judged"})
    status = fields.String(validate=validate.OneOf(QUALITY_STATUSES), metadata={"description": QUALITY_STATUS_TEXT})
    score = fields.Integer(metadata={"description": "0-100 (README, Data quality)"})
    at = fields.DateTime()
    released_by = fields.String(allow_none=True)
    released_at = fields.DateTime(allow_none=True)
    failing = fields.List(fields.Nested(FailingCheckSchema), metadata={"description": "the checks it failed"})


class SourceSchema(Body):
    name = source_name()
    kind = fields.String(allow_none=True, metadata={
        "description": "the kind of source (how it is read); null until a run recorded it"})
    row_count = fields.Integer(metadata={"description": "its live rows in /data"})
    deleted_count = fields.Integer(metadata={
        "description": "its soft-deleted rows: records its reads no longer contain (/data?include_deleted=true)"})
    checkpoint = fields.Nested(SourceCheckpointSchema)
    last_success = fields.Nested(SourceLoadSchema, allow_none=True, metadata={
        "description": "the newest run that loaded it"})
    last_error = fields.Nested(SourceErrorSchema, allow_none=True, metadata={
        "description": "the newest run in which it failed, kept after later successes: compare the times"})
    last_skip = fields.Nested(SourceSkipSchema, allow_none=True, metadata={
        "description": "the newest run that skipped it (not due: see its every), kept after later reads"})
    quality = fields.Nested(SourceQualitySchema, allow_none=True, metadata={
        "description": "its newest batch's quality: score, what became of it, failing checks (null before any)"})


class QualityCheckSchema(Body):
    check = fields.String()
    kind = fields.String(validate=validate.OneOf(("check", "anomaly")), metadata={
        "description": "check: declared in the catalog; anomaly: a measure against the source's recent runs"})
    severity = fields.String(validate=validate.OneOf(("warn", "error")))
    measured = fields.Float(allow_none=True)
    threshold = fields.String()
    verdict = fields.String(validate=validate.OneOf(("pass", "fail", "no_history")))
    detail = fields.String()


class SourceRunQualitySchema(Body):
    source = source_name()
    status = fields.String(validate=validate.OneOf(QUALITY_STATUSES), metadata={"description": QUALITY_STATUS_TEXT})
    score = fields.Integer()
    at = fields.DateTime()
    released_by = fields.String(allow_none=True)
    released_at = fields.DateTime(allow_none=True)
    superseded_by = fields.String(allow_none=True, metadata={"description": "the run whose fetch replaced it"})
    checks = fields.List(fields.Nested(QualityCheckSchema))


class RunQualitySchema(Body):
    run_id = fields.String()
    data = fields.List(fields.Nested(SourceRunQualitySchema), metadata={
        "description": "each source of the run whose batch the quality gate judged, by name"})


class SourcesSchema(Body):
    data = fields.List(fields.Nested(SourceSchema), metadata={"description": "every source, by name"})


class SourcePathSchema(Schema):
    source = source_name(required=True)


class DeclaredFieldSchema(Body):
    field = fields.String(metadata={"description": "the field's name: a column of the source's typed view"})
    type = fields.String(validate=validate.OneOf(FIELD_TYPES))
    path = fields.String(metadata={"description": "the source field it is read from (a dotted path)"})
    required = fields.Boolean()
    declared_run_id = fields.String(metadata={"description": "the run that last normalized with this declaration"})
    declared_at = fields.DateTime()


class ObservedFieldSchema(Body):
    field = fields.String(metadata={"description": (
        f"a top-level field of the source's records, as they spell it (its first {MAX_REJECT_TEXT_CHARS:,} "
        "characters); a field sent with several JSON types has one entry per type")})
    json_type = fields.String(validate=validate.OneOf(JSON_TYPES), metadata={
        "description": "the JSON type of its values (a null is no type: a field only ever null is not listed)"})
    first_seen_run_id = fields.String()
    first_seen_at = fields.DateTime()
    last_seen_run_id = fields.String(metadata={
        "description": "the last run that stored a new or changed record carrying it with this type (a csv "
                       "source: any record, as every one has its header's fields)"})
    last_seen_at = fields.DateTime()
    example_record_id = fields.String(allow_none=True, metadata={"description": "the id of the example record"})
    example = CredentialMaskedPayload(allow_none=True, metadata={"description": (
        f"the text of the first record that carried it, as the source sent it: at most its first "
        f"{EXAMPLE_CHARS:,} characters, the value of every key shaped like a credential {MASK!r}")})
    example_truncated = fields.Boolean(metadata={"description": "example holds only the start of the record"})
    example_length = fields.Integer(allow_none=True, metadata={"description": "characters of the whole record"})


class FieldChangeSchema(Body):
    run_id = fields.String()
    field = fields.String()
    change = fields.String(validate=validate.OneOf(FIELD_CHANGES), metadata={"description": (
        "new: no earlier run's records carried the field; retyped: a declared (or mapped) field whose values its "
        "type cannot read (from_type is the declared type), or an undeclared field with a JSON type earlier runs "
        "did not record for it (from_type: the ones they did)")})
    from_type = fields.String(allow_none=True)
    to_type = fields.String(validate=validate.OneOf(JSON_TYPES))
    declared = fields.Boolean(metadata={"description": "the source's mapping or a declared field reads it"})
    record_id = fields.String(allow_none=True, metadata={"description": "the id of a record that carried it"})
    detected_at = fields.DateTime()


class SourceFieldsSchema(Body):
    source = source_name()
    declared = fields.List(fields.Nested(DeclaredFieldSchema), metadata={
        "description": "the fields its catalog entry declares, as the last run that normalized it read them"})
    observed = fields.List(fields.Nested(ObservedFieldSchema), metadata={
        "description": f"the top-level fields its records carried, first seen first (at most {MAX_FIELDS_SHOWN:,})"})
    observed_total = fields.Integer()
    changes = fields.List(fields.Nested(FieldChangeSchema), metadata={
        "description": f"what changed per run, newest first (at most {MAX_FIELDS_SHOWN:,})"})
    changes_total = fields.Integer()


class HealthRunSchema(Body):
    run_id = fields.String()
    started_at = fields.DateTime(allow_none=True)
    ended_at = fields.DateTime(allow_none=True)


class HealthSchema(Body):
    status = fields.String(validate=validate.OneOf(HEALTH_STATUSES))
    db_connected = fields.Boolean()
    last_etl_run = fields.Nested(HealthRunSchema, allow_none=True)
    etl_status = fields.String(allow_none=True, validate=validate.OneOf(RUN_STATUSES))
    reason = fields.String(allow_none=True, metadata={"description": "why the service is not ok"})


class HealthSummarySchema(Body):
    """/health to a caller without credentials (SLUICE_AUTH keys or oidc): whether the service is ok, no details."""

    status = fields.String(validate=validate.OneOf(HEALTH_STATUSES))


no_query_schema = NoQuerySchema()
page_query_schema = PageQuerySchema()
rejects_query_schema = RejectsQuerySchema()
data_query_schema = DataQuerySchema()
export_query_schema = ExportQuerySchema()
record_path_schema = RecordPathSchema()
record_query_schema = RecordQuerySchema()
run_path_schema = RunPathSchema()
error_schema = ErrorSchema()
record_not_found_schema = RecordNotFoundSchema()
rejection_schema = RejectionSchema()
index_schema = IndexSchema()
record_detail_schema = RecordDetailSchema()
data_page_schema = DataPageSchema()
runs_page_schema = RunsPageSchema()
rejects_page_schema = RejectsPageSchema()
stats_schema = StatsSchema()
sources_schema = SourcesSchema()
run_quality_schema = RunQualitySchema()
source_path_schema = SourcePathSchema()
source_fields_schema = SourceFieldsSchema()
health_schema = HealthSchema()
health_summary_schema = HealthSummarySchema()


def load_query(schema: Schema, args) -> dict:
    """Validate a query string (a MultiDict); a parameter given twice is an error, not a silent pick."""
    repeated = {key: ["Given more than once; pass it once."] for key, values in args.lists() if len(values) > 1}
    if repeated:
        raise ValidationError(repeated)
    return schema.load(args.to_dict())
